/* Taking queued work out of line: a client's cancel line, an operator's drop of a parked key,
 * and a vanished client's queue (cancel_on_disconnect). Each marks matching requests, never
 * removes them: their worker answers each failed/cancelled in its key's order, without a run. */
#include "daemon/exec/engine.h"

#include "common/log.h"

#include <errno.h>
#include <string.h>

struct cancel_match {
    void *origin;
    const char *id;
    size_t id_len;
};

static int cancel_matches(px_req_t *r, void *arg)
{
    struct cancel_match *m = arg;

    return r->origin == m->origin && r->id_len == m->id_len &&
           memcmp(px_req_id(r), m->id, m->id_len) == 0;
}

const char *px_engine_cancel(px_engine_t *e, void *origin, const char *id, size_t id_len)
{
    struct cancel_match m = {.origin = origin, .id = id, .id_len = id_len};
    int running;

    /* Marked, not removed: its worker answers it when its turn comes, so the answer goes out in
     * its key's order (after the key's earlier requests), and costs no run. */
    if (px_pool_cancel(e->pool, cancel_matches, &m, "cancelled by the client before it ran",
                       &running))
        return "queued";
    return running ? "running" : "not_found";
}

struct key_match {
    const char *key;
    size_t len;
};

static int key_matches(px_req_t *r, void *arg)
{
    struct key_match *m = arg;

    return r->key_len == m->len && memcmp(px_req_key(r), m->key, m->len) == 0;
}

int px_engine_drop(px_engine_t *e, const char *key, size_t len)
{
    struct key_match m = {.key = key, .len = len};
    int dropped, running;

    if (!px_keys_is_parked(&e->keys, key, len))
        return -ENOENT;
    dropped =
        px_pool_cancel(e->pool, key_matches, &m,
                       "dropped by an operator while its key was parked (parexctl drop)", &running);
    px_notice("quarantine: %d queued requests of parked key '%.*s' dropped by an operator", dropped,
              (int)len, key);
    return dropped;
}

static int origin_matches(px_req_t *r, void *arg)
{
    return r->origin == arg;
}

int px_engine_cancel_origin(px_engine_t *e, void *origin)
{
    int running;

    if (atomic_load(&e->draining))
        return 0; /* the drain decides what still runs */
    return px_pool_cancel(e->pool, origin_matches, origin,
                          "its client disconnected before it ran (cancel_on_disconnect)", &running);
}
