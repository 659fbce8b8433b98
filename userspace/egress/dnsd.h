/* SPDX-License-Identifier: MIT */
/*
 * The policy DNS server: UDP and TCP on 127.0.0.1 and ::1 at
 * EGRESSD_DNS_LISTEN's port, on one event loop. In the agent phase a name
 * that is an intercept host or on EGRESSD_AGENT_ALLOW gets the A/AAAA
 * addresses the daemon resolved itself (c-ares, towards EGRESSD_RESOLVERS)
 * and NODATA for every other type; every other name gets REFUSED and
 * nothing leaves the machine. In the verification phase queries are
 * forwarded to the resolvers and the answers relayed, except that an
 * intercept host still gets only the daemon's own A/AAAA answers (NODATA for
 * every other type, HTTPS and SVCB included: no ECH config reaches the
 * agent). Each address given for an intercept host goes into the
 * intercept-address table.
 *
 * The policy is a decision on the name alone (egd_dns_policy()), pure, so
 * it is tested as a table; the rest is transport.
 */
#ifndef EGD_DNSD_H
#define EGD_DNSD_H

#include <stdint.h>

#include "core/loop.h"
#include "egress/decide.h"
#include "egress/dns.h"
#include "egress/icaddr.h"

/* Queries waiting for an upstream at once; past this they get SERVFAIL.
 * A lookup takes a few ms, so this is far above an agent's honest need. */
#define EGD_DNSD_MAX_PENDING 4096
/* TCP connections at once; more are reset at accept. */
#define EGD_DNSD_TCP_MAX_CONNS 128
/* A TCP connection idle this long is closed (RFC 7766 asks for seconds). */
#define EGD_DNSD_TCP_IDLE_MS 10000
/* Queries of one TCP connection being answered at once; reading pauses at
 * this, so a pipelining client cannot queue unbounded answers. */
#define EGD_DNSD_TCP_MAX_INFLIGHT 32
/* Names whose addresses the daemon keeps between lookups. */
#define EGD_DNSD_CACHE_ENTRIES 1024
/* NXDOMAIN and NODATA from the upstream are kept this long (or the TTL cap,
 * if lower): long enough to absorb a retry storm, short enough to heal. */
#define EGD_DNSD_NEG_TTL_S 5
/* An intercept address outlives its answer by this much: a client may
 * connect a moment after the TTL it was given has run out. */
#define EGD_DNSD_ICADDR_GRACE_S 60
/* How long the daemon waits for an upstream, per try, and how many tries. */
#define EGD_DNSD_UPSTREAM_TIMEOUT_MS 2000
#define EGD_DNSD_UPSTREAM_TRIES 2

/* What the policy does with one question. */
enum egd_dns_verdict {
	EGD_DNS_V_RESOLVE = 0, /* A/AAAA from the daemon's own resolution */
	EGD_DNS_V_NODATA,      /* allowed name, type not given out */
	EGD_DNS_V_REFUSE,      /* agent phase, name not allowed */
	EGD_DNS_V_FORWARD,     /* verification phase: asked upstream, relayed */
	EGD_DNS_V_MALFORMED,   /* FORMERR, NOTIMP, BADVERS, or a class not IN */
	EGD_DNS_V_MAX,
};

const char *egd_dns_verdict_name(enum egd_dns_verdict v);

/* The verdict for question @q in @phase under @policy; *@intercept is set
 * when the name is an intercept host (its addresses are remembered). */
enum egd_dns_verdict egd_dns_policy(const struct egd_policy *policy, enum egd_phase phase,
				    const struct egd_dns_query *q, int *intercept);

struct egd_dnsd;

struct egd_dnsd_config {
	uint16_t port;		   /* host order; on 127.0.0.1 and ::1 */
	unsigned int max_ttl_s;	   /* EGRESSD_DNS_MAX_TTL_S */
	const struct egd_policy *policy; /* outlives the server */
	const enum egd_phase *phase;	  /* read with __atomic on every query */
	const char *resolvers;	   /* EGRESSD_RESOLVERS; NULL: /etc/resolv.conf */
	struct egd_icaddr_table *icaddr; /* may be NULL */
	/*
	 * Optional: the cgroup of the agent behind an accepted TCP connection
	 * (@peer its end, @local the listener's), from the capture's record
	 * of a redirected connect (taking the record also frees it). 0 or
	 * -ENOENT (a direct dial: the cgroup stays 0, unknown). A datagram
	 * carries no such record, so UDP queries are audited with cgroup 0.
	 */
	int (*tcp_cgroup)(void *arg, const struct egd_addr *peer, const struct egd_addr *local,
			  uint64_t *cgroup_id);
	void *tcp_cgroup_arg;
};

/*
 * Start serving on @loop. Listening failures are logged and fail the call:
 * the kernel side sends the agent's DNS here in every mode. NULL + errno.
 */
struct egd_dnsd *egd_dnsd_new(struct egd_loop *loop, const struct egd_dnsd_config *cfg);
/* On the loop's thread (or after it stopped). Accepts NULL. */
void egd_dnsd_free(struct egd_dnsd *s);

/* Counters in the Prometheus text format, for /metrics; on the loop's
 * thread. Malloc'ed; NULL + errno. */
char *egd_dnsd_metrics(struct egd_dnsd *s);

#endif /* EGD_DNSD_H */
