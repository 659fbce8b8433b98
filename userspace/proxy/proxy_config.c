/* SPDX-License-Identifier: MIT */
/*
 * Loader of the policy proxy configuration (see proxy_config.h). Empty
 * values count as unset, as `os.environ.get(...) or default` does in the
 * reference proxy.
 */
#include "proxy/proxy_config.h"
#include "core/config.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "proxy/budget.h"
#include "proxy/http1.h"

const char *egd_proxy_getenv(void *ctx, const char *name)
{
	(void)ctx;
	return getenv(name);
}

static const char *get(egd_getenv_fn fn, void *ctx, const char *name)
{
	const char *v = fn(ctx, name);

	return v && *v ? v : NULL;
}

static void free_list(char **list, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(list[i]);
	free(list);
}

/* Split a comma list, trimming blanks and dropping empty entries. */
static int split_list(const char *s, char ***out, size_t *n)
{
	char **list = NULL;
	size_t count = 0;

	*out = NULL;
	*n = 0;
	while (s && *s) {
		const char *e = strchr(s, ',');
		const char *b = s, *end = e ? e : s + strlen(s);
		char **nl;

		while (b < end && isspace((unsigned char)*b))
			b++;
		while (end > b && isspace((unsigned char)end[-1]))
			end--;
		if (end > b) {
			nl = realloc(list, (count + 1) * sizeof(*list));
			if (!nl)
				goto err;
			list = nl;
			list[count] = strndup(b, (size_t)(end - b));
			if (!list[count])
				goto err;
			count++;
		}
		s = e ? e + 1 : NULL;
	}
	*out = list;
	*n = count;
	return 0;
err:
	free_list(list, count);
	return -ENOMEM;
}

static int parse_usd(const char *name, const char *v, double def, double *out, char *err,
		     size_t errlen)
{
	char *end;
	double d;

	if (!v) {
		*out = def;
		return 0;
	}
	errno = 0;
	d = strtod(v, &end);
	while (isspace((unsigned char)*end))
		end++;
	if (errno || end == v || *end || !isfinite(d) || d < 0) {
		snprintf(err, errlen, "%s=%s: expected a non-negative number of USD", name, v);
		return -EINVAL;
	}
	*out = d;
	return 0;
}

static int parse_uint(const char *name, const char *v, unsigned long long def,
		      unsigned long long min, unsigned long long max, unsigned long long *out,
		      char *err, size_t errlen)
{
	unsigned long long n;
	char *end;

	if (!v) {
		*out = def;
		return 0;
	}
	errno = 0;
	n = strtoull(v, &end, 10);
	if (errno || end == v || *end || !isdigit((unsigned char)*v) || n < min || n > max) {
		snprintf(err, errlen, "%s=%s: expected an integer from %llu to %llu", name, v, min,
			 max);
		return -EINVAL;
	}
	*out = n;
	return 0;
}

static int dup_opt(const char *v, char **out)
{
	*out = NULL;
	if (!v)
		return 0;
	*out = strdup(v);
	return *out ? 0 : -ENOMEM;
}

static int parse_base_url(struct egd_proxy_config *cfg, const char *url, char *err, size_t errlen)
{
	char host[256];
	uint16_t port;
	int tls;

	if (egd_parse_base_url(url, host, sizeof(host), &port, &tls)) {
		snprintf(err, errlen, "UPSTREAM_BASE_URL=%s: expected http(s)://host[:port]", url);
		return -EINVAL;
	}
	cfg->upstream_tls = tls;
	cfg->upstream_host = strdup(host);
	if (!cfg->upstream_host)
		return -ENOMEM;
	cfg->upstream_port = port;
	return 0;
}

int egd_proxy_config_load(struct egd_proxy_config *cfg, egd_getenv_fn fn, void *ctx, char *err,
			  size_t errlen)
{
	const char *v;
	unsigned long long n;
	int ret;

	memset(cfg, 0, sizeof(*cfg));
	snprintf(err, errlen, "out of memory");

	ret = split_list(get(fn, ctx, "RESTRICTED_MODELS"), &cfg->restricted_models,
			 &cfg->n_restricted_models);
	if (!ret)
		ret = split_list(get(fn, ctx, "PROVIDER_ORDER"), &cfg->provider_order,
				 &cfg->n_provider_order);
	if (ret)
		goto err;

	/* The reference treats anything but "false" as true. */
	v = get(fn, ctx, "PROVIDER_ALLOW_FALLBACKS");
	cfg->allow_fallbacks = !v || strcasecmp(v, "false");

	ret = parse_usd("MAX_COST_USD", get(fn, ctx, "MAX_COST_USD"), EGD_BUDGET_DEFAULT_CAP_USD,
			&cfg->max_cost_usd, err, errlen);
	if (!ret)
		ret = parse_usd("BUDGET_RESERVE_USD", get(fn, ctx, "BUDGET_RESERVE_USD"),
				EGD_BUDGET_DEFAULT_RESERVE_USD, &cfg->budget_reserve_usd, err,
				errlen);
	if (ret)
		goto err;

	v = get(fn, ctx, "OPENROUTER_EXPECTED_API_KEY_SHA256");
	if (v) {
		size_t len = strlen(v);

		for (size_t i = 0; i < len && len == EGD_SHA256_HEX_LEN; i++)
			if (!isxdigit((unsigned char)v[i]))
				len = 0;
		if (len != EGD_SHA256_HEX_LEN) {
			snprintf(err, errlen,
				 "OPENROUTER_EXPECTED_API_KEY_SHA256: expected %d hex digits",
				 EGD_SHA256_HEX_LEN);
			ret = -EINVAL;
			goto err;
		}
		for (size_t i = 0; i < len; i++)
			cfg->expected_key_sha256[i] = (char)tolower((unsigned char)v[i]);
	}

	ret = parse_uint("MAX_REQUEST_BYTES", get(fn, ctx, "MAX_REQUEST_BYTES"),
			 EGD_HTTP_BODY_DEFAULT_MAX_BYTES, 1, EGD_MAX_REQUEST_LIMIT_BYTES, &n, err,
			 errlen);
	if (ret)
		goto err;
	cfg->max_request_bytes = (size_t)n;
	ret = parse_uint("WORKSPACE_CHECK_TTL_S", get(fn, ctx, "WORKSPACE_CHECK_TTL_S"),
			 EGD_WORKSPACE_DEFAULT_TTL_S, 0, 86400, &n, err, errlen);
	if (ret)
		goto err;
	cfg->workspace_ttl_s = (unsigned int)n;
	ret = parse_uint("UPSTREAM_TIMEOUT_S", get(fn, ctx, "UPSTREAM_TIMEOUT_S"),
			 EGD_UPSTREAM_DEFAULT_TIMEOUT_S, 1, 86400, &n, err, errlen);
	if (ret)
		goto err;
	cfg->upstream_timeout_s = (unsigned int)n;

	v = get(fn, ctx, "EVALUATION_RUN_ID");
	ret = dup_opt(v ? v : "unknown-eval-run", &cfg->evaluation_run_id);
	v = get(fn, ctx, "PROXY_DATA_DIR");
	ret = ret ? ret : dup_opt(v ? v : "/proxy-data", &cfg->data_dir);
	v = get(fn, ctx, "UPSTREAM_BASE_URL");
	ret = ret ? ret : dup_opt(v ? v : "https://openrouter.ai", &cfg->upstream_base_url);
	ret = ret ? ret : dup_opt(get(fn, ctx, "OPENROUTER_MANAGEMENT_KEY"), &cfg->management_key);
	ret = ret ? ret : dup_opt(get(fn, ctx, "OPENROUTER_WORKSPACE_ID"), &cfg->workspace_id);
	ret = ret ? ret :
		    dup_opt(get(fn, ctx, "OPENROUTER_UPSTREAM_API_KEY"), &cfg->upstream_api_key);
	ret = ret ? ret : dup_opt(get(fn, ctx, "UPSTREAM_CA_FILE"), &cfg->upstream_ca_file);
	ret = ret ? ret : dup_opt(get(fn, ctx, "UPSTREAM_RESOLVE"), &cfg->upstream_resolve);
	if (ret)
		goto err;
	if (cfg->upstream_api_key && strpbrk(cfg->upstream_api_key, "\r\n")) {
		snprintf(err, errlen, "OPENROUTER_UPSTREAM_API_KEY: contains a line break");
		ret = -EINVAL;
		goto err;
	}
	ret = parse_base_url(cfg, cfg->upstream_base_url, err, errlen);
	if (ret)
		goto err;
	if (errlen)
		err[0] = '\0';
	return 0;

err:
	egd_proxy_config_free(cfg);
	return ret;
}

void egd_proxy_config_free(struct egd_proxy_config *cfg)
{
	if (!cfg)
		return;
	free_list(cfg->restricted_models, cfg->n_restricted_models);
	free_list(cfg->provider_order, cfg->n_provider_order);
	free(cfg->management_key);
	free(cfg->workspace_id);
	free(cfg->upstream_api_key);
	free(cfg->evaluation_run_id);
	free(cfg->data_dir);
	free(cfg->upstream_base_url);
	free(cfg->upstream_host);
	free(cfg->upstream_ca_file);
	free(cfg->upstream_resolve);
	memset(cfg, 0, sizeof(*cfg));
}

int egd_proxy_config_enforcing(const struct egd_proxy_config *cfg)
{
	return cfg->expected_key_sha256[0] && cfg->management_key && cfg->workspace_id;
}
