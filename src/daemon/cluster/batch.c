/* One fetched batch of a partition: its messages become jobs (records.c), the jobs run, their
 * answers are stored, then the messages are acknowledged. The fence (the local lease deadline)
 * is checked before a batch runs, before each job (by the runner), and before answering and
 * acknowledging, so an instance that lost its lease while paused neither runs nor acknowledges
 * anything once it resumes. */
#include "daemon/cluster/internal.h"

#include "common/clock.h"
#include "common/log.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int px_cluster_fence_ok(const px_cluster_fence_t *f)
{
    cl_part_t *p = f->p;

    return atomic_load(&p->epoch) == f->epoch && px_now_ns() < atomic_load(&p->deadline_ns) &&
           !atomic_load(&p->lost);
}

/* The instance that accepted the requests of message m (its answers go to it), or NULL. */
static const char *reply_of(natsMsg *m)
{
    const char *reply = NULL;

    return natsMsgHeader_Get(m, CL_HDR_REPLY, &reply) == NATS_OK ? reply : NULL;
}

/* Stores the answers of the batch's messages k, k+1, ... that one instance accepted as one
 * message in the results stream, under that instance's subject and this partition (the instance
 * follows its subject with an ordered consumer, so an answer survives a NATS node failure
 * between the two; a new holder reads the partition's answers back, see answered()). One message
 * per batch and instance rather than per request message: each is a RAFT round on an R3
 * stream, and a busy partition's batch holds tens of request messages. An idem request's
 * answer is also stored alone under the idem's own subject, for {"control":"result"} and
 * resubmissions from any instance. Asynchronous: the batch waits for all of them at once before
 * acknowledging, so a request is acknowledged only once its answer is stored. A re-run's answer
 * is stored again; the ingress ignores an answer it has given. */
static int send_answers(jsCtx *js, cl_part_t *p, cl_fbatch_t *fb, size_t k)
{
    const char *reply = reply_of(fb->msgs[k].m);
    char subj[512], hex[420], id[300];
    natsMsg *m = NULL;
    jsPubOptions po;
    natsStatus s = NATS_OK;
    size_t count = 0;

    fb->body.len = 0;
    for (size_t j = k; j < fb->nmsgs; j++) {
        cl_fmsg_t *fm = &fb->msgs[j];
        const char *r = reply_of(fm->m);

        if (fm->answered || !r || strcmp(r, reply) != 0)
            continue;
        fm->answered = 1;
        count++;
        for (size_t i = fm->first; i < fm->first + fm->n; i++)
            if (cl_rec_append(&fb->body, fb->jobs[i].msgid, fb->jobs[i].result.data,
                              fb->jobs[i].result.len))
                return -1;
        if (fm->n == 1 && strncmp(fm->id, "i.", 2) == 0) {
            px_cluster_job_t *jb = &fb->jobs[fm->first];

            cl_hex(hex, fm->id, sizeof hex);
            snprintf(subj, sizeof subj, CL_IDEM_SUBJ "%s", hex);
            snprintf(id, sizeof id, "idem.%s", fm->id);
            jsPubOptions_Init(&po);
            po.MsgId = id;
            m = NULL;
            s = natsMsg_Create(&m, subj, NULL, jb->result.data, (int)jb->result.len);
            if (s == NATS_OK)
                s = natsMsgHeader_Set(m, CL_HDR_ID, fm->id);
            if (s == NATS_OK)
                s = js_PublishMsgAsync(js, &m, &po);
            natsMsg_Destroy(m);
            if (s != NATS_OK)
                return -1;
        }
    }
    snprintf(subj, sizeof subj, CL_RES_SUBJ "%s.%u", reply, p->id);
    /* Within the dedup window the same batch stored twice (a retried settle) is stored once. */
    snprintf(id, sizeof id, "r.%zu.%s", count, fb->msgs[k].id);
    jsPubOptions_Init(&po);
    po.MsgId = id;
    m = NULL;
    s = natsMsg_Create(&m, subj, NULL, fb->body.data, (int)fb->body.len);
    if (s == NATS_OK)
        s = js_PublishMsgAsync(js, &m, &po);
    natsMsg_Destroy(m);
    return s == NATS_OK ? 0 : -1;
}

static int by_id(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

void cl_batch_forget_answered(cl_part_t *p)
{
    for (size_t i = 0; i < p->nanswered; i++)
        free(p->answered[i]);
    free(p->answered);
    p->answered = NULL;
    p->nanswered = 0;
    p->answered_loaded = 0;
}

/* Reads the ids of the partition's requests whose answers are stored from `since` (store time,
 * Unix ns) on into p->answered, sorted: once per consumer, at the first message an earlier
 * consumer handed out (every later one of those was stored after it). 0, or -1 when NATS could
 * not say in time. */
static int load_answered(struct px_cluster *cl, cl_part_t *p, int64_t since)
{
    natsSubscription *sub = NULL;
    jsConsumerInfo *ci = NULL;
    jsSubOptions so;
    jsErrCode jerr = 0;
    char subj[64];
    size_t cap = 0;
    uint64_t left;
    int rc = -1;

    cl_batch_forget_answered(p);
    snprintf(subj, sizeof subj, CL_RES_SUBJ "*.%u", p->id);
    jsSubOptions_Init(&so);
    so.Ordered = true;
    so.Config.DeliverPolicy = since > 0 ? js_DeliverByStartTime : js_DeliverAll;
    so.Config.OptStartTime = since > 0 ? since : 0;
    if (js_SubscribeSync(&sub, cl->js, subj, NULL, &so, &jerr) != NATS_OK ||
        natsSubscription_GetConsumerInfo(&ci, sub, NULL, &jerr) != NATS_OK)
        goto out;
    /* Delivered so far and still to come: every answer stored when the consumer was made. */
    left = ci->Delivered.Consumer + ci->NumPending;
    while (left--) {
        natsMsg *m = NULL;
        const char *pos, *end;
        cl_rec_t rec;

        if (natsSubscription_NextMsg(&m, sub, cl->o.publish_timeout_ms) != NATS_OK)
            goto out;
        pos = natsMsg_GetData(m);
        end = pos + natsMsg_GetDataLength(m);
        while (cl_rec_next(&pos, end, &rec) > 0) {
            if (p->nanswered == cap) {
                char **a = realloc(p->answered, (cap = cap ? cap * 2 : 64) * sizeof *a);
                if (!a) {
                    natsMsg_Destroy(m);
                    goto out;
                }
                p->answered = a;
            }
            if (!(p->answered[p->nanswered] = strdup(rec.msgid))) {
                natsMsg_Destroy(m);
                goto out;
            }
            p->nanswered++;
        }
        natsMsg_Destroy(m);
    }
    qsort(p->answered, p->nanswered, sizeof *p->answered, by_id);
    p->answered_loaded = 1;
    rc = 0;
out:
    if (rc)
        px_warn("cluster: partition %u: cannot read its stored answers back: %s", p->id,
                nats_GetLastError(NULL));
    jsConsumerInfo_Destroy(ci);
    if (sub) {
        natsSubscription_Unsubscribe(sub);
        natsSubscription_Destroy(sub);
    }
    return rc;
}

/* Is the answer of message m stored already (it ran to the end under an earlier consumer)? A
 * message's answers are stored together, so its first request's tells. -1: unknown. */
static int answered(struct px_cluster *cl, cl_part_t *p, natsMsg *m, int64_t stored)
{
    const char *pos = natsMsg_GetData(m), *end = pos + natsMsg_GetDataLength(m);
    cl_rec_t rec;
    const char *key = rec.msgid;

    /* Its answer was stored after it; 10 s covers the stream leaders' clocks disagreeing. */
    if (!p->answered_loaded && load_answered(cl, p, stored - (int64_t)10 * 1000000000))
        return -1;
    if (cl_rec_next(&pos, end, &rec) <= 0)
        return 0;
    return bsearch(&key, p->answered, p->nanswered, sizeof *p->answered, by_id) != NULL;
}

/* Acknowledges a message, waiting for the server when sync (the last of a batch: a hand-off
 * releases the lease only after it). */
static int ack(cl_part_t *p, natsMsg *m, uint64_t seq, int sync)
{
    if ((sync ? natsMsg_AckSync(m, NULL, NULL) : natsMsg_Ack(m, NULL)) != NATS_OK) {
        px_warn("cluster: partition %u: ack of stream sequence %llu failed: %s", p->id,
                (unsigned long long)seq, nats_GetLastError(NULL));
        return -1;
    }
    if (seq > atomic_load(&p->done_seq))
        atomic_store(&p->done_seq, seq);
    return 0;
}

/* Turns a message's records into jobs. 0, or -1 when out of memory or malformed. */
static int add_jobs(cl_fbatch_t *fb, cl_fmsg_t *fm, const px_cluster_job_t *tmpl)
{
    const char *pos = natsMsg_GetData(fm->m), *end = pos + natsMsg_GetDataLength(fm->m);
    cl_rec_t rec;
    int rc;

    fm->first = fb->njobs;
    fm->n = 0;
    while ((rc = cl_rec_next(&pos, end, &rec)) > 0) {
        px_cluster_job_t *j;

        if (fb->njobs == fb->cap) {
            size_t cap = fb->cap ? fb->cap * 2 : 256;
            px_cluster_job_t *jobs = realloc(fb->jobs, cap * sizeof *jobs);
            cl_rec_t *recs;

            if (!jobs)
                return -1;
            fb->jobs = jobs;
            if (!(recs = realloc(fb->recs, cap * sizeof *recs)))
                return -1;
            fb->recs = recs;
            fb->cap = cap;
        }
        fb->recs[fb->njobs] = rec;
        j = &fb->jobs[fb->njobs];
        *j = *tmpl;
        j->data = rec.data;
        j->len = rec.len;
        fb->njobs++;
        fm->n++;
    }
    /* msgid points into recs, which may have moved: set once all are in (see run_batch). */
    return rc < 0 || fm->n == 0 ? -1 : 0;
}

/* Partition thread: turns the fetched messages into jobs. Messages the previous holder finished
 * are only acknowledged. 0 (fb->reopen set when a delivery went missing: run what came before
 * it, then restart the consumer), or 1 when an acknowledgement failed: nothing of the batch
 * runs, and a fresh consumer hands it out again. */
int cl_batch_prepare(struct px_cluster *cl, cl_part_t *p, cl_fbatch_t *fb, uint64_t *cseq)
{
    natsMsgList *list = &fb->list;

    fb->nmsgs = fb->njobs = 0;
    fb->reopen = 0;
    fb->fence = (px_cluster_fence_t){.p = p, .epoch = atomic_load(&p->epoch)};
    if (!(fb->msgs = calloc((size_t)list->Count, sizeof *fb->msgs)))
        return 1;
    for (int i = 0; i < list->Count; i++) {
        natsMsg *m = list->Msgs[i];
        jsMsgMetaData *md = NULL;
        const char *id = NULL;
        px_cluster_job_t tmpl = {.partition = p->id, .epoch = fb->fence.epoch};
        cl_fmsg_t *fm = &fb->msgs[fb->nmsgs];
        int64_t stored = 0;
        int done;

        natsMsgHeader_Get(m, "Nats-Msg-Id", &id);
        if (natsMsg_GetMetaData(&md, m) == NATS_OK) {
            uint64_t c = md->Sequence.Consumer;
            tmpl.seq = md->Sequence.Stream;
            tmpl.delivered = md->NumDelivered;
            stored = md->Timestamp;
            jsMsgMetaData_Destroy(md);
            if (*cseq && c != *cseq + 1) {
                /* A delivery was lost on the way (a connection that broke): the consumer counts
                 * it as handed out, so running what follows would skip it. Stop here and start
                 * a fresh consumer, which begins at the first unacknowledged message. */
                px_warn("cluster: partition %u: delivery %llu missing before stream sequence "
                        "%llu; restarting the consumer",
                        p->id, (unsigned long long)(*cseq + 1), (unsigned long long)tmpl.seq);
                fb->reopen = 1;
                break;
            }
            *cseq = c;
        }
        if (tmpl.seq && tmpl.seq >= p->skip_lo && tmpl.seq <= p->skip_hi) {
            /* In the last batch of the holder that handed the partition over, which it ran and
             * acknowledged; the acknowledgement was still on its way. Only acknowledge it. */
            atomic_fetch_add(&p->skipped, 1);
            if (ack(p, m, tmpl.seq, 0))
                return 1;
            continue;
        }
        if (tmpl.seq <= p->handed_out) {
            /* An earlier consumer handed it out: it may have run. If its answers are stored it
             * did, to the end: only acknowledge it (an acknowledgement a server failure lost
             * brings a finished message back, even behind later ones). */
            if ((done = answered(cl, p, m, stored)) < 0)
                return 1;
            if (done) {
                atomic_fetch_add(&p->skipped, 1);
                if (ack(p, m, tmpl.seq, 0))
                    return 1;
                continue;
            }
            tmpl.delivered++; /* a possible re-run: the handler is told */
        }
        fm->m = m;
        fm->id = id ? id : "";
        fm->answered = 0;
        fm->seq = tmpl.seq;
        if (add_jobs(fb, fm, &tmpl)) {
            /* Not written by parexd, or no memory for it: it would block the partition for
             * ever; leave it to a fresh consumer once (memory), or drop it (malformed). */
            px_warn("cluster: partition %u: stream sequence %llu is not a request message "
                    "parexd can read; acknowledging it without running it",
                    p->id, (unsigned long long)tmpl.seq);
            fb->njobs = fm->first;
            if (ack(p, m, tmpl.seq, 0))
                return 1;
            continue;
        }
        if (tmpl.delivered > 1)
            atomic_fetch_add(&p->redeliveries, fm->n);
        fb->nmsgs++;
    }
    for (size_t i = 0; i < fb->njobs; i++)
        fb->jobs[i].msgid = fb->recs[i].msgid;
    return 0;
}

/* Any thread: the runner has run or skipped every job of the batch. */
static void batch_ran(void *arg)
{
    cl_fbatch_t *fb = arg;

    pthread_mutex_lock(&fb->mu);
    fb->running = 0;
    pthread_cond_signal(&fb->cv);
    pthread_mutex_unlock(&fb->mu);
}

int cl_batch_running(cl_fbatch_t *fb)
{
    int r;

    pthread_mutex_lock(&fb->mu);
    r = fb->running;
    pthread_mutex_unlock(&fb->mu);
    return r;
}

void cl_batch_start(struct px_cluster *cl, cl_fbatch_t *fb)
{
    if (!fb->njobs || !px_cluster_fence_ok(&fb->fence))
        return; /* nothing runs: settle finds the jobs not run */
    fb->running = 1;
    cl->cbs.run(fb->jobs, fb->njobs, &fb->fence, batch_ran, fb, cl->cbs.arg);
}

/* Stores the answers, then acknowledges. 0, 1 (restart the consumer: what was not acknowledged
 * runs again, in order) or -1 (the lease was lost on the way). */
static int finish(struct px_cluster *cl, cl_part_t *p, cl_fbatch_t *fb, jsCtx *ajs,
                  _Atomic unsigned *failed)
{
    jsPubOptions po;

    for (size_t k = 0; k < fb->nmsgs; k++) {
        cl_fmsg_t *fm = &fb->msgs[k];

        for (size_t i = fm->first; i < fm->first + fm->n; i++)
            if (!fb->jobs[i].run || !px_cluster_fence_ok(&fb->fence))
                return -1; /* left unacknowledged for the next holder */
    }
    for (size_t k = 0; k < fb->nmsgs; k++)
        if (!fb->msgs[k].answered && reply_of(fb->msgs[k].m) && send_answers(ajs, p, fb, k))
            return 1;
    jsPubOptions_Init(&po);
    po.MaxWait = (int64_t)cl->o.publish_timeout_ms;
    if (fb->nmsgs && (js_PublishAsyncComplete(ajs, &po) != NATS_OK || atomic_exchange(failed, 0))) {
        px_warn("cluster: partition %u: answers of a batch were not stored; restarting the "
                "consumer to run the batch again",
                p->id);
        return 1;
    }
    if (fb->nmsgs && cl->kill_before_ack)
        raise(SIGKILL);
    if (fb->nmsgs)
        atomic_store(&p->last_lo, fb->msgs[0].seq); /* [last_lo, done_seq]: acknowledged */
    for (size_t k = 0; k < fb->nmsgs; k++) {
        if (!px_cluster_fence_ok(&fb->fence))
            return -1;
        if (ack(p, fb->msgs[k].m, fb->msgs[k].seq, k == fb->nmsgs - 1))
            return 1; /* what was not acknowledged runs again, in order */
        atomic_fetch_add(&p->runs, fb->msgs[k].n);
    }
    return fb->reopen;
}

int cl_batch_settle(struct px_cluster *cl, cl_part_t *p, cl_fbatch_t *fb, jsCtx *ajs,
                    _Atomic unsigned *failed, int answer)
{
    int rc = 0;

    pthread_mutex_lock(&fb->mu);
    while (fb->running)
        pthread_cond_wait(&fb->cv, &fb->mu);
    pthread_mutex_unlock(&fb->mu);
    if (answer)
        rc = finish(cl, p, fb, ajs, failed);
    for (size_t i = 0; i < fb->njobs; i++)
        px_buf_free(&fb->jobs[i].result);
    fb->njobs = fb->nmsgs = 0;
    free(fb->msgs);
    fb->msgs = NULL;
    natsMsgList_Destroy(&fb->list);
    memset(&fb->list, 0, sizeof fb->list);
    return rc;
}

void cl_batch_init(cl_fbatch_t *fb)
{
    memset(fb, 0, sizeof *fb);
    pthread_mutex_init(&fb->mu, NULL);
    pthread_cond_init(&fb->cv, NULL);
}

void cl_batch_free(cl_fbatch_t *fb)
{
    free(fb->jobs);
    free(fb->recs);
    px_buf_free(&fb->body);
    pthread_mutex_destroy(&fb->mu);
    pthread_cond_destroy(&fb->cv);
}
