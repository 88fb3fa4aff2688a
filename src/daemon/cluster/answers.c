/* The answers of a batch: stored for the instances that accepted the requests (as few NATS
 * messages as max_payload allows), and read back by a new holder to skip the request messages
 * an earlier holder finished. Partition thread. */
#include "daemon/cluster/internal.h"

#include "common/log.h"
#include "common/protocol.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The instance that accepted the requests of message m (its answers go to it), or NULL. */
const char *cl_reply_of(natsMsg *m)
{
    const char *reply = NULL;

    return natsMsgHeader_Get(m, CL_HDR_REPLY, &reply) == NATS_OK ? reply : NULL;
}

/* Stores body under subj with message id id (within the dedup window the same answers stored
 * twice, by a retried settle, are stored once): waiting for JetStream's confirmation when sync,
 * else left to js_PublishAsyncComplete; echo_id, when set, goes in the Parex-Msg-Id header.
 * 0 or -1. */
static int store(jsCtx *js, const char *subj, const px_buf_t *body, const char *id,
                 const char *echo_id, int sync)
{
    natsMsg *m = NULL;
    jsPubOptions po;
    natsStatus s;

    jsPubOptions_Init(&po);
    po.MsgId = id;
    s = natsMsg_Create(&m, subj, NULL, body->data, (int)body->len);
    if (s == NATS_OK && echo_id)
        s = natsMsgHeader_Set(m, CL_HDR_ID, echo_id);
    if (s == NATS_OK)
        s = sync ? js_PublishMsg(NULL, js, m, &po, NULL) : js_PublishMsgAsync(js, &m, &po);
    natsMsg_Destroy(m); /* NULL once the asynchronous publish took it */
    return s == NATS_OK ? 0 : -1;
}

/* An idem request's answer, alone under the idem's own subject, for {"control":"result"} and
 * resubmissions from any instance. */
static int store_idem_answer(jsCtx *js, const cl_fmsg_t *fm, const px_cluster_job_t *j)
{
    char subj[512], hex[420], id[300];

    cl_hex(hex, fm->id, sizeof hex);
    snprintf(subj, sizeof subj, CL_IDEM_SUBJ "%s", hex);
    snprintf(id, sizeof id, "idem.%s", fm->id);
    return store(js, subj, &j->result, id, fm->id, 0);
}

/* Bytes a job's answer takes in an answer message. */
static size_t rec_size(const px_cluster_job_t *j)
{
    return strlen(j->msgid) + j->result.len + 24;
}

/* An answer over what one NATS message can carry: the request ran, but its answer cannot be
 * stored, and the partition would retry the batch for ever. The client is told so instead. */
static int oversize(px_cluster_job_t *j, size_t room)
{
    json_t *req = json_loadb(j->data, j->len, 0, NULL);
    json_t *id = req ? json_object_get(req, "id") : NULL;
    px_buf_t idtext = {0};
    char msg[256];
    px_resp_t r = {.status = "failed", .worker = -1, .code = "too_large", .queue_ms = -1};
    int rc = -1;

    snprintf(msg, sizeof msg,
             "the answer of %zu bytes is over the %zu bytes one NATS message can carry in "
             "cluster mode (the servers' max_payload less 2 KiB): the request ran, its answer "
             "cannot be stored; raise max_payload or return less",
             j->result.len, room);
    if (id && px_json_append(&idtext, id))
        goto out;
    r.id = id ? idtext.data : NULL;
    r.id_len = idtext.len;
    r.message = msg;
    j->result.len = 0;
    rc = px_resp_format(&j->result, &r);
out:
    px_buf_free(&idtext);
    json_decref(req);
    return rc;
}

/* The answers of one request message that do not fit one NATS message: several, in order,
 * each stored and confirmed before the next, so once its last request's answer is there (the
 * one cl_answered() looks for) all are. 0 or -1. */
static int store_split(jsCtx *js, const char *subj, cl_fbatch_t *fb, const cl_fmsg_t *fm,
                       size_t room)
{
    px_buf_t body = {0};
    char id[300];
    size_t part = 0;
    int rc = -1;

    for (size_t i = fm->first; i < fm->first + fm->n; i++) {
        px_cluster_job_t *j = &fb->jobs[i];

        if (body.len && body.len + rec_size(j) > room) {
            snprintf(id, sizeof id, "r.p%zu.%s", part++, fm->id);
            if (store(js, subj, &body, id, NULL, 1))
                goto out;
            body.len = 0;
        }
        if (cl_rec_append(&body, j->msgid, j->result.data, j->result.len))
            goto out;
    }
    snprintf(id, sizeof id, "r.p%zu.%s", part, fm->id);
    rc = store(js, subj, &body, id, NULL, 1);
out:
    px_buf_free(&body);
    return rc;
}

/* Stores the answers of the batch's messages k, k+1, ... that one instance accepted, under that
 * instance's subject and this partition (the instance follows its subject with an ordered
 * consumer, so an answer survives a NATS node failure between the two; a new holder reads the
 * partition's answers back, see cl_answered()). As few messages as max_payload allows, each
 * holding whole request messages' answers, rather than one per request message: each is a RAFT
 * round on an R3 stream, and a busy partition's batch holds tens of request messages.
 * Asynchronous: the batch waits for all of them at once before acknowledging, so a request is
 * acknowledged only once its answer is stored. A re-run's answer is stored again; the ingress
 * ignores an answer it has given. */
int cl_send_answers(jsCtx *js, cl_part_t *p, cl_fbatch_t *fb, size_t k)
{
    const char *reply = cl_reply_of(fb->msgs[k].m), *first = NULL;
    size_t room = (size_t)p->cl->max_payload - 2048, count = 0;
    char subj[128], id[300];

    snprintf(subj, sizeof subj, CL_RES_SUBJ "%s.%u", reply, p->id);
    fb->body.len = 0;
    for (size_t j = k; j < fb->nmsgs; j++) {
        cl_fmsg_t *fm = &fb->msgs[j];
        const char *r = cl_reply_of(fm->m);
        size_t need = 0;

        if (fm->answered || !r || strcmp(r, reply) != 0)
            continue;
        fm->answered = 1;
        for (size_t i = fm->first; i < fm->first + fm->n; i++) {
            if (rec_size(&fb->jobs[i]) > room && oversize(&fb->jobs[i], room))
                return -1;
            need += rec_size(&fb->jobs[i]);
        }
        if (fm->n == 1 && strncmp(fm->id, "i.", 2) == 0 &&
            store_idem_answer(js, fm, &fb->jobs[fm->first]))
            return -1;
        if (count && fb->body.len + need > room) {
            snprintf(id, sizeof id, "r.%zu.%s", count, first);
            if (store(js, subj, &fb->body, id, NULL, 0))
                return -1;
            fb->body.len = 0;
            count = 0;
        }
        if (need > room) { /* requests whose answers are larger than they were */
            if (store_split(js, subj, fb, fm, room))
                return -1;
            continue;
        }
        if (!count++)
            first = fm->id;
        for (size_t i = fm->first; i < fm->first + fm->n; i++)
            if (cl_rec_append(&fb->body, fb->jobs[i].msgid, fb->jobs[i].result.data,
                              fb->jobs[i].result.len))
                return -1;
    }
    if (!count)
        return 0;
    snprintf(id, sizeof id, "r.%zu.%s", count, first);
    return store(js, subj, &fb->body, id, NULL, 0);
}

static int by_id(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

void cl_answers_forget(cl_part_t *p)
{
    for (size_t i = 0; i < p->nanswered; i++)
        free(p->answered[i]);
    free(p->answered);
    p->answered = NULL;
    p->nanswered = 0;
    p->answered_loaded = 0;
    p->rerunning = 0;
}

/* Reads the ids of the partition's requests whose answers are stored from `since` (store time,
 * Unix ns) on into p->answered, sorted: once per consumer, at the first message an earlier
 * consumer handed out (every later one of those was stored after it). 0, or -1 when NATS could
 * not say in time. */
static int load_answered(struct px_cluster *cl, cl_part_t *p, int64_t since)
{
    natsSubscription *sub = NULL;
    jsConsumerInfo *ci = NULL;
    jsSubOptions so;
    jsErrCode jerr = 0;
    char subj[64];
    size_t cap = 0;
    uint64_t left;
    int rc = -1;

    cl_answers_forget(p);
    snprintf(subj, sizeof subj, CL_RES_SUBJ "*.%u", p->id);
    jsSubOptions_Init(&so);
    so.Ordered = true;
    so.Config.DeliverPolicy = since > 0 ? js_DeliverByStartTime : js_DeliverAll;
    so.Config.OptStartTime = since > 0 ? since : 0;
    if (js_SubscribeSync(&sub, cl->js, subj, NULL, &so, &jerr) != NATS_OK ||
        natsSubscription_GetConsumerInfo(&ci, sub, NULL, &jerr) != NATS_OK)
        goto out;
    /* Delivered so far and still to come: every answer stored when the consumer was made. */
    left = ci->Delivered.Consumer + ci->NumPending;
    while (left--) {
        natsMsg *m = NULL;
        const char *pos, *end;
        cl_rec_t rec;

        if (natsSubscription_NextMsg(&m, sub, cl->o.publish_timeout_ms) != NATS_OK)
            goto out;
        pos = natsMsg_GetData(m);
        end = pos + natsMsg_GetDataLength(m);
        while (cl_rec_next(&pos, end, &rec) > 0) {
            if (p->nanswered == cap) {
                char **a = realloc(p->answered, (cap = cap ? cap * 2 : 64) * sizeof *a);
                if (!a) {
                    natsMsg_Destroy(m);
                    goto out;
                }
                p->answered = a;
            }
            if (!(p->answered[p->nanswered] = strdup(rec.msgid))) {
                natsMsg_Destroy(m);
                goto out;
            }
            p->nanswered++;
        }
        natsMsg_Destroy(m);
    }
    qsort(p->answered, p->nanswered, sizeof *p->answered, by_id);
    p->answered_loaded = 1;
    rc = 0;
out:
    if (rc)
        px_warn("cluster: partition %u: cannot read its stored answers back: %s", p->id,
                nats_GetLastError(NULL));
    jsConsumerInfo_Destroy(ci);
    if (sub) {
        natsSubscription_Unsubscribe(sub);
        natsSubscription_Destroy(sub);
    }
    return rc;
}

/* Is the answer of message m stored already (it ran to the end under an earlier consumer)? A
 * message's answers are stored together, or in order when they needed several messages, so its
 * last request's tells. -1: unknown. */
int cl_answered(struct px_cluster *cl, cl_part_t *p, natsMsg *m, int64_t stored)
{
    const char *pos = natsMsg_GetData(m), *end = pos + natsMsg_GetDataLength(m);
    cl_rec_t rec;
    const char *key = rec.msgid;

    /* Its answer was stored after it; 10 s covers the stream leaders' clocks disagreeing. */
    if (!p->answered_loaded && load_answered(cl, p, stored - (int64_t)10 * 1000000000))
        return -1;
    if (cl_rec_next(&pos, end, &rec) <= 0)
        return 0;
    while (cl_rec_next(&pos, end, &rec) > 0)
        ;
    return bsearch(&key, p->answered, p->nanswered, sizeof *p->answered, by_id) != NULL;
}
