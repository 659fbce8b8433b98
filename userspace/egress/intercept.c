/* SPDX-License-Identifier: MIT */
/*
 * Intercepted connections into the embedded policy proxy; see intercept.h.
 *
 * One proxy per worker, each touched by its worker's thread only, so a
 * handed-off connection stays on the thread that accepted it. What must be
 * one per daemon (the budget ledger and its files, the workspace answer,
 * the CA's leaf cache) is shared, under its own locks.
 */
#include "egress/intercept.h"
#include "core/log.h"
#include "proxy/ca.h"
#include "proxy/proxy_config.h"
#include "proxy/server.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct egd_intercept {
	struct egd_proxy_config cfg;
	struct egd_ca *ca;
	struct egd_proxy_shared *sh;
	unsigned int n;
	struct egd_proxy *proxies[]; /* one per worker, by worker id */
};

static int start_listener(struct egd_intercept *ic)
{
	/* Flag, else environment, as every proxy setting. */
	const char *addr = egd_proxy_getenv(NULL, "EGRESSD_PROXY_HTTP_LISTEN");
	int port;

	if (!addr || !*addr)
		addr = EGD_PROXY_HTTP_LISTEN_DEFAULT;
	if (strcmp(addr, "off") == 0)
		return 0;
	/* Its connections are few (agents given an explicit base URL):
	 * worker 0's proxy serves them all. */
	port = egd_proxy_listen(ic->proxies[0], addr);
	if (port < 0) {
		egd_err("EGRESSD_PROXY_HTTP_LISTEN=%s: %s%s", addr, strerror(-port),
			port == -EADDRINUSE ? " (set EGRESSD_PROXY_HTTP_LISTEN, or off)" : "");
		return port;
	}
	egd_info("policy proxy listening on %s", addr);
	return 0;
}

struct egd_intercept *egd_intercept_new(struct egd_loop *const *loops, unsigned int n)
{
	struct egd_intercept *ic = calloc(1, sizeof(*ic) + n * sizeof(ic->proxies[0]));
	char err[EGD_CONFIG_ERR_MAX_BYTES];
	int ret;

	if (!ic || !n) {
		free(ic);
		errno = ic ? EINVAL : ENOMEM;
		return NULL;
	}
	ret = egd_proxy_config_load(&ic->cfg, egd_proxy_getenv, NULL, err, sizeof(err));
	if (ret) {
		egd_err("policy proxy: %s", err);
		goto err_free;
	}
	/* Missing keys are not fatal: the proxy answers every policed request
	 * 503, as the reference does, which is closed without being down. */
	if (!egd_proxy_config_enforcing(&ic->cfg))
		egd_warn("policy proxy: OPENROUTER_EXPECTED_API_KEY_SHA256, "
			 "OPENROUTER_MANAGEMENT_KEY or OPENROUTER_WORKSPACE_ID unset; "
			 "every request will be refused (503)");
	ic->ca = egd_ca_open_env();
	if (!ic->ca) {
		ret = -errno;
		egd_err("policy proxy: cannot open the pod CA (EGRESSD_CA_KEY_DIR, "
			"EGRESSD_CA_DIR): %s",
			strerror(-ret));
		goto err_free;
	}
	ic->sh = egd_proxy_shared_new(&ic->cfg, err, sizeof(err));
	if (!ic->sh) {
		ret = -errno;
		egd_err("policy proxy: %s", err);
		goto err_free;
	}
	for (unsigned int i = 0; i < n; i++) {
		ic->proxies[i] = egd_proxy_new(loops[i], ic->sh, ic->ca, err, sizeof(err));
		if (!ic->proxies[i]) {
			ret = -errno;
			egd_err("policy proxy: %s", err);
			goto err_free;
		}
		ic->n = i + 1;
	}
	ret = start_listener(ic);
	if (ret)
		goto err_free;
	egd_info("policy proxy: embedded on %u worker%s, %s CA, data in %s", n,
		 n == 1 ? "" : "s", egd_ca_generated(ic->ca) ? "new" : "reused",
		 ic->cfg.data_dir);
	return ic;

err_free:
	egd_intercept_destroy(ic);
	errno = -ret;
	return NULL;
}

void egd_intercept_destroy(struct egd_intercept *ic)
{
	if (!ic)
		return;
	for (unsigned int i = 0; i < ic->n; i++)
		egd_proxy_destroy(ic->proxies[i]);
	egd_proxy_shared_destroy(ic->sh);
	egd_ca_destroy(ic->ca);
	egd_proxy_config_free(&ic->cfg);
	free(ic);
}

int egd_intercept_handoff(struct egd_intercept *ic, unsigned int worker, int fd,
			  enum egd_proto proto, const char *host, const uint8_t *prefix,
			  size_t prefix_len)
{
	struct egd_proxy *p;

	/* Another worker's proxy would be touched from the wrong thread. */
	if (worker >= ic->n) {
		close(fd);
		return -EINVAL;
	}
	p = ic->proxies[worker];
	if (proto == EGD_PROTO_TLS)
		return egd_proxy_serve_tls(p, fd, host[0] ? host : NULL, prefix, prefix_len);
	return egd_proxy_serve_plain(p, fd, prefix, prefix_len);
}

char *egd_intercept_metrics(struct egd_intercept *ic)
{
	return egd_proxy_metrics(ic->proxies, ic->n);
}
