/* Built-in ops. echo and fail prove the plumbing; sleep stands in for I/O-bound work, which is
 * what parexd's worker threads exist for. */
#include "daemon/handlers/handlers.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define SLEEP_MAX_MS 60000

static int echo_run(const px_handler_t *h, const px_req_t *req, uint64_t timeout_ns,
                    px_result_t *res)
{
    /* The payload is already compact JSON text: hand it back as it is. */
    res->text = px_req_payload(req);
    res->text_len = req->payload_len;
    return 0;
}

static int sleep_validate(const px_handler_t *h, const json_t *payload, char *msg, size_t msglen)
{
    json_t *ms = json_is_object(payload) ? json_object_get(payload, "ms") : NULL;

    if (!json_is_integer(ms) || json_integer_value(ms) < 0 ||
        json_integer_value(ms) > SLEEP_MAX_MS) {
        snprintf(msg, msglen, "op 'sleep' needs payload {\"ms\": N} with N an integer from 0 to %d",
                 SLEEP_MAX_MS);
        return -1;
    }
    return 0;
}

static int sleep_run(const px_handler_t *h, const px_req_t *req, uint64_t timeout_ns,
                     px_result_t *res)
{
    json_t *p = json_loadb(px_req_payload(req), req->payload_len, 0, NULL);
    json_int_t ms = json_integer_value(json_object_get(p, "ms")); /* validated on the loop */
    uint64_t ns = (uint64_t)ms * 1000000ull;
    int cut = timeout_ns && timeout_ns < ns;
    struct timespec ts;

    /* A timeout cuts the sleep short, as it would cut off real I/O. */
    if (cut)
        ns = timeout_ns;
    json_decref(p);
    ts.tv_sec = (time_t)(ns / 1000000000ull);
    ts.tv_nsec = (long)(ns % 1000000000ull);
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
        ;
    if (cut)
        return px_fail(res, "timeout", "sleep of %lld ms cut off after %.0f ms", (long long)ms,
                       (double)timeout_ns / 1e6);
    res->value = json_pack("{sI}", "slept_ms", ms);
    return 0;
}

static int fail_validate(const px_handler_t *h, const json_t *payload, char *msg, size_t msglen)
{
    if (!json_is_null(payload) &&
        !(json_is_object(payload) && json_is_string(json_object_get(payload, "message")))) {
        snprintf(msg, msglen, "op 'fail' needs payload {\"message\": \"...\"} (or none)");
        return -1;
    }
    return 0;
}

static int fail_run(const px_handler_t *h, const px_req_t *req, uint64_t timeout_ns,
                    px_result_t *res)
{
    json_t *p = json_loadb(px_req_payload(req), req->payload_len, JSON_DECODE_ANY, NULL);
    json_t *m = json_object_get(p, "message");
    int rc = px_fail(res, "handler_error", "%s", m ? json_string_value(m) : "failed as asked");

    json_decref(p);
    return rc;
}

/* Fault injection for tests (PAREXD_FAULT_INJECTION=1): ends the worker thread mid-request, the
 * way a buggy plugin calling pthread_exit would, so the dead-worker paths can be exercised. */
static int exit_thread_run(const px_handler_t *h, const px_req_t *req, uint64_t timeout_ns,
                           px_result_t *res)
{
    pthread_exit(NULL);
}

int px_builtin_register(px_registry_t *reg, int test_ops)
{
    static const px_handler_t fault = {
        .name = "fault_exit_thread", .type = "builtin", .run = exit_thread_run};
    const char *fi = getenv("PAREXD_FAULT_INJECTION");
    static const px_handler_t builtins[] = {
        {.name = "echo", .type = "builtin", .run = echo_run},
        {.name = "sleep", .type = "builtin", .validate = sleep_validate, .run = sleep_run},
        {.name = "fail", .type = "builtin", .validate = fail_validate, .run = fail_run},
    };
    int rc;

    for (size_t i = 0; i < (test_ops ? sizeof builtins / sizeof builtins[0] : 1); i++)
        if ((rc = px_registry_add(reg, &builtins[i])))
            return rc;
    if (fi && strcmp(fi, "1") == 0)
        return px_registry_add(reg, &fault);
    return 0;
}
