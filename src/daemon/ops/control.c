/* The operator's commands. They run on the loop between reads, so unpark and drop act on the
 * key table and the queues without any lock against admission. */
#include "daemon/ops/control.h"

#include "common/clock.h"
#include "daemon/ops/report.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

static json_t *stats(px_snapshot_src_t *src)
{
    px_snapshot_t s;
    json_t *o;

    if (px_snapshot_take(src, PX_SNAP_FULL, &s))
        return NULL;
    o = px_report_stats(&s);
    px_snapshot_free(&s);
    return o;
}

/* unpark and drop: the operator's hands on a quarantined key. */
static json_t *control_key(px_engine_t *e, const px_line_t *line, char *msg, size_t msglen)
{
    json_t *key = json_object_get(line->root, "key");
    const char *k;
    size_t len;
    int dropped;

    if (!json_is_string(key) || json_string_length(key) < 1 ||
        json_string_length(key) > PX_KEY_MAX) {
        snprintf(msg, msglen, "control '%s' needs \"key\": the parked key (1 to %d bytes)",
                 line->control, PX_KEY_MAX);
        return NULL;
    }
    k = json_string_value(key);
    len = json_string_length(key);
    if (strcmp(line->control, "unpark") == 0) {
        if (px_keys_unpark(&e->keys, k, len))
            goto not_parked;
        return json_pack("{sO sb}", "key", key, "done", 1);
    }
    if ((dropped = px_engine_drop(e, k, len)) < 0)
        goto not_parked;
    return json_pack("{sO sb si}", "key", key, "done", 1, "dropped", dropped);
not_parked:
    return json_pack("{sO sb ss}", "key", key, "done", 0, "reason", "the key is not parked");
}

json_t *px_control_run(px_snapshot_src_t *src, const px_line_t *line, char *msg, size_t msglen)
{
    px_engine_t *e = src->eng;
    json_t *r;

    if (strcmp(line->control, "stats") == 0) {
        if (!(r = stats(src)))
            snprintf(msg, msglen, "out of memory building the statistics");
        return r;
    }
    if (strcmp(line->control, "parked") == 0) {
        return json_pack("{so}", "parked", px_keys_parked_now(&e->keys));
    }
    if (strcmp(line->control, "top") == 0)
        return px_hot_top(e->hot, 10, px_now_ns());
    if (strcmp(line->control, "unpark") == 0 || strcmp(line->control, "drop") == 0)
        return control_key(e, line, msg, msglen);
    snprintf(msg, msglen,
             "unknown control command '%.64s'; available: stats, parked, unpark, drop, top, "
             "result (cluster mode)",
             line->control);
    return NULL;
}
