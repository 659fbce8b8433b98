/* SPDX-License-Identifier: MIT */
/*
 * The router's request contract as pure functions (router/route.h): the
 * label, port and timeout rules, the Pod-IP classes and CIDR bound, the
 * bearer check, the order of the checks with the reference's messages, and
 * which headers cross the router. Tables of cases; the e2e file checks the
 * same contract through sockets.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "proxy/http1.h"
#include "router/route.h"

static void test_label(void **state)
{
	static const struct {
		const char *s;
		int ok;
	} cases[] = {
		{ "a", 1 },	 { "box", 1 },	 { "a-b", 1 },	{ "0", 1 },   { "a--b", 1 },
		{ "", 0 },	 { "-a", 0 },	 { "a-", 0 },	{ "A", 0 },   { "a.b", 0 },
		{ "a_b", 0 },	 { "a b", 0 },	 { "a/", 0 },	{ "é", 0 },   { "a\n", 0 },
		{ "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", 1 }, /* 63 */
		{ "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", 0 }, /* 64 */
	};

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		if (egd_route_is_label(cases[i].s) != cases[i].ok)
			fail_msg("label \"%s\": expected %d", cases[i].s, cases[i].ok);
	}
	assert_int_equal(egd_route_is_label(NULL), 0);
}

static void test_port(void **state)
{
	static const struct {
		const char *s;
		unsigned int port;
	} cases[] = {
		{ "8888", 8888 }, { "1", 1 },	  { "65535", 65535 }, { "08888", 8888 },
		{ "0", 0 },	  { "65536", 0 }, { "+8888", 0 },     { "8_888", 0 },
		{ "-1", 0 },	  { " 80", 0 },	  { "80 ", 0 },	      { "", 0 },
		{ "0x50", 0 },	  { "999999", 0 }, { "00001", 1 },    { "000001", 0 },
	};

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		if (egd_route_parse_port(cases[i].s) != cases[i].port)
			fail_msg("port \"%s\": expected %u", cases[i].s, cases[i].port);
}

static void test_timeout(void **state)
{
	static const struct {
		const char *s;
		unsigned int ms;
	} cases[] = {
		{ "1", 1000 },	   { "2.5", 2500 }, { "0.0001", 1 },  { "180", 180000 },
		{ "181", 180000 }, { "0", 180000 }, { "-1", 180000 }, { "abc", 180000 },
		{ "inf", 180000 }, { "nan", 180000 }, { "1e3", 180000 }, { "0x10", 180000 },
		{ "", 180000 },	   { "1.2.3", 180000 }, { " 5", 180000 },
	};

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		if (egd_route_parse_timeout(cases[i].s, 180000) != cases[i].ms)
			fail_msg("timeout \"%s\": expected %u", cases[i].s, cases[i].ms);
	assert_int_equal(egd_route_parse_timeout(NULL, 7000), 7000);
}

static int refused(const char *ip)
{
	struct sockaddr_storage ss = { 0 };
	struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
	struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;

	if (inet_pton(AF_INET, ip, &s4->sin_addr) == 1)
		s4->sin_family = AF_INET;
	else if (inet_pton(AF_INET6, ip, &s6->sin6_addr) == 1)
		s6->sin6_family = AF_INET6;
	else
		fail_msg("bad test address %s", ip);
	return egd_route_ip_refused((struct sockaddr *)&ss);
}

static void test_ip_classes(void **state)
{
	static const char *const bad[] = { "127.0.0.1",	      "127.1.2.3",  "0.0.0.0",
					   "0.1.2.3",	      "169.254.169.254", "169.254.0.1",
					   "224.0.0.1",	      "239.1.1.1",  "255.255.255.255",
					   "100.100.100.200", "168.63.129.16", "::1",
					   "::",	      "fe80::1",    "ff02::1",
					   "::ffff:127.0.0.1", "::ffff:169.254.169.254",
					   "fd00:ec2::254" };
	static const char *const good[] = { "10.1.2.3",	   "192.168.0.1", "172.16.5.4",
					    "198.51.100.1", "100.64.0.1", "2001:db8::1",
					    "fd12::1",	   "::ffff:10.0.0.1" };

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		if (!refused(bad[i]))
			fail_msg("%s should be refused", bad[i]);
	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
		if (refused(good[i]))
			fail_msg("%s should be allowed", good[i]);
}

static void test_cidrs(void **state)
{
	struct egd_route_cidr c[4];
	struct sockaddr_in s4 = { .sin_family = AF_INET };
	struct sockaddr_in6 s6 = { .sin6_family = AF_INET6 };

	(void)state;
	assert_int_equal(egd_route_cidr_parse_list(" 10.0.0.0/8 , 2001:db8::/32,192.168.1.7", c, 4),
			 3);
	inet_pton(AF_INET, "10.200.0.1", &s4.sin_addr);
	assert_true(egd_route_cidr_contains(c, 3, (struct sockaddr *)&s4));
	inet_pton(AF_INET, "11.0.0.1", &s4.sin_addr);
	assert_false(egd_route_cidr_contains(c, 3, (struct sockaddr *)&s4));
	inet_pton(AF_INET, "192.168.1.7", &s4.sin_addr);
	assert_true(egd_route_cidr_contains(c, 3, (struct sockaddr *)&s4));
	inet_pton(AF_INET, "192.168.1.8", &s4.sin_addr);
	assert_false(egd_route_cidr_contains(c, 3, (struct sockaddr *)&s4));
	inet_pton(AF_INET6, "2001:db8:ffff::1", &s6.sin6_addr);
	assert_true(egd_route_cidr_contains(c, 3, (struct sockaddr *)&s6));
	inet_pton(AF_INET6, "2001:db9::1", &s6.sin6_addr);
	assert_false(egd_route_cidr_contains(c, 3, (struct sockaddr *)&s6));
	assert_int_equal(egd_route_cidr_parse_list("", c, 4), 0);
	assert_int_equal(egd_route_cidr_parse_list("10.0.0.0/33", c, 4), -EINVAL);
	assert_int_equal(egd_route_cidr_parse_list("10.0.0.0/", c, 4), -EINVAL);
	assert_int_equal(egd_route_cidr_parse_list("host.example", c, 4), -EINVAL);
	assert_int_equal(egd_route_cidr_parse_list("1.1.1.1,2.2.2.2,3.3.3.3,4.4.4.4,5.5.5.5", c, 4),
			 -EINVAL);
	/* An odd prefix compares the partial byte. */
	assert_int_equal(egd_route_cidr_parse_list("10.128.0.0/9", c, 4), 1);
	inet_pton(AF_INET, "10.127.255.255", &s4.sin_addr);
	assert_false(egd_route_cidr_contains(c, 1, (struct sockaddr *)&s4));
	inet_pton(AF_INET, "10.128.0.0", &s4.sin_addr);
	assert_true(egd_route_cidr_contains(c, 1, (struct sockaddr *)&s4));
}

static void test_auth(void **state)
{
	static const struct {
		const char *hdr;
		int status;
		const char *detail;
	} cases[] = {
		{ NULL, 401, "Missing or invalid Authorization header." },
		{ "", 401, "Missing or invalid Authorization header." },
		{ "Bearer", 401, "Missing or invalid Authorization header." },
		{ "Basic s3cret", 401, "Missing or invalid Authorization header." },
		{ "Bearer s3cret x", 401, "Missing or invalid Authorization header." },
		{ "Bearers3cret", 401, "Missing or invalid Authorization header." },
		{ "Bearer s3cre", 401, "Invalid token." },
		{ "Bearer s3cret2", 401, "Invalid token." },
		{ "Bearer S3CRET", 401, "Invalid token." },
		{ "Bearer s3cret", 0, NULL },
		{ "bearer s3cret", 0, NULL },
		{ "BEARER   s3cret  ", 0, NULL },
	};

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const char *detail = NULL;
		int st = egd_route_auth(cases[i].hdr, "s3cret", &detail);

		if (st != cases[i].status)
			fail_msg("auth \"%s\": %d, expected %d",
				 cases[i].hdr ? cases[i].hdr : "(none)", st, cases[i].status);
		if (cases[i].detail && strcmp(detail, cases[i].detail))
			fail_msg("auth \"%s\": detail %s", cases[i].hdr, detail);
	}
}

/* Parse a request head (CRLF-joined @lines) and route it with @cfg. */
static int route(const struct egd_route_cfg *cfg, const char *head, struct egd_route *r)
{
	struct egd_http_parser *p = egd_http_parser_new(EGD_HTTP_REQUEST, 0);
	size_t used;
	int res, st;

	assert_non_null(p);
	res = egd_http_parse(p, (const uint8_t *)head, strlen(head), &used);
	assert_int_equal(res, EGD_HTTP_DONE);
	st = egd_route_request(cfg, egd_http_parser_msg(p), r);
	egd_http_parser_destroy(p);
	return st;
}

static void test_request_order_and_messages(void **state)
{
	struct egd_route_cidr pods[1];
	struct egd_route_cfg cfg = { .cluster_domain = "cluster.local",
				     .default_timeout_ms = 180000 };
	static const struct {
		const char *headers;
		int status;
		const char *detail;
	} cases[] = {
		{ "", 400, "X-Sandbox-ID header is required." },
		{ "X-Sandbox-ID: \r\n", 400, "X-Sandbox-ID header is required." },
		{ "X-Sandbox-ID: A\r\nX-Sandbox-Namespace: B\r\n", 400,
		  "Invalid sandbox ID format." },
		{ "X-Sandbox-ID: a\r\nX-Sandbox-Namespace: B\r\nX-Sandbox-Port: x\r\n", 400,
		  "Invalid namespace format." },
		{ "X-Sandbox-ID: a\r\nX-Sandbox-Namespace: \r\n", 400,
		  "Invalid namespace format." },
		{ "X-Sandbox-ID: a\r\nX-Sandbox-Port: x\r\nX-Sandbox-Pod-IP: y\r\n", 400,
		  "Invalid port format." },
		{ "X-Sandbox-ID: a\r\nX-Sandbox-Pod-IP: y\r\n", 400,
		  "Invalid target IP address format." },
		{ "X-Sandbox-ID: a\r\nX-Sandbox-Pod-IP: 127.0.0.1\r\n", 400,
		  "Invalid target IP address." },
		{ "X-Sandbox-ID: a\r\nX-Sandbox-Pod-IP: 10.9.9.9\r\n", 400,
		  "Invalid target IP address." }, /* outside the pod CIDR below */
		{ "X-Sandbox-ID: a\r\nX-Sandbox-Pod-IP: 10.1.2.3\r\n", 0, NULL },
		{ "x-sandbox-id: a\r\n", 0, NULL },
	};

	(void)state;
	assert_int_equal(egd_route_cidr_parse_list("10.1.0.0/16", pods, 1), 1);
	cfg.allowed = pods;
	cfg.nallowed = 1;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char head[512];
		struct egd_route r;

		snprintf(head, sizeof(head), "GET / HTTP/1.1\r\nHost: r\r\n%s\r\n",
			 cases[i].headers);
		if (route(&cfg, head, &r) != cases[i].status)
			fail_msg("case %zu: status %d (%s)", i, r.status, r.detail);
		if (cases[i].detail && strcmp(r.detail, cases[i].detail))
			fail_msg("case %zu: detail %s", i, r.detail);
	}
	/* Auth comes first, before a missing ID. */
	cfg.token = "t0k";
	{
		struct egd_route r;

		assert_int_equal(route(&cfg, "GET / HTTP/1.1\r\nHost: r\r\n\r\n", &r), 401);
		assert_int_equal(route(&cfg,
				       "GET / HTTP/1.1\r\nHost: r\r\nAuthorization: Bearer t0k\r\n"
				       "\r\n",
				       &r),
				 400);
	}
}

static void test_request_target(void **state)
{
	struct egd_route_cfg cfg = { .cluster_domain = "corp.internal",
				     .default_timeout_ms = 30000 };
	struct egd_route r;

	(void)state;
	assert_int_equal(route(&cfg,
			       "GET / HTTP/1.1\r\nHost: r\r\nX-Sandbox-ID: box\r\n"
			       "X-Sandbox-Namespace: team-a\r\nX-Sandbox-Port: 9000\r\n"
			       "X-Sandbox-Timeout: 5\r\n\r\n",
			       &r),
			 0);
	assert_string_equal(r.host, "box.team-a.svc.corp.internal");
	assert_string_equal(r.hostport, "box.team-a.svc.corp.internal:9000");
	assert_string_equal(r.id, "box");
	assert_string_equal(r.ns, "team-a");
	assert_int_equal(r.port, 9000);
	assert_int_equal(r.timeout_ms, 5000);
	assert_false(r.has_ip);

	assert_int_equal(route(&cfg,
			       "GET / HTTP/1.1\r\nHost: r\r\nX-Sandbox-ID: box\r\n"
			       "X-Sandbox-Pod-IP: 2001:DB8:0::1\r\n\r\n",
			       &r),
			 0);
	assert_true(r.has_ip);
	assert_string_equal(r.hostport, "[2001:db8::1]:8888");
	assert_string_equal(r.ns, "default");
	assert_int_equal(r.timeout_ms, 30000);
	assert_int_equal(ntohs(((struct sockaddr_in6 *)&r.ip)->sin6_port), 8888);
}

static void test_header_filters(void **state)
{
	const char *head = "GET / HTTP/1.1\r\nHost: r\r\nConnection: keep-alive, X-Hop\r\n"
			   "X-Hop: 1\r\nX-App: 1\r\n\r\n";
	struct egd_http_parser *p = egd_http_parser_new(EGD_HTTP_REQUEST, 0);
	const struct egd_http_msg *m;
	size_t used;
	static const char *const dropped[] = {
		"Host",	     "authorization", "X-Sandbox-ID",	     "x-sandbox-pod-ip",
		"X-Sandbox-Whatever", "Connection", "Keep-Alive", "TE",
		"Transfer-Encoding", "Upgrade", "Proxy-Authorization", "Trailer",
		"X-Hop",	     "x-hop",	      "Expect",		     "Content-Length",
		"X-Forwarded-For",   "X-Forwarded-Proto",
	};
	static const char *const kept[] = { "X-App", "Accept", "Content-Type", "Cookie", "Origin",
					    "Sec-WebSocket-Key", "X-Sandbox" };

	(void)state;
	assert_int_equal(egd_http_parse(p, (const uint8_t *)head, strlen(head), &used),
			 EGD_HTTP_DONE);
	m = egd_http_parser_msg(p);
	for (size_t i = 0; i < sizeof(dropped) / sizeof(dropped[0]); i++)
		if (!egd_route_drop_request_header(m, dropped[i]))
			fail_msg("%s should not be forwarded", dropped[i]);
	for (size_t i = 0; i < sizeof(kept) / sizeof(kept[0]); i++)
		if (egd_route_drop_request_header(m, kept[i]))
			fail_msg("%s should be forwarded", kept[i]);
	assert_true(egd_route_drop_response_header(m, "X-Hop"));
	assert_true(egd_route_drop_response_header(m, "Keep-Alive"));
	assert_false(egd_route_drop_response_header(m, "Content-Encoding"));
	assert_false(egd_route_drop_response_header(m, "Date"));
	egd_http_parser_destroy(p);
}

static void test_path_only(void **state)
{
	char out[8];

	(void)state;
	egd_route_path_only("/a/b?secret=1", out, sizeof(out));
	assert_string_equal(out, "/a/b");
	egd_route_path_only("/a/very/long/path", out, sizeof(out));
	assert_string_equal(out, "/a/very");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_label),
		cmocka_unit_test(test_port),
		cmocka_unit_test(test_timeout),
		cmocka_unit_test(test_ip_classes),
		cmocka_unit_test(test_cidrs),
		cmocka_unit_test(test_auth),
		cmocka_unit_test(test_request_order_and_messages),
		cmocka_unit_test(test_request_target),
		cmocka_unit_test(test_header_filters),
		cmocka_unit_test(test_path_only),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
