/* Cluster mode's wiring (see clustered.h): the ingress and the lifecycle; the executor's side is
 * in clustered_exec.c.
 *
 * Ingress: each request gets a message id (the client's idem, or this instance's name, boot time
 * and a counter) and waits in `pending` (a jansson object keyed by message id, loop only) until
 * its answer arrives from whichever instance ran it, or the cluster refuses it. The answer line
 * is the executing worker's own, passed through unchanged.
 *
 * Executor: a partition thread hands a batch over (xq, one uv_async_t) and waits; the loop submits
 * every job to the engine in order, with the job as the request's origin. Engine origins are
 * connections otherwise, so job origins are tagged in their lowest bit (both are malloc'd, so that
 * bit is free) and the server's sink sends them here. Requests of one key reach the same worker
 * queue in batch order, which keeps per-key order. */
#include "daemon/clustered_int.h"

#include "common/clock.h"
#include "common/log.h"
#include "common/route.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct pend {
    void *origin;
    int accepted, answered;
    uint64_t recv_ns;
    char msgid[200];
    size_t id_len;
    char id[]; /* the client's id as JSON text, for a refusal */
} pend_t;

static void pend_remove(px_clustered_t *cx, pend_t *p)
{
    json_object_del(cx->pending, p->msgid);
    free(p);
    px_cluster_awaiting(cx->cl, json_object_size(cx->pending));
}

static pend_t *pend_find(px_clustered_t *cx, const char *msgid)
{
    json_t *v = json_object_get(cx->pending, msgid);

    return v ? (pend_t *)(intptr_t)json_integer_value(v) : NULL;
}

/* A refusal, answered on the client's connection as single-node mode answers its own. */
static void refuse(px_clustered_t *cx, pend_t *p, const char *code, const char *message,
                   uint64_t retry_after_ms)
{
    atomic_fetch_add(&cx->refused, 1);
    px_clustered_reject(cx, p->origin, p->id, p->id_len, code, message, retry_after_ms);
}

static void on_accepted(void *cookie, enum px_cluster_status st, const char *why, void *arg)
{
    px_clustered_t *cx = arg;
    pend_t *p = cookie;

    if (st == PX_CL_ACCEPTED) {
        atomic_fetch_add(&cx->accepted, 1);
        p->accepted = 1;
        if (p->answered) /* the answer overtook the acknowledgement */
            pend_remove(cx, p);
        return;
    }
    if (p->answered) {
        /* Answered already (an unconfirmed publish that was stored and ran, or a forced stop
         * that answered it): the connection has its one line. */
        pend_remove(cx, p);
        cx->changed(cx->arg);
        return;
    }
    switch (st) {
    case PX_CL_FULL:
        refuse(cx, p, "queue_full", why, 1000);
        break;
    case PX_CL_TOO_LARGE:
        refuse(cx, p, "too_large", why, 0);
        break;
    case PX_CL_STOPPING:
        refuse(cx, p, "shutting_down", why, 0);
        break;
    default:
        refuse(cx, p, "unavailable", why, 1000);
        break;
    }
    pend_remove(cx, p);
    cx->changed(cx->arg);
}

static void on_result(const char *msgid, const char *line, size_t len, void *arg)
{
    px_clustered_t *cx = arg;
    pend_t *p = pend_find(cx, msgid);

    if (!p || p->answered) {
        atomic_fetch_add(&cx->late_answers, 1); /* a re-run's answer, or a request not ours */
        return;
    }
    if (!line) {
        refuse(cx, p, "idem_pending",
               "a request with this idem was stored earlier and has no answer yet; it runs once: "
               "resubmit with the same idem later to get its answer",
               1000);
        p->answered = 1;
        if (p->accepted)
            pend_remove(cx, p);
        cx->changed(cx->arg);
        return;
    }
    atomic_fetch_add(&cx->answered, 1);
    p->answered = 1;
    cx->deliver(p->origin, line, len);
    if (p->accepted)
        pend_remove(cx, p);
    cx->changed(cx->arg);
}

int px_clustered_submit(px_clustered_t *cx, const px_submit_t *s, const px_line_t *line,
                        px_verdict_t *v)
{
    json_t *idem = json_object_get(line->root, "idem"); /* checked by dispatch */
    px_buf_t *b = &cx->body;
    char msgid[200];
    pend_t *p;

    atomic_fetch_add(&cx->received, 1);
    if (cx->draining) {
        snprintf(v->message, sizeof v->message,
                 "parexd is shutting down and takes no new requests; retry on another instance");
        v->why = PX_REJ_SHUTTING_DOWN;
        v->worker = -1;
        v->retry_after_ms = 0;
        atomic_fetch_add(&cx->refused, 1);
        return 1;
    }
    if (idem)
        snprintf(msgid, sizeof msgid, "i.%s", json_string_value(idem));
    else
        snprintf(msgid, sizeof msgid, "%s.%llu", cx->prefix, (unsigned long long)++cx->counter);
    if (pend_find(cx, msgid)) {
        snprintf(v->message, sizeof v->message,
                 "a request with this idem is already waiting for its answer on this instance");
        v->why = PX_REJ_KEY_BUSY;
        v->worker = -1;
        v->retry_after_ms = 1000;
        atomic_fetch_add(&cx->refused, 1);
        return 1;
    }
    /* The request as the executing instance will read it. */
    b->len = 0;
    if (px_buf_puts(b, "{\"key\":") || px_buf_json_string(b, s->key, s->key_len) ||
        px_buf_puts(b, ",\"op\":") ||
        px_buf_json_string(b, s->handler->name, strlen(s->handler->name)) ||
        px_buf_puts(b, ",\"id\":") || px_buf_append(b, s->id, s->id_len) ||
        px_buf_puts(b, ",\"deadline_ms\":") || px_buf_uint(b, (uint64_t)s->deadline_ms) ||
        px_buf_puts(b, ",\"payload\":") || px_buf_append(b, s->payload, s->payload_len) ||
        px_buf_puts(b, "}"))
        return -ENOMEM;
    if (!(p = calloc(1, sizeof *p + s->id_len)))
        return -ENOMEM;
    p->origin = s->origin;
    p->recv_ns = s->recv_ns;
    p->id_len = s->id_len;
    memcpy(p->id, s->id, s->id_len);
    snprintf(p->msgid, sizeof p->msgid, "%s", msgid);
    if (json_object_set_new(cx->pending, msgid, json_integer((json_int_t)(intptr_t)p))) {
        free(p);
        return -ENOMEM;
    }
    px_cluster_awaiting(cx->cl, json_object_size(cx->pending));
    px_cluster_submit(cx->cl, px_route(s->key, s->key_len, (uint32_t)cx->cfg->cluster.partitions),
                      msgid, b->data, b->len, p);
    return 0;
}

static void on_released(void *arg)
{
    px_clustered_t *cx = arg;

    cx->released = 1;
    px_notice("cluster: every partition handed over");
    cx->changed(cx->arg);
}

void px_clustered_drain(px_clustered_t *cx)
{
    cx->draining = 1;
    px_cluster_release(cx->cl, on_released, cx);
}

int px_clustered_idle(px_clustered_t *cx)
{
    return cx->released && json_object_size(cx->pending) == 0 && cx->open_lookups == 0;
}

void px_clustered_cancel(px_clustered_t *cx)
{
    const char *k;
    json_t *v;
    void *tmp;

    json_object_foreach_safe(cx->pending, tmp, k, v)
    {
        pend_t *p = (pend_t *)(intptr_t)json_integer_value(v);
        if (!p->answered) {
            refuse(cx, p, "shutting_down",
                   "parexd stopped before this request's answer came back; if it was accepted "
                   "it still runs in the cluster (resubmit with the same idem to get it)",
                   0);
            p->answered = 1;
        }
        /* One still being published is freed when its outcome comes back (or at the stop). */
        if (p->accepted)
            pend_remove(cx, p);
    }
    px_clustered_lookups_cancel(cx);
    cx->released = 1;
}

int px_clustered_start(px_clustered_t **out, uv_loop_t *loop, const px_config_t *cfg,
                       px_engine_t *eng, void (*deliver)(void *origin, const char *l, size_t n),
                       void (*changed)(void *arg), void *arg, char *err, size_t errlen)
{
    px_clustered_t *cx = calloc(1, sizeof *cx);
    const px_cluster_cfg_t *c = &cfg->cluster;
    px_cluster_opts_t o;
    px_cluster_cbs_t cbs = {.run = px_clustered_run_batch,
                            .accepted = on_accepted,
                            .result = on_result,
                            .looked_up = px_clustered_looked_up,
                            .arg = cx};
    struct timespec ts;

    if (!cx || !(cx->pending = json_object())) {
        free(cx);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    cx->loop = loop;
    cx->cfg = cfg;
    cx->eng = eng;
    cx->deliver = deliver;
    cx->changed = changed;
    cx->arg = arg;
    clock_gettime(CLOCK_REALTIME, &ts);
    /* Unique across restarts of this instance: a message id is deduplicated for 2 minutes. */
    snprintf(cx->prefix, sizeof cx->prefix, "%s.%llx", c->instance,
             (unsigned long long)ts.tv_sec * 1000000000ull + (unsigned long long)ts.tv_nsec);
    px_clustered_exec_init(cx);
    px_cluster_opts_defaults(&o);
    for (int i = 0; i < c->nnats; i++)
        o.servers[i] = c->nats[i];
    o.nservers = c->nnats;
    o.partitions = (uint32_t)c->partitions;
    o.instance = c->instance;
    o.lease_ttl_ms = (uint64_t)c->lease_ttl_ms;
    o.max_backlog = (uint64_t)c->max_backlog_per_partition;
    o.replicas = (int)c->replicas;
    o.publish_timeout_ms = (uint64_t)c->publish_timeout_ms;
    o.result_ttl_ms = (uint64_t)c->result_ttl_ms;
    o.batch = (uint32_t)c->batch;
    if (px_cluster_start(&cx->cl, loop, &o, &cbs, err, errlen)) {
        px_clustered_exec_close(cx, NULL);
        json_decref(cx->pending);
        /* cx stays allocated until the loop closes its handle: left for the process exit. */
        return -1;
    }
    *out = cx;
    return 0;
}

static void on_exec_closed(px_clustered_t *cx)
{
    const char *k;
    json_t *v;

    json_object_foreach(cx->pending, k, v)
        free((pend_t *)(intptr_t)json_integer_value(v)); /* outcomes that never came back */
    pthread_mutex_destroy(&cx->xmu);
    px_buf_free(&cx->body);
    json_decref(cx->pending);
    free(cx);
}

void px_clustered_stop(px_clustered_t *cx)
{
    px_clustered_exec_release(cx);
    px_cluster_stop(cx->cl);
    px_clustered_lookups_free(cx); /* the cluster hands back no more outcomes */
    px_clustered_exec_close(cx, on_exec_closed);
}

json_t *px_clustered_report(px_clustered_t *cx)
{
    json_t *o = px_cluster_report(cx->cl);

    json_object_set_new(o, "ingress",
                        json_pack("{sI sI sI sI sI}", "received",
                                  (json_int_t)atomic_load(&cx->received), "accepted",
                                  (json_int_t)atomic_load(&cx->accepted), "refused",
                                  (json_int_t)atomic_load(&cx->refused), "answered",
                                  (json_int_t)atomic_load(&cx->answered), "late_answers",
                                  (json_int_t)atomic_load(&cx->late_answers)));
    return o;
}

int px_clustered_connected(px_clustered_t *cx)
{
    return px_cluster_connected(cx->cl);
}
