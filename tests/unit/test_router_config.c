/* SPDX-License-Identifier: MIT */
/*
 * The router's settings (router/router_config.h): defaults, a flag over
 * its variable, the refusal to start without a token, the token file, and
 * bad values refused rather than guessed at.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <cmocka.h>

#include "router/router_config.h"

static const char *const vars[] = {
	"ROUTER_LISTEN",	"ROUTER_ADMIN_LISTEN",	  "CLUSTER_DOMAIN",
	"PROXY_TIMEOUT_SECONDS", "ROUTER_AUTH_TOKEN",	  "ROUTER_AUTH_TOKEN_FILE",
	"ALLOW_UNAUTHENTICATED_ROUTER", "ROUTER_ALLOWED_CIDRS", "ROUTER_TRUSTED_PROXIES",
	"ROUTER_WS_IDLE_S",	"ROUTER_MAX_CONNS",	  "ROUTER_SHUTDOWN_S",
};

static int clean_env(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++)
		unsetenv(vars[i]);
	return 0;
}

static int load(struct egd_router_config *cfg, int argc, const char **argv)
{
	return egd_router_config_load(cfg, argc, (char **)argv);
}

static void test_refuses_without_token(void **state)
{
	struct egd_router_config cfg;

	(void)state;
	assert_int_equal(load(&cfg, 0, NULL), -EINVAL);
	setenv("ALLOW_UNAUTHENTICATED_ROUTER", "yes", 1);
	assert_int_equal(load(&cfg, 0, NULL), 0);
	assert_true(cfg.allow_unauthenticated);
	setenv("ALLOW_UNAUTHENTICATED_ROUTER", "false", 1);
	assert_int_equal(load(&cfg, 0, NULL), -EINVAL);
	setenv("ALLOW_UNAUTHENTICATED_ROUTER", "perhaps", 1);
	assert_int_equal(load(&cfg, 0, NULL), -EINVAL);
}

static void test_defaults(void **state)
{
	struct egd_router_config cfg;

	(void)state;
	setenv("ROUTER_AUTH_TOKEN", "  tok \n", 1);
	assert_int_equal(load(&cfg, 0, NULL), 0);
	assert_string_equal(cfg.token, "tok");
	assert_int_equal(cfg.listen.family, EGD_AF_INET);
	assert_int_equal(ntohs(cfg.listen.port), 8080);
	assert_int_equal(cfg.listen.addr[0], 0);
	assert_int_equal(ntohs(cfg.admin.port), 9090);
	assert_string_equal(cfg.cluster_domain, "cluster.local");
	assert_int_equal(cfg.timeout_s, 180);
	assert_int_equal(cfg.ws_idle_s, 3600);
	assert_int_equal(cfg.ws_max_s, 86400);
	assert_int_equal(cfg.nallowed, 0);
	assert_int_equal(cfg.shutdown_s, 25);
}

static void test_flag_wins(void **state)
{
	struct egd_router_config cfg;
	const char *argv[] = { "--proxy-timeout-seconds=30", "--cluster-domain", "corp.internal",
			       "--router-admin-listen=off", "--router-allowed-cidrs",
			       "10.0.0.0/8,fd00::/8" };

	(void)state;
	setenv("ROUTER_AUTH_TOKEN", "tok", 1);
	setenv("PROXY_TIMEOUT_SECONDS", "60", 1);
	assert_int_equal(load(&cfg, 6, argv), 0);
	assert_int_equal(cfg.timeout_s, 30);
	assert_string_equal(cfg.cluster_domain, "corp.internal");
	assert_int_equal(cfg.admin.family, 0);
	assert_int_equal(cfg.nallowed, 2);
}

static void test_bad_values(void **state)
{
	struct egd_router_config cfg;
	static const char *const bad[] = {
		"--proxy-timeout-seconds=0",	"--proxy-timeout-seconds=abc",
		"--proxy-timeout-seconds=+5",	"--cluster-domain=Cluster.Local",
		"--cluster-domain=.local",	"--cluster-domain=a..b",
		"--router-listen=8080x",	"--router-listen=example.com:80",
		"--router-allowed-cidrs=10.0.0.0/40", "--router-trusted-proxies=nope",
		"--router-max-conns=0",		"--no-such-flag=1",
		"positional",
	};

	(void)state;
	setenv("ROUTER_AUTH_TOKEN", "tok", 1);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		const char *argv[] = { bad[i] };

		if (load(&cfg, 1, argv) != -EINVAL)
			fail_msg("%s accepted", bad[i]);
	}
}

static void test_token_file(void **state)
{
	char path[] = "/tmp/egd-router-token-XXXXXX";
	struct egd_router_config cfg;
	int fd = mkstemp(path);

	(void)state;
	assert_true(fd >= 0);
	assert_int_equal(write(fd, "\n secret-token \n", 16), 16);
	close(fd);
	setenv("ROUTER_AUTH_TOKEN_FILE", path, 1);
	assert_int_equal(load(&cfg, 0, NULL), 0);
	assert_string_equal(cfg.token, "secret-token");
	/* Both ways at once is ambiguous: refused. */
	setenv("ROUTER_AUTH_TOKEN", "other", 1);
	assert_int_equal(load(&cfg, 0, NULL), -EINVAL);
	unsetenv("ROUTER_AUTH_TOKEN");
	setenv("ROUTER_AUTH_TOKEN_FILE", "/nonexistent/token", 1);
	assert_int_equal(load(&cfg, 0, NULL), -EINVAL);
	unlink(path);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup(test_refuses_without_token, clean_env),
		cmocka_unit_test_setup(test_defaults, clean_env),
		cmocka_unit_test_setup(test_flag_wins, clean_env),
		cmocka_unit_test_setup(test_bad_values, clean_env),
		cmocka_unit_test_setup(test_token_file, clean_env),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
