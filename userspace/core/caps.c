/* SPDX-License-Identifier: MIT */
/*
 * Capabilities and the cgroup-namespace kernel check; see caps.h.
 *
 * capget/capset are called directly rather than through libcap: two
 * syscalls on one bit do not justify a new runtime library in the image.
 */
#include "core/caps.h"

#include <errno.h>
#include <linux/capability.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

/* The initial cgroup namespace's inode number (PROC_CGROUP_INIT_INO in
 * include/linux/proc_ns.h): fixed by the kernel, the same on every boot. */
#define CGROUP_NS_INIT_INO 0xEFFFFFFBu

int egd_cap_raise(int cap)
{
	struct __user_cap_header_struct hdr = { .version = _LINUX_CAPABILITY_VERSION_3 };
	struct __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3] = { 0 };
	unsigned int word = (unsigned int)cap / 32, bit = 1u << ((unsigned int)cap % 32);

	if (cap < 0 || word >= _LINUX_CAPABILITY_U32S_3)
		return -EINVAL;
	if (syscall(SYS_capget, &hdr, data))
		return -errno;
	if (!(data[word].permitted & bit))
		return -EPERM;
	if (data[word].effective & bit)
		return 0;
	data[word].effective |= bit;
	if (syscall(SYS_capset, &hdr, data))
		return -errno;
	return 0;
}

/* "X.Y[.Z]" at @s into the three numbers; 0, or -EINVAL. */
static int parse_kernel_version(const char *s, unsigned int v[3])
{
	v[2] = 0;
	return s && sscanf(s, "%u.%u.%u", &v[0], &v[1], &v[2]) >= 2 ? 0 : -EINVAL;
}

bool egd_kernel_cgns_socket_match(const char *release, const char *version)
{
	/* The first release of each stable series with the fix. */
	static const unsigned int fixed[][3] = { { 6, 1, 112 }, { 6, 6, 53 }, { 6, 10, 12 } };
	const char *deb = version ? strstr(version, "Debian ") : NULL;
	unsigned int v[3], d[3];

	if (parse_kernel_version(release, v))
		return false;
	/* Debian's release names the ABI ("6.1.0-26-amd64"), its version the
	 * real patch level ("... Debian 6.1.112-1 (2024-09-30)"). */
	if (deb && !parse_kernel_version(deb + strlen("Debian "), d) && d[0] == v[0] &&
	    d[1] == v[1])
		v[2] = d[2];
	if (v[0] != 6)
		return v[0] > 6;
	if (v[1] >= 11)
		return true;
	for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++)
		if (v[1] == fixed[i][1])
			return v[2] >= fixed[i][2];
	return false;
}

int egd_in_private_cgroupns(void)
{
	struct stat st;

	if (stat("/proc/self/ns/cgroup", &st))
		return -errno;
	return st.st_ino != CGROUP_NS_INIT_INO;
}
