/* parex-jsloop's set-up and tear-down: two connections (the producer's and the consumers', as a
 * client and an executing instance would have), a work-queue request stream and a results stream
 * named after the run, so runs never meet, and a durable pull consumer per partition, each with
 * the settings cluster mode gives its own (explicit acks, MaxAckPending = batch). */
#include "bench/jsloop/internal.h"

#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define NS_PER_S 1000000000ll

static void on_async_error(natsConnection *nc, natsSubscription *sub, natsStatus s, void *arg)
{
    jl_t *l = arg;

    atomic_fetch_add(&l->nats_errors, 1);
    fprintf(stderr, "parex-jsloop: NATS reports: %s\n", natsStatus_GetText(s));
}

static int connect_one(jl_t *l, natsConnection **nc, const char *name, char *err, size_t errlen)
{
    natsOptions *no = NULL;
    natsStatus s = natsOptions_Create(&no);

    if (s == NATS_OK)
        s = natsOptions_SetServers(no, l->o->servers, l->o->nservers);
    if (s == NATS_OK)
        s = natsOptions_SetName(no, name);
    if (s == NATS_OK)
        s = natsOptions_SetTimeout(no, 2000);
    if (s == NATS_OK)
        s = natsOptions_SetErrorHandler(no, on_async_error, l);
    if (s == NATS_OK)
        s = natsConnection_Connect(nc, no);
    natsOptions_Destroy(no);
    if (s != NATS_OK) {
        snprintf(err, errlen, "cannot connect to NATS (%s): %s", l->o->servers[0],
                 nats_GetLastError(NULL));
        *nc = NULL;
        return -1;
    }
    return 0;
}

static int add_stream(jl_t *l, const char *name, const char *subj, int work, char *err,
                      size_t errlen)
{
    const char *subjects[] = {subj};
    jsStreamConfig sc;
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;

    jsStreamConfig_Init(&sc);
    sc.Name = name;
    sc.Subjects = subjects;
    sc.SubjectsLen = 1;
    sc.Storage = js_FileStorage;
    sc.Replicas = l->o->replicas;
    sc.Duplicates = 120 * NS_PER_S;
    if (work) {
        sc.Retention = js_WorkQueuePolicy; /* an acknowledged request is gone */
        sc.Discard = js_DiscardNew;
    } else {
        sc.Retention = js_LimitsPolicy;
        sc.MaxAge = 300 * NS_PER_S; /* deleted at the end anyway; bounded if the run dies */
    }
    if (js_AddStream(&si, l->pjs, &sc, NULL, &jerr) != NATS_OK) {
        snprintf(err, errlen, "cannot create stream %s (R%d): %s (error %d)", name, l->o->replicas,
                 nats_GetLastError(NULL), (int)jerr);
        return -1;
    }
    jsStreamInfo_Destroy(si);
    return 0;
}

static int add_consumer(jl_t *l, jsCtx *js, jl_worker_t *w, char *err, size_t errlen)
{
    char name[32], filter[128];
    jsConsumerConfig cc;
    jsConsumerInfo *ci = NULL;
    jsSubOptions so;
    jsErrCode jerr = 0;

    snprintf(name, sizeof name, "p%u", w->id);
    snprintf(filter, sizeof filter, JL_SUBJ "%s.req.%u", l->run, w->id);
    jsConsumerConfig_Init(&cc);
    cc.Durable = name;
    cc.FilterSubject = filter;
    cc.AckPolicy = js_AckExplicit;
    cc.DeliverPolicy = js_DeliverAll;
    cc.MaxAckPending = (int64_t)l->o->batch;
    cc.Replicas = l->o->replicas;
    cc.MemoryStorage = true; /* as cluster mode's partition consumers */
    if (js_AddConsumer(&ci, js, l->req_stream, &cc, NULL, &jerr) != NATS_OK) {
        snprintf(err, errlen, "cannot create consumer %s: %s (error %d)", name,
                 nats_GetLastError(NULL), (int)jerr);
        return -1;
    }
    jsConsumerInfo_Destroy(ci);
    jsSubOptions_Init(&so);
    so.Stream = l->req_stream;
    so.Consumer = name;
    so.ManualAck = true;
    so.Config.MemoryStorage = true;
    if (js_PullSubscribe(&w->sub, js, filter, name, NULL, &so, &jerr) != NATS_OK) {
        snprintf(err, errlen, "cannot bind to consumer %s: %s", name, nats_GetLastError(NULL));
        return -1;
    }
    return 0;
}

int jl_setup(jl_t *l, natsMsgHandler on_result, jsPubAckErrHandler on_pub_failed, char *err,
             size_t errlen)
{
    struct timespec now;
    jsOptions jo;
    jsCtx *wjs = NULL;
    char subj[128];
    int rc = -1;

    clock_gettime(CLOCK_REALTIME, &now);
    snprintf(l->run, sizeof l->run, "%ld_%lld_%ld", (long)getpid(), (long long)now.tv_sec,
             now.tv_nsec);
    snprintf(l->req_stream, sizeof l->req_stream, "JSLOOP_REQ_%s", l->run);
    snprintf(l->res_stream, sizeof l->res_stream, "JSLOOP_RES_%s", l->run);
    if (connect_one(l, &l->pnc, "parex-jsloop producer", err, errlen) ||
        connect_one(l, &l->wnc, "parex-jsloop consumers", err, errlen))
        return -1;
    jsOptions_Init(&jo);
    jo.PublishAsync.MaxPending = (int64_t)l->o->in_flight;
    jo.PublishAsync.ErrHandler = on_pub_failed;
    jo.PublishAsync.ErrHandlerClosure = l;
    if (natsConnection_JetStream(&l->pjs, l->pnc, &jo) != NATS_OK ||
        natsConnection_JetStream(&wjs, l->wnc, NULL) != NATS_OK) {
        snprintf(err, errlen, "cannot use JetStream: %s", nats_GetLastError(NULL));
        goto out;
    }
    snprintf(subj, sizeof subj, JL_SUBJ "%s.req.>", l->run);
    if (add_stream(l, l->req_stream, subj, 1, err, errlen))
        goto out;
    snprintf(subj, sizeof subj, JL_SUBJ "%s.res.>", l->run);
    if (add_stream(l, l->res_stream, subj, 0, err, errlen))
        goto out;
    /* Subscribed before the first request exists, so no result can precede it. */
    if (natsConnection_Subscribe(&l->results, l->pnc, subj, on_result, l) != NATS_OK ||
        natsSubscription_SetPendingLimits(l->results, 1 << 20, 256 << 20) != NATS_OK ||
        natsConnection_Flush(l->pnc) != NATS_OK) {
        snprintf(err, errlen, "cannot subscribe to %s: %s", subj, nats_GetLastError(NULL));
        goto out;
    }
    for (unsigned i = 0; i < l->o->partitions; i++) {
        l->w[i].l = l;
        l->w[i].id = i;
        if (add_consumer(l, wjs, &l->w[i], err, errlen))
            goto out;
    }
    rc = 0;
out:
    if (wjs)
        jsCtx_Destroy(wjs);
    return rc;
}

void jl_teardown(jl_t *l)
{
    for (unsigned i = 0; l->w && i < l->o->partitions; i++)
        if (l->w[i].sub)
            natsSubscription_Destroy(l->w[i].sub);
    if (l->results)
        natsSubscription_Unsubscribe(l->results);
    if (l->pjs) {
        /* Consumers go with their stream. A stream that was never made answers "not found". */
        const char *streams[] = {l->req_stream, l->res_stream};
        for (int i = 0; i < 2; i++) {
            jsErrCode jerr = 0;
            if (js_DeleteStream(l->pjs, streams[i], NULL, &jerr) != NATS_OK &&
                jerr != JSStreamNotFoundErr)
                fprintf(stderr, "parex-jsloop: cannot delete stream %s: %s\n", streams[i],
                        nats_GetLastError(NULL));
        }
        jsCtx_Destroy(l->pjs);
    }
    if (l->wnc)
        natsConnection_Destroy(l->wnc);
    if (l->pnc)
        natsConnection_Destroy(l->pnc);
    /* Last: nats.c 3.4.1 can still be delivering to a subscription until its connection is
     * gone. */
    if (l->results)
        natsSubscription_Destroy(l->results);
}
