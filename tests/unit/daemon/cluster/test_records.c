/* Unit tests for records.c: the records of one stored message (requests of one partition, or
 * their answers). A record is "<message id> <length>\n<bytes>\n"; a reader must give back exactly
 * what was appended, whatever the bytes, and refuse anything that is not a whole record rather
 * than read past the message. */
#include "daemon/cluster/internal.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

static void test_round_trip(void **state)
{
    static const char bin[] = {'a', '\n', 0, ' ', '9', '\n', 'z'};
    px_buf_t b = {0};
    const char *pos, *end;
    cl_rec_t r;

    (void)state;
    assert_int_equal(cl_rec_append(&b, "a.1", "{\"key\":\"k\"}", 11), 0);
    assert_int_equal(cl_rec_append(&b, "i.idem-2", bin, sizeof bin), 0);
    assert_int_equal(cl_rec_append(&b, "a.3", "", 0), 0);
    pos = b.data;
    end = b.data + b.len;
    assert_int_equal(cl_rec_next(&pos, end, &r), 1);
    assert_string_equal(r.msgid, "a.1");
    assert_int_equal(r.len, 11);
    assert_memory_equal(r.data, "{\"key\":\"k\"}", 11);
    assert_int_equal(cl_rec_next(&pos, end, &r), 1);
    assert_string_equal(r.msgid, "i.idem-2");
    assert_int_equal(r.len, sizeof bin);
    assert_memory_equal(r.data, bin, sizeof bin);
    assert_int_equal(cl_rec_next(&pos, end, &r), 1);
    assert_string_equal(r.msgid, "a.3");
    assert_int_equal(r.len, 0);
    assert_int_equal(cl_rec_next(&pos, end, &r), 0);
    assert_ptr_equal(pos, end);
    px_buf_free(&b);
}

/* Each must be refused (-1), never read beyond its end. */
static void test_malformed(void **state)
{
    static const char *bad[] = {
        "a.1 5\nabc\n",                    /* shorter than its length */
        "a.1 3\nabcX",                     /* no newline after the bytes */
        "a.1 3\nabc",                      /* cut at the end */
        "a.1 x\nabc\n",                    /* length not a number */
        "a.1 3abc\n",                      /* no newline after the length */
        " 3\nabc\n",                       /* empty message id */
        "a.1",                             /* no length */
        "a.1 99999999999999999999\nabc\n", /* length overflows */
        "a.1 -1\nabc\n",
    };
    cl_rec_t r;

    (void)state;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *pos = bad[i], *end = bad[i] + strlen(bad[i]);
        assert_int_equal(cl_rec_next(&pos, end, &r), -1);
        assert_ptr_equal(pos, bad[i]);
    }
}

static void test_long_id_refused(void **state)
{
    char msg[512] = {0};
    const char *pos = msg, *end;
    cl_rec_t r;

    (void)state;
    memset(msg, 'i', 300); /* longer than any message id parexd makes */
    memcpy(msg + 300, " 1\nx\n", 5);
    end = msg + 305;
    assert_int_equal(cl_rec_next(&pos, end, &r), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_long_id_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
