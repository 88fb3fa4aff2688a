/* Rendering a snapshot: the /stats JSON document, the Prometheus exposition and the health
 * verdict. Pure functions of the snapshot, so a unit test can drive them with a hand-built one. */
#include "daemon/ops/report.h"

#include "common/log.h"
#include "common/protocol.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Bucket bounds of the exported latency histograms, in seconds. */
static const double le_bounds[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                   0.1,    0.25,    0.5,    1,     2.5,    5,     10,   30,    60};
#define NLE (sizeof le_bounds / sizeof le_bounds[0])

static double round3(double v)
{
    return round(v * 1000.0) / 1000.0;
}

static const char *const fcodes[PX_F_COUNT] = {"handler_error", "timeout", "deadline_exceeded",
                                               "other"};

static json_t *handlers_json(const px_snapshot_t *s)
{
    json_t *a = json_array();

    for (size_t i = 0; i < s->nhandlers; i++) {
        const px_snap_handler_t *x = &s->handlers[i];
        json_t *failed = json_object();
        json_t *o;

        for (int f = 0; f < PX_F_COUNT; f++)
            json_object_set_new(failed, fcodes[f], json_integer((json_int_t)x->failed[f]));
        o = json_pack("{ss ss sI sI so sI si sf sf}", "name", x->name, "type", x->type, "requests",
                      (json_int_t)x->requests, "ok", (json_int_t)x->ok, "failed", failed,
                      "attempts", (json_int_t)x->attempts, "concurrency", x->concurrency,
                      "run_p50_ms", (double)px_hist_quantile(&x->run_us, 0.5) / 1e3, "run_p99_ms",
                      (double)px_hist_quantile(&x->run_us, 0.99) / 1e3);
        if (x->max_concurrency)
            json_object_set_new(o, "max_concurrency", json_integer(x->max_concurrency));
        if (x->per_second > 0)
            json_object_set_new(o, "tokens", json_real(round3(x->tokens)));
        json_array_append_new(a, o);
    }
    return a;
}

json_t *px_report_stats(const px_snapshot_t *s)
{
    const px_counts_t *n = &s->n;
    const px_hist_snap_t *q = s->queue_us, *r = s->run_us;
    json_t *o, *workers, *rej, *inv, *lat;

    rej = json_object();
    for (int i = 0; i < PX_REJ_COUNT; i++)
        json_object_set_new(rej, px_reject_code(i), json_integer((json_int_t)n->rejected[i]));
    inv = json_object();
    for (int i = 0; i < PX_INV_COUNT; i++)
        json_object_set_new(inv, px_invalid_code(i), json_integer((json_int_t)n->invalid[i]));
    workers = json_array();
    for (uint32_t i = 0; i < s->nworkers; i++) {
        const px_worker_info_t *w = &s->workers[i];

        json_array_append_new(
            workers,
            json_pack("{sI ss sI sI sb sI sI sI sf sf ss ss}", "id", (json_int_t)w->id, "state",
                      px_worker_state_name(w->state), "queue_depth", (json_int_t)w->depth,
                      "queue_capacity", (json_int_t)w->capacity, "backpressure",
                      px_snapshot_worker_bp(s, w), "processed", (json_int_t)w->processed, "failed",
                      (json_int_t)w->failed, "replaced", (json_int_t)w->replaced, "busy_ms",
                      round3((double)w->busy_ns / 1e6), "heartbeat_age_ms",
                      round3((double)w->heartbeat_age_ns / 1e6), "current_key", w->current_key,
                      "current_op", w->current_op));
    }
    lat = json_pack(
        "{s{sf sf} s{sf sf}}", "queue_ms", "p50", (double)px_hist_quantile(q, 0.50) / 1e3, "p99",
        (double)px_hist_quantile(q, 0.99) / 1e3, "run_ms", "p50",
        (double)px_hist_quantile(r, 0.50) / 1e3, "p99", (double)px_hist_quantile(r, 0.99) / 1e3);
    o = json_pack(
        "{sI sI sI so sI so sI sI sI sI sI sI sb sb sb so so}", "received", (json_int_t)n->received,
        "accepted", (json_int_t)n->accepted, "rejected", (json_int_t)px_counts_rejected(n),
        "rejected_by_reason", rej, "invalid", (json_int_t)px_counts_invalid(n), "invalid_by_code",
        inv, "ok", (json_int_t)n->ok, "failed", (json_int_t)n->failed, "in_flight",
        (json_int_t)n->in_flight, "connections", (json_int_t)n->connections, "responses_dropped",
        (json_int_t)n->dropped, "late_results_discarded", (json_int_t)n->late, "backpressure",
        px_snapshot_backpressure(s), "draining", s->draining, "invariant_holds",
        n->received == px_counts_rejected(n) + n->ok + n->failed + n->in_flight, "latency", lat,
        "workers", workers);
    if (s->keyed) {
        json_object_set_new(o, "scheduling", json_string("keyed"));
        json_object_set_new(o, "keyed",
                            json_pack("{sI sI sI}", "queue_depth", (json_int_t)s->keyed_depth,
                                      "queue_capacity", (json_int_t)s->keyed_capacity,
                                      "active_keys", (json_int_t)s->keyed_keys));
    } else {
        json_object_set_new(o, "scheduling", json_string("partitioned"));
    }
    json_object_set_new(o, "handlers", handlers_json(s));
    {
        json_t *cl = json_object();
        for (int i = 0; i < PX_CLOSE_COUNT; i++)
            json_object_set_new(cl, px_close_reason(i), json_integer((json_int_t)n->closed[i]));
        json_object_set_new(o, "connections_closed_by_reason", cl);
    }
    json_object_set_new(o, "parked", s->parked ? json_deep_copy(s->parked) : json_array());
    json_object_set_new(o, "keys_parked", json_integer((json_int_t)n->keys_parked));
    json_object_set_new(o, "key_parks", json_integer((json_int_t)n->key_parks));
    json_object_set_new(o, "top_keys", s->top ? json_deep_copy(s->top) : json_object());
    json_object_set_new(o, "imbalance_ratio", json_real(round3(s->imbalance)));
    if (s->cluster)
        json_object_set_new(o, "cluster", json_deep_copy(s->cluster));
    return o;
}

static void help_type(px_buf_t *b, const char *name, const char *type, const char *help)
{
    px_buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void histogram(px_buf_t *b, const char *name, const char *help, const px_hist_snap_t *h)
{
    help_type(b, name, "histogram", help);
    for (size_t i = 0; i < NLE; i++)
        px_buf_printf(b, "%s_bucket{le=\"%g\"} %llu\n", name, le_bounds[i],
                      (unsigned long long)px_hist_count_le(h, (uint64_t)(le_bounds[i] * 1e6)));
    px_buf_printf(b, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.6f\n%s_count %llu\n", name,
                  (unsigned long long)h->count, name, (double)h->sum / 1e6, name,
                  (unsigned long long)h->count);
}

static void handlers_prometheus(const px_snapshot_t *s, px_buf_t *b)
{
    size_t n = s->nhandlers;
    const px_snap_handler_t *x = s->handlers;

    help_type(b, "parexd_handler_requests_total", "counter", "Requests each handler took.");
    for (size_t i = 0; i < n; i++)
        px_buf_printf(b, "parexd_handler_requests_total{handler=\"%s\"} %llu\n", x[i].name,
                      (unsigned long long)x[i].requests);
    help_type(b, "parexd_handler_failures_total", "counter",
              "Requests each handler answered failed, by code.");
    for (size_t i = 0; i < n; i++)
        for (int f = 0; f < PX_F_COUNT; f++)
            px_buf_printf(b, "parexd_handler_failures_total{handler=\"%s\",code=\"%s\"} %llu\n",
                          x[i].name, fcodes[f], (unsigned long long)x[i].failed[f]);
    help_type(b, "parexd_handler_attempts_total", "counter", "Handler runs, retries included.");
    for (size_t i = 0; i < n; i++)
        px_buf_printf(b, "parexd_handler_attempts_total{handler=\"%s\"} %llu\n", x[i].name,
                      (unsigned long long)x[i].attempts);
    help_type(b, "parexd_handler_concurrency", "gauge", "Runs of each handler in progress.");
    for (size_t i = 0; i < n; i++)
        px_buf_printf(b, "parexd_handler_concurrency{handler=\"%s\"} %d\n", x[i].name,
                      x[i].concurrency);
    help_type(b, "parexd_handler_rate_tokens", "gauge",
              "Tokens in each rate-limited handler's bucket (negative: callers waiting).");
    for (size_t i = 0; i < n; i++)
        if (x[i].per_second > 0)
            px_buf_printf(b, "parexd_handler_rate_tokens{handler=\"%s\"} %.3f\n", x[i].name,
                          x[i].tokens);
    help_type(b, "parexd_handler_run_seconds", "histogram", "Time each handler attempt ran.");
    for (size_t i = 0; i < n; i++) {
        const px_hist_snap_t *h = &x[i].run_us;
        for (size_t j = 0; j < NLE; j++)
            px_buf_printf(b, "parexd_handler_run_seconds_bucket{handler=\"%s\",le=\"%g\"} %llu\n",
                          x[i].name, le_bounds[j],
                          (unsigned long long)px_hist_count_le(h, (uint64_t)(le_bounds[j] * 1e6)));
        px_buf_printf(b,
                      "parexd_handler_run_seconds_bucket{handler=\"%s\",le=\"+Inf\"} %llu\n"
                      "parexd_handler_run_seconds_sum{handler=\"%s\"} %.6f\n"
                      "parexd_handler_run_seconds_count{handler=\"%s\"} %llu\n",
                      x[i].name, (unsigned long long)h->count, x[i].name, (double)h->sum / 1e6,
                      x[i].name, (unsigned long long)h->count);
    }
}

/* Cluster mode: the cluster section of /stats as gauges and counters. */
static void cluster_metrics(json_t *c, px_buf_t *b)
{
    static const struct {
        const char *field, *name, *type, *help;
    } m[] = {
        {"connected", "parexd_cluster_nats_connected", "gauge", "1 while connected to NATS."},
        {"members", "parexd_cluster_members", "gauge", "Instances seen in the cluster."},
        {"owned", "parexd_cluster_partitions_owned", "gauge", "Partitions this instance holds."},
        {"handoffs", "parexd_cluster_handoffs_total", "counter",
         "Partitions handed over gracefully."},
        {"lease_losses", "parexd_cluster_lease_losses_total", "counter",
         "Partitions lost (lease expired or taken over)."},
        {"redeliveries", "parexd_cluster_redeliveries_total", "counter",
         "Requests delivered to this instance more than once."},
        {"stored_messages", "parexd_cluster_stored_messages_total", "counter",
         "Request messages this instance stored (each holds the requests of one partition "
         "received while the previous one was being stored)."},
        {"already_answered", "parexd_cluster_already_answered_total", "counter",
         "Request messages handed out again whose answers an earlier holder had stored: "
         "acknowledged without running."},
        {"duplicates_stored", "parexd_cluster_duplicate_submits_total", "counter",
         "Submits JetStream recognised as duplicates (same message id or idem)."},
    };
    json_t *parts = json_object_get(c, "partition_list"), *p;
    size_t i;

    for (i = 0; i < sizeof m / sizeof m[0]; i++) {
        json_t *v = json_object_get(c, m[i].field);
        help_type(b, m[i].name, m[i].type, m[i].help);
        px_buf_printf(b, "%s %lld\n", m[i].name,
                      json_is_boolean(v) ? (long long)json_is_true(v)
                                         : (long long)json_integer_value(v));
    }
    help_type(b, "parexd_cluster_partition_backlog", "gauge",
              "Requests stored for a partition and not yet acknowledged.");
    json_array_foreach(parts, i, p)
        px_buf_printf(b, "parexd_cluster_partition_backlog{partition=\"%lld\"} %lld\n",
                      (long long)json_integer_value(json_object_get(p, "partition")),
                      (long long)json_integer_value(json_object_get(p, "backlog")));
    help_type(b, "parexd_cluster_partition_epoch", "gauge",
              "Lease epoch of a partition this instance holds (0: not held).");
    json_array_foreach(parts, i, p)
        px_buf_printf(b, "parexd_cluster_partition_epoch{partition=\"%lld\"} %lld\n",
                      (long long)json_integer_value(json_object_get(p, "partition")),
                      (long long)json_integer_value(json_object_get(p, "epoch")));
}

int px_report_prometheus(const px_snapshot_t *s, px_buf_t *b)
{
    const px_counts_t *n = &s->n;
    const px_worker_info_t *w = s->workers;
    uint32_t nw = s->nworkers;

    help_type(b, "parexd_requests_received_total", "counter", "Valid requests read from clients.");
    px_buf_printf(b, "parexd_requests_received_total %llu\n", (unsigned long long)n->received);
    help_type(b, "parexd_requests_rejected_total", "counter",
              "Requests answered rejected, by reason.");
    for (int i = 0; i < PX_REJ_COUNT; i++)
        px_buf_printf(b, "parexd_requests_rejected_total{reason=\"%s\"} %llu\n", px_reject_code(i),
                      (unsigned long long)n->rejected[i]);
    help_type(b, "parexd_requests_completed_total", "counter",
              "Requests that ran and were answered, by status.");
    px_buf_printf(b,
                  "parexd_requests_completed_total{status=\"ok\"} %llu\n"
                  "parexd_requests_completed_total{status=\"failed\"} %llu\n",
                  (unsigned long long)n->ok, (unsigned long long)n->failed);
    help_type(b, "parexd_requests_invalid_total", "counter",
              "Lines answered invalid, by error code.");
    for (int i = 0; i < PX_INV_COUNT; i++)
        px_buf_printf(b, "parexd_requests_invalid_total{code=\"%s\"} %llu\n", px_invalid_code(i),
                      (unsigned long long)n->invalid[i]);
    help_type(b, "parexd_requests_in_flight", "gauge", "Requests queued or running.");
    px_buf_printf(b, "parexd_requests_in_flight %llu\n", (unsigned long long)n->in_flight);

    help_type(b, "parexd_queue_depth", "gauge", "Requests waiting in each worker's queue.");
    for (uint32_t i = 0; i < nw; i++)
        px_buf_printf(b, "parexd_queue_depth{worker=\"%u\"} %u\n", i, w[i].depth);
    help_type(b, "parexd_queue_capacity", "gauge", "Bound of each worker's queue.");
    for (uint32_t i = 0; i < nw; i++)
        px_buf_printf(b, "parexd_queue_capacity{worker=\"%u\"} %u\n", i, w[i].capacity);
    help_type(b, "parexd_worker_processed_total", "counter", "Requests each worker ran.");
    for (uint32_t i = 0; i < nw; i++)
        px_buf_printf(b, "parexd_worker_processed_total{worker=\"%u\"} %llu\n", i,
                      (unsigned long long)w[i].processed);
    help_type(b, "parexd_worker_failed_total", "counter", "Requests each worker ran that failed.");
    for (uint32_t i = 0; i < nw; i++)
        px_buf_printf(b, "parexd_worker_failed_total{worker=\"%u\"} %llu\n", i,
                      (unsigned long long)w[i].failed);
    help_type(b, "parexd_worker_replacements_total", "counter",
              "Stalled threads abandoned and replaced (on_stall=replace).");
    for (uint32_t i = 0; i < nw; i++)
        px_buf_printf(b, "parexd_worker_replacements_total{worker=\"%u\"} %llu\n", i,
                      (unsigned long long)w[i].replaced);
    help_type(b, "parexd_worker_state", "gauge",
              "1 for each worker's current state (idle, busy, stalled, dead).");
    for (uint32_t i = 0; i < nw; i++)
        for (int st = 0; st < PX_WS_COUNT; st++)
            px_buf_printf(b, "parexd_worker_state{worker=\"%u\",state=\"%s\"} %d\n", i,
                          px_worker_state_name(st), (int)w[i].state == st);
    {
        uint32_t kd = s->keyed_depth, kc = s->keyed_capacity, kk = s->keyed_keys;
        if (s->keyed) {
            help_type(b, "parexd_keyed_queue_depth", "gauge",
                      "Requests waiting in the keyed scheduler (scheduling keyed).");
            px_buf_printf(b, "parexd_keyed_queue_depth %u\n", kd);
            help_type(b, "parexd_keyed_queue_capacity", "gauge", "Bound of the keyed scheduler.");
            px_buf_printf(b, "parexd_keyed_queue_capacity %u\n", kc);
            help_type(b, "parexd_keyed_active_keys", "gauge", "Keys with work queued or running.");
            px_buf_printf(b, "parexd_keyed_active_keys %u\n", kk);
        }
    }
    help_type(b, "parexd_backpressure", "gauge",
              "1 while any worker's queue is at or above backpressure_threshold.");
    px_buf_printf(b, "parexd_backpressure %d\n", px_snapshot_backpressure(s));
    help_type(b, "parexd_connections", "gauge", "Open client connections.");
    px_buf_printf(b, "parexd_connections %llu\n", (unsigned long long)n->connections);
    help_type(b, "parexd_connections_closed_total", "counter",
              "Client connections parexd closed itself, by reason.");
    for (int i = 0; i < PX_CLOSE_COUNT; i++)
        px_buf_printf(b, "parexd_connections_closed_total{reason=\"%s\"} %llu\n",
                      px_close_reason(i), (unsigned long long)n->closed[i]);
    histogram(b, "parexd_request_queue_seconds", "Time from receipt until a worker started.",
              s->queue_us);
    histogram(b, "parexd_request_run_seconds", "Time a handler ran.", s->run_us);
    help_type(b, "parexd_responses_dropped_total", "counter",
              "Responses not delivered, by reason.");
    px_buf_printf(b, "parexd_responses_dropped_total{reason=\"client_gone\"} %llu\n",
                  (unsigned long long)n->dropped);
    help_type(b, "parexd_late_results_discarded_total", "counter",
              "Results of requests already answered (abandoned on stall or forced stop).");
    px_buf_printf(b, "parexd_late_results_discarded_total %llu\n", (unsigned long long)n->late);
    handlers_prometheus(s, b);
    help_type(b, "parexd_keys_parked", "gauge", "Keys in quarantine now.");
    px_buf_printf(b, "parexd_keys_parked %llu\n", (unsigned long long)n->keys_parked);
    help_type(b, "parexd_key_parks_total", "counter", "Times a key was parked.");
    px_buf_printf(b, "parexd_key_parks_total %llu\n", (unsigned long long)n->key_parks);
    help_type(b, "parexd_worker_imbalance_ratio", "gauge",
              "Busiest worker's arrivals over the mean, last one to two minutes (1 = even).");
    px_buf_printf(b, "parexd_worker_imbalance_ratio %.3f\n", s->imbalance);
    help_type(b, "parexd_build_info", "gauge", "Build information; always 1.");
    px_buf_printf(b, "parexd_build_info{version=\"%s\"} 1\n", PX_VERSION);
    help_type(b, "parexd_start_time_seconds", "gauge", "Start time, seconds since the epoch.");
    px_buf_printf(b, "parexd_start_time_seconds %llu\n", (unsigned long long)s->start_time_unix);
    if (s->cluster)
        cluster_metrics(s->cluster, b);
    return 0;
}

int px_report_health(const px_snapshot_t *s, char *reason, size_t len)
{
    if (s->draining) {
        snprintf(reason, len, "draining: parexd is shutting down");
        return -1;
    }
    if (s->cluster_down) {
        snprintf(reason, len,
                 "cluster: not connected to NATS (reconnecting); requests are refused "
                 "unavailable until it is back");
        return -1;
    }
    for (uint32_t i = 0; i < s->nworkers; i++) {
        const px_worker_info_t *w = &s->workers[i];
        if (w->state == PX_WS_STALLED) {
            char key[4 * sizeof w->current_key];
            /* The key is a client's text: /healthz is read by people and terminals. */
            px_escape_ctl(key, sizeof key, w->current_key, strlen(w->current_key));
            snprintf(reason, len, "worker %u stalled: busy %.0f ms on key '%s' op '%s'", i,
                     (double)w->busy_for_ns / 1e6, key, w->current_op);
            return -1;
        }
        if (w->state == PX_WS_DEAD) {
            snprintf(reason, len, "worker %u dead: no heartbeat for %.0f ms", i,
                     (double)w->heartbeat_age_ns / 1e6);
            return -1;
        }
    }
    snprintf(reason, len, "ok");
    return 0;
}
