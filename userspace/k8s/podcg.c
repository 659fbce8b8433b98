/* SPDX-License-Identifier: MIT */
/*
 * Pod cgroups by UID; see podcg.h. Hand-written string checks: the names are
 * fixed by the kubelet (pkg/kubelet/cm/cgroup_manager_linux.go, as read by
 * Cilium and Tetragon) and a regex library would add nothing but a way to
 * get them subtly wrong.
 */
#include "k8s/podcg.h"
#include "core/log.h"
#include "datapath/cgroup.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <linux/magic.h>
#include <unistd.h>

static const char *const qos_levels[] = { "burstable", "besteffort" };

bool egd_pod_uid_valid(const char *uid)
{
	if (!uid || strlen(uid) != EGD_POD_UID_LEN)
		return false;
	for (int i = 0; i < EGD_POD_UID_LEN; i++) {
		char c = uid[i];

		if (i == 8 || i == 13 || i == 18 || i == 23) {
			if (c != '-')
				return false;
		} else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
			return false;
		}
	}
	return true;
}

/* The last components of @path: @name, its @parent and grandparent @gp
 * (empty when the path is shorter). Each buffer NAME_MAX + 1. */
static void last_components(const char *path, char *name, char *parent, char *gp)
{
	char *out[3] = { name, parent, gp };
	size_t end = strlen(path);

	while (end > 0 && path[end - 1] == '/')
		end--;
	for (int k = 0; k < 3; k++) {
		size_t start = end, n;

		while (start > 0 && path[start - 1] != '/')
			start--;
		n = end - start;
		if (n > NAME_MAX)
			n = 0; /* no cgroup name is that long: match nothing */
		memcpy(out[k], path + start, n);
		out[k][n] = '\0';
		end = start;
		while (end > 0 && path[end - 1] == '/')
			end--;
	}
}

static bool ends_with(const char *s, size_t len, const char *suffix)
{
	size_t n = strlen(suffix);

	return len >= n && memcmp(s + len - n, suffix, n) == 0;
}

/* systemd: "<head>kubepods-[<qos>-]pod<uid_>.slice" in the slice named by
 * everything before "pod" ("a-b-c.slice" lives in "a-b.slice"), where <head>
 * is empty or whole slice names ("kubelet-"), never part of a word. */
static bool match_systemd(const char *name, const char *parent, const char *uid)
{
	char want[EGD_POD_UID_LEN + 16], slice[NAME_MAX + 1];
	size_t nlen = strlen(name), plen, k;

	snprintf(want, sizeof(want), "pod%s.slice", uid);
	for (char *p = want; *p; p++)
		if (*p == '-')
			*p = '_';
	if (!ends_with(name, nlen, want))
		return false;
	k = plen = nlen - strlen(want);
	for (size_t i = 0; i < sizeof(qos_levels) / sizeof(qos_levels[0]); i++) {
		char q[32];

		snprintf(q, sizeof(q), "-%s-", qos_levels[i]);
		if (ends_with(name, k, q)) {
			k -= strlen(q) - 1;
			break;
		}
	}
	if (!ends_with(name, k, "kubepods-"))
		return false;
	k -= strlen("kubepods-");
	if (k > 0 && name[k - 1] != '-')
		return false;
	snprintf(slice, sizeof(slice), "%.*s.slice", (int)(plen - 1), name);
	return strcmp(parent, slice) == 0;
}

static bool is_qos(const char *s)
{
	for (size_t i = 0; i < sizeof(qos_levels) / sizeof(qos_levels[0]); i++)
		if (strcmp(s, qos_levels[i]) == 0)
			return true;
	return false;
}

/* cgroupfs: "pod<uid>" in "kubepods" or in "kubepods/<qos>". */
static bool match_cgroupfs(const char *name, const char *parent, const char *gp, const char *uid)
{
	if (strncmp(name, "pod", 3) != 0 || strcmp(name + 3, uid) != 0)
		return false;
	return strcmp(parent, "kubepods") == 0 || (is_qos(parent) && strcmp(gp, "kubepods") == 0);
}

enum egd_podcg_layout egd_podcg_match(const char *path, const char *uid)
{
	char name[NAME_MAX + 1], parent[NAME_MAX + 1], gp[NAME_MAX + 1];

	if (!path || !egd_pod_uid_valid(uid))
		return EGD_PODCG_NONE;
	last_components(path, name, parent, gp);
	if (match_systemd(name, parent, uid))
		return EGD_PODCG_SYSTEMD;
	if (match_cgroupfs(name, parent, gp, uid))
		return EGD_PODCG_CGROUPFS;
	return EGD_PODCG_NONE;
}

int egd_podcg_parse_self(const char *proc_cgroup, char *out, size_t len)
{
	const char *line = proc_cgroup;

	while (line && *line) {
		const char *eol = strchr(line, '\n');
		size_t n = eol ? (size_t)(eol - line) : strlen(line);

		if (n >= 3 && strncmp(line, "0::", 3) == 0) {
			const char *p = line + 3;

			n -= 3;
			if (n == 0 || p[0] != '/')
				return -EINVAL;
			/* "/" or "/..": a private cgroup namespace. */
			if (n == 1 ||
			    (n >= 3 && strncmp(p, "/..", 3) == 0 && (n == 3 || p[3] == '/')))
				return -EPERM;
			if (n >= len)
				return -ENAMETOOLONG;
			memcpy(out, p, n);
			out[n] = '\0';
			return 0;
		}
		line = eol ? eol + 1 : NULL;
	}
	return -EOPNOTSUPP;
}

int egd_podcg_of_container(const char *container_path, const char *uid, char *out, size_t len)
{
	size_t n = strlen(container_path);

	while (n > 0 && container_path[n - 1] == '/')
		n--;
	while (n > 0 && container_path[n - 1] != '/')
		n--;
	while (n > 1 && container_path[n - 1] == '/')
		n--;
	if (n == 0 || n >= len)
		return n ? -ENAMETOOLONG : -ENOENT;
	memcpy(out, container_path, n);
	out[n] = '\0';
	if (egd_podcg_match(out, uid) == EGD_PODCG_NONE)
		return -ENOENT;
	return 0;
}

int egd_podcg_check_v2(const char *root)
{
	struct statfs st;

	if (statfs(root, &st))
		return -errno;
	if ((unsigned long)st.f_type == CGROUP2_SUPER_MAGIC)
		return 0;
	egd_err("%s is not a cgroup v2 mount (a cgroup v1-only or hybrid host?): egressd "
		"enforces on cgroup v2 only and refuses rather than half-enforce",
		root);
	return -EOPNOTSUPP;
}

/* /proc/self/cgroup has a line per v1 hierarchy and one for v2. */
#define PROC_CGROUP_MAX_BYTES 8192

int egd_podcg_of_self(const char *uid, char *out, size_t len)
{
	char buf[PROC_CGROUP_MAX_BYTES], self[PATH_MAX], pod[PATH_MAX], root[PATH_MAX];
	struct stat st;
	ssize_t n;
	int fd, err;

	if (!egd_pod_uid_valid(uid)) {
		egd_err("POD_UID \"%s\" is not a pod UID (set it from the downward API's "
			"metadata.uid)", uid ? uid : "");
		return -EINVAL;
	}
	fd = open("/proc/self/cgroup", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	n = read(fd, buf, sizeof(buf) - 1);
	err = n < 0 ? -errno : 0;
	close(fd);
	if (err)
		return err;
	buf[n] = '\0';
	err = egd_podcg_parse_self(buf, self, sizeof(self));
	if (err == -EOPNOTSUPP) {
		egd_err("no cgroup v2 in /proc/self/cgroup: a cgroup v1-only node; egressd "
			"enforces on cgroup v2 only");
		return err;
	}
	if (err == -EPERM) {
		egd_err("this container has a private cgroup namespace, so the pod cgroup cannot "
			"be seen: run egressd attach --pod in a privileged container");
		return err;
	}
	if (err)
		return err;
	err = egd_podcg_of_container(self, uid, pod, sizeof(pod));
	if (err) {
		egd_err("the parent of this container's cgroup %s is not the cgroup of pod %s: "
			"refusing to attach anywhere else", self, uid);
		return err;
	}
	err = egd_cgroup2_root(root, sizeof(root));
	if (err) {
		egd_err("no cgroup2 mount in /proc/mounts: egressd enforces on cgroup v2 only");
		return -EOPNOTSUPP;
	}
	err = egd_podcg_check_v2(root);
	if (err)
		return err;
	if (snprintf(out, len, "%s%s", root, pod) >= (int)len)
		return -ENAMETOOLONG;
	if (stat(out, &st) || !S_ISDIR(st.st_mode)) {
		egd_err("pod cgroup %s is not a directory under the cgroup2 mount %s", pod, root);
		return -ENOENT;
	}
	return 0;
}

/* Some pod's cgroup (any UID)? Pods do not nest, so the walk skips them. */
static bool looks_like_pod(const char *name)
{
	size_t n = strlen(name);
	const char *p;

	if (strncmp(name, "pod", 3) == 0 && n == 3 + EGD_POD_UID_LEN)
		return true;
	if (!ends_with(name, n, ".slice") || n < EGD_POD_UID_LEN + 10)
		return false;
	p = name + n - strlen(".slice") - EGD_POD_UID_LEN - 4;
	return strncmp(p, "-pod", 4) == 0;
}

struct walk {
	const char *root;
	const char *uid;
	char found[PATH_MAX];
	int nfound;
};

/* @rel: path below the root, "" for the root itself. */
static int walk_dir(struct walk *w, const char *rel, int depth)
{
	char path[PATH_MAX];
	struct dirent *de;
	DIR *d;

	if (snprintf(path, sizeof(path), "%s%s%s", w->root, *rel ? "/" : "", rel) >=
	    (int)sizeof(path))
		return 0;
	d = opendir(path);
	if (!d)
		return 0; /* gone meanwhile, or not ours to read: not the pod */
	while ((de = readdir(d))) {
		char sub[PATH_MAX];

		if (de->d_name[0] == '.' && (!de->d_name[1] || !strcmp(de->d_name, "..")))
			continue;
		if (de->d_type != DT_DIR && de->d_type != DT_UNKNOWN)
			continue;
		if (snprintf(sub, sizeof(sub), "%s%s%s", rel, *rel ? "/" : "", de->d_name) >=
		    (int)sizeof(sub))
			continue;
		if (de->d_type == DT_UNKNOWN) {
			struct stat st;

			if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) ||
			    !S_ISDIR(st.st_mode))
				continue;
		}
		if (egd_podcg_match(sub, w->uid) != EGD_PODCG_NONE) {
			if (w->nfound++ == 0)
				snprintf(w->found, sizeof(w->found), "%s", sub);
			continue;
		}
		if (looks_like_pod(de->d_name) || depth + 1 >= EGD_PODCG_SEARCH_MAX_DEPTH)
			continue;
		walk_dir(w, sub, depth + 1);
	}
	closedir(d);
	return 0;
}

int egd_podcg_find(const char *root, const char *uid, char *out, size_t len)
{
	static const char *const usual[] = {
		"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod%s.slice",
		"kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod%s.slice",
		"kubepods.slice/kubepods-pod%s.slice",
		"kubepods/burstable/pod%s",
		"kubepods/besteffort/pod%s",
		"kubepods/pod%s",
	};
	char uid_[EGD_POD_UID_LEN + 1];
	struct walk w = { .root = root, .uid = uid };

	if (!egd_pod_uid_valid(uid))
		return -EINVAL;
	snprintf(uid_, sizeof(uid_), "%s", uid);
	for (char *p = uid_; *p; p++)
		if (*p == '-')
			*p = '_';
	for (size_t i = 0; i < sizeof(usual) / sizeof(usual[0]); i++) {
		char rel[PATH_MAX], path[PATH_MAX];
		struct stat st;

		snprintf(rel, sizeof(rel), usual[i], strstr(usual[i], ".slice") ? uid_ : uid);
		if (snprintf(path, sizeof(path), "%s/%s", root, rel) >= (int)sizeof(path))
			return -ENAMETOOLONG;
		if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
			if (strlen(path) >= len)
				return -ENAMETOOLONG;
			strcpy(out, path);
			return 0;
		}
	}
	walk_dir(&w, "", 0);
	if (w.nfound > 1) {
		egd_err("pod %s: %d cgroups under %s carry its UID; refusing to guess", uid,
			w.nfound, root);
		return -ENOTUNIQ;
	}
	if (!w.nfound)
		return -ENOENT;
	if (snprintf(out, len, "%s/%s", root, w.found) >= (int)len)
		return -ENAMETOOLONG;
	return 0;
}
