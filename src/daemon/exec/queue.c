/* Ring buffer under one mutex. The producer signals only when the consumer is actually waiting,
 * so a busy worker costs the loop a lock and an unlock per request, never a futex wake. The
 * depth is mirrored in an atomic so a metrics scrape never takes the lock. */
#include "daemon/exec/queue.h"

#include "common/clock.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

struct px_queue {
    pthread_mutex_t mu;
    pthread_cond_t nonempty;
    /* All below under mu. */
    uint32_t cap, head, len;
    int waiting; /* consumers inside pthread_cond_timedwait */
    int closed;
    _Atomic uint32_t depth; /* == len, for lock-free readers */
    void *items[];
};

px_queue_t *px_queue_new(uint32_t capacity)
{
    pthread_condattr_t ca;
    px_queue_t *q;

    q = calloc(1, sizeof *q + (size_t)capacity * sizeof(void *));
    if (!q)
        return NULL;
    q->cap = capacity;
    if (pthread_mutex_init(&q->mu, NULL))
        goto fail_mu;
    if (pthread_condattr_init(&ca))
        goto fail_attr;
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    if (pthread_cond_init(&q->nonempty, &ca))
        goto fail_cond;
    pthread_condattr_destroy(&ca);
    return q;

fail_cond:
    pthread_condattr_destroy(&ca);
fail_attr:
    pthread_mutex_destroy(&q->mu);
fail_mu:
    free(q);
    return NULL;
}

void px_queue_free(px_queue_t *q)
{
    if (!q)
        return;
    pthread_cond_destroy(&q->nonempty);
    pthread_mutex_destroy(&q->mu);
    free(q);
}

static int push(px_queue_t *q, void *item, int wake)
{
    int rc = 0;

    pthread_mutex_lock(&q->mu);
    if (q->closed) {
        rc = -EPIPE;
    } else if (q->len == q->cap) {
        rc = -EAGAIN;
    } else {
        q->items[(q->head + q->len) % q->cap] = item;
        q->len++;
        atomic_store_explicit(&q->depth, q->len, memory_order_relaxed);
        if (q->waiting) {
            if (wake)
                pthread_cond_signal(&q->nonempty);
            else
                rc = 1;
        }
    }
    pthread_mutex_unlock(&q->mu);
    return rc;
}

int px_queue_push(px_queue_t *q, void *item)
{
    return push(q, item, 1);
}

int px_queue_push_lazy(px_queue_t *q, void *item)
{
    return push(q, item, 0);
}

void px_queue_wake(px_queue_t *q)
{
    pthread_mutex_lock(&q->mu);
    if (q->waiting)
        pthread_cond_signal(&q->nonempty);
    pthread_mutex_unlock(&q->mu);
}

/* Pops into *item, and into *hand when given (under the lock, so px_queue_take_hand sees an
 * item either queued or in hand, never in neither). */
static int pop(px_queue_t *q, void **item, _Atomic(void *) *hand, uint64_t timeout_ns)
{
    struct timespec until;
    int rc = 0, timed = 0;

    pthread_mutex_lock(&q->mu);
    while (q->len == 0 && !q->closed && rc == 0) {
        /* The clock is read only when there is nothing to take: a busy worker pops without. */
        if (!timed) {
            until = px_deadline_after(CLOCK_MONOTONIC, timeout_ns);
            timed = 1;
        }
        q->waiting++;
        rc = pthread_cond_timedwait(&q->nonempty, &q->mu, &until);
        q->waiting--;
    }
    if (q->len > 0) {
        void *it = q->items[q->head];
        if (item)
            *item = it;
        if (hand)
            atomic_store_explicit(hand, it, memory_order_release);
        q->head = (q->head + 1) % q->cap;
        q->len--;
        atomic_store_explicit(&q->depth, q->len, memory_order_relaxed);
        rc = 0;
    } else {
        rc = q->closed ? -EPIPE : -ETIMEDOUT;
    }
    pthread_mutex_unlock(&q->mu);
    return rc;
}

int px_queue_pop(px_queue_t *q, void **item, uint64_t timeout_ns)
{
    return pop(q, item, NULL, timeout_ns);
}

int px_queue_pop_hand(px_queue_t *q, _Atomic(void *) *hand, uint64_t timeout_ns)
{
    return pop(q, NULL, hand, timeout_ns);
}

size_t px_queue_take_hand(px_queue_t *q, _Atomic(void *) *hand, void **out, size_t max)
{
    size_t n = 0;
    void *h;

    pthread_mutex_lock(&q->mu);
    if (hand && max > 0 && (h = atomic_exchange_explicit(hand, NULL, memory_order_acq_rel)))
        out[n++] = h;
    while (q->len > 0 && n < max) {
        out[n++] = q->items[q->head];
        q->head = (q->head + 1) % q->cap;
        q->len--;
    }
    atomic_store_explicit(&q->depth, q->len, memory_order_relaxed);
    pthread_mutex_unlock(&q->mu);
    return n;
}

/* Under mu: the position of the first queued item match accepts, or q->len when none. */
static uint32_t find_at(px_queue_t *q, int (*match)(void *item, void *arg), void *arg)
{
    uint32_t i = 0;

    while (i < q->len && !match(q->items[(q->head + i) % q->cap], arg))
        i++;
    return i;
}

void *px_queue_find(px_queue_t *q, int (*match)(void *item, void *arg), void *arg)
{
    void *found = NULL;
    uint32_t i;

    pthread_mutex_lock(&q->mu);
    if ((i = find_at(q, match, arg)) < q->len)
        found = q->items[(q->head + i) % q->cap];
    pthread_mutex_unlock(&q->mu);
    return found;
}

size_t px_queue_take_all(px_queue_t *q, void **out, size_t max)
{
    return px_queue_take_hand(q, NULL, out, max);
}

void *px_queue_remove_if(px_queue_t *q, int (*match)(void *item, void *arg), void *arg)
{
    void *found = NULL;
    uint32_t i;

    pthread_mutex_lock(&q->mu);
    if ((i = find_at(q, match, arg)) < q->len) {
        found = q->items[(q->head + i) % q->cap];
        /* Close the gap by shifting the later items forward: FIFO order is kept. */
        for (uint32_t j = i; j + 1 < q->len; j++)
            q->items[(q->head + j) % q->cap] = q->items[(q->head + j + 1) % q->cap];
        q->len--;
        atomic_store_explicit(&q->depth, q->len, memory_order_relaxed);
    }
    pthread_mutex_unlock(&q->mu);
    return found;
}

void px_queue_close(px_queue_t *q)
{
    pthread_mutex_lock(&q->mu);
    q->closed = 1;
    pthread_cond_broadcast(&q->nonempty);
    pthread_mutex_unlock(&q->mu);
}

uint32_t px_queue_depth(const px_queue_t *q)
{
    return atomic_load_explicit(&((px_queue_t *)q)->depth, memory_order_relaxed);
}

uint32_t px_queue_capacity(const px_queue_t *q)
{
    return q->cap;
}
