/* A plugin built for a parexd plugin ABI this daemon does not speak (one past the newest).
 * Everything else is well-formed, so the only reason to refuse it is the version: parexd must
 * stop start-up with a message naming the ABI versions. Used by tests/integration/test_handlers.py.
 */
#include <parex/plugin.h>

#include <stdlib.h>

static int bad_init(const char *config, size_t len, void **state, char **err)
{
    (void)config;
    (void)len;
    (void)err;
    *state = NULL;
    return 0;
}

static int bad_process(void *state, const char *key, size_t key_len, const char *payload,
                       size_t payload_len, char **out, size_t *out_len, char **err)
{
    (void)state;
    (void)key;
    (void)key_len;
    (void)payload;
    (void)payload_len;
    (void)out;
    (void)out_len;
    (void)err;
    abort(); /* never called: the daemon must refuse this plugin before any request */
}

static void bad_free(void *state, char *buf)
{
    (void)state;
    free(buf);
}

static const parex_plugin_t plugin = {
    .abi_version = PAREX_PLUGIN_ABI_VERSION + 1,
    .name = "bad_abi",
    .init = bad_init,
    .process = bad_process,
    .free_buf = bad_free,
};

const parex_plugin_t *parex_plugin_entry(void);
const parex_plugin_t *parex_plugin_entry(void)
{
    return &plugin;
}
