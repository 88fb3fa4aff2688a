/* Cluster mode's executor side: a batch a partition thread fetched runs through the local
 * engine. The partition thread hands the batch over (xq, one uv_async_t) and goes on fetching
 * the next (ran() tells it when every job of this one is done); the loop
 * submits every job to the engine in order, with the job as the request's origin. Engine origins
 * are connections otherwise, so job origins are tagged in their lowest bit (both are malloc'd or
 * array elements of pointer alignment, so that bit is free) and the server's sink sends them
 * here. Requests of one key reach the same worker queue in batch order, which keeps per-key
 * order. */
#include "daemon/clustered_int.h"

#include "common/clock.h"
#include "common/log.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define JOB_TAG ((uintptr_t)1)

/* Worker thread, right before a job runs. */
static int fence_ok(const void *fence)
{
    return px_cluster_fence_ok(fence);
}

/* Executor. Partition thread: hand the batch to the loop; ran(ran_arg) once every job is done. */
void px_clustered_run_batch(px_cluster_job_t *jobs, size_t n, const px_cluster_fence_t *f,
                            void (*ran)(void *ran_arg), void *ran_arg, void *arg)
{
    px_clustered_t *cx = arg;
    xbatch_t *b = calloc(1, sizeof *b + n * sizeof b->x[0]);

    if (!b) {
        ran(ran_arg); /* nothing run: the batch runs again after a consumer restart */
        return;
    }
    *b = (xbatch_t){.jobs = jobs, .n = n, .fence = f, .ran = ran, .ran_arg = ran_arg, .left = n};
    pthread_mutex_lock(&cx->xmu);
    b->next = cx->xq;
    cx->xq = b;
    pthread_mutex_unlock(&cx->xmu);
    uv_async_send(&cx->xasync);
}

/* Loop: one job less to wait for; the last one tells the partition thread. */
static void job_done(xjob_t *x)
{
    xbatch_t *b = x->b;

    if (--b->left == 0) {
        b->ran(b->ran_arg);
        free(b);
    }
}

/* Loop: an answer given on the spot for a job (unknown op, bad payload, parked key). */
static void job_answer(xjob_t *x, const char *id, size_t id_len, const char *status,
                       const char *code, const char *message)
{
    px_resp_t r = {.id = id,
                   .id_len = id_len,
                   .status = status,
                   .worker = -1,
                   .code = code,
                   .message = message,
                   .queue_ms = -1};

    x->j->run = px_resp_format(&x->j->result, &r) == 0;
    job_done(x);
}

/* Loop: submits one job. 0 when it is submitted or answered, 1 when its worker's queue is full
 * (nothing done: the job waits and is submitted again, still ahead of everything after it). */
static int submit_job(px_clustered_t *cx, xjob_t *x, px_buf_t *scratch)
{
    json_t *req = json_loadb(x->j->data, x->j->len, 0, NULL);
    const char *key = json_string_value(json_object_get(req, "key"));
    const char *op = json_string_value(json_object_get(req, "op"));
    json_t *id = json_object_get(req, "id"), *payload = json_object_get(req, "payload");
    px_buf_t idtext = {0};
    const px_handler_t *h;
    px_submit_t s;
    px_verdict_t v;
    char msg[512];
    int rc, full = 0;

    if (!key || !op || !id || px_json_append(&idtext, id)) {
        job_answer(x, "null", 4, "invalid", "bad_json", "the stored request could not be read");
        goto out;
    }
    if (!(h = px_engine_find(cx->eng, op))) {
        char names[256];
        px_engine_names(cx->eng, names, sizeof names);
        snprintf(msg, sizeof msg, "op '%.64s' is not a handler on instance %s; available: %s", op,
                 cx->cfg->cluster.instance, names);
        job_answer(x, idtext.data, idtext.len, "invalid", "unknown_op", msg);
        goto out;
    }
    if (h->validate && h->validate(h, payload, msg, sizeof msg)) {
        job_answer(x, idtext.data, idtext.len, "invalid", "bad_field", msg);
        goto out;
    }
    scratch->len = 0;
    if (px_json_append(scratch, payload))
        goto out_nomem;
    s = (px_submit_t){.key = key,
                      .key_len = json_string_length(json_object_get(req, "key")),
                      .id = idtext.data,
                      .id_len = idtext.len,
                      .payload = scratch->data,
                      .payload_len = scratch->len,
                      .handler = h,
                      .recv_ns = px_now_ns(),
                      .deadline_ms = json_integer_value(json_object_get(req, "deadline_ms")),
                      .origin = (void *)((uintptr_t)x | JOB_TAG),
                      .fence = fence_ok,
                      .fence_arg = x->b->fence,
                      .delivery = x->j->delivered,
                      .epoch = x->j->epoch};
    rc = px_engine_submit(cx->eng, &s, &v);
    if (rc == 0)
        goto out; /* answered through px_clustered_deliver */
    if (rc > 0 && v.why == PX_REJ_QUEUE_FULL) {
        /* The request is stored in the cluster already: it waits here for room rather than
         * being refused, and so does everything fetched after it. */
        full = 1;
        goto out;
    }
    if (rc > 0 && v.why != PX_REJ_SHUTTING_DOWN) {
        job_answer(x, idtext.data, idtext.len, "rejected", px_reject_code(v.why), v.message);
        goto out;
    }
out_nomem:
    /* Not run here (stopping, out of memory): the next consumer runs it again. */
    x->j->run = 0;
    job_done(x);
out:
    px_buf_free(&idtext);
    json_decref(req);
    return full;
}

static void pump_later(uv_timer_t *t);

/* Loop: submits the waiting batches' jobs in arrival order. At a full worker queue everything
 * waits (a later job may be of the same key) and the timer tries again shortly: the batches were
 * fetched from the cluster, where backpressure already happened, so they are not refused. */
static void pump(px_clustered_t *cx)
{
    px_buf_t scratch = {0};
    xrun_t *r;

    while ((r = cx->runs)) {
        while (r->i < r->n) {
            xbatch_t *b = r->b; /* gone once its last job is done: read before */
            xjob_t *x = &b->x[r->i];

            x->b = b;
            x->j = &b->jobs[r->i];
            if (!px_cluster_fence_ok(b->fence)) {
                r->i++;
                x->j->run = 0; /* the lease is gone: leave it to the next owner */
                job_done(x);
                continue;
            }
            if (submit_job(cx, x, &scratch)) {
                if (!uv_is_active((uv_handle_t *)&cx->xretry))
                    uv_timer_start(&cx->xretry, pump_later, 2, 2);
                goto out;
            }
            r->i++;
        }
        cx->runs = r->next;
        if (!cx->runs)
            cx->runs_tail = NULL;
        free(r);
    }
    uv_timer_stop(&cx->xretry);
out:
    px_buf_free(&scratch);
}

static void pump_later(uv_timer_t *t)
{
    pump(t->data);
}

static void on_xasync(uv_async_t *a)
{
    px_clustered_t *cx = a->data;
    xbatch_t *q, *rev = NULL;

    pthread_mutex_lock(&cx->xmu);
    q = cx->xq;
    cx->xq = NULL;
    pthread_mutex_unlock(&cx->xmu);
    while (q) { /* pushed newest first: restore the order they came in */
        xbatch_t *b = q;
        q = b->next;
        b->next = rev;
        rev = b;
    }
    for (xbatch_t *b = rev, *next; b; b = next) {
        xrun_t *r = malloc(sizeof *r);

        next = b->next;
        if (!r) {
            /* Nothing of it submitted: it runs again after a consumer restart. */
            b->ran(b->ran_arg);
            free(b);
            continue;
        }
        *r = (xrun_t){.b = b, .n = b->n};
        if (cx->runs_tail)
            cx->runs_tail->next = r;
        else
            cx->runs = r;
        cx->runs_tail = r;
    }
    if (!uv_is_active((uv_handle_t *)&cx->xretry))
        pump(cx);
}

int px_clustered_deliver(void *origin, const char *line, size_t len)
{
    xjob_t *x;

    if (!((uintptr_t)origin & JOB_TAG))
        return 0;
    x = (xjob_t *)((uintptr_t)origin & ~JOB_TAG);
    /* A forced stop cancels what the engine holds: in cluster mode such a request is not
     * answered but left unacknowledged, for the next owner to run. */
    x->j->run = len > 0 && !memmem(line, len, "\"code\":\"cancelled\"", 19) &&
                px_buf_append(&x->j->result, line, len) == 0;
    job_done(x);
    return 1;
}

void px_clustered_exec_init(px_clustered_t *cx)
{
    pthread_mutex_init(&cx->xmu, NULL);
    uv_async_init(cx->loop, &cx->xasync, on_xasync);
    cx->xasync.data = cx;
    uv_timer_init(cx->loop, &cx->xretry);
    cx->xretry.data = cx;
}

void px_clustered_exec_release(px_clustered_t *cx)
{
    xbatch_t *b;
    xrun_t *r;

    /* Partition threads still waiting for the loop (a forced stop) get their batch back unrun
     * before the cluster joins them: what the loop had not submitted yet is not run; what the
     * engine holds comes back through px_clustered_deliver (cancelled). */
    uv_timer_stop(&cx->xretry);
    while ((r = cx->runs)) {
        cx->runs = r->next;
        for (size_t i = r->i, n = r->n; i < n; i++) {
            xjob_t *x = &r->b->x[i]; /* b is alive while a job of it is not done */
            x->b = r->b;
            x->j = &r->b->jobs[i];
            x->j->run = 0;
            job_done(x);
        }
        free(r);
    }
    cx->runs_tail = NULL;
    pthread_mutex_lock(&cx->xmu);
    b = cx->xq;
    cx->xq = NULL;
    pthread_mutex_unlock(&cx->xmu);
    for (xbatch_t *next; b; b = next) {
        next = b->next; /* none of its jobs was submitted: none ran */
        b->ran(b->ran_arg);
        free(b);
    }
}

static void on_closed(uv_handle_t *h)
{
    px_clustered_t *cx = h->data;

    if (--cx->closing == 0 && cx->xclosed)
        cx->xclosed(cx);
}

void px_clustered_exec_close(px_clustered_t *cx, void (*closed)(px_clustered_t *cx))
{
    cx->xclosed = closed;
    cx->closing = 2;
    uv_close((uv_handle_t *)&cx->xretry, on_closed);
    uv_close((uv_handle_t *)&cx->xasync, on_closed);
}
