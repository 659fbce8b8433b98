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

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_decide_table),
		cmocka_unit_test(test_hostlist_normalizes_case_and_trailing_dot),
		cmocka_unit_test(test_hostlist_rejects_bad_patterns),
		cmocka_unit_test(test_hostlist_empty_spec_is_empty_list),
	};

	return cmocka_run_group_tests(tests, setup, NULL);
}
