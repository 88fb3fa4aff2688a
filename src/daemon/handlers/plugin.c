/* The plugin handler: a shared object behind the versioned ABI of <parex/plugin.h>, loaded with
 * dlopen once per definition. JSON crosses the boundary as text, so the plugin and the daemon
 * never share a jansson. ABI 1 and 2 plugins both load: the fields ABI 2 appended are read only
 * from a plugin that says 2 (an ABI 1 object's struct ends before them). */
#include "daemon/handlers/handlers.h"

#include <parex/plugin.h>

#include "common/clock.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct plugin_ctx {
    void *dl;
    const parex_plugin_t *p;
    void *state;
    int with_ctx; /* ABI 2 with process_ctx: called instead of process */
} plugin_ctx_t;

static void plugin_destroy(px_handler_t *h)
{
    plugin_ctx_t *x = h->ctx;

    if (!x)
        return;
    if (x->p && x->state && x->p->fini)
        x->p->fini(x->state);
    /* The object stays mapped: a thread abandoned on stall may still be inside it. */
    free(x);
}

static int plugin_run(const px_handler_t *h, const px_req_t *req, uint64_t timeout_ns,
                      px_result_t *res)
{
    plugin_ctx_t *x = h->ctx;
    char *out = NULL, *perr = NULL, *payload, *id = NULL;
    size_t out_len = 0;
    uint64_t t0 = px_now_ns(), took;
    parex_plugin_ctx_t pc;
    int rc;

    /* The ABI promises NUL-terminated text; the stored payload and id are not. */
    if (!(payload = strndup(px_req_payload(req), req->payload_len)) ||
        (x->with_ctx && !(id = strndup(px_req_id(req), req->id_len)))) {
        free(payload);
        return px_fail(res, "handler_error", "out of memory copying the payload");
    }
    if (x->with_ctx) {
        /* Single-node mode runs each request once: its one delivery, under no lease. */
        pc = (parex_plugin_ctx_t){.delivery = req->delivery ? req->delivery : 1,
                                  .epoch = req->epoch,
                                  .id = id,
                                  .id_len = req->id_len};
        rc = x->p->process_ctx(x->state, &pc, px_req_key(req), req->key_len, payload,
                               req->payload_len, &out, &out_len, &perr);
    } else {
        rc = x->p->process(x->state, px_req_key(req), req->key_len, payload, req->payload_len, &out,
                           &out_len, &perr);
    }
    free(payload);
    free(id);
    took = px_now_ns() - t0;
    /* A call into a plugin cannot be cut off: past its time it has run, but its result is
     * discarded and the request answered as any handler past its timeout (the caller turns it
     * into deadline_exceeded when the request's deadline is what ran out). */
    if (timeout_ns && took > timeout_ns) {
        rc = px_fail(res, "timeout",
                     "the plugin ran %.0f ms, past its %.0f ms limit (timeout_ms or what was left "
                     "of deadline_ms); a plugin call cannot be interrupted, so its result was "
                     "discarded",
                     (double)took / 1e6, (double)timeout_ns / 1e6);
    } else if (rc != 0) {
        px_fail(res, "handler_error", "%s", perr ? perr : "the plugin failed without a message");
    } else if (!out || !(res->value = json_loadb(out, out_len, JSON_DECODE_ANY, NULL))) {
        rc = px_fail(res, "handler_error", "the plugin returned a result that is not JSON text");
    }
    if (out)
        x->p->free_buf(x->state, out);
    if (perr)
        x->p->free_buf(x->state, perr);
    return rc ? -1 : 0;
}

int px_plugin_make(px_handler_t *h, const json_t *def, char *err, size_t errlen)
{
    static const char *const keys[] = {
        "type", "path", "config", "timeout_ms", "retry", "max_concurrency", "rate_limit", NULL};
    const char *path = json_string_value(json_object_get(def, "path"));
    json_t *cfg = json_object_get(def, "config");
    parex_plugin_entry_fn entry;
    char where[128], *cfg_text, *perr = NULL;
    plugin_ctx_t *x;
    int rc;

    snprintf(where, sizeof where, "handlers.%s", h->name);
    if (px_spec_only(def, where, keys, err, errlen))
        return -1;
    if (!path || !*path) {
        snprintf(err, errlen, "key '%s.path': expected the path of a plugin .so", where);
        return -1;
    }
    if (!(x = calloc(1, sizeof *x))) {
        snprintf(err, errlen, "out of memory building handler '%s'", h->name);
        return -1;
    }
    h->ctx = x;
    h->destroy = plugin_destroy;
    h->run = plugin_run;
    if (!(x->dl = dlopen(path, RTLD_NOW | RTLD_LOCAL))) {
        snprintf(err, errlen, "key '%s.path': cannot load plugin: %s", where, dlerror());
        return -1;
    }
    *(void **)&entry = dlsym(x->dl, PAREX_PLUGIN_ENTRY_SYMBOL);
    if (!entry) {
        snprintf(err, errlen,
                 "key '%s.path': %s does not export %s(); build it against "
                 "<parex/plugin.h>",
                 where, path, PAREX_PLUGIN_ENTRY_SYMBOL);
        return -1;
    }
    x->p = entry();
    if (!x->p || x->p->abi_version < PAREX_PLUGIN_ABI_MIN_VERSION ||
        x->p->abi_version > PAREX_PLUGIN_ABI_VERSION) {
        snprintf(err, errlen,
                 "key '%s.path': %s speaks plugin ABI %u, parexd speaks %u to %u; "
                 "rebuild it against this parexd's <parex/plugin.h>",
                 where, path, x->p ? x->p->abi_version : 0, PAREX_PLUGIN_ABI_MIN_VERSION,
                 PAREX_PLUGIN_ABI_VERSION);
        x->p = NULL;
        return -1;
    }
    x->with_ctx = x->p->abi_version >= 2 && x->p->process_ctx;
    if (!x->p->init || !(x->p->process || x->with_ctx) || !x->p->free_buf) {
        snprintf(err, errlen,
                 "key '%s.path': %s leaves init, free_buf or both process and process_ctx (ABI "
                 "2) unset",
                 where, path);
        x->p = NULL;
        return -1;
    }
    cfg_text = json_dumps(cfg ? cfg : json_null(), JSON_COMPACT | JSON_ENCODE_ANY);
    rc = cfg_text ? x->p->init(cfg_text, strlen(cfg_text), &x->state, &perr) : -1;
    free(cfg_text);
    if (rc) {
        snprintf(err, errlen, "key '%s.config': the plugin refused it: %s", where,
                 perr ? perr : "no reason given");
        if (perr)
            x->p->free_buf(NULL, perr);
        x->p = NULL;
        return -1;
    }
    return 0;
}
