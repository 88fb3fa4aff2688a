/* Growable buffer: doubling growth so appends are amortised O(1). */
#include "common/buf.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int px_buf_reserve(px_buf_t *b, size_t extra)
{
    size_t need = b->len + extra, cap = b->cap ? b->cap : 256;
    char *p;

    if (need <= b->cap)
        return 0;
    while (cap < need)
        cap *= 2;
    p = realloc(b->data, cap);
    if (!p)
        return -ENOMEM;
    b->data = p;
    b->cap = cap;
    return 0;
}

int px_buf_append(px_buf_t *b, const void *p, size_t n)
{
    if (px_buf_reserve(b, n))
        return -ENOMEM;
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

int px_buf_puts(px_buf_t *b, const char *s)
{
    return px_buf_append(b, s, strlen(s));
}

int px_buf_printf(px_buf_t *b, const char *fmt, ...)
{
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || px_buf_reserve(b, (size_t)n + 1))
        return -ENOMEM;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

int px_buf_uint(px_buf_t *b, uint64_t n)
{
    char tmp[24];
    int i = sizeof tmp;

    do
        tmp[--i] = (char)('0' + n % 10);
    while ((n /= 10) > 0);
    return px_buf_append(b, tmp + i, sizeof tmp - (size_t)i);
}

int px_buf_fixed3(px_buf_t *b, double v)
{
    uint64_t m;

    if (!(v >= 0) || v > 1e15) /* negative, NaN or absurd: let printf say it */
        return px_buf_printf(b, "%.3f", v);
    m = (uint64_t)(v * 1000.0 + 0.5);
    if (px_buf_uint(b, m / 1000) || px_buf_reserve(b, 4))
        return -1;
    b->data[b->len++] = '.';
    b->data[b->len++] = (char)('0' + m / 100 % 10);
    b->data[b->len++] = (char)('0' + m / 10 % 10);
    b->data[b->len++] = (char)('0' + m % 10);
    return 0;
}

/* Length of the valid UTF-8 sequence at s (1 to 4), or 0 when it is not one. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    size_t len = s[0] >= 0xf0 ? 4 : s[0] >= 0xe0 ? 3 : s[0] >= 0xc2 ? 2 : 0;

    if (len == 0 || s[0] > 0xf4 || len > n)
        return 0;
    for (size_t i = 1; i < len; i++)
        if ((s[i] & 0xc0) != 0x80)
            return 0;
    if ((s[0] == 0xe0 && s[1] < 0xa0) || (s[0] == 0xed && s[1] > 0x9f) || /* overlong, surrogate */
        (s[0] == 0xf0 && s[1] < 0x90) || (s[0] == 0xf4 && s[1] > 0x8f))   /* overlong, > U+10FFFF */
        return 0;
    return len;
}

int px_buf_json_string(px_buf_t *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *u = (const unsigned char *)s;

    if (px_buf_reserve(b, n + 2))
        return -ENOMEM;
    b->data[b->len++] = '"';
    for (size_t i = 0; i < n; i++) {
        unsigned char c = u[i];
        char esc[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
        const char *e = NULL;
        size_t elen = 2, seq;

        if (c >= 0x80) {
            /* Messages quote programs' output and cut it to fit: keep the JSON valid by
             * replacing whatever is not UTF-8 with U+FFFD. */
            if ((seq = utf8_len(u + i, n - i)) == 0) {
                if (px_buf_append(b, "\\ufffd", 6))
                    return -ENOMEM;
                continue;
            }
            if (px_buf_append(b, s + i, seq))
                return -ENOMEM;
            i += seq - 1;
            continue;
        }
        switch (c) {
        case '"':
            e = "\\\"";
            break;
        case '\\':
            e = "\\\\";
            break;
        case '\n':
            e = "\\n";
            break;
        case '\r':
            e = "\\r";
            break;
        case '\t':
            e = "\\t";
            break;
        default:
            if (c < 0x20) {
                e = esc;
                elen = 6;
            }
        }
        if (e ? px_buf_append(b, e, elen) : px_buf_append(b, &s[i], 1))
            return -ENOMEM;
    }
    return px_buf_append(b, "\"", 1);
}

void px_buf_free(px_buf_t *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}
