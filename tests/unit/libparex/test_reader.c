/* libparex's reader without any socket: answers split anywhere, several per feed, CRLF and
 * blank lines, over-long lines skipped up to their newline, bad JSON reported and skipped, and
 * every member of an answer decoded into the reply. */
#include <parex/client.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

static const char OK[] =
    "{\"id\":7,\"status\":\"ok\",\"worker\":3,\"queue_ms\":0.041,\"run_ms\":0.012,"
    "\"result\":{\"a\":[1,2]}}\n";

static parex_reply_t *take(parex_reader_t *r)
{
    parex_reply_t *rep = NULL;

    assert_int_equal(parex_reader_get_reply(r, &rep), 1);
    assert_non_null(rep);
    return rep;
}

static void assert_none(parex_reader_t *r)
{
    parex_reply_t *rep = (parex_reply_t *)1;

    assert_int_equal(parex_reader_get_reply(r, &rep), 0);
    assert_null(rep);
}

static void test_ok_fields(void **state)
{
    parex_reader_t *r = parex_reader_create(0);
    parex_reply_t *rep;

    assert_int_equal(parex_reader_feed(r, OK, strlen(OK)), 0);
    rep = take(r);
    assert_int_equal(rep->status, PAREX_OK);
    assert_string_equal(parex_status_str(rep->status), "ok");
    assert_int_equal(rep->id, 7);
    assert_string_equal(rep->id_json, "7");
    assert_string_equal(rep->result, "{\"a\":[1,2]}"); /* compact JSON text */
    assert_null(rep->code);
    assert_null(rep->message);
    assert_int_equal(rep->worker, 3);
    assert_true(rep->queue_ms > 0.04 && rep->queue_ms < 0.042);
    assert_true(rep->run_ms > 0.011 && rep->run_ms < 0.013);
    assert_int_equal(rep->retry_after_ms, -1);
    assert_int_equal(rep->line_len, strlen(OK) - 1);
    assert_memory_equal(rep->line, OK, rep->line_len);
    parex_reply_free(rep);
    assert_none(r);
    assert_int_equal(parex_reader_buffered(r), 0);
    parex_reader_free(r);
}

/* parexd's success lines are read by a template (reply.c fast_ok); anything else by jansson.
 * Both give the same reply, and a retrying handler's ,"attempts":N is not part of the result. */
static void test_fast_and_full_paths_agree(void **state)
{
    static const char in[] =
        "{\"id\":12,\"status\":\"ok\",\"worker\":1,\"queue_ms\":1.5,\"run_ms\":20.25,"
        "\"result\":[1,\"a,\\\"attempts\\\":3\"]}\n"
        "{\"id\": 12,\"status\":\"ok\",\"worker\":1,\"queue_ms\":1.5,\"run_ms\":20.25,"
        "\"result\":[1,\"a,\\\"attempts\\\":3\"]}\n"
        "{\"id\":13,\"status\":\"ok\",\"worker\":0,\"queue_ms\":0,\"run_ms\":0.5,"
        "\"result\":{\"n\":7},\"attempts\":2}\n"
        "{\"id\":14,\"status\":\"ok\",\"worker\":0,\"queue_ms\":0,\"run_ms\":0,"
        "\"result\":5}\n";
    parex_reader_t *r = parex_reader_create(0);
    parex_reply_t *a, *b;

    parex_reader_feed(r, in, strlen(in));
    a = take(r); /* the template */
    b = take(r); /* a space after "id": jansson */
    assert_int_equal(a->id, b->id);
    assert_string_equal(a->id_json, b->id_json);
    assert_string_equal(a->result, b->result);
    assert_string_equal(a->result, "[1,\"a,\\\"attempts\\\":3\"]");
    assert_int_equal(a->worker, b->worker);
    assert_true(a->queue_ms == b->queue_ms && a->queue_ms == 1.5);
    assert_true(a->run_ms == b->run_ms && a->run_ms == 20.25);
    assert_null(a->code);
    parex_reply_free(a);
    parex_reply_free(b);
    a = take(r);
    assert_int_equal(a->id, 13);
    assert_string_equal(a->result, "{\"n\":7}");
    parex_reply_free(a);
    a = take(r);
    assert_string_equal(a->result, "5");
    parex_reply_free(a);
    parex_reader_free(r);
}

static void test_error_answers(void **state)
{
    static const char in[] =
        "{\"id\":\"job-1\",\"status\":\"rejected\",\"worker\":1,\"error\":{\"code\":\"queue_full\","
        "\"message\":\"full\"},\"retry_after_ms\":12}\n"
        "{\"id\":null,\"status\":\"invalid\",\"error\":{\"code\":\"bad_json\",\"message\":\"x\"}}\n"
        "{\"id\":9,\"status\":\"failed\",\"worker\":0,\"queue_ms\":1,\"run_ms\":2,"
        "\"error\":{\"code\":\"handler_error\",\"message\":\"boom\"}}\n";
    parex_reader_t *r = parex_reader_create(0);
    parex_reply_t *rep;

    parex_reader_feed(r, in, strlen(in));
    rep = take(r);
    assert_int_equal(rep->status, PAREX_REJECTED);
    assert_int_equal(rep->id, -1); /* not an integer id */
    assert_string_equal(rep->id_json, "\"job-1\"");
    assert_string_equal(rep->code, "queue_full");
    assert_string_equal(rep->message, "full");
    assert_int_equal(rep->retry_after_ms, 12);
    assert_null(rep->result);
    parex_reply_free(rep);
    rep = take(r);
    assert_int_equal(rep->status, PAREX_INVALID);
    assert_string_equal(rep->id_json, "null");
    assert_string_equal(rep->code, "bad_json");
    parex_reply_free(rep);
    rep = take(r);
    assert_int_equal(rep->status, PAREX_FAILED);
    assert_string_equal(rep->code, "handler_error");
    assert_string_equal(rep->message, "boom");
    assert_int_equal(rep->worker, 0);
    parex_reply_free(rep);
    assert_none(r);
    parex_reader_free(r);
}

/* The same stream fed one byte at a time gives the same answers, each only once whole. */
static void test_split_anywhere(void **state)
{
    char stream[4096];
    size_t n = 0;
    int got = 0;

    for (int i = 0; i < 20; i++)
        n += (size_t)snprintf(stream + n, sizeof stream - n,
                              "{\"id\":%d,\"status\":\"ok\",\"result\":\"r%d\"}%s", i + 1, i,
                              i % 3 ? "\n" : "\r\n");
    for (size_t step = 1; step <= 7; step++) {
        parex_reader_t *r = parex_reader_create(0);
        got = 0;
        for (size_t at = 0; at < n; at += step) {
            parex_reply_t *rep;
            size_t k = n - at < step ? n - at : step;
            parex_reader_feed(r, stream + at, k);
            while (parex_reader_get_reply(r, &rep) == 1) {
                char want[16];
                snprintf(want, sizeof want, "\"r%d\"", got);
                assert_int_equal(rep->id, got + 1);
                assert_string_equal(rep->result, want);
                assert_null(memchr(rep->line, '\r', rep->line_len));
                parex_reply_free(rep);
                got++;
            }
        }
        assert_int_equal(got, 20);
        parex_reader_free(r);
    }
}

static void test_blank_lines_skipped(void **state)
{
    static const char in[] = "\n\r\n{\"id\":1,\"status\":\"ok\"}\n\n{\"status\":\"ok\"}\n";
    parex_reader_t *r = parex_reader_create(0);
    parex_reply_t *rep;

    parex_reader_feed(r, in, strlen(in));
    rep = take(r);
    assert_int_equal(rep->id, 1);
    assert_null(rep->result);
    parex_reply_free(rep);
    rep = take(r); /* no id at all */
    assert_int_equal(rep->id, -1);
    assert_string_equal(rep->id_json, "null");
    parex_reply_free(rep);
    assert_none(r);
    parex_reader_free(r);
}

/* Over max_line_bytes: reported once, skipped up to its newline (even when it arrives in many
 * pieces, never buffered whole), and the answers after it come through. */
static void test_long_line(void **state)
{
    parex_reader_t *r = parex_reader_create(64);
    static const char next[] = "{\"id\":2,\"status\":\"ok\"}\n";
    char big[100];
    parex_reply_t *rep;

    memset(big, 'x', sizeof big);
    parex_reader_feed(r, "{\"id\":1,\"result\":\"", 18);
    for (int i = 0; i < 50; i++) { /* 5000 bytes of one line */
        parex_reader_feed(r, big, sizeof big);
        int rc = parex_reader_get_reply(r, &rep);
        if (i == 0) {
            assert_int_equal(rc, -1);
            assert_non_null(strstr(parex_reader_errstr(r), "max_line_bytes"));
        } else {
            assert_int_equal(rc, 0);
        }
        assert_true(parex_reader_buffered(r) <= 64);
    }
    parex_reader_feed(r, "\"}\n", 3);
    parex_reader_feed(r, next, strlen(next));
    rep = take(r);
    assert_int_equal(rep->id, 2);
    parex_reply_free(rep);
    /* A long line that arrives whole, newline included, is reported too. */
    parex_reader_feed(r, big, sizeof big);
    parex_reader_feed(r, "\n", 1);
    parex_reader_feed(r, next, strlen(next));
    assert_int_equal(parex_reader_get_reply(r, &rep), -1);
    rep = take(r);
    assert_int_equal(rep->id, 2);
    parex_reply_free(rep);
    parex_reader_free(r);
}

static void test_bad_json(void **state)
{
    static const char in[] = "not json\n[1,2]\n{\"id\":3}\n{\"id\":4,\"status\":\"ok\"}\n";
    parex_reader_t *r = parex_reader_create(0);
    parex_reply_t *rep;

    parex_reader_feed(r, in, strlen(in));
    assert_int_equal(parex_reader_get_reply(r, &rep), -1);
    assert_null(rep);
    assert_non_null(strstr(parex_reader_errstr(r), "not a JSON object"));
    assert_int_equal(parex_reader_get_reply(r, &rep), -1); /* an array */
    assert_int_equal(parex_reader_get_reply(r, &rep), -1); /* no status */
    assert_non_null(strstr(parex_reader_errstr(r), "no status"));
    rep = take(r);
    assert_int_equal(rep->id, 4);
    parex_reply_free(rep);
    parex_reader_free(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ok_fields),
        cmocka_unit_test(test_fast_and_full_paths_agree),
        cmocka_unit_test(test_error_answers),
        cmocka_unit_test(test_split_anywhere),
        cmocka_unit_test(test_blank_lines_skipped),
        cmocka_unit_test(test_long_line),
        cmocka_unit_test(test_bad_json),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
