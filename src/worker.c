/* Worker threads and the completion hand-off.
 *
 * Ownership: a worker slot's queue is shared with the loop under the queue's own lock; the
 * slot's counters are written by its thread only (atomics, read by anyone); the current key is
 * under the slot's cur_mu. The completion list is under done_mu. No thread ever holds two of
 * these locks at once, so there is no lock order to get wrong. */
#include "worker.h"

#include "clock.h"
#include "handler.h"
#include "log.h"
#include "protocol.h"
#include "queue.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct slot {
    px_pool_t *pool;
    uint32_t id;
    px_queue_t *queue;
    pthread_t thread;
    _Atomic int started; /* set by the loop, read by px_pool_info anywhere */
    _Atomic int running;
    _Atomic uint64_t heartbeat_ns, busy_since_ns; /* busy_since_ns 0 while idle */
    _Atomic uint64_t processed, failed, busy_ns;
    pthread_mutex_t cur_mu;
    px_req_t *current; /* under cur_mu; the loop keeps it alive until it comes back */
    char cur_key[PX_KEY_MAX + 1], cur_op[64]; /* under cur_mu, for readers on other threads */
} slot_t;

struct px_pool {
    uv_loop_t *loop;
    uv_async_t async;
    px_pool_done_cb cb;
    void *cb_arg;
    uint32_t n;
    pthread_mutex_t done_mu;
    px_req_t *done_head, *done_tail; /* under done_mu */
    slot_t slots[];
};

static const char *const state_names[PX_WS_COUNT] = {"idle", "busy", "stalled", "dead"};

const char *px_worker_state_name(enum px_worker_state s)
{
    return state_names[s];
}

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

/* Worker thread: runs one request and builds its response line. */
static void run_one(slot_t *s, px_req_t *r)
{
    px_result_t res = {0};
    px_resp_t resp = {0};
    int rc, expected = PX_REQ_RUNNING;

    pthread_mutex_lock(&s->cur_mu);
    s->current = r;
    memcpy(s->cur_key, px_req_key(r), r->key_len);
    s->cur_key[r->key_len] = '\0';
    snprintf(s->cur_op, sizeof s->cur_op, "%s", r->handler->name);
    pthread_mutex_unlock(&s->cur_mu);

    atomic_store_explicit(&r->state, PX_REQ_RUNNING, memory_order_relaxed);
    r->start_ns = px_now_ns();
    atomic_store_explicit(&s->busy_since_ns, r->start_ns, memory_order_relaxed);
    rc = r->handler->run(r->handler, r, &res);
    r->end_ns = px_now_ns();
    r->ok = rc == 0;

    resp.id = px_req_id(r);
    resp.id_len = r->id_len;
    resp.status = r->ok ? "ok" : "failed";
    resp.worker = (int)r->worker;
    resp.result = res.value;
    resp.code = res.code ? res.code : "handler_error";
    resp.message = res.message;
    resp.queue_ms = ms_between(r->recv_ns, r->start_ns);
    resp.run_ms = ms_between(r->start_ns, r->end_ns);
    if (px_resp_format(&r->out, &resp)) {
        r->out.len = 0;
        r->ok = 0;
        resp.status = "failed";
        resp.result = NULL;
        resp.code = "handler_error";
        resp.message = "out of memory while building the response";
        px_resp_format(&r->out, &resp);
    }
    json_decref(res.value);

    pthread_mutex_lock(&s->cur_mu);
    s->current = NULL;
    s->cur_key[0] = '\0';
    s->cur_op[0] = '\0';
    pthread_mutex_unlock(&s->cur_mu);
    atomic_store_explicit(&s->busy_ns,
                          atomic_load_explicit(&s->busy_ns, memory_order_relaxed) +
                              (r->end_ns - r->start_ns),
                          memory_order_relaxed);
    atomic_store_explicit(&s->busy_since_ns, 0, memory_order_relaxed);

    /* The loop may have answered this request already (forced stop): then our result is void. */
    if (atomic_compare_exchange_strong(&r->state, &expected, PX_REQ_DONE)) {
        atomic_fetch_add_explicit(&s->processed, 1, memory_order_relaxed);
        if (!r->ok)
            atomic_fetch_add_explicit(&s->failed, 1, memory_order_relaxed);
    }
    post_done(s->pool, r);
}

static void *worker_main(void *arg)
{
    slot_t *s = arg;
    char name[16];
    void *item;
    int rc;

    snprintf(name, sizeof name, "px-worker-%u", s->id);
    pthread_setname_np(pthread_self(), name);
    for (;;) {
        /* Wake at least every 100 ms while idle so the heartbeat shows the thread is alive. */
        rc = px_queue_pop(s->queue, &item, 100 * PX_MS);
        atomic_store_explicit(&s->heartbeat_ns, px_now_ns(), memory_order_relaxed);
        if (rc == -ETIMEDOUT)
            continue;
        if (rc == -EPIPE)
            break;
        run_one(s, item);
    }
    atomic_store_explicit(&s->running, 0, memory_order_release);
    uv_async_send(&s->pool->async); /* lets the loop notice the drain finished */
    return NULL;
}

/* Loop thread: swaps the whole list out under the lock, then works without it. */
static void on_async(uv_async_t *a)
{
    px_pool_t *p = a->data;
    px_req_t *list;

    pthread_mutex_lock(&p->done_mu);
    list = p->done_head;
    p->done_head = p->done_tail = NULL;
    pthread_mutex_unlock(&p->done_mu);
    p->cb(list, p->cb_arg);
}

int px_pool_new(px_pool_t **out, uv_loop_t *loop, uint32_t workers, uint32_t capacity,
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
    if (pthread_mutex_init(&p->done_mu, NULL))
        goto fail_mu;
    for (i = 0; i < workers; i++) {
        slot_t *s = &p->slots[i];
        s->pool = p;
        s->id = i;
        if (!(s->queue = px_queue_new(capacity)))
            goto fail_slots;
        pthread_mutex_init(&s->cur_mu, NULL);
    }
    if ((rc = uv_async_init(loop, &p->async, on_async)))
        goto fail_slots;
    p->async.data = p;
    *out = p;
    return 0;

fail_slots:
    while (i-- > 0) {
        px_queue_free(p->slots[i].queue);
        pthread_mutex_destroy(&p->slots[i].cur_mu);
    }
    pthread_mutex_destroy(&p->done_mu);
fail_mu:
    free(p);
    return rc;
}

int px_pool_start(px_pool_t *p, char *err, size_t errlen)
{
    sigset_t all, old;
    uint64_t now = px_now_ns();
    int rc = 0;

    /* Workers inherit a full mask: signals go to the loop thread, which handles them. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    for (uint32_t i = 0; i < p->n; i++) {
        slot_t *s = &p->slots[i];
        atomic_store(&s->heartbeat_ns, now);
        atomic_store(&s->running, 1);
        rc = pthread_create(&s->thread, NULL, worker_main, s);
        if (rc) {
            atomic_store(&s->running, 0);
            snprintf(err, errlen, "cannot start worker %u of %u: %s", i, p->n, strerror(rc));
            break;
        }
        s->started = 1;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return rc ? -rc : 0;
}

uint32_t px_pool_size(const px_pool_t *p)
{
    return p->n;
}

int px_pool_submit(px_pool_t *p, px_req_t *r)
{
    return px_queue_push(p->slots[r->worker].queue, r);
}

void px_pool_close(px_pool_t *p)
{
    for (uint32_t i = 0; i < p->n; i++)
        px_queue_close(p->slots[i].queue);
}

size_t px_pool_take_all(px_pool_t *p, px_req_t ***out)
{
    size_t cap = 0, n = 0;
    px_req_t **v;

    for (uint32_t i = 0; i < p->n; i++)
        cap += px_queue_depth(p->slots[i].queue) + 1;
    v = malloc((cap + p->n) * sizeof *v);
    if (!v) {
        *out = NULL;
        return 0;
    }
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

static void on_async_closed(uv_handle_t *h)
{
    px_pool_t *p = h->data;

    for (uint32_t i = 0; i < p->n; i++) {
        px_queue_free(p->slots[i].queue);
        pthread_mutex_destroy(&p->slots[i].cur_mu);
    }
    pthread_mutex_destroy(&p->done_mu);
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
    o->depth = px_queue_depth(s->queue);
    o->capacity = px_queue_capacity(s->queue);
    o->processed = atomic_load_explicit(&s->processed, memory_order_relaxed);
    o->failed = atomic_load_explicit(&s->failed, memory_order_relaxed);
    o->busy_ns = atomic_load_explicit(&s->busy_ns, memory_order_relaxed);
    hb = atomic_load_explicit(&s->heartbeat_ns, memory_order_relaxed);
    since = atomic_load_explicit(&s->busy_since_ns, memory_order_relaxed);
    o->heartbeat_age_ns = now > hb ? now - hb : 0;
    o->busy_for_ns = since && now > since ? now - since : 0;
    o->state = since ? PX_WS_BUSY : PX_WS_IDLE;
    if (!atomic_load_explicit(&s->running, memory_order_acquire) && s->started)
        o->state = PX_WS_DEAD;
    pthread_mutex_lock(&s->cur_mu);
    memcpy(o->current_key, s->cur_key, sizeof o->current_key);
    memcpy(o->current_op, s->cur_op, sizeof o->current_op);
    pthread_mutex_unlock(&s->cur_mu);
}
