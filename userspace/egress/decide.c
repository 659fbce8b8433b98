/* SPDX-License-Identifier: MIT */
/* The egress policy; see decide.h. */
#include "egress/decide.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <stdlib.h>
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

/* A v4-mapped IPv6 address (::ffff:a.b.c.d) is the IPv4 one: the agent may
 * dial either spelling. */
static void addr_ip(struct egd_ip *ip, const struct egd_addr *a)
{
	static const uint8_t mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };

	memset(ip, 0, sizeof(*ip));
	ip->family = a->family;
	if (a->family == EGD_AF_INET6 && !memcmp(a->addr, mapped, sizeof(mapped))) {
		ip->family = EGD_AF_INET;
		ip->addr[0] = a->addr[3];
	} else {
		memcpy(ip->addr, a->addr, a->family == EGD_AF_INET ? 4 : 16);
	}
}

static void mask(struct egd_ip *ip, unsigned int prefix)
{
	uint8_t *b = (uint8_t *)ip->addr;
	unsigned int bits = ip->family == EGD_AF_INET ? 32 : 128;

	for (unsigned int i = prefix; i < bits; i++)
		b[i / 8] &= (uint8_t)~(0x80 >> (i % 8));
}

int egd_cidrlist_parse(struct egd_cidrlist *list, const char *spec, char *bad, size_t bad_len)
{
	char buf[4096], *save = NULL, *tok;

	memset(list, 0, sizeof(*list));
	if (!spec)
		return 0;
	if (strlen(spec) >= sizeof(buf)) {
		set_bad(bad, bad_len, spec, 40);
		return -EINVAL;
	}
	snprintf(buf, sizeof(buf), "%s", spec);
	for (tok = strtok_r(buf, ", \t", &save); tok; tok = strtok_r(NULL, ", \t", &save)) {
		struct egd_cidr *c = &list->c[list->n];
		char *slash = strchr(tok, '/'), *end;
		unsigned long prefix;
		unsigned int bits;
		struct egd_addr a = { 0 };

		if (list->n == EGD_CIDRLIST_MAX)
			goto bad;
		if (slash)
			*slash = '\0';
		if (inet_pton(AF_INET, tok, a.addr) == 1)
			a.family = EGD_AF_INET;
		else if (inet_pton(AF_INET6, tok, a.addr) == 1)
			a.family = EGD_AF_INET6;
		else
			goto bad_restore;
		bits = a.family == EGD_AF_INET ? 32 : 128;
		prefix = bits;
		if (slash) {
			if (!isdigit((unsigned char)slash[1]))
				goto bad_restore;
			prefix = strtoul(slash + 1, &end, 10);
			if (*end || prefix > bits)
				goto bad_restore;
		}
		addr_ip(&c->net, &a);
		if (c->net.family != a.family) /* a v4-mapped network */
			prefix = prefix >= 96 ? prefix - 96 : 0;
		c->prefix = (uint8_t)prefix;
		mask(&c->net, c->prefix);
		list->n++;
		continue;
bad_restore:
		if (slash)
			*slash = '/';
bad:
		set_bad(bad, bad_len, tok, strlen(tok));
		memset(list, 0, sizeof(*list));
		return -EINVAL;
	}
	return 0;
}

int egd_cidrlist_match(const struct egd_cidrlist *list, const struct egd_addr *a)
{
	struct egd_ip ip;

	if (!list->n)
		return 0;
	addr_ip(&ip, a);
	for (size_t i = 0; i < list->n; i++) {
		struct egd_ip m = ip;

		if (list->c[i].net.family != ip.family)
			continue;
		mask(&m, list->c[i].prefix);
		if (!memcmp(m.addr, list->c[i].net.addr, sizeof(m.addr)))
			return 1;
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
	/* An ECH hello hides its real SNI: in the verification phase it could
	 * carry the intercept host past the proxy behind a CDN's public name.
	 * The policy DNS gives honest clients no ECH config, so only a client
	 * that brought its own sends one. */
	if (s->proto == EGD_PROTO_TLS && s->tls_ech && !policy->ech_allow) {
		d.reason = EGD_REASON_ECH;
		return d;
	}
	if (named && egd_hostlist_match(&policy->intercept, s->host)) {
		d.verdict = EGD_VERDICT_INTERCEPT;
		d.reason = EGD_REASON_INTERCEPT_HOST;
		return d;
	}
	/* The address is the intercept host's, whatever the hello names (no
	 * SNI, a fronting SNI, an ECH outer name): the proxy judges it. */
	if (in->orig_intercept || egd_cidrlist_match(&policy->intercept_cidrs, &in->orig)) {
		d.verdict = EGD_VERDICT_INTERCEPT;
		d.reason = EGD_REASON_INTERCEPT_ADDR;
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
		"intercept-addr", "ech",
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
