/* SPDX-License-Identifier: MIT */
/*
 * The pure parts of the Kubernetes API client: a Pod object to the fields
 * enrolment reads, and the settings from the environment (in-cluster
 * default, IPv6 service address, bad values named). The client itself runs
 * against a fake API server in tests/e2e/k8s_api.bats.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "k8s/api.h"

static json_t *parse(const char *s)
{
	json_error_t e;
	json_t *o = json_loads(s, 0, &e);

	if (!o)
		fail_msg("bad test JSON: %s", e.text);
	return o;
}

static void pod_full(void **state)
{
	json_t *o = parse("{\"metadata\":{\"uid\":\"u1\",\"name\":\"agent\",\"namespace\":\"sb\","
			  "\"resourceVersion\":\"42\",\"labels\":{\"egressd.io/phase\":\"agent\"},"
			  "\"annotations\":{\"egressd.io/max-cost-usd\":\"3\"},"
			  "\"deletionTimestamp\":\"2026-12-04T00:00:00Z\"},"
			  "\"spec\":{\"nodeName\":\"n1\",\"hostNetwork\":true},"
			  "\"status\":{\"phase\":\"Running\",\"qosClass\":\"Guaranteed\","
			  "\"podIP\":\"10.0.0.9\",\"podIPs\":[{\"ip\":\"10.0.0.9\"},"
			  "{\"ip\":\"fd00::9\"},{\"ip\":\"10.9.9.9\"}]}}");
	struct egd_k8s_pod p;

	(void)state;
	assert_int_equal(egd_k8s_pod_from_json(o, &p), 0);
	assert_string_equal(p.uid, "u1");
	assert_string_equal(p.name, "agent");
	assert_string_equal(p.ns, "sb");
	assert_string_equal(p.resource_version, "42");
	assert_string_equal(p.node_name, "n1");
	assert_string_equal(p.phase, "Running");
	assert_string_equal(p.qos_class, "Guaranteed");
	assert_true(p.host_network);
	assert_true(p.terminating);
	/* podIPs wins, at most one per family's worth */
	assert_int_equal(p.n_pod_ips, EGD_K8S_POD_IPS_MAX);
	assert_string_equal(p.pod_ips[0], "10.0.0.9");
	assert_string_equal(p.pod_ips[1], "fd00::9");
	assert_string_equal(egd_k8s_pod_label(&p, "egressd.io/phase"), "agent");
	assert_null(egd_k8s_pod_label(&p, "ridges.ai/phase"));
	assert_string_equal(egd_k8s_pod_annotation(&p, "egressd.io/max-cost-usd"), "3");
	json_decref(o);
}

static void pod_sparse(void **state)
{
	json_t *o = parse("{\"metadata\":{\"uid\":\"u2\",\"deletionTimestamp\":null,"
			  "\"labels\":\"not an object\"},\"status\":{\"podIP\":\"10.1.1.1\"}}");
	struct egd_k8s_pod p;

	(void)state;
	assert_int_equal(egd_k8s_pod_from_json(o, &p), 0);
	assert_string_equal(p.name, "");
	assert_string_equal(p.phase, "");
	assert_false(p.host_network);
	assert_false(p.terminating);
	assert_null(p.labels);
	assert_null(p.annotations);
	assert_null(egd_k8s_pod_label(&p, "x"));
	/* podIP when there is no podIPs */
	assert_int_equal(p.n_pod_ips, 1);
	assert_string_equal(p.pod_ips[0], "10.1.1.1");
	json_decref(o);
}

static void pod_without_uid(void **state)
{
	json_t *o = parse("{\"metadata\":{\"name\":\"x\"}}");
	struct egd_k8s_pod p;

	(void)state;
	assert_int_equal(egd_k8s_pod_from_json(o, &p), -EINVAL);
	json_decref(o);
	o = parse("[1]");
	assert_int_equal(egd_k8s_pod_from_json(o, &p), -EINVAL);
	json_decref(o);
	assert_int_equal(egd_k8s_pod_from_json(NULL, &p), -EINVAL);
}

static void clear_env(void)
{
	static const char *const vars[] = { "EGRESSD_K8S_API",	      "EGRESSD_K8S_TOKEN_FILE",
					    "EGRESSD_K8S_CA_FILE",    "NODE_NAME",
					    "EGRESSD_POD_SELECTOR",   "KUBERNETES_SERVICE_HOST",
					    "KUBERNETES_SERVICE_PORT" };

	for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++)
		unsetenv(vars[i]);
}

static void config_in_cluster(void **state)
{
	struct egd_k8s_config cfg;
	char err[256];

	(void)state;
	clear_env();
	setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1", 1);
	setenv("KUBERNETES_SERVICE_PORT", "443", 1);
	setenv("NODE_NAME", "node-a", 1);
	assert_int_equal(egd_k8s_config_from_env(&cfg, err, sizeof(err)), 0);
	assert_string_equal(cfg.api, "https://10.96.0.1:443");
	assert_string_equal(cfg.token_file, EGD_K8S_DEFAULT_TOKEN_FILE);
	assert_string_equal(cfg.ca_file, EGD_K8S_DEFAULT_CA_FILE);
	assert_string_equal(cfg.node_name, "node-a");
	assert_string_equal(cfg.selector, "egressd.io/enforce=true");
	assert_int_equal(cfg.watch_timeout_s, EGD_K8S_WATCH_TIMEOUT_S);
	/* IPv6 service address: brackets; no port: 443 */
	setenv("KUBERNETES_SERVICE_HOST", "fd00:10:96::1", 1);
	unsetenv("KUBERNETES_SERVICE_PORT");
	assert_int_equal(egd_k8s_config_from_env(&cfg, err, sizeof(err)), 0);
	assert_string_equal(cfg.api, "https://[fd00:10:96::1]:443");
}

static void config_explicit(void **state)
{
	struct egd_k8s_config cfg;
	char err[256];

	(void)state;
	clear_env();
	setenv("EGRESSD_K8S_API", "http://127.0.0.1:8001//", 1);
	setenv("EGRESSD_K8S_TOKEN_FILE", "", 1);
	setenv("EGRESSD_POD_SELECTOR", "", 1);
	setenv("NODE_NAME", "n", 1);
	assert_int_equal(egd_k8s_config_from_env(&cfg, err, sizeof(err)), 0);
	assert_string_equal(cfg.api, "http://127.0.0.1:8001");
	assert_string_equal(cfg.token_file, ""); /* no token sent */
	assert_string_equal(cfg.selector, "");	 /* every pod of the node */
}

static void config_refused(void **state)
{
	struct egd_k8s_config cfg;
	char err[256];

	(void)state;
	clear_env();
	setenv("NODE_NAME", "n", 1);
	assert_int_equal(egd_k8s_config_from_env(&cfg, err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "KUBERNETES_SERVICE_HOST"));
	setenv("EGRESSD_K8S_API", "127.0.0.1:6443", 1);
	assert_int_equal(egd_k8s_config_from_env(&cfg, err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "EGRESSD_K8S_API"));
	setenv("EGRESSD_K8S_API", "https://127.0.0.1:6443", 1);
	unsetenv("NODE_NAME");
	assert_int_equal(egd_k8s_config_from_env(&cfg, err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "NODE_NAME"));
	setenv("NODE_NAME", "", 1);
	assert_int_equal(egd_k8s_config_from_env(&cfg, err, sizeof(err)), -EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(pod_full),	     cmocka_unit_test(pod_sparse),
		cmocka_unit_test(pod_without_uid),   cmocka_unit_test(config_in_cluster),
		cmocka_unit_test(config_explicit),   cmocka_unit_test(config_refused),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
