/* Supervision runs on the loop, so answering a stalled request and replacing its thread need no
 * extra locking against connections: the loop owns both. */
#include "daemon/ops/supervisor.h"

#include "common/clock.h"
#include "daemon/net/conn.h"
#include "common/log.h"
#include "daemon/ops/report.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct px_supervisor {
    uv_timer_t timer;
    px_server_t *srv;
    int any_bp, any_dead;
    uint32_t n;
    struct {
        unsigned char state, bp;
    } w[];
};

static void replace(px_supervisor_t *sup, uint32_t i, const px_worker_info_t *w)
{
    px_server_t *srv = sup->srv;
    char msg[512];
    px_req_t *r;
    int rc;

    r = px_pool_replace(srv->pool, i, &rc);
    if (!r)
        return; /* it finished just now */
    snprintf(msg, sizeof msg,
             "worker %u was stuck on this request for %.0f ms (stall_after_ms %lld); it was "
             "abandoned and the partition moved on",
             i, (double)w->busy_for_ns / 1e6, (long long)srv->cfg.stall_after_ms);
    px_server_fail_request(srv, r, "worker_stalled", msg);
    px_conn_flush_all(srv);
    if (rc)
        px_err("supervisor: worker %u: cannot start a replacement thread: %s", i, strerror(rc));
    else
        px_warn("supervisor: worker %u replaced: the stalled thread (key '%s', op '%s') is "
                "abandoned, its late result will be discarded",
                i, w->current_key, w->current_op);
}

static void on_tick(uv_timer_t *t)
{
    px_supervisor_t *sup = t->data;
    px_server_t *srv = sup->srv;
    int any_bp = 0, any_dead = 0;

    if (!srv->pool)
        return;
    for (uint32_t i = 0; i < sup->n; i++) {
        px_worker_info_t w;
        int bp;

        px_pool_info(srv->pool, i, &w);
        bp = px_report_backpressure(srv, &w);
        if (bp != sup->w[i].bp) {
            if (bp)
                px_warn("backpressure: worker %u queue at %u of %u (threshold %.2f)", i, w.depth,
                        w.capacity, atomic_load(&srv->bp_threshold));
            else
                px_notice("backpressure: worker %u back to %u of %u", i, w.depth, w.capacity);
            sup->w[i].bp = (unsigned char)bp;
        }
        any_bp |= bp;
        if (w.state != sup->w[i].state) {
            if (w.state == PX_WS_STALLED)
                px_warn("supervisor: worker %u stalled: busy %.0f ms on key '%s' op '%s'", i,
                        (double)w.busy_for_ns / 1e6, w.current_key, w.current_op);
            else if (w.state == PX_WS_DEAD)
                px_err("supervisor: worker %u dead: no heartbeat for %.0f ms", i,
                       (double)w.heartbeat_age_ns / 1e6);
            else if (sup->w[i].state == PX_WS_STALLED || sup->w[i].state == PX_WS_DEAD)
                px_notice("supervisor: worker %u recovered (%s)", i, px_worker_state_name(w.state));
            sup->w[i].state = (unsigned char)w.state;
        }
        if (w.state == PX_WS_STALLED && srv->cfg.on_stall == PX_ON_STALL_REPLACE)
            replace(sup, i, &w);
        any_dead |= w.state == PX_WS_DEAD;
    }
    px_server_sweep_keys(srv);
    if (any_bp != sup->any_bp)
        px_notice("backpressure: daemon %s", any_bp ? "under backpressure" : "clear");
    sup->any_bp = any_bp;
    sup->any_dead = any_dead;
}

px_supervisor_t *px_supervisor_start(px_server_t *srv)
{
    uint32_t n = px_pool_size(srv->pool);
    px_supervisor_t *sup = calloc(1, sizeof *sup + n * sizeof sup->w[0]);

    if (!sup)
        return NULL;
    sup->srv = srv;
    sup->n = n;
    uv_timer_init(srv->loop, &sup->timer);
    sup->timer.data = sup;
    uv_timer_start(&sup->timer, on_tick, (uint64_t)srv->cfg.supervise_interval_ms,
                   (uint64_t)srv->cfg.supervise_interval_ms);
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

int px_supervisor_any_dead(const px_supervisor_t *sup)
{
    return sup ? sup->any_dead : 0;
}

void px_supervisor_set_interval(px_supervisor_t *sup, uint64_t ms)
{
    if (sup && uv_timer_get_repeat(&sup->timer) != ms)
        uv_timer_start(&sup->timer, on_tick, ms, ms);
}
