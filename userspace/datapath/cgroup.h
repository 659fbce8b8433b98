/* SPDX-License-Identifier: MIT */
/* cgroup v2 helpers: where the hierarchy is mounted, ids, membership. */
#ifndef EGD_CGROUP_H
#define EGD_CGROUP_H

#include <stddef.h>
#include <stdint.h>

/* Mount point of the cgroup2 hierarchy, from /proc/mounts. */
int egd_cgroup2_root(char *buf, size_t len);

/* The cgroup id BPF sees for @path (the inode number of its directory). */
int egd_cgroup_id(const char *path, uint64_t *id);

/* The absolute path of the cgroup v2 of process @pid (0 = self). */
int egd_cgroup_of_pid(int pid, char *buf, size_t len);

/* Move process @pid into the cgroup at @path. */
int egd_cgroup_enter(const char *path, int pid);

/* Kill everything in the cgroup at @path and remove it. */
int egd_cgroup_destroy(const char *path);

#endif
