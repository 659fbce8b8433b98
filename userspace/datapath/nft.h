/* SPDX-License-Identifier: MIT */
/*
 * The nftables fallback datapath: where BPF cannot be loaded, egressd captures
 * the agent with one table `inet egressd` in the network namespace it shares
 * with the agent. TCP is redirected to the transparent listener, DNS to the
 * policy DNS listener (or only to the configured resolvers until it exists),
 * and everything else is refused in the agent phase. The table is built with
 * libnftnl and sent in one atomic batch; it is read back from the kernel to
 * prove it is the one we installed; the phase is one verdict-map element.
 */
#ifndef EGD_NFT_H
#define EGD_NFT_H

#include <stddef.h>
#include <stdint.h>

#include "egressd.h"

/* The only table we own; everything else in the namespace is left alone. */
#define EGD_NFT_TABLE "egressd"

/* Same bound as the BPF resolver map, so both modes accept the same config. */
#define EGD_NFT_RESOLVERS_MAX EGD_RESOLVERS_MAX_ENTRIES

/* Big enough for the whole ruleset with every resolver (about 10 KiB). */
#define EGD_NFT_BATCH_MAX_BYTES (64 * 1024)

/* Named counters, readable with `nft list counters table inet egressd`. */
#define EGD_NFT_CNT_DIRECT_DIAL "direct_dial"
#define EGD_NFT_CNT_REFUSED_TCP "refused_tcp"
#define EGD_NFT_CNT_REFUSED_UDP "refused_udp"
#define EGD_NFT_CNT_REFUSED_OTHER "refused_other"

struct egd_nft_resolver {
	int family;	  /* AF_INET or AF_INET6 */
	uint8_t addr[16]; /* network order; v4 in the first 4 bytes */
};

struct egd_nft_config {
	uint16_t listen_port; /* transparent TCP listener, host order */
	uint16_t dns_port;    /* policy DNS listener, 0 = none yet */
	uint16_t admin_port;  /* 0 = none; also protected from direct dials */
	/*
	 * cgroup v2 id of the daemon's cgroup (inode of its directory) and its
	 * depth below the root of the cgroup namespace the installer runs in
	 * (what /proc/self/cgroup shows): `socket cgroupv2 level N`. Kernels
	 * since 6.12 (and stable backports) count levels from the installer's
	 * cgroup namespace, so inside a container level 0 is the container.
	 * 0 = no cgroup match (then use_uid_fallback is required).
	 */
	uint64_t daemon_cgroup_id;
	uint32_t daemon_cgroup_level;
	/* Also exempt sockets owned by daemon_uid; see the trade-off in nft.c. */
	int use_uid_fallback;
	uint32_t daemon_uid;
	struct egd_nft_resolver resolvers[EGD_NFT_RESOLVERS_MAX];
	size_t n_resolvers;
};

/*
 * Build the install batch (begin, the table replaced, end) into @buf.
 * Pure: no socket, no kernel. Returns the batch length or a negative errno
 * (-EINVAL for a config that would leave the agent open, -ENOSPC).
 */
int egd_nft_build(const struct egd_nft_config *cfg, enum egd_phase phase, void *buf, size_t len);

/* The phase-flip batch alone, for the same kind of test. */
int egd_nft_build_phase(enum egd_phase phase, void *buf, size_t len);

/* Install (or atomically replace) table inet egressd in the current netns. */
int egd_nft_install(const struct egd_nft_config *cfg, enum egd_phase phase);

/*
 * Read the table back from the kernel and compare it with what
 * egd_nft_install() would install. 0 = identical, -ENOENT = no table,
 * -EBADMSG = anything differs (extra or missing rule, set element, chain
 * hook or policy, the table made dormant), other negative errno = could not
 * ask the kernel.
 */
int egd_nft_verify(const struct egd_nft_config *cfg, enum egd_phase phase);

/*
 * Flip the phase: one verdict-map element replaced in one transaction. Fails
 * (-ENOENT) if the table or its element is gone; reinstall then. The daemon
 * switches its own phase right after this returns 0: when locking, flip the
 * kernel first so that no window lets the agent through.
 */
int egd_nft_set_phase(enum egd_phase phase);

/* Delete table inet egressd. -ENOENT if it was not there. */
int egd_nft_remove(void);

/* Packets refused so far, by named counter; for /metrics. */
int egd_nft_counter(const char *name, uint64_t *packets);

/*
 * Change notification: a non-blocking netlink socket subscribed to every
 * nf_tables change in this netns (ours included). When it turns readable,
 * call egd_nft_monitor_drain() and then egd_nft_verify(); the periodic check
 * stays as the backstop, since notifications can be lost (ENOBUFS).
 * Returns the fd or a negative errno; close it with close().
 */
int egd_nft_monitor_open(void);

/* Discard queued notifications. Returns how many, or a negative errno;
 * -ENOBUFS means some were lost: verify anyway. */
int egd_nft_monitor_drain(int fd);

#endif
