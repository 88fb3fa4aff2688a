/* The request listeners: sockets inherited from systemd (socket activation) when there are
 * any, otherwise the TCP address in `listen`. Loop thread. */
#ifndef PX_LISTENER_H
#define PX_LISTENER_H

#include "daemon/server.h"

/* Opens every listener; returns 0 or -1 with err set. Describes them in srv->listen_addr. */
int px_listener_open(px_server_t *srv, char *err, size_t errlen);
/* Stops accepting (drain). Idempotent. */
void px_listener_close(px_server_t *srv);

#endif
