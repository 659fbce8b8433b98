/* SPDX-License-Identifier: MIT */
/*
 * cgroup v2 helpers: where the hierarchy is mounted, ids, membership, and how
 * two cgroups stand to each other (the daemon must never exempt the cgroup
 * it polices, nor one above or below it, without being told to).
 */
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

/* How cgroup a stands to cgroup b. */
enum egd_cgroup_rel {
	EGD_CG_UNRELATED = 0,
	EGD_CG_SAME,	   /* a is b */
	EGD_CG_ANCESTOR,   /* a contains b */
	EGD_CG_DESCENDANT, /* a lies inside b */
};

/*
 * The relation of the cgroup directories @a and @b, from their absolute
 * paths alone (as egd_cgroup_of_pid() gives them or after realpath(); one
 * trailing slash is ignored). Pure.
 */
enum egd_cgroup_rel egd_cgroup_relation(const char *a, const char *b);

/* "is", "is an ancestor of", "lies inside", "is unrelated to". */
const char *egd_cgroup_rel_words(enum egd_cgroup_rel r);

/* The path of the cgroup with id @id under the cgroup2 mount @root (a walk of
 * the tree, for once at start). -ENOENT when this view of the hierarchy does
 * not hold it (a cgroup namespace hides it). */
int egd_cgroup_path_of_id(const char *root, uint64_t id, char *buf, size_t len);

/* The id of the cgroup the programs pinned under @pin_dir are attached to,
 * from the pinned link's info. */
int egd_cgroup_attached_id(const char *pin_dir, uint64_t *id);

#endif
