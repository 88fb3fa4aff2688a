/* Client connections: reading bytes, framing lines, parsing each, and writing answers in the
 * order they become ready. What a line asks for is decided below (exec/engine) or above (control
 * lines, through an event the server sets); this layer only speaks the line protocol.
 * Loop thread only. */
#ifndef PX_CONN_H
#define PX_CONN_H

#include "common/buf.h"
#include "common/protocol.h"
#include "daemon/core/config.h"
#include "daemon/core/stats.h"
#include "daemon/exec/engine.h"

#include <jansson.h>
#include <uv.h>

typedef struct px_conn px_conn_t;

/* What connections tell the layer above. */
typedef struct px_net_events {
    /* A connection closed (a drain may be complete now). */
    void (*closed)(void *arg);
    /* A control line: its result, or NULL with msg (answered invalid/bad_field). */
    json_t *(*control)(void *arg, const px_line_t *line, char *msg, size_t msglen);
    /* Optional (cluster mode): takes a valid request instead of the local engine. Returns like
     * px_engine_submit: 0 when the request now holds its origin until an answer is delivered
     * for it, 1 refused (v says why), -ENOMEM. */
    int (*submit)(void *arg, const px_submit_t *s, const px_line_t *line, px_verdict_t *v);
    /* Optional (cluster mode): {"control":"result"} for a checked idem, answered later with the
     * answer id (JSON text). Returns like submit: 0 when it now holds origin until an answer is
     * delivered for it, 1 refused (v says why), -ENOMEM. NULL: answered invalid. */
    int (*lookup)(void *arg, const char *idem, const char *id, size_t id_len, void *origin,
                  px_verdict_t *v);
    void *arg;
} px_net_events_t;

typedef struct px_net {
    uv_loop_t *loop;
    const px_config_t *cfg; /* the server's, updated in place on reload */
    px_stats_t *stats;
    px_engine_t *eng;
    px_net_events_t ev;
    px_conn_t *conns; /* every open connection, doubly linked */
    px_conn_t *dirty; /* connections with output to flush, singly linked */
    uint32_t nconns;
    uint64_t partial_bytes; /* buffers of partial lines, all connections (max_partial_bytes) */
    char readbuf[65536];    /* shared by every connection: lines are consumed within the read */
    px_buf_t scratch;       /* reused while building each request (its payload) */
    px_buf_t idtext;        /* reused for each line's id as JSON text */
} px_net_t;

void px_net_init(px_net_t *n, uv_loop_t *loop, const px_config_t *cfg, px_stats_t *stats,
                 px_engine_t *eng, const px_net_events_t *ev);
void px_net_free(px_net_t *n);

/* A listener has a connection waiting (the listener's accept callback). */
void px_conn_accept(px_net_t *n, uv_stream_t *listener);
/* A request of this connection (origin) finished: queue its answer line (or count it dropped
 * if the client is gone). Releases the request's hold on the connection. */
void px_conn_deliver(void *origin, const char *line, size_t len);
/* Writes out everything queued. Called once per loop iteration, and after answers given
 * outside a read. */
void px_conn_flush_all(px_net_t *n);
/* Closes connections whose partial line is older than partial_line_timeout_ms (slowloris).
 * Called by a timer of the server, about once a second. */
void px_conn_sweep_slow(px_net_t *n, uint64_t now_ns);
/* Drain has finished: close each connection once its output is written (now: at once). */
void px_conn_close_all(px_net_t *n, int now);

#endif
