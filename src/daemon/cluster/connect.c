/* The cluster's connection to NATS and the JetStream objects it needs (two streams, two
 * buckets), created idempotently by whichever instance comes first. Runs on the lease thread. */
#include "daemon/cluster/internal.h"

#include "common/clock.h"
#include "common/log.h"

#include <stdio.h>
#include <string.h>

uint64_t cl_lease_margin_ns(const struct px_cluster *cl)
{
    /* Stop a little before the servers could let another instance take the lease: their clock
     * starts when our renewal arrives, ours when we sent it, so only drift needs the margin. */
    uint64_t m = cl->o.lease_ttl_ms * PX_MS / 10;
    return m < 200 * PX_MS ? 200 * PX_MS : m;
}

static void on_disconnected(natsConnection *nc, void *arg)
{
    struct px_cluster *cl = arg;

    atomic_store(&cl->connected, 0);
    atomic_fetch_add(&cl->reconnects, 1);
    px_warn("cluster: lost the connection to NATS; reconnecting");
}

static void on_reconnected(natsConnection *nc, void *arg)
{
    struct px_cluster *cl = arg;

    atomic_store(&cl->connected, 1);
    atomic_fetch_add(&cl->reconnects, 1);
    atomic_store(&cl->res_broken, 1); /* its server may be the one that went away */
    px_notice("cluster: reconnected to NATS");
}

/* nats.c's callback thread, last of all for the connection: px_cluster_stop may free cl. */
static void on_closed(natsConnection *nc, void *arg)
{
    struct px_cluster *cl = arg;

    pthread_mutex_lock(&cl->lease_mu);
    cl->nats_closed = 1;
    pthread_cond_broadcast(&cl->lease_cv);
    pthread_mutex_unlock(&cl->lease_mu);
}

static void on_async_error(natsConnection *nc, natsSubscription *sub, natsStatus err, void *arg)
{
    struct px_cluster *cl = arg;

    /* Errors come from the answers' ordered consumer (missed heartbeats, a failed reset) or
     * from internal subscriptions; following the answers again costs little either way. */
    atomic_store(&cl->res_broken, 1);
    px_warn("cluster: NATS reports: %s", natsStatus_GetText(err));
}

static int add_stream(struct px_cluster *cl, jsStreamConfig *sc, char *err, size_t errlen)
{
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;

    if (js_AddStream(&si, cl->js, sc, NULL, &jerr) == NATS_OK) {
        jsStreamInfo_Destroy(si);
        return 0;
    }
    if (jerr != JSStreamNameExistErr)
        goto fail;
    /* There with other settings: made by an earlier version (PAREX_RES held the idem answers'
     * subjects too, which PAREX_IDEM cannot then take), or by an instance configured
     * otherwise. Bring it to these settings where JetStream allows the change; else use it. */
    if (js_UpdateStream(&si, cl->js, sc, NULL, &jerr) == NATS_OK) {
        px_notice("cluster: stream %s updated to this instance's settings", sc->Name);
        jsStreamInfo_Destroy(si);
        return 0;
    }
    si = NULL;
    if (js_GetStreamInfo(&si, cl->js, sc->Name, NULL, &jerr) == NATS_OK) {
        px_warn("cluster: stream %s keeps the settings it was made with: %s", sc->Name,
                nats_GetLastError(NULL));
        jsStreamInfo_Destroy(si);
        return 0;
    }
fail:
    snprintf(err, errlen, "cannot create stream %s: %s", sc->Name, nats_GetLastError(NULL));
    return -1;
}

/* A stream of answers kept result_ttl_ms; per_subject: only the last of each subject. */
static int add_results_stream(struct px_cluster *cl, const char *name, const char **subj,
                              int per_subject, char *err, size_t errlen)
{
    jsStreamConfig sc;

    jsStreamConfig_Init(&sc);
    sc.Name = name;
    sc.Subjects = subj;
    sc.SubjectsLen = 1;
    /* JetStream refuses a duplicate window longer than MaxAge. */
    sc.Duplicates = (int64_t)120 * 1000000000;
    if (sc.Duplicates > (int64_t)cl->o.result_ttl_ms * 1000000)
        sc.Duplicates = (int64_t)cl->o.result_ttl_ms * 1000000;
    sc.Retention = js_LimitsPolicy;
    sc.Storage = js_FileStorage;
    sc.Replicas = cl->o.replicas;
    sc.MaxAge = (int64_t)cl->o.result_ttl_ms * 1000000;
    sc.MaxMsgsPerSubject = per_subject ? 1 : -1;
    sc.AllowDirect = true;
    return add_stream(cl, &sc, err, errlen);
}

static int open_bucket(struct px_cluster *cl, const char *name, kvStore **kv, char *err,
                       size_t errlen)
{
    kvConfig kc;

    kvConfig_Init(&kc);
    kc.Bucket = name;
    kc.History = 1;
    kc.TTL = (int64_t)cl->o.lease_ttl_ms * 1000000;
    kc.Replicas = cl->o.replicas;
    kc.StorageType = js_FileStorage;
    if (js_CreateKeyValue(kv, cl->ljs, &kc) == NATS_OK || js_KeyValue(kv, cl->ljs, name) == NATS_OK)
        return 0;
    snprintf(err, errlen, "cannot open bucket %s: %s", name, nats_GetLastError(NULL));
    return -1;
}

/* This instance's answers, through an ordered consumer (ephemeral, on one server) from a little
 * before the last answer seen. nats.c recreates it after a gap, but not when its server
 * dies (the heartbeats stop): then the lease thread calls this again (res_broken). */
int cl_follow_results(struct px_cluster *cl, char *err, size_t errlen)
{
    natsSubscription *sub = NULL;
    jsSubOptions so;
    jsErrCode jerr = 0;
    char subj[128];
    int64_t last = atomic_load(&cl->res_last_ts);

    jsSubOptions_Init(&so);
    so.Ordered = true;
    so.Config.Heartbeat = (int64_t)1000000000; /* a dead server is noticed in about 2 s */
    /* From a little before the last answer seen, by its store time, not its sequence: after a
     * quorum loss nats-server 2.9.10 was seen to lose stored messages and hand their
     * sequences out again, and a consumer starting after the last sequence seen then waited
     * for ever. What is seen twice is ignored (the caller drops answers it has given). */
    so.Config.DeliverPolicy = js_DeliverByStartTime;
    so.Config.OptStartTime = last ? last - (int64_t)2000000000 : cl->res_since;
    snprintf(subj, sizeof subj, CL_RES_SUBJ "%s.>", cl->instance);
    if (js_Subscribe(&sub, cl->js, subj, cl_on_result, cl, NULL, &so, &jerr) != NATS_OK) {
        snprintf(err, errlen, "cannot follow %s: %s", subj, nats_GetLastError(NULL));
        return -1;
    }
    natsSubscription_SetPendingLimits(sub, 1 << 20, 256 << 20);
    if (cl->res_sub) {
        /* Destroyed at the stop: nats.c 3.4.1 can still be delivering to it. */
        natsSubscription_Unsubscribe(cl->res_sub);
        if (cl->nold < sizeof cl->old_subs / sizeof cl->old_subs[0])
            cl->old_subs[cl->nold++] = cl->res_sub;
    }
    cl->res_sub = sub;
    return 0;
}

int cl_connect(struct px_cluster *cl, char *err, size_t errlen)
{
    natsOptions *no = NULL;
    jsOptions jo;
    jsStreamConfig sc;
    const char *req_subj[] = {CL_REQ_SUBJ ">"}, *res_subj[] = {CL_RES_SUBJ ">"},
               *idem_subj[] = {CL_IDEM_SUBJ ">"};
    natsStatus s;

    if (!cl->nc) {
        s = natsOptions_Create(&no);
        if (s == NATS_OK)
            s = natsOptions_SetServers(no, (const char **)cl->servers, cl->o.nservers);
        if (s == NATS_OK)
            s = natsOptions_SetName(no, cl->instance);
        if (s == NATS_OK)
            s = natsOptions_SetMaxReconnect(no, -1);
        if (s == NATS_OK)
            s = natsOptions_SetReconnectWait(no, 250);
        if (s == NATS_OK)
            s = natsOptions_SetTimeout(no, 2000);
        /* A dead server is noticed within about 2 s rather than the default 4 minutes. */
        if (s == NATS_OK)
            s = natsOptions_SetPingInterval(no, 1000);
        if (s == NATS_OK)
            s = natsOptions_SetMaxPingsOut(no, 2);
        if (s == NATS_OK)
            s = natsOptions_SetDisconnectedCB(no, on_disconnected, cl);
        if (s == NATS_OK)
            s = natsOptions_SetReconnectedCB(no, on_reconnected, cl);
        if (s == NATS_OK)
            s = natsOptions_SetErrorHandler(no, on_async_error, cl);
        if (s == NATS_OK)
            s = natsOptions_SetClosedCB(no, on_closed, cl);
        if (s == NATS_OK)
            s = natsConnection_Connect(&cl->nc, no);
        natsOptions_Destroy(no);
        if (s != NATS_OK) {
            snprintf(err, errlen, "cannot connect to NATS (%s): %s", cl->servers[0],
                     nats_GetLastError(NULL));
            cl->nc = NULL;
            return -1;
        }
        atomic_store(&cl->connected, 1);
        cl->max_payload = natsConnection_GetMaxPayload(cl->nc);
        jsOptions_Init(&jo);
        jo.Wait = (int64_t)cl->o.publish_timeout_ms;
        if (natsConnection_JetStream(&cl->js, cl->nc, &jo) != NATS_OK) {
            snprintf(err, errlen, "cannot use JetStream: %s", nats_GetLastError(NULL));
            return -1;
        }
        /* Lease requests answer within a third of the lease or count as failed: a renewal that
         * took longer would be useless anyway. */
        jo.Wait = (int64_t)(cl->o.lease_ttl_ms / 3);
        if (natsConnection_JetStream(&cl->ljs, cl->nc, &jo) != NATS_OK) {
            snprintf(err, errlen, "cannot use JetStream: %s", nats_GetLastError(NULL));
            return -1;
        }
    }
    jsStreamConfig_Init(&sc);
    sc.Name = CL_REQ_STREAM;
    sc.Subjects = req_subj;
    sc.SubjectsLen = 1;
    /* Work queue: an acknowledged request is gone. No MaxAge and no discard-old: either would
     * drop pending work silently. The total bound (discard new) backs the per-partition one. */
    sc.Retention = js_WorkQueuePolicy;
    sc.Storage = js_FileStorage;
    sc.Replicas = cl->o.replicas;
    sc.Discard = js_DiscardNew;
    sc.MaxMsgs = (int64_t)(cl->o.max_backlog * cl->o.partitions * 2);
    sc.Duplicates = (int64_t)120 * 1000000000;
    if (add_stream(cl, &sc, err, errlen))
        return -1;
    /* Answers, on few subjects (instance and partition): a subject per message made
     * nats-server 2.9 slower with every one retained (echo fell by a fifth within a minute). */
    if (add_results_stream(cl, CL_RES_STREAM, res_subj, 0, err, errlen))
        return -1;
    /* Idem requests' answers, one retained per idem. */
    if (add_results_stream(cl, CL_IDEM_STREAM, idem_subj, 1, err, errlen))
        return -1;
    if (!cl->res_sub && cl_follow_results(cl, err, errlen))
        return -1;
    if (!cl->leases && open_bucket(cl, CL_LEASES, &cl->leases, err, errlen))
        return -1;
    if (!cl->members && open_bucket(cl, CL_MEMBERS, &cl->members, err, errlen))
        return -1;
    return 0;
}
