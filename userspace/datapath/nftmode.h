/* SPDX-License-Identifier: MIT */
/*
 * nftables capture for the daemon: who the daemon is (its cgroup and its
 * depth, for `socket cgroupv2`), the operator's additions to the ruleset
 * (EGRESSD_DENY_CIDRS, EGRESSD_LOOPBACK_ALLOW), and the checks that keep the
 * installed ruleset the one we meant.
 */
#ifndef EGD_NFTMODE_H
#define EGD_NFTMODE_H

#include <stdint.h>

#include "datapath/nft.h"

/* Fill @nc for a daemon listening on @listen_port, its policy DNS on
 * @dns_port (where every agent DNS packet goes) and @admin_port (0 for
 * none). Returns 0, or -errno with the reason logged. */
int egd_nftmode_config(struct egd_nft_config *nc, uint16_t listen_port, uint16_t dns_port,
		       uint16_t admin_port);

/* 0 when levels counted in the caller's cgroup namespace match (the initial
 * namespace, @private_cgns 0; or a kernel with the fix, see
 * egd_kernel_cgns_socket_match()); otherwise the reason logged and
 * -ENOTSUP: the daemon must refuse to start rather than capture itself.
 * @private_cgns is egd_in_private_cgroupns()'s answer (< 0: unknown, taken as
 * private); @release and @version are uname -r and -v. */
int egd_nftmode_check_kernel(int private_cgns, const char *release, const char *version);

/* Install and read back: 0 only when the kernel holds exactly our ruleset. */
int egd_nftmode_start(const struct egd_nft_config *nc, enum egd_phase phase);

/* Verify; if the table is missing or altered, log it as a security event and
 * reinstall. Returns 0 when the ruleset is ours afterwards. */
int egd_nftmode_enforce(const struct egd_nft_config *nc, enum egd_phase phase);

#endif
