/* Parses and checks the "cluster" section (see clustercfg.h). The instance name defaults to the
 * host name, with every character NATS subjects and bucket keys cannot carry made a '-'. */
#include "daemon/core/clustercfg.h"

#include "common/clusterdefs.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

struct ckey {
    const char *name;
    size_t off;
    int64_t min, max;
};

#define F(field) offsetof(px_cluster_cfg_t, field)
static const struct ckey ints[] = {
    {"partitions", F(partitions), 1, 1024},
    {"lease_ttl_ms", F(lease_ttl_ms), 1000, 600000},
    {"max_backlog_per_partition", F(max_backlog_per_partition), 1, 100000000},
    {"replicas", F(replicas), 1, 5},
    {"publish_timeout_ms", F(publish_timeout_ms), 100, 60000},
    {"result_ttl_ms", F(result_ttl_ms), 1000, 86400000},
    {"batch", F(batch), 1, 1024},
};
#undef F

static int name_char(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           ch == '-' || ch == '_';
}

void px_cluster_cfg_defaults(px_cluster_cfg_t *c)
{
    memset(c, 0, sizeof *c);
    c->partitions = PX_CLUSTER_DEF_PARTITIONS;
    c->lease_ttl_ms = PX_CLUSTER_DEF_LEASE_TTL_MS;
    c->max_backlog_per_partition = PX_CLUSTER_DEF_MAX_BACKLOG;
    c->replicas = PX_CLUSTER_DEF_REPLICAS;
    c->publish_timeout_ms = PX_CLUSTER_DEF_PUBLISH_TIMEOUT_MS;
    c->result_ttl_ms = PX_CLUSTER_DEF_RESULT_TTL_MS;
    c->batch = PX_CLUSTER_DEF_BATCH;
    if (gethostname(c->instance, sizeof c->instance - 1) != 0 || !c->instance[0])
        snprintf(c->instance, sizeof c->instance, "parexd");
    for (char *p = c->instance; *p; p++)
        if (!name_char(*p))
            *p = '-';
}

static int parse_nats(px_cluster_cfg_t *c, json_t *v, char *err, size_t errlen)
{
    size_t i;
    json_t *u;

    if (!json_is_array(v) || json_array_size(v) < 1 ||
        json_array_size(v) > PX_CLUSTER_CFG_MAX_NATS) {
        snprintf(err, errlen,
                 "key 'cluster.nats': expected an array of 1 to %d server URLs "
                 "(\"nats://HOST:PORT\")",
                 PX_CLUSTER_CFG_MAX_NATS);
        return -1;
    }
    json_array_foreach(v, i, u)
    {
        const char *s = json_string_value(u);
        if (!s || strncmp(s, "nats://", 7) != 0 || strlen(s) < 8 ||
            strlen(s) >= sizeof c->nats[0] || strchr(s, ',') || strchr(s, ' ')) {
            snprintf(err, errlen,
                     "key 'cluster.nats': element %zu is not a server URL \"nats://HOST:PORT\" "
                     "of at most %zu bytes",
                     i, sizeof c->nats[0] - 1);
            return -1;
        }
        snprintf(c->nats[i], sizeof c->nats[i], "%s", s);
    }
    c->nnats = (int)json_array_size(v);
    return 0;
}

int px_cluster_cfg_parse(px_cluster_cfg_t *c, json_t *v, char *err, size_t errlen)
{
    const char *name;
    json_t *m;

    if (!json_is_object(v)) {
        snprintf(err, errlen, "key 'cluster': expected an object with at least \"nats\"");
        return -1;
    }
    json_object_foreach(v, name, m)
    {
        size_t i;

        if (strcmp(name, "nats") == 0) {
            if (parse_nats(c, m, err, errlen))
                return -1;
            continue;
        }
        if (strcmp(name, "instance") == 0) {
            const char *s = json_string_value(m);
            size_t n = s ? strlen(s) : 0;
            int ok = n >= 1 && n <= 64;
            for (size_t j = 0; ok && j < n; j++)
                ok = name_char(s[j]);
            if (!ok) {
                snprintf(err, errlen,
                         "key 'cluster.instance': expected 1 to 64 of A-Z a-z 0-9 - _ (a name "
                         "unique in the cluster)");
                return -1;
            }
            snprintf(c->instance, sizeof c->instance, "%s", s);
            continue;
        }
        for (i = 0; i < sizeof ints / sizeof ints[0]; i++)
            if (strcmp(name, ints[i].name) == 0)
                break;
        if (i == sizeof ints / sizeof ints[0]) {
            snprintf(err, errlen,
                     "key 'cluster.%.64s': unknown; the section knows nats, instance, partitions, "
                     "lease_ttl_ms, max_backlog_per_partition, replicas, publish_timeout_ms, "
                     "result_ttl_ms, batch",
                     name);
            return -1;
        }
        if (!json_is_integer(m) || json_integer_value(m) < ints[i].min ||
            json_integer_value(m) > ints[i].max) {
            snprintf(err, errlen, "key 'cluster.%s': expected an integer in %lld..%lld", name,
                     (long long)ints[i].min, (long long)ints[i].max);
            return -1;
        }
        *(int64_t *)((char *)c + ints[i].off) = json_integer_value(m);
    }
    if (!c->nnats) {
        snprintf(err, errlen, "key 'cluster.nats': missing; list the NATS servers to use");
        return -1;
    }
    c->on = 1;
    return 0;
}

json_t *px_cluster_cfg_to_json(const px_cluster_cfg_t *c)
{
    json_t *o = json_object(), *nats = json_array();

    if (!o || !nats)
        goto fail;
    for (int i = 0; i < c->nnats; i++)
        json_array_append_new(nats, json_string(c->nats[i]));
    json_object_set_new(o, "nats", nats);
    nats = NULL;
    json_object_set_new(o, "instance", json_string(c->instance));
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++)
        json_object_set_new(o, ints[i].name,
                            json_integer(*(const int64_t *)((const char *)c + ints[i].off)));
    return o;

fail:
    json_decref(o);
    json_decref(nats);
    return NULL;
}
