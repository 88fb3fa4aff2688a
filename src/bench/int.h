/* parex-bench internals shared by bench/run.c (the run: set-up, connects, timer, end) and
 * bench/conn.c (one connection's traffic: building requests, writing, reading and checking
 * answers), and state.c (the end of a run, which both call). Everything runs on the run's one loop
 * thread. */
#ifndef PX_BENCH_INT_H
#define PX_BENCH_INT_H

#include "bench/keys.h"
#include "bench/run.h"
#include "common/buf.h"

#include <jansson.h>
#include <uv.h>

#define PX_BENCH_MAX_PRINTED 20 /* error lines printed; the rest are only counted */

/* A request outstanding on a connection. */
typedef struct px_bslot {
    uint64_t id; /* 0 when free */
    uint64_t sent_ns;
    uint32_t key, kseq; /* the key and its number among the key's requests on the connection */
} px_bslot_t;

typedef struct px_bench px_bench_t;

typedef struct px_bconn {
    uv_tcp_t tcp;
    uv_connect_t creq;
    uv_write_t wreq;
    px_bench_t *b;
    uint32_t idx;
    px_rng_t rng;
    px_bslot_t *slots;           /* o->pipeline of them */
    uint32_t *free_slots, nfree; /* stack of free slot indexes */
    uint64_t counter;            /* requests sent on this connection */
    uint32_t *ksent, *kdone;     /* per key: next number to send; last ok/failed number + 1 */
    px_buf_t carry;              /* an answer line split across reads */
    px_buf_t out;                /* requests not yet handed to the socket */
    px_buf_t wbuf;               /* bytes owned by the uv_write in flight */
    unsigned writing : 1, closed : 1;
} px_bconn_t;

struct px_bench {
    const px_bench_opts_t *o;
    px_bench_result_t *res;
    uv_loop_t *loop;
    uv_timer_t timer;
    uv_signal_t sigint;
    px_bconn_t *conns;
    uint32_t nconnected, slot_bits; /* id = (counter << slot_bits) | slot */
    uint64_t outstanding;
    uint64_t start_ns, last_answer_ns, deadline_ns; /* uv_hrtime() */
    uint64_t deadline_ms, progress_ms;              /* uv_now() */
    int started, stopping, finished;
    px_keydist_t keys;
    json_t *echo_expect; /* the payload an echo must return, or NULL */
    char *suffix;        /* the request line after the id: ,"op":"...","payload":...}\n */
    size_t suffix_len;
    size_t payload_len; /* strlen(o->payload), when there is one */
    uint32_t printed;   /* error lines printed so far */
    char readbuf[256 << 10];
};

/* Whether the run still wants new requests sent. */
static inline int px_bench_may_send(const px_bench_t *b)
{
    if (b->stopping)
        return 0;
    if (b->o->requests)
        return b->res->sent < b->o->requests;
    return uv_now(b->loop) < b->deadline_ms;
}

/* state.c */
void px_bench_finish(px_bench_t *b);     /* closes every handle: the loop ends */
void px_bench_check_done(px_bench_t *b); /* finishes once nothing is due or wanted */
/* Counts a protocol error and prints the first few. */
void px_bench_error(px_bench_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* conn.c */
int px_bconn_start(px_bconn_t *c); /* once connected: start reading. 0 or a libuv error */
void px_bconn_refill(px_bconn_t *c, uint64_t now_ns);
void px_bconn_flush(px_bconn_t *c);
void px_bconn_lost(px_bconn_t *c, const char *why);

#endif
