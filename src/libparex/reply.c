/* Answers: one line parsed with jansson into one allocation (the struct followed by its
 * strings), so a reply is freed with one call and never points into the reader's buffer. */
#include "libparex/internal.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const status_names[] = {"ok", "failed", "rejected", "invalid", "disconnected"};

const char *parex_status_str(parex_status_t status)
{
    return (unsigned)status < sizeof status_names / sizeof status_names[0] ? status_names[status]
                                                                           : "unknown";
}

void parex_reply_free(parex_reply_t *reply)
{
    free(reply);
}

/* Copies n bytes of s (or nothing for NULL) into the arena at *p; returns the copy. */
static const char *place(char **p, const char *s, size_t n)
{
    char *d = *p;

    if (!s)
        return NULL;
    memcpy(d, s, n);
    d[n] = '\0';
    *p += n + 1;
    return d;
}

static size_t len0(const char *s)
{
    return s ? strlen(s) : 0;
}

static double num_or(json_t *v, double dflt)
{
    return json_is_number(v) ? json_number_value(v) : dflt;
}

static parex_reply_t *assemble(parex_status_t status, long long id, const char *id_json,
                               const char *code, const char *message, const char *result,
                               const char *line, size_t line_len)
{
    size_t lid = id_json ? strlen(id_json) : 4, lc = len0(code), lm = len0(message), lr = len0(result);
    parex_reply_t *r = malloc(sizeof *r + lid + lc + lm + lr + line_len + 5);
    char *p;

    if (!r)
        return NULL;
    p = (char *)(r + 1);
    *r = (parex_reply_t){.status = status,
                         .id = id,
                         .worker = -1,
                         .queue_ms = -1,
                         .run_ms = -1,
                         .retry_after_ms = -1,
                         .line_len = line_len};
    r->id_json = place(&p, id_json ? id_json : "null", lid);
    r->code = place(&p, code, lc);
    r->message = place(&p, message, lm);
    r->result = place(&p, result, lr);
    r->line = place(&p, line, line_len);
    return r;
}

static parex_status_t status_of(const char *s)
{
    for (int i = 0; i < PAREX_DISCONNECTED; i++)
        if (s && strcmp(s, status_names[i]) == 0)
            return (parex_status_t)i;
    return PAREX_INVALID;
}

parex_reply_t *pxl_reply_parse(const char *line, size_t len, char *err, size_t errlen)
{
    int shown = len < 80 ? (int)len : 80; /* the line is not NUL-terminated */
    json_error_t jerr;
    json_t *o = json_loadb(line, len, JSON_DECODE_ANY, &jerr), *id, *e, *res;
    char *id_json = NULL, *res_json = NULL;
    parex_reply_t *r = NULL;
    const char *st;

    if (!o || !json_is_object(o)) {
        snprintf(err, errlen, "answer is not a JSON object: %s: %.*s",
                 o ? "not an object" : jerr.text, shown, line);
        goto out;
    }
    st = json_string_value(json_object_get(o, "status"));
    if (!st) {
        snprintf(err, errlen, "answer has no status: %.*s", shown, line);
        goto out;
    }
    id = json_object_get(o, "id");
    e = json_object_get(o, "error");
    res = json_object_get(o, "result");
    if ((id && !(id_json = json_dumps(id, JSON_ENCODE_ANY | JSON_COMPACT))) ||
        (res && !(res_json = json_dumps(res, JSON_ENCODE_ANY | JSON_COMPACT)))) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    r = assemble(status_of(st), json_is_integer(id) ? (long long)json_integer_value(id) : -1,
                 id_json, json_string_value(json_object_get(e, "code")),
                 json_string_value(json_object_get(e, "message")), res_json, line, len);
    if (!r) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    r->worker = json_is_integer(json_object_get(o, "worker"))
                    ? (int)json_integer_value(json_object_get(o, "worker"))
                    : -1;
    r->queue_ms = num_or(json_object_get(o, "queue_ms"), -1);
    r->run_ms = num_or(json_object_get(o, "run_ms"), -1);
    if (json_is_integer(json_object_get(o, "retry_after_ms")))
        r->retry_after_ms = (long long)json_integer_value(json_object_get(o, "retry_after_ms"));
out:
    free(id_json);
    free(res_json);
    json_decref(o);
    return r;
}

parex_reply_t *pxl_reply_disconnected(long long id, const char *message)
{
    char idtext[24];

    snprintf(idtext, sizeof idtext, "%lld", id);
    return assemble(PAREX_DISCONNECTED, id, idtext, "disconnected", message, NULL, "", 0);
}
