/* The daemon's front end: the listener, signals, the drain, and the glue between connections
 * and the worker pool. Everything here runs on the loop thread unless a comment says otherwise. */
#ifndef PX_SERVER_H
#define PX_SERVER_H

#include "daemon/core/config.h"
#include "daemon/core/handler.h"
#include "daemon/core/hot.h"
#include "daemon/core/keytab.h"
#include "daemon/core/stats.h"
#include "daemon/exec/worker.h"

#include <pthread.h>
#include <stdatomic.h>
#include <uv.h>

#define PX_MAX_LISTENERS 8

struct px_conn;
struct px_metrics;
struct px_supervisor;

/* Re-reads the configuration (file, then flags) for a reload; 0 or -1 with err set. */
typedef int (*px_config_loader_t)(px_config_t *out, char *err, size_t errlen, void *arg);

typedef struct px_server {
    uv_loop_t *loop;
    px_config_t cfg;
    px_registry_t *reg; /* written by the loop (reload) under reg_mu; readers off-loop take it */
    pthread_mutex_t reg_mu;
    px_pool_t *pool;
    px_stats_t stats;
    uint64_t start_time_unix;

    px_keytab_t keys; /* loop: per-key state, used when keys_on */
    int keys_on;      /* max_queued_per_key or quarantine configured */
    px_hot_t *hot;    /* heavy-hitter sketches (arrivals by the loop, time by workers) */
    pthread_mutex_t parked_mu;
    json_t *parked; /* under parked_mu: the parked keys, published by the loop for /stats */
    struct px_metrics *metrics;
    struct px_supervisor *sup;

    union {
        uv_tcp_t tcp;
        uv_pipe_t pipe; /* listen_unix */
    } listeners[PX_MAX_LISTENERS];
    int nlisteners;
    int unix_bound;        /* listen_unix was bound by us: unlink it when closing */
    char listen_addr[512]; /* the addresses actually bound, ports resolved */
    uv_signal_t sigterm, sigint, sighup;
    uv_timer_t drain_timer;
    uv_timer_t notify_timer; /* systemd STATUS= and WATCHDOG=1 */
    uv_check_t tick;         /* after each poll: wakes workers, flushes answers */
    uint64_t watchdog_usec;
    char last_status[256];
    px_config_loader_t reload;
    void *reload_arg;
    _Atomic double bp_threshold; /* live copy of cfg.backpressure_threshold for other threads */

    struct px_conn *conns; /* every open connection, doubly linked */
    struct px_conn *dirty; /* connections with output to flush, singly linked */
    uint32_t nconns;

    _Atomic int draining; /* stop accepting, reject new requests; read by the metrics thread */
    int finishing;        /* in-flight done: closing connections once flushed */
    int forced;           /* drain cut short: queued requests were cancelled */
    px_pool_t *leaked;    /* threads stuck in handlers outlive the loop: skip the final frees */

    char readbuf[65536]; /* shared by every connection: lines are consumed within the read */
    px_buf_t scratch;    /* loop-only: reused while building each request (its payload) */
    px_buf_t idtext;     /* loop-only: reused for each line's id as JSON text */
} px_server_t;

/* Sets up the listener, the pool and the signal handlers. Returns 0 or -1 with err set. */
int px_server_init(px_server_t *srv, uv_loop_t *loop, const px_config_t *cfg,
                   px_config_loader_t reload, void *reload_arg, char *err, size_t errlen);
/* SIGHUP: applies what can change live, names what cannot. */
void px_server_reload(px_server_t *srv);
/* Starts a graceful drain, or forces it when one is already running. */
void px_server_drain(px_server_t *srv);
/* Frees what px_server_init allocated, once uv_run has returned. */
void px_server_free(px_server_t *srv);

/* Any thread: a reference to the current handler registry (px_registry_unref when done). */
px_registry_t *px_server_registry(px_server_t *srv);

/* For the connection module. */
void px_server_check_drained(px_server_t *srv);
/* Loop thread: the request is answered; release its hold on its key's entry. */
void px_server_key_done(px_server_t *srv, px_req_t *r);
/* Loop thread: rebuilds the parked-keys list for /stats and the keys_parked gauge, and drops
 * idle entries. */
void px_server_sweep_keys(px_server_t *srv);
/* Loop thread: republishes the parked-keys list after a change. */
void px_server_publish_parked(px_server_t *srv);
/* Any thread: a copy of the parked-keys list. */
json_t *px_server_parked(px_server_t *srv);
/* Answers a request that will not run to completion (cancelled, stalled) as failed/code and
 * counts it; the request itself is not freed. */
void px_server_fail_request(px_server_t *srv, px_req_t *r, const char *code, const char *message);

#endif
