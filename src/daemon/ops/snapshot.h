/* A point-in-time copy of everything the daemon reports about itself, taken from any thread
 * without stopping anything: the loop's counters through their sequence lock, each worker's
 * atomics and histograms, each handler's counters, the published parked list and the hot-key
 * sketches. The renderers (report.h) read only a snapshot, so they can be tested with a
 * hand-built one. */
#ifndef PX_SNAPSHOT_H
#define PX_SNAPSHOT_H

#include "common/hist.h"
#include "daemon/core/handler.h"
#include "daemon/core/stats.h"
#include "daemon/exec/engine.h"
#include "daemon/exec/pool.h"

#include <jansson.h>
#include <stdatomic.h>

/* Where snapshots are taken from: owned by the server, read by any thread. */
typedef struct px_snapshot_src {
    px_engine_t *eng;
    px_stats_t *stats;
    _Atomic double bp_threshold; /* live copy of cfg.backpressure_threshold */
    uint64_t start_time_unix;
    /* Cluster mode (set before the endpoints start, else NULL): its /stats section and whether
     * its NATS connection is up. Any thread. */
    json_t *(*cluster)(void *arg);
    int (*cluster_up)(void *arg);
    void *cluster_arg;
} px_snapshot_src_t;

typedef struct px_snap_handler {
    char name[64], type[16];
    uint64_t requests, ok, attempts, failed[PX_F_COUNT];
    int concurrency, max_concurrency;
    double per_second, tokens;
    px_hist_snap_t run_us;
} px_snap_handler_t;

typedef struct px_snapshot {
    px_counts_t n;
    double bp_threshold;
    int draining;
    uint64_t start_time_unix;
    uint32_t nworkers;
    px_worker_info_t *workers; /* nworkers */
    int keyed;                 /* scheduling keyed: the shared backlog below */
    uint32_t keyed_depth, keyed_capacity, keyed_keys;
    px_hist_snap_t *queue_us, *run_us; /* merged over the workers (PX_SNAP_FULL) */
    size_t nhandlers;
    px_snap_handler_t *handlers; /* PX_SNAP_FULL */
    json_t *parked, *top;        /* PX_SNAP_FULL; owned */
    double imbalance;            /* PX_SNAP_FULL */
    json_t *cluster;             /* PX_SNAP_FULL in cluster mode; owned */
    int cluster_mode, cluster_down;
} px_snapshot_t;

/* PX_SNAP_WORKERS: counters and workers only (health, status line); PX_SNAP_FULL: everything. */
enum { PX_SNAP_WORKERS, PX_SNAP_FULL };

/* 0, or -ENOMEM (then nothing needs freeing). Any thread while the pool exists. */
int px_snapshot_take(px_snapshot_src_t *src, int what, px_snapshot_t *s);
void px_snapshot_free(px_snapshot_t *s);

/* 1 when a worker's queue is at or above threshold x capacity. */
int px_snapshot_worker_bp(const px_snapshot_t *s, const px_worker_info_t *w);
/* 1 when any worker's queue (or the keyed backlog) is at or above the threshold. */
int px_snapshot_backpressure(const px_snapshot_t *s);

#endif
