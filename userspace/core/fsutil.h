/* SPDX-License-Identifier: MIT */
/* Atomic file replacement; see fsutil.c. */
#ifndef EGD_FSUTIL_H
#define EGD_FSUTIL_H

#include <stddef.h>
#include <sys/types.h>

/* Replace @path with @len bytes of @data, mode @mode, all or nothing.
 * Returns 0 or -errno. */
int egd_write_file_atomic(const char *path, const void *data, size_t len, mode_t mode);

/* The same, with the two fsyncs left out when @sync is 0: still all or
 * nothing for a process that dies (the kernel has the bytes), not yet for a
 * machine that does; egd_fsync_path() later makes it so. */
int egd_write_file_atomic_sync(const char *path, const void *data, size_t len, mode_t mode,
			       int sync);
/* fsync @path and its directory; a missing file is not an error. */
int egd_fsync_path(const char *path);

/* write() until all of @data is out or an error (EINTR retried). */
int egd_write_all(int fd, const void *data, size_t len);

#endif
