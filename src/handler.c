/* A small sorted array of handlers: a handful of names, looked up once per request. */
#include "handler.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct px_registry {
    px_handler_t *items;
    size_t len;
};

px_registry_t *px_registry_new(void)
{
    return calloc(1, sizeof(px_registry_t));
}

void px_registry_free(px_registry_t *reg)
{
    if (!reg)
        return;
    for (size_t i = 0; i < reg->len; i++)
        if (reg->items[i].destroy)
            reg->items[i].destroy(&reg->items[i]);
    free(reg->items);
    free(reg);
}

int px_registry_add(px_registry_t *reg, const px_handler_t *h)
{
    px_handler_t *items;
    size_t at = 0;

    while (at < reg->len && strcmp(reg->items[at].name, h->name) < 0)
        at++;
    if (at < reg->len && strcmp(reg->items[at].name, h->name) == 0)
        return -EEXIST;
    items = realloc(reg->items, (reg->len + 1) * sizeof *items);
    if (!items)
        return -ENOMEM;
    memmove(&items[at + 1], &items[at], (reg->len - at) * sizeof *items);
    items[at] = *h;
    reg->items = items;
    reg->len++;
    return 0;
}

const px_handler_t *px_registry_find(const px_registry_t *reg, const char *name)
{
    size_t lo = 0, hi = reg->len;

    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(name, reg->items[mid].name);
        if (c == 0)
            return &reg->items[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

void px_registry_names(const px_registry_t *reg, char *out, size_t outlen)
{
    size_t used = 0;

    out[0] = '\0';
    for (size_t i = 0; i < reg->len && used < outlen; i++) {
        int n = snprintf(out + used, outlen - used, "%s%s", i ? ", " : "", reg->items[i].name);
        if (n < 0)
            break;
        used += (size_t)n;
    }
}

int px_fail(px_result_t *res, const char *code, const char *fmt, ...)
{
    va_list ap;

    res->code = code;
    va_start(ap, fmt);
    vsnprintf(res->message, sizeof res->message, fmt, ap);
    va_end(ap);
    return -1;
}
