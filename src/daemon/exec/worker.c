/* Worker threads and the completion hand-off.
 *
 * Ownership: a worker slot's queue is shared with the loop under the queue's own lock; the
 * slot's counters are written by its thread only (atomics, read by anyone); the current key is
 * under the slot's cur_mu. The completion list is under done_mu. No thread ever holds two of
 * these locks at once, so there is no lock order to get wrong. */
#include "daemon/exec/worker.h"

#include "common/clock.h"
#include "daemon/core/handler.h"
#include "daemon/core/hot.h"
#include "daemon/core/keytab.h"
#include "common/log.h"
#include "common/protocol.h"
#include "daemon/exec/queue.h"
#include "daemon/exec/keysched.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A worker slot: one queue and the thread currently serving it. A stalled thread can be
 * abandoned and replaced (on_stall=replace); gen tells a thread whether it still owns the slot.
 * Counters and histograms are written by the owning thread only. */
typedef struct slot {
    px_pool_t *pool;
    uint32_t id;
    px_queue_t *queue;
    pthread_t thread;     /* loop-only */
    _Atomic int started;  /* set by the loop, read by px_pool_info anywhere */
    uint32_t kick;        /* loop-only: pushes that found this worker waiting since the last
                           * px_pool_kick (0: no wake-up owed) */
    _Atomic int running;  /* the current thread has not exited */
    _Atomic uint64_t gen; /* changed under cur_mu */
    _Atomic uint64_t heartbeat_ns, busy_since_ns; /* busy_since_ns 0 while idle */
    _Atomic uint64_t processed, failed, busy_ns, ewma_run_ns, replaced;
    pthread_mutex_t cur_mu;
    px_req_t *current; /* under cur_mu; the loop keeps it alive until it comes back */
    char cur_key[PX_KEY_MAX + 1], cur_op[64]; /* under cur_mu, for readers on other threads */
    px_hist_t queue_us, run_us;
} slot_t;

typedef struct wthread {
    slot_t *s;
    uint64_t gen;
} wthread_t;

struct px_pool {
    uv_loop_t *loop;
    uv_async_t async;
    px_pool_done_cb cb;
    void *cb_arg;
    uint32_t n;
    _Atomic int closed;
    _Atomic uint32_t strays; /* abandoned threads still inside a handler */
    _Atomic uint64_t stall_after_ns, dead_after_ns;
    _Atomic uint32_t q_after;
    _Atomic uint64_t q_for_ns;
    struct px_hot *hot;
    px_sched_t *sched;       /* scheduling "keyed": one scheduler instead of per-slot queues */
    uint32_t *kicks, nkicks; /* loop-only: slots to wake at the end of this loop iteration */
    uint32_t sched_kick;     /* loop-only: pushes into the keyed scheduler since its last wake */
    pthread_mutex_t done_mu;
    px_req_t *done_head, *done_tail; /* under done_mu */
    slot_t slots[];
};

static const char *const state_names[PX_WS_COUNT] = {"idle", "busy", "stalled", "dead"};

const char *px_worker_state_name(enum px_worker_state s)
{
    return state_names[s];
}

/* Within one loop iteration a waiting worker (or the keyed scheduler's) is woken every this
 * many pushes that found it waiting, before the loop's px_pool_kick. */
#define KICK_BATCH 64

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

static void add_relaxed(_Atomic uint64_t *f, uint64_t v)
{
    atomic_store_explicit(f, atomic_load_explicit(f, memory_order_relaxed) + v,
                          memory_order_relaxed);
}

static void set_current(slot_t *s, px_req_t *r)
{
    pthread_mutex_lock(&s->cur_mu);
    s->current = r;
    if (r) {
        size_t n = strnlen(r->handler->name, sizeof s->cur_op - 1);
        memcpy(s->cur_key, px_req_key(r), r->key_len);
        s->cur_key[r->key_len] = '\0';
        memcpy(s->cur_op, r->handler->name, n);
        s->cur_op[n] = '\0';
    } else {
        s->cur_key[0] = s->cur_op[0] = '\0';
    }
    pthread_mutex_unlock(&s->cur_mu);
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

/* Worker thread: the key's run of consecutive failures, and its quarantine. Only the worker
 * running the key's request writes these, so per key they change one request at a time. */
static void count_outcome(px_pool_t *p, px_req_t *r)
{
    uint32_t after = atomic_load_explicit(&p->q_after, memory_order_relaxed), n;

    if (!after)
        return;
    if (r->ok) {
        atomic_store_explicit(&r->kent->failures, 0, memory_order_relaxed);
        return;
    }
    n = atomic_fetch_add_explicit(&r->kent->failures, 1, memory_order_relaxed) + 1;
    if (n >= after) {
        atomic_store_explicit(&r->kent->failures, 0, memory_order_relaxed);
        atomic_store_explicit(&r->kent->parked_until_ns,
                              r->end_ns + atomic_load_explicit(&p->q_for_ns, memory_order_relaxed),
                              memory_order_release);
        r->parked = (int)n;
    }
}

/* Worker thread: runs one request. Returns 0, or -1 when this thread was abandoned while it ran
 * (the slot has a new thread; this one must touch nothing of the slot and exit). */
static int run_one(slot_t *s, uint64_t gen, px_req_t *r)
{
    px_result_t res = {0};
    int rc, stale, expected = PX_REQ_RUNNING;
    uint64_t run, waited;

    r->start_ns = px_now_ns();
    atomic_store_explicit(&s->heartbeat_ns, r->start_ns, memory_order_relaxed);
    if (r->kent && px_key_parked(r->kent, r->start_ns)) {
        /* Quarantined while it waited: not run; the loop answers it rejected/key_parked. */
        void *token = r->sched_key;
        r->skipped = 1;
        atomic_store_explicit(&r->state, PX_REQ_DONE, memory_order_release);
        post_done(s->pool, r);
        if (s->pool->sched)
            px_sched_done(s->pool->sched, token);
        return 0;
    }
    atomic_store_explicit(&r->state, PX_REQ_RUNNING, memory_order_relaxed);
    set_current(s, r);
    atomic_store_explicit(&s->busy_since_ns, r->start_ns, memory_order_relaxed);

    rc = px_handler_invoke(r->handler, r, &res, &r->attempts, &waited);

    r->end_ns = px_now_ns();
    r->ok = rc == 0;
    pthread_mutex_lock(&s->cur_mu);
    stale = atomic_load_explicit(&s->gen, memory_order_relaxed) != gen;
    if (!stale) {
        s->current = NULL;
        s->cur_key[0] = s->cur_op[0] = '\0';
    }
    pthread_mutex_unlock(&s->cur_mu);
    /* One CAS decides whose answer stands. Lost: the loop answered the request already (stall
     * replacement or forced stop) and may still read its fields, so touch none of them. */
    if (!atomic_compare_exchange_strong(&r->state, &expected, PX_REQ_DONE)) {
        json_decref(res.value);
        if (!stale)
            atomic_store_explicit(&s->busy_since_ns, 0, memory_order_relaxed);
        post_done(s->pool, r); /* the loop only frees it */
        return stale ? -1 : 0;
    }
    /* Waiting for a token or a slot is queueing, not running. */
    r->start_ns += waited;
    format_response(r, &res);
    json_decref(res.value);

    run = r->end_ns - r->start_ns;
    px_hist_record(&s->queue_us, (r->start_ns - r->recv_ns) / 1000);
    px_hist_record(&s->run_us, run / 1000);
    add_relaxed(&s->busy_ns, run);
    {
        uint64_t e = atomic_load_explicit(&s->ewma_run_ns, memory_order_relaxed);
        atomic_store_explicit(&s->ewma_run_ns, e ? (e * 7 + run) / 8 : run, memory_order_relaxed);
    }
    atomic_store_explicit(&s->busy_since_ns, 0, memory_order_relaxed);
    add_relaxed(&s->processed, 1);
    if (!r->ok)
        add_relaxed(&s->failed, 1);
    if (r->kent)
        count_outcome(s->pool, r);
    if (s->pool->hot)
        px_hot_time(s->pool->hot, r->route, px_req_key(r), r->key_len, run, r->end_ns);
    {
        /* Hand the answer back before the key may run again: its next request, on any worker,
         * is then answered after this one. r may be freed once posted; the token stays. */
        void *token = r->sched_key;
        post_done(s->pool, r);
        if (s->pool->sched)
            px_sched_done(s->pool->sched, token);
    }
    return 0;
}

/* Runs however the thread ends, pthread_exit from a handler included: a slot whose thread is
 * gone while the pool still serves is dead, and the loop must hear of it. */
static void on_thread_exit(void *arg)
{
    wthread_t *t = arg;
    slot_t *s = t->s;

    if (atomic_load(&s->gen) != t->gen) {
        /* Abandoned: the slot belongs to another thread now. The last thing this thread does
         * is say it has let go of the pool. */
        atomic_fetch_sub_explicit(&s->pool->strays, 1, memory_order_release);
        return;
    }
    atomic_store_explicit(&s->running, 0, memory_order_release);
    uv_async_send(&s->pool->async); /* the drain finished for this worker, or it died */
}

static void *worker_main(void *arg)
{
    wthread_t t = *(wthread_t *)arg;
    slot_t *s = t.s;
    px_pool_t *p = s->pool;
    char name[16];
    void *item;
    int rc;

    free(arg);
    snprintf(name, sizeof name, "px-worker-%u", s->id);
    pthread_setname_np(pthread_self(), name);
    pthread_cleanup_push(on_thread_exit, &t);
    for (;;) {
        uint64_t hb = atomic_load_explicit(&p->dead_after_ns, memory_order_relaxed) / 4;
        /* Wake at least every 100 ms (or a quarter of dead_after_ms) while idle, so the
         * heartbeat shows the thread is alive. */
        if (p->sched) {
            px_req_t *r = NULL;
            rc = px_sched_pop(p->sched, &r, hb < 100 * PX_MS ? hb : 100 * PX_MS);
            if (rc == 0)
                r->worker = s->id; /* keyed: whichever worker is free runs it */
            item = r;
        } else {
            rc = px_queue_pop(s->queue, &item, hb < 100 * PX_MS ? hb : 100 * PX_MS);
        }
        if (rc == -ETIMEDOUT) {
            atomic_store_explicit(&s->heartbeat_ns, px_now_ns(), memory_order_relaxed);
            continue;
        }
        if (rc == -EPIPE)
            break;
        if (run_one(s, t.gen, item))
            break;
    }
    pthread_cleanup_pop(1);
    return NULL;
}

static int start_thread(slot_t *s, uint64_t gen)
{
    wthread_t *t = malloc(sizeof *t);
    sigset_t all, old;
    int rc;

    if (!t)
        return ENOMEM;
    t->s = s;
    t->gen = gen;
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

/* Loop thread: swaps the whole list out under the lock; the caller works without it. */
static px_req_t *take_done(px_pool_t *p)
{
    px_req_t *list;

    pthread_mutex_lock(&p->done_mu);
    list = p->done_head;
    p->done_head = p->done_tail = NULL;
    pthread_mutex_unlock(&p->done_mu);
    return list;
}

void px_pool_reap(px_pool_t *p)
{
    px_req_t *list = take_done(p);

    if (list)
        p->cb(list, p->cb_arg);
}

/* Runs even when the list is empty: a worker's exit or death (on_thread_exit) wakes the loop
 * with nothing to hand back, and the drain and the supervisor must see it. */
static void on_async(uv_async_t *a)
{
    px_pool_t *p = a->data;

    p->cb(take_done(p), p->cb_arg);
}

int px_pool_new(px_pool_t **out, uv_loop_t *loop, uint32_t workers, uint32_t capacity, int keyed,
                px_pool_done_cb cb, void *arg)
{
    px_pool_t *p;
    uint32_t i;
    int rc = -ENOMEM;

    p = calloc(1, sizeof *p + workers * sizeof(slot_t));
    if (!p)
        return -ENOMEM;
    p->loop = loop;
    p->n = workers;
    p->cb = cb;
    p->cb_arg = arg;
    if (!(p->kicks = calloc(workers, sizeof *p->kicks))) {
        free(p);
        return -ENOMEM;
    }
    atomic_init(&p->stall_after_ns, 5000 * PX_MS);
    atomic_init(&p->dead_after_ns, 10000 * PX_MS);
    if (pthread_mutex_init(&p->done_mu, NULL))
        goto fail_mu;
    for (i = 0; i < workers; i++) {
        slot_t *s = &p->slots[i];
        s->pool = p;
        s->id = i;
        /* Keyed: a token queue per slot keeps the slot code uniform; work comes from sched. */
        if (!(s->queue = px_queue_new(keyed ? 1 : capacity)))
            goto fail_slots;
        pthread_mutex_init(&s->cur_mu, NULL);
    }
    if (keyed && !(p->sched = px_sched_new(workers * capacity))) {
        rc = -ENOMEM;
        goto fail_slots;
    }
    if ((rc = uv_async_init(loop, &p->async, on_async)))
        goto fail_slots;
    p->async.data = p;
    *out = p;
    return 0;

fail_slots:
    px_sched_free(p->sched);
    while (i-- > 0) {
        px_queue_free(p->slots[i].queue);
        pthread_mutex_destroy(&p->slots[i].cur_mu);
    }
    pthread_mutex_destroy(&p->done_mu);
fail_mu:
    free(p->kicks);
    free(p);
    return rc;
}

int px_pool_start(px_pool_t *p, char *err, size_t errlen)
{
    int rc = 0;

    for (uint32_t i = 0; i < p->n; i++) {
        slot_t *s = &p->slots[i];
        if ((rc = start_thread(s, 0))) {
            snprintf(err, errlen, "cannot start worker %u of %u: %s", i, p->n, strerror(rc));
            return -rc;
        }
        atomic_store(&s->started, 1);
    }
    return 0;
}

void px_pool_set_quarantine(px_pool_t *p, uint32_t after, uint64_t for_ns)
{
    atomic_store(&p->q_for_ns, for_ns);
    atomic_store(&p->q_after, after);
}

void px_pool_set_hot(px_pool_t *p, struct px_hot *hot)
{
    p->hot = hot;
}

void px_pool_set_limits(px_pool_t *p, uint64_t stall_after_ns, uint64_t dead_after_ns)
{
    atomic_store(&p->stall_after_ns, stall_after_ns);
    atomic_store(&p->dead_after_ns, dead_after_ns);
}

px_req_t *px_pool_replace(px_pool_t *p, uint32_t worker, int *rc)
{
    slot_t *s = &p->slots[worker];
    px_req_t *cur;
    int expected = PX_REQ_RUNNING;
    uint64_t gen;

    *rc = 0;
    pthread_mutex_lock(&s->cur_mu);
    cur = s->current;
    if (!cur || !atomic_compare_exchange_strong(&cur->state, &expected, PX_REQ_ABANDONED)) {
        pthread_mutex_unlock(&s->cur_mu);
        return NULL;
    }
    gen = atomic_load(&s->gen) + 1;
    atomic_store(&s->gen, gen);
    s->current = NULL;
    s->cur_key[0] = s->cur_op[0] = '\0';
    atomic_fetch_add(&p->strays, 1);
    pthread_mutex_unlock(&s->cur_mu);

    /* From here the old thread touches only its request and the completion list; it lost the
     * CAS, so it will not release the key: do it for it, the partition moves on. */
    if (p->sched)
        px_sched_done(p->sched, cur->sched_key);
    pthread_detach(s->thread);
    atomic_store(&s->busy_since_ns, 0);
    add_relaxed(&s->replaced, 1);
    *rc = start_thread(s, gen);
    return cur;
}

uint32_t px_pool_size(const px_pool_t *p)
{
    return p->n;
}

int px_pool_submit(px_pool_t *p, px_req_t *r)
{
    slot_t *s;
    int rc;

    if (p->sched) {
        rc = px_sched_push(p->sched, r);
        if (rc == 0 && ++p->sched_kick % KICK_BATCH == 0)
            px_sched_wake(p->sched); /* as below: let workers start on a huge read */
        return rc;
    }
    s = &p->slots[r->worker];
    rc = px_queue_push_lazy(s->queue, r);
    if (rc == 1) {
        if (!s->kick)
            p->kicks[p->nkicks++] = s->id;
        /* One read can bring thousands of lines (libuv reads again while the socket has data,
         * before the loop gets to px_pool_kick): past a batch, wake the worker now, so it
         * drains its queue while the loop parses the rest instead of finding it full. */
        if (++s->kick % KICK_BATCH == 0)
            px_queue_wake(s->queue);
        rc = 0;
    }
    return rc;
}

void px_pool_kick(px_pool_t *p)
{
    if (p->sched_kick) {
        p->sched_kick = 0;
        px_sched_wake(p->sched);
    }
    for (uint32_t i = 0; i < p->nkicks; i++) {
        slot_t *s = &p->slots[p->kicks[i]];
        s->kick = 0;
        px_queue_wake(s->queue);
    }
    p->nkicks = 0;
}

void px_pool_close(px_pool_t *p)
{
    atomic_store(&p->closed, 1);
    if (p->sched)
        px_sched_close(p->sched);
    for (uint32_t i = 0; i < p->n; i++)
        px_queue_close(p->slots[i].queue);
}

size_t px_pool_take_all(px_pool_t *p, px_req_t ***out)
{
    size_t cap = 0, n = 0;
    px_req_t **v;

    for (uint32_t i = 0; i < p->n; i++)
        cap += px_queue_depth(p->slots[i].queue) + 1;
    if (p->sched)
        cap += px_sched_depth(p->sched);
    v = malloc((cap + p->n) * sizeof *v);
    if (!v) {
        *out = NULL;
        return 0;
    }
    if (p->sched)
        n += px_sched_take_all(p->sched, &v[n], cap - n);
    for (uint32_t i = 0; i < p->n; i++) {
        slot_t *s = &p->slots[i];
        px_req_t *cur;
        int expected = PX_REQ_RUNNING;

        n += px_queue_take_all(s->queue, (void **)&v[n], cap - n);
        pthread_mutex_lock(&s->cur_mu);
        cur = s->current;
        if (cur && atomic_compare_exchange_strong(&cur->state, &expected, PX_REQ_ABANDONED))
            v[n++] = cur;
        pthread_mutex_unlock(&s->cur_mu);
    }
    *out = v;
    return n;
}

uint32_t px_pool_live(px_pool_t *p)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < p->n; i++)
        n += (uint32_t)atomic_load_explicit(&p->slots[i].running, memory_order_acquire);
    return n;
}

int px_pool_thread_alive(px_pool_t *p, uint32_t worker)
{
    return atomic_load_explicit(&p->slots[worker].running, memory_order_acquire);
}

uint32_t px_pool_strays(px_pool_t *p)
{
    return atomic_load_explicit(&p->strays, memory_order_acquire);
}

static void on_async_closed(uv_handle_t *h)
{
    px_pool_t *p = h->data;

    for (uint32_t i = 0; i < p->n; i++) {
        px_queue_free(p->slots[i].queue);
        pthread_mutex_destroy(&p->slots[i].cur_mu);
    }
    px_sched_free(p->sched);
    pthread_mutex_destroy(&p->done_mu);
    free(p->kicks);
    free(p);
}

void px_pool_destroy(px_pool_t *p)
{
    for (uint32_t i = 0; i < p->n; i++) {
        slot_t *s = &p->slots[i];
        if (!s->started)
            continue;
        /* A thread still inside a handler after a forced stop is left behind: the process is
         * about to exit, and joining it would hang shutdown on user code. */
        if (atomic_load_explicit(&s->running, memory_order_acquire))
            pthread_detach(s->thread);
        else
            pthread_join(s->thread, NULL);
        s->started = 0;
    }
    uv_close((uv_handle_t *)&p->async, on_async_closed);
}

void px_pool_info(px_pool_t *p, uint32_t worker, px_worker_info_t *o)
{
    slot_t *s = &p->slots[worker];
    uint64_t now = px_now_ns(), hb, since;

    memset(o, 0, sizeof *o);
    o->id = worker;
    o->depth = p->sched ? 0 : px_queue_depth(s->queue);
    o->capacity = p->sched ? 0 : px_queue_capacity(s->queue); /* keyed: see px_pool_keyed */
    o->processed = atomic_load_explicit(&s->processed, memory_order_relaxed);
    o->failed = atomic_load_explicit(&s->failed, memory_order_relaxed);
    o->busy_ns = atomic_load_explicit(&s->busy_ns, memory_order_relaxed);
    o->replaced = atomic_load_explicit(&s->replaced, memory_order_relaxed);
    o->ewma_run_ns = atomic_load_explicit(&s->ewma_run_ns, memory_order_relaxed);
    hb = atomic_load_explicit(&s->heartbeat_ns, memory_order_relaxed);
    since = atomic_load_explicit(&s->busy_since_ns, memory_order_relaxed);
    o->heartbeat_age_ns = now > hb ? now - hb : 0;
    o->busy_for_ns = since && now > since ? now - since : 0;
    if (since)
        o->state = o->busy_for_ns > atomic_load(&p->stall_after_ns) ? PX_WS_STALLED : PX_WS_BUSY;
    else
        o->state = o->heartbeat_age_ns > atomic_load(&p->dead_after_ns) ? PX_WS_DEAD : PX_WS_IDLE;
    /* A thread gone while the pool still serves is dead; after a drain it is just done. */
    if (atomic_load(&s->started) && !atomic_load_explicit(&s->running, memory_order_acquire))
        o->state = atomic_load(&p->closed) ? PX_WS_IDLE : PX_WS_DEAD;
    pthread_mutex_lock(&s->cur_mu);
    memcpy(o->current_key, s->cur_key, sizeof o->current_key);
    memcpy(o->current_op, s->cur_op, sizeof o->current_op);
    pthread_mutex_unlock(&s->cur_mu);
}

void px_pool_hists(px_pool_t *p, uint32_t worker, px_hist_snap_t *queue, px_hist_snap_t *run)
{
    px_hist_merge(queue, &p->slots[worker].queue_us);
    px_hist_merge(run, &p->slots[worker].run_us);
}

uint64_t px_pool_retry_after_ms(px_pool_t *p, uint32_t worker)
{
    slot_t *s = &p->slots[worker];
    uint64_t ewma = atomic_load_explicit(&s->ewma_run_ns, memory_order_relaxed);
    uint64_t since = atomic_load_explicit(&s->busy_since_ns, memory_order_relaxed);
    uint64_t now = px_now_ns(), running = since && now > since ? now - since : 0;
    uint64_t depth = px_queue_depth(s->queue), ns;

    if (p->sched) /* keyed: the whole backlog, shared by every worker */
        depth = (px_sched_depth(p->sched) + p->n - 1) / p->n;

    /* Queued requests at the recent service time, plus what is left of the running one. With
     * no history yet, assume each takes as long as the running one has so far (a lower bound). */
    if (ewma)
        ns = depth * ewma + (ewma > running ? ewma - running : 0);
    else
        ns = depth * running;
    return ns / PX_MS > 0 ? ns / PX_MS : 1;
}

px_req_t *px_pool_remove_if(px_pool_t *p, int (*match)(px_req_t *r, void *arg), void *arg)
{
    if (p->sched)
        return px_sched_remove_if(p->sched, match, arg);
    for (uint32_t i = 0; i < p->n; i++) {
        px_req_t *r = px_queue_remove_if(p->slots[i].queue, (int (*)(void *, void *))match, arg);
        if (r)
            return r;
    }
    return NULL;
}

int px_pool_running_match(px_pool_t *p, int (*match)(px_req_t *r, void *arg), void *arg)
{
    int found = 0;

    for (uint32_t i = 0; i < p->n && !found; i++) {
        slot_t *s = &p->slots[i];
        pthread_mutex_lock(&s->cur_mu);
        found = s->current && match(s->current, arg);
        pthread_mutex_unlock(&s->cur_mu);
    }
    return found;
}

int px_pool_keyed(px_pool_t *p, uint32_t *depth, uint32_t *capacity, uint32_t *keys)
{
    if (!p->sched)
        return 0;
    *depth = px_sched_depth(p->sched);
    *capacity = px_sched_capacity(p->sched);
    *keys = px_sched_keys(p->sched);
    return 1;
}

void px_pool_abandon(px_pool_t *p)
{
    for (uint32_t i = 0; i < p->n; i++) {
        slot_t *s = &p->slots[i];
        if (atomic_load(&s->started)) {
            pthread_detach(s->thread);
            atomic_store(&s->started, 0);
        }
    }
}
