/* buf.c: growth, JSON string escaping, and the printf-free number formatting used on every
 * response line (checked against printf itself). */
#include "common/buf.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

static void expect_text(px_buf_t *b, const char *want)
{
    assert_int_equal(b->len, strlen(want));
    assert_memory_equal(b->data, want, b->len);
    b->len = 0;
}

static void test_uint_matches_printf(void **state)
{
    static const uint64_t v[] = {0, 7, 10, 99, 100, 12345, 4294967296ull, 18446744073709551615ull};
    px_buf_t b = {0};
    char want[32];

    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        snprintf(want, sizeof want, "%llu", (unsigned long long)v[i]);
        assert_int_equal(px_buf_uint(&b, v[i]), 0);
        expect_text(&b, want);
    }
    px_buf_free(&b);
}

static void test_fixed3_matches_printf(void **state)
{
    static const double v[] = {0, 0.0004, 0.0005, 0.001, 0.0126, 1.5, 9.9995, 123.456, 59999.9994};
    px_buf_t b = {0};
    char want[64];

    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        /* Both round half away from zero at the third decimal for these values. */
        snprintf(want, sizeof want, "%.3f", v[i] + 1e-12);
        assert_int_equal(px_buf_fixed3(&b, v[i]), 0);
        expect_text(&b, want);
    }
    /* Out of the fast path's range: still correct, through printf. */
    assert_int_equal(px_buf_fixed3(&b, -1.25), 0);
    expect_text(&b, "-1.250");
    px_buf_free(&b);
}

static void test_json_string_escapes(void **state)
{
    px_buf_t b = {0};

    assert_int_equal(px_buf_json_string(&b, "a\"b\\c\n\t\x01", 8), 0);
    expect_text(&b, "\"a\\\"b\\\\c\\n\\t\\u0001\"");
    px_buf_free(&b);
}

static void test_json_string_keeps_utf8_and_replaces_the_rest(void **state)
{
    px_buf_t b = {0};

    /* Valid two-, three- and four-byte sequences pass unchanged. */
    assert_int_equal(px_buf_json_string(&b, "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", 9), 0);
    expect_text(&b, "\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"");
    /* A stray byte, a cut sequence and a surrogate become U+FFFD. */
    assert_int_equal(px_buf_json_string(&b, "a\xbe\xe2\x82", 4), 0);
    expect_text(&b, "\"a\\ufffd\\ufffd\\ufffd\"");
    assert_int_equal(px_buf_json_string(&b, "\xed\xa0\x80", 3), 0);
    expect_text(&b, "\"\\ufffd\\ufffd\\ufffd\"");
    px_buf_free(&b);
}

static void test_growth_keeps_content(void **state)
{
    px_buf_t b = {0};

    for (int i = 0; i < 10000; i++)
        assert_int_equal(px_buf_append(&b, "x", 1), 0);
    assert_int_equal(b.len, 10000);
    assert_true(b.cap >= 10000);
    assert_int_equal(b.data[9999], 'x');
    px_buf_free(&b);
    assert_null(b.data);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_uint_matches_printf),
        cmocka_unit_test(test_fixed3_matches_printf),
        cmocka_unit_test(test_json_string_escapes),
        cmocka_unit_test(test_json_string_keeps_utf8_and_replaces_the_rest),
        cmocka_unit_test(test_growth_keeps_content),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
