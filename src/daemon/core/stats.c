/* Sequence lock (one writer): the writer makes seq odd, stores, makes it even; a reader retries
 * until it saw the same even seq before and after its loads. */
#include "daemon/core/stats.h"

#include <sched.h>

/* Set on the writer (loop) thread inside begin/end, where a snapshot must not wait for itself. */
static _Thread_local int writing;

static const char *const reject_codes[PX_REJ_COUNT] = {
    "queue_full", "shutting_down",   "unauthorized", "key_busy",
    "key_parked", "connection_busy", "overloaded",   "lease_lost"};

const char *px_reject_code(enum px_reject r)
{
    return reject_codes[r];
}

static const char *const close_reasons[PX_CLOSE_COUNT] = {"http_request", "partial_line_timeout"};

const char *px_close_reason(enum px_close r)
{
    return close_reasons[r];
}

void px_stats_begin(px_stats_t *s)
{
    writing++;
    if (s->depth++ == 0) {
        uint64_t q = atomic_load_explicit(&s->seq, memory_order_relaxed);
        atomic_store_explicit(&s->seq, q + 1, memory_order_relaxed);
        atomic_thread_fence(memory_order_release);
    }
}

void px_stats_end(px_stats_t *s)
{
    writing--;
    if (--s->depth == 0) {
        uint64_t q = atomic_load_explicit(&s->seq, memory_order_relaxed);
        atomic_store_explicit(&s->seq, q + 1, memory_order_release);
    }
}

#define LOAD(f) atomic_load_explicit(&(f), memory_order_relaxed)

void px_stats_snapshot(px_stats_t *s, px_counts_t *o)
{
    uint64_t before, after;

    for (unsigned tries = 0;; tries++) {
        if (tries > 64)
            sched_yield(); /* the writer was preempted mid-batch */
        before = atomic_load_explicit(&s->seq, memory_order_acquire);
        if ((before & 1) && !writing)
            continue;
        o->received = LOAD(s->c.received);
        o->accepted = LOAD(s->c.accepted);
        o->ok = LOAD(s->c.ok);
        o->failed = LOAD(s->c.failed);
        o->in_flight = LOAD(s->c.in_flight);
        o->connections = LOAD(s->c.connections);
        o->dropped = LOAD(s->c.dropped);
        o->late = LOAD(s->c.late);
        o->keys_parked = LOAD(s->c.keys_parked);
        o->key_parks = LOAD(s->c.key_parks);
        for (int i = 0; i < PX_REJ_COUNT; i++)
            o->rejected[i] = LOAD(s->c.rejected[i]);
        for (int i = 0; i < PX_INV_COUNT; i++)
            o->invalid[i] = LOAD(s->c.invalid[i]);
        for (int i = 0; i < PX_CLOSE_COUNT; i++)
            o->closed[i] = LOAD(s->c.closed[i]);
        atomic_thread_fence(memory_order_acquire);
        after = atomic_load_explicit(&s->seq, memory_order_relaxed);
        if (before == after || writing)
            return;
    }
}

uint64_t px_counts_rejected(const px_counts_t *c)
{
    uint64_t n = 0;
    for (int i = 0; i < PX_REJ_COUNT; i++)
        n += c->rejected[i];
    return n;
}

uint64_t px_counts_invalid(const px_counts_t *c)
{
    uint64_t n = 0;
    for (int i = 0; i < PX_INV_COUNT; i++)
        n += c->invalid[i];
    return n;
}
