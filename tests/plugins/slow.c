/* A plugin that sleeps for the payload's number of milliseconds and answers {"slept_ms": N}: the
 * work of a plugin parexd cannot interrupt. Used by tests/integration/test_handlers.py to prove
 * that timeout_ms and deadline_ms hold for plugins too. It is also an ABI 1 plugin as built
 * before ABI 2 existed: its struct ends before the fields ABI 2 appended, so parexd must load it
 * and must not read past it (ASan would see that). */
#include <parex/plugin.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

const parex_plugin_t *parex_plugin_entry(void);

static int slow_init(const char *config, size_t len, void **state, char **err)
{
    *state = NULL;
    return 0;
}

static int slow_process(void *state, const char *key, size_t key_len, const char *payload,
                        size_t payload_len, char **out, size_t *out_len, char **err)
{
    long ms = strtol(payload, NULL, 10);
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};

    while (nanosleep(&ts, &ts) != 0)
        ;
    if (!(*out = malloc(32)))
        return 1;
    *out_len = (size_t)snprintf(*out, 32, "{\"slept_ms\":%ld}", ms);
    return 0;
}

static void slow_free(void *state, char *buf)
{
    free(buf);
}

/* <parex/plugin.h>'s parex_plugin_t as it was in ABI 1. */
struct plugin_v1 {
    uint32_t abi_version;
    const char *name;
    int (*init)(const char *, size_t, void **, char **);
    int (*process)(void *, const char *, size_t, const char *, size_t, char **, size_t *, char **);
    void (*free_buf)(void *, char *);
    void (*fini)(void *);
};

const parex_plugin_t *parex_plugin_entry(void)
{
    static const struct plugin_v1 p = {1, "slow", slow_init, slow_process, slow_free, NULL};
    return (const parex_plugin_t *)&p;
}
