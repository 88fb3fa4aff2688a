/* exec/keys.c alone: admission under max_queued_per_key, counting outcomes into quarantine,
 * the parked list, unpark, and the idle entry going away. */
#include "daemon/exec/keys.h"

#include "common/clock.h"

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

static void test_off_admits_everything(void **state)
{
    px_stats_t st = {0};
    px_keys_t ks;
    px_key_t *k;

    assert_int_equal(px_keys_init(&ks, 4, 0, 0, 0, &st), 0);
    assert_int_equal(px_keys_admit(&ks, "a", 1, px_now_ns(), &k), PX_KEY_OK);
    assert_null(k); /* no table kept when no rule is configured */
    px_keys_free(&ks);
}

static void test_cap_and_release(void **state)
{
    px_stats_t st = {0};
    px_keys_t ks;
    px_key_t *k, *k2;
    px_req_t r = {0};
    uint64_t now = px_now_ns();

    assert_int_equal(px_keys_init(&ks, 4, 2, 0, 0, &st), 0);
    assert_int_equal(px_keys_admit(&ks, "a", 1, now, &k), PX_KEY_OK);
    px_keys_accepted(k, now);
    assert_int_equal(px_keys_admit(&ks, "a", 1, now, &k2), PX_KEY_OK);
    assert_ptr_equal(k, k2);
    px_keys_accepted(k2, now);
    assert_int_equal(px_keys_admit(&ks, "a", 1, now, &k2), PX_KEY_BUSY);
    assert_int_equal(k2->in_flight, 2);
    /* Another key is not held back by "a". */
    assert_int_equal(px_keys_admit(&ks, "b", 1, now, &k2), PX_KEY_OK);
    px_keys_unused(&ks, k2, now);
    assert_int_equal(ks.tab.count, 1); /* "b" was refused nothing but held nothing: gone */
    r.kent = k;
    px_keys_done(&ks, &r);
    assert_null(r.kent);
    assert_int_equal(k->in_flight, 1);
    assert_int_equal(px_keys_admit(&ks, "a", 1, now, &k2), PX_KEY_OK);
    px_keys_free(&ks);
}

static void test_quarantine(void **state)
{
    px_stats_t st = {0};
    px_keys_t ks;
    px_key_t *k;
    px_req_t *r;
    uint64_t now = px_now_ns();
    json_t *list;
    static const char answer[] =
        "{\"id\":1,\"status\":\"failed\",\"error\":{\"code\":\"handler_error\",\"message\":"
        "\"boom\"}}\n";

    assert_int_equal(px_keys_init(&ks, 4, 0, 3, 60000, &st), 0);
    assert_int_equal(px_keys_admit(&ks, "p", 1, now, &k), PX_KEY_OK);
    px_keys_accepted(k, now);
    /* A success in between resets the run of failures. */
    assert_int_equal(px_keys_outcome(k, 0, now, 3, 60000 * PX_MS), 0);
    assert_int_equal(px_keys_outcome(k, 0, now, 3, 60000 * PX_MS), 0);
    assert_int_equal(px_keys_outcome(k, 1, now, 3, 60000 * PX_MS), 0);
    assert_int_equal(px_keys_outcome(k, 0, now, 3, 60000 * PX_MS), 0);
    assert_int_equal(px_keys_outcome(k, 0, now, 3, 60000 * PX_MS), 0);
    assert_false(px_key_parked(k, now));
    assert_int_equal(px_keys_outcome(k, 0, now, 3, 60000 * PX_MS), 3);
    assert_true(px_key_parked(k, now + 1));
    assert_true(px_keys_parked_left_ms(k, now) >= 59999);

    /* The loop learns of the park from the answer the worker built. */
    r = px_req_new("p", 1, "1", 1, "null", 4);
    r->kent = k;
    r->parked = 3;
    assert_int_equal(px_buf_append(&r->out, answer, sizeof answer - 1), 0);
    px_keys_done(&ks, r);
    assert_string_equal(k->last_error, "boom");
    assert_int_equal(atomic_load(&st.c.key_parks), 1);
    assert_int_equal(atomic_load(&st.c.keys_parked), 1);
    list = px_keys_parked(&ks);
    assert_int_equal(json_array_size(list), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(list, 0), "key")), "p");
    json_decref(list);
    px_req_free(r);

    assert_int_equal(px_keys_admit(&ks, "p", 1, now + 1, &k), PX_KEY_PARKED);
    assert_true(px_keys_is_parked(&ks, "p", 1));
    assert_int_equal(px_keys_unpark(&ks, "q", 1), -ENOENT);
    assert_int_equal(px_keys_unpark(&ks, "p", 1), 0);
    assert_false(px_keys_is_parked(&ks, "p", 1));
    assert_int_equal(atomic_load(&st.c.keys_parked), 0);
    assert_int_equal(px_keys_admit(&ks, "p", 1, px_now_ns(), &k), PX_KEY_OK);
    px_keys_free(&ks);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_off_admits_everything),
        cmocka_unit_test(test_cap_and_release),
        cmocka_unit_test(test_quarantine),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
