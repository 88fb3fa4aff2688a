/* The lease thread: membership, partition leases and rebalancing, on the KV buckets.
 *
 * Every tick (a quarter of lease_ttl_ms, and just after a key of a member that stopped renewing
 * runs out) it renews this instance's member key, reads the member list and gives each partition
 * a target owner by rendezvous hashing (members.c).
 * Leases: acquire = KV create (fails while another holds it), renew = compare-and-swap update
 * on the revision last written; the revision at acquisition is the epoch. A renewal that fails
 * or times out counts as lost at once; and a lease not renewed in time is given up at the local
 * deadline (send time of the last good renewal + TTL - margin), before the servers can let
 * another instance take it. A partition that should move, or every partition at a graceful stop,
 * is released only after its thread has finished and acknowledged its running batch (the lease
 * is kept renewed meanwhile), by a compare-and-swap delete: the next owner finds it free at once
 * and nothing runs twice. */
#include "daemon/cluster/internal.h"

#include "common/clock.h"
#include "common/log.h"

#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void lease_key(char *out, size_t len, uint32_t part)
{
    snprintf(out, len, "p%u", part);
}

/* A graceful hand-off: the lease is marked free with the last stream sequence this holder
 * finished, by a compare-and-swap on the revision it wrote (a plain write could overwrite a lease
 * another instance has taken since). The next holder skips messages up to that sequence: an
 * acknowledgement can still be on its way through the consumer's replicas when the next holder's
 * fresh consumer starts, and that message must not run twice. */
static int cas_release(struct px_cluster *cl, cl_part_t *p)
{
    char key[32], val[48];
    uint64_t rev = 0;

    lease_key(key, sizeof key, p->id);
    snprintf(val, sizeof val, "free %" PRIu64 " %" PRIu64, atomic_load(&p->last_lo),
             atomic_load(&p->done_seq));
    return kvStore_UpdateString(&rev, cl->leases, key, val, p->rev) == NATS_OK ? 0 : -1;
}

/* Deletes the lease only if it is still the revision this instance wrote. */
static int cas_delete(struct px_cluster *cl, cl_part_t *p)
{
    char subj[96];
    natsMsg *m = NULL;
    jsPubOptions po;
    natsStatus s;

    snprintf(subj, sizeof subj, "$KV." CL_LEASES ".p%u", p->id);
    jsPubOptions_Init(&po);
    po.ExpectLastSubjectSeq = p->rev;
    s = natsMsg_Create(&m, subj, NULL, NULL, 0);
    if (s == NATS_OK)
        s = natsMsgHeader_Set(m, "KV-Operation", "DEL");
    if (s == NATS_OK)
        s = js_PublishMsg(NULL, cl->ljs, m, &po, NULL);
    natsMsg_Destroy(m);
    return s == NATS_OK ? 0 : -1;
}

static void start_part(struct px_cluster *cl, cl_part_t *p, uint64_t rev, uint64_t sent,
                       uint64_t lo, uint64_t hi)
{
    int rc;

    p->rev = rev;
    p->skip_lo = lo;
    p->skip_hi = hi;
    p->handed_out = 0;
    atomic_store(&p->epoch, rev);
    atomic_store(&p->stop, 0);
    atomic_store(&p->lost, 0);
    atomic_store(&p->exited, 0);
    atomic_store(&p->deadline_ns, sent + cl->o.lease_ttl_ms * PX_MS - cl_lease_margin_ns(cl));
    atomic_fetch_add(&p->acquired, 1);
    p->state = PART_OWNED;
    if ((rc = pthread_create(&p->th, NULL, cl_part_main, p))) {
        px_err("cluster: cannot start a thread for partition %u: %s", p->id, strerror(rc));
        atomic_store(&p->deadline_ns, 0);
        cas_delete(cl, p);
        p->state = PART_FREE;
        return;
    }
    p->th_live = 1;
}

/* The partition's thread has exited: give the lease back or forget it. */
static void reap_part(struct px_cluster *cl, cl_part_t *p)
{
    pthread_join(p->th, NULL);
    p->th_live = 0;
    if (p->state == PART_RELEASING && !atomic_load(&p->lost) &&
        px_now_ns() < atomic_load(&p->deadline_ns)) {
        if (cas_release(cl, p) == 0) {
            atomic_fetch_add(&p->handoffs, 1);
            px_notice("cluster: partition %u handed over (epoch %llu)", p->id,
                      (unsigned long long)atomic_load(&p->epoch));
        }
    } else {
        atomic_fetch_add(&p->losses, 1);
        px_warn("cluster: partition %u lost (epoch %llu); its lease expires on its own", p->id,
                (unsigned long long)atomic_load(&p->epoch));
    }
    atomic_store(&p->deadline_ns, 0);
    p->state = PART_FREE;
}

static void renew(struct px_cluster *cl, cl_part_t *p, uint64_t now)
{
    char key[32];
    uint64_t rev = 0;

    if (now >= atomic_load(&p->deadline_ns)) {
        atomic_store(&p->lost, 1);
        atomic_store(&p->stop, 1);
        return;
    }
    lease_key(key, sizeof key, p->id);
    if (kvStore_UpdateString(&rev, cl->leases, key, cl->instance, p->rev) == NATS_OK) {
        p->rev = rev;
        atomic_store(&p->deadline_ns, now + cl->o.lease_ttl_ms * PX_MS - cl_lease_margin_ns(cl));
        return;
    }
    /* Taken over (conflict) or unknown (timeout): either way it is not ours to use any more. */
    px_warn("cluster: partition %u: lease renewal failed (%s); stopping it", p->id,
            nats_GetLastError(NULL));
    atomic_store(&p->lost, 1);
    atomic_store(&p->stop, 1);
    atomic_store(&p->deadline_ns, 0);
}

static void try_acquire(struct px_cluster *cl, cl_part_t *p)
{
    char key[32];
    uint64_t rev = 0, sent = px_now_ns(), lo, hi;
    kvEntry *e = NULL;
    const char *v;

    lease_key(key, sizeof key, p->id);
    if (kvStore_CreateString(&rev, cl->leases, key, cl->instance) == NATS_OK) {
        start_part(cl, p, rev, sent, 0, 0);
        return;
    }
    /* Handed over: take it with a compare-and-swap on the releaser's revision (a stale read
     * only makes that fail), and skip what the releaser had finished. */
    if (kvStore_Get(&e, cl->leases, key) != NATS_OK)
        return;
    v = kvEntry_ValueString(e);
    if (v && sscanf(v, "free %" SCNu64 " %" SCNu64, &lo, &hi) == 2) {
        if (kvStore_UpdateString(&rev, cl->leases, key, cl->instance, kvEntry_Revision(e)) ==
            NATS_OK)
            start_part(cl, p, rev, sent, lo, hi);
        kvEntry_Destroy(e);
        return;
    }
    /* Held by another instance: take it when it runs out. */
    cl_tick_at_expiry(cl, kvEntry_Created(e));
    if (kvEntry_Revision(e) != p->seen_rev) {
        p->seen_rev = kvEntry_Revision(e);
        p->seen_at = sent;
    } else if (sent - p->seen_at > cl->o.lease_ttl_ms * PX_MS + cl_lease_margin_ns(cl)) {
        /* The same revision for longer than a lease, by this instance's own clock since it
         * first read it: its holder has not renewed, and stopped at its own deadline, which
         * came earlier. Normally the bucket's TTL has removed the key by now; this covers a
         * server that did not expire it. */
        if (kvStore_UpdateString(&rev, cl->leases, key, cl->instance, p->seen_rev) == NATS_OK) {
            px_warn("cluster: partition %u: lease revision %llu was not renewed for %llu ms; "
                    "taking it over",
                    p->id, (unsigned long long)p->seen_rev,
                    (unsigned long long)((sent - p->seen_at) / PX_MS));
            start_part(cl, p, rev, sent, 0, 0);
        }
    }
    kvEntry_Destroy(e);
}

/* Messages stored per partition: the backlog the ingress bounds with max_backlog. */
static void refresh_backlog(struct px_cluster *cl)
{
    jsOptions o;
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    uint64_t *seen = calloc(cl->o.partitions, sizeof *seen);

    if (!seen)
        return;
    jsOptions_Init(&o);
    o.Stream.Info.SubjectsFilter = CL_REQ_SUBJ ">";
    if (js_GetStreamInfo(&si, cl->js, CL_REQ_STREAM, &o, &jerr) == NATS_OK) {
        if (si->State.Subjects)
            for (int i = 0; i < si->State.Subjects->Count; i++) {
                const char *s = si->State.Subjects->List[i].Subject + strlen(CL_REQ_SUBJ);
                unsigned long part = strtoul(s, NULL, 10);
                if (part < cl->o.partitions)
                    seen[part] = si->State.Subjects->List[i].Msgs;
            }
        for (uint32_t i = 0; i < cl->o.partitions; i++)
            atomic_store(&cl->parts[i].backlog, seen[i]);
        jsStreamInfo_Destroy(si);
    }
    free(seen);
}

static void tick(struct px_cluster *cl, int releasing)
{
    cl_members_t m;
    int held = 0, known;
    uint64_t targets = 0;
    int64_t put_ns = cl_real_ns();

    if (!cl->o.executor) {
        refresh_backlog(cl);
        goto done;
    }
    /* Leases past their local deadline stop first, before any request that could block. */
    for (uint32_t i = 0; i < cl->o.partitions; i++) {
        cl_part_t *p = &cl->parts[i];
        if (p->state != PART_FREE && px_now_ns() >= atomic_load(&p->deadline_ns)) {
            atomic_store(&p->lost, 1);
            atomic_store(&p->stop, 1);
        }
    }
    if (!releasing)
        kvStore_PutString(NULL, cl->members, cl->instance, "up");
    else if (!cl->left) {
        /* Leaving: the others count without this instance from now on, so each partition it
         * hands over already has its next owner waiting for it. */
        kvStore_Delete(cl->members, cl->instance);
        cl->left = 1;
    }
    cl->expiry_tick = 0; /* this round is the one that was due; the next is set below */
    known = cl_read_members(cl, &m) == 0;
    for (uint32_t i = 0; i < cl->o.partitions; i++) {
        cl_part_t *p = &cl->parts[i];
        /* Unknown members: what is held stays held, nothing new is taken. */
        int target = !releasing && (known ? cl_is_target(cl, &m, i) : p->state == PART_OWNED);

        targets += target;
        if (p->th_live && atomic_load(&p->exited))
            reap_part(cl, p);
        if (p->state != PART_FREE) {
            renew(cl, p, px_now_ns());
            if (p->state == PART_OWNED && !target) {
                p->state = PART_RELEASING;
                atomic_store(&p->stop, 1);
            }
        } else if (target && cl->ticks > 0) {
            /* Not on the first tick: instances started together then see each other before
             * taking anything, instead of the first taking every partition and handing most
             * over again (each move costs a consumer and a wait for the running batch). */
            try_acquire(cl, p);
        }
        held += p->state != PART_FREE;
    }
    /* After the renewals, which must not wait for these reads; not while leaving (nothing more
     * is taken) nor in the first round (which takes nothing either: see above). */
    if (known && !releasing && cl->ticks > 0)
        cl_follow_expiry(cl, &m, put_ns);
    cl_free_members(&m);
    cl->ticks++;
    if (known)
        atomic_store(&cl->targets, targets);
    refresh_backlog(cl);
done:
    if (releasing && held == 0) {
        if (cl->o.executor)
            kvStore_Delete(cl->members, cl->instance);
        pthread_mutex_lock(&cl->done_mu);
        cl->release_done = 1;
        pthread_mutex_unlock(&cl->done_mu);
        cl_wake_loop(cl);
    }
}

/* Watcher thread: a lease marked free (a hand-over) or deleted wakes the lease thread, so a
 * partition handed over is taken at once rather than at the next tick. */
static void *watch_main(void *arg)
{
    struct px_cluster *cl = arg;
    kvWatcher *w = NULL;
    kvWatchOptions o;
    sigset_t all;

    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    pthread_setname_np(pthread_self(), "px-cl-watch");
    kvWatchOptions_Init(&o);
    o.IgnoreDeletes = false;
    while (!atomic_load(&cl->stopping) && kvStore_WatchAll(&w, cl->leases, &o) != NATS_OK) {
        struct timespec ts = {1, 0}; /* not reachable now: the ticks still take partitions */
        nanosleep(&ts, NULL);
    }
    while (w && !atomic_load(&cl->stopping)) {
        kvEntry *e = NULL;
        const char *v;

        if (kvWatcher_Next(&e, w, 500) != NATS_OK || !e)
            continue;
        v = kvEntry_ValueString(e);
        if (kvEntry_Operation(e) != kvOp_Put || (v && strncmp(v, "free ", 5) == 0)) {
            atomic_store(&cl->lease_wake, 1);
            pthread_mutex_lock(&cl->lease_mu);
            pthread_cond_signal(&cl->lease_cv);
            pthread_mutex_unlock(&cl->lease_mu);
        }
        kvEntry_Destroy(e);
    }
    if (w)
        kvWatcher_Destroy(w);
    return NULL;
}

void *cl_lease_main(void *arg)
{
    struct px_cluster *cl = arg;
    uint64_t every = cl->o.lease_ttl_ms * PX_MS / 4, next = 0;
    int released = 0, watching = 0;
    pthread_t watch_th;
    char err[256];
    sigset_t all;

    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    pthread_setname_np(pthread_self(), "px-cl-lease");
    while (!atomic_load(&cl->stopping) && cl_connect(cl, err, sizeof err)) {
        px_warn("cluster: %s; retrying in 1 s", err);
        pthread_mutex_lock(&cl->lease_mu);
        if (!atomic_load(&cl->stopping)) {
            struct timespec ts = px_deadline_after(CLOCK_REALTIME, 1000 * PX_MS);
            pthread_cond_timedwait(&cl->lease_cv, &cl->lease_mu, &ts);
        }
        pthread_mutex_unlock(&cl->lease_mu);
    }
    if (!atomic_load(&cl->stopping)) {
        atomic_store(&cl->ready, 1);
        px_notice("cluster: instance %s connected to NATS; %u partitions, lease_ttl_ms %llu",
                  cl->instance, cl->o.partitions, (unsigned long long)cl->o.lease_ttl_ms);
        if (cl->o.executor && pthread_create(&watch_th, NULL, watch_main, cl) == 0)
            watching = 1;
    }
    while (!atomic_load(&cl->stopping)) {
        uint64_t now = px_now_ns();
        int releasing = atomic_load(&cl->releasing);

        uint64_t waiting = atomic_load(&cl->res_wait_since);

        /* Requests wait for answers with none stored since the last answer came (the last
         * answers came after the last store): the clock starts now. Without this a consumer
         * that went silent right after delivering an answer was never followed anew. */
        if (!waiting && atomic_load(&cl->awaiting) &&
            atomic_compare_exchange_strong(&cl->res_wait_since, &waiting, now))
            waiting = now;
        if (!waiting)
            cl->res_stalls = 0;
        else if (now >
                 waiting + (CL_ANSWER_STALL_NS << (cl->res_stalls < 4 ? cl->res_stalls : 4))) {
            /* Requests were stored and no answer came for seconds. After a quorum loss
             * nats-server 2.9.10 was seen keeping an ordered consumer alive (heartbeats) that
             * never delivered again; following anew costs a consumer and a few answers seen
             * twice (ignored) when the executors are merely slow. */
            px_info("cluster: no answers for %llu s while requests wait; following them again",
                    (unsigned long long)((now - waiting) / PX_MS / 1000));
            cl->res_stalls++;
            atomic_store(&cl->res_wait_since, now);
            atomic_store(&cl->res_broken, 1);
        }
        if (atomic_exchange(&cl->res_broken, 0)) {
            if (cl_follow_results(cl, err, sizeof err)) {
                px_warn("cluster: %s; retrying", err);
                atomic_store(&cl->res_broken, 1);
            } else {
                px_info("cluster: following this instance's answers again");
            }
        }

        if (now >= next || releasing || atomic_exchange(&cl->lease_wake, 0) ||
            (cl->expiry_tick && now >= cl->expiry_tick)) {
            if (!released)
                tick(cl, releasing);
            else
                cl->expiry_tick = 0; /* no more rounds: nothing may wake the thread for one */
            next = now + every;
            if (releasing) {
                int held = 0;
                for (uint32_t i = 0; i < cl->o.partitions; i++)
                    held += cl->parts[i].state != PART_FREE;
                released = held == 0;
            }
        }
        pthread_mutex_lock(&cl->lease_mu);
        if (!atomic_load(&cl->stopping)) {
            /* Woken early by a partition thread that exited (a hand-off in progress). */
            uint64_t wait = releasing && !released ? 50 * PX_MS : every, t = px_now_ns();
            struct timespec ts;

            if (cl->expiry_tick && cl->expiry_tick < t + wait)
                wait = cl->expiry_tick > t ? cl->expiry_tick - t : 0;
            ts = px_deadline_after(CLOCK_REALTIME, wait);
            pthread_cond_timedwait(&cl->lease_cv, &cl->lease_mu, &ts);
        }
        pthread_mutex_unlock(&cl->lease_mu);
    }
    for (uint32_t i = 0; i < cl->o.partitions; i++) {
        cl_part_t *p = &cl->parts[i];
        if (p->th_live) {
            atomic_store(&p->stop, 1);
            pthread_join(p->th, NULL);
            p->th_live = 0;
        }
    }
    if (watching)
        pthread_join(watch_th, NULL);
    return NULL;
}
