/* Chained hash table keyed by XXH3 of the key bytes (the hash routing already computes), grown
 * by doubling so lookups stay O(1) as the number of active keys changes. */
#include "daemon/core/keytab.h"

#include "common/route.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

int px_keytab_init(px_keytab_t *t)
{
    t->nbuckets = 1024;
    t->count = 0;
    t->buckets = calloc(t->nbuckets, sizeof *t->buckets);
    return t->buckets ? 0 : -ENOMEM;
}

void px_keytab_free(px_keytab_t *t)
{
    for (size_t i = 0; i < t->nbuckets; i++)
        while (t->buckets[i]) {
            px_key_t *k = t->buckets[i];
            t->buckets[i] = k->next;
            free(k);
        }
    free(t->buckets);
    t->buckets = NULL;
}

static void grow(px_keytab_t *t)
{
    size_t n = t->nbuckets * 2;
    px_key_t **b = calloc(n, sizeof *b);

    if (!b)
        return; /* longer chains, still correct */
    for (size_t i = 0; i < t->nbuckets; i++)
        while (t->buckets[i]) {
            px_key_t *k = t->buckets[i];
            t->buckets[i] = k->next;
            k->next = b[k->hash & (n - 1)];
            b[k->hash & (n - 1)] = k;
        }
    free(t->buckets);
    t->buckets = b;
    t->nbuckets = n;
}

px_key_t *px_keytab_get(px_keytab_t *t, const char *key, size_t len, int create)
{
    uint64_t h = px_route_hash(key, len);
    px_key_t *k;

    for (k = t->buckets[h & (t->nbuckets - 1)]; k; k = k->next)
        if (k->hash == h && k->len == len && memcmp(k->key, key, len) == 0)
            return k;
    if (!create || !(k = calloc(1, sizeof *k + len)))
        return NULL;
    k->hash = h;
    k->len = (uint16_t)len;
    memcpy(k->key, key, len);
    if (t->count >= t->nbuckets)
        grow(t);
    k->next = t->buckets[h & (t->nbuckets - 1)];
    t->buckets[h & (t->nbuckets - 1)] = k;
    t->count++;
    return k;
}

void px_keytab_release(px_keytab_t *t, px_key_t *k, uint64_t now_ns)
{
    px_key_t **p;

    if (k->in_flight > 0 || px_key_parked(k, now_ns) || atomic_load(&k->failures) > 0)
        return;
    for (p = &t->buckets[k->hash & (t->nbuckets - 1)]; *p; p = &(*p)->next)
        if (*p == k) {
            *p = k->next;
            t->count--;
            free(k);
            return;
        }
}

void px_keytab_each(px_keytab_t *t, void (*fn)(px_key_t *k, void *arg), void *arg)
{
    for (size_t i = 0; i < t->nbuckets; i++)
        for (px_key_t *k = t->buckets[i]; k; k = k->next)
            fn(k, arg);
}
