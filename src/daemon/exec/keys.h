/* Per-key rules: the cap on a key's requests in flight (max_queued_per_key) and quarantine
 * (a key that failed quarantine.after_failures times in a row is parked for quarantine.for_ms).
 * Every rule about a key lives here: admission, counting an outcome, parking and unparking,
 * the idle sweep and the parked list /stats publishes.
 *
 * Ownership: the table and its entries belong to the loop thread (see core/keytab.h). Workers
 * call only px_keys_outcome, on the entry of the request they run. The published parked list is
 * under parked_mu, for readers on any thread. */
#ifndef PX_KEYS_H
#define PX_KEYS_H

#include "daemon/core/keytab.h"
#include "daemon/core/request.h"
#include "daemon/core/stats.h"

#include <jansson.h>
#include <pthread.h>

/* Entries kept after their requests (parked, or idle with failures) at most; README documents
 * it. Each costs about 250 bytes plus its key. */
#define PX_KEYS_MAX_STATES 65536u

typedef struct px_keylist {
    px_key_t *head, *tail; /* oldest first */
    uint32_t n;
} px_keylist_t;

typedef struct px_keys {
    px_keytab_t tab;           /* loop */
    int on;                    /* max_queued_per_key or quarantine configured */
    uint32_t workers;          /* for the worker shown beside a parked key */
    uint64_t seed;             /* the engine's route_seed, for the same */
    uint32_t max_queued;       /* 0: no cap */
    uint32_t after;            /* quarantine.after_failures; 0: off */
    int64_t for_ms;            /* quarantine.for_ms */
    px_stats_t *stats;         /* keys_parked, key_parks (loop-written) */
    px_keylist_t idle;         /* loop: no request in flight, not parked, failures > 0 */
    px_keylist_t parked_list;  /* loop: parked, in park order */
    uint32_t max_states;       /* bound of idle.n + parked_list.n */
    uint64_t visits;           /* loop: entries publish and sweep looked at (tests check cost) */
    int dirty;                 /* loop: parks since the list was last published */
    uint64_t log_window_ns;    /* loop: start of the second park lines are counted in */
    uint32_t logged, unlogged; /* loop: park lines in that second; parks not logged since */
    pthread_mutex_t parked_mu;
    json_t *parked; /* under parked_mu: the parked keys as last published */
} px_keys_t;

enum px_key_verdict { PX_KEY_OK, PX_KEY_PARKED, PX_KEY_BUSY, PX_KEY_NOMEM };

int px_keys_init(px_keys_t *ks, uint32_t workers, uint32_t max_queued, uint32_t after,
                 int64_t for_ms, px_stats_t *stats);
void px_keys_free(px_keys_t *ks);

/* Loop thread, admission: the key's entry in *out (NULL when keys are off) and whether a new
 * request of it may be queued now. */
enum px_key_verdict px_keys_admit(px_keys_t *ks, const char *key, size_t len, uint64_t now,
                                  px_key_t **out);
/* Loop thread: a request of k was queued at now. */
void px_keys_accepted(px_keys_t *ks, px_key_t *k, uint64_t now);
/* Loop thread: the entry from px_keys_admit was not used (the request was refused). */
void px_keys_unused(px_keys_t *ks, px_key_t *k, uint64_t now);
/* Loop thread: the request is answered; release its hold on its key's entry, and log and
 * publish the park its failure caused, if any. */
void px_keys_done(px_keys_t *ks, px_req_t *r);
/* Worker thread, after running a request of k: counts the outcome; returns the number of
 * consecutive failures when this one parked the key, else 0. */
int px_keys_outcome(px_key_t *k, int ok, uint64_t end_ns, uint32_t after, uint64_t for_ns);
/* Milliseconds until k is admitted again (0 when not parked). */
uint64_t px_keys_parked_left_ms(px_key_t *k, uint64_t now);

/* Loop thread: ends expired parks, forgets failures idle for a minute, and republishes when the
 * parked list changed. O(parked + expired). */
void px_keys_sweep(px_keys_t *ks);
/* Loop thread: republishes the parked list (keys and error codes) and the keys_parked gauge.
 * O(parked). */
void px_keys_publish(px_keys_t *ks);
/* Any thread: a copy of the published list (for /stats: error codes, never messages). */
json_t *px_keys_parked(px_keys_t *ks);
/* Loop thread: the parked list now, with each key's last error message (the control line). */
json_t *px_keys_parked_now(px_keys_t *ks);
/* Loop thread: is key parked now? */
int px_keys_is_parked(px_keys_t *ks, const char *key, size_t len);
/* Loop thread: admits a parked key again at once; 0, or -ENOENT when it is not parked. */
int px_keys_unpark(px_keys_t *ks, const char *key, size_t len);

#endif
