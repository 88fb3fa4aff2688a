/* common/hostport.c: "HOST:PORT" as configs and command lines spell it. */
#include "common/hostport.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

static void test_hostport(void **state)
{
    char host[64];
    int port = -1;

    assert_int_equal(px_parse_hostport("127.0.0.1:7400", host, sizeof host, &port), 0);
    assert_string_equal(host, "127.0.0.1");
    assert_int_equal(port, 7400);

    assert_int_equal(px_parse_hostport("[::1]:7400", host, sizeof host, &port), 0);
    assert_string_equal(host, "::1");
    assert_int_equal(port, 7400);

    assert_int_equal(px_parse_hostport("[fe80::1%lo]:1", host, sizeof host, &port), 0);
    assert_string_equal(host, "fe80::1%lo");
    assert_int_equal(port, 1);

    assert_int_equal(px_parse_hostport("localhost:0", host, sizeof host, &port), 0);
    assert_string_equal(host, "localhost");
    assert_int_equal(port, 0);

    assert_int_equal(px_parse_hostport("h:65535", host, sizeof host, &port), 0);
    assert_int_equal(port, 65535);

    static const char *const bad[] = {
        "",        "7400",  ":7400",     "host:",     "host:65536", "host:-1",
        "host:7x", "[::1]", "[::1]7400", "[::1:7400", "[]:7400",    "host:7400 ",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        port = -1;
        if (px_parse_hostport(bad[i], host, sizeof host, &port) != -1)
            fail_msg("\"%s\" was accepted as HOST:PORT", bad[i]);
    }

    /* A host that does not fit the caller's buffer is an error, not a truncation. */
    assert_int_equal(px_parse_hostport("abcdefgh:1", host, 8, &port), -1);
    assert_int_equal(px_parse_hostport("abcdefg:1", host, 8, &port), 0);
    assert_string_equal(host, "abcdefg");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hostport),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
