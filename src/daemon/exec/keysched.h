/* Keyed scheduling (scheduling: "keyed"): one FIFO per active key and one ready list of keys
 * that have work and are not running anywhere. Any free worker takes the next ready key, runs
 * its oldest request, and puts the key back at the tail if more are waiting. Per-key order is
 * the same as with partitioned queues, a cold key never waits behind a hot key that happens to
 * share its worker, and no worker idles while any key has work. Bounded by one global capacity.
 *
 * One mutex guards everything here; it is held only for list operations, never while a request
 * runs. */
#ifndef PX_KEYSCHED_H
#define PX_KEYSCHED_H

#include "daemon/core/request.h"

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

typedef struct px_sched px_sched_t;

px_sched_t *px_sched_new(uint32_t capacity);
void px_sched_free(px_sched_t *s);
/* Loop thread: 0, -EAGAIN when full, -EPIPE once closed. Waking a waiting worker is left to
 * px_sched_wake, once per batch of pushes. */
int px_sched_push(px_sched_t *s, px_req_t *r);
void px_sched_wake(px_sched_t *s);
/* Worker thread: the next request of a ready key (its key is now running) into *hand, stored
 * under the scheduler's lock (see px_queue_pop_hand): 0, -ETIMEDOUT, or -EPIPE when closed and
 * empty. */
int px_sched_pop(px_sched_t *s, _Atomic(void *) *hand, uint64_t timeout_ns);
/* The running request of a key is finished (or abandoned): the key may run again. token is the
 * request's sched_key, so the call is safe after the request itself has been handed back. */
void px_sched_done(px_sched_t *s, void *token);
/* Takes what the workers' hands hold, then every queued request (per key in FIFO order), up to
 * max, under the scheduler's lock; the hands are left NULL. */
size_t px_sched_take_all(px_sched_t *s, _Atomic(void *) *const *hands, size_t nhands,
                         px_req_t **out, size_t max);
/* The first queued request for which match is true (run under the lock), left in place. */
px_req_t *px_sched_find(px_sched_t *s, int (*match)(px_req_t *r, void *arg), void *arg);
/* Takes r out of its key's FIFO if it is still queued there (not popped): 1, else 0. */
int px_sched_remove(px_sched_t *s, px_req_t *r);
void px_sched_close(px_sched_t *s);
uint32_t px_sched_depth(const px_sched_t *s);
uint32_t px_sched_capacity(const px_sched_t *s);
uint32_t px_sched_keys(const px_sched_t *s); /* active keys */

#endif
