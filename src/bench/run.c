/* A parex-bench run: set-up, connecting, the timer that ends a timed run or gives up on a
 * silent server, and the end. The traffic of each connection is conn.c. */
#include "bench/int.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

static void start_sending(px_bench_t *b)
{
    uint64_t now = uv_hrtime();

    b->started = 1;
    b->start_ns = b->last_answer_ns = now;
    b->progress_ms = uv_now(b->loop);
    if (b->o->duration > 0) {
        b->deadline_ms = uv_now(b->loop) + (uint64_t)(b->o->duration * 1000);
        b->deadline_ns = now + (uint64_t)(b->o->duration * 1e9);
    }
    for (uint32_t i = 0; i < b->o->connections; i++) {
        px_bconn_refill(&b->conns[i], now);
        px_bconn_flush(&b->conns[i]);
    }
    px_bench_check_done(b);
}

static void on_connect(uv_connect_t *req, int status)
{
    px_bconn_t *c = req->data;
    px_bench_t *b = c->b;
    int rc;

    if (c->closed)
        return;
    if (status < 0) {
        px_bench_error(b, "connection %u: connect to %s:%d failed: %s", c->idx, b->o->host,
                       b->o->port, uv_strerror(status));
        b->stopping = 1;
        c->closed = 1;
        px_bench_finish(b);
        return;
    }
    if ((rc = px_bconn_start(c))) {
        b->stopping = 1;
        px_bconn_lost(c, uv_strerror(rc));
        return;
    }
    if (++b->nconnected == b->o->connections)
        start_sending(b);
}

/* Every 100 ms: end the sending phase of a timed run, and give up when answers stop coming. */
static void on_timer(uv_timer_t *t)
{
    px_bench_t *b = t->data;
    uint64_t now = uv_now(b->loop);

    if (!b->started)
        b->progress_ms = b->progress_ms ? b->progress_ms : now;
    if (b->outstanding && now - b->progress_ms > (uint64_t)(b->o->timeout * 1000)) {
        px_bench_error(b, "no answer for %.1f s with %llu requests outstanding; giving up",
                       b->o->timeout, (unsigned long long)b->outstanding);
        b->res->unanswered += b->outstanding;
        b->outstanding = 0;
        b->stopping = 1;
        px_bench_finish(b);
        return;
    }
    if (!b->started && now - b->progress_ms > (uint64_t)(b->o->timeout * 1000)) {
        px_bench_error(b, "connections not established within %.1f s", b->o->timeout);
        b->stopping = 1;
        px_bench_finish(b);
        return;
    }
    px_bench_check_done(b);
}

/* First SIGINT: stop sending and wait for what is outstanding; the report follows. */
static void on_sigint(uv_signal_t *s, int signum)
{
    px_bench_t *b = s->data;

    if (b->stopping) {
        b->res->unanswered += b->outstanding;
        b->outstanding = 0;
        px_bench_finish(b);
        return;
    }
    fprintf(stderr, "parex-bench: interrupted; waiting for %llu outstanding answers\n",
            (unsigned long long)b->outstanding);
    b->stopping = 1;
    px_bench_check_done(b);
}

int px_bench_addr(const px_bench_opts_t *o, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof *ss);
    if (strchr(o->host, ':'))
        return uv_ip6_addr(o->host, o->port, (struct sockaddr_in6 *)ss);
    return uv_ip4_addr(o->host, o->port, (struct sockaddr_in *)ss);
}

void px_bench_raise_nofile(uint64_t need)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < need) {
        rl.rlim_cur = need < rl.rlim_max ? need : rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

int px_bench_suffix(const px_bench_opts_t *o, px_buf_t *out, char *err, size_t errlen)
{
    json_t *op = json_string(o->op);
    char *optext = op ? json_dumps(op, JSON_ENCODE_ANY) : NULL;
    int rc = -1;

    json_decref(op);
    if (!optext) {
        snprintf(err, errlen, "--op must be UTF-8 text");
        return -1;
    }
    if (px_buf_puts(out, ",\"op\":") || px_buf_puts(out, optext))
        goto out;
    if (o->payload && (px_buf_puts(out, ",\"payload\":") || px_buf_puts(out, o->payload)))
        goto out;
    if (px_buf_append(out, "}\n", 2))
        goto out;
    rc = 0;
out:
    if (rc)
        snprintf(err, errlen, "out of memory");
    free(optext);
    return rc;
}

static int build_suffix(px_bench_t *b, char *err, size_t errlen)
{
    px_buf_t s = {0};

    if (px_bench_suffix(b->o, &s, err, errlen)) {
        px_buf_free(&s);
        return -1;
    }
    b->suffix = s.data;
    b->suffix_len = s.len;
    return 0;
}

static void free_conns(px_bench_t *b)
{
    for (uint32_t i = 0; b->conns && i < b->o->connections; i++) {
        px_bconn_t *c = &b->conns[i];
        free(c->slots);
        free(c->free_slots);
        free(c->ksent);
        free(c->kdone);
        px_buf_free(&c->carry);
        px_buf_free(&c->out);
        px_buf_free(&c->wbuf);
    }
    free(b->conns);
}

static int init_conns(px_bench_t *b, char *err, size_t errlen)
{
    const px_bench_opts_t *o = b->o;
    px_rng_t seeder = {o->seed};

    if (!(b->conns = calloc(o->connections, sizeof *b->conns)))
        goto oom;
    for (uint32_t i = 0; i < o->connections; i++) {
        px_bconn_t *c = &b->conns[i];
        c->b = b;
        c->idx = i;
        c->rng.s = px_rng_next(&seeder);
        c->slots = calloc(o->pipeline, sizeof *c->slots);
        c->free_slots = malloc(sizeof *c->free_slots * o->pipeline);
        c->ksent = calloc(o->keys, sizeof *c->ksent);
        c->kdone = calloc(o->keys, sizeof *c->kdone);
        if (!c->slots || !c->free_slots || !c->ksent || !c->kdone)
            goto oom;
        /* Slots are taken from the end: slot 0 first. */
        for (uint32_t s = 0; s < o->pipeline; s++)
            c->free_slots[s] = o->pipeline - 1 - s;
        c->nfree = o->pipeline;
    }
    return 0;
oom:
    snprintf(err, errlen, "out of memory for %u connections x %u keys", o->connections, o->keys);
    return -1;
}

int px_bench_run(const px_bench_opts_t *o, px_bench_result_t *res, char *err, size_t errlen)
{
    px_bench_t *b = calloc(1, sizeof *b);
    struct sockaddr_storage addr;
    uv_loop_t loop;
    int rc = -1;

    memset(res, 0, sizeof *res);
    px_bhist_init(&res->lat);
    px_bhist_init(&res->cold_lat);
    if (!b || uv_loop_init(&loop)) {
        snprintf(err, errlen, "out of memory");
        free(b);
        return -1;
    }
    b->o = o;
    b->res = res;
    b->loop = &loop;
    while ((1ull << b->slot_bits) < o->pipeline)
        b->slot_bits++;
    if ((rc = px_bench_addr(o, &addr))) {
        snprintf(err, errlen, "bad address %s:%d: %s", o->host, o->port, uv_strerror(rc));
        rc = -1;
        goto out;
    }
    rc = -1;
    if (px_keydist_init(&b->keys, o->keys, o->zipf)) {
        snprintf(err, errlen, "out of memory for %u keys", o->keys);
        goto out;
    }
    if (build_suffix(b, err, errlen))
        goto out;
    b->payload_len = o->payload ? strlen(o->payload) : 0;
    if (o->payload && strcmp(o->op, "echo") == 0)
        b->echo_expect = json_loads(o->payload, JSON_DECODE_ANY, NULL);
    if (init_conns(b, err, errlen))
        goto out;
    px_bench_raise_nofile((uint64_t)o->connections + 64);

    uv_timer_init(&loop, &b->timer);
    b->timer.data = b;
    uv_timer_start(&b->timer, on_timer, 100, 100);
    uv_signal_init(&loop, &b->sigint);
    b->sigint.data = b;
    uv_signal_start(&b->sigint, on_sigint, SIGINT);
    for (uint32_t i = 0; i < o->connections; i++) {
        px_bconn_t *c = &b->conns[i];
        int crc;

        uv_tcp_init(&loop, &c->tcp);
        c->tcp.data = c;
        c->creq.data = c;
        crc = uv_tcp_connect(&c->creq, &c->tcp, (struct sockaddr *)&addr, on_connect);
        if (crc) {
            px_bench_error(b, "connect to %s:%d: %s", o->host, o->port, uv_strerror(crc));
            b->stopping = 1;
            for (uint32_t j = i + 1; j < o->connections; j++) {
                uv_tcp_init(&loop, &b->conns[j].tcp); /* so that px_bench_finish can close it */
                b->conns[j].tcp.data = &b->conns[j];
            }
            px_bench_finish(b);
            break;
        }
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    if (!b->finished) { /* cannot happen: the loop only ends once every handle is closed */
        px_bench_finish(b);
        uv_run(&loop, UV_RUN_DEFAULT);
    }
    rc = 0;
out:
    if (uv_loop_close(&loop) == UV_EBUSY && rc == 0)
        fprintf(stderr, "parex-bench: warning: handles left open at exit\n");
    free_conns(b);
    px_keydist_free(&b->keys);
    json_decref(b->echo_expect);
    free(b->suffix);
    free(b);
    return rc;
}
