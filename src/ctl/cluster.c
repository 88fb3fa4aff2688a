/* parexctl cluster: who owns which partition, read from the /stats of each instance given (an
 * instance knows only what it holds itself, so the table is the union of their answers). */
#include "ctl/cluster.h"

#include "ctl/http.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_PARTS 1024

int px_ctl_cluster(const char *const *maddrs, int n)
{
    char owner[MAX_PARTS][65] = {{0}};
    long long epoch[MAX_PARTS] = {0}, backlog[MAX_PARTS] = {0};
    int parts = 0, rc = 0, unowned = 0;

    for (int i = 0; i < n; i++) {
        json_t *o = NULL, *c, *list, *p;
        size_t k;

        if (!(o = px_ctl_get_stats(maddrs[i])) || !(c = json_object_get(o, "cluster"))) {
            if (o)
                fprintf(stderr,
                        "parexctl: %s: no cluster section in /stats (not in cluster "
                        "mode?)\n",
                        maddrs[i]);
            rc = 1;
            goto next;
        }
        printf("instance %s (%s): %s, %lld members seen, %lld partitions held\n",
               json_string_value(json_object_get(c, "instance")), maddrs[i],
               json_is_true(json_object_get(c, "connected")) ? "connected to NATS"
                                                             : "NOT CONNECTED to NATS",
               json_integer_value(json_object_get(c, "members")),
               json_integer_value(json_object_get(c, "owned")));
        list = json_object_get(c, "partition_list");
        json_array_foreach(list, k, p)
        {
            json_int_t id = json_integer_value(json_object_get(p, "partition"));
            if (id < 0 || id >= MAX_PARTS)
                continue;
            if (id + 1 > parts)
                parts = (int)id + 1;
            backlog[id] = json_integer_value(json_object_get(p, "backlog"));
            if (json_is_true(json_object_get(p, "held"))) {
                snprintf(owner[id], sizeof owner[id], "%s",
                         json_string_value(json_object_get(c, "instance")));
                epoch[id] = json_integer_value(json_object_get(p, "epoch"));
            }
        }
    next:
        json_decref(o);
    }
    if (!parts)
        return rc ? rc : 1;
    printf("%-10s %-16s %12s %10s\n", "partition", "owner", "epoch", "backlog");
    for (int i = 0; i < parts; i++) {
        unowned += !owner[i][0];
        printf("%-10d %-16s %12lld %10lld\n", i, owner[i][0] ? owner[i] : "-", epoch[i],
               backlog[i]);
    }
    if (unowned)
        printf("%d partitions held by none of the instances asked\n", unowned);
    return rc;
}
