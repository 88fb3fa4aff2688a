/* Monotonic time in nanoseconds, the one clock every module measures with. */
#ifndef PX_CLOCK_H
#define PX_CLOCK_H

#include <stdint.h>
#include <time.h>

uint64_t px_now_ns(void);
/* The absolute time ns from now on clock (CLOCK_MONOTONIC for condition variables created with
 * it, CLOCK_REALTIME for the others), for pthread_cond_timedwait. */
struct timespec px_deadline_after(int clock, uint64_t ns);

#define PX_MS 1000000ull

#endif
