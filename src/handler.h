/* The handler registry: ops by name. The front end only looks names up here, so new handler
 * types plug in without touching the protocol or the loop. */
#ifndef PX_HANDLER_H
#define PX_HANDLER_H

#include "request.h"

#include <jansson.h>
#include <stddef.h>

/* What a handler run produced. On failure code names the error and message says what happened
 * and what to do. */
typedef struct px_result {
    json_t *value; /* ok: the result, owned by the result */
    const char *code;
    char message[512];
} px_result_t;

typedef struct px_handler px_handler_t;
struct px_handler {
    const char *name;
    /* Loop thread, optional: checks the payload before queueing. Non-zero makes the request
     * invalid/bad_field with msg. */
    int (*validate)(const px_handler_t *h, const json_t *payload, char *msg, size_t msglen);
    /* Worker thread: 0 ok with res->value set, -1 failed with res->code and res->message. */
    int (*run)(const px_handler_t *h, const px_req_t *req, px_result_t *res);
    void (*destroy)(px_handler_t *h);
    void *ctx;
};

typedef struct px_registry px_registry_t;

px_registry_t *px_registry_new(void);
void px_registry_free(px_registry_t *reg);
/* Takes ownership of h (a copy is kept). -EEXIST when the name is taken. */
int px_registry_add(px_registry_t *reg, const px_handler_t *h);
const px_handler_t *px_registry_find(const px_registry_t *reg, const char *name);
/* "echo, fail, sleep": for messages that list what exists. */
void px_registry_names(const px_registry_t *reg, char *out, size_t outlen);

/* The built-in ops: echo, sleep, fail. */
int px_builtin_register(px_registry_t *reg);

/* Sets a failure on res: px_fail(res, "handler_error", "fmt", ...). Returns -1. */
int px_fail(px_result_t *res, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
