/* SPDX-License-Identifier: MIT */
/*
 * Settings: every bad value is refused with the variable named, flags win
 * over the environment, and the defaults are the documented ones.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/config.h"

static void clear_env(void)
{
	static const char *const vars[] = { "EGRESSD_LISTEN",	      "EGRESSD_ADMIN_LISTEN",
					    "EGRESSD_SENTINEL",	      "EGRESSD_PHASE",
					    "UPSTREAM_BASE_URL",      "EGRESSD_INTERCEPT_HOSTS",
					    "EGRESSD_AGENT_ALLOW",    "EGRESSD_FIRST_BYTE_MS",
					    "EGRESSD_MAX_CONNS",      "EGRESSD_MODE" };

	for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++)
		unsetenv(vars[i]);
}

static void test_defaults_are_the_documented_ones(void **state)
{
	struct egd_config_run c;

	(void)state;
	clear_env();
	assert_int_equal(egd_config_load(&c, 0, NULL), 0);
	assert_int_equal(c.listen_port, 15443);
	assert_int_equal(ntohs(c.admin.port), 15000);
	assert_string_equal(c.sentinel, "/tmp/egress-unlocked");
	assert_int_equal(c.phase_source, EGD_PHASE_FROM_SENTINEL);
	assert_int_equal(c.first_byte_ms, 250);
	assert_int_equal(c.sniff_timeout_ms, 5000);
	assert_int_equal(c.policy.intercept.n, 1);
	assert_string_equal(c.policy.intercept.pat[0], "openrouter.ai");
	assert_int_equal(c.policy.agent_allow.n, 0);
}

static void test_intercept_host_follows_upstream_base_url(void **state)
{
	struct egd_config_run c;

	(void)state;
	clear_env();
	setenv("UPSTREAM_BASE_URL", "https://llm.example.org:8443", 1);
	assert_int_equal(egd_config_load(&c, 0, NULL), 0);
	assert_string_equal(c.policy.intercept.pat[0], "llm.example.org");
	setenv("EGRESSD_INTERCEPT_HOSTS", "a.example, b.example", 1);
	assert_int_equal(egd_config_load(&c, 0, NULL), 0);
	assert_int_equal(c.policy.intercept.n, 2);
	clear_env();
}

static void test_flag_wins_over_environment(void **state)
{
	char *argv[] = { "--first-byte-ms", "100", "--phase=verification" };
	struct egd_config_run c;

	(void)state;
	clear_env();
	setenv("EGRESSD_FIRST_BYTE_MS", "900", 1);
	setenv("EGRESSD_PHASE", "agent", 1);
	assert_int_equal(egd_config_load(&c, 3, argv), 0);
	assert_int_equal(c.first_byte_ms, 100);
	assert_int_equal(c.phase_source, EGD_PHASE_FIXED);
	assert_int_equal(c.fixed_phase, EGD_PHASE_VERIFICATION);
	clear_env();
}

static void test_bad_values_are_refused(void **state)
{
	static const char *const bad[][2] = {
		{ "EGRESSD_FIRST_BYTE_MS", "soon" }, { "EGRESSD_FIRST_BYTE_MS", "-1" },
		{ "EGRESSD_FIRST_BYTE_MS", "0" },    { "EGRESSD_MAX_CONNS", "99999999999" },
		{ "EGRESSD_LISTEN", "10.0.0.1:15443" }, { "EGRESSD_LISTEN", "127.0.0.1:0" },
		{ "EGRESSD_LISTEN", "127.0.0.1:70000" }, { "EGRESSD_ADMIN_LISTEN", "nowhere" },
		{ "EGRESSD_PHASE", "open" },	    { "EGRESSD_AGENT_ALLOW", "bad host!" },
		{ "EGRESSD_MODE", "magic" },	    { "UPSTREAM_BASE_URL", "https://" },
		/* The proxy ignores a path; both readers of the URL refuse it. */
		{ "UPSTREAM_BASE_URL", "https://llm.example.org/api/v1" },
	};
	struct egd_config_run c;

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		clear_env();
		setenv(bad[i][0], bad[i][1], 1);
		print_message("%s=%s\n", bad[i][0], bad[i][1]);
		assert_int_equal(egd_config_load(&c, 0, NULL), -EINVAL);
	}
	clear_env();
}

static void test_unknown_flag_is_refused(void **state)
{
	char *argv[] = { "--no-such-flag" };
	char *argv2[] = { "stray" };
	char *argv3[] = { "--listen" };
	struct egd_config_run c;

	(void)state;
	clear_env();
	assert_int_equal(egd_config_load(&c, 1, argv), -EINVAL);
	assert_int_equal(egd_config_load(&c, 1, argv2), -EINVAL);
	assert_int_equal(egd_config_load(&c, 1, argv3), -EINVAL);
}

static void test_hostport_forms(void **state)
{
	struct egd_addr a;

	(void)state;
	assert_int_equal(egd_parse_hostport("15443", &a), 0);
	assert_int_equal(a.family, EGD_AF_INET);
	assert_int_equal(ntohl(a.addr[0]), 0x7f000001);
	assert_int_equal(egd_parse_hostport("[::1]:8443", &a), 0);
	assert_int_equal(a.family, EGD_AF_INET6);
	assert_int_equal(ntohs(a.port), 8443);
	assert_int_equal(egd_parse_hostport("[::1]8443", &a), -EINVAL);
	assert_int_equal(egd_parse_hostport("example.com:443", &a), -EINVAL);
}

static void test_resolv_conf_nameservers(void **state)
{
	char path[] = "/tmp/egd-resolv-XXXXXX";
	struct egd_addr r[4];
	int fd = mkstemp(path);
	FILE *f;

	(void)state;
	assert_true(fd >= 0);
	f = fdopen(fd, "w");
	fputs("# comment\nsearch example\nnameserver 192.0.2.53\nnameserver fe80::1%eth0\n"
	      "nameserver bogus\n",
	      f);
	fclose(f);
	assert_int_equal(egd_resolvers_from_file(path, r, 4), 2);
	assert_int_equal(r[0].family, EGD_AF_INET);
	assert_int_equal(r[1].family, EGD_AF_INET6);
	unlink(path);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_defaults_are_the_documented_ones),
		cmocka_unit_test(test_intercept_host_follows_upstream_base_url),
		cmocka_unit_test(test_flag_wins_over_environment),
		cmocka_unit_test(test_bad_values_are_refused),
		cmocka_unit_test(test_unknown_flag_is_refused),
		cmocka_unit_test(test_hostport_forms),
		cmocka_unit_test(test_resolv_conf_nameservers),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
