/* Space-saving (Metwally et al. 2005): a key already counted is incremented; a new key takes
 * the slot of the smallest counter and inherits its count as error. The top counts are then
 * within `error` of the truth. One small mutex per worker: the loop and that worker are the only
 * writers, a scrape the only other reader. */
#include "daemon/core/hot.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define HALF_NS (60ull * 1000000000ull)

typedef struct slot {
    char key[PX_HOT_KEY_MAX];
    uint8_t len;
    uint64_t count;
} slot_t;

typedef struct sketch {
    slot_t s[PX_HOT_SLOTS];
    uint64_t total;
} sketch_t;

typedef struct wsk {
    pthread_mutex_t mu;
    uint64_t started_ns;      /* start of the current half */
    sketch_t cur[2], prev[2]; /* [0] arrivals, [1] time in microseconds */
} wsk_t;

struct px_hot {
    uint32_t n;
    wsk_t w[];
};

px_hot_t *px_hot_new(uint32_t workers)
{
    px_hot_t *h = calloc(1, sizeof *h + workers * sizeof(wsk_t));

    if (!h)
        return NULL;
    h->n = workers;
    for (uint32_t i = 0; i < workers; i++)
        pthread_mutex_init(&h->w[i].mu, NULL);
    return h;
}

void px_hot_free(px_hot_t *h)
{
    if (!h)
        return;
    for (uint32_t i = 0; i < h->n; i++)
        pthread_mutex_destroy(&h->w[i].mu);
    free(h);
}

/* Under w->mu: moves to a new half when the current one is over. */
static void rotate(wsk_t *w, uint64_t now)
{
    /* Threads pass timestamps read before they took the lock: one older than the half's start
     * belongs to the current half (an unsigned now - started_ns would wrap and wipe both). */
    if (w->started_ns == 0) {
        w->started_ns = now;
    } else if (now > w->started_ns && now - w->started_ns >= HALF_NS) {
        /* More than two halves idle: the previous half is empty too. */
        if (now - w->started_ns >= 2 * HALF_NS)
            memset(w->prev, 0, sizeof w->prev);
        else
            memcpy(w->prev, w->cur, sizeof w->prev);
        memset(w->cur, 0, sizeof w->cur);
        w->started_ns = now;
    }
}

static void add(sketch_t *sk, const char *key, size_t len, uint64_t v)
{
    size_t min = 0;

    if (len > PX_HOT_KEY_MAX)
        len = PX_HOT_KEY_MAX;
    sk->total += v;
    for (size_t i = 0; i < PX_HOT_SLOTS; i++) {
        slot_t *s = &sk->s[i];
        if (s->len == len && s->count && memcmp(s->key, key, len) == 0) {
            s->count += v;
            return;
        }
        if (s->count < sk->s[min].count)
            min = i;
    }
    memcpy(sk->s[min].key, key, len);
    sk->s[min].len = (uint8_t)len;
    sk->s[min].count += v;
}

void px_hot_arrival(px_hot_t *h, uint32_t worker, const char *key, size_t len, uint64_t now_ns)
{
    wsk_t *w = &h->w[worker];

    pthread_mutex_lock(&w->mu);
    rotate(w, now_ns);
    add(&w->cur[0], key, len, 1);
    pthread_mutex_unlock(&w->mu);
}

void px_hot_time(px_hot_t *h, uint32_t worker, const char *key, size_t len, uint64_t ns,
                 uint64_t now_ns)
{
    wsk_t *w = &h->w[worker];

    pthread_mutex_lock(&w->mu);
    rotate(w, now_ns);
    add(&w->cur[1], key, len, ns / 1000 + 1);
    pthread_mutex_unlock(&w->mu);
}

typedef struct entry {
    char key[PX_HOT_KEY_MAX];
    uint8_t len;
    uint32_t worker;
    uint64_t count;
} entry_t;

static int by_count(const void *a, const void *b)
{
    const entry_t *x = a, *y = b;
    return x->count < y->count ? 1 : x->count > y->count ? -1 : 0;
}

/* Merges both halves of every worker for one dimension; a key lives on one worker (routing),
 * so merging across workers never double counts. */
static size_t collect(px_hot_t *h, int dim, uint64_t now, entry_t *out)
{
    size_t n = 0;

    for (uint32_t wi = 0; wi < h->n; wi++) {
        wsk_t *w = &h->w[wi];
        size_t first = n;
        pthread_mutex_lock(&w->mu);
        rotate(w, now);
        for (int half = 0; half < 2; half++) {
            sketch_t *sk = half ? &w->prev[dim] : &w->cur[dim];
            for (size_t i = 0; i < PX_HOT_SLOTS; i++) {
                slot_t *s = &sk->s[i];
                size_t j;
                if (!s->count)
                    continue;
                for (j = first; j < n; j++)
                    if (out[j].len == s->len && memcmp(out[j].key, s->key, s->len) == 0)
                        break;
                if (j == n) {
                    memcpy(out[n].key, s->key, s->len);
                    out[n].len = s->len;
                    out[n].worker = wi;
                    out[n++].count = 0;
                }
                out[j].count += s->count;
            }
        }
        pthread_mutex_unlock(&w->mu);
    }
    qsort(out, n, sizeof *out, by_count);
    return n;
}

json_t *px_hot_top(px_hot_t *h, size_t top, uint64_t now_ns)
{
    entry_t *e = malloc((size_t)h->n * 2 * PX_HOT_SLOTS * sizeof *e);
    json_t *o = json_object();

    if (!e)
        return o;
    for (int dim = 0; dim < 2; dim++) {
        size_t n = collect(h, dim, now_ns, e);
        json_t *a = json_array();
        for (size_t i = 0; i < n && i < top; i++) {
            json_t *k = json_stringn(e[i].key, e[i].len);
            if (!k) /* a cut inside a multi-byte character */
                k = json_string("(not UTF-8 when cut)");
            json_array_append_new(
                a, dim ? json_pack("{so sI sf}", "key", k, "worker", (json_int_t)e[i].worker, "ms",
                                   (double)e[i].count / 1e3)
                       : json_pack("{so sI sI}", "key", k, "worker", (json_int_t)e[i].worker,
                                   "count", (json_int_t)e[i].count));
        }
        json_object_set_new(o, dim ? "by_time_ms" : "by_arrivals", a);
    }
    free(e);
    return o;
}

double px_hot_imbalance(px_hot_t *h, uint64_t now_ns)
{
    uint64_t max = 0, sum = 0;

    for (uint32_t i = 0; i < h->n; i++) {
        wsk_t *w = &h->w[i];
        uint64_t t;
        pthread_mutex_lock(&w->mu);
        rotate(w, now_ns);
        t = w->cur[0].total + w->prev[0].total;
        pthread_mutex_unlock(&w->mu);
        sum += t;
        if (t > max)
            max = t;
    }
    return sum ? (double)max * h->n / (double)sum : 1.0;
}
