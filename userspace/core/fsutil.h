/* SPDX-License-Identifier: MIT */
/* Atomic file replacement; see fsutil.c. */
#ifndef EGD_FSUTIL_H
#define EGD_FSUTIL_H

#include <stddef.h>
#include <sys/types.h>

/* Replace @path with @len bytes of @data, mode @mode, all or nothing.
 * Returns 0 or -errno. */
int egd_write_file_atomic(const char *path, const void *data, size_t len, mode_t mode);

/* write() until all of @data is out or an error (EINTR retried). */
int egd_write_all(int fd, const void *data, size_t len);

#endif
