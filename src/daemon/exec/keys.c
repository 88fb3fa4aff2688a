/* Per-key admission and quarantine. The loop owns the table; a worker touches an entry only
 * through the request it runs (which keeps the entry alive) and only its atomics.
 *
 * Cost: besides the hash table, entries that outlive their requests sit on one of two lists in
 * the order they got there: parked keys (park order) and idle keys that still remember failures
 * (idle order). A park, an unpark and an expiry touch one entry; publishing the parked list and
 * the sweep walk the parked list and the expired head of the idle list, never the whole table.
 * At most PX_KEYS_MAX_STATES entries sit on those lists; past that the oldest idle one forgets
 * its failures, then the parked one closest to its end is let go early. */
#include "daemon/exec/keys.h"

#include "common/clock.h"
#include "common/log.h"
#include "common/route.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

/* A key idle this long, with nothing in flight and not parked, forgets its failures. */
#define KEY_IDLE_NS (60ull * 1000000000ull)

enum { L_NONE, L_IDLE, L_PARKED };

/* Park lines logged per second at most. */
#define PARK_LOGS 10

/* Parked keys up to which a park republishes the list at once. */
#define PUBLISH_NOW 64

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
    ks->max_states = PX_KEYS_MAX_STATES;
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

static px_keylist_t *list_of(px_keys_t *ks, int which)
{
    return which == L_IDLE ? &ks->idle : &ks->parked_list;
}

static void unlink_key(px_keys_t *ks, px_key_t *k)
{
    px_keylist_t *l;

    if (k->list == L_NONE)
        return;
    l = list_of(ks, k->list);
    if (k->lprev)
        k->lprev->lnext = k->lnext;
    else
        l->head = k->lnext;
    if (k->lnext)
        k->lnext->lprev = k->lprev;
    else
        l->tail = k->lprev;
    k->lprev = k->lnext = NULL;
    k->list = L_NONE;
    l->n--;
}

static void append(px_keys_t *ks, px_key_t *k, int which)
{
    px_keylist_t *l = list_of(ks, which);

    unlink_key(ks, k);
    k->list = (uint8_t)which;
    k->lprev = l->tail;
    k->lnext = NULL;
    if (l->tail)
        l->tail->lnext = k;
    else
        l->head = k;
    l->tail = k;
    l->n++;
}

/* Where an entry belongs now that something changed; frees it when nothing holds it. Returns
 * nothing: k may be gone. */
static void settle_key(px_keys_t *ks, px_key_t *k, uint64_t now)
{
    if (px_key_parked(k, now)) {
        if (k->list != L_PARKED)
            append(ks, k, L_PARKED); /* parked even while requests of it are still queued */
    } else if (k->in_flight > 0) {
        unlink_key(ks, k); /* its requests keep it (bounded by the queues) */
    } else if (atomic_load(&k->failures) > 0) {
        if (k->list != L_IDLE) {
            k->last_ns = now; /* idle from now: the list stays in order of last_ns */
            append(ks, k, L_IDLE);
        }
    } else {
        unlink_key(ks, k);
        px_keytab_release(&ks->tab, k, now);
    }
}

/* Lets go of the oldest remembered state while the lists are over their bound. */
static int enforce_bound(px_keys_t *ks, uint64_t now)
{
    int unparked = 0;

    while (ks->idle.n + ks->parked_list.n > ks->max_states) {
        px_key_t *k = ks->idle.head ? ks->idle.head : ks->parked_list.head;
        if (k->list == L_PARKED) {
            atomic_store(&k->parked_until_ns, 0);
            unparked++;
        }
        atomic_store(&k->failures, 0);
        settle_key(ks, k, now);
    }
    if (unparked)
        px_warn("quarantine: more than %u keys parked or failing; %d parked key(s) closest to "
                "their end were let go early",
                ks->max_states, unparked);
    return unparked;
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

void px_keys_accepted(px_keys_t *ks, px_key_t *k, uint64_t now)
{
    if (k) {
        k->in_flight++;
        k->last_ns = now;
        if (k->list == L_IDLE)
            unlink_key(ks, k);
    }
}

void px_keys_unused(px_keys_t *ks, px_key_t *k, uint64_t now)
{
    if (k && !k->in_flight)
        settle_key(ks, k, now);
}

uint64_t px_keys_parked_left_ms(px_key_t *k, uint64_t now)
{
    uint64_t until = atomic_load(&k->parked_until_ns);

    return until > now ? (until - now) / PX_MS : 0;
}

/* Copies at most cap - 1 bytes of s, never ending inside a UTF-8 character: a cut character
 * would make the text invalid JSON and the key vanish from the published list. */
static void copy_utf8(char *dst, size_t cap, const char *s)
{
    size_t n = strlen(s);

    if (n >= cap) {
        n = cap - 1;
        while (n > 0 && ((unsigned char)s[n] & 0xc0) == 0x80)
            n--;
    }
    memcpy(dst, s, n);
    dst[n] = '\0';
}

void px_keys_done(px_keys_t *ks, px_req_t *r)
{
    px_key_t *k = r->kent;
    uint64_t now = px_now_ns();

    if (!k)
        return;
    r->kent = NULL;
    k->in_flight--;
    if (r->parked) {
        /* This failure parked the key: keep its reason, from the answer the worker built. */
        json_t *o = json_loadb(r->out.data, r->out.len, 0, NULL);
        json_t *e = json_object_get(o, "error");
        const char *msg = json_string_value(json_object_get(e, "message"));
        const char *code = json_string_value(json_object_get(e, "code"));
        copy_utf8(k->last_error, sizeof k->last_error, msg ? msg : "(no message)");
        copy_utf8(k->last_code, sizeof k->last_code, code ? code : "other");
        json_decref(o);
        k->parks++;
        px_stats_add(&ks->stats->c.key_parks, 1);
        /* One line per park, up to PARK_LOGS a second: a client failing on purpose with a new
         * key each time must not flood the journal. The sweep counts the rest. */
        if (now - ks->log_window_ns > 1000000000ull) {
            ks->log_window_ns = now;
            ks->logged = 0;
        }
        if (ks->logged++ < PARK_LOGS)
            px_warn("quarantine: key '%.*s' parked for %lld ms after %d consecutive failures; "
                    "last error: %s",
                    (int)k->len, k->key, (long long)ks->for_ms, r->parked, k->last_error);
        else
            ks->unlogged++;
    }
    settle_key(ks, k, now); /* k may be gone from here on */
    enforce_bound(ks, now);
    if (r->parked) {
        /* A storm of parks must not rebuild a long list once per park: past PUBLISH_NOW keys
         * the list is rebuilt by the next sweep (every supervise_interval_ms), the gauge now. */
        if (ks->parked_list.n <= PUBLISH_NOW) {
            px_keys_publish(ks);
        } else {
            ks->dirty = 1;
            px_stats_begin(ks->stats);
            px_stats_add(&ks->stats->c.keys_parked,
                         (int64_t)ks->parked_list.n -
                             (int64_t)atomic_load(&ks->stats->c.keys_parked));
            px_stats_end(ks->stats);
        }
    }
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

/* One entry of the parked list as published. /stats is readable by whoever reaches the metrics
 * endpoint, so it carries the error code only; the control line (which needs the auth token)
 * also gets the message. */
static json_t *parked_entry(px_keys_t *ks, px_key_t *k, uint64_t now, int with_message)
{
    uint64_t until = atomic_load(&k->parked_until_ns);
    json_t *key = json_stringn(k->key, k->len);

    return json_pack("{so sI sI ss sI sI}", "key", key ? key : json_string("?"), "worker",
                     (json_int_t)px_route_seeded(k->key, k->len, ks->workers, ks->seed), "failures",
                     (json_int_t)ks->after, "last_error",
                     with_message ? k->last_error : k->last_code, "time_left_ms",
                     (json_int_t)(until > now ? (until - now) / PX_MS : 0), "parks",
                     (json_int_t)k->parks);
}

static json_t *parked_json(px_keys_t *ks, uint64_t now, int with_message)
{
    json_t *list = json_array();

    for (px_key_t *k = ks->parked_list.head; k; k = k->lnext, ks->visits++)
        if (px_key_parked(k, now))
            json_array_append_new(list, parked_entry(ks, k, now, with_message));
    return list;
}

void px_keys_publish(px_keys_t *ks)
{
    json_t *list, *old;
    uint64_t now = px_now_ns();

    if (!ks->on)
        return;
    list = parked_json(ks, now, 0);
    ks->dirty = 0;
    pthread_mutex_lock(&ks->parked_mu);
    old = ks->parked;
    ks->parked = list;
    pthread_mutex_unlock(&ks->parked_mu);
    json_decref(old);
    px_stats_begin(ks->stats);
    px_stats_add(&ks->stats->c.keys_parked,
                 (int64_t)json_array_size(list) - (int64_t)atomic_load(&ks->stats->c.keys_parked));
    px_stats_end(ks->stats);
}

void px_keys_sweep(px_keys_t *ks)
{
    uint64_t now = px_now_ns();
    int changed = 0;
    px_key_t *k, *next;

    if (!ks->on)
        return;
    for (k = ks->parked_list.head; k; k = next) {
        uint64_t until = atomic_load(&k->parked_until_ns);
        next = k->lnext;
        ks->visits++;
        if (px_key_parked(k, now))
            continue;
        /* Expired: admitted again, unless a worker parked it anew since we read it. */
        if (until && !atomic_compare_exchange_strong(&k->parked_until_ns, &until, 0))
            continue;
        unlink_key(ks, k);
        settle_key(ks, k, now);
        changed = 1;
    }
    /* Idle for a minute with nothing in flight and not parked: its run of failures is
     * forgotten and the entry goes (memory follows the active keys). A client retrying one
     * request at a time is idle only between its tries, so its failures still add up. */
    while ((k = ks->idle.head) && now - k->last_ns > KEY_IDLE_NS) {
        atomic_store(&k->failures, 0);
        settle_key(ks, k, now);
    }
    if (ks->unlogged) {
        px_warn("quarantine: %u more keys were parked, not logged one by one (over %d a second; "
                "parexctl parked lists them)",
                ks->unlogged, PARK_LOGS);
        ks->unlogged = 0;
    }
    if (changed || ks->dirty || atomic_load(&ks->stats->c.keys_parked) != ks->parked_list.n)
        px_keys_publish(ks);
}

json_t *px_keys_parked(px_keys_t *ks)
{
    json_t *copy;

    pthread_mutex_lock(&ks->parked_mu);
    copy = ks->parked ? json_deep_copy(ks->parked) : json_array();
    pthread_mutex_unlock(&ks->parked_mu);
    return copy;
}

json_t *px_keys_parked_now(px_keys_t *ks)
{
    px_keys_sweep(ks);
    return parked_json(ks, px_now_ns(), 1);
}

/* The entry of key when it is parked now, else NULL. */
static px_key_t *find_parked(px_keys_t *ks, const char *key, size_t len)
{
    px_key_t *k = ks->on ? px_keytab_get(&ks->tab, key, len, 0) : NULL;

    return k && px_key_parked(k, px_now_ns()) ? k : NULL;
}

int px_keys_is_parked(px_keys_t *ks, const char *key, size_t len)
{
    return find_parked(ks, key, len) != NULL;
}

int px_keys_unpark(px_keys_t *ks, const char *key, size_t len)
{
    px_key_t *k = find_parked(ks, key, len);

    if (!k)
        return -ENOENT;
    atomic_store(&k->parked_until_ns, 0);
    atomic_store(&k->failures, 0);
    px_notice("quarantine: key '%.*s' unparked by an operator", (int)len, key);
    settle_key(ks, k, px_now_ns());
    px_keys_publish(ks);
    return 0;
}
