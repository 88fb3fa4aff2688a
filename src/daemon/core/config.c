/* Configuration keys are one table: name, type, place in px_config_t and range. The file loader,
 * the flag parser and the README all follow that table, so a key cannot be half-supported. */
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

enum kind {
    K_INT,
    K_DOUBLE,
    K_ADDR,
    K_LOGLEVEL,
    K_ONSTALL,
    K_JSON_OBJECT,
    K_PATH,
    K_MODE,
    K_TOKEN,
    K_QUARANTINE,
    K_SCHED
};

struct key {
    const char *name;
    enum kind kind;
    size_t off;
    double min, max;
};

#define F(field) offsetof(px_config_t, field)
static const struct key keys[] = {
    {"listen", K_ADDR, F(listen), 0, 0},
    {"metrics_listen", K_ADDR, F(metrics_listen), 0, 0},
    {"listen_unix", K_PATH, F(listen_unix), 0, 0},
    {"listen_unix_mode", K_MODE, F(listen_unix_mode), 0, 0777},
    {"auth_token", K_TOKEN, F(auth_token), 0, 0},
    {"workers", K_INT, F(workers), 0, 1024},
    {"queue_capacity", K_INT, F(queue_capacity), 1, 1 << 24},
    {"max_line_bytes", K_INT, F(max_line_bytes), 64, 64 << 20},
    {"max_connections", K_INT, F(max_connections), 1, 1000000},
    {"drain_timeout_ms", K_INT, F(drain_timeout_ms), 0, 3600000},
    {"log_level", K_LOGLEVEL, F(log_level), 0, 0},
    {"backpressure_threshold", K_DOUBLE, F(backpressure_threshold), 0.01, 1.0},
    {"supervise_interval_ms", K_INT, F(supervise_interval_ms), 10, 60000},
    {"stall_after_ms", K_INT, F(stall_after_ms), 10, 86400000},
    {"dead_after_ms", K_INT, F(dead_after_ms), 10, 86400000},
    {"on_stall", K_ONSTALL, F(on_stall), 0, 0},
    {"handlers", K_JSON_OBJECT, F(handlers), 0, 0},
    {"max_queued_per_key", K_INT, F(max_queued_per_key), 0, 1 << 24},
    {"quarantine", K_QUARANTINE, F(quarantine_after), 0, 0},
    {"scheduling", K_SCHED, F(scheduling), 0, 0},
};
#undef F

void px_config_defaults(px_config_t *c)
{
    memset(c, 0, sizeof *c);
    snprintf(c->listen, sizeof c->listen, "127.0.0.1:7400");
    snprintf(c->metrics_listen, sizeof c->metrics_listen, "127.0.0.1:9400");
    c->workers = 0;
    c->queue_capacity = 1024;
    c->max_line_bytes = 1048576;
    c->max_connections = 10000;
    c->drain_timeout_ms = 30000;
    c->log_level = PX_LOG_INFO;
    c->backpressure_threshold = 0.8;
    c->supervise_interval_ms = 250;
    c->stall_after_ms = 5000;
    c->dead_after_ms = 10000;
    c->on_stall = PX_ON_STALL_REPORT;
    c->listen_unix_mode = 0660;
}

void px_config_clear(px_config_t *c)
{
    json_decref(c->handlers);
    c->handlers = NULL;
}

static const struct key *find_key(const char *name)
{
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        if (strcmp(keys[i].name, name) == 0)
            return &keys[i];
    return NULL;
}

/* Stores v into the field of k; on error writes "key 'x': ..." into err. */
static int set_value(px_config_t *c, const struct key *k, json_t *v, char *err, size_t errlen)
{
    char *field = (char *)c + k->off;
    const char *s = NULL;

    /* Every kind but the numbers and objects is a string. */
    if (k->kind != K_INT && k->kind != K_DOUBLE && k->kind != K_JSON_OBJECT &&
        k->kind != K_QUARANTINE) {
        if (!json_is_string(v))
            goto type;
        s = json_string_value(v);
    }
    switch (k->kind) {
    case K_INT: {
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
    case K_DOUBLE: {
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
    case K_ADDR: {
        char host[128];
        int port;
        unsigned char bin[16];
        /* Numeric only: a name would need resolving, and its answer can change under us. */
        if (strlen(s) >= sizeof c->listen || px_parse_hostport(s, host, sizeof host, &port) ||
            (inet_pton(AF_INET, host, bin) != 1 && inet_pton(AF_INET6, host, bin) != 1)) {
            snprintf(err, errlen,
                     "key '%s': \"%.100s\" is not a numeric HOST:PORT (e.g. 127.0.0.1:7400 or "
                     "[::1]:7400)",
                     k->name, s);
            return -1;
        }
        snprintf(field, sizeof c->listen, "%s", s);
        return 0;
    }
    case K_LOGLEVEL: {
        int lv;
        if ((lv = px_log_level_parse(s)) < 0) {
            snprintf(err, errlen,
                     "key '%s': \"%.64s\" is not one of error, warning, notice, info, debug",
                     k->name, s);
            return -1;
        }
        *(int64_t *)field = lv;
        return 0;
    }
    case K_PATH:
        if (strlen(s) >= sizeof c->listen_unix || (*s && *s != '/')) {
            snprintf(err, errlen, "key '%s': expected an absolute path under %zu bytes, or \"\"",
                     k->name, sizeof c->listen_unix);
            return -1;
        }
        snprintf(field, sizeof c->listen_unix, "%s", s);
        return 0;
    case K_MODE: {
        char *end;
        long m;
        m = strtol(s, &end, 8);
        if (!*s || *end || m < 0 || m > 0777) {
            snprintf(err, errlen, "key '%s': \"%.16s\" is not an octal file mode such as \"0660\"",
                     k->name, s);
            return -1;
        }
        *(int64_t *)field = m;
        return 0;
    }
    case K_TOKEN:
        if (strlen(s) >= sizeof c->auth_token || (*s && strlen(s) < 16)) {
            snprintf(err, errlen,
                     "key '%s': expected 16 to %zu bytes (or \"\" for none); a "
                     "short token is guessable",
                     k->name, sizeof c->auth_token - 1);
            return -1;
        }
        snprintf(field, sizeof c->auth_token, "%s", s);
        return 0;
    case K_QUARANTINE: {
        json_t *a = json_object_get(v, "after_failures"), *f = json_object_get(v, "for_ms");
        if (!json_is_object(v) || json_object_size(v) != (size_t)(!!a + !!f) ||
            !json_is_integer(a) || json_integer_value(a) < 1 || json_integer_value(a) > 1000 ||
            !json_is_integer(f) || json_integer_value(f) < 1 || json_integer_value(f) > 86400000) {
            snprintf(err, errlen,
                     "key '%s': expected {\"after_failures\": 1..1000, \"for_ms\": "
                     "1..86400000}",
                     k->name);
            return -1;
        }
        c->quarantine_after = json_integer_value(a);
        c->quarantine_for_ms = json_integer_value(f);
        return 0;
    }
    case K_SCHED:
        if (strcmp(s, "partitioned") == 0)
            *(int64_t *)field = PX_SCHED_PARTITIONED;
        else if (strcmp(s, "keyed") == 0)
            *(int64_t *)field = PX_SCHED_KEYED;
        else {
            snprintf(err, errlen, "key '%s': \"%.64s\" is not one of partitioned, keyed", k->name,
                     s);
            return -1;
        }
        return 0;
    case K_JSON_OBJECT:
        if (!json_is_object(v)) {
            snprintf(err, errlen, "key '%s': expected an object", k->name);
            return -1;
        }
        json_decref(*(json_t **)field);
        *(json_t **)field = json_incref(v);
        return 0;
    case K_ONSTALL:
        if (strcmp(s, "report") == 0)
            *(int64_t *)field = PX_ON_STALL_REPORT;
        else if (strcmp(s, "replace") == 0)
            *(int64_t *)field = PX_ON_STALL_REPLACE;
        else {
            snprintf(err, errlen, "key '%s': \"%.64s\" is not one of report, replace", k->name, s);
            return -1;
        }
        return 0;
    }
type:
    snprintf(err, errlen, "key '%s': expected %s", k->name,
             k->kind == K_INT      ? "an integer"
             : k->kind == K_DOUBLE ? "a number"
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
        const struct key *k = find_key(name);
        if (!k) {
            snprintf(err, errlen, "config %s: unknown key '%.64s' (see README, Configuration)",
                     origin, name);
            goto out;
        }
        if (set_value(c, k, v, why, sizeof why)) {
            snprintf(err, errlen, "config %s: %s", origin, why);
            goto out;
        }
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
    const struct key *k = find_key(name);
    char why[256];
    json_t *v;
    int rc;

    px_assert(k != NULL);
    if (k->kind == K_INT || k->kind == K_DOUBLE) {
        char *end;
        double d;
        errno = 0;
        d = strtod(value, &end);
        /* Decimal only, and within what an integer key can hold, before any cast. */
        if (errno || end == value || *end || strpbrk(value, "xXnN") ||
            (k->kind == K_INT && (d < -1e15 || d > 1e15))) {
            snprintf(err, errlen, "--%s: \"%.64s\" is not a number in range %.0f..%.0f", name,
                     value, k->min, k->max);
            return -1;
        }
        v = k->kind == K_INT && strchr(value, '.') == NULL ? json_integer((json_int_t)d)
                                                           : json_real(d);
    } else {
        v = json_string(value);
    }
    rc = v ? set_value(c, k, v, why, sizeof why) : -1;
    if (rc)
        snprintf(err, errlen, "command line: %s", v ? why : "out of memory");
    json_decref(v);
    return rc;
}

int px_config_finish(px_config_t *c, char *err, size_t errlen)
{
    if (c->workers == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        c->workers = 2 * (n > 0 ? n : 1);
    }
    if (c->dead_after_ms <= c->supervise_interval_ms) {
        snprintf(err, errlen,
                 "key 'dead_after_ms': %lld must be greater than supervise_interval_ms (%lld)",
                 (long long)c->dead_after_ms, (long long)c->supervise_interval_ms);
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
