/* Line framing. The limit check happens while bytes arrive, so a client streaming an endless
 * line costs at most max_line_bytes of memory and gets its line_too_long answer at once. */
#include "daemon/net/framer.h"

#include <errno.h>
#include <string.h>

void px_framer_init(px_framer_t *f, size_t max)
{
    memset(f, 0, sizeof *f);
    f->max = max;
}

static void emit(px_framer_t *f, const char *line, size_t len, px_line_cb cb, void *arg)
{
    if (len > 0 && line[len - 1] == '\r')
        len--;
    if (len > f->max)
        cb(arg, NULL, len, 1);
    else
        cb(arg, line, len, 0);
}

int px_framer_feed(px_framer_t *f, const char *data, size_t len, px_line_cb cb, void *arg)
{
    const char *p = data, *end = data + len, *nl;

    while (p < end) {
        nl = memchr(p, '\n', (size_t)(end - p));
        if (f->skipping) {
            if (!nl)
                return 0;
            f->skipping = 0;
            p = nl + 1;
            continue;
        }
        if (!nl) {
            /* +1: the last byte may be the '\r' of a line of exactly max bytes. */
            if (f->partial.len + (size_t)(end - p) > f->max + 1) {
                cb(arg, NULL, f->partial.len + (size_t)(end - p), 1);
                f->partial.len = 0;
                f->skipping = 1;
                return 0;
            }
            return px_buf_append(&f->partial, p, (size_t)(end - p)) ? -ENOMEM : 0;
        }
        if (f->partial.len > 0) {
            if (f->partial.len + (size_t)(nl - p) > f->max + 1) {
                cb(arg, NULL, f->partial.len + (size_t)(nl - p), 1);
            } else {
                if (px_buf_append(&f->partial, p, (size_t)(nl - p)))
                    return -ENOMEM;
                emit(f, f->partial.data, f->partial.len, cb, arg);
            }
            /* No buffer kept between lines: partial lines of every connection count against
             * one budget (max_partial_bytes), and an idle connection should hold none. */
            px_buf_free(&f->partial);
        } else {
            emit(f, p, (size_t)(nl - p), cb, arg);
        }
        p = nl + 1;
    }
    return 0;
}

void px_framer_finish(px_framer_t *f, px_line_cb cb, void *arg)
{
    if (!f->skipping && f->partial.len > 0)
        emit(f, f->partial.data, f->partial.len, cb, arg);
    px_buf_free(&f->partial);
    f->skipping = 0;
}

void px_framer_drop(px_framer_t *f)
{
    px_buf_free(&f->partial);
    f->skipping = 1;
}

void px_framer_free(px_framer_t *f)
{
    px_buf_free(&f->partial);
}
