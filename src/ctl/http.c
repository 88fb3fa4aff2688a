/* The operator commands of parexctl. The tables are laid out for an 80-column terminal; top
 * redraws in place with plain ANSI escapes (no curses dependency for one screen). */
#include "ctl/http.h"

#include "common/log.h"

#include <curl/curl.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static size_t on_body(char *p, size_t size, size_t n, void *arg)
{
    return px_buf_append(arg, p, size * n) ? 0 : size * n;
}

static const char *bearer; /* the auth token, sent to /stats */

void px_http_set_token(const char *token)
{
    bearer = token;
}

long px_http_get(const char *addr, const char *path, px_buf_t *body, char *err, size_t errlen)
{
    struct curl_slist *hdrs = NULL;
    char url[512], auth[300];
    long status = -1;
    CURLcode rc;
    CURL *c;

    if (!(c = curl_easy_init())) {
        snprintf(err, errlen, "cannot initialise libcurl");
        return -1;
    }
    snprintf(url, sizeof url, "http://%s%s", addr, path);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, body);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 5000L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    if (bearer && *bearer) {
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", bearer);
        hdrs = curl_slist_append(hdrs, auth);
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
    }
    if ((rc = curl_easy_perform(c)) != CURLE_OK)
        snprintf(err, errlen,
                 "cannot GET %s: %s (is parexd's metrics endpoint there? see "
                 "--metrics-addr)",
                 url, curl_easy_strerror(rc));
    else
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(c);
    curl_slist_free_all(hdrs);
    return status;
}

json_t *px_ctl_get_stats(const char *maddr)
{
    px_buf_t b = {0};
    char err[512];
    json_error_t jerr;
    json_t *o = NULL;
    long st = px_http_get(maddr, "/stats", &b, err, sizeof err);

    if (st < 0)
        fprintf(stderr, "parexctl: %s\n", err);
    else if (st == 401)
        fprintf(stderr, "parexctl: /stats needs parexd's auth_token: pass --token-file FILE (or "
                        "$PAREXD_TOKEN)\n");
    else if (st != 200)
        fprintf(stderr, "parexctl: /stats answered HTTP %ld\n", st);
    else if (!(o = json_loadb(b.data, b.len, 0, &jerr)))
        fprintf(stderr, "parexctl: /stats is not JSON: %s\n", jerr.text);
    px_buf_free(&b);
    return o;
}

/* A string field of the daemon's answer as safe terminal text: keys and error messages come from
 * clients, and must not move the cursor or recolour the screen. Uses one of four rotating
 * buffers, so a printf may show up to four of them. */
static const char *shown(json_t *o, const char *k)
{
    static char bufs[4][1024];
    static int next;
    const char *s = json_string_value(json_object_get(o, k));
    char *b = bufs[next++ & 3];

    if (!s)
        return "";
    px_escape_ctl(b, sizeof bufs[0], s, strlen(s));
    return b;
}

static long long num(json_t *o, const char *k)
{
    return (long long)json_number_value(json_object_get(o, k));
}

static void print_workers(json_t *s, int bars)
{
    size_t i;
    json_t *w;

    printf("%-6s %-8s %-22s %10s %8s %10s %9s  %s\n", "WORKER", "STATE",
           bars ? "QUEUE" : "DEPTH/CAPACITY", "PROCESSED", "FAILED", "BUSY_MS", "HB_AGE_MS",
           "CURRENT KEY");
    json_array_foreach(json_object_get(s, "workers"), i, w)
    {
        long long depth = num(w, "queue_depth"), cap = num(w, "queue_capacity");
        const char *state = json_string_value(json_object_get(w, "state"));
        char q[32];

        if (bars) {
            int fill = cap ? (int)((depth * 12 + cap - 1) / cap) : 0;
            snprintf(q, sizeof q, "[%.*s%.*s] %lld", fill, "############", 12 - fill,
                     "............", depth);
        } else {
            snprintf(q, sizeof q, "%lld/%lld", depth, cap);
        }
        printf("%-6lld %s%-8s%s %-22s %10lld %8lld %10.0f %9.0f  %s\n", num(w, "id"),
               bars && strcmp(state, "stalled") == 0 ? "\033[33m"
               : bars && strcmp(state, "dead") == 0  ? "\033[31m"
                                                     : "",
               state, bars && strcmp(state, "idle") && strcmp(state, "busy") ? "\033[0m" : "", q,
               num(w, "processed"), num(w, "failed"),
               json_number_value(json_object_get(w, "busy_ms")),
               json_number_value(json_object_get(w, "heartbeat_age_ms")), shown(w, "current_key"));
    }
}

static void print_totals(json_t *s)
{
    json_t *rej = json_object_get(s, "rejected_by_reason"), *lat = json_object_get(s, "latency");
    json_t *q = json_object_get(lat, "queue_ms"), *r = json_object_get(lat, "run_ms");

    printf("received %lld  accepted %lld  rejected %lld (queue_full %lld, shutting_down %lld)  "
           "invalid %lld\n",
           num(s, "received"), num(s, "accepted"), num(s, "rejected"), num(rej, "queue_full"),
           num(rej, "shutting_down"), num(s, "invalid"));
    printf("ok %lld  failed %lld  in_flight %lld  connections %lld  backpressure %s  "
           "accounting %s%s\n",
           num(s, "ok"), num(s, "failed"), num(s, "in_flight"), num(s, "connections"),
           json_is_true(json_object_get(s, "backpressure")) ? "YES" : "no",
           json_is_true(json_object_get(s, "invariant_holds")) ? "holds" : "BROKEN",
           json_is_true(json_object_get(s, "draining")) ? "  DRAINING" : "");
    printf(
        "latency ms: queue p50 %.3f p99 %.3f  run p50 %.3f p99 %.3f\n",
        json_number_value(json_object_get(q, "p50")), json_number_value(json_object_get(q, "p99")),
        json_number_value(json_object_get(r, "p50")), json_number_value(json_object_get(r, "p99")));
}

/* Hot keys (last one to two minutes) and parked keys, under the worker table. */
static void print_hot(json_t *s)
{
    json_t *top = json_object_get(s, "top_keys"), *e;
    json_t *arr = json_object_get(top, "by_arrivals"), *tim = json_object_get(top, "by_time_ms");
    size_t i;

    printf("\nimbalance %.2f (busiest worker / mean)   keys parked %lld\n",
           json_number_value(json_object_get(s, "imbalance_ratio")), num(s, "keys_parked"));
    printf("%-32s %8s %6s   %-32s %10s %6s\n", "TOP KEYS BY ARRIVALS", "COUNT", "WORKER",
           "TOP KEYS BY TIME", "MS", "WORKER");
    for (i = 0; i < 5; i++) {
        json_t *a = json_array_get(arr, i), *t = json_array_get(tim, i);
        if (!a && !t)
            break;
        printf("%-32.32s %8lld %6lld   %-32.32s %10.0f %6lld\n", a ? shown(a, "key") : "",
               a ? num(a, "count") : 0, a ? num(a, "worker") : 0, t ? shown(t, "key") : "",
               t ? json_number_value(json_object_get(t, "ms")) : 0, t ? num(t, "worker") : 0);
    }
    json_array_foreach(json_object_get(s, "parked"), i, e)
        printf("PARKED %s  (%lld ms left, last error: %s)\n", shown(e, "key"),
               num(e, "time_left_ms"), shown(e, "last_error"));
}

int px_ctl_stats(const char *maddr)
{
    json_t *s = px_ctl_get_stats(maddr);

    if (!s)
        return 2;
    print_totals(s);
    printf("\n");
    print_workers(s, 0);
    print_hot(s);
    json_decref(s);
    return 0;
}

static int get_raw(const char *maddr, const char *path, long *status)
{
    px_buf_t b = {0};
    char err[512];

    *status = px_http_get(maddr, path, &b, err, sizeof err);
    if (*status < 0) {
        fprintf(stderr, "parexctl: %s\n", err);
        return 2;
    }
    fwrite(b.data, 1, b.len, stdout);
    px_buf_free(&b);
    return 0;
}

int px_ctl_health(const char *maddr)
{
    long st;
    int rc = get_raw(maddr, "/healthz", &st);

    return rc ? rc : st == 200 ? 0 : 1;
}

int px_ctl_metrics(const char *maddr)
{
    long st;
    int rc = get_raw(maddr, "/metrics", &st);

    return rc ? rc : st == 200 ? 0 : 1;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int px_ctl_top(const char *maddr, double interval_s, int once)
{
    long long last_done = -1, last_rej = 0, last_recv = 0;
    double last_t = 0;

    for (;;) {
        json_t *s = px_ctl_get_stats(maddr);
        double t = now_s();
        long long done, rej, recv;
        time_t wall = time(NULL);
        char when[32];

        if (!s)
            return 2;
        done = num(s, "ok") + num(s, "failed");
        rej = num(s, "rejected");
        recv = num(s, "received");
        if (!once)
            printf("\033[H\033[2J");
        strftime(when, sizeof when, "%H:%M:%S", localtime(&wall));
        printf("parexd top  %s  metrics %s  (Ctrl-C to quit)\n\n", when, maddr);
        print_totals(s);
        if (last_done >= 0 && t > last_t)
            printf("rates/s: received %.0f  completed %.0f  rejected %.0f\n",
                   (double)(recv - last_recv) / (t - last_t),
                   (double)(done - last_done) / (t - last_t),
                   (double)(rej - last_rej) / (t - last_t));
        else
            printf("rates/s: (measuring)\n");
        printf("\n");
        print_workers(s, 1);
        print_hot(s);
        fflush(stdout);
        json_decref(s);
        if (once)
            return 0;
        last_done = done;
        last_rej = rej;
        last_recv = recv;
        last_t = t;
        usleep((useconds_t)(interval_s * 1e6));
    }
}
