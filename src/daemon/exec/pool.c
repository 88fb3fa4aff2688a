/* The worker pool seen from the loop: creating and starting the slots, submitting requests and
 * waking their workers once per loop iteration, reaping the completion list, closing and
 * destroying, and the read-only introspection that metrics use. The thread body is worker.c;
 * cancel, replace and take_all are reclaim.c; the layout they share is pool_int.h. */
#include "daemon/exec/pool_int.h"

#include "common/clock.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const state_names[PX_WS_COUNT] = {"idle", "busy", "stalled", "dead"};

const char *px_worker_state_name(enum px_worker_state s)
{
    return state_names[s];
}

/* Within one loop iteration a waiting worker (or the keyed scheduler's) is woken every this
 * many pushes that found it waiting, before the loop's px_pool_kick. */
#define KICK_BATCH 64

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

px_req_t *px_pool_take_done(px_pool_t *p)
{
    return take_done(p);
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

    p = calloc(1, sizeof *p + workers * sizeof(px_slot_t));
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
        px_slot_t *s = &p->slots[i];
        s->pool = p;
        s->id = i;
        /* Keyed: a token queue per slot keeps the slot code uniform; work comes from sched. */
        if (!(s->queue = px_queue_new(keyed ? 1 : capacity)))
            goto fail_slots;
        pthread_mutex_init(&s->cur_mu, NULL);
    }
    if (keyed && (uint64_t)workers * capacity > UINT32_MAX) {
        rc = -EOVERFLOW; /* px_config_finish says so first, with the numbers */
        goto fail_slots;
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
        px_slot_t *s = &p->slots[i];
        if ((rc = px_worker_start(s, 0))) {
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

uint32_t px_pool_size(const px_pool_t *p)
{
    return p->n;
}

int px_pool_submit(px_pool_t *p, px_req_t *r)
{
    px_slot_t *s;
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
        px_slot_t *s = &p->slots[p->kicks[i]];
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

uint32_t px_pool_live(px_pool_t *p)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < p->n; i++)
        n += (uint32_t)atomic_load_explicit(&p->slots[i].running, memory_order_acquire);
    return n;
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

void px_pool_stop(px_pool_t *p)
{
    px_pool_close(p);
    for (uint32_t i = 0; i < p->n; i++) {
        px_slot_t *s = &p->slots[i];
        if (atomic_load(&s->started)) {
            pthread_join(s->thread, NULL);
            atomic_store(&s->started, 0);
        }
    }
}

void px_pool_destroy(px_pool_t *p)
{
    for (uint32_t i = 0; i < p->n; i++) {
        px_slot_t *s = &p->slots[i];
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
    px_slot_t *s = &p->slots[worker];
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
    o->busy_since_ns = since;
    if (since)
        o->state = o->busy_for_ns > atomic_load(&p->stall_after_ns) ? PX_WS_STALLED : PX_WS_BUSY;
    else if (atomic_load_explicit(&s->waiting, memory_order_relaxed))
        o->state = PX_WS_BUSY; /* waiting for a slot or a token is queue time, not a stall */
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
    px_slot_t *s = &p->slots[worker];
    uint64_t ewma = atomic_load_explicit(&s->ewma_run_ns, memory_order_relaxed);
    uint64_t since = atomic_load_explicit(&s->busy_since_ns, memory_order_relaxed);
    uint64_t now = px_now_ns(), running = since && now > since ? now - since : 0;
    uint64_t depth = px_queue_depth(s->queue), ns;

    if (p->sched) /* keyed: the whole backlog, shared by every worker */
        depth = (px_sched_depth(p->sched) + p->n - 1) / p->n;

    /* Queued requests at the recent service time, plus what is left of the running one. A
     * running request already older than that time is the better guess for each queued one
     * (the history is of other work), so the estimate never falls below depth x its age. */
    if (ewma < running)
        ewma = running;
    ns = depth * ewma + (ewma > running ? ewma - running : 0);
    return ns / PX_MS > 0 ? ns / PX_MS : 1;
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

static int is_req(void *item, void *arg)
{
    return item == arg;
}

int px_pool_remove_queued(px_pool_t *p, px_req_t *r)
{
    if (p->sched)
        return px_sched_remove(p->sched, r);
    return px_queue_remove_if(p->slots[r->worker].queue, is_req, r) != NULL;
}

void px_pool_abandon(px_pool_t *p)
{
    for (uint32_t i = 0; i < p->n; i++) {
        px_slot_t *s = &p->slots[i];
        if (atomic_load(&s->started)) {
            pthread_detach(s->thread);
            atomic_store(&s->started, 0);
        }
    }
}
