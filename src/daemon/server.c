/* The front end's lifecycle: bind, serve, drain, stop. Completed requests come back from the
 * pool in batches (one wake-up for many) and are handed to their connections here. */
#include "daemon/server.h"

#include "common/clock.h"
#include "daemon/net/conn.h"
#include "daemon/net/listener.h"
#include "common/log.h"
#include "daemon/ops/metrics.h"
#include "daemon/core/notify.h"
#include "common/route.h"
#include "daemon/ops/supervisor.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double ns_ms(uint64_t ns)
{
    return (double)ns / 1e6;
}

void px_server_key_done(px_server_t *srv, px_req_t *r)
{
    px_key_t *k = r->kent;

    if (!k)
        return;
    r->kent = NULL;
    k->in_flight--;
    if (r->parked) {
        /* This failure parked the key: keep its reason, from the answer the worker built. */
        json_t *o = json_loadb(r->out.data, r->out.len, 0, NULL);
        const char *msg =
            json_string_value(json_object_get(json_object_get(o, "error"), "message"));
        snprintf(k->last_error, sizeof k->last_error, "%s", msg ? msg : "(no message)");
        json_decref(o);
        k->parks++;
        px_stats_add(&srv->stats.c.key_parks, 1);
        px_stats_add(&srv->stats.c.keys_parked, 1);
        px_warn("quarantine: key '%.*s' parked for %lld ms after %d consecutive failures; last "
                "error: %s",
                (int)k->len, k->key, (long long)srv->cfg.quarantine_for_ms, r->parked,
                k->last_error);
        px_server_publish_parked(srv);
    }
    px_keytab_release(&srv->keys, k, px_now_ns());
}

/* Loop thread: answers a request its worker skipped because its key was parked. */
static void answer_skipped(px_server_t *srv, px_req_t *r)
{
    px_key_t *k = r->kent;
    uint64_t now = px_now_ns(), until = atomic_load(&k->parked_until_ns);
    char msg[320], extra[48];
    px_resp_t resp = {.id = px_req_id(r),
                      .id_len = r->id_len,
                      .status = "rejected",
                      .worker = (int)r->worker,
                      .code = "key_parked",
                      .message = msg,
                      .queue_ms = -1,
                      .extra = extra};
    px_buf_t line = {0};

    snprintf(msg, sizeof msg,
             "key is parked after repeated failures (last error: %.200s); it is admitted again "
             "in %llu ms or after parexctl unpark",
             k->last_error, (unsigned long long)(until > now ? (until - now) / PX_MS : 0));
    snprintf(extra, sizeof extra, ",\"retry_after_ms\":%llu",
             (unsigned long long)(until > now ? (until - now) / PX_MS + 1 : 1));
    px_stats_add(&srv->stats.c.rejected[PX_REJ_KEY_PARKED], 1);
    px_stats_add(&srv->stats.c.accepted, -1); /* it never ran: rejected after all */
    px_stats_add(&srv->stats.c.in_flight, -1);
    px_server_key_done(srv, r);
    if (px_resp_format(&line, &resp) == 0)
        px_conn_deliver(r->conn, line.data, line.len);
    else
        px_conn_deliver(r->conn, "", 0);
    px_buf_free(&line);
}

/* Loop thread: a batch of finished requests, in completion order. */
static void on_done(px_req_t *list, void *arg)
{
    px_server_t *srv = arg;

    px_stats_begin(&srv->stats);
    while (list) {
        px_req_t *r = list;
        list = r->next;
        if (r->skipped) {
            answer_skipped(srv, r);
            px_req_free(r);
            continue;
        }
        if (atomic_load_explicit(&r->state, memory_order_acquire) == PX_REQ_ABANDONED) {
            /* Answered and counted when it was abandoned; the worker has let go of it now. */
            px_stats_add(&srv->stats.c.late, 1);
            px_req_free(r);
            continue;
        }
        px_stats_add(r->ok ? &srv->stats.c.ok : &srv->stats.c.failed, 1);
        px_stats_add(&srv->stats.c.in_flight, -1);
        px_server_key_done(srv, r);
        px_conn_deliver(r->conn, r->out.data, r->out.len);
        px_req_free(r);
    }
    px_stats_end(&srv->stats);
    px_server_check_drained(srv); /* the answers go out in on_tick's flush */
}

/* Runs once per loop iteration, after every read and completion callback of that poll: the
 * workers that were given requests are woken once, however many connections fed them, and each
 * connection gets one write for all its answers. Per read callback instead, 50 busy connections
 * cost up to 50 wake-ups of the same worker per iteration. */
static void on_tick(uv_check_t *t)
{
    px_server_t *srv = t->data;

    if (srv->pool) {
        px_pool_kick(srv->pool);
        /* Answers that came back while this iteration read: out now, not one poll later. */
        px_pool_reap(srv->pool);
    }
    px_conn_flush_all(srv);
}

static void on_closed_noop(uv_handle_t *h) {}

static void close_handles(px_server_t *srv)
{
    px_listener_close(srv);
    if (!uv_is_closing((uv_handle_t *)&srv->sigterm)) {
        uv_close((uv_handle_t *)&srv->sigterm, on_closed_noop);
        uv_close((uv_handle_t *)&srv->sigint, on_closed_noop);
        uv_close((uv_handle_t *)&srv->sighup, on_closed_noop);
        uv_close((uv_handle_t *)&srv->drain_timer, on_closed_noop);
        uv_close((uv_handle_t *)&srv->notify_timer, on_closed_noop);
        uv_close((uv_handle_t *)&srv->tick, on_closed_noop);
    }
}

void px_server_check_drained(px_server_t *srv)
{
    px_counts_t n;

    if (!srv->draining)
        return;
    if (!srv->finishing) {
        px_stats_snapshot(&srv->stats, &n);
        if (n.in_flight > 0 || px_pool_live(srv->pool) > 0)
            return;
        srv->finishing = 1;
        px_notice("drain: all requests answered (%llu ok, %llu failed); closing %u connections",
                  (unsigned long long)n.ok, (unsigned long long)n.failed, srv->nconns);
        px_conn_close_all(srv, 0);
    }
    if (srv->nconns == 0 && srv->pool) {
        /* Last step: nothing is left to answer or write. The metrics thread reads the pool, so
         * it stops first. Threads stuck in a handler (forced stop, replaced workers) keep the
         * pool alive; the process exit takes them. */
        px_metrics_stop(srv->metrics);
        srv->metrics = NULL;
        px_supervisor_stop(srv->sup);
        srv->sup = NULL;
        if (px_pool_live(srv->pool) == 0 && px_pool_strays(srv->pool) == 0) {
            px_pool_destroy(srv->pool);
        } else {
            /* Kept reachable (main holds srv in a static) so leak checkers see it as
             * deliberately left for the process exit, not lost. */
            srv->leaked = srv->pool;
            px_pool_abandon(srv->pool);
            uv_stop(srv->loop);
        }
        srv->pool = NULL;
        close_handles(srv);
    }
}

void px_server_fail_request(px_server_t *srv, px_req_t *r, const char *code, const char *message)
{
    uint64_t now = px_now_ns();
    uint64_t started = atomic_load(&r->state) == PX_REQ_ABANDONED ? r->start_ns : 0;
    px_resp_t resp = {.id = px_req_id(r),
                      .id_len = r->id_len,
                      .status = "failed",
                      .worker = (int)r->worker,
                      .code = code,
                      .message = message,
                      .queue_ms = ns_ms((started ? started : now) - r->recv_ns),
                      .run_ms = started ? ns_ms(now - started) : 0};
    px_buf_t line = {0};

    px_stats_begin(&srv->stats);
    px_stats_add(&srv->stats.c.failed, 1);
    px_stats_add(&srv->stats.c.in_flight, -1);
    px_server_key_done(srv, r);
    px_stats_end(&srv->stats);
    if (px_resp_format(&line, &resp) == 0)
        px_conn_deliver(r->conn, line.data, line.len);
    else
        px_conn_deliver(r->conn, "", 0);
    px_buf_free(&line);
}

/* The drain ran out of time or was told to hurry: cancel what is queued, abandon what runs. */
static void force(px_server_t *srv)
{
    px_req_t **v;
    size_t n;

    if (srv->forced || srv->finishing)
        goto close;
    srv->forced = 1;
    n = px_pool_take_all(srv->pool, &v);
    px_warn("drain: forced stop; cancelling %zu queued or running requests", n);
    for (size_t i = 0; i < n; i++) {
        px_req_t *r = v[i];
        int running = atomic_load(&r->state) == PX_REQ_ABANDONED;

        px_server_fail_request(srv, r, "cancelled",
                               running ? "parexd stopped before this request finished running"
                                       : "parexd stopped before this request could run");
        /* A running one still belongs to its worker until it comes back, unless the worker's
         * thread is gone (dead) and never will. */
        if (!running || !px_pool_thread_alive(srv->pool, r->worker))
            px_req_free(r);
    }
    free(v);
    px_conn_flush_all(srv);
    /* Stuck workers will never report: treat the drain as complete. */
    srv->finishing = 1;
    px_conn_close_all(srv, 0);
    px_server_check_drained(srv);
    return;
close:
    /* Already closing connections: clients that do not read their answers lose them now. */
    px_conn_close_all(srv, 1);
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
    if (atomic_load(&srv->draining)) {
        px_warn("drain: second signal; stopping now");
        force(srv);
        return;
    }
    srv->draining = 1;
    px_notify("STOPPING=1\nSTATUS=draining: finishing in-flight requests");
    px_notice("drain: stopped accepting connections; finishing in-flight requests (at most %lld "
              "ms; a second signal stops at once)",
              (long long)srv->cfg.drain_timeout_ms);
    px_listener_close(srv);
    px_pool_close(srv->pool);
    uv_timer_start(&srv->drain_timer, on_drain_timeout, (uint64_t)srv->cfg.drain_timeout_ms, 0);
    px_server_check_drained(srv);
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

/* One line for `systemctl status`: what the daemon is doing right now. */
static void status_line(px_server_t *srv, char *out, size_t len, int *any_dead)
{
    px_counts_t n;
    uint32_t stalled = 0, dead = 0;

    px_stats_snapshot(&srv->stats, &n);
    for (uint32_t i = 0; i < px_pool_size(srv->pool); i++) {
        px_worker_info_t w;
        px_pool_info(srv->pool, i, &w);
        stalled += w.state == PX_WS_STALLED;
        dead += w.state == PX_WS_DEAD;
    }
    *any_dead = dead > 0;
    snprintf(out, len,
             "%s: %llu connections, %llu in flight, %llu ok, %llu failed, %llu rejected%s%s",
             srv->draining ? "draining" : "serving", (unsigned long long)n.connections,
             (unsigned long long)n.in_flight, (unsigned long long)n.ok,
             (unsigned long long)n.failed, (unsigned long long)px_counts_rejected(&n),
             stalled ? ", worker stalled" : "", dead ? ", WORKER DEAD" : "");
}

/* The watchdog is fed from the loop, and only while no worker is dead: a daemon that has lost a
 * worker stops pinging and systemd restarts it (WatchdogSec, Restart=on-failure). */
static void on_notify_tick(uv_timer_t *t)
{
    px_server_t *srv = t->data;
    char status[256];
    int any_dead;

    if (!srv->pool)
        return;
    status_line(srv, status, sizeof status, &any_dead);
    if (strcmp(status, srv->last_status) != 0) {
        px_notify("STATUS=%s", status);
        snprintf(srv->last_status, sizeof srv->last_status, "%s", status);
    }
    if (srv->watchdog_usec && !any_dead)
        px_notify("WATCHDOG=1");
}

static void start_notify(px_server_t *srv)
{
    uint64_t every_ms = 1000;
    int any_dead;

    srv->watchdog_usec = px_notify_watchdog_usec();
    if (srv->watchdog_usec) {
        every_ms = srv->watchdog_usec / 2000;
        if (every_ms < 10)
            every_ms = 10;
        if (every_ms > 1000)
            every_ms = 1000;
    }
    status_line(srv, srv->last_status, sizeof srv->last_status, &any_dead);
    /* Listening and every worker is up: only now are we ready. */
    px_notify("READY=1\nSTATUS=%s\nMAINPID=%d", srv->last_status, (int)getpid());
    uv_timer_start(&srv->notify_timer, on_notify_tick, every_ms, every_ms);
}

#define KEY_IDLE_NS (60ull * 1000000000ull)

struct sweep {
    px_server_t *srv;
    json_t *list;
    uint64_t now, parked;
    px_key_t *idle[64];
    size_t nidle;
};

static void sweep_one(px_key_t *k, void *arg)
{
    struct sweep *sw = arg;
    uint64_t until = atomic_load(&k->parked_until_ns);

    if (px_key_parked(k, sw->now)) {
        json_t *key = json_stringn(k->key, k->len);
        sw->parked++;
        json_array_append_new(
            sw->list,
            json_pack("{so sI sI ss sI sI}", "key", key ? key : json_string("?"), "worker",
                      (json_int_t)px_route(k->key, k->len, px_pool_size(sw->srv->pool)), "failures",
                      (json_int_t)sw->srv->cfg.quarantine_after, "last_error", k->last_error,
                      "time_left_ms", (json_int_t)((until - sw->now) / PX_MS), "parks",
                      (json_int_t)k->parks));
    } else if (until) {
        atomic_store(&k->parked_until_ns, 0); /* expired: admitted again */
    }
    /* Idle for a minute with nothing in flight and not parked: its run of failures is
     * forgotten and the entry goes (memory follows the active keys). A client retrying one
     * request at a time is idle only between its tries, so its failures still add up. */
    if (k->in_flight == 0 && !px_key_parked(k, sw->now) && sw->now - k->last_ns > KEY_IDLE_NS &&
        sw->nidle < 64)
        sw->idle[sw->nidle++] = k;
}

static void publish(px_server_t *srv, json_t *list, uint64_t parked)
{
    json_t *old;

    pthread_mutex_lock(&srv->parked_mu);
    old = srv->parked;
    srv->parked = list;
    pthread_mutex_unlock(&srv->parked_mu);
    json_decref(old);
    px_stats_begin(&srv->stats);
    px_stats_add(&srv->stats.c.keys_parked,
                 (int64_t)parked - (int64_t)atomic_load(&srv->stats.c.keys_parked));
    px_stats_end(&srv->stats);
}

void px_server_publish_parked(px_server_t *srv)
{
    struct sweep sw = {.srv = srv, .now = px_now_ns()};

    if (!srv->keys_on)
        return;
    sw.list = json_array();
    px_keytab_each(&srv->keys, sweep_one, &sw);
    publish(srv, sw.list, sw.parked);
}

void px_server_sweep_keys(px_server_t *srv)
{
    struct sweep sw = {.srv = srv, .now = px_now_ns()};

    if (!srv->keys_on)
        return;
    sw.list = json_array();
    px_keytab_each(&srv->keys, sweep_one, &sw);
    for (size_t i = 0; i < sw.nidle; i++) {
        atomic_store(&sw.idle[i]->failures, 0);
        px_keytab_release(&srv->keys, sw.idle[i], sw.now);
    }
    publish(srv, sw.list, sw.parked);
}

json_t *px_server_parked(px_server_t *srv)
{
    json_t *copy;

    pthread_mutex_lock(&srv->parked_mu);
    copy = srv->parked ? json_deep_copy(srv->parked) : json_array();
    pthread_mutex_unlock(&srv->parked_mu);
    return copy;
}

px_registry_t *px_server_registry(px_server_t *srv)
{
    px_registry_t *reg;

    pthread_mutex_lock(&srv->reg_mu);
    reg = srv->reg;
    px_registry_ref(reg);
    pthread_mutex_unlock(&srv->reg_mu);
    return reg;
}

void px_server_reload(px_server_t *srv)
{
    px_registry_t *reg, *old;
    px_config_t nc, *oc = &srv->cfg;
    char err[512], kept[256] = "";

    if (!srv->reload || srv->draining)
        return;
    px_notify("RELOADING=1\nSTATUS=reloading configuration");
    if (srv->reload(&nc, err, sizeof err, srv->reload_arg)) {
        px_err("reload: %s; keeping the running configuration", err);
        px_config_clear(&nc);
        goto done;
    }
    /* Handlers first: a definition that does not build keeps everything as it was. Requests
     * already queued keep the registry they were accepted with (each holds a reference). */
    if (!(reg = px_handlers_build(nc.handlers, err, sizeof err))) {
        px_err("reload: %s; keeping the running configuration", err);
        px_config_clear(&nc);
        goto done;
    }
    pthread_mutex_lock(&srv->reg_mu);
    old = srv->reg;
    srv->reg = reg;
    pthread_mutex_unlock(&srv->reg_mu);
    px_registry_unref(old);
#define KEPT(field, name)                                                                          \
    if (memcmp(&nc.field, &oc->field, sizeof nc.field) != 0) {                                     \
        strncat(kept, kept[0] ? ", " name : name, sizeof kept - strlen(kept) - 1);                 \
        memcpy(&nc.field, &oc->field, sizeof nc.field);                                            \
    }
    KEPT(listen, "listen");
    KEPT(metrics_listen, "metrics_listen");
    KEPT(workers, "workers");
    KEPT(queue_capacity, "queue_capacity");
    KEPT(max_line_bytes, "max_line_bytes");
    KEPT(listen_unix, "listen_unix");
    KEPT(listen_unix_mode, "listen_unix_mode");
    KEPT(max_queued_per_key, "max_queued_per_key");
    KEPT(quarantine_after, "quarantine");
    KEPT(quarantine_for_ms, "quarantine");
    KEPT(scheduling, "scheduling");
#undef KEPT
    if (kept[0])
        px_warn("reload: %s cannot change while running; restart parexd to apply them", kept);
    px_config_clear(oc);
    *oc = nc;
    atomic_store(&px_log_level, (int)nc.log_level);
    atomic_store(&srv->bp_threshold, nc.backpressure_threshold);
    px_pool_set_limits(srv->pool, (uint64_t)nc.stall_after_ms * PX_MS,
                       (uint64_t)nc.dead_after_ms * PX_MS);
    px_supervisor_set_interval(srv->sup, (uint64_t)nc.supervise_interval_ms);
    px_notice("reload: configuration applied (log_level %s, backpressure_threshold %.2f, "
              "stall_after_ms %lld, on_stall %s, %zu handlers)",
              px_log_level_name((int)nc.log_level), nc.backpressure_threshold,
              (long long)nc.stall_after_ms,
              nc.on_stall == PX_ON_STALL_REPLACE ? "replace" : "report", px_registry_count(reg));
done:
    px_notify("READY=1\nSTATUS=%s", srv->last_status);
}

int px_server_init(px_server_t *srv, uv_loop_t *loop, const px_config_t *cfg,
                   px_config_loader_t reload, void *reload_arg, char *err, size_t errlen)
{
    int rc;

    memset(srv, 0, sizeof *srv);
    srv->loop = loop;
    srv->cfg = *cfg;
    json_incref(srv->cfg.handlers); /* the server keeps its own reference */
    srv->start_time_unix = (uint64_t)time(NULL);
    srv->reload = reload;
    srv->reload_arg = reload_arg;
    atomic_init(&srv->bp_threshold, cfg->backpressure_threshold);
    uv_signal_init(loop, &srv->sigterm);
    uv_signal_init(loop, &srv->sigint);
    uv_signal_init(loop, &srv->sighup);
    srv->sigterm.data = srv->sigint.data = srv->sighup.data = srv;
    uv_signal_start(&srv->sigterm, on_signal, SIGTERM);
    uv_signal_start(&srv->sigint, on_signal, SIGINT);
    uv_signal_start(&srv->sighup, on_signal, SIGHUP);
    uv_timer_init(loop, &srv->drain_timer);
    srv->drain_timer.data = srv;
    uv_unref((uv_handle_t *)&srv->drain_timer);
    uv_timer_init(loop, &srv->notify_timer);
    srv->notify_timer.data = srv;
    uv_unref((uv_handle_t *)&srv->notify_timer);
    uv_check_init(loop, &srv->tick);
    srv->tick.data = srv;
    uv_check_start(&srv->tick, on_tick);
    uv_unref((uv_handle_t *)&srv->tick);
    pthread_mutex_init(&srv->reg_mu, NULL);
    pthread_mutex_init(&srv->parked_mu, NULL);
    srv->keys_on = cfg->max_queued_per_key > 0 || cfg->quarantine_after > 0;
    if (px_keytab_init(&srv->keys) || !(srv->hot = px_hot_new((uint32_t)cfg->workers))) {
        snprintf(err, errlen, "out of memory setting up key tables");
        goto fail;
    }
    if (!(srv->reg = px_handlers_build(cfg->handlers, err, errlen)))
        goto fail;
    rc = px_pool_new(&srv->pool, loop, (uint32_t)cfg->workers, (uint32_t)cfg->queue_capacity,
                     cfg->scheduling == PX_SCHED_KEYED, on_done, srv);
    if (rc) {
        snprintf(err, errlen, "cannot create %lld workers with queue_capacity %lld: %s",
                 (long long)cfg->workers, (long long)cfg->queue_capacity, strerror(-rc));
        goto fail;
    }
    if (px_listener_open(srv, err, errlen))
        goto fail_pool;
    px_pool_set_limits(srv->pool, (uint64_t)cfg->stall_after_ms * PX_MS,
                       (uint64_t)cfg->dead_after_ms * PX_MS);
    px_pool_set_quarantine(srv->pool, (uint32_t)cfg->quarantine_after,
                           (uint64_t)cfg->quarantine_for_ms * PX_MS);
    px_pool_set_hot(srv->pool, srv->hot);
    if (px_pool_start(srv->pool, err, errlen))
        goto fail_pool;
    if (!(srv->sup = px_supervisor_start(srv))) {
        snprintf(err, errlen, "out of memory starting the supervisor");
        goto fail_pool;
    }
    if (px_metrics_start(&srv->metrics, srv, err, errlen))
        goto fail_sup;
    start_notify(srv);
    px_notice("parexd %s: %lld workers, queue_capacity %lld; listening for requests on %s, "
              "metrics on %s",
              PX_VERSION, (long long)cfg->workers, (long long)cfg->queue_capacity, srv->listen_addr,
              px_metrics_addr(srv->metrics));
    return 0;

fail_sup:
    px_supervisor_stop(srv->sup);
    srv->sup = NULL;
fail_pool:
    /* The caller runs the loop once more to let the closed handles go. */
    px_pool_close(srv->pool);
    px_pool_destroy(srv->pool);
    srv->pool = NULL;
fail:
    close_handles(srv);
    return -1;
}

void px_server_free(px_server_t *srv)
{
    px_registry_unref(srv->reg);
    srv->reg = NULL;
    pthread_mutex_destroy(&srv->reg_mu);
    pthread_mutex_destroy(&srv->parked_mu);
    json_decref(srv->parked);
    px_keytab_free(&srv->keys);
    px_buf_free(&srv->scratch);
    px_buf_free(&srv->idtext);
    px_hot_free(srv->hot);
    px_config_clear(&srv->cfg);
}
