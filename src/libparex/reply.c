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

/* id_json and result are spans (lid, lr bytes); code and message NUL-terminated or NULL. */
static parex_reply_t *assemble(parex_status_t status, long long id, const char *id_json, size_t lid,
                               const char *code, const char *message, const char *result, size_t lr,
                               const char *line, size_t line_len)
{
    size_t lc = len0(code), lm = len0(message);
    parex_reply_t *r = malloc(sizeof *r + (id_json ? lid : 4) + lc + lm + lr + line_len + 5);
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
    r->id_json = place(&p, id_json ? id_json : "null", id_json ? lid : 4);
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

/* The fast path. parexd writes a success exactly as
 *     {"id":7,"status":"ok","worker":3,"queue_ms":0.041,"run_ms":0.012,"result":RESULT}
 * (common/protocol.c px_resp_format), with ,"attempts":N after RESULT for retrying handlers.
 * A line that is byte for byte that shape with an integer id is taken apart here; any other
 * line, by a byte, goes to jansson. At pipelined rates a full parse would cost more than the
 * rest of the client together (parex-bench makes the same choice, src/bench/conn.c). RESULT
 * is parexd's own compact dump, kept as it is. */
static const char *lit(const char *p, const char *end, const char *s)
{
    size_t n = strlen(s);

    return p && (size_t)(end - p) >= n && memcmp(p, s, n) == 0 ? p + n : NULL;
}

static const char *digits(const char *p, const char *end, long long *v)
{
    const char *d = p;

    if (!p || p == end || *p < '0' || *p > '9' ||
        (*p == '0' && p + 1 < end && p[1] >= '0' && p[1] <= '9'))
        return NULL;
    for (*v = 0; p < end && *p >= '0' && *p <= '9' && p - d < 18; p++)
        *v = *v * 10 + (*p - '0');
    return p < end && *p >= '0' && *p <= '9' ? NULL : p;
}

static const char *decimal(const char *p, const char *end, double *v)
{
    long long whole, frac = 0;
    double scale = 1;

    if (!(p = digits(p, end, &whole)))
        return NULL;
    if (p < end && *p == '.') {
        for (p++; p < end && *p >= '0' && *p <= '9' && scale < 1e15; p++, scale *= 10)
            frac = frac * 10 + (*p - '0');
        if (scale == 1)
            return NULL;
    }
    *v = (double)whole + (double)frac / scale;
    return p;
}

static parex_reply_t *fast_ok(const char *line, size_t len)
{
    const char *end = line + len, *p, *id, *id_end, *res, *res_end, *q;
    long long idv, worker, attempts;
    double qms, rms;
    parex_reply_t *r;

    id = lit(line, end, "{\"id\":");
    id_end = p = digits(id, end, &idv);
    p = digits(lit(p, end, ",\"status\":\"ok\",\"worker\":"), end, &worker);
    p = decimal(lit(p, end, ",\"queue_ms\":"), end, &qms);
    p = decimal(lit(p, end, ",\"run_ms\":"), end, &rms);
    res = lit(p, end, ",\"result\":");
    if (!res || end - res < 2 || end[-1] != '}' || worker > 1 << 30)
        return NULL;
    res_end = end - 1;
    /* A JSON value cannot end in ,"attempts":N (a comma lives inside brackets or a string), so
     * such a tail is parexd's extra member, not part of the result. */
    for (q = res_end; q > res && q[-1] >= '0' && q[-1] <= '9'; q--)
        ;
    if (q < res_end && q - res > 12 && memcmp(q - 12, ",\"attempts\":", 12) == 0 &&
        digits(q, res_end, &attempts) == res_end)
        res_end = q - 12;
    if (res_end <= res)
        return NULL;
    r = assemble(PAREX_OK, idv, id, (size_t)(id_end - id), NULL, NULL, res, (size_t)(res_end - res),
                 line, len);
    if (r) {
        r->worker = (int)worker;
        r->queue_ms = qms;
        r->run_ms = rms;
    }
    return r;
}

parex_reply_t *pxl_reply_parse(const char *line, size_t len, char *err, size_t errlen)
{
    int shown = len < 80 ? (int)len : 80; /* the line is not NUL-terminated */
    parex_reply_t *r = fast_ok(line, len);
    char *id_json = NULL, *res_json = NULL;
    json_error_t jerr;
    json_t *o, *id, *e, *res;
    const char *st;

    if (r)
        return r;
    o = json_loadb(line, len, JSON_DECODE_ANY, &jerr);

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
                 id_json, len0(id_json), json_string_value(json_object_get(e, "code")),
                 json_string_value(json_object_get(e, "message")), res_json, len0(res_json), line,
                 len);
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
    return assemble(PAREX_DISCONNECTED, id, idtext, strlen(idtext), "disconnected", message, NULL,
                    0, "", 0);
}
