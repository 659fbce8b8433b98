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
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "proxy/budget.h"
#include "proxy/http1.h"

/* Upper bound of a *_FILE secret: keys are a few dozen bytes. */
#define SECRET_FILE_MAX_BYTES 4096

/* The flags of egressd run (see egd_config_load()) win over the
 * environment, as for the daemon's own settings. */
const char *egd_proxy_getenv(void *ctx, const char *name)
{
	(void)ctx;
	return egd_config_get(name);
}

/*
 * "bad value "V" for NAME (--flag, from the flag): REASON", the daemon's own
 * wording. The source is known only for the process's own settings; @v is
 * NULL for secrets, which are never echoed.
 */
static int bad_value(char *err, size_t errlen, egd_getenv_fn fn, const char *name, const char *v,
		     const char *reason)
{
	const char *flag = egd_config_flag(name);
	const char *from = fn == egd_proxy_getenv ? egd_config_source(name) : NULL;

	snprintf(err, errlen, "bad value%s%s%s for %s (--%s%s%s): %s", v ? " \"" : "", v ? v : "",
		 v ? "\"" : "", name, flag ? flag : "?", from ? ", from the " : "",
		 from ? from : "", reason);
	return -EINVAL;
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

static int parse_usd(egd_getenv_fn fn, const char *name, const char *v, double def, double *out,
		     char *err, size_t errlen)
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
	if (errno || end == v || *end || !isfinite(d) || d < 0)
		return bad_value(err, errlen, fn, name, v, "expected a non-negative number of USD");
	*out = d;
	return 0;
}

static int parse_uint(egd_getenv_fn fn, const char *name, const char *v, unsigned long long def,
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
		char reason[96];

		snprintf(reason, sizeof(reason), "expected an integer from %llu to %llu", min, max);
		return bad_value(err, errlen, fn, name, v, reason);
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

static int parse_base_url(struct egd_proxy_config *cfg, egd_getenv_fn fn, const char *url,
			  char *err, size_t errlen)
{
	char host[256];
	uint16_t port;
	int tls;

	if (egd_parse_base_url(url, host, sizeof(host), &port, &tls))
		return bad_value(err, errlen, fn, "UPSTREAM_BASE_URL", url,
				 "expected http(s)://host[:port]");
	cfg->upstream_tls = tls;
	cfg->upstream_host = strdup(host);
	if (!cfg->upstream_host)
		return -ENOMEM;
	cfg->upstream_port = port;
	return 0;
}

/*
 * A secret from @name, or from the file named by @name_FILE (as Docker and
 * systemd hand secrets over, out of the environment and the command line).
 * One trailing newline is dropped; setting both is refused, since which one
 * wins would be a guess. Line breaks are refused: the secret goes into an
 * HTTP header.
 */
static int load_secret(egd_getenv_fn fn, void *ctx, const char *name, char **out, char *err,
		       size_t errlen)
{
	char file_name[64], buf[SECRET_FILE_MAX_BYTES + 1];
	const char *v = get(fn, ctx, name), *path;
	ssize_t n = 0;
	int fd, ret = 0;

	*out = NULL;
	snprintf(file_name, sizeof(file_name), "%s_FILE", name);
	path = get(fn, ctx, file_name);
	if (v && path) {
		snprintf(err, errlen, "%s (--%s) and %s (--%s) are both set: give the secret one way",
			 name, egd_config_flag(name), file_name, egd_config_flag(file_name));
		return -EINVAL;
	}
	if (path) {
		fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd >= 0) {
			int saved = 0;

			/* Until end of file: a pipe or FIFO (<(...)) may come
			 * in pieces, and a short read would cut the key. */
			while ((size_t)n < sizeof(buf)) {
				ssize_t r = read(fd, buf + n, sizeof(buf) - (size_t)n);

				if (r < 0 && errno == EINTR)
					continue;
				if (r <= 0) {
					if (r < 0) {
						saved = errno;
						n = -1;
					}
					break;
				}
				n += r;
			}
			close(fd);
			errno = saved;
		}
		if (fd < 0 || n < 0)
			return bad_value(err, errlen, fn, file_name, path, strerror(errno));
		if (n > SECRET_FILE_MAX_BYTES) {
			explicit_bzero(buf, sizeof(buf));
			return bad_value(err, errlen, fn, file_name, path, "file too large");
		}
		buf[n] = '\0';
		if (n && buf[n - 1] == '\n')
			buf[--n] = '\0';
		if (n && buf[n - 1] == '\r')
			buf[--n] = '\0';
		if (!n)
			return bad_value(err, errlen, fn, file_name, path, "empty file");
		v = buf;
	}
	if (v && strpbrk(v, "\r\n"))
		ret = bad_value(err, errlen, fn, path ? file_name : name, path,
				"the secret contains a line break");
	else if (dup_opt(v, out))
		ret = -ENOMEM;
	/* No copy of the secret left on the stack. */
	explicit_bzero(buf, sizeof(buf));
	return ret;
}

static int check_listen(egd_getenv_fn fn, const char *v, char *err, size_t errlen)
{
	struct egd_addr a;

	/* The parser of every other listen setting, so the forms are the same. */
	if (!v || strcmp(v, "off") == 0 || egd_parse_hostport(v, &a) == 0)
		return 0;
	return bad_value(err, errlen, fn, "EGRESSD_PROXY_HTTP_LISTEN", v,
			 "expected ADDR:PORT (IPv4 or [IPv6] address), PORT, or off");
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

	ret = parse_usd(fn, "MAX_COST_USD", get(fn, ctx, "MAX_COST_USD"),
			EGD_BUDGET_DEFAULT_CAP_USD, &cfg->max_cost_usd, err, errlen);
	if (!ret)
		ret = parse_usd(fn, "BUDGET_RESERVE_USD", get(fn, ctx, "BUDGET_RESERVE_USD"),
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
			ret = bad_value(err, errlen, fn, "OPENROUTER_EXPECTED_API_KEY_SHA256", v,
					"expected 64 hex digits");
			goto err;
		}
		for (size_t i = 0; i < len; i++)
			cfg->expected_key_sha256[i] = (char)tolower((unsigned char)v[i]);
	}

	ret = parse_uint(fn, "MAX_REQUEST_BYTES", get(fn, ctx, "MAX_REQUEST_BYTES"),
			 EGD_HTTP_BODY_DEFAULT_MAX_BYTES, 1, EGD_MAX_REQUEST_LIMIT_BYTES, &n, err,
			 errlen);
	if (ret)
		goto err;
	cfg->max_request_bytes = (size_t)n;
	ret = parse_uint(fn, "WORKSPACE_CHECK_TTL_S", get(fn, ctx, "WORKSPACE_CHECK_TTL_S"),
			 EGD_WORKSPACE_DEFAULT_TTL_S, 0, 86400, &n, err, errlen);
	if (ret)
		goto err;
	cfg->workspace_ttl_s = (unsigned int)n;
	ret = parse_uint(fn, "UPSTREAM_TIMEOUT_S", get(fn, ctx, "UPSTREAM_TIMEOUT_S"),
			 EGD_UPSTREAM_DEFAULT_TIMEOUT_S, 1, 86400, &n, err, errlen);
	if (ret)
		goto err;
	cfg->upstream_timeout_s = (unsigned int)n;

	v = get(fn, ctx, "EVALUATION_RUN_ID");
	ret = dup_opt(v ? v : EGD_EVALUATION_RUN_ID_DEFAULT, &cfg->evaluation_run_id);
	v = get(fn, ctx, "PROXY_DATA_DIR");
	ret = ret ? ret : dup_opt(v ? v : EGD_PROXY_DATA_DIR_DEFAULT, &cfg->data_dir);
	v = get(fn, ctx, "UPSTREAM_BASE_URL");
	ret = ret ? ret : dup_opt(v ? v : EGD_UPSTREAM_BASE_URL_DEFAULT, &cfg->upstream_base_url);
	ret = ret ? ret : dup_opt(get(fn, ctx, "OPENROUTER_WORKSPACE_ID"), &cfg->workspace_id);
	ret = ret ? ret : dup_opt(get(fn, ctx, "UPSTREAM_CA_FILE"), &cfg->upstream_ca_file);
	ret = ret ? ret : dup_opt(get(fn, ctx, "UPSTREAM_RESOLVE"), &cfg->upstream_resolve);
	if (ret)
		goto err;
	ret = load_secret(fn, ctx, "OPENROUTER_MANAGEMENT_KEY", &cfg->management_key, err, errlen);
	if (!ret)
		ret = load_secret(fn, ctx, "OPENROUTER_UPSTREAM_API_KEY", &cfg->upstream_api_key,
				  err, errlen);
	if (!ret)
		ret = parse_base_url(cfg, fn, cfg->upstream_base_url, err, errlen);
	/* Read by the listener itself (intercept.c); checked here with the rest. */
	if (!ret)
		ret = check_listen(fn, get(fn, ctx, "EGRESSD_PROXY_HTTP_LISTEN"), err, errlen);
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
