/* exec/engine.c with a real pool and loop but no sockets: admission verdicts, cancel of a queued
 * and of a running request, answers delivered through the sink in per-key order, the accounting,
 * and refusal once draining. The handler blocks until the test lets it go, so every state is
 * reached by waiting on a condition, never by timing. */
#include "daemon/exec/engine.h"

#include "common/clock.h"

#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int started, released;

/* "gate": the first run waits until the test releases it; the rest return at once. */
static int gate_run(const px_handler_t *h, const px_req_t *req, uint64_t timeout_ns,
                    px_result_t *res)
{
    pthread_mutex_lock(&mu);
    started++;
    pthread_cond_broadcast(&cv);
    while (!released)
        pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);
    res->value = json_string("done");
    return 0;
}

static char lines[8][512];
static void *origins[8];
static int nlines;

static void sink_deliver(void *origin, const char *line, size_t len)
{
    assert_true(nlines < 8 && len < sizeof lines[0]);
    memcpy(lines[nlines], line, len);
    lines[nlines][len] = '\0';
    origins[nlines++] = origin;
}

static void sink_noop(void *arg) {}

static px_submit_t req(const px_handler_t *h, const char *key, const char *id, void *origin)
{
    return (px_submit_t){.key = key,
                         .key_len = strlen(key),
                         .id = id,
                         .id_len = strlen(id),
                         .payload = "null",
                         .payload_len = 4,
                         .handler = h,
                         .recv_ns = px_now_ns(),
                         .origin = origin};
}

static void test_admission_cancel_and_order(void **state)
{
    static const px_handler_t gate = {.name = "gate", .type = "builtin", .run = gate_run};
    const px_sink_t sink = {.deliver = sink_deliver, .flush = sink_noop, .after = sink_noop};
    uv_loop_t loop;
    px_config_t cfg;
    px_stats_t st = {0};
    px_engine_t e;
    px_registry_t *reg = px_registry_new();
    const px_handler_t *h;
    px_verdict_t v;
    px_counts_t n;
    char err[256];
    int conn = 0; /* its address is the origin */
    px_submit_t s;

    assert_non_null(reg);
    assert_int_equal(px_registry_add(reg, &gate), 0);
    px_config_defaults(&cfg);
    cfg.workers = 1;
    cfg.queue_capacity = 2;
    uv_loop_init(&loop);
    assert_int_equal(px_engine_init(&e, &loop, &cfg, &st, reg, &sink, err, sizeof err), 0);
    assert_int_equal(px_engine_start(&e, err, sizeof err), 0);
    assert_null(px_engine_find(&e, "nope"));
    h = px_engine_find(&e, "gate");
    assert_non_null(h);

    s = req(h, "k", "1", &conn);
    assert_int_equal(px_engine_submit(&e, &s, &v), 0);
    px_pool_kick(e.pool);
    pthread_mutex_lock(&mu);
    while (!started)
        pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);
    /* 1 runs; 2 and 3 fill the queue of 2; 4 is refused at once. */
    s = req(h, "k", "2", &conn);
    assert_int_equal(px_engine_submit(&e, &s, &v), 0);
    s = req(h, "k", "3", &conn);
    assert_int_equal(px_engine_submit(&e, &s, &v), 0);
    s = req(h, "k", "4", &conn);
    assert_int_equal(px_engine_submit(&e, &s, &v), 1);
    assert_int_equal(v.why, PX_REJ_QUEUE_FULL);
    assert_int_equal(v.worker, 0);
    assert_non_null(strstr(v.message, "queue_capacity 2"));
    assert_true(v.retry_after_ms >= 1);

    /* Cancel: a queued request is marked, and answered in its key's order (after 1) without
     * running; a running one is left alone. */
    assert_string_equal(px_engine_cancel(&e, &conn, "2", 1), "queued");
    assert_int_equal(nlines, 0);
    assert_string_equal(px_engine_cancel(&e, &conn, "1", 1), "running");
    assert_string_equal(px_engine_cancel(&e, &conn, "99", 2), "not_found");
    assert_string_equal(px_engine_cancel(&e, NULL, "3", 1), "not_found"); /* not its origin */

    pthread_mutex_lock(&mu);
    released = 1;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
    px_pool_kick(e.pool);
    while (nlines < 3)
        uv_run(&loop, UV_RUN_ONCE);
    assert_ptr_equal(origins[0], &conn);
    assert_non_null(strstr(lines[0], "\"id\":1"));
    assert_non_null(strstr(lines[0], "\"status\":\"ok\""));
    assert_non_null(strstr(lines[1], "\"id\":2"));
    assert_non_null(strstr(lines[1], "\"cancelled\""));
    assert_non_null(strstr(lines[2], "\"id\":3"));
    assert_non_null(strstr(lines[2], "\"status\":\"ok\""));
    assert_int_equal(started, 2); /* 1 and 3 ran; 2 did not */

    px_stats_snapshot(&st, &n);
    assert_int_equal(n.received, 4);
    assert_int_equal(n.accepted, 3);
    assert_int_equal(n.ok, 2);
    assert_int_equal(n.failed, 1);
    assert_int_equal(n.in_flight, 0);
    assert_int_equal(n.received, px_counts_rejected(&n) + n.ok + n.failed + n.in_flight);

    px_engine_close(&e);
    s = req(h, "k", "5", &conn);
    assert_int_equal(px_engine_submit(&e, &s, &v), 1);
    assert_int_equal(v.why, PX_REJ_SHUTTING_DOWN);
    while (px_pool_live(e.pool) > 0)
        uv_run(&loop, UV_RUN_ONCE);
    px_pool_destroy(e.pool);
    e.pool = NULL;
    uv_run(&loop, UV_RUN_DEFAULT);
    px_engine_free(&e);
    assert_int_equal(uv_loop_close(&loop), 0);
    px_config_clear(&cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_admission_cancel_and_order),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
