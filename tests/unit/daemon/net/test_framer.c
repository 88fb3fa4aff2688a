/* Unit tests for framer.c: bytes in, '\n'-terminated lines out, however the bytes are split
 * between reads. A trailing '\r' is dropped; an over-long line is reported once, as soon as it
 * is known to be too long, and skipped up to its newline so the next line is read as usual. */
#include "daemon/net/framer.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

/* What the callback saw, in order: "L:<text>" for a line, "TOO_LONG" for an over-long one. */
typedef struct rec {
    int n;
    char ev[64][128];
    size_t too_long_len[64];
} rec_t;

static void on_line(void *arg, const char *line, size_t len, int too_long)
{
    rec_t *r = arg;

    assert_true(r->n < 64);
    if (too_long) {
        assert_null(line);
        snprintf(r->ev[r->n], sizeof r->ev[0], "TOO_LONG");
        r->too_long_len[r->n] = len;
    } else {
        assert_non_null(line);
        assert_true(len < 120);
        snprintf(r->ev[r->n], sizeof r->ev[0], "L:%.*s", (int)len, line);
    }
    r->n++;
}

static void feed(px_framer_t *f, rec_t *r, const char *s)
{
    assert_int_equal(px_framer_feed(f, s, strlen(s), on_line, r), 0);
}

/* The events must be exactly these, in this order. */
static void expect(const rec_t *r, int n, ...)
{
    va_list ap;

    if (r->n != n) {
        for (int i = 0; i < r->n; i++)
            print_message("event %d: %s\n", i, r->ev[i]);
        fail_msg("%d events, want %d", r->n, n);
    }
    va_start(ap, n);
    for (int i = 0; i < n; i++)
        assert_string_equal(r->ev[i], va_arg(ap, const char *));
    va_end(ap);
}

static void test_whole_lines(void **state)
{
    px_framer_t f;
    rec_t r = {0};

    px_framer_init(&f, 100);
    feed(&f, &r, "one\ntwo\nthree\n");
    expect(&r, 3, "L:one", "L:two", "L:three");
    px_framer_free(&f);
}

static void test_empty_lines_are_lines(void **state)
{
    px_framer_t f;
    rec_t r = {0};

    px_framer_init(&f, 100);
    feed(&f, &r, "\n\r\nx\n");
    expect(&r, 3, "L:", "L:", "L:x");
    px_framer_free(&f);
}

static void test_split_across_feeds(void **state)
{
    px_framer_t f;
    rec_t r = {0};

    px_framer_init(&f, 100);
    feed(&f, &r, "{\"key\":");
    feed(&f, &r, "\"a\"}");
    expect(&r, 0);
    feed(&f, &r, "\n{\"ke");
    expect(&r, 1, "L:{\"key\":\"a\"}");
    feed(&f, &r, "y\":\"b\"}\nlast");
    expect(&r, 2, "L:{\"key\":\"a\"}", "L:{\"key\":\"b\"}");
    feed(&f, &r, "\n");
    expect(&r, 3, "L:{\"key\":\"a\"}", "L:{\"key\":\"b\"}", "L:last");
    px_framer_free(&f);
}

/* Every byte in its own read gives the same lines as one read. */
static void test_byte_at_a_time(void **state)
{
    static const char text[] = "alpha\r\nbeta\n\ngamma\r\n";
    px_framer_t f;
    rec_t r = {0};

    px_framer_init(&f, 100);
    for (size_t i = 0; i < sizeof text - 1; i++)
        assert_int_equal(px_framer_feed(&f, &text[i], 1, on_line, &r), 0);
    expect(&r, 4, "L:alpha", "L:beta", "L:", "L:gamma");
    px_framer_free(&f);
}

static void test_cr_stripping(void **state)
{
    px_framer_t f;
    rec_t r = {0};

    px_framer_init(&f, 100);
    feed(&f, &r, "a\r\nb\r");
    feed(&f, &r, "\nc\r\r\nd\re\n");
    /* Only the one '\r' right before '\n' goes; others are content. */
    expect(&r, 4, "L:a", "L:b", "L:c\r", "L:d\re");
    px_framer_free(&f);
}

/* max counts the line's own bytes: '\n' and a trailing '\r' are not part of it. */
static void test_exact_limit(void **state)
{
    px_framer_t f;
    rec_t r = {0};

    px_framer_init(&f, 8);
    feed(&f, &r, "12345678\n");   /* exactly max, one read */
    feed(&f, &r, "abcdefgh\r\n"); /* exactly max plus '\r' */
    feed(&f, &r, "ABCD");         /* exactly max, split */
    feed(&f, &r, "EFGH\r");
    feed(&f, &r, "\n");
    expect(&r, 3, "L:12345678", "L:abcdefgh", "L:ABCDEFGH");
    px_framer_free(&f);
}

static void test_too_long_in_one_read(void **state)
{
    px_framer_t f;
    rec_t r = {0};

    px_framer_init(&f, 8);
    feed(&f, &r, "123456789\nnext\n");
    expect(&r, 2, "TOO_LONG", "L:next");
    assert_true(r.too_long_len[0] >= 9);
    px_framer_free(&f);
}

/* The over-long line is reported as soon as the limit is passed (before its newline arrives),
 * exactly once however many more reads it spans, and the line after it is delivered. */
static void test_too_long_streaming(void **state)
{
    px_framer_t f;
    rec_t r = {0};

    px_framer_init(&f, 8);
    feed(&f, &r, "0123456789");
    expect(&r, 1, "TOO_LONG");
    assert_true(r.too_long_len[0] > 8);
    feed(&f, &r, "still the same endless line");
    feed(&f, &r, "and more of it");
    expect(&r, 1, "TOO_LONG");
    feed(&f, &r, "tail\nok\n");
    expect(&r, 2, "TOO_LONG", "L:ok");
    px_framer_free(&f);
}

/* A partial line that grows past the limit in a later read (with its newline in that read). */
static void test_too_long_partial_then_newline(void **state)
{
    px_framer_t f;
    rec_t r = {0};

    px_framer_init(&f, 8);
    feed(&f, &r, "0123");
    expect(&r, 0);
    feed(&f, &r, "456789abc\nafter\n");
    expect(&r, 2, "TOO_LONG", "L:after");
    /* max + 1 bytes split, the last not a '\r': too long once its newline shows it. */
    feed(&f, &r, "01234");
    feed(&f, &r, "5678");
    feed(&f, &r, "\nz\n");
    expect(&r, 4, "TOO_LONG", "L:after", "TOO_LONG", "L:z");
    px_framer_free(&f);
}

/* Two over-long lines in a row are two reports; a valid line between is delivered. */
static void test_consecutive_too_long(void **state)
{
    px_framer_t f;
    rec_t r = {0};

    px_framer_init(&f, 4);
    feed(&f, &r, "aaaaaaaaaa\nbbbbbbbbbbbb");
    feed(&f, &r, "bbb\nok\ncccccccccc\n");
    expect(&r, 4, "TOO_LONG", "TOO_LONG", "L:ok", "TOO_LONG");
    px_framer_free(&f);
}

static void test_finish_delivers_unterminated_line(void **state)
{
    px_framer_t f;
    rec_t r = {0};

    px_framer_init(&f, 100);
    feed(&f, &r, "first\nsecond-without-newline");
    expect(&r, 1, "L:first");
    px_framer_finish(&f, on_line, &r);
    expect(&r, 2, "L:first", "L:second-without-newline");
    /* Nothing is left to deliver twice. */
    px_framer_finish(&f, on_line, &r);
    expect(&r, 2, "L:first", "L:second-without-newline");

    /* A trailing '\r' is stripped there too. */
    feed(&f, &r, "third\r");
    px_framer_finish(&f, on_line, &r);
    expect(&r, 3, "L:first", "L:second-without-newline", "L:third");
    px_framer_free(&f);
}

static void test_finish_with_nothing_pending(void **state)
{
    px_framer_t f;
    rec_t r = {0};

    px_framer_init(&f, 100);
    px_framer_finish(&f, on_line, &r);
    feed(&f, &r, "x\n");
    px_framer_finish(&f, on_line, &r);
    expect(&r, 1, "L:x");
    px_framer_free(&f);
}

/* An over-long line cut off by end-of-stream was already reported; finish adds nothing, and the
 * framer is usable afterwards. */
static void test_finish_inside_too_long(void **state)
{
    px_framer_t f;
    rec_t r = {0};

    px_framer_init(&f, 4);
    feed(&f, &r, "0123456789");
    px_framer_finish(&f, on_line, &r);
    expect(&r, 1, "TOO_LONG");
    feed(&f, &r, "ok\n");
    expect(&r, 2, "TOO_LONG", "L:ok");
    px_framer_free(&f);
}

/* A big line (bigger than any single read) within the limit arrives intact and once. */
struct big {
    int calls, too_long;
    size_t len;
    int intact;
    const char *want;
};

static void on_big(void *arg, const char *line, size_t len, int too_long)
{
    struct big *b = arg;

    b->calls++;
    b->too_long += too_long;
    b->len = len;
    b->intact = line && memcmp(line, b->want, len) == 0;
}

static void test_large_line_within_limit(void **state)
{
    enum { LEN = 300000, CHUNK = 65536 };
    char *text = malloc(LEN + 1);
    struct big got = {0};
    px_framer_t f;

    assert_non_null(text);
    for (size_t i = 0; i < LEN; i++)
        text[i] = (char)('a' + i % 26);
    text[LEN] = '\n';
    got.want = text;

    px_framer_init(&f, LEN);
    for (size_t off = 0; off < LEN + 1; off += CHUNK) {
        size_t n = LEN + 1 - off < CHUNK ? LEN + 1 - off : CHUNK;
        assert_int_equal(px_framer_feed(&f, text + off, n, on_big, &got), 0);
    }
    assert_int_equal(got.calls, 1);
    assert_int_equal(got.too_long, 0);
    assert_int_equal(got.len, LEN);
    assert_true(got.intact);
    px_framer_free(&f);
    free(text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_whole_lines),
        cmocka_unit_test(test_empty_lines_are_lines),
        cmocka_unit_test(test_split_across_feeds),
        cmocka_unit_test(test_byte_at_a_time),
        cmocka_unit_test(test_cr_stripping),
        cmocka_unit_test(test_exact_limit),
        cmocka_unit_test(test_too_long_in_one_read),
        cmocka_unit_test(test_too_long_streaming),
        cmocka_unit_test(test_too_long_partial_then_newline),
        cmocka_unit_test(test_consecutive_too_long),
        cmocka_unit_test(test_finish_delivers_unterminated_line),
        cmocka_unit_test(test_finish_with_nothing_pending),
        cmocka_unit_test(test_finish_inside_too_long),
        cmocka_unit_test(test_large_line_within_limit),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
