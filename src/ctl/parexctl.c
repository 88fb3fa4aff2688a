/* parexctl: the command-line client, on libparex for the request socket. Exit status: 0 ok,
 * 1 the daemon answered something other than ok, 2 usage or connection errors. */
#include "ctl/cluster.h"
#include "ctl/http.h"
#include "common/buf.h"
#include "common/route.h"
#include "common/secret.h"

#include <parex/client.h>

#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define EXIT_NOT_OK 1
#define EXIT_USAGE 2

static const char *addr = "127.0.0.1:7400";
static const char *maddr = "127.0.0.1:9400";
static const char *token; /* --token or $PAREXD_TOKEN: added to every line sent */

static void usage(FILE *f)
{
    fprintf(f,
            "usage:\n"
            "  parexctl send --key K [--op OP] [--payload JSON] [--id ID] [--addr HOST:PORT]\n"
            "               [--token-file F]   (or $PAREXD_TOKEN, when parexd has an auth_token;\n"
            "               --token T works too, but shows the token in ps)\n"
            "  parexctl send [--addr HOST:PORT] < requests.jsonl   (pipelines stdin lines)\n"
            "  parexctl route KEY --workers N | --partitions N\n"
            "  parexctl control NAME [--addr HOST:PORT]            (e.g. control stats)\n"
            "  parexctl parked | unpark KEY | drop KEY [--addr HOST:PORT]   (quarantine)\n"
            "  parexctl result --idem IDEM [--addr HOST:PORT]   (cluster mode: a stored answer)\n"
            "  parexctl stats|health|metrics [--metrics-addr HOST:PORT] [--token-file F]\n"
            "  parexctl top [--metrics-addr HOST:PORT] [--interval SECONDS] [--once]\n"
            "  parexctl cluster [--metrics-addr HOST:PORT]...   (once per instance)\n"
            "Defaults: --addr $PAREXD_ADDR or 127.0.0.1:7400, --metrics-addr\n"
            "$PAREXD_METRICS_ADDR or 127.0.0.1:9400.\n"
            "Exit status: 0 ok, 1 failed/rejected/invalid, 2 usage or connection error.\n");
}

static int die_usage(const char *msg)
{
    fprintf(stderr, "parexctl: %s\n", msg);
    usage(stderr);
    return EXIT_USAGE;
}

/* A libparex context to the daemon (the token added to the lines it builds), or NULL after
 * saying why on stderr. */
static parex_ctx_t *connect_or_report(void)
{
    parex_options_t o = {.token = token};
    parex_ctx_t *c = parex_connect(addr, &o);

    if (!c || parex_err(c)) {
        fprintf(stderr, "parexctl: %s\n", c ? parex_errstr(c) : "out of memory");
        parex_free(c);
        return NULL;
    }
    return c;
}

/* Sends one request object and prints its one answer. */
static int roundtrip(json_t *req)
{
    char *text = json_dumps(req, JSON_COMPACT);
    parex_ctx_t *c = NULL;
    parex_reply_t *r = NULL;
    int rc = EXIT_USAGE;

    if (!text || !(c = connect_or_report()))
        goto out;
    if (parex_append_json(c, text) < 0 || parex_get_reply(c, &r)) {
        fprintf(stderr, "parexctl: %s\n", parex_errstr(c));
        goto out;
    }
    printf("%.*s\n", (int)r->line_len, r->line);
    rc = r->status == PAREX_OK ? 0 : EXIT_NOT_OK;
out:
    parex_reply_free(r);
    parex_free(c);
    free(text);
    return rc;
}

/* Queues one line of stdin. With a token, a line that is a JSON object without one gets it as
 * its first member; the rest of the line goes on byte for byte, so what the user wrote is what
 * parexd reads (ids, numbers and spacing are not re-serialised). */
static int send_line(parex_ctx_t *c, px_buf_t *tmp, const char *line, size_t len)
{
    size_t lead = strspn(line, " \t");
    json_t *o = token ? json_loadb(line, len, 0, NULL) : NULL;
    int rc;

    if (json_is_object(o) && !json_object_get(o, "token") && lead < len && line[lead] == '{') {
        tmp->len = 0;
        rc = px_buf_append(tmp, line, lead + 1) || px_buf_puts(tmp, "\"token\":") ||
             px_buf_json_string(tmp, token, strlen(token)) ||
             (json_object_size(o) > 0 && px_buf_puts(tmp, ",")) ||
             px_buf_append(tmp, line + lead + 1, len - lead - 1) ||
             parex_append_raw(c, tmp->data, tmp->len);
    } else {
        rc = parex_append_raw(c, line, len);
    }
    json_decref(o);
    return rc ? -1 : 0;
}

/* Queues stdin's complete lines (and, at its end, a last one without a newline: parexd reads
 * that as a line too). 1 while stdin is open, 0 at its end, -1 on an error. */
static int relay_stdin(parex_ctx_t *c, px_buf_t *in, px_buf_t *tmp)
{
    char chunk[65536], *nl;
    ssize_t n = read(0, chunk, sizeof chunk);
    size_t done = 0;

    if (n < 0 && errno == EINTR)
        return 1;
    if (n > 0 && px_buf_append(in, chunk, (size_t)n))
        return -1;
    while (done < in->len && (nl = memchr(in->data + done, '\n', in->len - done))) {
        if (send_line(c, tmp, in->data + done, (size_t)(nl - in->data - done)))
            return -1;
        done = (size_t)(nl - in->data) + 1;
    }
    if (done) {
        memmove(in->data, in->data + done, in->len - done);
        in->len -= done;
    }
    if (n > 0)
        return 1;
    if (in->len && send_line(c, tmp, in->data, in->len))
        return -1;
    in->len = 0;
    return 0;
}

/* Prints every answer that is complete; 0, or -1 once the connection has ended. */
static int print_answers(parex_ctx_t *c, int *rc)
{
    parex_reply_t *r;
    int n;

    while ((n = parex_poll_reply(c, &r)) > 0) {
        printf("%.*s\n", (int)r->line_len, r->line);
        if (r->status != PAREX_OK)
            *rc = EXIT_NOT_OK;
        parex_reply_free(r);
    }
    fflush(stdout);
    return n;
}

/* Pipelines stdin to the daemon while printing answers as they arrive. The daemon closes the
 * connection once it has answered every line sent before our end-of-stream. */
static int pipeline_stdin(void)
{
    px_buf_t in = {0}, tmp = {0};
    parex_ctx_t *c;
    int rc = 0, stdin_open = 1;

    if (!(c = connect_or_report()))
        return EXIT_USAGE;
    for (;;) {
        struct pollfd p[2] = {{.fd = parex_fd(c), .events = POLLIN}, {.fd = 0, .events = POLLIN}};

        if (poll(p, stdin_open ? 2 : 1, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (stdin_open && (p[1].revents & (POLLIN | POLLHUP))) {
            int more = relay_stdin(c, &in, &tmp);

            if (more < 0 || (more == 0 ? parex_send_eof(c) : parex_flush(c))) {
                fprintf(stderr, "parexctl: write to %s failed: %s\n", addr,
                        parex_err(c) ? parex_errstr(c) : strerror(errno));
                rc = EXIT_USAGE;
                break;
            }
            stdin_open = more;
        }
        if (print_answers(c, &rc) < 0) {
            if (parex_err(c) != PAREX_ERR_EOF || stdin_open) {
                fprintf(stderr, "parexctl: %s closed the connection early (%s)\n", addr,
                        parex_errstr(c));
                rc = EXIT_USAGE;
            }
            break;
        }
    }
    parex_free(c);
    px_buf_free(&in);
    px_buf_free(&tmp);
    return rc;
}

static int cmd_send(int argc, char **argv)
{
    static const struct option opts[] = {
        {"key", required_argument, NULL, 'k'},
        {"op", required_argument, NULL, 'o'},
        {"payload", required_argument, NULL, 'p'},
        {"id", required_argument, NULL, 'i'},
        {"addr", required_argument, NULL, 'a'},
        {"token", required_argument, NULL, 't'},
        {NULL, 0, NULL, 0},
    };
    const char *key = NULL, *op = NULL, *payload = NULL, *id = NULL;
    json_t *req, *pl = NULL;
    json_error_t jerr;
    int ch, rc;

    while ((ch = getopt_long(argc, argv, "k:o:p:i:a:t:", opts, NULL)) != -1) {
        switch (ch) {
        case 'k':
            key = optarg;
            break;
        case 'o':
            op = optarg;
            break;
        case 'p':
            payload = optarg;
            break;
        case 'i':
            id = optarg;
            break;
        case 'a':
            addr = optarg;
            break;
        case 't':
            token = optarg;
            break;
        default:
            return die_usage("send: unknown option");
        }
    }
    if (!key) {
        if (op || payload || id)
            return die_usage("send: --op, --payload and --id need --key");
        return pipeline_stdin();
    }
    if (payload && !(pl = json_loads(payload, JSON_DECODE_ANY, &jerr))) {
        fprintf(stderr, "parexctl: --payload is not JSON: %s (column %d)\n", jerr.text,
                jerr.column);
        return EXIT_USAGE;
    }
    req = json_pack("{ss}", "key", key);
    if (op)
        json_object_set_new(req, "op", json_string(op));
    if (pl)
        json_object_set_new(req, "payload", pl);
    if (id) {
        char *end;
        long long n;
        errno = 0;
        n = strtoll(id, &end, 10);
        if (*id && !*end && errno == ERANGE) {
            json_decref(req);
            return die_usage("send: --id is an integer outside -2^63..2^63-1; parexd would not "
                             "echo it back as sent");
        }
        json_object_set_new(req, "id", *id && !*end ? json_integer(n) : json_string(id));
    }
    rc = roundtrip(req);
    json_decref(req);
    return rc;
}

static int cmd_route(int argc, char **argv)
{
    /* Cluster partitions use the same routing as workers: --partitions is the same count. */
    static const struct option opts[] = {{"workers", required_argument, NULL, 'w'},
                                         {"partitions", required_argument, NULL, 'w'},
                                         {NULL, 0, NULL, 0}};
    const char *key = NULL;
    long workers = 0;
    char *end = NULL;
    int ch;

    while ((ch = getopt_long(argc, argv, "-w:", opts, NULL)) != -1) {
        if (ch == 'w')
            workers = strtol(optarg, &end, 10);
        else if (ch == 1 && !key)
            key = optarg;
        else
            return die_usage("route: takes KEY and --workers N (or --partitions N)");
    }
    if (!key || workers < 1 || workers > 1024 || (end && *end))
        return die_usage("route: takes KEY and --workers N or --partitions N (1 to 1024)");
    printf("%u\n", px_route(key, strlen(key), (uint32_t)workers));
    return 0;
}

static int cmd_control(int argc, char **argv)
{
    static const struct option opts[] = {{"addr", required_argument, NULL, 'a'},
                                         {"token", required_argument, NULL, 't'},
                                         {NULL, 0, NULL, 0}};
    const char *name = NULL;
    json_t *req;
    int ch, rc;

    while ((ch = getopt_long(argc, argv, "-a:t:", opts, NULL)) != -1) {
        if (ch == 't')
            token = optarg;
        else if (ch == 'a')
            addr = optarg;
        else if (ch == 1 && !name)
            name = optarg;
        else
            return die_usage("control: takes NAME [--addr HOST:PORT]");
    }
    if (!name)
        return die_usage("control: takes NAME (e.g. stats)");
    req = json_pack("{ss}", "control", name);
    rc = roundtrip(req);
    json_decref(req);
    return rc;
}

/* parked, unpark KEY, drop KEY, result --idem IDEM: control lines on the request socket. */
static int cmd_keyed_control(const char *cmd, int argc, char **argv)
{
    static const struct option opts[] = {{"addr", required_argument, NULL, 'a'},
                                         {"token", required_argument, NULL, 't'},
                                         {"idem", required_argument, NULL, 'i'},
                                         {NULL, 0, NULL, 0}};
    int result = strcmp(cmd, "result") == 0, ch, rc;
    int need_key = !result && strcmp(cmd, "parked") != 0;
    const char *key = NULL, *idem = NULL;
    json_t *req;

    while ((ch = getopt_long(argc, argv, "-a:t:", opts, NULL)) != -1) {
        if (ch == 'a')
            addr = optarg;
        else if (ch == 't')
            token = optarg;
        else if (ch == 1 && need_key && !key)
            key = optarg;
        else if (ch == 'i' && result)
            idem = optarg;
        else
            return die_usage(result     ? "result: takes --idem IDEM [--addr HOST:PORT]"
                             : need_key ? "unpark/drop: take KEY [--addr HOST:PORT]"
                                        : "parked: takes [--addr HOST:PORT]");
    }
    if ((need_key && !key) || (result && !idem))
        return die_usage(result ? "result: takes --idem IDEM" : "unpark/drop: take KEY");
    req = json_pack("{ss}", "control", cmd);
    if (key || idem)
        json_object_set_new(req, key ? "key" : "idem", json_string(key ? key : idem));
    rc = roundtrip(req);
    json_decref(req);
    return rc;
}

/* stats, health, metrics, top: the commands that read the metrics endpoint. */
static int cmd_observe(const char *cmd, int argc, char **argv)
{
    static const struct option opts[] = {{"metrics-addr", required_argument, NULL, 'm'},
                                         {"interval", required_argument, NULL, 'i'},
                                         {"once", no_argument, NULL, 'o'},
                                         {NULL, 0, NULL, 0}};
    double interval = 1.0;
    int ch, once = 0, top = strcmp(cmd, "top") == 0;

    while ((ch = getopt_long(argc, argv, "m:i:o", opts, NULL)) != -1) {
        if (ch == 'm')
            maddr = optarg;
        else if (ch == 'i' && top && (interval = atof(optarg)) >= 0.1)
            ;
        else if (ch == 'o' && top)
            once = 1;
        else
            return die_usage(top ? "top: takes [--metrics-addr HOST:PORT] [--interval S>=0.1] "
                                   "[--once]"
                                 : "takes [--metrics-addr HOST:PORT]");
    }
    if (optind < argc)
        return die_usage("unexpected argument");
    if (top)
        return px_ctl_top(maddr, interval, once);
    if (strcmp(cmd, "stats") == 0)
        return px_ctl_stats(maddr);
    if (strcmp(cmd, "health") == 0)
        return px_ctl_health(maddr);
    return px_ctl_metrics(maddr);
}

/* cluster: --metrics-addr may be given once per instance (default: the one metrics address). */
static int cmd_cluster(int argc, char **argv)
{
    static const struct option opts[] = {{"metrics-addr", required_argument, NULL, 'm'},
                                         {NULL, 0, NULL, 0}};
    const char *addrs[64];
    int n = 0, ch;

    while ((ch = getopt_long(argc, argv, "m:", opts, NULL)) != -1) {
        if (ch == 'm' && n < 64)
            addrs[n++] = optarg;
        else
            return die_usage("cluster: takes --metrics-addr HOST:PORT, once per instance");
    }
    if (optind < argc)
        return die_usage("unexpected argument");
    if (!n)
        addrs[n++] = maddr;
    return px_ctl_cluster(addrs, n);
}

/* --token T and --token-file F apply to every command (the token goes into each line sent and
 * into /stats requests): taken out of argv here, before the command parses the rest. Returns
 * the new argc, or -1 after reporting a token file that cannot be read. */
static int take_token_args(int argc, char **argv)
{
    static char from_file[256];
    char err[512] = "";
    int out = 1;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        int file = 0;
        if (strcmp(a, "--token") == 0 || strcmp(a, "--token-file") == 0) {
            file = a[7] == '-';
            if (i + 1 >= argc) {
                fprintf(stderr, "parexctl: %s needs a value\n", a);
                return -1;
            }
            v = argv[++i];
        } else if (strncmp(a, "--token=", 8) == 0) {
            v = a + 8;
        } else if (strncmp(a, "--token-file=", 13) == 0) {
            v = a + 13;
            file = 1;
        } else {
            argv[out++] = argv[i];
            continue;
        }
        if (file && px_secret_read(v, from_file, sizeof from_file, err, sizeof err) <= 0) {
            fprintf(stderr, "parexctl: --token-file: %s\n", err[0] ? err : "the file is empty");
            return -1;
        }
        token = file ? from_file : v;
    }
    argv[out] = NULL;
    return out;
}

int main(int argc, char **argv)
{
    const char *env = getenv("PAREXD_ADDR");

    if (env && *env)
        addr = env;
    if ((env = getenv("PAREXD_METRICS_ADDR")) && *env)
        maddr = env;
    if ((env = getenv("PAREXD_TOKEN")) && *env)
        token = env;
    if ((argc = take_token_args(argc, argv)) < 0)
        return EXIT_USAGE;
    px_http_set_token(token);
    if (argc < 2)
        return die_usage("missing command");
    if (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(argv[1], "--version") == 0) {
        printf("parexctl %s\n", PX_VERSION);
        return 0;
    }
    if (strcmp(argv[1], "send") == 0)
        return cmd_send(argc - 1, argv + 1);
    if (strcmp(argv[1], "route") == 0)
        return cmd_route(argc - 1, argv + 1);
    if (strcmp(argv[1], "control") == 0)
        return cmd_control(argc - 1, argv + 1);
    if (strcmp(argv[1], "cluster") == 0)
        return cmd_cluster(argc - 1, argv + 1);
    if (strcmp(argv[1], "parked") == 0 || strcmp(argv[1], "unpark") == 0 ||
        strcmp(argv[1], "drop") == 0 || strcmp(argv[1], "result") == 0)
        return cmd_keyed_control(argv[1], argc - 1, argv + 1);
    if (strcmp(argv[1], "stats") == 0 || strcmp(argv[1], "health") == 0 ||
        strcmp(argv[1], "metrics") == 0 || strcmp(argv[1], "top") == 0)
        return cmd_observe(argv[1], argc - 1, argv + 1);
    fprintf(stderr, "parexctl: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return EXIT_USAGE;
}
