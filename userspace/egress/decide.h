/* SPDX-License-Identifier: MIT */
/*
 * decide(): the whole egress policy as one pure function. An intent (who,
 * where, what protocol, which host, which phase) goes in; a verdict and the
 * reason for it come out. No sockets, no globals: the event loop gathers the
 * intent and obeys the verdict, whatever transport produced it.
 */
#ifndef EGD_DECIDE_H
#define EGD_DECIDE_H

#include <stddef.h>
#include <stdint.h>

#include "egressd.h"
#include "egress/sniff.h"

enum egd_verdict {
	EGD_VERDICT_INTERCEPT = 0,
	EGD_VERDICT_TUNNEL,
	EGD_VERDICT_DENY,
	EGD_VERDICT_MAX,
};

/* Why: a closed set, so metrics can be labelled by it. */
enum egd_reason {
	EGD_REASON_INTERCEPT_HOST = 0, /* host is handed to the policy proxy */
	EGD_REASON_AGENT_ALLOW,	       /* host in EGRESSD_AGENT_ALLOW */
	EGD_REASON_VERIFICATION,       /* verification phase: all open */
	EGD_REASON_NOT_ALLOWED,	       /* agent phase, host not allowed */
	EGD_REASON_NO_HOST,	       /* agent phase, client named no host */
	EGD_REASON_IP_LITERAL,	       /* agent phase, host was an IP literal */
	EGD_REASON_MALFORMED,	       /* agent phase, hello/request malformed */
	EGD_REASON_NO_ORIGINAL_DST,    /* not a captured flow (direct dial) */
	EGD_REASON_INTERCEPT_ADDR,     /* dialled an intercept address: to the proxy */
	EGD_REASON_ECH,		       /* TLS hello with ECH, EGRESSD_ECH=refuse */
	EGD_REASON_MAX,
};

/* A host pattern list: exact names, or "*.suffix" for strict subdomains. */
#define EGD_HOSTLIST_MAX 64
struct egd_hostlist {
	size_t n;
	char pat[EGD_HOSTLIST_MAX][EGD_HOST_MAX];
};

/* Parse "a.com, *.b.org" into @list. Returns 0, or -EINVAL with @bad set to
 * the offending entry (a static-lifetime pointer into @spec is not kept). */
int egd_hostlist_parse(struct egd_hostlist *list, const char *spec, char *bad, size_t bad_len);
int egd_hostlist_match(const struct egd_hostlist *list, const char *host);

/* An address prefix list (EGRESSD_INTERCEPT_CIDRS). */
#define EGD_CIDRLIST_MAX 64
struct egd_cidr {
	struct egd_ip net; /* host bits cleared */
	uint8_t prefix;	   /* bits */
};
struct egd_cidrlist {
	size_t n;
	struct egd_cidr c[EGD_CIDRLIST_MAX];
};

/* Parse "203.0.113.0/24, 2001:db8::/32, 192.0.2.7" (no prefix: the one
 * address) into @list. Returns 0, or -EINVAL with @bad set to the entry. */
int egd_cidrlist_parse(struct egd_cidrlist *list, const char *spec, char *bad, size_t bad_len);
/* 1 when @a's address (a v4-mapped IPv6 one as IPv4) is in @list. */
int egd_cidrlist_match(const struct egd_cidrlist *list, const struct egd_addr *a);

struct egd_policy {
	struct egd_hostlist intercept;
	struct egd_hostlist agent_allow;
	/* TCP to these goes to the policy proxy, whatever the hello says. */
	struct egd_cidrlist intercept_cidrs;
	/* EGRESSD_ECH=allow: ECH hellos are judged like any other (by outer
	 * SNI and destination). 0, the default: refused in both phases. */
	int ech_allow;
};

struct egd_intent {
	enum egd_phase phase;
	uint64_t cgroup_id;
	int has_orig;		/* the original destination is known */
	struct egd_addr orig;	/* where the agent dialled */
	/* The policy DNS answered orig's address for an intercept host (the
	 * caller looks it up in the intercept-address table). */
	int orig_intercept;
	struct egd_sniff_out sniff;
};

struct egd_decision {
	enum egd_verdict verdict;
	enum egd_reason reason;
	/* TUNNEL only: dial the sniffed host name (resolved by the daemon) on
	 * the original port, not the address the agent dialled. Used for the
	 * agent-phase allowlist, so a client cannot name an allowed host and
	 * dial any address it likes. */
	int dial_by_name;
};

struct egd_decision egd_decide(const struct egd_policy *policy, const struct egd_intent *in);

const char *egd_verdict_name(enum egd_verdict v);
const char *egd_reason_name(enum egd_reason r);
const char *egd_phase_name(enum egd_phase p);
const char *egd_proto_name(enum egd_proto p);

#endif
