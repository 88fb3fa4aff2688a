/* Request lines, each checked against what parexd would answer invalid (key length, line
 * length) before anything is queued. Control, cancel and caller-written lines are built as
 * jansson objects and dumped compact; requests are written directly (see pxl_line_request). */
#include "libparex/internal.h"

#include <jansson.h>
#include <stdint.h>
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

static json_t *parse_json(const char *what, const char *text, size_t flags, char *err,
                          size_t errlen)
{
    json_error_t jerr;
    json_t *v = json_loads(text, flags, &jerr);

    if (!v)
        snprintf(err, errlen, "%s is not JSON: %s (column %d)", what, jerr.text, jerr.column);
    return v;
}

/* Appends s as a JSON string; -1 when it is not valid UTF-8 (checked by jansson, and only when
 * it has bytes over 0x7f: keys are mostly ASCII). */
static int put_string(px_buf_t *out, const char *s)
{
    size_t n = strlen(s);
    json_t *v;

    for (size_t i = 0; i < n; i++) {
        if ((unsigned char)s[i] >= 0x80) {
            if (!(v = json_stringn(s, n)))
                return -1;
            json_decref(v);
            break;
        }
    }
    return px_buf_json_string(out, s, n) ? -1 : 0;
}

/* The request line is the hot path of a pipelined client, so it is written directly rather
 * than built as a jansson object and dumped: the key, op and token as JSON strings, the payload
 * as the caller's JSON text once jansson has parsed it with parexd's rules (no duplicate
 * names): a line parexd could not parse would be answered with a null id that matches no
 * request. Raw CR and LF can only be whitespace in valid JSON (inside strings they must be
 * escaped), so they become spaces and the line stays one line. */
int pxl_line_request(px_buf_t *out, long long id, const parex_request_t *req, const char *token,
                     size_t max_line, char *err, size_t errlen)
{
    size_t klen = req && req->key ? strlen(req->key) : 0, old = out->len, at;
    int rc = 0;

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
    if (req->payload) {
        json_t *v = parse_json("payload", req->payload, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES,
                               err, errlen);
        if (!v)
            return -1;
        json_decref(v);
    }
    rc |= px_buf_puts(out, "{\"id\":") || px_buf_uint(out, (uint64_t)id);
    rc |= px_buf_puts(out, ",\"key\":");
    if (!rc && put_string(out, req->key)) {
        snprintf(err, errlen, "key is not valid UTF-8");
        goto undo;
    }
    if (req->op) {
        rc |= px_buf_puts(out, ",\"op\":");
        if (!rc && put_string(out, req->op)) {
            snprintf(err, errlen, "op is not valid UTF-8");
            goto undo;
        }
    }
    if (req->payload) {
        rc |= px_buf_puts(out, ",\"payload\":");
        at = out->len;
        rc |= px_buf_puts(out, req->payload);
        for (size_t i = at; !rc && i < out->len; i++)
            if (out->data[i] == '\n' || out->data[i] == '\r')
                out->data[i] = ' ';
    }
    if (req->deadline_ms)
        rc |= px_buf_puts(out, ",\"deadline_ms\":") || px_buf_uint(out, (uint64_t)req->deadline_ms);
    if (token) {
        rc |= px_buf_puts(out, ",\"token\":");
        if (!rc && put_string(out, token)) {
            snprintf(err, errlen, "token is not valid UTF-8");
            goto undo;
        }
    }
    rc |= px_buf_puts(out, "}\n");
    if (rc) {
        snprintf(err, errlen, "out of memory");
        goto undo;
    }
    if (out->len - old - 1 > max_line) {
        snprintf(err, errlen, "request line is %zu bytes, over max_line_bytes (%zu)",
                 out->len - old - 1, max_line);
        goto undo;
    }
    return 0;
undo:
    out->len = old;
    return -1;
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
        snprintf(err, errlen, "control needs a name (stats, parked, unpark, drop, top, result)");
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
