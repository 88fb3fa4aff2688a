/* The daemon's lifecycle: bind, serve, drain, stop, reload. This file only wires the layers
 * together: answers reach connections through the engine's sink, connections report closing and
 * control lines through net events, listeners hand connections over through their accept
 * callback. */
#include "daemon/server.h"

#include "common/clock.h"
#include "common/log.h"
#include "daemon/core/notify.h"
#include "daemon/handlers/handlers.h"
#include "daemon/ops/control.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void check_drained(px_server_t *srv);

/* Runs once per loop iteration, after every read and completion callback of that poll: the
 * workers that were given requests are woken once, however many connections fed them, and each
 * connection gets one write for all its answers. Per read callback instead, 50 busy connections
 * cost up to 50 wake-ups of the same worker per iteration. */
static void on_tick(uv_check_t *t)
{
    px_server_t *srv = t->data;

    if (srv->eng.pool) {
        px_pool_kick(srv->eng.pool);
        /* Answers that came back while this iteration read: out now, not one poll later. */
        px_pool_reap(srv->eng.pool);
    }
    px_conn_flush_all(&srv->net);
}

/* The engine's sink and the connections' events, wired to the layers that serve them. */
static void sink_flush(void *arg)
{
    px_server_t *srv = arg;

    px_conn_flush_all(&srv->net);
}

static void sink_after(void *arg)
{
    check_drained(arg);
}

static void net_closed(void *arg)
{
    px_server_t *srv = arg;

    if (srv->finishing)
        check_drained(srv);
}

/* Answers of executor jobs go back to their partition thread, the rest to connections. */
static void sink_deliver(void *origin, const char *line, size_t len)
{
    if (!px_clustered_deliver(origin, line, len))
        px_conn_deliver(origin, line, len);
}

static int net_submit(void *arg, const px_submit_t *s, const px_line_t *line, px_verdict_t *v)
{
    px_server_t *srv = arg;

    return px_clustered_submit(srv->cx, s, line, v);
}

static int net_lookup(void *arg, const char *idem, const char *id, size_t id_len, void *origin,
                      px_verdict_t *v)
{
    px_server_t *srv = arg;

    return px_clustered_lookup(srv->cx, idem, id, id_len, origin, v);
}

static void cluster_changed(void *arg)
{
    px_server_t *srv = arg;

    px_conn_flush_all(&srv->net);
    check_drained(srv);
}

static json_t *cluster_report(void *arg)
{
    return px_clustered_report(arg);
}

static int cluster_up(void *arg)
{
    return px_clustered_connected(arg);
}

static json_t *net_control(void *arg, const px_line_t *line, char *msg, size_t msglen)
{
    px_server_t *srv = arg;

    return px_control_run(&srv->watch, line, msg, msglen);
}

static void on_accept(void *arg, uv_stream_t *listener)
{
    px_server_t *srv = arg;

    px_conn_accept(&srv->net, listener);
}

static void on_closed_noop(uv_handle_t *h) {}

static void close_handles(px_server_t *srv)
{
    px_listener_close(&srv->listeners);
    px_sdstatus_close(&srv->sd);
    if (!uv_is_closing((uv_handle_t *)&srv->sigterm)) {
        uv_close((uv_handle_t *)&srv->sigterm, on_closed_noop);
        uv_close((uv_handle_t *)&srv->sigint, on_closed_noop);
        uv_close((uv_handle_t *)&srv->sighup, on_closed_noop);
        uv_close((uv_handle_t *)&srv->sigchld, on_closed_noop);
        uv_close((uv_handle_t *)&srv->slow_timer, on_closed_noop);
        uv_close((uv_handle_t *)&srv->drain_timer, on_closed_noop);
        uv_close((uv_handle_t *)&srv->tick, on_closed_noop);
    }
}

static void check_drained(px_server_t *srv)
{
    px_pool_t *pool = srv->eng.pool;
    px_counts_t n;

    if (srv->cluster_draining && !atomic_load(&srv->eng.draining)) {
        /* Partitions go first (their running batches still need the engine), and the requests
         * this instance accepted wait for their answers from wherever they run. */
        if (!px_clustered_idle(srv->cx))
            return;
        px_engine_close(&srv->eng);
    }
    if (!atomic_load(&srv->eng.draining))
        return;
    if (!srv->finishing) {
        px_stats_snapshot(&srv->stats, &n);
        if (n.in_flight > 0 || px_pool_live(pool) > 0)
            return;
        srv->finishing = 1;
        px_notice("drain: all requests answered (%llu ok, %llu failed); closing %u connections",
                  (unsigned long long)n.ok, (unsigned long long)n.failed, srv->net.nconns);
        px_conn_close_all(&srv->net, 0);
    }
    if (srv->net.nconns == 0 && pool) {
        /* Last step: nothing is left to answer or write. The metrics thread reads the pool, so
         * it stops first. Threads stuck in a handler (forced stop, replaced workers) keep the
         * pool alive; the process exit takes them. */
        px_metrics_stop(srv->metrics);
        srv->metrics = NULL;
        px_supervisor_stop(srv->sup);
        srv->sup = NULL;
        if (px_pool_live(pool) == 0 && px_pool_strays(pool) == 0) {
            px_engine_release_pool(&srv->eng);
        } else {
            /* Kept reachable (main holds srv in a static) so leak checkers see it as
             * deliberately left for the process exit, not lost. */
            srv->leaked = pool;
            px_pool_abandon(pool);
            uv_stop(srv->loop);
        }
        srv->eng.pool = NULL;
        if (srv->cx) {
            px_clustered_stop(srv->cx);
            srv->cx = NULL;
        }
        close_handles(srv);
    }
}

/* The drain ran out of time or was told to hurry: cancel what is queued, abandon what runs. */
static void force(px_server_t *srv)
{
    if (srv->forced || srv->finishing) {
        /* Already closing connections: clients that do not read their answers lose them now. */
        px_conn_close_all(&srv->net, 1);
        return;
    }
    srv->forced = 1;
    if (srv->cx) {
        px_clustered_cancel(srv->cx);
        if (!atomic_load(&srv->eng.draining))
            px_engine_close(&srv->eng);
    }
    px_engine_cancel_all(&srv->eng);
    /* Stuck workers will never report: treat the drain as complete. */
    srv->finishing = 1;
    px_conn_close_all(&srv->net, 0);
    check_drained(srv);
}

static void on_drain_timeout(uv_timer_t *t)
{
    px_server_t *srv = t->data;

    px_warn("drain: drain_timeout_ms (%lld) passed", (long long)srv->cfg.drain_timeout_ms);
    force(srv);
    /* Give slow readers as long again to take their last answers, then cut them off. */
    uv_timer_start(&srv->drain_timer, on_drain_timeout, (uint64_t)srv->cfg.drain_timeout_ms + 1, 0);
}

void px_server_drain(px_server_t *srv)
{
    if (atomic_load(&srv->eng.draining) || srv->cluster_draining) {
        px_warn("drain: second signal; stopping now");
        force(srv);
        return;
    }
    px_notify("STOPPING=1\nSTATUS=draining: finishing in-flight requests");
    px_notice("drain: stopped accepting connections; finishing in-flight requests (at most %lld "
              "ms; a second signal stops at once)",
              (long long)srv->cfg.drain_timeout_ms);
    px_listener_close(&srv->listeners);
    if (srv->cx) {
        srv->cluster_draining = 1;
        px_clustered_drain(srv->cx);
    } else {
        px_engine_close(&srv->eng);
    }
    uv_timer_start(&srv->drain_timer, on_drain_timeout, (uint64_t)srv->cfg.drain_timeout_ms, 0);
    check_drained(srv);
}

static void on_signal(uv_signal_t *s, int signum)
{
    px_server_t *srv = s->data;

    if (signum == SIGHUP) {
        px_server_reload(srv);
        return;
    }
    px_notice("received %s", signum == SIGTERM ? "SIGTERM" : "SIGINT");
    px_server_drain(srv);
}

void px_server_reload(px_server_t *srv)
{
    px_registry_t *reg;
    px_config_t nc, *oc = &srv->cfg;
    char err[512], kept[512] = "";

    if (!srv->reload || atomic_load(&srv->eng.draining))
        return;
    px_notify("RELOADING=1\nSTATUS=reloading configuration");
    if (srv->reload(&nc, err, sizeof err, srv->reload_arg)) {
        px_err("reload: %s; keeping the running configuration", err);
        px_config_clear(&nc);
        goto done;
    }
    /* Handlers first: a definition that does not build keeps everything as it was. Requests
     * already queued keep the registry they were accepted with (each holds a reference). */
    if (!(reg = px_handlers_build(&nc, err, sizeof err))) {
        px_err("reload: %s; keeping the running configuration", err);
        px_config_clear(&nc);
        goto done;
    }
    px_engine_set_registry(&srv->eng, reg);
    /* The table says which keys a reload may change; the others keep their running value. */
    for (size_t i = 0; i < px_config_nkeys; i++) {
        const px_config_key_t *k = &px_config_keys[i];
        if (k->reload != PX_RELOAD_RESTART || !px_config_differs(&nc, oc, k))
            continue;
        snprintf(kept + strlen(kept), sizeof kept - strlen(kept), "%s%s", kept[0] ? ", " : "",
                 k->name);
        px_config_keep(&nc, oc, k);
    }
    if (kept[0])
        px_warn("reload: %s cannot change while running; restart parexd to apply them", kept);
    px_config_clear(oc);
    *oc = nc;
    atomic_store(&px_log_level, (int)nc.log_level);
    atomic_store(&srv->watch.bp_threshold, nc.backpressure_threshold);
    px_pool_set_limits(srv->eng.pool, (uint64_t)nc.stall_after_ms * PX_MS,
                       (uint64_t)nc.dead_after_ms * PX_MS);
    px_supervisor_set_interval(srv->sup, (uint64_t)nc.supervise_interval_ms);
    px_metrics_reconfigure(srv->metrics, oc);
    px_notice("reload: configuration applied (log_level %s, backpressure_threshold %.2f, "
              "stall_after_ms %lld, on_stall %s, %zu handlers)",
              px_log_level_name((int)nc.log_level), nc.backpressure_threshold,
              (long long)nc.stall_after_ms,
              nc.on_stall == PX_ON_STALL_REPLACE ? "replace" : "report", px_registry_count(reg));
done:
    px_sdstatus_ready(&srv->sd);
}

/* Something left an exec program's process group and has now ended: parexd, its subreaper,
 * reaps it so no zombie stays behind. */
static void on_sigchld(uv_signal_t *s, int signum)
{
    int n = px_exec_reap_orphans();

    if (n > 0)
        px_debug("exec: reaped %d process(es) that had left their program's group", n);
}

static void on_slow_timer(uv_timer_t *t)
{
    px_server_t *srv = t->data;

    px_conn_sweep_slow(&srv->net, px_now_ns());
}

static void init_handles(px_server_t *srv, uv_loop_t *loop)
{
    uv_signal_init(loop, &srv->sigterm);
    uv_signal_init(loop, &srv->sigint);
    uv_signal_init(loop, &srv->sighup);
    srv->sigterm.data = srv->sigint.data = srv->sighup.data = srv;
    uv_signal_start(&srv->sigterm, on_signal, SIGTERM);
    uv_signal_start(&srv->sigint, on_signal, SIGINT);
    uv_signal_start(&srv->sighup, on_signal, SIGHUP);
    px_exec_become_subreaper();
    uv_signal_init(loop, &srv->sigchld);
    uv_signal_start(&srv->sigchld, on_sigchld, SIGCHLD);
    uv_unref((uv_handle_t *)&srv->sigchld);
    /* Every 100 ms: a line older than partial_line_timeout_ms is closed within 100 ms of it. */
    uv_timer_init(loop, &srv->slow_timer);
    srv->slow_timer.data = srv;
    uv_timer_start(&srv->slow_timer, on_slow_timer, 100, 100);
    uv_unref((uv_handle_t *)&srv->slow_timer);
    uv_timer_init(loop, &srv->drain_timer);
    srv->drain_timer.data = srv;
    uv_unref((uv_handle_t *)&srv->drain_timer);
    uv_check_init(loop, &srv->tick);
    srv->tick.data = srv;
    uv_check_start(&srv->tick, on_tick);
    uv_unref((uv_handle_t *)&srv->tick);
    px_sdstatus_init(&srv->sd, loop, &srv->watch);
}

int px_server_init(px_server_t *srv, uv_loop_t *loop, const px_config_t *cfg,
                   px_config_loader_t reload, void *reload_arg, char *err, size_t errlen)
{
    const px_sink_t sink = {
        .deliver = sink_deliver, .flush = sink_flush, .after = sink_after, .arg = srv};
    const px_net_events_t ev = {.closed = net_closed,
                                .control = net_control,
                                .submit = cfg->cluster.on ? net_submit : NULL,
                                .lookup = cfg->cluster.on ? net_lookup : NULL,
                                .arg = srv};
    px_registry_t *reg;

    memset(srv, 0, sizeof *srv);
    srv->loop = loop;
    srv->cfg = *cfg;
    json_incref(srv->cfg.handlers); /* the server keeps its own reference */
    srv->reload = reload;
    srv->reload_arg = reload_arg;
    srv->watch.eng = &srv->eng;
    srv->watch.stats = &srv->stats;
    srv->watch.start_time_unix = (uint64_t)time(NULL);
    atomic_init(&srv->watch.bp_threshold, cfg->backpressure_threshold);
    init_handles(srv, loop);
    px_net_init(&srv->net, loop, &srv->cfg, &srv->stats, &srv->eng, &ev);
    if (!(reg = px_handlers_build(cfg, err, errlen)))
        goto fail;
    if (px_engine_init(&srv->eng, loop, &srv->cfg, &srv->stats, reg, &sink, err, errlen))
        goto fail;
    /* Both addresses first: one that cannot be bound stops start-up before any worker thread
     * exists, so that failure path has no thread to wait for. */
    if (px_listener_open(&srv->listeners, loop, &srv->cfg, on_accept, srv, err, errlen))
        goto fail_pool;
    if (px_metrics_start(&srv->metrics, &srv->cfg, &srv->watch, err, errlen))
        goto fail_pool;
    if (px_engine_start(&srv->eng, err, errlen))
        goto fail_metrics;
    if (cfg->cluster.on) {
        if (px_clustered_start(&srv->cx, loop, &srv->cfg, &srv->eng, px_conn_deliver,
                               cluster_changed, srv, err, errlen))
            goto fail_metrics;
        srv->watch.cluster = cluster_report;
        srv->watch.cluster_up = cluster_up;
        srv->watch.cluster_arg = srv->cx;
    }
    if (!(srv->sup = px_supervisor_start(loop, &srv->watch, &srv->cfg))) {
        snprintf(err, errlen, "out of memory starting the supervisor");
        goto fail_metrics;
    }
    px_sdstatus_start(&srv->sd);
    px_notice("parexd %s: %lld workers, queue_capacity %lld; listening for requests on %s, "
              "metrics on %s",
              PX_VERSION, (long long)cfg->workers, (long long)cfg->queue_capacity,
              srv->listeners.addr, px_metrics_addr(srv->metrics));
    return 0;

fail_metrics:
    px_metrics_stop(srv->metrics);
    srv->metrics = NULL;
fail_pool:
    /* Nothing has run yet: every worker exits as soon as its queue closes, and is joined before
     * the pool goes. The caller runs the loop once more to let the closed handles go. */
    px_pool_stop(srv->eng.pool);
    px_engine_release_pool(&srv->eng);
fail:
    close_handles(srv);
    return -1;
}

void px_server_free(px_server_t *srv)
{
    px_engine_free(&srv->eng);
    px_net_free(&srv->net);
    px_config_clear(&srv->cfg);
}
