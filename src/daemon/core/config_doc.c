/* Renderings of the configuration table: the effective configuration as JSON (--print-config),
 * the flags of --help, and the README's key table and SIGHUP row. They read the table alone, so
 * the manual, --help and the loader cannot tell different stories (unit_config compares the
 * README with px_config_manual). */
#include "daemon/core/config.h"

#include "common/buf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static json_t *value_json(const px_config_t *c, const px_config_key_t *k)
{
    const char *field = (const char *)c + k->off;

    switch (k->kind) {
    case PX_K_INT:
        return json_integer(*(const int64_t *)field);
    case PX_K_DOUBLE:
        return json_real(*(const double *)field);
    case PX_K_ENUM:
        return json_string(k->names[*(const int64_t *)field - (int64_t)k->min]);
    case PX_K_ADDR:
    case PX_K_PATH:
    case PX_K_HOSTS:
    case PX_K_FILE:
        return json_string(field);
    case PX_K_BOOL:
        return json_boolean(*(const int64_t *)field);
    case PX_K_TOKEN:
        /* A secret is not printed: say whether one is set, in a form the loader refuses. */
        return json_string(field[0] ? "(set; not shown)" : "");
    case PX_K_MODE: {
        char m[8];
        snprintf(m, sizeof m, "0%03o", (unsigned)*(const int64_t *)field);
        return json_string(m);
    }
    case PX_K_OBJECT: {
        json_t *o = *(json_t *const *)field;
        return o ? json_deep_copy(o) : json_null();
    }
    case PX_K_CLUSTER:
        /* The effective section, defaults filled in, so that it loads back as the same. */
        return c->cluster.on ? px_cluster_cfg_to_json(&c->cluster) : json_null();
    case PX_K_QUARANTINE:
        if (!c->quarantine_after)
            return json_null();
        return json_pack("{sIsI}", "after_failures", (json_int_t)c->quarantine_after, "for_ms",
                         (json_int_t)c->quarantine_for_ms);
    }
    return json_null();
}

json_t *px_config_to_json(const px_config_t *c)
{
    json_t *o = json_object();

    for (size_t i = 0; o && i < px_config_nkeys; i++)
        json_object_set_new(o, px_config_keys[i].name, value_json(c, &px_config_keys[i]));
    return o;
}

/* "--queue-capacity" for queue_capacity. */
static void long_flag(const px_config_key_t *k, char *out, size_t n)
{
    snprintf(out, n, "--%s", k->name);
    for (char *p = out; *p; p++)
        if (*p == '_')
            *p = '-';
}

static void range_text(const px_config_key_t *k, char *out, size_t n)
{
    if (k->range)
        snprintf(out, n, "%s", k->range);
    else if (k->kind == PX_K_ENUM) {
        out[0] = '\0';
        for (int j = 0; k->names[j]; j++)
            snprintf(out + strlen(out), n - strlen(out), "%s%s", j ? ", " : "", k->names[j]);
    } else
        snprintf(out, n, "%.0f–%.0f", k->min, k->max);
}

/* NUL-terminates the text (without the manual's Markdown backticks for a terminal). */
static char *finish_text(px_buf_t *b, int plain)
{
    size_t j = 0;

    if (px_buf_append(b, "", 1)) {
        px_buf_free(b);
        return NULL;
    }
    for (size_t i = 0; plain && i < b->len; i++)
        if (b->data[i] != '`')
            b->data[j++] = b->data[i];
    return b->data;
}

char *px_config_help(void)
{
    px_buf_t b = {0};
    char fl[64], lhs[96], range[160];

    for (size_t i = 0; i < px_config_nkeys; i++) {
        const px_config_key_t *k = &px_config_keys[i];
        if (!k->flag)
            continue;
        long_flag(k, fl, sizeof fl);
        range_text(k, range, sizeof range);
        snprintf(lhs, sizeof lhs, "-%c, %s %s", k->flag, fl, k->arg);
        px_buf_printf(&b, "  %-30s %s\n  %-30s (key %s; default %s; %s)\n", lhs, k->doc, "",
                      k->name, k->def, range);
    }
    px_buf_puts(&b, "\nEvery key of the config file (default, range, what SIGHUP does):\n");
    for (size_t i = 0; i < px_config_nkeys; i++) {
        const px_config_key_t *k = &px_config_keys[i];
        range_text(k, range, sizeof range);
        px_buf_printf(&b, "  %-24s %s; %s; %s\n", k->name, k->def, range,
                      k->reload == PX_RELOAD_LIVE ? "reloads" : "restart to change");
    }
    return finish_text(&b, 1);
}

/* Names of the keys with that reload rule, as `a`, `b`, `c`. */
static void reload_list(px_buf_t *b, int reload)
{
    int first = 1;

    for (size_t i = 0; i < px_config_nkeys; i++)
        if (px_config_keys[i].reload == reload) {
            px_buf_printf(b, "%s`%s`", first ? "" : ", ", px_config_keys[i].name);
            first = 0;
        }
}

char *px_config_manual(void)
{
    px_buf_t b = {0};
    char fl[64], range[160];

    px_buf_puts(&b, "| key | default | range | flag | meaning |\n"
                    "|-----|---------|-------|------|---------|\n");
    for (size_t i = 0; i < px_config_nkeys; i++) {
        const px_config_key_t *k = &px_config_keys[i];
        range_text(k, range, sizeof range);
        fl[0] = '\0';
        if (k->flag) {
            fl[0] = '`';
            long_flag(k, fl + 1, sizeof fl - 2);
            strcat(fl, "`");
        }
        px_buf_printf(&b, "| `%s` | `%s` | %s | %s | %s |\n", k->name, k->def, range, fl, k->doc);
    }
    px_buf_puts(&b, "\n| SIGHUP | reload the config file: ");
    reload_list(&b, PX_RELOAD_LIVE);
    px_buf_puts(&b, " take effect at once; ");
    reload_list(&b, PX_RELOAD_RESTART);
    px_buf_puts(&b, " are kept until a restart and named in one warning. A file that fails "
                    "validation (or handlers that do not build) is ignored and the reason logged; "
                    "the running configuration stays. (`systemctl reload parexd`) |\n");
    return finish_text(&b, 0);
}
