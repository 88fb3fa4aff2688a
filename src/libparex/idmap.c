/* id -> callback for the async context. Answers come back in any order across keys, so a
 * window indexed by id would grow behind one long request; this open-addressing table stays
 * at most twice the number pending. Deletion shifts the probe run back (no tombstones). */
#include "libparex/internal.h"

#include <stdint.h>
#include <stdlib.h>

static size_t home(const pxl_idmap_t *m, long long id)
{
    return (size_t)((uint64_t)id * 0x9E3779B97F4A7C15ull >> 20) & (m->cap - 1);
}

static int grow(pxl_idmap_t *m)
{
    size_t ncap = m->cap ? m->cap * 2 : 64;
    pxl_slot_t *old = m->slots, *ns = calloc(ncap, sizeof *ns);
    size_t ocap = m->cap;

    if (!ns)
        return -1;
    m->slots = ns;
    m->cap = ncap;
    for (size_t i = 0; i < ocap; i++) {
        if (old[i].id) {
            size_t j = home(m, old[i].id);
            while (ns[j].id)
                j = (j + 1) & (ncap - 1);
            ns[j] = old[i];
        }
    }
    free(old);
    return 0;
}

int pxl_idmap_put(pxl_idmap_t *m, long long id, parex_callback_fn *fn, void *priv)
{
    size_t j;

    if ((m->len + 1) * 2 > m->cap && grow(m))
        return -1;
    j = home(m, id);
    while (m->slots[j].id)
        j = (j + 1) & (m->cap - 1);
    m->slots[j] = (pxl_slot_t){.id = id, .fn = fn, .priv = priv};
    m->len++;
    return 0;
}

int pxl_idmap_take(pxl_idmap_t *m, long long id, pxl_slot_t *out)
{
    size_t j, k;

    if (!m->cap || id <= 0)
        return 0;
    for (j = home(m, id); m->slots[j].id != id; j = (j + 1) & (m->cap - 1))
        if (!m->slots[j].id)
            return 0;
    *out = m->slots[j];
    /* Backward shift: move later members of the run into the hole when their home allows. */
    for (k = (j + 1) & (m->cap - 1); m->slots[k].id; k = (k + 1) & (m->cap - 1)) {
        size_t h = home(m, m->slots[k].id);
        if ((k > j && (h <= j || h > k)) || (k < j && (h <= j && h > k))) {
            m->slots[j] = m->slots[k];
            j = k;
        }
    }
    m->slots[j].id = 0;
    m->len--;
    return 1;
}

void pxl_idmap_free(pxl_idmap_t *m)
{
    free(m->slots);
    *m = (pxl_idmap_t){0};
}
