/* parex-jsloop's run: the raw JetStream request loop that cluster mode is measured against.
 * A producer publishes requests (each with a unique Nats-Msg-Id, asynchronously, at most
 * in_flight of them without their result) to a work-queue stream, one subject per partition;
 * a thread per partition fetches them in batches from a durable pull consumer, publishes a
 * result for each (with a message id) into a results stream, waits for those publishes to be
 * stored, and acknowledges; the producer reads the results on a plain subscription and measures
 * publish -> result. That is the path cluster mode takes per request without parexd's own work
 * (leases, routing, handlers, the client's TCP connection): the floor for that path. */
#ifndef PX_BENCH_JSLOOP_H
#define PX_BENCH_JSLOOP_H

#include "bench/hist.h"

#include <stddef.h>
#include <stdint.h>

typedef struct px_jsloop_opts {
    const char **servers; /* nats://HOST:PORT URLs */
    int nservers;
    int replicas;           /* of both streams and the consumers: 1 or 3 */
    double duration;        /* seconds of publishing */
    double timeout;         /* seconds to wait for the results still due after that */
    unsigned in_flight;     /* requests published and without their result, at most */
    unsigned batch;         /* fetch size, and each consumer's MaxAckPending */
    unsigned partitions;    /* request subjects, each with its consumer and thread */
    unsigned payload_bytes; /* of each request and result (>= 16: send time and sequence) */
} px_jsloop_opts_t;

typedef struct px_jsloop_result {
    uint64_t sent, completed;
    uint64_t window_completed; /* results read while still publishing */
    uint64_t unanswered;       /* published, no result within the timeout */
    uint64_t duplicates;       /* a second result for one request */
    uint64_t publish_errors;   /* request publishes JetStream did not confirm */
    uint64_t result_errors;    /* result publishes JetStream did not confirm */
    uint64_t ack_errors, fetch_errors;
    uint64_t nats_errors; /* asynchronous errors (slow consumer, lost connection) and bad results */
    double seconds;       /* first publish to the last result (or the end of the wait) */
    px_bhist_t lat;       /* publish -> result, nanoseconds */
} px_jsloop_result_t;

/* Creates the run's streams and consumers (names unique to the run), runs the loop, deletes
 * them. Returns 0 with *r filled (errors counted in it), or -1 with err set when the run could
 * not start (no connection, stream or consumer). */
int px_jsloop_run(const px_jsloop_opts_t *o, px_jsloop_result_t *r, char *err, size_t errlen);

#endif
