/* parexctl cluster: members and partition owners of a cluster-mode parexd deployment. */
#ifndef PX_CTL_CLUSTER_H
#define PX_CTL_CLUSTER_H

/* Prints each instance's view and the partition table. 0, or 1 when an instance could not be
 * read. */
int px_ctl_cluster(const char *const *maddrs, int n);

#endif
