/* What a connection's client has received, so that every answer it did not receive is counted
 * as dropped, however it went away. Answers are byte ranges of the connection's output; an
 * answer is delivered once the client's TCP has acknowledged its last byte (TCP_INFO
 * bytes_acked), since a client that closed before reading it makes its kernel answer the data
 * with a reset instead. For a Unix-domain socket the kernel taking the bytes is the best there
 * is. Loop thread only. */
#ifndef PX_LEDGER_H
#define PX_LEDGER_H

#include "common/buf.h"

#include <stddef.h>
#include <stdint.h>

typedef struct px_ledger {
    px_buf_t ends;    /* uint64_t end offsets of the answers not known to be delivered */
    size_t head;      /* first live entry of ends */
    size_t prune_at;  /* live entries that make the next px_ledger_queued prune */
    uint64_t queued;  /* bytes of answers queued, ever */
    uint64_t written; /* bytes the kernel took */
    uint64_t acked0;  /* bytes_acked before the first answer (the handshake's share) */
    int fd;           /* the TCP socket, or -1 */
} px_ledger_t;

/* tcp_fd: the connection's TCP socket, or -1 for another kind of stream. */
void px_ledger_init(px_ledger_t *l, int tcp_fd);
void px_ledger_free(px_ledger_t *l);
/* n bytes of output were queued, holding whole answer lines: one per '\n'. 0 or -ENOMEM. */
int px_ledger_queued(px_ledger_t *l, const char *bytes, size_t n);
/* The kernel took n more bytes. */
void px_ledger_written(px_ledger_t *l, size_t n);
/* 1 once every answer written is settled: acknowledged by the client, or the connection is
 * gone (reset or closed). Always 1 for a non-TCP stream. */
int px_ledger_settled(px_ledger_t *l);
/* How many answers were not delivered; forgets every answer. Call once, at the close. */
uint64_t px_ledger_undelivered(px_ledger_t *l);

#endif
