/* SPDX-License-Identifier: MIT */
/*
 * The router's request contract (route.h): header validation with the
 * reference router's messages, the Pod-IP address classes, the bearer
 * check and the header filters. Hand-written rather than a regex: the
 * label rule is four lines and a regex engine would be one more parser to
 * trust with attacker bytes.
 */
#include "router/route.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>
#include <openssl/sha.h>

/* The reference's messages, byte for byte (clients match on them). */
#define MSG_ID_REQUIRED "X-Sandbox-ID header is required."
#define MSG_ID_INVALID "Invalid sandbox ID format."
#define MSG_NS_INVALID "Invalid namespace format."
#define MSG_PORT_INVALID "Invalid port format."
#define MSG_IP_FORMAT "Invalid target IP address format."
#define MSG_IP_REFUSED "Invalid target IP address."
#define MSG_AUTH_MISSING "Missing or invalid Authorization header."
#define MSG_AUTH_BAD "Invalid token."

/* Longest X-Sandbox-Timeout value looked at: "86400.000" and then some. */
#define TIMEOUT_VALUE_MAX_BYTES 32
/* Largest timeout in ms that fits the unsigned int we carry it in. */
#define TIMEOUT_MS_CEILING 4000000000.0

int egd_route_is_label(const char *s)
{
	size_t n = s ? strlen(s) : 0;

	if (n == 0 || n > EGD_ROUTE_LABEL_MAX_BYTES)
		return 0;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];

		if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))
			continue;
		if (c == '-' && i != 0 && i != n - 1)
			continue;
		return 0;
	}
	return 1;
}

unsigned int egd_route_parse_port(const char *s)
{
	unsigned long v = 0;
	size_t n = strlen(s);

	/* Five digits at most, so no overflow; leading zeros as int() takes. */
	if (n == 0 || n > 5)
		return 0;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return 0;
		v = v * 10 + (unsigned long)(s[i] - '0');
	}
	return v >= 1 && v <= 65535 ? (unsigned int)v : 0;
}

unsigned int egd_route_parse_timeout(const char *s, unsigned int cap_ms)
{
	char buf[TIMEOUT_VALUE_MAX_BYTES];
	char *end;
	double v;

	if (!s || !*s || strlen(s) >= sizeof(buf))
		return cap_ms;
	/* strtod() alone would take hex, "inf" and "nan": digits and one dot. */
	for (const char *p = s; *p; p++)
		if (!isdigit((unsigned char)*p) && *p != '.')
			return cap_ms;
	snprintf(buf, sizeof(buf), "%s", s);
	errno = 0;
	v = strtod(buf, &end);
	if (errno || *end || !isfinite(v) || v <= 0)
		return cap_ms;
	v *= 1000.0;
	if (v >= (double)cap_ms || v >= TIMEOUT_MS_CEILING)
		return cap_ms;
	return v < 1.0 ? 1 : (unsigned int)v;
}

static int v4_refused(uint32_t a)
{
	return (a >> 24) == 0 ||		/* 0.0.0.0/8, unspecified */
	       (a >> 24) == 127 ||		/* loopback */
	       (a >> 16) == 0xa9fe ||		/* 169.254/16, link-local, metadata */
	       (a >> 28) == 0xe ||		/* 224/4, multicast */
	       a == 0xffffffff ||		/* broadcast */
	       a == 0x646464c8 ||		/* 100.100.100.200, Alibaba metadata */
	       a == 0xa83f8110;			/* 168.63.129.16, Azure host agent */
}

int egd_route_ip_refused(const struct sockaddr *sa)
{
	if (sa->sa_family == AF_INET)
		return v4_refused(ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr));
	if (sa->sa_family == AF_INET6) {
		const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
		/* fd00:ec2::254, the AWS metadata service over IPv6. */
		static const uint8_t aws6[16] = { 0xfd, 0x00, 0x0e, 0xc2, 0, 0, 0, 0,
						  0,	0,    0,    0,	  0, 0, 0x02, 0x54 };
		uint32_t v4;

		if (IN6_IS_ADDR_V4MAPPED(a) || IN6_IS_ADDR_V4COMPAT(a)) {
			memcpy(&v4, a->s6_addr + 12, 4);
			return v4_refused(ntohl(v4));
		}
		return IN6_IS_ADDR_UNSPECIFIED(a) || IN6_IS_ADDR_LOOPBACK(a) ||
		       IN6_IS_ADDR_LINKLOCAL(a) || IN6_IS_ADDR_MULTICAST(a) ||
		       memcmp(a->s6_addr, aws6, 16) == 0;
	}
	return 1;
}

int egd_route_cidr_parse(const char *s, struct egd_route_cidr *out)
{
	char buf[INET6_ADDRSTRLEN + 8];
	char *slash, *end;
	unsigned long prefix;
	unsigned int max;

	if (strlen(s) >= sizeof(buf))
		return -EINVAL;
	snprintf(buf, sizeof(buf), "%s", s);
	slash = strchr(buf, '/');
	if (slash)
		*slash = '\0';
	memset(out, 0, sizeof(*out));
	if (inet_pton(AF_INET, buf, out->addr) == 1) {
		out->family = AF_INET;
		max = 32;
	} else if (inet_pton(AF_INET6, buf, out->addr) == 1) {
		out->family = AF_INET6;
		max = 128;
	} else {
		return -EINVAL;
	}
	prefix = max;
	if (slash) {
		if (!isdigit((unsigned char)slash[1]))
			return -EINVAL;
		prefix = strtoul(slash + 1, &end, 10);
		if (*end || prefix > max)
			return -EINVAL;
	}
	out->prefix = (unsigned int)prefix;
	return 0;
}

int egd_route_cidr_parse_list(const char *s, struct egd_route_cidr *out, size_t max)
{
	char item[INET6_ADDRSTRLEN + 8];
	size_t n = 0;

	while (*s) {
		size_t len = strcspn(s, ",");
		const char *b = s, *e = s + len;

		while (b < e && isspace((unsigned char)*b))
			b++;
		while (e > b && isspace((unsigned char)e[-1]))
			e--;
		if (e > b) {
			if (n == max || (size_t)(e - b) >= sizeof(item))
				return -EINVAL;
			snprintf(item, sizeof(item), "%.*s", (int)(e - b), b);
			if (egd_route_cidr_parse(item, &out[n]))
				return -EINVAL;
			n++;
		}
		s += len;
		if (*s == ',')
			s++;
	}
	return (int)n;
}

static int prefix_match(const uint8_t *a, const uint8_t *b, unsigned int bits)
{
	unsigned int whole = bits / 8, rest = bits % 8;

	if (memcmp(a, b, whole))
		return 0;
	if (!rest)
		return 1;
	return ((a[whole] ^ b[whole]) & (0xff << (8 - rest))) == 0;
}

int egd_route_cidr_contains(const struct egd_route_cidr *c, size_t n, const struct sockaddr *sa)
{
	const uint8_t *a;
	int fam = sa->sa_family;

	if (fam == AF_INET)
		a = (const uint8_t *)&((const struct sockaddr_in *)sa)->sin_addr;
	else if (fam == AF_INET6)
		a = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
	else
		return 0;
	for (size_t i = 0; i < n; i++)
		if (c[i].family == fam && prefix_match(a, c[i].addr, c[i].prefix))
			return 1;
	return 0;
}

int egd_route_auth(const char *authorization, const char *token, const char **detail)
{
	unsigned char want[SHA256_DIGEST_LENGTH], got[SHA256_DIGEST_LENGTH];
	const char *p = authorization, *scheme, *tok;
	size_t scheme_len, tok_len;

	/* As Python's split(): exactly two whitespace-separated parts. */
	if (!p)
		goto missing;
	while (isspace((unsigned char)*p))
		p++;
	scheme = p;
	while (*p && !isspace((unsigned char)*p))
		p++;
	scheme_len = (size_t)(p - scheme);
	while (isspace((unsigned char)*p))
		p++;
	tok = p;
	while (*p && !isspace((unsigned char)*p))
		p++;
	tok_len = (size_t)(p - tok);
	while (isspace((unsigned char)*p))
		p++;
	if (*p || tok_len == 0 || scheme_len != 6 || strncasecmp(scheme, "bearer", 6) != 0)
		goto missing;
	SHA256((const unsigned char *)token, strlen(token), want);
	SHA256((const unsigned char *)tok, tok_len, got);
	if (CRYPTO_memcmp(want, got, sizeof(want)) != 0) {
		*detail = MSG_AUTH_BAD;
		return 401;
	}
	return 0;
missing:
	*detail = MSG_AUTH_MISSING;
	return 401;
}

static int fail(struct egd_route *r, int status, const char *detail)
{
	r->status = status;
	r->detail = detail;
	return status;
}

static int route_pod_ip(const struct egd_route_cfg *cfg, const char *v, struct egd_route *r)
{
	struct sockaddr_in *s4 = (struct sockaddr_in *)&r->ip;
	struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&r->ip;

	memset(&r->ip, 0, sizeof(r->ip));
	if (inet_pton(AF_INET, v, &s4->sin_addr) == 1) {
		s4->sin_family = AF_INET;
		s4->sin_port = htons(r->port);
		r->ip_len = sizeof(*s4);
	} else if (inet_pton(AF_INET6, v, &s6->sin6_addr) == 1) {
		s6->sin6_family = AF_INET6;
		s6->sin6_port = htons(r->port);
		r->ip_len = sizeof(*s6);
	} else {
		return fail(r, 400, MSG_IP_FORMAT);
	}
	if (egd_route_ip_refused((struct sockaddr *)&r->ip))
		return fail(r, 400, MSG_IP_REFUSED);
	if (cfg->nallowed && !egd_route_cidr_contains(cfg->allowed, cfg->nallowed,
						(struct sockaddr *)&r->ip))
		return fail(r, 400, MSG_IP_REFUSED);
	r->has_ip = 1;
	/* The canonical text, not the client's spelling, goes upstream. */
	if (s4->sin_family == AF_INET) {
		inet_ntop(AF_INET, &s4->sin_addr, r->host, sizeof(r->host));
		snprintf(r->hostport, sizeof(r->hostport), "%s:%u", r->host, r->port);
	} else {
		inet_ntop(AF_INET6, &s6->sin6_addr, r->host, sizeof(r->host));
		snprintf(r->hostport, sizeof(r->hostport), "[%s]:%u", r->host, r->port);
	}
	return 0;
}

int egd_route_request(const struct egd_route_cfg *cfg, const struct egd_http_msg *m,
		      struct egd_route *r)
{
	const char *id, *ns, *port, *ip;

	memset(r, 0, sizeof(*r));
	if (cfg->token) {
		int st = egd_route_auth(egd_http_header_get(m, "authorization"), cfg->token,
					&r->detail);

		if (st)
			return fail(r, st, r->detail);
	}
	id = egd_http_header_get(m, "x-sandbox-id");
	if (!id || !*id)
		return fail(r, 400, MSG_ID_REQUIRED);
	if (!egd_route_is_label(id))
		return fail(r, 400, MSG_ID_INVALID);
	ns = egd_http_header_get(m, "x-sandbox-namespace");
	if (!ns)
		ns = EGD_ROUTE_DEFAULT_NAMESPACE;
	if (!egd_route_is_label(ns))
		return fail(r, 400, MSG_NS_INVALID);
	port = egd_http_header_get(m, "x-sandbox-port");
	if (port) {
		r->port = (uint16_t)egd_route_parse_port(port);
		if (!r->port)
			return fail(r, 400, MSG_PORT_INVALID);
	} else {
		r->port = EGD_ROUTE_DEFAULT_PORT;
	}
	snprintf(r->id, sizeof(r->id), "%s", id);
	snprintf(r->ns, sizeof(r->ns), "%s", ns);
	ip = egd_http_header_get(m, "x-sandbox-pod-ip");
	if (ip) {
		if (route_pod_ip(cfg, ip, r))
			return r->status;
	} else {
		int n = snprintf(r->host, sizeof(r->host), "%s.%s.svc.%s", id, ns,
				 cfg->cluster_domain);

		if (n < 0 || (size_t)n >= sizeof(r->host))
			return fail(r, 400, MSG_ID_INVALID);
		snprintf(r->hostport, sizeof(r->hostport), "%s:%u", r->host, r->port);
	}
	r->timeout_ms = egd_route_parse_timeout(egd_http_header_get(m, "x-sandbox-timeout"),
						cfg->default_timeout_ms);
	return 0;
}

int egd_route_hop_by_hop(const char *name)
{
	static const char *const hop[] = { "connection", "keep-alive", "proxy-authenticate",
					   "proxy-authorization", "proxy-connection", "te",
					   "trailer", "trailers", "transfer-encoding", "upgrade" };

	for (size_t i = 0; i < sizeof(hop) / sizeof(hop[0]); i++)
		if (strcasecmp(name, hop[i]) == 0)
			return 1;
	return 0;
}

int egd_route_drop_request_header(const struct egd_http_msg *m, const char *name)
{
	if (strncasecmp(name, "x-sandbox-", 10) == 0 || strcasecmp(name, "host") == 0 ||
	    strcasecmp(name, "authorization") == 0 || strcasecmp(name, "x-forwarded-for") == 0 ||
	    strcasecmp(name, "x-forwarded-proto") == 0 || strcasecmp(name, "expect") == 0 ||
	    strcasecmp(name, "content-length") == 0 || egd_route_hop_by_hop(name))
		return 1;
	return egd_http_header_has_token(m, "connection", name);
}

int egd_route_drop_response_header(const struct egd_http_msg *m, const char *name)
{
	if (strcasecmp(name, "content-length") == 0 || egd_route_hop_by_hop(name))
		return 1;
	return egd_http_header_has_token(m, "connection", name);
}

void egd_route_path_only(const char *target, char *out, size_t len)
{
	size_t n = strcspn(target, "?");

	snprintf(out, len, "%.*s", (int)(n < len ? n : len - 1), target);
}
