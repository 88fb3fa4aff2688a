/* parex-jsloop: the raw JetStream request loop, the floor cluster mode is measured against
 * (scripts/bench-cluster). The options and the report live here; the loop is loop.c, its
 * streams and consumers setup.c.
 *
 * Exit status: 0 when every request got its result once and nothing failed, 1 otherwise (the
 * report counts what), 2 when the run could not start, 64 on a usage mistake. */
#include "bench/args.h"
#include "bench/jsloop/jsloop.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EXIT_ERRORS 1
#define EXIT_CANNOT_RUN 2
#define MAX_SERVERS 16

#define die_usage(...) px_arg_usage_error("parex-jsloop", __VA_ARGS__)

static void usage(FILE *f)
{
    fprintf(f,
            "usage: parex-jsloop --nats URL[,URL...] [--replicas 1|3] [--duration S]\n"
            "                    [--in-flight N] [--batch B] [--partitions P]\n"
            "                    [--payload-bytes N] [--timeout S] [--json]\n"
            "\n"
            "  --nats URLS          NATS servers, comma-separated (nats://HOST:PORT)\n"
            "  --replicas R         replicas of the streams and consumers: 1 or 3 (default 3)\n"
            "  --duration S         publish for S seconds (default 10)\n"
            "  --in-flight N        requests published and without their result, at most\n"
            "                       (default 384)\n"
            "  --batch B            fetch size, and each consumer's MaxAckPending (default 64)\n"
            "  --partitions P       request subjects, each with its consumer and thread\n"
            "                       (default 4)\n"
            "  --payload-bytes N    size of each request and result, >= 16 (default 64)\n"
            "  --timeout S          wait up to S seconds for the results still due (default 10)\n"
            "  --json               print the report as one JSON object\n"
            "\n"
            "Creates a work-queue request stream and a results stream named after the run, a\n"
            "durable pull consumer per partition, and runs: publish each request with a unique\n"
            "Nats-Msg-Id (asynchronously) -> fetch in batches -> publish a result with a message\n"
            "id -> wait until the batch's results are stored -> acknowledge; the results are\n"
            "read on a plain subscription and timed from the request's publish. Deletes the\n"
            "streams at the end. This is cluster mode's path per request without parexd's own\n"
            "work: the floor for that path.\n"
            "Exit status: 0 clean run, 1 errors, duplicates or missing results, 2 the run could\n"
            "not start, 64 usage.\n");
}

static uint64_t errors_of(const px_jsloop_result_t *r)
{
    return r->publish_errors + r->result_errors + r->ack_errors + r->fetch_errors + r->nats_errors;
}

static void report(const px_jsloop_opts_t *o, const px_jsloop_result_t *r, int as_json)
{
    double rps = r->seconds > 0 ? (double)r->completed / r->seconds : 0;
    double steady_rps = (double)r->window_completed / o->duration;
    const px_bhist_t *h = &r->lat;

    if (as_json) {
        printf("{\"requests\":%llu,\"ok\":%llu,\"errors\":%llu,\"unanswered\":%llu,"
               "\"duplicates\":%llu,\"publish_errors\":%llu,\"result_errors\":%llu,"
               "\"ack_errors\":%llu,\"fetch_errors\":%llu,\"nats_errors\":%llu,"
               "\"seconds\":%.6f,\"rps\":%.1f,\"steady_rps\":%.1f,",
               (unsigned long long)r->sent, (unsigned long long)r->completed,
               (unsigned long long)errors_of(r), (unsigned long long)r->unanswered,
               (unsigned long long)r->duplicates, (unsigned long long)r->publish_errors,
               (unsigned long long)r->result_errors, (unsigned long long)r->ack_errors,
               (unsigned long long)r->fetch_errors, (unsigned long long)r->nats_errors, r->seconds,
               rps, steady_rps);
        px_bhist_print_json(stdout, h);
        printf(",\"replicas\":%d,\"partitions\":%u,\"in_flight\":%u,\"batch\":%u,"
               "\"payload_bytes\":%u}\n",
               o->replicas, o->partitions, o->in_flight, o->batch, o->payload_bytes);
        return;
    }
    printf("parex-jsloop: R%d, %u partitions, %u in flight, batch %u, %u-byte payload\n",
           o->replicas, o->partitions, o->in_flight, o->batch, o->payload_bytes);
    printf("requests          %llu\n", (unsigned long long)r->sent);
    printf("ok                %llu\n", (unsigned long long)r->completed);
    printf("errors            %llu   (publish %llu, result %llu, ack %llu, fetch %llu, "
           "nats %llu)\n",
           (unsigned long long)errors_of(r), (unsigned long long)r->publish_errors,
           (unsigned long long)r->result_errors, (unsigned long long)r->ack_errors,
           (unsigned long long)r->fetch_errors, (unsigned long long)r->nats_errors);
    printf("unanswered        %llu\n", (unsigned long long)r->unanswered);
    printf("duplicates        %llu\n", (unsigned long long)r->duplicates);
    printf("seconds           %.3f\n", r->seconds);
    printf("rps               %.1f\n", rps);
    printf("steady_rps        %.1f   (results while publishing / --duration)\n", steady_rps);
    px_bhist_print_text(stdout, h);
}

/* Splits the comma list in place into servers; the count, or -1 when a part is empty or there
 * are too many. */
static int split_servers(char *list, const char **servers)
{
    int n = 0;

    for (char *save = NULL, *s = strtok_r(list, ",", &save); s; s = strtok_r(NULL, ",", &save)) {
        if (n == MAX_SERVERS)
            return -1;
        servers[n++] = s;
    }
    return n ? n : -1;
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"nats", required_argument, 0, 'n'},
        {"replicas", required_argument, 0, 'r'},
        {"duration", required_argument, 0, 'd'},
        {"in-flight", required_argument, 0, 'i'},
        {"batch", required_argument, 0, 'b'},
        {"partitions", required_argument, 0, 'p'},
        {"payload-bytes", required_argument, 0, 'B'},
        {"timeout", required_argument, 0, 't'},
        {"json", no_argument, 0, 'j'},
        {"help", no_argument, 0, 'h'},
        {"version", no_argument, 0, 'V'},
        {0, 0, 0, 0},
    };
    px_jsloop_opts_t o = {.replicas = 3,
                          .duration = 10,
                          .timeout = 10,
                          .in_flight = 384,
                          .batch = 64,
                          .partitions = 4,
                          .payload_bytes = 64};
    const char *servers[MAX_SERVERS];
    char *urls = NULL, err[512];
    px_jsloop_result_t *r;
    int opt, as_json = 0, rc;
    uint64_t v;

    while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (opt) {
        case 'n':
            urls = optarg;
            break;
        case 'r':
            if (px_arg_u64(optarg, 1, 3, &v) || v == 2)
                return die_usage("--replicas '%s' is not 1 or 3", optarg);
            o.replicas = (int)v;
            break;
        case 'd':
            if (px_arg_nonneg(optarg, &o.duration) || o.duration <= 0 || o.duration > 1e5)
                return die_usage("--duration '%s' is not a number of seconds > 0", optarg);
            break;
        case 'i':
            if (px_arg_u64(optarg, 1, 1u << 20, &v))
                return die_usage("--in-flight '%s' is not an integer 1..1048576", optarg);
            o.in_flight = (unsigned)v;
            break;
        case 'b':
            if (px_arg_u64(optarg, 1, 1024, &v))
                return die_usage("--batch '%s' is not an integer 1..1024", optarg);
            o.batch = (unsigned)v;
            break;
        case 'p':
            if (px_arg_u64(optarg, 1, 256, &v))
                return die_usage("--partitions '%s' is not an integer 1..256", optarg);
            o.partitions = (unsigned)v;
            break;
        case 'B':
            if (px_arg_u64(optarg, 16, 1u << 20, &v))
                return die_usage("--payload-bytes '%s' is not an integer 16..1048576", optarg);
            o.payload_bytes = (unsigned)v;
            break;
        case 't':
            if (px_arg_nonneg(optarg, &o.timeout) || o.timeout <= 0)
                return die_usage("--timeout '%s' is not a number of seconds > 0", optarg);
            break;
        case 'j':
            as_json = 1;
            break;
        default:
            return px_arg_common(opt, "parex-jsloop", usage);
        }
    }
    if (optind < argc)
        return die_usage("unexpected argument '%s'", argv[optind]);
    if (!urls)
        return die_usage("%s", "--nats URL[,URL...] is required");
    if ((o.nservers = split_servers(urls, servers)) < 0)
        return die_usage("--nats: give 1 to %d comma-separated URLs", MAX_SERVERS);
    o.servers = servers;

    if (!(r = malloc(sizeof *r))) {
        fprintf(stderr, "parex-jsloop: out of memory\n");
        return EXIT_CANNOT_RUN;
    }
    if (px_jsloop_run(&o, r, err, sizeof err)) {
        fprintf(stderr, "parex-jsloop: %s\n", err);
        free(r);
        return EXIT_CANNOT_RUN;
    }
    report(&o, r, as_json);
    fflush(stdout);
    rc = 0;
    if (errors_of(r) || r->unanswered || r->duplicates || !r->completed) {
        fprintf(stderr,
                "parex-jsloop: %llu errors, %llu unanswered, %llu duplicates, %llu results\n",
                (unsigned long long)errors_of(r), (unsigned long long)r->unanswered,
                (unsigned long long)r->duplicates, (unsigned long long)r->completed);
        rc = EXIT_ERRORS;
    }
    free(r);
    return rc;
}
