/* The ingress side: publishing threads store submitted requests in JetStream, and answers for
 * this instance arrive on a subscription; both reach the loop through one uv_async_t.
 *
 * Order: every partition is published by one thread, one message at a time (a synchronous
 * publish), so the decisions for a partition are taken in submit order. What the loop submitted
 * for a partition while its previous message was being stored goes into the next message,
 * together (records.c): stored all at once or not at all, so the decisions stay in submit order
 * while one JetStream write serves many requests. A refusal also refuses
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

void cl_post_done(struct px_cluster *cl, cl_pub_t *p)
{
    int was_empty;

    p->next = NULL;
    pthread_mutex_lock(&cl->done_mu);
    was_empty = cl_loop_lists_empty(cl);
    if (cl->done_tail)
        cl->done_tail->next = p;
    else
        cl->done = p;
    cl->done_tail = p;
    pthread_mutex_unlock(&cl->done_mu);
    if (was_empty)
        cl_wake_loop(cl);
}

/* nats.c's subscription thread: the answers of one stored message, all for requests this
 * instance accepted. */
void cl_on_result(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    struct px_cluster *cl = closure;
    const char *pos = natsMsg_GetData(msg), *end = pos + natsMsg_GetDataLength(msg);
    cl_res_t *head = NULL, **tail = &head, *last = NULL;
    jsMsgMetaData *md = NULL;
    cl_rec_t rec;
    uint64_t n = 0;
    int rc;

    if (natsMsg_GetMetaData(&md, msg) == NATS_OK) {
        if (md->Timestamp > atomic_load(&cl->res_last_ts))
            atomic_store(&cl->res_last_ts, md->Timestamp);
        jsMsgMetaData_Destroy(md);
    }
    while ((rc = cl_rec_next(&pos, end, &rec)) > 0) {
        cl_res_t *r = malloc(sizeof *r + rec.len);

        if (!r) {
            px_warn("cluster: out of memory for an answer (message id %s)", rec.msgid);
            continue;
        }
        memcpy(r->msgid, rec.msgid, sizeof r->msgid);
        memcpy(r->line, rec.data, rec.len);
        r->len = rec.len;
        r->missing = 0;
        r->next = NULL;
        *tail = last = r;
        tail = &r->next;
        n++;
    }
    if (rc < 0)
        px_warn("cluster: dropped the rest of a malformed answer message on %s",
                natsMsg_GetSubject(msg));
    natsMsg_Destroy(msg);
    atomic_store(&cl->res_wait_since, 0);
    if (!head)
        return;
    atomic_fetch_add(&cl->results_in, n);
    cl_post_results(cl, head, last);
}

static void refuse(cl_pub_t *p, enum px_cluster_status st, const char *why)
{
    p->st = st;
    snprintf(p->why, sizeof p->why, "%s", why);
}

/* Publisher thread: a refusal also refuses what of its partition the loop sent before seeing it.
 * Monotonic max: only this partition's publisher writes it. */
static void refused_up_to(struct px_cluster *cl, uint32_t partition, uint64_t gen)
{
    if (atomic_load(&cl->refused_gen[partition]) < gen)
        atomic_store(&cl->refused_gen[partition], gen);
}

/* Publisher thread: 1 if p can go into a message (else it is refused and done), in submit order
 * of its partition. */
static int admit(struct px_cluster *cl, cl_pub_t *p)
{
    if (atomic_load(&cl->stopping)) {
        refuse(p, PX_CL_STOPPING, "parexd is shutting down");
        goto done;
    }
    if (p->gen <= atomic_load(&cl->refused_gen[p->partition])) {
        refuse(p, PX_CL_UNAVAILABLE,
               "an earlier request of this key's partition was just refused; retry");
        goto done;
    }
    if (!atomic_load(&cl->ready)) {
        refuse(p, PX_CL_UNAVAILABLE,
               "not connected to NATS JetStream yet; retry on another instance or later");
        goto refused;
    }
    if ((int64_t)(p->len + 2 * strlen(p->msgid) + 256) > cl->max_payload) {
        p->st = PX_CL_TOO_LARGE;
        snprintf(p->why, sizeof p->why,
                 "request of %zu bytes is over the NATS servers' max_payload (%lld bytes with "
                 "headers); send a smaller payload",
                 p->len, (long long)cl->max_payload);
        goto refused;
    }
    if (px_now_ns() >= p->deadline) {
        /* Waited its whole time behind other partitions' publishes: never sent. */
        p->st = PX_CL_UNAVAILABLE;
        snprintf(p->why, sizeof p->why,
                 "NATS JetStream is not storing requests fast enough (publish_timeout_ms %llu "
                 "passed before it could be sent); retry later",
                 (unsigned long long)cl->o.publish_timeout_ms);
        goto refused;
    }
    return 1;
refused:
    refused_up_to(cl, p->partition, p->gen);
done:
    cl_post_done(cl, p);
    return 0;
}

static int is_idem(const cl_pub_t *p)
{
    return strncmp(p->msgid, "i.", 2) == 0;
}

/* Publisher thread: moves into c the first partition's requests of list, in order, up to the
 * message's limits; an idem request goes alone (its id is the message's, for JetStream's dedup).
 * Returns the rest of list, in order. */
static cl_pub_t *take_chunk(struct px_cluster *cl, cl_pub_t *list, cl_chunk_t *c)
{
    cl_pub_t *rest = NULL, **rest_tail = &rest;
    size_t bytes = 0, room = (size_t)cl->max_payload - 1024;
    int closed = 0;

    c->n = 0;
    c->partition = list->partition;
    for (cl_pub_t *p = list, *next; p; p = next) {
        size_t sz = p->len + strlen(p->msgid) + 24;

        next = p->next;
        p->next = NULL;
        if (p->partition != c->partition || closed) {
            *rest_tail = p;
            rest_tail = &p->next;
            continue;
        }
        if (c->n &&
            (is_idem(p) || is_idem(c->it[0]) || c->n == CL_CHUNK_MAX || bytes + sz > room)) {
            closed = 1; /* the partition's next message starts here */
            *rest_tail = p;
            rest_tail = &p->next;
            continue;
        }
        if (!admit(cl, p))
            continue;
        c->it[c->n++] = p;
        bytes += sz;
    }
    return rest;
}

static void chunk_refuse(cl_chunk_t *c, enum px_cluster_status st, const char *why)
{
    for (unsigned i = 0; i < c->n; i++)
        refuse(c->it[i], st, why);
}

/* Publisher thread: stores the chunk's requests as one message (all of them or none), or says
 * why not. */
static void publish_chunk(struct px_cluster *cl, cl_publisher_t *pb, cl_chunk_t *c)
{
    cl_part_t *part = &cl->parts[c->partition];
    cl_pub_t *first = c->it[0];
    char subj[64], why[256];
    natsMsg *m = NULL;
    jsPubAck *pa = NULL;
    jsPubOptions po;
    jsErrCode jerr = 0;
    natsStatus s;
    uint64_t until = first->deadline; /* the earliest of the chunk */

    if (atomic_load(&part->backlog) >= cl->o.max_backlog) {
        snprintf(why, sizeof why,
                 "partition %u holds %llu waiting request messages (max_backlog_per_partition "
                 "%llu)",
                 c->partition, (unsigned long long)atomic_load(&part->backlog),
                 (unsigned long long)cl->o.max_backlog);
        chunk_refuse(c, PX_CL_FULL, why);
        goto refused;
    }
    pb->body.len = 0;
    for (unsigned i = 0; i < c->n; i++)
        if (cl_rec_append(&pb->body, c->it[i]->msgid, c->it[i]->data, c->it[i]->len)) {
            chunk_refuse(c, PX_CL_UNAVAILABLE, "out of memory");
            goto refused;
        }
    snprintf(subj, sizeof subj, CL_REQ_SUBJ "%u", c->partition);
    /* Retried with the same message id until stored or out of time: JetStream's dedup makes
     * the retries one message, and a leader election (a few seconds) ends in an accept. */
    for (;;) {
        uint64_t now = px_now_ns();

        jsPubOptions_Init(&po);
        po.MsgId = first->msgid;
        po.MaxWait = now < until ? (int64_t)((until - now) / PX_MS) + 1 : 1;
        jerr = 0;
        s = natsMsg_Create(&m, subj, NULL, pb->body.data, (int)pb->body.len);
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
        uint64_t none = 0;

        atomic_compare_exchange_strong(&cl->res_wait_since, &none, px_now_ns());
        atomic_fetch_add(&part->backlog, 1); /* until the next refresh says better */
        atomic_fetch_add(&cl->stored_messages, 1);
        for (unsigned i = 0; i < c->n; i++) {
            c->it[i]->st = PX_CL_ACCEPTED;
            c->it[i]->dup = pa->Duplicate;
        }
        if (pa->Duplicate)
            atomic_fetch_add(&cl->duplicates_stored, c->n);
        jsPubAck_Destroy(pa);
        return;
    }
    if (jerr == JSStreamStoreFailedErr || strstr(nats_GetLastError(NULL), "maximum messages")) {
        snprintf(why, sizeof why, "the request stream is full: %.100s", nats_GetLastError(NULL));
        chunk_refuse(c, PX_CL_FULL, why);
    } else if (jerr) {
        snprintf(why, sizeof why, "NATS JetStream refused it: %.150s", nats_GetLastError(NULL));
        chunk_refuse(c, PX_CL_UNAVAILABLE, why);
    } else {
        snprintf(why, sizeof why,
                 "NATS JetStream did not confirm storing it within publish_timeout_ms (%llu); it "
                 "may still run: resubmit with the same idem to be sure it runs once",
                 (unsigned long long)cl->o.publish_timeout_ms);
        chunk_refuse(c, PX_CL_UNCERTAIN, why);
    }
refused:
    refused_up_to(cl, c->partition, c->it[c->n - 1]->gen);
}

static void *pub_main(void *arg)
{
    cl_publisher_t *pb = arg;
    struct px_cluster *cl = pb->cl;
    cl_chunk_t *c = malloc(sizeof *c);
    sigset_t all;

    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    pthread_setname_np(pthread_self(), "px-cl-pub");
    for (;;) {
        cl_pub_t *list;

        pthread_mutex_lock(&pb->mu);
        while (!pb->head && !atomic_load(&cl->stopping))
            pthread_cond_wait(&pb->cv, &pb->mu);
        list = pb->head; /* everything queued: one message per partition and round */
        pb->head = pb->tail = NULL;
        pb->n = 0;
        pthread_mutex_unlock(&pb->mu);
        if (!list)
            break;
        /* Connecting happens on the lease thread; wait for it no longer than a publish may
         * take. */
        while (!atomic_load(&cl->ready) && px_now_ns() < list->deadline &&
               !atomic_load(&cl->stopping)) {
            struct timespec ts = {0, 10 * 1000000};
            nanosleep(&ts, NULL);
        }
        while (list) {
            if (!c) { /* out of memory: one at a time */
                cl_pub_t *p = list;
                list = p->next;
                refuse(p, PX_CL_UNAVAILABLE, "out of memory");
                refused_up_to(cl, p->partition, p->gen);
                cl_post_done(cl, p);
                continue;
            }
            list = take_chunk(cl, list, c);
            if (!c->n)
                continue;
            publish_chunk(cl, pb, c);
            if (c->it[0]->dup && is_idem(c->it[0])) {
                char msgid[sizeof c->it[0]->msgid];
                uint64_t until = c->it[0]->deadline;

                memcpy(msgid, c->it[0]->msgid, sizeof msgid);
                cl_post_done(cl, c->it[0]); /* the loop frees it */
                cl_find_answer(cl, msgid, until);
                continue;
            }
            for (unsigned i = 0; i < c->n; i++)
                cl_post_done(cl, c->it[i]);
        }
    }
    free(c);
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
        px_buf_free(&cl->pubs[i].body);
        pthread_mutex_destroy(&cl->pubs[i].mu);
        pthread_cond_destroy(&cl->pubs[i].cv);
    }
}
