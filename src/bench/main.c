/* parex-bench: a load generator for parexd that checks every answer it gets. The options and
 * the report live here; the load loop is run.c, the histogram hist.c and the key
 * distributions keys.c.
 *
 * Exit status: 0 when every request was answered in order with no protocol error, 1 otherwise
 * (errors are printed on stderr and counted in the report), 2 when the run could not start,
 * 64 on a usage mistake. */
#include "bench/args.h"
#include "bench/run.h"
#include "common/clock.h"
#include "common/hostport.h"
#include "common/protocol.h"

#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EXIT_ERRORS 1
#define EXIT_CANNOT_RUN 2

static void usage(FILE *f)
{
    fprintf(
        f,
        "usage: parex-bench --addr HOST:PORT --connections C --pipeline P\n"
        "                   (--requests N | --duration S) --keys K [--zipf S] [--op OP]\n"
        "                   [--payload-bytes B | --payload JSON] [--seed N] [--timeout S]\n"
        "                   [--json]\n"
        "       parex-bench --addr HOST:PORT --idle-connections N [--hold S]\n"
        "       parex-bench --json-cost N [--op OP] [--payload-bytes B | --payload JSON] [--json]\n"
        "\n"
        "  --addr HOST:PORT     parexd's request listener ([::1]:PORT for IPv6)\n"
        "  --connections C      connections, each keeping P requests outstanding (default 1)\n"
        "  --pipeline P         requests outstanding per connection (default 1)\n"
        "  --requests N         send N requests in all, then wait for their answers\n"
        "  --duration S         send for S seconds, then wait for the answers still due\n"
        "  --keys K             distinct partition keys k0..k(K-1) (default 1000)\n"
        "  --zipf S             draw keys from Zipf(S) (k0 the hottest); default uniform\n"
        "  --hot-keys H         report keys H.. (the cold ones) apart: cold_p99_ms, cold_rejected\n"
        "  --op OP              the request's op (default echo)\n"
        "  --payload-bytes B    payload: a JSON string of B bytes\n"
        "  --payload JSON       payload: this JSON value (e.g. '{\"ms\":10}' for op sleep)\n"
        "  --seed N             PRNG seed of the key choice (default 1)\n"
        "  --timeout S          give up when no answer comes for S seconds (default 30)\n"
        "  --json               print the report as one JSON object\n"
        "  --idle-connections N open N connections, send one echo on each, print one line\n"
        "                       once all are answered, then hold them idle\n"
        "  --hold S             how long to hold them (default: until SIGINT/SIGTERM)\n"
        "  --json-cost N        no connection: time N parses of the request line this run\n"
        "                       would send (parexd's parser), N dumps of its payload and N\n"
        "                       jansson parses of parexd's answer: the JSON work per request\n"
        "\n"
        "Every answer is checked: its id must match a request outstanding on its connection,\n"
        "and ok/failed answers for a key must come back in the order that key's requests were\n"
        "sent on the connection. Violations are printed and counted. Latency is measured from\n"
        "the write of a request to the read of its ok/failed answer, in a log-linear histogram\n"
        "with under 0.8%% relative error.\n"
        "Exit status: 0 clean run, 1 protocol errors or order violations, 2 the run could not\n"
        "start, 64 usage.\n");
}

#define die_usage(...) px_arg_usage_error("parex-bench", __VA_ARGS__)

static double ms(uint64_t ns)
{
    return (double)ns / 1e6;
}

static void report(const px_bench_opts_t *o, const px_bench_result_t *r, int as_json)
{
    uint64_t answered = r->ok + r->failed + r->rejected + r->invalid;
    double rps = r->seconds > 0 ? (double)answered / r->seconds : 0;
    double ok_rps = r->seconds > 0 ? (double)r->ok / r->seconds : 0;
    /* A timed run's steady rate: answers read while it was still sending, over that time, so
     * the drain of the last outstanding requests does not dilute it. */
    double steady_rps = o->duration > 0 ? (double)r->window_answered / o->duration : rps;
    const px_bhist_t *h = &r->lat;

    if (as_json) {
        printf(
            "{\"requests\":%llu,\"ok\":%llu,\"failed\":%llu,\"rejected\":%llu,"
            "\"invalid\":%llu,\"seconds\":%.6f,\"rps\":%.1f,\"ok_rps\":%.1f,\"steady_rps\":%.1f,",
            (unsigned long long)r->sent, (unsigned long long)r->ok, (unsigned long long)r->failed,
            (unsigned long long)r->rejected, (unsigned long long)r->invalid, r->seconds, rps,
            ok_rps, steady_rps);
        px_bhist_print_json(stdout, h);
        printf(",\"order_violations\":%llu,\"errors\":%llu,"
               "\"unanswered\":%llu,\"server_queue_ms_mean\":%.4f,\"server_run_ms_mean\":%.4f,"
               "\"connections\":%u,\"pipeline\":%u,\"keys\":%u,"
               "\"zipf\":%g,\"op\":",
               (unsigned long long)r->order_violations, (unsigned long long)r->errors,
               (unsigned long long)r->unanswered,
               r->server_timed ? r->server_queue_ms / (double)r->server_timed : 0.0,
               r->server_timed ? r->server_run_ms / (double)r->server_timed : 0.0, o->connections,
               o->pipeline, o->keys, o->zipf);
        json_t *op = json_string(o->op);
        json_dumpf(op, stdout, JSON_ENCODE_ANY);
        json_decref(op);
        if (o->hot_keys)
            printf(",\"cold_sent\":%llu,\"cold_rejected\":%llu,\"cold_queue_full\":%llu,"
                   "\"cold_p50_ms\":%.4f,\"cold_p99_ms\":%.4f",
                   (unsigned long long)r->cold_sent, (unsigned long long)r->cold_rejected,
                   (unsigned long long)r->cold_queue_full,
                   ms(px_bhist_quantile(&r->cold_lat, 0.50)),
                   ms(px_bhist_quantile(&r->cold_lat, 0.99)));
        printf("}\n");
        return;
    }
    printf("parex-bench: %s:%d, %u connections x pipeline %u, %u keys %s, op %s\n", o->host,
           o->port, o->connections, o->pipeline, o->keys, o->zipf > 0 ? "zipf" : "uniform", o->op);
    printf("requests          %llu\n", (unsigned long long)r->sent);
    printf("ok                %llu\n", (unsigned long long)r->ok);
    printf("failed            %llu\n", (unsigned long long)r->failed);
    printf("rejected          %llu\n", (unsigned long long)r->rejected);
    printf("invalid           %llu\n", (unsigned long long)r->invalid);
    printf("errors            %llu\n", (unsigned long long)r->errors);
    printf("unanswered        %llu\n", (unsigned long long)r->unanswered);
    printf("order_violations  %llu\n", (unsigned long long)r->order_violations);
    printf("seconds           %.3f\n", r->seconds);
    printf("rps               %.1f\n", rps);
    if (o->duration > 0)
        printf("steady_rps        %.1f   (answers while sending / --duration)\n", steady_rps);
    px_bhist_print_text(stdout, h);
    if (r->server_timed)
        printf("server mean       queue_ms %.3f  run_ms %.3f  (from the answers)\n",
               r->server_queue_ms / (double)r->server_timed,
               r->server_run_ms / (double)r->server_timed);
}

/* The payload as compact JSON on one line. */
static char *payload_text(const char *json, uint64_t bytes, int have_bytes)
{
    json_t *v;
    char *out;

    if (have_bytes) {
        char *s = malloc(bytes + 1);
        if (!s)
            return NULL;
        memset(s, 'x', bytes);
        s[bytes] = 0;
        v = json_stringn(s, bytes);
        free(s);
    } else {
        v = json_loads(json, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, NULL);
    }
    if (!v)
        return NULL;
    out = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    json_decref(v);
    return out;
}

/* --json-cost: what the JSON work costs per request on this machine, for the lines this run
 * would exchange, timed through the code that does it: parexd's parse of the request line
 * (px_line_parse), its dump of the payload into the text the worker gets (px_json_append), and
 * parex-bench's jansson path for parexd's answer (px_resp_format's line). Nanoseconds each. */
static int json_cost_report(const px_bench_opts_t *o, uint64_t n, int as_json)
{
    static const char head[] = "{\"key\":\"k123\",\"id\":1234567";
    px_resp_t resp = {.id = "1234567",
                      .id_len = 7,
                      .status = "ok",
                      .worker = 2,
                      .result_text = o->payload ? o->payload : "null",
                      .queue_ms = 0.123,
                      .run_ms = 0.004};
    px_buf_t req = {0}, ans = {0}, text = {0};
    uint64_t t0, t1, t2, t3;
    char err[128] = "";
    px_line_t line;
    int rc = EXIT_CANNOT_RUN;

    resp.result_len = strlen(resp.result_text);
    /* Both lines without their newline, as the framers hand them over. */
    if (px_buf_puts(&req, head) || px_resp_format(&ans, &resp))
        snprintf(err, sizeof err, "out of memory");
    else
        px_bench_suffix(o, &req, err, sizeof err); /* sets err only when it fails */
    if (err[0]) {
        fprintf(stderr, "parex-bench: --json-cost: %s\n", err);
        goto out;
    }
    req.len--;
    ans.len--;
    px_line_parse(&line, req.data, req.len);
    if (line.kind != PX_LINE_REQUEST) {
        fprintf(stderr, "parex-bench: --json-cost: parexd would not take this line: %s\n",
                line.message);
        px_line_free(&line);
        goto out;
    }
    t0 = px_now_ns();
    for (uint64_t i = 0; i < n; i++) {
        px_line_t l;
        px_line_parse(&l, req.data, req.len);
        px_line_free(&l);
    }
    t1 = px_now_ns();
    for (uint64_t i = 0; i < n; i++) {
        text.len = 0;
        px_json_append(&text, line.payload);
    }
    t2 = px_now_ns();
    for (uint64_t i = 0; i < n; i++)
        json_decref(json_loadb(ans.data, ans.len, 0, NULL));
    t3 = px_now_ns();
    px_line_free(&line);
    if (as_json)
        printf("{\"request_bytes\":%zu,\"parse_request_ns\":%.0f,\"dump_payload_ns\":%.0f,"
               "\"answer_bytes\":%zu,\"parse_answer_ns\":%.0f,\"iterations\":%llu}\n",
               req.len, (double)(t1 - t0) / (double)n, (double)(t2 - t1) / (double)n, ans.len,
               (double)(t3 - t2) / (double)n, (unsigned long long)n);
    else
        printf("jansson, %llu iterations each:\n"
               "  parse the request line (%zu bytes, parexd's flags)  %8.0f ns\n"
               "  dump its payload as compact text                   %8.0f ns\n"
               "  parse parexd's answer (%zu bytes)                  %8.0f ns\n",
               (unsigned long long)n, req.len, (double)(t1 - t0) / (double)n,
               (double)(t2 - t1) / (double)n, ans.len, (double)(t3 - t2) / (double)n);
    rc = 0;
out:
    px_buf_free(&req);
    px_buf_free(&ans);
    px_buf_free(&text);
    return rc;
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"addr", required_argument, 0, 'a'},
        {"connections", required_argument, 0, 'c'},
        {"pipeline", required_argument, 0, 'P'},
        {"requests", required_argument, 0, 'n'},
        {"duration", required_argument, 0, 'd'},
        {"keys", required_argument, 0, 'k'},
        {"zipf", required_argument, 0, 'z'},
        {"op", required_argument, 0, 'o'},
        {"payload-bytes", required_argument, 0, 'B'},
        {"payload", required_argument, 0, 'p'},
        {"seed", required_argument, 0, 's'},
        {"timeout", required_argument, 0, 't'},
        {"json", no_argument, 0, 'j'},
        {"idle-connections", required_argument, 0, 'I'},
        {"hold", required_argument, 0, 'H'},
        {"json-cost", required_argument, 0, 'J'},
        {"hot-keys", required_argument, 0, 'K'},
        {"help", no_argument, 0, 'h'},
        {"version", no_argument, 0, 'V'},
        {0, 0, 0, 0},
    };
    px_bench_opts_t o = {
        .connections = 1, .pipeline = 1, .keys = 1000, .seed = 1, .op = "echo", .timeout = 30};
    px_bench_result_t *res;
    const char *addr = NULL, *payload_json = NULL;
    uint64_t v, payload_bytes = 0, json_cost = 0;
    int opt, as_json = 0, have_bytes = 0, have_requests = 0;
    char *payload = NULL, err[256];
    int rc;

    while ((opt = getopt_long(argc, argv, "a:c:P:n:d:k:", longopts, NULL)) != -1) {
        switch (opt) {
        case 'a':
            addr = optarg;
            break;
        case 'c':
            if (px_arg_u64(optarg, 1, 1000000, &v))
                return die_usage("--connections '%s' is not an integer 1..1000000", optarg);
            o.connections = (uint32_t)v;
            break;
        case 'P':
            if (px_arg_u64(optarg, 1, 1u << 20, &v))
                return die_usage("--pipeline '%s' is not an integer 1..1048576", optarg);
            o.pipeline = (uint32_t)v;
            break;
        case 'n':
            if (px_arg_u64(optarg, 1, UINT64_MAX >> 24, &o.requests))
                return die_usage("--requests '%s' is not a positive integer", optarg);
            have_requests = 1;
            break;
        case 'd':
            if (px_arg_nonneg(optarg, &o.duration) || o.duration <= 0 || o.duration > 1e6)
                return die_usage("--duration '%s' is not a number of seconds > 0", optarg);
            break;
        case 'k':
            if (px_arg_u64(optarg, 1, 100000000, &v))
                return die_usage("--keys '%s' is not an integer 1..100000000", optarg);
            o.keys = (uint32_t)v;
            break;
        case 'K':
            if (px_arg_u64(optarg, 1, 100000000, &v))
                return die_usage("--hot-keys '%s' is not an integer 1..100000000", optarg);
            o.hot_keys = (uint32_t)v;
            break;
        case 'z':
            if (px_arg_nonneg(optarg, &o.zipf) || o.zipf > 100)
                return die_usage("--zipf '%s' is not an exponent 0..100", optarg);
            break;
        case 'o':
            o.op = optarg;
            break;
        case 'B':
            if (px_arg_u64(optarg, 0, 64u << 20, &payload_bytes))
                return die_usage("--payload-bytes '%s' is not an integer 0..67108864", optarg);
            have_bytes = 1;
            break;
        case 'p':
            payload_json = optarg;
            break;
        case 's':
            if (px_arg_u64(optarg, 0, UINT64_MAX, &o.seed))
                return die_usage("--seed '%s' is not an integer", optarg);
            break;
        case 't':
            if (px_arg_nonneg(optarg, &o.timeout) || o.timeout <= 0)
                return die_usage("--timeout '%s' is not a number of seconds > 0", optarg);
            break;
        case 'j':
            as_json = 1;
            break;
        case 'I':
            if (px_arg_u64(optarg, 1, 1000000, &v))
                return die_usage("--idle-connections '%s' is not an integer 1..1000000", optarg);
            o.idle_connections = (uint32_t)v;
            break;
        case 'J':
            if (px_arg_u64(optarg, 1, 100000000, &json_cost))
                return die_usage("--json-cost '%s' is not an integer 1..100000000", optarg);
            break;
        case 'H':
            if (px_arg_nonneg(optarg, &o.hold))
                return die_usage("--hold '%s' is not a number of seconds", optarg);
            break;
        default:
            return px_arg_common(opt, "parex-bench", usage);
        }
    }
    if (optind < argc)
        return die_usage("unexpected argument '%s'", argv[optind]);
    if (have_bytes && payload_json)
        return die_usage("%s", "give at most one of --payload-bytes and --payload");
    if (have_bytes || payload_json) {
        if (!(payload = payload_text(payload_json, payload_bytes, have_bytes)))
            return die_usage("--payload '%s' is not valid JSON", payload_json ? payload_json : "");
        o.payload = payload;
    }
    if (json_cost) {
        rc = json_cost_report(&o, json_cost, as_json);
        free(payload);
        return rc;
    }
    if (!addr)
        return die_usage("%s", "--addr HOST:PORT is required");
    if (px_parse_hostport(addr, o.host, sizeof o.host, &o.port) || o.port <= 0)
        return die_usage("--addr '%s' is not HOST:PORT with a port 1..65535", addr);

    if (o.idle_connections) {
        if (px_bench_idle(&o, err, sizeof err)) {
            fprintf(stderr, "parex-bench: %s\n", err);
            return EXIT_ERRORS;
        }
        return 0;
    }
    if (have_requests == (o.duration > 0))
        return die_usage("%s", "give exactly one of --requests N and --duration S");
    if ((uint64_t)o.connections * o.keys > (64ull << 20))
        return die_usage("%s", "--connections x --keys is over 67108864: the per-key order "
                               "check keeps 8 bytes per connection and key");

    json_object_seed(1);
    if (!(res = malloc(sizeof *res))) {
        fprintf(stderr, "parex-bench: out of memory\n");
        free(payload);
        return EXIT_CANNOT_RUN;
    }
    if (px_bench_run(&o, res, err, sizeof err)) {
        fprintf(stderr, "parex-bench: %s\n", err);
        free(payload);
        free(res);
        return EXIT_CANNOT_RUN;
    }
    report(&o, res, as_json);
    fflush(stdout);
    if (res->sent == 0) {
        rc = EXIT_CANNOT_RUN;
    } else if (res->errors || res->order_violations || res->unanswered) {
        fprintf(stderr,
                "parex-bench: %llu protocol errors, %llu order violations, %llu unanswered\n",
                (unsigned long long)res->errors, (unsigned long long)res->order_violations,
                (unsigned long long)res->unanswered);
        rc = EXIT_ERRORS;
    } else {
        rc = 0;
    }
    free(payload);
    free(res);
    return rc;
}
