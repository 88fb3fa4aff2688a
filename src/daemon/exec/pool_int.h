/* Private to exec/: the pool's and each worker slot's layout, shared by pool.c (the loop's side:
 * lifecycle, submission, supervision, introspection) and worker.c (the thread body).
 *
 * Ownership: a slot's queue is shared with the loop under the queue's own lock; the slot's
 * counters are written by its thread only (atomics, read by anyone); the current request and
 * key are under the slot's cur_mu. The completion list is under done_mu. No thread ever holds
 * two of these locks at once, except px_pool_take_all (a forced stop), which takes a slot's
 * cur_mu and then its queue's lock: no thread takes them in the other order. */
#ifndef PX_POOL_INT_H
#define PX_POOL_INT_H

#include "common/hist.h"
#include "common/protocol.h"
#include "daemon/exec/keysched.h"
#include "daemon/exec/pool.h"
#include "daemon/exec/queue.h"

#include <pthread.h>
#include <stdatomic.h>

/* A worker slot: one queue and the thread currently serving it. A stalled thread can be
 * abandoned and replaced (on_stall=replace); gen tells a thread whether it still owns the slot.
 * Counters and histograms are written by the owning thread only. */
typedef struct px_slot {
    px_pool_t *pool;
    uint32_t id;
    px_queue_t *queue;
    pthread_t thread;     /* loop-only */
    _Atomic int started;  /* set by the loop, read by px_pool_info anywhere */
    uint32_t kick;        /* loop-only: pushes that found this worker waiting since the last
                           * px_pool_kick (0: no wake-up owed) */
    _Atomic int running;  /* the current thread has not exited */
    _Atomic uint64_t gen; /* changed under cur_mu */
    _Atomic uint64_t heartbeat_ns, busy_since_ns; /* busy_since_ns 0 unless a handler runs */
    _Atomic int waiting; /* for a handler's concurrency slot or rate-limit token: queue time */
    /* What the thread popped and has not claimed yet: written under the queue's (or keyed
     * scheduler's) lock by the pop, taken under cur_mu by the worker's claim, and by a forced
     * stop under cur_mu and the queue's lock together (the one place two locks nest: cur_mu
     * first; nothing takes them in the other order). */
    _Atomic(void *) hand;
    _Atomic uint64_t processed, failed, busy_ns, ewma_run_ns, replaced;
    pthread_mutex_t cur_mu;
    px_req_t *current; /* under cur_mu; the loop keeps it alive until it comes back */
    char cur_key[PX_KEY_MAX + 1], cur_op[64]; /* under cur_mu, for readers on other threads */
    px_hist_t queue_us, run_us;
} px_slot_t;

struct px_pool {
    uv_loop_t *loop;
    uv_async_t async;
    px_pool_done_cb cb;
    void *cb_arg;
    uint32_t n;
    _Atomic int closed;
    _Atomic uint32_t strays; /* abandoned threads still inside a handler */
    _Atomic uint64_t stall_after_ns, dead_after_ns;
    _Atomic uint32_t q_after;
    _Atomic uint64_t q_for_ns;
    struct px_hot *hot;
    px_sched_t *sched;       /* scheduling "keyed": one scheduler instead of per-slot queues */
    uint32_t *kicks, nkicks; /* loop-only: slots to wake at the end of this loop iteration */
    uint32_t sched_kick;     /* loop-only: pushes into the keyed scheduler since its last wake */
    pthread_mutex_t done_mu;
    px_req_t *done_head, *done_tail; /* under done_mu */
    px_slot_t slots[];
};

/* Loop thread: starts a thread for the slot as generation gen. 0 or an errno value. */
int px_worker_start(px_slot_t *s, uint64_t gen);

/* Single-writer counters: a plain load and store, no read-modify-write bus lock. */
static inline void px_add_relaxed(_Atomic uint64_t *f, uint64_t v)
{
    atomic_store_explicit(f, atomic_load_explicit(f, memory_order_relaxed) + v,
                          memory_order_relaxed);
}

#endif
