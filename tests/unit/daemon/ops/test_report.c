/* ops/report.c over a hand-built snapshot: the /stats document, the Prometheus exposition and
 * the health verdict say exactly what the snapshot holds, with nothing running. */
#include "daemon/ops/report.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

/* Two workers: 0 idle with 3 of 4 queued (backpressure at threshold 0.75), 1 stalled. One
 * handler with two runs of 2 ms. One parked key. */
static void fabricate(px_snapshot_t *s)
{
    memset(s, 0, sizeof *s);
    s->n.received = 10;
    s->n.accepted = 7;
    s->n.rejected[PX_REJ_QUEUE_FULL] = 2;
    s->n.rejected[PX_REJ_KEY_BUSY] = 1;
    s->n.ok = 4;
    s->n.failed = 1;
    s->n.in_flight = 2;
    s->n.connections = 3;
    s->n.keys_parked = 1;
    s->n.key_parks = 5;
    s->n.invalid[PX_INV_BAD_JSON] = 6;
    s->bp_threshold = 0.75;
    s->start_time_unix = 1700000000;
    s->nworkers = 2;
    s->workers = calloc(2, sizeof *s->workers);
    s->workers[0] =
        (px_worker_info_t){.id = 0, .state = PX_WS_IDLE, .depth = 3, .capacity = 4, .processed = 4};
    s->workers[1] = (px_worker_info_t){.id = 1,
                                       .state = PX_WS_STALLED,
                                       .depth = 0,
                                       .capacity = 4,
                                       .processed = 1,
                                       .failed = 1,
                                       .busy_for_ns = 7000000000ull};
    strcpy(s->workers[1].current_key, "user-7");
    strcpy(s->workers[1].current_op, "slow");
    s->queue_us = calloc(2, sizeof *s->queue_us);
    s->run_us = s->queue_us + 1;
    s->nhandlers = 1;
    s->handlers = calloc(1, sizeof *s->handlers);
    strcpy(s->handlers[0].name, "slow");
    strcpy(s->handlers[0].type, "exec");
    s->handlers[0].requests = 2;
    s->handlers[0].ok = 1;
    s->handlers[0].failed[PX_F_TIMEOUT] = 1;
    s->handlers[0].run_us.count = 2;
    s->handlers[0].run_us.sum = 4000;
    s->parked = json_pack("[{ss}]", "key", "poison");
    s->top = json_object();
}

static void test_stats_document(void **state)
{
    px_snapshot_t s;
    json_t *o, *w1;

    fabricate(&s);
    o = px_report_stats(&s);
    assert_non_null(o);
    assert_int_equal(json_integer_value(json_object_get(o, "received")), 10);
    assert_int_equal(json_integer_value(json_object_get(o, "rejected")), 3);
    assert_int_equal(json_integer_value(json_object_get(o, "invalid")), 6);
    assert_true(json_is_true(json_object_get(o, "invariant_holds")));
    assert_true(json_is_true(json_object_get(o, "backpressure")));
    w1 = json_array_get(json_object_get(o, "workers"), 1);
    assert_string_equal(json_string_value(json_object_get(w1, "state")), "stalled");
    assert_string_equal(json_string_value(json_object_get(w1, "current_key")), "user-7");
    assert_int_equal(
        json_integer_value(json_object_get(
            json_object_get(json_array_get(json_object_get(o, "handlers"), 0), "failed"),
            "timeout")),
        1);
    assert_string_equal(
        json_string_value(json_object_get(json_array_get(json_object_get(o, "parked"), 0), "key")),
        "poison");
    assert_string_equal(json_string_value(json_object_get(o, "scheduling")), "partitioned");
    json_decref(o);

    /* One more received than answered or in flight: the invariant no longer holds. */
    s.n.received++;
    o = px_report_stats(&s);
    assert_true(json_is_false(json_object_get(o, "invariant_holds")));
    json_decref(o);
    px_snapshot_free(&s);
}

/* Every sample line is "name{labels} value" or "name value", and its family has a TYPE line
 * (a histogram's _bucket, _sum and _count series share their family's). */
static void assert_exposition(const char *text)
{
    static const char *const suffixes[] = {"_bucket", "_sum", "_count"};
    const char *p = text;

    while (*p) {
        const char *nl = strchr(p, '\n');
        char line[512], name[256], type[300];
        size_t n, k;

        assert_non_null(nl);
        n = (size_t)(nl - p);
        assert_true(n < sizeof line);
        memcpy(line, p, n);
        line[n] = '\0';
        p = nl + 1;
        if (line[0] == '#')
            continue;
        k = strcspn(line, "{ ");
        assert_true(k > 0 && k < sizeof name);
        memcpy(name, line, k);
        name[k] = '\0';
        assert_non_null(strrchr(line, ' '));
        snprintf(type, sizeof type, "# TYPE %s ", name);
        if (strstr(text, type))
            continue;
        for (size_t i = 0; i < 3; i++) {
            size_t ls = strlen(suffixes[i]);
            if (k > ls && strcmp(name + k - ls, suffixes[i]) == 0) {
                snprintf(type, sizeof type, "# TYPE %.*s histogram", (int)(k - ls), name);
                break;
            }
        }
        assert_non_null(strstr(text, type));
    }
}

static void test_prometheus_exposition(void **state)
{
    px_snapshot_t s;
    px_buf_t b = {0};

    fabricate(&s);
    assert_int_equal(px_report_prometheus(&s, &b), 0);
    assert_int_equal(px_buf_append(&b, "", 1), 0); /* NUL */
    assert_non_null(strstr(b.data, "\nparexd_requests_received_total 10\n"));
    assert_non_null(strstr(b.data, "parexd_requests_rejected_total{reason=\"queue_full\"} 2\n"));
    assert_non_null(strstr(b.data, "parexd_worker_state{worker=\"1\",state=\"stalled\"} 1\n"));
    assert_non_null(strstr(b.data, "parexd_worker_state{worker=\"0\",state=\"stalled\"} 0\n"));
    assert_non_null(strstr(b.data, "\nparexd_backpressure 1\n"));
    assert_non_null(strstr(b.data, "parexd_queue_depth{worker=\"0\"} 3\n"));
    assert_non_null(
        strstr(b.data, "parexd_handler_failures_total{handler=\"slow\",code=\"timeout\"} 1\n"));
    assert_non_null(strstr(b.data, "parexd_handler_run_seconds_count{handler=\"slow\"} 2\n"));
    assert_non_null(strstr(b.data, "parexd_start_time_seconds 1700000000\n"));
    assert_null(strstr(b.data, "parexd_keyed_queue_depth")); /* partitioned scheduling */
    assert_exposition(b.data);
    px_buf_free(&b);

    /* Below the threshold, and keyed: the shared backlog appears and decides backpressure. */
    s.workers[0].depth = 2;
    s.keyed = 1;
    s.keyed_depth = 1;
    s.keyed_capacity = 8;
    assert_int_equal(px_report_prometheus(&s, &b), 0);
    assert_int_equal(px_buf_append(&b, "", 1), 0);
    assert_non_null(strstr(b.data, "\nparexd_backpressure 0\n"));
    assert_non_null(strstr(b.data, "\nparexd_keyed_queue_capacity 8\n"));
    px_buf_free(&b);
    px_snapshot_free(&s);
}

static void test_health(void **state)
{
    px_snapshot_t s;
    char why[256];

    fabricate(&s);
    assert_int_equal(px_report_health(&s, why, sizeof why), -1);
    assert_non_null(strstr(why, "worker 1 stalled"));
    assert_non_null(strstr(why, "user-7"));
    s.workers[1].state = PX_WS_DEAD;
    s.workers[1].heartbeat_age_ns = 12000000000ull;
    assert_int_equal(px_report_health(&s, why, sizeof why), -1);
    assert_non_null(strstr(why, "worker 1 dead"));
    s.workers[1].state = PX_WS_BUSY;
    assert_int_equal(px_report_health(&s, why, sizeof why), 0);
    assert_string_equal(why, "ok");
    s.draining = 1;
    assert_int_equal(px_report_health(&s, why, sizeof why), -1);
    assert_non_null(strstr(why, "draining"));
    px_snapshot_free(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stats_document),
        cmocka_unit_test(test_prometheus_exposition),
        cmocka_unit_test(test_health),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
