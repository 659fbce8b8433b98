/* SPDX-License-Identifier: MIT */
/*
 * The kernel side's lists: always-deny prefixes (v4 kept v4-mapped, so one
 * trie answers for v4, v6 and v4-mapped destinations), the defaults always
 * first, loopback port lists and the policy DNS port. The list grammar is
 * nft mode's (test_nft covers it); these check what the BPF side makes of it.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "datapath/rules.h"

/* The key a v4 prefix must become: ::ffff:ADDR / 96+LEN. */
static void assert_v4_key(const struct egd_lpm_key *k, const char *addr, unsigned int len)
{
	struct in_addr a;

	assert_int_equal(inet_pton(AF_INET, addr, &a), 1);
	assert_int_equal(k->prefixlen, 96 + len);
	assert_int_equal(k->addr[0], 0);
	assert_int_equal(k->addr[1], 0);
	assert_int_equal(k->addr[2], htonl(0x0000ffff));
	assert_int_equal(k->addr[3], a.s_addr);
}

static void test_cidr_forms(void **state)
{
	struct egd_lpm_key k[4];
	struct in6_addr a6;

	(void)state;
	assert_int_equal(egd_parse_cidr_list("10.0.0.0/8, 192.0.2.7 ,fd00:ec2::254/128", k, 4), 3);
	assert_v4_key(&k[0], "10.0.0.0", 8);
	assert_v4_key(&k[1], "192.0.2.7", 32); /* an address alone is a host */
	assert_int_equal(k[2].prefixlen, 128);
	inet_pton(AF_INET6, "fd00:ec2::254", &a6);
	assert_memory_equal(k[2].addr, &a6, 16);
	assert_int_equal(egd_parse_cidr_list("", k, 4), 0);
	assert_int_equal(egd_parse_cidr_list(NULL, k, 4), 0);
	assert_int_equal(egd_parse_cidr_list("0.0.0.0/0", k, 4), 1);
	assert_int_equal(k[0].prefixlen, 96);
	/* Written v4-mapped, a v4 prefix is the same key. */
	assert_int_equal(egd_parse_cidr_list("::ffff:10.0.0.0/104", k, 4), 1);
	assert_v4_key(&k[0], "10.0.0.0", 8);
}

/* The grammar is nft mode's (egd_nft_parse_cidrs): a bad item is refused
 * here as it is there, and the count limit holds. */
static void test_cidr_bad_forms_refused(void **state)
{
	static const char *const bad[] = {
		"10.0.0.0/33", "fe80::/129", "10.0.0.256", "host.example", "10.0.0.1/8",
	};
	struct egd_lpm_key k[4];

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_int_equal(egd_parse_cidr_list(bad[i], k, 4), -EINVAL);
	assert_int_equal(egd_parse_cidr_list("10.0.0.0/8,10.1.0.0/16,10.2.0.0/16", k, 2), -E2BIG);
}

static void test_deny_defaults_come_first_and_stay(void **state)
{
	struct egd_lpm_key k[EGD_DENY_MAX_ENTRIES];
	int n_def, n;

	(void)state;
	n_def = egd_deny_cidrs(NULL, k, EGD_DENY_MAX_ENTRIES);
	assert_int_equal(n_def, 8);
	assert_v4_key(&k[0], "169.254.0.0", 16);
	assert_v4_key(&k[3], "100.100.100.200", 32);
	assert_v4_key(&k[4], "0.0.0.0", 8);
	assert_v4_key(&k[5], "224.0.0.0", 4);
	assert_v4_key(&k[7], "255.255.255.255", 32);
	/* The operator's list extends the defaults; it never replaces them. */
	n = egd_deny_cidrs("10.96.0.1/32", k, EGD_DENY_MAX_ENTRIES);
	assert_int_equal(n, n_def + 1);
	assert_v4_key(&k[0], "169.254.0.0", 16);
	assert_v4_key(&k[n_def], "10.96.0.1", 32);
	assert_int_equal(egd_deny_cidrs("", k, EGD_DENY_MAX_ENTRIES), n_def);
	assert_int_equal(egd_deny_cidrs("nope", k, EGD_DENY_MAX_ENTRIES), -EINVAL);
	assert_int_equal(egd_deny_cidrs("10.0.0.0/8", k, (size_t)n_def), -E2BIG);
}

static void test_port_lists(void **state)
{
	uint16_t p[3];

	(void)state;
	assert_int_equal(egd_parse_port_list("", p, 3), 0);
	assert_int_equal(egd_parse_port_list(NULL, p, 3), 0);
	assert_int_equal(egd_parse_port_list("8080, 1,65535", p, 3), 3);
	assert_int_equal(p[0], 8080);
	assert_int_equal(p[1], 1);
	assert_int_equal(p[2], 65535);
	assert_int_equal(egd_parse_port_list("0", p, 3), -EINVAL);
	assert_int_equal(egd_parse_port_list("65536", p, 3), -EINVAL);
	assert_int_equal(egd_parse_port_list("http", p, 3), -EINVAL);
	assert_int_equal(egd_parse_port_list("1,2,3,4", p, 3), -E2BIG);
}

static void test_dns_listen_port(void **state)
{
	uint16_t port;

	(void)state;
	assert_int_equal(egd_dns_listen_port(NULL, &port), 0);
	assert_int_equal(port, EGD_DEFAULT_DNS_PORT);
	assert_int_equal(egd_dns_listen_port("127.0.0.1:5353", &port), 0);
	assert_int_equal(port, 5353);
	assert_int_equal(egd_dns_listen_port("127.0.0.1:15053,[::1]:15053", &port), 0);
	assert_int_equal(port, 15053);
	assert_int_equal(egd_dns_listen_port("2053", &port), 0); /* a port alone: 127.0.0.1 */
	assert_int_equal(port, 2053);
	/* The kernel sends DNS to loopback at one port: anything else is a
	 * listener it could not reach. */
	assert_int_equal(egd_dns_listen_port("127.0.0.1:15053,[::1]:15054", &port), -EINVAL);
	assert_int_equal(egd_dns_listen_port("0.0.0.0:53", &port), -EINVAL);
	assert_int_equal(egd_dns_listen_port("[2001:db8::1]:53", &port), -EINVAL);
	assert_int_equal(egd_dns_listen_port("", &port), -EINVAL);
	assert_int_equal(egd_dns_listen_port("127.0.0.1:0", &port), -EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_cidr_forms),
		cmocka_unit_test(test_cidr_bad_forms_refused),
		cmocka_unit_test(test_deny_defaults_come_first_and_stay),
		cmocka_unit_test(test_port_lists),
		cmocka_unit_test(test_dns_listen_port),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
