/* HTTP for operators, kept off the event loop: libmicrohttpd runs its own polling thread and
 * every answer is built from the read-only report functions, so a slow scraper never delays a
 * request. */
#include "daemon/ops/metrics.h"

#include "common/hostport.h"
#include "common/log.h"
#include "common/secret.h"
#include "daemon/ops/report.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct px_metrics {
    struct MHD_Daemon *d;
    px_snapshot_src_t *src;
    char addr[160];
    pthread_mutex_t mu; /* hosts and token: set by the loop on reload, read by this thread */
    char hosts[256];    /* metrics_allowed_hosts */
    char token[256];    /* auth_token: /stats (which names keys) needs it as a Bearer token */
};

static enum MHD_Result reply(struct MHD_Connection *c, unsigned code, const char *type, char *body,
                             size_t len, int must_free)
{
    struct MHD_Response *r;
    enum MHD_Result rc;

    r = MHD_create_response_from_buffer(len, body,
                                        must_free ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
    if (!r) {
        if (must_free)
            free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    if (code == MHD_HTTP_METHOD_NOT_ALLOWED)
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
    rc = MHD_queue_response(c, code, r);
    MHD_destroy_response(r);
    return rc;
}

static enum MHD_Result text(struct MHD_Connection *c, unsigned code, const char *msg)
{
    return reply(c, code, "text/plain; charset=utf-8", (char *)msg, strlen(msg), 0);
}

/* DNS rebinding: a web page whose name now resolves to 127.0.0.1 can read what it fetches from
 * its own origin. Its requests still carry its own name in Host, so answer only Hosts that name
 * this machine by address, localhost, or a name the operator listed. */
static int host_allowed(px_metrics_t *m, const char *host)
{
    unsigned char bin[16];
    char name[256];
    size_t n;

    if (!host)
        return 1; /* HTTP/1.0 without Host: not a browser */
    if (host[0] == '[') {
        const char *end = strchr(host, ']');
        if (!end || (size_t)(end - host - 1) >= sizeof name)
            return 0;
        memcpy(name, host + 1, (size_t)(end - host - 1));
        name[end - host - 1] = '\0';
        return inet_pton(AF_INET6, name, bin) == 1 && (!end[1] || end[1] == ':');
    }
    n = strcspn(host, ":");
    if (n == 0 || n >= sizeof name)
        return 0;
    memcpy(name, host, n);
    name[n] = '\0';
    if (inet_pton(AF_INET, name, bin) == 1 || strcasecmp(name, "localhost") == 0)
        return 1;
    pthread_mutex_lock(&m->mu);
    for (const char *p = m->hosts; *p;) {
        size_t len = strcspn(p, ",");
        if (len == n && strncasecmp(p, name, n) == 0) {
            pthread_mutex_unlock(&m->mu);
            return 1;
        }
        p += len + (p[len] == ',');
    }
    pthread_mutex_unlock(&m->mu);
    return 0;
}

/* With an auth_token set, /stats wants "Authorization: Bearer TOKEN". */
static int bearer_ok(px_metrics_t *m, struct MHD_Connection *c)
{
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    int ok;

    pthread_mutex_lock(&m->mu);
    if (!m->token[0])
        ok = 1;
    else
        ok = h && strncasecmp(h, "Bearer ", 7) == 0 &&
             px_secret_equal(h + 7, strlen(h + 7), m->token);
    pthread_mutex_unlock(&m->mu);
    return ok;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload,
                                  size_t *upload_size, void **state)
{
    static const char landing[] =
        "<html><head><title>parexd</title></head><body><h1>parexd</h1>"
        "<p><a href=\"/metrics\">metrics</a> &middot; <a href=\"/stats\">stats</a> &middot; "
        "<a href=\"/healthz\">healthz</a></p></body></html>\n";
    px_metrics_t *m = cls;

    if (!host_allowed(m, MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_HOST)))
        return text(c, 421,
                    "misdirected request: the Host header names neither an IP address, "
                    "localhost, nor a name in metrics_allowed_hosts\n");
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
        return text(c, MHD_HTTP_METHOD_NOT_ALLOWED,
                    "method not allowed: the metrics endpoint is read-only (GET, HEAD)\n");
    if (strcmp(url, "/metrics") == 0) {
        px_buf_t b = {0};
        px_snapshot_t s;
        int rc = px_snapshot_take(m->src, PX_SNAP_FULL, &s);
        if (rc == 0) {
            rc = px_report_prometheus(&s, &b);
            px_snapshot_free(&s);
        }
        if (rc) {
            px_buf_free(&b);
            return text(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n");
        }
        return reply(c, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", b.data, b.len, 1);
    }
    if (strcmp(url, "/stats") == 0 && !bearer_ok(m, c)) {
        struct MHD_Response *r;
        static const char msg[] = "unauthorized: /stats names keys; send the auth_token as "
                                  "'Authorization: Bearer TOKEN' (parexctl --token-file)\n";
        enum MHD_Result rc;
        if (!(r = MHD_create_response_from_buffer(sizeof msg - 1, (void *)msg,
                                                  MHD_RESPMEM_PERSISTENT)))
            return MHD_NO;
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain; charset=utf-8");
        MHD_add_response_header(r, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer realm=\"parexd\"");
        rc = MHD_queue_response(c, MHD_HTTP_UNAUTHORIZED, r);
        MHD_destroy_response(r);
        return rc;
    }
    if (strcmp(url, "/stats") == 0) {
        px_snapshot_t snap;
        json_t *o = NULL;
        if (px_snapshot_take(m->src, PX_SNAP_FULL, &snap) == 0) {
            o = px_report_stats(&snap);
            px_snapshot_free(&snap);
        }
        char *s = o ? json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(9)) : NULL;
        size_t n;
        json_decref(o);
        if (!s)
            return text(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n");
        n = strlen(s);
        s[n] = '\0';
        {
            /* A trailing newline makes curl output and line tools behave. */
            char *t = realloc(s, n + 2);
            if (t) {
                s = t;
                s[n++] = '\n';
                s[n] = '\0';
            }
        }
        return reply(c, MHD_HTTP_OK, "application/json", s, n, 1);
    }
    if (strcmp(url, "/healthz") == 0) {
        char reason[512], *body;
        px_snapshot_t snap;
        int sick;
        size_t n;
        if (px_snapshot_take(m->src, PX_SNAP_WORKERS, &snap))
            return text(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n");
        sick = px_report_health(&snap, reason, sizeof reason - 1);
        px_snapshot_free(&snap);
        n = strlen(reason);
        if (!(body = malloc(n + 2)))
            return text(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n");
        memcpy(body, reason, n);
        body[n++] = '\n';
        return reply(c, sick ? MHD_HTTP_SERVICE_UNAVAILABLE : MHD_HTTP_OK,
                     "text/plain; charset=utf-8", body, n, 1);
    }
    if (strcmp(url, "/") == 0)
        return reply(c, MHD_HTTP_OK, "text/html; charset=utf-8", (char *)landing,
                     sizeof landing - 1, 0);
    return text(c, MHD_HTTP_NOT_FOUND, "not found: try /metrics, /stats or /healthz\n");
}

int px_metrics_start(px_metrics_t **out, const px_config_t *cfg, px_snapshot_src_t *src, char *err,
                     size_t errlen)
{
    const char *listen = cfg->metrics_listen;
    struct sockaddr_storage ss = {0};
    char host[128];
    int port, v6 = 0;
    px_metrics_t *m;
    const union MHD_DaemonInfo *info;

    *out = NULL;
    if (px_parse_hostport(listen, host, sizeof host, &port))
        goto bad;
    if (inet_pton(AF_INET, host, &((struct sockaddr_in *)&ss)->sin_addr) == 1) {
        ss.ss_family = AF_INET;
        ((struct sockaddr_in *)&ss)->sin_port = htons((uint16_t)port);
    } else if (inet_pton(AF_INET6, host, &((struct sockaddr_in6 *)&ss)->sin6_addr) == 1) {
        ss.ss_family = AF_INET6;
        ((struct sockaddr_in6 *)&ss)->sin6_port = htons((uint16_t)port);
        v6 = 1;
    } else {
        goto bad;
    }
    if (!(m = calloc(1, sizeof *m))) {
        snprintf(err, errlen, "out of memory starting the metrics endpoint");
        return -1;
    }
    m->src = src;
    pthread_mutex_init(&m->mu, NULL);
    px_metrics_reconfigure(m, cfg);
    m->d = MHD_start_daemon(
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | (v6 ? MHD_USE_IPv6 : 0), 0, NULL, NULL,
        on_request, m, MHD_OPTION_SOCK_ADDR, &ss, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned)cfg->metrics_max_connections, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned)((cfg->metrics_timeout_ms + 999) / 1000), MHD_OPTION_END);
    if (!m->d) {
        snprintf(err, errlen,
                 "key 'metrics_listen': cannot serve metrics on %s (address in use? change "
                 "'metrics_listen')",
                 listen);
        free(m);
        return -1;
    }
    info = MHD_get_daemon_info(m->d, MHD_DAEMON_INFO_BIND_PORT);
    snprintf(m->addr, sizeof m->addr, v6 ? "[%s]:%u" : "%s:%u", host,
             info ? (unsigned)info->port : (unsigned)port);
    *out = m;
    return 0;
bad:
    snprintf(err, errlen, "key 'metrics_listen': \"%s\" is not a numeric HOST:PORT address",
             listen);
    return -1;
}

void px_metrics_reconfigure(px_metrics_t *m, const px_config_t *cfg)
{
    if (!m)
        return;
    pthread_mutex_lock(&m->mu);
    snprintf(m->hosts, sizeof m->hosts, "%s", cfg->metrics_allowed_hosts);
    snprintf(m->token, sizeof m->token, "%s", cfg->auth_token);
    pthread_mutex_unlock(&m->mu);
}

const char *px_metrics_addr(const px_metrics_t *m)
{
    return m ? m->addr : "(off)";
}

void px_metrics_stop(px_metrics_t *m)
{
    if (!m)
        return;
    MHD_stop_daemon(m->d);
    pthread_mutex_destroy(&m->mu);
    free(m);
}
