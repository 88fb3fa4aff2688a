/* Cluster mode's defaults, in one place: the config section (daemon/core/clustercfg.c) and the
 * cluster layer's own options (daemon/cluster/cluster.c) start from these, and the README's
 * table of the "cluster" section states them. */
#ifndef PX_CLUSTERDEFS_H
#define PX_CLUSTERDEFS_H

#define PX_CLUSTER_DEF_PARTITIONS 64
#define PX_CLUSTER_DEF_LEASE_TTL_MS 10000
#define PX_CLUSTER_DEF_MAX_BACKLOG 100000
#define PX_CLUSTER_DEF_REPLICAS 3
#define PX_CLUSTER_DEF_PUBLISH_TIMEOUT_MS 5000
#define PX_CLUSTER_DEF_RESULT_TTL_MS 600000
#define PX_CLUSTER_DEF_BATCH 64

#endif
