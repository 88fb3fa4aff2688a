/* libparex's private interface: the pieces the blocking and async contexts share. Nothing here
 * is exported from the shared object (built with -fvisibility=hidden). */
#ifndef PXL_INTERNAL_H
#define PXL_INTERNAL_H

#include "parex/client.h"
#include "common/buf.h"

#include <stddef.h>

#define PXL_DEFAULT_MAX_LINE ((size_t)64 << 20) /* answers: results can be large */
/* Requests: parexd's default max_line_bytes. A longer line would be answered line_too_long
 * with a null id, which no request could be matched to, so it is refused here instead. */
#define PXL_REQUEST_MAX_LINE ((size_t)1 << 20)
#define PXL_KEY_MAX 256
#define PXL_ERRLEN 256

/* The reader's state, embedded by both contexts. */
struct parex_reader {
    px_buf_t buf;
    size_t start;   /* first byte not yet taken out */
    size_t scanned; /* bytes after start known to hold no newline */
    size_t max_line;
    int skipping; /* dropping the rest of an over-long line */
    char err[PXL_ERRLEN];
};

void pxl_reader_init(parex_reader_t *r, size_t max_line);
void pxl_reader_clear(parex_reader_t *r);

/* Parses one answer line; NULL with err filled when it is not a JSON object (or on OOM). */
parex_reply_t *pxl_reply_parse(const char *line, size_t len, char *err, size_t errlen);
/* The answer the library makes for a request the connection ended under. */
parex_reply_t *pxl_reply_disconnected(long long id, const char *message);

/* Request lines, each appended to out with its newline. On a bad argument they return -1
 * with err filled and out unchanged. token may be NULL. */
int pxl_line_request(px_buf_t *out, long long id, const parex_request_t *req, const char *token,
                     size_t max_line, char *err, size_t errlen);
int pxl_line_cancel(px_buf_t *out, long long id, long long target, const char *token);
int pxl_line_control(px_buf_t *out, long long id, const char *name, const char *fields_json,
                     const char *token, size_t max_line, char *err, size_t errlen);
/* A caller's object: keeps its id (*id = 0) or takes the given one. */
int pxl_line_object(px_buf_t *out, long long *id, const char *object_json, const char *token,
                    size_t max_line, char *err, size_t errlen);

/* Opens a non-blocking, close-on-exec socket to addr and starts connecting. Returns the fd
 * (*in_progress set when the connect has not completed yet), or -1 with err filled and
 * *code set to an enum parex_error. */
int pxl_dial(const char *addr, int *in_progress, int *code, char *err, size_t errlen);
/* After a connect completed: 0, or -1 with err filled. */
int pxl_connect_result(int fd, const char *addr, char *err, size_t errlen);

/* id -> (callback, privdata) for the async context: open addressing, backward-shift delete. */
typedef struct pxl_slot {
    long long id; /* 0: empty */
    parex_callback_fn *fn;
    void *priv;
} pxl_slot_t;

typedef struct pxl_idmap {
    pxl_slot_t *slots;
    size_t cap, len; /* cap a power of two */
} pxl_idmap_t;

int pxl_idmap_put(pxl_idmap_t *m, long long id, parex_callback_fn *fn, void *priv);
/* Removes id; 1 and *out filled when it was there. */
int pxl_idmap_take(pxl_idmap_t *m, long long id, pxl_slot_t *out);
void pxl_idmap_free(pxl_idmap_t *m);

#endif
