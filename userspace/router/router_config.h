/* SPDX-License-Identifier: MIT */
/*
 * Settings of `egressd router`: each an environment variable and the same
 * setting as a --flag (the variable in lower case, '_' as '-'; the flag
 * wins), as for `egressd run`. The names the reference router used keep
 * their names (PROXY_TIMEOUT_SECONDS, CLUSTER_DOMAIN, ROUTER_AUTH_TOKEN,
 * ALLOW_UNAUTHENTICATED_ROUTER). Bad values stop the start with a message
 * naming the variable.
 */
#ifndef EGD_ROUTER_CONFIG_H
#define EGD_ROUTER_CONFIG_H

#include <stdio.h>

#include "egressd.h"
#include "router/route.h"

/* A bearer token longer than this is not a token but a mistake (a file of
 * the wrong kind given to ROUTER_AUTH_TOKEN_FILE). */
#define EGD_ROUTER_TOKEN_MAX_BYTES 4096
#define EGD_ROUTER_DOMAIN_MAX_BYTES 254

struct egd_router_config {
	struct egd_addr listen;
	struct egd_addr admin; /* family 0: off */
	char cluster_domain[EGD_ROUTER_DOMAIN_MAX_BYTES];
	unsigned int timeout_s;	  /* PROXY_TIMEOUT_SECONDS */
	char token[EGD_ROUTER_TOKEN_MAX_BYTES]; /* empty: no auth */
	int allow_unauthenticated;
	struct egd_route_cidr allowed[EGD_ROUTE_CIDRS_MAX];
	size_t nallowed;
	struct egd_route_cidr trusted[EGD_ROUTE_CIDRS_MAX];
	size_t ntrusted;
	unsigned int ws_idle_s, ws_max_s;
	unsigned int max_conns;
	unsigned int max_requests_per_conn;
	unsigned int pool_per_target, pool_max_idle;
	unsigned int shutdown_s;
	char access_log[4096]; /* "" stdout, "off" none */
	int log_level;
};

/* Fill @cfg from the environment and the flags in @argv. 0 or -EINVAL
 * (message printed). Refuses a start without a token unless
 * ALLOW_UNAUTHENTICATED_ROUTER is true. */
int egd_router_config_load(struct egd_router_config *cfg, int argc, char **argv);
void egd_router_config_usage(FILE *out);

#endif /* EGD_ROUTER_CONFIG_H */
