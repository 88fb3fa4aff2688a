/* One thread per partition this instance holds: fetch a batch from the partition's consumer and
 * run it (batch.c: run, store the answers for the instances that accepted the requests,
 * acknowledge).
 *
 * The consumer is created fresh for every lease, named after the lease's epoch, after deleting
 * whatever consumer an earlier holder left: JetStream matches acks by stream sequence only, so
 * a fresh consumer is what makes a previous holder's late acks and fetches fail, and it starts at
 * the first unacknowledged message, in stream order. With that, per-key order survives a
 * take-over: a re-run repeats a suffix of the partition in order. */
#include "daemon/cluster/internal.h"

#include "common/clock.h"
#include "common/log.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
            jsConsumerInfo *ci = NULL;
            /* What it handed out may have run: those are re-runs here (delivery counts them). */
            if (js_GetConsumerInfo(&ci, cl->js, CL_REQ_STREAM, n, NULL, &jerr) == NATS_OK) {
                if (ci->Delivered.Stream > p->handed_out)
                    p->handed_out = ci->Delivered.Stream;
                jsConsumerInfo_Destroy(ci);
            }
            if (js_DeleteConsumer(cl->js, CL_REQ_STREAM, n, NULL, &jerr) == NATS_OK)
                px_info("cluster: partition %u: deleted the previous holder's consumer %s", p->id,
                        n);
        }
    }
    jsConsumerNamesList_Destroy(names);
}

static natsSubscription *open_consumer(struct px_cluster *cl, cl_part_t *p, unsigned attempt,
                                       char *name, size_t namelen)
{
    jsConsumerConfig cc;
    jsSubOptions so;
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    natsSubscription *sub = NULL;
    natsStatus s;
    char filter[64];

    snprintf(name, namelen, "p%u-e%llu-%u", p->id, (unsigned long long)atomic_load(&p->epoch),
             attempt);
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
    cc.MaxAckPending = (int)cl->o.batch * 2; /* two batches at a time (cl_part_main) */
    cc.Replicas = cl->o.replicas;
    cc.MemoryStorage = true;
    if ((s = js_AddConsumer(&ci, cl->js, CL_REQ_STREAM, &cc, NULL, &jerr)) == NATS_TIMEOUT &&
        js_GetConsumerInfo(&ci, cl->js, CL_REQ_STREAM, name, NULL, &jerr) == NATS_OK)
        s = NATS_OK; /* created after all, only slowly (a busy meta leader): use it */
    if (s != NATS_OK) {
        px_warn("cluster: partition %u: cannot create consumer %s: %s (%s, error %d); trying "
                "again while the lease holds",
                p->id, name, natsStatus_GetText(s), nats_GetLastError(NULL), (int)jerr);
        return NULL;
    }
    jsConsumerInfo_Destroy(ci);
    jsSubOptions_Init(&so);
    so.Stream = CL_REQ_STREAM;
    so.Consumer = name;
    so.ManualAck = true;
    so.Config.MemoryStorage = true;
    if (js_PullSubscribe(&sub, cl->js, filter, name, NULL, &so, &jerr) != NATS_OK) {
        px_warn("cluster: partition %u: cannot bind to consumer %s: %s", p->id, name,
                nats_GetLastError(NULL));
        return NULL;
    }
    return sub;
}

/* nats.c's thread: an answer was not stored; the batch is then not acknowledged. The first of
 * a batch says why. */
static void on_answer_failed(jsCtx *js, jsPubAckErr *pae, void *closure)
{
    if (atomic_fetch_add((_Atomic unsigned *)closure, 1) == 0)
        px_warn("cluster: an answer was not stored on %s: %s (%s, error %d)",
                natsMsg_GetSubject(pae->Msg), natsStatus_GetText(pae->Err),
                pae->ErrText ? pae->ErrText : "", (int)pae->ErrCode);
}

/* How long a fetch waits for a message: an idle partition's, and the first one ahead while a
 * batch runs (doubling while it still runs, up to the idle wait). */
#define CL_FETCH_WAIT_MS 250
#define CL_AHEAD_WAIT_MS 25

/* Up to batch, waiting at most wait_ms for the first message; or else, unless now_only, the
 * first message to come within 250 ms. nats-server 2.9.10 answers a no-wait request that has an
 * expiry as soon as it has handed out what the consumer holds, and holds it until the first
 * message or the expiry when it holds nothing. Without an expiry nats.c gives up before the
 * server's answer comes (a test run then saw a request handed out twice), and nats.c sends the
 * server an expiry 10 ms under its own from 20 ms on, which keeps the server's answer first:
 * so no wait is shorter than 25 ms (nats.c counts the expiry it sends from the time the fetch
 * began, in whole ms: one that ticks by must not take it under 20). */
static natsStatus fetch(natsMsgList *list, natsSubscription *sub, int batch, int64_t wait_ms,
                        int now_only)
{
    jsFetchRequest fr;
    natsStatus s;

    jsFetchRequest_Init(&fr);
    fr.Batch = batch;
    fr.NoWait = true;
    fr.Expires = wait_ms * 1000000;
    s = natsSubscription_FetchRequest(list, sub, &fr);
    if ((s != NATS_NOT_FOUND && s != NATS_TIMEOUT) || now_only)
        return s == NATS_NOT_FOUND ? NATS_TIMEOUT : s;
    jsFetchRequest_Init(&fr);
    fr.Batch = 1;
    fr.Expires = (int64_t)CL_FETCH_WAIT_MS * 1000000;
    s = natsSubscription_FetchRequest(list, sub, &fr);
    return s == NATS_NOT_FOUND ? NATS_TIMEOUT : s;
}

/* Partition thread: waits ms in steps of 100 ms while the partition is still this thread's
 * (no stop, lease held). 1 if it still is at the end, 0 as soon as it is not. */
static int wait_while_held(cl_part_t *p, unsigned ms)
{
    px_cluster_fence_t f = {.p = p, .epoch = atomic_load(&p->epoch)};

    for (unsigned waited = 0;; waited += 100) {
        struct timespec ts = {0, 100 * 1000000};

        if (atomic_load(&p->stop) || atomic_load(&p->cl->stopping) || !px_cluster_fence_ok(&f))
            return 0;
        if (waited >= ms)
            return 1;
        nanosleep(&ts, NULL);
    }
}

void *cl_part_main(void *arg)
{
    cl_part_t *p = arg;
    struct px_cluster *cl = p->cl;
    natsSubscription *sub = NULL;
    char name[64], tname[16];
    unsigned attempt = 0;
    uint64_t seen, cseq, active, opened_at = 0;
    unsigned errors = 0, backoff_ms = 0;
    int64_t ahead_ms = CL_AHEAD_WAIT_MS;
    _Atomic unsigned failed = 0;
    cl_fbatch_t fbs[2], *cur = NULL;
    jsCtx *ajs = NULL;
    jsOptions jo;
    sigset_t all;

    cl_batch_init(&fbs[0]);
    cl_batch_init(&fbs[1]);
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    snprintf(tname, sizeof tname, "px-cl-p%u", p->id);
    pthread_setname_np(pthread_self(), tname);
    jsOptions_Init(&jo);
    jo.Wait = (int64_t)cl->o.publish_timeout_ms;
    jo.PublishAsync.MaxPending = (int64_t)cl->o.batch * 2;
    jo.PublishAsync.ErrHandler = on_answer_failed;
    jo.PublishAsync.ErrHandlerClosure = (void *)&failed;
    if (natsConnection_JetStream(&ajs, cl->nc, &jo) != NATS_OK) {
        px_warn("cluster: partition %u: %s", p->id, nats_GetLastError(NULL));
        atomic_store(&p->lost, 1);
        goto out;
    }
reopen:
    atomic_store(&p->serving, 0);
    cl_answers_forget(p);
    if (sub) {
        natsSubscription_Destroy(sub);
        sub = NULL;
    }
    /* A consumer that must be restarted within a second of its start (its answers could not be
     * stored: one run saw the answers' stream answer "no responders" for seconds after a
     * nats-server restart) is restarted after a wait, 100 ms doubling to 2 s: each restart
     * runs the batch again and costs the recovering servers a consumer. */
    if (opened_at && px_now_ns() - opened_at < 1000 * PX_MS) {
        backoff_ms = backoff_ms ? (backoff_ms < 1000 ? backoff_ms * 2 : 2000) : 100;
        wait_while_held(p, backoff_ms); /* a stop or a lost lease is seen by the loop below */
    } else {
        backoff_ms = 0;
    }
    seen = atomic_load(&cl->reconnects);
    cseq = 0;
    active = px_now_ns();
    /* Creating an R3 consumer can time out under load: try again while the lease holds (a
     * partition given up waits a whole lease before anyone takes it). */
    /* The same name on every try: creating a consumer that exists with the same configuration
     * succeeds, so a try that timed out but went through is not made twice. */
    while (!(sub = open_consumer(cl, p, attempt, name, sizeof name))) {
        if (!wait_while_held(p, 200)) {
            atomic_store(&p->lost, 1);
            goto out;
        }
    }
    attempt++; /* a restart after this one needs a fresh consumer */
    opened_at = px_now_ns();
    atomic_store(&p->serving, 1);
    px_notice("cluster: partition %u held with epoch %llu (consumer %s)", p->id,
              (unsigned long long)atomic_load(&p->epoch), name);
    /* Two batches at a time: while one runs on the workers, the previous one's answers are
     * stored and acknowledged and the next one is fetched, so the workers do not wait for NATS.
     * The runner starts a batch's jobs after the previous batch's, which keeps per-key order. */
    for (;;) {
        px_cluster_fence_t fence = {.p = p, .epoch = atomic_load(&p->epoch)};
        cl_fbatch_t *nb = cur ? (cur == &fbs[0] ? &fbs[1] : &fbs[0]) : &fbs[0];
        natsStatus s;
        int rc;

        if (atomic_load(&p->stop) || atomic_load(&cl->stopping)) {
            rc = cur ? cl_batch_settle(cl, p, cur, ajs, &failed, 1) : 0;
            cur = NULL;
            if (rc < 0)
                atomic_store(&p->lost, 1);
            break;
        }
        if (!px_cluster_fence_ok(&fence)) {
            px_warn("cluster: partition %u: lease lost (epoch %llu); stopping without running or "
                    "acknowledging anything more",
                    p->id, (unsigned long long)fence.epoch);
            atomic_store(&p->lost, 1);
            break;
        }
        if (atomic_load(&cl->reconnects) != seen) {
            /* Deliveries in flight on the old connection are lost, and the consumer counts them
             * as handed out: only a fresh consumer hands them out again (in order). */
            px_info("cluster: partition %u: reconnected to NATS; restarting the consumer", p->id);
            rc = cur ? cl_batch_settle(cl, p, cur, ajs, &failed, 1) : 0;
            cur = NULL;
            if (rc < 0) {
                atomic_store(&p->lost, 1);
                break;
            }
            goto reopen;
        }
        /* The next batch is fetched ahead only while the current one still runs: once it has
         * run (quick handlers), storing its answers gives the partition time to gather more,
         * and each fetched batch costs RAFT rounds of the partition's consumer (deliveries
         * and acknowledgements that arrive together are replicated together). A fetch ahead
         * that finds nothing holds the current batch's answers back until it expires, so it
         * starts short and doubles while the batch still runs: the answers of a batch that
         * ran for t wait at most about t more (25 ms at the least) for one that found none. */
        s = cur && !cl_batch_running(cur) ? NATS_TIMEOUT
                                          : fetch(&nb->list, sub, (int)cl->o.batch,
                                                  cur ? ahead_ms : CL_FETCH_WAIT_MS, cur != NULL);
        if (s == NATS_OK) {
            active = px_now_ns();
            errors = 0;
            if (cl_batch_prepare(cl, p, nb, &cseq)) {
                cl_batch_settle(cl, p, nb, ajs, &failed, 0);
                rc = cur ? cl_batch_settle(cl, p, cur, ajs, &failed, 1) : 0;
                cur = NULL;
                if (rc < 0) {
                    atomic_store(&p->lost, 1);
                    break;
                }
                goto reopen;
            }
            cl_batch_start(cl, nb);
        } else {
            nb = NULL;
            if (s != NATS_TIMEOUT) {
                if (strcasestr(nats_GetLastError(NULL), "consumer")) {
                    px_warn("cluster: partition %u: consumer %s is gone (%s); giving the "
                            "partition up",
                            p->id, name, nats_GetLastError(NULL));
                    if (cur)
                        cl_batch_settle(cl, p, cur, ajs, &failed, 0);
                    cur = NULL;
                    atomic_store(&p->lost, 1);
                    break;
                }
                if (!errors++)
                    px_warn("cluster: partition %u: fetch failed: %s (status %d); retrying", p->id,
                            nats_GetLastError(NULL), (int)s);
                if (!cur) {
                    struct timespec ts = {0, 100 * 1000000}; /* not connected: retry shortly */
                    nanosleep(&ts, NULL);
                }
            } else if (cur && ahead_ms < CL_FETCH_WAIT_MS && cl_batch_running(cur)) {
                /* Nothing yet and the batch still runs: look again, longer. */
                ahead_ms = ahead_ms * 2 < CL_FETCH_WAIT_MS ? ahead_ms * 2 : CL_FETCH_WAIT_MS;
                continue;
            } else if (!cur && atomic_load(&p->backlog) > 0 &&
                       px_now_ns() - active > cl->o.lease_ttl_ms * PX_MS / 2 + 1000 * PX_MS) {
                /* Nothing to fetch while the stream holds requests of this partition: the
                 * consumer has passed them (a server that lost track of them while
                 * recovering). A fresh consumer starts at the first one. */
                px_warn("cluster: partition %u: %llu requests stored but none delivered; "
                        "restarting the consumer",
                        p->id, (unsigned long long)atomic_load(&p->backlog));
                goto reopen;
            }
        }
        if (cur) {
            rc = cl_batch_settle(cl, p, cur, ajs, &failed, 1);
            cur = NULL;
            if (rc) {
                /* What the next batch ran stays unacknowledged: the fresh consumer hands it
                 * out again, after what this one did not finish. */
                if (nb)
                    cl_batch_settle(cl, p, nb, ajs, &failed, 0);
                if (rc < 0) {
                    atomic_store(&p->lost, 1);
                    break;
                }
                goto reopen;
            }
        }
        cur = nb;
        ahead_ms = CL_AHEAD_WAIT_MS;
        if (cur && cur->reopen) {
            rc = cl_batch_settle(cl, p, cur, ajs, &failed, 1);
            cur = NULL;
            if (rc < 0) {
                atomic_store(&p->lost, 1);
                break;
            }
            goto reopen;
        }
    }
    /* A batch left by a lost lease: wait for its run (the runner skips its jobs: they point
     * into it), answer and acknowledge nothing. */
    if (cur)
        cl_batch_settle(cl, p, cur, ajs, &failed, 0);
    /* A graceful stop deletes the consumer: everything it handed out was acknowledged. */
    if (!atomic_load(&p->lost)) {
        jsErrCode jerr = 0;
        js_DeleteConsumer(cl->js, CL_REQ_STREAM, name, NULL, &jerr);
    }
out:
    if (sub)
        natsSubscription_Destroy(sub);
    if (ajs)
        jsCtx_Destroy(ajs);
    cl_batch_free(&fbs[0]);
    cl_batch_free(&fbs[1]);
    cl_answers_forget(p);
    atomic_store(&p->serving, 0);
    atomic_store(&p->exited, 1);
    pthread_mutex_lock(&cl->lease_mu);
    pthread_cond_signal(&cl->lease_cv);
    pthread_mutex_unlock(&cl->lease_mu);
    return NULL;
}
