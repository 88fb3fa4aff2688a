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
    px_keys_accepted(&ks, k, now);
    assert_int_equal(px_keys_admit(&ks, "a", 1, now, &k2), PX_KEY_OK);
    assert_ptr_equal(k, k2);
    px_keys_accepted(&ks, k2, now);
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
    px_keys_accepted(&ks, k, now);
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

/* One request of key text that ends with the outcome given (fail: its answer carries msg). */
static void run_one(px_keys_t *ks, const char *key, int ok, const char *msg, uint64_t now)
{
    px_key_t *k;
    px_req_t *r;
    char answer[512];
    int parked;

    assert_int_equal(px_keys_admit(ks, key, strlen(key), now, &k), PX_KEY_OK);
    px_keys_accepted(ks, k, now);
    parked = px_keys_outcome(k, ok, now, ks->after, (uint64_t)ks->for_ms * PX_MS);
    r = px_req_new(key, strlen(key), "1", 1, "null", 4);
    r->kent = k;
    r->parked = parked;
    snprintf(answer, sizeof answer,
             "{\"id\":1,\"status\":\"failed\",\"error\":{\"code\":\"handler_error\","
             "\"message\":\"%s\"}}\n",
             msg);
    assert_int_equal(px_buf_append(&r->out, answer, strlen(answer)), 0);
    px_keys_done(ks, r);
    px_req_free(r);
}

/* Parking and publishing cost O(parked), not O(keys known): many keys with a request in flight
 * are never looked at by a park, the publish it causes or the sweep. */
static void test_park_cost_follows_the_parked_keys(void **state)
{
    px_stats_t st = {0};
    px_keys_t ks;
    px_key_t *k;
    uint64_t now = px_now_ns();
    char key[32];
    json_t *list;

    assert_int_equal(px_keys_init(&ks, 4, 0, 1, 60000, &st), 0);
    for (int i = 0; i < 20000; i++) {
        snprintf(key, sizeof key, "busy%d", i);
        assert_int_equal(px_keys_admit(&ks, key, strlen(key), now, &k), PX_KEY_OK);
        px_keys_accepted(&ks, k, now);
    }
    for (int i = 0; i < 3; i++) {
        snprintf(key, sizeof key, "poison%d", i);
        run_one(&ks, key, 0, "boom", now);
    }
    assert_int_equal(ks.parked_list.n, 3);
    assert_int_equal(atomic_load(&st.c.keys_parked), 3);
    ks.visits = 0;
    px_keys_sweep(&ks);
    px_keys_publish(&ks);
    assert_true(ks.visits <= 2 * 3); /* the parked list twice, none of the 20000 */
    list = px_keys_parked(&ks);
    assert_int_equal(json_array_size(list), 3);
    /* /stats gets the error code, never the message (it may quote a payload). */
    assert_string_equal(json_string_value(json_object_get(json_array_get(list, 0), "last_error")),
                        "handler_error");
    json_decref(list);
    list = px_keys_parked_now(&ks);
    assert_string_equal(json_string_value(json_object_get(json_array_get(list, 0), "last_error")),
                        "boom");
    json_decref(list);
    px_keys_free(&ks);
}

/* A storm of parks does not rebuild the published list once per park: past 64 parked keys the
 * gauge moves at once and the list follows at the next sweep. */
static void test_park_storm_publishes_once_per_sweep(void **state)
{
    px_stats_t st = {0};
    px_keys_t ks;
    uint64_t now = px_now_ns();
    char key[32];
    json_t *list;

    assert_int_equal(px_keys_init(&ks, 4, 0, 1, 60000, &st), 0);
    for (int i = 0; i < 2000; i++) {
        snprintf(key, sizeof key, "storm%d", i);
        run_one(&ks, key, 0, "x", now);
    }
    assert_true(ks.visits <= 64 * 65 / 2); /* quadratic only up to the first 64 */
    assert_int_equal(atomic_load(&st.c.keys_parked), 2000);
    list = px_keys_parked(&ks);
    assert_int_equal(json_array_size(list), 64);
    json_decref(list);
    px_keys_sweep(&ks);
    list = px_keys_parked(&ks);
    assert_int_equal(json_array_size(list), 2000);
    json_decref(list);
    px_keys_free(&ks);
}

/* Keys that failed once and went idle are bounded, and so are parked keys: a stream of new
 * failing keys cannot grow memory without end. */
static void test_failing_keys_are_bounded(void **state)
{
    px_stats_t st = {0};
    px_keys_t ks;
    uint64_t now = px_now_ns();
    char key[32];

    assert_int_equal(px_keys_init(&ks, 4, 0, 3, 60000, &st), 0);
    ks.max_states = 100;
    for (int i = 0; i < 5000; i++) {
        snprintf(key, sizeof key, "once%d", i);
        run_one(&ks, key, 0, "x", now);
    }
    assert_int_equal(ks.idle.n, 100);
    assert_int_equal(ks.tab.count, 100);
    ks.after = 1;
    for (int i = 0; i < 5000; i++) {
        snprintf(key, sizeof key, "park%d", i);
        run_one(&ks, key, 0, "x", now);
    }
    assert_int_equal(ks.idle.n + ks.parked_list.n, 100);
    assert_int_equal(ks.parked_list.n, 100);
    assert_int_equal(ks.tab.count, 100);
    assert_true(px_keys_is_parked(&ks, "park4999", 8)); /* the newest parks are kept */
    assert_false(px_keys_is_parked(&ks, "park0", 5));
    px_keys_free(&ks);
}

/* A message cut to fit is cut between characters, so the key stays in the published list. */
static void test_last_error_is_cut_on_a_character_boundary(void **state)
{
    px_stats_t st = {0};
    px_keys_t ks;
    char msg[400];
    json_t *list;
    const char *got;
    px_key_t *k;

    /* "ab" + 100 two-byte characters: byte 159 of the 160-byte field is inside one of them. */
    memcpy(msg, "ab", 2);
    for (int i = 0; i < 100 * 2; i += 2)
        memcpy(msg + 2 + i, "\xc3\xa9", 2);
    msg[2 + 100 * 2] = '\0';
    assert_int_equal(px_keys_init(&ks, 4, 0, 1, 60000, &st), 0);
    run_one(&ks, "u", 0, msg, px_now_ns());
    k = px_keytab_get(&ks.tab, "u", 1, 0);
    assert_non_null(k);
    assert_int_equal(strlen(k->last_error), 158);
    list = px_keys_parked_now(&ks);
    assert_int_equal(json_array_size(list), 1);
    got = json_string_value(json_object_get(json_array_get(list, 0), "last_error"));
    assert_non_null(got);
    assert_memory_equal(got, msg, 158);
    json_decref(list);
    px_keys_free(&ks);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_off_admits_everything),
        cmocka_unit_test(test_cap_and_release),
        cmocka_unit_test(test_quarantine),
        cmocka_unit_test(test_park_cost_follows_the_parked_keys),
        cmocka_unit_test(test_park_storm_publishes_once_per_sweep),
        cmocka_unit_test(test_failing_keys_are_bounded),
        cmocka_unit_test(test_last_error_is_cut_on_a_character_boundary),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
