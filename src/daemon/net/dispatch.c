/* The line protocol: what one line asks for and the answers given on the spot (invalid,
 * rejected, control, cancel). A request goes to the engine; its answer comes back later through
 * the engine's sink. This file touches no socket: it tells its caller what to do with the
 * connection through the flags it returns. */
#include "daemon/net/dispatch.h"

#include "common/log.h"
#include "common/secret.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

/* Answers a line on the spot (invalid, rejected, control): never held behind running work. */
static void answer(px_line_ctx_t *x, const px_resp_t *r)
{
    size_t before = x->out->len;

    if (px_resp_format(x->out, r)) {
        x->out->len = before;
        px_err("connection: out of memory formatting a response; closing the connection");
        x->flags |= PX_DISPATCH_CLOSE;
        return;
    }
    x->flags |= PX_DISPATCH_OUTPUT;
}

static void answer_invalid(px_line_ctx_t *x, const char *id, size_t id_len, enum px_invalid code,
                           const char *message)
{
    px_resp_t r = {.id = id,
                   .id_len = id_len,
                   .status = "invalid",
                   .worker = -1,
                   .code = px_invalid_code(code),
                   .message = message,
                   .queue_ms = -1};

    px_stats_add(&x->net->stats->c.invalid[code], 1);
    answer(x, &r);
}

/* retry_after_ms, when non-zero, tells the client how long to wait before a retry can get in.
 * Counting the rejection is the caller's (the engine counts its own verdicts). */
static void answer_rejected(px_line_ctx_t *x, const char *id, size_t id_len, int worker,
                            enum px_reject why, const char *message, uint64_t retry_after_ms)
{
    char extra[48];
    px_resp_t r = {.id = id,
                   .id_len = id_len,
                   .status = "rejected",
                   .worker = worker,
                   .code = px_reject_code(why),
                   .message = message,
                   .queue_ms = -1};

    if (retry_after_ms) {
        snprintf(extra, sizeof extra, ",\"retry_after_ms\":%llu",
                 (unsigned long long)retry_after_ms);
        r.extra = extra;
    }
    answer(x, &r);
}

/* Cluster mode's "idem": the message id JetStream deduplicates retried submits by. */
static int bad_idem(const json_t *idem, char *msg, size_t msglen)
{
    const char *s = json_string_value(idem);
    size_t n = s ? json_string_length(idem) : 0;
    int ok = n >= 1 && n <= 128;

    if (!idem)
        return 0;
    for (size_t i = 0; ok && i < n; i++)
        ok = s[i] > ' ' && s[i] <= '~';
    if (!ok)
        snprintf(msg, msglen,
                 "'idem' must be a string of 1 to 128 printable ASCII characters without spaces");
    return !ok;
}

/* One connection may hold only so much of the queues: others must still get in. Answers
 * rejected/connection_busy when it holds its share; count says whether that counts as a
 * received and rejected request. */
static int conn_busy(px_line_ctx_t *x, const char *id, size_t id_len, int count)
{
    px_net_t *net = x->net;
    char msg[300];

    if (x->inflight < (uint64_t)net->cfg->max_in_flight_per_connection)
        return 0;
    if (count) {
        px_stats_add(&net->stats->c.received, 1);
        px_stats_add(&net->stats->c.rejected[PX_REJ_CONNECTION_BUSY], 1);
    }
    snprintf(msg, sizeof msg,
             "this connection has %u requests queued or running, the "
             "max_in_flight_per_connection (%lld); wait for answers before sending more",
             x->inflight, (long long)net->cfg->max_in_flight_per_connection);
    answer_rejected(x, id, id_len, -1, PX_REJ_CONNECTION_BUSY, msg, 0);
    return 1;
}

/* {"control":"result","idem":...}: the answer the cluster retained for an idem request, from
 * whichever instance ran it. Answered later, like a request: the lookup holds the connection
 * until its answer is delivered. */
static void handle_result(px_line_ctx_t *x, px_line_t *line, const char *id, size_t id_len)
{
    json_t *idem = json_object_get(line->root, "idem");
    char msg[300], idnum[24];
    px_verdict_t v;
    int rc;

    if (!x->net->ev.lookup) {
        answer_invalid(x, id, id_len, PX_INV_BAD_FIELD,
                       "control 'result' reads answers a cluster retained for idem requests: "
                       "result lookups need cluster mode (a \"cluster\" section in the "
                       "configuration)");
        return;
    }
    if (!idem) {
        answer_invalid(x, id, id_len, PX_INV_BAD_FIELD,
                       "control 'result' needs \"idem\": the idem of the request whose answer "
                       "you want");
        return;
    }
    if (bad_idem(idem, msg, sizeof msg)) {
        answer_invalid(x, id, id_len, PX_INV_BAD_FIELD, msg);
        return;
    }
    if (!id) {
        /* Answered out of line: an id lets the client match the answer. */
        id_len = (size_t)snprintf(idnum, sizeof idnum, "%llu", (unsigned long long)++*x->next_id);
        id = idnum;
    }
    if (conn_busy(x, id, id_len, 0))
        return;
    rc = x->net->ev.lookup(x->net->ev.arg, json_string_value(idem), id, id_len, x->origin, &v);
    if (rc < 0) {
        px_err("connection: out of memory starting a result lookup; closing the connection");
        x->flags |= PX_DISPATCH_CLOSE;
    } else if (rc > 0) {
        answer_rejected(x, id, id_len, v.worker, v.why, v.message, v.retry_after_ms);
    } else {
        x->flags |= PX_DISPATCH_ACCEPTED;
    }
}

static void handle_control(px_line_ctx_t *x, px_line_t *line, const char *id, size_t id_len)
{
    px_resp_t r = {.id = id, .id_len = id_len, .status = "ok", .worker = -1, .queue_ms = -1};
    char msg[200];

    if (strcmp(line->control, "result") == 0) {
        handle_result(x, line, id, id_len);
        return;
    }
    if (!(r.result = x->net->ev.control(x->net->ev.arg, line, msg, sizeof msg))) {
        answer_invalid(x, id, id_len, PX_INV_BAD_FIELD, msg);
        return;
    }
    answer(x, &r);
    json_decref((json_t *)r.result);
}

/* {"cancel": ID}: like Future.cancel(): a request still queued is taken out and answered
 * failed/cancelled; one already running is left alone. The reply says which. */
static void handle_cancel(px_line_ctx_t *x, px_line_t *line, const char *id, size_t id_len)
{
    px_resp_t r = {.id = id, .id_len = id_len, .status = "ok", .worker = -1, .queue_ms = -1};
    px_buf_t target = {0};
    const char *state;
    json_t *result;

    if (px_json_append(&target, line->cancel)) {
        px_buf_free(&target);
        x->flags |= PX_DISPATCH_CLOSE;
        return;
    }
    state = px_engine_cancel(x->net->eng, x->origin, target.data, target.len);
    result = json_pack("{sO sb ss}", "cancel", line->cancel, "cancelled",
                       strcmp(state, "queued") == 0, "state", state);
    r.result = result;
    answer(x, &r);
    json_decref(result);
    px_buf_free(&target);
}

static int token_ok(const json_t *token, const char *want)
{
    const char *got = json_string_value(token);

    return got && px_secret_equal(got, json_string_length(token), want);
}

/* An HTTP request line ("POST / HTTP/1.1") or a header line every browser sends ("Host: ...",
 * "Origin: ..."): what a web page's fetch() or form sends when it is pointed at the line port.
 * No request line starts so, and random bytes almost never do (so garbage still gets answers). */
static int looks_like_http(const char *p, size_t n)
{
    static const char *const headers[] = {
        "host:",   "origin:",         "referer:",         "user-agent:",
        "accept:", "content-type:",   "content-length:",  "connection:",
        "cookie:", "sec-fetch-mode:", "accept-language:", NULL};
    size_t i = 0;

    while (i < n && p[i] >= 'A' && p[i] <= 'Z')
        i++;
    if (i > 0 && i < n && p[i] == ' ') {
        for (size_t j = i + 1; j + 6 <= n; j++)
            if (memcmp(p + j, " HTTP/", 6) == 0)
                return 1;
        return 0;
    }
    for (const char *const *h = headers; *h; h++)
        if (n >= strlen(*h) && strncasecmp(p, *h, strlen(*h)) == 0)
            return 1;
    return 0;
}

/* Closes the connection of an HTTP client at once, running nothing it sent: a web page could
 * otherwise smuggle request lines in a POST body (cross-protocol scripting). Logged at most once
 * a minute, with the count since the last line, so a hostile page cannot flood the log. */
static void refuse_http(px_line_ctx_t *x)
{
    static uint64_t last_log_ns, unlogged;
    uint64_t now = x->recv_ns;

    px_stats_add(&x->net->stats->c.closed[PX_CLOSE_HTTP], 1);
    unlogged++;
    if (last_log_ns == 0 || now - last_log_ns >= 60 * (uint64_t)1000000000) {
        px_warn("connection: %llu HTTP request(s) sent to the request port were refused and their "
                "connections closed (a web page or a misdirected HTTP client); nothing they sent "
                "ran",
                (unsigned long long)unlogged);
        last_log_ns = now;
        unlogged = 0;
    }
    x->flags |= PX_DISPATCH_CLOSE;
}

static int blank(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != ' ' && p[i] != '\t')
            return 0;
    return 1;
}

unsigned px_dispatch_overloaded(px_line_ctx_t *x, size_t len)
{
    px_net_t *net = x->net;
    char msg[300];
    static uint64_t last_log_ns;

    px_stats_add(&net->stats->c.received, 1);
    px_stats_add(&net->stats->c.rejected[PX_REJ_OVERLOADED], 1);
    snprintf(msg, sizeof msg,
             "partial lines of all connections hold max_partial_bytes (%lld); this line (%zu bytes "
             "so far) was dropped up to its newline; send it again",
             (long long)net->cfg->max_partial_bytes, len);
    answer_rejected(x, NULL, 0, -1, PX_REJ_OVERLOADED, msg, 1000);
    if (!last_log_ns || x->recv_ns - last_log_ns > 60 * (uint64_t)1000000000) {
        px_warn("connection: %s", msg);
        last_log_ns = x->recv_ns;
    }
    return x->flags;
}

/* One line from the client. Runs inside the px_stats_begin/end of the read. */
unsigned px_dispatch(px_line_ctx_t *x, const char *text, size_t len, int too_long)
{
    px_net_t *net = x->net;
    const px_handler_t *h;
    px_line_t line;
    px_buf_t *idtext = &net->idtext;
    char msg[512], idnum[24];
    const char *id = NULL;
    size_t id_len = 0;
    px_submit_t sub;
    px_verdict_t v;
    int rc;

    if (too_long) {
        snprintf(msg, sizeof msg,
                 "line of %zu or more bytes is over max_line_bytes (%lld); it was skipped up to "
                 "its newline",
                 len, (long long)net->cfg->max_line_bytes);
        answer_invalid(x, NULL, 0, PX_INV_LINE_TOO_LONG, msg);
        return x->flags;
    }
    if (blank(text, len))
        return x->flags; /* an empty line carries no request and gets no answer */
    if (looks_like_http(text, len)) {
        refuse_http(x);
        return x->flags;
    }

    px_line_parse(&line, text, len);
    if (line.id) {
        idtext->len = 0;
        if (px_json_append(idtext, line.id))
            goto oom;
        id = idtext->data;
        id_len = idtext->len;
    }
    if (line.kind == PX_LINE_INVALID) {
        answer_invalid(x, id, id_len, line.code, line.message);
        goto out;
    }
    if (net->cfg->auth_token[0] && !token_ok(line.token, net->cfg->auth_token)) {
        /* Counted as received and rejected, so the accounting invariant still holds. */
        px_stats_add(&net->stats->c.received, 1);
        px_stats_add(&net->stats->c.rejected[PX_REJ_UNAUTHORIZED], 1);
        answer_rejected(x, id, id_len, -1, PX_REJ_UNAUTHORIZED,
                        "missing or wrong 'token': this parexd requires the shared auth_token "
                        "in every line",
                        0);
        goto out;
    }
    if (line.kind == PX_LINE_CONTROL) {
        handle_control(x, &line, id, id_len);
        goto out;
    }
    if (line.kind == PX_LINE_CANCEL) {
        handle_cancel(x, &line, id, id_len);
        goto out;
    }
    if (!(h = px_engine_find(net->eng, line.op))) {
        char names[256];
        int test_op = strcmp(line.op, "sleep") == 0 || strcmp(line.op, "fail") == 0;
        px_engine_names(net->eng, names, sizeof names);
        snprintf(msg, sizeof msg, "op '%.64s' is not a handler here%s; available: %s", line.op,
                 test_op ? " (the built-in test ops sleep and fail need builtin_test_ops: true)"
                         : "",
                 names);
        answer_invalid(x, id, id_len, PX_INV_UNKNOWN_OP, msg);
        goto out;
    }
    if (h->validate && h->validate(h, line.payload, msg, sizeof msg)) {
        answer_invalid(x, id, id_len, PX_INV_BAD_FIELD, msg);
        goto out;
    }
    if (net->ev.submit && bad_idem(json_object_get(line.root, "idem"), msg, sizeof msg)) {
        answer_invalid(x, id, id_len, PX_INV_BAD_FIELD, msg);
        goto out;
    }
    if (!id) {
        id_len = (size_t)snprintf(idnum, sizeof idnum, "%llu", (unsigned long long)++*x->next_id);
        id = idnum;
    }
    if (conn_busy(x, id, id_len, 1))
        goto out;
    /* The payload travels as compact text, dumped into a buffer the loop reuses. */
    net->scratch.len = 0;
    if (px_json_append(&net->scratch, line.payload))
        goto oom;
    sub = (px_submit_t){.key = line.key,
                        .key_len = line.key_len,
                        .id = id,
                        .id_len = id_len,
                        .payload = net->scratch.data,
                        .payload_len = net->scratch.len,
                        .handler = h,
                        .recv_ns = x->recv_ns,
                        .deadline_ms = line.deadline_ms,
                        .origin = x->origin};
    rc = net->ev.submit ? net->ev.submit(net->ev.arg, &sub, &line, &v)
                        : px_engine_submit(net->eng, &sub, &v);
    if (rc < 0)
        goto oom;
    if (rc > 0) {
        answer_rejected(x, id, id_len, v.worker, v.why, v.message, v.retry_after_ms);
        goto out;
    }
    x->flags |= PX_DISPATCH_ACCEPTED;
    goto out;

oom:
    /* Losing a request silently is not allowed: close, so the client knows. */
    px_err("connection: out of memory reading a request; closing the connection");
    x->flags |= PX_DISPATCH_CLOSE;
out:
    px_line_free(&line);
    return x->flags;
}
