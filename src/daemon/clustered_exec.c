/* Cluster mode's executor side: a batch a partition thread fetched runs through the local
 * engine. The partition thread hands the batch over (xq, one uv_async_t) and waits; the loop
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

/* Executor. Partition thread: hand the batch to the loop and wait for every answer. */
void px_clustered_run_batch(px_cluster_job_t *jobs, size_t n, const px_cluster_fence_t *f,
                            void *arg)
{
    px_clustered_t *cx = arg;
    xbatch_t b = {.jobs = jobs, .n = n, .fence = f, .left = n};

    if (!(b.x = calloc(n, sizeof *b.x)))
        return; /* nothing run: the batch runs again after a consumer restart */
    pthread_mutex_init(&b.mu, NULL);
    pthread_cond_init(&b.cv, NULL);
    pthread_mutex_lock(&cx->xmu);
    b.next = cx->xq;
    cx->xq = &b;
    pthread_mutex_unlock(&cx->xmu);
    uv_async_send(&cx->xasync);
    pthread_mutex_lock(&b.mu);
    while (b.left)
        pthread_cond_wait(&b.cv, &b.mu);
    pthread_mutex_unlock(&b.mu);
    pthread_mutex_destroy(&b.mu);
    pthread_cond_destroy(&b.cv);
    free(b.x);
}

/* Any thread that finishes a job (the loop): one less to wait for. */
static void job_done(xjob_t *x)
{
    xbatch_t *b = x->b;

    pthread_mutex_lock(&b->mu);
    if (--b->left == 0)
        pthread_cond_signal(&b->cv);
    pthread_mutex_unlock(&b->mu);
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

static void submit_job(px_clustered_t *cx, xjob_t *x, json_t *req, px_buf_t *scratch)
{
    const char *key = json_string_value(json_object_get(req, "key"));
    const char *op = json_string_value(json_object_get(req, "op"));
    json_t *id = json_object_get(req, "id"), *payload = json_object_get(req, "payload");
    px_buf_t idtext = {0};
    const px_handler_t *h;
    px_submit_t s;
    px_verdict_t v;
    char msg[512];
    int rc;

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
    if (rc > 0 && v.why != PX_REJ_QUEUE_FULL && v.why != PX_REJ_SHUTTING_DOWN) {
        job_answer(x, idtext.data, idtext.len, "rejected", px_reject_code(v.why), v.message);
        goto out;
    }
out_nomem:
    /* Not run here (full, stopping, out of memory): the next consumer runs it again. */
    x->j->run = 0;
    job_done(x);
out:
    px_buf_free(&idtext);
}

static void on_xasync(uv_async_t *a)
{
    px_clustered_t *cx = a->data;
    xbatch_t *q, *rev = NULL;
    px_buf_t scratch = {0};

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
        next = b->next; /* b may be gone once its last job is done */
        for (size_t i = 0, n = b->n; i < n; i++) {
            xjob_t *x = &b->x[i];
            json_t *req;

            x->b = b;
            x->j = &b->jobs[i];
            if (!px_cluster_fence_ok(b->fence)) {
                x->j->run = 0; /* the lease is gone: leave it to the next owner */
                job_done(x);
                continue;
            }
            req = json_loadb(x->j->data, x->j->len, 0, NULL);
            submit_job(cx, x, req, &scratch);
            json_decref(req);
        }
    }
    px_buf_free(&scratch);
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
}

void px_clustered_exec_release(px_clustered_t *cx)
{
    xbatch_t *b;

    /* Partition threads still waiting for the loop (a forced stop) get their batch back unrun
     * before the cluster joins them. */
    pthread_mutex_lock(&cx->xmu);
    b = cx->xq;
    cx->xq = NULL;
    pthread_mutex_unlock(&cx->xmu);
    for (xbatch_t *next; b; b = next) {
        next = b->next; /* b lives on its thread's stack: gone once it is signalled */
        pthread_mutex_lock(&b->mu);
        b->left = 0;
        pthread_cond_signal(&b->cv);
        pthread_mutex_unlock(&b->mu);
    }
}
