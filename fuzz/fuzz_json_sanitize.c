/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for the policy pipeline's JSON handling: the input is a
 * request body for both policed endpoints, then a workspace answer and an
 * upstream response. Whatever is forwarded must be a JSON object that holds
 * only allowlisted fields plus the forced provider (and usage for chat), and
 * no reservation may leak.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "proxy/budget.h"
#include "proxy/policy.h"
#include "proxy/proxy_config.h"
#include "proxy/usage.h"

static const char *const fuzz_env[][2] = {
	{ "OPENROUTER_EXPECTED_API_KEY_SHA256",
	  "df17e87ada04b7d35d8168afaf70e93d1453380ab74ef6af6a6d1512fb34b4ca" },
	{ "OPENROUTER_MANAGEMENT_KEY", "mgmt" },
	{ "OPENROUTER_WORKSPACE_ID", "ws" },
	{ "RESTRICTED_MODELS", "openai/gpt-4o,anthropic/claude-3-opus" },
	{ "PROVIDER_ORDER", "anthropic" },
	{ NULL, NULL },
};

static const char *env_get(void *ctx, const char *name)
{
	(void)ctx;
	for (int i = 0; fuzz_env[i][0]; i++)
		if (!strcmp(fuzz_env[i][0], name))
			return fuzz_env[i][1];
	return NULL;
}

static void check_forwarded(const struct egd_policy_result *r)
{
	json_t *o = json_loadb(r->upstream_body, r->upstream_body_len, JSON_REJECT_DUPLICATES,
			       NULL);
	json_t *provider = json_object_get(o, "provider");

	if (!json_is_object(o) || !json_is_true(json_object_get(provider, "zdr")))
		abort();
	if (json_object_get(o, "plugins") || json_object_get(o, "transforms"))
		abort();
	if (r->endpoint == EGD_EP_CHAT &&
	    !json_is_true(json_object_get(json_object_get(o, "usage"), "include")))
		abort();
	json_decref(o);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct egd_proxy_config cfg;
	static int loaded;
	static const char *const paths[] = { EGD_PATH_CHAT, EGD_PATH_EMBEDDINGS };
	struct egd_budget *b;
	struct egd_usage u;
	char err[256];

	if (!loaded) {
		if (egd_proxy_config_load(&cfg, env_get, NULL, err, sizeof(err)))
			abort();
		loaded = 1;
	}
	b = egd_budget_new(cfg.max_cost_usd, cfg.budget_reserve_usd, "fuzz", NULL);
	if (!b)
		return 0;
	for (size_t i = 0; i < 2; i++) {
		struct egd_policy_request req = {
			.method = "POST",
			.target = paths[i],
			.authorization = "Bearer sk-or-test-key",
			.host = "openrouter.ai",
			.body = data,
			.body_len = size,
		};
		struct egd_policy_result r;
		struct egd_ledger snap;

		if (egd_policy_eval(&cfg, &req, EGD_WS_SAFE, b, &r))
			continue;
		if (r.action == EGD_POLICY_FORWARD) {
			check_forwarded(&r);
			egd_budget_release(b, r.reservation_usd);
		} else if (r.reserved || !r.body) {
			abort();
		}
		egd_policy_result_fini(&r);
		egd_budget_snapshot(b, &snap);
		if (snap.in_flight)
			abort();
	}
	egd_budget_destroy(b);

	/* Re-serialization must be exact: what is forwarded is what was
	 * parsed, number for number. */
	{
		json_t *o = json_loadb((const char *)data, size, 0, NULL), *back;
		char *s = o ? egd_json_dumps(o) : NULL;

		if (o && !s)
			abort();
		back = s ? json_loads(s, 0, NULL) : NULL;
		if (o && !json_equal(o, back))
			abort();
		json_decref(back);
		json_decref(o);
		free(s);
	}

	egd_workspace_judge(200, (const char *)data, size);
	egd_usage_from_body((const char *)data, size, &u);
	if (u.has_cost && !(u.cost_usd >= 0))
		abort();
	return 0;
}
