/* Unit tests for config.c: defaults, the JSON file, command-line values and HOST:PORT parsing.
 * Every rejected value must come back as one line that names the key (and the file it came
 * from), because that line is all an operator sees before parexd exits 78. */
#include "daemon/core/config.h"

#include "common/log.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

static char err[512];

static int load(px_config_t *c, const char *text)
{
    err[0] = '\0';
    return px_config_load_text(c, text, strlen(text), "test.json", err, sizeof err);
}

/* The text must be rejected with one line naming the origin and every given fragment. */
static void expect_rejected(const char *text, const char *key, const char *also)
{
    px_config_t c;

    px_config_defaults(&c);
    if (load(&c, text) != -1)
        fail_msg("config %s was accepted", text);
    if (!strstr(err, "test.json") || (key && !strstr(err, key)) || (also && !strstr(err, also)))
        fail_msg("config %s: message \"%s\" should name test.json, %s and %s", text, err,
                 key ? key : "-", also ? also : "-");
    assert_null(strchr(err, '\n'));
}

/* Two configurations hold the same values (where they came from may differ). */
static void assert_same_config(const px_config_t *a, const px_config_t *b)
{
    json_t *ja = px_config_to_json(a), *jb = px_config_to_json(b);
    char *ta = json_dumps(ja, JSON_SORT_KEYS), *tb = json_dumps(jb, JSON_SORT_KEYS);

    assert_string_equal(ta, tb);
    free(ta);
    free(tb);
    json_decref(ja);
    json_decref(jb);
}

static void test_defaults(void **state)
{
    px_config_t c;

    px_config_defaults(&c);
    assert_string_equal(c.listen, "127.0.0.1:7400");
    assert_string_equal(c.metrics_listen, "127.0.0.1:9400");
    assert_int_equal(c.workers, 0);
    assert_int_equal(c.queue_capacity, 1024);
    assert_int_equal(c.max_line_bytes, 1048576);
    assert_int_equal(c.max_connections, 10000);
    assert_int_equal(c.drain_timeout_ms, 30000);
    assert_int_equal(c.log_level, PX_LOG_INFO);
    /* The limits against hostile clients are on by default (README, Security). */
    assert_int_equal(c.builtin_test_ops, 0);
    assert_int_equal(c.max_in_flight_per_connection, 1024);
    assert_int_equal(c.handler_timeout_ms, 30000);
    assert_int_equal(c.max_partial_bytes, 64 << 20);
    assert_int_equal(c.max_queued_payload_bytes, 256 << 20);
    assert_int_equal(c.partial_line_timeout_ms, 30000);
    assert_int_equal(c.metrics_max_connections, 256);
    assert_int_equal(c.metrics_timeout_ms, 10000);
    assert_int_equal(c.max_abandoned_threads, 16);
    assert_int_equal(c.cancel_on_disconnect, 0);
}

static void test_empty_object_keeps_defaults(void **state)
{
    px_config_t c, d;

    px_config_defaults(&c);
    px_config_defaults(&d);
    assert_int_equal(load(&c, "{}"), 0);
    assert_same_config(&c, &d);
}

static void test_good_file_text(void **state)
{
    static const char text[] = "{\n"
                               "  \"listen\": \"0.0.0.0:7500\",\n"
                               "  \"metrics_listen\": \"[::1]:9500\",\n"
                               "  \"workers\": 12,\n"
                               "  \"queue_capacity\": 64,\n"
                               "  \"max_line_bytes\": 4096,\n"
                               "  \"max_connections\": 50,\n"
                               "  \"drain_timeout_ms\": 250,\n"
                               "  \"log_level\": \"debug\"\n"
                               "}\n";
    px_config_t c;

    px_config_defaults(&c);
    assert_int_equal(load(&c, text), 0);
    assert_string_equal(c.listen, "0.0.0.0:7500");
    assert_string_equal(c.metrics_listen, "[::1]:9500");
    assert_int_equal(c.workers, 12);
    assert_int_equal(c.queue_capacity, 64);
    assert_int_equal(c.max_line_bytes, 4096);
    assert_int_equal(c.max_connections, 50);
    assert_int_equal(c.drain_timeout_ms, 250);
    assert_int_equal(c.log_level, PX_LOG_DEBUG);
}

static void test_boundaries_accepted(void **state)
{
    px_config_t c;

    px_config_defaults(&c);
    assert_int_equal(load(&c, "{\"workers\":0,\"queue_capacity\":1,\"max_line_bytes\":64,"
                              "\"max_connections\":1,\"drain_timeout_ms\":0}"),
                     0);
    assert_int_equal(c.queue_capacity, 1);
    assert_int_equal(c.drain_timeout_ms, 0);
    assert_int_equal(load(&c, "{\"workers\":1024,\"queue_capacity\":16777216,"
                              "\"max_line_bytes\":67108864,\"max_connections\":1000000,"
                              "\"drain_timeout_ms\":3600000}"),
                     0);
    assert_int_equal(c.workers, 1024);
    for (int lv = 0; lv < 5; lv++) {
        static const char *const names[] = {"error", "warning", "notice", "info", "debug"};
        char text[64];
        snprintf(text, sizeof text, "{\"log_level\":\"%s\"}", names[lv]);
        assert_int_equal(load(&c, text), 0);
        assert_int_equal(c.log_level, PX_LOG_ERR + lv);
    }
}

/* The shipped config/parexd.json loads as it is, and its values are the documented defaults. */
static void test_shipped_default_file(void **state)
{
    px_config_t c, d;

    px_config_defaults(&c);
    px_config_defaults(&d);
    if (px_config_load_file(&c, PX_SOURCE_DIR "/config/parexd.json", err, sizeof err))
        fail_msg("%s", err);
    assert_same_config(&c, &d);
}

/* The cluster section: the shipped samples load, and each key is checked like a top-level one. */
static void test_cluster_section(void **state)
{
    static const char *const names[] = {"a", "b", "c"};
    char path[512];
    px_config_t c;

    for (int i = 0; i < 3; i++) {
        px_config_defaults(&c);
        snprintf(path, sizeof path, PX_SOURCE_DIR "/config/cluster/%s.json", names[i]);
        if (px_config_load_file(&c, path, err, sizeof err))
            fail_msg("%s", err);
        assert_true(c.cluster.on);
        assert_int_equal(c.cluster.nnats, 3);
        assert_int_equal(c.cluster.partitions, 64);
        assert_int_equal(c.cluster.lease_ttl_ms, 10000);
        assert_string_equal(c.cluster.instance, names[i]);
        px_config_clear(&c);
    }
    px_config_defaults(&c);
    assert_false(c.cluster.on); /* single node unless the section is there */
    assert_int_equal(load(&c, "{\"cluster\": null}"), 0); /* as --print-config shows it */
    assert_false(c.cluster.on);
    expect_rejected("{\"cluster\": {\"partitions\": 8}}", "cluster.nats", NULL);
    expect_rejected("{\"cluster\": {\"nats\": [\"127.0.0.1:4222\"]}}", "cluster.nats", NULL);
    expect_rejected("{\"cluster\": {\"nats\": [\"nats://h:1\"], \"partitions\": 0}}",
                    "cluster.partitions", "1..1024");
    expect_rejected("{\"cluster\": {\"nats\": [\"nats://h:1\"], \"instance\": \"a.b\"}}",
                    "cluster.instance", NULL);
    expect_rejected("{\"cluster\": {\"nats\": [\"nats://h:1\"], \"lease_ttl\": 5}}",
                    "cluster.lease_ttl", NULL);
    expect_rejected("{\"cluster\": []}", "'cluster'", NULL);
}

static void test_unknown_key(void **state)
{
    expect_rejected("{\"wrokers\": 4}", "wrokers", NULL);
    expect_rejected("{\"workers\": 4, \"queue_size\": 10}", "queue_size", NULL);
    expect_rejected("{\"Workers\": 4}", "Workers", NULL);
}

static void test_wrong_type(void **state)
{
    expect_rejected("{\"workers\": \"8\"}", "'workers'", NULL);
    expect_rejected("{\"workers\": 2.5}", "'workers'", NULL);
    expect_rejected("{\"workers\": true}", "'workers'", NULL);
    expect_rejected("{\"queue_capacity\": null}", "'queue_capacity'", NULL);
    expect_rejected("{\"max_line_bytes\": [1024]}", "'max_line_bytes'", NULL);
    expect_rejected("{\"max_connections\": {}}", "'max_connections'", NULL);
    expect_rejected("{\"drain_timeout_ms\": \"1s\"}", "'drain_timeout_ms'", NULL);
    expect_rejected("{\"listen\": 7400}", "'listen'", NULL);
    expect_rejected("{\"metrics_listen\": null}", "'metrics_listen'", NULL);
    expect_rejected("{\"log_level\": 7}", "'log_level'", NULL);
}

static void test_out_of_range(void **state)
{
    expect_rejected("{\"workers\": -1}", "'workers'", "-1");
    expect_rejected("{\"workers\": 1025}", "'workers'", "1025");
    expect_rejected("{\"queue_capacity\": 0}", "'queue_capacity'", NULL);
    expect_rejected("{\"queue_capacity\": 16777217}", "'queue_capacity'", NULL);
    expect_rejected("{\"max_line_bytes\": 63}", "'max_line_bytes'", NULL);
    expect_rejected("{\"max_line_bytes\": 67108865}", "'max_line_bytes'", NULL);
    expect_rejected("{\"max_connections\": 0}", "'max_connections'", NULL);
    expect_rejected("{\"drain_timeout_ms\": -5}", "'drain_timeout_ms'", NULL);
    expect_rejected("{\"drain_timeout_ms\": 3600001}", "'drain_timeout_ms'", NULL);
    expect_rejected("{\"listen\": \"localhost\"}", "'listen'", NULL);
    expect_rejected("{\"listen\": \"127.0.0.1:65536\"}", "'listen'", NULL);
    expect_rejected("{\"metrics_listen\": \":9400\"}", "'metrics_listen'", NULL);
    /* Numeric addresses only (README): a host name is rejected at load, naming the key. */
    expect_rejected("{\"listen\": \"localhost:7400\"}", "'listen'", "localhost");
    expect_rejected("{\"metrics_listen\": \"example.org:9400\"}", "'metrics_listen'", NULL);
    expect_rejected("{\"log_level\": \"loud\"}", "'log_level'", "loud");
    /* The first bad key is the one reported, whatever comes after it. */
    expect_rejected("{\"workers\": 4, \"queue_capacity\": 0}", "'queue_capacity'", NULL);
}

static void test_not_a_config(void **state)
{
    expect_rejected("", NULL, NULL);
    expect_rejected("{\"workers\": 4", NULL, NULL);
    expect_rejected("[1, 2]", NULL, NULL);
    /* A key given twice is a mistake, not "last one wins". */
    expect_rejected("{\"workers\": 4, \"workers\": 8}", NULL, NULL);
}

static void test_load_file(void **state)
{
    char path[] = "/tmp/px-test-config-XXXXXX";
    int fd = mkstemp(path);
    static const char good[] = "{\"workers\": 3, \"log_level\": \"warning\"}";
    static const char bad[] = "{\"queue_capacity\": 0}";
    px_config_t c;

    assert_true(fd >= 0);
    assert_int_equal(write(fd, good, sizeof good - 1), (ssize_t)(sizeof good - 1));
    px_config_defaults(&c);
    assert_int_equal(px_config_load_file(&c, path, err, sizeof err), 0);
    assert_int_equal(c.workers, 3);
    assert_int_equal(c.log_level, PX_LOG_WARN);

    /* Errors name the file by its path, and the key. */
    assert_int_equal(ftruncate(fd, 0), 0);
    assert_int_equal(pwrite(fd, bad, sizeof bad - 1, 0), (ssize_t)(sizeof bad - 1));
    assert_int_equal(px_config_load_file(&c, path, err, sizeof err), -1);
    assert_non_null(strstr(err, path));
    assert_non_null(strstr(err, "'queue_capacity'"));
    close(fd);
    unlink(path);

    /* A missing file says so and names it. */
    assert_int_equal(px_config_load_file(&c, path, err, sizeof err), -1);
    assert_non_null(strstr(err, path));
}

static void test_set_from_strings(void **state)
{
    px_config_t c;

    px_config_defaults(&c);
    assert_int_equal(px_config_set(&c, "workers", "8", err, sizeof err), 0);
    assert_int_equal(c.workers, 8);
    assert_int_equal(px_config_set(&c, "queue_capacity", "2", err, sizeof err), 0);
    assert_int_equal(c.queue_capacity, 2);
    assert_int_equal(px_config_set(&c, "listen", "127.0.0.1:0", err, sizeof err), 0);
    assert_string_equal(c.listen, "127.0.0.1:0");
    assert_int_equal(px_config_set(&c, "metrics_listen", "[::1]:0", err, sizeof err), 0);
    assert_string_equal(c.metrics_listen, "[::1]:0");
    assert_int_equal(px_config_set(&c, "log_level", "error", err, sizeof err), 0);
    assert_int_equal(c.log_level, PX_LOG_ERR);
    assert_int_equal(px_config_set(&c, "drain_timeout_ms", "0", err, sizeof err), 0);
    assert_int_equal(c.drain_timeout_ms, 0);

    /* Each bad value names the key and leaves the previous value alone. */
    assert_int_equal(px_config_set(&c, "workers", "eight", err, sizeof err), -1);
    assert_non_null(strstr(err, "workers"));
    assert_int_equal(px_config_set(&c, "workers", "8x", err, sizeof err), -1);
    assert_non_null(strstr(err, "workers"));
    assert_int_equal(px_config_set(&c, "workers", "", err, sizeof err), -1);
    assert_non_null(strstr(err, "workers"));
    assert_int_equal(px_config_set(&c, "workers", "2.5", err, sizeof err), -1);
    assert_non_null(strstr(err, "workers"));
    assert_int_equal(px_config_set(&c, "workers", "-1", err, sizeof err), -1);
    assert_non_null(strstr(err, "workers"));
    assert_int_equal(px_config_set(&c, "workers", "1e30", err, sizeof err), -1);
    assert_non_null(strstr(err, "workers"));
    assert_int_equal(px_config_set(&c, "queue_capacity", "0", err, sizeof err), -1);
    assert_non_null(strstr(err, "queue_capacity"));
    assert_int_equal(px_config_set(&c, "listen", "nowhere", err, sizeof err), -1);
    assert_non_null(strstr(err, "listen"));
    assert_int_equal(px_config_set(&c, "listen", "localhost:0", err, sizeof err), -1);
    assert_non_null(strstr(err, "listen"));
    assert_int_equal(px_config_set(&c, "log_level", "verbose", err, sizeof err), -1);
    assert_non_null(strstr(err, "log_level"));
    assert_int_equal(c.workers, 8);
    assert_int_equal(c.queue_capacity, 2);
    assert_string_equal(c.listen, "127.0.0.1:0");
    assert_int_equal(c.log_level, PX_LOG_ERR);
}

static void test_finish(void **state)
{
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    px_config_t c;

    px_config_defaults(&c);
    assert_int_equal(px_config_finish(&c, err, sizeof err), 0);
    assert_int_equal(c.workers, 2 * (cpus > 0 ? cpus : 1)); /* 0 = 2 x online CPUs */

    px_config_defaults(&c);
    c.workers = 5;
    assert_int_equal(px_config_finish(&c, err, sizeof err), 0);
    assert_int_equal(c.workers, 5);

    /* Cross-key rule: the message names the key. */
    px_config_defaults(&c);
    assert_int_equal(load(&c, "{\"supervise_interval_ms\": 500, \"dead_after_ms\": 500}"), 0);
    assert_int_equal(px_config_finish(&c, err, sizeof err), -1);
    assert_non_null(strstr(err, "'dead_after_ms'"));

    /* Keyed scheduling's shared bound is counted in 32 bits: 256 x 16777216 (each allowed)
     * would wrap to 0 and refuse every request; it is a config error instead. */
    px_config_defaults(&c);
    assert_int_equal(load(&c, "{\"scheduling\": \"keyed\", \"workers\": 256, "
                              "\"queue_capacity\": 16777216}"),
                     0);
    assert_int_equal(px_config_finish(&c, err, sizeof err), -1);
    assert_non_null(strstr(err, "'queue_capacity'"));
    assert_non_null(strstr(err, "4294967296"));
    c.queue_capacity = 16777215;
    assert_int_equal(px_config_finish(&c, err, sizeof err), 0);
    /* Partitioned queues are bounded one by one: no shared count to overflow. */
    c.scheduling = PX_SCHED_PARTITIONED;
    c.queue_capacity = 16777216;
    assert_int_equal(px_config_finish(&c, err, sizeof err), 0);
}

/* issue 18 item 6: a rule between two keys blames the key the user set, names the file and
 * says what to change, in the one-line format of every other config error. */
static void test_cross_key_blames_the_key_set(void **state)
{
    px_config_t c;

    px_config_defaults(&c);
    assert_int_equal(load(&c, "{\"supervise_interval_ms\": 60000}"), 0);
    assert_int_equal(px_config_finish(&c, err, sizeof err), -1);
    assert_string_equal(err, "config test.json: key 'supervise_interval_ms': 60000 must be less "
                             "than dead_after_ms (10000, its default); lower "
                             "supervise_interval_ms or raise dead_after_ms");

    px_config_defaults(&c);
    assert_int_equal(load(&c, "{\"dead_after_ms\": 100}"), 0);
    assert_int_equal(px_config_finish(&c, err, sizeof err), -1);
    assert_string_equal(err, "config test.json: key 'dead_after_ms': 100 must be greater than "
                             "supervise_interval_ms (250, its default); raise dead_after_ms or "
                             "lower supervise_interval_ms");
}

/* Every default in the table passes its own key's checks, and --print-config's JSON loads back
 * into the same configuration (the token aside, which it does not print). */
static void test_print_config_round_trip(void **state)
{
    px_config_t c, d;
    json_t *j;
    char *text;

    px_config_defaults(&c);
    assert_int_equal(load(&c, "{\"workers\": 3, \"quarantine\": {\"after_failures\": 2, "
                              "\"for_ms\": 50}, \"listen_unix_mode\": \"0600\", "
                              "\"handlers\": {\"x\": {\"type\": \"exec\"}}, "
                              "\"scheduling\": \"keyed\", \"backpressure_threshold\": 0.5, "
                              "\"cluster\": {\"nats\": [\"nats://h:1\", \"nats://h:2\"], "
                              "\"partitions\": 8}}"),
                     0);
    j = px_config_to_json(&c);
    assert_non_null(j);
    assert_int_equal(json_object_size(j), px_config_nkeys);
    text = json_dumps(j, 0);
    px_config_defaults(&d);
    if (load(&d, text))
        fail_msg("%s: %s", text, err);
    assert_same_config(&c, &d);
    /* The cluster section is printed whole (defaults and the host-name instance included). */
    assert_true(d.cluster.on);
    assert_memory_equal(&c.cluster, &d.cluster, sizeof c.cluster);
    free(text);
    json_decref(j);
    px_config_clear(&c);
    px_config_clear(&d);
}

/* One source for config facts: the README's configuration table and its SIGHUP row are what
 * the table renders (parexd --print-manual), byte for byte. */
static void test_readme_matches_table(void **state)
{
    FILE *f = fopen(PX_SOURCE_DIR "/README.md", "rb");
    char *readme, *manual = px_config_manual(), *cut;
    long n;

    assert_non_null(f);
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    n = ftell(f);
    rewind(f);
    readme = calloc(1, (size_t)n + 1);
    assert_int_equal(fread(readme, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    assert_non_null(manual);
    cut = strstr(manual, "\n\n");
    assert_non_null(cut);
    cut[1] = '\0'; /* the key table, ending with its last row's newline */
    if (!strstr(readme, manual))
        fail_msg("README.md's configuration table differs from the key table in config.c; "
                 "replace it with the output of `parexd --print-manual`:\n%s",
                 manual);
    if (!strstr(readme, cut + 2))
        fail_msg("README.md's SIGHUP row differs from the key table's reload rules; replace it "
                 "with:\n%s",
                 cut + 2);
    /* Every key the loader knows is in the README's table: no key is undocumented. */
    for (size_t i = 0; i < px_config_nkeys; i++) {
        char row[96];
        snprintf(row, sizeof row, "\n| `%s` |", px_config_keys[i].name);
        assert_non_null(strstr(readme, row));
    }
    free(manual);
    free(readme);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_empty_object_keeps_defaults),
        cmocka_unit_test(test_good_file_text),
        cmocka_unit_test(test_boundaries_accepted),
        cmocka_unit_test(test_shipped_default_file),
        cmocka_unit_test(test_unknown_key),
        cmocka_unit_test(test_wrong_type),
        cmocka_unit_test(test_out_of_range),
        cmocka_unit_test(test_not_a_config),
        cmocka_unit_test(test_load_file),
        cmocka_unit_test(test_cluster_section),
        cmocka_unit_test(test_set_from_strings),
        cmocka_unit_test(test_finish),
        cmocka_unit_test(test_cross_key_blames_the_key_set),
        cmocka_unit_test(test_print_config_round_trip),
        cmocka_unit_test(test_readme_matches_table),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
