/* parex-client-bench: pipelined echo through libparex's async context on one libuv loop, the
 * client half of scripts/bench's "C client" row. C connections each keep P requests
 * outstanding (a new one is submitted from each answer's callback) until N are answered; it
 * prints {"requests","ok","seconds","rps"}. Measured against parex-bench at the same C, P and
 * N, so the difference is what the library costs over a hand-tuned load generator.
 *     parex-client-bench --addr HOST:PORT --connections C --pipeline P --requests N
 *                        [--keys K] [--payload-bytes B] */
#include <parex/adapters/libuv.h>
#include <parex/client.h>

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct bench {
    long long sent, answered, ok, target;
    int keys, live;
    char *payload;
    uv_loop_t *loop;
} bench_t;

static void on_answer(parex_async_t *ac, parex_reply_t *r, void *priv);

static int submit_next(parex_async_t *ac, bench_t *b)
{
    char key[32];
    parex_request_t req = {.key = key, .payload = b->payload};

    snprintf(key, sizeof key, "k%lld", b->sent % b->keys);
    if (parex_async_submit(ac, &req, on_answer, b) < 0) {
        fprintf(stderr, "parex-client-bench: %s\n", parex_async_errstr(ac));
        return -1;
    }
    b->sent++;
    return 0;
}

static void on_answer(parex_async_t *ac, parex_reply_t *r, void *priv)
{
    bench_t *b = priv;

    b->answered++;
    b->ok += r->status == PAREX_OK;
    parex_reply_free(r);
    if (b->sent < b->target)
        submit_next(ac, b);
    else if (parex_async_pending(ac) == 0)
        parex_async_disconnect(ac);
}

static void on_disconnect(parex_async_t *ac, int status)
{
    bench_t *b = parex_async_get_data(ac);

    if (status)
        fprintf(stderr, "parex-client-bench: %s\n", parex_async_errstr(ac));
    b->live--;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {{"addr", required_argument, NULL, 'a'},
                                         {"connections", required_argument, NULL, 'c'},
                                         {"pipeline", required_argument, NULL, 'p'},
                                         {"requests", required_argument, NULL, 'n'},
                                         {"keys", required_argument, NULL, 'k'},
                                         {"payload-bytes", required_argument, NULL, 'b'},
                                         {NULL, 0, NULL, 0}};
    const char *addr = "127.0.0.1:7400";
    int conns = 1, pipeline = 1, bytes = 64, ch;
    bench_t b = {.target = 100000, .keys = 1000};
    parex_async_t **acs;
    uint64_t t0, t1;

    while ((ch = getopt_long(argc, argv, "a:c:p:n:k:b:", opts, NULL)) != -1) {
        switch (ch) {
        case 'a':
            addr = optarg;
            break;
        case 'c':
            conns = atoi(optarg);
            break;
        case 'p':
            pipeline = atoi(optarg);
            break;
        case 'n':
            b.target = atoll(optarg);
            break;
        case 'k':
            b.keys = atoi(optarg);
            break;
        case 'b':
            bytes = atoi(optarg);
            break;
        default:
            fprintf(stderr, "usage: parex-client-bench --addr HOST:PORT --connections C "
                            "--pipeline P --requests N [--keys K] [--payload-bytes B]\n");
            return 64;
        }
    }
    if (conns < 1 || pipeline < 1 || b.keys < 1 || bytes < 2 || b.target < 1)
        return 64;
    /* A JSON string of exactly bytes bytes, as parex-bench --payload-bytes sends. */
    b.payload = malloc((size_t)bytes + 1);
    memset(b.payload, 'x', (size_t)bytes);
    b.payload[0] = b.payload[bytes - 1] = '"';
    b.payload[bytes] = '\0';
    b.loop = uv_default_loop();
    acs = calloc((size_t)conns, sizeof *acs);
    for (int i = 0; i < conns; i++) {
        acs[i] = parex_async_connect(addr, NULL);
        if (!acs[i] || parex_async_err(acs[i]) || parex_libuv_attach(b.loop, acs[i])) {
            fprintf(stderr, "parex-client-bench: cannot connect to %s: %s\n", addr,
                    acs[i] ? parex_async_errstr(acs[i]) : "out of memory");
            return 1;
        }
        parex_async_set_data(acs[i], &b);
        parex_async_set_disconnect_cb(acs[i], on_disconnect);
        b.live++;
    }
    t0 = uv_hrtime();
    for (int p = 0; p < pipeline; p++)
        for (int i = 0; i < conns && b.sent < b.target; i++)
            if (submit_next(acs[i], &b))
                return 1;
    uv_run(b.loop, UV_RUN_DEFAULT);
    t1 = uv_hrtime();
    for (int i = 0; i < conns; i++)
        parex_async_free(acs[i]);
    printf("{\"requests\":%lld,\"ok\":%lld,\"seconds\":%.6f,\"rps\":%.1f}\n", b.answered, b.ok,
           (double)(t1 - t0) / 1e9, (double)b.answered / ((double)(t1 - t0) / 1e9));
    free(acs);
    free(b.payload);
    return b.ok == b.target ? 0 : 1;
}
