/* libparex against a real parexd: the blocking context (call, pipelining with append and
 * get_reply, cancel, control, token over a unix socket, argument errors that leave the context
 * usable, timeouts, connection errors) and the async context on libuv (every callback exactly
 * once: answers, cancel, a graceful disconnect, pending requests when the context is freed and
 * when the daemon dies). */
#include "pxdaemon.h"

#include <parex/adapters/libuv.h>
#include <parex/client.h>

#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define TOKEN "libparex-test-token-0123456789"

/* workers 2; queues and the per-connection bound large enough never to reject a test's burst */
static pxt_daemon_t D;

static parex_ctx_t *connect_ok(const char *addr, const parex_options_t *o)
{
    parex_ctx_t *c = parex_connect(addr, o);

    assert_non_null(c);
    if (parex_err(c))
        fail_msg("connect %s: %s", addr, parex_errstr(c));
    return c;
}

static parex_reply_t *call(parex_ctx_t *c, const char *op, const char *key, const char *payload)
{
    parex_request_t req = {.op = op, .key = key, .payload = payload};
    parex_reply_t *r = parex_call(c, &req);

    if (!r)
        fail_msg("parex_call: %s", parex_errstr(c));
    return r;
}

static void test_call_statuses(void **state)
{
    parex_ctx_t *c = connect_ok(D.addr, NULL);
    parex_reply_t *r;

    r = call(c, NULL, "k", "{\"a\": [1, 2]}");
    assert_int_equal(r->status, PAREX_OK);
    assert_string_equal(r->result, "{\"a\":[1,2]}");
    assert_true(r->id > 0);
    assert_true(r->worker >= 0 && r->worker < 2);
    assert_true(r->queue_ms >= 0 && r->run_ms >= 0);
    parex_reply_free(r);
    r = call(c, "fail", "k", "{\"message\":\"boom\"}");
    assert_int_equal(r->status, PAREX_FAILED);
    assert_string_equal(r->code, "handler_error");
    assert_string_equal(r->message, "boom");
    parex_reply_free(r);
    r = call(c, "no-such-op", "k", NULL);
    assert_int_equal(r->status, PAREX_INVALID);
    assert_string_equal(r->code, "unknown_op");
    parex_reply_free(r);
    r = call(c, "sleep", "k", "{\"ms\":500}");
    parex_reply_free(r);
    parex_free(c);
}

/* Argument errors: nothing sent, PAREX_ERR_ARG, and the context goes on working. */
static void test_argument_errors(void **state)
{
    parex_ctx_t *c = connect_ok(D.addr, NULL);
    char key[300];
    parex_request_t req = {.key = key};
    parex_reply_t *r;

    memset(key, 'k', sizeof key - 1);
    key[sizeof key - 1] = '\0';
    assert_int_equal(parex_append(c, &req), -1);
    assert_int_equal(parex_err(c), PAREX_ERR_ARG);
    assert_non_null(strstr(parex_errstr(c), "key must be 1-256 bytes"));
    req = (parex_request_t){.key = ""};
    assert_int_equal(parex_append(c, &req), -1);
    req = (parex_request_t){.key = "k", .payload = "{not json"};
    assert_int_equal(parex_append(c, &req), -1);
    assert_non_null(strstr(parex_errstr(c), "payload is not JSON"));
    req = (parex_request_t){.key = "k", .payload = "{\"a\":1,\"a\":2}"}; /* parexd's rule */
    assert_int_equal(parex_append(c, &req), -1);
    req = (parex_request_t){.key = "k\xff"};
    assert_int_equal(parex_append(c, &req), -1);
    assert_non_null(strstr(parex_errstr(c), "not valid UTF-8"));

    req = (parex_request_t){.key = "k", .deadline_ms = -5};
    assert_int_equal(parex_append(c, &req), -1);
    assert_int_equal(parex_append_control(c, "stats", "[1]"), -1);
    /* A payload with newlines (JSON whitespace) still goes out as one line. */
    r = call(c, NULL, "k", "{\n\"multi\":\n\"line\"\n}");
    assert_int_equal(r->status, PAREX_OK);
    assert_int_equal(parex_err(c), 0);
    assert_string_equal(r->result, "{\"multi\":\"line\"}");
    parex_reply_free(r);
    parex_free(c);
}

/* 2000 requests pipelined over 16 keys: every answer once, per key in order. */
static void test_pipelining(void **state)
{
    enum { N = 2000, KEYS = 16 };
    parex_ctx_t *c = connect_ok(D.addr, NULL);
    static long long ids[N];
    static int seen[N];
    long long last[KEYS];
    char key[16], payload[32];

    for (int i = 0; i < N; i++) {
        snprintf(key, sizeof key, "p%d", i % KEYS);
        snprintf(payload, sizeof payload, "%d", i);
        parex_request_t req = {.key = key, .payload = payload};
        ids[i] = parex_append(c, &req);
        assert_int_equal(ids[i], ids[0] + i);
    }
    memset(last, -1, sizeof last);
    memset(seen, 0, sizeof seen);
    for (int n = 0; n < N; n++) {
        parex_reply_t *r;
        if (parex_get_reply(c, &r))
            fail_msg("get_reply %d: %s", n, parex_errstr(c));
        assert_int_equal(r->status, PAREX_OK);
        int i = (int)(r->id - ids[0]);
        assert_true(i >= 0 && i < N);
        assert_int_equal(atoi(r->result), i);
        seen[i]++;
        assert_true(last[i % KEYS] < i);
        last[i % KEYS] = i;
        parex_reply_free(r);
    }
    for (int i = 0; i < N; i++)
        assert_int_equal(seen[i], 1);
    parex_free(c);
}

/* parex_call returns its own answer; answers to earlier appends are kept for get_reply. */
static void test_call_after_appends(void **state)
{
    parex_ctx_t *c = connect_ok(D.addr, NULL);
    parex_request_t slow = {.op = "sleep", .key = "ca-slow", .payload = "{\"ms\":100}"};
    parex_request_t fast = {.key = "ca-fast", .payload = "1"};
    long long a = parex_append(c, &slow), b = parex_append(c, &fast);
    parex_reply_t *r = call(c, NULL, "ca-other", "2");

    assert_string_equal(r->result, "2");
    parex_reply_free(r);
    /* The two earlier answers, in the order they came (their keys may share a worker). */
    for (int i = 0; i < 2; i++) {
        assert_int_equal(parex_get_reply(c, &r), 0);
        assert_true(r->id == a || r->id == b);
        assert_string_equal(r->result, r->id == a ? "{\"slept_ms\":100}" : "1");
        a = r->id == a ? -1 : a;
        b = r->id == b ? -1 : b;
        parex_reply_free(r);
    }
    assert_true(a == -1 && b == -1);
    parex_free(c);
}

/* Cancel a queued request (true) and a running one (false). The cancels are answered at once;
 * the cancelled request itself is answered failed/cancelled in its key's order, after the
 * running one: so four answers, in any order but that. */
static void test_cancel_and_control(void **state)
{
    parex_ctx_t *c = connect_ok(D.addr, NULL);
    parex_request_t run = {.op = "sleep", .key = "cc", .payload = "{\"ms\":300}"};
    parex_request_t queued = {.op = "sleep", .key = "cc", .payload = "{\"ms\":10}"};
    long long a = parex_append(c, &run), b = parex_append(c, &queued), x, y;
    int seen_a = 0;
    parex_reply_t *r;

    parex_flush(c);
    for (int running = 0; !running;) { /* poll stats until a runs (bounded by a's 300 ms) */
        long long s = parex_append_control(c, "stats", NULL);
        assert_int_equal(parex_get_reply(c, &r), 0);
        assert_int_equal(r->id, s);
        running = strstr(r->result, "\"current_key\":\"cc\"") != NULL;
        parex_reply_free(r);
    }
    x = parex_append_cancel(c, b);
    y = parex_append_cancel(c, a);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(parex_get_reply(c, &r), 0);
        if (r->id == a) {
            assert_int_equal(r->status, PAREX_OK);
            seen_a = 1;
        } else if (r->id == b) {
            assert_int_equal(r->status, PAREX_FAILED);
            assert_string_equal(r->code, "cancelled");
            assert_true(seen_a); /* in key order */
        } else if (r->id == x) {
            assert_non_null(strstr(r->result, "\"cancelled\":true"));
            assert_non_null(strstr(r->result, "\"state\":\"queued\""));
        } else {
            assert_int_equal(r->id, y);
            assert_non_null(strstr(r->result, "\"cancelled\":false"));
            assert_non_null(strstr(r->result, "\"state\":\"running\""));
        }
        parex_reply_free(r);
    }
    parex_append_control(c, "stats", NULL);
    assert_int_equal(parex_get_reply(c, &r), 0);
    assert_int_equal(r->status, PAREX_OK);
    assert_non_null(strstr(r->result, "\"invariant_holds\":true"));
    parex_reply_free(r);
    parex_append_control(c, "unpark", "{\"key\":\"nobody\"}");
    assert_int_equal(parex_get_reply(c, &r), 0);
    assert_non_null(strstr(r->result, "\"done\":false"));
    parex_reply_free(r);
    parex_free(c);
}

/* Relaying lines as they are (parexctl send < file): a raw line, even one that is not JSON,
 * and answers taken without ever blocking. */
static void test_raw_lines_and_poll(void **state)
{
    parex_ctx_t *c = connect_ok(D.addr, NULL);
    static const char line[] = "{\"key\":\"raw\",\"id\":\"r1\"}";
    parex_reply_t *r;
    int got = 0, invalid = 0, rc;

    assert_int_equal(parex_append_raw(c, line, strlen(line)), 0); /* a newline is added */
    assert_int_equal(parex_append_raw(c, "not json\n", 9), 0);
    while (got < 2) {
        struct pollfd p = {.fd = parex_fd(c), .events = POLLIN};
        if ((rc = parex_poll_reply(c, &r)) == 0) {
            assert_true(poll(&p, 1, 10000) == 1);
            continue;
        }
        assert_int_equal(rc, 1);
        if (r->status == PAREX_INVALID) {
            assert_string_equal(r->code, "bad_json");
            invalid++;
        } else {
            assert_string_equal(r->id_json, "\"r1\"");
        }
        parex_reply_free(r);
        got++;
    }
    assert_int_equal(invalid, 1);
    /* After parex_send_eof parexd answers what it got and closes: -1, PAREX_ERR_EOF. */
    assert_int_equal(parex_send_eof(c), 0);
    assert_int_equal(parex_get_reply(c, &r), -1);
    assert_int_equal(parex_err(c), PAREX_ERR_EOF);
    parex_free(c);
}

static void test_unix_and_token(void **state)
{
    pxt_daemon_t d;
    char addr[160];
    parex_options_t o = {.token = TOKEN};
    parex_ctx_t *c;
    parex_reply_t *r;

    pxt_daemon_start(&d, "\"auth_token\":\"" TOKEN "\"", 1);
    snprintf(addr, sizeof addr, "unix:%s", d.unix_path);
    c = connect_ok(addr, &o);
    r = call(c, NULL, "u", "[1]");
    assert_int_equal(r->status, PAREX_OK);
    parex_reply_free(r);
    parex_free(c);
    c = connect_ok(d.addr, NULL); /* no token */
    r = call(c, NULL, "u", "[1]");
    assert_int_equal(r->status, PAREX_REJECTED);
    assert_string_equal(r->code, "unauthorized");
    parex_reply_free(r);
    parex_free(c);
    assert_int_equal(pxt_daemon_stop(&d, 0), 0);
}

static void test_transport_errors(void **state)
{
    pxt_daemon_t d;
    parex_options_t o = {.timeout_ms = 50};
    parex_request_t slow = {.op = "sleep", .key = "t", .payload = "{\"ms\":2000}"};
    parex_ctx_t *c = parex_connect("127.0.0.1:notaport", NULL);
    parex_reply_t *r;

    assert_int_equal(parex_err(c), PAREX_ERR_ARG);
    assert_non_null(strstr(parex_errstr(c), "not HOST:PORT"));
    assert_int_equal(parex_append(c, &slow), -1); /* a failed connect stays failed */
    parex_free(c);
    c = parex_connect("unix:/nonexistent/parexd.sock", NULL);
    assert_int_equal(parex_err(c), PAREX_ERR_IO);
    assert_non_null(strstr(parex_errstr(c), "/nonexistent/parexd.sock"));
    parex_free(c);
    /* timeout_ms bounds a wait for an answer. */
    c = connect_ok(D.addr, &o);
    assert_null(parex_call(c, &slow));
    assert_int_equal(parex_err(c), PAREX_ERR_TIMEOUT);
    parex_free(c);
    /* The daemon going away: EOF. */
    pxt_daemon_start(&d, "", 0);
    c = connect_ok(d.addr, NULL);
    parex_append(c, &slow);
    parex_flush(c);
    pxt_daemon_stop(&d, 1);
    assert_int_equal(parex_get_reply(c, &r), -1);
    assert_true(parex_err(c) == PAREX_ERR_EOF || parex_err(c) == PAREX_ERR_IO); /* FIN or RST */
    parex_free(c);
}

/* ---- async ---- */

typedef struct tally {
    int ok, failed, disconnected, other, calls, disconnect_cb, disconnect_status, connect_cb;
    long long last_id[8];
    int order_broken;
    char result[256], cancel_result[256];
    parex_async_t *free_in_cb; /* free this context from the first callback */
} tally_t;

static void on_answer(parex_async_t *ac, parex_reply_t *r, void *priv)
{
    tally_t *t = parex_async_get_data(ac);
    intptr_t k = (intptr_t)priv;

    t->calls++;
    if (r->status == PAREX_OK) {
        t->ok++;
        if (r->result)
            snprintf(t->result, sizeof t->result, "%s", r->result);
    } else if (r->status == PAREX_DISCONNECTED) {
        t->disconnected++;
        assert_string_equal(r->code, "disconnected");
    } else if (r->status == PAREX_FAILED) {
        t->failed++;
    } else {
        t->other++;
    }
    if (k >= 0 && k < 8 && r->status == PAREX_OK) {
        if (r->id <= t->last_id[k])
            t->order_broken++;
        t->last_id[k] = r->id;
    }
    parex_reply_free(r);
    if (t->free_in_cb) {
        parex_async_t *f = t->free_in_cb;
        t->free_in_cb = NULL;
        parex_async_free(f);
    }
}

static void on_disconnect(parex_async_t *ac, int status)
{
    tally_t *t = parex_async_get_data(ac);

    t->disconnect_cb++;
    t->disconnect_status = status;
}

static void on_connect(parex_async_t *ac, int status)
{
    tally_t *t = parex_async_get_data(ac);

    t->connect_cb++;
    assert_int_equal(status, 0);
}

static parex_async_t *async_on(uv_loop_t *loop, const char *addr, tally_t *t)
{
    parex_async_t *ac = parex_async_connect(addr, NULL);

    assert_non_null(ac);
    if (parex_async_err(ac))
        fail_msg("async connect: %s", parex_async_errstr(ac));
    memset(t, 0, sizeof *t);
    parex_async_set_data(ac, t);
    parex_async_set_disconnect_cb(ac, on_disconnect);
    parex_async_set_connect_cb(ac, on_connect);
    assert_int_equal(parex_libuv_attach(loop, ac), 0);
    return ac;
}

static long long submit(parex_async_t *ac, const char *op, const char *key, const char *payload,
                        intptr_t k)
{
    parex_request_t req = {.op = op, .key = key, .payload = payload};
    long long id = parex_async_submit(ac, &req, on_answer, (void *)k);

    assert_true(id > 0);
    return id;
}

/* 3000 requests over 8 keys, then a graceful disconnect: every callback once, per key in
 * order, the disconnect callback with 0 after the last answer, and nothing left on the loop. */
static void test_async_answers_and_graceful_disconnect(void **state)
{
    uv_loop_t loop;
    tally_t t;
    char key[8];
    parex_async_t *ac;

    uv_loop_init(&loop);
    ac = async_on(&loop, D.addr, &t);
    for (int i = 0; i < 3000; i++) {
        snprintf(key, sizeof key, "a%d", i % 8);
        if (i % 100 == 0)
            submit(ac, "fail", key, "{\"message\":\"x\"}", -1);
        else
            submit(ac, NULL, key, "{}", i % 8);
    }
    assert_int_equal(parex_async_pending(ac), 3000);
    parex_async_disconnect(ac);
    { /* no more requests once disconnecting */
        parex_request_t req = {.key = "late"};
        assert_int_equal(parex_async_submit(ac, &req, on_answer, NULL), -1);
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(t.connect_cb, 1);
    assert_int_equal(t.calls, 3000);
    assert_int_equal(t.ok, 2970);
    assert_int_equal(t.failed, 30);
    assert_int_equal(t.order_broken, 0);
    assert_int_equal(t.disconnect_cb, 1);
    assert_int_equal(t.disconnect_status, 0);
    parex_async_free(ac);
    assert_int_equal(t.disconnect_cb, 1); /* not again */
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void on_cancel(parex_async_t *ac, parex_reply_t *r, void *priv)
{
    tally_t *t = parex_async_get_data(ac);

    snprintf(t->cancel_result, sizeof t->cancel_result, "%s", r->result ? r->result : "");
    parex_reply_free(r);
    parex_async_disconnect(ac);
}

static void test_async_cancel(void **state)
{
    uv_loop_t loop;
    tally_t t;
    parex_async_t *ac;
    long long queued;

    uv_loop_init(&loop);
    ac = async_on(&loop, D.addr, &t);
    submit(ac, "sleep", "ac", "{\"ms\":200}", -1);
    queued = submit(ac, "sleep", "ac", "{\"ms\":10}", -1);
    assert_true(parex_async_cancel(ac, queued, on_cancel, NULL) > 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_non_null(strstr(t.cancel_result, "\"cancelled\":true"));
    assert_int_equal(t.ok, 1);
    assert_int_equal(t.failed, 1); /* the queued one, answered failed/cancelled */
    parex_async_free(ac);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* Freed with requests pending, from inside a callback: each remaining callback runs once with a
 * disconnect answer, then the disconnect callback, and the loop is left empty. */
static void test_async_free_with_pending(void **state)
{
    uv_loop_t loop;
    tally_t t;
    parex_async_t *ac;

    uv_loop_init(&loop);
    ac = async_on(&loop, D.addr, &t);
    submit(ac, NULL, "fp-fast", "1", -1);
    for (int i = 0; i < 5; i++)
        submit(ac, "sleep", "fp-slow", "{\"ms\":2000}", -1);
    t.free_in_cb = ac;
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(t.calls, 6);
    assert_int_equal(t.ok, 1);
    assert_int_equal(t.disconnected, 5);
    assert_int_equal(t.disconnect_cb, 1);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void kill_daemon_cb(uv_timer_t *timer)
{
    pxt_daemon_stop(timer->data, 1);
    uv_close((uv_handle_t *)timer, NULL);
}

static void test_async_daemon_dies(void **state)
{
    uv_loop_t loop;
    uv_timer_t timer;
    pxt_daemon_t d;
    tally_t t;
    parex_async_t *ac;

    pxt_daemon_start(&d, "", 0);
    uv_loop_init(&loop);
    ac = async_on(&loop, d.addr, &t);
    for (int i = 0; i < 4; i++)
        submit(ac, "sleep", "dd", "{\"ms\":5000}", -1);
    uv_timer_init(&loop, &timer);
    timer.data = &d;
    uv_timer_start(&timer, kill_daemon_cb, 100, 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(t.disconnected, 4);
    assert_int_equal(t.disconnect_cb, 1);
    assert_int_equal(t.disconnect_status, -1);
    assert_int_equal(parex_async_err(ac), PAREX_ERR_EOF);
    parex_async_free(ac);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void test_async_connect_refused(void **state)
{
    parex_async_t *ac = parex_async_connect("unix:/nonexistent/parexd.sock", NULL);

    assert_int_equal(parex_async_err(ac), PAREX_ERR_IO);
    parex_async_free(ac);
}

static int up(void **state)
{
    pxt_daemon_start(
        &D, "\"workers\":2,\"queue_capacity\":8192,\"max_in_flight_per_connection\":100000", 0);
    return 0;
}

static int down(void **state)
{
    return pxt_daemon_stop(&D, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_call_statuses),
        cmocka_unit_test(test_argument_errors),
        cmocka_unit_test(test_pipelining),
        cmocka_unit_test(test_call_after_appends),
        cmocka_unit_test(test_cancel_and_control),
        cmocka_unit_test(test_raw_lines_and_poll),
        cmocka_unit_test(test_unix_and_token),
        cmocka_unit_test(test_transport_errors),
        cmocka_unit_test(test_async_answers_and_graceful_disconnect),
        cmocka_unit_test(test_async_cancel),
        cmocka_unit_test(test_async_free_with_pending),
        cmocka_unit_test(test_async_daemon_dies),
        cmocka_unit_test(test_async_connect_refused),
    };
    return cmocka_run_group_tests(tests, up, down);
}
