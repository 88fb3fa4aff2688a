/* parex-bench --idle-connections N: opens N connections (at most CONNECTING at a time, so the
 * daemon's listen backlog never overflows into SYN retries), sends one echo on each and waits
 * for its answer, so the daemon has accepted and used every one of them. Then one line on
 * stdout tells a script that they are all open and idle, and they are held for --hold seconds
 * or until SIGINT/SIGTERM. */
#include "bench/run.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#define CONNECTING 256

typedef struct idle idle_t;

typedef struct iconn {
    uv_tcp_t tcp;
    uv_connect_t creq;
    uv_write_t wreq;
    idle_t *I;
    char line[48];
    unsigned answered : 1;
} iconn_t;

struct idle {
    const px_bench_opts_t *o;
    uv_loop_t loop;
    uv_timer_t timer;
    uv_signal_t sigint, sigterm;
    struct sockaddr_storage addr;
    iconn_t *conns;
    uint32_t started, answered, failed;
    int holding, done;
    char readbuf[64 << 10];
};

static void connect_next(idle_t *I);

static void on_close(uv_handle_t *h) {}

static void idle_stop(idle_t *I)
{
    if (I->done)
        return;
    I->done = 1;
    for (uint32_t i = 0; i < I->started; i++)
        if (!uv_is_closing((uv_handle_t *)&I->conns[i].tcp))
            uv_close((uv_handle_t *)&I->conns[i].tcp, on_close);
    uv_close((uv_handle_t *)&I->timer, on_close);
    uv_close((uv_handle_t *)&I->sigint, on_close);
    uv_close((uv_handle_t *)&I->sigterm, on_close);
}

static void idle_fail(idle_t *I, iconn_t *c, const char *what)
{
    if (!I->failed++)
        fprintf(stderr, "parex-bench: idle connection %u: %s\n", (unsigned)(c - I->conns), what);
    idle_stop(I);
}

static void on_timer(uv_timer_t *t)
{
    idle_stop(t->data);
}

static void on_signal(uv_signal_t *s, int signum)
{
    idle_stop(s->data);
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    iconn_t *c = h->data;

    *buf = uv_buf_init(c->I->readbuf, sizeof c->I->readbuf);
}

static void on_read(uv_stream_t *st, ssize_t n, const uv_buf_t *buf)
{
    iconn_t *c = st->data;
    idle_t *I = c->I;

    if (n == 0 || I->done)
        return;
    if (n < 0) {
        idle_fail(I, c, n == UV_EOF ? "closed by the server" : uv_strerror((int)n));
        return;
    }
    if (c->answered || !memchr(buf->base, '\n', (size_t)n))
        return; /* the answer is one short line; its newline ends it */
    c->answered = 1;
    if (!memmem(buf->base, (size_t)n, "\"status\":\"ok\"", 13)) {
        idle_fail(I, c, "the probe request was not answered ok");
        return;
    }
    if (++I->answered == I->o->idle_connections) {
        printf("idle: %u connections open, each answered once\n", I->answered);
        fflush(stdout);
        I->holding = 1;
        if (I->o->hold > 0)
            uv_timer_start(&I->timer, on_timer, (uint64_t)(I->o->hold * 1000), 0);
        return;
    }
    connect_next(I);
}

static void on_write(uv_write_t *w, int status)
{
    iconn_t *c = w->data;

    if (status < 0 && status != UV_ECANCELED)
        idle_fail(c->I, c, uv_strerror(status));
}

static void on_connect(uv_connect_t *req, int status)
{
    iconn_t *c = req->data;
    uv_buf_t b;
    int n;

    if (c->I->done)
        return;
    if (status < 0) {
        idle_fail(c->I, c, uv_strerror(status));
        return;
    }
    n = snprintf(c->line, sizeof c->line, "{\"key\":\"idle-%u\",\"id\":1}\n",
                 (unsigned)(c - c->I->conns));
    b = uv_buf_init(c->line, (unsigned)n);
    c->wreq.data = c;
    if ((n = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read)) ||
        (n = uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, on_write)))
        idle_fail(c->I, c, uv_strerror(n));
}

static void connect_next(idle_t *I)
{
    iconn_t *c;
    int rc;

    if (I->started == I->o->idle_connections || I->done)
        return;
    c = &I->conns[I->started++];
    c->I = I;
    uv_tcp_init(&I->loop, &c->tcp);
    c->tcp.data = c;
    c->creq.data = c;
    if ((rc = uv_tcp_connect(&c->creq, &c->tcp, (struct sockaddr *)&I->addr, on_connect)))
        idle_fail(I, c, uv_strerror(rc));
}

int px_bench_idle(const px_bench_opts_t *o, char *err, size_t errlen)
{
    idle_t *I = calloc(1, sizeof *I);
    int rc;

    if (!I || !(I->conns = calloc(o->idle_connections, sizeof *I->conns))) {
        snprintf(err, errlen, "out of memory for %u connections", o->idle_connections);
        free(I);
        return -1;
    }
    I->o = o;
    if ((rc = px_bench_addr(o, &I->addr))) {
        snprintf(err, errlen, "bad address %s:%d: %s", o->host, o->port, uv_strerror(rc));
        free(I->conns);
        free(I);
        return -1;
    }
    px_bench_raise_nofile((uint64_t)o->idle_connections + 64);
    uv_loop_init(&I->loop);
    uv_timer_init(&I->loop, &I->timer);
    I->timer.data = I;
    uv_signal_init(&I->loop, &I->sigint);
    uv_signal_init(&I->loop, &I->sigterm);
    I->sigint.data = I->sigterm.data = I;
    uv_signal_start(&I->sigint, on_signal, SIGINT);
    uv_signal_start(&I->sigterm, on_signal, SIGTERM);
    for (uint32_t i = 0; i < CONNECTING; i++)
        connect_next(I);
    uv_run(&I->loop, UV_RUN_DEFAULT);
    uv_loop_close(&I->loop);
    rc = I->failed || !I->holding ? -1 : 0;
    if (rc)
        snprintf(err, errlen, "%u of %u idle connections answered before a failure", I->answered,
                 o->idle_connections);
    free(I->conns);
    free(I);
    return rc;
}
