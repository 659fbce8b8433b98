/* SPDX-License-Identifier: MIT */
/*
 * The request contract of `egressd router`, as pure functions: which
 * sandbox a request names (X-Sandbox-ID, -Namespace, -Port, -Pod-IP,
 * -Timeout), the reference router's exact error messages, the bearer-token
 * check and which headers cross the router. No sockets, no globals: the
 * server (router.c) calls these, the unit test and the fuzz target call
 * them with tables of inputs.
 */
#ifndef EGD_ROUTER_ROUTE_H
#define EGD_ROUTER_ROUTE_H

#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "proxy/http1.h"

/* A DNS-1123 label: what Kubernetes allows as a Service name. */
#define EGD_ROUTE_LABEL_MAX_BYTES 63
/* The reference's defaults. */
#define EGD_ROUTE_DEFAULT_NAMESPACE "default"
#define EGD_ROUTE_DEFAULT_PORT 8888
/* "<63>.<63>.svc.<domain>:<port>": the domain is bounded by a DNS name. */
#define EGD_ROUTE_HOST_MAX_BYTES 512
/* Pod CIDRs in ROUTER_ALLOWED_CIDRS: a cluster has a handful. */
#define EGD_ROUTE_CIDRS_MAX 32

struct egd_route_cidr {
	int family; /* AF_INET or AF_INET6 */
	uint8_t addr[16];
	unsigned int prefix;
};

struct egd_route_cfg {
	const char *cluster_domain;	  /* CLUSTER_DOMAIN */
	const char *token;		  /* NULL: no auth */
	unsigned int default_timeout_ms;  /* PROXY_TIMEOUT_SECONDS */
	const struct egd_route_cidr *allowed;	  /* ROUTER_ALLOWED_CIDRS, bounding Pod-IP */
	size_t nallowed;		  /* 0: any address not refused by class */
};

struct egd_route {
	int status;	    /* 0 when routed, else the error status */
	const char *detail; /* error message (static), NULL when routed */
	char id[EGD_ROUTE_LABEL_MAX_BYTES + 1];
	char ns[EGD_ROUTE_LABEL_MAX_BYTES + 1];
	uint16_t port;
	/* Set when X-Sandbox-Pod-IP was given: dial this, no name to resolve. */
	int has_ip;
	struct sockaddr_storage ip;
	socklen_t ip_len;
	/* The dial name (or IP literal) and the Host header ("name:port",
	 * IPv6 in brackets); the pool key is the Host value. */
	char host[EGD_ROUTE_HOST_MAX_BYTES];
	char hostport[EGD_ROUTE_HOST_MAX_BYTES + 8];
	unsigned int timeout_ms;
};

/* 1 when @s is a lower-case DNS-1123 label of at most 63 bytes. */
int egd_route_is_label(const char *s);
/* A port of digits only (no sign, no '_', no spaces), 1 to 65535; 0 if not. */
unsigned int egd_route_parse_port(const char *s);
/* X-Sandbox-Timeout in ms: positive finite seconds, capped at @cap_ms;
 * anything else gives @cap_ms (the reference falls back, never errors). */
unsigned int egd_route_parse_timeout(const char *s, unsigned int cap_ms);

/* Address classes the router never dials whatever the header says:
 * loopback, link-local (cloud metadata), multicast, unspecified, broadcast,
 * and the cloud metadata addresses outside link-local. 1 when refused. */
int egd_route_ip_refused(const struct sockaddr *sa);
int egd_route_cidr_parse(const char *s, struct egd_route_cidr *out);
/* Comma list; count or -EINVAL. */
int egd_route_cidr_parse_list(const char *s, struct egd_route_cidr *out, size_t max);
int egd_route_cidr_contains(const struct egd_route_cidr *c, size_t n, const struct sockaddr *sa);

/*
 * Authorization against @token: 0 when accepted, else 401 with @detail
 * set ("Missing or invalid Authorization header." or "Invalid token.").
 * The token is compared in constant time (digests of both sides, so the
 * length does not leak either).
 */
int egd_route_auth(const char *authorization, const char *token, const char **detail);

/*
 * Everything section 1 of the contract decides from a request's headers,
 * in the reference's order: auth, ID, namespace, port, Pod-IP, timeout.
 * Fills @r; returns r->status (0 routed, 400 or 401).
 */
int egd_route_request(const struct egd_route_cfg *cfg, const struct egd_http_msg *m,
		      struct egd_route *r);

/* Hop-by-hop headers (RFC 9110 7.6.1 and the reference's list). */
int egd_route_hop_by_hop(const char *name);
/*
 * 1 when header @name of @m must not be forwarded to the sandbox: Host,
 * Authorization, X-Sandbox-*, hop-by-hop, a name listed in Connection,
 * X-Forwarded-For/-Proto (set by the router), Expect (answered by it).
 * On an upgrade, Upgrade and Connection are kept by the caller.
 */
int egd_route_drop_request_header(const struct egd_http_msg *m, const char *name);
/* Same for a response header going back to the client. */
int egd_route_drop_response_header(const struct egd_http_msg *m, const char *name);

/* "/path" of a request-target without its query, into @out; for logs. */
void egd_route_path_only(const char *target, char *out, size_t len);

#endif /* EGD_ROUTER_ROUTE_H */
