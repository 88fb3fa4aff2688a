/* A worker thread's body: take the next request of its queue (or of the keyed scheduler), run
 * its handler under the handler's policies, build the answer line while it still owns the
 * request, and hand it back to the loop through the pool's completion list. One CAS on the
 * request's state decides whether this answer stands or the loop has already answered it (stall
 * replacement, forced stop). */
#include "daemon/exec/pool_int.h"

#include "common/clock.h"
#include "common/log.h"
#include "daemon/core/handler.h"
#include "daemon/core/hot.h"
#include "daemon/exec/keys.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* What a thread knows of itself: its slot, the generation it serves as, and the request it is
 * running (so that a thread ending inside a handler still hands its request back). */
typedef struct wthread {
    px_slot_t *s;
    uint64_t gen;
    px_req_t *cur;
} wthread_t;

/* Worker thread: hands a finished (or abandoned) request back to the loop. Wakes the loop only
 * when the list goes from empty to non-empty: uv_async_send coalesces anyway, and the loop
 * drains the whole list per wake-up. */
static void post_done(px_pool_t *p, px_req_t *r)
{
    int wake;

    r->next = NULL;
    pthread_mutex_lock(&p->done_mu);
    wake = p->done_head == NULL;
    if (p->done_tail)
        p->done_tail->next = r;
    else
        p->done_head = r;
    p->done_tail = r;
    pthread_mutex_unlock(&p->done_mu);
    if (wake)
        uv_async_send(&p->async);
}

static double ms_between(uint64_t a, uint64_t b)
{
    return b > a ? (double)(b - a) / 1e6 : 0.0;
}

/* Worker thread: builds the response line while the request is still ours. */
static void format_response(px_req_t *r, px_result_t *res)
{
    px_resp_t resp = {0};
    char extra[32];

    resp.id = px_req_id(r);
    resp.id_len = r->id_len;
    resp.status = r->ok ? "ok" : "failed";
    resp.worker = (int)r->worker;
    resp.result = res->value;
    resp.result_text = res->text;
    resp.result_len = res->text_len;
    resp.code = res->code ? res->code : "handler_error";
    resp.message = res->message;
    resp.queue_ms = ms_between(r->recv_ns, r->start_ns);
    resp.run_ms = ms_between(r->start_ns, r->end_ns);
    if (r->handler->ctl->max_attempts > 1) {
        snprintf(extra, sizeof extra, ",\"attempts\":%d", r->attempts);
        resp.extra = extra;
    }
    if (px_resp_format(&r->out, &resp)) {
        r->out.len = 0;
        r->ok = 0;
        resp.status = "failed";
        resp.result = NULL;
        resp.code = "handler_error";
        resp.message = "out of memory while building the response";
        px_resp_format(&r->out, &resp);
    }
}

/* Worker thread: a request answered failed here without (further) running. */
static void answer_unrun(px_req_t *r, const char *code, const char *message)
{
    px_result_t res = {.code = code};

    snprintf(res.message, sizeof res.message, "%s", message);
    r->end_ns = px_now_ns();
    if (!r->start_ns)
        r->start_ns = r->end_ns;
    r->ok = 0;
    format_response(r, &res);
}

/* Worker thread: hands a request back to the loop and, when release_key is set, lets its key
 * run again (keyed scheduling). Posting first keeps the key's answers in order. r may be freed
 * once posted; the token stays valid. */
static void hand_back(px_slot_t *s, px_req_t *r, int release_key)
{
    void *token = r->sched_key;

    post_done(s->pool, r);
    if (release_key && s->pool->sched)
        px_sched_done(s->pool->sched, token);
}

/* Worker thread: takes the popped request out of the slot's hand and decides, by one CAS under
 * cur_mu, what becomes of it: RUNNING (it is now current), DONE (skipped: its key is parked, or
 * in cluster mode its partition's lease is gone; r->skipped says which) or already CANCELLED by
 * the loop. NULL when a forced stop took it from the hand first (the loop owns it then). */
static px_req_t *claim(px_slot_t *s, int *state)
{
    int expected = PX_REQ_QUEUED;
    uint64_t now = px_now_ns();
    px_req_t *r;

    pthread_mutex_lock(&s->cur_mu);
    r = atomic_exchange_explicit(&s->hand, NULL, memory_order_acq_rel);
    if (r) {
        r->start_ns = now;
        if (s->pool->sched)
            r->worker = s->id; /* keyed: whichever worker is free runs it */
        /* The lease is checked right before the run (a lock-free read of the partition's epoch
         * and deadline): a request whose lease ended while it waited is left for the
         * partition's next holder. */
        int skip = r->kent && px_key_parked(r->kent, now) ? PX_SKIP_PARKED
                   : r->fence && !r->fence(r->fence_arg)  ? PX_SKIP_FENCED
                                                          : 0;
        *state = skip ? PX_REQ_DONE : PX_REQ_RUNNING;
        if (!atomic_compare_exchange_strong(&r->state, &expected, *state))
            *state = expected; /* CANCELLED */
        else
            r->skipped = skip;
        if (*state == PX_REQ_RUNNING) {
            size_t n = strnlen(r->handler->name, sizeof s->cur_op - 1);
            s->current = r;
            memcpy(s->cur_key, px_req_key(r), r->key_len);
            s->cur_key[r->key_len] = '\0';
            memcpy(s->cur_op, r->handler->name, n);
            s->cur_op[n] = '\0';
            /* A handler that may wait for a slot or a token runs only once on_run says so. */
            if (px_handler_may_wait(r->handler))
                atomic_store_explicit(&s->waiting, 1, memory_order_relaxed);
            else
                atomic_store_explicit(&s->busy_since_ns, now, memory_order_relaxed);
        }
    }
    pthread_mutex_unlock(&s->cur_mu);
    atomic_store_explicit(&s->heartbeat_ns, now, memory_order_relaxed);
    return r;
}

/* Worker thread, from px_handler_invoke: an attempt starts running (started_ns) or waits for a
 * concurrency slot or a rate-limit token (0). Only running counts toward a stall. A thread the
 * slot no longer belongs to (replaced) leaves the slot alone. */
static void on_run(void *arg, uint64_t started_ns)
{
    wthread_t *t = arg;
    px_slot_t *s = t->s;

    pthread_mutex_lock(&s->cur_mu);
    if (atomic_load_explicit(&s->gen, memory_order_relaxed) == t->gen) {
        atomic_store_explicit(&s->busy_since_ns, started_ns, memory_order_relaxed);
        atomic_store_explicit(&s->waiting, started_ns == 0, memory_order_relaxed);
        if (!started_ns)
            atomic_store_explicit(&s->heartbeat_ns, px_now_ns(), memory_order_relaxed);
    }
    pthread_mutex_unlock(&s->cur_mu);
}

/* Worker thread: the request is no longer current on this slot (if the slot is still ours).
 * Returns 1 when the thread was abandoned (replaced) meanwhile. */
static int let_go(wthread_t *t)
{
    px_slot_t *s = t->s;
    int stale;

    pthread_mutex_lock(&s->cur_mu);
    stale = atomic_load_explicit(&s->gen, memory_order_relaxed) != t->gen;
    if (!stale) {
        s->current = NULL;
        s->cur_key[0] = s->cur_op[0] = '\0';
        atomic_store_explicit(&s->busy_since_ns, 0, memory_order_relaxed);
        atomic_store_explicit(&s->waiting, 0, memory_order_relaxed);
    }
    pthread_mutex_unlock(&s->cur_mu);
    return stale;
}

/* Worker thread: runs the request in the slot's hand. Returns 0, or -1 when this thread was
 * abandoned while it ran (the slot has a new thread; this one must touch nothing of the slot
 * and exit). */
static int run_one(wthread_t *t)
{
    px_slot_t *s = t->s;
    px_result_t res = {0};
    int rc, stale, state, expected = PX_REQ_RUNNING;
    uint64_t run, waited;
    px_req_t *r = claim(s, &state);

    if (!r)
        return 0; /* a forced stop took it */
    if (state == PX_REQ_DONE) {
        /* Quarantined while it waited (the loop answers it rejected/key_parked), or its cluster
         * lease is gone (left for the partition's next holder): not run. */
        hand_back(s, r, 1);
        return 0;
    }
    if (state == PX_REQ_CANCELLED) {
        /* Cancelled while queued: answered here, so it goes out in its key's order. */
        answer_unrun(r, "cancelled", r->cancel_msg);
        hand_back(s, r, 1);
        return 0;
    }
    t->cur = r;
    rc = px_handler_invoke(r->handler, r, &res, &r->attempts, &waited, on_run, t);
    r->end_ns = px_now_ns();
    r->ok = rc == 0;
    stale = let_go(t);
    t->cur = NULL;
    /* One CAS decides whose answer stands. Lost: the loop answered the request already (stall
     * replacement or forced stop) and may still read its fields, so touch none of them. */
    if (!atomic_compare_exchange_strong(&r->state, &expected, PX_REQ_DONE)) {
        json_decref(res.value);
        hand_back(s, r, 0); /* the loop only frees it; it released the key itself */
        return stale ? -1 : 0;
    }
    /* Waiting for a token or a slot is queueing, not running. */
    r->start_ns += waited;
    format_response(r, &res);
    json_decref(res.value);

    run = r->end_ns - r->start_ns;
    px_hist_record(&s->queue_us, (r->start_ns - r->recv_ns) / 1000);
    px_hist_record(&s->run_us, run / 1000);
    px_add_relaxed(&s->busy_ns, run);
    {
        uint64_t e = atomic_load_explicit(&s->ewma_run_ns, memory_order_relaxed);
        atomic_store_explicit(&s->ewma_run_ns, e ? (e * 7 + run) / 8 : run, memory_order_relaxed);
    }
    px_add_relaxed(&s->processed, 1);
    if (!r->ok)
        px_add_relaxed(&s->failed, 1);
    if (r->kent)
        r->parked = px_keys_outcome(r->kent, r->ok, r->end_ns,
                                    atomic_load_explicit(&s->pool->q_after, memory_order_relaxed),
                                    atomic_load_explicit(&s->pool->q_for_ns, memory_order_relaxed));
    if (s->pool->hot)
        px_hot_time(s->pool->hot, r->route, px_req_key(r), r->key_len, run, r->end_ns);
    /* Hand the answer back before the key may run again: its next request, on any worker, is
     * then answered after this one. */
    hand_back(s, r, 1);
    return 0;
}

/* Runs however the thread ends, pthread_exit from a handler included. A request it was running
 * is answered failed/worker_died (unless the loop answered it already) and handed back, so no
 * request is lost and the loop alone frees it. A slot whose thread is gone while the pool still
 * serves is dead, and the loop must hear of it. */
static void on_thread_exit(void *arg)
{
    wthread_t *t = arg;
    px_slot_t *s = t->s;
    px_pool_t *p = s->pool;
    px_req_t *r = t->cur;
    int mine;

    pthread_mutex_lock(&s->cur_mu);
    mine = atomic_load_explicit(&s->gen, memory_order_relaxed) == t->gen;
    if (mine) {
        s->current = NULL;
        s->cur_key[0] = s->cur_op[0] = '\0';
        atomic_store_explicit(&s->busy_since_ns, 0, memory_order_relaxed);
        atomic_store_explicit(&s->waiting, 0, memory_order_relaxed);
        atomic_store_explicit(&s->running, 0, memory_order_release);
    }
    pthread_mutex_unlock(&s->cur_mu);
    if (r) {
        int expected = PX_REQ_RUNNING, won;
        char msg[160];

        won = atomic_compare_exchange_strong(&r->state, &expected, PX_REQ_DONE);
        if (won) {
            snprintf(msg, sizeof msg,
                     "worker %u's thread ended inside the handler; the request may have run in "
                     "part",
                     s->id);
            answer_unrun(r, "worker_died", msg);
        }
        hand_back(s, r, won);
    }
    if (!mine) {
        /* Abandoned: the slot belongs to another thread now. The last thing this thread does
         * is say it has let go of the pool. */
        atomic_fetch_sub_explicit(&p->strays, 1, memory_order_release);
        return;
    }
    uv_async_send(&p->async); /* the drain finished for this worker, or it died */
}

static void *worker_main(void *arg)
{
    wthread_t t = *(wthread_t *)arg;
    px_slot_t *s = t.s;
    px_pool_t *p = s->pool;
    char name[16];
    int rc;

    free(arg);
    snprintf(name, sizeof name, "px-worker-%u", s->id);
    pthread_setname_np(pthread_self(), name);
    pthread_cleanup_push(on_thread_exit, &t);
    for (;;) {
        uint64_t hb = atomic_load_explicit(&p->dead_after_ns, memory_order_relaxed) / 4;
        /* Wake at least every 100 ms (or a quarter of dead_after_ms) while idle, so the
         * heartbeat shows the thread is alive. */
        if (p->sched)
            rc = px_sched_pop(p->sched, &s->hand, hb < 100 * PX_MS ? hb : 100 * PX_MS);
        else
            rc = px_queue_pop_hand(s->queue, &s->hand, hb < 100 * PX_MS ? hb : 100 * PX_MS);
        if (rc == -ETIMEDOUT) {
            atomic_store_explicit(&s->heartbeat_ns, px_now_ns(), memory_order_relaxed);
            continue;
        }
        if (rc == -EPIPE)
            break;
        if (run_one(&t))
            break;
    }
    pthread_cleanup_pop(1);
    return NULL;
}

int px_worker_start(px_slot_t *s, uint64_t gen)
{
    wthread_t *t = malloc(sizeof *t);
    sigset_t all, old;
    int rc;

    if (!t)
        return ENOMEM;
    t->s = s;
    t->gen = gen;
    t->cur = NULL;
    /* Workers inherit a full mask: signals go to the loop thread, which handles them. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    atomic_store(&s->heartbeat_ns, px_now_ns());
    atomic_store(&s->running, 1);
    rc = pthread_create(&s->thread, NULL, worker_main, t);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc) {
        atomic_store(&s->running, 0);
        free(t);
    }
    return rc;
}
