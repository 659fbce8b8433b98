/* SPDX-License-Identifier: MIT */
/*
 * Capabilities of the running process, and the kernel requirement of nft
 * mode inside a private cgroup namespace.
 *
 * The image's binary carries CAP_NET_ADMIN as a *permitted-only* file
 * capability (cap_net_admin+p): execve then never fails for want of it (a
 * file capability with the effective bit makes execve refuse to run the
 * binary where the bounding set lacks it, so even `egressd --version` died
 * with EPERM), and the commands that need it raise it here.
 */
#ifndef EGD_CAPS_H
#define EGD_CAPS_H

#include <stdbool.h>

/* Raise capability @cap (CAP_*) into the effective set. 0, -EPERM when it
 * is not in the permitted set, or -errno from capget/capset. */
int egd_cap_raise(int cap);

/*
 * Whether the kernel matches `socket cgroupv2` at levels counted from the
 * caller's cgroup namespace: 6.11 and later, and the stable backports
 * 6.1.112, 6.6.53 and 6.10.12 (netfilter: nft_socket: make cgroupsv2
 * matching work with namespaces). Older kernels count from the initial
 * namespace's root. @release and @version are uname's (-r and -v); the
 * version is read only for Debian's, whose release names the ABI and not the
 * patch level. A release that does not parse is taken as without the fix.
 */
bool egd_kernel_cgns_socket_match(const char *release, const char *version);

/* 1 when this process is in a cgroup namespace other than the initial one,
 * 0 when in the initial one, -errno when it cannot tell. */
int egd_in_private_cgroupns(void);

#endif
