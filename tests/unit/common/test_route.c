/* Unit tests for route.c: worker = jump_consistent_hash(XXH3_64bits(key, seed 0), workers).
 * Clients predict routing from the README's formula, so both halves are checked against
 * published reference vectors, and a handful of key -> worker answers are pinned. */
#include "common/route.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

static uint32_t route_str(const char *key, uint32_t workers)
{
    return px_route(key, strlen(key), workers);
}

/* XXH3_64bits with seed 0. The empty input is the canonical vector; the others use xxHash's own
 * sanity buffer (tests/sanity_test_vectors.h upstream: byteGen starts at PRIME32 and is
 * multiplied by PRIME64 for each byte, the top byte is kept). One length per XXH3 code path. */
static void test_xxh3_reference_vectors(void **state)
{
    static const struct {
        size_t len;
        uint64_t hash;
    } vec[] = {
        {0, 0x2D06800538D394C2ull},  {1, 0xC44BDFF4074EECDBull},  {6, 0x27B56A84CD2D7325ull},
        {12, 0xA713DAF0DFBB77E7ull}, {24, 0xA3FE70BF9D3510EBull}, {48, 0x397DA259ECBA1F11ull},
        {80, 0xBCDEFBBB2C47C90Aull},
    };
    unsigned char buf[256];
    uint64_t gen = 2654435761ull; /* PRIME32 */

    for (size_t i = 0; i < sizeof buf; i++) {
        buf[i] = (unsigned char)(gen >> 56);
        gen *= 11400714785074694797ull; /* PRIME64 */
    }
    assert_true(px_route_hash("", 0) == 0x2D06800538D394C2ull);
    for (size_t i = 0; i < sizeof vec / sizeof vec[0]; i++) {
        uint64_t h = px_route_hash(buf, vec[i].len);
        if (h != vec[i].hash)
            fail_msg("XXH3_64bits of %zu sanity bytes: got 0x%016llX, want 0x%016llX", vec[i].len,
                     (unsigned long long)h, (unsigned long long)vec[i].hash);
    }
    /* A plain string, as other XXH3 implementations publish it. */
    assert_true(px_route_hash("hello", 5) == 0x9555E8555C62DCFDull);
}

/* The hash covers exactly the key's bytes: no terminator, no seed, no length prefix. */
static void test_hash_is_of_key_bytes_only(void **state)
{
    const char k[] = "abcdef";

    assert_true(px_route_hash(k, 3) == px_route_hash("abc", 3));
    assert_true(px_route_hash(k, 3) != px_route_hash(k, 4));
    assert_true(px_route_hash("ab", 2) != px_route_hash("ba", 2));
}

/* Lamping & Veach's jump hash: vectors published with the reference implementations (the Go
 * packages dgryski/go-jump and lithammer/go-jump-consistent-hash, among others). */
static void test_jump_reference_vectors(void **state)
{
    static const struct {
        uint64_t key;
        uint32_t buckets, want;
    } vec[] = {
        {1, 1, 0},        {42, 57, 43}, {0xDEAD10CC, 1, 0}, {0xDEAD10CC, 666, 361},
        {256, 1024, 520}, {1, 128, 55}, {129, 128, 120},    {~0ull, 128, 92},
    };

    for (size_t i = 0; i < sizeof vec / sizeof vec[0]; i++) {
        uint32_t got = px_jump_hash(vec[i].key, vec[i].buckets);
        if (got != vec[i].want)
            fail_msg("jump(0x%llX, %u) = %u, want %u", (unsigned long long)vec[i].key,
                     vec[i].buckets, got, vec[i].want);
    }
}

/* Cheap, well-mixed 64-bit inputs for the property tests (splitmix64). */
static uint64_t mix(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

static void test_jump_range(void **state)
{
    for (uint32_t n = 1; n <= 200; n++)
        for (uint64_t i = 0; i < 500; i++) {
            uint32_t b = px_jump_hash(mix(i * 7919 + n), n);
            if (b >= n)
                fail_msg("jump(h, %u) = %u is out of range", n, b);
        }
    for (uint64_t i = 0; i < 1000; i++)
        assert_int_equal(px_jump_hash(mix(i), 1), 0);
    assert_true(px_jump_hash(0, 1024) < 1024);
    assert_true(px_jump_hash(~0ull, 1024) < 1024);
}

/* Keys spread evenly: with 100 000 keys over 8 workers each worker gets 12 500 +- 5 %
 * (the standard deviation is about 105, so the margin is some 6 sigma). */
static void test_route_balance(void **state)
{
    enum { KEYS = 100000, W = 8 };
    unsigned count[W] = {0};
    char key[32];

    for (int i = 0; i < KEYS; i++) {
        int n = snprintf(key, sizeof key, "key-%d", i);
        uint32_t w = px_route(key, (size_t)n, W);
        assert_true(w < W);
        count[w]++;
    }
    for (int w = 0; w < W; w++)
        if (count[w] < KEYS / W * 95 / 100 || count[w] > KEYS / W * 105 / 100)
            fail_msg("worker %d got %u of %d keys; expected about %d", w, count[w], KEYS, KEYS / W);
}

/* The consistent part: going from N to N+1 workers, a key either stays where it was or moves to
 * the new worker N, and only about 1/(N+1) of the keys move. */
static void test_route_grow_moves_only_to_new_bucket(void **state)
{
    enum { KEYS = 20000 };
    char key[32];

    for (uint32_t n = 1; n <= 40; n++) {
        unsigned moved = 0;
        for (int i = 0; i < KEYS; i++) {
            int len = snprintf(key, sizeof key, "k%d", i);
            uint32_t before = px_route(key, (size_t)len, n);
            uint32_t after = px_route(key, (size_t)len, n + 1);
            if (after != before) {
                if (after != n)
                    fail_msg("key %s moved %u -> %u when growing %u -> %u workers", key, before,
                             after, n, n + 1);
                moved++;
            }
        }
        /* Expected KEYS/(n+1); allow a wide band so only a broken hash trips it. */
        double expect = (double)KEYS / (n + 1);
        if (moved < expect * 0.8 || moved > expect * 1.2)
            fail_msg("growing %u -> %u workers moved %u keys; expected about %.0f", n, n + 1, moved,
                     expect);
    }
}

/* STABILITY GUARANTEE. These answers are what every deployed client and every running parexd
 * computes for these keys: changing any of them (a different hash, seed, jump variant, or
 * hashing something other than the key's raw UTF-8 bytes) silently re-routes every key of every
 * deployment, breaking per-key ordering across an upgrade and every client that predicts
 * routing. If this test fails, the change is wrong, not the test. */
static void test_route_pinned_values(void **state)
{
    static const struct {
        const char *key;
        uint64_t hash;
        uint32_t w2, w4, w8, w16, w64, w1024;
    } pin[] = {
        {"user-42", 0x50FE4B21CF7B09CDull, 0, 3, 6, 10, 25, 753},
        {"a", 0xE6C632B61E964E1Full, 1, 1, 1, 14, 14, 350},
        {"order:1001", 0x967BF420E1A321EFull, 0, 2, 6, 15, 27, 968},
        {"tenant/acme", 0x06B3BBAE7985E7A8ull, 0, 3, 4, 4, 24, 516},
        {"\xc3\xa9t\xc3\xa9", 0x4527085B35EB8255ull, 1, 1, 1, 1, 25, 907}, /* "été" in UTF-8 */
        {"hello", 0x9555E8555C62DCFDull, 0, 0, 7, 7, 59, 296},
    };

    for (size_t i = 0; i < sizeof pin / sizeof pin[0]; i++) {
        const char *k = pin[i].key;
        assert_true(px_route_hash(k, strlen(k)) == pin[i].hash);
        assert_int_equal(route_str(k, 1), 0);
        assert_int_equal(route_str(k, 2), pin[i].w2);
        assert_int_equal(route_str(k, 4), pin[i].w4);
        assert_int_equal(route_str(k, 8), pin[i].w8);
        assert_int_equal(route_str(k, 16), pin[i].w16);
        assert_int_equal(route_str(k, 64), pin[i].w64);
        assert_int_equal(route_str(k, 1024), pin[i].w1024);
        /* px_route is exactly the composition the README documents. */
        assert_int_equal(route_str(k, 8), px_jump_hash(pin[i].hash, 8));
    }
}

/* Cluster mode: the keys of one partition spread over all of an instance's workers. With the
 * unseeded hash every key of partition 5 (of 64) lands on worker 5 (of 8); that is the skew the
 * seeded worker route exists to avoid. Seed 0 is the documented route. */
static void test_cluster_worker_route_spreads_a_partition(void **state)
{
    unsigned plain[8] = {0}, seeded[8] = {0}, n = 0;
    char key[32];

    for (int i = 0; i < 20000; i++) {
        size_t len = (size_t)snprintf(key, sizeof key, "k%d", i);

        assert_int_equal(px_route_seeded(key, len, 8, 0), px_route(key, len, 8));
        if (px_route(key, len, 64) != 5)
            continue;
        n++;
        plain[px_route(key, len, 8)]++;
        seeded[px_route_seeded(key, len, 8, PX_ROUTE_CLUSTER_SEED)]++;
    }
    assert_true(n > 200);
    assert_int_equal(plain[5], n);
    for (int w = 0; w < 8; w++)
        if (seeded[w] < n / 8 / 2 || seeded[w] > n / 8 * 2)
            fail_msg("worker %d got %u of partition 5's %u keys", w, seeded[w], n);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_xxh3_reference_vectors),
        cmocka_unit_test(test_hash_is_of_key_bytes_only),
        cmocka_unit_test(test_jump_reference_vectors),
        cmocka_unit_test(test_jump_range),
        cmocka_unit_test(test_route_balance),
        cmocka_unit_test(test_route_grow_moves_only_to_new_bucket),
        cmocka_unit_test(test_route_pinned_values),
        cmocka_unit_test(test_cluster_worker_route_spreads_a_partition),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
