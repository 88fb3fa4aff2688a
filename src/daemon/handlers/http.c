/* The http handler: one libcurl easy handle per concurrent caller, kept in a small free list so
 * each worker reuses its connection (keep-alive) request after request. The request JSON is the
 * body; the key travels in the X-Parexd-Key header, percent-encoded where a header could not
 * carry it. */
#include "daemon/handlers/handlers.h"

#include <curl/curl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define MAX_BODY (16u << 20)

typedef struct http_ctx {
    char *url, *method;
    char *shown; /* url without userinfo and query: what messages to clients may quote */
    struct curl_slist *headers;
    pthread_mutex_t mu;
    CURL **idle; /* under mu */
    size_t nidle, cap;
} http_ctx_t;

static CURL *take(http_ctx_t *x)
{
    CURL *c = NULL;

    pthread_mutex_lock(&x->mu);
    if (x->nidle > 0)
        c = x->idle[--x->nidle];
    pthread_mutex_unlock(&x->mu);
    return c ? c : curl_easy_init();
}

static void give_back(http_ctx_t *x, CURL *c)
{
    pthread_mutex_lock(&x->mu);
    if (x->nidle == x->cap) {
        size_t cap = x->cap ? x->cap * 2 : 8;
        CURL **v = realloc(x->idle, cap * sizeof *v);
        if (v) {
            x->idle = v;
            x->cap = cap;
        }
    }
    if (x->nidle < x->cap) {
        x->idle[x->nidle++] = c;
        c = NULL;
    }
    pthread_mutex_unlock(&x->mu);
    if (c)
        curl_easy_cleanup(c);
}

static void http_destroy(px_handler_t *h)
{
    http_ctx_t *x = h->ctx;

    if (!x)
        return;
    for (size_t i = 0; i < x->nidle; i++)
        curl_easy_cleanup(x->idle[i]);
    free(x->idle);
    curl_slist_free_all(x->headers);
    pthread_mutex_destroy(&x->mu);
    free(x->url);
    free(x->shown);
    free(x->method);
    free(x);
}

/* Every socket libcurl opens is close-on-exec, so an exec program started meanwhile cannot
 * inherit a keep-alive upstream connection (and write requests carrying its credentials). */
static curl_socket_t open_cloexec(void *arg, curlsocktype purpose, struct curl_sockaddr *a)
{
    (void)arg;
    (void)purpose;
    return socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
}

/* The URL as clients may see it in messages: userinfo (user:password@) and the query (api_key=)
 * are credentials as often as not. */
static char *redact_url(const char *url)
{
    CURLU *u = curl_url();
    char *got = NULL, *out = NULL;

    if (u && curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
        curl_url_set(u, CURLUPART_USER, NULL, 0) == CURLUE_OK &&
        curl_url_set(u, CURLUPART_PASSWORD, NULL, 0) == CURLUE_OK &&
        curl_url_set(u, CURLUPART_OPTIONS, NULL, 0) == CURLUE_OK &&
        curl_url_set(u, CURLUPART_QUERY, NULL, 0) == CURLUE_OK &&
        curl_url_set(u, CURLUPART_FRAGMENT, NULL, 0) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_URL, &got, 0) == CURLUE_OK)
        out = strdup(got);
    curl_free(got);
    curl_url_cleanup(u);
    return out;
}

static size_t on_body(char *p, size_t size, size_t n, void *arg)
{
    px_buf_t *b = arg;

    if (b->len + size * n > MAX_BODY || px_buf_append(b, p, size * n))
        return 0; /* makes curl fail with CURLE_WRITE_ERROR */
    return size * n;
}

static void key_header(const px_req_t *req, px_buf_t *b)
{
    static const char hex[] = "0123456789ABCDEF";
    const unsigned char *k = (const unsigned char *)px_req_key(req);

    px_buf_puts(b, "X-Parexd-Key: ");
    for (size_t i = 0; i < req->key_len; i++) {
        if (k[i] > 0x20 && k[i] < 0x7f && k[i] != '%') {
            px_buf_append(b, &k[i], 1);
        } else {
            char e[3] = {'%', hex[k[i] >> 4], hex[k[i] & 15]};
            px_buf_append(b, e, 3);
        }
    }
    px_buf_append(b, "", 1);
}

static int http_run(const px_handler_t *h, const px_req_t *req, uint64_t timeout_ns,
                    px_result_t *res)
{
    http_ctx_t *x = h->ctx;
    px_buf_t body = {0}, resp = {0}, kh = {0};
    struct curl_slist *hdrs = NULL, *extra;
    char cerr[CURL_ERROR_SIZE] = "";
    long status = 0;
    CURLcode cc;
    CURL *c;
    int rc = -1;

    if (!(c = take(x)) || px_request_json(req, &body)) {
        px_fail(res, "handler_error", "out of memory preparing the HTTP request");
        goto out;
    }
    key_header(req, &kh);
    for (struct curl_slist *s = x->headers; s; s = s->next)
        hdrs = curl_slist_append(hdrs, s->data);
    hdrs = curl_slist_append(hdrs, "Content-Type: application/json");
    extra = curl_slist_append(hdrs, kh.data);
    hdrs = extra ? extra : hdrs;
    curl_easy_reset(c); /* options only: the connection cache survives, so keep-alive holds */
    curl_easy_setopt(c, CURLOPT_URL, x->url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, x->method);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body.data);
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)body.len);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &resp);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, cerr);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(c, CURLOPT_OPENSOCKETFUNCTION, open_cloexec);
    if (timeout_ns)
        curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)((timeout_ns + 999999) / 1000000));
    cc = curl_easy_perform(c);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    if (cc == CURLE_OPERATION_TIMEDOUT) {
        rc = px_fail(res, "timeout", "%s %s gave no answer within %.0f ms", x->method, x->shown,
                     (double)timeout_ns / 1e6);
    } else if (cc != CURLE_OK) {
        rc = px_fail(res, "handler_error", "%s %s failed: %s", x->method, x->shown,
                     cerr[0] ? cerr : curl_easy_strerror(cc));
    } else if (status < 200 || status > 299) {
        /* The body is not NUL-terminated and may be binary: quote at most 200 bytes of it,
         * printable ASCII only, so the answer stays valid UTF-8 JSON. */
        char quote[201];
        size_t n = resp.len < 200 ? resp.len : 200;
        for (size_t i = 0; i < n; i++)
            quote[i] = resp.data[i] >= 0x20 && resp.data[i] < 0x7f ? resp.data[i] : '?';
        quote[n] = '\0';
        rc = px_fail(res, "handler_error", "%s %s answered HTTP %ld: %s", x->method, x->shown,
                     status, n ? quote : "(empty body)");
    } else if (!(res->value = px_output_value(resp.data ? resp.data : "", resp.len))) {
        rc = px_fail(res, "handler_error", "%s %s answered a body that is neither JSON nor UTF-8",
                     x->method, x->shown);
    } else {
        rc = 0;
    }
out:
    if (c)
        give_back(x, c);
    curl_slist_free_all(hdrs);
    px_buf_free(&body);
    px_buf_free(&resp);
    px_buf_free(&kh);
    return rc;
}

int px_http_make(px_handler_t *h, const json_t *def, char *err, size_t errlen)
{
    static const char *const keys[] = {"type",       "url",   "method",          "headers",
                                       "timeout_ms", "retry", "max_concurrency", "rate_limit",
                                       NULL};
    const char *url = json_string_value(json_object_get(def, "url"));
    json_t *method = json_object_get(def, "method"), *headers = json_object_get(def, "headers");
    char where[128], line[1024];
    const char *k;
    json_t *v;
    http_ctx_t *x;

    snprintf(where, sizeof where, "handlers.%s", h->name);
    if (px_spec_only(def, where, keys, err, errlen))
        return -1;
    if (!url || (strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0)) {
        snprintf(err, errlen, "key '%s.url': expected an http:// or https:// URL", where);
        return -1;
    }
    if (method && (!json_is_string(method) || !*json_string_value(method) ||
                   strpbrk(json_string_value(method), " \r\n"))) {
        snprintf(err, errlen, "key '%s.method': expected an HTTP method such as \"POST\"", where);
        return -1;
    }
    if (headers && !json_is_object(headers)) {
        snprintf(err, errlen, "key '%s.headers': expected an object of Name: \"value\"", where);
        return -1;
    }
    if (!(x = calloc(1, sizeof *x)))
        goto oom;
    pthread_mutex_init(&x->mu, NULL);
    h->ctx = x;
    h->run = http_run;
    h->destroy = http_destroy;
    if (!(x->shown = redact_url(url))) {
        snprintf(err, errlen, "key '%s.url': libcurl cannot parse it as a URL", where);
        return -1;
    }
    if (!(x->url = strdup(url)) ||
        !(x->method = strdup(method ? json_string_value(method) : "POST")))
        goto oom;
    json_object_foreach(headers, k, v)
    {
        if (!json_is_string(v) || strpbrk(k, ": \r\n") || strpbrk(json_string_value(v), "\r\n")) {
            snprintf(err, errlen,
                     "key '%s.headers.%.64s': expected a header name and a one-line "
                     "string value",
                     where, k);
            return -1;
        }
        snprintf(line, sizeof line, "%s: %s", k, json_string_value(v));
        if (!(x->headers = curl_slist_append(x->headers, line)))
            goto oom;
    }
    return 0;
oom:
    snprintf(err, errlen, "out of memory building handler '%s'", h->name);
    return -1;
}
