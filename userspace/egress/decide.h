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

struct egd_policy {
	struct egd_hostlist intercept;
	struct egd_hostlist agent_allow;
};

struct egd_intent {
	enum egd_phase phase;
	uint64_t cgroup_id;
	int has_orig;		/* the original destination is known */
	struct egd_addr orig;	/* where the agent dialled */
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
