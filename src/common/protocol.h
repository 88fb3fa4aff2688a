/* Wire protocol v1: parsing one request line and formatting one response line. Pure functions,
 * no I/O, so the fuzzers and unit tests drive them directly. */
#ifndef PX_PROTOCOL_H
#define PX_PROTOCOL_H

#include "common/buf.h"

#include <jansson.h>
#include <stddef.h>

#define PX_KEY_MAX 256

/* Invalid-line codes; the order is the metrics label order. */
enum px_invalid {
    PX_INV_BAD_JSON,
    PX_INV_NOT_AN_OBJECT,
    PX_INV_MISSING_KEY,
    PX_INV_BAD_FIELD,
    PX_INV_LINE_TOO_LONG,
    PX_INV_UNKNOWN_OP,
    PX_INV_COUNT
};
const char *px_invalid_code(enum px_invalid c);

enum px_line_kind { PX_LINE_REQUEST, PX_LINE_CONTROL, PX_LINE_CANCEL, PX_LINE_INVALID };

#define PX_DEADLINE_MAX_MS 86400000

typedef struct px_line {
    enum px_line_kind kind;
    json_t *root;    /* owned; everything below points into it */
    json_t *id;      /* NULL when absent (or unusable, for an invalid line) */
    const char *key; /* PX_LINE_REQUEST */
    size_t key_len;
    const char *op;       /* "echo" when absent */
    json_t *payload;      /* never NULL: json null when absent */
    const char *control;  /* PX_LINE_CONTROL: the command name */
    json_t *cancel;       /* PX_LINE_CANCEL: the id of the request to cancel */
    int64_t deadline_ms;  /* 0 when absent */
    json_t *token;        /* the "token" member, any type, or NULL */
    enum px_invalid code; /* PX_LINE_INVALID */
    char message[320];
} px_line_t;

/* Parses one line (without its '\n'). Always fills line; free it with px_line_free. */
void px_line_parse(px_line_t *line, const char *text, size_t len);
void px_line_free(px_line_t *line);
/* Marks the line invalid with a formatted message. */
void px_line_invalid(px_line_t *line, enum px_invalid code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Appends the compact JSON text of v (any type). */
int px_json_append(px_buf_t *b, const json_t *v);

/* One response line. id is JSON text (NULL: null); worker < 0 is omitted; queue_ms < 0 omits the
 * timings; result is used when status is "ok", code/message otherwise. extra, when set, is
 * appended as further members (",\"retry_after_ms\":5"). */
typedef struct px_resp {
    const char *id;
    size_t id_len;
    const char *status;
    int worker;
    const json_t *result;
    const char *result_text; /* used instead of result when set: JSON text */
    size_t result_len;
    const char *code;
    const char *message;
    double queue_ms, run_ms;
    const char *extra;
} px_resp_t;
int px_resp_format(px_buf_t *b, const px_resp_t *r);

#endif
