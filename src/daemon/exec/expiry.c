/* A binary min-heap of requests by deadline (each request knows its index, so removal is
 * O(log n)), and one uv timer for the top. Popping an expired request hands it to the engine's
 * callback, which takes it out of its queue if it is still there. */
#include "daemon/exec/expiry.h"

#include "common/clock.h"

#include <errno.h>
#include <stdlib.h>

static int before(const px_req_t *a, const px_req_t *b)
{
    return a->deadline_ns < b->deadline_ns;
}

static void place(px_expiry_t *x, size_t i, px_req_t *r)
{
    x->heap[i] = r;
    r->expiry_idx = (uint32_t)i + 1;
}

static void sift_up(px_expiry_t *x, size_t i)
{
    px_req_t *r = x->heap[i];

    while (i > 0 && before(r, x->heap[(i - 1) / 2])) {
        place(x, i, x->heap[(i - 1) / 2]);
        i = (i - 1) / 2;
    }
    place(x, i, r);
}

static void sift_down(px_expiry_t *x, size_t i)
{
    px_req_t *r = x->heap[i];

    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= x->n)
            break;
        if (c + 1 < x->n && before(x->heap[c + 1], x->heap[c]))
            c++;
        if (!before(x->heap[c], r))
            break;
        place(x, i, x->heap[c]);
        i = c;
    }
    place(x, i, r);
}

static void take(px_expiry_t *x, size_t i)
{
    px_req_t *last = x->heap[--x->n];

    x->heap[i]->expiry_idx = 0;
    if (i == x->n)
        return;
    place(x, i, last);
    sift_down(x, i);
    sift_up(x, (size_t)last->expiry_idx - 1);
}

static void on_timer(uv_timer_t *t);

/* Sets the timer for the earliest deadline (rounded up to the loop's milliseconds). */
static void arm(px_expiry_t *x)
{
    uint64_t now, dl;

    if (!x->timer)
        return;
    if (x->n == 0) {
        uv_timer_stop(x->timer);
        x->armed_ns = 0;
        return;
    }
    dl = x->heap[0]->deadline_ns;
    if (dl == x->armed_ns)
        return;
    now = px_now_ns();
    x->armed_ns = dl;
    uv_timer_start(x->timer, on_timer, dl > now ? (dl - now + PX_MS - 1) / PX_MS : 0, 0);
}

static void on_timer(uv_timer_t *t)
{
    px_expiry_t *x = t->data;
    uint64_t now = px_now_ns();

    x->armed_ns = 0;
    while (x->n > 0 && x->heap[0]->deadline_ns <= now) {
        px_req_t *r = x->heap[0];
        take(x, 0);
        x->expired(r, x->arg);
    }
    arm(x);
}

void px_expiry_init(px_expiry_t *x, uv_loop_t *loop, void (*expired)(px_req_t *r, void *arg),
                    void *arg)
{
    *x = (px_expiry_t){.loop = loop, .expired = expired, .arg = arg};
}

int px_expiry_add(px_expiry_t *x, px_req_t *r)
{
    if (!x->timer) {
        if (!(x->timer = malloc(sizeof *x->timer)))
            return -ENOMEM;
        uv_timer_init(x->loop, x->timer);
        uv_unref((uv_handle_t *)x->timer); /* never what keeps the loop running */
        x->timer->data = x;
    }
    if (x->n == x->cap) {
        size_t cap = x->cap ? 2 * x->cap : 64;
        px_req_t **h = realloc(x->heap, cap * sizeof *h);
        if (!h)
            return -ENOMEM;
        x->heap = h;
        x->cap = cap;
    }
    place(x, x->n++, r);
    sift_up(x, x->n - 1);
    arm(x);
    return 0;
}

void px_expiry_remove(px_expiry_t *x, px_req_t *r)
{
    if (!r->expiry_idx)
        return;
    take(x, (size_t)r->expiry_idx - 1);
    arm(x);
}

static void free_timer(uv_handle_t *h)
{
    free(h);
}

void px_expiry_close(px_expiry_t *x)
{
    for (size_t i = 0; i < x->n; i++)
        x->heap[i]->expiry_idx = 0;
    x->n = 0;
    free(x->heap);
    x->heap = NULL;
    x->cap = 0;
    if (x->timer)
        uv_close((uv_handle_t *)x->timer, free_timer);
    x->timer = NULL;
}
