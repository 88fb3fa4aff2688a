/* parexd: command line, configuration, then the loop. Exit status follows sysexits.h so that
 * systemd and scripts can tell a usage or config mistake from a crash. */
#include "daemon/core/config.h"
#include "daemon/core/handler.h"
#include "common/log.h"
#include "daemon/core/notify.h"
#include "daemon/server.h"

#include <curl/curl.h>
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#ifndef PX_DEFAULT_CONFIG
#define PX_DEFAULT_CONFIG "/etc/parexd/parexd.json"
#endif

static void usage(FILE *f)
{
    char *flags = px_config_help();

    fprintf(
        f,
        "usage: parexd [--config FILE] [options]\n"
        "Partitioned request executor: JSON lines over TCP, run in order per key.\n\n"
        "  -c, --config FILE              JSON config file (every key optional); without it\n"
        "                                 $PAREXD_CONFIG, else " PX_DEFAULT_CONFIG " if present\n"
        "  -p, --print-config             print the effective configuration as JSON and exit\n"
        "  -M, --print-manual             print the manual's key table and SIGHUP row (Markdown)\n"
        "  -h, --help                     this text\n"
        "  -V, --version                  version and build features\n"
        "%s"
        "Flags override the file. See README.md for the protocol and every key.\n",
        flags ? flags : "");
    free(flags);
}

/* Where the configuration comes from, kept for SIGHUP: the file, then the flags over it. */
struct sources {
    const char *path;
    int optional; /* the built-in default path: read only when present */
    int nflags;
    struct {
        const char *key, *value;
    } flags[PX_CONFIG_MAX_KEYS];
};

static int load_config(px_config_t *cfg, char *err, size_t errlen, void *arg)
{
    const struct sources *src = arg;

    px_config_defaults(cfg);
    if (src->path && !(src->optional && access(src->path, F_OK) != 0 && errno == ENOENT) &&
        px_config_load_file(cfg, src->path, err, errlen))
        return -1;
    for (int i = 0; i < src->nflags; i++)
        if (px_config_set(cfg, src->flags[i].key, src->flags[i].value, err, errlen))
            return -1;
    return px_config_finish(cfg, err, errlen);
}

/* getopt's table: the fixed options, then one per key that has a flag. */
static void build_options(struct option *opts, char *shorts, char (*names)[64])
{
    static const struct option fixed[] = {
        {"config", required_argument, NULL, 'c'}, {"print-config", no_argument, NULL, 'p'},
        {"print-manual", no_argument, NULL, 'M'}, {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
    };
    size_t n = 0;

    strcpy(shorts, "c:pMhV");
    for (; n < sizeof fixed / sizeof fixed[0]; n++)
        opts[n] = fixed[n];
    for (size_t i = 0; i < px_config_nkeys; i++) {
        const px_config_key_t *k = &px_config_keys[i];
        if (!k->flag)
            continue;
        snprintf(names[i], 64, "%s", k->name);
        for (char *p = names[i]; *p; p++)
            if (*p == '_')
                *p = '-';
        opts[n++] = (struct option){names[i], required_argument, NULL, k->flag};
        snprintf(shorts + strlen(shorts), 3, "%c:", k->flag);
    }
    opts[n] = (struct option){NULL, 0, NULL, 0};
}

int main(int argc, char **argv)
{
    static struct option opts[PX_CONFIG_MAX_KEYS + 8];
    static char names[PX_CONFIG_MAX_KEYS][64], shorts[2 * PX_CONFIG_MAX_KEYS + 8];
    static struct sources src;
    int ch, rc, print = 0;
    char err[512];
    px_config_t cfg;
    /* Static: after a forced stop with threads stuck in handlers, what they still use must stay
     * reachable until the process exits. */
    static px_server_t *srv;
    static uv_loop_t loop;

    build_options(opts, shorts, names);
    while ((ch = getopt_long(argc, argv, shorts, opts, NULL)) != -1) {
        const px_config_key_t *key = NULL;
        switch (ch) {
        case 'c':
            src.path = optarg;
            continue;
        case 'p':
            print = 1;
            continue;
        case 'M': {
            char *m = px_config_manual();
            fputs(m ? m : "", stdout);
            free(m);
            return m ? 0 : 1;
        }
        case 'h':
            usage(stdout);
            return 0;
        case 'V':
            printf("parexd %s (libsystemd: %s)\n", PX_VERSION,
                   px_notify_built() ? "yes, sd_notify and socket activation"
                                     : "no, built without sd_notify and socket activation");
            return 0;
        default:
            for (size_t i = 0; i < px_config_nkeys && ch != '?'; i++)
                if (px_config_keys[i].flag == ch)
                    key = &px_config_keys[i];
            if (!key) {
                usage(stderr);
                return PX_EX_USAGE;
            }
        }
        /* A bad flag value is a usage mistake (64), caught before any file is read. */
        px_config_defaults(&cfg);
        rc = px_config_set(&cfg, key->name, optarg, err, sizeof err);
        px_config_clear(&cfg);
        if (rc) {
            fprintf(stderr, "parexd: %s\n", err);
            return PX_EX_USAGE;
        }
        if (src.nflags < PX_CONFIG_MAX_KEYS) {
            src.flags[src.nflags].key = key->name;
            src.flags[src.nflags++].value = optarg;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "parexd: unexpected argument '%s' (see --help)\n", argv[optind]);
        return PX_EX_USAGE;
    }
    if (!src.path && (src.path = getenv("PAREXD_CONFIG")) && !*src.path)
        src.path = NULL;
    if (!src.path) {
        src.path = PX_DEFAULT_CONFIG;
        src.optional = 1;
    }

    px_log_init();
    if (load_config(&cfg, err, sizeof err, &src))
        goto config_error;
    if (print) {
        json_t *j = px_config_to_json(&cfg);
        rc = !j || json_dumpf(j, stdout,
                              JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(12))
                 ? 1
                 : 0;
        putchar('\n');
        json_decref(j);
        px_config_clear(&cfg);
        return rc;
    }
    atomic_store(&px_log_level, (int)cfg.log_level);
    if (src.optional && access(src.path, F_OK) != 0)
        px_debug("config: no %s; running on the defaults and flags", src.path);
    else
        px_debug("config: %s", src.path);

    /* Before any thread exists: jansson's hash seed, and no SIGPIPE from a vanished client. */
    json_object_seed(0);
    signal(SIGPIPE, SIG_IGN);
    curl_global_init(CURL_GLOBAL_DEFAULT);

    if (!(srv = malloc(sizeof *srv))) {
        fprintf(stderr, "parexd: out of memory\n");
        return 1;
    }
    uv_loop_init(&loop);
    rc = px_server_init(srv, &loop, &cfg, load_config, &src, err, sizeof err);
    px_config_clear(&cfg); /* the server holds what it needs */
    if (rc) {
        /* A key the server could not apply (a handler that does not build, an address that
         * cannot be bound) is a config mistake: name the file, as the loader does. */
        rc = strstr(err, "key '") ? PX_EX_CONFIG : 1;
        if (rc == PX_EX_CONFIG)
            fprintf(stderr, "parexd: config %s: %s\n", src.path, err);
        else
            px_err("parexd: %s", err);
        uv_run(&loop, UV_RUN_NOWAIT);
        goto out;
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    rc = 0;
    if (srv->forced)
        px_warn("parexd: stopped after a forced drain");
    else
        px_notice("parexd: stopped cleanly");
    /* Threads stuck in handlers may still touch the pool; their memory goes with the process. */
    if (srv->leaked)
        return rc;
out:
    uv_run(&loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&loop))
        px_warn("parexd: event loop still had open handles at exit");
    px_server_free(srv);
    free(srv);
    px_handler_stats_free_all();
    curl_global_cleanup();
    return rc;

config_error:
    px_config_clear(&cfg);
    fprintf(stderr, "parexd: %s\n", err);
    return PX_EX_CONFIG;
}
