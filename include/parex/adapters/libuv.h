/* libparex on a libuv loop: one uv_poll_t watches the async context's socket.
 *
 *     parex_async_t *ac = parex_async_connect("127.0.0.1:7400", NULL);
 *     if (parex_async_err(ac) || parex_libuv_attach(loop, ac)) ...
 *     parex_async_submit(ac, &req, on_answer, ctx);
 *     uv_run(loop, UV_RUN_DEFAULT);
 *
 * The poll handle is closed (and its memory freed in its close callback) when the connection
 * ends or the context is freed, so the loop has nothing left of it afterwards. Header-only, so
 * libparex itself does not link libuv. */
#ifndef PAREX_ADAPTERS_LIBUV_H
#define PAREX_ADAPTERS_LIBUV_H

#include <parex/client.h>
#include <stdlib.h>
#include <uv.h>

typedef struct parex_libuv {
    uv_poll_t poll;
    parex_async_t *ac; /* NULL once the context let go */
    int events;
} parex_libuv_t;

static void parex_libuv__poll_cb(uv_poll_t *handle, int status, int events)
{
    parex_libuv_t *p = (parex_libuv_t *)handle->data;

    if (status < 0) /* let the context find the error on its socket */
        events = p->events;
    if (p->ac && (events & UV_READABLE))
        parex_async_handle_read(p->ac);
    if (p->ac && (events & UV_WRITABLE))
        parex_async_handle_write(p->ac);
}

static void parex_libuv__update(parex_libuv_t *p, int add, int del)
{
    int ev = (p->events | add) & ~del;

    if (ev == p->events)
        return;
    p->events = ev;
    if (ev)
        uv_poll_start(&p->poll, ev, parex_libuv__poll_cb);
    else
        uv_poll_stop(&p->poll);
}

static void parex_libuv__add_read(void *d)
{
    parex_libuv__update((parex_libuv_t *)d, UV_READABLE, 0);
}

static void parex_libuv__del_read(void *d)
{
    parex_libuv__update((parex_libuv_t *)d, 0, UV_READABLE);
}

static void parex_libuv__add_write(void *d)
{
    parex_libuv__update((parex_libuv_t *)d, UV_WRITABLE, 0);
}

static void parex_libuv__del_write(void *d)
{
    parex_libuv__update((parex_libuv_t *)d, 0, UV_WRITABLE);
}

static void parex_libuv__on_close(uv_handle_t *handle)
{
    free(handle->data);
}

static void parex_libuv__cleanup(void *d)
{
    parex_libuv_t *p = (parex_libuv_t *)d;

    p->ac = NULL;
    uv_close((uv_handle_t *)&p->poll, parex_libuv__on_close);
}

/* Attaches ac to loop. 0, or a negative libuv error (ac is then not attached). */
static inline int parex_libuv_attach(uv_loop_t *loop, parex_async_t *ac)
{
    parex_events_t ev;
    parex_libuv_t *p;
    int rc;

    if (parex_async_fd(ac) < 0)
        return UV_EBADF;
    if (!(p = (parex_libuv_t *)calloc(1, sizeof *p)))
        return UV_ENOMEM;
    if ((rc = uv_poll_init(loop, &p->poll, parex_async_fd(ac)))) {
        free(p);
        return rc;
    }
    p->poll.data = p;
    p->ac = ac;
    ev.data = p;
    ev.add_read = parex_libuv__add_read;
    ev.del_read = parex_libuv__del_read;
    ev.add_write = parex_libuv__add_write;
    ev.del_write = parex_libuv__del_write;
    ev.cleanup = parex_libuv__cleanup;
    parex_async_set_events(ac, &ev);
    return 0;
}

#endif
