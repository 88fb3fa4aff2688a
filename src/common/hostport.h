/* "HOST:PORT" addresses as the config file and the command lines spell them. */
#ifndef PX_HOSTPORT_H
#define PX_HOSTPORT_H

#include <stddef.h>

/* Splits "HOST:PORT" ("[::1]:7400" for IPv6). Returns 0, or -1 when malformed. */
int px_parse_hostport(const char *s, char *host, size_t hostlen, int *port);

#endif
