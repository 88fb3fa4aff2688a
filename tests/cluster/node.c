/* A cluster instance for the tests, built on the cluster layer alone (no TCP front end): it
 * either executes (holds partitions, runs every job by appending it to a history file, sleeping
 * the job's "ms") or generates load (publishes keyed requests with a per-key sequence and records
 * which were accepted and which answered). history.py checks the files against each other. */
#include "common/clock.h"
#include "common/log.h"
#include "common/route.h"
#include "daemon/cluster/cluster.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static px_cluster_opts_t opts;
static px_cluster_t *cl;
static uv_loop_t *loop;
static int hist_fd = -1, acc_fd = -1;
static uv_signal_t sigterm;
static uv_timer_t timer;

/* Load generation (loop thread). */
static uint32_t nkeys = 16, window = 32;
static uint64_t *key_seq;
static uint64_t total, sent, inflight, accepted, refused, answered, end_ns;
/* Load mode: per message id, ID_ACCEPTED, ID_REFUSED and ID_ANSWERED as they happen (an answer
 * can come before the outcome of its submit, or after a refusal that was only uncertain). */
static json_t *ids;
static uint64_t answered_accepted; /* accepted requests answered: the run ends at all of them */
enum { ID_ACCEPTED = 1, ID_REFUSED = 2, ID_ANSWERED = 4 };

static int id_mark(const char *msgid, int bit)
{
    json_t *v = json_object_get(ids, msgid);
    int was = v ? (int)json_integer_value(v) : 0;

    json_object_set_new(ids, msgid, json_integer(was | bit));
    return was;
}
static char tag[32];

struct sub {
    uint64_t t;
    char text[152];
};

static void put(int fd, const char *line, size_t n)
{
    /* One write per line with O_APPEND: lines of several threads and processes never mix. */
    if (write(fd, line, n) != (ssize_t)n)
        px_err("node: write: %s", strerror(errno));
}

/* Partition thread: one job at a time, in order (that is all per-key order needs here), before
 * returning: the partition thread then has nothing to overlap. */
static void run_jobs(px_cluster_job_t *jobs, size_t n, const px_cluster_fence_t *f)
{
    for (size_t i = 0; i < n; i++) {
        px_cluster_job_t *j = &jobs[i];
        json_t *o = json_loadb(j->data, j->len, 0, NULL);
        const char *key = json_string_value(json_object_get(o, "key"));
        json_int_t seq = json_integer_value(json_object_get(o, "seq"));
        json_int_t ms = json_integer_value(json_object_get(o, "ms"));
        char line[512];
        int len;

        if (!px_cluster_fence_ok(f)) {
            json_decref(o);
            return;
        }
        len = snprintf(line, sizeof line, "S %llu %s %u %llu %s %lld %llu %s\n",
                       (unsigned long long)px_now_ns(), opts.instance, j->partition,
                       (unsigned long long)j->epoch, key ? key : "?", (long long)seq,
                       (unsigned long long)j->delivered, j->msgid);
        put(hist_fd, line, (size_t)len);
        if (ms > 0) {
            struct timespec ts = {ms / 1000, (ms % 1000) * 1000000};
            nanosleep(&ts, NULL);
        }
        len = snprintf(line, sizeof line, "F %llu %s %s %lld %s\n", (unsigned long long)px_now_ns(),
                       opts.instance, key ? key : "?", (long long)seq, j->msgid);
        put(hist_fd, line, (size_t)len);
        px_buf_printf(&j->result, "{\"ran_by\":\"%s\",\"seq\":%lld}", opts.instance,
                      (long long)seq);
        j->run = 1;
        json_decref(o);
    }
}

static void run(px_cluster_job_t *jobs, size_t n, const px_cluster_fence_t *f,
                void (*ran)(void *ran_arg), void *ran_arg, void *arg)
{
    (void)arg;
    run_jobs(jobs, n, f);
    ran(ran_arg);
}

static int64_t job_ms;

static void submit_more(void)
{
    while (inflight < window && (total == 0 || sent < total) &&
           (end_ns == 0 || px_now_ns() < end_ns)) {
        uint32_t k = (uint32_t)(random() % nkeys);
        char key[48], msgid[64], data[160];
        int klen = snprintf(key, sizeof key, "%.16s-k%u", opts.instance, k); /* own keys */
        uint64_t seq = ++key_seq[k];
        int dlen = snprintf(data, sizeof data, "{\"key\":\"%s\",\"seq\":%llu,\"ms\":%lld}", key,
                            (unsigned long long)seq, (long long)job_ms);

        snprintf(msgid, sizeof msgid, "%s.%llu", tag, (unsigned long long)++sent);
        inflight++;
        /* The cookie carries the line to record and the submit time: freed in accepted(). */
        struct sub *rec = malloc(sizeof *rec);
        rec->t = px_now_ns();
        snprintf(rec->text, sizeof rec->text, "%s %llu %s", key, (unsigned long long)seq, msgid);
        px_cluster_submit(cl, px_route(key, (size_t)klen, opts.partitions), msgid, data,
                          (size_t)dlen, rec);
    }
    px_cluster_awaiting(cl, inflight);
}

static void on_accepted(void *cookie, enum px_cluster_status st, const char *why, void *arg)
{
    struct sub *rec = cookie;
    uint64_t now = px_now_ns();
    char line[512];
    int n;

    const char *msgid = strrchr(rec->text, ' ') + 1; /* "key seq msgid" */
    int was = id_mark(msgid, st == PX_CL_ACCEPTED ? ID_ACCEPTED : ID_REFUSED);

    if (st == PX_CL_ACCEPTED) {
        accepted++;
        if (was & ID_ANSWERED)
            answered_accepted++;
        n = snprintf(line, sizeof line, "A %llu %s %llu\n", (unsigned long long)now, rec->text,
                     (unsigned long long)rec->t);
    } else {
        /* The time it took to say no, for the bound on "unavailable". */
        refused++;
        if (!(was & ID_ANSWERED))
            inflight--;
        n = snprintf(line, sizeof line, "R %llu %s %d %llu %s\n", (unsigned long long)now,
                     rec->text, (int)st, (unsigned long long)((now - rec->t) / PX_MS), why);
    }
    put(acc_fd, line, (size_t)n);
    free(cookie);
    /* After a refusal the next submits wait for the timer (50 ms), as a client backing off. */
    if (st == PX_CL_ACCEPTED)
        submit_more();
}

static void on_result(const char *msgid, const char *text, size_t len, void *arg)
{
    char line[512];
    int n = snprintf(line, sizeof line, "D %llu %s %.*s\n", (unsigned long long)px_now_ns(), msgid,
                     (int)len, text);

    put(acc_fd, line, (size_t)n);
    /* A re-run answers again: count each request once, or the run would end with requests
     * still unanswered. */
    int was = id_mark(msgid, ID_ANSWERED);

    if (was & ID_ANSWERED)
        return;
    answered++;
    if (was & ID_ACCEPTED)
        answered_accepted++;
    if (!(was & ID_REFUSED) && inflight)
        inflight--;
    submit_more();
}

static void on_released(void *arg)
{
    px_notice("node: released every partition");
    px_cluster_stop(cl);
    uv_close((uv_handle_t *)&sigterm, NULL);
    uv_close((uv_handle_t *)&timer, NULL);
}

static void on_sigterm(uv_signal_t *s, int sig)
{
    px_notice("node: SIGTERM: handing partitions over");
    uv_signal_stop(s);
    px_cluster_release(cl, on_released, NULL);
}

/* Load mode: stop once the run is over and every accepted request has been answered (or the
 * grace period passes: then history.py reports what is missing). */
static uint64_t grace_ns, done_at;

static void on_timer(uv_timer_t *t)
{
    uint64_t now = px_now_ns();
    int over = (total && sent >= total) || (end_ns && now >= end_ns);

    if (!over) {
        submit_more();
        return;
    }
    if (!done_at)
        done_at = now;
    if ((inflight == 0 && answered_accepted >= accepted) || now - done_at > grace_ns) {
        printf("{\"sent\":%llu,\"accepted\":%llu,\"refused\":%llu,\"answered\":%llu}\n",
               (unsigned long long)sent, (unsigned long long)accepted, (unsigned long long)refused,
               (unsigned long long)answered);
        fflush(stdout);
        uv_timer_stop(t);
        px_cluster_release(cl, on_released, NULL);
    }
}

int main(int argc, char **argv)
{
    static struct option lo[] = {{"nats", 1, 0, 'n'},
                                 {"instance", 1, 0, 'i'},
                                 {"partitions", 1, 0, 'p'},
                                 {"lease-ttl-ms", 1, 0, 'l'},
                                 {"replicas", 1, 0, 'r'},
                                 {"history", 1, 0, 'h'},
                                 {"load", 1, 0, 'L'},
                                 {"keys", 1, 0, 'k'},
                                 {"window", 1, 0, 'w'},
                                 {"seconds", 1, 0, 's'},
                                 {"ms", 1, 0, 'm'},
                                 {"total", 1, 0, 't'},
                                 {"publish-timeout-ms", 1, 0, 'P'},
                                 {"grace-ms", 1, 0, 'g'},
                                 {"batch", 1, 0, 'b'},
                                 {0, 0, 0, 0}};
    char *servers = NULL, *load = NULL, *hist = NULL, err[512];
    double seconds = 0;
    int c;
    px_cluster_cbs_t cbs = {.run = run, .accepted = on_accepted, .result = on_result};

    px_log_init();
    px_cluster_opts_defaults(&opts);
    opts.lease_ttl_ms = 3000;
    grace_ns = 30000 * PX_MS;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case 'n':
            servers = optarg;
            break;
        case 'i':
            opts.instance = optarg;
            break;
        case 'p':
            opts.partitions = (uint32_t)atoi(optarg);
            break;
        case 'l':
            opts.lease_ttl_ms = (uint64_t)atoll(optarg);
            break;
        case 'r':
            opts.replicas = atoi(optarg);
            break;
        case 'h':
            hist = optarg;
            break;
        case 'L':
            load = optarg;
            break;
        case 'k':
            nkeys = (uint32_t)atoi(optarg);
            break;
        case 'w':
            window = (uint32_t)atoi(optarg);
            break;
        case 's':
            seconds = atof(optarg);
            break;
        case 'm':
            job_ms = atoll(optarg);
            break;
        case 't':
            total = (uint64_t)atoll(optarg);
            break;
        case 'P':
            opts.publish_timeout_ms = (uint64_t)atoll(optarg);
            break;
        case 'g':
            grace_ns = (uint64_t)atoll(optarg) * PX_MS;
            break;
        case 'b':
            opts.batch = (uint32_t)atoi(optarg);
            break;
        default:
            return 64;
        }
    }
    if (!servers || !opts.instance || (!hist && !load)) {
        fprintf(stderr, "usage: node --nats URL[,URL...] --instance NAME (--history FILE | "
                        "--load FILE [--keys N --window N --seconds S --total N --ms N])\n");
        return 64;
    }
    for (char *s = strtok(servers, ","); s && opts.nservers < PX_CLUSTER_MAX_SERVERS;
         s = strtok(NULL, ","))
        opts.servers[opts.nservers++] = s;
    if (hist && (hist_fd = open(hist, O_WRONLY | O_CREAT | O_APPEND, 0644)) < 0)
        return perror(hist), 1;
    if (load) {
        if ((acc_fd = open(load, O_WRONLY | O_CREAT | O_APPEND, 0644)) < 0)
            return perror(load), 1;
        opts.executor = 0;
        key_seq = calloc(nkeys, sizeof *key_seq);
        snprintf(tag, sizeof tag, "%s-%d", opts.instance, (int)getpid());
        srandom((unsigned)getpid());
    }
    loop = uv_default_loop();
    if (px_cluster_start(&cl, loop, &opts, &cbs, err, sizeof err)) {
        fprintf(stderr, "node: %s\n", err);
        return 78;
    }
    uv_signal_init(loop, &sigterm);
    uv_signal_start(&sigterm, on_sigterm, SIGTERM);
    uv_timer_init(loop, &timer);
    if (load) {
        ids = json_object();
        if (seconds > 0)
            end_ns = px_now_ns() + (uint64_t)(seconds * 1e9);
        submit_more();
        uv_timer_start(&timer, on_timer, 50, 50);
    }
    uv_run(loop, UV_RUN_DEFAULT);
    uv_loop_close(loop);
    return 0;
}
