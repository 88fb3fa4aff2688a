/* The executor as the layers above see it: admission (a verdict for each request), cancel and
 * drop, the supervisor's and the forced stop's hands on running work, and the one place where a
 * request ends — answered, counted, its key released, freed.
 *
 * Answers leave through a sink the server fills with the connection layer's functions, so
 * nothing here knows what a connection is: a request carries an opaque origin.
 *
 * Threads: everything here runs on the loop thread, except px_engine_registry (any thread). */
#ifndef PX_ENGINE_H
#define PX_ENGINE_H

#include "daemon/core/config.h"
#include "daemon/core/handler.h"
#include "daemon/core/hot.h"
#include "daemon/core/stats.h"
#include "daemon/exec/expiry.h"
#include "daemon/exec/keys.h"
#include "daemon/exec/pool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <uv.h>

typedef struct px_sink {
    /* Queues one answer line for origin and releases the request's hold on it (len 0: no line
     * could be built; only the hold is released). */
    void (*deliver)(void *origin, const char *line, size_t len);
    /* Writes out what deliver queued, for answers given outside a read or completion batch. */
    void (*flush)(void *arg);
    /* After each batch of completions (the server checks whether a drain is done). */
    void (*after)(void *arg);
    void *arg;
} px_sink_t;

typedef struct px_engine {
    uv_loop_t *loop;
    const px_config_t *cfg; /* the server's, updated in place on reload (loop thread) */
    px_stats_t *stats;      /* loop-written counters, owned by the server */
    px_pool_t *pool;
    uint64_t route_seed; /* 0, or PX_ROUTE_CLUSTER_SEED in cluster mode (route.h) */
    px_keys_t keys;
    px_hot_t *hot; /* arrivals by the loop, time by workers */
    px_sink_t sink;
    px_expiry_t expiry;   /* queued requests by deadline */
    _Atomic int draining; /* no new requests; read by the metrics thread */
    pthread_mutex_t reg_mu;
    px_registry_t *reg; /* written by the loop under reg_mu; the loop reads it without */
} px_engine_t;

/* One request as the connection layer read it. */
typedef struct px_submit {
    const char *key, *id, *payload; /* id and payload as JSON text */
    size_t key_len, id_len, payload_len;
    const px_handler_t *handler; /* from px_engine_find */
    uint64_t recv_ns;
    int64_t deadline_ms; /* 0: none */
    void *origin;
    /* Cluster mode (else 0): see px_req_t. */
    int (*fence)(const void *arg);
    const void *fence_arg;
    uint64_t delivery, epoch;
} px_submit_t;

/* Why a request was refused, for its rejected answer. */
typedef struct px_verdict {
    enum px_reject why;
    int worker; /* -1: none */
    uint64_t retry_after_ms;
    char message[512];
} px_verdict_t;

/* Takes ownership of reg. 0 or -1 with err set; either way px_engine_free releases it. */
int px_engine_init(px_engine_t *e, uv_loop_t *loop, const px_config_t *cfg, px_stats_t *stats,
                   px_registry_t *reg, const px_sink_t *sink, char *err, size_t errlen);
/* Starts the workers. 0 or -1 with err set. */
int px_engine_start(px_engine_t *e, char *err, size_t errlen);
/* After the pool is gone (destroyed or abandoned); also on a zeroed engine. */
void px_engine_free(px_engine_t *e);

/* Handlers: lookup (loop), the names for messages (loop), a reference (any thread). */
const px_handler_t *px_engine_find(px_engine_t *e, const char *op);
void px_engine_names(px_engine_t *e, char *out, size_t outlen);
px_registry_t *px_engine_registry(px_engine_t *e);
/* Reload: takes ownership of reg; queued requests keep the registry they were accepted with. */
void px_engine_set_registry(px_engine_t *e, px_registry_t *reg);

/* Admission. 0: accepted (the request now holds origin until its answer is delivered);
 * 1: refused, v says why; -ENOMEM. Counts received, and accepted and in flight or rejected. */
int px_engine_submit(px_engine_t *e, const px_submit_t *s, px_verdict_t *v);
/* {"cancel": id} from origin: a request still queued is marked, and its worker answers it
 * failed/cancelled in its key's order without running it. Returns "queued", "running" or
 * "not_found". */
const char *px_engine_cancel(px_engine_t *e, void *origin, const char *id, size_t id_len);
/* parexctl drop: marks the queued requests of a parked key cancelled (answered failed/cancelled
 * in order, without running). Returns how many, or -ENOENT when the key is not parked. */
/* cancel_on_disconnect: origin's requests still queued will not run; each is answered
 * failed/cancelled in its key's order (to nobody: the client is gone). Returns how many. */
int px_engine_cancel_origin(px_engine_t *e, void *origin);
int px_engine_drop(px_engine_t *e, const char *key, size_t len);

/* on_stall=replace: abandons worker's stuck thread, answers its request worker_stalled and
 * starts a fresh thread. w is what the supervisor saw. */
void px_engine_replace(px_engine_t *e, uint32_t worker, const px_worker_info_t *w);
/* Drain: no new requests; workers finish what is queued. */
void px_engine_close(px_engine_t *e);
/* Forced stop: answers every queued and running request cancelled, after whatever finished
 * before, so each key's answers stay in order. Returns how many. */
size_t px_engine_cancel_all(px_engine_t *e);
/* Once every worker thread has exited: hands back what is left on the completion list (results
 * of abandoned requests) and destroys the pool. */
void px_engine_release_pool(px_engine_t *e);

#endif
