/* Daemon-wide request counters. The event loop is their only writer; readers on other threads
 * (the metrics server) take a consistent snapshot through a sequence lock, so a scrape sees
 * received == rejected + ok + failed + in_flight exactly, without a lock on the request path. */
#ifndef PX_STATS_H
#define PX_STATS_H

#include "common/protocol.h"

#include <stdatomic.h>
#include <stdint.h>

enum px_reject {
    PX_REJ_QUEUE_FULL,
    PX_REJ_SHUTTING_DOWN,
    PX_REJ_UNAUTHORIZED,
    PX_REJ_KEY_BUSY,
    PX_REJ_KEY_PARKED,
    PX_REJ_CONNECTION_BUSY, /* max_in_flight_per_connection */
    PX_REJ_OVERLOADED,      /* a global memory budget is spent */
    PX_REJ_LEASE_LOST,      /* cluster mode: a fetched request whose partition lease ended first */
    PX_REJ_COUNT
};
const char *px_reject_code(enum px_reject r);

/* Connections parexd closed on its own initiative, by reason. */
enum px_close {
    PX_CLOSE_HTTP,      /* an HTTP request (a web page's fetch) sent to the line port */
    PX_CLOSE_SLOW_LINE, /* a partial line older than partial_line_timeout_ms (slowloris) */
    PX_CLOSE_COUNT
};
const char *px_close_reason(enum px_close r);

typedef struct px_counts {
    uint64_t received, accepted, ok, failed, in_flight, connections, dropped, late;
    uint64_t keys_parked, key_parks;
    uint64_t rejected[PX_REJ_COUNT];
    uint64_t invalid[PX_INV_COUNT];
    uint64_t closed[PX_CLOSE_COUNT];
} px_counts_t;

typedef struct px_stats {
    _Atomic uint64_t seq;
    int depth; /* loop-only: nesting of px_stats_begin */
    struct {
        _Atomic uint64_t received, accepted, ok, failed, in_flight, connections, dropped;
        _Atomic uint64_t late; /* results of abandoned requests, discarded */
        _Atomic uint64_t keys_parked, key_parks;
        _Atomic uint64_t rejected[PX_REJ_COUNT];
        _Atomic uint64_t invalid[PX_INV_COUNT];
        _Atomic uint64_t closed[PX_CLOSE_COUNT];
    } c;
} px_stats_t;

/* Loop thread: bracket every batch of updates. Nesting is allowed. */
void px_stats_begin(px_stats_t *s);
void px_stats_end(px_stats_t *s);
/* Loop thread, inside begin/end. */
static inline void px_stats_add(_Atomic uint64_t *field, int64_t delta)
{
    atomic_store_explicit(field,
                          atomic_load_explicit(field, memory_order_relaxed) + (uint64_t)delta,
                          memory_order_relaxed);
}
/* Any thread. */
void px_stats_snapshot(px_stats_t *s, px_counts_t *out);
uint64_t px_counts_rejected(const px_counts_t *c);
uint64_t px_counts_invalid(const px_counts_t *c);

#endif
