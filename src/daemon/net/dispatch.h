/* One line of the wire protocol, from text to verdict. Loop thread. */
#ifndef PX_DISPATCH_H
#define PX_DISPATCH_H

#include "daemon/net/conn.h"

/* What a line did to its connection. */
enum {
    PX_DISPATCH_OUTPUT = 1,   /* answers were appended to out: flush them */
    PX_DISPATCH_ACCEPTED = 2, /* a request was queued and holds origin until it is answered */
    PX_DISPATCH_CLOSE = 4,    /* close the connection now (out of memory, an HTTP client) */
};

typedef struct px_line_ctx {
    px_net_t *net;
    void *origin;      /* the connection: cancels match on it, answers go back to it */
    px_buf_t *out;     /* answers given on the spot are appended here */
    uint64_t *next_id; /* numbers lines that carry no id */
    uint64_t recv_ns;  /* when the read that brought the line happened */
    uint32_t inflight; /* the connection's requests queued or running */
    unsigned flags;    /* PX_DISPATCH_*, filled by px_dispatch */
} px_line_ctx_t;

/* A partial line of len bytes was dropped because partial lines of all connections hold
 * max_partial_bytes: answers it rejected/overloaded (counted received and rejected). Returns
 * x->flags. */
unsigned px_dispatch_overloaded(px_line_ctx_t *x, size_t len);
/* Handles one line (without its '\n'; too_long: an over-long line was skipped). Returns
 * x->flags. */
unsigned px_dispatch(px_line_ctx_t *x, const char *text, size_t len, int too_long);

#endif
