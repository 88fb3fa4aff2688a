/* core/hot.c: the heavy-hitter sketches over a sliding window. Workers record with timestamps
 * read before they take the sketch's lock, so an older timestamp than the window's start must
 * count in the current half, not wipe the window. */
#include "daemon/core/hot.h"

#include "common/clock.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

static json_int_t arrivals(px_hot_t *h, const char *key, uint64_t now)
{
    json_t *top = px_hot_top(h, 10, now), *a = json_object_get(top, "by_arrivals");
    json_int_t n = -1;
    size_t i;
    json_t *e;

    json_array_foreach(a, i, e) if (strcmp(json_string_value(json_object_get(e, "key")), key) == 0)
        n = json_integer_value(json_object_get(e, "count"));
    json_decref(top);
    return n;
}

static void test_out_of_order_timestamps_keep_the_window(void **state)
{
    uint64_t t = 1000 * PX_MS * 1000; /* 1000 s */
    px_hot_t *h = px_hot_new(1);

    assert_non_null(h);
    px_hot_arrival(h, 0, "hot", 3, t);
    px_hot_arrival(h, 0, "hot", 3, t + 5 * PX_MS);
    /* A worker's timestamp from just before the window's half began. */
    px_hot_time(h, 0, "hot", 3, 2 * PX_MS, t - 1 * PX_MS);
    px_hot_arrival(h, 0, "hot", 3, t - 1 * PX_MS);
    assert_int_equal(arrivals(h, "hot", t + 10 * PX_MS), 3);
    /* A minute and more later the counts move to the previous half, and still show. */
    assert_int_equal(arrivals(h, "hot", t + 61000 * PX_MS), 3);
    px_hot_free(h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_out_of_order_timestamps_keep_the_window),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
