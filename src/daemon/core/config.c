/* Configuration keys are one table: each row is a key's name, type, place in px_config_t, range,
 * default, flag, reload rule and meaning. The file loader, the flag parser, --help,
 * --print-config, SIGHUP and the README (checked by unit_config) all follow it, so a key cannot
 * be half-supported: adding one is adding a row (and its field in config.h). */
#include "daemon/core/config.h"

#include "common/hostport.h"
#include "common/log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *const log_levels[] = {"error", "warning", "notice", "info", "debug", NULL};
static const char *const stall_modes[] = {"report", "replace", NULL};
static const char *const schedulers[] = {"partitioned", "keyed", NULL};

#define F(field) offsetof(px_config_t, field), sizeof(((px_config_t *)0)->field)
#define LIVE PX_RELOAD_LIVE
#define RESTART PX_RELOAD_RESTART
/* clang-format off */
const px_config_key_t px_config_keys[] = {
    {"listen", PX_K_ADDR, F(listen), 0, 0, "\"127.0.0.1:7400\"", "HOST:PORT", 'l', "HOST:PORT", RESTART,
     "request listener (numeric address; `[::1]:7400` for IPv6; port 0 picks one)", NULL},
    {"metrics_listen", PX_K_ADDR, F(metrics_listen), 0, 0, "\"127.0.0.1:9400\"", "HOST:PORT", 'm', "HOST:PORT", RESTART,
     "HTTP metrics endpoint", NULL},
    {"listen_unix", PX_K_PATH, F(listen_unix), 0, 0, "\"\"", "absolute path", 0, NULL, RESTART,
     "also accept requests on this Unix-domain socket (\"\": none, or `$RUNTIME_DIRECTORY/parexd.sock` under systemd's `RuntimeDirectory=`; a stale socket file is replaced; removed at exit)", NULL},
    {"listen_unix_mode", PX_K_MODE, F(listen_unix_mode), 0, 0777, "\"0660\"", "octal string", 0, NULL, RESTART,
     "file mode of that socket: who may submit", NULL},
    {"auth_token", PX_K_TOKEN, F(auth_token), 0, 0, "\"\"", "16–255 bytes", 0, NULL, LIVE,
     "when set, every line must carry it in a `token` field; others are answered `rejected`/`unauthorized` (\"\": off)", NULL},
    {"workers", PX_K_INT, F(workers), 0, 1024, "0", NULL, 'w', "N", RESTART,
     "worker threads; 0 = 2 × online CPUs", NULL},
    {"queue_capacity", PX_K_INT, F(queue_capacity), 1, 1 << 24, "1024", NULL, 'q', "N", RESTART,
     "bound of each worker's queue", NULL},
    {"max_line_bytes", PX_K_INT, F(max_line_bytes), 64, 64 << 20, "1048576", NULL, 0, NULL, RESTART,
     "longest request line", NULL},
    {"max_connections", PX_K_INT, F(max_connections), 1, 1000000, "10000", NULL, 0, NULL, LIVE,
     "further connections get one `too_many_connections` line and are closed", NULL},
    {"drain_timeout_ms", PX_K_INT, F(drain_timeout_ms), 0, 3600000, "30000", NULL, 0, NULL, LIVE,
     "how long a graceful stop waits for in-flight work", NULL},
    {"log_level", PX_K_ENUM, F(log_level), PX_LOG_ERR, 0, "\"info\"", NULL, 'L', "LEVEL", LIVE,
     "least important message logged", log_levels},
    {"backpressure_threshold", PX_K_DOUBLE, F(backpressure_threshold), 0.01, 1, "0.8", "0.01–1", 0, NULL, LIVE,
     "a worker is under backpressure at depth ≥ threshold × capacity", NULL},
    {"supervise_interval_ms", PX_K_INT, F(supervise_interval_ms), 10, 60000, "250", NULL, 0, NULL, LIVE,
     "how often the supervisor looks at the workers; less than `dead_after_ms`", NULL},
    {"stall_after_ms", PX_K_INT, F(stall_after_ms), 10, 86400000, "5000", NULL, 0, NULL, LIVE,
     "a request running longer makes its worker `stalled`", NULL},
    {"dead_after_ms", PX_K_INT, F(dead_after_ms), 10, 86400000, "10000", NULL, 0, NULL, LIVE,
     "an idle worker without a heartbeat for longer is `dead`; greater than `supervise_interval_ms`", NULL},
    {"on_stall", PX_K_ENUM, F(on_stall), PX_ON_STALL_REPORT, 0, "\"report\"", NULL, 0, NULL, LIVE,
     "what to do with a stalled worker (see [Stalled and dead workers](#stalled-and-dead-workers))", stall_modes},
    {"handlers", PX_K_OBJECT, F(handlers), 0, 0, "null", "object", 0, NULL, LIVE,
     "configured handlers (see [Configured handlers](#configured-handlers-exec-http-plugin)); a reload that does not build keeps the running ones", NULL},
    {"max_queued_per_key", PX_K_INT, F(max_queued_per_key), 0, 1 << 24, "0", NULL, 0, NULL, RESTART,
     "a key with this many requests queued or running gets `rejected`/`key_busy` (0: off; see [Hot and poison keys](#hot-and-poison-keys))", NULL},
    {"quarantine", PX_K_QUARANTINE, F(quarantine_after), 0, 0, "null", "`{\"after_failures\": 1–1000, \"for_ms\": 1–86400000}`", 0, NULL, RESTART,
     "park a key after that many consecutive failures (null: off)", NULL},
    {"scheduling", PX_K_ENUM, F(scheduling), PX_SCHED_PARTITIONED, 0, "\"partitioned\"", NULL, 0, NULL, RESTART,
     "per-worker queues, or one FIFO per key served by any free worker", schedulers},
    /* Limits against hostile clients (README, Security). */
    {"builtin_test_ops", PX_K_BOOL, F(builtin_test_ops), 0, 1, "false", "true, false", 0, NULL, LIVE,
     "serve the built-in `sleep` and `fail` (test aids: any client could hold every worker with them)", NULL},
    {"max_in_flight_per_connection", PX_K_INT, F(max_in_flight_per_connection), 1, 1 << 24, "1024", NULL, 0, NULL, LIVE,
     "requests one connection may have queued or running; more are answered `rejected`/`connection_busy`", NULL},
    {"handler_timeout_ms", PX_K_INT, F(handler_timeout_ms), 0, 86400000, "30000", NULL, 0, NULL, LIVE,
     "`timeout_ms` of every configured handler that sets none (0: none)", NULL},
    {"max_queued_payload_bytes", PX_K_INT, F(max_queued_payload_bytes), 65536, 1099511627776.0, "268435456", NULL, 0, NULL, LIVE,
     "bytes all queued and running requests (payload, key, id) may hold together; past it `rejected`/`overloaded` with `retry_after_ms`", NULL},
    {"max_partial_bytes", PX_K_INT, F(max_partial_bytes), 65536, 1099511627776.0, "67108864", NULL, 0, NULL, LIVE,
     "bytes all connections' unfinished lines may hold together; the line that goes past it is dropped and answered `rejected`/`overloaded`", NULL},
    {"partial_line_timeout_ms", PX_K_INT, F(partial_line_timeout_ms), 100, 86400000, "30000", NULL, 0, NULL, LIVE,
     "a connection whose unfinished line is older is closed (slowloris)", NULL},
    {"cancel_on_disconnect", PX_K_BOOL, F(cancel_on_disconnect), 0, 1, "false", "true, false", 0, NULL, LIVE,
     "when a connection closes with requests in flight (its client vanished), its queued requests do not run (failed/`cancelled`, counted dropped)", NULL},
    {"max_abandoned_threads", PX_K_INT, F(max_abandoned_threads), 0, 1024, "16", NULL, 0, NULL, LIVE,
     "`on_stall: replace` stops replacing while this many abandoned threads are still inside handlers", NULL},
    {"auth_token_file", PX_K_FILE, F(auth_token_file), 0, 0, "\"\"", "absolute path, or a credential name", 0, NULL, LIVE,
     "read `auth_token` from this file's first line (a name: `$CREDENTIALS_DIRECTORY/NAME`); not together with `auth_token`", NULL},
    {"metrics_allowed_hosts", PX_K_HOSTS, F(metrics_allowed_hosts), 0, 0, "\"\"", "comma-separated host names", 0, NULL, LIVE,
     "`Host` names the metrics endpoint answers besides IP literals and `localhost`", NULL},
    {"metrics_max_connections", PX_K_INT, F(metrics_max_connections), 1, 10000, "256", NULL, 0, NULL, RESTART,
     "connection limit of the metrics endpoint", NULL},
    {"metrics_timeout_ms", PX_K_INT, F(metrics_timeout_ms), 1000, 3600000, "10000", NULL, 0, NULL, RESTART,
     "idle metrics connections are closed after this (rounded up to seconds)", NULL},
    /* Cluster mode (README, Cluster mode): its own keys, checked by clustercfg.c. */
    {"cluster", PX_K_CLUSTER, F(cluster), 0, 0, "null", "object", 0, NULL, RESTART,
     "cluster mode on NATS JetStream (null: off; its keys: [Configuration: the `cluster` section](#configuration-the-cluster-section))", NULL},
};
/* clang-format on */
#undef F
#undef LIVE
#undef RESTART
const size_t px_config_nkeys = sizeof px_config_keys / sizeof px_config_keys[0];
_Static_assert(sizeof px_config_keys / sizeof px_config_keys[0] <= PX_CONFIG_MAX_KEYS,
               "raise PX_CONFIG_MAX_KEYS");

const px_config_key_t *px_config_key(const char *name)
{
    for (size_t i = 0; i < px_config_nkeys; i++)
        if (strcmp(px_config_keys[i].name, name) == 0)
            return &px_config_keys[i];
    return NULL;
}

static int set_value(px_config_t *c, const px_config_key_t *k, json_t *v, char *err, size_t errlen);

/* Every default goes through the same checks as a value from the file. */
void px_config_defaults(px_config_t *c)
{
    char err[256];

    memset(c, 0, sizeof *c);
    for (size_t i = 0; i < px_config_nkeys; i++) {
        json_t *v = json_loads(px_config_keys[i].def, JSON_DECODE_ANY, NULL);
        px_assert(v != NULL);
        /* A default that fails its own key's checks is a bug in the table above. */
        px_assert(json_is_null(v) || set_value(c, &px_config_keys[i], v, err, sizeof err) == 0);
        json_decref(v);
    }
}

void px_config_clear(px_config_t *c)
{
    json_decref(c->handlers);
    c->handlers = NULL;
}

static int enum_index(const px_config_key_t *k, const char *s)
{
    for (int i = 0; k->names[i]; i++)
        if (strcmp(k->names[i], s) == 0)
            return i;
    return -1;
}

/* Stores v into the field of k; on error writes "key 'x': ..." into err. */
static int set_value(px_config_t *c, const px_config_key_t *k, json_t *v, char *err, size_t errlen)
{
    char *field = (char *)c + k->off;
    const char *s = NULL;

    /* Every kind but the numbers and objects is a string. */
    if (k->kind != PX_K_INT && k->kind != PX_K_DOUBLE && k->kind != PX_K_OBJECT &&
        k->kind != PX_K_QUARANTINE && k->kind != PX_K_BOOL && k->kind != PX_K_CLUSTER) {
        if (!json_is_string(v))
            goto type;
        s = json_string_value(v);
    }
    switch (k->kind) {
    case PX_K_INT: {
        json_int_t n;
        if (!json_is_integer(v))
            goto type;
        n = json_integer_value(v);
        if ((double)n < k->min || (double)n > k->max) {
            snprintf(err, errlen, "key '%s': %lld is out of range %.0f..%.0f", k->name,
                     (long long)n, k->min, k->max);
            return -1;
        }
        *(int64_t *)field = n;
        return 0;
    }
    case PX_K_DOUBLE: {
        double d;
        if (!json_is_number(v))
            goto type;
        d = json_number_value(v);
        if (d < k->min || d > k->max) {
            snprintf(err, errlen, "key '%s': %g is out of range %g..%g", k->name, d, k->min,
                     k->max);
            return -1;
        }
        *(double *)field = d;
        return 0;
    }
    case PX_K_ENUM: {
        int i = enum_index(k, s);
        char list[128] = "";
        if (i >= 0) {
            *(int64_t *)field = (int64_t)k->min + i;
            return 0;
        }
        for (int j = 0; k->names[j]; j++)
            snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", j ? ", " : "",
                     k->names[j]);
        snprintf(err, errlen, "key '%s': \"%.64s\" is not one of %s", k->name, s, list);
        return -1;
    }
    case PX_K_ADDR: {
        char host[128];
        int port;
        unsigned char bin[16];
        /* Numeric only: a name would need resolving, and its answer can change under us. */
        if (strlen(s) >= k->size || px_parse_hostport(s, host, sizeof host, &port) ||
            (inet_pton(AF_INET, host, bin) != 1 && inet_pton(AF_INET6, host, bin) != 1)) {
            snprintf(err, errlen,
                     "key '%s': \"%.100s\" is not a numeric HOST:PORT (e.g. 127.0.0.1:7400 or "
                     "[::1]:7400)",
                     k->name, s);
            return -1;
        }
        snprintf(field, k->size, "%s", s);
        return 0;
    }
    case PX_K_PATH:
        if (strlen(s) >= k->size || (*s && *s != '/')) {
            snprintf(err, errlen, "key '%s': expected an absolute path under %zu bytes, or \"\"",
                     k->name, k->size);
            return -1;
        }
        snprintf(field, k->size, "%s", s);
        return 0;
    case PX_K_MODE: {
        char *end;
        long m;
        m = strtol(s, &end, 8);
        if (!*s || *end || m < 0 || m > (long)k->max) {
            snprintf(err, errlen, "key '%s': \"%.16s\" is not an octal file mode such as \"0660\"",
                     k->name, s);
            return -1;
        }
        *(int64_t *)field = m;
        return 0;
    }
    case PX_K_TOKEN:
        if (strlen(s) >= k->size || (*s && strlen(s) < 16)) {
            snprintf(err, errlen,
                     "key '%s': expected 16 to %zu bytes (or \"\" for none); a "
                     "short token is guessable",
                     k->name, k->size - 1);
            return -1;
        }
        snprintf(field, k->size, "%s", s);
        return 0;
    case PX_K_QUARANTINE: {
        json_t *a = json_object_get(v, "after_failures"), *f = json_object_get(v, "for_ms");
        if (json_is_null(v)) {
            c->quarantine_after = c->quarantine_for_ms = 0;
            return 0;
        }
        if (!json_is_object(v) || json_object_size(v) != (size_t)(!!a + !!f) ||
            !json_is_integer(a) || json_integer_value(a) < 1 || json_integer_value(a) > 1000 ||
            !json_is_integer(f) || json_integer_value(f) < 1 || json_integer_value(f) > 86400000) {
            snprintf(err, errlen,
                     "key '%s': expected {\"after_failures\": 1..1000, \"for_ms\": "
                     "1..86400000} or null",
                     k->name);
            return -1;
        }
        c->quarantine_after = json_integer_value(a);
        c->quarantine_for_ms = json_integer_value(f);
        return 0;
    }
    case PX_K_CLUSTER:
        px_cluster_cfg_defaults(&c->cluster);
        if (json_is_null(v))
            return 0;
        return px_cluster_cfg_parse(&c->cluster, v, err, errlen);
    case PX_K_BOOL:
        if (!json_is_boolean(v)) {
            char *text = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
            snprintf(err, errlen, "key '%s': %.64s is not true or false", k->name,
                     text ? text : "the value");
            free(text);
            return -1;
        }
        *(int64_t *)field = json_is_true(v);
        return 0;
    case PX_K_HOSTS:
        /* Host names only: nothing that could smuggle a wildcard or a port. */
        if (strlen(s) >= k->size ||
            strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-,") !=
                strlen(s)) {
            snprintf(err, errlen,
                     "key '%s': \"%.64s\" is not a comma-separated list of host names (letters, "
                     "digits, '.', '-'; under %zu bytes)",
                     k->name, s, k->size);
            return -1;
        }
        snprintf(field, k->size, "%s", s);
        return 0;
    case PX_K_FILE:
        if (strlen(s) >= k->size || (*s != '/' && strchr(s, '/'))) {
            snprintf(err, errlen,
                     "key '%s': \"%.64s\" is neither an absolute path nor a credential name "
                     "(under %zu bytes), nor \"\"",
                     k->name, s, k->size);
            return -1;
        }
        snprintf(field, k->size, "%s", s);
        return 0;
    case PX_K_OBJECT:
        if (!json_is_object(v) && !json_is_null(v)) {
            snprintf(err, errlen, "key '%s': expected an object", k->name);
            return -1;
        }
        json_decref(*(json_t **)field);
        *(json_t **)field = json_is_null(v) ? NULL : json_incref(v);
        return 0;
    }
type:
    snprintf(err, errlen, "key '%s': expected %s", k->name,
             k->kind == PX_K_INT      ? "an integer"
             : k->kind == PX_K_DOUBLE ? "a number"
             : k->kind == PX_K_BOOL   ? "true or false"
                                      : "a string");
    return -1;
}

int px_config_load_text(px_config_t *c, const char *text, size_t len, const char *origin, char *err,
                        size_t errlen)
{
    json_error_t jerr;
    json_t *root, *v;
    const char *name;
    char why[256];
    int rc = -1;

    snprintf(c->origin, sizeof c->origin, "%s", origin);
    root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        snprintf(err, errlen, "config %s: line %d column %d: %s", origin, jerr.line, jerr.column,
                 jerr.text);
        return -1;
    }
    if (!json_is_object(root)) {
        snprintf(err, errlen, "config %s: the top level must be a JSON object", origin);
        goto out;
    }
    json_object_foreach(root, name, v)
    {
        const px_config_key_t *k = px_config_key(name);
        if (!k) {
            snprintf(err, errlen,
                     "config %s: unknown key '%.64s' (parexd --help lists every key; see README, "
                     "Configuration)",
                     origin, name);
            goto out;
        }
        if (set_value(c, k, v, why, sizeof why)) {
            snprintf(err, errlen, "config %s: %s", origin, why);
            goto out;
        }
        c->set[k - px_config_keys] = PX_SET_FILE;
    }
    rc = 0;
out:
    json_decref(root);
    return rc;
}

int px_config_load_file(px_config_t *c, const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    char *text = NULL;
    long n;
    int rc = -1;

    if (!f) {
        snprintf(err, errlen, "config %s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    if (fseek(f, 0, SEEK_END) || (n = ftell(f)) < 0 || fseek(f, 0, SEEK_SET)) {
        snprintf(err, errlen, "config %s: cannot read: %s", path, strerror(errno));
        goto out;
    }
    if (n > (1 << 20)) {
        snprintf(err, errlen, "config %s: %ld bytes is over the 1 MiB limit", path, n);
        goto out;
    }
    text = malloc((size_t)n + 1);
    if (!text || fread(text, 1, (size_t)n, f) != (size_t)n) {
        snprintf(err, errlen, "config %s: cannot read: %s", path, strerror(errno));
        goto out;
    }
    rc = px_config_load_text(c, text, (size_t)n, path, err, errlen);
out:
    free(text);
    fclose(f);
    return rc;
}

int px_config_set(px_config_t *c, const char *name, const char *value, char *err, size_t errlen)
{
    const px_config_key_t *k = px_config_key(name);
    char why[256];
    json_t *v;
    int rc;

    px_assert(k != NULL);
    if (k->kind == PX_K_INT || k->kind == PX_K_DOUBLE) {
        char *end;
        double d;
        errno = 0;
        d = strtod(value, &end);
        /* Decimal only, and within what an integer key can hold, before any cast. */
        if (errno || end == value || *end || strpbrk(value, "xXnN") ||
            (k->kind == PX_K_INT && (d < -1e15 || d > 1e15))) {
            snprintf(err, errlen, "--%s: \"%.64s\" is not a number in range %.0f..%.0f", name,
                     value, k->min, k->max);
            return -1;
        }
        v = k->kind == PX_K_INT && strpbrk(value, ".eE") == NULL ? json_integer((json_int_t)d)
                                                                 : json_real(d);
    } else {
        v = json_string(value);
    }
    rc = v ? set_value(c, k, v, why, sizeof why) : -1;
    if (rc)
        snprintf(err, errlen, "command line: %s", v ? why : "out of memory");
    else
        c->set[k - px_config_keys] = PX_SET_FLAG;
    json_decref(v);
    return rc;
}

/* One line for a rule between two keys: blames the key the user set (the second if both
 * were), names where it was set and what to change. */
static void cross_key(const px_config_t *c, char *err, size_t errlen, const char *lo,
                      long long lo_v, const char *hi, long long hi_v)
{
    const px_config_key_t *kl = px_config_key(lo), *kh = px_config_key(hi);
    int set_hi = c->set[kh - px_config_keys], set_lo = c->set[kl - px_config_keys];
    int blame_hi = set_hi || !set_lo;
    int how = blame_hi ? set_hi : set_lo;
    const char *other = blame_hi ? lo : hi;
    int other_set = blame_hi ? set_lo : set_hi;

    snprintf(err, errlen, "%s%s: key '%s': %lld must be %s than %s (%lld%s); %s %s or %s %s",
             how == PX_SET_FLAG ? "command line" : "config ",
             how == PX_SET_FLAG ? "" : (c->origin[0] ? c->origin : "(defaults)"),
             blame_hi ? hi : lo, blame_hi ? hi_v : lo_v, blame_hi ? "greater" : "less", other,
             blame_hi ? lo_v : hi_v, other_set ? "" : ", its default", blame_hi ? "raise" : "lower",
             blame_hi ? hi : lo, blame_hi ? "lower" : "raise", other);
}

int px_config_finish(px_config_t *c, char *err, size_t errlen)
{
    if (px_config_from_env(c, err, errlen))
        return -1;
    if (c->workers == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        c->workers = 2 * (n > 0 ? n : 1);
    }
    if (c->dead_after_ms <= c->supervise_interval_ms) {
        cross_key(c, err, errlen, "supervise_interval_ms", (long long)c->supervise_interval_ms,
                  "dead_after_ms", (long long)c->dead_after_ms);
        return -1;
    }
    /* Keyed scheduling shares one bound of workers x queue_capacity, counted in 32 bits. */
    if (c->scheduling == PX_SCHED_KEYED &&
        (uint64_t)c->workers * (uint64_t)c->queue_capacity > UINT32_MAX) {
        snprintf(err, errlen,
                 "key 'queue_capacity': %lld x workers (%lld) = %llu is over the keyed "
                 "scheduler's bound of %u requests; lower queue_capacity or workers",
                 (long long)c->queue_capacity, (long long)c->workers,
                 (unsigned long long)((uint64_t)c->workers * (uint64_t)c->queue_capacity),
                 UINT32_MAX);
        return -1;
    }
    return 0;
}
