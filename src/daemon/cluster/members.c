/* Membership, for the lease thread: the member list, which member each partition belongs to
 * (rendezvous hashing: the member with the highest hash of member and partition, so a join or a
 * leave moves only the partitions that must move), and the rounds made when a key runs out. */
#include "daemon/cluster/internal.h"

#include "common/clock.h"
#include "common/route.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static uint64_t score(const char *member, uint32_t part)
{
    char buf[96];
    int n = snprintf(buf, sizeof buf, "%s/%u", member, part);

    return px_route_hash(buf, (size_t)n);
}

int cl_is_target(struct px_cluster *cl, const cl_members_t *m, uint32_t part)
{
    const char *best = cl->instance;
    uint64_t best_score = score(cl->instance, part);

    for (int i = 0; i < m->n; i++) {
        uint64_t s = score(m->names[i], part);
        if (s > best_score || (s == best_score && strcmp(m->names[i], best) > 0)) {
            best = m->names[i];
            best_score = s;
        }
    }
    return best == cl->instance || strcmp(best, cl->instance) == 0;
}

int64_t cl_real_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* A key of either bucket last written at written_ns (the server's clock, ns since the epoch)
 * runs out a lease after it, and nats-server 2.9 says nothing when it does: without this a
 * killed instance's member key and leases would be noticed gone at the next regular round, up
 * to a quarter lease later. So a round is also made just after the expected expiry when that
 * comes first. A key still there then (the server's expiry timer lags) is looked at again every
 * 100 ms for a second; past that, the regular rounds and the lease's own not-renewed check take
 * over. The server's clock is read through the offset of this instance's own member key (see
 * cl_follow_expiry), so clocks that differ between machines shift no round. Only the time of a
 * round depends on the clocks: what it takes is decided by the KV. */
void cl_tick_at_expiry(struct px_cluster *cl, int64_t written_ns)
{
    int64_t left;
    uint64_t at;

    left = written_ns + (int64_t)(cl->o.lease_ttl_ms * PX_MS) + (int64_t)(50 * PX_MS) -
           (cl_real_ns() + cl->server_offset_ns);
    if (!written_ns || left < -(int64_t)(1000 * PX_MS) ||
        left > (int64_t)(cl->o.lease_ttl_ms * PX_MS / 4))
        return;
    at = px_now_ns() + (left > 0 ? (uint64_t)left : 100 * PX_MS);
    if (!cl->expiry_tick || at < cl->expiry_tick)
        cl->expiry_tick = at;
}

void cl_follow_expiry(struct px_cluster *cl, const cl_members_t *m, int64_t put_ns)
{
    for (int i = 0; i < m->n; i++) {
        kvEntry *e = NULL;

        if (kvStore_Get(&e, cl->members, m->names[i]) != NATS_OK)
            continue;
        if (strcmp(m->names[i], cl->instance) == 0)
            /* This round's own write, stamped by the server: how far its clock is from ours
             * (give or take a round trip). */
            cl->server_offset_ns = kvEntry_Created(e) - put_ns;
        else
            cl_tick_at_expiry(cl, kvEntry_Created(e));
        kvEntry_Destroy(e);
    }
}

int cl_read_members(struct px_cluster *cl, cl_members_t *m)
{
    kvKeysList list = {0};

    m->names = NULL;
    m->n = 0;
    if (kvStore_Keys(&list, cl->members, NULL) != NATS_OK) {
        kvKeysList_Destroy(&list);
        return -1;
    }
    m->names = list.Keys; /* taken over: freed by cl_free_members */
    m->n = list.Count;
    atomic_store(&cl->members_n, (uint64_t)list.Count);
    return 0;
}

void cl_free_members(cl_members_t *m)
{
    for (int i = 0; i < m->n; i++)
        free(m->names[i]);
    free(m->names);
}
