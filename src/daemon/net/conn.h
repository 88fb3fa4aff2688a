/* One client connection: reads bytes, frames lines, dispatches requests, and writes responses
 * in the order they become ready. Loop thread only. */
#ifndef PX_CONN_H
#define PX_CONN_H

#include "daemon/core/request.h"
#include "daemon/server.h"

typedef struct px_conn px_conn_t;

/* The listener has a connection waiting. */
void px_conn_accept(px_server_t *srv, uv_stream_t *listener);
/* A request of this connection finished: queue its response line (or drop it if the client is
 * gone). Releases the request's hold on the connection. */
void px_conn_deliver(px_conn_t *c, const char *line, size_t len);
/* Writes out everything queued by this callback. Call at the end of every loop callback that
 * queued output. */
void px_conn_flush_all(px_server_t *srv);
/* Drain has finished: close each connection once its output is written. */
void px_conn_close_all(px_server_t *srv, int now);

#endif
