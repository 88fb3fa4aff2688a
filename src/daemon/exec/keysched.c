/* Keyed scheduler: a hash of per-key FIFOs (requests linked through req->next while queued)
 * and a FIFO ready list of keys. A key is in the ready list exactly when it has queued requests
 * and none running, so taking from the ready list can never run two requests of one key. */
#include "daemon/exec/keysched.h"

#include "common/route.h"

#include "common/clock.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct kq {
    struct kq *hnext, *rnext;
    px_req_t *head, *tail;
    uint32_t depth;
    int running, ready;
    uint64_t hash;
    uint16_t len;
    char key[];
} kq_t;

struct px_sched {
    pthread_mutex_t mu;
    pthread_cond_t ready_cv;
    /* All below under mu. */
    kq_t **buckets;
    size_t nbuckets, nkeys;
    kq_t *ready_head, *ready_tail;
    uint32_t cap, total;
    int waiting, closed;
    uint32_t unsignalled;         /* keys made ready by pushes whose wake-up px_sched_wake owes */
    _Atomic uint32_t depth, keys; /* mirrors for lock-free readers */
};

px_sched_t *px_sched_new(uint32_t capacity)
{
    px_sched_t *s = calloc(1, sizeof *s);
    pthread_condattr_t ca;

    if (!s)
        return NULL;
    s->cap = capacity;
    s->nbuckets = 1024;
    if (!(s->buckets = calloc(s->nbuckets, sizeof *s->buckets))) {
        free(s);
        return NULL;
    }
    pthread_mutex_init(&s->mu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->ready_cv, &ca);
    pthread_condattr_destroy(&ca);
    return s;
}

void px_sched_free(px_sched_t *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->nbuckets; i++)
        while (s->buckets[i]) {
            kq_t *k = s->buckets[i];
            s->buckets[i] = k->hnext;
            free(k);
        }
    free(s->buckets);
    pthread_cond_destroy(&s->ready_cv);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

static kq_t **slot_of(px_sched_t *s, uint64_t h, const char *key, size_t len)
{
    kq_t **p;

    for (p = &s->buckets[h & (s->nbuckets - 1)]; *p; p = &(*p)->hnext)
        if ((*p)->hash == h && (*p)->len == len && memcmp((*p)->key, key, len) == 0)
            break;
    return p;
}

static void grow(px_sched_t *s)
{
    size_t n = s->nbuckets * 2;
    kq_t **b = calloc(n, sizeof *b);

    if (!b)
        return;
    for (size_t i = 0; i < s->nbuckets; i++)
        while (s->buckets[i]) {
            kq_t *k = s->buckets[i];
            s->buckets[i] = k->hnext;
            k->hnext = b[k->hash & (n - 1)];
            b[k->hash & (n - 1)] = k;
        }
    free(s->buckets);
    s->buckets = b;
    s->nbuckets = n;
}

static void make_ready(px_sched_t *s, kq_t *k, int wake)
{
    k->ready = 1;
    k->rnext = NULL;
    if (s->ready_tail)
        s->ready_tail->rnext = k;
    else
        s->ready_head = k;
    s->ready_tail = k;
    if (!wake)
        s->unsignalled++;
    else if (s->waiting)
        pthread_cond_signal(&s->ready_cv);
}

void px_sched_wake(px_sched_t *s)
{
    pthread_mutex_lock(&s->mu);
    for (; s->unsignalled > 0 && s->waiting > 0; s->unsignalled--)
        pthread_cond_signal(&s->ready_cv);
    s->unsignalled = 0;
    pthread_mutex_unlock(&s->mu);
}

/* Drops an idle key: no queued requests, none running. */
static void maybe_forget(px_sched_t *s, kq_t *k)
{
    kq_t **p;

    if (k->depth || k->running || k->ready)
        return;
    p = slot_of(s, k->hash, k->key, k->len);
    *p = k->hnext;
    s->nkeys--;
    atomic_store_explicit(&s->keys, (uint32_t)s->nkeys, memory_order_relaxed);
    free(k);
}

int px_sched_push(px_sched_t *s, px_req_t *r)
{
    uint64_t h = px_route_hash(px_req_key(r), r->key_len);
    kq_t **p, *k;
    int rc = 0;

    pthread_mutex_lock(&s->mu);
    if (s->closed) {
        rc = -EPIPE;
        goto out;
    }
    if (s->total >= s->cap) {
        rc = -EAGAIN;
        goto out;
    }
    p = slot_of(s, h, px_req_key(r), r->key_len);
    if (!(k = *p)) {
        if (!(k = calloc(1, sizeof *k + r->key_len))) {
            rc = -ENOMEM;
            goto out;
        }
        k->hash = h;
        k->len = r->key_len;
        memcpy(k->key, px_req_key(r), r->key_len);
        if (s->nkeys >= s->nbuckets) {
            grow(s);
            p = slot_of(s, h, k->key, k->len);
        }
        k->hnext = *p;
        *p = k;
        s->nkeys++;
        atomic_store_explicit(&s->keys, (uint32_t)s->nkeys, memory_order_relaxed);
    }
    r->next = NULL;
    if (k->tail)
        k->tail->next = r;
    else
        k->head = r;
    k->tail = r;
    k->depth++;
    s->total++;
    atomic_store_explicit(&s->depth, s->total, memory_order_relaxed);
    if (!k->running && !k->ready)
        make_ready(s, k, 0);
out:
    pthread_mutex_unlock(&s->mu);
    return rc;
}

int px_sched_pop(px_sched_t *s, _Atomic(void *) *hand, uint64_t timeout_ns)
{
    struct timespec until;
    kq_t *k;
    int rc = 0;

    until = px_deadline_after(CLOCK_MONOTONIC, timeout_ns);
    pthread_mutex_lock(&s->mu);
    while (!s->ready_head && !(s->closed && s->total == 0) && rc == 0) {
        s->waiting++;
        rc = pthread_cond_timedwait(&s->ready_cv, &s->mu, &until);
        s->waiting--;
    }
    if ((k = s->ready_head)) {
        s->ready_head = k->rnext;
        if (!s->ready_head)
            s->ready_tail = NULL;
        k->ready = 0;
        k->running = 1;
        k->head->sched_key = k;
        atomic_store_explicit(hand, k->head, memory_order_release);
        k->head = k->head->next;
        if (!k->head)
            k->tail = NULL;
        k->depth--;
        s->total--;
        atomic_store_explicit(&s->depth, s->total, memory_order_relaxed);
        rc = 0;
    } else {
        /* Closed: every key with work is ready or running, so nothing ready and nothing queued
         * means the drain is done for this worker. */
        rc = s->closed && s->total == 0 ? -EPIPE : -ETIMEDOUT;
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

void px_sched_done(px_sched_t *s, void *token)
{
    kq_t *k = token; /* kept alive: a running key is never forgotten */

    pthread_mutex_lock(&s->mu);
    if (k) {
        k->running = 0;
        if (k->depth)
            make_ready(s, k, 1); /* to the tail: keys take turns */
        else
            maybe_forget(s, k);
    }
    if (s->closed && s->waiting)
        pthread_cond_broadcast(&s->ready_cv); /* a drain may be complete now */
    pthread_mutex_unlock(&s->mu);
}

/* Under mu: unlinks one request from its key's FIFO (prev is its predecessor or NULL). */
static void unlink_req(px_sched_t *s, kq_t *k, px_req_t *prev, px_req_t *r)
{
    if (prev)
        prev->next = r->next;
    else
        k->head = r->next;
    if (k->tail == r)
        k->tail = prev;
    k->depth--;
    s->total--;
    atomic_store_explicit(&s->depth, s->total, memory_order_relaxed);
    if (!k->depth && k->ready) {
        /* Take it off the ready list. */
        kq_t **q = &s->ready_head, *last = NULL;
        while (*q && *q != k) {
            last = *q;
            q = &(*q)->rnext;
        }
        if (*q) {
            *q = k->rnext;
            if (s->ready_tail == k)
                s->ready_tail = last;
        }
        k->ready = 0;
    }
}

size_t px_sched_take_all(px_sched_t *s, _Atomic(void *) *const *hands, size_t nhands,
                         px_req_t **out, size_t max)
{
    size_t n = 0;
    void *h;

    pthread_mutex_lock(&s->mu);
    for (size_t i = 0; i < nhands && n < max; i++)
        if ((h = atomic_exchange_explicit(hands[i], NULL, memory_order_acq_rel)))
            out[n++] = h;
    for (size_t i = 0; i < s->nbuckets; i++)
        for (kq_t *k = s->buckets[i]; k; k = k->hnext)
            while (k->head && n < max) {
                px_req_t *r = k->head;
                unlink_req(s, k, NULL, r);
                out[n++] = r;
            }
    pthread_mutex_unlock(&s->mu);
    return n;
}

px_req_t *px_sched_find(px_sched_t *s, int (*match)(px_req_t *r, void *arg), void *arg)
{
    px_req_t *found = NULL;

    pthread_mutex_lock(&s->mu);
    for (size_t i = 0; i < s->nbuckets && !found; i++)
        for (kq_t *k = s->buckets[i]; k && !found; k = k->hnext)
            for (px_req_t *r = k->head; r && !found; r = r->next)
                if (match(r, arg))
                    found = r;
    pthread_mutex_unlock(&s->mu);
    return found;
}

int px_sched_remove(px_sched_t *s, px_req_t *r)
{
    uint64_t h = px_route_hash(px_req_key(r), r->key_len);
    px_req_t *prev = NULL, *q;
    kq_t *k;
    int found = 0;

    pthread_mutex_lock(&s->mu);
    if ((k = *slot_of(s, h, px_req_key(r), r->key_len))) {
        for (q = k->head; q && q != r; q = q->next)
            prev = q;
        if (q) {
            unlink_req(s, k, prev, r);
            maybe_forget(s, k);
            found = 1;
        }
    }
    pthread_mutex_unlock(&s->mu);
    return found;
}

void px_sched_close(px_sched_t *s)
{
    pthread_mutex_lock(&s->mu);
    s->closed = 1;
    pthread_cond_broadcast(&s->ready_cv);
    pthread_mutex_unlock(&s->mu);
}

uint32_t px_sched_depth(const px_sched_t *s)
{
    return atomic_load_explicit(&((px_sched_t *)s)->depth, memory_order_relaxed);
}

uint32_t px_sched_capacity(const px_sched_t *s)
{
    return s->cap;
}

uint32_t px_sched_keys(const px_sched_t *s)
{
    return atomic_load_explicit(&((px_sched_t *)s)->keys, memory_order_relaxed);
}
