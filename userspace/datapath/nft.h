/* SPDX-License-Identifier: MIT */
/*
 * The nftables fallback datapath: where BPF cannot be loaded, egressd captures
 * the agent with one table `inet egressd` in the network namespace it shares
 * with the agent. TCP is redirected to the transparent listener, every DNS
 * packet (port 53, any address) to the policy DNS listener, the always-deny
 * destinations and every protocol but TCP and UDP are refused in both phases,
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

/* Operator CIDRs added to the built-in always-deny set (EGRESSD_DENY_CIDRS):
 * an API server and a kubelet per family is the usual need; 64 is plenty. */
#define EGD_NFT_DENY_MAX 64

/* Loopback ports the agent may dial in the agent phase
 * (EGRESSD_LOOPBACK_ALLOW): a handful of local services at most. */
#define EGD_NFT_LOOPBACK_ALLOW_MAX 32

/* Intercept addresses the set holds at once, as the BPF map. */
#define EGD_NFT_ICADDR_MAX EGD_ICADDR_MAX_ENTRIES

/* Big enough for the whole ruleset with every operator CIDR and loopback
 * port (about 20 KiB). */
#define EGD_NFT_BATCH_MAX_BYTES (64 * 1024)

/* Named counters, readable with `nft list counters table inet egressd`. */
#define EGD_NFT_CNT_DIRECT_DIAL "direct_dial"
#define EGD_NFT_CNT_REFUSED_TCP "refused_tcp"
#define EGD_NFT_CNT_REFUSED_UDP "refused_udp"
#define EGD_NFT_CNT_REFUSED_OTHER "refused_other"
#define EGD_NFT_CNT_DENIED_DST "denied_dst"
/* All of them, for /metrics and `egressd status`. */
#define EGD_NFT_COUNTER_NAMES                                                                      \
	{ EGD_NFT_CNT_DIRECT_DIAL, EGD_NFT_CNT_REFUSED_TCP, EGD_NFT_CNT_REFUSED_UDP,              \
	  EGD_NFT_CNT_REFUSED_OTHER, EGD_NFT_CNT_DENIED_DST }

/* The always-deny set, whatever EGRESSD_DENY_CIDRS adds: link-local (cloud
 * metadata at 169.254.169.254, and fe80::/10), AWS's IPv6 metadata,
 * Alibaba's metadata, "this network", multicast and broadcast. */
#define EGD_NFT_DENY_DEFAULT                                                                       \
	"169.254.0.0/16,fe80::/10,fd00:ec2::254/128,100.100.100.200/32,0.0.0.0/8,224.0.0.0/4,"     \
	"ff00::/8,255.255.255.255/32"

/* One CIDR: AF_INET or AF_INET6, network order, v4 in the first 4 bytes. */
struct egd_nft_cidr {
	int family;
	uint8_t addr[16];
	uint8_t prefix; /* 0..32 or 0..128 */
};

struct egd_nft_config {
	uint16_t listen_port; /* transparent TCP listener, host order */
	/* The policy DNS listener's port (host order), where every agent
	 * packet to port 53 is redirected: the port of EGRESSD_DNS_LISTEN,
	 * EGD_DEFAULT_DNS_PORT until that setting exists. Required. */
	uint16_t dns_port;
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
	/* Added to EGD_NFT_DENY_DEFAULT, never instead of it. */
	struct egd_nft_cidr deny[EGD_NFT_DENY_MAX];
	size_t n_deny;
	/* Loopback ports (host order) open to the agent in the agent phase,
	 * TCP and UDP, besides the flows redirected to the daemon. */
	uint16_t loopback_allow[EGD_NFT_LOOPBACK_ALLOW_MAX];
	size_t n_loopback_allow;
};

/*
 * Parse a comma (or space) separated list of CIDRs ("10.0.0.0/8",
 * "2001:db8::/32"; a bare address is a /32 or /128). Host bits set below
 * the prefix are an error (a typo, most often). Returns how many, or
 * -EINVAL / -E2BIG.
 */
int egd_nft_parse_cidrs(const char *s, struct egd_nft_cidr *out, int max);

/* Parse a comma (or space) separated list of ports 1..65535. Returns how
 * many, or -EINVAL / -E2BIG. */
int egd_nft_parse_ports(const char *s, uint16_t *out, int max);

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

/*
 * Add @ip to the intercept-address set for @ttl_s seconds (1 or more):
 * UDP to it (QUIC) is then refused in both phases. Adding an address that
 * is there already restarts its timeout. Called by the policy DNS for every
 * address it answers for an intercept host; safe from any thread (each call
 * has its own netlink socket). -ENOENT if the table is gone (the periodic
 * check reinstalls it, empty: the next answer adds the address again),
 * -ENFILE if the set is full.
 */
int egd_nft_icaddr_add(const struct egd_ip *ip, uint32_t ttl_s);

/* The batch egd_nft_icaddr_add() sends, for the unit tests. */
int egd_nft_build_icaddr(const struct egd_ip *ip, uint32_t ttl_s, void *buf, size_t len);

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
