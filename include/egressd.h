/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Types shared by the BPF programs and the daemon: map keys and values,
 * phases, counters, the load-time configuration. This is the only place they
 * are defined; both sides include it, and the _Static_asserts below catch a
 * layout that would make the two sides disagree.
 */
#ifndef EGRESSD_H
#define EGRESSD_H

#ifdef __BPF__
/* vmlinux.h already provides the __u32/__be32 family. */
#else
#include <linux/types.h>
#endif

/* Where the kernel side sends captured flows unless told otherwise. */
#define EGD_DEFAULT_LISTEN_PORT 15443
#define EGD_DEFAULT_DNS_PORT 15053
/* The port DNS is asked on (RFC 1035): what the kernel side keeps to the
 * resolvers in the agent phase and the nftables ruleset matches. */
#define EGD_DNS_PORT 53

/* Map sizes. Each entry lives from connect() until the daemon accepts. */
#define EGD_ORIG_MAX_ENTRIES 65536
#define EGD_EXEMPT_MAX_ENTRIES 64
#define EGD_RESOLVERS_MAX_ENTRIES 16
#define EGD_SOCKHASH_MAX_ENTRIES 65536
/* Addresses the policy DNS answered for intercept hosts: a few per host and
 * TTL window; LRU, so an agent asking for many cannot fill it for good. */
#define EGD_ICADDR_MAX_ENTRIES 4096

/* AF_INET/AF_INET6 as the kernel spells them; BPF has no libc headers. */
#define EGD_AF_INET 2
#define EGD_AF_INET6 10

enum egd_phase {
	EGD_PHASE_AGENT = 0,
	EGD_PHASE_VERIFICATION = 1,
};

/* One address and port, v4 in addr[0] or v6 in addr[0..3], network order. */
struct egd_addr {
	__u16 family;
	__be16 port;
	__be32 addr[4];
};
_Static_assert(sizeof(struct egd_addr) == 20, "egd_addr layout");

/* What connect() recorded for one captured socket. */
struct egd_orig {
	struct egd_addr dst;
	__u32 pad;
	__u64 cgroup_id;
};
_Static_assert(sizeof(struct egd_orig) == 32, "egd_orig layout");

/*
 * Key of the record once the connection is established: the agent's end
 * (src) and the listener's end (dst), exactly what accept() and
 * getsockname() give the daemon.
 */
struct egd_tuple {
	struct egd_addr src;
	struct egd_addr dst;
};
_Static_assert(sizeof(struct egd_tuple) == 40, "egd_tuple layout");

/* An address alone (no port), as in the intercept-address map's key. */
struct egd_ip {
	__u16 family;
	__u16 pad;
	__be32 addr[4];
};
_Static_assert(sizeof(struct egd_ip) == 20, "egd_ip layout");

/*
 * The intercept-address map (LRU hash, egd_ip -> egd_icaddr): every address
 * the policy DNS answered for an intercept host, until its TTL runs out.
 * Written by the daemon; read by the kernel (verification-phase redirect,
 * QUIC refusal) and by the daemon's own decision for flows to those
 * addresses. expires_ns is CLOCK_MONOTONIC, the clock of bpf_ktime_get_ns().
 */
struct egd_icaddr {
	__u64 expires_ns;
};
_Static_assert(sizeof(struct egd_icaddr) == 8, "egd_icaddr layout");

/* Written by `egressd attach`, read by the programs and by `egressd run`. */
struct egd_config {
	__be16 listen_port; /* TCP port of the listener on 127.0.0.1 and ::1 */
	__be16 dns_port;    /* 0 until the policy DNS listener exists */
	__u32 flags;        /* EGD_CFG_* */
	__u64 daemon_cgroup_id; /* informational: the cgroup of the loader */
};
_Static_assert(sizeof(struct egd_config) == 16, "egd_config layout");

#define EGD_CFG_ACCEL (1u << 0) /* sk_msg fast path loaded */

/* Kernel-side counters, one per-CPU slot each. */
enum egd_counter {
	EGD_CNT_TCP_REDIRECTED = 0,
	EGD_CNT_TCP_LOOPBACK,
	EGD_CNT_EXEMPT,
	EGD_CNT_UDP_ALLOWED_DNS,
	EGD_CNT_UDP_ALLOWED_VERIFICATION,
	EGD_CNT_UDP_ALLOWED_LOOPBACK,
	EGD_CNT_UDP_DENIED,
	EGD_CNT_SOCK_DENIED,
	EGD_CNT_OTHER_DENIED,
	EGD_CNT_ORIG_RECORD_FAILED,
	EGD_CNT_MAX,
};

#endif /* EGRESSD_H */
