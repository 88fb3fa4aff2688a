/* Private to parex-jsloop: the run's shared state, between setup.c (connections, streams,
 * consumers) and loop.c (producer, results, consumer threads). */
#ifndef PX_BENCH_JSLOOP_INTERNAL_H
#define PX_BENCH_JSLOOP_INTERNAL_H

#include "bench/jsloop/jsloop.h"

#include <nats/nats.h>
#include <pthread.h>
#include <stdatomic.h>

typedef struct jl_worker {
    struct jl *l;
    unsigned id;
    natsSubscription *sub;   /* pull subscription bound to consumer "p<id>" */
    jsCtx *js;               /* its result publishes (async, waited for per batch) */
    _Atomic unsigned failed; /* results nats.c reported not stored */
    uint64_t result_errors, ack_errors, fetch_errors; /* its own; summed after the join */
    pthread_t th;
    int started;
} jl_worker_t;

typedef struct jl {
    const px_jsloop_opts_t *o;
    px_jsloop_result_t *r;
    char run[48]; /* unique to this run: stream names and subjects */
    char req_stream[64], res_stream[64];
    natsConnection *pnc, *wnc; /* the producer's side, the consumers' side */
    jsCtx *pjs;                /* request publishes, and stream admin */
    natsSubscription *results; /* plain subscription on the results' subjects */
    jl_worker_t *w;            /* partitions of them */
    atomic_int stop;           /* tells the consumer threads to finish */

    pthread_mutex_t mu; /* CLOCK_MONOTONIC cv: the producer waits for room or the last result */
    pthread_cond_t cv;
    /* All below under mu (and r->completed, window_completed, duplicates, lat). */
    uint64_t outstanding; /* published, no result yet */
    uint8_t *done;        /* per request sequence: its result came (or its publish failed) */
    size_t done_cap;
    uint64_t last_ns; /* when the latest result came */
    /* Counted from nats.c's threads. */
    _Atomic uint64_t publish_errors, nats_errors;
} jl_t;

#define JL_SUBJ "jsloop."

/* setup.c: connections, the two streams, a consumer and pull subscription per partition, the
 * results subscription (cb on the producer's connection). 0, or -1 with err set; jl_teardown
 * undoes whatever was done, streams included. */
int jl_setup(jl_t *l, natsMsgHandler on_result, jsPubAckErrHandler on_pub_failed, char *err,
             size_t errlen);
void jl_teardown(jl_t *l);

#endif
