/* The ingress side: publishing threads store submitted requests in JetStream, and answers for
 * this instance arrive on a core subscription; both reach the loop through one uv_async_t.
 *
 * Order: every partition is published by one thread, one message at a time (a synchronous
 * publish), so the decisions for a partition are taken in submit order. A refusal also refuses
 * whatever of that partition was submitted before the loop saw it (the refusal generation in
 * internal.h): a client that pipelines requests of one key never gets a later one accepted behind
 * an earlier one that was refused. Pipelining several publishes of one partition would lose that
 * (a timed-out publish followed by a stored one). */
#include "daemon/cluster/internal.h"

#include "common/clock.h"
#include "common/log.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Message ids as subject tokens: any byte, two hex digits each. */
void cl_hex(char *out, const char *in, size_t max)
{
    static const char d[] = "0123456789abcdef";
    size_t i = 0;

    for (; *in && i + 3 <= max; in++) {
        out[i++] = d[(unsigned char)*in >> 4];
        out[i++] = d[(unsigned char)*in & 15];
    }
    out[i] = 0;
}

void cl_wake_loop(struct px_cluster *cl)
{
    uv_async_send(&cl->async);
}

void cl_post_done(struct px_cluster *cl, cl_pub_t *p)
{
    int was_empty;

    p->next = NULL;
    pthread_mutex_lock(&cl->done_mu);
    was_empty = !cl->done && !cl->results;
    if (cl->done_tail)
        cl->done_tail->next = p;
    else
        cl->done = p;
    cl->done_tail = p;
    pthread_mutex_unlock(&cl->done_mu);
    if (was_empty)
        cl_wake_loop(cl);
}

/* nats.c's subscription thread: an answer for a request this instance accepted. */
void cl_on_result(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    struct px_cluster *cl = closure;
    const char *id = NULL;
    int len = natsMsg_GetDataLength(msg), was_empty;
    jsMsgMetaData *md = NULL;
    cl_res_t *r;

    if (natsMsg_GetMetaData(&md, msg) == NATS_OK) {
        if (md->Sequence.Stream > atomic_load(&cl->res_last_seq))
            atomic_store(&cl->res_last_seq, md->Sequence.Stream);
        jsMsgMetaData_Destroy(md);
    }

    if (natsMsgHeader_Get(msg, CL_HDR_ID, &id) != NATS_OK || !id || len < 0 ||
        !(r = malloc(sizeof *r + (size_t)len))) {
        px_warn("cluster: dropped an answer without a %s header or out of memory", CL_HDR_ID);
        natsMsg_Destroy(msg);
        return;
    }
    snprintf(r->msgid, sizeof r->msgid, "%s", id);
    memcpy(r->line, natsMsg_GetData(msg), (size_t)len);
    r->len = (size_t)len;
    r->missing = 0;
    r->next = NULL;
    natsMsg_Destroy(msg);
    atomic_fetch_add(&cl->results_in, 1);
    pthread_mutex_lock(&cl->done_mu);
    was_empty = !cl->done && !cl->results;
    if (cl->results_tail)
        cl->results_tail->next = r;
    else
        cl->results = r;
    cl->results_tail = r;
    pthread_mutex_unlock(&cl->done_mu);
    if (was_empty)
        cl_wake_loop(cl);
}

static void refuse(cl_pub_t *p, enum px_cluster_status st, const char *why)
{
    p->st = st;
    snprintf(p->why, sizeof p->why, "%s", why);
}

/* Publisher thread: stores one request, or says why not. */
static void publish_one(struct px_cluster *cl, cl_pub_t *p)
{
    cl_part_t *part = &cl->parts[p->partition];
    char subj[64];
    natsMsg *m = NULL;
    jsPubAck *pa = NULL;
    jsPubOptions po;
    jsErrCode jerr = 0;
    natsStatus s;
    uint64_t until = p->deadline;

    /* Connecting happens on the lease thread; wait for it no longer than a publish may take. */
    while (!atomic_load(&cl->ready) && px_now_ns() < until && !atomic_load(&cl->stopping)) {
        struct timespec ts = {0, 10 * 1000000};
        nanosleep(&ts, NULL);
    }
    if (p->gen <= atomic_load(&cl->refused_gen[p->partition])) {
        refuse(p, PX_CL_UNAVAILABLE,
               "an earlier request of this key's partition was just refused; retry");
        return;
    }
    if (!atomic_load(&cl->ready) || atomic_load(&cl->stopping)) {
        refuse(p, PX_CL_UNAVAILABLE,
               "not connected to NATS JetStream yet; retry on another instance or later");
        goto refused;
    }
    if ((int64_t)(p->len + strlen(p->msgid) + 128) > cl->max_payload) {
        p->st = PX_CL_TOO_LARGE;
        snprintf(p->why, sizeof p->why,
                 "request of %zu bytes is over the NATS servers' max_payload (%lld bytes with "
                 "headers); send a smaller payload",
                 p->len, (long long)cl->max_payload);
        goto refused;
    }
    if (atomic_load(&part->backlog) >= cl->o.max_backlog) {
        p->st = PX_CL_FULL;
        snprintf(p->why, sizeof p->why,
                 "partition %u holds %llu waiting requests (max_backlog_per_partition %llu)",
                 p->partition, (unsigned long long)atomic_load(&part->backlog),
                 (unsigned long long)cl->o.max_backlog);
        goto refused;
    }
    if (px_now_ns() >= until) {
        /* Waited its whole time behind other partitions' publishes: never sent. */
        p->st = PX_CL_UNAVAILABLE;
        snprintf(p->why, sizeof p->why,
                 "NATS JetStream is not storing requests fast enough (publish_timeout_ms %llu "
                 "passed before it could be sent); retry later",
                 (unsigned long long)cl->o.publish_timeout_ms);
        goto refused;
    }
    snprintf(subj, sizeof subj, CL_REQ_SUBJ "%u", p->partition);
    /* Retried with the same message id until stored or out of time: JetStream's dedup makes
     * the retries one message, and a leader election (a few seconds) ends in an accept. */
    for (;;) {
        uint64_t now = px_now_ns();

        jsPubOptions_Init(&po);
        po.MsgId = p->msgid;
        po.MaxWait = now < until ? (int64_t)((until - now) / PX_MS) + 1 : 1;
        jerr = 0;
        s = natsMsg_Create(&m, subj, NULL, p->data, (int)p->len);
        if (s == NATS_OK)
            s = natsMsgHeader_Set(m, CL_HDR_REPLY, cl->instance);
        if (s == NATS_OK)
            s = js_PublishMsg(&pa, cl->js, m, &po, &jerr);
        natsMsg_Destroy(m);
        m = NULL;
        if (s == NATS_OK || jerr || px_now_ns() + 50 * PX_MS >= until || atomic_load(&cl->stopping))
            break;
        struct timespec ts = {0, 50 * 1000000};
        nanosleep(&ts, NULL);
    }
    if (s == NATS_OK) {
        p->st = PX_CL_ACCEPTED;
        atomic_fetch_add(&part->backlog, 1); /* until the next refresh says better */
        if (pa->Duplicate) {
            atomic_fetch_add(&cl->duplicates_stored, 1);
            p->dup = 1;
        }
        jsPubAck_Destroy(pa);
        return;
    }
    if (jerr == JSStreamStoreFailedErr || strstr(nats_GetLastError(NULL), "maximum messages")) {
        p->st = PX_CL_FULL;
        snprintf(p->why, sizeof p->why, "the request stream is full: %.100s",
                 nats_GetLastError(NULL));
    } else if (jerr) {
        p->st = PX_CL_UNAVAILABLE;
        snprintf(p->why, sizeof p->why, "NATS JetStream refused it: %.150s",
                 nats_GetLastError(NULL));
    } else {
        p->st = PX_CL_UNCERTAIN;
        snprintf(p->why, sizeof p->why,
                 "NATS JetStream did not confirm storing it within publish_timeout_ms (%llu); it "
                 "may still run: resubmit with the same idem to be sure it runs once",
                 (unsigned long long)cl->o.publish_timeout_ms);
    }
refused:
    /* Monotonic max: only this partition's publisher writes it. */
    if (atomic_load(&cl->refused_gen[p->partition]) < p->gen)
        atomic_store(&cl->refused_gen[p->partition], p->gen);
}

static void post_result(struct px_cluster *cl, const char *msgid, const void *data, int len)
{
    cl_res_t *r = malloc(sizeof *r + (size_t)(len > 0 ? len : 0));
    int was_empty;

    if (!r)
        return;
    snprintf(r->msgid, sizeof r->msgid, "%s", msgid);
    r->len = len > 0 ? (size_t)len : 0;
    r->missing = len < 0;
    if (len > 0)
        memcpy(r->line, data, (size_t)len);
    r->next = NULL;
    pthread_mutex_lock(&cl->done_mu);
    was_empty = !cl->done && !cl->results;
    if (cl->results_tail)
        cl->results_tail->next = r;
    else
        cl->results = r;
    cl->results_tail = r;
    pthread_mutex_unlock(&cl->done_mu);
    if (was_empty)
        cl_wake_loop(cl);
}

/* Publisher thread: a resubmitted idem request is stored once, and its answer may have gone to
 * another instance long ago. Read it from the results stream (waiting a while for a request
 * still running), or say it is not there yet. */
static void find_answer(struct px_cluster *cl, const char *msgid, uint64_t until)
{
    char hex[420], subj[512];

    cl_hex(hex, msgid, sizeof hex);
    snprintf(subj, sizeof subj, CL_IDEM_SUBJ "%s", hex);
    for (;;) {
        natsMsg *m = NULL;
        jsErrCode jerr = 0;

        if (js_GetLastMsg(&m, cl->js, CL_RES_STREAM, subj, NULL, &jerr) == NATS_OK) {
            post_result(cl, msgid, natsMsg_GetData(m), natsMsg_GetDataLength(m));
            natsMsg_Destroy(m);
            return;
        }
        if (px_now_ns() + 100 * PX_MS >= until || atomic_load(&cl->stopping))
            break;
        struct timespec ts = {0, 100 * 1000000};
        nanosleep(&ts, NULL);
    }
    post_result(cl, msgid, NULL, -1);
}

static void *pub_main(void *arg)
{
    cl_publisher_t *pb = arg;
    struct px_cluster *cl = pb->cl;
    sigset_t all;

    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    pthread_setname_np(pthread_self(), "px-cl-pub");
    for (;;) {
        cl_pub_t *p;

        pthread_mutex_lock(&pb->mu);
        while (!pb->head && !atomic_load(&cl->stopping))
            pthread_cond_wait(&pb->cv, &pb->mu);
        p = pb->head;
        if (p) {
            pb->head = p->next;
            if (!pb->head)
                pb->tail = NULL;
            pb->n--;
        }
        pthread_mutex_unlock(&pb->mu);
        if (!p)
            break;
        if (atomic_load(&cl->stopping))
            refuse(p, PX_CL_STOPPING, "parexd is shutting down");
        else
            publish_one(cl, p);
        if (p->dup && strncmp(p->msgid, "i.", 2) == 0) {
            char msgid[sizeof p->msgid];
            uint64_t until = p->deadline;

            memcpy(msgid, p->msgid, sizeof msgid);
            cl_post_done(cl, p); /* the loop frees p */
            find_answer(cl, msgid, until);
            continue;
        }
        cl_post_done(cl, p);
    }
    return NULL;
}

void px_cluster_submit(px_cluster_t *cl, uint32_t partition, const char *msgid, const char *data,
                       size_t len, void *cookie)
{
    cl_publisher_t *pb = &cl->pubs[partition % cl->o.publishers];
    cl_pub_t *p = malloc(sizeof *p + len);

    atomic_fetch_add(&cl->submitted, 1);
    if (!p) {
        cl->cbs.accepted(cookie, PX_CL_UNAVAILABLE, "out of memory", cl->cbs.arg);
        return;
    }
    p->next = NULL;
    p->cookie = cookie;
    p->partition = partition;
    p->gen = cl->gen[partition];
    p->deadline = px_now_ns() + cl->o.publish_timeout_ms * PX_MS;
    p->st = PX_CL_UNAVAILABLE;
    p->why[0] = 0;
    p->dup = 0;
    p->len = len;
    snprintf(p->msgid, sizeof p->msgid, "%s", msgid);
    memcpy(p->data, data, len);
    pthread_mutex_lock(&pb->mu);
    if (pb->tail)
        pb->tail->next = p;
    else
        pb->head = p;
    pb->tail = p;
    pb->n++;
    pthread_cond_signal(&pb->cv);
    pthread_mutex_unlock(&pb->mu);
}

int cl_ingress_start(struct px_cluster *cl, char *err, size_t errlen)
{
    uint32_t i;

    if (!(cl->pubs = calloc(cl->o.publishers, sizeof *cl->pubs))) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (i = 0; i < cl->o.publishers; i++) {
        cl_publisher_t *pb = &cl->pubs[i];
        int rc;

        pb->cl = cl;
        pthread_mutex_init(&pb->mu, NULL);
        pthread_cond_init(&pb->cv, NULL);
        if ((rc = pthread_create(&pb->th, NULL, pub_main, pb))) {
            snprintf(err, errlen, "cannot start a publishing thread: %s", strerror(rc));
            cl->o.publishers = i; /* the stop joins only those started */
            return -1;
        }
    }
    return 0;
}

/* The stopping flag is set: wake every publisher, which refuses what is left, and join. */
void cl_ingress_stop(struct px_cluster *cl)
{
    for (uint32_t i = 0; i < cl->o.publishers; i++) {
        pthread_mutex_lock(&cl->pubs[i].mu);
        pthread_cond_broadcast(&cl->pubs[i].cv);
        pthread_mutex_unlock(&cl->pubs[i].mu);
    }
    for (uint32_t i = 0; i < cl->o.publishers; i++) {
        pthread_join(cl->pubs[i].th, NULL);
        pthread_mutex_destroy(&cl->pubs[i].mu);
        pthread_cond_destroy(&cl->pubs[i].cv);
    }
}
