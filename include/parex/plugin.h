/* parexd plugin ABI, version 1.
 *
 * A plugin is a shared object exporting one symbol, PAREX_PLUGIN_ENTRY_SYMBOL, a function that
 * returns a pointer to a static parex_plugin_t. Everything crosses the boundary as JSON text, so
 * a plugin needs no JSON library of parexd's and no parexd header but this one.
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

#define PAREX_PLUGIN_ABI_VERSION 1u
#define PAREX_PLUGIN_ENTRY_SYMBOL "parex_plugin_entry"

typedef struct parex_plugin {
    /* Must be PAREX_PLUGIN_ABI_VERSION: parexd refuses any other value. */
    uint32_t abi_version;
    const char *name;
    /* config_json: the handler's "config" value as JSON text ("null" when absent). Returns 0
     * and sets *state, or non-zero and sets *err (released with free_buf). */
    int (*init)(const char *config_json, size_t config_len, void **state, char **err);
    /* Runs one request. payload_json is the request's payload as JSON text. Returns 0 with
     * out and out_len set to the result as JSON text, or non-zero with err set to a message.
     * Both are released with free_buf. */
    int (*process)(void *state, const char *key, size_t key_len, const char *payload_json,
                   size_t payload_len, char **out, size_t *out_len, char **err);
    /* Releases a buffer process or init returned. */
    void (*free_buf)(void *state, char *buf);
    void (*fini)(void *state);
} parex_plugin_t;

typedef const parex_plugin_t *(*parex_plugin_entry_fn)(void);

#ifdef __cplusplus
}
#endif

#endif
