/* parex-bench's histogram keeps every value within 1% (the benchmark's promise), and its key
 * distributions draw what they claim. */
#include "bench/hist.h"
#include "bench/keys.h"

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>

static void test_every_bucket_within_one_percent(void **state)
{
    /* The bucket holding v is no wider than 1/128 of its lower bound, so the reported upper
     * bound is within 0.8% of v, for every v. Walk each bucket edge and a spread of values. */
    for (uint64_t v = 1; v < (1ull << 43); v = v < 4096 ? v + 1 : v + v / 977 + 1) {
        uint32_t i = px_bhist_index(v);
        uint64_t up = px_bhist_upper(i);
        assert_true(up >= v);
        assert_true((double)(up - v) <= (double)v / 128.0);
        if (i > 0)
            assert_true(px_bhist_upper(i - 1) < v); /* v is in no lower bucket */
    }
}

static void test_quantiles_of_a_known_distribution(void **state)
{
    px_bhist_t *h = malloc(sizeof *h);

    px_bhist_init(h);
    for (uint64_t v = 1; v <= 100000; v++)
        px_bhist_record(h, v * 1000); /* 1 us .. 100 ms in ns */
    assert_int_equal(h->count, 100000);
    assert_int_equal(h->max, 100000000);
    assert_int_equal(h->min, 1000);
    for (double q = 0.01; q < 1.0; q += 0.01) {
        double want = q * 100000 * 1000, got = (double)px_bhist_quantile(h, q);
        assert_true(fabs(got - want) / want <= 0.01);
    }
    assert_true(fabs((double)px_bhist_quantile(h, 0.999) - 99900000.0) / 99900000.0 <= 0.01);
    assert_int_equal(px_bhist_quantile(h, 1.0), 100000000);
    assert_true(fabs(px_bhist_mean(h) - 50000500.0) < 1.0);
    free(h);
}

static void test_empty_and_huge(void **state)
{
    px_bhist_t *h = malloc(sizeof *h);

    px_bhist_init(h);
    assert_int_equal(px_bhist_quantile(h, 0.5), 0);
    px_bhist_record(h, UINT64_MAX / 2); /* beyond the last octave: last bucket, max exact */
    assert_int_equal(px_bhist_quantile(h, 0.5), UINT64_MAX / 2);
    free(h);
}

static void test_uniform_keys(void **state)
{
    px_keydist_t d;
    px_rng_t r = {42};
    uint32_t n = 10, count[10] = {0};

    assert_int_equal(px_keydist_init(&d, n, 0), 0);
    for (int i = 0; i < 100000; i++) {
        uint32_t k = px_keydist_draw(&d, &r);
        assert_true(k < n);
        count[k]++;
    }
    for (uint32_t k = 0; k < n; k++)
        assert_true(count[k] > 9500 && count[k] < 10500);
    px_keydist_free(&d);
}

static void test_zipf_keys(void **state)
{
    px_keydist_t d;
    px_rng_t r = {7};
    uint32_t n = 1000, *count = calloc(n, sizeof *count);
    double h = 0;
    int draws = 200000;

    assert_int_equal(px_keydist_init(&d, n, 1.1), 0);
    for (uint32_t k = 1; k <= n; k++)
        h += pow(k, -1.1);
    /* p(k) = (k+1)^-1.1 / H */
    assert_true(fabs(px_keydist_prob(&d, 0) - 1 / h) < 1e-9);
    assert_true(fabs(px_keydist_prob(&d, 9) - pow(10, -1.1) / h) < 1e-9);
    for (int i = 0; i < draws; i++) {
        uint32_t k = px_keydist_draw(&d, &r);
        assert_true(k < n);
        count[k]++;
    }
    for (uint32_t k = 0; k < 5; k++) {
        double want = px_keydist_prob(&d, k) * draws;
        assert_true(fabs(count[k] - want) < 5 * sqrt(want));
    }
    assert_true(count[0] > count[1] && count[1] > count[4]);
    /* The same seed draws the same keys. */
    {
        px_rng_t a = {99}, b = {99};
        for (int i = 0; i < 1000; i++)
            assert_int_equal(px_keydist_draw(&d, &a), px_keydist_draw(&d, &b));
    }
    px_keydist_free(&d);
    free(count);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_bucket_within_one_percent),
        cmocka_unit_test(test_quantiles_of_a_known_distribution),
        cmocka_unit_test(test_empty_and_huge),
        cmocka_unit_test(test_uniform_keys),
        cmocka_unit_test(test_zipf_keys),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
