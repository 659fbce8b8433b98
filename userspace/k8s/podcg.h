/* SPDX-License-Identifier: MIT */
/*
 * Which cgroup is a Kubernetes pod's. The kubelet names the pod-level cgroup
 * after the pod UID, in one of two layouts chosen by its cgroup driver:
 *
 *   systemd   .../kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid_>.slice
 *             .../kubepods.slice/kubepods-pod<uid_>.slice            (Guaranteed)
 *   cgroupfs  .../kubepods/<qos>/pod<uid>
 *             .../kubepods/pod<uid>                                  (Guaranteed)
 *
 * where <qos> is burstable or besteffort and <uid_> is the UID with '-'
 * written '_'. Both may sit under a prefix (kind nests them in kubelet.slice,
 * kubelet-kubepods.slice, ... or /kubelet/kubepods). The string checks here
 * are pure; egd_podcg_find() and egd_podcg_check_v2() read the filesystem.
 * Facts and sources: research/kubernetes.md §1.
 */
#ifndef EGD_K8S_PODCG_H
#define EGD_K8S_PODCG_H

#include <stdbool.h>
#include <stddef.h>

/* A pod UID as Kubernetes writes it: 8-4-4-4-12 lowercase hex, + NUL. */
#define EGD_POD_UID_LEN 36
/* Directory levels below the cgroup root searched for a pod cgroup: kind's
 * nested systemd layout puts pods at level 4; two more for a node that is
 * itself a container in a systemd scope. */
#define EGD_PODCG_SEARCH_MAX_DEPTH 6

enum egd_podcg_layout {
	EGD_PODCG_NONE = 0,
	EGD_PODCG_SYSTEMD,
	EGD_PODCG_CGROUPFS,
};

/* Is @uid a pod UID (36 characters, lowercase hex and dashes at 8-4-4-4-12)?
 * Checked before it is put in a path, so it cannot climb out of one. */
bool egd_pod_uid_valid(const char *uid);

/* Is @path (absolute or relative to the cgroup root, no trailing '/') the
 * pod-level cgroup of pod @uid? Checks the last component and the ones above
 * it that the layout fixes (the parent slice of a systemd slice; qos and
 * kubepods above a cgroupfs pod). Returns the layout, or EGD_PODCG_NONE. */
enum egd_podcg_layout egd_podcg_match(const char *path, const char *uid);

/* From the contents of /proc/self/cgroup, the cgroup v2 path of the caller
 * (the "0::" line) into @out. -EOPNOTSUPP: no cgroup v2 line (a cgroup
 * v1-only host); -EPERM: "/" or "/.." paths, i.e. a private cgroup namespace
 * (an unprivileged container), where the pod cgroup cannot be seen. */
int egd_podcg_parse_self(const char *proc_cgroup, char *out, size_t len);

/* The pod cgroup of a container whose cgroup is @container_path: its
 * parent, which must be pod @uid's (egd_podcg_match), into @out.
 * -ENOENT when it is not (refuse: this is not the pod we were told). */
int egd_podcg_of_container(const char *container_path, const char *uid, char *out, size_t len);

/* The pod cgroup of the calling process, as `attach --pod` needs it: its
 * own cgroup from /proc/self/cgroup (egd_podcg_parse_self), whose parent
 * must be pod @uid's (egd_podcg_of_container), as a directory under the
 * cgroup v2 mount (egd_podcg_check_v2); the full path into @out. Each
 * refusal is logged with its reason and what to do. */
int egd_podcg_of_self(const char *uid, char *out, size_t len);

/* Is @root a cgroup v2 mount? -EOPNOTSUPP with a logged reason when it is a
 * cgroup v1 (or tmpfs of v1 controllers) mount: egressd does not enforce on
 * cgroup v1-only hosts rather than half-enforce. */
int egd_podcg_check_v2(const char *root);

/* Find pod @uid's cgroup under @root (a cgroup v2 mount, or a copy of its
 * tree in tests): the usual places first, then a walk of at most
 * EGD_PODCG_SEARCH_MAX_DEPTH levels that does not descend into pods. The
 * full path (@root + the pod's path) into @out. -ENOENT: not there (yet:
 * the kubelet may not have created it); -ENOTUNIQ: the walk found two;
 * -EINVAL: @uid is not a pod UID. */
int egd_podcg_find(const char *root, const char *uid, char *out, size_t len);

#endif
