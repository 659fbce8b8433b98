/* SPDX-License-Identifier: MIT */
/*
 * The SSE scanner and response accounting: events assembled as the spec
 * says whatever the chunking, usage taken from the final chunk, comments and
 * [DONE] seen but untouched, errors noticed, memory bounded.
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

#include "proxy/sse.h"
#include "proxy/usage.h"

/* A stream as OpenRouter sends it: a keep-alive comment, two deltas, the
 * usage chunk, then [DONE]. */
static const char stream[] =
	": OPENROUTER PROCESSING\n\n"
	"data: {\"id\":\"gen-1\",\"model\":\"openai/gpt-4o-mini\",\"provider\":\"OpenAI\","
	"\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n"
	"data: {\"id\":\"gen-1\",\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\r\n\r\n"
	"data: {\"id\":\"gen-1\",\"model\":\"openai/gpt-4o-mini\",\"choices\":[],"
	"\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":2,\"cost\":0.0000042}}\n\n"
	"data: [DONE]\n\n";

struct log {
	char text[8192];
	size_t len;
};

static void log_event(void *ctx, const struct egd_sse_event *ev)
{
	struct log *l = ctx;

	l->len += (size_t)snprintf(l->text + l->len, sizeof(l->text) - l->len, "%s|%s;", ev->type,
				   ev->data);
}

static void scan(const char *s, size_t len, size_t cut, struct log *log,
		 struct egd_sse_summary *out)
{
	struct egd_sse *sse = egd_sse_new(log_event, log);

	assert_non_null(sse);
	assert_int_equal(egd_sse_feed(sse, (const uint8_t *)s, cut), 0);
	assert_int_equal(egd_sse_feed(sse, (const uint8_t *)s + cut, len - cut), 0);
	*out = *egd_sse_summary(sse);
	egd_sse_destroy(sse);
}

static void test_usage_from_final_chunk(void **state)
{
	struct egd_sse_summary s;
	struct log log = { 0 };

	(void)state;
	scan(stream, strlen(stream), strlen(stream), &log, &s);
	assert_int_equal(s.usage.has_cost, 1);
	assert_true(s.usage.cost_usd == 0.0000042);
	assert_int_equal(s.usage.prompt_tokens, 11);
	assert_int_equal(s.usage.completion_tokens, 2);
	assert_string_equal(s.usage.model, "openai/gpt-4o-mini");
	assert_string_equal(s.usage.provider, "OpenAI");
	assert_string_equal(s.usage.generation_id, "gen-1");
	assert_int_equal(s.error, 0);
}

static void test_comments_and_done_seen(void **state)
{
	struct egd_sse_summary s;
	struct log log = { 0 };

	(void)state;
	scan(stream, strlen(stream), strlen(stream), &log, &s);
	assert_int_equal(s.comments, 1);
	assert_int_equal(s.done, 1);
	assert_int_equal(s.events, 4);
	/* [DONE] is an ordinary event to the relay: it is reported too. */
	assert_non_null(strstr(log.text, "message|[DONE];"));
}

static void test_same_events_at_every_split(void **state)
{
	size_t len = strlen(stream);
	struct egd_sse_summary whole, s;
	struct log ref = { 0 };

	(void)state;
	scan(stream, len, len, &ref, &whole);
	for (size_t cut = 0; cut <= len; cut++) {
		struct log log = { 0 };

		scan(stream, len, cut, &log, &s);
		assert_string_equal(log.text, ref.text);
		assert_int_equal(s.events, whole.events);
		assert_int_equal(s.comments, whole.comments);
		assert_int_equal(s.done, 1);
		assert_true(s.usage.cost_usd == whole.usage.cost_usd);
		assert_int_equal(s.usage.completion_tokens, whole.usage.completion_tokens);
	}
}

static void test_byte_by_byte(void **state)
{
	struct egd_sse *sse;
	struct log log = { 0 };

	(void)state;
	sse = egd_sse_new(log_event, &log);
	for (size_t i = 0; i < strlen(stream); i++)
		assert_int_equal(egd_sse_feed(sse, (const uint8_t *)stream + i, 1), 0);
	assert_int_equal(egd_sse_summary(sse)->events, 4);
	assert_int_equal(egd_sse_summary(sse)->usage.prompt_tokens, 11);
	egd_sse_destroy(sse);
}

static void test_data_lines_joined(void **state)
{
	const char s[] = "event: update\ndata: a\ndata:b\ndata\nid: 7\nretry: 10\n\n";
	struct egd_sse_summary sum;
	struct log log = { 0 };

	(void)state;
	scan(s, strlen(s), 0, &log, &sum);
	assert_string_equal(log.text, "update|a\nb\n;");
}

static void test_cr_and_crlf_line_ends(void **state)
{
	const char s[] = "data: x\r\rdata: y\r\n\r\ndata: z\n\n";
	struct egd_sse_summary sum;
	struct log log = { 0 };

	(void)state;
	/* Cut between a CR and its LF: the LF must not end another line. */
	scan(s, strlen(s), strlen("data: x\r\rdata: y\r"), &log, &sum);
	assert_string_equal(log.text, "message|x;message|y;message|z;");
}

static void test_error_event_recorded(void **state)
{
	const char s[] = "data: {\"choices\":[{\"delta\":{}}]}\n\n"
			 "event: error\ndata: {\"error\":{\"message\":\"upstream overloaded\"}}\n\n";
	struct egd_sse_summary sum;
	struct log log = { 0 };

	(void)state;
	scan(s, strlen(s), 7, &log, &sum);
	assert_int_equal(sum.error, 1);
	assert_int_equal(sum.usage.has_error, 1);
	assert_string_equal(sum.usage.error, "upstream overloaded");
}

static void test_error_member_mid_stream_recorded(void **state)
{
	const char s[] = "data: {\"id\":\"g\",\"error\":{\"code\":502,\"message\":\"Provider "
			 "disconnected\"},\"choices\":[{\"finish_reason\":\"error\"}]}\n\n";
	struct egd_sse_summary sum;
	struct log log = { 0 };

	(void)state;
	scan(s, strlen(s), 0, &log, &sum);
	assert_int_equal(sum.error, 1);
	assert_string_equal(sum.usage.error, "Provider disconnected");
}

static void test_oversized_event_dropped_next_observed(void **state)
{
	size_t big = EGD_SSE_EVENT_MAX_BYTES + 10;
	char *s = malloc(big + 256);
	struct egd_sse *sse = egd_sse_new(NULL, NULL);
	size_t n;

	(void)state;
	memcpy(s, "data: ", 6);
	memset(s + 6, 'x', big);
	n = 6 + big;
	n += (size_t)sprintf(s + n, "\n\ndata: {\"usage\":{\"cost\":0.5}}\n\n");
	for (size_t off = 0; off < n; off += 4096)
		assert_int_equal(egd_sse_feed(sse, (const uint8_t *)s + off,
					      n - off < 4096 ? n - off : 4096),
				 0);
	assert_int_equal(egd_sse_summary(sse)->dropped_events, 1);
	assert_int_equal(egd_sse_summary(sse)->events, 1);
	assert_true(egd_sse_summary(sse)->usage.cost_usd == 0.5);
	egd_sse_destroy(sse);
	free(s);
}

static void test_unterminated_event_discarded_at_finish(void **state)
{
	const char s[] = "data: {\"usage\":{\"cost\":1}}\n";
	struct egd_sse *sse = egd_sse_new(NULL, NULL);

	(void)state;
	egd_sse_feed(sse, (const uint8_t *)s, strlen(s));
	egd_sse_finish(sse);
	assert_int_equal(egd_sse_summary(sse)->events, 0);
	assert_int_equal(egd_sse_summary(sse)->usage.has_cost, 0);
	egd_sse_destroy(sse);
}

/* ---- non-streaming response accounting ----------------------------------- */

static void test_response_body_accounting(void **state)
{
	const char body[] = "{\"id\":\"gen-9\",\"model\":\"anthropic/claude-3.5-sonnet\","
			    "\"provider\":\"Anthropic\",\"choices\":[],\"usage\":{\"prompt_tokens\":"
			    "100,\"completion_tokens\":50,\"total_tokens\":150,\"cost\":0.001}}";
	struct egd_usage u;

	(void)state;
	assert_int_equal(egd_usage_from_body(body, strlen(body), &u), 0);
	assert_int_equal(u.has_cost, 1);
	assert_true(u.cost_usd == 0.001);
	assert_int_equal(u.prompt_tokens, 100);
	assert_int_equal(u.completion_tokens, 50);
	assert_string_equal(u.model, "anthropic/claude-3.5-sonnet");
	assert_string_equal(u.provider, "Anthropic");
	assert_string_equal(u.generation_id, "gen-9");
}

static void test_response_body_without_usage(void **state)
{
	const char body[] = "{\"error\":{\"message\":\"No endpoints found\",\"code\":404}}";
	struct egd_usage u;

	(void)state;
	assert_int_equal(egd_usage_from_body(body, strlen(body), &u), 0);
	assert_int_equal(u.has_cost, 0);
	assert_int_equal(u.has_error, 1);
	assert_string_equal(u.error, "No endpoints found");
}

static void test_response_body_not_json(void **state)
{
	struct egd_usage u;

	(void)state;
	assert_int_equal(egd_usage_from_body("<html>", 6, &u), -EBADMSG);
	assert_int_equal(u.has_cost, 0);
}

static void test_negative_cost_ignored(void **state)
{
	const char body[] = "{\"usage\":{\"cost\":-1,\"prompt_tokens\":-3}}";
	struct egd_usage u;

	(void)state;
	assert_int_equal(egd_usage_from_body(body, strlen(body), &u), 0);
	assert_int_equal(u.has_cost, 0);
	assert_int_equal(u.prompt_tokens, 0);
}

/* The answer scanner and the whole-text jansson parse agree, and the
 * scanner really reads the common answers itself (else it would be dead
 * weight that the agreement alone could not reveal). */
static void test_usage_scanner_agrees_with_jansson(void **state)
{
	static const struct {
		const char *body;
		int scannable;
	} cases[] = {
		{ "{\"id\":\"gen-1\",\"provider\":\"OpenAI\",\"model\":\"openai/gpt-4o\","
		  "\"choices\":[{\"message\":{\"role\":\"assistant\",\"content\":\"Hi \\\"there\\\" "
		  "\\u00e9 caf\xc3\xa9 \\n\"}}],\"usage\":{\"prompt_tokens\":12,"
		  "\"completion_tokens\":3,\"cost\":0.000123}}",
		  1 },
		{ " {\"error\":{\"message\":\"Provider returned error\",\"code\":429}} \n", 1 },
		{ "{\"error\":{\"code\":500}}", 1 },
		{ "{\"usage\":{\"cost\":1},\"usage\":{\"cost\":2.5E+1},\"model\":[\"a\"],\"id\":null}",
		  1 },
		{ "{}", 1 },
		{ "{\"usage\":{\"cost\":\"0.5\",\"prompt_tokens\":12.0,\"completion_tokens\":-3},"
		  "\"error\":null,\"model\":5}",
		  1 },
		{ "{\"usage\":{\"cost\":-0.0,\"cost\":7,\"prompt_tokens\":1,\"prompt_tokens\":2}}", 1 },
		{ "{\"usage\":{\"co\\u0073t\":0.5},\"model\":\"m\\/x\"}", 1 },
		{ "{\"usage\":[1],\"id\":\"gen\"}", 1 },
		{ "{\"x\":[1,-0,0.5e-3,true,false,null,{},[]],\"usage\":{\"cost\":-1}}", 1 },
		/* An escaped name could spell "usage": jansson reads it. */
		{ "{\"us\\u0061ge\":{\"cost\":0.5}}", 0 },
		{ "{\"model\":\"a\\u0000b\"}", 0 },
		{ "{\"usage\":{\"cost\":0.5,\"prompt_tokens\":123456789012345678901}}", 0 },
		{ "{\"usage\":{\"cost\":1e999}}", 0 },
		{ "{\"a\":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}",
		  0 },
		{ "{\"model\":\"\\ud83d\\ude00\"}", 0 },
		{ "{\"a\":1,}", 0 },
		{ "{\"a\":01}", 0 },
		{ "{\"a\":\"\xed\xa0\x80\"}", 0 },
		{ "{\"a\":\"\xc0\xaf\"}", 0 },
		{ "{\"a\":1} x", 0 },
		{ "[1]", 0 },
		{ "<html>", 0 },
		{ "", 0 },
	};

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const char *b = cases[i].body;
		struct egd_usage fast, full;
		int rf = egd_usage_from_body(b, strlen(b), &fast);
		int rj = egd_usage_from_body_full(b, strlen(b), &full);

		print_message("case %zu\n", i);
		assert_int_equal(egd_usage_scannable(b, strlen(b)), cases[i].scannable);
		assert_int_equal(rf, rj);
		assert_int_equal(fast.has_cost, full.has_cost);
		assert_true(fast.cost_usd == full.cost_usd);
		assert_int_equal(fast.prompt_tokens, full.prompt_tokens);
		assert_int_equal(fast.completion_tokens, full.completion_tokens);
		assert_string_equal(fast.model, full.model);
		assert_string_equal(fast.provider, full.provider);
		assert_string_equal(fast.generation_id, full.generation_id);
		assert_int_equal(fast.has_error, full.has_error);
		assert_string_equal(fast.error, full.error);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_usage_scanner_agrees_with_jansson),
		cmocka_unit_test(test_usage_from_final_chunk),
		cmocka_unit_test(test_comments_and_done_seen),
		cmocka_unit_test(test_same_events_at_every_split),
		cmocka_unit_test(test_byte_by_byte),
		cmocka_unit_test(test_data_lines_joined),
		cmocka_unit_test(test_cr_and_crlf_line_ends),
		cmocka_unit_test(test_error_event_recorded),
		cmocka_unit_test(test_error_member_mid_stream_recorded),
		cmocka_unit_test(test_oversized_event_dropped_next_observed),
		cmocka_unit_test(test_unterminated_event_discarded_at_finish),
		cmocka_unit_test(test_response_body_accounting),
		cmocka_unit_test(test_response_body_without_usage),
		cmocka_unit_test(test_response_body_not_json),
		cmocka_unit_test(test_negative_cost_ignored),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
