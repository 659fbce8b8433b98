/* SPDX-License-Identifier: MIT */
/*
 * The decision log writes common lines by hand to spare a JSON tree per
 * connection; this checks they are byte for byte what jansson writes, and
 * that strings needing escapes still come out as valid JSON.
 */
#include <arpa/inet.h>
#include <jansson.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/log.h"
#include "egress/daemon.h"

/* Log @r and return the one line it produced (caller frees). */
static char *log_line(const struct egd_audit_rec *r)
{
	FILE *f = tmpfile();
	char *line = NULL;
	size_t cap = 0;

	assert_non_null(f);
	egd_audit_set_stream(f);
	egd_audit(r);
	egd_audit_flush();
	rewind(f);
	assert_true(getline(&line, &cap, f) > 0);
	fclose(f);
	return line;
}

static struct egd_addr v4(const char *ip, uint16_t port)
{
	struct egd_addr a = { .family = EGD_AF_INET, .port = htons(port) };

	inet_pton(AF_INET, ip, a.addr);
	return a;
}

static void test_fast_line_is_what_jansson_writes(void **state)
{
	struct egd_addr src = v4("127.0.0.1", 40000), dst = v4("198.51.100.1", 443);
	struct egd_audit_rec r = {
		.event = "close", .phase = EGD_PHASE_VERIFICATION, .cgroup_id = 4242,
		.src = &src, .dst = &dst, .proto = EGD_PROTO_TLS, .host = "example.com",
		.verdict = EGD_VERDICT_TUNNEL, .reason = EGD_REASON_VERIFICATION,
		.detail = "eof", .has_totals = 1, .bytes_up = 718, .bytes_down = 6525,
		.duration_ms = 44,
	};
	char *line = log_line(&r), *want;
	json_t *o = json_loads(line, 0, NULL), *ts;

	(void)state;
	assert_non_null(o);
	/* Rebuild the object in the documented field order with the line's own
	 * timestamp, and let jansson write it. */
	ts = json_object_get(o, "ts");
	assert_non_null(ts);
	json_t *ref = json_pack("{s:O, s:s, s:s, s:I, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:I, s:I, "
				"s:I}",
				"ts", ts, "event", "close", "phase", "verification", "cgroup",
				(json_int_t)4242, "src", "127.0.0.1:40000", "dst",
				"198.51.100.1:443", "proto", "tls", "host", "example.com",
				"verdict", "tunnel", "reason", "verification", "detail", "eof",
				"bytes_up", (json_int_t)718, "bytes_down", (json_int_t)6525,
				"duration_ms", (json_int_t)44);
	want = json_dumps(ref, JSON_COMPACT | JSON_ENSURE_ASCII);
	assert_non_null(want);
	line[strcspn(line, "\n")] = '\0';
	assert_string_equal(line, want);
	free(want);
	json_decref(ref);
	json_decref(o);
	free(line);
}

static void test_strings_needing_escapes_stay_valid_json(void **state)
{
	struct egd_addr src = v4("127.0.0.1", 1), dst = v4("192.0.2.1", 80);
	struct egd_audit_rec r = {
		.event = "decision", .src = &src, .dst = &dst, .proto = EGD_PROTO_HTTP,
		.host = "", .verdict = EGD_VERDICT_DENY, .reason = EGD_REASON_MALFORMED,
		.detail = "bad \"quoted\"\ttab\x01",
	};
	char *line = log_line(&r);
	json_t *o = json_loads(line, 0, NULL);

	(void)state;
	assert_non_null(o);
	assert_string_equal(json_string_value(json_object_get(o, "detail")),
			    "bad \"quoted\"\ttab\x01");
	json_decref(o);
	free(line);
}

/* The kernel's refusals: one valid JSON line with the counter and count. */
static void test_kernel_line(void **state)
{
	FILE *f = tmpfile();
	char *line = NULL;
	size_t cap = 0;
	json_t *o;

	(void)state;
	assert_non_null(f);
	egd_audit_set_stream(f);
	egd_audit_kernel(EGD_PHASE_AGENT, "backstop_dropped", 12);
	egd_audit_flush();
	rewind(f);
	assert_true(getline(&line, &cap, f) > 0);
	fclose(f);
	o = json_loads(line, 0, NULL);
	assert_non_null(o);
	assert_string_equal(json_string_value(json_object_get(o, "event")), "kernel");
	assert_string_equal(json_string_value(json_object_get(o, "phase")), "agent");
	assert_string_equal(json_string_value(json_object_get(o, "counter")), "backstop_dropped");
	assert_int_equal(json_integer_value(json_object_get(o, "count")), 12);
	assert_non_null(json_string_value(json_object_get(o, "ts")));
	json_decref(o);
	free(line);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_fast_line_is_what_jansson_writes),
		cmocka_unit_test(test_strings_needing_escapes_stay_valid_json),
		cmocka_unit_test(test_kernel_line),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
