/* Client connections. Reading uses the server's one shared buffer: complete lines are parsed in
 * place and only a line split across reads is copied. Responses are appended to a per-connection
 * buffer and written once per loop callback (uv_try_write first, a queued write only for what the
 * socket would not take), so a pipelining client costs one syscall per batch, not per response.
 *
 * Lifetime: refs counts the open handle, each request in flight and each queued write; the
 * memory goes when the last one is released, so a worker's late answer never touches freed
 * memory. */
#include "daemon/net/conn.h"

#include "common/clock.h"
#include "common/log.h"
#include "daemon/net/dispatch.h"
#include "daemon/net/framer.h"
#include "daemon/net/ledger.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Per-connection output cap: past HIGH bytes unwritten we stop reading from the client (it is
 * not reading its answers) and resume below LOW. */
#define OUT_HIGH (1u << 20)
#define OUT_LOW (256u << 10)
/* How long a closing connection may wait for its client's TCP to acknowledge the last answers
 * (or reset) before those still unacknowledged are counted as dropped. */
#define LINGER_MAX_MS 2000

struct px_conn {
    union {
        uv_tcp_t tcp;   /* clients of a TCP listener */
        uv_pipe_t pipe; /* clients of the Unix-domain listener */
    } h;
    px_net_t *net;
    px_conn_t *prev, *next; /* net->conns */
    px_conn_t *dirty_next;
    px_framer_t framer;
    px_buf_t out; /* response bytes not yet handed to the socket */
    uint64_t next_id;
    uint64_t batch_ns; /* receive time of the lines of the current read */
    uint32_t refs, inflight, writes;
    size_t partial_acct;       /* bytes of framer.partial counted in net->partial_bytes */
    uint64_t partial_since_ns; /* when the current partial line began (0: none) */
    unsigned in_dirty : 1, closing : 1, eof : 1, throttled : 1, close_when_flushed : 1;
    px_ledger_t ledger; /* which answers the client has received */
    uv_timer_t *linger; /* while waiting for the client's TCP to settle the last answers */
    uint32_t linger_ms;
};

typedef struct wreq {
    uv_write_t w;
    px_conn_t *c;
    px_buf_t buf;
} wreq_t;

static void conn_on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf);
static void conn_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static int may_read(const px_conn_t *c)
{
    return !c->closing && !c->eof && !c->close_when_flushed && !c->throttled;
}

static void mark_dirty(px_conn_t *c);
static void conn_close(px_conn_t *c);

/* Brings net->partial_bytes up to date with this connection's partial line. Past the budget
 * the line that pushed it over is dropped and answered rejected/overloaded (the rest of it is
 * skipped up to its newline): many clients each holding a long partial line cannot grow memory
 * beyond max_partial_bytes, and nobody waits on anybody (pausing reads could deadlock). */
static void account_partial(px_conn_t *c, uint64_t now)
{
    px_net_t *n = c->net;
    size_t cap = c->closing ? 0 : c->framer.partial.cap;

    n->partial_bytes = n->partial_bytes + cap - c->partial_acct;
    c->partial_acct = cap;
    if (!c->closing && c->framer.partial.len > 0 &&
        n->partial_bytes > (uint64_t)n->cfg->max_partial_bytes) {
        px_line_ctx_t x = {.net = n, .origin = c, .out = &c->out, .recv_ns = now};
        size_t had = c->framer.partial.len;
        unsigned r;

        px_framer_drop(&c->framer);
        n->partial_bytes -= c->partial_acct;
        c->partial_acct = 0;
        r = px_dispatch_overloaded(&x, had);
        if (r & PX_DISPATCH_OUTPUT)
            mark_dirty(c);
        if (r & PX_DISPATCH_CLOSE)
            conn_close(c);
    }
    if (c->closing || c->framer.partial.len == 0)
        c->partial_since_ns = 0;
    else if (!c->partial_since_ns)
        c->partial_since_ns = now;
}

static void conn_unref(px_conn_t *c)
{
    if (--c->refs > 0)
        return;
    px_framer_free(&c->framer);
    px_buf_free(&c->out);
    px_ledger_free(&c->ledger);
    free(c);
}

static void conn_on_close(uv_handle_t *h)
{
    px_conn_t *c = h->data;
    px_net_t *n = c->net;

    if (c->prev)
        c->prev->next = c->next;
    else
        n->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    n->nconns--;
    px_stats_begin(n->stats);
    px_stats_add(&n->stats->c.connections, -1);
    px_stats_end(n->stats);
    conn_unref(c);
    n->ev.closed(n->ev.arg);
}

static void linger_closed(uv_handle_t *h)
{
    px_conn_t *c = h->data;

    free(h);
    conn_unref(c);
}

/* Every close goes through here: what the client did not receive (queued, written but not
 * acknowledged) is counted as dropped now; what finishes later is counted on delivery. */
static void conn_close(px_conn_t *c)
{
    uint64_t lost;

    if (c->closing)
        return;
    c->closing = 1;
    account_partial(c, 0); /* its partial line no longer counts */
    /* Closing with requests in flight: their answers can reach nobody (a client that is only
     * done sending keeps its connection until it is answered). */
    if (c->inflight && !c->close_when_flushed && c->net->cfg->cancel_on_disconnect)
        px_engine_cancel_origin(c->net->eng, c);
    if (c->linger) {
        uv_close((uv_handle_t *)c->linger, linger_closed);
        c->linger = NULL;
    }
    if ((lost = px_ledger_undelivered(&c->ledger))) {
        px_stats_begin(c->net->stats);
        px_stats_add(&c->net->stats->c.dropped, (int64_t)lost);
        px_stats_end(c->net->stats);
    }
    uv_close((uv_handle_t *)&c->h, conn_on_close);
}

/* Closing: waits until the client's TCP has acknowledged the last answers, or reset the
 * connection (a client that closed before reading them does), so that conn_close counts
 * exactly what was lost. Polled with a doubling interval; loopback settles on the first. */
static void on_linger(uv_timer_t *t)
{
    px_conn_t *c = t->data;

    if (px_ledger_settled(&c->ledger) || c->linger_ms >= LINGER_MAX_MS) {
        conn_close(c);
        return;
    }
    uv_timer_start(t, on_linger, c->linger_ms, 0);
    c->linger_ms *= 2;
}

/* Closes a connection whose client is done (EOF) or that the drain is finishing, once every
 * answer it is owed has been written and settled. */
static void conn_maybe_close(px_conn_t *c)
{
    if (!(c->eof || c->close_when_flushed) || c->inflight || c->out.len || c->writes || c->linger)
        return;
    if (px_ledger_settled(&c->ledger) || !(c->linger = malloc(sizeof *c->linger))) {
        conn_close(c);
        return;
    }
    uv_timer_init(c->net->loop, c->linger);
    c->linger->data = c;
    c->refs++;
    c->linger_ms = 1;
    on_linger(c->linger);
}

static void mark_dirty(px_conn_t *c)
{
    if (!c->in_dirty) {
        c->in_dirty = 1;
        c->refs++;
        c->dirty_next = c->net->dirty;
        c->net->dirty = c;
    }
}

static void on_write(uv_write_t *w, int status)
{
    wreq_t *wr = (wreq_t *)w;
    px_conn_t *c = wr->c;

    if (status == 0)
        px_ledger_written(&c->ledger, wr->buf.len);
    px_buf_free(&wr->buf);
    free(wr);
    c->writes--;
    if (status < 0 && status != UV_ECANCELED) {
        px_debug("connection: write failed: %s", uv_strerror(status));
        conn_close(c);
    } else if (!c->closing) {
        if (c->throttled && uv_stream_get_write_queue_size((uv_stream_t *)&c->h) < OUT_LOW) {
            c->throttled = 0;
            if (may_read(c))
                uv_read_start((uv_stream_t *)&c->h, conn_on_alloc, conn_on_read);
        }
        conn_maybe_close(c);
    }
    conn_unref(c);
}

static void flush_one(px_conn_t *c)
{
    uv_buf_t b = uv_buf_init(c->out.data, (unsigned)c->out.len);
    wreq_t *wr;
    int n = 0;

    if (c->closing || c->out.len == 0)
        return;
    /* Only when nothing is queued may we write directly, or bytes would overtake. */
    if (c->writes == 0) {
        n = uv_try_write((uv_stream_t *)&c->h, &b, 1);
        if (n == UV_EAGAIN)
            n = 0;
        if (n < 0) {
            conn_close(c);
            return;
        }
        px_ledger_written(&c->ledger, (size_t)n);
        if ((size_t)n == c->out.len) {
            c->out.len = 0;
            if (c->out.cap > 65536)
                px_buf_free(&c->out);
            conn_maybe_close(c);
            return;
        }
    }
    wr = calloc(1, sizeof *wr);
    if (!wr || px_buf_append(&wr->buf, c->out.data + n, c->out.len - (size_t)n)) {
        free(wr);
        conn_close(c);
        return;
    }
    c->out.len = 0;
    wr->c = c;
    b = uv_buf_init(wr->buf.data, (unsigned)wr->buf.len);
    if (uv_write(&wr->w, (uv_stream_t *)&c->h, &b, 1, on_write)) {
        px_buf_free(&wr->buf);
        free(wr);
        conn_close(c);
        return;
    }
    c->writes++;
    c->refs++;
    if (!c->throttled && uv_stream_get_write_queue_size((uv_stream_t *)&c->h) > OUT_HIGH) {
        c->throttled = 1;
        uv_read_stop((uv_stream_t *)&c->h);
    }
}

void px_conn_flush_all(px_net_t *n)
{
    while (n->dirty) {
        px_conn_t *c = n->dirty;
        n->dirty = c->dirty_next;
        c->in_dirty = 0;
        flush_one(c);
        conn_unref(c);
    }
}

/* One line from the client, inside the px_stats_begin/end of the read. */
static void on_line(void *arg, const char *text, size_t len, int too_long)
{
    px_conn_t *c = arg;
    px_line_ctx_t x = {.net = c->net,
                       .origin = c,
                       .out = &c->out,
                       .next_id = &c->next_id,
                       .recv_ns = c->batch_ns,
                       .inflight = c->inflight};
    size_t before = c->out.len;
    unsigned r;

    if (c->closing)
        return;
    r = px_dispatch(&x, text, len, too_long);
    /* Answers given on the spot are answers the client is owed too. */
    if (c->out.len > before &&
        px_ledger_queued(&c->ledger, c->out.data + before, c->out.len - before))
        r |= PX_DISPATCH_CLOSE;
    if (r & PX_DISPATCH_ACCEPTED) {
        c->refs++;
        c->inflight++;
    }
    if (r & PX_DISPATCH_OUTPUT)
        mark_dirty(c);
    if (r & PX_DISPATCH_CLOSE)
        conn_close(c);
}

static void conn_on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    px_conn_t *c = h->data;

    *buf = uv_buf_init(c->net->readbuf, sizeof c->net->readbuf);
}

static void conn_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    px_conn_t *c = s->data;
    px_net_t *n = c->net;

    if (nread == 0)
        return;
    px_stats_begin(n->stats);
    c->batch_ns = px_now_ns();
    if (nread > 0) {
        if (px_framer_feed(&c->framer, buf->base, (size_t)nread, on_line, c)) {
            px_err("connection: out of memory buffering a partial line; closing the connection");
            conn_close(c);
        }
    } else if (nread == UV_EOF) {
        /* The client has sent everything; answer it all, then close. */
        uv_read_stop(s);
        c->eof = 1;
        px_framer_finish(&c->framer, on_line, c);
    } else {
        px_debug("connection: read failed: %s", uv_strerror((int)nread));
        conn_close(c);
    }
    if (!c->closing)
        account_partial(c, c->batch_ns);
    px_stats_end(n->stats);
    /* Workers are woken and answers written in the server's check callback, once per poll. */
    if (!c->closing)
        conn_maybe_close(c);
}

void px_conn_deliver(void *origin, const char *line, size_t len)
{
    px_conn_t *c = origin;

    c->inflight--;
    if (c->closing) {
        px_stats_add(&c->net->stats->c.dropped, 1);
    } else if (px_buf_append(&c->out, line, len) || px_ledger_queued(&c->ledger, line, len)) {
        px_err("connection: out of memory queueing a response; closing the connection");
        conn_close(c);
    } else {
        mark_dirty(c);
    }
    conn_unref(c);
}

void px_conn_accept(px_net_t *n, uv_stream_t *listener)
{
    static const char full[] =
        "{\"id\":null,\"status\":\"rejected\",\"error\":{\"code\":\"too_many_connections\","
        "\"message\":\"parexd is at max_connections; close idle connections or raise "
        "max_connections\"}}\n";
    px_conn_t *c = calloc(1, sizeof *c);
    int rc;

    if (!c) {
        px_err("listener: out of memory accepting a connection");
        return;
    }
    c->net = n;
    c->refs = 1;
    px_ledger_init(&c->ledger, -1);
    px_framer_init(&c->framer, (size_t)n->cfg->max_line_bytes);
    if (listener->type == UV_NAMED_PIPE)
        uv_pipe_init(n->loop, &c->h.pipe, 0);
    else
        uv_tcp_init(n->loop, &c->h.tcp);
    c->h.tcp.data = c; /* the handle's data field sits at the same place in both */
    c->prev = NULL;
    c->next = n->conns;
    if (n->conns)
        n->conns->prev = c;
    n->conns = c;
    n->nconns++;
    px_stats_begin(n->stats);
    px_stats_add(&n->stats->c.connections, 1);
    px_stats_end(n->stats);

    if ((rc = uv_accept(listener, (uv_stream_t *)&c->h))) {
        px_warn("listener: accept failed: %s", uv_strerror(rc));
        conn_close(c);
        return;
    }
    if (n->nconns > (uint64_t)n->cfg->max_connections) {
        uv_buf_t b = uv_buf_init((char *)full, sizeof full - 1);
        uv_try_write((uv_stream_t *)&c->h, &b, 1);
        px_warn("listener: max_connections (%lld) reached; refused a connection",
                (long long)n->cfg->max_connections);
        conn_close(c);
        return;
    }
    if (listener->type == UV_TCP) {
        uv_os_fd_t fd;
        uv_tcp_nodelay(&c->h.tcp, 1);
        if (uv_fileno((uv_handle_t *)&c->h, &fd) == 0)
            px_ledger_init(&c->ledger, fd);
    }
    if ((rc = uv_read_start((uv_stream_t *)&c->h, conn_on_alloc, conn_on_read))) {
        conn_close(c);
        return;
    }
}

void px_conn_sweep_slow(px_net_t *n, uint64_t now)
{
    uint64_t limit = (uint64_t)n->cfg->partial_line_timeout_ms * 1000000ull;
    unsigned closed = 0;

    px_stats_begin(n->stats);
    for (px_conn_t *c = n->conns; c; c = c->next)
        if (!c->closing && c->partial_since_ns && now - c->partial_since_ns > limit) {
            px_stats_add(&n->stats->c.closed[PX_CLOSE_SLOW_LINE], 1);
            conn_close(c);
            closed++;
        }
    px_stats_end(n->stats);
    if (closed)
        px_notice("connection: closed %u connection(s) whose partial line was older than "
                  "partial_line_timeout_ms (%lld)",
                  closed, (long long)n->cfg->partial_line_timeout_ms);
}

void px_conn_close_all(px_net_t *n, int now)
{
    for (px_conn_t *c = n->conns; c; c = c->next) {
        if (now) {
            conn_close(c);
            continue;
        }
        c->close_when_flushed = 1;
        uv_read_stop((uv_stream_t *)&c->h);
        conn_maybe_close(c);
    }
}

void px_net_init(px_net_t *n, uv_loop_t *loop, const px_config_t *cfg, px_stats_t *stats,
                 px_engine_t *eng, const px_net_events_t *ev)
{
    memset(n, 0, sizeof *n);
    n->loop = loop;
    n->cfg = cfg;
    n->stats = stats;
    n->eng = eng;
    n->ev = *ev;
}

void px_net_free(px_net_t *n)
{
    px_buf_free(&n->scratch);
    px_buf_free(&n->idtext);
}
