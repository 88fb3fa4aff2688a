/* Cluster mode's wiring between the cluster layer and the rest of the daemon: the ingress (a
 * client's request is published instead of queued locally; its answer, or the reason it was
 * refused, goes back to the client's connection) and the executor (a batch a partition thread
 * fetched runs through the local engine, and each answer goes back to the partition thread).
 * Loop thread unless a comment says otherwise. */
#ifndef PX_CLUSTERED_H
#define PX_CLUSTERED_H

#include "daemon/cluster/cluster.h"
#include "daemon/exec/engine.h"

#include <jansson.h>
#include <stdint.h>
#include <uv.h>

typedef struct px_clustered px_clustered_t;

/* deliver: where ingress answers go (the connection layer's px_conn_deliver); changed: called
 * after answers were delivered or the hand-over finished (the server checks its drain). */
int px_clustered_start(px_clustered_t **out, uv_loop_t *loop, const px_config_t *cfg,
                       px_engine_t *eng, void (*deliver)(void *origin, const char *l, size_t n),
                       void (*changed)(void *arg), void *arg, char *err, size_t errlen);
/* The net layer's submit event. */
int px_clustered_submit(px_clustered_t *cx, const px_submit_t *s, const px_line_t *line,
                        px_verdict_t *v);
/* The net layer's lookup event: {"control":"result"} for a checked idem; 0 when it holds
 * origin until its answer is delivered, 1 refused (v), -ENOMEM. */
int px_clustered_lookup(px_clustered_t *cx, const char *idem, const char *id, size_t id_len,
                        void *origin, px_verdict_t *v);
/* The engine's sink, for origins that are executor jobs: 1 when it took the answer, 0 when the
 * origin is a connection. */
int px_clustered_deliver(void *origin, const char *line, size_t len);
/* Drain: refuse new requests, hand every partition over. */
void px_clustered_drain(px_clustered_t *cx);
/* Drain progress: every partition handed over and every accepted request answered. */
int px_clustered_idle(px_clustered_t *cx);
/* Forced stop: answers the requests still waiting for the cluster failed/cancelled. */
void px_clustered_cancel(px_clustered_t *cx);
/* Stops the cluster's threads and frees (the loop must run once more). */
void px_clustered_stop(px_clustered_t *cx);
/* Any thread: the cluster section of /stats. */
json_t *px_clustered_report(px_clustered_t *cx);
int px_clustered_connected(px_clustered_t *cx);

#endif
