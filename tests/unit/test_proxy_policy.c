/* SPDX-License-Identifier: MIT */
/*
 * The OpenRouter policy pipeline, check by check, in the reference order:
 * the reference proxy's own cases first, then what egressd adds. Also the
 * configuration loader and the workspace judge.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "proxy/budget.h"
#include "proxy/policy.h"
#include "proxy/proxy_config.h"

#define KEY "sk-or-test-key"
/* sha256("sk-or-test-key") */
#define KEY_SHA "df17e87ada04b7d35d8168afaf70e93d1453380ab74ef6af6a6d1512fb34b4ca"
#define AUTH "Bearer " KEY
#define MAX_ENV 24

struct env {
	const char *kv[MAX_ENV][2];
};

static const char *env_get(void *ctx, const char *name)
{
	struct env *e = ctx;

	for (int i = 0; i < MAX_ENV && e->kv[i][0]; i++)
		if (!strcmp(e->kv[i][0], name))
			return e->kv[i][1];
	return NULL;
}

static void env_set(struct env *e, const char *name, const char *value)
{
	int i;

	for (i = 0; i < MAX_ENV - 1 && e->kv[i][0]; i++)
		if (!strcmp(e->kv[i][0], name))
			break;
	e->kv[i][0] = name;
	e->kv[i][1] = value;
}

static struct env base_env(void)
{
	struct env e = { 0 };

	env_set(&e, "OPENROUTER_EXPECTED_API_KEY_SHA256", KEY_SHA);
	env_set(&e, "OPENROUTER_MANAGEMENT_KEY", "mgmt");
	env_set(&e, "OPENROUTER_WORKSPACE_ID", "ws-1");
	env_set(&e, "RESTRICTED_MODELS", "openai/gpt-4o, anthropic/claude-3-opus");
	env_set(&e, "PROVIDER_ORDER", "anthropic,openai");
	return e;
}

struct fix {
	struct egd_proxy_config cfg;
	struct egd_budget *budget;
	struct egd_policy_result res;
	json_t *sent; /* the upstream body of the last FORWARD, parsed */
};

static void load(struct fix *f, struct env *e)
{
	char err[EGD_CONFIG_ERR_MAX_BYTES];

	egd_proxy_config_free(&f->cfg);
	egd_budget_destroy(f->budget);
	assert_int_equal(egd_proxy_config_load(&f->cfg, env_get, e, err, sizeof(err)), 0);
	f->budget = egd_budget_new(f->cfg.max_cost_usd, f->cfg.budget_reserve_usd, "run", NULL);
	assert_non_null(f->budget);
}

static int setup(void **state)
{
	struct fix *f = calloc(1, sizeof(*f));
	struct env e = base_env();

	load(f, &e);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fix *f = *state;

	egd_policy_result_fini(&f->res);
	json_decref(f->sent);
	egd_proxy_config_free(&f->cfg);
	egd_budget_destroy(f->budget);
	free(f);
	return 0;
}

/* Evaluate one request; settle nothing. */
static struct egd_policy_result *eval_ws(struct fix *f, const char *method, const char *target,
					 const char *auth, const char *body, enum egd_ws_state ws)
{
	struct egd_policy_request req = {
		.method = method,
		.target = target,
		.authorization = auth,
		.host = "openrouter.ai",
		.body = (const uint8_t *)body,
		.body_len = body ? strlen(body) : 0,
	};

	egd_policy_result_fini(&f->res);
	json_decref(f->sent);
	f->sent = NULL;
	assert_int_equal(egd_policy_eval(&f->cfg, &req, ws, f->budget, &f->res), 0);
	if (f->res.action == EGD_POLICY_FORWARD) {
		f->sent = json_loads(f->res.upstream_body, JSON_REJECT_DUPLICATES, NULL);
		assert_non_null(f->sent);
	}
	return &f->res;
}

static struct egd_policy_result *chat(struct fix *f, const char *auth, const char *body)
{
	return eval_ws(f, "POST", EGD_PATH_CHAT, auth, body, EGD_WS_SAFE);
}

static void assert_detail(const struct egd_policy_result *r, int status, const char *detail)
{
	char want[512];

	assert_int_equal(r->action, EGD_POLICY_RESPOND);
	assert_int_equal(r->status, status);
	snprintf(want, sizeof(want), "{\"detail\":\"%s\"}", detail);
	assert_string_equal(r->body, want);
	assert_int_equal(r->reserved, 0);
}

static uint64_t in_flight(struct fix *f)
{
	struct egd_ledger l;

	egd_budget_snapshot(f->budget, &l);
	return l.in_flight;
}

/* ---- the reference proxy's cases ---------------------------------------- */

static void test_unrestricted_model_passes(void **state)
{
	struct fix *f = *state;
	struct egd_policy_result *r =
		chat(f, AUTH, "{\"model\":\"meta/llama-3\",\"messages\":[{\"role\":\"user\"}]}");

	assert_int_equal(r->action, EGD_POLICY_FORWARD);
	assert_string_equal(r->upstream_path, EGD_PATH_CHAT);
	assert_string_equal(json_string_value(json_object_get(f->sent, "model")), "meta/llama-3");
	assert_string_equal(r->model, "meta/llama-3");
	assert_int_equal(r->reserved, 1);
	assert_int_equal(in_flight(f), 1);
}

static void test_restricted_model_rejected(void **state)
{
	struct fix *f = *state;

	assert_detail(chat(f, AUTH, "{\"model\":\"openai/gpt-4o\",\"messages\":[]}"), 403,
		      "Restricted model(s): openai/gpt-4o");
	assert_int_equal(in_flight(f), 0);
}

static void test_restricted_models_list_rejected(void **state)
{
	struct fix *f = *state;

	assert_detail(chat(f, AUTH,
			   "{\"model\":\"meta/llama-3\",\"models\":[\"openai/gpt-4o\","
			   "\"x/y\",\"anthropic/claude-3-opus\",\"openai/gpt-4o\"]}"),
		      403, "Restricted model(s): openai/gpt-4o, anthropic/claude-3-opus");
}

static void test_provider_and_body_fields_enforced(void **state)
{
	struct fix *f = *state;
	json_t *want;

	chat(f, AUTH,
	     "{\"model\":\"meta/llama-3\",\"messages\":[],\"temperature\":0.5,"
	     "\"plugins\":[{\"id\":\"web\"}],\"transforms\":[\"middle-out\"],\"foo\":1,"
	     "\"provider\":{\"data_collection\":\"allow\",\"only\":[\"x\"]},"
	     "\"usage\":{\"include\":false}}");
	assert_int_equal(f->res.action, EGD_POLICY_FORWARD);
	assert_null(json_object_get(f->sent, "plugins"));
	assert_null(json_object_get(f->sent, "transforms"));
	assert_null(json_object_get(f->sent, "foo"));
	assert_non_null(json_object_get(f->sent, "temperature"));
	want = json_loads("{\"allow_fallbacks\":true,\"zdr\":true,\"order\":[\"anthropic\","
			  "\"openai\"]}",
			  0, NULL);
	assert_true(json_equal(json_object_get(f->sent, "provider"), want));
	json_decref(want);
	assert_true(json_is_true(json_object_get(json_object_get(f->sent, "usage"), "include")));
}

static void test_unknown_headers_stripped(void **state)
{
	struct fix *f = *state;
	struct egd_policy_result *r = chat(f, AUTH, "{\"model\":\"meta/llama-3\"}");

	/* The result carries exactly two upstream headers; nothing of the
	 * agent's request but its key can reach them. */
	assert_string_equal(r->upstream_authorization, AUTH);
	assert_string_equal(r->upstream_content_type, "application/json");
}

static void test_zdr_forced(void **state)
{
	struct fix *f = *state;

	chat(f, AUTH, "{\"model\":\"meta/llama-3\",\"provider\":{\"zdr\":false}}");
	assert_true(json_is_true(json_object_get(json_object_get(f->sent, "provider"), "zdr")));
}

static void test_budget_exceeded_429(void **state)
{
	struct fix *f = *state;
	struct env e = base_env();
	const char *body = "{\"model\":\"meta/llama-3\"}";
	double res;

	env_set(&e, "MAX_COST_USD", "1e-10");
	load(f, &e);
	assert_int_equal(chat(f, AUTH, body)->action, EGD_POLICY_FORWARD);
	res = f->res.reservation_usd;
	f->res.reserved = 0;
	/* The response cost 0.001: over the cap, withheld by the caller. */
	assert_int_equal(egd_budget_settle(f->budget, res, "meta/llama-3", 0.001, 10, 5, NULL), 1);
	assert_detail(chat(f, AUTH, body), 429, "Evaluation run cost budget exceeded");
}

static void test_wrong_key_403(void **state)
{
	struct fix *f = *state;

	assert_detail(chat(f, "Bearer sk-or-other", "{\"model\":\"meta/llama-3\"}"), 403,
		      "The runtime OpenRouter API key does not match the uploaded key");
	assert_int_equal(in_flight(f), 0);
}

static void test_unsafe_workspace_403(void **state)
{
	struct fix *f = *state;

	assert_detail(eval_ws(f, "POST", EGD_PATH_CHAT, AUTH, "{\"model\":\"meta/llama-3\"}",
			      EGD_WS_UNSAFE),
		      403, "OpenRouter workspace logging or data-sharing settings are enabled");
	assert_int_equal(in_flight(f), 0);
}

static void test_workspace_lookup_failure_503(void **state)
{
	struct fix *f = *state;

	assert_detail(eval_ws(f, "POST", EGD_PATH_CHAT, AUTH, "{\"model\":\"meta/llama-3\"}",
			      EGD_WS_FAILED),
		      503, EGD_MSG_WS_FAILED);
	assert_int_equal(in_flight(f), 0);
}

/* ---- the rest of the reference order ------------------------------------ */

static void test_body_not_object_422(void **state)
{
	static const char *const bodies[] = { "[]", "\"x\"", "{", "", "null", "{\"a\":1} x" };
	struct fix *f = *state;

	for (size_t i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++)
		assert_detail(chat(f, AUTH, bodies[i]), 422, EGD_MSG_NOT_OBJECT);
}

static void test_body_checked_before_authorization(void **state)
{
	struct fix *f = *state;

	assert_detail(chat(f, NULL, "[1]"), 422, EGD_MSG_NOT_OBJECT);
}

static void test_duplicate_json_key_400(void **state)
{
	struct fix *f = *state;

	assert_detail(chat(f, AUTH, "{\"model\":\"meta/llama-3\",\"model\":\"openai/gpt-4o\"}"),
		      400, EGD_MSG_DUP_KEY);
}

static void test_missing_authorization_401(void **state)
{
	struct fix *f = *state;

	assert_detail(chat(f, NULL, "{\"model\":\"meta/llama-3\"}"), 401,
		      "Missing Authorization header");
	assert_detail(chat(f, "", "{\"model\":\"meta/llama-3\"}"), 401,
		      "Missing Authorization header");
}

static void test_authorization_checked_before_model(void **state)
{
	struct fix *f = *state;

	assert_detail(chat(f, NULL, "{\"model\":\"openai/gpt-4o\"}"), 401,
		      "Missing Authorization header");
}

static void test_missing_model_403(void **state)
{
	struct fix *f = *state;

	assert_detail(chat(f, AUTH, "{\"messages\":[]}"), 403, "Missing required model selection.");
	assert_detail(chat(f, AUTH, "{\"model\":\"\",\"models\":[]}"), 403,
		      "Missing required model selection.");
}

static void test_models_list_alone_is_a_selection(void **state)
{
	struct fix *f = *state;

	assert_int_equal(chat(f, AUTH, "{\"models\":[\"meta/llama-3\"]}")->action,
			 EGD_POLICY_FORWARD);
	assert_string_equal(f->res.model, "meta/llama-3");
}

static void test_non_string_model_400(void **state)
{
	struct fix *f = *state;

	assert_detail(chat(f, AUTH, "{\"model\":5}"), 400, EGD_MSG_BAD_MODEL);
	assert_detail(chat(f, AUTH, "{\"model\":\"a/b\",\"models\":[1]}"), 400, EGD_MSG_BAD_MODEL);
	assert_detail(chat(f, AUTH, "{\"models\":\"openai/gpt-4o\"}"), 400, EGD_MSG_BAD_MODEL);
}

static void test_restricted_model_variant_and_case_rejected(void **state)
{
	struct fix *f = *state;

	assert_detail(chat(f, AUTH, "{\"model\":\"OpenAI/GPT-4o:free\"}"), 403,
		      "Restricted model(s): OpenAI/GPT-4o:free");
	/* A different model whose name merely starts the same passes. */
	assert_int_equal(chat(f, AUTH, "{\"model\":\"openai/gpt-4o-mini\"}")->action,
			 EGD_POLICY_FORWARD);
}

static void test_non_bearer_401_releases_reservation(void **state)
{
	struct fix *f = *state;

	assert_detail(chat(f, "Basic abc", "{\"model\":\"meta/llama-3\"}"), 401,
		      EGD_MSG_NOT_BEARER);
	assert_int_equal(in_flight(f), 0);
}

static void test_budget_checked_before_bearer(void **state)
{
	struct fix *f = *state;
	struct env e = base_env();

	env_set(&e, "MAX_COST_USD", "0");
	load(f, &e);
	assert_detail(chat(f, "Basic abc", "{\"model\":\"meta/llama-3\"}"), 429,
		      "Evaluation run cost budget exceeded");
}

static void test_not_configured_503(void **state)
{
	static const char *const vars[] = { "OPENROUTER_EXPECTED_API_KEY_SHA256",
					    "OPENROUTER_MANAGEMENT_KEY", "OPENROUTER_WORKSPACE_ID" };
	struct fix *f = *state;

	for (size_t i = 0; i < 3; i++) {
		struct env e = base_env();

		env_set(&e, vars[i], "");
		load(f, &e);
		assert_detail(chat(f, AUTH, "{\"model\":\"meta/llama-3\"}"), 503,
			      "OpenRouter runtime policy enforcement is not configured");
		assert_int_equal(in_flight(f), 0);
	}
}

static void test_key_hash_hex_case_insensitive(void **state)
{
	struct fix *f = *state;
	struct env e = base_env();
	char upper[] = KEY_SHA;

	for (char *c = upper; *c; c++)
		if (*c >= 'a' && *c <= 'f')
			*c = (char)(*c - 'a' + 'A');
	env_set(&e, "OPENROUTER_EXPECTED_API_KEY_SHA256", upper);
	load(f, &e);
	assert_int_equal(chat(f, AUTH, "{\"model\":\"meta/llama-3\"}")->action,
			 EGD_POLICY_FORWARD);
}

static void test_workspace_unknown_then_resume(void **state)
{
	struct fix *f = *state;
	struct egd_policy_result *r = eval_ws(f, "POST", EGD_PATH_CHAT, AUTH,
					      "{\"model\":\"meta/llama-3\"}", EGD_WS_UNKNOWN);

	assert_int_equal(r->action, EGD_POLICY_NEED_WORKSPACE);
	assert_int_equal(r->reserved, 1);
	assert_int_equal(egd_policy_resume(r, EGD_WS_SAFE, f->budget), 0);
	assert_int_equal(r->action, EGD_POLICY_FORWARD);
	assert_non_null(r->upstream_body);
}

static void test_workspace_resume_unsafe_releases_reservation(void **state)
{
	struct fix *f = *state;
	struct egd_policy_result *r = eval_ws(f, "POST", EGD_PATH_CHAT, AUTH,
					      "{\"model\":\"meta/llama-3\"}", EGD_WS_UNKNOWN);

	assert_int_equal(egd_policy_resume(r, EGD_WS_UNSAFE, f->budget), 0);
	assert_detail(r, 403, EGD_MSG_WS_UNSAFE);
	assert_int_equal(in_flight(f), 0);
}

/* ---- egressd additions ---------------------------------------------------- */

static void test_credential_injection_replaces_key(void **state)
{
	struct fix *f = *state;
	struct env e = base_env();

	env_set(&e, "OPENROUTER_UPSTREAM_API_KEY", "sk-or-real");
	load(f, &e);
	assert_string_equal(chat(f, AUTH, "{\"model\":\"meta/llama-3\"}")->upstream_authorization,
			    "Bearer sk-or-real");
	/* The agent's placeholder is still checked against the hash. */
	assert_int_equal(chat(f, "Bearer wrong", "{\"model\":\"meta/llama-3\"}")->status, 403);
}

static void test_provider_without_order_and_no_fallbacks(void **state)
{
	struct fix *f = *state;
	struct env e = base_env();
	json_t *provider;

	env_set(&e, "PROVIDER_ORDER", "");
	env_set(&e, "PROVIDER_ALLOW_FALLBACKS", "false");
	load(f, &e);
	chat(f, AUTH, "{\"model\":\"meta/llama-3\"}");
	provider = json_object_get(f->sent, "provider");
	assert_true(json_is_false(json_object_get(provider, "allow_fallbacks")));
	assert_null(json_object_get(provider, "order"));
}

static void test_embeddings_allowlist(void **state)
{
	struct fix *f = *state;

	eval_ws(f, "POST", EGD_PATH_EMBEDDINGS, AUTH,
		"{\"model\":\"x/emb\",\"input\":\"hi\",\"dimensions\":8,\"messages\":[],"
		"\"plugins\":[]}",
		EGD_WS_SAFE);
	assert_int_equal(f->res.action, EGD_POLICY_FORWARD);
	assert_string_equal(f->res.upstream_path, EGD_PATH_EMBEDDINGS);
	assert_non_null(json_object_get(f->sent, "input"));
	assert_non_null(json_object_get(f->sent, "dimensions"));
	assert_null(json_object_get(f->sent, "messages"));
	assert_null(json_object_get(f->sent, "plugins"));
	assert_null(json_object_get(f->sent, "usage"));
	assert_true(json_is_true(json_object_get(json_object_get(f->sent, "provider"), "zdr")));
}

static void test_stream_is_honoured(void **state)
{
	struct fix *f = *state;

	chat(f, AUTH, "{\"model\":\"meta/llama-3\",\"stream\":true}");
	assert_int_equal(f->res.stream, 1);
	assert_true(json_is_true(json_object_get(f->sent, "stream")));
}

static void test_other_paths_and_methods_403(void **state)
{
	struct fix *f = *state;

	assert_detail(eval_ws(f, "GET", "/api/v1/models?x=1", AUTH, NULL, EGD_WS_SAFE), 403,
		      "Path '/api/v1/models' is not allowed");
	assert_detail(eval_ws(f, "GET", EGD_PATH_CHAT, AUTH, NULL, EGD_WS_SAFE), 403,
		      "Path '/api/v1/chat/completions' is not allowed");
	assert_detail(eval_ws(f, "POST", "/api/v1/chat/completions/", AUTH, "{}", EGD_WS_SAFE), 403,
		      "Path '/api/v1/chat/completions/' is not allowed");
}

static void test_path_not_utf8_not_echoed(void **state)
{
	struct fix *f = *state;

	assert_detail(eval_ws(f, "GET", "/\xff\xfe", AUTH, NULL, EGD_WS_SAFE), 403,
		      "Path '<not UTF-8>' is not allowed");
}

static void test_query_string_not_forwarded(void **state)
{
	struct fix *f = *state;

	eval_ws(f, "POST", EGD_PATH_CHAT "?debug=1", AUTH, "{\"model\":\"a/b\"}", EGD_WS_SAFE);
	assert_int_equal(f->res.action, EGD_POLICY_FORWARD);
	assert_string_equal(f->res.upstream_path, EGD_PATH_CHAT);
}

static void test_numbers_reserialized_as_written(void **state)
{
	struct fix *f = *state;

	chat(f, AUTH, "{\"model\":\"a/b\",\"temperature\":0.7,\"top_p\":1e-05,\"seed\":42}");
	assert_non_null(strstr(f->res.upstream_body, "\"temperature\":0.7,"));
	assert_non_null(strstr(f->res.upstream_body, "\"top_p\":1e-5,"));
	assert_non_null(strstr(f->res.upstream_body, "\"seed\":42,"));
}

static void test_healthz_ok(void **state)
{
	struct fix *f = *state;
	struct egd_policy_result *r = eval_ws(f, "GET", "/healthz", NULL, NULL, EGD_WS_UNKNOWN);

	assert_int_equal(r->status, 200);
	assert_string_equal(r->body, "ok");
}

static void test_usage_answered_locally(void **state)
{
	struct fix *f = *state;
	struct egd_policy_result *r = eval_ws(f, "GET", EGD_PATH_USAGE, NULL, NULL, EGD_WS_UNKNOWN);
	json_t *o;

	assert_int_equal(r->status, 200);
	o = json_loads(r->body, 0, NULL);
	assert_non_null(json_object_get(o, "budget_remaining_usd"));
	assert_string_equal(json_string_value(json_object_get(o, "evaluation_run_id")), "run");
	json_decref(o);
}

static void test_host_must_match_sni_421(void **state)
{
	struct fix *f = *state;
	struct egd_policy_request req = {
		.method = "POST",
		.target = EGD_PATH_CHAT,
		.authorization = AUTH,
		.host = "evil.example",
		.sni = "openrouter.ai",
		.body = (const uint8_t *)"{\"model\":\"a/b\"}",
		.body_len = 15,
	};

	assert_int_equal(egd_policy_eval(&f->cfg, &req, EGD_WS_SAFE, f->budget, &f->res), 0);
	assert_detail(&f->res, 421, EGD_MSG_MISDIRECTED);
	egd_policy_result_fini(&f->res);
	req.host = "OpenRouter.ai.:443";
	assert_int_equal(egd_policy_eval(&f->cfg, &req, EGD_WS_SAFE, f->budget, &f->res), 0);
	assert_int_equal(f->res.action, EGD_POLICY_FORWARD);
}

/* ---- workspace judge and cache -------------------------------------------- */

static void test_workspace_judge_table(void **state)
{
	static const struct {
		int status;
		const char *body;
		enum egd_ws_state want;
	} cases[] = {
		{ 200,
		  "{\"data\":{\"is_observability_io_logging_enabled\":false,"
		  "\"is_observability_broadcast_enabled\":false,"
		  "\"is_data_discount_logging_enabled\":false}}",
		  EGD_WS_SAFE },
		{ 200,
		  "{\"is_observability_io_logging_enabled\":false,"
		  "\"is_observability_broadcast_enabled\":false,"
		  "\"is_data_discount_logging_enabled\":false}",
		  EGD_WS_SAFE },
		{ 200,
		  "{\"data\":{\"is_observability_io_logging_enabled\":true,"
		  "\"is_observability_broadcast_enabled\":false,"
		  "\"is_data_discount_logging_enabled\":false}}",
		  EGD_WS_UNSAFE },
		{ 200,
		  "{\"data\":{\"is_observability_io_logging_enabled\":false,"
		  "\"is_observability_broadcast_enabled\":true,"
		  "\"is_data_discount_logging_enabled\":false}}",
		  EGD_WS_UNSAFE },
		{ 200,
		  "{\"data\":{\"is_observability_io_logging_enabled\":false,"
		  "\"is_observability_broadcast_enabled\":false,"
		  "\"is_data_discount_logging_enabled\":true}}",
		  EGD_WS_UNSAFE },
		/* A missing flag is unsafe, not safe. */
		{ 200,
		  "{\"data\":{\"is_observability_io_logging_enabled\":false,"
		  "\"is_observability_broadcast_enabled\":false}}",
		  EGD_WS_UNSAFE },
		{ 200,
		  "{\"data\":{\"is_observability_io_logging_enabled\":\"false\","
		  "\"is_observability_broadcast_enabled\":false,"
		  "\"is_data_discount_logging_enabled\":false}}",
		  EGD_WS_UNSAFE },
		{ 200, "not json", EGD_WS_FAILED },
		{ 200, "[]", EGD_WS_FAILED },
		{ 404, "{}", EGD_WS_FAILED },
		{ 500, "{}", EGD_WS_FAILED },
	};

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		assert_int_equal(egd_workspace_judge(cases[i].status, cases[i].body,
						     strlen(cases[i].body)),
				 cases[i].want);
}

static void test_workspace_path_encodes_id(void **state)
{
	char buf[64];

	(void)state;
	assert_int_equal(egd_workspace_path("ws 1/../x", buf, sizeof(buf)), 0);
	assert_string_equal(buf, "/api/v1/workspaces/ws%201%2F..%2Fx");
	assert_int_equal(egd_workspace_path("abcdefghij", buf, 24), -ENAMETOOLONG);
}

static void test_workspace_cache_ttl(void **state)
{
	struct egd_ws_cache c = { 0 };

	(void)state;
	assert_int_equal(egd_ws_cache_get(&c, 60, 0), EGD_WS_UNKNOWN);
	egd_ws_cache_put(&c, EGD_WS_SAFE, 1000);
	assert_int_equal(egd_ws_cache_get(&c, 60, 60999), EGD_WS_SAFE);
	assert_int_equal(egd_ws_cache_get(&c, 60, 61000), EGD_WS_UNKNOWN);
	/* A failure is retried sooner than the TTL. */
	egd_ws_cache_put(&c, EGD_WS_FAILED, 1000);
	assert_int_equal(egd_ws_cache_get(&c, 60, 1000 + EGD_WS_FAILED_RETRY_MS),
			 EGD_WS_UNKNOWN);
	/* TTL 0 is the reference behaviour: look up every time. */
	egd_ws_cache_put(&c, EGD_WS_SAFE, 1000);
	assert_int_equal(egd_ws_cache_get(&c, 0, 1000), EGD_WS_UNKNOWN);
}

/* ---- configuration loader ------------------------------------------------- */

static void test_config_defaults(void **state)
{
	struct egd_proxy_config cfg;
	struct env e = { 0 };
	char err[EGD_CONFIG_ERR_MAX_BYTES];

	(void)state;
	assert_int_equal(egd_proxy_config_load(&cfg, env_get, &e, err, sizeof(err)), 0);
	assert_true(cfg.max_cost_usd == 9999.0);
	assert_true(cfg.budget_reserve_usd == 0.01);
	assert_int_equal(cfg.max_request_bytes, 10 * 1024 * 1024);
	assert_int_equal(cfg.workspace_ttl_s, 60);
	assert_int_equal(cfg.upstream_timeout_s, 300);
	assert_int_equal(cfg.allow_fallbacks, 1);
	assert_string_equal(cfg.evaluation_run_id, "unknown-eval-run");
	assert_string_equal(cfg.data_dir, "/proxy-data");
	assert_string_equal(cfg.upstream_host, "openrouter.ai");
	assert_int_equal(cfg.upstream_port, 443);
	assert_int_equal(cfg.upstream_tls, 1);
	assert_int_equal(egd_proxy_config_enforcing(&cfg), 0);
	egd_proxy_config_free(&cfg);
}

static void test_config_bad_values_named(void **state)
{
	static const char *const bad[][2] = {
		{ "MAX_COST_USD", "ten" },
		{ "MAX_COST_USD", "-1" },
		{ "MAX_COST_USD", "nan" },
		{ "BUDGET_RESERVE_USD", "0.01x" },
		{ "OPENROUTER_EXPECTED_API_KEY_SHA256", "abc" },
		{ "OPENROUTER_EXPECTED_API_KEY_SHA256",
		  "zz17e87ada04b7d35d8168afaf70e93d1453380ab74ef6af6a6d1512fb34b4ca" },
		{ "MAX_REQUEST_BYTES", "0" },
		{ "MAX_REQUEST_BYTES", "-5" },
		{ "WORKSPACE_CHECK_TTL_S", "1m" },
		{ "UPSTREAM_TIMEOUT_S", "0" },
		{ "UPSTREAM_BASE_URL", "ftp://x" },
		{ "UPSTREAM_BASE_URL", "https://openrouter.ai/api" },
		{ "UPSTREAM_BASE_URL", "https://h:99999" },
	};
	char err[EGD_CONFIG_ERR_MAX_BYTES];

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct egd_proxy_config cfg;
		struct env e = { 0 };

		env_set(&e, bad[i][0], bad[i][1]);
		assert_int_equal(egd_proxy_config_load(&cfg, env_get, &e, err, sizeof(err)),
				 -EINVAL);
		assert_non_null(strstr(err, bad[i][0]));
	}
}

static void test_config_lists_trimmed(void **state)
{
	struct egd_proxy_config cfg;
	struct env e = { 0 };
	char err[EGD_CONFIG_ERR_MAX_BYTES];

	(void)state;
	env_set(&e, "RESTRICTED_MODELS", " a/b ,, c/d,");
	env_set(&e, "UPSTREAM_BASE_URL", "http://127.0.0.1:8081/");
	assert_int_equal(egd_proxy_config_load(&cfg, env_get, &e, err, sizeof(err)), 0);
	assert_int_equal(cfg.n_restricted_models, 2);
	assert_string_equal(cfg.restricted_models[0], "a/b");
	assert_string_equal(cfg.restricted_models[1], "c/d");
	assert_string_equal(cfg.upstream_host, "127.0.0.1");
	assert_int_equal(cfg.upstream_port, 8081);
	assert_int_equal(cfg.upstream_tls, 0);
	egd_proxy_config_free(&cfg);
}

#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)

int main(void)
{
	const struct CMUnitTest tests[] = {
		T(test_unrestricted_model_passes),
		T(test_restricted_model_rejected),
		T(test_restricted_models_list_rejected),
		T(test_provider_and_body_fields_enforced),
		T(test_unknown_headers_stripped),
		T(test_zdr_forced),
		T(test_budget_exceeded_429),
		T(test_wrong_key_403),
		T(test_unsafe_workspace_403),
		T(test_workspace_lookup_failure_503),
		T(test_body_not_object_422),
		T(test_body_checked_before_authorization),
		T(test_duplicate_json_key_400),
		T(test_missing_authorization_401),
		T(test_authorization_checked_before_model),
		T(test_missing_model_403),
		T(test_models_list_alone_is_a_selection),
		T(test_non_string_model_400),
		T(test_restricted_model_variant_and_case_rejected),
		T(test_non_bearer_401_releases_reservation),
		T(test_budget_checked_before_bearer),
		T(test_not_configured_503),
		T(test_key_hash_hex_case_insensitive),
		T(test_workspace_unknown_then_resume),
		T(test_workspace_resume_unsafe_releases_reservation),
		T(test_credential_injection_replaces_key),
		T(test_provider_without_order_and_no_fallbacks),
		T(test_embeddings_allowlist),
		T(test_stream_is_honoured),
		T(test_other_paths_and_methods_403),
		T(test_path_not_utf8_not_echoed),
		T(test_query_string_not_forwarded),
		T(test_numbers_reserialized_as_written),
		T(test_healthz_ok),
		T(test_usage_answered_locally),
		T(test_host_must_match_sni_421),
		cmocka_unit_test(test_workspace_judge_table),
		cmocka_unit_test(test_workspace_path_encodes_id),
		cmocka_unit_test(test_workspace_cache_ttl),
		cmocka_unit_test(test_config_defaults),
		cmocka_unit_test(test_config_bad_values_named),
		cmocka_unit_test(test_config_lists_trimmed),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
