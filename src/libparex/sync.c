/* The blocking context: one non-blocking socket waited on with poll, so timeouts are exact
 * and a long pipelined write never deadlocks against answers parexd is waiting to send (while
 * writing, whatever arrives is read into the reader). A transport error is sticky: the context
 * can then only be freed. */
#include "libparex/internal.h"

#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct parex_ctx {
    int fd;
    int err;
    int dead; /* a transport error happened: only parex_free is left */
    char errstr[PXL_ERRLEN];
    char *addr, *token;
    int connect_timeout_ms, timeout_ms;
    size_t max_line;
    long long next_id;
    px_buf_t out; /* queued lines; out_sent of them written */
    size_t out_sent;
    parex_reader_t rd;
    parex_reply_t **held; /* answers parex_call read past, for parex_get_reply, FIFO */
    size_t held_start, held_len, held_cap;
};

static int fail(parex_ctx_t *c, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(parex_ctx_t *c, int code, const char *fmt, ...)
{
    va_list ap;

    c->err = code;
    c->dead |= code != PAREX_ERR_ARG;
    va_start(ap, fmt);
    vsnprintf(c->errstr, sizeof c->errstr, fmt, ap);
    va_end(ap);
    return -1;
}

static long long now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Waits for events on the socket until deadline_ms (-1: none). Returns revents, 0 on timeout,
 * -1 on a poll error. */
static int wait_fd(parex_ctx_t *c, short events, long long deadline_ms)
{
    for (;;) {
        struct pollfd p = {.fd = c->fd, .events = events};
        int left = deadline_ms < 0 ? -1 : (int)(deadline_ms - now_ms());
        int n;

        if (deadline_ms >= 0 && left < 0)
            left = 0;
        n = poll(&p, 1, left);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return fail(c, PAREX_ERR_IO, "poll: %s", strerror(errno));
        return n ? p.revents : 0;
    }
}

parex_ctx_t *parex_connect(const char *addr, const parex_options_t *opts)
{
    parex_options_t o = opts ? *opts : (parex_options_t){0};
    parex_ctx_t *c = calloc(1, sizeof *c);
    int in_progress = 0, code = 0, ev;

    if (!c)
        return NULL;
    c->fd = -1;
    c->next_id = 1;
    c->connect_timeout_ms = o.connect_timeout_ms > 0 ? o.connect_timeout_ms : 5000;
    c->timeout_ms = o.timeout_ms > 0 ? o.timeout_ms : 0;
    c->max_line = o.max_line_bytes ? o.max_line_bytes : PXL_REQUEST_MAX_LINE;
    pxl_reader_init(&c->rd, c->max_line > PXL_DEFAULT_MAX_LINE ? c->max_line : 0);
    if (!(c->addr = strdup(addr ? addr : "")) || (o.token && !(c->token = strdup(o.token)))) {
        fail(c, PAREX_ERR_OOM, "out of memory");
        return c;
    }
    if ((c->fd = pxl_dial(addr, &in_progress, &code, c->errstr, sizeof c->errstr)) < 0) {
        c->err = code;
        c->dead = 1;
        return c;
    }
    if (in_progress) {
        ev = wait_fd(c, POLLOUT, now_ms() + c->connect_timeout_ms);
        if (ev < 0)
            return c;
        if (ev == 0) {
            fail(c, PAREX_ERR_TIMEOUT, "cannot connect to %.100s: no answer within %d ms", addr,
                 c->connect_timeout_ms);
            return c;
        }
        if (pxl_connect_result(c->fd, addr, c->errstr, sizeof c->errstr))
            c->err = PAREX_ERR_IO, c->dead = 1;
    }
    return c;
}

void parex_free(parex_ctx_t *c)
{
    if (!c)
        return;
    if (c->fd >= 0)
        close(c->fd);
    for (size_t i = c->held_start; i < c->held_len; i++)
        parex_reply_free(c->held[i]);
    free(c->held);
    pxl_reader_clear(&c->rd);
    px_buf_free(&c->out);
    free(c->addr);
    free(c->token);
    free(c);
}

int parex_err(const parex_ctx_t *c)
{
    return c->err;
}

const char *parex_errstr(const parex_ctx_t *c)
{
    return c->err ? c->errstr : "";
}

int parex_fd(const parex_ctx_t *c)
{
    return c->fd;
}

/* A transport error stays; an argument error is forgotten by the next call. */
static int usable(parex_ctx_t *c)
{
    if (c->dead)
        return 0;
    c->err = PAREX_ERR_NONE;
    return 1;
}

/* After a line builder failed: its message is already in errstr. */
static long long refused(parex_ctx_t *c)
{
    c->err = PAREX_ERR_ARG;
    return -1;
}

long long parex_append(parex_ctx_t *c, const parex_request_t *req)
{
    long long id = c->next_id;

    if (!usable(c))
        return -1;
    if (pxl_line_request(&c->out, id, req, c->token, c->max_line, c->errstr, sizeof c->errstr))
        return refused(c);
    c->next_id++;
    return id;
}

long long parex_append_cancel(parex_ctx_t *c, long long id)
{
    long long cid = c->next_id;

    if (!usable(c))
        return -1;
    if (id <= 0)
        return fail(c, PAREX_ERR_ARG, "cancel: id %lld is not one this context assigned", id);
    if (pxl_line_cancel(&c->out, cid, id, c->token))
        return fail(c, PAREX_ERR_OOM, "out of memory");
    c->next_id++;
    return cid;
}

long long parex_append_control(parex_ctx_t *c, const char *name, const char *fields_json)
{
    long long id = c->next_id;

    if (!usable(c))
        return -1;
    if (pxl_line_control(&c->out, id, name, fields_json, c->token, c->max_line, c->errstr,
                         sizeof c->errstr))
        return refused(c);
    c->next_id++;
    return id;
}

long long parex_append_json(parex_ctx_t *c, const char *object_json)
{
    long long id = c->next_id;

    if (!usable(c))
        return -1;
    if (pxl_line_object(&c->out, &id, object_json, c->token, c->max_line, c->errstr,
                        sizeof c->errstr))
        return refused(c);
    if (id)
        c->next_id++;
    return id;
}

int parex_append_raw(parex_ctx_t *c, const char *line, size_t len)
{
    if (!usable(c))
        return -1;
    if ((len > 0 && px_buf_append(&c->out, line, len)) ||
        ((len == 0 || line[len - 1] != '\n') && px_buf_append(&c->out, "\n", 1)))
        return fail(c, PAREX_ERR_OOM, "out of memory");
    return 0;
}

/* Reads what the socket has into the reader. 1 read something, 0 nothing yet, -1 error/EOF. */
static int read_some(parex_ctx_t *c)
{
    char chunk[65536];

    for (;;) {
        ssize_t n = read(c->fd, chunk, sizeof chunk);
        if (n > 0) {
            if (parex_reader_feed(&c->rd, chunk, (size_t)n))
                return fail(c, PAREX_ERR_OOM, "out of memory");
            return 1;
        }
        if (n == 0)
            return fail(c, PAREX_ERR_EOF, "parexd at %.100s closed the connection", c->addr);
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN)
            return 0;
        return fail(c, PAREX_ERR_IO, "read from %.100s: %s", c->addr, strerror(errno));
    }
}

static long long deadline(parex_ctx_t *c)
{
    return c->timeout_ms ? now_ms() + c->timeout_ms : -1;
}

/* Writes what the socket takes: 1 all written, 0 it would block, -1 error. */
static int write_some(parex_ctx_t *c)
{
    while (c->out_sent < c->out.len) {
        ssize_t n = send(c->fd, c->out.data + c->out_sent, c->out.len - c->out_sent, MSG_NOSIGNAL);
        if (n > 0)
            c->out_sent += (size_t)n;
        else if (n < 0 && errno == EINTR)
            continue;
        else if (n < 0 && errno == EAGAIN)
            return 0;
        else
            return fail(c, PAREX_ERR_IO, "write to %.100s: %s", c->addr, strerror(errno));
    }
    c->out.len = c->out_sent = 0;
    return 1;
}

int parex_flush(parex_ctx_t *c)
{
    long long end = deadline(c);
    int rc, ev;

    if (!usable(c))
        return -1;
    while ((rc = write_some(c)) == 0) {
        /* Full: take in answers meanwhile, or parexd may stop reading us. */
        if ((ev = wait_fd(c, POLLOUT | POLLIN, end)) < 0)
            return -1;
        if (ev == 0)
            return fail(c, PAREX_ERR_TIMEOUT, "write to %.100s: timed out after %d ms", c->addr,
                        c->timeout_ms);
        if ((ev & (POLLIN | POLLHUP | POLLERR)) && read_some(c) < 0)
            return -1;
    }
    return rc < 0 ? -1 : 0;
}

int parex_send_eof(parex_ctx_t *c)
{
    if (parex_flush(c))
        return -1;
    if (shutdown(c->fd, SHUT_WR) < 0)
        return fail(c, PAREX_ERR_IO, "shutdown: %s", strerror(errno));
    return 0;
}

/* The next answer from the socket (never from held). */
static int next_reply(parex_ctx_t *c, parex_reply_t **out)
{
    long long end;
    int rc, ev;

    if (parex_flush(c))
        return -1;
    end = deadline(c);
    for (;;) {
        if ((rc = parex_reader_get_reply(&c->rd, out)) > 0)
            return 0;
        if (rc < 0)
            return fail(c, PAREX_ERR_PROTOCOL, "%s", parex_reader_errstr(&c->rd));
        if ((rc = read_some(c)) < 0)
            return -1;
        if (rc > 0)
            continue;
        if ((ev = wait_fd(c, POLLIN, end)) < 0)
            return -1;
        if (ev == 0)
            return fail(c, PAREX_ERR_TIMEOUT, "no answer from %.100s within %d ms", c->addr,
                        c->timeout_ms);
    }
}

int parex_poll_reply(parex_ctx_t *c, parex_reply_t **out)
{
    int rc;

    *out = NULL;
    if (!usable(c))
        return -1;
    if (write_some(c) < 0)
        return -1;
    for (;;) {
        if ((rc = parex_reader_get_reply(&c->rd, out)) > 0)
            return 1;
        if (rc < 0)
            return fail(c, PAREX_ERR_PROTOCOL, "%s", parex_reader_errstr(&c->rd));
        if ((rc = read_some(c)) <= 0)
            return rc;
    }
}

int parex_get_reply(parex_ctx_t *c, parex_reply_t **out)
{
    *out = NULL;
    if (!usable(c))
        return -1;
    if (c->held_start < c->held_len) {
        *out = c->held[c->held_start++];
        if (c->held_start == c->held_len)
            c->held_start = c->held_len = 0;
        return 0;
    }
    return next_reply(c, out);
}

static int hold(parex_ctx_t *c, parex_reply_t *r)
{
    if (c->held_len == c->held_cap) {
        size_t ncap = c->held_cap ? c->held_cap * 2 : 16;
        parex_reply_t **n = realloc(c->held, ncap * sizeof *n);
        if (!n)
            return fail(c, PAREX_ERR_OOM, "out of memory");
        c->held = n;
        c->held_cap = ncap;
    }
    c->held[c->held_len++] = r;
    return 0;
}

parex_reply_t *parex_call(parex_ctx_t *c, const parex_request_t *req)
{
    long long id = parex_append(c, req);
    parex_reply_t *r;

    if (id < 0)
        return NULL;
    for (;;) {
        if (next_reply(c, &r))
            return NULL;
        if (r->id == id)
            return r;
        if (hold(c, r)) {
            parex_reply_free(r);
            return NULL;
        }
    }
}
