/* SPDX-License-Identifier: MIT */
/*
 * decide() as a table: every phase, every kind of host, with and without
 * the original destination. Plus the host pattern lists it relies on.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <errno.h>
#include <arpa/inet.h>

#include <cmocka.h>

#include "egress/decide.h"

static struct egd_policy policy;

static int setup(void **state)
{
	(void)state;
	assert_int_equal(egd_hostlist_parse(&policy.intercept, "openrouter.ai", NULL, 0), 0);
	assert_int_equal(
		egd_hostlist_parse(&policy.agent_allow, "pypi.org, *.pythonhosted.org", NULL, 0), 0);
	return 0;
}

struct row {
	const char *name;
	enum egd_phase phase;
	int has_orig;
	enum egd_proto proto;
	const char *host;
	int host_is_ip;
	const char *error;
	enum egd_verdict verdict;
	enum egd_reason reason;
	int dial_by_name;
};

#define A EGD_PHASE_AGENT
#define V EGD_PHASE_VERIFICATION
#define TLS EGD_PROTO_TLS
#define HTTP EGD_PROTO_HTTP
#define TCP EGD_PROTO_UNKNOWN
#define INTERCEPT EGD_VERDICT_INTERCEPT
#define TUNNEL EGD_VERDICT_TUNNEL
#define DENY EGD_VERDICT_DENY

static const struct row rows[] = {
	{ "intercept host, agent phase", A, 1, TLS, "openrouter.ai", 0, NULL, INTERCEPT,
	  EGD_REASON_INTERCEPT_HOST, 0 },
	{ "intercept host, verification phase", V, 1, TLS, "openrouter.ai", 0, NULL, INTERCEPT,
	  EGD_REASON_INTERCEPT_HOST, 0 },
	{ "intercept host over plain HTTP", A, 1, HTTP, "openrouter.ai", 0, NULL, INTERCEPT,
	  EGD_REASON_INTERCEPT_HOST, 0 },
	{ "subdomain of intercept host is not intercepted", A, 1, TLS, "api.openrouter.ai", 0,
	  NULL, DENY, EGD_REASON_NOT_ALLOWED, 0 },
	{ "lookalike suffix is not intercepted", A, 1, TLS, "evilopenrouter.ai", 0, NULL, DENY,
	  EGD_REASON_NOT_ALLOWED, 0 },
	{ "other host, agent phase", A, 1, TLS, "example.com", 0, NULL, DENY,
	  EGD_REASON_NOT_ALLOWED, 0 },
	{ "other host, verification phase", V, 1, TLS, "example.com", 0, NULL, TUNNEL,
	  EGD_REASON_VERIFICATION, 0 },
	{ "allowlisted exact host, agent phase, dialled by name", A, 1, TLS, "pypi.org", 0, NULL,
	  TUNNEL, EGD_REASON_AGENT_ALLOW, 1 },
	{ "allowlisted wildcard host", A, 1, HTTP, "files.pythonhosted.org", 0, NULL, TUNNEL,
	  EGD_REASON_AGENT_ALLOW, 1 },
	{ "wildcard does not match its apex", A, 1, TLS, "pythonhosted.org", 0, NULL, DENY,
	  EGD_REASON_NOT_ALLOWED, 0 },
	{ "allowlisted host, verification phase: to the original destination", V, 1, TLS,
	  "pypi.org", 0, NULL, TUNNEL, EGD_REASON_VERIFICATION, 0 },
	{ "no host, agent phase", A, 1, TCP, "", 0, NULL, DENY, EGD_REASON_NO_HOST, 0 },
	{ "no host, verification phase", V, 1, TCP, "", 0, NULL, TUNNEL,
	  EGD_REASON_VERIFICATION, 0 },
	{ "TLS without SNI, verification phase", V, 1, TLS, "", 0, NULL, TUNNEL,
	  EGD_REASON_VERIFICATION, 0 },
	{ "IP literal, agent phase", A, 1, HTTP, "192.0.2.1", 1, NULL, DENY,
	  EGD_REASON_IP_LITERAL, 0 },
	{ "IP literal, verification phase", V, 1, HTTP, "192.0.2.1", 1, NULL, TUNNEL,
	  EGD_REASON_VERIFICATION, 0 },
	{ "malformed hello, agent phase", A, 1, TLS, "", 0, "duplicate extension", DENY,
	  EGD_REASON_MALFORMED, 0 },
	{ "malformed hello, verification phase", V, 1, TLS, "", 0, "truncated", TUNNEL,
	  EGD_REASON_VERIFICATION, 0 },
	{ "error with a host is never trusted as that host", A, 1, HTTP, "openrouter.ai", 0,
	  "duplicate host", DENY, EGD_REASON_MALFORMED, 0 },
	{ "no original destination, agent phase", A, 0, TLS, "openrouter.ai", 0, NULL, DENY,
	  EGD_REASON_NO_ORIGINAL_DST, 0 },
	{ "no original destination, verification phase", V, 0, TLS, "example.com", 0, NULL, DENY,
	  EGD_REASON_NO_ORIGINAL_DST, 0 },
};

static void test_decide_table(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
		const struct row *r = &rows[i];
		struct egd_intent in = { .phase = r->phase, .has_orig = r->has_orig };
		struct egd_decision d;

		in.sniff.proto = r->proto;
		snprintf(in.sniff.host, sizeof(in.sniff.host), "%s", r->host);
		in.sniff.host_is_ip = r->host_is_ip;
		in.sniff.error = r->error;
		d = egd_decide(&policy, &in);
		print_message("%-70s -> %s/%s\n", r->name, egd_verdict_name(d.verdict),
			      egd_reason_name(d.reason));
		assert_int_equal(d.verdict, r->verdict);
		assert_int_equal(d.reason, r->reason);
		assert_int_equal(d.dial_by_name, r->dial_by_name);
	}
}

static void test_hostlist_normalizes_case_and_trailing_dot(void **state)
{
	struct egd_hostlist l;

	(void)state;
	assert_int_equal(egd_hostlist_parse(&l, " OpenRouter.AI. , *.Example.COM ", NULL, 0), 0);
	assert_int_equal(l.n, 2);
	assert_string_equal(l.pat[0], "openrouter.ai");
	assert_string_equal(l.pat[1], "*.example.com");
	assert_true(egd_hostlist_match(&l, "a.b.example.com"));
	assert_false(egd_hostlist_match(&l, "example.com"));
	assert_false(egd_hostlist_match(&l, ""));
}

static void test_hostlist_rejects_bad_patterns(void **state)
{
	static const char *const bad[] = { "bad host!", "a.*.com", "*", "*.", "exa mple.com",
					   "a..b" };
	struct egd_hostlist l;
	char which[300];

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		assert_int_equal(egd_hostlist_parse(&l, bad[i], which, sizeof(which)), -EINVAL);
		assert_string_equal(which, bad[i]);
	}
}

static void test_hostlist_empty_spec_is_empty_list(void **state)
{
	struct egd_hostlist l;

	(void)state;
	assert_int_equal(egd_hostlist_parse(&l, "", NULL, 0), 0);
	assert_int_equal(l.n, 0);
	assert_int_equal(egd_hostlist_parse(&l, " , ,", NULL, 0), 0);
	assert_int_equal(l.n, 0);
}

/*
 * Flows to the intercept host's addresses (the policy DNS's answers, or
 * EGRESSD_INTERCEPT_CIDRS) and ECH hellos, in both phases: whatever the
 * hello names, they are intercepted (or, with ECH, refused), never tunnelled.
 */
struct arow {
	const char *name;
	enum egd_phase phase;
	enum egd_proto proto;
	const char *host;
	int ech;
	const char *orig;
	int orig_intercept; /* in the intercept-address table */
	int ech_allow;
	enum egd_verdict verdict;
	enum egd_reason reason;
};

#define IA EGD_REASON_INTERCEPT_ADDR
static const struct arow arows[] = {
	{ "DNS-answered address, no SNI, verification", V, TLS, "", 0, "198.51.100.7", 1, 0,
	  INTERCEPT, IA },
	{ "DNS-answered address, fronting SNI, verification", V, TLS, "cdn.example", 0,
	  "198.51.100.7", 1, 0, INTERCEPT, IA },
	{ "DNS-answered address, plain HTTP with another Host, verification", V, HTTP,
	  "cdn.example", 0, "198.51.100.7", 1, 0, INTERCEPT, IA },
	{ "DNS-answered address, no bytes at all, verification", V, TCP, "", 0, "198.51.100.7",
	  1, 0, INTERCEPT, IA },
	{ "DNS-answered address, fronting SNI, agent phase", A, TLS, "cdn.example", 0,
	  "198.51.100.7", 1, 0, INTERCEPT, IA },
	{ "address not answered, fronting SNI, verification: tunnelled", V, TLS, "cdn.example",
	  0, "198.51.100.9", 0, 0, TUNNEL, EGD_REASON_VERIFICATION },
	{ "in EGRESSD_INTERCEPT_CIDRS, no SNI, verification", V, TLS, "", 0, "203.0.113.77", 0,
	  0, INTERCEPT, IA },
	{ "in the v6 CIDR, fronting SNI, verification", V, TLS, "cdn.example", 0,
	  "2001:db8:aa::5", 0, 0, INTERCEPT, IA },
	{ "v4-mapped spelling of a CIDR address", V, TLS, "", 0, "::ffff:203.0.113.9", 0, 0,
	  INTERCEPT, IA },
	{ "just outside the v6 CIDR", V, TLS, "", 0, "2001:db8:ab::5", 0, 0, TUNNEL,
	  EGD_REASON_VERIFICATION },
	{ "intercept host by SNI keeps its reason", V, TLS, "openrouter.ai", 0, "198.51.100.7",
	  1, 0, INTERCEPT, EGD_REASON_INTERCEPT_HOST },
	{ "ECH hello, verification: refused", V, TLS, "cdn.example", 1, "198.51.100.9", 0, 0,
	  DENY, EGD_REASON_ECH },
	{ "ECH hello, agent phase: refused", A, TLS, "pypi.org", 1, "198.51.100.9", 0, 0, DENY,
	  EGD_REASON_ECH },
	{ "ECH hello to an intercept address: refused, not tunnelled", V, TLS, "cdn.example",
	  1, "198.51.100.7", 1, 0, DENY, EGD_REASON_ECH },
	{ "ECH hello naming the intercept host outside: refused", V, TLS, "openrouter.ai", 1,
	  "198.51.100.7", 1, 0, DENY, EGD_REASON_ECH },
	{ "EGRESSD_ECH=allow: judged by outer SNI, verification", V, TLS, "cdn.example", 1,
	  "198.51.100.9", 0, 1, TUNNEL, EGD_REASON_VERIFICATION },
	{ "EGRESSD_ECH=allow: an intercept address still intercepted", V, TLS, "cdn.example",
	  1, "198.51.100.7", 1, 1, INTERCEPT, IA },
};

static void test_intercept_addr_and_ech_table(void **state)
{
	struct egd_policy p = policy;

	(void)state;
	assert_int_equal(egd_cidrlist_parse(&p.intercept_cidrs, "203.0.113.0/24, 2001:db8:aa::/48",
					    NULL, 0),
			 0);
	for (size_t i = 0; i < sizeof(arows) / sizeof(arows[0]); i++) {
		const struct arow *r = &arows[i];
		struct egd_intent in = { .phase = r->phase, .has_orig = 1 };
		struct egd_decision d;

		if (inet_pton(AF_INET, r->orig, in.orig.addr) == 1) {
			in.orig.family = EGD_AF_INET;
		} else {
			assert_int_equal(inet_pton(AF_INET6, r->orig, in.orig.addr), 1);
			in.orig.family = EGD_AF_INET6;
		}
		in.orig.port = htons(443);
		in.orig_intercept = r->orig_intercept;
		in.sniff.proto = r->proto;
		in.sniff.tls_ech = r->ech;
		snprintf(in.sniff.host, sizeof(in.sniff.host), "%s", r->host);
		p.ech_allow = r->ech_allow;
		d = egd_decide(&p, &in);
		print_message("%-70s -> %s/%s\n", r->name, egd_verdict_name(d.verdict),
			      egd_reason_name(d.reason));
		assert_int_equal(d.verdict, r->verdict);
		assert_int_equal(d.reason, r->reason);
		assert_int_equal(d.dial_by_name, 0);
	}
}

static void test_cidrlist_parse(void **state)
{
	static const char *const bad[] = { "203.0.113.0/33", "2001:db8::/129", "example.com",
					   "10.0.0.0/", "10.0.0.0/x", "10.0.0.0/-1" };
	struct egd_cidrlist l;
	struct egd_addr a = { .family = EGD_AF_INET };
	char which[300];

	(void)state;
	assert_int_equal(egd_cidrlist_parse(&l, "", NULL, 0), 0);
	assert_int_equal(l.n, 0);
	assert_int_equal(egd_cidrlist_parse(&l, "10.1.2.3/8 192.0.2.7,::/0", NULL, 0), 0);
	assert_int_equal(l.n, 3);
	assert_int_equal(l.c[0].net.addr[0], htonl(0x0a000000)); /* host bits cleared */
	a.addr[0] = htonl(0x0a090909);
	assert_true(egd_cidrlist_match(&l, &a));
	a.addr[0] = htonl(0xc0000207);
	assert_true(egd_cidrlist_match(&l, &a));
	a.addr[0] = htonl(0xc0000208);
	assert_false(egd_cidrlist_match(&l, &a)); /* a lone address is a /32 */
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		assert_int_equal(egd_cidrlist_parse(&l, bad[i], which, sizeof(which)), -EINVAL);
		assert_string_equal(which, bad[i]);
		assert_int_equal(l.n, 0);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_decide_table),
		cmocka_unit_test(test_hostlist_normalizes_case_and_trailing_dot),
		cmocka_unit_test(test_hostlist_rejects_bad_patterns),
		cmocka_unit_test(test_hostlist_empty_spec_is_empty_list),
		cmocka_unit_test(test_intercept_addr_and_ech_table),
		cmocka_unit_test(test_cidrlist_parse),
	};

	return cmocka_run_group_tests(tests, setup, NULL);
}
