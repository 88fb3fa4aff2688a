/* Control lines ({"control": "stats"|"parked"|"top"|"unpark"|"drop"}): an operator's commands on
 * the request socket. Loop thread. */
#ifndef PX_CONTROL_H
#define PX_CONTROL_H

#include "common/protocol.h"
#include "daemon/ops/snapshot.h"

#include <jansson.h>

/* The command's result, or NULL with msg saying what is wrong with the line (answered
 * invalid/bad_field). */
json_t *px_control_run(px_snapshot_src_t *src, const px_line_t *line, char *msg, size_t msglen);

#endif
