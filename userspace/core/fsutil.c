/* SPDX-License-Identifier: MIT */
/*
 * Files that must never be seen half-written: the usage summary, the CA and
 * its key. Write a temp file beside the target (created 0600, so a key is
 * never briefly readable), fsync, set the final mode, rename, fsync the
 * directory: a reader, or a restart after a crash, finds the old file or the
 * new one.
 */
#include "core/fsutil.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int egd_write_all(int fd, const void *data, size_t len)
{
	const char *p = data;

	while (len) {
		ssize_t n = write(fd, p, len);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static int fsync_dir_of(const char *path)
{
	char *copy = strdup(path);
	int fd, err = 0;

	if (!copy)
		return -ENOMEM;
	fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	free(copy);
	if (fd < 0)
		return -errno;
	if (fsync(fd))
		err = -errno;
	close(fd);
	return err;
}

int egd_write_file_atomic(const char *path, const void *data, size_t len, mode_t mode)
{
	return egd_write_file_atomic_sync(path, data, len, mode, 1);
}

int egd_write_file_atomic_sync(const char *path, const void *data, size_t len, mode_t mode,
			       int sync)
{
	char *tmp;
	int fd, err;

	/* Same directory as the target, so rename() is atomic. */
	if (asprintf(&tmp, "%s.tmp.XXXXXX", path) < 0)
		return -ENOMEM;
	fd = mkostemp(tmp, O_CLOEXEC);
	if (fd < 0) {
		err = -errno;
		goto err_free;
	}
	err = egd_write_all(fd, data, len);
	if (!err && fchmod(fd, mode))
		err = -errno;
	if (!err && sync && fsync(fd))
		err = -errno;
	if (close(fd) && !err)
		err = -errno;
	if (err)
		goto err_unlink;
	if (rename(tmp, path)) {
		err = -errno;
		goto err_unlink;
	}
	free(tmp);
	return sync ? fsync_dir_of(path) : 0;

err_unlink:
	unlink(tmp);
err_free:
	free(tmp);
	return err;
}


int egd_fsync_path(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC), err = 0;

	if (fd < 0)
		return errno == ENOENT ? 0 : -errno;
	if (fsync(fd))
		err = -errno;
	close(fd);
	return err ? err : fsync_dir_of(path);
}
