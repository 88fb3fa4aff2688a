/* Cluster mode: requests are stored in NATS JetStream before they are accepted and run by
 * whichever instance owns their partition. This header is the whole interface the daemon sees:
 *
 *   ingress  - px_cluster_submit() publishes a request for partition P with a message id
 *              (JetStream dedup); whether it was stored on a quorum comes back on the loop
 *              thread through accept_cb, and its answer later through result_cb.
 *   results  - px_cluster_lookup() reads the retained answer of an idem request, whichever
 *              instance ran it; the outcome comes back on the loop thread through looked_up.
 *   executor - for each partition this instance holds a lease on, one thread fetches batches
 *              from the partition's consumer and hands them to run_cb; their answers go back to
 *              the instance that accepted them, then the messages are acknowledged.
 *
 * Every blocking NATS call runs on the cluster's own threads; the loop thread only queues work
 * and receives callbacks through one uv_async_t. */
#ifndef PX_CLUSTER_H
#define PX_CLUSTER_H

#include "common/buf.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#define PX_CLUSTER_MAX_SERVERS 16
#define PX_CLUSTER_MAX_PARTITIONS 1024

typedef struct px_cluster px_cluster_t;

typedef struct px_cluster_opts {
    const char *servers[PX_CLUSTER_MAX_SERVERS]; /* nats://host:port */
    int nservers;
    uint32_t partitions;  /* fixed for the cluster's life */
    const char *instance; /* unique name: [A-Za-z0-9_-], 1-64 bytes */
    uint64_t lease_ttl_ms;
    uint64_t max_backlog; /* per partition: beyond it submits are refused */
    int replicas;         /* of the streams and buckets (1 or 3 for tests) */
    uint64_t publish_timeout_ms;
    uint32_t batch;         /* messages per fetch */
    uint32_t publishers;    /* publishing threads (at most partitions) */
    uint64_t result_ttl_ms; /* how long results of idem requests stay readable */
    int executor;           /* 0: ingress only, never a member holding partitions */
} px_cluster_opts_t;

void px_cluster_opts_defaults(px_cluster_opts_t *o);

/* Why a submit was not accepted. */
enum px_cluster_status {
    PX_CL_ACCEPTED = 0,
    PX_CL_FULL,        /* the partition's backlog is at max_backlog */
    PX_CL_UNAVAILABLE, /* not stored: no JetStream to store it in */
    PX_CL_UNCERTAIN,   /* no confirmation within publish_timeout_ms: it may have been stored */
    PX_CL_TOO_LARGE,   /* over the servers' max_payload */
    PX_CL_STOPPING,
};

/* One request handed to the executor. Fields are read-only for the runner except result and
 * ok, which it fills. */
typedef struct px_cluster_job {
    uint32_t partition;
    uint64_t epoch;     /* the lease revision this instance holds the partition with */
    uint64_t seq;       /* stream sequence */
    uint64_t delivered; /* 1 on the first delivery, more after a crash or a take-over */
    const char *msgid;
    const char *data; /* the request as published (JSON text) */
    size_t len;
    px_buf_t result; /* the answer line to send back, filled by the runner */
    int run;         /* set by the runner when it ran (or answered) the job */
} px_cluster_job_t;

typedef struct px_cluster_fence px_cluster_fence_t;
/* Any thread: 1 while the lease the jobs were fetched under still holds locally. A runner checks
 * it right before running each job, so a paused instance that lost its lease runs nothing. */
int px_cluster_fence_ok(const px_cluster_fence_t *f);

/* Partition thread: starts the jobs (for jobs of one key, in array order, one at a time, and
 * after the jobs of every batch started before) and returns; ran(ran_arg) is called, from any
 * thread, once each job has run or been skipped (run = 0: left for the next owner). The
 * partition thread fetches the next batch meanwhile, so the workers never wait for NATS. */
typedef void (*px_cluster_run_cb)(px_cluster_job_t *jobs, size_t n, const px_cluster_fence_t *f,
                                  void (*ran)(void *ran_arg), void *ran_arg, void *arg);
/* Loop thread: the outcome of px_cluster_submit for cookie. */
typedef void (*px_cluster_accept_cb)(void *cookie, enum px_cluster_status st, const char *why,
                                     void *arg);
/* Loop thread: an answer for a request this instance accepted (it may come twice after a
 * re-run; the caller ignores ids it no longer waits for). line NULL: a resubmitted idem whose
 * first submit has not been answered within publish_timeout_ms. */
typedef void (*px_cluster_result_cb)(const char *msgid, const char *line, size_t len, void *arg);

/* What a lookup of a retained answer found. */
enum px_cluster_lookup {
    PX_CL_LOOKUP_FOUND,  /* line is the answer as its worker gave it */
    PX_CL_LOOKUP_NONE,   /* nothing stored: never ran yet, not an idem, or past result_ttl_ms */
    PX_CL_LOOKUP_FAILED, /* could not ask (no NATS, shutting down): why says so */
};
/* Loop thread: the outcome of px_cluster_lookup for cookie. line/len: the answer when FOUND;
 * why: the reason when FAILED. */
typedef void (*px_cluster_lookup_cb)(void *cookie, enum px_cluster_lookup st, const char *line,
                                     size_t len, const char *why, void *arg);

typedef struct px_cluster_cbs {
    px_cluster_run_cb run;
    px_cluster_accept_cb accepted;
    px_cluster_result_cb result;
    px_cluster_lookup_cb looked_up;
    void *arg;
} px_cluster_cbs_t;

/* Loop thread: copies opts, starts the threads; connecting and creating the streams happen on
 * them (the first accepted submit waits for that). 0 or -1 with err set. */
int px_cluster_start(px_cluster_t **out, uv_loop_t *loop, const px_cluster_opts_t *o,
                     const px_cluster_cbs_t *cbs, char *err, size_t errlen);
/* Loop thread: queue a request for publishing. The outcome arrives through accepted(cookie).
 * msgid: unique per request ([!-~], no spaces); data is copied. */
void px_cluster_submit(px_cluster_t *c, uint32_t partition, const char *msgid, const char *data,
                       size_t len, void *cookie);
/* Loop thread: queue a lookup of the answer stored for an idem request's message id (asked
 * once: an answer not stored yet is NONE). The outcome arrives through looked_up(cookie), unless
 * px_cluster_stop comes first: then never (the caller answers for its cookies). 0, or -EBUSY
 * when too many lookups wait already, -EINVAL for an over-long msgid, -ENOMEM. */
int px_cluster_lookup(px_cluster_t *c, const char *msgid, void *cookie);
/* Loop thread: hand every held partition over (each finishes its running batch first), refuse
 * further submits, and call done on the loop once nothing is held. */
void px_cluster_release(px_cluster_t *c, void (*done)(void *arg), void *arg);
/* Loop thread: stops the threads and frees; the loop must run once more to close the handle. */
void px_cluster_stop(px_cluster_t *c);
/* Any thread: ownership, epochs, backlog and counters for /stats. */
json_t *px_cluster_report(px_cluster_t *c);
/* Any thread: 1 while connected to NATS. */
int px_cluster_connected(px_cluster_t *c);
/* Loop thread: how many of its submitted requests still wait for their answers (the watch that
 * follows the answers anew when none come while some wait). */
void px_cluster_awaiting(px_cluster_t *c, size_t n);

#endif
