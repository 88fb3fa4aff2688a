/* Example parexd plugin: a per-key counter. For each request it answers
 * {"key": K, "count": N, "payload_bytes": B, "greeting": G, "id": I, "delivery": D, "epoch": E}
 * where N counts this key's requests since start-up, G comes from the handler's config
 * {"greeting": "..."}, and I, D and E are the request's context (ABI 2): its id, its delivery
 * count and its epoch (in cluster mode a delivery above 1 is a re-run; single-node mode says 1
 * and 0). It shows the ABI: state from init, thread safety in process_ctx, buffers released
 * through free_buf.
 *
 * Build: cc -shared -fPIC -I include -o example.so src/plugins/example.c */
#include <parex/plugin.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SLOTS 1024

typedef struct state {
    pthread_mutex_t mu; /* guards counts: process runs on many worker threads */
    char greeting[64];
    struct {
        char key[257];
        unsigned long count;
    } counts[SLOTS];
} state_t;

static char *dup_str(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = malloc(n);

    if (p)
        memcpy(p, s, n);
    return p;
}

static int ex_init(const char *config, size_t len, void **out, char **err)
{
    state_t *s = calloc(1, sizeof *s);
    const char *g = strstr(config, "\"greeting\":\"");

    (void)len;
    if (!s) {
        *err = dup_str("out of memory");
        return 1;
    }
    pthread_mutex_init(&s->mu, NULL);
    snprintf(s->greeting, sizeof s->greeting, "hello");
    if (g) {
        /* A tiny reader for one string field keeps the example free of dependencies. */
        const char *b = g + 12, *e = strchr(b, '"');
        if (e && (size_t)(e - b) < sizeof s->greeting)
            snprintf(s->greeting, sizeof s->greeting, "%.*s", (int)(e - b), b);
    }
    *out = s;
    return 0;
}

static int ex_process(void *st, const parex_plugin_ctx_t *ctx, const char *key, size_t key_len,
                      const char *payload, size_t payload_len, char **out, size_t *out_len,
                      char **err)
{
    static const char fmt[] = "{\"key\":\"%.*s\",\"count\":%lu,\"payload_bytes\":%zu,"
                              "\"greeting\":\"%s\",\"id\":%s,\"delivery\":%llu,\"epoch\":%llu}";
    state_t *s = st;
    unsigned long count = 0;
    size_t h = 5381;
    int n;

    (void)payload;
    if (key_len > 256 || memchr(key, '"', key_len) || memchr(key, '\\', key_len)) {
        *err = dup_str("the example plugin only takes keys without quotes or backslashes");
        return 1;
    }
    for (size_t i = 0; i < key_len; i++)
        h = h * 33 + (unsigned char)key[i];
    pthread_mutex_lock(&s->mu);
    for (size_t i = 0; i < SLOTS; i++) {
        size_t j = (h + i) % SLOTS;
        if (s->counts[j].key[0] == '\0') {
            memcpy(s->counts[j].key, key, key_len);
            s->counts[j].key[key_len] = '\0';
        }
        if (strlen(s->counts[j].key) == key_len && memcmp(s->counts[j].key, key, key_len) == 0) {
            count = ++s->counts[j].count;
            break;
        }
    }
    pthread_mutex_unlock(&s->mu);
    /* The id is JSON text already: it goes in as it is. */
    n = snprintf(NULL, 0, fmt, (int)key_len, key, count, payload_len, s->greeting, ctx->id,
                 (unsigned long long)ctx->delivery, (unsigned long long)ctx->epoch);
    if (n < 0 || !(*out = malloc((size_t)n + 1))) {
        *err = dup_str("out of memory");
        return 1;
    }
    snprintf(*out, (size_t)n + 1, fmt, (int)key_len, key, count, payload_len, s->greeting, ctx->id,
             (unsigned long long)ctx->delivery, (unsigned long long)ctx->epoch);
    *out_len = (size_t)n;
    return 0;
}

static void ex_free(void *st, char *p)
{
    (void)st;
    free(p);
}

static void ex_fini(void *st)
{
    state_t *s = st;

    pthread_mutex_destroy(&s->mu);
    free(s);
}

static const parex_plugin_t plugin = {
    .abi_version = PAREX_PLUGIN_ABI_VERSION,
    .name = "example",
    .init = ex_init,
    .process_ctx = ex_process,
    .free_buf = ex_free,
    .fini = ex_fini,
};

const parex_plugin_t *parex_plugin_entry(void);
const parex_plugin_t *parex_plugin_entry(void)
{
    return &plugin;
}
