/* The registry, and the policies every handler type shares: deadline, rate limit, concurrency
 * limit and retries. They run inside the worker, around the handler, so a retried request still
 * holds its key's place in line and per-key order cannot break. */
#include "daemon/core/handler.h"

#include "common/clock.h"
#include "common/protocol.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct px_registry {
    _Atomic int refs;
    px_handler_t *items; /* sorted by name */
    size_t len;
};

px_registry_t *px_registry_new(void)
{
    px_registry_t *reg = calloc(1, sizeof *reg);

    if (reg)
        atomic_init(&reg->refs, 1);
    return reg;
}

void px_registry_ref(px_registry_t *reg)
{
    atomic_fetch_add_explicit(&reg->refs, 1, memory_order_relaxed);
}

static void ctl_free(px_handler_ctl_t *ctl)
{
    if (!ctl)
        return;
    pthread_cond_destroy(&ctl->slot_free);
    pthread_mutex_destroy(&ctl->mu);
    free(ctl);
}

void px_handler_discard(px_handler_t *h)
{
    if (h->destroy)
        h->destroy(h);
    ctl_free(h->ctl);
    if (strcmp(h->type, "builtin") != 0)
        free((char *)h->name); /* configured names are copies; built-in ones are literals */
}

void px_registry_unref(px_registry_t *reg)
{
    if (!reg || atomic_fetch_sub_explicit(&reg->refs, 1, memory_order_acq_rel) != 1)
        return;
    for (size_t i = 0; i < reg->len; i++)
        px_handler_discard(&reg->items[i]);
    free(reg->items);
    free(reg);
}

static pthread_mutex_t stats_mu = PTHREAD_MUTEX_INITIALIZER;
static px_handler_stats_t *stats_list; /* under stats_mu; entries are never freed while running */

px_handler_stats_t *px_handler_stats(const char *name)
{
    px_handler_stats_t *st;

    pthread_mutex_lock(&stats_mu);
    for (st = stats_list; st; st = st->next)
        if (strcmp(st->name, name) == 0)
            break;
    if (!st && (st = calloc(1, sizeof *st))) {
        snprintf(st->name, sizeof st->name, "%s", name);
        st->next = stats_list;
        stats_list = st;
    }
    pthread_mutex_unlock(&stats_mu);
    return st;
}

void px_handler_stats_free_all(void)
{
    pthread_mutex_lock(&stats_mu);
    while (stats_list) {
        px_handler_stats_t *st = stats_list;
        stats_list = st->next;
        free(st);
    }
    pthread_mutex_unlock(&stats_mu);
}

px_handler_ctl_t *px_handler_ctl_new(void)
{
    px_handler_ctl_t *ctl = calloc(1, sizeof *ctl);

    if (!ctl)
        return NULL;
    ctl->max_attempts = 1;
    pthread_mutex_init(&ctl->mu, NULL);
    pthread_cond_init(&ctl->slot_free, NULL);
    return ctl;
}

int px_registry_add(px_registry_t *reg, const px_handler_t *h)
{
    px_handler_t *items;
    size_t at = 0;

    while (at < reg->len && strcmp(reg->items[at].name, h->name) < 0)
        at++;
    if (at < reg->len && strcmp(reg->items[at].name, h->name) == 0)
        return -EEXIST;
    items = realloc(reg->items, (reg->len + 1) * sizeof *items);
    if (!items)
        return -ENOMEM;
    memmove(&items[at + 1], &items[at], (reg->len - at) * sizeof *items);
    items[at] = *h;
    if ((!items[at].ctl && !(items[at].ctl = px_handler_ctl_new())) ||
        !(items[at].ctl->st = px_handler_stats(h->name))) {
        if (!h->ctl)
            ctl_free(items[at].ctl);
        memmove(&items[at], &items[at + 1], (reg->len - at) * sizeof *items);
        reg->items = items;
        return -ENOMEM;
    }
    reg->items = items;
    reg->len++;
    return 0;
}

const px_handler_t *px_registry_find(const px_registry_t *reg, const char *name)
{
    size_t lo = 0, hi = reg->len;

    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(name, reg->items[mid].name);
        if (c == 0)
            return &reg->items[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

size_t px_registry_count(const px_registry_t *reg)
{
    return reg->len;
}

const px_handler_t *px_registry_at(const px_registry_t *reg, size_t i)
{
    return &reg->items[i];
}

void px_registry_names(const px_registry_t *reg, char *out, size_t outlen)
{
    size_t used = 0;

    out[0] = '\0';
    for (size_t i = 0; i < reg->len && used < outlen; i++) {
        int n = snprintf(out + used, outlen - used, "%s%s", i ? ", " : "", reg->items[i].name);
        if (n < 0)
            break;
        used += (size_t)n;
    }
}

int px_fail(px_result_t *res, const char *code, const char *fmt, ...)
{
    va_list ap;

    res->code = code;
    va_start(ap, fmt);
    vsnprintf(res->message, sizeof res->message, fmt, ap);
    va_end(ap);
    return -1;
}

static void sleep_ns(uint64_t ns)
{
    struct timespec ts = {.tv_sec = (time_t)(ns / 1000000000ull),
                          .tv_nsec = (long)(ns % 1000000000ull)};

    while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
        ;
}

/* Per-thread PRNG for backoff jitter (splitmix64): no shared state, no lock. */
static uint64_t jitter_rand(void)
{
    static _Thread_local uint64_t x;
    uint64_t z;

    if (x == 0)
        x = px_now_ns() ^ (uint64_t)(uintptr_t)&x;
    z = (x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Waits for a concurrency slot and a rate-limit token. Returns 0, or -1 when the deadline
 * passes first. */
static int acquire(px_handler_ctl_t *ctl, uint64_t deadline_ns)
{
    uint64_t wait = 0;

    pthread_mutex_lock(&ctl->mu);
    while (ctl->max_concurrency && ctl->running >= ctl->max_concurrency) {
        if (deadline_ns) {
            struct timespec ts;
            /* The condition variable runs on CLOCK_REALTIME: convert the remaining time. */
            uint64_t now = px_now_ns(), left = deadline_ns > now ? deadline_ns - now : 0;
            if (left == 0) {
                pthread_mutex_unlock(&ctl->mu);
                return -1;
            }
            ts = px_deadline_after(CLOCK_REALTIME, left);
            pthread_cond_timedwait(&ctl->slot_free, &ctl->mu, &ts);
        } else {
            pthread_cond_wait(&ctl->slot_free, &ctl->mu);
        }
    }
    ctl->running++;
    atomic_store_explicit(&ctl->concurrency, ctl->running, memory_order_relaxed);
    if (ctl->per_second > 0) {
        uint64_t now = px_now_ns();
        ctl->tokens += (double)(now - ctl->refilled_ns) / 1e9 * ctl->per_second;
        if (ctl->tokens > ctl->burst)
            ctl->tokens = ctl->burst;
        ctl->refilled_ns = now;
        /* Take the token now, even into debt: later callers queue up behind us in time. */
        ctl->tokens -= 1.0;
        if (ctl->tokens < 0)
            wait = (uint64_t)(-ctl->tokens / ctl->per_second * 1e9);
    }
    pthread_mutex_unlock(&ctl->mu);
    if (wait && deadline_ns && px_now_ns() + wait > deadline_ns)
        goto expired;
    if (wait)
        sleep_ns(wait);
    return 0;
expired:
    pthread_mutex_lock(&ctl->mu);
    ctl->tokens += 1.0; /* give the token back: this attempt will not run */
    ctl->running--;
    atomic_store_explicit(&ctl->concurrency, ctl->running, memory_order_relaxed);
    pthread_cond_signal(&ctl->slot_free);
    pthread_mutex_unlock(&ctl->mu);
    return -1;
}

static void release(px_handler_ctl_t *ctl)
{
    pthread_mutex_lock(&ctl->mu);
    ctl->running--;
    atomic_store_explicit(&ctl->concurrency, ctl->running, memory_order_relaxed);
    pthread_cond_signal(&ctl->slot_free);
    pthread_mutex_unlock(&ctl->mu);
}

static enum px_fcode classify(const char *code)
{
    if (!code || strcmp(code, "handler_error") == 0)
        return PX_F_HANDLER_ERROR;
    if (strcmp(code, "timeout") == 0)
        return PX_F_TIMEOUT;
    if (strcmp(code, "deadline_exceeded") == 0)
        return PX_F_DEADLINE;
    return PX_F_OTHER;
}

static int deadline_fail(px_result_t *res, const px_req_t *req, const char *when)
{
    return px_fail(res, "deadline_exceeded",
                   "deadline_ms passed %s (%.0f ms after receipt); send a later deadline or "
                   "fewer requests for this key",
                   when, (double)(px_now_ns() - req->recv_ns) / 1e6);
}

void px_handler_count_unrun(const px_handler_t *h, const char *code)
{
    atomic_fetch_add_explicit(&h->ctl->st->requests, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->ctl->st->failed[classify(code)], 1, memory_order_relaxed);
}

int px_handler_invoke(const px_handler_t *h, px_req_t *req, px_result_t *res, int *attempts,
                      uint64_t *wait_ns, px_run_hook hook, void *hook_arg)
{
    px_handler_ctl_t *ctl = h->ctl;
    uint64_t dl = req->deadline_ns, t0, started;
    int rc = -1;

    if (!px_handler_may_wait(h))
        hook = NULL; /* nothing to wait for: the caller counts its run from the start */
    *attempts = 0;
    *wait_ns = 0;
    atomic_fetch_add_explicit(&ctl->st->requests, 1, memory_order_relaxed);
    if (dl && px_now_ns() >= dl) {
        rc = deadline_fail(res, req, "while the request was queued");
        goto out;
    }
    for (int attempt = 1; attempt <= ctl->max_attempts; attempt++) {
        uint64_t timeout = ctl->timeout_ms > 0 ? (uint64_t)ctl->timeout_ms * PX_MS : 0, now;

        t0 = px_now_ns();
        if (hook)
            hook(hook_arg, 0);
        if (acquire(ctl, dl)) {
            rc = deadline_fail(res, req, "while waiting for a rate-limit token or a slot");
            break;
        }
        started = px_now_ns();
        if (hook)
            hook(hook_arg, started);
        *wait_ns += started - t0;
        if (dl) {
            uint64_t left = dl > started ? dl - started : 1;
            if (!timeout || left < timeout)
                timeout = left;
        }
        json_decref(res->value);
        memset(res, 0, sizeof *res);
        (*attempts)++;
        atomic_fetch_add_explicit(&ctl->st->attempts, 1, memory_order_relaxed);
        rc = h->run(h, req, timeout, res);
        now = px_now_ns();
        px_hist_record(&ctl->st->run_us, (now - started) / 1000);
        release(ctl);
        if (rc == 0)
            break;
        if (dl && now >= dl) {
            /* The request's own deadline cut it off: never retried. */
            rc = deadline_fail(res, req, "while the handler ran");
            break;
        }
        if (attempt < ctl->max_attempts) {
            uint64_t cap = ctl->backoff_ms << (attempt - 1 < 30 ? attempt - 1 : 30);
            uint64_t b;
            if (cap > ctl->max_backoff_ms) /* 0 caps every wait at 0: retry at once */
                cap = ctl->max_backoff_ms;
            b = cap ? jitter_rand() % (cap * PX_MS + 1) : 0; /* full jitter */
            if (dl && now + b >= dl)
                break;
            sleep_ns(b);
        }
    }
out:
    if (rc == 0)
        atomic_fetch_add_explicit(&ctl->st->ok, 1, memory_order_relaxed);
    else
        atomic_fetch_add_explicit(&ctl->st->failed[classify(res->code)], 1, memory_order_relaxed);
    return rc;
}
