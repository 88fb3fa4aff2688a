/* libparex: the C client of parexd, in the style of hiredis.
 *
 * Three layers, each usable alone:
 *  - the reader (parex_reader_*): no I/O; feed it the bytes a socket gave you, take out parsed
 *    answers. Any event loop can drive it.
 *  - the blocking context (parex_connect, parex_call, parex_append + parex_get_reply): one
 *    connection, pipelined; the library assigns request ids.
 *  - the async context (parex_async_*): non-blocking; every request has a callback that runs
 *    exactly once, with parexd's answer or, for requests still pending when the connection
 *    ends or the context is freed, a PAREX_DISCONNECTED answer. An event loop attaches through
 *    parex_async_set_events (see <parex/adapters/libuv.h>).
 *
 * Payloads and results cross as JSON text. Transport errors (parex_errstr) are apart from an
 * answer's status: a request parexd answered "failed" is a successful call whose reply says so.
 * Ownership: every parex_reply_t handed out, to a caller or to a callback, belongs to the
 * receiver, who frees it with parex_reply_free. The library never frees a context on its own,
 * not even after a disconnect: the caller frees it (parex_free, parex_async_free).
 *
 * Thread safety: a context (or reader) is used by one thread at a time. Link with
 * `pkg-config --cflags --libs parex`.
 */
#ifndef PAREX_CLIENT_H
#define PAREX_CLIENT_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PAREX_API __attribute__((visibility("default")))

/* Transport and argument errors (parex_err). Answers never set these. */
enum parex_error {
    PAREX_ERR_NONE = 0,
    PAREX_ERR_ARG = 1,      /* a bad argument; nothing was sent, the context is still usable */
    PAREX_ERR_IO = 2,       /* a socket call failed (errno in the message) */
    PAREX_ERR_EOF = 3,      /* parexd closed the connection */
    PAREX_ERR_PROTOCOL = 4, /* an answer that is not a JSON object, or over max_line_bytes */
    PAREX_ERR_TIMEOUT = 5,  /* connect_timeout_ms or timeout_ms passed */
    PAREX_ERR_OOM = 6,
};

/* An answer's status. PAREX_DISCONNECTED is made by the library, never sent by parexd. */
typedef enum parex_status {
    PAREX_OK = 0,
    PAREX_FAILED = 1,
    PAREX_REJECTED = 2,
    PAREX_INVALID = 3,
    PAREX_DISCONNECTED = 4,
} parex_status_t;

/* One answer, one allocation. Strings are NUL-terminated, NULL when the answer has no such
 * member; numbers are -1 when absent. */
typedef struct parex_reply {
    parex_status_t status;
    long long id;             /* the answer's id when it is an integer (as the library sends) */
    const char *id_json;      /* the id as JSON text ("7", "\"job-1\"", "null") */
    const char *code;         /* error.code: "queue_full", "handler_error", ... */
    const char *message;      /* error.message: what happened and what to do */
    const char *result;       /* the result as compact JSON text (status ok) */
    int worker;               /* the worker that owns (or ran) the key */
    double queue_ms;          /* receipt to start */
    double run_ms;            /* handler time */
    long long retry_after_ms; /* rejections: when a retry may succeed */
    const char *line;         /* the whole answer line, without its newline */
    size_t line_len;
} parex_reply_t;

PAREX_API void parex_reply_free(parex_reply_t *reply);
/* "ok", "failed", "rejected", "invalid" or "disconnected". */
PAREX_API const char *parex_status_str(parex_status_t status);

/* A request. op NULL means "echo"; payload is JSON text or NULL (null); deadline_ms 0 means
 * none. */
typedef struct parex_request {
    const char *op;
    const char *key;
    const char *payload;
    long long deadline_ms;
} parex_request_t;

/* Connection options; a zeroed struct (or NULL) gives the defaults. */
typedef struct parex_options {
    const char *token;      /* auth_token, added to every line; NULL: none */
    int connect_timeout_ms; /* blocking context; 0: 5000 (async: bound it with a loop timer) */
    int timeout_ms;         /* blocking reads and writes; 0: wait forever */
    size_t max_line_bytes;  /* longest request line, as parexd's max_line_bytes; 0: 1 MiB */
} parex_options_t;

/* ---- The reader: bytes in, answers out, no I/O ---- */

typedef struct parex_reader parex_reader_t;

PAREX_API parex_reader_t *parex_reader_create(size_t max_line_bytes); /* 0: 64 MiB */
PAREX_API void parex_reader_free(parex_reader_t *r);
/* Copies n bytes in. 0, or -1 when out of memory. */
PAREX_API int parex_reader_feed(parex_reader_t *r, const char *buf, size_t n);
/* The next complete answer: 1 and *out set (the caller owns it), 0 when no complete line is
 * buffered, -1 for a line that is not an answer (not a JSON object, or longer than
 * max_line_bytes): the line is skipped and parex_reader_errstr says why. */
PAREX_API int parex_reader_get_reply(parex_reader_t *r, parex_reply_t **out);
PAREX_API const char *parex_reader_errstr(const parex_reader_t *r);
/* Bytes fed but not yet taken out as answers. */
PAREX_API size_t parex_reader_buffered(const parex_reader_t *r);

/* ---- The blocking context ---- */

typedef struct parex_ctx parex_ctx_t;

/* Connects to "HOST:PORT", "[v6]:PORT" or "unix:/path". Returns NULL only when out of memory;
 * otherwise check parex_err(): on failure the context holds the reason and can only be
 * freed. */
PAREX_API parex_ctx_t *parex_connect(const char *addr, const parex_options_t *opts);
PAREX_API void parex_free(parex_ctx_t *c);
PAREX_API int parex_err(const parex_ctx_t *c); /* enum parex_error of the last call */
PAREX_API const char *parex_errstr(const parex_ctx_t *c);
PAREX_API int parex_fd(const parex_ctx_t *c);

/* Queues a request (written by the next parex_get_reply or parex_flush). Returns its id (> 0),
 * or -1: PAREX_ERR_ARG for a key of 0 or over 256 bytes or not UTF-8, a payload that is not
 * JSON (duplicate names included, as parexd rules), a line over max_line_bytes (nothing
 * queued); or the context's transport error. A payload is sent as given, raw newlines as
 * spaces. */
PAREX_API long long parex_append(parex_ctx_t *c, const parex_request_t *req);
/* {"cancel": id}: its answer says whether the request was still queued. */
PAREX_API long long parex_append_cancel(parex_ctx_t *c, long long id);
/* {"control": name, ...fields}: fields_json is a JSON object text or NULL. */
PAREX_API long long parex_append_control(parex_ctx_t *c, const char *name, const char *fields_json);
/* A request object written by the caller (JSON object text, without newline), sent as one
 * compact line with the token added; its own id is kept (returns 0 then) or one is assigned. */
PAREX_API long long parex_append_json(parex_ctx_t *c, const char *object_json);
/* A line exactly as the caller has it (a newline is added when it has none): no id, no token,
 * no check. For relaying lines (parexctl send < file); its answer is matched by the caller. */
PAREX_API int parex_append_raw(parex_ctx_t *c, const char *line, size_t len);
/* Writes everything queued. 0 or -1. */
PAREX_API int parex_flush(parex_ctx_t *c);
/* Tells parexd no more lines follow (shutdown of the write side): it answers what it got and
 * closes, after which parex_get_reply fails with PAREX_ERR_EOF. */
PAREX_API int parex_send_eof(parex_ctx_t *c);
/* Flushes, then blocks until the next answer (in arrival order). 0 and *out (caller frees), or
 * -1 with parex_err/parex_errstr. */
PAREX_API int parex_get_reply(parex_ctx_t *c, parex_reply_t **out);
/* Never blocks: writes what the socket takes, reads what it has, then 1 and *out (caller
 * frees) when an answer is complete, 0 when none is yet (wait for parex_fd to be readable),
 * -1 on an error or once parexd has closed the connection and every answer was taken. */
PAREX_API int parex_poll_reply(parex_ctx_t *c, parex_reply_t **out);
/* Appends req and waits for its own answer; answers to earlier appends that arrive first are
 * kept for parex_get_reply. NULL on a transport error. */
PAREX_API parex_reply_t *parex_call(parex_ctx_t *c, const parex_request_t *req);

/* ---- The async context ---- */

typedef struct parex_async parex_async_t;

/* Runs exactly once per request; the reply belongs to the callback (parex_reply_free). */
typedef void parex_callback_fn(parex_async_t *ac, parex_reply_t *reply, void *privdata);
/* Once, when the connection ends: status 0 after parex_async_disconnect, -1 on an error
 * (parex_async_errstr). The context stays allocated until parex_async_free. */
typedef void parex_disconnect_fn(parex_async_t *ac, int status);
typedef void parex_connect_fn(parex_async_t *ac, int status);

/* The event-loop hooks an adapter fills in: start/stop watching the fd for reading and
 * writing, and cleanup when the context lets go of the loop. */
typedef struct parex_events {
    void *data;
    void (*add_read)(void *data);
    void (*del_read)(void *data);
    void (*add_write)(void *data);
    void (*del_write)(void *data);
    void (*cleanup)(void *data);
} parex_events_t;

/* Starts a non-blocking connect. NULL only when out of memory; check parex_async_err(). */
PAREX_API parex_async_t *parex_async_connect(const char *addr, const parex_options_t *opts);
PAREX_API int parex_async_err(const parex_async_t *ac);
PAREX_API const char *parex_async_errstr(const parex_async_t *ac);
PAREX_API int parex_async_fd(const parex_async_t *ac);
PAREX_API void parex_async_set_events(parex_async_t *ac, const parex_events_t *ev);
PAREX_API void parex_async_set_connect_cb(parex_async_t *ac, parex_connect_fn *fn);
PAREX_API void parex_async_set_disconnect_cb(parex_async_t *ac, parex_disconnect_fn *fn);
PAREX_API void parex_async_set_data(parex_async_t *ac, void *data);
PAREX_API void *parex_async_get_data(const parex_async_t *ac);

/* Queue a line; fn (may be NULL) runs once with its answer. Return the id, or -1 (nothing
 * queued, fn not called) for a bad argument or a context that is closing or closed. */
PAREX_API long long parex_async_submit(parex_async_t *ac, const parex_request_t *req,
                                       parex_callback_fn *fn, void *privdata);
PAREX_API long long parex_async_cancel(parex_async_t *ac, long long id, parex_callback_fn *fn,
                                       void *privdata);
PAREX_API long long parex_async_control(parex_async_t *ac, const char *name,
                                        const char *fields_json, parex_callback_fn *fn,
                                        void *privdata);
/* Requests not yet answered. */
PAREX_API size_t parex_async_pending(const parex_async_t *ac);

/* Called by the adapter when the fd is readable / writable. */
PAREX_API void parex_async_handle_read(parex_async_t *ac);
PAREX_API void parex_async_handle_write(parex_async_t *ac);

/* Graceful: no more submits; once every pending answer has come, the connection closes and
 * the disconnect callback runs with 0. */
PAREX_API void parex_async_disconnect(parex_async_t *ac);
/* Closes now: pending callbacks run with PAREX_DISCONNECTED answers, then the disconnect
 * callback (if the connection was still up), then everything is freed. Safe inside a
 * callback (the free then happens when the callback returns). */
PAREX_API void parex_async_free(parex_async_t *ac);

#ifdef __cplusplus
}
#endif
#endif
