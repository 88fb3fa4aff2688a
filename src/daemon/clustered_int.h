/* Private to clustered.c and clustered_exec.c: cluster mode's wiring state. */
#ifndef PX_CLUSTERED_INT_H
#define PX_CLUSTERED_INT_H

#include "daemon/clustered.h"

#include <pthread.h>
#include <stdatomic.h>

typedef struct xbatch xbatch_t;
typedef struct xjob {
    xbatch_t *b;
    px_cluster_job_t *j;
} xjob_t;

/* Loop only: a batch the loop is still submitting, from job i on (a full worker queue makes it
 * wait; see pump in clustered_exec.c). */
typedef struct xrun {
    struct xrun *next;
    xbatch_t *b;
    size_t i, n;
} xrun_t;

/* A batch a partition thread started; freed by the loop once its last job is done. */
struct xbatch {
    xbatch_t *next;
    px_cluster_job_t *jobs;
    size_t n;
    const px_cluster_fence_t *fence;
    void (*ran)(void *ran_arg);
    void *ran_arg;
    size_t left; /* loop only: jobs not done yet */
    xjob_t x[];
};

typedef struct look look_t; /* clustered_result.c */

struct px_clustered {
    uv_loop_t *loop;
    const px_config_t *cfg;
    px_engine_t *eng;
    px_cluster_t *cl;
    void (*deliver)(void *origin, const char *l, size_t n);
    void (*changed)(void *arg);
    void *arg;
    json_t *pending; /* msgid -> pend_t* (as an integer) */
    uint64_t counter;
    char prefix[128];
    int draining, released;
    px_buf_t body;
    look_t *lookups;       /* result lookups waiting for the cluster, open or answered */
    uint32_t open_lookups; /* of them not answered yet */

    uv_async_t xasync;
    pthread_mutex_t xmu; /* covers xq */
    xbatch_t *xq;
    /* Loop only: batches being submitted, in arrival order, and the timer that retries them
     * while a worker queue is full. */
    xrun_t *runs, *runs_tail;
    uv_timer_t xretry;
    int closing; /* handles still to close before xclosed runs */
    void (*xclosed)(px_clustered_t *cx);

    /* Ingress counters: loop writes, /stats reads. */
    _Atomic uint64_t received, accepted, refused, answered, late_answers;
};

/* clustered_exec.c: the executor's side. */
void px_clustered_run_batch(px_cluster_job_t *jobs, size_t n, const px_cluster_fence_t *f,
                            void (*ran)(void *ran_arg), void *ran_arg, void *arg);
void px_clustered_exec_init(px_clustered_t *cx);
/* Gives batches still waiting for the loop back to their threads unrun (a forced stop). */
void px_clustered_exec_release(px_clustered_t *cx);
/* Closes the executor's handles; closed(cx) runs once both are closed. */
void px_clustered_exec_close(px_clustered_t *cx, void (*closed)(px_clustered_t *cx));

/* clustered_result.c: answers made here, and {"control":"result"}. */
/* Answers origin rejected/code (with retry_after_ms when non-zero); id is JSON text. */
void px_clustered_reject(px_clustered_t *cx, void *origin, const char *id, size_t id_len,
                         const char *code, const char *message, uint64_t retry_after_ms);
void px_clustered_looked_up(void *cookie, enum px_cluster_lookup st, const char *line, size_t len,
                            const char *why, void *arg);
/* Forced stop: answers the open lookups shutting_down (their records wait for the cluster). */
void px_clustered_lookups_cancel(px_clustered_t *cx);
/* After px_cluster_stop: answers what is still open and frees every record. */
void px_clustered_lookups_free(px_clustered_t *cx);

#endif
