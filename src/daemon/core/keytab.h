/* Per-key state for hot and poison keys: how many requests of a key are in flight (the
 * admission cap) and whether it is parked (quarantine). One entry per key that has requests in
 * flight or is parked; entries go when neither is true, so memory follows the active keys.
 *
 * Ownership: the table and every field marked "loop" belong to the loop thread. Workers reach an
 * entry only through a request that holds it (in_flight > 0 keeps it alive) and touch only the
 * atomics. */
#ifndef PX_KEYTAB_H
#define PX_KEYTAB_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

typedef struct px_key {
    struct px_key *next;              /* loop: hash chain */
    uint64_t hash;                    /* loop */
    uint32_t in_flight;               /* loop: queued or running requests of the key */
    uint32_t parks;                   /* loop: times parked */
    uint64_t last_ns;                 /* loop: its last request accepted, or it went idle */
    char last_error[160];             /* loop: why it was parked (whole UTF-8 characters) */
    char last_code[32];               /* loop: the error code of that answer */
    struct px_key *lprev, *lnext;     /* loop: on the idle or the parked list of exec/keys */
    uint8_t list;                     /* loop: which of those lists (0: none) */
    _Atomic uint32_t failures;        /* consecutive failures; written by the worker running it */
    _Atomic uint64_t parked_until_ns; /* 0: not parked; set by a worker (park) or the loop */
    uint16_t len;
    char key[];
} px_key_t;

typedef struct px_keytab {
    px_key_t **buckets;
    size_t nbuckets, count;
} px_keytab_t;

int px_keytab_init(px_keytab_t *t);
void px_keytab_free(px_keytab_t *t);
/* Finds the entry of key, creating it when create is set. NULL when absent (or out of memory). */
px_key_t *px_keytab_get(px_keytab_t *t, const char *key, size_t len, int create);
/* Drops the entry if nothing holds it any more (nothing in flight, not parked, no failures). */
void px_keytab_release(px_keytab_t *t, px_key_t *k, uint64_t now_ns);
/* Calls fn for every entry; fn may not add or remove entries. */
void px_keytab_each(px_keytab_t *t, void (*fn)(px_key_t *k, void *arg), void *arg);

static inline int px_key_parked(px_key_t *k, uint64_t now_ns)
{
    uint64_t until = atomic_load_explicit(&k->parked_until_ns, memory_order_acquire);
    return until != 0 && now_ns < until;
}

#endif
