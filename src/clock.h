/* Monotonic time in nanoseconds, the one clock every module measures with. */
#ifndef PX_CLOCK_H
#define PX_CLOCK_H

#include <stdint.h>

uint64_t px_now_ns(void);

#define PX_MS 1000000ull

#endif
