/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for the router's request contract: the input is parsed
 * as a request head and routed (auth on, a pod CIDR set), and each header
 * value is also run through the label, port, timeout and auth checks. A
 * routed request must name a valid label pair, a port in range, a Host that
 * holds neither CR, LF nor space, and a Pod-IP of an allowed class.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/http1.h"
#include "router/route.h"

static void check_route(const struct egd_route *r)
{
	if (!egd_route_is_label(r->id) || !egd_route_is_label(r->ns))
		abort();
	if (r->port == 0 || r->timeout_ms == 0 || r->timeout_ms > 60000)
		abort();
	if (strpbrk(r->hostport, "\r\n \t/?#@") || !r->hostport[0])
		abort();
	if (r->has_ip && egd_route_ip_refused((const struct sockaddr *)&r->ip))
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct egd_route_cidr pods[2];
	static int init;
	struct egd_route_cfg cfg = { .cluster_domain = "cluster.local",
				     .token = (size && (data[0] & 1)) ? "fuzz-token" : NULL,
				     .default_timeout_ms = 60000 };
	struct egd_http_parser *p;
	struct egd_route r;
	size_t used = 0;
	int res;

	if (!init) {
		egd_route_cidr_parse_list("10.0.0.0/8,fd00::/8", pods, 2);
		init = 1;
	}
	cfg.allowed = pods;
	cfg.nallowed = size && (data[0] & 2) ? 2 : 0;
	p = egd_http_parser_new(EGD_HTTP_REQUEST, 4096);
	if (!p)
		return 0;
	res = egd_http_parse(p, data, size, &used);
	if (res == EGD_HTTP_DONE || res == EGD_HTTP_HEADERS) {
		const struct egd_http_msg *m = egd_http_parser_msg(p);
		const char *detail;

		if (egd_route_request(&cfg, m, &r) == 0)
			check_route(&r);
		else if (!r.detail || (r.status != 400 && r.status != 401))
			abort();
		for (size_t i = 0; i < m->nheaders; i++) {
			const char *v = m->headers[i].value;
			unsigned int port = egd_route_parse_port(v);

			if (port > 65535)
				abort();
			egd_route_is_label(v);
			if (egd_route_parse_timeout(v, 1000) > 1000)
				abort();
			if (egd_route_auth(v, "fuzz-token", &detail) && !detail)
				abort();
			egd_route_drop_request_header(m, m->headers[i].name);
		}
	}
	egd_http_parser_destroy(p);
	return 0;
}
