/* parexd: command line, configuration, then the loop. Exit status follows sysexits.h so that
 * systemd and scripts can tell a usage or config mistake from a crash. */
#include "daemon/core/config.h"
#include "daemon/core/handler.h"
#include "common/log.h"
#include "daemon/core/notify.h"
#include "daemon/server.h"

#include <curl/curl.h>
#include <getopt.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

static void usage(FILE *f)
{
    fprintf(f, "usage: parexd [--config FILE] [options]\n"
               "Partitioned request executor: JSON lines over TCP, run in order per key.\n\n"
               "  -c, --config FILE          JSON config file (every key optional)\n"
               "  -l, --listen HOST:PORT     request listener (default 127.0.0.1:7400)\n"
               "  -m, --metrics-listen H:P   metrics endpoint (default 127.0.0.1:9400)\n"
               "  -w, --workers N            worker threads (0 = 2 x online CPUs)\n"
               "  -q, --queue-capacity N     bounded queue length per worker (default 1024)\n"
               "  -L, --log-level LEVEL      error, warning, notice, info, debug\n"
               "  -h, --help                 this text\n"
               "  -V, --version              version and build features\n"
               "Flags override the file. See README.md for the protocol and every config key.\n");
}

/* Where the configuration comes from, kept for SIGHUP: the file, then the flags over it. */
struct sources {
    const char *path;
    int nflags;
    struct {
        const char *key, *value;
    } flags[16];
};

static int load_config(px_config_t *cfg, char *err, size_t errlen, void *arg)
{
    const struct sources *src = arg;

    px_config_defaults(cfg);
    if (src->path && px_config_load_file(cfg, src->path, err, errlen))
        return -1;
    for (int i = 0; i < src->nflags; i++)
        if (px_config_set(cfg, src->flags[i].key, src->flags[i].value, err, errlen))
            return -1;
    return px_config_finish(cfg, err, errlen);
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"listen", required_argument, NULL, 'l'},
        {"metrics-listen", required_argument, NULL, 'm'},
        {"workers", required_argument, NULL, 'w'},
        {"queue-capacity", required_argument, NULL, 'q'},
        {"log-level", required_argument, NULL, 'L'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    static struct sources src;
    int ch, rc;
    char err[512];
    px_config_t cfg;
    /* Static: after a forced stop with threads stuck in handlers, what they still use must stay
     * reachable until the process exits. */
    static px_server_t *srv;
    static uv_loop_t loop;

    while ((ch = getopt_long(argc, argv, "c:l:m:w:q:L:hV", opts, NULL)) != -1) {
        const char *key = NULL;
        switch (ch) {
        case 'c':
            src.path = optarg;
            break;
        case 'l':
            key = "listen";
            break;
        case 'm':
            key = "metrics_listen";
            break;
        case 'w':
            key = "workers";
            break;
        case 'q':
            key = "queue_capacity";
            break;
        case 'L':
            key = "log_level";
            break;
        case 'h':
            usage(stdout);
            return 0;
        case 'V':
            printf("parexd %s (libsystemd: %s)\n", PX_VERSION,
                   px_notify_built() ? "yes, sd_notify and socket activation"
                                     : "no, built without sd_notify and socket activation");
            return 0;
        default:
            usage(stderr);
            return PX_EX_USAGE;
        }
        if (key && src.nflags < 16) {
            src.flags[src.nflags].key = key;
            src.flags[src.nflags++].value = optarg;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "parexd: unexpected argument '%s' (see --help)\n", argv[optind]);
        return PX_EX_USAGE;
    }

    px_log_init();
    if (load_config(&cfg, err, sizeof err, &src))
        goto config_error;
    atomic_store(&px_log_level, (int)cfg.log_level);

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
            fprintf(stderr, "parexd: config %s: %s\n", src.path ? src.path : "(flags)", err);
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
