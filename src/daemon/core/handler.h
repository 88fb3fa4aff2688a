/* The handler registry: ops by name. The front end only looks names up here, so new handler
 * types plug in without touching the protocol or the loop. A registry is immutable once built
 * and reference-counted: a config reload builds a new one while queued requests finish with the
 * handlers they were accepted for. */
#ifndef PX_HANDLER_H
#define PX_HANDLER_H

#include "common/hist.h"
#include "daemon/core/request.h"

#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>

/* What a handler run produced. On failure code names the error and message says what happened
 * and what to do. */
typedef struct px_result {
    json_t *value;    /* ok: the result, owned by the result */
    const char *text; /* ok, instead of value: the result as JSON text (not owned) */
    size_t text_len;
    const char *code;
    char message[512];
} px_result_t;

/* Failure codes counted per handler; the order is the metrics label order. */
enum px_fcode { PX_F_HANDLER_ERROR, PX_F_TIMEOUT, PX_F_DEADLINE, PX_F_OTHER, PX_F_COUNT };

/* Policies and counters shared by every type: set at build time, counters written by workers. */
typedef struct px_handler_ctl {
    /* retry: attempts in all (1 = no retry); full-jitter exponential backoff */
    int max_attempts;
    uint64_t backoff_ms, max_backoff_ms;
    int64_t timeout_ms; /* 0: none */
    /* max_concurrency: 0 = unlimited; a counting semaphore under mu */
    int max_concurrency;
    /* rate_limit: token bucket under mu; per_second 0 = unlimited */
    double per_second, burst, tokens;
    uint64_t refilled_ns;
    int running; /* under mu */
    pthread_mutex_t mu;
    pthread_cond_t slot_free;

    _Atomic int concurrency;     /* mirror of running for readers */
    struct px_handler_stats *st; /* counters by name, for the life of the daemon */
} px_handler_ctl_t;

/* Per-handler counters live as long as the daemon, keyed by handler name, so a config reload
 * (which builds a new registry) never makes a counter go backwards. Written by workers. */
typedef struct px_handler_stats {
    struct px_handler_stats *next;
    char name[64];
    _Atomic uint64_t requests, ok, attempts;
    _Atomic uint64_t failed[PX_F_COUNT];
    px_hist_t run_us; /* written by many workers: px_hist_record tolerates that (atomics) */
} px_handler_stats_t;

/* The counters of handler NAME, created on first use; NULL when out of memory. Any thread. */
px_handler_stats_t *px_handler_stats(const char *name);
/* At exit, after every registry is gone. */
void px_handler_stats_free_all(void);

typedef struct px_handler px_handler_t;
struct px_handler {
    const char *name;
    const char *type; /* "builtin", "exec", "http", "plugin" */
    /* Loop thread, optional: checks the payload before queueing. Non-zero makes the request
     * invalid/bad_field with msg. */
    int (*validate)(const px_handler_t *h, const json_t *payload, char *msg, size_t msglen);
    /* Worker thread: 0 ok with res->value set, -1 failed with res->code and res->message.
     * timeout_ns is what the handler may take (0: no limit), from handler and request
     * deadline. */
    int (*run)(const px_handler_t *h, const px_req_t *req, uint64_t timeout_ns, px_result_t *res);
    void (*destroy)(px_handler_t *h);
    void *ctx;
    px_handler_ctl_t *ctl; /* owned; NULL for built-ins without policies */
};

typedef struct px_registry px_registry_t;

px_registry_t *px_registry_new(void);
void px_registry_ref(px_registry_t *reg);
void px_registry_unref(px_registry_t *reg); /* frees at 0 */
/* Policies with their defaults (no retry, timeout, limit); NULL when out of memory. */
px_handler_ctl_t *px_handler_ctl_new(void);
/* Frees a handler that never made it into a registry. */
void px_handler_discard(px_handler_t *h);
/* Takes ownership of h's ctx and ctl (a copy of h is kept). -EEXIST when the name is taken. */
int px_registry_add(px_registry_t *reg, const px_handler_t *h);
const px_handler_t *px_registry_find(const px_registry_t *reg, const char *name);
size_t px_registry_count(const px_registry_t *reg);
const px_handler_t *px_registry_at(const px_registry_t *reg, size_t i);
/* "echo, fail, sleep": for messages that list what exists. */
void px_registry_names(const px_registry_t *reg, char *out, size_t outlen);

/* Told, on the worker thread, when an attempt waits for a concurrency slot or a rate-limit token
 * (started_ns 0) and when it starts running (started_ns: now). */
typedef void (*px_run_hook)(void *arg, uint64_t started_ns);

/* Can a run of h wait for a concurrency slot or a rate-limit token? (Then px_handler_invoke
 * tells its hook when it waits and when it starts; otherwise it never waits.) */
static inline int px_handler_may_wait(const px_handler_t *h)
{
    return h->ctl && (h->ctl->max_concurrency > 0 || h->ctl->per_second > 0);
}

/* Any thread: counts a request of h that was answered failed/code without reaching it (a queued
 * request past its deadline), as px_handler_invoke would have. */
void px_handler_count_unrun(const px_handler_t *h, const char *code);
/* Worker thread: runs h for req under its policies (deadline, rate limit, concurrency, retry).
 * Sets *attempts; *wait_ns is the time spent waiting for a token or a slot (counted as queue
 * time). hook (may be NULL) hears of each wait and each start, when px_handler_may_wait. Returns
 * what run returned. */
int px_handler_invoke(const px_handler_t *h, px_req_t *req, px_result_t *res, int *attempts,
                      uint64_t *wait_ns, px_run_hook hook, void *hook_arg);

/* Sets a failure on res: px_fail(res, "handler_error", "fmt", ...). Returns -1. */
int px_fail(px_result_t *res, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
