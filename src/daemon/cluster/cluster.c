/* The cluster's lifecycle: options, start and stop, the loop's side of the hand-back lists, and
 * the report for /stats. The connection lives in connect.c, the leases in lease.c. */
#include "daemon/cluster/internal.h"

#include "common/clock.h"
#include "common/clusterdefs.h"
#include "common/log.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

void px_cluster_opts_defaults(px_cluster_opts_t *o)
{
    memset(o, 0, sizeof *o);
    o->partitions = PX_CLUSTER_DEF_PARTITIONS;
    o->lease_ttl_ms = PX_CLUSTER_DEF_LEASE_TTL_MS;
    o->max_backlog = PX_CLUSTER_DEF_MAX_BACKLOG;
    o->replicas = PX_CLUSTER_DEF_REPLICAS;
    o->publish_timeout_ms = PX_CLUSTER_DEF_PUBLISH_TIMEOUT_MS;
    o->batch = PX_CLUSTER_DEF_BATCH;
    /* A publisher stores one message at a time and waits for JetStream's confirmation (a
     * partition's stores must go one after another: see ingress.c), so under load the
     * partitions sharing a publisher queue behind its round trips: 16 publishers for 64
     * partitions held echo at 1 720 requests/s, 64 reached 2 070. */
    o->publishers = 64;
    o->result_ttl_ms = PX_CLUSTER_DEF_RESULT_TTL_MS;
    o->executor = 1;
}

/* Loop thread: everything the other threads handed back since the last wake-up. */
static void on_async(uv_async_t *a)
{
    struct px_cluster *cl = a->data;
    cl_pub_t *done;
    cl_res_t *res;
    cl_look_t *looked;
    int released;

    pthread_mutex_lock(&cl->done_mu);
    done = cl->done;
    res = cl->results;
    looked = cl->looked;
    cl->done = cl->done_tail = NULL;
    cl->results = cl->results_tail = NULL;
    cl->looked = cl->looked_tail = NULL;
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
        cl->cbs.result(r->msgid, r->missing ? NULL : r->line, r->len, cl->cbs.arg);
        free(r);
    }
    while (looked) {
        cl_look_t *l = looked;
        looked = l->next;
        cl->cbs.looked_up(l->cookie, l->st, l->line, l->len, l->why, cl->cbs.arg);
        free(l);
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
    const char *fi;
    int rc;

    *out = NULL;
    if (!cl) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    cl->o = *o;
    if (cl->o.publishers > cl->o.partitions)
        cl->o.publishers = cl->o.partitions; /* one partition per publisher at most */
    cl->cbs = *cbs;
    fi = getenv("PAREXD_FAULT_INJECTION");
    cl->kill_before_ack = fi && strcmp(fi, "kill_before_ack") == 0;
    cl->loop = loop;
    if (!valid_instance(o->instance)) {
        snprintf(err, errlen, "instance name '%.80s' must be 1 to 64 of [A-Za-z0-9_-]",
                 o->instance);
        goto fail;
    }
    /* nats.c spins on a contended lock 2000 times by default before it sleeps. Here well over
     * a hundred threads share the connection's lock on a few CPUs, and the spinning took CPU
     * time the NATS servers and the workers need. A later call keeps the first count. */
    if (nats_Open(0) != NATS_OK) {
        snprintf(err, errlen, "cannot start the NATS library: %s", nats_GetLastError(NULL));
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
    {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        /* Answers for this instance exist only from now on (see cl_follow_results). */
        cl->res_since = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
    }
    pthread_mutex_init(&cl->done_mu, NULL);
    pthread_mutex_init(&cl->lease_mu, NULL);
    pthread_cond_init(&cl->lease_cv, NULL);
    pthread_mutex_init(&cl->look_mu, NULL);
    pthread_cond_init(&cl->look_cv, NULL);
    uv_async_init(loop, &cl->async, on_async);
    cl->async.data = cl;
    if (cl_ingress_start(cl, err, errlen) || cl_lookup_start(cl, err, errlen))
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
    cl_lookup_stop(cl);
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
    cl_look_t *l;

    atomic_store(&cl->stopping, 1);
    pthread_mutex_lock(&cl->lease_mu);
    pthread_cond_signal(&cl->lease_cv);
    pthread_mutex_unlock(&cl->lease_mu);
    cl_ingress_stop(cl);
    cl_lookup_stop(cl);
    pthread_join(cl->lease_th, NULL); /* it joins the partition threads */
    if (cl->res_sub)
        natsSubscription_Destroy(cl->res_sub);
    for (unsigned i = 0; i < cl->nold; i++)
        natsSubscription_Destroy(cl->old_subs[i]);
    if (cl->leases)
        kvStore_Destroy(cl->leases);
    if (cl->members)
        kvStore_Destroy(cl->members);
    if (cl->js)
        jsCtx_Destroy(cl->js);
    if (cl->ljs)
        jsCtx_Destroy(cl->ljs);
    if (cl->nc) {
        /* Its callbacks (disconnected, closed) run on nats.c's own thread, also after Close
         * returns: wait for the last one before cl goes (bounded: a stuck library is not worth
         * a hung stop). */
        struct timespec ts = px_deadline_after(CLOCK_REALTIME, 5000 * PX_MS);

        natsConnection_Close(cl->nc);
        pthread_mutex_lock(&cl->lease_mu);
        while (!cl->nats_closed &&
               pthread_cond_timedwait(&cl->lease_cv, &cl->lease_mu, &ts) != ETIMEDOUT)
            ;
        pthread_mutex_unlock(&cl->lease_mu);
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
    while ((l = cl->looked)) {
        cl->looked = l->next;
        free(l);
    }
    pthread_mutex_destroy(&cl->done_mu);
    pthread_mutex_destroy(&cl->lease_mu);
    pthread_cond_destroy(&cl->lease_cv);
    pthread_mutex_destroy(&cl->look_mu);
    pthread_cond_destroy(&cl->look_cv);
    uv_close((uv_handle_t *)&cl->async, on_async_closed);
}

int px_cluster_connected(px_cluster_t *cl)
{
    return atomic_load(&cl->ready) && atomic_load(&cl->connected);
}

void px_cluster_awaiting(px_cluster_t *cl, size_t n)
{
    atomic_store(&cl->awaiting, (uint64_t)n);
}

json_t *px_cluster_report(px_cluster_t *cl)
{
    json_t *parts = json_array(), *o;
    uint64_t owned = 0, serving = 0, redeliveries = 0, handoffs = 0, losses = 0, skipped = 0;

    for (uint32_t i = 0; i < cl->o.partitions; i++) {
        cl_part_t *p = &cl->parts[i];
        int held = atomic_load(&p->deadline_ns) > px_now_ns();

        owned += held;
        serving += held && atomic_load(&p->serving);
        redeliveries += atomic_load(&p->redeliveries);
        handoffs += atomic_load(&p->handoffs);
        losses += atomic_load(&p->losses);
        skipped += atomic_load(&p->skipped);
        json_array_append_new(parts, json_pack("{sI sb sI sI sI}", "partition", (json_int_t)i,
                                               "held", held, "epoch",
                                               (json_int_t)(held ? atomic_load(&p->epoch) : 0),
                                               "backlog", (json_int_t)atomic_load(&p->backlog),
                                               "runs", (json_int_t)atomic_load(&p->runs)));
    }
    o = json_pack(
        "{ss sb sI sI sI sI sI sI sI sI sI sI sI sI sI sI so}", "instance", cl->instance,
        "connected", px_cluster_connected(cl), "members", (json_int_t)atomic_load(&cl->members_n),
        "partitions", (json_int_t)cl->o.partitions, "owned", (json_int_t)owned, "serving",
        (json_int_t)serving, "target", (json_int_t)atomic_load(&cl->targets), "submitted",
        (json_int_t)atomic_load(&cl->submitted), "accepted", (json_int_t)atomic_load(&cl->accepted),
        "stored_messages", (json_int_t)atomic_load(&cl->stored_messages), "refused",
        (json_int_t)atomic_load(&cl->refused), "duplicates_stored",
        (json_int_t)atomic_load(&cl->duplicates_stored), "redeliveries", (json_int_t)redeliveries,
        "already_answered", (json_int_t)skipped, "handoffs", (json_int_t)handoffs, "lease_losses",
        (json_int_t)losses, "partition_list", parts);
    return o;
}
