/* The daemon's wiring: it builds the layers (engine, connections, listeners, operators'
 * endpoints), connects them through their callbacks, and owns the lifecycle: signals, the drain,
 * reload and the loop tick. Loop thread unless a comment says otherwise. */
#ifndef PX_SERVER_H
#define PX_SERVER_H

#include "daemon/clustered.h"
#include "daemon/core/config.h"
#include "daemon/core/stats.h"
#include "daemon/exec/engine.h"
#include "daemon/net/conn.h"
#include "daemon/net/listener.h"
#include "daemon/ops/metrics.h"
#include "daemon/ops/sdstatus.h"
#include "daemon/ops/snapshot.h"
#include "daemon/ops/supervisor.h"

#include <uv.h>

/* Re-reads the configuration (file, then flags) for a reload; 0 or -1 with err set. */
typedef int (*px_config_loader_t)(px_config_t *out, char *err, size_t errlen, void *arg);

typedef struct px_server {
    uv_loop_t *loop;
    px_config_t cfg; /* loop: replaced in place on reload; the layers keep a pointer to it */
    px_stats_t stats;
    px_engine_t eng;
    px_net_t net;
    px_listeners_t listeners;
    px_snapshot_src_t watch; /* what the operators' endpoints read, from any thread */
    px_metrics_t *metrics;
    px_supervisor_t *sup;
    px_sdstatus_t sd;
    px_clustered_t *cx;   /* cluster mode, else NULL */
    int cluster_draining; /* handing partitions over before the engine closes */

    uv_signal_t sigterm, sigint, sighup, sigchld;
    uv_timer_t slow_timer; /* closes connections with a stale partial line */
    uv_timer_t drain_timer;
    uv_check_t tick; /* after each poll: wakes workers, flushes answers */
    px_config_loader_t reload;
    void *reload_arg;

    int finishing;     /* in-flight done: closing connections once flushed */
    int forced;        /* drain cut short: queued requests were cancelled */
    px_pool_t *leaked; /* threads stuck in handlers outlive the loop: skip the final frees */
} px_server_t;

/* Sets up the layers and the signal handlers. Returns 0 or -1 with err set. */
int px_server_init(px_server_t *srv, uv_loop_t *loop, const px_config_t *cfg,
                   px_config_loader_t reload, void *reload_arg, char *err, size_t errlen);
/* SIGHUP: applies what can change live, names what cannot. */
void px_server_reload(px_server_t *srv);
/* Starts a graceful drain, or forces it when one is already running. */
void px_server_drain(px_server_t *srv);
/* Frees what px_server_init allocated, once uv_run has returned. */
void px_server_free(px_server_t *srv);

#endif
