/* Supervision runs on the loop, so answering a stalled request and replacing its thread need no
 * extra locking against connections: the loop owns both. */
#include "daemon/ops/supervisor.h"

#include "common/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct px_supervisor {
    uv_timer_t timer;
    px_snapshot_src_t *src;
    const px_config_t *cfg;
    int any_bp;
    uint32_t n;
    struct {
        unsigned char state, bp;
    } w[];
};

static void on_tick(uv_timer_t *t)
{
    px_supervisor_t *sup = t->data;
    px_engine_t *e = sup->src->eng;
    px_snapshot_t s;
    int any_bp;

    if (px_snapshot_take(sup->src, PX_SNAP_WORKERS, &s))
        return;
    for (uint32_t i = 0; i < sup->n; i++) {
        const px_worker_info_t *w = &s.workers[i];
        int bp = px_snapshot_worker_bp(&s, w);

        if (bp != sup->w[i].bp) {
            if (bp)
                px_warn("backpressure: worker %u queue at %u of %u (threshold %.2f)", i, w->depth,
                        w->capacity, s.bp_threshold);
            else
                px_notice("backpressure: worker %u back to %u of %u", i, w->depth, w->capacity);
            sup->w[i].bp = (unsigned char)bp;
        }
        if (w->state != sup->w[i].state) {
            if (w->state == PX_WS_STALLED)
                px_warn("supervisor: worker %u stalled: busy %.0f ms on key '%s' op '%s'", i,
                        (double)w->busy_for_ns / 1e6, w->current_key, w->current_op);
            else if (w->state == PX_WS_DEAD)
                px_err("supervisor: worker %u dead: no heartbeat for %.0f ms", i,
                       (double)w->heartbeat_age_ns / 1e6);
            else if (sup->w[i].state == PX_WS_STALLED || sup->w[i].state == PX_WS_DEAD)
                px_notice("supervisor: worker %u recovered (%s)", i,
                          px_worker_state_name(w->state));
            sup->w[i].state = (unsigned char)w->state;
        }
        if (w->state == PX_WS_STALLED && sup->cfg->on_stall == PX_ON_STALL_REPLACE)
            px_engine_replace(e, i, w);
    }
    any_bp = px_snapshot_backpressure(&s);
    px_snapshot_free(&s);
    px_keys_sweep(&e->keys);
    if (any_bp != sup->any_bp)
        px_notice("backpressure: daemon %s", any_bp ? "under backpressure" : "clear");
    sup->any_bp = any_bp;
}

px_supervisor_t *px_supervisor_start(uv_loop_t *loop, px_snapshot_src_t *src,
                                     const px_config_t *cfg)
{
    uint32_t n = px_pool_size(src->eng->pool);
    px_supervisor_t *sup = calloc(1, sizeof *sup + n * sizeof sup->w[0]);

    if (!sup)
        return NULL;
    sup->src = src;
    sup->cfg = cfg;
    sup->n = n;
    uv_timer_init(loop, &sup->timer);
    sup->timer.data = sup;
    uv_timer_start(&sup->timer, on_tick, (uint64_t)cfg->supervise_interval_ms,
                   (uint64_t)cfg->supervise_interval_ms);
    uv_unref((uv_handle_t *)&sup->timer);
    return sup;
}

static void on_closed(uv_handle_t *h)
{
    free(h->data);
}

void px_supervisor_stop(px_supervisor_t *sup)
{
    if (sup)
        uv_close((uv_handle_t *)&sup->timer, on_closed);
}

void px_supervisor_set_interval(px_supervisor_t *sup, uint64_t ms)
{
    if (sup && uv_timer_get_repeat(&sup->timer) != ms)
        uv_timer_start(&sup->timer, on_tick, ms, ms);
}
