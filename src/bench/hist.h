/* parex-bench's latency histogram: log-linear like hist.h but finer. Each power of two above
 * 256 is split into 128 equal buckets, so a bucket is 1/128 of its lower bound wide and any
 * reported quantile is within 0.8% of a recorded value (hist.h's 64 per octave gives 1.6%,
 * too coarse for the 1% the benchmark promises; scaling the unit would not help, since the
 * relative error is the bucket width over the value whatever the unit). Single-threaded. */
#ifndef PX_BENCH_HIST_H
#define PX_BENCH_HIST_H

#include <stdint.h>
#include <stdio.h>

#define PX_BHIST_SUB_BITS 8 /* values < 2^8 exact; then 2^(8-1) = 128 buckets per octave */
#define PX_BHIST_MAX_BITS                                                                          \
    44 /* 2^44 ns is about 4.9 hours; larger values land in the last bucket                        \
        */
#define PX_BHIST_BUCKETS ((PX_BHIST_MAX_BITS - PX_BHIST_SUB_BITS + 2) << (PX_BHIST_SUB_BITS - 1))

typedef struct px_bhist {
    uint64_t count, max, min;
    double sum;
    uint64_t b[PX_BHIST_BUCKETS];
} px_bhist_t;

void px_bhist_init(px_bhist_t *h);
void px_bhist_record(px_bhist_t *h, uint64_t v);
/* Value at quantile q (0..1): the upper bound of its bucket, capped at the largest recorded. */
uint64_t px_bhist_quantile(const px_bhist_t *h, double q);
double px_bhist_mean(const px_bhist_t *h);
/* The latency report both bench programs print, in milliseconds (h holds nanoseconds): JSON
 * members without braces ("p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms", "mean_ms"), or
 * one text line each (p50 to max). */
void px_bhist_print_json(FILE *f, const px_bhist_t *h);
void px_bhist_print_text(FILE *f, const px_bhist_t *h);

/* For tests: the bucket of v and the largest value that bucket holds. */
uint32_t px_bhist_index(uint64_t v);
uint64_t px_bhist_upper(uint32_t idx);

#endif
