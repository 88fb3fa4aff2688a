/* What a reload (SIGHUP) does with the keys the table marks PX_RELOAD_RESTART: whether the new
 * file changes one, and keeping the running value when it does. Kept apart from config.c, which
 * parses and checks values. */
#include "daemon/core/config.h"

#include <string.h>

int px_config_differs(const px_config_t *a, const px_config_t *b, const px_config_key_t *k)
{
    const char *fa = (const char *)a + k->off, *fb = (const char *)b + k->off;

    switch (k->kind) {
    case PX_K_ADDR:
    case PX_K_PATH:
    case PX_K_TOKEN:
    case PX_K_HOSTS:
    case PX_K_FILE:
        return strcmp(fa, fb) != 0;
    case PX_K_OBJECT:
        return !json_equal(*(json_t *const *)fa, *(json_t *const *)fb) &&
               (*(json_t *const *)fa || *(json_t *const *)fb);
    case PX_K_QUARANTINE:
        return a->quarantine_after != b->quarantine_after ||
               a->quarantine_for_ms != b->quarantine_for_ms;
    default:
        return memcmp(fa, fb, k->size) != 0;
    }
}

void px_config_keep(px_config_t *dst, const px_config_t *src, const px_config_key_t *k)
{
    if (k->kind == PX_K_OBJECT) {
        json_t **f = (json_t **)((char *)dst + k->off);
        json_decref(*f);
        *f = json_incref(*(json_t *const *)((const char *)src + k->off));
    } else if (k->kind == PX_K_QUARANTINE) {
        dst->quarantine_after = src->quarantine_after;
        dst->quarantine_for_ms = src->quarantine_for_ms;
    } else {
        memcpy((char *)dst + k->off, (const char *)src + k->off, k->size);
    }
}
