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

/* "gate": a run waits while the test holds the gate (released == 0). */
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

/* One engine with one "gate" handler, one worker, its own loop; answers go to lines[]. */
typedef struct fixture {
    uv_loop_t loop;
    px_config_t cfg;
    px_stats_t st;
    px_engine_t e;
    int conn; /* its address is the origin */
} fixture_t;

static void setup(fixture_t *f, int64_t capacity, int64_t stall_after_ms)
{
    static const px_handler_t gate = {.name = "gate", .type = "builtin", .run = gate_run};
    const px_sink_t sink = {.deliver = sink_deliver, .flush = sink_noop, .after = sink_noop};
    px_registry_t *reg = px_registry_new();
    char err[256];

    memset(f, 0, sizeof *f);
    started = released = nlines = 0;
    assert_non_null(reg);
    assert_int_equal(px_registry_add(reg, &gate), 0);
    px_config_defaults(&f->cfg);
    f->cfg.workers = 1;
    f->cfg.queue_capacity = capacity;
    f->cfg.stall_after_ms = stall_after_ms;
    uv_loop_init(&f->loop);
    assert_int_equal(px_engine_init(&f->e, &f->loop, &f->cfg, &f->st, reg, &sink, err, sizeof err),
                     0);
    assert_int_equal(px_engine_start(&f->e, err, sizeof err), 0);
}

/* Lets every gated run end, drains, and checks nothing is left behind. */
static void teardown(fixture_t *f)
{
    pthread_mutex_lock(&mu);
    released = 1;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
    px_engine_close(&f->e);
    while (px_pool_live(f->e.pool) > 0 || px_pool_strays(f->e.pool) > 0)
        uv_run(&f->loop, UV_RUN_ONCE);
    px_engine_release_pool(&f->e);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    px_engine_free(&f->e);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    px_config_clear(&f->cfg);
}

static void wait_started(int n)
{
    pthread_mutex_lock(&mu);
    while (started < n)
        pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);
}

static void set_gate(int open)
{
    pthread_mutex_lock(&mu);
    released = open;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
}

static void test_admission_cancel_and_order(void **state)
{
    fixture_t f;
    px_engine_t *e = &f.e;
    const px_handler_t *h;
    px_verdict_t v;
    px_counts_t n;
    px_submit_t s;

    setup(&f, 2, 5000);
    assert_null(px_engine_find(e, "nope"));
    h = px_engine_find(e, "gate");
    assert_non_null(h);

    s = req(h, "k", "1", &f.conn);
    assert_int_equal(px_engine_submit(e, &s, &v), 0);
    px_pool_kick(e->pool);
    wait_started(1);
    /* 1 runs; 2 and 3 fill the queue of 2; 4 is refused at once. */
    s = req(h, "k", "2", &f.conn);
    assert_int_equal(px_engine_submit(e, &s, &v), 0);
    s = req(h, "k", "3", &f.conn);
    assert_int_equal(px_engine_submit(e, &s, &v), 0);
    s = req(h, "k", "4", &f.conn);
    assert_int_equal(px_engine_submit(e, &s, &v), 1);
    assert_int_equal(v.why, PX_REJ_QUEUE_FULL);
    assert_int_equal(v.worker, 0);
    assert_non_null(strstr(v.message, "queue_capacity 2"));
    assert_true(v.retry_after_ms >= 1);

    /* Cancel: a queued request is marked, and answered in its key's order (after 1) without
     * running; a running one is left alone. */
    assert_string_equal(px_engine_cancel(e, &f.conn, "2", 1), "queued");
    assert_int_equal(nlines, 0);
    assert_string_equal(px_engine_cancel(e, &f.conn, "1", 1), "running");
    assert_string_equal(px_engine_cancel(e, &f.conn, "99", 2), "not_found");
    assert_string_equal(px_engine_cancel(e, NULL, "3", 1), "not_found"); /* not its origin */

    set_gate(1);
    px_pool_kick(e->pool);
    while (nlines < 3)
        uv_run(&f.loop, UV_RUN_ONCE);
    assert_ptr_equal(origins[0], &f.conn);
    assert_non_null(strstr(lines[0], "\"id\":1"));
    assert_non_null(strstr(lines[0], "\"status\":\"ok\""));
    assert_non_null(strstr(lines[1], "\"id\":2"));
    assert_non_null(strstr(lines[1], "\"cancelled\""));
    assert_non_null(strstr(lines[2], "\"id\":3"));
    assert_non_null(strstr(lines[2], "\"status\":\"ok\""));
    assert_int_equal(started, 2); /* 1 and 3 ran; 2 did not */

    px_stats_snapshot(&f.st, &n);
    assert_int_equal(n.received, 4);
    assert_int_equal(n.accepted, 3);
    assert_int_equal(n.ok, 2);
    assert_int_equal(n.failed, 1);
    assert_int_equal(n.in_flight, 0);
    assert_int_equal(n.received, px_counts_rejected(&n) + n.ok + n.failed + n.in_flight);

    px_engine_close(e);
    s = req(h, "k", "5", &f.conn);
    assert_int_equal(px_engine_submit(e, &s, &v), 1);
    assert_int_equal(v.why, PX_REJ_SHUTTING_DOWN);
    teardown(&f);
}

/* Supervision acts on what it saw: a replacement names the run it observed (its start time),
 * and a run that ended meanwhile is left alone even if another one of the worker's is running. */
static void test_replace_only_the_observed_run(void **state)
{
    fixture_t f;
    px_engine_t *e = &f.e;
    px_worker_info_t seen, now;
    px_verdict_t v;
    px_submit_t s;

    setup(&f, 16, 10);
    /* Run A blocks; the supervisor's view of it is taken, then A ends and B starts. */
    s = req(px_engine_find(e, "gate"), "k", "1", &f.conn);
    assert_int_equal(px_engine_submit(e, &s, &v), 0);
    px_pool_kick(e->pool);
    wait_started(1);
    do
        px_pool_info(e->pool, 0, &seen);
    while (!seen.busy_since_ns);
    set_gate(1); /* A ends */
    while (nlines < 1)
        uv_run(&f.loop, UV_RUN_ONCE);
    set_gate(0); /* B will block */
    s = req(px_engine_find(e, "gate"), "k", "2", &f.conn);
    assert_int_equal(px_engine_submit(e, &s, &v), 0);
    px_pool_kick(e->pool);
    wait_started(2);
    do
        px_pool_info(e->pool, 0, &now);
    while (!now.busy_since_ns);
    assert_true(now.busy_since_ns != seen.busy_since_ns);
    while (px_now_ns() - now.busy_since_ns < 20 * PX_MS)
        uv_run(&f.loop, UV_RUN_NOWAIT); /* B is over stall_after_ms too */

    /* Acting on the stale view replaces nothing: B is not abandoned. */
    px_engine_replace(e, 0, &seen);
    px_pool_info(e->pool, 0, &now);
    assert_int_equal(now.replaced, 0);
    assert_int_equal(nlines, 1);
    /* Acting on a current view of a run over the limit replaces it. */
    px_engine_replace(e, 0, &now);
    assert_int_equal(nlines, 2);
    assert_non_null(strstr(lines[1], "\"id\":2"));
    assert_non_null(strstr(lines[1], "worker_stalled"));
    px_pool_info(e->pool, 0, &now);
    assert_int_equal(now.replaced, 1);
    teardown(&f);
    assert_int_equal(atomic_load(&f.st.c.late), 1); /* B's own result came back, dropped */
    assert_int_equal(nlines, 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_admission_cancel_and_order),
        cmocka_unit_test(test_replace_only_the_observed_run),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
