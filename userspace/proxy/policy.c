/* SPDX-License-Identifier: MIT */
/*
 * The reference proxy's pipeline (see policy.h), step by step in the
 * reference order. Each step either answers and returns, or passes the
 * request on; the budget reservation taken at the budget step is handed
 * back by every later refusal, so a refused request never holds budget.
 */
#include "proxy/policy.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "proxy/http1.h"

static const char *const chat_fields[] = {
	"model", "models", "messages", "temperature", "top_p", "top_k", "min_p",
	"max_tokens", "stream", "tools", "tool_choice", "frequency_penalty",
	"presence_penalty", "repetition_penalty", "stop", "n", "response_format", "seed",
	"reasoning", NULL,
};

static const char *const embeddings_fields[] = {
	"model", "models", "input", "encoding_format", "dimensions", NULL,
};

/* A local answer {"detail": @detail}. */
static int respond_detail(struct egd_policy_result *out, int status, const char *detail)
{
	json_t *o = json_pack("{s:s}", "detail", detail);

	if (!o)
		return -ENOMEM;
	out->action = EGD_POLICY_RESPOND;
	out->status = status;
	out->content_type = "application/json";
	free(out->body);
	out->body = json_dumps(o, JSON_COMPACT);
	json_decref(o);
	if (!out->body)
		return -ENOMEM;
	out->body_len = strlen(out->body);
	return 0;
}

/* Refuse after admission: the reservation goes back first. */
static int refuse(struct egd_policy_result *out, struct egd_budget *budget, int status,
		  const char *detail)
{
	if (out->reserved) {
		egd_budget_release(budget, out->reservation_usd);
		out->reserved = 0;
		out->reservation_usd = 0;
	}
	free(out->upstream_body);
	out->upstream_body = NULL;
	out->upstream_body_len = 0;
	free(out->upstream_authorization);
	out->upstream_authorization = NULL;
	return respond_detail(out, status, detail);
}

void egd_policy_result_fini(struct egd_policy_result *out)
{
	if (!out)
		return;
	free(out->body);
	free(out->upstream_body);
	free(out->upstream_authorization);
	free(out->model);
	memset(out, 0, sizeof(*out));
}

/* Length of the path part of a request-target (before '?' or '#'). */
static size_t path_len(const char *target)
{
	return strcspn(target, "?#");
}

static int path_is(const char *target, const char *path)
{
	size_t n = path_len(target);

	return n == strlen(path) && !memcmp(target, path, n);
}

enum egd_endpoint egd_policy_endpoint(const char *method, const char *target)
{
	if (!method || !target)
		return EGD_EP_NONE;
	if (!strcmp(method, "POST") && path_is(target, EGD_PATH_CHAT))
		return EGD_EP_CHAT;
	if (!strcmp(method, "POST") && path_is(target, EGD_PATH_EMBEDDINGS))
		return EGD_EP_EMBEDDINGS;
	if (!strcmp(method, "GET") && path_is(target, EGD_PATH_USAGE))
		return EGD_EP_USAGE;
	if (!strcmp(method, "GET") && path_is(target, EGD_PATH_HEALTHZ))
		return EGD_EP_HEALTHZ;
	return EGD_EP_NONE;
}

/* Host header against the TLS server name: case, port and a trailing dot
 * do not matter; anything else does. */
static int host_matches_sni(const char *host, const char *sni)
{
	size_t hl, sl;

	if (!host)
		return 0;
	if (host[0] == '[') {
		const char *e = strchr(host, ']');

		if (!e)
			return 0;
		host++;
		hl = (size_t)(e - host);
	} else {
		const char *colon = strchr(host, ':');

		hl = colon ? (size_t)(colon - host) : strlen(host);
	}
	if (hl && host[hl - 1] == '.')
		hl--;
	sl = strlen(sni);
	if (sl && sni[sl - 1] == '.')
		sl--;
	return hl == sl && hl && !strncasecmp(host, sni, hl);
}

static int in_list(const char *key, const char *const *list)
{
	for (; *list; list++)
		if (!strcmp(key, *list))
			return 1;
	return 0;
}

int egd_policy_sanitize(const struct egd_proxy_config *cfg, enum egd_endpoint ep, json_t *body)
{
	const char *const *allow = ep == EGD_EP_CHAT ? chat_fields : embeddings_fields;
	json_t *provider, *order, *usage;
	const char *key;
	json_t *value;
	void *tmp;

	if (!json_is_object(body) || (ep != EGD_EP_CHAT && ep != EGD_EP_EMBEDDINGS))
		return -EINVAL;
	json_object_foreach_safe(body, tmp, key, value) {
		if (!in_list(key, allow))
			json_object_del(body, key);
	}

	/* The agent's provider preferences are replaced wholesale: fields
	 * such as data_collection or ignore could undo the zero-retention
	 * routing this enforces. */
	provider = json_pack("{s:b, s:b}", "allow_fallbacks", cfg->allow_fallbacks, "zdr", 1);
	if (!provider)
		return -ENOMEM;
	if (cfg->n_provider_order) {
		order = json_array();
		if (!order || json_object_set_new(provider, "order", order))
			goto err_provider;
		for (size_t i = 0; i < cfg->n_provider_order; i++)
			if (json_array_append_new(order, json_string(cfg->provider_order[i])))
				goto err_provider;
	}
	if (json_object_set_new(body, "provider", provider))
		return -ENOMEM;

	if (ep == EGD_EP_CHAT) {
		usage = json_pack("{s:b}", "include", 1);
		if (!usage || json_object_set_new(body, "usage", usage))
			return -ENOMEM;
	}
	return 0;

err_provider:
	json_decref(provider);
	return -ENOMEM;
}

int egd_policy_model_restricted(const struct egd_proxy_config *cfg, const char *model)
{
	const char *colon = strrchr(model, ':');
	const char *slash = strrchr(model, '/');
	size_t base = colon && (!slash || colon > slash) ? (size_t)(colon - model) : strlen(model);

	for (size_t i = 0; i < cfg->n_restricted_models; i++) {
		const char *r = cfg->restricted_models[i];

		if (!strcasecmp(model, r))
			return 1;
		if (strlen(r) == base && !strncasecmp(model, r, base))
			return 1;
	}
	return 0;
}

int egd_policy_key_matches(const struct egd_proxy_config *cfg, const char *token, size_t len)
{
	static const char hex[] = "0123456789abcdef";
	unsigned char md[EVP_MAX_MD_SIZE];
	char got[EGD_SHA256_HEX_LEN];
	unsigned int mdlen = 0;

	if (strlen(cfg->expected_key_sha256) != EGD_SHA256_HEX_LEN)
		return 0;
	if (!EVP_Digest(token, len, md, &mdlen, EVP_sha256(), NULL) || mdlen != 32)
		return 0;
	for (unsigned int i = 0; i < mdlen; i++) {
		got[2 * i] = hex[md[i] >> 4];
		got[2 * i + 1] = hex[md[i] & 0xf];
	}
	/* The expected digest is lowercased at load, so the comparison is
	 * case-insensitive; CRYPTO_memcmp takes the same time whatever the
	 * first differing byte. */
	return !CRYPTO_memcmp(got, cfg->expected_key_sha256, EGD_SHA256_HEX_LEN);
}

/* Append "a, b" style: @name joined to the list unless already there. */
static int add_restricted(json_t *names, const char *name)
{
	size_t i;
	json_t *v;

	json_array_foreach(names, i, v)
		if (!strcmp(json_string_value(v), name))
			return 0;
	return json_array_append_new(names, json_string(name)) ? -ENOMEM : 0;
}

/*
 * The model step: 0 to continue, 1 when @out now holds the refusal, or
 * -ENOMEM. Sets out->model.
 */
static int check_models(const struct egd_proxy_config *cfg, json_t *body,
			struct egd_policy_result *out)
{
	json_t *model = json_object_get(body, "model");
	json_t *models = json_object_get(body, "models");
	json_t *requested, *restricted, *v;
	size_t i, len;
	char *msg;
	int ret;

	if ((model && !json_is_string(model) && !json_is_null(model)) ||
	    (models && !json_is_array(models) && !json_is_null(models)))
		return respond_detail(out, 400, EGD_MSG_BAD_MODEL) ?: 1;
	json_array_foreach(models, i, v)
		if (!json_is_string(v))
			return respond_detail(out, 400, EGD_MSG_BAD_MODEL) ?: 1;

	requested = json_array();
	restricted = json_array();
	if (!requested || !restricted)
		goto err_nomem;
	if (json_is_string(model) && json_string_length(model))
		json_array_append(requested, model);
	json_array_foreach(models, i, v)
		if (json_string_length(v))
			json_array_append(requested, v);
	if (!json_array_size(requested)) {
		ret = respond_detail(out, 403, EGD_MSG_NO_MODEL) ?: 1;
		goto out;
	}
	out->model = strdup(json_string_value(json_array_get(requested, 0)));
	if (!out->model)
		goto err_nomem;
	json_array_foreach(requested, i, v)
		if (egd_policy_model_restricted(cfg, json_string_value(v)) &&
		    add_restricted(restricted, json_string_value(v)))
			goto err_nomem;
	if (!json_array_size(restricted)) {
		ret = 0;
		goto out;
	}
	len = strlen(EGD_MSG_RESTRICTED) + 1;
	json_array_foreach(restricted, i, v)
		len += json_string_length(v) + 2;
	msg = malloc(len);
	if (!msg)
		goto err_nomem;
	strcpy(msg, EGD_MSG_RESTRICTED);
	json_array_foreach(restricted, i, v) {
		if (i)
			strcat(msg, ", ");
		strcat(msg, json_string_value(v));
	}
	ret = respond_detail(out, 403, msg) ?: 1;
	free(msg);
	goto out;

err_nomem:
	ret = -ENOMEM;
out:
	json_decref(requested);
	json_decref(restricted);
	return ret;
}

/* The Bearer token of an Authorization value, or NULL. */
static const char *bearer_token(const char *auth, size_t *len)
{
	const char *t, *e;

	/* Schemes are case-insensitive (RFC 9110 11.1). */
	if (strncasecmp(auth, "Bearer ", 7))
		return NULL;
	t = auth + 7;
	while (*t == ' ' || *t == '\t')
		t++;
	e = t + strlen(t);
	while (e > t && (e[-1] == ' ' || e[-1] == '\t'))
		e--;
	if (e == t || memchr(t, ' ', (size_t)(e - t)))
		return NULL;
	*len = (size_t)(e - t);
	return t;
}

static int answer_workspace(struct egd_policy_result *out, enum egd_ws_state ws,
			    struct egd_budget *budget)
{
	switch (ws) {
	case EGD_WS_SAFE:
		out->action = EGD_POLICY_FORWARD;
		return 0;
	case EGD_WS_UNSAFE:
		return refuse(out, budget, 403, EGD_MSG_WS_UNSAFE);
	case EGD_WS_FAILED:
		return refuse(out, budget, 503, EGD_MSG_WS_FAILED);
	default:
		out->action = EGD_POLICY_NEED_WORKSPACE;
		return 0;
	}
}

int egd_policy_resume(struct egd_policy_result *out, enum egd_ws_state ws,
		      struct egd_budget *budget)
{
	if (out->action != EGD_POLICY_NEED_WORKSPACE)
		return -EINVAL;
	/* The caller looked and still has no answer: that is a failure. */
	if (ws == EGD_WS_UNKNOWN)
		ws = EGD_WS_FAILED;
	return answer_workspace(out, ws, budget);
}

static int answer_local(struct egd_policy_result *out, enum egd_endpoint ep,
			struct egd_budget *budget)
{
	out->action = EGD_POLICY_RESPOND;
	out->status = 200;
	if (ep == EGD_EP_HEALTHZ) {
		out->content_type = "text/plain";
		out->body = strdup("ok");
	} else {
		out->content_type = "application/json";
		out->body = egd_budget_usage_dump(budget);
	}
	if (!out->body)
		return -ENOMEM;
	out->body_len = strlen(out->body);
	return 0;
}

static int path_refusal(struct egd_policy_result *out, const char *target)
{
	size_t n = target ? path_len(target) : 0;
	char *msg;
	int ret;

	if (n > EGD_HTTP_HEADERS_MAX_BYTES)
		n = EGD_HTTP_HEADERS_MAX_BYTES;
	if (asprintf(&msg, EGD_MSG_PATH_FMT, (int)n, target ? target : "") < 0)
		return -ENOMEM;
	/* The path may hold any non-ASCII byte the HTTP parser let through;
	 * jansson refuses a string that is not UTF-8, and then the answer
	 * says so instead of echoing the bytes. */
	ret = respond_detail(out, 403, msg);
	if (ret)
		ret = respond_detail(out, 403, "Path '<not UTF-8>' is not allowed");
	free(msg);
	return ret;
}

int egd_policy_eval(const struct egd_proxy_config *cfg, const struct egd_policy_request *req,
		    enum egd_ws_state ws, struct egd_budget *budget, struct egd_policy_result *out)
{
	json_error_t jerr;
	const char *token;
	size_t token_len;
	json_t *body;
	int ret;

	memset(out, 0, sizeof(*out));

	/* egressd: no domain fronting through an intercepted TLS flow. */
	if (req->sni && !host_matches_sni(req->host, req->sni))
		return respond_detail(out, 421, EGD_MSG_MISDIRECTED);

	out->endpoint = egd_policy_endpoint(req->method, req->target);
	switch (out->endpoint) {
	case EGD_EP_HEALTHZ:
	case EGD_EP_USAGE:
		return answer_local(out, out->endpoint, budget);
	case EGD_EP_NONE:
		return path_refusal(out, req->target);
	default:
		break;
	}

	body = json_loadb(req->body ? (const char *)req->body : "", req->body ? req->body_len : 0,
			  JSON_REJECT_DUPLICATES, &jerr);
	if (!body && json_error_code(&jerr) == json_error_duplicate_key)
		return respond_detail(out, 400, EGD_MSG_DUP_KEY);
	if (!json_is_object(body)) {
		json_decref(body);
		return respond_detail(out, 422, EGD_MSG_NOT_OBJECT);
	}

	if (!req->authorization || !*req->authorization) {
		ret = respond_detail(out, 401, EGD_MSG_NO_AUTH);
		goto out;
	}

	ret = check_models(cfg, body, out);
	if (ret) {
		ret = ret < 0 ? ret : 0;
		goto out;
	}
	/* Allowlist filtering sits before the model check in the reference,
	 * but both models fields are on every allowlist, so the order does not
	 * change any answer; sanitizing after the check keeps it one call. */
	ret = egd_policy_sanitize(cfg, out->endpoint, body);
	if (ret)
		goto out;
	out->stream = json_is_true(json_object_get(body, "stream"));

	if (egd_budget_admit(budget, &out->reservation_usd)) {
		ret = respond_detail(out, 429, EGD_MSG_BUDGET);
		goto out;
	}
	out->reserved = 1;

	token = bearer_token(req->authorization, &token_len);
	if (!token) {
		ret = refuse(out, budget, 401, EGD_MSG_NOT_BEARER);
		goto out;
	}
	if (!egd_proxy_config_enforcing(cfg)) {
		ret = refuse(out, budget, 503, EGD_MSG_NOT_CONFIGURED);
		goto out;
	}
	if (!req->authorization_verified && !egd_policy_key_matches(cfg, token, token_len)) {
		ret = refuse(out, budget, 403, EGD_MSG_KEY_MISMATCH);
		goto out;
	}

	out->upstream_path = out->endpoint == EGD_EP_CHAT ? EGD_PATH_CHAT : EGD_PATH_EMBEDDINGS;
	out->upstream_content_type = "application/json";
	/* egressd: with OPENROUTER_UPSTREAM_API_KEY the agent holds only a
	 * placeholder; the real key is added here, after verification. */
	if (asprintf(&out->upstream_authorization, "Bearer %s",
		     cfg->upstream_api_key ? cfg->upstream_api_key : token) < 0) {
		out->upstream_authorization = NULL;
		ret = -ENOMEM;
		goto out;
	}
	out->upstream_body = egd_json_dumps(body);
	if (!out->upstream_body) {
		ret = -ENOMEM;
		goto out;
	}
	out->upstream_body_len = strlen(out->upstream_body);
	ret = answer_workspace(out, ws, budget);

out:
	json_decref(body);
	if (ret < 0 && out->reserved) {
		egd_budget_release(budget, out->reservation_usd);
		out->reserved = 0;
	}
	return ret;
}

static int flag_unsafe(const json_t *o, const char *key)
{
	const json_t *v = json_object_get(o, key);

	return !json_is_boolean(v) || json_is_true(v);
}

enum egd_ws_state egd_workspace_judge(int status, const char *body, size_t len)
{
	const json_t *data;
	json_t *o;
	int unsafe;

	if (status < 200 || status >= 400 || !body)
		return EGD_WS_FAILED;
	o = json_loadb(body, len, 0, NULL);
	if (!json_is_object(o)) {
		json_decref(o);
		return EGD_WS_FAILED;
	}
	data = json_object_get(o, "data");
	if (!json_is_object(data))
		data = o;
	unsafe = flag_unsafe(data, "is_observability_io_logging_enabled") ||
		 flag_unsafe(data, "is_observability_broadcast_enabled") ||
		 flag_unsafe(data, "is_data_discount_logging_enabled");
	json_decref(o);
	return unsafe ? EGD_WS_UNSAFE : EGD_WS_SAFE;
}

int egd_workspace_path(const char *workspace_id, char *out, size_t cap)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t n = strlen(EGD_PATH_WORKSPACES);

	if (cap <= n)
		return -ENAMETOOLONG;
	memcpy(out, EGD_PATH_WORKSPACES, n);
	for (const unsigned char *c = (const unsigned char *)workspace_id; *c; c++) {
		int plain = isalnum(*c) || *c == '-' || *c == '_' || *c == '.' || *c == '~';

		if (n + (plain ? 1 : 3) >= cap)
			return -ENAMETOOLONG;
		if (plain) {
			out[n++] = (char)*c;
		} else {
			out[n++] = '%';
			out[n++] = hex[*c >> 4];
			out[n++] = hex[*c & 0xf];
		}
	}
	out[n] = '\0';
	return 0;
}

enum egd_ws_state egd_ws_cache_get(const struct egd_ws_cache *c, unsigned int ttl_s,
				   int64_t now_ms)
{
	int64_t ttl_ms = (int64_t)ttl_s * 1000;

	if (c->state == EGD_WS_UNKNOWN)
		return EGD_WS_UNKNOWN;
	if (c->state == EGD_WS_FAILED && ttl_ms > EGD_WS_FAILED_RETRY_MS)
		ttl_ms = EGD_WS_FAILED_RETRY_MS;
	if (now_ms - c->checked_at_ms >= ttl_ms)
		return EGD_WS_UNKNOWN;
	return c->state;
}

void egd_ws_cache_put(struct egd_ws_cache *c, enum egd_ws_state state, int64_t now_ms)
{
	c->state = state;
	c->checked_at_ms = now_ms;
}
