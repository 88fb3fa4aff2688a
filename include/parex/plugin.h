/* parexd plugin ABI, version 2 (parexd loads versions 1 and 2).
 *
 * A plugin is a shared object exporting one symbol, PAREX_PLUGIN_ENTRY_SYMBOL, a function that
 * returns a pointer to a static parex_plugin_t. Everything crosses the boundary as JSON text, so
 * a plugin needs no JSON library of parexd's and no parexd header but this one.
 *
 * Version 2 appends process_ctx, which is also given the request's context (its id, and in
 * cluster mode the delivery count and the epoch). parexd reads it only from a plugin that says
 * abi_version 2, so a version 1 plugin, built against the older, shorter struct, loads unchanged.
 *
 * Threads: init and fini run once, on the daemon's main thread. process runs on worker threads,
 * possibly several at once for different keys (never two at once for the same key, unless
 * on_stall=replace abandoned a stuck call): guard shared state in your own state object. */
#ifndef PAREX_PLUGIN_H
#define PAREX_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PAREX_PLUGIN_ABI_VERSION 2u
/* The oldest version parexd still loads. */
#define PAREX_PLUGIN_ABI_MIN_VERSION 1u
#define PAREX_PLUGIN_ENTRY_SYMBOL "parex_plugin_entry"

/* What parexd knows of a request besides its key and payload (ABI 2). Valid during the call. */
typedef struct parex_plugin_ctx {
    /* Cluster mode: 1 on the first delivery of the request; 2 or more when it was handed out
     * before (its earlier holder crashed or lost its lease), so it may have run already.
     * Single-node mode: 1. */
    uint64_t delivery;
    /* Cluster mode: the lease epoch of the partition the request runs under, a fencing token
     * that only grows (a side effect stamped with it can refuse an older holder's). Single-node
     * mode: 0. */
    uint64_t epoch;
    /* The request's id as JSON text (the client's, or the number parexd gave it), NUL-terminated
     * too; id_len excludes the NUL. */
    const char *id;
    size_t id_len;
} parex_plugin_ctx_t;

typedef struct parex_plugin {
    /* PAREX_PLUGIN_ABI_VERSION (2), or 1 for a plugin without process_ctx; parexd refuses any
     * other value. */
    uint32_t abi_version;
    const char *name;
    /* config_json: the handler's "config" value as JSON text ("null" when absent). Returns 0
     * and sets *state, or non-zero and sets *err (released with free_buf). */
    int (*init)(const char *config_json, size_t config_len, void **state, char **err);
    /* Runs one request. payload_json is the request's payload as JSON text. Returns 0 with
     * out and out_len set to the result as JSON text, or non-zero with err set to a message.
     * Both are released with free_buf. May be NULL when process_ctx is set (ABI 2). */
    int (*process)(void *state, const char *key, size_t key_len, const char *payload_json,
                   size_t payload_len, char **out, size_t *out_len, char **err);
    /* Releases a buffer process, process_ctx or init returned. */
    void (*free_buf)(void *state, char *buf);
    void (*fini)(void *state);
    /* ABI 2, optional: process with the request's context; when set, parexd calls it instead
     * of process. Read only when abi_version is 2 or more. */
    int (*process_ctx)(void *state, const parex_plugin_ctx_t *ctx, const char *key, size_t key_len,
                       const char *payload_json, size_t payload_len, char **out, size_t *out_len,
                       char **err);
} parex_plugin_t;

typedef const parex_plugin_t *(*parex_plugin_entry_fn)(void);

#ifdef __cplusplus
}
#endif

#endif
