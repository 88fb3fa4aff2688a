/* Bucket layout (HdrHistogram's idea, sized down): values below 2^SUB_BITS have a bucket each;
 * above that, each power of two is split into 2^(SUB_BITS-1) equal buckets. */
#include "common/hist.h"

#include <string.h>

uint32_t px_loglin_index(uint64_t v, unsigned sub_bits, unsigned max_bits)
{
    uint32_t half = 1u << (sub_bits - 1);
    int msb, shift;

    if (v < (1u << sub_bits))
        return (uint32_t)v;
    msb = 63 - __builtin_clzll(v);
    if (msb >= (int)max_bits)
        return ((max_bits - sub_bits + 2) << (sub_bits - 1)) - 1;
    shift = msb - (int)(sub_bits - 1);
    return (uint32_t)shift * half + (uint32_t)(v >> shift);
}

uint64_t px_loglin_upper(uint32_t idx, unsigned sub_bits)
{
    uint32_t half = 1u << (sub_bits - 1), shift;

    if (idx < (1u << sub_bits))
        return idx;
    shift = idx / half - 1;
    return (((uint64_t)(idx - shift * half) + 1) << shift) - 1;
}

uint32_t px_hist_index(uint64_t v)
{
    return px_loglin_index(v, PX_HIST_SUB_BITS, PX_HIST_MAX_BITS);
}

uint64_t px_hist_upper(uint32_t idx)
{
    return px_loglin_upper(idx, PX_HIST_SUB_BITS);
}

void px_hist_record(px_hist_t *h, uint64_t v)
{
    atomic_fetch_add_explicit(&h->b[px_hist_index(v)], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->count, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->sum, v, memory_order_relaxed);
    /* Several workers record into one handler's histogram: raise the max by CAS, never lower
     * it with a stale load-then-store. */
    uint64_t m = atomic_load_explicit(&h->max, memory_order_relaxed);
    while (v > m && !atomic_compare_exchange_weak_explicit(&h->max, &m, v, memory_order_relaxed,
                                                           memory_order_relaxed))
        ;
}

void px_hist_merge(px_hist_snap_t *s, const px_hist_t *h)
{
    uint64_t m = atomic_load_explicit(&h->max, memory_order_relaxed);
    uint64_t total = 0;

    /* Count is the sum of the buckets read, so le="+Inf" always equals _count. */
    for (uint32_t i = 0; i < PX_HIST_BUCKETS; i++) {
        uint64_t n = atomic_load_explicit(&h->b[i], memory_order_relaxed);
        s->b[i] += n;
        total += n;
    }
    s->count += total;
    s->sum += atomic_load_explicit(&h->sum, memory_order_relaxed);
    if (m > s->max)
        s->max = m;
}

uint64_t px_hist_quantile(const px_hist_snap_t *s, double q)
{
    uint64_t rank, seen = 0;

    if (s->count == 0)
        return 0;
    rank = (uint64_t)(q * (double)s->count + 0.5);
    if (rank < 1)
        rank = 1;
    for (uint32_t i = 0; i < PX_HIST_BUCKETS; i++) {
        seen += s->b[i];
        if (seen >= rank) {
            uint64_t up = px_hist_upper(i);
            return up < s->max ? up : s->max;
        }
    }
    return s->max;
}

uint64_t px_hist_count_le(const px_hist_snap_t *s, uint64_t v)
{
    uint64_t n = 0;
    uint32_t last = px_hist_index(v);

    for (uint32_t i = 0; i <= last && i < PX_HIST_BUCKETS; i++)
        n += s->b[i];
    return n;
}
