/* Admission and the end of every request. A request ends in exactly one of these places: on_done
 * (its worker finished it, skipped it because its key was parked, or answered it cancelled or
 * dropped), fail() (expired in its queue, stalled, forced stop), or never admitted (a refusal).
 * Each counts it once, releases its key and delivers one answer to its origin. */
#include "daemon/exec/engine.h"

#include "common/clock.h"
#include "common/log.h"
#include "common/protocol.h"
#include "common/route.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static double ns_ms(uint64_t ns)
{
    return (double)ns / 1e6;
}

static void deliver_resp(px_engine_t *e, px_req_t *r, const px_resp_t *resp)
{
    px_buf_t line = {0};

    if (px_resp_format(&line, resp) == 0)
        e->sink.deliver(r->origin, line.data, line.len);
    else
        e->sink.deliver(r->origin, "", 0);
    px_buf_free(&line);
}

/* A request its worker skipped because its key was parked when its turn came: rejected after
 * all, so it leaves the accepted count. */
static void answer_skipped(px_engine_t *e, px_req_t *r)
{
    uint64_t left = px_keys_parked_left_ms(r->kent, px_now_ns());
    char msg[320], extra[48];
    px_resp_t resp = {.id = px_req_id(r),
                      .id_len = r->id_len,
                      .status = "rejected",
                      .worker = (int)r->worker,
                      .code = "key_parked",
                      .message = msg,
                      .queue_ms = -1,
                      .extra = extra};

    snprintf(msg, sizeof msg,
             "key is parked after repeated failures (last error: %.200s); it is admitted again "
             "in %llu ms or after parexctl unpark",
             r->kent->last_error, (unsigned long long)left);
    snprintf(extra, sizeof extra, ",\"retry_after_ms\":%llu", (unsigned long long)left + 1);
    px_stats_add(&e->stats->c.rejected[PX_REJ_KEY_PARKED], 1);
    px_stats_add(&e->stats->c.accepted, -1);
    px_stats_add(&e->stats->c.in_flight, -1);
    px_keys_done(&e->keys, r);
    deliver_resp(e, r, &resp);
}

/* Every request the engine frees goes through here: the deadline heap lets go of it first. */
static void end_req(px_engine_t *e, px_req_t *r)
{
    px_expiry_remove(&e->expiry, r);
    px_req_free(r);
}

/* Answers a request that will not run to completion (expired, stalled, forced stop) as
 * failed/code and counts it; the request itself is not freed. */
static void fail(px_engine_t *e, px_req_t *r, const char *code, const char *message)
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

    px_stats_begin(e->stats);
    px_stats_add(&e->stats->c.failed, 1);
    px_stats_add(&e->stats->c.in_flight, -1);
    px_keys_done(&e->keys, r);
    px_stats_end(e->stats);
    deliver_resp(e, r, &resp);
}

/* A queued request whose deadline_ms passed: taken out of its queue (its place is free again)
 * and answered now, without waiting for its worker. One a worker has already taken is left to
 * it: the handler is cut off at the deadline, or never started past it. */
static void on_expired(px_req_t *r, void *arg)
{
    px_engine_t *e = arg;
    char msg[256];

    if (atomic_load_explicit(&r->state, memory_order_acquire) != PX_REQ_QUEUED ||
        !px_pool_remove_queued(e->pool, r))
        return;
    snprintf(msg, sizeof msg,
             "deadline_ms passed while the request was queued (%.0f ms after receipt); it did "
             "not run; send a later deadline or fewer requests for this key",
             ns_ms(px_now_ns() - r->recv_ns));
    px_handler_count_unrun(r->handler, "deadline_exceeded");
    fail(e, r, "deadline_exceeded", msg);
    px_req_free(r);
    e->sink.flush(e->sink.arg);
}

/* Loop thread: answers a batch of finished requests, in completion order (so in per-key order).
 * Abandoned ones, answered when they were abandoned, are returned linked by ->next: the caller
 * frees them with free_late once it has given every answer it owes meanwhile. */
static px_req_t *settle(px_engine_t *e, px_req_t *list)
{
    px_req_t *late = NULL, **tail = &late;

    px_stats_begin(e->stats);
    while (list) {
        px_req_t *r = list;
        list = r->next;
        if (r->skipped == PX_SKIP_FENCED) {
            /* Not run, not answered: the cluster leaves it to the partition's next holder. */
            px_stats_add(&e->stats->c.rejected[PX_REJ_LEASE_LOST], 1);
            px_stats_add(&e->stats->c.accepted, -1);
            px_stats_add(&e->stats->c.in_flight, -1);
            px_keys_done(&e->keys, r);
            e->sink.deliver(r->origin, "", 0);
        } else if (r->skipped) {
            answer_skipped(e, r);
        } else if (atomic_load_explicit(&r->state, memory_order_acquire) == PX_REQ_ABANDONED) {
            /* The worker has let go of it now. */
            r->next = NULL;
            *tail = r;
            tail = &r->next;
            continue;
        } else {
            px_stats_add(r->ok ? &e->stats->c.ok : &e->stats->c.failed, 1);
            px_stats_add(&e->stats->c.in_flight, -1);
            px_keys_done(&e->keys, r);
            e->sink.deliver(r->origin, r->out.data, r->out.len);
        }
        end_req(e, r);
    }
    px_stats_end(e->stats);
    return late;
}

static void free_late(px_engine_t *e, px_req_t *late)
{
    px_stats_begin(e->stats);
    while (late) {
        px_req_t *r = late;
        late = r->next;
        px_stats_add(&e->stats->c.late, 1);
        end_req(e, r);
    }
    px_stats_end(e->stats);
}

static void on_done(px_req_t *list, void *arg)
{
    px_engine_t *e = arg;

    free_late(e, settle(e, list));
    e->sink.after(e->sink.arg); /* the answers go out in the server's tick */
}

int px_engine_init(px_engine_t *e, uv_loop_t *loop, const px_config_t *cfg, px_stats_t *stats,
                   px_registry_t *reg, const px_sink_t *sink, char *err, size_t errlen)
{
    int rc;

    memset(e, 0, sizeof *e);
    e->loop = loop;
    e->cfg = cfg;
    e->stats = stats;
    e->sink = *sink;
    e->reg = reg;
    e->route_seed = cfg->cluster.on ? PX_ROUTE_CLUSTER_SEED : 0;
    px_expiry_init(&e->expiry, loop, on_expired, e);
    pthread_mutex_init(&e->reg_mu, NULL);
    if (px_keys_init(&e->keys, (uint32_t)cfg->workers, (uint32_t)cfg->max_queued_per_key,
                     (uint32_t)cfg->quarantine_after, cfg->quarantine_for_ms, stats) ||
        !(e->hot = px_hot_new((uint32_t)cfg->workers))) {
        snprintf(err, errlen, "out of memory setting up key tables");
        goto fail;
    }
    rc = px_pool_new(&e->pool, loop, (uint32_t)cfg->workers, (uint32_t)cfg->queue_capacity,
                     cfg->scheduling == PX_SCHED_KEYED, on_done, e);
    if (rc) {
        snprintf(err, errlen, "cannot create %lld workers with queue_capacity %lld: %s",
                 (long long)cfg->workers, (long long)cfg->queue_capacity, strerror(-rc));
        goto fail;
    }
    px_pool_set_limits(e->pool, (uint64_t)cfg->stall_after_ms * PX_MS,
                       (uint64_t)cfg->dead_after_ms * PX_MS);
    px_pool_set_quarantine(e->pool, (uint32_t)cfg->quarantine_after,
                           (uint64_t)cfg->quarantine_for_ms * PX_MS);
    px_pool_set_hot(e->pool, e->hot);
    e->keys.seed = e->route_seed;
    return 0;
fail:
    return -1; /* the caller's px_engine_free releases what was set up */
}

int px_engine_start(px_engine_t *e, char *err, size_t errlen)
{
    return px_pool_start(e->pool, err, errlen) ? -1 : 0;
}

void px_engine_free(px_engine_t *e)
{
    px_registry_unref(e->reg);
    e->reg = NULL;
    pthread_mutex_destroy(&e->reg_mu);
    px_keys_free(&e->keys);
    px_hot_free(e->hot);
    e->hot = NULL;
}

const px_handler_t *px_engine_find(px_engine_t *e, const char *op)
{
    return px_registry_find(e->reg, op);
}

void px_engine_names(px_engine_t *e, char *out, size_t outlen)
{
    px_registry_names(e->reg, out, outlen);
}

px_registry_t *px_engine_registry(px_engine_t *e)
{
    px_registry_t *reg;

    pthread_mutex_lock(&e->reg_mu);
    reg = e->reg;
    px_registry_ref(reg);
    pthread_mutex_unlock(&e->reg_mu);
    return reg;
}

void px_engine_set_registry(px_engine_t *e, px_registry_t *reg)
{
    px_registry_t *old;

    pthread_mutex_lock(&e->reg_mu);
    old = e->reg;
    e->reg = reg;
    pthread_mutex_unlock(&e->reg_mu);
    px_registry_unref(old);
}

static int refuse(px_engine_t *e, px_verdict_t *v, enum px_reject why, int worker,
                  uint64_t retry_after_ms)
{
    px_stats_add(&e->stats->c.received, 1);
    px_stats_add(&e->stats->c.rejected[why], 1);
    v->why = why;
    v->worker = worker;
    v->retry_after_ms = retry_after_ms;
    return 1;
}

int px_engine_submit(px_engine_t *e, const px_submit_t *s, px_verdict_t *v)
{
    uint32_t worker = px_route_seeded(s->key, s->key_len, px_pool_size(e->pool), e->route_seed);
    px_key_t *k = NULL;
    px_req_t *r;
    int rc;

    /* received is counted with the verdict: a request lost to out-of-memory (its connection
     * closes) was never received, so the accounting invariant still holds. */
    if (atomic_load_explicit(&e->draining, memory_order_relaxed)) {
        snprintf(v->message, sizeof v->message,
                 "parexd is shutting down and takes no new requests; retry on another instance "
                 "or after restart");
        return refuse(e, v, PX_REJ_SHUTTING_DOWN, -1, 0);
    }
    /* All queued and running requests together stay within a memory budget: a client cannot
     * fill every queue with megabyte payloads. */
    if (atomic_load_explicit(&px_req_live_bytes, memory_order_relaxed) + s->payload_len >
        (uint64_t)e->cfg->max_queued_payload_bytes) {
        uint64_t wait = px_pool_retry_after_ms(e->pool, worker);
        snprintf(v->message, sizeof v->message,
                 "queued requests hold max_queued_payload_bytes (%lld) already; retry after %llu "
                 "ms",
                 (long long)e->cfg->max_queued_payload_bytes, (unsigned long long)wait);
        return refuse(e, v, PX_REJ_OVERLOADED, -1, wait);
    }
    switch (px_keys_admit(&e->keys, s->key, s->key_len, s->recv_ns, &k)) {
    case PX_KEY_NOMEM:
        return -ENOMEM;
    case PX_KEY_PARKED: {
        uint64_t left = px_keys_parked_left_ms(k, s->recv_ns) + 1;
        snprintf(v->message, sizeof v->message,
                 "key is parked after repeated failures (last error: %.200s); it is admitted "
                 "again in %llu ms or after parexctl unpark",
                 k->last_error, (unsigned long long)left);
        px_keys_unused(&e->keys, k, s->recv_ns);
        return refuse(e, v, PX_REJ_KEY_PARKED, -1, left);
    }
    case PX_KEY_BUSY: {
        uint64_t wait = px_pool_retry_after_ms(e->pool, worker);
        snprintf(v->message, sizeof v->message,
                 "key already has %u requests queued or running (max_queued_per_key %lld); "
                 "retry after %llu ms",
                 k->in_flight, (long long)e->cfg->max_queued_per_key, (unsigned long long)wait);
        return refuse(e, v, PX_REJ_KEY_BUSY, (int)worker, wait);
    }
    case PX_KEY_OK:
        break;
    }
    if (!(r = px_req_new(s->key, s->key_len, s->id, s->id_len, s->payload, s->payload_len))) {
        px_keys_unused(&e->keys, k, s->recv_ns);
        return -ENOMEM;
    }
    r->origin = s->origin;
    r->fence = s->fence;
    r->fence_arg = s->fence_arg;
    r->delivery = s->delivery;
    r->epoch = s->epoch;
    r->handler = s->handler;
    r->reg = e->reg;
    px_registry_ref(r->reg);
    if (s->deadline_ms)
        r->deadline_ns = s->recv_ns + (uint64_t)s->deadline_ms * 1000000ull;
    r->recv_ns = s->recv_ns;
    r->worker = r->route = worker;
    r->kent = k; /* before submit: from then on a worker may read it */
    if ((rc = px_pool_submit(e->pool, r))) {
        /* Once submitted the request belongs to the worker side; refused, it is still ours. */
        uint64_t wait;

        if (rc == -ENOMEM) {
            r->kent = NULL;
            px_req_free(r);
            px_keys_unused(&e->keys, k, s->recv_ns);
            return -ENOMEM;
        }
        wait = rc == -EAGAIN ? px_pool_retry_after_ms(e->pool, worker) : 0;
        if (e->cfg->scheduling == PX_SCHED_KEYED)
            /* Keyed scheduling has no queue per worker: one bound is shared by every key. */
            snprintf(v->message, sizeof v->message,
                     "the shared keyed queue is full (%lld requests: workers %lld x "
                     "queue_capacity %lld); retry after %llu ms",
                     (long long)(e->cfg->workers * e->cfg->queue_capacity),
                     (long long)e->cfg->workers, (long long)e->cfg->queue_capacity,
                     (unsigned long long)wait);
        else
            snprintf(v->message, sizeof v->message,
                     "worker %u's queue is full (queue_capacity %lld); retry after %llu ms or "
                     "spread the load over more keys",
                     worker, (long long)e->cfg->queue_capacity, (unsigned long long)wait);
        r->kent = NULL;
        px_req_free(r);
        px_keys_unused(&e->keys, k, s->recv_ns);
        return refuse(e, v, rc == -EAGAIN ? PX_REJ_QUEUE_FULL : PX_REJ_SHUTTING_DOWN,
                      rc == -EAGAIN ? (int)worker : -1, wait);
    }
    if (r->deadline_ns)
        px_expiry_add(&e->expiry, r); /* on -ENOMEM its worker still answers it, later */
    px_keys_accepted(&e->keys, k, s->recv_ns);
    px_hot_arrival(e->hot, worker, s->key, s->key_len, s->recv_ns);
    px_stats_add(&e->stats->c.received, 1);
    px_stats_add(&e->stats->c.accepted, 1);
    px_stats_add(&e->stats->c.in_flight, 1);
    return 0;
}

void px_engine_replace(px_engine_t *e, uint32_t worker, const px_worker_info_t *w)
{
    char msg[512];
    px_req_t *r, *late;
    int rc;
    /* Loop thread only. Whether the cap was logged since threads were last under it. */
    static int capped;

    /* Each replacement leaves a thread behind until its handler returns; a handler that never
     * does would grow threads without end. At the cap the worker stays stalled (and /healthz
     * says so) instead. */
    if (px_pool_strays(e->pool) >= (uint64_t)e->cfg->max_abandoned_threads) {
        if (!capped)
            px_err("supervisor: worker %u stays stalled: max_abandoned_threads (%lld) threads "
                   "are already abandoned inside handlers; fix the handler or restart parexd",
                   worker, (long long)e->cfg->max_abandoned_threads);
        capped = 1;
        return;
    }
    capped = 0;
    if (!(r = px_pool_replace(e->pool, worker, w->busy_since_ns)))
        return; /* it finished, or another run started, since the supervisor looked */
    /* Earlier requests of its key may sit finished on the completion list: they go first, then
     * its own answer, and only then may a fresh thread start on the queue behind it. */
    late = settle(e, px_pool_take_done(e->pool));
    snprintf(msg, sizeof msg,
             "worker %u was stuck on this request for %.0f ms (stall_after_ms %lld); it was "
             "abandoned and the partition moved on",
             worker, (double)w->busy_for_ns / 1e6, (long long)e->cfg->stall_after_ms);
    fail(e, r, "worker_stalled", msg);
    e->sink.flush(e->sink.arg);
    /* r stays valid until the loop frees it: it is the old thread's to hand back, and late
     * holds it only if it came back already. */
    rc = px_pool_respawn(e->pool, worker, r);
    free_late(e, late);
    if (rc)
        px_err("supervisor: worker %u: cannot start a replacement thread: %s", worker,
               strerror(rc));
    else
        px_warn("supervisor: worker %u replaced: the stalled thread (key '%s', op '%s') is "
                "abandoned, its late result will be discarded",
                worker, w->current_key, w->current_op);
}

void px_engine_close(px_engine_t *e)
{
    atomic_store(&e->draining, 1);
    px_pool_close(e->pool);
}

size_t px_engine_cancel_all(px_engine_t *e)
{
    px_taken_t *v;
    size_t n = px_pool_take_all(e->pool, &v);
    /* Taken after take_all decided: whatever finished before it is earlier in its key's order
     * than anything taken, and is answered first. Whatever comes back after is abandoned. */
    px_req_t *late = settle(e, px_pool_take_done(e->pool));

    px_warn("drain: forced stop; cancelling %zu queued or running requests", n);
    for (size_t i = 0; i < n; i++) {
        px_req_t *r = v[i].r;

        fail(e, r, "cancelled",
             v[i].returns ? "parexd stopped before this request finished running"
                          : "parexd stopped before this request could run");
        /* A running one still belongs to its thread until it comes back. */
        if (!v[i].returns)
            end_req(e, r);
    }
    free(v);
    free_late(e, late);
    e->sink.flush(e->sink.arg);
    return n;
}

void px_engine_release_pool(px_engine_t *e)
{
    free_late(e, settle(e, px_pool_take_done(e->pool)));
    px_expiry_close(&e->expiry);
    px_pool_destroy(e->pool);
    e->pool = NULL;
}
