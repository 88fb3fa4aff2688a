/* The request listeners: sockets inherited from systemd (socket activation) when there are
 * any, otherwise the TCP address in `listen`, plus `listen_unix`. Each waiting connection is
 * handed to the accept callback the layer above sets. Loop thread. */
#ifndef PX_LISTENER_H
#define PX_LISTENER_H

#include "daemon/core/config.h"

#include <uv.h>

#define PX_MAX_LISTENERS 8

typedef void (*px_accept_cb)(void *arg, uv_stream_t *listener);

typedef struct px_listeners {
    union {
        uv_tcp_t tcp;
        uv_pipe_t pipe; /* listen_unix */
    } l[PX_MAX_LISTENERS];
    int n;
    int unix_bound; /* listen_unix was bound by us: unlink it when closing */
    char unix_path[108];
    char addr[512]; /* the addresses actually bound, ports resolved */
    px_accept_cb accept;
    void *arg;
} px_listeners_t;

/* Opens every listener; returns 0 or -1 with err set. Describes them in ls->addr. */
int px_listener_open(px_listeners_t *ls, uv_loop_t *loop, const px_config_t *cfg, px_accept_cb cb,
                     void *arg, char *err, size_t errlen);
/* Stops accepting (drain). Idempotent. */
void px_listener_close(px_listeners_t *ls);

#endif
