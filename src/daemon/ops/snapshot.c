/* Taking a snapshot reads only atomics, sequence-locked counters and tiny per-worker and
 * per-handler locks: a scrape never holds anything a request waits on. */
#include "daemon/ops/snapshot.h"

#include "common/clock.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static double tokens_now(px_handler_ctl_t *ctl)
{
    double t;

    pthread_mutex_lock(&ctl->mu);
    t = ctl->tokens;
    pthread_mutex_unlock(&ctl->mu);
    return t;
}

static int take_handlers(px_snapshot_src_t *src, px_snapshot_t *s)
{
    px_registry_t *reg = px_engine_registry(src->eng);
    size_t n = px_registry_count(reg);

    s->handlers = calloc(n ? n : 1, sizeof *s->handlers);
    if (!s->handlers) {
        px_registry_unref(reg);
        return -ENOMEM;
    }
    s->nhandlers = n;
    for (size_t i = 0; i < n; i++) {
        const px_handler_t *x = px_registry_at(reg, i);
        px_handler_ctl_t *ctl = x->ctl;
        px_snap_handler_t *o = &s->handlers[i];

        snprintf(o->name, sizeof o->name, "%s", x->name);
        snprintf(o->type, sizeof o->type, "%s", x->type);
        o->requests = atomic_load(&ctl->st->requests);
        o->ok = atomic_load(&ctl->st->ok);
        o->attempts = atomic_load(&ctl->st->attempts);
        for (int f = 0; f < PX_F_COUNT; f++)
            o->failed[f] = atomic_load(&ctl->st->failed[f]);
        o->concurrency = atomic_load(&ctl->concurrency);
        o->max_concurrency = ctl->max_concurrency;
        o->per_second = ctl->per_second;
        if (ctl->per_second > 0)
            o->tokens = tokens_now(ctl);
        px_hist_merge(&o->run_us, &ctl->st->run_us);
    }
    px_registry_unref(reg);
    return 0;
}

int px_snapshot_take(px_snapshot_src_t *src, int what, px_snapshot_t *s)
{
    px_pool_t *pool = src->eng->pool;
    uint64_t now = px_now_ns();

    memset(s, 0, sizeof *s);
    px_stats_snapshot(src->stats, &s->n);
    s->bp_threshold = atomic_load(&src->bp_threshold);
    s->draining = atomic_load(&src->eng->draining);
    s->start_time_unix = src->start_time_unix;
    s->nworkers = px_pool_size(pool);
    if (!(s->workers = calloc(s->nworkers, sizeof *s->workers)))
        return -ENOMEM;
    for (uint32_t i = 0; i < s->nworkers; i++)
        px_pool_info(pool, i, &s->workers[i]);
    s->keyed = px_pool_keyed(pool, &s->keyed_depth, &s->keyed_capacity, &s->keyed_keys);
    if (src->cluster) {
        s->cluster_mode = 1;
        s->cluster_down = !src->cluster_up(src->cluster_arg);
    }
    if (what == PX_SNAP_WORKERS)
        return 0;
    if (src->cluster)
        s->cluster = src->cluster(src->cluster_arg);
    if (!(s->queue_us = calloc(2, sizeof *s->queue_us)) || take_handlers(src, s)) {
        px_snapshot_free(s);
        return -ENOMEM;
    }
    s->run_us = s->queue_us + 1;
    for (uint32_t i = 0; i < s->nworkers; i++)
        px_pool_hists(pool, i, s->queue_us, s->run_us);
    s->parked = px_keys_parked(&src->eng->keys);
    s->top = px_hot_top(src->eng->hot, 10, now);
    s->imbalance = px_hot_imbalance(src->eng->hot, now);
    return 0;
}

void px_snapshot_free(px_snapshot_t *s)
{
    free(s->workers);
    free(s->queue_us);
    free(s->handlers);
    json_decref(s->parked);
    json_decref(s->top);
    json_decref(s->cluster);
    memset(s, 0, sizeof *s);
}

int px_snapshot_worker_bp(const px_snapshot_t *s, const px_worker_info_t *w)
{
    return w->capacity > 0 && (double)w->depth >= s->bp_threshold * (double)w->capacity;
}

int px_snapshot_backpressure(const px_snapshot_t *s)
{
    if (s->keyed && (double)s->keyed_depth >= s->bp_threshold * (double)s->keyed_capacity)
        return 1;
    for (uint32_t i = 0; i < s->nworkers; i++)
        if (px_snapshot_worker_bp(s, &s->workers[i]))
            return 1;
    return 0;
}
