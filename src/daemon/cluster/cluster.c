/* The cluster's lifecycle: options, the NATS connection and the JetStream objects it needs
 * (created idempotently by whichever instance comes first), the loop's side of the hand-back
 * lists, and the report for /stats. */
#include "daemon/cluster/internal.h"

#include "common/clock.h"
#include "common/log.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void px_cluster_opts_defaults(px_cluster_opts_t *o)
{
    memset(o, 0, sizeof *o);
    o->partitions = 64;
    o->lease_ttl_ms = 10000;
    o->max_backlog = 100000;
    o->replicas = 3;
    o->publish_timeout_ms = 5000;
    o->batch = 64;
    o->publishers = 4;
    o->result_ttl_ms = 600000;
    o->executor = 1;
}

uint64_t cl_lease_margin_ns(const struct px_cluster *cl)
{
    /* Stop a little before the servers could let another instance take the lease: their clock
     * starts when our renewal arrives, ours when we sent it, so only drift needs the margin. */
    uint64_t m = cl->o.lease_ttl_ms * PX_MS / 10;
    return m < 200 * PX_MS ? 200 * PX_MS : m;
}

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
    px_notice("cluster: reconnected to NATS");
}

static void on_async_error(natsConnection *nc, natsSubscription *sub, natsStatus err, void *arg)
{
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
    if (jerr == JSStreamNameExistErr &&
        js_GetStreamInfo(&si, cl->js, sc->Name, NULL, &jerr) == NATS_OK) {
        /* Made by another instance, or by an earlier version of this configuration. */
        jsStreamInfo_Destroy(si);
        return 0;
    }
    snprintf(err, errlen, "cannot create stream %s: %s", sc->Name, nats_GetLastError(NULL));
    return -1;
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

/* Lease thread: connects and makes sure the streams and buckets exist. 0 or -1 with err. */
int cl_connect(struct px_cluster *cl, char *err, size_t errlen);
int cl_connect(struct px_cluster *cl, char *err, size_t errlen)
{
    natsOptions *no = NULL;
    jsOptions jo;
    jsStreamConfig sc;
    const char *req_subj[] = {CL_REQ_SUBJ ">"}, *res_subj[] = {CL_RES_SUBJ ">", CL_IDEM_SUBJ ">"};
    char rsubj[128];
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
    jsStreamConfig_Init(&sc);
    sc.Name = CL_RES_STREAM;
    sc.Subjects = res_subj;
    sc.SubjectsLen = 2;
    sc.Duplicates = (int64_t)120 * 1000000000;
    sc.Retention = js_LimitsPolicy;
    sc.Storage = js_FileStorage;
    sc.Replicas = cl->o.replicas;
    sc.MaxAge = (int64_t)cl->o.result_ttl_ms * 1000000;
    sc.MaxMsgsPerSubject = 1;
    sc.AllowDirect = true;
    if (add_stream(cl, &sc, err, errlen))
        return -1;
    if (!cl->res_sub) {
        /* This instance's answers, through an ordered consumer: nats.c recreates it from the
         * last sequence seen after a gap or a server failure, so no stored answer is missed. */
        jsSubOptions so;
        jsErrCode jerr = 0;

        jsSubOptions_Init(&so);
        so.Ordered = true;
        so.Config.DeliverPolicy = js_DeliverNew;
        snprintf(rsubj, sizeof rsubj, CL_RES_SUBJ "%s.>", cl->instance);
        if (js_Subscribe(&cl->res_sub, cl->js, rsubj, cl_on_result, cl, NULL, &so, &jerr) !=
            NATS_OK) {
            snprintf(err, errlen, "cannot follow %s: %s", rsubj, nats_GetLastError(NULL));
            cl->res_sub = NULL;
            return -1;
        }
        natsSubscription_SetPendingLimits(cl->res_sub, 1 << 20, 256 << 20);
    }
    if (!cl->leases && open_bucket(cl, CL_LEASES, &cl->leases, err, errlen))
        return -1;
    if (!cl->members && open_bucket(cl, CL_MEMBERS, &cl->members, err, errlen))
        return -1;
    return 0;
}

/* Loop thread: everything the other threads handed back since the last wake-up. */
static void on_async(uv_async_t *a)
{
    struct px_cluster *cl = a->data;
    cl_pub_t *done;
    cl_res_t *res;
    int released;

    pthread_mutex_lock(&cl->done_mu);
    done = cl->done;
    res = cl->results;
    cl->done = cl->done_tail = NULL;
    cl->results = cl->results_tail = NULL;
    released = cl->release_done;
    cl->release_done = 0;
    pthread_mutex_unlock(&cl->done_mu);
    while (done) {
        cl_pub_t *p = done;
        done = p->next;
        if (p->st == PX_CL_ACCEPTED) {
            atomic_fetch_add(&cl->accepted, 1);
        } else {
            atomic_fetch_add(&cl->refused, 1);
            /* The loop has seen this refusal: what is submitted from now on is decided anew. */
            if (cl->gen[p->partition] == p->gen)
                cl->gen[p->partition]++;
        }
        cl->cbs.accepted(p->cookie, p->st, p->why, cl->cbs.arg);
        free(p);
    }
    while (res) {
        cl_res_t *r = res;
        res = r->next;
        cl->cbs.result(r->msgid, r->line, r->len, cl->cbs.arg);
        free(r);
    }
    if (released && cl->release_cb)
        cl->release_cb(cl->release_arg);
}

static int valid_instance(const char *s)
{
    size_t n = strlen(s);

    if (n < 1 || n > 64)
        return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '-' || *s == '_'))
            return 0;
    return 1;
}

int px_cluster_start(px_cluster_t **out, uv_loop_t *loop, const px_cluster_opts_t *o,
                     const px_cluster_cbs_t *cbs, char *err, size_t errlen)
{
    struct px_cluster *cl = calloc(1, sizeof *cl);
    int rc;

    *out = NULL;
    if (!cl) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    cl->o = *o;
    cl->cbs = *cbs;
    cl->loop = loop;
    if (!valid_instance(o->instance)) {
        snprintf(err, errlen, "instance name '%.80s' must be 1 to 64 of [A-Za-z0-9_-]",
                 o->instance);
        goto fail;
    }
    snprintf(cl->instance, sizeof cl->instance, "%s", o->instance);
    cl->o.instance = cl->instance;
    for (int i = 0; i < o->nservers; i++)
        if (!(cl->servers[i] = strdup(o->servers[i]))) {
            snprintf(err, errlen, "out of memory");
            goto fail;
        }
    cl->parts = calloc(o->partitions, sizeof *cl->parts);
    cl->gen = calloc(o->partitions, sizeof *cl->gen);
    cl->refused_gen = calloc(o->partitions, sizeof *cl->refused_gen);
    if (!cl->parts || !cl->gen || !cl->refused_gen) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    for (uint32_t i = 0; i < o->partitions; i++) {
        cl->parts[i].id = i;
        cl->parts[i].cl = cl;
        cl->gen[i] = 1; /* refused_gen starts at 0: nothing refused */
    }
    pthread_mutex_init(&cl->done_mu, NULL);
    pthread_mutex_init(&cl->lease_mu, NULL);
    pthread_cond_init(&cl->lease_cv, NULL);
    uv_async_init(loop, &cl->async, on_async);
    cl->async.data = cl;
    if (cl_ingress_start(cl, err, errlen))
        goto fail_threads;
    if ((rc = pthread_create(&cl->lease_th, NULL, cl_lease_main, cl))) {
        snprintf(err, errlen, "cannot start the lease thread: %s", strerror(rc));
        goto fail_threads;
    }
    *out = cl;
    return 0;

fail_threads:
    atomic_store(&cl->stopping, 1);
    cl_ingress_stop(cl);
    uv_close((uv_handle_t *)&cl->async, NULL);
    /* The caller runs the loop to close the handle; cl is leaked with it (start-up failure). */
    return -1;
fail:
    for (int i = 0; i < o->nservers; i++)
        free(cl->servers[i]);
    free(cl->parts);
    free(cl->gen);
    free(cl->refused_gen);
    free(cl);
    return -1;
}

void px_cluster_release(px_cluster_t *cl, void (*done)(void *arg), void *arg)
{
    cl->release_cb = done;
    cl->release_arg = arg;
    atomic_store(&cl->releasing, 1);
    pthread_mutex_lock(&cl->lease_mu);
    pthread_cond_signal(&cl->lease_cv);
    pthread_mutex_unlock(&cl->lease_mu);
}

static void on_async_closed(uv_handle_t *h)
{
    struct px_cluster *cl = h->data;

    for (int i = 0; i < cl->o.nservers; i++)
        free(cl->servers[i]);
    free(cl->parts);
    free(cl->gen);
    free(cl->refused_gen);
    free(cl->pubs);
    free(cl);
}

void px_cluster_stop(px_cluster_t *cl)
{
    cl_pub_t *p;
    cl_res_t *r;

    atomic_store(&cl->stopping, 1);
    pthread_mutex_lock(&cl->lease_mu);
    pthread_cond_signal(&cl->lease_cv);
    pthread_mutex_unlock(&cl->lease_mu);
    cl_ingress_stop(cl);
    pthread_join(cl->lease_th, NULL); /* it joins the partition threads */
    if (cl->res_sub)
        natsSubscription_Destroy(cl->res_sub);
    if (cl->leases)
        kvStore_Destroy(cl->leases);
    if (cl->members)
        kvStore_Destroy(cl->members);
    if (cl->js)
        jsCtx_Destroy(cl->js);
    if (cl->ljs)
        jsCtx_Destroy(cl->ljs);
    if (cl->nc) {
        natsConnection_Close(cl->nc);
        natsConnection_Destroy(cl->nc);
    }
    while ((p = cl->done)) {
        cl->done = p->next;
        free(p);
    }
    while ((r = cl->results)) {
        cl->results = r->next;
        free(r);
    }
    pthread_mutex_destroy(&cl->done_mu);
    pthread_mutex_destroy(&cl->lease_mu);
    pthread_cond_destroy(&cl->lease_cv);
    uv_close((uv_handle_t *)&cl->async, on_async_closed);
}

int px_cluster_connected(px_cluster_t *cl)
{
    return atomic_load(&cl->ready) && atomic_load(&cl->connected);
}

json_t *px_cluster_report(px_cluster_t *cl)
{
    json_t *parts = json_array(), *o;
    uint64_t owned = 0, redeliveries = 0, handoffs = 0, losses = 0;

    for (uint32_t i = 0; i < cl->o.partitions; i++) {
        cl_part_t *p = &cl->parts[i];
        int held = atomic_load(&p->deadline_ns) > px_now_ns();

        owned += held;
        redeliveries += atomic_load(&p->redeliveries);
        handoffs += atomic_load(&p->handoffs);
        losses += atomic_load(&p->losses);
        json_array_append_new(parts, json_pack("{sI sb sI sI sI}", "partition", (json_int_t)i,
                                               "held", held, "epoch",
                                               (json_int_t)(held ? atomic_load(&p->epoch) : 0),
                                               "backlog", (json_int_t)atomic_load(&p->backlog),
                                               "runs", (json_int_t)atomic_load(&p->runs)));
    }
    o = json_pack("{ss sb sI sI sI sI sI sI sI sI sI sI so}", "instance", cl->instance, "connected",
                  px_cluster_connected(cl), "members", (json_int_t)atomic_load(&cl->members_n),
                  "partitions", (json_int_t)cl->o.partitions, "owned", (json_int_t)owned,
                  "submitted", (json_int_t)atomic_load(&cl->submitted), "accepted",
                  (json_int_t)atomic_load(&cl->accepted), "refused",
                  (json_int_t)atomic_load(&cl->refused), "duplicates_stored",
                  (json_int_t)atomic_load(&cl->duplicates_stored), "redeliveries",
                  (json_int_t)redeliveries, "handoffs", (json_int_t)handoffs, "lease_losses",
                  (json_int_t)losses, "partition_list", parts);
    return o;
}
