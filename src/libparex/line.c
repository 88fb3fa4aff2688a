/* Request lines. Each is built as a jansson object and dumped compact, so a payload's own
 * newlines (JSON whitespace) can never split a line, and checked against what parexd would
 * answer invalid (key length, JSON, line length) before anything is queued. */
#include "libparex/internal.h"

#include <jansson.h>
#include <stdio.h>
#include <string.h>

/* Dumps o as one line onto out (unchanged on failure). */
static int put_line(px_buf_t *out, json_t *o, size_t max_line, char *err, size_t errlen)
{
    size_t n = json_dumpb(o, NULL, 0, JSON_COMPACT);
    size_t old = out->len;

    if (n == 0) {
        snprintf(err, errlen, "request cannot be written as JSON");
        return -1;
    }
    if (n > max_line) {
        snprintf(err, errlen, "request line is %zu bytes, over max_line_bytes (%zu)", n, max_line);
        return -1;
    }
    if (px_buf_reserve(out, n + 1)) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (json_dumpb(o, out->data + old, n, JSON_COMPACT) != n) {
        snprintf(err, errlen, "request cannot be written as JSON");
        return -1;
    }
    out->data[old + n] = '\n';
    out->len = old + n + 1;
    return 0;
}

static json_t *parse_json(const char *what, const char *text, size_t flags, char *err,
                          size_t errlen)
{
    json_error_t jerr;
    json_t *v = json_loads(text, flags, &jerr);

    if (!v)
        snprintf(err, errlen, "%s is not JSON: %s (column %d)", what, jerr.text, jerr.column);
    return v;
}

static int finish(px_buf_t *out, json_t *o, long long id, const char *token, size_t max_line,
                  char *err, size_t errlen)
{
    int rc;

    if (!o) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (id > 0)
        json_object_set_new(o, "id", json_integer(id));
    if (token)
        json_object_set_new(o, "token", json_string(token));
    rc = put_line(out, o, max_line ? max_line : PXL_DEFAULT_MAX_LINE, err, errlen);
    json_decref(o);
    return rc;
}

int pxl_line_request(px_buf_t *out, long long id, const parex_request_t *req, const char *token,
                     size_t max_line, char *err, size_t errlen)
{
    size_t klen = req && req->key ? strlen(req->key) : 0;
    json_t *o, *payload = NULL;

    if (!req || !req->key || klen < 1 || klen > PXL_KEY_MAX) {
        snprintf(err, errlen, "key must be 1-%d bytes, not %zu", PXL_KEY_MAX, klen);
        return -1;
    }
    if (req->op && !*req->op) {
        snprintf(err, errlen, "op must be a name or NULL (echo), not empty");
        return -1;
    }
    if (req->deadline_ms < 0 || req->deadline_ms > 86400000) {
        snprintf(err, errlen, "deadline_ms %lld is out of range 0 (none)..86400000",
                 req->deadline_ms);
        return -1;
    }
    if (req->payload &&
        !(payload = parse_json("payload", req->payload, JSON_DECODE_ANY, err, errlen)))
        return -1;
    if (!(o = json_object()) || json_object_set_new(o, "key", json_string(req->key))) {
        snprintf(err, errlen, "key is not valid UTF-8");
        json_decref(payload);
        json_decref(o);
        return -1;
    }
    if (req->op)
        json_object_set_new(o, "op", json_string(req->op));
    if (payload)
        json_object_set_new(o, "payload", payload);
    if (req->deadline_ms)
        json_object_set_new(o, "deadline_ms", json_integer(req->deadline_ms));
    return finish(out, o, id, token, max_line, err, errlen);
}

int pxl_line_cancel(px_buf_t *out, long long id, long long target, const char *token)
{
    char err[PXL_ERRLEN];

    return finish(out, json_pack("{sI}", "cancel", (json_int_t)target), id, token, 0, err,
                  sizeof err);
}

int pxl_line_control(px_buf_t *out, long long id, const char *name, const char *fields_json,
                     const char *token, size_t max_line, char *err, size_t errlen)
{
    json_t *o;

    if (!name || !*name) {
        snprintf(err, errlen, "control needs a name (stats, parked, unpark, drop, top)");
        return -1;
    }
    if (fields_json) {
        if (!(o = parse_json("control fields", fields_json, 0, err, errlen)))
            return -1;
        if (!json_is_object(o)) {
            snprintf(err, errlen, "control fields must be a JSON object");
            json_decref(o);
            return -1;
        }
    } else {
        o = json_object();
    }
    if (o)
        json_object_set_new(o, "control", json_string(name));
    return finish(out, o, id, token, max_line, err, errlen);
}

int pxl_line_object(px_buf_t *out, long long *id, const char *object_json, const char *token,
                    size_t max_line, char *err, size_t errlen)
{
    json_t *o;

    if (!object_json || !(o = parse_json("request", object_json, 0, err, errlen)))
        return -1;
    if (!json_is_object(o)) {
        snprintf(err, errlen, "a request must be a JSON object");
        json_decref(o);
        return -1;
    }
    if (json_object_get(o, "id"))
        *id = 0;
    return finish(out, o, *id, token, max_line, err, errlen);
}
