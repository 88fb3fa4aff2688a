/* The delivery ledger of one connection (see ledger.h). Kept apart from conn.c because it asks
 * the kernel about the socket (linux/tcp.h's tcp_info, whose definitions clash with the
 * <netinet/tcp.h> that libuv's header brings in) and because its rule is small and testable:
 * an answer counts as delivered when its last byte is acknowledged. */
#include "daemon/net/ledger.h"

#include <errno.h>
#include <linux/tcp.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

#define TCP_STATE_CLOSE 7 /* the kernel's TCP_CLOSE (net/tcp_states.h): reset or fully closed */

/* Prune the settled answers once this many are kept, then at twice what a prune left: one
 * getsockopt per hundreds of answers, even for a client that reads nothing. */
#define PRUNE_AT 256

/* bytes_acked and whether the connection is over; -1 when the socket says nothing. */
static int tcp_state(int fd, uint64_t *acked, int *over)
{
    struct tcp_info ti;
    socklen_t len = sizeof ti;

    memset(&ti, 0, sizeof ti);
    if (fd < 0 || getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) != 0 ||
        len < offsetof(struct tcp_info, tcpi_bytes_acked) + sizeof ti.tcpi_bytes_acked)
        return -1;
    *acked = ti.tcpi_bytes_acked;
    *over = ti.tcpi_state == TCP_STATE_CLOSE;
    return 0;
}

/* Bytes of output the client has received for sure. */
static uint64_t delivered(px_ledger_t *l, int *over)
{
    uint64_t acked;

    *over = 0;
    if (tcp_state(l->fd, &acked, over))
        return l->written;
    acked = acked > l->acked0 ? acked - l->acked0 : 0;
    return acked < l->written ? acked : l->written;
}

static size_t live(const px_ledger_t *l)
{
    return l->ends.len / sizeof(uint64_t) - l->head;
}

static void forget_upto(px_ledger_t *l, uint64_t upto)
{
    const uint64_t *e = (const uint64_t *)l->ends.data;
    size_t n = l->ends.len / sizeof(uint64_t);

    while (l->head < n && e[l->head] <= upto)
        l->head++;
    if (l->head == n) {
        l->ends.len = 0;
        l->head = 0;
    } else if (l->head > n / 2) {
        memmove(l->ends.data, e + l->head, (n - l->head) * sizeof(uint64_t));
        l->ends.len = (n - l->head) * sizeof(uint64_t);
        l->head = 0;
    }
}

void px_ledger_init(px_ledger_t *l, int tcp_fd)
{
    int over;

    memset(l, 0, sizeof *l);
    l->fd = tcp_fd;
    l->prune_at = PRUNE_AT;
    if (tcp_state(tcp_fd, &l->acked0, &over))
        l->fd = -1;
}

void px_ledger_free(px_ledger_t *l)
{
    px_buf_free(&l->ends);
}

int px_ledger_queued(px_ledger_t *l, const char *bytes, size_t n)
{
    const char *p = bytes, *nl;

    while ((nl = memchr(p, '\n', n - (size_t)(p - bytes)))) {
        uint64_t end = l->queued + (uint64_t)(nl - bytes) + 1;
        if (px_buf_append(&l->ends, &end, sizeof end))
            return -ENOMEM;
        p = nl + 1;
    }
    l->queued += n;
    if (live(l) >= l->prune_at) {
        int over;
        forget_upto(l, delivered(l, &over));
        l->prune_at = live(l) * 2 > PRUNE_AT ? live(l) * 2 : PRUNE_AT;
    }
    return 0;
}

void px_ledger_written(px_ledger_t *l, size_t n)
{
    l->written += n;
}

int px_ledger_settled(px_ledger_t *l)
{
    int over;
    uint64_t d = delivered(l, &over);

    return l->fd < 0 || over || d >= l->written;
}

uint64_t px_ledger_undelivered(px_ledger_t *l)
{
    int over;
    uint64_t n;

    forget_upto(l, delivered(l, &over));
    n = live(l);
    l->ends.len = 0;
    l->head = 0;
    return n;
}
