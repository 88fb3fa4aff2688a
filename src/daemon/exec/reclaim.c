/* The loop's hands on work it already gave the workers: a cancel marks a queued request, a stall
 * replacement abandons a stuck run, a forced stop takes everything back. Each decision is one
 * compare-and-swap on a request's state, made under the lock that guards where the request is
 * (its queue's, or its slot's cur_mu for one in hand or running), so the worker and the loop
 * never both act on it. */
#include "daemon/exec/pool_int.h"

#include "common/clock.h"

#include <stdlib.h>

px_req_t *px_pool_replace(px_pool_t *p, uint32_t worker, uint64_t observed_since)
{
    px_slot_t *s = &p->slots[worker];
    uint64_t since, gen;
    px_req_t *cur;
    int expected = PX_REQ_RUNNING;

    pthread_mutex_lock(&s->cur_mu);
    /* Re-checked here, where it is acted on: the same run the supervisor saw (its start time),
     * still running and still over the limit. busy_since_ns changes only under cur_mu. */
    cur = s->current;
    since = atomic_load_explicit(&s->busy_since_ns, memory_order_relaxed);
    if (!cur || !since || since != observed_since ||
        px_now_ns() - since < atomic_load(&p->stall_after_ns) ||
        !atomic_compare_exchange_strong(&cur->state, &expected, PX_REQ_ABANDONED)) {
        pthread_mutex_unlock(&s->cur_mu);
        return NULL;
    }
    gen = atomic_load(&s->gen) + 1;
    atomic_store(&s->gen, gen);
    s->current = NULL;
    s->cur_key[0] = s->cur_op[0] = '\0';
    atomic_store(&s->busy_since_ns, 0);
    atomic_store(&s->waiting, 0);
    atomic_fetch_add(&p->strays, 1);
    pthread_mutex_unlock(&s->cur_mu);

    /* From here the old thread touches only its request and the completion list; it lost the
     * CAS, so it will not release the key: px_pool_respawn does, once the loop has answered. */
    pthread_detach(s->thread);
    px_add_relaxed(&s->replaced, 1);
    return cur;
}

int px_pool_respawn(px_pool_t *p, uint32_t worker, px_req_t *abandoned)
{
    px_slot_t *s = &p->slots[worker];

    if (p->sched)
        px_sched_done(p->sched, abandoned->sched_key); /* the key may run again */
    return px_worker_start(s, atomic_load(&s->gen));
}

/* Under the slot's cur_mu: its running request, abandoned (it comes back through the completion
 * list: the thread that runs it posts it, or answers it if it ends inside the handler). */
static void take_current(px_slot_t *s, px_taken_t *v, size_t *n)
{
    px_req_t *cur = s->current;
    int expected = PX_REQ_RUNNING;

    if (cur && atomic_compare_exchange_strong(&cur->state, &expected, PX_REQ_ABANDONED))
        v[(*n)++] = (px_taken_t){.r = cur, .returns = 1};
}

static void owned(px_taken_t *v, size_t from, size_t to, px_req_t **reqs)
{
    for (size_t i = from; i < to; i++)
        v[i] = (px_taken_t){.r = reqs[i - from], .returns = 0};
}

size_t px_pool_take_all(px_pool_t *p, px_taken_t **out)
{
    size_t cap = p->n * 2, n = 0, got;
    px_req_t **reqs;
    px_taken_t *v;

    /* Only the loop pushes, and it is here: the queues can only shrink from now on. */
    for (uint32_t i = 0; i < p->n; i++)
        cap += px_queue_depth(p->slots[i].queue);
    if (p->sched)
        cap += px_sched_depth(p->sched);
    v = malloc(cap * sizeof *v);
    reqs = malloc(cap * sizeof *reqs);
    if (!v || !reqs) {
        free(v);
        free(reqs);
        *out = NULL;
        return 0;
    }
    if (p->sched) {
        /* Keyed: every slot's lock is held while the hands and the shared backlog are taken, so
         * no worker can claim what it popped in between. Per key: running, in hand, queued. */
        _Atomic(void *) **hands = malloc(p->n * sizeof *hands);
        if (!hands) {
            free(v);
            free(reqs);
            *out = NULL;
            return 0;
        }
        for (uint32_t i = 0; i < p->n; i++) {
            pthread_mutex_lock(&p->slots[i].cur_mu);
            take_current(&p->slots[i], v, &n);
            hands[i] = &p->slots[i].hand;
        }
        got = px_sched_take_all(p->sched, (_Atomic(void *) *const *)hands, p->n, reqs, cap - n);
        owned(v, n, n + got, reqs);
        n += got;
        for (uint32_t i = p->n; i-- > 0;)
            pthread_mutex_unlock(&p->slots[i].cur_mu);
        free(hands);
    } else {
        for (uint32_t i = 0; i < p->n; i++) {
            px_slot_t *s = &p->slots[i];
            pthread_mutex_lock(&s->cur_mu);
            take_current(s, v, &n);
            got = px_queue_take_hand(s->queue, &s->hand, (void **)reqs, cap - n);
            owned(v, n, n + got, reqs);
            n += got;
            pthread_mutex_unlock(&s->cur_mu);
        }
    }
    free(reqs);
    *out = v;
    return n;
}

struct mark {
    int (*match)(px_req_t *r, void *arg);
    void *arg;
    const char *why;
    int marked;
};

/* Under the queue's lock (or cur_mu, for a hand): marks a matching queued request cancelled;
 * returns 0 so the scan goes on. */
static int mark_one(void *item, void *arg)
{
    struct mark *m = arg;
    px_req_t *r = item;
    int expected = PX_REQ_QUEUED;

    if (m->match(r, m->arg)) {
        r->cancel_msg = m->why;
        if (atomic_compare_exchange_strong(&r->state, &expected, PX_REQ_CANCELLED))
            m->marked++;
    }
    return 0;
}

/* Under cur_mu: the hand (popped, not claimed yet) and the running request. */
static int mark_slot(px_slot_t *s, struct mark *m)
{
    void *h;
    int running;

    pthread_mutex_lock(&s->cur_mu);
    if ((h = atomic_load_explicit(&s->hand, memory_order_acquire)))
        mark_one(h, m);
    running = s->current && m->match(s->current, m->arg);
    pthread_mutex_unlock(&s->cur_mu);
    return running;
}

int px_pool_cancel(px_pool_t *p, int (*match)(px_req_t *r, void *arg), void *arg, const char *why,
                   int *running)
{
    struct mark m = {.match = match, .arg = arg, .why = why};

    /* The queue before the hand and the hand before the current: a request moving along
     * meanwhile is met once more further on, never missed. */
    *running = 0;
    if (p->sched)
        px_sched_find(p->sched, (int (*)(px_req_t *, void *))mark_one, &m);
    for (uint32_t i = 0; i < p->n; i++) {
        if (!p->sched)
            px_queue_find(p->slots[i].queue, mark_one, &m);
        *running |= mark_slot(&p->slots[i], &m);
    }
    return m.marked;
}
