/* Builds the registry from the config's "handlers" object: the built-ins, then each declared
 * handler with its type's constructor and the shared policies. Every mistake names its key. */
#include "daemon/core/handler.h"

#include "daemon/handlers/handlers.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

static int opt_int(const json_t *def, const char *where, const char *field, int64_t min,
                   int64_t max, int64_t *out, char *err, size_t errlen)
{
    json_t *v = json_object_get(def, field);

    if (!v)
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max) {
        snprintf(err, errlen, "key '%s.%s': expected an integer from %lld to %lld", where, field,
                 (long long)min, (long long)max);
        return -1;
    }
    *out = json_integer_value(v);
    return 0;
}

static int policies(const json_t *def, const char *name, int64_t default_timeout_ms,
                    px_handler_ctl_t *ctl, char *err, size_t errlen)
{
    json_t *retry = json_object_get(def, "retry"), *rate = json_object_get(def, "rate_limit");
    int64_t n;
    char where[128];

    snprintf(where, sizeof where, "handlers.%s", name);
    /* A program that hangs must not hold its worker for ever: handler_timeout_ms unless set. */
    ctl->timeout_ms = default_timeout_ms;
    if (opt_int(def, where, "timeout_ms", 1, 86400000, &ctl->timeout_ms, err, errlen))
        return -1;
    n = 0;
    if (opt_int(def, where, "max_concurrency", 1, 100000, &n, err, errlen))
        return -1;
    ctl->max_concurrency = (int)n;
    if (retry) {
        static const char *const keys[] = {"max_attempts", "backoff_ms", "max_backoff_ms", NULL};
        int64_t a = 3, b = 100, m = 10000;
        snprintf(where, sizeof where, "handlers.%s.retry", name);
        if (!json_is_object(retry)) {
            snprintf(err, errlen,
                     "key '%s': expected an object {max_attempts, backoff_ms, "
                     "max_backoff_ms}",
                     where);
            return -1;
        }
        if (px_spec_only(retry, where, keys, err, errlen) ||
            opt_int(retry, where, "max_attempts", 1, 100, &a, err, errlen) ||
            opt_int(retry, where, "backoff_ms", 0, 3600000, &b, err, errlen) ||
            opt_int(retry, where, "max_backoff_ms", 0, 3600000, &m, err, errlen))
            return -1;
        ctl->max_attempts = (int)a;
        ctl->backoff_ms = (uint64_t)b;
        ctl->max_backoff_ms = (uint64_t)m;
    }
    if (rate) {
        static const char *const keys[] = {"per_second", "burst", NULL};
        json_t *ps = json_object_get(rate, "per_second"), *bu = json_object_get(rate, "burst");
        snprintf(where, sizeof where, "handlers.%s.rate_limit", name);
        if (!json_is_object(rate) || px_spec_only(rate, where, keys, err, errlen) ||
            !json_is_number(ps) || json_number_value(ps) <= 0 ||
            (bu && (!json_is_number(bu) || json_number_value(bu) < 1))) {
            if (!err[0])
                snprintf(err, errlen,
                         "key '%s': expected {\"per_second\": R > 0, \"burst\": B >= "
                         "1}",
                         where);
            return -1;
        }
        ctl->per_second = json_number_value(ps);
        ctl->burst = bu ? json_number_value(bu) : 1.0;
        ctl->tokens = ctl->burst;
        ctl->refilled_ns = 0;
    }
    return 0;
}

static int valid_name(const char *name)
{
    size_t n = strspn(name, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-");

    return n >= 1 && n <= 63 && name[n] == '\0';
}

static const struct {
    const char *type;
    int (*make)(px_handler_t *h, const json_t *def, char *err, size_t errlen);
} types[] = {
    {"exec", px_exec_make},
    {"http", px_http_make},
    {"plugin", px_plugin_make},
};

px_registry_t *px_handlers_build(const px_config_t *cfg, char *err, size_t errlen)
{
    px_registry_t *reg = px_registry_new();
    const json_t *spec = cfg->handlers;
    const char *name;
    json_t *def;

    err[0] = '\0';
    if (!reg || px_builtin_register(reg, (int)cfg->builtin_test_ops)) {
        snprintf(err, errlen, "out of memory building handlers");
        goto fail;
    }
    if (!spec)
        return reg;
    if (!json_is_object(spec)) {
        snprintf(err, errlen, "key 'handlers': expected an object of name: definition");
        goto fail;
    }
    json_object_foreach((json_t *)spec, name, def)
    {
        px_handler_t h = {0};
        const char *type = json_string_value(json_object_get(def, "type"));
        size_t t;
        int rc;

        if (px_registry_find(reg, name)) {
            snprintf(err, errlen,
                     "key 'handlers.%.64s': '%.64s' is a built-in op; pick another name", name,
                     name);
            goto fail;
        }
        if (!valid_name(name)) {
            snprintf(err, errlen,
                     "key 'handlers': handler name \"%.64s\" must be 1 to 63 of A-Z a-z 0-9 _ . - "
                     "(it becomes an op and a metrics label)",
                     name);
            goto fail;
        }
        if (!json_is_object(def) || !type) {
            snprintf(err, errlen,
                     "key 'handlers.%.64s': expected an object with \"type\": "
                     "exec, http or plugin",
                     name);
            goto fail;
        }
        for (t = 0; t < sizeof types / sizeof types[0]; t++)
            if (strcmp(types[t].type, type) == 0)
                break;
        if (t == sizeof types / sizeof types[0]) {
            snprintf(err, errlen,
                     "key 'handlers.%.64s.type': \"%.32s\" is not one of exec, http, "
                     "plugin",
                     name, type);
            goto fail;
        }
        if (!(h.name = strdup(name)))
            goto oom;
        h.type = types[t].type;
        if (!(h.ctl = px_handler_ctl_new())) {
            free((char *)h.name);
            goto oom;
        }
        if (policies(def, name, cfg->handler_timeout_ms, h.ctl, err, errlen) ||
            types[t].make(&h, def, err, errlen)) {
            px_handler_discard(&h);
            goto fail;
        }
        if ((rc = px_registry_add(reg, &h))) {
            px_handler_discard(&h);
            snprintf(err, errlen, "key 'handlers.%.64s': %s", name, strerror(-rc));
            goto fail;
        }
    }
    return reg;
oom:
    snprintf(err, errlen, "out of memory building handlers");
fail:
    px_registry_unref(reg);
    return NULL;
}
