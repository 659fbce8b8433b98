/* SPDX-License-Identifier: MIT */
/* cgroup v2 helpers; see cgroup.h. */
#include "datapath/cgroup.h"
#include "core/log.h"

#include <errno.h>
#include <fcntl.h>
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
