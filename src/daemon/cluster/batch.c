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
             * brings a finished message back, even behind later ones). Once one of them runs
             * again, so does every later one: answers can be stored out of order (a holder
             * paused with some in its connection's buffer and others in the kernel's loses the
             * latter when the server drops it), and skipping a later answered one would run
             * its key's requests out of order. */
            done = p->rerunning ? 0 : cl_answered(cl, p, m, stored);
            if (done < 0)
                return 1;
            if (!done)
                p->rerunning = 1;
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
        if (!fb->msgs[k].answered && cl_reply_of(fb->msgs[k].m) && cl_send_answers(ajs, p, fb, k))
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
