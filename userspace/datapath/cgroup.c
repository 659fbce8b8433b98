/* SPDX-License-Identifier: MIT */
/* cgroup v2 helpers; see cgroup.h. */
#include "datapath/cgroup.h"
#include "core/log.h"

#include <bpf/bpf.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <mntent.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* How long egd_cgroup_destroy() waits for killed processes to leave. */
#define CGROUP_DRAIN_TIMEOUT_MS 2000

int egd_cgroup2_root(char *buf, size_t len)
{
	FILE *f = setmntent("/proc/mounts", "r");
	struct mntent *m;
	int err = -ENOENT;

	if (!f)
		return -errno;
	while ((m = getmntent(f))) {
		if (strcmp(m->mnt_type, "cgroup2") == 0) {
			snprintf(buf, len, "%s", m->mnt_dir);
			err = 0;
			break;
		}
	}
	endmntent(f);
	return err;
}

int egd_cgroup_id(const char *path, uint64_t *id)
{
	struct stat st;

	if (stat(path, &st))
		return -errno;
	if (!S_ISDIR(st.st_mode))
		return -ENOTDIR;
	*id = st.st_ino;
	return 0;
}

int egd_cgroup_of_pid(int pid, char *buf, size_t len)
{
	char root[256], path[64], line[4096];
	FILE *f;
	int err = -ENOENT;

	err = egd_cgroup2_root(root, sizeof(root));
	if (err)
		return err;
	if (pid)
		snprintf(path, sizeof(path), "/proc/%d/cgroup", pid);
	else
		snprintf(path, sizeof(path), "/proc/self/cgroup");
	f = fopen(path, "re");
	if (!f)
		return -errno;
	err = -ENOENT;
	while (fgets(line, sizeof(line), f)) {
		if (strncmp(line, "0::", 3) == 0) {
			line[strcspn(line, "\n")] = '\0';
			/* "/" is the root itself. */
			snprintf(buf, len, "%s%s", root, strcmp(line + 3, "/") ? line + 3 : "");
			err = 0;
			break;
		}
	}
	fclose(f);
	return err;
}

static int write_file(const char *path, const char *s)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	ssize_t n;
	int err = 0;

	if (fd < 0)
		return -errno;
	n = write(fd, s, strlen(s));
	if (n < 0)
		err = -errno;
	close(fd);
	return err;
}

int egd_cgroup_enter(const char *path, int pid)
{
	char procs[4096], s[32];

	snprintf(procs, sizeof(procs), "%s/cgroup.procs", path);
	snprintf(s, sizeof(s), "%d", pid);
	return write_file(procs, s);
}

int egd_cgroup_destroy(const char *path)
{
	char kill_path[4096];
	unsigned long long deadline = egd_now_ms() + CGROUP_DRAIN_TIMEOUT_MS;

	snprintf(kill_path, sizeof(kill_path), "%s/cgroup.kill", path);
	/* cgroup.kill exists since 5.14; without it the caller's own cleanup
	 * of its child is all we have. */
	write_file(kill_path, "1");
	while (rmdir(path)) {
		if (errno == ENOENT)
			return 0;
		if (errno != EBUSY || egd_now_ms() > deadline)
			return -errno;
		usleep(10000);
	}
	return 0;
}

/* The length of @p without one trailing slash (but "/" stays "/"). */
static size_t trimmed_len(const char *p)
{
	size_t n = strlen(p);

	return n > 1 && p[n - 1] == '/' ? n - 1 : n;
}

/* Whether the first @na bytes of @a are a proper ancestor of @b's @nb. */
static int contains(const char *a, size_t na, const char *b, size_t nb)
{
	if (na >= nb || strncmp(a, b, na))
		return 0;
	return b[na] == '/' || (na == 1 && a[0] == '/');
}

enum egd_cgroup_rel egd_cgroup_relation(const char *a, const char *b)
{
	size_t na = trimmed_len(a), nb = trimmed_len(b);

	if (na == nb && strncmp(a, b, na) == 0)
		return EGD_CG_SAME;
	if (contains(a, na, b, nb))
		return EGD_CG_ANCESTOR;
	if (contains(b, nb, a, na))
		return EGD_CG_DESCENDANT;
	return EGD_CG_UNRELATED;
}

const char *egd_cgroup_rel_words(enum egd_cgroup_rel r)
{
	switch (r) {
	case EGD_CG_SAME:
		return "is";
	case EGD_CG_ANCESTOR:
		return "is an ancestor of";
	case EGD_CG_DESCENDANT:
		return "lies inside";
	default:
		return "is unrelated to";
	}
}

/* nftw() passes no context to its callback: the walk is done once, at start,
 * by one thread, so file-scope state is enough. */
static uint64_t walk_id;
static char walk_found[PATH_MAX];

static int walk_cb(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
	(void)ftw;
	if (type != FTW_D || (uint64_t)st->st_ino != walk_id)
		return FTW_CONTINUE;
	snprintf(walk_found, sizeof(walk_found), "%s", path);
	return FTW_STOP;
}

/* Open file descriptors nftw() may hold while it walks the tree. */
#define CGROUP_WALK_FDS 32

int egd_cgroup_path_of_id(const char *root, uint64_t id, char *buf, size_t len)
{
	int rc;

	walk_id = id;
	walk_found[0] = '\0';
	rc = nftw(root, walk_cb, CGROUP_WALK_FDS, FTW_PHYS | FTW_MOUNT | FTW_ACTIONRETVAL);
	if (rc < 0)
		return -errno;
	if (!walk_found[0])
		return -ENOENT;
	if ((size_t)snprintf(buf, len, "%s", walk_found) >= len)
		return -ENAMETOOLONG;
	return 0;
}

int egd_cgroup_attached_id(const char *pin_dir, uint64_t *id)
{
	struct bpf_link_info info;
	__u32 info_len = sizeof(info);
	char path[PATH_MAX];
	int fd, err = 0;

	/* Every program is attached to the same cgroup; connect4 is always
	 * there (egd_bpf_attached() looks for it too). */
	if ((size_t)snprintf(path, sizeof(path), "%s/links/egd_connect4", pin_dir) >= sizeof(path))
		return -ENAMETOOLONG;
	fd = bpf_obj_get(path);
	if (fd < 0)
		return -errno;
	memset(&info, 0, sizeof(info));
	if (bpf_obj_get_info_by_fd(fd, &info, &info_len))
		err = -errno;
	else if (info.type != BPF_LINK_TYPE_CGROUP)
		err = -EINVAL;
	else
		*id = info.cgroup.cgroup_id;
	close(fd);
	return err;
}
