/* SPDX-License-Identifier: MIT */
/*
 * Settings: every bad value is refused with the variable named, flags win
 * over the environment, and the defaults are the documented ones; the same
 * for the policy proxy's settings, read through egd_proxy_getenv().
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/config.h"
#include "proxy/proxy_config.h"

static void clear_env(void)
{
	static const char *const vars[] = { "EGRESSD_LISTEN",	      "EGRESSD_ADMIN_LISTEN",
					    "EGRESSD_SENTINEL",	      "EGRESSD_PHASE",
					    "UPSTREAM_BASE_URL",      "EGRESSD_INTERCEPT_HOSTS",
					    "EGRESSD_AGENT_ALLOW",    "EGRESSD_FIRST_BYTE_MS",
					    "EGRESSD_MAX_CONNS",      "EGRESSD_MODE",
					    "EGRESSD_RESOLVERS",      "MAX_REQUEST_BYTES",
					    "MAX_COST_USD",	      "WORKSPACE_CHECK_TTL_S",
					    "OPENROUTER_MANAGEMENT_KEY",
					    "OPENROUTER_MANAGEMENT_KEY_FILE",
					    "OPENROUTER_UPSTREAM_API_KEY",
					    "EGRESSD_PROXY_HTTP_LISTEN", "PROVIDER_ALLOW_FALLBACKS",
					    "BUDGET_RESERVE_USD",     "UPSTREAM_TIMEOUT_S",
					    "EVALUATION_RUN_ID",      "PROXY_DATA_DIR",
					    "EGRESSD_DENY_CIDRS",     "EGRESSD_LOOPBACK_ALLOW" };

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
		/* Host bits below the prefix: a typo, not a wider range. */
		{ "EGRESSD_DENY_CIDRS", "10.0.0.1/8" }, { "EGRESSD_DENY_CIDRS", "metadata" },
		{ "EGRESSD_LOOPBACK_ALLOW", "0" },	 { "EGRESSD_LOOPBACK_ALLOW", "http" },
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

/* A number out of range is refused with the range it must be in. */
static void test_out_of_range_names_its_range(void **state)
{
	struct egd_config_run c;
	char path[] = "/tmp/egd-test-config-err.XXXXXX", text[1024] = "";
	int fd = mkstemp(path), saved = dup(2);
	ssize_t n;

	(void)state;
	assert_true(fd >= 0 && saved >= 0);
	clear_env();
	setenv("EGRESSD_MAX_CONNS", "0", 1);
	fflush(stderr);
	assert_int_equal(dup2(fd, 2), 2);
	assert_int_equal(egd_config_load(&c, 0, NULL), -EINVAL);
	fflush(stderr);
	assert_int_equal(dup2(saved, 2), 2);
	close(saved);
	n = pread(fd, text, sizeof(text) - 1, 0);
	close(fd);
	unlink(path);
	assert_true(n > 0);
	print_message("%s", text);
	assert_non_null(strstr(text, "EGRESSD_MAX_CONNS"));
	assert_non_null(strstr(text, "a whole number from 1 to 1000000"));
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
	/* The port is digits only, 1-65535. */
	assert_int_equal(egd_parse_hostport("127.0.0.1: 80", &a), -EINVAL);
	assert_int_equal(egd_parse_hostport("127.0.0.1:+80", &a), -EINVAL);
	assert_int_equal(egd_parse_hostport("127.0.0.1:-0", &a), -EINVAL);
	assert_int_equal(egd_parse_hostport("127.0.0.1:0", &a), -EINVAL);
	assert_int_equal(egd_parse_hostport("127.0.0.1:", &a), -EINVAL);
	/* An IPv6 address needs brackets: fe80::1:80 is an address, not a port. */
	assert_int_equal(egd_parse_hostport("fe80::1:80", &a), -EINVAL);
	assert_int_equal(egd_parse_hostport("[127.0.0.1]:80", &a), -EINVAL);
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

/* Docker's "# ExtServers:" comment: plain entries are the ones Docker asks
 * from the container's namespace; host() ones only counted; bad words
 * skipped; no such line is -ENOENT, not 0. */
static void test_docker_ext_servers(void **state)
{
	char path[] = "/tmp/egd-resolv-XXXXXX";
	struct egd_addr r[4];
	int fd = mkstemp(path), n_host = -1;
	FILE *f;

	(void)state;
	assert_true(fd >= 0);
	f = fdopen(fd, "w");
	fputs("nameserver 127.0.0.11\noptions ndots:0\n\n"
	      "# Based on host file: '/etc/resolv.conf' (internal resolver)\n"
	      "# ExtServers: [host(127.0.0.53) 192.0.2.53 invalid IP 2001:db8::35]\n"
	      "# Overrides: []\n",
	      f);
	fclose(f);
	assert_int_equal(egd_resolvers_docker_ext(path, r, 4, &n_host), 2);
	assert_int_equal(n_host, 1);
	assert_int_equal(r[0].family, EGD_AF_INET);
	assert_memory_equal(r[0].addr, "\xc0\x00\x02\x35", 4);
	assert_int_equal(r[1].family, EGD_AF_INET6);
	assert_false(egd_addr_is_loopback(&r[0]));
	assert_false(egd_addr_is_loopback(&r[1]));
	/* At most @max. */
	assert_int_equal(egd_resolvers_docker_ext(path, r, 1, NULL), 1);

	/* Docker 20.10: the loopback resolver and no comment. */
	f = fopen(path, "w");
	fputs("nameserver 127.0.0.11\noptions ndots:0\n", f);
	fclose(f);
	assert_int_equal(egd_resolvers_docker_ext(path, r, 4, NULL), -ENOENT);
	assert_int_equal(egd_resolvers_from_file(path, r, 4), 1);
	assert_true(egd_addr_is_loopback(&r[0]));

	/* Only host() servers: none to ask from here. */
	f = fopen(path, "w");
	fputs("nameserver 127.0.0.11\n# ExtServers: [host(192.168.65.7)]\n", f);
	fclose(f);
	n_host = 0;
	assert_int_equal(egd_resolvers_docker_ext(path, r, 4, &n_host), 0);
	assert_int_equal(n_host, 1);
	unlink(path);
	assert_int_equal(egd_resolvers_docker_ext(path, r, 4, NULL), -ENOENT);
}

static void test_addr_is_loopback(void **state)
{
	struct egd_addr a[6];

	(void)state;
	assert_int_equal(egd_parse_ip_list("127.0.0.11,127.255.0.1,::1,::ffff:127.0.0.1,"
					   "128.0.0.1,::2",
					   a, 6),
			 6);
	assert_true(egd_addr_is_loopback(&a[0]));
	assert_true(egd_addr_is_loopback(&a[1]));
	assert_true(egd_addr_is_loopback(&a[2]));
	assert_true(egd_addr_is_loopback(&a[3]));
	assert_false(egd_addr_is_loopback(&a[4]));
	assert_false(egd_addr_is_loopback(&a[5]));
}

/* ---- the policy proxy's settings --------------------------------------- */

static int load_proxy(int argc, char **argv, struct egd_proxy_config *pc, char *err)
{
	struct egd_config_run c;

	assert_int_equal(egd_config_load(&c, argc, argv), 0);
	return egd_proxy_config_load(pc, egd_proxy_getenv, NULL, err, EGD_CONFIG_ERR_MAX_BYTES);
}

/* The defaults `egressd help` shows for the proxy's number and boolean
 * settings are written in the settings table as text and, for real, in the
 * proxy's loader as numbers (the string settings share one macro each,
 * proxy_config.h): giving each shown default explicitly must change
 * nothing. */
static void test_proxy_shown_defaults_are_the_real_ones(void **state)
{
	static const char *const shown[] = {
		"PROVIDER_ALLOW_FALLBACKS", "MAX_COST_USD",	     "BUDGET_RESERVE_USD",
		"MAX_REQUEST_BYTES",	    "WORKSPACE_CHECK_TTL_S", "UPSTREAM_TIMEOUT_S",
	};
	char err[EGD_CONFIG_ERR_MAX_BYTES];
	struct egd_proxy_config unset, given;

	(void)state;
	clear_env();
	assert_int_equal(load_proxy(0, NULL, &unset, err), 0);
	for (size_t i = 0; i < sizeof(shown) / sizeof(shown[0]); i++) {
		const char *d = egd_config_default(shown[i]);

		assert_non_null(d);
		assert_true(*d);
		setenv(shown[i], d, 1);
	}
	assert_int_equal(load_proxy(0, NULL, &given, err), 0);
	assert_int_equal(given.allow_fallbacks, unset.allow_fallbacks);
	assert_true(given.max_cost_usd == unset.max_cost_usd);
	assert_true(given.budget_reserve_usd == unset.budget_reserve_usd);
	assert_int_equal(given.max_request_bytes, unset.max_request_bytes);
	assert_int_equal(given.workspace_ttl_s, unset.workspace_ttl_s);
	assert_int_equal(given.upstream_timeout_s, unset.upstream_timeout_s);
	egd_proxy_config_free(&unset);
	egd_proxy_config_free(&given);
	clear_env();
}

static void test_proxy_flag_wins_over_environment(void **state)
{
	char *argv[] = { "--max-request-bytes=200", "--upstream-base-url",
			 "http://llm.example.org:8081", "--evaluation-run-id", "run-7" };
	char err[EGD_CONFIG_ERR_MAX_BYTES];
	struct egd_proxy_config pc;

	(void)state;
	clear_env();
	setenv("MAX_REQUEST_BYTES", "100", 1);
	setenv("UPSTREAM_BASE_URL", "https://openrouter.ai", 1);
	setenv("MAX_COST_USD", "5", 1);
	assert_int_equal(load_proxy(5, argv, &pc, err), 0);
	assert_int_equal(pc.max_request_bytes, 200);
	/* The daemon's --upstream-base-url is the proxy's upstream too. */
	assert_string_equal(pc.upstream_host, "llm.example.org");
	assert_int_equal(pc.upstream_port, 8081);
	assert_string_equal(pc.evaluation_run_id, "run-7");
	/* No flag: the environment, then the default. */
	assert_true(pc.max_cost_usd == 5.0);
	assert_int_equal(pc.workspace_ttl_s, 60);
	egd_proxy_config_free(&pc);
	/* A later load without the flag forgets it. */
	assert_int_equal(load_proxy(0, NULL, &pc, err), 0);
	assert_int_equal(pc.max_request_bytes, 100);
	egd_proxy_config_free(&pc);
	clear_env();
}

static void test_proxy_bad_flag_names_the_flag(void **state)
{
	static const char *const bad[][3] = {
		{ "--max-request-bytes=lots", "--max-request-bytes", "MAX_REQUEST_BYTES" },
		{ "--max-request-bytes=0", "--max-request-bytes", "MAX_REQUEST_BYTES" },
		{ "--max-cost-usd=-1", "--max-cost-usd", "MAX_COST_USD" },
		{ "--budget-reserve-usd=cheap", "--budget-reserve-usd", "BUDGET_RESERVE_USD" },
		{ "--workspace-check-ttl-s=1m", "--workspace-check-ttl-s", "WORKSPACE_CHECK_TTL_S" },
		{ "--upstream-timeout-s=0", "--upstream-timeout-s", "UPSTREAM_TIMEOUT_S" },
		{ "--openrouter-expected-api-key-sha256=abc",
		  "--openrouter-expected-api-key-sha256", "OPENROUTER_EXPECTED_API_KEY_SHA256" },
		{ "--proxy-http-listen=nowhere", "--proxy-http-listen",
		  "EGRESSD_PROXY_HTTP_LISTEN" },
		{ "--proxy-http-listen=localhost:8080", "--proxy-http-listen",
		  "EGRESSD_PROXY_HTTP_LISTEN" },
		{ "--proxy-http-listen=127.0.0.1:", "--proxy-http-listen",
		  "EGRESSD_PROXY_HTTP_LISTEN" },
		{ "--proxy-http-listen=[::1]:70000", "--proxy-http-listen",
		  "EGRESSD_PROXY_HTTP_LISTEN" },
		/* Forms the listener's own parser once took; the shared one
		 * (as EGRESSD_LISTEN) does not. */
		{ "--proxy-http-listen=::1:8080", "--proxy-http-listen",
		  "EGRESSD_PROXY_HTTP_LISTEN" },
		{ "--proxy-http-listen=127.0.0.1:0", "--proxy-http-listen",
		  "EGRESSD_PROXY_HTTP_LISTEN" },
		{ "--openrouter-management-key-file=/nonexistent/key",
		  "--openrouter-management-key-file", "OPENROUTER_MANAGEMENT_KEY_FILE" },
	};
	char err[EGD_CONFIG_ERR_MAX_BYTES];
	struct egd_proxy_config pc;

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char *argv[] = { (char *)bad[i][0] };

		clear_env();
		print_message("%s\n", bad[i][0]);
		assert_int_equal(load_proxy(1, argv, &pc, err), -EINVAL);
		assert_non_null(strstr(err, bad[i][1]));
		assert_non_null(strstr(err, bad[i][2]));
		assert_non_null(strstr(err, "from the flag"));
	}
	/* The same value from the environment says so. */
	clear_env();
	setenv("MAX_REQUEST_BYTES", "lots", 1);
	assert_int_equal(load_proxy(0, NULL, &pc, err), -EINVAL);
	assert_non_null(strstr(err, "--max-request-bytes, from the environment"));
	clear_env();
}

static void test_proxy_flag_typo_is_refused(void **state)
{
	char *typo[] = { "--max-request-byte=5" };
	char *novalue[] = { "--openrouter-workspace-id" };
	/* Empty would read as unset: the default, over the variable. */
	char *empty[] = { "--max-cost-usd=" };
	char *empty_list[] = { "--resolvers", "" };
	struct egd_config_run c;

	(void)state;
	clear_env();
	setenv("MAX_COST_USD", "5", 1);
	assert_int_equal(egd_config_load(&c, 1, typo), -EINVAL);
	assert_int_equal(egd_config_load(&c, 1, novalue), -EINVAL);
	assert_int_equal(egd_config_load(&c, 1, empty), -EINVAL);
	assert_int_equal(egd_config_load(&c, 2, empty_list), -EINVAL);
	clear_env();
}

/* A secret file that is a pipe, written in two pieces: read to its end,
 * not cut at the first piece. */
static void test_proxy_secret_from_fifo(void **state)
{
	char dir[] = "/tmp/egd-fifo-XXXXXX", path[64], arg[96];
	char *argv[] = { arg };
	char err[EGD_CONFIG_ERR_MAX_BYTES];
	struct egd_proxy_config pc;
	pid_t pid;

	(void)state;
	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/key", dir);
	assert_int_equal(mkfifo(path, 0600), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		int fd = open(path, O_WRONLY);

		if (fd < 0 || write(fd, "sk-mg", 5) != 5)
			_exit(1);
		usleep(100 * 1000);
		_exit(write(fd, "mt-2\n", 5) == 5 ? 0 : 1);
	}
	snprintf(arg, sizeof(arg), "--openrouter-management-key-file=%s", path);
	clear_env();
	assert_int_equal(load_proxy(1, argv, &pc, err), 0);
	assert_string_equal(pc.management_key, "sk-mgmt-2");
	egd_proxy_config_free(&pc);
	waitpid(pid, NULL, 0);
	unlink(path);
	rmdir(dir);
	clear_env();
}

static void test_proxy_secret_from_file(void **state)
{
	char path[] = "/tmp/egd-key-XXXXXX", arg[64];
	char *argv[] = { arg };
	char err[EGD_CONFIG_ERR_MAX_BYTES];
	struct egd_proxy_config pc;
	int fd = mkstemp(path);

	(void)state;
	assert_true(fd >= 0);
	assert_int_equal(write(fd, "sk-mgmt-1\n", 10), 10);
	close(fd);
	snprintf(arg, sizeof(arg), "--openrouter-management-key-file=%s", path);
	clear_env();
	assert_int_equal(load_proxy(1, argv, &pc, err), 0);
	assert_string_equal(pc.management_key, "sk-mgmt-1");
	egd_proxy_config_free(&pc);
	/* The key and its file at once: which one is meant is not guessed. */
	setenv("OPENROUTER_MANAGEMENT_KEY", "sk-other", 1);
	assert_int_equal(load_proxy(1, argv, &pc, err), -EINVAL);
	assert_non_null(strstr(err, "OPENROUTER_MANAGEMENT_KEY_FILE"));
	assert_null(strstr(err, "sk-"));
	/* A secret is never echoed in an error. */
	clear_env();
	setenv("OPENROUTER_UPSTREAM_API_KEY", "sk-up\r\nX-Evil: 1", 1);
	assert_int_equal(load_proxy(0, NULL, &pc, err), -EINVAL);
	assert_non_null(strstr(err, "--openrouter-upstream-api-key"));
	assert_null(strstr(err, "sk-up"));
	unlink(path);
	clear_env();
}

static void test_resolvers_flag(void **state)
{
	char *good[] = { "--resolvers=192.0.2.53,2001:db8::53" };
	char *bad[] = { "--resolvers=dns.example" };
	struct egd_config_run c;

	(void)state;
	clear_env();
	setenv("EGRESSD_RESOLVERS", "192.0.2.1", 1);
	assert_int_equal(egd_config_load(&c, 1, good), 0);
	assert_string_equal(egd_config_get("EGRESSD_RESOLVERS"), "192.0.2.53,2001:db8::53");
	assert_int_equal(egd_config_load(&c, 0, NULL), 0);
	assert_string_equal(egd_config_get("EGRESSD_RESOLVERS"), "192.0.2.1");
	assert_int_equal(egd_config_load(&c, 1, bad), -EINVAL);
	clear_env();
}

static void test_deny_cidrs_and_loopback_allow_flags(void **state)
{
	char *good[] = { "--deny-cidrs=10.96.0.1/32,fd00::/8", "--loopback-allow", "8000,9000" };
	struct egd_config_run c;

	(void)state;
	clear_env();
	setenv("EGRESSD_DENY_CIDRS", "192.0.2.0/24", 1);
	assert_int_equal(egd_config_load(&c, 3, good), 0);
	assert_string_equal(egd_config_get("EGRESSD_DENY_CIDRS"), "10.96.0.1/32,fd00::/8");
	assert_string_equal(egd_config_get("EGRESSD_LOOPBACK_ALLOW"), "8000,9000");
	assert_int_equal(egd_config_load(&c, 0, NULL), 0);
	assert_string_equal(egd_config_get("EGRESSD_DENY_CIDRS"), "192.0.2.0/24");
	clear_env();
}

/* egressd help names every setting of the proxy, flag and variable. */
static void test_usage_lists_proxy_settings(void **state)
{
	static const char *const vars[] = {
		"RESTRICTED_MODELS",	     "PROVIDER_ORDER",
		"PROVIDER_ALLOW_FALLBACKS",  "MAX_COST_USD",
		"BUDGET_RESERVE_USD",	     "MAX_REQUEST_BYTES",
		"WORKSPACE_CHECK_TTL_S",     "UPSTREAM_TIMEOUT_S",
		"EVALUATION_RUN_ID",	     "PROXY_DATA_DIR",
		"UPSTREAM_BASE_URL",	     "OPENROUTER_MANAGEMENT_KEY",
		"OPENROUTER_WORKSPACE_ID",   "OPENROUTER_UPSTREAM_API_KEY",
		"UPSTREAM_CA_FILE",	     "UPSTREAM_RESOLVE",
		"OPENROUTER_EXPECTED_API_KEY_SHA256", "EGRESSD_PROXY_HTTP_LISTEN",
		"EGRESSD_CA_DIR",	     "EGRESSD_CA_KEY_DIR",
	};
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);

	(void)state;
	assert_non_null(f);
	egd_config_usage(f);
	fclose(f);
	for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++) {
		char flag[64];
		const char *fl = egd_config_flag(vars[i]);

		print_message("%s\n", vars[i]);
		assert_non_null(fl);
		snprintf(flag, sizeof(flag), "--%s\n", fl);
		assert_non_null(strstr(text, vars[i]));
		assert_true(strstr(text, flag) || (snprintf(flag, sizeof(flag), "--%s ", fl),
						   strstr(text, flag)));
	}
	free(text);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_defaults_are_the_documented_ones),
		cmocka_unit_test(test_intercept_host_follows_upstream_base_url),
		cmocka_unit_test(test_flag_wins_over_environment),
		cmocka_unit_test(test_bad_values_are_refused),
		cmocka_unit_test(test_deny_cidrs_and_loopback_allow_flags),
		cmocka_unit_test(test_out_of_range_names_its_range),
		cmocka_unit_test(test_proxy_shown_defaults_are_the_real_ones),
		cmocka_unit_test(test_unknown_flag_is_refused),
		cmocka_unit_test(test_hostport_forms),
		cmocka_unit_test(test_resolv_conf_nameservers),
		cmocka_unit_test(test_docker_ext_servers),
		cmocka_unit_test(test_addr_is_loopback),
		cmocka_unit_test(test_proxy_flag_wins_over_environment),
		cmocka_unit_test(test_proxy_bad_flag_names_the_flag),
		cmocka_unit_test(test_proxy_flag_typo_is_refused),
		cmocka_unit_test(test_proxy_secret_from_file),
		cmocka_unit_test(test_proxy_secret_from_fifo),
		cmocka_unit_test(test_resolvers_flag),
		cmocka_unit_test(test_usage_lists_proxy_settings),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
