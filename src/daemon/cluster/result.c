/* Retained answers of idem requests: the executing instance stores each under the idem's own
 * subject of the results stream (part.c send_answer), kept result_ttl_ms (the stream's MaxAge).
 * Two readers: a publisher thread looks one up for a resubmitted idem (cl_find_answer), and
 * {"control":"result"} from any instance (px_cluster_lookup) on a lookup thread of its own, so
 * that a slow NATS never holds a publisher or the loop. Both hand their outcome to the loop
 * through the cluster's one uv_async_t. */
#include "daemon/cluster/internal.h"

#include "common/clock.h"
#include "common/log.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Lookups waiting for the lookup thread: beyond this many, px_cluster_lookup refuses at once. */
#define LOOKUP_QUEUE_MAX 1024

/* Any thread: the last answer stored for an idem's message id. NATS_OK with *m set, or
 * NATS_NOT_FOUND when none is retained; anything else is a failure to ask (nats_GetLastError). */
static natsStatus read_answer(struct px_cluster *cl, const char *msgid, natsMsg **m)
{
    char hex[420], subj[512];
    jsErrCode jerr = 0;
    natsStatus s;

    cl_hex(hex, msgid, sizeof hex);
    snprintf(subj, sizeof subj, CL_IDEM_SUBJ "%s", hex);
    *m = NULL;
    s = js_GetLastMsg(m, cl->js, CL_IDEM_STREAM, subj, NULL, &jerr);
    if (s != NATS_OK && jerr == JSNoMessageFoundErr)
        s = NATS_NOT_FOUND;
    return s;
}

static void post_result(struct px_cluster *cl, const char *msgid, const void *data, int len)
{
    cl_res_t *r = malloc(sizeof *r + (size_t)(len > 0 ? len : 0));

    if (!r)
        return;
    snprintf(r->msgid, sizeof r->msgid, "%s", msgid);
    r->len = len > 0 ? (size_t)len : 0;
    r->missing = len < 0;
    if (len > 0)
        memcpy(r->line, data, (size_t)len);
    r->next = NULL;
    cl_post_results(cl, r, r);
}

/* Publisher thread: a resubmitted idem request is stored once, and its answer may have gone to
 * another instance long ago. Read it from the results stream (waiting a while for a request
 * still running), or say it is not there yet. */
void cl_find_answer(struct px_cluster *cl, const char *msgid, uint64_t until)
{
    for (;;) {
        natsMsg *m = NULL;

        if (read_answer(cl, msgid, &m) == NATS_OK) {
            post_result(cl, msgid, natsMsg_GetData(m), natsMsg_GetDataLength(m));
            natsMsg_Destroy(m);
            return;
        }
        if (px_now_ns() + 100 * PX_MS >= until || atomic_load(&cl->stopping))
            break;
        struct timespec ts = {0, 100 * 1000000};
        nanosleep(&ts, NULL);
    }
    post_result(cl, msgid, NULL, -1);
}

/* Lookup thread: one lookup's outcome, queued for the loop. l is replaced when the answer needs
 * room (a realloc). */
static void post_lookup(struct px_cluster *cl, cl_look_t *l)
{
    int was_empty;

    l->next = NULL;
    pthread_mutex_lock(&cl->done_mu);
    was_empty = cl_loop_lists_empty(cl);
    if (cl->looked_tail)
        cl->looked_tail->next = l;
    else
        cl->looked = l;
    cl->looked_tail = l;
    pthread_mutex_unlock(&cl->done_mu);
    if (was_empty)
        cl_wake_loop(cl);
}

static void fail_lookup(cl_look_t *l, enum px_cluster_lookup st, const char *why)
{
    l->st = st;
    snprintf(l->why, sizeof l->why, "%s", why);
}

/* Lookup thread: asks once, without waiting for an answer that is not stored yet (the caller
 * asks again if it wants to). */
static cl_look_t *run_lookup(struct px_cluster *cl, cl_look_t *l)
{
    natsMsg *m = NULL;
    natsStatus s;
    cl_look_t *big;
    int len;

    if (atomic_load(&cl->stopping)) {
        fail_lookup(l, PX_CL_LOOKUP_FAILED, "parexd is shutting down; ask another instance");
        return l;
    }
    if (!atomic_load(&cl->ready) || !atomic_load(&cl->connected)) {
        fail_lookup(l, PX_CL_LOOKUP_FAILED,
                    "not connected to NATS JetStream; ask another instance or retry later");
        return l;
    }
    s = read_answer(cl, l->msgid, &m);
    if (s == NATS_NOT_FOUND) {
        l->st = PX_CL_LOOKUP_NONE;
        return l;
    }
    if (s != NATS_OK) {
        l->st = PX_CL_LOOKUP_FAILED;
        snprintf(l->why, sizeof l->why,
                 "NATS JetStream did not answer the lookup (%.150s); retry later",
                 nats_GetLastError(NULL));
        return l;
    }
    len = natsMsg_GetDataLength(m);
    if (len < 0 || !(big = realloc(l, sizeof *l + (size_t)len))) {
        natsMsg_Destroy(m);
        fail_lookup(l, PX_CL_LOOKUP_FAILED, "out of memory reading the stored answer");
        return l;
    }
    l = big;
    memcpy(l->line, natsMsg_GetData(m), (size_t)len);
    l->len = (size_t)len;
    l->st = PX_CL_LOOKUP_FOUND;
    natsMsg_Destroy(m);
    return l;
}

static void *lookup_main(void *arg)
{
    struct px_cluster *cl = arg;
    sigset_t all;

    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    pthread_setname_np(pthread_self(), "px-cl-lookup");
    for (;;) {
        cl_look_t *l;

        pthread_mutex_lock(&cl->look_mu);
        while (!cl->look_q && !atomic_load(&cl->stopping))
            pthread_cond_wait(&cl->look_cv, &cl->look_mu);
        l = cl->look_q;
        if (l) {
            cl->look_q = l->next;
            if (!cl->look_q)
                cl->look_tail = NULL;
            cl->look_n--;
        }
        pthread_mutex_unlock(&cl->look_mu);
        if (!l)
            break;
        post_lookup(cl, run_lookup(cl, l));
    }
    return NULL;
}

int px_cluster_lookup(px_cluster_t *cl, const char *msgid, void *cookie)
{
    cl_look_t *l;

    if (strlen(msgid) >= sizeof l->msgid)
        return -EINVAL;
    pthread_mutex_lock(&cl->look_mu);
    if (cl->look_n >= LOOKUP_QUEUE_MAX) {
        pthread_mutex_unlock(&cl->look_mu);
        return -EBUSY;
    }
    if (!(l = calloc(1, sizeof *l))) {
        pthread_mutex_unlock(&cl->look_mu);
        return -ENOMEM;
    }
    l->cookie = cookie;
    snprintf(l->msgid, sizeof l->msgid, "%s", msgid);
    if (cl->look_tail)
        cl->look_tail->next = l;
    else
        cl->look_q = l;
    cl->look_tail = l;
    cl->look_n++;
    pthread_cond_signal(&cl->look_cv);
    pthread_mutex_unlock(&cl->look_mu);
    return 0;
}

int cl_lookup_start(struct px_cluster *cl, char *err, size_t errlen)
{
    int rc;

    if ((rc = pthread_create(&cl->look_th, NULL, lookup_main, cl))) {
        snprintf(err, errlen, "cannot start the lookup thread: %s", strerror(rc));
        return -1;
    }
    cl->look_live = 1;
    return 0;
}

/* The stopping flag is set: the thread finishes the lookup it runs and exits; lookups still
 * queued are freed unanswered (the loop answers for their cookies: px_cluster_lookup). */
void cl_lookup_stop(struct px_cluster *cl)
{
    cl_look_t *l;

    if (cl->look_live) {
        pthread_mutex_lock(&cl->look_mu);
        pthread_cond_broadcast(&cl->look_cv);
        pthread_mutex_unlock(&cl->look_mu);
        pthread_join(cl->look_th, NULL);
        cl->look_live = 0;
    }
    while ((l = cl->look_q)) {
        cl->look_q = l->next;
        free(l);
    }
    cl->look_tail = NULL;
    cl->look_n = 0;
}
