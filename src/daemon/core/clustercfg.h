/* The "cluster" section of the configuration: its values and its validation. Kept apart from
 * config.c's flat table because it is an object of its own keys, each checked like a top-level
 * one (name, value, limit in one line). */
#ifndef PX_CLUSTERCFG_H
#define PX_CLUSTERCFG_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#define PX_CLUSTER_CFG_MAX_NATS 16

typedef struct px_cluster_cfg {
    int on; /* the section is present: cluster mode */
    char nats[PX_CLUSTER_CFG_MAX_NATS][128];
    int nnats;
    char instance[65];
    int64_t partitions;
    int64_t lease_ttl_ms;
    int64_t max_backlog_per_partition;
    int64_t replicas;
    int64_t publish_timeout_ms;
    int64_t result_ttl_ms;
    int64_t batch;
} px_cluster_cfg_t;

void px_cluster_cfg_defaults(px_cluster_cfg_t *c);
/* Fills c from the section's object; on error writes "key 'cluster.x': ..." into err. */
int px_cluster_cfg_parse(px_cluster_cfg_t *c, json_t *v, char *err, size_t errlen);
/* The section as an object px_cluster_cfg_parse reads back as the same (--print-config). */
json_t *px_cluster_cfg_to_json(const px_cluster_cfg_t *c);

#endif
