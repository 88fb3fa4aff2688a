/* The README's libparex example: one call, then 100 requests pipelined over 4 keys.
 *     cc example.c $(pkg-config --cflags --libs parex) -o example && ./example 127.0.0.1:7400 */
#include <parex/client.h>

#include <stdio.h>

int main(int argc, char **argv)
{
    parex_ctx_t *c = parex_connect(argc > 1 ? argv[1] : "127.0.0.1:7400", NULL);
    parex_request_t req = {.op = "echo", .key = "user-42", .payload = "{\"n\": 1}"};
    parex_reply_t *r;
    char key[16], payload[16];
    int ok = 0;

    if (!c || parex_err(c)) {
        fprintf(stderr, "example: %s\n", c ? parex_errstr(c) : "out of memory");
        return 1;
    }
    if (!(r = parex_call(c, &req))) {
        fprintf(stderr, "example: %s\n", parex_errstr(c));
        return 1;
    }
    printf("%s %s\n", parex_status_str(r->status), r->result); /* ok {"n":1} */
    parex_reply_free(r);

    for (int i = 0; i < 100; i++) { /* queued, written by the first parex_get_reply */
        snprintf(key, sizeof key, "user-%d", i % 4);
        snprintf(payload, sizeof payload, "%d", i);
        req = (parex_request_t){.key = key, .payload = payload};
        if (parex_append(c, &req) < 0)
            return 1;
    }
    for (int i = 0; i < 100; i++) {
        if (parex_get_reply(c, &r)) {
            fprintf(stderr, "example: %s\n", parex_errstr(c));
            return 1;
        }
        ok += r->status == PAREX_OK;
        parex_reply_free(r);
    }
    printf("%d of 100 ok\n", ok);
    parex_free(c);
    return 0;
}
