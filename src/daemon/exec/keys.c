/* Per-key admission and quarantine. The loop owns the table; a worker touches an entry only
 * through the request it runs (which keeps the entry alive) and only its atomics. */
#include "daemon/exec/keys.h"

#include "common/clock.h"
#include "common/log.h"
#include "common/route.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

/* A key idle this long, with nothing in flight and not parked, forgets its failures. */
#define KEY_IDLE_NS (60ull * 1000000000ull)

int px_keys_init(px_keys_t *ks, uint32_t workers, uint32_t max_queued, uint32_t after,
                 int64_t for_ms, px_stats_t *stats)
{
    memset(ks, 0, sizeof *ks);
    ks->on = max_queued > 0 || after > 0;
    ks->workers = workers;
    ks->max_queued = max_queued;
    ks->after = after;
    ks->for_ms = for_ms;
    ks->stats = stats;
    if (px_keytab_init(&ks->tab))
        return -ENOMEM;
    pthread_mutex_init(&ks->parked_mu, NULL);
    return 0;
}

void px_keys_free(px_keys_t *ks)
{
    pthread_mutex_destroy(&ks->parked_mu);
    json_decref(ks->parked);
    ks->parked = NULL;
    px_keytab_free(&ks->tab);
}

enum px_key_verdict px_keys_admit(px_keys_t *ks, const char *key, size_t len, uint64_t now,
                                  px_key_t **out)
{
    px_key_t *k;

    *out = NULL;
    if (!ks->on)
        return PX_KEY_OK;
    if (!(k = px_keytab_get(&ks->tab, key, len, 1)))
        return PX_KEY_NOMEM;
    *out = k;
    if (px_key_parked(k, now))
        return PX_KEY_PARKED;
    if (ks->max_queued && k->in_flight >= ks->max_queued)
        return PX_KEY_BUSY;
    return PX_KEY_OK;
}

void px_keys_accepted(px_key_t *k, uint64_t now)
{
    if (k) {
        k->in_flight++;
        k->last_ns = now;
    }
}

void px_keys_unused(px_keys_t *ks, px_key_t *k, uint64_t now)
{
    if (k && !k->in_flight)
        px_keytab_release(&ks->tab, k, now);
}

uint64_t px_keys_parked_left_ms(px_key_t *k, uint64_t now)
{
    uint64_t until = atomic_load(&k->parked_until_ns);

    return until > now ? (until - now) / PX_MS : 0;
}

void px_keys_done(px_keys_t *ks, px_req_t *r)
{
    px_key_t *k = r->kent;

    if (!k)
        return;
    r->kent = NULL;
    k->in_flight--;
    if (r->parked) {
        /* This failure parked the key: keep its reason, from the answer the worker built. */
        json_t *o = json_loadb(r->out.data, r->out.len, 0, NULL);
        const char *msg =
            json_string_value(json_object_get(json_object_get(o, "error"), "message"));
        snprintf(k->last_error, sizeof k->last_error, "%s", msg ? msg : "(no message)");
        json_decref(o);
        k->parks++;
        px_stats_add(&ks->stats->c.key_parks, 1);
        px_stats_add(&ks->stats->c.keys_parked, 1);
        px_warn("quarantine: key '%.*s' parked for %lld ms after %d consecutive failures; last "
                "error: %s",
                (int)k->len, k->key, (long long)ks->for_ms, r->parked, k->last_error);
        px_keys_publish(ks);
    }
    px_keytab_release(&ks->tab, k, px_now_ns());
}

int px_keys_outcome(px_key_t *k, int ok, uint64_t end_ns, uint32_t after, uint64_t for_ns)
{
    uint32_t n;

    if (!after)
        return 0;
    /* Only the worker running the key's request writes these, so per key they change one
     * request at a time. */
    if (ok) {
        atomic_store_explicit(&k->failures, 0, memory_order_relaxed);
        return 0;
    }
    n = atomic_fetch_add_explicit(&k->failures, 1, memory_order_relaxed) + 1;
    if (n < after)
        return 0;
    atomic_store_explicit(&k->failures, 0, memory_order_relaxed);
    atomic_store_explicit(&k->parked_until_ns, end_ns + for_ns, memory_order_release);
    return (int)n;
}

struct sweep {
    px_keys_t *ks;
    json_t *list;
    uint64_t now, parked;
    px_key_t *idle[64];
    size_t nidle;
};

static void sweep_one(px_key_t *k, void *arg)
{
    struct sweep *sw = arg;
    uint64_t until = atomic_load(&k->parked_until_ns);

    if (px_key_parked(k, sw->now)) {
        json_t *key = json_stringn(k->key, k->len);
        sw->parked++;
        json_array_append_new(
            sw->list,
            json_pack("{so sI sI ss sI sI}", "key", key ? key : json_string("?"), "worker",
                      (json_int_t)px_route(k->key, k->len, sw->ks->workers), "failures",
                      (json_int_t)sw->ks->after, "last_error", k->last_error, "time_left_ms",
                      (json_int_t)((until - sw->now) / PX_MS), "parks", (json_int_t)k->parks));
    } else if (until) {
        /* Expired: admitted again, unless a worker parked it anew since we read it. */
        atomic_compare_exchange_strong(&k->parked_until_ns, &until, 0);
    }
    /* Idle for a minute with nothing in flight and not parked: its run of failures is
     * forgotten and the entry goes (memory follows the active keys). A client retrying one
     * request at a time is idle only between its tries, so its failures still add up. */
    if (k->in_flight == 0 && !px_key_parked(k, sw->now) && sw->now - k->last_ns > KEY_IDLE_NS &&
        sw->nidle < 64)
        sw->idle[sw->nidle++] = k;
}

static void publish(px_keys_t *ks, json_t *list, uint64_t parked)
{
    json_t *old;

    pthread_mutex_lock(&ks->parked_mu);
    old = ks->parked;
    ks->parked = list;
    pthread_mutex_unlock(&ks->parked_mu);
    json_decref(old);
    px_stats_begin(ks->stats);
    px_stats_add(&ks->stats->c.keys_parked,
                 (int64_t)parked - (int64_t)atomic_load(&ks->stats->c.keys_parked));
    px_stats_end(ks->stats);
}

static void walk(px_keys_t *ks, int release_idle)
{
    struct sweep sw = {.ks = ks, .now = px_now_ns()};

    if (!ks->on)
        return;
    sw.list = json_array();
    px_keytab_each(&ks->tab, sweep_one, &sw);
    for (size_t i = 0; release_idle && i < sw.nidle; i++) {
        atomic_store(&sw.idle[i]->failures, 0);
        px_keytab_release(&ks->tab, sw.idle[i], sw.now);
    }
    publish(ks, sw.list, sw.parked);
}

void px_keys_publish(px_keys_t *ks)
{
    walk(ks, 0);
}

void px_keys_sweep(px_keys_t *ks)
{
    walk(ks, 1);
}

json_t *px_keys_parked(px_keys_t *ks)
{
    json_t *copy;

    pthread_mutex_lock(&ks->parked_mu);
    copy = ks->parked ? json_deep_copy(ks->parked) : json_array();
    pthread_mutex_unlock(&ks->parked_mu);
    return copy;
}

int px_keys_is_parked(px_keys_t *ks, const char *key, size_t len)
{
    px_key_t *k = ks->on ? px_keytab_get(&ks->tab, key, len, 0) : NULL;

    return k && px_key_parked(k, px_now_ns());
}

int px_keys_unpark(px_keys_t *ks, const char *key, size_t len)
{
    if (!px_keys_is_parked(ks, key, len))
        return -ENOENT;
    px_key_t *k = px_keytab_get(&ks->tab, key, len, 0);
    atomic_store(&k->parked_until_ns, 0);
    atomic_store(&k->failures, 0);
    px_notice("quarantine: key '%.*s' unparked by an operator", (int)len, key);
    px_keys_sweep(ks);
    return 0;
}
