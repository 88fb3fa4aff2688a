/* A log-linear latency histogram: above 128 each power of two is split into 64 equal buckets,
 * so a recorded value is known to within 1/64 (< 1.6%). Recording is relaxed atomic adds, safe
 * with one writer and any number of readers; histograms merge by adding buckets, so per-worker
 * histograms are summed on scrape instead of sharing one hot cache line. */
#ifndef PX_HIST_H
#define PX_HIST_H

#include <stdatomic.h>
#include <stdint.h>

#define PX_HIST_SUB_BITS 7 /* 2^7 = 128 sub-buckets per octave */
#define PX_HIST_MAX_BITS 40
#define PX_HIST_BUCKETS ((PX_HIST_MAX_BITS - PX_HIST_SUB_BITS + 2) << (PX_HIST_SUB_BITS - 1))

typedef struct px_hist {
    _Atomic uint64_t count, sum;
    _Atomic uint64_t max;
    _Atomic uint64_t b[PX_HIST_BUCKETS];
} px_hist_t;

/* Plain (non-atomic) copy, for merging and queries. */
typedef struct px_hist_snap {
    uint64_t count, sum, max;
    uint64_t b[PX_HIST_BUCKETS];
} px_hist_snap_t;

/* Values are in any unit the caller picks (parexd uses microseconds). Any number of writers. */
void px_hist_record(px_hist_t *h, uint64_t v);
/* Adds h into s (s zeroed by the caller first). Any thread. */
void px_hist_merge(px_hist_snap_t *s, const px_hist_t *h);
/* Value at quantile q (0..1): the upper bound of the bucket holding it, capped at max. */
uint64_t px_hist_quantile(const px_hist_snap_t *s, double q);
/* Number of recorded values <= v, to within one bucket. */
uint64_t px_hist_count_le(const px_hist_snap_t *s, uint64_t v);

/* The log-linear layout itself, for any resolution: values below 2^sub_bits have a bucket
 * each; above, each power of two is split into 2^(sub_bits-1) equal buckets; values of
 * max_bits bits or more land in the last bucket. parex-bench uses a finer one (sub_bits 8). */
uint32_t px_loglin_index(uint64_t v, unsigned sub_bits, unsigned max_bits);
uint64_t px_loglin_upper(uint32_t idx, unsigned sub_bits);

/* For tests and tools: the bucket of v and the largest value that bucket holds. */
uint32_t px_hist_index(uint64_t v);
uint64_t px_hist_upper(uint32_t idx);

#endif
