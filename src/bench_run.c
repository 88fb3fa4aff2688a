/* The load loop of parex-bench. One libuv loop drives every connection; the cost per request is
 * kept to building one line in the connection's staging buffer (no snprintf, no allocation),
 * one jansson parse of the answer and a histogram increment. Each read callback answers a
 * batch: every complete line is checked, freed slots are refilled and the connection's new
 * requests go out in one write.
 *
 * Ids: a request's id is (counter << slot_bits) | slot, so an answer finds its slot in O(1) and
 * an id that is unknown, already answered or from another connection is caught. Per-key order:
 * each (connection, key) numbers its requests; ok/failed answers must come back with strictly
 * increasing numbers (rejected and invalid answers may overtake, as the protocol allows). */
#include "bench_keys.h"
#include "bench_run.h"
#include "buf.h"

#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <uv.h>

#define MAX_PRINTED_ERRORS 20
#define MAX_LINE (64u << 20)
#define KEY_PREFIX "k"

typedef struct slot {
    uint64_t id; /* 0 when free */
    uint64_t sent_ns;
    uint32_t key, kseq;
} slot_t;

typedef struct bench bench_t;

typedef struct bconn {
    uv_tcp_t tcp;
    uv_connect_t creq;
    uv_write_t wreq;
    bench_t *b;
    uint32_t idx;
    px_rng_t rng;
    slot_t *slots;
    uint32_t *free_slots, nfree;
    uint64_t counter;
    uint32_t *ksent, *kdone; /* per key: next number to send; last ok/failed number + 1 */
    px_buf_t carry;          /* an answer line split across reads */
    px_buf_t out;            /* requests not yet handed to the socket */
    px_buf_t wbuf;           /* bytes owned by the uv_write in flight */
    unsigned connected : 1, writing : 1, closed : 1;
} bconn_t;

struct bench {
    const px_bench_opts_t *o;
    px_bench_result_t *res;
    uv_loop_t *loop;
    uv_timer_t timer;
    uv_signal_t sigint;
    struct sockaddr_storage addr;
    bconn_t *conns;
    uint32_t nconnected, slot_bits;
    uint64_t outstanding;
    uint64_t start_ns, last_answer_ns, deadline_ms, deadline_ns, progress_ms;
    int started, stopping, finished;
    px_keydist_t keys;
    json_t *echo_expect; /* the payload an echo must return, or NULL */
    char *suffix;        /* ,"op":"...","payload":...}\n */
    size_t suffix_len;
    uint32_t printed;
    char readbuf[256 << 10];
};

static void bench_error(bench_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void bench_error(bench_t *b, const char *fmt, ...)
{
    va_list ap;

    b->res->errors++;
    if (b->printed++ >= MAX_PRINTED_ERRORS) {
        if (b->printed == MAX_PRINTED_ERRORS + 1)
            fprintf(stderr, "parex-bench: error: further errors are counted, not printed\n");
        return;
    }
    fputs("parex-bench: error: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

static size_t u64_to_dec(char *p, uint64_t v)
{
    char tmp[20];
    size_t n = 0, i;

    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (i = 0; i < n; i++)
        p[i] = tmp[n - 1 - i];
    return n;
}

static int may_send(bench_t *b)
{
    if (b->stopping)
        return 0;
    if (b->o->requests)
        return b->res->sent < b->o->requests;
    return uv_now(b->loop) < b->deadline_ms;
}

static void on_close(uv_handle_t *h) {}

static void bench_finish(bench_t *b)
{
    if (b->finished)
        return;
    b->finished = 1;
    if (b->last_answer_ns > b->start_ns && b->started)
        b->res->seconds = (double)(b->last_answer_ns - b->start_ns) / 1e9;
    for (uint32_t i = 0; i < b->o->connections; i++) {
        bconn_t *c = &b->conns[i];
        if (!uv_is_closing((uv_handle_t *)&c->tcp))
            uv_close((uv_handle_t *)&c->tcp, on_close);
        c->closed = 1;
    }
    uv_close((uv_handle_t *)&b->timer, on_close);
    uv_close((uv_handle_t *)&b->sigint, on_close);
}

static void check_done(bench_t *b)
{
    if (b->started && b->outstanding == 0 && !may_send(b))
        bench_finish(b);
}

static uint32_t conn_outstanding(const bconn_t *c)
{
    return c->b->o->pipeline - c->nfree;
}

/* The connection is gone: everything outstanding on it will never be answered. */
static void conn_lost(bconn_t *c, const char *why)
{
    bench_t *b = c->b;
    uint32_t n = conn_outstanding(c);

    if (c->closed)
        return;
    c->closed = 1;
    if (n || may_send(b))
        bench_error(b, "connection %u: %s with %u requests unanswered", c->idx, why, n);
    b->res->unanswered += n;
    b->outstanding -= n;
    uv_close((uv_handle_t *)&c->tcp, on_close);
    /* Nothing more can be sent on it; with no connection left, stop. */
    for (uint32_t i = 0; i < b->o->connections; i++)
        if (!b->conns[i].closed)
            goto others;
    b->stopping = 1;
others:
    check_done(b);
}

static void flush(bconn_t *c);

static void on_write(uv_write_t *w, int status)
{
    bconn_t *c = w->data;

    c->writing = 0;
    c->wbuf.len = 0;
    if (status < 0) {
        if (status != UV_ECANCELED && !c->closed)
            conn_lost(c, uv_strerror(status));
        return;
    }
    flush(c);
}

/* Hands the staging buffer to the socket: uv_try_write first, a queued write only for what the
 * socket would not take right away. */
static void flush(bconn_t *c)
{
    uv_buf_t ub;
    px_buf_t t;
    int n;

    if (c->writing || c->closed || c->out.len == 0)
        return;
    ub = uv_buf_init(c->out.data, (unsigned)c->out.len);
    n = uv_try_write((uv_stream_t *)&c->tcp, &ub, 1);
    if (n == UV_EAGAIN)
        n = 0;
    if (n < 0) {
        conn_lost(c, uv_strerror(n));
        return;
    }
    if ((size_t)n == c->out.len) {
        c->out.len = 0;
        return;
    }
    t = c->wbuf;
    c->wbuf = c->out;
    c->out = t;
    c->out.len = 0;
    ub = uv_buf_init(c->wbuf.data + n, (unsigned)(c->wbuf.len - (size_t)n));
    c->wreq.data = c;
    if ((n = uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &ub, 1, on_write))) {
        conn_lost(c, uv_strerror(n));
        return;
    }
    c->writing = 1;
}

/* Fills every free slot of c with a new request, as long as the run wants more. */
static void refill(bconn_t *c, uint64_t now_ns)
{
    bench_t *b = c->b;

    while (c->nfree && !c->closed && may_send(b)) {
        uint32_t s = c->free_slots[--c->nfree];
        slot_t *sl = &c->slots[s];
        char *p;

        if (px_buf_reserve(&c->out, 64 + b->suffix_len)) {
            bench_error(b, "out of memory building a request");
            b->stopping = 1;
            c->free_slots[c->nfree++] = s;
            return;
        }
        sl->id = (++c->counter << b->slot_bits) | s;
        sl->key = px_keydist_draw(&b->keys, &c->rng);
        sl->kseq = c->ksent[sl->key]++;
        sl->sent_ns = now_ns;
        p = c->out.data + c->out.len;
        memcpy(p, "{\"key\":\"" KEY_PREFIX, 8 + sizeof KEY_PREFIX - 1);
        p += 8 + sizeof KEY_PREFIX - 1;
        p += u64_to_dec(p, sl->key);
        memcpy(p, "\",\"id\":", 7);
        p += 7;
        p += u64_to_dec(p, sl->id);
        memcpy(p, b->suffix, b->suffix_len);
        p += b->suffix_len;
        c->out.len = (size_t)(p - c->out.data);
        b->res->sent++;
        b->outstanding++;
    }
}

static void show_line(char *dst, size_t cap, const char *line, size_t len)
{
    size_t n = len < cap - 1 ? len : cap - 1;

    memcpy(dst, line, n);
    dst[n] = 0;
}

/* One answer line: find its request, check it, count it, free the slot. */
static void handle_line(bconn_t *c, const char *line, size_t len, uint64_t now_ns)
{
    bench_t *b = c->b;
    px_bench_result_t *res = b->res;
    char shown[200];
    json_error_t jerr;
    json_t *r, *jid, *result;
    const char *status;
    json_int_t id;
    uint32_t s;
    slot_t *sl;

    if (len && line[len - 1] == '\r')
        len--;
    r = json_loadb(line, len, 0, &jerr);
    if (!r || !json_is_object(r)) {
        show_line(shown, sizeof shown, line, len);
        bench_error(b, "connection %u: answer is not a JSON object (%s): %s", c->idx,
                    r ? "not an object" : jerr.text, shown);
        json_decref(r);
        return;
    }
    jid = json_object_get(r, "id");
    status = json_string_value(json_object_get(r, "status"));
    id = json_is_integer(jid) ? json_integer_value(jid) : -1;
    s = (uint32_t)((uint64_t)id & ((1ull << b->slot_bits) - 1));
    if (id <= 0 || s >= b->o->pipeline || c->slots[s].id != (uint64_t)id) {
        show_line(shown, sizeof shown, line, len);
        bench_error(b,
                    "connection %u: answer matches no outstanding request (unknown or "
                    "duplicate id): %s",
                    c->idx, shown);
        json_decref(r);
        return;
    }
    sl = &c->slots[s];
    if (status && (strcmp(status, "ok") == 0 || strcmp(status, "failed") == 0)) {
        if (sl->kseq + 1 <= c->kdone[sl->key]) {
            res->order_violations++;
            if (b->printed++ < MAX_PRINTED_ERRORS)
                fprintf(stderr,
                        "parex-bench: error: order violation: connection %u key %s%u: request "
                        "#%u of the key answered after #%u\n",
                        c->idx, KEY_PREFIX, sl->key, sl->kseq, c->kdone[sl->key] - 1);
        } else {
            c->kdone[sl->key] = sl->kseq + 1;
        }
        px_bhist_record(&res->lat, now_ns - sl->sent_ns);
        if (status[0] == 'o') {
            res->ok++;
            result = json_object_get(r, "result");
            if (!result || (b->echo_expect && !json_equal(result, b->echo_expect))) {
                show_line(shown, sizeof shown, line, len);
                bench_error(b, "connection %u: ok answer without the expected result: %s", c->idx,
                            shown);
            }
        } else {
            res->failed++;
        }
    } else if (status && strcmp(status, "rejected") == 0) {
        res->rejected++;
    } else if (status && strcmp(status, "invalid") == 0) {
        res->invalid++;
        if (res->invalid == 1) {
            show_line(shown, sizeof shown, line, len);
            fprintf(stderr, "parex-bench: first invalid answer: %s\n", shown);
        }
    } else {
        show_line(shown, sizeof shown, line, len);
        bench_error(b, "connection %u: answer with no known status: %s", c->idx, shown);
    }
    if (now_ns <= b->deadline_ns)
        res->window_answered++;
    sl->id = 0;
    c->free_slots[c->nfree++] = s;
    b->outstanding--;
    b->last_answer_ns = now_ns;
    b->progress_ms = uv_now(b->loop);
    json_decref(r);
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    bconn_t *c = h->data;

    *buf = uv_buf_init(c->b->readbuf, sizeof c->b->readbuf);
}

static void on_read(uv_stream_t *st, ssize_t n, const uv_buf_t *buf)
{
    bconn_t *c = st->data;
    bench_t *b = c->b;
    const char *p, *end, *nl;
    uint64_t now;

    if (n == 0 || c->closed)
        return;
    if (n < 0) {
        conn_lost(c, n == UV_EOF ? "closed by the server" : uv_strerror((int)n));
        return;
    }
    now = uv_hrtime();
    p = buf->base;
    end = p + n;
    if (c->carry.len) {
        nl = memchr(p, '\n', (size_t)(end - p));
        if (px_buf_append(&c->carry, p, (size_t)((nl ? nl : end) - p)) || c->carry.len > MAX_LINE) {
            conn_lost(c, "answer line too long (or out of memory)");
            return;
        }
        if (!nl)
            return;
        handle_line(c, c->carry.data, c->carry.len, now);
        c->carry.len = 0;
        p = nl + 1;
    }
    while (p < end) {
        if (!(nl = memchr(p, '\n', (size_t)(end - p)))) {
            if (px_buf_append(&c->carry, p, (size_t)(end - p)))
                conn_lost(c, "out of memory");
            break;
        }
        handle_line(c, p, (size_t)(nl - p), now);
        p = nl + 1;
    }
    refill(c, now);
    flush(c);
    check_done(b);
}

static void start_sending(bench_t *b)
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
        refill(&b->conns[i], now);
        flush(&b->conns[i]);
    }
    check_done(b);
}

static void on_connect(uv_connect_t *req, int status)
{
    bconn_t *c = req->data;
    bench_t *b = c->b;
    int rc;

    if (c->closed)
        return;
    if (status < 0) {
        bench_error(b, "connection %u: connect to %s:%d failed: %s", c->idx, b->o->host, b->o->port,
                    uv_strerror(status));
        b->stopping = 1;
        c->closed = 1;
        bench_finish(b);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    if ((rc = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read))) {
        b->stopping = 1;
        conn_lost(c, uv_strerror(rc));
        return;
    }
    c->connected = 1;
    if (++b->nconnected == b->o->connections)
        start_sending(b);
}

/* Every 100 ms: end the sending phase of a timed run, and give up when answers stop coming. */
static void on_timer(uv_timer_t *t)
{
    bench_t *b = t->data;
    uint64_t now = uv_now(b->loop);

    if (!b->started)
        b->progress_ms = b->progress_ms ? b->progress_ms : now;
    if (b->outstanding && now - b->progress_ms > (uint64_t)(b->o->timeout * 1000)) {
        bench_error(b, "no answer for %.1f s with %llu requests outstanding; giving up",
                    b->o->timeout, (unsigned long long)b->outstanding);
        b->res->unanswered += b->outstanding;
        b->outstanding = 0;
        b->stopping = 1;
        bench_finish(b);
        return;
    }
    if (!b->started && now - b->progress_ms > (uint64_t)(b->o->timeout * 1000)) {
        bench_error(b, "connections not established within %.1f s", b->o->timeout);
        b->stopping = 1;
        bench_finish(b);
        return;
    }
    check_done(b);
}

/* First SIGINT: stop sending and wait for what is outstanding; the report follows. */
static void on_sigint(uv_signal_t *s, int signum)
{
    bench_t *b = s->data;

    if (b->stopping) {
        b->res->unanswered += b->outstanding;
        b->outstanding = 0;
        bench_finish(b);
        return;
    }
    fprintf(stderr, "parex-bench: interrupted; waiting for %llu outstanding answers\n",
            (unsigned long long)b->outstanding);
    b->stopping = 1;
    check_done(b);
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

/* The part of every request line after the id. */
static int build_suffix(bench_t *b, char *err, size_t errlen)
{
    px_buf_t s = {0};
    json_t *op = json_string(b->o->op);
    char *optext = op ? json_dumps(op, JSON_ENCODE_ANY) : NULL;
    int rc = -1;

    json_decref(op);
    if (!optext) {
        snprintf(err, errlen, "--op must be UTF-8 text");
        return -1;
    }
    if (px_buf_puts(&s, ",\"op\":") || px_buf_puts(&s, optext))
        goto out;
    if (b->o->payload && (px_buf_puts(&s, ",\"payload\":") || px_buf_puts(&s, b->o->payload)))
        goto out;
    if (px_buf_append(&s, "}\n", 2))
        goto out;
    b->suffix = s.data;
    b->suffix_len = s.len;
    s.data = NULL;
    rc = 0;
out:
    if (rc)
        snprintf(err, errlen, "out of memory");
    free(optext);
    px_buf_free(&s);
    return rc;
}

static void free_conns(bench_t *b)
{
    for (uint32_t i = 0; b->conns && i < b->o->connections; i++) {
        bconn_t *c = &b->conns[i];
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

static int init_conns(bench_t *b, char *err, size_t errlen)
{
    const px_bench_opts_t *o = b->o;
    px_rng_t seeder = {o->seed};

    if (!(b->conns = calloc(o->connections, sizeof *b->conns)))
        goto oom;
    for (uint32_t i = 0; i < o->connections; i++) {
        bconn_t *c = &b->conns[i];
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
    bench_t *b = calloc(1, sizeof *b);
    uv_loop_t loop;
    int rc = -1;

    memset(res, 0, sizeof *res);
    px_bhist_init(&res->lat);
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
    if ((rc = px_bench_addr(o, &b->addr))) {
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
        bconn_t *c = &b->conns[i];
        int crc;

        uv_tcp_init(&loop, &c->tcp);
        c->tcp.data = c;
        c->creq.data = c;
        crc = uv_tcp_connect(&c->creq, &c->tcp, (struct sockaddr *)&b->addr, on_connect);
        if (crc) {
            bench_error(b, "connect to %s:%d: %s", o->host, o->port, uv_strerror(crc));
            b->stopping = 1;
            for (uint32_t j = i + 1; j < o->connections; j++) {
                uv_tcp_init(&loop, &b->conns[j].tcp); /* so that bench_finish can close it */
                b->conns[j].tcp.data = &b->conns[j];
            }
            bench_finish(b);
            break;
        }
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    if (!b->finished) { /* cannot happen: the loop only ends once every handle is closed */
        bench_finish(b);
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
