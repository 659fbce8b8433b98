/* SPDX-License-Identifier: MIT */
/*
 * The intercept-address table: entries are found until they expire, a
 * refresh keeps the later expiry, v4-mapped spellings find the IPv4 entry,
 * the sink sees every add, and a full table stays bounded and keeps the
 * entries that expire last.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <arpa/inet.h>

#include <cmocka.h>

#include "egress/icaddr.h"

static struct egd_ip v4(uint32_t host_order)
{
	struct egd_ip ip = { .family = EGD_AF_INET };

	ip.addr[0] = htonl(host_order);
	return ip;
}

struct sink {
	int calls;
	struct egd_ip last;
	uint64_t last_exp;
	int fail;
};

static int put(void *arg, const struct egd_ip *ip, uint64_t expires_ns)
{
	struct sink *s = arg;

	s->calls++;
	s->last = *ip;
	s->last_exp = expires_ns;
	return s->fail;
}

static void test_add_lookup_expire(void **state)
{
	struct egd_icaddr_table *t = egd_icaddr_new();
	struct egd_ip a = v4(0xc6336407), b = v4(0xc6336408);
	char host[64];

	(void)state;
	assert_non_null(t);
	assert_int_equal(egd_icaddr_add(t, &a, "openrouter.ai", 1000), 0);
	assert_int_equal(egd_icaddr_lookup(t, &a, 999, host, sizeof(host)), 1);
	assert_string_equal(host, "openrouter.ai");
	assert_int_equal(egd_icaddr_lookup(t, &a, 1000, NULL, 0), 0); /* expired */
	assert_int_equal(egd_icaddr_lookup(t, &b, 0, NULL, 0), 0);
	/* A refresh with an earlier expiry keeps the later one. */
	assert_int_equal(egd_icaddr_add(t, &a, "openrouter.ai", 500), 0);
	assert_int_equal(egd_icaddr_lookup(t, &a, 900, NULL, 0), 1);
	assert_int_equal(egd_icaddr_add(t, &a, "openrouter.ai", 2000), 0);
	assert_int_equal(egd_icaddr_lookup(t, &a, 1500, NULL, 0), 1);
	assert_int_equal(egd_icaddr_count(t), 1);
	assert_int_equal(egd_icaddr_expire(t, 2000), 0);
	assert_int_equal(egd_icaddr_lookup(t, &a, 0, NULL, 0), 0);
	egd_icaddr_free(t);
}

static void test_v4_mapped(void **state)
{
	struct egd_icaddr_table *t = egd_icaddr_new();
	struct egd_ip a = v4(0xc6336407), m;
	struct egd_addr mapped = { .family = EGD_AF_INET6 };

	(void)state;
	assert_int_equal(egd_icaddr_add(t, &a, "openrouter.ai", 1000), 0);
	assert_int_equal(inet_pton(AF_INET6, "::ffff:198.51.100.7", mapped.addr), 1);
	egd_ip_from_addr(&m, &mapped);
	assert_int_equal(m.family, EGD_AF_INET);
	assert_int_equal(egd_icaddr_lookup(t, &m, 0, NULL, 0), 1);
	egd_icaddr_free(t);
}

static void test_sink(void **state)
{
	struct egd_icaddr_table *t = egd_icaddr_new();
	struct egd_ip a = v4(1);
	struct sink s = { 0 };

	(void)state;
	egd_icaddr_set_sink(t, put, &s);
	assert_int_equal(egd_icaddr_add(t, &a, "h", 77), 0);
	assert_int_equal(s.calls, 1);
	assert_memory_equal(&s.last, &a, sizeof(a));
	assert_int_equal(s.last_exp, 77);
	s.fail = -5;
	assert_int_equal(egd_icaddr_add(t, &a, "h", 99), -5);
	assert_int_equal(egd_icaddr_sink_errors(t), 1);
	/* The table keeps the entry even when the sink failed. */
	assert_int_equal(egd_icaddr_lookup(t, &a, 98, NULL, 0), 1);
	egd_icaddr_free(t);
}

static void test_full_table_bounded(void **state)
{
	struct egd_icaddr_table *t = egd_icaddr_new();
	struct egd_ip keep = v4(0xffffff00), first = v4(0x0a000000);
	/* Expiries an hour from now: a full table must evict, not expire. */
	uint64_t base = egd_icaddr_now_ns() + 3600ull * 1000000000ull;

	(void)state;
	/* Long-lived entry first, then many short ones, several times over
	 * the capacity: the count never passes it and the long one stays. */
	assert_int_equal(egd_icaddr_add(t, &keep, "keep", UINT64_MAX), 0);
	for (uint32_t i = 0; i < 3 * EGD_ICADDR_MAX_ENTRIES; i++) {
		struct egd_ip ip = v4(0x0a000000 + i);

		assert_int_equal(egd_icaddr_add(t, &ip, "x", base + i), 0);
		assert_true(egd_icaddr_count(t) <= EGD_ICADDR_MAX_ENTRIES);
	}
	assert_int_equal(egd_icaddr_count(t), EGD_ICADDR_MAX_ENTRIES);
	assert_int_equal(egd_icaddr_lookup(t, &keep, 10, NULL, 0), 1);
	/* The soonest to expire went first. */
	assert_int_equal(egd_icaddr_lookup(t, &first, 0, NULL, 0), 0);
	/* The most recent (latest expiry) entries are still there. */
	{
		struct egd_ip last = v4(0x0a000000 + 3 * EGD_ICADDR_MAX_ENTRIES - 1);

		assert_int_equal(egd_icaddr_lookup(t, &last, 0, NULL, 0), 1);
	}
	/* Expiry at a time between leaves only what expires later. */
	assert_int_equal(egd_icaddr_expire(t, base + 3 * EGD_ICADDR_MAX_ENTRIES), 1);
	egd_icaddr_free(t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_add_lookup_expire),
		cmocka_unit_test(test_v4_mapped),
		cmocka_unit_test(test_sink),
		cmocka_unit_test(test_full_table_bounded),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
