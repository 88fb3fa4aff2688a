/* Answers this instance makes itself in cluster mode: a refusal (px_clustered_reject), and
 * {"control":"result"}, the answer the cluster retained for an idem request, read from any
 * instance.
 *
 * A lookup runs on the cluster's lookup thread; meanwhile it holds its connection like a request
 * (the net layer counts it in flight), so the connection's memory outlives a client that closes
 * first and the answer is then counted dropped. Each waits in cx->lookups (loop only) until the
 * cluster hands its outcome back; a forced stop answers the open ones at once and leaves the
 * records for the outcome to free (or the stop). */
#include "daemon/clustered_int.h"

#include "common/log.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct look {
    look_t *prev, *next;
    void *origin; /* NULL once answered: the cluster's outcome then only frees the record */
    char idem[129];
    size_t id_len;
    char id[]; /* the control line's id as JSON text */
};

static void reply(px_clustered_t *cx, void *origin, px_resp_t *r, uint64_t retry_after_ms)
{
    px_buf_t line = {0};
    char extra[48];

    if (retry_after_ms) {
        snprintf(extra, sizeof extra, ",\"retry_after_ms\":%llu",
                 (unsigned long long)retry_after_ms);
        r->extra = extra;
    }
    if (px_resp_format(&line, r) == 0)
        cx->deliver(origin, line.data, line.len);
    else
        cx->deliver(origin, "", 0); /* out of memory: the hold is released without a line */
    px_buf_free(&line);
}

void px_clustered_reject(px_clustered_t *cx, void *origin, const char *id, size_t id_len,
                         const char *code, const char *message, uint64_t retry_after_ms)
{
    px_resp_t r = {.id = id,
                   .id_len = id_len,
                   .status = "rejected",
                   .worker = -1,
                   .code = code,
                   .message = message,
                   .queue_ms = -1};

    reply(cx, origin, &r, retry_after_ms);
}

static void reply_rejected(px_clustered_t *cx, look_t *l, const char *code, const char *message,
                           uint64_t retry_after_ms)
{
    px_clustered_reject(cx, l->origin, l->id, l->id_len, code, message, retry_after_ms);
}

/* {"idem": ..., "answer": <the stored answer line>} */
static void reply_found(px_clustered_t *cx, look_t *l, const char *line, size_t len)
{
    px_buf_t b = {0};
    px_resp_t r = {.id = l->id, .id_len = l->id_len, .status = "ok", .worker = -1, .queue_ms = -1};

    while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
        len--;
    if (px_buf_puts(&b, "{\"idem\":") || px_buf_json_string(&b, l->idem, strlen(l->idem)) ||
        px_buf_puts(&b, ",\"answer\":") || px_buf_append(&b, line, len) || px_buf_puts(&b, "}")) {
        px_buf_free(&b);
        reply_rejected(cx, l, "unavailable", "out of memory answering the lookup; retry", 1000);
        return;
    }
    r.result_text = b.data;
    r.result_len = b.len;
    reply(cx, l->origin, &r, 0);
    px_buf_free(&b);
}

static void unlink_look(px_clustered_t *cx, look_t *l)
{
    if (l->prev)
        l->prev->next = l->next;
    else
        cx->lookups = l->next;
    if (l->next)
        l->next->prev = l->prev;
}

/* The cluster's callback: the outcome of one lookup. */
void px_clustered_looked_up(void *cookie, enum px_cluster_lookup st, const char *line, size_t len,
                            const char *why, void *arg)
{
    px_clustered_t *cx = arg;
    look_t *l = cookie;
    char msg[400];

    if (l->origin) {
        cx->open_lookups--;
        if (st == PX_CL_LOOKUP_FOUND) {
            reply_found(cx, l, line, len);
        } else if (st == PX_CL_LOOKUP_NONE) {
            snprintf(msg, sizeof msg,
                     "no answer is retained for idem '%s': no request with it has run to the end "
                     "yet (it may still be waiting or running), or it ran more than "
                     "result_ttl_ms (%lld) ago",
                     l->idem, (long long)cx->cfg->cluster.result_ttl_ms);
            reply_rejected(cx, l, "not_found", msg, 0);
        } else {
            reply_rejected(cx, l, "unavailable", why, 1000);
        }
    }
    unlink_look(cx, l);
    free(l);
    cx->changed(cx->arg);
}

int px_clustered_lookup(px_clustered_t *cx, const char *idem, const char *id, size_t id_len,
                        void *origin, px_verdict_t *v)
{
    char msgid[200];
    look_t *l;
    int rc;

    v->worker = -1;
    v->retry_after_ms = 0;
    if (cx->draining) {
        snprintf(v->message, sizeof v->message,
                 "parexd is shutting down and takes no new lookups; ask another instance");
        v->why = PX_REJ_SHUTTING_DOWN;
        return 1;
    }
    if (!(l = calloc(1, sizeof *l + id_len)))
        return -ENOMEM;
    l->origin = origin;
    snprintf(l->idem, sizeof l->idem, "%s", idem);
    l->id_len = id_len;
    memcpy(l->id, id, id_len);
    /* The message id the request was stored under (px_clustered_submit). */
    snprintf(msgid, sizeof msgid, "i.%s", idem);
    if ((rc = px_cluster_lookup(cx->cl, msgid, l))) {
        free(l);
        if (rc == -ENOMEM)
            return -ENOMEM;
        snprintf(v->message, sizeof v->message,
                 "too many result lookups are waiting for NATS JetStream on this instance; retry "
                 "later");
        v->why = PX_REJ_OVERLOADED;
        v->retry_after_ms = 1000;
        return 1;
    }
    l->next = cx->lookups;
    if (cx->lookups)
        cx->lookups->prev = l;
    cx->lookups = l;
    cx->open_lookups++;
    return 0;
}

void px_clustered_lookups_cancel(px_clustered_t *cx)
{
    for (look_t *l = cx->lookups; l; l = l->next) {
        if (!l->origin)
            continue;
        reply_rejected(cx, l, "shutting_down",
                       "parexd stopped before the lookup came back; ask another instance", 0);
        l->origin = NULL;
        cx->open_lookups--;
    }
}

void px_clustered_lookups_free(px_clustered_t *cx)
{
    look_t *l;

    px_clustered_lookups_cancel(cx);
    while ((l = cx->lookups)) {
        cx->lookups = l->next;
        free(l);
    }
}
