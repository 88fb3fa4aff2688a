/* The worker pool: N threads, each owning one bounded queue. The loop submits requests to the
 * worker that owns their key; workers run the handler, build the response line and hand the
 * request back through one completion list that wakes the loop with a single uv_async_t. */
#ifndef PX_WORKER_H
#define PX_WORKER_H

#include "common/hist.h"
#include "daemon/core/request.h"

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct px_pool px_pool_t;

/* Loop thread: the requests finished since the last call, linked by ->next in completion order
 * (so in per-key order). A request whose state is PX_REQ_ABANDONED was already answered. */
typedef void (*px_pool_done_cb)(px_req_t *list, void *arg);

enum px_worker_state { PX_WS_IDLE, PX_WS_BUSY, PX_WS_STALLED, PX_WS_DEAD, PX_WS_COUNT };
const char *px_worker_state_name(enum px_worker_state s);

/* What a worker looks like from outside; filled without stopping it. */
typedef struct px_worker_info {
    uint32_t id;
    enum px_worker_state state;
    uint32_t depth, capacity;
    uint64_t processed, failed, busy_ns, replaced;
    uint64_t heartbeat_age_ns, busy_for_ns; /* busy_for_ns is 0 when idle */
    uint64_t busy_since_ns;                 /* when the running attempt started; 0: none */
    uint64_t ewma_run_ns;                   /* recent service time */
    char current_key[257];                  /* "" when idle */
    char current_op[64];
} px_worker_info_t;

struct px_hot;
/* Quarantine: park a key for for_ns after `after` consecutive failures (0: off). Any thread. */
void px_pool_set_quarantine(px_pool_t *p, uint32_t after, uint64_t for_ns);
/* Where workers record time spent per key (hot-key visibility); set before start. */
void px_pool_set_hot(px_pool_t *p, struct px_hot *hot);

/* Thresholds for the stalled and dead states (any thread may change them: config reload). */
void px_pool_set_limits(px_pool_t *p, uint64_t stall_after_ns, uint64_t dead_after_ns);

/* keyed: one keyed scheduler of workers x capacity instead of a queue per worker. */
int px_pool_new(px_pool_t **out, uv_loop_t *loop, uint32_t workers, uint32_t capacity, int keyed,
                px_pool_done_cb cb, void *arg);
/* Keyed scheduling only (returns 0 otherwise): the shared backlog and its bound. Any thread. */
int px_pool_keyed(px_pool_t *p, uint32_t *depth, uint32_t *capacity, uint32_t *keys);
/* Starts the threads; on failure stops those already started. */
int px_pool_start(px_pool_t *p, char *err, size_t errlen);
uint32_t px_pool_size(const px_pool_t *p);

/* Loop thread. 0, -EAGAIN when the worker's queue is full, -EPIPE once closed. The worker is
 * woken by the next px_pool_kick, which the loop calls once per iteration, after all reads:
 * one wake-up per worker per poll instead of one per request (and one more every 64 requests
 * that find it waiting, so a huge read does not fill a queue nobody has started on). */
int px_pool_submit(px_pool_t *p, px_req_t *r);
void px_pool_kick(px_pool_t *p);
/* Loop thread: hands the requests finished so far to the done callback now, without waiting
 * for the wake-up their workers sent (which then finds the list empty). */
void px_pool_reap(px_pool_t *p);
/* Loop thread: no more submissions; workers finish what is queued, then exit. */
void px_pool_close(px_pool_t *p);
/* A request a forced stop took: returns is 1 for a running one (abandoned: its thread hands it
 * back through the completion list, so only the loop's answer is owed), 0 for one that was
 * queued or popped but not yet claimed (the caller owns it now and frees it). */
typedef struct px_taken {
    px_req_t *r;
    int returns;
} px_taken_t;

/* Loop thread, forced stop (after px_pool_close): takes every request out, in per-key order:
 * running, then popped but unclaimed, then queued. Returns how many, in a malloc'd array the
 * caller frees. */
size_t px_pool_take_all(px_pool_t *p, px_taken_t **out);
/* Loop thread: the completion list as it is now (linked by ->next), for a caller that must
 * answer earlier requests before answering others itself. */
px_req_t *px_pool_take_done(px_pool_t *p);
/* Loop thread, when no handler can be running (start-up failure): closes the queues and joins
 * every thread. */
void px_pool_stop(px_pool_t *p);
/* Loop thread: joins threads that have exited, closes the async handle; safe to call once the
 * workers are done. Frees the pool in the close callback. */
void px_pool_destroy(px_pool_t *p);
/* Loop thread, at a stop that cannot wait for stuck threads: detaches every thread so the
 * process exit takes them; the pool is then left as it is. */
void px_pool_abandon(px_pool_t *p);
/* Any thread. */
void px_pool_info(px_pool_t *p, uint32_t worker, px_worker_info_t *out);
/* Slot threads still running (the drain is complete at 0). */
uint32_t px_pool_live(px_pool_t *p);
/* Abandoned threads still inside a handler: while any remain the pool must not be freed. */
uint32_t px_pool_strays(px_pool_t *p);
/* Loop thread, on_stall=replace: abandons the worker's thread, but only if the run the
 * supervisor observed (observed_since: its busy_since_ns) is still the current one and still
 * over stall_after. Returns the request it was stuck on (now PX_REQ_ABANDONED, for the loop to
 * answer) or NULL (then nothing is replaced). The slot has no thread until px_pool_respawn:
 * the caller answers what is owed first, so the queue's next requests cannot overtake. */
px_req_t *px_pool_replace(px_pool_t *p, uint32_t worker, uint64_t observed_since);
/* Loop thread, once the abandoned request (from px_pool_replace, not yet handed back) is
 * answered: lets its key run again (keyed scheduling) and starts a fresh thread on the slot.
 * 0 or an errno value. */
int px_pool_respawn(px_pool_t *p, uint32_t worker, px_req_t *abandoned);
/* Loop thread: marks every queued (or popped, unclaimed) request for which match is true
 * PX_REQ_CANCELLED with why; its worker answers it failed/cancelled in its key's order without
 * running it. Returns how many were marked; *running tells whether a running request matched.
 * match runs under the queue's or the slot's lock. */
int px_pool_cancel(px_pool_t *p, int (*match)(px_req_t *r, void *arg), void *arg, const char *why,
                   int *running);
/* Loop thread: takes r out of its queue if it is still waiting there (not popped by a worker):
 * 1, and the loop owns it again; 0 when a worker has it. */
int px_pool_remove_queued(px_pool_t *p, px_req_t *r);
/* Adds the worker's histograms (microseconds) into queue and run. Any thread. */
void px_pool_hists(px_pool_t *p, uint32_t worker, px_hist_snap_t *queue, px_hist_snap_t *run);
/* Honest wait before a retry can get in: queued requests x recent service time. Any thread. */
uint64_t px_pool_retry_after_ms(px_pool_t *p, uint32_t worker);

#endif
