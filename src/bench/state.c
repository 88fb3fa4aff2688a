/* The end of a run, shared by the run (run.c) and its connections (conn.c): counting and
 * printing protocol errors, and finishing once nothing is due or wanted. Calls nothing above it,
 * so the two files that use it never call each other in a circle. */
#include "bench/int.h"

#include <stdarg.h>
#include <stdio.h>

static void on_close(uv_handle_t *h) {}

void px_bench_error(px_bench_t *b, const char *fmt, ...)
{
    va_list ap;

    b->res->errors++;
    if (b->printed++ >= PX_BENCH_MAX_PRINTED) {
        if (b->printed == PX_BENCH_MAX_PRINTED + 1)
            fprintf(stderr, "parex-bench: error: further errors are counted, not printed\n");
        return;
    }
    fputs("parex-bench: error: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

void px_bench_finish(px_bench_t *b)
{
    if (b->finished)
        return;
    b->finished = 1;
    if (b->last_answer_ns > b->start_ns && b->started)
        b->res->seconds = (double)(b->last_answer_ns - b->start_ns) / 1e9;
    for (uint32_t i = 0; i < b->o->connections; i++) {
        px_bconn_t *c = &b->conns[i];
        if (!uv_is_closing((uv_handle_t *)&c->tcp))
            uv_close((uv_handle_t *)&c->tcp, on_close);
        c->closed = 1;
    }
    uv_close((uv_handle_t *)&b->timer, on_close);
    uv_close((uv_handle_t *)&b->sigint, on_close);
}

void px_bench_check_done(px_bench_t *b)
{
    if (b->started && b->outstanding == 0 && !px_bench_may_send(b))
        px_bench_finish(b);
}
