/* Daemon configuration: defaults, the JSON file, then command-line flags, validated once at
 * start-up. Every mistake is reported as one line naming the key, the value and the limit. */
#ifndef PX_CONFIG_H
#define PX_CONFIG_H

#include "daemon/core/clustercfg.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#define PX_EX_USAGE 64  /* sysexits.h EX_USAGE */
#define PX_EX_CONFIG 78 /* sysexits.h EX_CONFIG */

typedef struct px_config {
    char listen[128];
    char metrics_listen[128];
    char listen_unix[108];    /* Unix-domain request socket path; "" = none */
    int64_t listen_unix_mode; /* its file mode, e.g. 0660 */
    char auth_token[256];     /* shared token requests must carry; "" = none */
    int64_t workers; /* 0 in the file means 2 x online CPUs; resolved by px_config_finish */
    int64_t queue_capacity;
    int64_t max_line_bytes;
    int64_t max_connections;
    int64_t drain_timeout_ms;
    int64_t log_level;
    double backpressure_threshold;
    int64_t supervise_interval_ms;
    int64_t stall_after_ms;
    int64_t dead_after_ms;
    int64_t on_stall;           /* PX_ON_STALL_* */
    json_t *handlers;           /* owned: the "handlers" object, or NULL */
    int64_t max_queued_per_key; /* 0: off */
    int64_t quarantine_after;   /* quarantine.after_failures; 0: off */
    int64_t quarantine_for_ms;  /* quarantine.for_ms */
    int64_t scheduling;         /* PX_SCHED_* */
    px_cluster_cfg_t cluster;   /* cluster mode when cluster.on */
} px_config_t;

enum { PX_ON_STALL_REPORT, PX_ON_STALL_REPLACE };
enum { PX_SCHED_PARTITIONED, PX_SCHED_KEYED };

void px_config_defaults(px_config_t *c);
/* Releases what the config owns (the handlers object). */
void px_config_clear(px_config_t *c);
/* Loads FILE over c. On error returns -1 with one line in err ("config FILE: key 'x': ..."). */
int px_config_load_file(px_config_t *c, const char *path, char *err, size_t errlen);
/* Loads a JSON text (the file's contents); origin names it in messages. */
int px_config_load_text(px_config_t *c, const char *text, size_t len, const char *origin, char *err,
                        size_t errlen);
/* Sets one key from a command-line string (--workers 8 sets "workers"). */
int px_config_set(px_config_t *c, const char *key, const char *value, char *err, size_t errlen);
/* Resolves derived values (workers = 0) and checks cross-key rules. */
int px_config_finish(px_config_t *c, char *err, size_t errlen);

#endif
