/* SPDX-License-Identifier: MIT */
/*
 * Configuration of the policy proxy, read from the environment variables of
 * the reference Python proxy (so egressd is a drop-in replacement) plus a
 * few of its own, each also a flag of egressd run (core/config.c lists them).
 * The loader takes a getenv-like callback so tests feed it a table; every
 * bad value is a clear error naming the variable, never a
 * silent default, because a typo in MAX_COST_USD must not mean "no budget".
 */
#ifndef EGD_PROXY_CONFIG_H
#define EGD_PROXY_CONFIG_H

#include <stddef.h>

/* The defaults of the proxy's string settings, for the loader, the CA and
 * the listener, and for the settings table `egressd help` prints. */
#define EGD_UPSTREAM_BASE_URL_DEFAULT "https://openrouter.ai"
#define EGD_EVALUATION_RUN_ID_DEFAULT "unknown-eval-run"
#define EGD_PROXY_DATA_DIR_DEFAULT "/proxy-data"
/* EGRESSD_PROXY_HTTP_LISTEN, as the reference sidecar listens. */
#define EGD_PROXY_HTTP_LISTEN_DEFAULT "127.0.0.1:8080"
/* Where the CA key lives (with a copy of the certificate, to reload both). */
#define EGD_CA_KEY_DIR_DEFAULT "/var/lib/egressd"
/* Where ca.crt and ca-bundle.crt are published for the agent. */
#define EGD_CA_DIR_DEFAULT "/var/run/egressd/ca"

/* Default UPSTREAM_TIMEOUT_S: long completions with reasoning take minutes. */
#define EGD_UPSTREAM_DEFAULT_TIMEOUT_S 300
/* Default WORKSPACE_CHECK_TTL_S: settings changes are noticed within a
 * minute, and the management API is called at most once a minute. */
#define EGD_WORKSPACE_DEFAULT_TTL_S 60
/* Upper bound of MAX_REQUEST_BYTES: the body is held in memory. */
#define EGD_MAX_REQUEST_LIMIT_BYTES (256u * 1024 * 1024)
/* Hex SHA-256 digest length. */
#define EGD_SHA256_HEX_LEN 64
/* Error messages written by the loader fit in this. */
#define EGD_CONFIG_ERR_MAX_BYTES 512

/* Returns the value of @name or NULL when unset. */
typedef const char *(*egd_getenv_fn)(void *ctx, const char *name);

struct egd_proxy_config {
	char **restricted_models; /* RESTRICTED_MODELS, trimmed, empties dropped */
	size_t n_restricted_models;
	char **provider_order; /* PROVIDER_ORDER */
	size_t n_provider_order;
	int allow_fallbacks; /* PROVIDER_ALLOW_FALLBACKS != "false" */
	double max_cost_usd; /* MAX_COST_USD */
	double budget_reserve_usd; /* BUDGET_RESERVE_USD */
	/* OPENROUTER_EXPECTED_API_KEY_SHA256, lowercased; "" when unset. */
	char expected_key_sha256[EGD_SHA256_HEX_LEN + 1];
	char *management_key; /* OPENROUTER_MANAGEMENT_KEY(_FILE) or NULL */
	char *workspace_id;   /* OPENROUTER_WORKSPACE_ID or NULL */
	char *upstream_api_key; /* OPENROUTER_UPSTREAM_API_KEY(_FILE) or NULL */
	size_t max_request_bytes; /* MAX_REQUEST_BYTES */
	unsigned int workspace_ttl_s; /* WORKSPACE_CHECK_TTL_S */
	unsigned int upstream_timeout_s; /* UPSTREAM_TIMEOUT_S */
	char *evaluation_run_id; /* EVALUATION_RUN_ID */
	char *data_dir;          /* PROXY_DATA_DIR */
	/* UPSTREAM_BASE_URL, split: scheme, host and port; no path prefix. */
	char *upstream_base_url;
	char *upstream_host;
	unsigned short upstream_port;
	int upstream_tls;
	char *upstream_ca_file; /* UPSTREAM_CA_FILE or NULL */
	char *upstream_resolve; /* UPSTREAM_RESOLVE or NULL */
};

/* The process's settings, for egd_proxy_config_load(): the flags given to
 * egd_config_load() first, then the environment (egd_config_get()). */
const char *egd_proxy_getenv(void *ctx, const char *name);

/*
 * Fill @cfg from @get. Returns 0, or -EINVAL with a message naming the
 * variable and its flag in @err (and @cfg left empty), or -ENOMEM.
 */
int egd_proxy_config_load(struct egd_proxy_config *cfg, egd_getenv_fn get, void *ctx, char *err,
			  size_t errlen);
void egd_proxy_config_free(struct egd_proxy_config *cfg);

/* 1 when the key hash, the management key and the workspace id are all set:
 * without them the proxy refuses every policed request (503, fail closed). */
int egd_proxy_config_enforcing(const struct egd_proxy_config *cfg);

#endif /* EGD_PROXY_CONFIG_H */
