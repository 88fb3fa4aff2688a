/* parex-bench's load generator: C connections on one libuv loop, each keeping P requests
 * outstanding, every answer checked against what is outstanding on its connection. Also the
 * idle-connection mode used to measure the daemon's memory per connection. */
#ifndef PX_BENCH_RUN_H
#define PX_BENCH_RUN_H

#include "bench/hist.h"
#include "common/buf.h"

#include <stddef.h>
#include <stdint.h>

typedef struct px_bench_opts {
    char host[256];
    int port;
    uint32_t connections, pipeline;
    uint64_t requests; /* stop after this many; 0 with duration */
    double duration;   /* seconds of sending; 0 with requests */
    uint32_t keys;
    double zipf; /* 0: uniform */
    uint64_t seed;
    const char *op;
    const char *payload; /* compact JSON text, or NULL for none */
    double timeout;      /* seconds without any answer, while some are due, before giving up */
    uint32_t idle_connections;
    double hold;       /* idle mode: seconds to hold; 0 = until SIGINT/SIGTERM */
    uint32_t hot_keys; /* keys 0..hot_keys-1 are "hot": the others are reported apart as cold */
} px_bench_opts_t;

typedef struct px_bench_result {
    uint64_t sent, ok, failed, rejected, invalid;
    uint64_t order_violations; /* ok/failed answers for a key out of the order sent */
    uint64_t errors;           /* protocol errors: bad lines, unknown/duplicate ids, ... */
    uint64_t unanswered;       /* requests whose connection closed or timed out */
    double seconds;            /* first request sent to last answer read */
    uint64_t window_answered;  /* --duration: answers read before sending stopped */
    double server_queue_ms, server_run_ms; /* sums of the answers' queue_ms and run_ms */
    uint64_t server_timed;                 /* answers that carried both */
    px_bhist_t lat;                        /* ns, of ok and failed answers */
    px_bhist_t cold_lat;                   /* the same, of keys >= hot_keys (with --hot-keys) */
    uint64_t cold_sent, cold_rejected;     /* requests and rejections of those keys */
    uint64_t cold_queue_full;              /* ... of which queue_full */
} px_bench_result_t;

/* Runs the load described by o. Returns 0 when it ran (check res for errors), or -1 when it
 * could not (message in err). */
int px_bench_run(const px_bench_opts_t *o, px_bench_result_t *res, char *err, size_t errlen);
/* Appends the part of every request line after the id (,"op":...,"payload":...}\n) to out.
 * 0, or -1 with err set. */
int px_bench_suffix(const px_bench_opts_t *o, px_buf_t *out, char *err, size_t errlen);

/* Opens o->idle_connections connections, sends one echo on each and waits for its answer, then
 * prints one line on stdout and holds them for o->hold seconds (0: until SIGINT/SIGTERM). */
int px_bench_idle(const px_bench_opts_t *o, char *err, size_t errlen);

/* Resolves host:port into an address libuv can connect to. 0 or a libuv error code. */
struct sockaddr_storage;
int px_bench_addr(const px_bench_opts_t *o, struct sockaddr_storage *ss);

/* Raises the soft open-files limit to at least need (up to the hard limit). */
void px_bench_raise_nofile(uint64_t need);

#endif
