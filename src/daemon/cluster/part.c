/* One thread per partition this instance holds: fetch a batch from the partition's consumer, run
 * it, send each answer to the instance that accepted the request, acknowledge.
 *
 * The consumer is created fresh for every lease, named after the lease's epoch, after deleting
 * whatever consumer an earlier holder left: JetStream matches acks by stream sequence only, so
 * a fresh consumer is what makes a previous holder's late acks and fetches fail, and it starts at
 * the first unacknowledged message, in stream order. With that, per-key order survives a
 * take-over: a re-run repeats a suffix of the partition in order. The fence (the local lease
 * deadline) is checked before a batch runs, before each job (by the runner), and before
 * answering and acknowledging, so an instance that lost its lease while paused neither runs nor
 * acknowledges anything once it resumes. */
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

/* Deletes the consumers an earlier holder of the partition left (named "p<id>-e<epoch>"). */
static void delete_old_consumers(struct px_cluster *cl, cl_part_t *p, const char *keep)
{
    jsConsumerNamesList *names = NULL;
    jsErrCode jerr = 0;
    char prefix[32];
    size_t plen = (size_t)snprintf(prefix, sizeof prefix, "p%u-", p->id);

    if (js_ConsumerNames(&names, cl->js, CL_REQ_STREAM, NULL, &jerr) != NATS_OK)
        return; /* none yet, or the create below will say what is wrong */
    for (int i = 0; i < names->Count; i++) {
        const char *n = names->List[i];
        if (strncmp(n, prefix, plen) == 0 && strcmp(n, keep) != 0) {
            if (js_DeleteConsumer(cl->js, CL_REQ_STREAM, n, NULL, &jerr) == NATS_OK)
                px_info("cluster: partition %u: deleted the previous holder's consumer %s", p->id,
                        n);
        }
    }
    jsConsumerNamesList_Destroy(names);
}

static natsSubscription *open_consumer(struct px_cluster *cl, cl_part_t *p, char *name,
                                       size_t namelen)
{
    jsConsumerConfig cc;
    jsSubOptions so;
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    natsSubscription *sub = NULL;
    char filter[64];

    snprintf(name, namelen, "p%u-e%llu", p->id, (unsigned long long)atomic_load(&p->epoch));
    snprintf(filter, sizeof filter, CL_REQ_SUBJ "%u", p->id);
    delete_old_consumers(cl, p, name);
    jsConsumerConfig_Init(&cc);
    cc.Durable = name;
    cc.FilterSubject = filter;
    cc.AckPolicy = js_AckExplicit;
    cc.DeliverPolicy = js_DeliverAll;
    /* Redelivery to the same holder is never wanted (it would run a message again behind later
     * ones); a holder that dies is replaced by a fresh consumer. So AckWait is long. */
    cc.AckWait = (int64_t)600 * 1000000000;
    cc.MaxAckPending = cl->o.batch;
    cc.Replicas = cl->o.replicas;
    if (js_AddConsumer(&ci, cl->js, CL_REQ_STREAM, &cc, NULL, &jerr) != NATS_OK) {
        px_warn("cluster: partition %u: cannot create consumer %s: %s (error %d)", p->id, name,
                nats_GetLastError(NULL), (int)jerr);
        return NULL;
    }
    jsConsumerInfo_Destroy(ci);
    jsSubOptions_Init(&so);
    so.Stream = CL_REQ_STREAM;
    so.Consumer = name;
    so.ManualAck = true;
    if (js_PullSubscribe(&sub, cl->js, filter, name, NULL, &so, &jerr) != NATS_OK) {
        px_warn("cluster: partition %u: cannot bind to consumer %s: %s", p->id, name,
                nats_GetLastError(NULL));
        return NULL;
    }
    return sub;
}

/* Sends a job's answer to the instance that accepted it, as a core message (the ingress waits
 * for it on its connection; no one else would read it). */
static void send_answer(struct px_cluster *cl, natsMsg *req, px_cluster_job_t *j)
{
    const char *reply = NULL;
    char subj[128];
    natsMsg *m = NULL;

    if (natsMsgHeader_Get(req, CL_HDR_REPLY, &reply) != NATS_OK || !reply)
        return;
    snprintf(subj, sizeof subj, CL_RES_SUBJ "%s", reply);
    if (natsMsg_Create(&m, subj, NULL, j->result.data, (int)j->result.len) == NATS_OK &&
        natsMsgHeader_Set(m, CL_HDR_ID, j->msgid) == NATS_OK)
        natsConnection_PublishMsg(cl->nc, m);
    natsMsg_Destroy(m);
    if (strncmp(j->msgid, "i.", 2) == 0) {
        /* idem requests: also kept in the results stream for {"control":"result"}. */
        char hex[420];
        cl_hex(hex, j->msgid, sizeof hex);
        snprintf(subj, sizeof subj, CL_IDEM_SUBJ "%.100s", hex);
        m = NULL;
        if (natsMsg_Create(&m, subj, NULL, j->result.data, (int)j->result.len) == NATS_OK &&
            natsMsgHeader_Set(m, CL_HDR_ID, j->msgid) == NATS_OK)
            js_PublishMsg(NULL, cl->js, m, NULL, NULL);
        natsMsg_Destroy(m);
    }
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

/* Runs one fetched batch; returns 0, or -1 when the lease was lost on the way. */
static int run_batch(struct px_cluster *cl, cl_part_t *p, natsMsgList *list)
{
    px_cluster_fence_t fence = {.p = p, .epoch = atomic_load(&p->epoch)};
    px_cluster_job_t *jobs = calloc((size_t)list->Count, sizeof *jobs);
    natsMsg **msgs = calloc((size_t)list->Count, sizeof *msgs);
    int n = 0, rc = 0;

    if (!jobs || !msgs) {
        free(jobs);
        free(msgs);
        return -1;
    }
    for (int i = 0; i < list->Count; i++) {
        natsMsg *m = list->Msgs[i];
        jsMsgMetaData *md = NULL;
        const char *id = NULL;
        px_cluster_job_t *j = &jobs[n];

        natsMsgHeader_Get(m, "Nats-Msg-Id", &id);
        if (natsMsg_GetMetaData(&md, m) == NATS_OK) {
            j->seq = md->Sequence.Stream;
            j->delivered = md->NumDelivered;
            jsMsgMetaData_Destroy(md);
        }
        if (j->seq && j->seq <= p->floor) {
            /* Finished by the holder that handed the partition over: only acknowledge it. */
            atomic_fetch_add(&p->skipped, 1);
            if (ack(p, m, j->seq, 0))
                goto lost;
            continue;
        }
        j->partition = p->id;
        j->epoch = fence.epoch;
        j->msgid = id ? id : "";
        j->data = natsMsg_GetData(m);
        j->len = (size_t)natsMsg_GetDataLength(m);
        if (j->delivered > 1)
            atomic_fetch_add(&p->redeliveries, 1);
        msgs[n++] = m;
    }
    if (n && px_cluster_fence_ok(&fence))
        cl->cbs.run(jobs, (size_t)n, &fence, cl->cbs.arg);
    for (int i = 0; i < n; i++) {
        if (!jobs[i].run || !px_cluster_fence_ok(&fence))
            goto lost; /* left unacknowledged for the next holder */
        send_answer(cl, msgs[i], &jobs[i]);
        if (ack(p, msgs[i], jobs[i].seq, i == n - 1))
            goto lost;
        atomic_fetch_add(&p->runs, 1);
    }
out:
    for (int i = 0; i < list->Count; i++)
        px_buf_free(&jobs[i].result);
    free(jobs);
    free(msgs);
    return rc;
lost:
    rc = -1;
    goto out;
}

void *cl_part_main(void *arg)
{
    cl_part_t *p = arg;
    struct px_cluster *cl = p->cl;
    natsSubscription *sub;
    char name[64], tname[16];
    sigset_t all;

    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    snprintf(tname, sizeof tname, "px-cl-p%u", p->id);
    pthread_setname_np(pthread_self(), tname);
    if (!(sub = open_consumer(cl, p, name, sizeof name))) {
        atomic_store(&p->lost, 1);
        goto out;
    }
    px_notice("cluster: partition %u held with epoch %llu (consumer %s)", p->id,
              (unsigned long long)atomic_load(&p->epoch), name);
    while (!atomic_load(&p->stop) && !atomic_load(&cl->stopping)) {
        natsMsgList list = {0};
        px_cluster_fence_t fence = {.p = p, .epoch = atomic_load(&p->epoch)};
        natsStatus s;

        if (!px_cluster_fence_ok(&fence)) {
            px_warn("cluster: partition %u: lease lost (epoch %llu); stopping without running or "
                    "acknowledging anything more",
                    p->id, (unsigned long long)fence.epoch);
            atomic_store(&p->lost, 1);
            break;
        }
        s = natsSubscription_Fetch(&list, sub, (int)cl->o.batch, 250, NULL);
        if (s == NATS_TIMEOUT)
            continue;
        if (s != NATS_OK) {
            if (s == NATS_NOT_FOUND || strstr(nats_GetLastError(NULL), "consumer")) {
                px_warn("cluster: partition %u: consumer %s is gone (%s); giving the "
                        "partition up",
                        p->id, name, nats_GetLastError(NULL));
                atomic_store(&p->lost, 1);
                break;
            }
            struct timespec ts = {0, 100 * 1000000}; /* not connected: retry shortly */
            nanosleep(&ts, NULL);
            continue;
        }
        if (run_batch(cl, p, &list)) {
            natsMsgList_Destroy(&list);
            atomic_store(&p->lost, 1);
            break;
        }
        natsMsgList_Destroy(&list);
    }
    /* A graceful stop deletes the consumer: everything it handed out was acknowledged. */
    if (!atomic_load(&p->lost)) {
        jsErrCode jerr = 0;
        js_DeleteConsumer(cl->js, CL_REQ_STREAM, name, NULL, &jerr);
    }
    natsSubscription_Destroy(sub);
out:
    atomic_store(&p->exited, 1);
    pthread_mutex_lock(&cl->lease_mu);
    pthread_cond_signal(&cl->lease_cv);
    pthread_mutex_unlock(&cl->lease_mu);
    return NULL;
}
