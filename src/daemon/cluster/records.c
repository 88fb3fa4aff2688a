/* The records of one NATS message. A stored request message carries every request one ingress
 * received for one partition while its previous store was on its way, and its answer message the
 * answers of all of them: one JetStream write, one delivery and one acknowledgement then serve
 * many requests, which is what lets a partition keep up with its workers (each of those is a
 * RAFT round on an R3 stream).
 *
 * A record is "<message id> <length>\n<bytes>\n": the length makes any byte safe in the body. */
#include "daemon/cluster/internal.h"

#include <stdlib.h>
#include <string.h>

int cl_rec_append(px_buf_t *b, const char *msgid, const char *data, size_t len)
{
    if (px_buf_puts(b, msgid) || px_buf_puts(b, " ") || px_buf_uint(b, len) ||
        px_buf_puts(b, "\n") || px_buf_append(b, data, len) || px_buf_puts(b, "\n"))
        return -1;
    return 0;
}

int cl_rec_next(const char **pos, const char *end, cl_rec_t *r)
{
    const char *p = *pos, *sp, *nl;
    char *num_end;
    unsigned long long len;

    if (p >= end)
        return 0;
    if (!(sp = memchr(p, ' ', (size_t)(end - p))) || sp == p ||
        (size_t)(sp - p) >= sizeof r->msgid || !(nl = memchr(sp, '\n', (size_t)(end - sp))))
        return -1;
    len = strtoull(sp + 1, &num_end, 10);
    if (num_end != nl || len > (unsigned long long)(end - nl - 1) ||
        (size_t)(end - nl - 1) - len < 1 || nl[1 + len] != '\n')
        return -1;
    memcpy(r->msgid, p, (size_t)(sp - p));
    r->msgid[sp - p] = 0;
    r->data = nl + 1;
    r->len = (size_t)len;
    *pos = nl + 1 + len + 1;
    return 1;
}
