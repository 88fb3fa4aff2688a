/* The async context: non-blocking I/O driven by the caller's event loop through parex_events_t.
 * Lines are queued in one buffer and written when the loop says the socket is writable, so a
 * burst of submits goes out in few writes. Every callback runs exactly once: with its answer,
 * or with a PAREX_DISCONNECTED answer made here when the connection ends first. The context is
 * never freed behind the caller's back; a free asked for inside a callback waits until the
 * callbacks in progress have returned. */
#include "libparex/internal.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

enum state { OPEN, DRAINING, CLOSED };

struct parex_async {
    int fd;
    enum state state;
    int connected; /* the connect is confirmed (first writable event) */
    int err;
    char errstr[PXL_ERRLEN];
    char *addr, *token;
    size_t max_line;
    long long next_id;
    px_buf_t out;
    size_t out_sent;
    parex_reader_t rd;
    pxl_idmap_t pending;
    parex_events_t ev;
    int reading, writing; /* what the loop is asked to watch */
    parex_connect_fn *on_connect;
    parex_disconnect_fn *on_disconnect;
    void *data;
    int depth;       /* callbacks in progress */
    int reading_now; /* inside handle_read: it flushes the lines its callbacks queue */
    int free_asked;  /* parex_async_free inside a callback: done when depth drops to 0 */
};

static void set_err(parex_async_t *ac, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(parex_async_t *ac, int code, const char *fmt, ...)
{
    va_list ap;

    ac->err = code;
    va_start(ap, fmt);
    vsnprintf(ac->errstr, sizeof ac->errstr, fmt, ap);
    va_end(ap);
}

static void watch_write(parex_async_t *ac, int on)
{
    if (on == ac->writing)
        return;
    ac->writing = on;
    if (on && ac->ev.add_write)
        ac->ev.add_write(ac->ev.data);
    else if (!on && ac->ev.del_write)
        ac->ev.del_write(ac->ev.data);
}

static void watch_read(parex_async_t *ac, int on)
{
    if (on == ac->reading)
        return;
    ac->reading = on;
    if (on && ac->ev.add_read)
        ac->ev.add_read(ac->ev.data);
    else if (!on && ac->ev.del_read)
        ac->ev.del_read(ac->ev.data);
}

parex_async_t *parex_async_connect(const char *addr, const parex_options_t *opts)
{
    parex_options_t o = opts ? *opts : (parex_options_t){0};
    parex_async_t *ac = calloc(1, sizeof *ac);
    int in_progress = 0, code = 0;

    if (!ac)
        return NULL;
    ac->fd = -1;
    ac->state = CLOSED;
    ac->next_id = 1;
    ac->max_line = o.max_line_bytes ? o.max_line_bytes : PXL_REQUEST_MAX_LINE;
    pxl_reader_init(&ac->rd, ac->max_line > PXL_DEFAULT_MAX_LINE ? ac->max_line : 0);
    if (!(ac->addr = strdup(addr ? addr : "")) || (o.token && !(ac->token = strdup(o.token)))) {
        set_err(ac, PAREX_ERR_OOM, "out of memory");
        return ac;
    }
    if ((ac->fd = pxl_dial(addr, &in_progress, &code, ac->errstr, sizeof ac->errstr)) < 0) {
        ac->err = code;
        return ac;
    }
    /* Even a connect that completed at once is confirmed by the first writable event, so the
     * connect callback always runs from the loop. */
    (void)in_progress;
    ac->state = OPEN;
    return ac;
}

int parex_async_err(const parex_async_t *ac)
{
    return ac->err;
}

const char *parex_async_errstr(const parex_async_t *ac)
{
    return ac->err ? ac->errstr : "";
}

int parex_async_fd(const parex_async_t *ac)
{
    return ac->fd;
}

void parex_async_set_connect_cb(parex_async_t *ac, parex_connect_fn *fn)
{
    ac->on_connect = fn;
}

void parex_async_set_disconnect_cb(parex_async_t *ac, parex_disconnect_fn *fn)
{
    ac->on_disconnect = fn;
}

void parex_async_set_data(parex_async_t *ac, void *data)
{
    ac->data = data;
}

void *parex_async_get_data(const parex_async_t *ac)
{
    return ac->data;
}

size_t parex_async_pending(const parex_async_t *ac)
{
    return ac->pending.len;
}

void parex_async_set_events(parex_async_t *ac, const parex_events_t *ev)
{
    ac->ev = *ev;
    ac->reading = ac->writing = 0;
    if (ac->state == CLOSED)
        return;
    watch_read(ac, 1);
    /* A connect in progress completes as writability; queued lines need it too. */
    if (!ac->connected || ac->out_sent < ac->out.len)
        watch_write(ac, 1);
}

static void deliver(parex_async_t *ac, const pxl_slot_t *s, parex_reply_t *r)
{
    if (!s->fn) {
        parex_reply_free(r);
        return;
    }
    ac->depth++;
    s->fn(ac, r, s->priv);
    ac->depth--;
}

/* Ends the connection: the loop lets go, pending callbacks get disconnect answers, then the
 * disconnect callback. status 0 for a graceful end, -1 for an error (in errstr). */
static void teardown(parex_async_t *ac, int status)
{
    int was_up = ac->state != CLOSED;
    pxl_slot_t s;

    if (!was_up)
        return;
    ac->state = CLOSED;
    watch_read(ac, 0);
    watch_write(ac, 0);
    if (ac->ev.cleanup)
        ac->ev.cleanup(ac->ev.data);
    ac->ev = (parex_events_t){0};
    if (ac->fd >= 0)
        close(ac->fd);
    ac->fd = -1;
    /* Take one at a time: a callback may submit (refused now) or look at the count. */
    while (ac->pending.len) {
        for (size_t i = 0; i < ac->pending.cap; i++) {
            if (!ac->pending.slots[i].id)
                continue;
            pxl_idmap_take(&ac->pending, ac->pending.slots[i].id, &s);
            parex_reply_t *r = pxl_reply_disconnected(
                s.id, status ? ac->errstr : "the connection was closed before parexd answered");
            if (r)
                deliver(ac, &s, r);
            break;
        }
    }
    if (ac->on_disconnect) {
        ac->depth++;
        ac->on_disconnect(ac, status);
        ac->depth--;
    }
}

static void really_free(parex_async_t *ac)
{
    pxl_idmap_free(&ac->pending);
    pxl_reader_clear(&ac->rd);
    px_buf_free(&ac->out);
    free(ac->addr);
    free(ac->token);
    free(ac);
}

void parex_async_free(parex_async_t *ac)
{
    if (!ac)
        return;
    if (ac->depth > 0) {
        ac->free_asked = 1;
        return;
    }
    ac->depth++; /* a free asked for by a disconnect callback below must not recurse */
    teardown(ac, 0);
    ac->depth--;
    if (ac->ev.cleanup) /* attached to a loop but never connected */
        ac->ev.cleanup(ac->ev.data);
    really_free(ac);
}

/* After callbacks ran: 1 when the caller freed the context meanwhile (nothing may touch it). */
static int freed_meanwhile(parex_async_t *ac)
{
    if (ac->depth == 0 && ac->free_asked) {
        ac->free_asked = 0;
        parex_async_free(ac);
        return 1;
    }
    return 0;
}

void parex_async_disconnect(parex_async_t *ac)
{
    if (ac->state == CLOSED)
        return;
    ac->state = DRAINING;
    if (ac->pending.len == 0 && ac->out_sent == ac->out.len)
        teardown(ac, 0);
    freed_meanwhile(ac);
}

static long long queue_line(parex_async_t *ac, long long id, int rc, parex_callback_fn *fn,
                            void *priv)
{
    if (rc) {
        ac->err = PAREX_ERR_ARG;
        return -1;
    }
    if (pxl_idmap_put(&ac->pending, id, fn, priv)) {
        set_err(ac, PAREX_ERR_OOM, "out of memory");
        return -1;
    }
    ac->next_id++;
    if (!ac->reading_now) /* handle_read writes what its callbacks queued when it is done */
        watch_write(ac, 1);
    return id;
}

static int accepting(parex_async_t *ac)
{
    if (ac->state == OPEN)
        return 1;
    set_err(ac, PAREX_ERR_ARG, "the context is %s: no more requests",
            ac->state == DRAINING ? "disconnecting" : "closed");
    return 0;
}

long long parex_async_submit(parex_async_t *ac, const parex_request_t *req, parex_callback_fn *fn,
                             void *privdata)
{
    long long id = ac->next_id;

    if (!accepting(ac))
        return -1;
    return queue_line(
        ac, id,
        pxl_line_request(&ac->out, id, req, ac->token, ac->max_line, ac->errstr, sizeof ac->errstr),
        fn, privdata);
}

long long parex_async_cancel(parex_async_t *ac, long long id, parex_callback_fn *fn, void *privdata)
{
    long long cid = ac->next_id;

    if (!accepting(ac))
        return -1;
    if (id <= 0) {
        set_err(ac, PAREX_ERR_ARG, "cancel: id %lld is not one this context assigned", id);
        return -1;
    }
    if (pxl_line_cancel(&ac->out, cid, id, ac->token)) {
        set_err(ac, PAREX_ERR_OOM, "out of memory");
        return -1;
    }
    return queue_line(ac, cid, 0, fn, privdata);
}

long long parex_async_control(parex_async_t *ac, const char *name, const char *fields_json,
                              parex_callback_fn *fn, void *privdata)
{
    long long id = ac->next_id;

    if (!accepting(ac))
        return -1;
    return queue_line(ac, id,
                      pxl_line_control(&ac->out, id, name, fields_json, ac->token, ac->max_line,
                                       ac->errstr, sizeof ac->errstr),
                      fn, privdata);
}

/* Writes what the socket takes; watches for writability only while something is left. 0, or
 * -1 when the connection failed (torn down). */
static int flush(parex_async_t *ac)
{
    while (ac->out_sent < ac->out.len) {
        ssize_t n =
            send(ac->fd, ac->out.data + ac->out_sent, ac->out.len - ac->out_sent, MSG_NOSIGNAL);
        if (n > 0) {
            ac->out_sent += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN) {
            watch_write(ac, 1);
            return 0;
        }
        set_err(ac, PAREX_ERR_IO, "write to %.100s: %s", ac->addr, strerror(errno));
        teardown(ac, -1);
        return -1;
    }
    ac->out.len = ac->out_sent = 0;
    watch_write(ac, 0);
    return 0;
}

void parex_async_handle_write(parex_async_t *ac)
{
    if (ac->state == CLOSED)
        return;
    if (!ac->connected) {
        if (pxl_connect_result(ac->fd, ac->addr, ac->errstr, sizeof ac->errstr)) {
            ac->err = PAREX_ERR_IO;
            if (ac->on_connect) {
                ac->depth++;
                ac->on_connect(ac, -1);
                ac->depth--;
            }
            teardown(ac, -1);
            freed_meanwhile(ac);
            return;
        }
        ac->connected = 1;
        if (ac->on_connect) {
            ac->depth++;
            ac->on_connect(ac, 0);
            ac->depth--;
            if (freed_meanwhile(ac) || ac->state == CLOSED)
                return;
        }
    }
    if (flush(ac) < 0)
        freed_meanwhile(ac);
}

/* Hands out every complete answer. 0, or -1 when the context was closed or freed meanwhile. */
static int dispatch(parex_async_t *ac)
{
    parex_reply_t *r;
    pxl_slot_t s;
    int rc;

    while ((rc = parex_reader_get_reply(&ac->rd, &r)) != 0) {
        if (rc < 0) {
            set_err(ac, PAREX_ERR_PROTOCOL, "%s", parex_reader_errstr(&ac->rd));
            teardown(ac, -1);
            return -1;
        }
        if (!pxl_idmap_take(&ac->pending, r->id, &s)) {
            /* id null: a line parexd answers before any request (too_many_connections). */
            if (r->status != PAREX_OK && r->message)
                set_err(ac, PAREX_ERR_EOF, "parexd: %s: %s", r->code ? r->code : "error",
                        r->message);
            parex_reply_free(r);
            continue;
        }
        deliver(ac, &s, r);
        if (ac->free_asked || ac->state == CLOSED)
            return -1;
    }
    if (ac->state == DRAINING && ac->pending.len == 0) {
        teardown(ac, 0);
        return -1;
    }
    return 0;
}

void parex_async_handle_read(parex_async_t *ac)
{
    char chunk[65536];

    if (ac->state == CLOSED)
        return;
    ac->reading_now = 1;
    for (int i = 0; i < 16; i++) { /* then back to the loop: others get their turn */
        ssize_t n = read(ac->fd, chunk, sizeof chunk);
        if (n > 0) {
            if (parex_reader_feed(&ac->rd, chunk, (size_t)n)) {
                set_err(ac, PAREX_ERR_OOM, "out of memory");
                teardown(ac, -1);
                break;
            }
            if (dispatch(ac) < 0)
                break;
            if ((size_t)n < sizeof chunk)
                break;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            break;
        if (n == 0 && !ac->err)
            set_err(ac, PAREX_ERR_EOF, "parexd at %.100s closed the connection", ac->addr);
        else if (n < 0)
            set_err(ac, PAREX_ERR_IO, "read from %.100s: %s", ac->addr, strerror(errno));
        teardown(ac, -1);
        break;
    }
    if (freed_meanwhile(ac))
        return;
    ac->reading_now = 0;
    /* What the callbacks queued goes out now, in one write, rather than after a round through
     * the loop for writability. */
    if (ac->state != CLOSED && ac->out_sent < ac->out.len) {
        if (!ac->connected)
            watch_write(ac, 1);
        else if (flush(ac) < 0)
            freed_meanwhile(ac);
    }
}
