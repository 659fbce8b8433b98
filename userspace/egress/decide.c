/* SPDX-License-Identifier: MIT */
/* The egress policy; see decide.h. */
#include "egress/decide.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

static void set_bad(char *bad, size_t bad_len, const char *s, size_t n)
{
	if (!bad || !bad_len)
		return;
	snprintf(bad, bad_len, "%.*s", (int)n, s);
}

int egd_hostlist_parse(struct egd_hostlist *list, const char *spec, char *bad, size_t bad_len)
{
	const char *p = spec ? spec : "";

	memset(list, 0, sizeof(*list));
	while (*p) {
		const char *start, *end;
		char entry[EGD_HOST_MAX + 2];
		size_t n;

		while (*p == ',' || isspace((unsigned char)*p))
			p++;
		if (!*p)
			break;
		start = p;
		while (*p && *p != ',')
			p++;
		end = p;
		while (end > start && isspace((unsigned char)end[-1]))
			end--;
		n = (size_t)(end - start);
		if (n == 0)
			continue;
		if (n >= sizeof(entry) - 1 || list->n == EGD_HOSTLIST_MAX) {
			set_bad(bad, bad_len, start, n);
			return -EINVAL;
		}
		memcpy(entry, start, n);
		entry[n] = '\0';
		{
			int wild = n > 2 && entry[0] == '*' && entry[1] == '.';
			char *name = wild ? entry + 2 : entry;

			if (egd_host_normalize(name) || strchr(name, '*')) {
				set_bad(bad, bad_len, start, n);
				return -EINVAL;
			}
			size_t nl = strlen(name), off = wild ? 2 : 0;

			if (off + nl >= EGD_HOST_MAX) {
				set_bad(bad, bad_len, start, n);
				return -EINVAL;
			}
			memcpy(list->pat[list->n], "*.", off);
			memcpy(list->pat[list->n] + off, name, nl + 1);
			list->n++;
		}
	}
	return 0;
}

int egd_hostlist_match(const struct egd_hostlist *list, const char *host)
{
	size_t hlen = strlen(host);

	if (!hlen)
		return 0;
	for (size_t i = 0; i < list->n; i++) {
		const char *pat = list->pat[i];

		if (pat[0] == '*') {
			/* "*.b.org" matches "a.b.org" but not "b.org" or "ab.org". */
			size_t slen = strlen(pat) - 1; /* ".b.org" */

			if (hlen > slen && strcmp(host + hlen - slen, pat + 1) == 0)
				return 1;
		} else if (strcmp(host, pat) == 0) {
			return 1;
		}
	}
	return 0;
}

struct egd_decision egd_decide(const struct egd_policy *policy, const struct egd_intent *in)
{
	const struct egd_sniff_out *s = &in->sniff;
	int named = s->host[0] && !s->host_is_ip && !s->error;
	struct egd_decision d = { .verdict = EGD_VERDICT_DENY };

	/* Without the original destination this is not a captured flow but a
	 * direct dial to the listener: nothing to tunnel to, nothing to trust. */
	if (!in->has_orig) {
		d.reason = EGD_REASON_NO_ORIGINAL_DST;
		return d;
	}
	if (named && egd_hostlist_match(&policy->intercept, s->host)) {
		d.verdict = EGD_VERDICT_INTERCEPT;
		d.reason = EGD_REASON_INTERCEPT_HOST;
		return d;
	}
	if (in->phase == EGD_PHASE_VERIFICATION) {
		d.verdict = EGD_VERDICT_TUNNEL;
		d.reason = EGD_REASON_VERIFICATION;
		return d;
	}
	if (named && egd_hostlist_match(&policy->agent_allow, s->host)) {
		d.verdict = EGD_VERDICT_TUNNEL;
		d.reason = EGD_REASON_AGENT_ALLOW;
		d.dial_by_name = 1;
		return d;
	}
	if (s->error)
		d.reason = EGD_REASON_MALFORMED;
	else if (s->host_is_ip)
		d.reason = EGD_REASON_IP_LITERAL;
	else if (!s->host[0])
		d.reason = EGD_REASON_NO_HOST;
	else
		d.reason = EGD_REASON_NOT_ALLOWED;
	return d;
}

const char *egd_verdict_name(enum egd_verdict v)
{
	static const char *const names[] = { "intercept", "tunnel", "deny" };

	return v < EGD_VERDICT_MAX ? names[v] : "?";
}

const char *egd_reason_name(enum egd_reason r)
{
	static const char *const names[] = {
		"intercept-host", "agent-allow", "verification",  "not-allowed",
		"no-host",	  "ip-literal",	 "malformed",	  "no-original-dst",
	};

	return r < EGD_REASON_MAX ? names[r] : "?";
}

const char *egd_phase_name(enum egd_phase p)
{
	return p == EGD_PHASE_VERIFICATION ? "verification" : "agent";
}

const char *egd_proto_name(enum egd_proto p)
{
	switch (p) {
	case EGD_PROTO_TLS:
		return "tls";
	case EGD_PROTO_HTTP:
		return "http";
	default:
		return "tcp";
	}
}
