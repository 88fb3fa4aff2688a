/* Daemon configuration: defaults, the JSON file, then command-line flags, validated once at
 * start-up. Every key is one row of one table (config.c): the loader, the flags, --help,
 * --print-config, the reload rules and the README's tables all come from that row. */
#ifndef PX_CONFIG_H
#define PX_CONFIG_H

#include "daemon/core/clustercfg.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#define PX_EX_USAGE 64  /* sysexits.h EX_USAGE */
#define PX_EX_CONFIG 78 /* sysexits.h EX_CONFIG */
#define PX_CONFIG_MAX_KEYS 64

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
    /* Limits against hostile clients (README, Security). */
    int64_t builtin_test_ops;             /* 1: the built-in sleep and fail are served */
    int64_t max_in_flight_per_connection; /* requests one connection may have queued or running */
    int64_t handler_timeout_ms;           /* timeout of configured handlers that set none */
    int64_t max_partial_bytes;            /* all connections' partial lines together */
    int64_t max_queued_payload_bytes;     /* all queued and running requests together */
    int64_t partial_line_timeout_ms;      /* a partial line older than this closes its connection */
    char metrics_allowed_hosts[256];      /* Host names /metrics answers besides IPs, localhost */
    int64_t metrics_max_connections;
    int64_t metrics_timeout_ms;
    char auth_token_file[256];     /* the token read from this file or credential; "" = none */
    int64_t max_abandoned_threads; /* on_stall replace: stalled threads left running */
    int64_t cancel_on_disconnect;  /* 1: a vanished client's queued requests do not run */
    px_cluster_cfg_t cluster;      /* cluster mode when cluster.on */

    /* Where each key's value came from (PX_SET_*, by table index) and the file's name, so
     * that a rule between two keys blames the one the user wrote. */
    unsigned char set[PX_CONFIG_MAX_KEYS];
    char origin[256];
} px_config_t;

enum { PX_ON_STALL_REPORT, PX_ON_STALL_REPLACE };
enum { PX_SCHED_PARTITIONED, PX_SCHED_KEYED };
enum { PX_SET_DEFAULT, PX_SET_FILE, PX_SET_FLAG };

/* How a value is read and checked. K_ENUM stores min + the index of the name. */
enum px_config_kind {
    PX_K_INT,
    PX_K_DOUBLE,
    PX_K_ENUM,
    PX_K_ADDR,
    PX_K_PATH,
    PX_K_MODE,
    PX_K_TOKEN,
    PX_K_OBJECT,
    PX_K_QUARANTINE,
    PX_K_BOOL,   /* true or false, stored as 1 or 0 */
    PX_K_HOSTS,  /* comma-separated host names */
    PX_K_FILE,   /* an absolute path, or a systemd credential name */
    PX_K_CLUSTER /* the cluster section (clustercfg.c); null: off */
};

/* What SIGHUP does with a key: applies it at once, or keeps the running value (and warns). */
enum { PX_RELOAD_LIVE, PX_RELOAD_RESTART };

typedef struct px_config_key {
    const char *name;
    enum px_config_kind kind;
    size_t off, size;         /* the field in px_config_t */
    double min, max;          /* numbers: the range; K_ENUM: min is the first name's value */
    const char *def;          /* the default as JSON text; "null": none */
    const char *range;        /* as the manual states it; NULL: "min–max" */
    char flag;                /* short command-line option (long: the name, '_' -> '-'); 0 */
    const char *arg;          /* the flag's argument in --help */
    int reload;               /* PX_RELOAD_* */
    const char *doc;          /* one line of meaning for the manual and --help */
    const char *const *names; /* K_ENUM: the accepted strings, NULL-terminated */
} px_config_key_t;

/* The table, in the manual's order. */
extern const px_config_key_t px_config_keys[];
extern const size_t px_config_nkeys;
const px_config_key_t *px_config_key(const char *name);

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
/* config_env.c: reads auth_token_file and defaults listen_unix under systemd's
 * RuntimeDirectory=. Called by px_config_finish. */
int px_config_from_env(px_config_t *c, char *err, size_t errlen);
/* Resolves derived values (workers = 0) and checks cross-key rules. */
int px_config_finish(px_config_t *c, char *err, size_t errlen);

/* Reload: whether key k differs between a and b, and copying it from src into dst. */
int px_config_differs(const px_config_t *a, const px_config_t *b, const px_config_key_t *k);
void px_config_keep(px_config_t *dst, const px_config_t *src, const px_config_key_t *k);

/* Renderings of the table and of a configuration (config_doc.c). */
json_t *px_config_to_json(const px_config_t *c); /* every key, defaults included */
char *px_config_help(void);                      /* the flags part of --help; free() it */
char *px_config_manual(void); /* the README's key table and SIGHUP row (Markdown); free() it */

#endif
