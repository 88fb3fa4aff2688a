/* One request from the moment its line is parsed until its response is handed to its
 * connection. Ownership moves in one direction and back: the loop creates it, the worker owns it
 * while it is queued and running, and the completion list gives it back to the loop, which alone
 * frees it. Fields are grouped by the thread that writes them. */
#ifndef PX_REQUEST_H
#define PX_REQUEST_H

#include "common/buf.h"

#include <jansson.h>
#include <stdatomic.h>
#include <stdint.h>

struct px_handler;
struct px_registry;
struct px_key;

/* Every change of state is one compare-and-swap, so the loop and a worker never both decide a
 * request's end: QUEUED -> RUNNING (the worker claims it) | CANCELLED (the loop marks it; the
 * worker answers it, in its key's order, without running it) | DONE (skipped: its key is
 * parked, or in cluster mode its partition's lease ended); RUNNING -> DONE (the worker's answer
 * stands) | ABANDONED (the loop answered it: stall replacement or forced stop; the worker's late
 * result is discarded). */
enum px_req_state {
    PX_REQ_QUEUED,    /* in a worker's queue or hand */
    PX_REQ_RUNNING,   /* its handler is running */
    PX_REQ_DONE,      /* the worker finished it and owns its response */
    PX_REQ_ABANDONED, /* the loop answered it (stall, forced stop); the worker's result is void */
    PX_REQ_CANCELLED, /* marked by the loop while queued; cancel_msg says why */
};

enum { PX_SKIP_PARKED = 1, PX_SKIP_FENCED = 2 };

typedef struct px_req {
    /* Written by the loop before the request is queued, read-only afterwards. */
    void *origin; /* where the answer goes (a connection); opaque below the server */
    const struct px_handler *handler;
    struct px_registry *reg; /* holds the handler's registry alive (one reference) */
    uint32_t payload_len;    /* the payload as compact JSON text, stored after key and id */
    uint64_t recv_ns;
    uint64_t deadline_ns; /* 0: none */
    struct px_key *kent;  /* per-key state (cap, quarantine) or NULL; workers touch its atomics */
    uint32_t worker;      /* routed worker; keyed scheduling: the worker that ran it */
    uint32_t route;       /* routed worker, never changed (hot-key sketches are kept per route) */
    void *sched_key;      /* keyed scheduling: the scheduler's entry of the key, set when popped */
    /* Cluster mode: the worker asks fence(fence_arg) right before running the request and skips
     * it when it says 0 (the partition's lease is gone); delivery and epoch are shown to
     * handlers so they can make side effects idempotent. 0 / NULL otherwise. */
    int (*fence)(const void *arg);
    const void *fence_arg;
    uint64_t delivery, epoch;
    uint16_t key_len;
    uint32_t id_len;        /* id as JSON text, echoed verbatim */
    const char *cancel_msg; /* written by the loop before it marks the request CANCELLED */
    uint32_t expiry_idx;    /* loop only: its place in the engine's deadline heap + 1; 0: none */

    /* Written by the worker while it owns the request. */
    uint64_t start_ns, end_ns;
    int ok;       /* 1 ok, 0 failed */
    int attempts; /* handler runs, retries included */
    int skipped;  /* not run: PX_SKIP_PARKED, PX_SKIP_FENCED when its turn came */
    int parked;   /* this failure parked its key (the count of consecutive failures) */
    px_buf_t out; /* the response line, '\n' included */

    _Atomic int state;   /* enum px_req_state; RUNNING -> DONE | ABANDONED decided by one CAS */
    struct px_req *next; /* completion list link, under the completion lock */

    char data[]; /* key bytes, then id text; neither NUL-terminated */
} px_req_t;

static inline const char *px_req_key(const px_req_t *r)
{
    return r->data;
}
static inline const char *px_req_id(const px_req_t *r)
{
    return r->data + r->key_len;
}
/* JSON text, not NUL-terminated. Kept as text, not a jansson tree: a third of the memory per
 * queued request, and exec, http and plugin handlers want text anyway. */
static inline const char *px_req_payload(const px_req_t *r)
{
    return r->data + r->key_len + r->id_len;
}

/* One allocation holding the request and the bytes of its key, id and payload. */
px_req_t *px_req_new(const char *key, size_t key_len, const char *id, size_t id_len,
                     const char *payload, size_t payload_len);
void px_req_free(px_req_t *r);
/* Bytes held by live requests (the struct, key, id and payload), from any thread: what
 * max_queued_payload_bytes bounds. */
extern _Atomic uint64_t px_req_live_bytes;

#endif
