/* What the environment adds to the configuration once the file and flags are read: the auth
 * token from auth_token_file (a path, or a systemd credential in $CREDENTIALS_DIRECTORY), and
 * the default Unix socket in systemd's $RUNTIME_DIRECTORY. Kept apart from the key table, which
 * only parses values. */
#include "daemon/core/config.h"

#include "common/secret.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* auth_token_file: the token is the file's first line. Keeping it out of the config file lets
 * the config stay readable while the secret is 0600 (or a systemd credential). */
static int load_token_file(px_config_t *c, char *err, size_t errlen)
{
    const char *name = c->auth_token_file, *dir = getenv("CREDENTIALS_DIRECTORY");
    char path[512], buf[sizeof c->auth_token + 2], why[600];
    long n;

    if (!*name)
        return 0;
    if (c->auth_token[0]) {
        snprintf(err, errlen, "key 'auth_token_file': set it or 'auth_token', not both");
        return -1;
    }
    if (*name != '/' && (!dir || !*dir)) {
        snprintf(err, errlen,
                 "key 'auth_token_file': \"%s\" is a credential name but $CREDENTIALS_DIRECTORY "
                 "is not set (use an absolute path, or LoadCredential= in the unit)",
                 name);
        return -1;
    }
    snprintf(path, sizeof path, "%s%s%s", *name == '/' ? "" : dir, *name == '/' ? "" : "/", name);
    if ((n = px_secret_read(path, buf, sizeof buf, why, sizeof why)) < 0) {
        snprintf(err, errlen, "key 'auth_token_file': %s", why);
        return -1;
    }
    if (n < 16 || (size_t)n >= sizeof c->auth_token) {
        snprintf(err, errlen,
                 "key 'auth_token_file': the token in %s is %ld bytes; expected 16 to %zu on its "
                 "first line (a short token is guessable)",
                 path, n, sizeof c->auth_token - 1);
        return -1;
    }
    memcpy(c->auth_token, buf, (size_t)n + 1);
    return 0;
}

int px_config_from_env(px_config_t *c, char *err, size_t errlen)
{
    const char *rundir = getenv("RUNTIME_DIRECTORY");

    if (load_token_file(c, err, errlen))
        return -1;
    /* Under systemd's RuntimeDirectory= the Unix socket has a private home by default: a path
     * in a shared directory could be squatted by another user before parexd binds it. */
    if (!c->listen_unix[0] && rundir && *rundir == '/' && !strchr(rundir, ':') &&
        strlen(rundir) + sizeof "/parexd.sock" <= sizeof c->listen_unix)
        snprintf(c->listen_unix, sizeof c->listen_unix, "%s/parexd.sock", rundir);
    return 0;
}
