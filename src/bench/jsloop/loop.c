/* parex-jsloop's loop: the producer (the caller's thread), the results callback (nats.c's thread
 * for the results subscription) and one consumer thread per partition. The producer keeps at
 * most in_flight requests without their result, so the run is a closed loop like parex-bench's
 * pipeline and latency does not grow with an unbounded backlog. Each request carries its send
 * time and sequence in its first 16 bytes; the consumer copies it into the result. */
#include "bench/jsloop/internal.h"

#include "common/clock.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FETCH_WAIT_NS ((int64_t)250 * 1000000)
#define RESULT_WAIT_MS 5000

/* Marks request seq finished; 0, or -1 when it was already (a duplicate) or never sent.
 * Under l->mu. */
static int finish(jl_t *l, uint64_t seq)
{
    if (seq >= l->done_cap || l->done[seq])
        return -1;
    l->done[seq] = 1;
    l->outstanding--;
    pthread_cond_signal(&l->cv);
    return 0;
}

static int stamp_of(natsMsg *m, uint64_t *t0, uint64_t *seq)
{
    const char *d = natsMsg_GetData(m);

    if (natsMsg_GetDataLength(m) < 16)
        return -1;
    memcpy(t0, d, 8);
    memcpy(seq, d + 8, 8);
    return 0;
}

/* nats.c's thread of the results subscription (one message at a time). */
static void on_result(natsConnection *nc, natsSubscription *sub, natsMsg *m, void *arg)
{
    jl_t *l = arg;
    uint64_t now = px_now_ns(), t0, seq;

    if (stamp_of(m, &t0, &seq)) {
        atomic_fetch_add(&l->nats_errors, 1);
    } else {
        pthread_mutex_lock(&l->mu);
        if (finish(l, seq) == 0) {
            l->r->completed++;
            px_bhist_record(&l->r->lat, now - t0);
            l->last_ns = now;
        } else {
            l->r->duplicates++;
        }
        pthread_mutex_unlock(&l->mu);
    }
    natsMsg_Destroy(m);
}

/* nats.c's thread: a request JetStream did not store; no result will come for it. */
static void on_pub_failed(jsCtx *js, jsPubAckErr *pae, void *closure)
{
    jl_t *l = closure;
    uint64_t t0, seq;

    atomic_fetch_add(&l->publish_errors, 1);
    if (pae->Msg && stamp_of(pae->Msg, &t0, &seq) == 0) {
        pthread_mutex_lock(&l->mu);
        finish(l, seq);
        pthread_mutex_unlock(&l->mu);
    }
}

/* nats.c's thread: a result JetStream did not store; its batch is then not acknowledged. */
static void on_result_failed(jsCtx *js, jsPubAckErr *pae, void *closure)
{
    atomic_fetch_add((_Atomic unsigned *)closure, 1);
}

/* Whatever is stored now, up to a batch; when nothing is, the first to come within 250 ms (a
 * Fetch of a whole batch would wait for all of it or for the time-out). */
static natsStatus fetch(natsMsgList *list, natsSubscription *sub, int batch)
{
    jsFetchRequest fr;
    natsStatus s = NATS_NOT_FOUND;

    for (int wait = 0; wait < 2 && (s == NATS_NOT_FOUND || s == NATS_TIMEOUT); wait++) {
        jsFetchRequest_Init(&fr);
        fr.Batch = wait ? 1 : batch;
        fr.NoWait = !wait;
        fr.Expires = FETCH_WAIT_NS;
        s = natsSubscription_FetchRequest(list, sub, &fr);
    }
    return s == NATS_NOT_FOUND ? NATS_TIMEOUT : s;
}

/* A result for each request of the batch, all stored before any request is acknowledged (the
 * last synchronously, as cluster mode does): 0, or -1 when a result was not stored. */
static int answer_batch(jl_worker_t *w, natsMsgList *list, char *subj)
{
    jsPubOptions po;
    int bad = 0;

    for (int i = 0; i < list->Count; i++) {
        natsMsg *req = list->Msgs[i], *m = NULL;
        const char *id = NULL;
        char rid[128];

        natsMsgHeader_Get(req, "Nats-Msg-Id", &id);
        snprintf(rid, sizeof rid, "r.%s", id ? id : "");
        jsPubOptions_Init(&po);
        po.MsgId = rid;
        if (natsMsg_Create(&m, subj, NULL, natsMsg_GetData(req), natsMsg_GetDataLength(req)) !=
                NATS_OK ||
            js_PublishMsgAsync(w->js, &m, &po) != NATS_OK)
            bad++;
        natsMsg_Destroy(m);
    }
    jsPubOptions_Init(&po);
    po.MaxWait = RESULT_WAIT_MS;
    if (js_PublishAsyncComplete(w->js, &po) != NATS_OK)
        bad++;
    bad += (int)atomic_exchange(&w->failed, 0);
    if (bad) {
        w->result_errors += (uint64_t)bad;
        for (int i = 0; i < list->Count; i++)
            natsMsg_Nak(list->Msgs[i], NULL);
        return -1;
    }
    return 0;
}

static void ack_batch(jl_worker_t *w, natsMsgList *list)
{
    for (int i = 0; i < list->Count; i++) {
        natsMsg *m = list->Msgs[i];
        if ((i == list->Count - 1 ? natsMsg_AckSync(m, NULL, NULL) : natsMsg_Ack(m, NULL)) !=
            NATS_OK)
            w->ack_errors++;
    }
}

static void *consume(void *arg)
{
    jl_worker_t *w = arg;
    jl_t *l = w->l;
    char subj[128];
    sigset_t all;

    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    snprintf(subj, sizeof subj, JL_SUBJ "%s.res.%u", l->run, w->id);
    while (!atomic_load(&l->stop)) {
        natsMsgList list = {0};
        natsStatus s = fetch(&list, w->sub, (int)l->o->batch);

        if (s == NATS_TIMEOUT)
            continue;
        if (s != NATS_OK) {
            w->fetch_errors++;
            fprintf(stderr, "parex-jsloop: partition %u: fetch failed: %s\n", w->id,
                    nats_GetLastError(NULL));
            struct timespec ts = {0, 100 * 1000000}; /* not connected: retry shortly */
            nanosleep(&ts, NULL);
            continue;
        }
        if (answer_batch(w, &list, subj) == 0)
            ack_batch(w, &list);
        natsMsgList_Destroy(&list);
    }
    return NULL;
}

static int start_workers(jl_t *l, char *err, size_t errlen)
{
    jsOptions jo;

    for (unsigned i = 0; i < l->o->partitions; i++) {
        jl_worker_t *w = &l->w[i];
        jsOptions_Init(&jo);
        jo.PublishAsync.MaxPending = (int64_t)l->o->batch * 2;
        jo.PublishAsync.ErrHandler = on_result_failed;
        jo.PublishAsync.ErrHandlerClosure = (void *)&w->failed;
        if (natsConnection_JetStream(&w->js, l->wnc, &jo) != NATS_OK) {
            snprintf(err, errlen, "cannot use JetStream: %s", nats_GetLastError(NULL));
            return -1;
        }
        if (pthread_create(&w->th, NULL, consume, w)) {
            snprintf(err, errlen, "cannot start a consumer thread");
            return -1;
        }
        w->started = 1;
    }
    return 0;
}

static void stop_workers(jl_t *l)
{
    atomic_store(&l->stop, 1);
    for (unsigned i = 0; i < l->o->partitions; i++) {
        jl_worker_t *w = &l->w[i];
        if (w->started)
            pthread_join(w->th, NULL);
        if (w->js)
            jsCtx_Destroy(w->js);
        l->r->result_errors += w->result_errors;
        l->r->ack_errors += w->ack_errors;
        l->r->fetch_errors += w->fetch_errors;
    }
}

/* Room for request seq: waits while in_flight requests are without their result. 0, or -1 at
 * the end of the publishing time (or out of memory for the done flags). */
static int reserve(jl_t *l, uint64_t seq, uint64_t end_ns)
{
    uint64_t now;
    int rc = 0;

    pthread_mutex_lock(&l->mu);
    while (l->outstanding >= l->o->in_flight && (now = px_now_ns()) < end_ns) {
        struct timespec ts = px_deadline_after(CLOCK_MONOTONIC, end_ns - now);
        pthread_cond_timedwait(&l->cv, &l->mu, &ts);
    }
    if (px_now_ns() >= end_ns) {
        rc = -1;
    } else if (seq >= l->done_cap) {
        size_t cap = l->done_cap ? l->done_cap * 2 : 1 << 16;
        uint8_t *d = realloc(l->done, cap);
        if (!d) {
            fprintf(stderr, "parex-jsloop: out of memory at request %llu; stopping\n",
                    (unsigned long long)seq);
            rc = -1;
        } else {
            memset(d + l->done_cap, 0, cap - l->done_cap);
            l->done = d;
            l->done_cap = cap;
        }
    }
    if (rc == 0)
        l->outstanding++;
    pthread_mutex_unlock(&l->mu);
    return rc;
}

/* Request seq, stamped with its send time, to partition seq % partitions. */
static void publish(jl_t *l, uint64_t seq, char *buf)
{
    char subj[128], id[96];
    natsMsg *m = NULL;
    jsPubOptions po;
    uint64_t t0;
    natsStatus s;

    snprintf(subj, sizeof subj, JL_SUBJ "%s.req.%u", l->run, (unsigned)(seq % l->o->partitions));
    snprintf(id, sizeof id, "%s.%llu", l->run, (unsigned long long)seq);
    jsPubOptions_Init(&po);
    po.MsgId = id;
    po.MaxWait = RESULT_WAIT_MS; /* a lost acknowledgement is reported, not waited for */
    t0 = px_now_ns();
    memcpy(buf, &t0, 8);
    memcpy(buf + 8, &seq, 8);
    s = natsMsg_Create(&m, subj, NULL, buf, (int)l->o->payload_bytes);
    if (s == NATS_OK)
        s = js_PublishMsgAsync(l->pjs, &m, &po);
    natsMsg_Destroy(m);
    if (s != NATS_OK) {
        atomic_fetch_add(&l->publish_errors, 1);
        pthread_mutex_lock(&l->mu);
        finish(l, seq);
        pthread_mutex_unlock(&l->mu);
    }
}

/* Publishes for the run's duration, then waits up to its timeout for the results still due. */
static void produce(jl_t *l, char *buf)
{
    const px_jsloop_opts_t *o = l->o;
    px_jsloop_result_t *r = l->r;
    uint64_t start = px_now_ns(), end = start + (uint64_t)(o->duration * 1e9), seq, now;
    uint64_t deadline = end + (uint64_t)(o->timeout * 1e9);

    for (seq = 0; reserve(l, seq, end) == 0; seq++)
        publish(l, seq, buf);
    pthread_mutex_lock(&l->mu);
    r->sent = seq;
    r->window_completed = r->completed;
    while (l->outstanding > 0 && (now = px_now_ns()) < deadline) {
        struct timespec ts = px_deadline_after(CLOCK_MONOTONIC, deadline - now);
        pthread_cond_timedwait(&l->cv, &l->mu, &ts);
    }
    r->seconds = (double)((l->last_ns > end ? l->last_ns : end) - start) / 1e9;
    pthread_mutex_unlock(&l->mu);
}

int px_jsloop_run(const px_jsloop_opts_t *o, px_jsloop_result_t *r, char *err, size_t errlen)
{
    jl_t l = {.o = o, .r = r};
    pthread_condattr_t ca;
    char *buf = malloc(o->payload_bytes);
    int rc = -1;

    memset(r, 0, sizeof *r);
    px_bhist_init(&r->lat);
    pthread_mutex_init(&l.mu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&l.cv, &ca);
    pthread_condattr_destroy(&ca);
    if (!buf || !(l.w = calloc(o->partitions, sizeof *l.w))) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    memset(buf, 'x', o->payload_bytes);
    if (jl_setup(&l, on_result, on_pub_failed, err, errlen) || start_workers(&l, err, errlen))
        goto out;
    produce(&l, buf);
    rc = 0;
out:
    if (l.w)
        stop_workers(&l);
    jl_teardown(&l);
    nats_CloseAndWait(5000); /* no nats.c thread is left to call back into l */
    r->unanswered = l.outstanding;
    r->publish_errors = atomic_load(&l.publish_errors);
    r->nats_errors = atomic_load(&l.nats_errors);
    pthread_cond_destroy(&l.cv);
    pthread_mutex_destroy(&l.mu);
    free(l.done);
    free(l.w);
    free(buf);
    return rc;
}
