/* A bounded FIFO of pointers shared by one producer side (the event loop) and the worker thread
 * that drains it. Push never blocks: a full queue says so at once, which is parexd's
 * backpressure. Pop blocks, with a timeout so an idle worker can keep its heartbeat. */
#ifndef PX_QUEUE_H
#define PX_QUEUE_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

typedef struct px_queue px_queue_t;

px_queue_t *px_queue_new(uint32_t capacity);
void px_queue_free(px_queue_t *q);

/* 0, -EAGAIN when full, -EPIPE once closed. Any thread. */
int px_queue_push(px_queue_t *q, void *item);
/* Like px_queue_push, but leaves waking the consumer to px_queue_wake: returns 1 when the
 * consumer is waiting and must be woken, so a producer that pushes many items in one go wakes
 * it once. */
int px_queue_push_lazy(px_queue_t *q, void *item);
void px_queue_wake(px_queue_t *q);
/* Waits up to timeout_ns for an item: 0 with *item set, -ETIMEDOUT, or -EPIPE when closed and
 * empty (a closed queue still hands out what it holds, so a drain finishes the work). */
int px_queue_pop(px_queue_t *q, void **item, uint64_t timeout_ns);
/* Like px_queue_pop, but the item goes into *hand, stored under the queue's lock: a worker's
 * hand holds what it popped until it claims it, and px_queue_take_hand sees the item either in
 * the queue or in the hand. */
int px_queue_pop_hand(px_queue_t *q, _Atomic(void *) *hand, uint64_t timeout_ns);
/* Takes what *hand holds (first) and then the queued items in FIFO order, up to max, under the
 * queue's lock; *hand is left NULL (hand may be NULL: the queued items only). Returns how many. */
size_t px_queue_take_hand(px_queue_t *q, _Atomic(void *) *hand, void **out, size_t max);
/* The first queued item for which match(item, arg) is true (match runs under the lock and may
 * change the item's own atomics), left in place; NULL when none. */
void *px_queue_find(px_queue_t *q, int (*match)(void *item, void *arg), void *arg);
/* Removes up to max queued items in FIFO order into out; returns how many. */
size_t px_queue_take_all(px_queue_t *q, void **out, size_t max);
/* Removes the first item for which match(item, arg) is true; returns it or NULL. */
void *px_queue_remove_if(px_queue_t *q, int (*match)(void *item, void *arg), void *arg);
void px_queue_close(px_queue_t *q);

/* Lock-free reads for metrics; may be a moment stale. */
uint32_t px_queue_depth(const px_queue_t *q);
uint32_t px_queue_capacity(const px_queue_t *q);

#endif
