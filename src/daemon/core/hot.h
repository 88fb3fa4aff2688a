/* Hot-key visibility: a space-saving heavy-hitter sketch per worker, one for arrivals and one
 * for time spent, over a sliding window of one to two minutes (two 60 s halves). Bounded:
 * PX_HOT_SLOTS counters per sketch whatever the number of keys. Keys are tracked by their first
 * PX_HOT_KEY_MAX bytes. */
#ifndef PX_HOT_H
#define PX_HOT_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#define PX_HOT_SLOTS 32
#define PX_HOT_KEY_MAX 64

typedef struct px_hot px_hot_t;

px_hot_t *px_hot_new(uint32_t workers);
void px_hot_free(px_hot_t *h);
/* Loop thread, per accepted request. */
void px_hot_arrival(px_hot_t *h, uint32_t worker, const char *key, size_t len, uint64_t now_ns);
/* Worker thread, per finished request. */
void px_hot_time(px_hot_t *h, uint32_t worker, const char *key, size_t len, uint64_t ns,
                 uint64_t now_ns);
/* Any thread: {"by_arrivals": [{key, worker, count}], "by_time_ms": [{key, worker, ms}]}, top n
 * over all workers, and the busiest worker's arrivals over the mean (1 when idle). */
json_t *px_hot_top(px_hot_t *h, size_t n, uint64_t now_ns);
double px_hot_imbalance(px_hot_t *h, uint64_t now_ns);

#endif
