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
/* The port DNS is asked on (RFC 1035): what the kernel side and the
 * nftables ruleset send to the policy DNS, whatever the address. */
#define EGD_DNS_PORT 53

/* Map sizes. Each entry lives from connect() until the daemon accepts. */
#define EGD_ORIG_MAX_ENTRIES 65536
#define EGD_EXEMPT_MAX_ENTRIES 64
#define EGD_RESOLVERS_MAX_ENTRIES 16 /* of the daemon's forwarder, not the kernel's */
#define EGD_SOCKHASH_MAX_ENTRIES 65536
/* Addresses the policy DNS answered for intercept hosts: a few per host and
 * TTL window; LRU, so an agent asking for many cannot fill it for good. */
#define EGD_ICADDR_MAX_ENTRIES 4096
/* Always-deny prefixes (EGRESSD_DENY_CIDRS): the defaults plus what the
 * operator adds (API servers, kubelets, a few cloud endpoints). */
#define EGD_DENY_MAX_ENTRIES 256
/* Loopback ports the agent may reach besides the daemon's capture and DNS
 * ports: the policy proxy's and EGRESSD_LOOPBACK_ALLOW. */
#define EGD_LOOPBACK_PORTS_MAX_ENTRIES 64

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

/*
 * Key of the always-deny LPM trie. Every address is kept as IPv6, a v4 one
 * v4-mapped (::ffff:a.b.c.d, prefix 96 + its own), so one lookup answers for
 * v4, v6 and a v4-mapped destination of a dual-stack socket alike.
 */
struct egd_lpm_key {
	__u32 prefixlen;
	__be32 addr[4];
};
_Static_assert(sizeof(struct egd_lpm_key) == 20, "egd_lpm_key layout");

/* Written by `egressd attach`, read by the programs and by `egressd run`. */
struct egd_config {
	__be16 listen_port; /* TCP port of the listener on 127.0.0.1 and ::1 */
	__be16 dns_port;    /* policy DNS on 127.0.0.1 and ::1 (0: the default) */
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
	EGD_CNT_DNS_REDIRECTED, /* UDP or TCP to port 53, sent to the policy DNS */
	EGD_CNT_UDP_ALLOWED_VERIFICATION,
	EGD_CNT_UDP_ALLOWED_LOOPBACK,
	EGD_CNT_UDP_DENIED,
	EGD_CNT_SOCK_DENIED,
	EGD_CNT_OTHER_DENIED,
	EGD_CNT_ORIG_RECORD_FAILED,
	EGD_CNT_DNS_REPLY_RESTORED,   /* a DNS reply's source set back for the agent */
	EGD_CNT_DENY_CIDR,	      /* always-deny destination refused */
	EGD_CNT_LOOPBACK_DENIED,      /* loopback port outside the allowed set */
	EGD_CNT_SOCKOPT_DENIED,	      /* routing header or IP options refused */
	EGD_CNT_UDP_INTERCEPT_DENIED, /* UDP (QUIC) to an intercept address */
	EGD_CNT_BACKSTOP_DROPPED,     /* packet for a non-loopback address dropped */
	EGD_CNT_MAX,
};

#endif /* EGRESSD_H */
