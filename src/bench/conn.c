/* One parex-bench connection's traffic. The cost per request is kept to building one line in
 * the connection's staging buffer (no snprintf, no allocation), checking the answer and a
 * histogram increment. An echo answer that is byte for byte the one parexd writes for success
 * is checked against that template (see match_echo_ok); any other answer is parsed with
 * jansson and checked field by field. At a few hundred thousand answers a second the jansson
 * parse (3.5 us each) would make the load generator, not parexd, the thing measured. Each read
 * callback handles a batch: every complete line is checked, the freed slots are refilled and the
 * new requests go out in one write.
 *
 * Ids: a request's id is (counter << slot_bits) | slot, so an answer finds its slot in O(1), and
 * an id that is unknown, already answered or from another connection is caught. Per-key order:
 * each (connection, key) numbers its requests; ok/failed answers must come back with strictly
 * increasing numbers (rejected and invalid answers may overtake, as the protocol allows). */
#include "bench/int.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_LINE (64u << 20)
#define KEY_PREFIX "k"

static void on_close(uv_handle_t *h) {}

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

/* The connection is gone: everything outstanding on it will never be answered. */
void px_bconn_lost(px_bconn_t *c, const char *why)
{
    px_bench_t *b = c->b;
    uint32_t n = b->o->pipeline - c->nfree;

    if (c->closed)
        return;
    c->closed = 1;
    if (n || px_bench_may_send(b))
        px_bench_error(b, "connection %u: %s with %u requests unanswered", c->idx, why, n);
    b->res->unanswered += n;
    b->outstanding -= n;
    uv_close((uv_handle_t *)&c->tcp, on_close);
    /* With no connection left nothing more can be sent. */
    for (uint32_t i = 0; i < b->o->connections; i++)
        if (!b->conns[i].closed)
            goto others;
    b->stopping = 1;
others:
    px_bench_check_done(b);
}

static void on_write(uv_write_t *w, int status)
{
    px_bconn_t *c = w->data;

    c->writing = 0;
    c->wbuf.len = 0;
    if (status < 0) {
        if (status != UV_ECANCELED && !c->closed)
            px_bconn_lost(c, uv_strerror(status));
        return;
    }
    px_bconn_flush(c);
}

/* Hands the staging buffer to the socket: uv_try_write first, a queued write only for what the
 * socket would not take right away (its bytes move to wbuf, which the write owns). */
void px_bconn_flush(px_bconn_t *c)
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
        px_bconn_lost(c, uv_strerror(n));
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
        px_bconn_lost(c, uv_strerror(n));
        return;
    }
    c->writing = 1;
}

/* Fills every free slot of c with a new request, as long as the run wants more. */
void px_bconn_refill(px_bconn_t *c, uint64_t now_ns)
{
    px_bench_t *b = c->b;

    while (c->nfree && !c->closed && px_bench_may_send(b)) {
        uint32_t s = c->free_slots[c->nfree - 1];
        px_bslot_t *sl = &c->slots[s];
        char *p;

        if (px_buf_reserve(&c->out, 64 + b->suffix_len)) {
            px_bench_error(b, "out of memory building a request");
            b->stopping = 1;
            return;
        }
        c->nfree--;
        sl->id = (++c->counter << b->slot_bits) | s;
        sl->key = px_keydist_draw(&b->keys, &c->rng);
        sl->kseq = c->ksent[sl->key]++;
        if (b->o->hot_keys && sl->key >= b->o->hot_keys)
            b->res->cold_sent++;
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

static const char *shown(char *dst, size_t cap, const char *line, size_t len)
{
    size_t n = len < cap - 1 ? len : cap - 1;

    memcpy(dst, line, n);
    dst[n] = 0;
    return dst;
}

/* What an ok or failed answer says besides its status, from either way of reading it. */
typedef struct answer {
    int timed; /* queue_ms and run_ms were present */
    double queue_ms, run_ms;
    int result_ok; /* ok answers: the result is there and, for echo, equals the payload */
} answer_t;

/* An ok or failed answer: order, latency, the server's own timings, the result. */
static void check_done_answer(px_bconn_t *c, px_bslot_t *sl, const char *status, const answer_t *a,
                              const char *line, size_t len, uint64_t now_ns)
{
    px_bench_t *b = c->b;
    px_bench_result_t *res = b->res;
    char tmp[200];

    if (sl->kseq + 1 <= c->kdone[sl->key]) {
        res->order_violations++;
        if (b->printed++ < PX_BENCH_MAX_PRINTED)
            fprintf(stderr,
                    "parex-bench: error: order violation: connection %u key " KEY_PREFIX
                    "%u: request #%u of the key answered after #%u\n",
                    c->idx, sl->key, sl->kseq, c->kdone[sl->key] - 1);
    } else {
        c->kdone[sl->key] = sl->kseq + 1;
    }
    px_bhist_record(&res->lat, now_ns - sl->sent_ns);
    if (b->o->hot_keys && sl->key >= b->o->hot_keys)
        px_bhist_record(&res->cold_lat, now_ns - sl->sent_ns);
    if (a->timed) {
        res->server_queue_ms += a->queue_ms;
        res->server_run_ms += a->run_ms;
        res->server_timed++;
    }
    if (strcmp(status, "ok") == 0) {
        res->ok++;
        if (!a->result_ok)
            px_bench_error(b, "connection %u: ok answer without the expected result: %s", c->idx,
                           shown(tmp, sizeof tmp, line, len));
    } else {
        res->failed++;
        if (res->failed == 1)
            fprintf(stderr, "parex-bench: first failed answer: %s\n",
                    shown(tmp, sizeof tmp, line, len));
    }
}

/* The literal s (of n bytes) at p, or NULL. */
static const char *lit(const char *p, const char *end, const char *s, size_t n)
{
    return p && (size_t)(end - p) >= n && memcmp(p, s, n) == 0 ? p + n : NULL;
}
#define LIT(p, end, s) lit(p, end, s, sizeof s - 1)

/* A JSON integer of 1 to 19 digits at p (no leading zero), or NULL. */
static const char *dec(const char *p, const char *end, uint64_t *v)
{
    const char *start = p;

    *v = 0;
    if (!p)
        return NULL;
    while (p < end && *p >= '0' && *p <= '9' && p - start < 19)
        *v = *v * 10 + (uint64_t)(*p++ - '0');
    if (p == start || (*start == '0' && p - start > 1))
        return NULL;
    return p;
}

/* parexd's milliseconds: an integer, a point and exactly three digits (px_buf_fixed3). */
static const char *ms3(const char *p, const char *end, double *v)
{
    uint64_t whole, thou = 0;

    if (!(p = LIT(dec(p, end, &whole), end, ".")) || end - p < 3)
        return NULL;
    for (int i = 0; i < 3; i++, p++) {
        if (*p < '0' || *p > '9')
            return NULL;
        thou = thou * 10 + (uint64_t)(*p - '0');
    }
    *v = (double)whole + (double)thou / 1000.0;
    return p;
}

/* Accepts only the exact line parexd writes for a successful echo of our payload:
 *   {"id":ID,"status":"ok","worker":W,"queue_ms":Q,"run_ms":R,"result":PAYLOAD}
 * with the payload byte for byte as sent (both sides are jansson's compact form). Anything else
 * (another field, other spacing, an escape) returns 0 and goes to the full jansson check, so the
 * template can reject nothing by mistake; it only skips the parse for the answer we expect. */
static int match_echo_ok(const px_bench_t *b, const char *p, size_t len, uint64_t *id, answer_t *a)
{
    const char *end = p + len;
    uint64_t worker;

    if (!b->o->payload || !b->echo_expect)
        return 0;
    p = dec(LIT(p, end, "{\"id\":"), end, id);
    p = dec(LIT(p, end, ",\"status\":\"ok\",\"worker\":"), end, &worker);
    p = ms3(LIT(p, end, ",\"queue_ms\":"), end, &a->queue_ms);
    p = ms3(LIT(p, end, ",\"run_ms\":"), end, &a->run_ms);
    p = lit(LIT(p, end, ",\"result\":"), end, b->o->payload, b->payload_len);
    if (!p || end - p != 1 || *p != '}')
        return 0;
    a->timed = a->result_ok = 1;
    return 1;
}

/* The slow way: jansson parses the answer; *status is NULL when it has none. Returns 0, or -1
 * when the line is not a JSON object (reported). The caller drops *root. */
static int parse_answer(px_bconn_t *c, const char *line, size_t len, json_t **root, int64_t *id,
                        const char **status, answer_t *a)
{
    px_bench_t *b = c->b;
    json_t *r, *qms, *rms, *result;
    json_error_t jerr;
    char tmp[200];

    *root = r = json_loadb(line, len, 0, &jerr);
    if (!r || !json_is_object(r)) {
        px_bench_error(b, "connection %u: answer is not a JSON object (%s): %s", c->idx,
                       r ? "not an object" : jerr.text, shown(tmp, sizeof tmp, line, len));
        return -1;
    }
    *id = json_is_integer(json_object_get(r, "id")) ? json_integer_value(json_object_get(r, "id"))
                                                    : -1;
    *status = json_string_value(json_object_get(r, "status"));
    qms = json_object_get(r, "queue_ms");
    rms = json_object_get(r, "run_ms");
    a->timed = json_is_number(qms) && json_is_number(rms);
    a->queue_ms = a->timed ? json_number_value(qms) : 0;
    a->run_ms = a->timed ? json_number_value(rms) : 0;
    result = json_object_get(r, "result");
    a->result_ok = result && (!b->echo_expect || json_equal(result, b->echo_expect));
    return 0;
}

/* One answer line: find its request, check it, count it, free the slot. */
static void handle_line(px_bconn_t *c, const char *line, size_t len, uint64_t now_ns)
{
    px_bench_t *b = c->b;
    px_bench_result_t *res = b->res;
    char tmp[200];
    const char *status = "ok";
    answer_t a = {0};
    int64_t id;
    uint64_t uid;
    px_bslot_t *sl;
    uint32_t s;
    json_t *r = NULL;

    if (len && line[len - 1] == '\r')
        len--;
    if (match_echo_ok(b, line, len, &uid, &a)) {
        id = uid > INT64_MAX ? -1 : (int64_t)uid;
    } else if (parse_answer(c, line, len, &r, &id, &status, &a)) {
        json_decref(r);
        return;
    }
    s = (uint32_t)((uint64_t)id & ((1ull << b->slot_bits) - 1));
    if (id <= 0 || s >= b->o->pipeline || c->slots[s].id != (uint64_t)id) {
        px_bench_error(b,
                       "connection %u: answer matches no outstanding request (unknown or "
                       "duplicate id): %s",
                       c->idx, shown(tmp, sizeof tmp, line, len));
        json_decref(r);
        return;
    }
    sl = &c->slots[s];
    if (status && (strcmp(status, "ok") == 0 || strcmp(status, "failed") == 0)) {
        check_done_answer(c, sl, status, &a, line, len, now_ns);
    } else if (status && strcmp(status, "rejected") == 0) {
        res->rejected++;
        if (b->o->hot_keys && sl->key >= b->o->hot_keys) {
            const char *code =
                json_string_value(json_object_get(json_object_get(r, "error"), "code"));
            res->cold_rejected++;
            if (code && strcmp(code, "queue_full") == 0)
                res->cold_queue_full++; /* pushed out by other keys, not by its own cap */
        }
    } else if (status && strcmp(status, "invalid") == 0) {
        if (res->invalid++ == 0)
            fprintf(stderr, "parex-bench: first invalid answer: %s\n",
                    shown(tmp, sizeof tmp, line, len));
    } else {
        px_bench_error(b, "connection %u: answer with no known status: %s", c->idx,
                       shown(tmp, sizeof tmp, line, len));
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
    px_bconn_t *c = h->data;

    *buf = uv_buf_init(c->b->readbuf, sizeof c->b->readbuf);
}

static void on_read(uv_stream_t *st, ssize_t n, const uv_buf_t *buf)
{
    px_bconn_t *c = st->data;
    const char *p, *end, *nl;
    uint64_t now;

    if (n == 0 || c->closed)
        return;
    if (n < 0) {
        px_bconn_lost(c, n == UV_EOF ? "closed by the server" : uv_strerror((int)n));
        return;
    }
    now = uv_hrtime();
    p = buf->base;
    end = p + n;
    if (c->carry.len) {
        nl = memchr(p, '\n', (size_t)(end - p));
        if (px_buf_append(&c->carry, p, (size_t)((nl ? nl : end) - p)) || c->carry.len > MAX_LINE) {
            px_bconn_lost(c, "answer line too long (or out of memory)");
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
                px_bconn_lost(c, "out of memory");
            break;
        }
        handle_line(c, p, (size_t)(nl - p), now);
        p = nl + 1;
    }
    px_bconn_refill(c, now);
    px_bconn_flush(c);
    px_bench_check_done(c->b);
}

int px_bconn_start(px_bconn_t *c)
{
    uv_tcp_nodelay(&c->tcp, 1);
    return uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}
