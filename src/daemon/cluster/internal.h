/* Private to src/daemon/cluster/: the cluster's shared state and the names of its NATS objects.
 *
 * Threads: the loop (submit, callbacks), the publishers (ingress.c), the lookup thread
 * (result.c), the lease thread (lease.c), one thread per held partition (part.c), and nats.c's
 * own threads (the results subscription). Who writes what is said beside each field. */
#ifndef PX_CLUSTER_INTERNAL_H
#define PX_CLUSTER_INTERNAL_H

#include "daemon/cluster/cluster.h"

#include <nats/nats.h>
#include <pthread.h>
#include <stdatomic.h>

#define CL_REQ_STREAM "PAREX_REQ"
#define CL_RES_STREAM "PAREX_RES"
#define CL_IDEM_STREAM "PAREX_IDEM"
#define CL_REQ_SUBJ "parex.req."   /* + partition */
#define CL_RES_SUBJ "parex.res."   /* + instance.partition: answers for their ingress */
#define CL_IDEM_SUBJ "parex.idem." /* + hex(msgid): retained answers of idem requests */
#define CL_LEASES "parex-leases"
#define CL_MEMBERS "parex-members"
#define CL_HDR_REPLY "Parex-Reply"             /* the instance that accepted the request */
#define CL_HDR_ID "Parex-Msg-Id"               /* echoes the request's message id on its answer */
#define CL_ANSWER_STALL_NS (5ull * 1000000000) /* doubling after each, to 80 s */

enum part_state {
    PART_FREE,      /* not held */
    PART_OWNED,     /* held, its thread runs */
    PART_RELEASING, /* told to stop after its batch, lease kept until it has */
};

typedef struct cl_part {
    uint32_t id;
    struct px_cluster *cl;
    /* Lease thread only. */
    int state;
    uint64_t rev; /* last revision written by this instance */
    /* Set before the thread starts: the stream sequences of the last batch the previous holder
     * finished and acknowledged before handing the partition over (0 0: none). */
    uint64_t skip_lo, skip_hi;
    uint64_t handed_out; /* partition thread: highest sequence earlier consumers delivered */
    /* Partition thread: ids of requests whose answers are stored (batch.c answered()). */
    char **answered;
    size_t nanswered;
    int answered_loaded;
    /* Partition thread: this consumer has run again a message an earlier one handed out, so it
     * runs every later such message too (answered or not): re-runs stay a suffix, in order. */
    int rerunning;
    uint64_t seen_rev, seen_at; /* lease thread: another holder's revision, first seen when */
    pthread_t th;
    int th_live;
    /* Written by the lease thread, read by the partition thread and runners. */
    _Atomic uint64_t epoch;
    _Atomic uint64_t deadline_ns; /* local end of the lease (monotonic); 0: not held */
    _Atomic int stop;             /* finish the running batch, then exit */
    _Atomic int exited;           /* the partition thread is done (lease thread joins it) */
    _Atomic int lost;             /* the thread found its consumer gone or its fence down */
    _Atomic int serving;          /* partition thread: its consumer is bound */
    _Atomic uint64_t done_seq;    /* partition thread: last acknowledged batch's highest */
    _Atomic uint64_t last_lo;     /* and lowest stream sequence */
    /* Counters, any reader. */
    _Atomic uint64_t
        backlog; /* messages stored for the partition (refreshed by the lease thread) */
    _Atomic uint64_t runs, redeliveries, acquired, handoffs, losses, skipped;
} cl_part_t;

struct px_cluster_fence {
    cl_part_t *p;
    uint64_t epoch;
};

/* One submitted request on its way to JetStream (publisher queue) and back (done list). */
typedef struct cl_pub {
    struct cl_pub *next;
    void *cookie;
    uint32_t partition;
    uint64_t gen;      /* the partition's refusal generation when submitted */
    uint64_t deadline; /* submit time + publish_timeout_ms: the answer is due by then */
    enum px_cluster_status st;
    int dup; /* JetStream already had this message id */
    char why[256];
    size_t len;
    char msgid[200];
    char data[];
} cl_pub_t;

/* A result for this instance, from nats.c's subscription thread to the loop. */
typedef struct cl_res {
    struct cl_res *next;
    size_t len;
    int missing; /* a resubmitted idem whose answer is not stored (yet) */
    char msgid[200];
    char line[];
} cl_res_t;

/* Publisher thread: the requests of one partition going into one message. */
#define CL_CHUNK_MAX 64
typedef struct cl_chunk {
    cl_pub_t *it[CL_CHUNK_MAX];
    unsigned n;
    uint32_t partition;
} cl_chunk_t;

/* A {"control":"result"} lookup: queued for the lookup thread (look_q), then handed to the loop
 * (looked) with its outcome. */
typedef struct cl_look {
    struct cl_look *next;
    void *cookie;
    enum px_cluster_lookup st;
    char why[256]; /* PX_CL_LOOKUP_FAILED: what went wrong */
    char msgid[200];
    size_t len;
    char line[]; /* PX_CL_LOOKUP_FOUND: the stored answer line */
} cl_look_t;

typedef struct cl_publisher {
    struct px_cluster *cl;
    pthread_t th;
    pthread_mutex_t mu; /* covers head, tail, n */
    pthread_cond_t cv;
    cl_pub_t *head, *tail;
    uint32_t n;
    px_buf_t body; /* publisher thread: the message being stored */
} cl_publisher_t;

struct px_cluster {
    px_cluster_opts_t o;
    char instance[65];
    char *servers[PX_CLUSTER_MAX_SERVERS];
    px_cluster_cbs_t cbs;
    uv_loop_t *loop;
    uv_async_t async; /* wakes the loop for accepted/result lists and the release */

    /* Set once by the lease thread after connecting; read-only afterwards. */
    natsConnection *nc;
    jsCtx *js;
    jsCtx *ljs; /* the lease thread's: its requests time out well within a lease */
    kvStore *leases, *members;
    int64_t max_payload;
    _Atomic int ready; /* nc, js, stores set */

    _Atomic int stopping; /* threads exit */
    _Atomic int releasing;
    _Atomic int connected;
    _Atomic uint64_t reconnects; /* nats.c's callbacks: partition threads restart consumers */

    cl_publisher_t *pubs;
    /* Loop only: a partition's refusal generation. A refusal raises it once the loop has seen it,
     * so everything submitted before is refused too and a key's accepted requests stay a prefix
     * of what each connection sent. */
    uint64_t *gen;
    /* Publishers write, loop reads: the generation that was refused (all at or below are). */
    _Atomic uint64_t *refused_gen;

    /* Covers done, results, looked, release_done. A thread that makes them non-empty wakes the
     * loop; one that finds only another list non-empty may wake it again (harmless). */
    pthread_mutex_t done_mu;
    cl_pub_t *done, *done_tail;
    cl_res_t *results, *results_tail;
    cl_look_t *looked, *looked_tail;
    int release_done;
    void (*release_cb)(void *);
    void *release_arg;

    pthread_t look_th; /* result.c: {"control":"result"} lookups */
    int look_live;
    pthread_mutex_t look_mu; /* with look_cv: covers look_q, look_tail, look_n */
    pthread_cond_t look_cv;
    cl_look_t *look_q, *look_tail;
    uint32_t look_n;

    pthread_t lease_th;
    pthread_mutex_t lease_mu; /* with lease_cv: wakes the lease thread early (stop, release) */
    int nats_closed;          /* under lease_mu: nats.c's last callback for nc has run */
    pthread_cond_t lease_cv;
    natsSubscription *res_sub;       /* lease thread */
    unsigned ticks;                  /* lease thread: membership rounds so far */
    int left;                        /* lease thread: the member key is deleted (leaving) */
    _Atomic int lease_wake;          /* the watcher saw a lease freed: tick now */
    uint64_t expiry_tick;            /* lease thread: monotonic ns of a round when a key runs
                                      * out, before the next regular one (0: none) */
    int64_t server_offset_ns;        /* lease thread: the KV servers' clock minus ours */
    natsSubscription *old_subs[256]; /* replaced ones, destroyed at the stop */
    unsigned nold;
    int64_t res_since;           /* wall clock (ns) of the first answer subscription */
    _Atomic int64_t res_last_ts; /* nats.c's thread: the last answer's store time (ns) */
    _Atomic int res_broken;      /* follow the answers again (the lease thread does) */
    /* Monotonic ns of the first request stored since the last answer arrived (0: none):
     * publishers set it, the answers' subscription clears it, the lease thread follows the
     * answers anew when it is CL_ANSWER_STALL_NS old. */
    _Atomic uint64_t res_wait_since;
    _Atomic uint64_t awaiting; /* the loop: submitted requests without their answers yet */
    unsigned res_stalls;       /* lease thread: answers followed anew in a row for a stall */
    cl_part_t *parts;
    _Atomic uint64_t members_n, submitted, accepted, refused, results_in, duplicates_stored;
    _Atomic uint64_t stored_messages; /* request messages the publishers stored */
    _Atomic uint64_t targets;         /* lease thread: partitions this instance should hold */
    /* Set at the start: PAREXD_FAULT_INJECTION=kill_before_ack (the tests' crash between
     * storing a batch's answers and acknowledging it). */
    int kill_before_ack;
};

/* records.c: the requests of one stored message, or their answers. */
typedef struct cl_rec {
    char msgid[200];
    const char *data; /* inside the message */
    size_t len;
} cl_rec_t;
/* 0 or -1 (out of memory). */
int cl_rec_append(px_buf_t *b, const char *msgid, const char *data, size_t len);
/* 1 with r filled and *pos moved past it, 0 at the end, -1 on a malformed record. */
int cl_rec_next(const char **pos, const char *end, cl_rec_t *r);

/* Any thread: the loop takes what the lists hold (uv_async_send is the one libuv call other
 * threads may make). Inline, like cl_hex, so that every file may use them without calling
 * into another. */
static inline void cl_wake_loop(struct px_cluster *cl)
{
    uv_async_send(&cl->async);
}

/* Under done_mu: nothing waits for the loop (on_async takes the three lists together), so
 * whoever adds the first item wakes it. */
static inline int cl_loop_lists_empty(const struct px_cluster *cl)
{
    return !cl->done && !cl->results && !cl->looked;
}

/* Any thread: hands a chain of answers (head to last) to the loop. */
static inline void cl_post_results(struct px_cluster *cl, cl_res_t *head, cl_res_t *last)
{
    int was_empty;

    pthread_mutex_lock(&cl->done_mu);
    was_empty = cl_loop_lists_empty(cl);
    if (cl->results_tail)
        cl->results_tail->next = head;
    else
        cl->results = head;
    cl->results_tail = last;
    pthread_mutex_unlock(&cl->done_mu);
    if (was_empty)
        cl_wake_loop(cl);
}

/* Message ids as subject tokens: any byte, two hex digits each. */
static inline void cl_hex(char *out, const char *in, size_t max)
{
    static const char d[] = "0123456789abcdef";
    size_t i = 0;

    for (; *in && i + 3 <= max; in++) {
        out[i++] = d[(unsigned char)*in >> 4];
        out[i++] = d[(unsigned char)*in & 15];
    }
    out[i] = 0;
}

/* batch.c */
/* One fetched message: its stream sequence and the jobs its records became. */
typedef struct fmsg {
    natsMsg *m;
    const char *id; /* its message id: the first request's, or "i." + idem */
    uint64_t seq;
    size_t first, n;
    int answered; /* its answers are in the batch's answer message to its instance */
} cl_fmsg_t;

/* The jobs of one fetch, and their records (a job's msgid points into its record). Partition
 * thread only, except running, mu and cv (the runner's completion). */
typedef struct fbatch {
    natsMsgList list; /* as fetched: the jobs point into it */
    cl_fmsg_t *msgs;
    px_cluster_job_t *jobs;
    cl_rec_t *recs;
    size_t nmsgs, njobs, cap;
    px_buf_t body;
    px_cluster_fence_t fence;
    int reopen;         /* a delivery went missing after these: restart the consumer after them */
    pthread_mutex_t mu; /* covers running */
    pthread_cond_t cv;
    int running;
} cl_fbatch_t;

/* Partition thread. A batch is prepared from its fetched list, started (the runner works on it
 * while the thread fetches the next), then settled: waited for, and with answer set its answers
 * stored and its messages acknowledged. Settle returns 0, 1 when the consumer must be started
 * afresh (what was not acknowledged then runs again, in order), or -1 when the lease was lost on
 * the way; it leaves the batch empty for the next fetch. */
void cl_batch_init(cl_fbatch_t *fb);
int cl_batch_prepare(struct px_cluster *cl, cl_part_t *p, cl_fbatch_t *fb, uint64_t *cseq);
void cl_batch_start(struct px_cluster *cl, cl_fbatch_t *fb);
/* Partition thread: the runner has not finished the batch yet. */
int cl_batch_running(cl_fbatch_t *fb);
int cl_batch_settle(struct px_cluster *cl, cl_part_t *p, cl_fbatch_t *fb, jsCtx *ajs,
                    _Atomic unsigned *failed, int answer);
void cl_batch_free(cl_fbatch_t *fb);
/* answers.c, partition thread. The instance that accepted message m's requests, or NULL. */
const char *cl_reply_of(natsMsg *m);
/* Stores the answers of the batch's messages k, k+1, ... that m[k]'s instance accepted (marks
 * them answered). 0 or -1; the batch then waits with js_PublishAsyncComplete. */
int cl_send_answers(jsCtx *js, cl_part_t *p, cl_fbatch_t *fb, size_t k);
/* Are m's answers stored (m was stored at `stored`, Unix ns)? 1, 0, or -1 when NATS cannot say. */
int cl_answered(struct px_cluster *cl, cl_part_t *p, natsMsg *m, int64_t stored);
/* Drops the stored answers read back for the partition's consumer (a new consumer reads them
 * again when it meets a message an earlier one handed out). */
void cl_answers_forget(cl_part_t *p);

/* lease.c */
void *cl_lease_main(void *arg);
/* members.c, for the lease thread */
typedef struct cl_members {
    char **names;
    int n;
} cl_members_t;
/* Reads the member list. 0, or -1 when it could not be read (a timeout under load): then
 * nothing moves this round, since an empty or partial list would move partitions that should
 * stay. */
int cl_read_members(struct px_cluster *cl, cl_members_t *m);
/* After a round's renewals: reads when each member's key was written (this instance's own, put
 * at put_ns by the local clock, gives the server's clock offset) and sets a round for just after
 * a member that stopped renewing runs out. */
void cl_follow_expiry(struct px_cluster *cl, const cl_members_t *m, int64_t put_ns);
int64_t cl_real_ns(void); /* CLOCK_REALTIME in ns since the epoch */
void cl_free_members(cl_members_t *m);
/* Is this instance the partition's owner by rendezvous hashing over the members? */
int cl_is_target(struct px_cluster *cl, const cl_members_t *m, uint32_t part);
/* Sets cl->expiry_tick for just after a key written at written_ns (Unix ns) runs out, when that
 * comes before the next regular round. */
void cl_tick_at_expiry(struct px_cluster *cl, int64_t written_ns);
/* part.c */
void *cl_part_main(void *arg);
/* ingress.c */
int cl_ingress_start(struct px_cluster *cl, char *err, size_t errlen);
void cl_ingress_stop(struct px_cluster *cl);
void cl_on_result(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure);
void cl_post_done(struct px_cluster *cl, cl_pub_t *p);
/* result.c */
/* Publisher thread: posts the stored answer of an idem's message id to the results list,
 * asking again until `until` (monotonic ns) while none is stored; then posts it missing. */
void cl_find_answer(struct px_cluster *cl, const char *msgid, uint64_t until);
int cl_lookup_start(struct px_cluster *cl, char *err, size_t errlen);
void cl_lookup_stop(struct px_cluster *cl);
/* connect.c */
/* Lease thread: connects and makes sure the streams and buckets exist. 0 or -1 with err. */
int cl_connect(struct px_cluster *cl, char *err, size_t errlen);
uint64_t cl_lease_margin_ns(const struct px_cluster *cl);
int cl_follow_results(struct px_cluster *cl, char *err, size_t errlen);

#endif
