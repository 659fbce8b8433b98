/* SPDX-License-Identifier: MIT */
/*
 * The strict HTTP/1.1 parser: what it accepts, what it refuses with which
 * status, that any split of the input gives the same message, and that the
 * serializers produce what the parser reads back.
 */
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

#define MAX_BODY 4096

/* Feed @s in pieces of @step bytes until the message is done or fails.
 * Returns the last result; *used is how many bytes of @s were consumed. */
static int feed(struct egd_http_parser *p, const char *s, size_t len, size_t step, size_t *used)
{
	size_t off = 0;
	int r = EGD_HTTP_MORE;

	while (off < len) {
		size_t n = len - off < step ? len - off : step, c;

		r = egd_http_parse(p, (const uint8_t *)s + off, n, &c);
		if (r < 0)
			break;
		off += c;
		if (r == EGD_HTTP_DONE)
			break;
	}
	if (used)
		*used = off;
	return r;
}

static int parse_str(struct egd_http_parser *p, const char *s)
{
	return feed(p, s, strlen(s), strlen(s) ? strlen(s) : 1, NULL);
}

static struct egd_http_parser *req_parser(void)
{
	struct egd_http_parser *p = egd_http_parser_new(EGD_HTTP_REQUEST, MAX_BODY);

	assert_non_null(p);
	return p;
}

static void expect_error(const char *msg, int err, int status)
{
	struct egd_http_parser *p = req_parser();

	assert_int_equal(parse_str(p, msg), err);
	assert_int_equal(egd_http_parser_status(p), status);
	egd_http_parser_destroy(p);
}

static void test_get_request_line_and_headers(void **state)
{
	struct egd_http_parser *p = req_parser();
	const struct egd_http_msg *m;

	(void)state;
	assert_int_equal(parse_str(p, "GET /healthz?x=1 HTTP/1.1\r\nHost: openrouter.ai\r\n"
				      "X-Test:  padded value \t\r\n\r\n"),
			 EGD_HTTP_DONE);
	m = egd_http_parser_msg(p);
	assert_string_equal(m->method, "GET");
	assert_string_equal(m->target, "/healthz?x=1");
	assert_int_equal(m->version_minor, 1);
	assert_string_equal(egd_http_header_get(m, "host"), "openrouter.ai");
	assert_string_equal(egd_http_header_get(m, "x-test"), "padded value");
	assert_int_equal(m->keep_alive, 1);
	assert_int_equal(m->body_len, 0);
	egd_http_parser_destroy(p);
}

static void test_post_content_length_body(void **state)
{
	struct egd_http_parser *p = req_parser();
	const struct egd_http_msg *m;

	(void)state;
	assert_int_equal(parse_str(p, "POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n"
				      "hello"),
			 EGD_HTTP_DONE);
	m = egd_http_parser_msg(p);
	assert_int_equal(m->content_length, 5);
	assert_int_equal(m->body_len, 5);
	assert_memory_equal(m->body, "hello", 5);
	egd_http_parser_destroy(p);
}

static const char chunked_msg[] = "POST /a HTTP/1.1\r\nHost: h\r\n"
				  "Transfer-Encoding: chunked\r\n\r\n"
				  "5;ext=1\r\nhello\r\n"
				  "7\r\n, world\r\n"
				  "0\r\nX-Trailer: yes\r\n\r\n";

static void test_chunked_body_with_extension_and_trailer(void **state)
{
	struct egd_http_parser *p = req_parser();
	const struct egd_http_msg *m;
	size_t used;

	(void)state;
	assert_int_equal(feed(p, chunked_msg, strlen(chunked_msg), 4096, &used), EGD_HTTP_DONE);
	assert_int_equal(used, strlen(chunked_msg));
	m = egd_http_parser_msg(p);
	assert_int_equal(m->chunked, 1);
	assert_int_equal(m->body_len, 12);
	assert_memory_equal(m->body, "hello, world", 12);
	assert_int_equal(m->ntrailers, 1);
	assert_string_equal(m->trailers[0].name, "X-Trailer");
	assert_string_equal(m->trailers[0].value, "yes");
	egd_http_parser_destroy(p);
}

static void test_chunked_same_result_at_every_split(void **state)
{
	size_t len = strlen(chunked_msg);

	(void)state;
	for (size_t cut = 1; cut < len; cut++) {
		struct egd_http_parser *p = req_parser();
		const struct egd_http_msg *m;
		size_t c1 = 0, c2 = 0;
		int r;

		/* Two pieces split at @cut; the second starts where the
		 * first stopped being consumed. */
		r = egd_http_parse(p, (const uint8_t *)chunked_msg, cut, &c1);
		assert_true(r >= 0);
		while (r != EGD_HTTP_DONE && c1 < len) {
			r = egd_http_parse(p, (const uint8_t *)chunked_msg + c1, len - c1, &c2);
			assert_true(r >= 0);
			c1 += c2;
		}
		assert_int_equal(r, EGD_HTTP_DONE);
		assert_int_equal(c1, len);
		m = egd_http_parser_msg(p);
		assert_int_equal(m->body_len, 12);
		assert_memory_equal(m->body, "hello, world", 12);
		assert_int_equal(m->ntrailers, 1);
		egd_http_parser_destroy(p);
	}
}

static void test_chunked_byte_by_byte(void **state)
{
	struct egd_http_parser *p = req_parser();
	size_t used;

	(void)state;
	assert_int_equal(feed(p, chunked_msg, strlen(chunked_msg), 1, &used), EGD_HTTP_DONE);
	assert_int_equal(used, strlen(chunked_msg));
	assert_memory_equal(egd_http_parser_msg(p)->body, "hello, world", 12);
	egd_http_parser_destroy(p);
}

static void test_pipelined_requests_consumed_in_order(void **state)
{
	const char two[] = "POST /one HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
			   "GET /two HTTP/1.1\r\nHost: h\r\n\r\n";
	struct egd_http_parser *p = req_parser();
	size_t used, first;

	(void)state;
	assert_int_equal(feed(p, two, strlen(two), strlen(two), &used), EGD_HTTP_DONE);
	first = used;
	assert_int_equal(first, strlen(two) - strlen("GET /two HTTP/1.1\r\nHost: h\r\n\r\n"));
	assert_string_equal(egd_http_parser_msg(p)->target, "/one");
	egd_http_parser_reset(p);
	assert_int_equal(feed(p, two + first, strlen(two) - first, 4096, &used), EGD_HTTP_DONE);
	assert_int_equal(used, strlen(two) - first);
	assert_string_equal(egd_http_parser_msg(p)->target, "/two");
	egd_http_parser_destroy(p);
}

static void test_leading_empty_lines_ignored(void **state)
{
	struct egd_http_parser *p = req_parser();

	(void)state;
	assert_int_equal(parse_str(p, "\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n"), EGD_HTTP_DONE);
	egd_http_parser_destroy(p);
}

static void test_obs_fold_rejected(void **state)
{
	(void)state;
	expect_error("GET / HTTP/1.1\r\nHost: h\r\nX-A: a\r\n b\r\n\r\n", -EBADMSG, 400);
}

static void test_content_length_with_transfer_encoding_rejected(void **state)
{
	(void)state;
	expect_error("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n"
		     "Transfer-Encoding: chunked\r\n\r\n",
		     -EBADMSG, 400);
}

static void test_duplicate_content_length_rejected(void **state)
{
	(void)state;
	expect_error("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
		     -EBADMSG, 400);
}

static void test_conflicting_content_length_list_rejected(void **state)
{
	(void)state;
	expect_error("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3, 4\r\n\r\n", -EBADMSG, 400);
}

static void test_malformed_content_length_rejected(void **state)
{
	static const char *const bad[] = { "+3", "-1", "0x3", "3 3", "", "1234567890123456789" };

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char msg[256];

		snprintf(msg, sizeof(msg), "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: %s\r\n\r\n",
			 bad[i]);
		expect_error(msg, -EBADMSG, 400);
	}
}

static void test_unknown_transfer_coding_is_501(void **state)
{
	(void)state;
	expect_error("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
		     -ENOSYS, 501);
}

static void test_headers_over_limit_are_431(void **state)
{
	size_t len = EGD_HTTP_HEADERS_MAX_BYTES + 100;
	char *msg = malloc(len + 1);
	struct egd_http_parser *p = req_parser();
	size_t off;

	(void)state;
	off = (size_t)sprintf(msg, "GET / HTTP/1.1\r\nHost: h\r\nX-Big: ");
	memset(msg + off, 'a', len - off);
	msg[len] = '\0';
	assert_int_equal(feed(p, msg, len, 1000, NULL), -EMSGSIZE);
	assert_int_equal(egd_http_parser_status(p), 431);
	egd_http_parser_destroy(p);
	free(msg);
}

static void test_content_length_over_limit_is_413(void **state)
{
	(void)state;
	expect_error("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4097\r\n\r\n", -EFBIG, 413);
}

static void test_chunked_over_limit_is_413(void **state)
{
	struct egd_http_parser *p = egd_http_parser_new(EGD_HTTP_REQUEST, 8);

	(void)state;
	assert_int_equal(parse_str(p, "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
				      "\r\n5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n"),
			 -EFBIG);
	assert_int_equal(egd_http_parser_status(p), 413);
	egd_http_parser_destroy(p);
}

static void test_chunk_size_overflow_rejected(void **state)
{
	(void)state;
	expect_error("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
		     "fffffffffffffffff\r\n",
		     -EBADMSG, 400);
}

static void test_keep_alive_semantics(void **state)
{
	static const struct {
		const char *msg;
		int keep_alive;
	} cases[] = {
		{ "GET / HTTP/1.1\r\nHost: h\r\n\r\n", 1 },
		{ "GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", 0 },
		{ "GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, Close\r\n\r\n", 0 },
		{ "GET / HTTP/1.0\r\n\r\n", 0 },
		{ "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", 1 },
	};

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct egd_http_parser *p = req_parser();

		assert_int_equal(parse_str(p, cases[i].msg), EGD_HTTP_DONE);
		assert_int_equal(egd_http_parser_msg(p)->keep_alive, cases[i].keep_alive);
		egd_http_parser_destroy(p);
	}
}

static void test_http11_needs_exactly_one_host(void **state)
{
	(void)state;
	expect_error("GET / HTTP/1.1\r\n\r\n", -EBADMSG, 400);
	expect_error("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", -EBADMSG, 400);
}

static void test_whitespace_before_colon_rejected(void **state)
{
	(void)state;
	expect_error("GET / HTTP/1.1\r\nHost : h\r\n\r\n", -EBADMSG, 400);
}

static void test_bare_lf_rejected(void **state)
{
	(void)state;
	expect_error("GET / HTTP/1.1\nHost: h\n\n", -EBADMSG, 400);
	expect_error("GET / HTTP/1.1\r\nHost: h\n\r\n", -EBADMSG, 400);
}

static void test_control_character_in_value_rejected(void **state)
{
	const char msg[] = "GET / HTTP/1.1\r\nHost: h\r\nX: a\0b\r\n\r\n";
	struct egd_http_parser *p = req_parser();

	(void)state;
	assert_int_equal(feed(p, msg, sizeof(msg) - 1, 4096, NULL), -EBADMSG);
	egd_http_parser_destroy(p);
}

static void test_unsupported_version_is_505(void **state)
{
	(void)state;
	expect_error("PRI * HTTP/2.0\r\n\r\n", -EPROTONOSUPPORT, 505);
}

static void test_transfer_encoding_on_http10_rejected(void **state)
{
	(void)state;
	expect_error("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", -EBADMSG, 400);
}

static void test_truncated_request_at_eof(void **state)
{
	struct egd_http_parser *p = req_parser();

	(void)state;
	assert_int_equal(parse_str(p, "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 9\r\n\r\nab"),
			 EGD_HTTP_MORE);
	assert_int_equal(egd_http_parse_eof(p), -EBADMSG);
	egd_http_parser_destroy(p);
}

static void test_response_with_content_length(void **state)
{
	struct egd_http_parser *p = egd_http_parser_new(EGD_HTTP_RESPONSE, MAX_BODY);
	const struct egd_http_msg *m;

	(void)state;
	assert_int_equal(parse_str(p, "HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}"),
			 EGD_HTTP_DONE);
	m = egd_http_parser_msg(p);
	assert_int_equal(m->status, 404);
	assert_string_equal(m->reason, "Not Found");
	assert_int_equal(m->body_len, 2);
	egd_http_parser_destroy(p);
}

static void test_response_until_eof(void **state)
{
	struct egd_http_parser *p = egd_http_parser_new(EGD_HTTP_RESPONSE, MAX_BODY);
	const struct egd_http_msg *m;

	(void)state;
	assert_int_equal(parse_str(p, "HTTP/1.0 200 OK\r\n\r\npartial"), EGD_HTTP_MORE);
	assert_int_equal(egd_http_parse_eof(p), EGD_HTTP_DONE);
	m = egd_http_parser_msg(p);
	assert_int_equal(m->until_eof, 1);
	assert_int_equal(m->keep_alive, 0);
	assert_memory_equal(m->body, "partial", 7);
	egd_http_parser_destroy(p);
}

static void test_response_204_and_head_have_no_body(void **state)
{
	struct egd_http_parser *p = egd_http_parser_new(EGD_HTTP_RESPONSE, MAX_BODY);

	(void)state;
	assert_int_equal(parse_str(p, "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"),
			 EGD_HTTP_DONE);
	egd_http_parser_reset(p);
	egd_http_parser_expect_no_body(p);
	assert_int_equal(parse_str(p, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"),
			 EGD_HTTP_DONE);
	egd_http_parser_destroy(p);
}

struct collect {
	char buf[256];
	size_t len;
	int calls;
};

static int collect_cb(void *ctx, const uint8_t *data, size_t len)
{
	struct collect *c = ctx;

	memcpy(c->buf + c->len, data, len);
	c->len += len;
	c->calls++;
	return 0;
}

static void test_streamed_chunked_response_via_callback(void **state)
{
	const char msg[] = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
			   "6\r\ndata: \r\n3\r\n1\n\n\r\n0\r\n\r\n";
	struct egd_http_parser *p = egd_http_parser_new(EGD_HTTP_RESPONSE, MAX_BODY);
	struct collect c = { 0 };

	(void)state;
	egd_http_parser_set_body_cb(p, collect_cb, &c);
	assert_int_equal(feed(p, msg, strlen(msg), 3, NULL), EGD_HTTP_DONE);
	assert_int_equal(c.len, 9);
	assert_memory_equal(c.buf, "data: 1\n\n", 9);
	assert_true(c.calls >= 2);
	assert_int_equal(egd_http_parser_msg(p)->body_len, 0);
	egd_http_parser_destroy(p);
}

static void test_detail_response_parses_back(void **state)
{
	struct egd_http_parser *p = egd_http_parser_new(EGD_HTTP_RESPONSE, MAX_BODY);
	const struct egd_http_msg *m;
	size_t len, used;
	char *s = egd_http_response_detail(403, "Path '/x' is not allowed", 1, &len);

	(void)state;
	assert_non_null(s);
	assert_int_equal(feed(p, s, len, len, &used), EGD_HTTP_DONE);
	assert_int_equal(used, len);
	m = egd_http_parser_msg(p);
	assert_int_equal(m->status, 403);
	assert_string_equal(egd_http_header_get(m, "Content-Type"), "application/json");
	assert_string_equal((const char *)m->body, "{\"detail\":\"Path '/x' is not allowed\"}");
	assert_int_equal(m->keep_alive, 1);
	free(s);
	egd_http_parser_destroy(p);
}

static void test_chunk_encoder_round_trip(void **state)
{
	struct egd_http_parser *p = egd_http_parser_new(EGD_HTTP_RESPONSE, MAX_BODY);
	char msg[512], head[EGD_HTTP_CHUNK_HDR_MAX_BYTES];
	size_t n, len, used;
	char *chunk, *h;

	(void)state;
	h = egd_http_response_head_chunked(200, "text/event-stream", 1, &len);
	assert_non_null(h);
	memcpy(msg, h, len);
	n = len;
	free(h);
	chunk = egd_http_chunk_encode("data: x\n\n", 9, &len);
	memcpy(msg + n, chunk, len);
	n += len;
	free(chunk);
	assert_int_equal(egd_http_chunk_head(head, 0x1234), 6);
	assert_string_equal(head, "1234\r\n");
	memcpy(msg + n, EGD_HTTP_CHUNK_LAST, strlen(EGD_HTTP_CHUNK_LAST));
	n += strlen(EGD_HTTP_CHUNK_LAST);
	assert_int_equal(feed(p, msg, n, n, &used), EGD_HTTP_DONE);
	assert_int_equal(used, n);
	assert_memory_equal(egd_http_parser_msg(p)->body, "data: x\n\n", 9);
	egd_http_parser_destroy(p);
}

static void test_request_builder_round_trip(void **state)
{
	const struct egd_http_header hdrs[] = {
		{ "Authorization", "Bearer k" },
		{ "Content-Type", "application/json" },
	};
	struct egd_http_parser *p = req_parser();
	const struct egd_http_msg *m;
	size_t len;
	char *s = egd_http_request("POST", "openrouter.ai", "/api/v1/embeddings", hdrs, 2, "{}", 2,
				   &len);

	(void)state;
	assert_non_null(s);
	assert_int_equal(feed(p, s, len, len, NULL), EGD_HTTP_DONE);
	m = egd_http_parser_msg(p);
	assert_string_equal(m->target, "/api/v1/embeddings");
	assert_string_equal(egd_http_header_get(m, "Host"), "openrouter.ai");
	assert_string_equal(egd_http_header_get(m, "Authorization"), "Bearer k");
	assert_memory_equal(m->body, "{}", 2);
	free(s);
	egd_http_parser_destroy(p);
}

static void test_request_builder_refuses_header_injection(void **state)
{
	const struct egd_http_header hdrs[] = { { "Authorization", "Bearer k\r\nX-Evil: 1" } };
	size_t len;

	(void)state;
	errno = 0;
	assert_null(egd_http_request("POST", "h", "/", hdrs, 1, "", 0, &len));
	assert_int_equal(errno, EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_get_request_line_and_headers),
		cmocka_unit_test(test_post_content_length_body),
		cmocka_unit_test(test_chunked_body_with_extension_and_trailer),
		cmocka_unit_test(test_chunked_same_result_at_every_split),
		cmocka_unit_test(test_chunked_byte_by_byte),
		cmocka_unit_test(test_pipelined_requests_consumed_in_order),
		cmocka_unit_test(test_leading_empty_lines_ignored),
		cmocka_unit_test(test_obs_fold_rejected),
		cmocka_unit_test(test_content_length_with_transfer_encoding_rejected),
		cmocka_unit_test(test_duplicate_content_length_rejected),
		cmocka_unit_test(test_conflicting_content_length_list_rejected),
		cmocka_unit_test(test_malformed_content_length_rejected),
		cmocka_unit_test(test_unknown_transfer_coding_is_501),
		cmocka_unit_test(test_headers_over_limit_are_431),
		cmocka_unit_test(test_content_length_over_limit_is_413),
		cmocka_unit_test(test_chunked_over_limit_is_413),
		cmocka_unit_test(test_chunk_size_overflow_rejected),
		cmocka_unit_test(test_keep_alive_semantics),
		cmocka_unit_test(test_http11_needs_exactly_one_host),
		cmocka_unit_test(test_whitespace_before_colon_rejected),
		cmocka_unit_test(test_bare_lf_rejected),
		cmocka_unit_test(test_control_character_in_value_rejected),
		cmocka_unit_test(test_unsupported_version_is_505),
		cmocka_unit_test(test_transfer_encoding_on_http10_rejected),
		cmocka_unit_test(test_truncated_request_at_eof),
		cmocka_unit_test(test_response_with_content_length),
		cmocka_unit_test(test_response_until_eof),
		cmocka_unit_test(test_response_204_and_head_have_no_body),
		cmocka_unit_test(test_streamed_chunked_response_via_callback),
		cmocka_unit_test(test_detail_response_parses_back),
		cmocka_unit_test(test_chunk_encoder_round_trip),
		cmocka_unit_test(test_request_builder_round_trip),
		cmocka_unit_test(test_request_builder_refuses_header_injection),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
