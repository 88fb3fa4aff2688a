/* Deadlines of queued requests: a min-heap by deadline and one loop timer set for the earliest,
 * so a request still queued when its deadline_ms passes is answered then, not when its worker
 * reaches it. The engine adds each accepted request that has a deadline, removes it wherever
 * the request ends, and decides what an expiry means (expired callback). Loop thread only. */
#ifndef PX_EXPIRY_H
#define PX_EXPIRY_H

#include "daemon/core/request.h"

#include <stddef.h>
#include <uv.h>

typedef struct px_expiry {
    uv_loop_t *loop;
    uv_timer_t *timer; /* created with the first deadline; NULL until then */
    px_req_t **heap;   /* by deadline_ns; each request's expiry_idx is its index + 1 */
    size_t n, cap;
    uint64_t armed_ns; /* the deadline the timer is set for; 0: not set */
    /* Called for each request whose deadline has passed, after it left the heap. */
    void (*expired)(px_req_t *r, void *arg);
    void *arg;
} px_expiry_t;

void px_expiry_init(px_expiry_t *x, uv_loop_t *loop, void (*expired)(px_req_t *r, void *arg),
                    void *arg);
/* Tracks r (r->deadline_ns set). -ENOMEM leaves it untracked: its worker still answers it
 * deadline_exceeded when it reaches it. */
int px_expiry_add(px_expiry_t *x, px_req_t *r);
/* Forgets r if tracked; call before a request is freed. */
void px_expiry_remove(px_expiry_t *x, px_req_t *r);
/* Closes the timer (once nothing can be added any more) and frees the heap. */
void px_expiry_close(px_expiry_t *x);

#endif
