/* SPDX-License-Identifier: MIT */
/*
 * Tests of the nftables fallback datapath. The builder's batch is parsed
 * back through libnftnl, without a kernel, and checked rule by rule. Then,
 * as root, the table goes into a network namespace this test creates (a
 * forked child unshares one; the machine's own namespace is never touched):
 * install, verify, phase flip, tampering caught by verify, removal. Last,
 * real traffic in that namespace: a "daemon" process and an "agent" process
 * in two throwaway cgroups, the agent's TCP to an outside address arriving
 * at the daemon's listener with its original destination, its UDP refused
 * until the phase flips, its direct dials to the listener refused.
 *
 * Without root, user namespaces, nf_tables or cgroup v2 the kernel tests are
 * skipped with the reason printed; they never pass silently.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter_ipv4.h>
#include <linux/netfilter_ipv6/ip6_tables.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <libmnl/libmnl.h>
#include <libnftnl/chain.h>
#include <libnftnl/expr.h>
#include <libnftnl/rule.h>
#include <libnftnl/set.h>

#include "datapath/nft.h"

#define LISTEN_PORT 15443
#define DNS_PORT 15053
#define ADMIN_PORT 15000
#define DAEMON_CGROUP_ID 4242ull
#define DAEMON_CGROUP_LEVEL 2
#define DAEMON_UID 999
/* EGRESSD_DENY_CIDRS and EGRESSD_LOOPBACK_ALLOW of the tests. */
#define OPERATOR_DENY4 "10.99.0.128/25"
#define OPERATOR_DENY6 "fd00:99::8000/113"
#define LOOPBACK_ALLOWED_PORT 8000

/* Rules in a parsed batch, and the text of one, with room to spare. */
#define PARSED_RULES_MAX 64
#define RULE_TEXT_BYTES 2048

/* A child reports why it failed or skipped in one message. */
#define CHILD_MSG_BYTES 1024
#define CHILD_SKIP 77

/* How long any one network operation may take before the test gives up:
 * everything here is local, so a second means it is not coming. */
#define IO_TIMEOUT_MS 1000

/* Addresses behind a veth in the test namespace: routable, never answered. */
#define OUTSIDE4 "10.99.0.2"
#define OUTSIDE6 "fd00:99::2"
#define OUTSIDE_PORT 80
#define QUIC_PORT 443

/* ------------------------------------------------------------------------
 * The batch, parsed back
 */

struct parsed {
	char chain[PARSED_RULES_MAX][32];
	char text[PARSED_RULES_MAX][RULE_TEXT_BYTES];
	uint32_t socket_level[PARSED_RULES_MAX];
	size_t n_rules;
	int msg_types[128];
	size_t n_msgs;
	struct nftnl_chain *chains[8];
	size_t n_chains;
	/* The phase map's one element. */
	uint32_t phase_verdict;
	char phase_chain[32];
	int phase_elems;
};

static struct parsed g_p;
static char g_buf[EGD_NFT_BATCH_MAX_BYTES];
static int g_len;

static void rule_to_text(struct nftnl_rule *r, char *out, size_t len, uint32_t *level)
{
	struct nftnl_expr_iter *it = nftnl_expr_iter_create(r);
	struct nftnl_expr *e;
	size_t off = 0;

	assert_non_null(it);
	*level = UINT32_MAX;
	out[0] = '\0';
	while ((e = nftnl_expr_iter_next(it))) {
		const char *name = nftnl_expr_get_str(e, NFTNL_EXPR_NAME);

		off += snprintf(out + off, len - off, "[%s ", name);
		assert_true(off < len);
		off += nftnl_expr_snprintf(out + off, len - off, e, NFTNL_OUTPUT_DEFAULT, 0);
		assert_true(off < len);
		off += snprintf(out + off, len - off, "] ");
		assert_true(off < len);
		if (!strcmp(name, "socket"))
			*level = nftnl_expr_get_u32(e, NFTNL_EXPR_SOCKET_LEVEL);
	}
	nftnl_expr_iter_destroy(it);
}

/*
 * libnftnl numbers the elements it builds 1, 2, 3 (the kernel ignores the
 * attribute type) but parses only elements typed NFTA_LIST_ELEM (1): retype
 * a copy so that a set of two or more elements parses back.
 */
static void parse_setelems(const struct nlmsghdr *orig, struct parsed *p)
{
	static char copy[EGD_NFT_BATCH_MAX_BYTES];
	struct nftnl_set *s = nftnl_set_alloc();
	struct nlmsghdr *nlh = (struct nlmsghdr *)copy;
	struct nftnl_set_elems_iter *it;
	struct nftnl_set_elem *e;
	struct nlattr *attr, *elem;

	assert_non_null(s);
	assert_true(orig->nlmsg_len <= sizeof(copy));
	memcpy(copy, orig, orig->nlmsg_len);
	mnl_attr_for_each (attr, nlh, sizeof(struct nfgenmsg))
		if (mnl_attr_get_type(attr) == NFTA_SET_ELEM_LIST_ELEMENTS)
			mnl_attr_for_each_nested (elem, attr)
				elem->nla_type = NLA_F_NESTED | NFTA_LIST_ELEM;
	assert_int_equal(nftnl_set_elems_nlmsg_parse(nlh, s), 0);
	if (strcmp(nftnl_set_get_str(s, NFTNL_SET_NAME), "phase") == 0) {
		it = nftnl_set_elems_iter_create(s);
		while ((e = nftnl_set_elems_iter_next(it))) {
			uint32_t klen;
			const uint32_t *key = nftnl_set_elem_get(e, NFTNL_SET_ELEM_KEY, &klen);

			assert_int_equal(klen, 4);
			assert_int_equal(*key, 0);
			p->phase_elems++;
			if (nftnl_set_elem_is_set(e, NFTNL_SET_ELEM_VERDICT))
				p->phase_verdict =
					nftnl_set_elem_get_u32(e, NFTNL_SET_ELEM_VERDICT);
			if (nftnl_set_elem_is_set(e, NFTNL_SET_ELEM_CHAIN))
				snprintf(p->phase_chain, sizeof(p->phase_chain), "%s",
					 nftnl_set_elem_get_str(e, NFTNL_SET_ELEM_CHAIN));
		}
		nftnl_set_elems_iter_destroy(it);
	}
	nftnl_set_free(s);
}

static void parse_batch(const void *buf, int len, struct parsed *p)
{
	const struct nlmsghdr *nlh;
	int left = len;
	size_t i;

	for (i = 0; i < p->n_chains; i++)
		nftnl_chain_free(p->chains[i]);
	memset(p, 0, sizeof(*p));
	assert_true(len > 0);
	for (nlh = buf; mnl_nlmsg_ok(nlh, left); nlh = mnl_nlmsg_next(nlh, &left)) {
		int type = nlh->nlmsg_type;

		if (NFNL_SUBSYS_ID(type) == NFNL_SUBSYS_NFTABLES)
			type = NFNL_MSG_TYPE(type);
		assert_true(p->n_msgs < sizeof(p->msg_types) / sizeof(p->msg_types[0]));
		p->msg_types[p->n_msgs++] = type;
		if (type == NFT_MSG_NEWRULE && NFNL_SUBSYS_ID(nlh->nlmsg_type)) {
			struct nftnl_rule *r = nftnl_rule_alloc();

			assert_non_null(r);
			assert_int_equal(nftnl_rule_nlmsg_parse(nlh, r), 0);
			assert_true(p->n_rules < PARSED_RULES_MAX);
			snprintf(p->chain[p->n_rules], sizeof(p->chain[0]), "%s",
				 nftnl_rule_get_str(r, NFTNL_RULE_CHAIN));
			rule_to_text(r, p->text[p->n_rules], RULE_TEXT_BYTES,
				     &p->socket_level[p->n_rules]);
			p->n_rules++;
			nftnl_rule_free(r);
		} else if (type == NFT_MSG_NEWCHAIN && NFNL_SUBSYS_ID(nlh->nlmsg_type)) {
			struct nftnl_chain *c = nftnl_chain_alloc();

			assert_non_null(c);
			assert_int_equal(nftnl_chain_nlmsg_parse(nlh, c), 0);
			p->chains[p->n_chains++] = c;
		} else if (type == NFT_MSG_NEWSETELEM && NFNL_SUBSYS_ID(nlh->nlmsg_type)) {
			parse_setelems(nlh, p);
		}
	}
	assert_int_equal(left, 0);
}

/* Index of the first rule of @chain whose text holds every needle, or -1. */
static int find_rule(const struct parsed *p, const char *chain, const char *const *needles)
{
	size_t i, j;

	for (i = 0; i < p->n_rules; i++) {
		if (strcmp(p->chain[i], chain))
			continue;
		for (j = 0; needles[j]; j++)
			if (!strstr(p->text[i], needles[j]))
				break;
		if (!needles[j])
			return (int)i;
	}
	return -1;
}

#define FIND(p, chain, ...) find_rule(p, chain, (const char *const[]){ __VA_ARGS__, NULL })

static const struct nftnl_chain *find_chain(const struct parsed *p, const char *name)
{
	size_t i;

	for (i = 0; i < p->n_chains; i++)
		if (!strcmp(nftnl_chain_get_str(p->chains[i], NFTNL_CHAIN_NAME), name))
			return p->chains[i];
	return NULL;
}

static void base_config(struct egd_nft_config *c)
{
	memset(c, 0, sizeof(*c));
	c->listen_port = LISTEN_PORT;
	c->admin_port = ADMIN_PORT;
	c->daemon_cgroup_id = DAEMON_CGROUP_ID;
	c->daemon_cgroup_level = DAEMON_CGROUP_LEVEL;
	c->dns_port = DNS_PORT;
	/* An operator's addition overlapping a default (merged) and one of
	 * its own. */
	assert_int_equal(egd_nft_parse_cidrs("169.254.169.254/32, " OPERATOR_DENY4
					     " " OPERATOR_DENY6,
					     c->deny, EGD_NFT_DENY_MAX),
			 3);
	c->n_deny = 3;
	c->loopback_allow[0] = LOOPBACK_ALLOWED_PORT;
	c->n_loopback_allow = 1;
}

static int build_parse(const struct egd_nft_config *c, enum egd_phase phase)
{
	int len = egd_nft_build(c, phase, g_buf, sizeof(g_buf));

	g_len = len;
	if (len > 0)
		parse_batch(g_buf, len, &g_p);
	return len;
}

/* ------------------------------------------------------------------------
 * Pure tests
 */

static void test_batch_replaces_table_atomically(void **state)
{
	struct egd_nft_config c;

	(void)state;
	base_config(&c);
	assert_true(build_parse(&c, EGD_PHASE_AGENT) > 0);
	/* One transaction: begin, create-if-absent, delete, create, ..., end. */
	assert_int_equal(g_p.msg_types[0], NFNL_MSG_BATCH_BEGIN);
	assert_int_equal(g_p.msg_types[1], NFT_MSG_NEWTABLE);
	assert_int_equal(g_p.msg_types[2], NFT_MSG_DELTABLE);
	assert_int_equal(g_p.msg_types[3], NFT_MSG_NEWTABLE);
	assert_int_equal(g_p.msg_types[g_p.n_msgs - 1], NFNL_MSG_BATCH_END);
}

static void test_chains_hook_output_and_filter_drops_by_default(void **state)
{
	const struct nftnl_chain *nat, *filter, *refuse;
	struct egd_nft_config c;

	(void)state;
	base_config(&c);
	assert_true(build_parse(&c, EGD_PHASE_AGENT) > 0);
	nat = find_chain(&g_p, "nat_output");
	filter = find_chain(&g_p, "filter_output");
	refuse = find_chain(&g_p, "refuse");
	assert_non_null(nat);
	assert_non_null(filter);
	assert_non_null(refuse);
	assert_string_equal(nftnl_chain_get_str(nat, NFTNL_CHAIN_TYPE), "nat");
	assert_int_equal(nftnl_chain_get_u32(nat, NFTNL_CHAIN_HOOKNUM), NF_INET_LOCAL_OUT);
	assert_int_equal(nftnl_chain_get_s32(nat, NFTNL_CHAIN_PRIO), -101);
	assert_int_equal(nftnl_chain_get_u32(nat, NFTNL_CHAIN_POLICY), NF_ACCEPT);
	assert_string_equal(nftnl_chain_get_str(filter, NFTNL_CHAIN_TYPE), "filter");
	assert_int_equal(nftnl_chain_get_u32(filter, NFTNL_CHAIN_HOOKNUM), NF_INET_LOCAL_OUT);
	assert_int_equal(nftnl_chain_get_u32(filter, NFTNL_CHAIN_POLICY), NF_DROP);
	assert_false(nftnl_chain_is_set(refuse, NFTNL_CHAIN_HOOKNUM));
}

/* Index of the first rule of @chain, or -1. */
static int chain_first(const struct parsed *p, const char *chain)
{
	size_t i;

	for (i = 0; i < p->n_rules; i++)
		if (!strcmp(p->chain[i], chain))
			return (int)i;
	return -1;
}

static void test_nat_exempts_daemon_cgroup_then_redirects_tcp(void **state)
{
	struct egd_nft_config c;
	int exempt, lo, redir;

	(void)state;
	base_config(&c);
	assert_true(build_parse(&c, EGD_PHASE_AGENT) > 0);
	exempt = FIND(&g_p, "nat_output", "[socket load cgroupv2 => reg 1 ]",
		      "cmp eq reg 1 0x00001092 0x00000000", "immediate reg 0 return");
	lo = FIND(&g_p, "nat_output", "meta load oif", "cmp eq reg 1 0x00000001 ",
		  "immediate reg 0 return");
	/* 15443 = 0x3c43, network order in the register. */
	redir = FIND(&g_p, "nat_output", "cmp eq reg 1 0x00000006 ", "immediate reg 1 0x0000533c",
		     "redir proto_min reg 1 proto_max reg 1");
	assert_int_equal(exempt, chain_first(&g_p, "nat_output"));
	assert_int_equal(g_p.socket_level[exempt], DAEMON_CGROUP_LEVEL);
	assert_true(lo > exempt);
	assert_true(redir > lo);
	assert_int_equal(FIND(&g_p, "nat_output", "meta load skuid"), -1);
}

static void test_dns_to_any_address_goes_to_the_dns_listener(void **state)
{
	struct egd_nft_config c;
	int udp, tcp, lo;

	(void)state;
	base_config(&c);
	assert_true(build_parse(&c, EGD_PHASE_AGENT) > 0);
	/* 15053 = 0x3acd. No address match: every port 53, loopback too. */
	udp = FIND(&g_p, "nat_output", "cmp eq reg 1 0x00000011 ", "cmp eq reg 1 0x00003500",
		   "immediate reg 1 0x0000cd3a", "redir");
	tcp = FIND(&g_p, "nat_output", "cmp eq reg 1 0x00000006 ", "cmp eq reg 1 0x00003500",
		   "immediate reg 1 0x0000cd3a", "redir");
	lo = FIND(&g_p, "nat_output", "meta load oif");
	assert_true(udp >= 0 && tcp >= 0);
	assert_true(udp < lo && tcp < lo);
	assert_int_equal(FIND(&g_p, "nat_output", "cmp eq reg 1 0x00003500", "payload load 4b"),
			 -1);
	/* The resolvers are no allowlist any more: nothing in the ruleset
	 * lets the agent reach one. */
	assert_int_equal(FIND(&g_p, "filter_output", "resolvers"), -1);
	/* DNS that escaped the redirect is refused, both protocols. */
	assert_true(FIND(&g_p, "filter_output", "cmp eq reg 1 0x00000011 ",
			 "cmp eq reg 1 0x00003500", "jump -> refuse") >= 0);
	assert_true(FIND(&g_p, "filter_output", "cmp eq reg 1 0x00000006 ",
			 "cmp eq reg 1 0x00003500", "jump -> refuse") >= 0);
	/* And the DNS port is a daemon port: no direct dial. */
	assert_non_null(
		strstr(g_p.text[FIND(&g_p, "filter_output", "set daemon_ports")], "direct_dial"));
}

static void test_deny_chain_runs_first_and_refuses_the_deny_sets(void **state)
{
	const struct nftnl_chain *deny;
	struct egd_nft_config c;
	int first, exempt, nd, d4, d6;

	(void)state;
	base_config(&c);
	assert_true(build_parse(&c, EGD_PHASE_VERIFICATION) > 0);
	deny = find_chain(&g_p, "deny_output");
	assert_non_null(deny);
	assert_string_equal(nftnl_chain_get_str(deny, NFTNL_CHAIN_TYPE), "filter");
	assert_int_equal(nftnl_chain_get_u32(deny, NFTNL_CHAIN_HOOKNUM), NF_INET_LOCAL_OUT);
	/* Before our NAT (-101): it sees the address the agent dialled, and
	 * nothing accepts before it. After conntrack (-200): its resets are
	 * related to the refused flow. */
	assert_int_equal(nftnl_chain_get_s32(deny, NFTNL_CHAIN_PRIO), -150);
	assert_int_equal(nftnl_chain_get_u32(deny, NFTNL_CHAIN_POLICY), NF_ACCEPT);
	first = chain_first(&g_p, "deny_output");
	exempt = FIND(&g_p, "deny_output", "socket load cgroupv2", "accept");
	nd = FIND(&g_p, "deny_output", "cmp eq reg 1 0x0000003a ",
		  "range eq reg 1 0x00000085 0x00000088", "cmp eq reg 1 0x000000ff ", "accept");
	d4 = FIND(&g_p, "deny_output", "cmp eq reg 1 0x00000002 ",
		  "payload load 4b @ network header + 16", "lookup reg 1 set deny4",
		  "name denied_dst", "jump -> refuse");
	d6 = FIND(&g_p, "deny_output", "cmp eq reg 1 0x0000000a ",
		  "payload load 16b @ network header + 24", "lookup reg 1 set deny6",
		  "name denied_dst", "jump -> refuse");
	assert_int_equal(exempt, first);
	/* Neighbour discovery goes to multicast: it passes before the deny. */
	assert_true(nd > exempt && d4 > nd && d6 > nd);
	/* Whatever the phase: the verification phase built here. */
	assert_int_equal(g_p.phase_verdict, (uint32_t)NF_ACCEPT);
}

/* The elements of set @name in the last build, as "key/flags" words. */
static void set_words(const char *name, char *out, size_t len)
{
	const struct nlmsghdr *nlh;
	int left = g_len;

	out[0] = '\0';
	for (nlh = (const void *)g_buf; mnl_nlmsg_ok(nlh, left); nlh = mnl_nlmsg_next(nlh, &left)) {
		static char copy[EGD_NFT_BATCH_MAX_BYTES];
		struct nlmsghdr *c = (struct nlmsghdr *)copy;
		struct nftnl_set_elems_iter *it;
		struct nftnl_set_elem *e;
		struct nlattr *attr, *elem;
		struct nftnl_set *s;

		if (!NFNL_SUBSYS_ID(nlh->nlmsg_type) ||
		    NFNL_MSG_TYPE(nlh->nlmsg_type) != NFT_MSG_NEWSETELEM)
			continue;
		memcpy(copy, nlh, nlh->nlmsg_len);
		mnl_attr_for_each (attr, c, sizeof(struct nfgenmsg))
			if (mnl_attr_get_type(attr) == NFTA_SET_ELEM_LIST_ELEMENTS)
				mnl_attr_for_each_nested (elem, attr)
					elem->nla_type = NLA_F_NESTED | NFTA_LIST_ELEM;
		s = nftnl_set_alloc();
		assert_non_null(s);
		assert_int_equal(nftnl_set_elems_nlmsg_parse(c, s), 0);
		if (strcmp(nftnl_set_get_str(s, NFTNL_SET_NAME), name)) {
			nftnl_set_free(s);
			continue;
		}
		it = nftnl_set_elems_iter_create(s);
		while ((e = nftnl_set_elems_iter_next(it))) {
			char ip[INET6_ADDRSTRLEN];
			uint32_t klen;
			const void *key = nftnl_set_elem_get(e, NFTNL_SET_ELEM_KEY, &klen);
			uint32_t flags = nftnl_set_elem_is_set(e, NFTNL_SET_ELEM_FLAGS) ?
						 nftnl_set_elem_get_u32(e, NFTNL_SET_ELEM_FLAGS) :
						 0;

			inet_ntop(klen == 4 ? AF_INET : AF_INET6, key, ip, sizeof(ip));
			snprintf(out + strlen(out), len - strlen(out), "%s%s ", ip,
				 flags & NFT_SET_ELEM_INTERVAL_END ? "/end" : "");
		}
		nftnl_set_elems_iter_destroy(it);
		nftnl_set_free(s);
	}
}

static void test_deny_sets_hold_defaults_and_operator_cidrs_merged(void **state)
{
	struct egd_nft_config c;
	char words[1024];

	(void)state;
	base_config(&c);
	assert_true(build_parse(&c, EGD_PHASE_AGENT) > 0);
	/* Sorted intervals [start, end): 169.254.169.254/32 merged into
	 * 169.254.0.0/16, 255.255.255.255 runs to the top (no end). */
	set_words("deny4", words, sizeof(words));
	assert_string_equal(words, "0.0.0.0 1.0.0.0/end 10.99.0.128 10.99.1.0/end "
				   "100.100.100.200 100.100.100.201/end "
				   "169.254.0.0 169.255.0.0/end "
				   "224.0.0.0 240.0.0.0/end 255.255.255.255 ");
	/* The first range starts above zero: an end element at :: first. */
	set_words("deny6", words, sizeof(words));
	assert_string_equal(words, "::/end fd00:99::8000 fd00:99::1:0/end "
				   "fd00:ec2::254 fd00:ec2::255/end "
				   "fe80:: fec0::/end ff00:: ");
}

static void test_cidr_and_port_lists_parse_strictly(void **state)
{
	struct egd_nft_cidr cidr[4];
	uint16_t ports[4];

	(void)state;
	assert_int_equal(egd_nft_parse_cidrs("10.0.0.0/8, 192.0.2.1 2001:db8::/32", cidr, 4), 3);
	assert_int_equal(cidr[0].family, AF_INET);
	assert_int_equal(cidr[0].prefix, 8);
	assert_int_equal(cidr[1].prefix, 32);
	assert_int_equal(cidr[2].family, AF_INET6);
	assert_int_equal(cidr[2].prefix, 32);
	assert_int_equal(egd_nft_parse_cidrs("", cidr, 4), 0);
	assert_int_equal(egd_nft_parse_cidrs("10.0.0.1/8", cidr, 4), -EINVAL); /* host bits */
	assert_int_equal(egd_nft_parse_cidrs("10.0.0.0/33", cidr, 4), -EINVAL);
	assert_int_equal(egd_nft_parse_cidrs("10.0.0.0/", cidr, 4), -EINVAL);
	assert_int_equal(egd_nft_parse_cidrs("example.com", cidr, 4), -EINVAL);
	assert_int_equal(egd_nft_parse_cidrs("1.0.0.0/8,2.0.0.0/8,3.0.0.0/8,4.0.0.0/8,5.0.0.0/8",
					     cidr, 4),
			 -E2BIG);
	assert_int_equal(egd_nft_parse_ports("8000, 9000", ports, 4), 2);
	assert_int_equal(ports[1], 9000);
	assert_int_equal(egd_nft_parse_ports("0", ports, 4), -EINVAL);
	assert_int_equal(egd_nft_parse_ports("65536", ports, 4), -EINVAL);
	assert_int_equal(egd_nft_parse_ports("-1", ports, 4), -EINVAL);
	assert_int_equal(egd_nft_parse_ports("80x", ports, 4), -EINVAL);
}

static void test_filter_judges_every_packet_by_the_phase(void **state)
{
	struct egd_nft_config c;
	int daemon, dnat, nd, lo_rel, proto, direct_udp, direct_tcp, lo_allow_udp, lo_allow_tcp,
		lo_phase, quic4, quic6, tcp, dns_udp, phase;

	(void)state;
	base_config(&c);
	assert_true(build_parse(&c, EGD_PHASE_AGENT) > 0);
	/* No blanket "established" accept: a re-lock stops old flows. */
	assert_int_equal(FIND(&g_p, "filter_output", "ct load state", "& 0x00000002 )"), -1);
	daemon = FIND(&g_p, "filter_output", "socket load cgroupv2", "accept");
	dnat = FIND(&g_p, "filter_output", "ct load status", "& 0x00000020 )", "accept");
	nd = FIND(&g_p, "filter_output", "range eq reg 1 0x00000085 0x00000088", "accept");
	lo_rel = FIND(&g_p, "filter_output", "meta load oif", "ct load state", "& 0x00000004 )",
		      "accept");
	proto = FIND(&g_p, "filter_output", "cmp neq reg 1 0x00000011 ",
		     "cmp neq reg 1 0x00000006 ", "jump -> refuse");
	direct_udp = FIND(&g_p, "filter_output", "meta load oif", "cmp eq reg 1 0x00000011 ",
			  "lookup reg 1 set daemon_ports", "name direct_dial", "jump -> refuse");
	direct_tcp = FIND(&g_p, "filter_output", "meta load oif", "cmp eq reg 1 0x00000006 ",
			  "lookup reg 1 set daemon_ports", "name direct_dial", "jump -> refuse");
	lo_allow_udp = FIND(&g_p, "filter_output", "meta load oif", "cmp eq reg 1 0x00000011 ",
			    "ct load proto_dst => reg 1 , dir original", "set loopback_allow",
			    "accept");
	lo_allow_tcp = FIND(&g_p, "filter_output", "meta load oif", "cmp eq reg 1 0x00000006 ",
			    "ct load proto_dst => reg 1 , dir original", "set loopback_allow",
			    "accept");
	lo_phase = FIND(&g_p, "filter_output", "meta load oif", "lookup reg 1 set phase dreg 0");
	quic4 = FIND(&g_p, "filter_output", "cmp eq reg 1 0x00000011 ", "set icaddr4",
		     "jump -> refuse");
	quic6 = FIND(&g_p, "filter_output", "cmp eq reg 1 0x00000011 ", "set icaddr6",
		     "jump -> refuse");
	tcp = FIND(&g_p, "filter_output", "cmp eq reg 1 0x00000006 ", "ct load direction",
		   "cmp eq reg 1 0x00000000 ", "jump -> refuse");
	dns_udp = FIND(&g_p, "filter_output", "cmp eq reg 1 0x00000011 ", "cmp eq reg 1 0x00003500",
		       "jump -> refuse");
	/* The chain's last rule: everything else follows the phase. */
	phase = chain_first(&g_p, "daemon_input") - 1;
	assert_string_equal(g_p.chain[phase], "filter_output");
	assert_non_null(strstr(g_p.text[phase], "lookup reg 1 set phase dreg 0"));
	assert_null(strstr(g_p.text[phase], "oif"));
	assert_int_equal(daemon, chain_first(&g_p, "filter_output"));
	assert_true(daemon < dnat && dnat < nd && nd < lo_rel && lo_rel < proto);
	/* Redirected flows pass before direct dials to the same ports fail;
	 * direct dials fail before the allowlist could let them through. */
	assert_true(proto < direct_udp && proto < direct_tcp);
	assert_true(direct_udp < lo_allow_udp && direct_tcp < lo_allow_tcp);
	assert_true(lo_allow_udp < lo_phase && lo_allow_tcp < lo_phase);
	assert_true(lo_phase < quic4 && lo_phase < quic6);
	assert_true(quic4 < tcp && quic6 < tcp && tcp < dns_udp && dns_udp < phase);
}

static void test_daemon_flows_are_marked_and_their_packets_pass(void **state)
{
	const struct nftnl_chain *in;
	struct egd_nft_config c;
	int stamp_out, marked_out, stamp_in;

	(void)state;
	base_config(&c);
	assert_true(build_parse(&c, EGD_PHASE_AGENT) > 0);
	/* 0x00656764: "egd". */
	stamp_out = FIND(&g_p, "filter_output", "socket load cgroupv2",
			 "immediate reg 1 0x00656764", "ct set mark with reg 1", "accept");
	marked_out = FIND(&g_p, "filter_output", "ct load mark", "cmp eq reg 1 0x00656764",
			  "accept");
	assert_int_equal(stamp_out, chain_first(&g_p, "filter_output"));
	assert_int_equal(marked_out, stamp_out + 1);
	assert_true(FIND(&g_p, "deny_output", "ct load mark", "cmp eq reg 1 0x00656764",
			 "accept") >= 0);
	/* A listener of the daemon found for an inbound packet stamps its
	 * flow; nothing else happens on input. */
	in = find_chain(&g_p, "daemon_input");
	assert_non_null(in);
	assert_int_equal(nftnl_chain_get_u32(in, NFTNL_CHAIN_HOOKNUM), NF_INET_LOCAL_IN);
	assert_int_equal(nftnl_chain_get_u32(in, NFTNL_CHAIN_POLICY), NF_ACCEPT);
	stamp_in = FIND(&g_p, "daemon_input", "socket load cgroupv2", "immediate reg 1 0x00656764",
			"ct set mark with reg 1");
	assert_int_equal(stamp_in, chain_first(&g_p, "daemon_input"));
	assert_int_equal(stamp_in + 1, (int)g_p.n_rules);
	assert_null(strstr(g_p.text[stamp_in], "accept"));
}

static void test_refuse_rejects_fast_with_counters_and_rate_limited_log(void **state)
{
	struct egd_nft_config c;

	(void)state;
	base_config(&c);
	assert_true(build_parse(&c, EGD_PHASE_AGENT) > 0);
	assert_int_equal(FIND(&g_p, "refuse", "limit rate 10/second burst 20 type packets",
			      "log prefix egressd refused:"),
			 0);
	assert_true(FIND(&g_p, "refuse", "cmp eq reg 1 0x00000006 ", "name refused_tcp",
			 "reject type 1 ") > 0); /* tcp reset */
	assert_true(FIND(&g_p, "refuse", "cmp eq reg 1 0x00000011 ", "name refused_udp",
			 "reject type 2 code 1 ") > 0); /* icmpx port unreachable */
	assert_true(FIND(&g_p, "refuse", "name refused_other", "reject type 2 code 3 ") > 0);
}

static void test_agent_phase_element_jumps_to_refuse(void **state)
{
	struct egd_nft_config c;

	(void)state;
	base_config(&c);
	assert_true(build_parse(&c, EGD_PHASE_AGENT) > 0);
	assert_int_equal(g_p.phase_elems, 1);
	assert_int_equal(g_p.phase_verdict, (uint32_t)NFT_JUMP);
	assert_string_equal(g_p.phase_chain, "refuse");
}

static void test_verification_phase_element_accepts(void **state)
{
	struct egd_nft_config c;

	(void)state;
	base_config(&c);
	assert_true(build_parse(&c, EGD_PHASE_VERIFICATION) > 0);
	assert_int_equal(g_p.phase_elems, 1);
	assert_int_equal(g_p.phase_verdict, (uint32_t)NF_ACCEPT);
	assert_string_equal(g_p.phase_chain, "");
	/* TCP the agent opens is still captured or refused, the deny set and
	 * the protocol rule still refuse, in the verification phase. */
	assert_true(FIND(&g_p, "filter_output", "cmp eq reg 1 0x00000006 ", "ct load direction",
			 "jump -> refuse") >= 0);
	assert_true(FIND(&g_p, "filter_output", "cmp neq reg 1 0x00000011 ", "jump -> refuse") >=
		    0);
	assert_true(FIND(&g_p, "deny_output", "set deny4", "jump -> refuse") >= 0);
}

static void test_phase_flip_is_one_element_swapped_in_one_transaction(void **state)
{
	int len;

	(void)state;
	len = egd_nft_build_phase(EGD_PHASE_VERIFICATION, g_buf, sizeof(g_buf));
	assert_true(len > 0);
	parse_batch(g_buf, len, &g_p);
	assert_int_equal(g_p.n_msgs, 4);
	assert_int_equal(g_p.msg_types[0], NFNL_MSG_BATCH_BEGIN);
	assert_int_equal(g_p.msg_types[1], NFT_MSG_DELSETELEM);
	assert_int_equal(g_p.msg_types[2], NFT_MSG_NEWSETELEM);
	assert_int_equal(g_p.msg_types[3], NFNL_MSG_BATCH_END);
	assert_int_equal(g_p.phase_verdict, (uint32_t)NF_ACCEPT);
}

static void test_uid_fallback_adds_skuid_match(void **state)
{
	struct egd_nft_config c;

	(void)state;
	base_config(&c);
	c.use_uid_fallback = 1;
	c.daemon_uid = DAEMON_UID;
	assert_true(build_parse(&c, EGD_PHASE_AGENT) > 0);
	assert_true(FIND(&g_p, "nat_output", "meta load skuid", "cmp eq reg 1 0x000003e7",
			 "return") >= 0);
	assert_true(FIND(&g_p, "filter_output", "meta load skuid", "cmp eq reg 1 0x000003e7",
			 "accept") >= 0);
	/* uid only: no cgroup match at all. */
	c.daemon_cgroup_id = 0;
	assert_true(build_parse(&c, EGD_PHASE_AGENT) > 0);
	assert_int_equal(FIND(&g_p, "filter_output", "socket load"), -1);
}

static void test_configs_that_would_open_the_agent_are_refused(void **state)
{
	struct egd_nft_config c;

	(void)state;
	base_config(&c);
	c.daemon_cgroup_id = 0;
	assert_int_equal(egd_nft_build(&c, EGD_PHASE_AGENT, g_buf, sizeof(g_buf)), -EINVAL);
	base_config(&c);
	c.daemon_cgroup_id = 1; /* the cgroup2 root: every socket descends from it */
	assert_int_equal(egd_nft_build(&c, EGD_PHASE_AGENT, g_buf, sizeof(g_buf)), -EINVAL);
	base_config(&c);
	c.use_uid_fallback = 1;
	c.daemon_uid = 0;
	assert_int_equal(egd_nft_build(&c, EGD_PHASE_AGENT, g_buf, sizeof(g_buf)), -EINVAL);
	base_config(&c);
	c.listen_port = 0;
	assert_int_equal(egd_nft_build(&c, EGD_PHASE_AGENT, g_buf, sizeof(g_buf)), -EINVAL);
	/* No DNS port: the agent's DNS would have nowhere to go. */
	base_config(&c);
	c.dns_port = 0;
	assert_int_equal(egd_nft_build(&c, EGD_PHASE_AGENT, g_buf, sizeof(g_buf)), -EINVAL);
	base_config(&c);
	c.deny[0].prefix = 33;
	assert_int_equal(egd_nft_build(&c, EGD_PHASE_AGENT, g_buf, sizeof(g_buf)), -EINVAL);
	base_config(&c);
	assert_int_equal(egd_nft_build(&c, EGD_PHASE_AGENT, g_buf, 1024), -ENOSPC);
}

/* ------------------------------------------------------------------------
 * Kernel tests, in a child that owns a fresh network namespace
 */

struct child_ctx {
	int fd; /* where the child writes its failure or skip reason */
};

static __attribute__((format(printf, 2, 3))) int child_say(struct child_ctx *cx, const char *fmt,
							   ...)
{
	char msg[CHILD_MSG_BYTES];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (n > 0 && write(cx->fd, msg, strlen(msg)) < 0)
		return -1;
	return -1;
}

#define CHECK(cx, cond, ...)                                                                       \
	do {                                                                                       \
		if (!(cond))                                                                       \
			return child_say(cx, __VA_ARGS__);                                         \
	} while (0)

/*
 * Run @fn in a forked child inside a new network namespace; skip or fail in
 * the parent with the child's reason.
 */
static void run_in_netns(int (*fn)(struct child_ctx *, void *), void *arg)
{
	char msg[CHILD_MSG_BYTES] = "";
	int fds[2], status;
	ssize_t n;
	pid_t pid;

	if (geteuid() != 0) {
		print_message("skip: needs root (network namespace, nf_tables)\n");
		skip();
	}
	assert_int_equal(pipe(fds), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct child_ctx cx = { .fd = fds[1] };
		int ret;

		close(fds[0]);
		if (unshare(CLONE_NEWNET)) {
			child_say(&cx, "unshare(CLONE_NEWNET): %s", strerror(errno));
			_exit(CHILD_SKIP);
		}
		ret = fn(&cx, arg);
		_exit(ret == CHILD_SKIP ? CHILD_SKIP : ret ? 1 : 0);
	}
	close(fds[1]);
	n = read(fds[0], msg, sizeof(msg) - 1);
	msg[n > 0 ? n : 0] = '\0';
	close(fds[0]);
	assert_int_equal(waitpid(pid, &status, 0), pid);
	if (WIFEXITED(status) && WEXITSTATUS(status) == CHILD_SKIP) {
		print_message("skip: %s\n", msg);
		skip();
	}
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		fail_msg("in the test namespace: %s (status 0x%x)", msg, status);
}

/* Tamper with the table through nft(8), an independent writer. */
static int nft_cmd(const char *cmd)
{
	char line[512];

	snprintf(line, sizeof(line), "nft '%s' >/dev/null 2>&1", cmd);
	return system(line);
}

/* Delete the filter rule whose listing contains @what. */
static int nft_delete_rule(const char *what)
{
	char line[512];

	snprintf(line, sizeof(line),
		 "h=$(nft -a list chain inet egressd filter_output | grep -F '%s' | head -n1 |"
		 " sed 's/.*# handle //') && [ -n \"$h\" ] &&"
		 " nft delete rule inet egressd filter_output handle $h",
		 what);
	return system(line);
}

#define LIST_ICADDR "nft list set inet egressd icaddr"

static int lifecycle(struct child_ctx *cx, void *arg)
{
	struct pollfd pfd = { .events = POLLIN };
	struct egd_nft_config c;
	int err, mon;

	(void)arg;
	base_config(&c);
	err = egd_nft_install(&c, EGD_PHASE_AGENT);
	if (err == -EOPNOTSUPP || err == -EPROTONOSUPPORT || err == -ENOENT) {
		child_say(cx, "nf_tables unavailable: install: %s", strerror(-err));
		return CHILD_SKIP;
	}
	CHECK(cx, err == 0, "install: %s", strerror(-err));
	err = egd_nft_verify(&c, EGD_PHASE_AGENT);
	CHECK(cx, err == 0, "verify after install: %s", strerror(-err));
	if (getenv("EGD_TEST_SHOW_RULESET"))
		(void)!system("nft list ruleset");
	err = egd_nft_verify(&c, EGD_PHASE_VERIFICATION);
	CHECK(cx, err == -EBADMSG, "verify of the other phase: %d", err);

	err = egd_nft_set_phase(EGD_PHASE_VERIFICATION);
	CHECK(cx, err == 0, "set_phase: %s", strerror(-err));
	err = egd_nft_verify(&c, EGD_PHASE_VERIFICATION);
	CHECK(cx, err == 0, "verify after flip: %s", strerror(-err));
	err = egd_nft_verify(&c, EGD_PHASE_AGENT);
	CHECK(cx, err == -EBADMSG, "verify of the old phase after flip: %d", err);
	err = egd_nft_set_phase(EGD_PHASE_AGENT);
	CHECK(cx, err == 0, "set_phase back: %s", strerror(-err));
	CHECK(cx, egd_nft_verify(&c, EGD_PHASE_AGENT) == 0, "verify after flip back");

	/* A different daemon cgroup level is a different ruleset. */
	c.daemon_cgroup_level = DAEMON_CGROUP_LEVEL + 1;
	CHECK(cx, egd_nft_verify(&c, EGD_PHASE_AGENT) == -EBADMSG, "verify ignores the level");
	base_config(&c);

	/* Someone else's change is announced on the monitor socket. */
	mon = egd_nft_monitor_open();
	CHECK(cx, mon >= 0, "monitor: %s", strerror(-mon));
	CHECK(cx, egd_nft_monitor_drain(mon) == 0, "monitor not empty at start");
	CHECK(cx, nft_cmd("add element inet egressd daemon_ports { 1 }") == 0, "nft add port");
	pfd.fd = mon;
	CHECK(cx, poll(&pfd, 1, IO_TIMEOUT_MS) == 1, "no notification of a tamper");
	CHECK(cx, egd_nft_monitor_drain(mon) > 0, "drain");
	CHECK(cx, egd_nft_verify(&c, EGD_PHASE_AGENT) == -EBADMSG, "added port not noticed");
	close(mon);

	/* Installing over an existing table replaces it. */
	CHECK(cx, egd_nft_install(&c, EGD_PHASE_AGENT) == 0, "reinstall over the table");
	CHECK(cx, egd_nft_verify(&c, EGD_PHASE_AGENT) == 0, "verify after reinstall");

	CHECK(cx, nft_delete_rule("ct status dnat accept") == 0, "nft delete rule failed");
	CHECK(cx, egd_nft_verify(&c, EGD_PHASE_AGENT) == -EBADMSG, "deleted rule not noticed");
	CHECK(cx, egd_nft_install(&c, EGD_PHASE_AGENT) == 0, "reinstall after delete");
	CHECK(cx, egd_nft_verify(&c, EGD_PHASE_AGENT) == 0, "verify after repair");

	CHECK(cx, nft_cmd("insert rule inet egressd filter_output accept") == 0, "nft insert");
	CHECK(cx, egd_nft_verify(&c, EGD_PHASE_AGENT) == -EBADMSG, "inserted rule not noticed");
	CHECK(cx, egd_nft_install(&c, EGD_PHASE_AGENT) == 0, "reinstall after insert");

	CHECK(cx, nft_cmd("add element inet egressd loopback_allow { 22 }") == 0, "nft add");
	CHECK(cx, egd_nft_verify(&c, EGD_PHASE_AGENT) == -EBADMSG, "added port not noticed");
	CHECK(cx, egd_nft_install(&c, EGD_PHASE_AGENT) == 0, "reinstall after element");

	/* Metadata taken out of the deny set is noticed. */
	CHECK(cx, nft_cmd("delete element inet egressd deny4 { 169.254.0.0/16 }") == 0,
	      "nft delete element");
	CHECK(cx, egd_nft_verify(&c, EGD_PHASE_AGENT) == -EBADMSG, "deny element removal");
	CHECK(cx, egd_nft_install(&c, EGD_PHASE_AGENT) == 0, "reinstall after deny element");

	/* Intercept addresses come and go with their TTL: the set's content
	 * is the daemon's, not a tamper. */
	{
		struct egd_ip ip4 = { .family = EGD_AF_INET }, ip6 = { .family = EGD_AF_INET6 };
		struct egd_ip mapped = { .family = EGD_AF_INET6 };

		inet_pton(AF_INET, "192.0.2.7", ip4.addr);
		inet_pton(AF_INET6, "2001:db8::7", ip6.addr);
		inet_pton(AF_INET6, "::ffff:192.0.2.8", mapped.addr);
		err = egd_nft_icaddr_add(&ip4, 30);
		CHECK(cx, err == 0, "icaddr_add v4: %s", strerror(-err));
		/* Again: the timeout restarts, no EEXIST. */
		err = egd_nft_icaddr_add(&ip4, 60);
		CHECK(cx, err == 0, "icaddr_add v4 again: %s", strerror(-err));
		CHECK(cx, egd_nft_icaddr_add(&ip6, 30) == 0, "icaddr_add v6");
		CHECK(cx, egd_nft_icaddr_add(&mapped, 30) == 0, "icaddr_add v4-mapped");
		CHECK(cx, egd_nft_icaddr_add(&ip4, 0) == -EINVAL, "icaddr_add ttl 0");
		CHECK(cx, system(LIST_ICADDR "4 | grep -q '192.0.2.7 timeout 1m expires'") == 0,
		      "v4 element with its new timeout");
		CHECK(cx, system(LIST_ICADDR "4 | grep -q '192.0.2.8 timeout'") == 0,
		      "v4-mapped element in the v4 set");
		CHECK(cx, system(LIST_ICADDR "6 | grep -q '2001:db8::7 timeout'") == 0,
		      "v6 element");
		CHECK(cx, egd_nft_verify(&c, EGD_PHASE_AGENT) == 0,
		      "verify with intercept addresses");
		/* A reinstall keeps them, with what is left of their time. */
		CHECK(cx, egd_nft_install(&c, EGD_PHASE_AGENT) == 0, "reinstall");
		CHECK(cx, system(LIST_ICADDR "4 | grep -q '192.0.2.7 timeout'") == 0,
		      "v4 element lost in a reinstall");
		CHECK(cx, system(LIST_ICADDR "6 | grep -q '2001:db8::7 timeout'") == 0,
		      "v6 element lost in a reinstall");
		CHECK(cx, egd_nft_verify(&c, EGD_PHASE_AGENT) == 0, "verify after reinstall");
	}

	CHECK(cx, nft_cmd("add table inet egressd { flags dormant; }") == 0, "nft dormant");
	CHECK(cx, egd_nft_verify(&c, EGD_PHASE_AGENT) == -EBADMSG, "dormant table not noticed");
	CHECK(cx, egd_nft_install(&c, EGD_PHASE_AGENT) == 0, "reinstall after dormant");

	CHECK(cx, nft_cmd("add chain inet egressd filter_output { policy accept; }") == 0,
	      "nft policy");
	CHECK(cx, egd_nft_verify(&c, EGD_PHASE_AGENT) == -EBADMSG, "policy accept not noticed");
	CHECK(cx, egd_nft_install(&c, EGD_PHASE_AGENT) == 0, "reinstall after policy");
	CHECK(cx, egd_nft_verify(&c, EGD_PHASE_AGENT) == 0, "verify after all repairs");

	err = egd_nft_remove();
	CHECK(cx, err == 0, "remove: %s", strerror(-err));
	CHECK(cx, egd_nft_verify(&c, EGD_PHASE_AGENT) == -ENOENT, "verify after remove");
	CHECK(cx, egd_nft_remove() == -ENOENT, "second remove");
	CHECK(cx, nft_cmd("list table inet egressd") != 0, "nft still lists the table");
	return 0;
}

static void test_kernel_install_verify_flip_tamper_remove(void **state)
{
	(void)state;
	run_in_netns(lifecycle, NULL);
}

/* ------------------------------------------------------------------------
 * Real traffic: a daemon and an agent in two throwaway cgroups
 */

struct cgroups {
	char top[600], daemon[700], agent[700];
	uint64_t daemon_id;
	uint32_t daemon_level;
};

static int write_str(const char *path, const char *s)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		return -errno;
	n = write(fd, s, strlen(s));
	close(fd);
	return n < 0 ? -errno : 0;
}

static int enter_cgroup(const char *dir)
{
	char path[800], pid[32];

	snprintf(path, sizeof(path), "%s/cgroup.procs", dir);
	snprintf(pid, sizeof(pid), "%d", getpid());
	return write_str(path, pid);
}

/* Kill what is left in @dir (cgroup.kill, 5.14+) and remove it. */
static void cgroup_remove(const char *dir)
{
	char path[800];
	int i;

	if (!dir[0])
		return;
	snprintf(path, sizeof(path), "%s/cgroup.kill", dir);
	(void)write_str(path, "1");
	for (i = 0; i < 100 && rmdir(dir) && errno == EBUSY; i++)
		usleep(10000);
}

static void cgroups_remove(struct cgroups *cg)
{
	cgroup_remove(cg->daemon);
	cgroup_remove(cg->agent);
	if (cg->top[0])
		rmdir(cg->top);
}

/* Our own cgroup v2 directory and its depth, from /proc/mounts and
 * /proc/self/cgroup. */
static int cgroups_create(struct cgroups *cg, char *why, size_t whylen)
{
	char mnt[256] = "", self[256] = "", line[512];
	struct stat st;
	FILE *f;
	const char *p;

	memset(cg, 0, sizeof(*cg));
	f = fopen("/proc/mounts", "r");
	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "%*s %255s cgroup2", mnt) == 1 && strstr(line, " cgroup2 "))
			break;
		else
			mnt[0] = '\0';
	if (f)
		fclose(f);
	f = fopen("/proc/self/cgroup", "r");
	while (f && fgets(line, sizeof(line), f))
		if (!strncmp(line, "0::", 3)) {
			snprintf(self, sizeof(self), "%s", line + 3);
			self[strcspn(self, "\n")] = '\0';
		}
	if (f)
		fclose(f);
	if (!mnt[0] || !self[0]) {
		snprintf(why, whylen, "no cgroup v2 hierarchy mounted");
		return -ENOENT;
	}
	if (!strcmp(self, "/"))
		self[0] = '\0';
	snprintf(cg->top, sizeof(cg->top), "%s%s/egd-test-nft-%d", mnt, self, getpid());
	if (mkdir(cg->top, 0755)) {
		snprintf(why, whylen, "mkdir %s: %s", cg->top, strerror(errno));
		cg->top[0] = '\0';
		return -errno;
	}
	snprintf(cg->daemon, sizeof(cg->daemon), "%s/daemon", cg->top);
	snprintf(cg->agent, sizeof(cg->agent), "%s/agent", cg->top);
	if (mkdir(cg->daemon, 0755) || mkdir(cg->agent, 0755) || stat(cg->daemon, &st)) {
		snprintf(why, whylen, "mkdir under %s: %s", cg->top, strerror(errno));
		return -errno;
	}
	cg->daemon_id = st.st_ino;
	/* Depth below our cgroup namespace root: components of self, plus
	 * egd-test-nft-PID and daemon. */
	cg->daemon_level = 2;
	for (p = self; *p; p++)
		cg->daemon_level += *p == '/';
	return 0;
}

static int sock_timeout(int fd)
{
	struct timeval tv = { .tv_sec = IO_TIMEOUT_MS / 1000,
			      .tv_usec = (IO_TIMEOUT_MS % 1000) * 1000 };

	if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) ||
	    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)))
		return -errno;
	return 0;
}

static int make_addr(const char *ip, uint16_t port, struct sockaddr_storage *ss, socklen_t *len)
{
	struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;

	memset(ss, 0, sizeof(*ss));
	*len = 0;
	if (inet_pton(AF_INET, ip, &a4->sin_addr) == 1) {
		a4->sin_family = AF_INET;
		a4->sin_port = htons(port);
		*len = sizeof(*a4);
		return AF_INET;
	}
	if (inet_pton(AF_INET6, ip, &a6->sin6_addr) == 1) {
		a6->sin6_family = AF_INET6;
		a6->sin6_port = htons(port);
		*len = sizeof(*a6);
		return AF_INET6;
	}
	return -EINVAL;
}

/* The "daemon": answers each connection with the original destination
 * that conntrack recorded, as "ip port", and each datagram on its DNS
 * port with "dns". */
static void daemon_serve(int fd4, int fd6, int fdu, int fdu6)
{
	struct pollfd pfd[4] = { { .fd = fd4, .events = POLLIN },
				 { .fd = fd6, .events = POLLIN },
				 { .fd = fdu, .events = POLLIN },
				 { .fd = fdu6, .events = POLLIN } };

	for (;;) {
		struct sockaddr_storage od;
		socklen_t olen = sizeof(od);
		char ip[INET6_ADDRSTRLEN] = "?", out[128];
		int i, c, port = 0;

		if (poll(pfd, 4, -1) < 0)
			_exit(1);
		for (i = 2; i < 4; i++) {
			ssize_t n;

			if (!(pfd[i].revents & POLLIN))
				continue;
			olen = sizeof(od);
			n = recvfrom(pfd[i].fd, out, sizeof(out), 0, (struct sockaddr *)&od, &olen);
			if (n > 0)
				(void)!sendto(pfd[i].fd, "dns", 3, 0, (struct sockaddr *)&od, olen);
		}
		olen = sizeof(od);
		for (i = 0; i < 2; i++) {
			if (!(pfd[i].revents & POLLIN))
				continue;
			c = accept(pfd[i].fd, NULL, NULL);
			if (c < 0)
				continue;
			if (i == 0 && !getsockopt(c, SOL_IP, SO_ORIGINAL_DST, &od, &olen)) {
				struct sockaddr_in *a = (struct sockaddr_in *)&od;

				inet_ntop(AF_INET, &a->sin_addr, ip, sizeof(ip));
				port = ntohs(a->sin_port);
			} else if (i == 1 &&
				   !getsockopt(c, SOL_IPV6, IP6T_SO_ORIGINAL_DST, &od, &olen)) {
				struct sockaddr_in6 *a = (struct sockaddr_in6 *)&od;

				inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof(ip));
				port = ntohs(a->sin6_port);
			}
			snprintf(out, sizeof(out), "%s %d", ip, port);
			(void)!write(c, out, strlen(out));
			close(c);
		}
	}
}

static int listen_on(const char *ip, uint16_t port, int type)
{
	struct sockaddr_storage ss;
	socklen_t len;
	int fam = make_addr(ip, port, &ss, &len), fd, one = 1;

	fd = socket(fam, type | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&ss, len) || (type == SOCK_STREAM && listen(fd, 16))) {
		close(fd);
		return -errno;
	}
	return fd;
}

/* connect() and read the daemon's answer; 0 or the negative errno. */
static int tcp_dial(const char *ip, uint16_t port, char *answer, size_t alen)
{
	struct sockaddr_storage ss;
	socklen_t len;
	int fam = make_addr(ip, port, &ss, &len), fd, err = 0;
	ssize_t n;

	fd = socket(fam, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	sock_timeout(fd);
	if (connect(fd, (struct sockaddr *)&ss, len)) {
		err = -errno;
		goto out;
	}
	n = read(fd, answer, alen - 1);
	if (n < 0)
		err = -errno;
	else
		answer[n] = '\0';
out:
	close(fd);
	return err;
}

/* Two datagrams: the first may be refused by the filter (EPERM), or pass
 * and draw an ICMP error that the second reports (ECONNREFUSED). */
static int udp_send(const char *ip, uint16_t port)
{
	struct sockaddr_storage ss;
	socklen_t len;
	int fam = make_addr(ip, port, &ss, &len), fd, i, err = 0;

	fd = socket(fam, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&ss, len)) {
		err = -errno;
		goto out;
	}
	for (i = 0; i < 2 && !err; i++) {
		if (send(fd, "q", 1, 0) < 0)
			err = -errno;
		usleep(20000);
	}
out:
	close(fd);
	return err;
}

/* One datagram to @ip, and its answer; 0 or the negative errno. */
static int udp_query(const char *ip, uint16_t port, char *answer, size_t alen)
{
	struct sockaddr_storage ss;
	socklen_t len;
	int fam = make_addr(ip, port, &ss, &len), fd, err = 0;
	ssize_t n;

	fd = socket(fam, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	sock_timeout(fd);
	/* Connected: only an answer from @ip:@port is received. */
	if (connect(fd, (struct sockaddr *)&ss, len) || send(fd, "q", 1, 0) < 0) {
		err = -errno;
		goto out;
	}
	n = recv(fd, answer, alen - 1, 0);
	if (n < 0)
		err = -errno;
	else
		answer[n] = '\0';
out:
	close(fd);
	return err;
}

static int net_setup(struct child_ctx *cx)
{
	static const char *const cmds[] = {
		"ip link set lo up",
		/* veth rather than dummy: some kernels build dummy as a module
		 * that is not there. The peer never answers. */
		"ip link add egdtest0 type veth peer name egdtest1",
		"ip link set egdtest0 up",
		"ip link set egdtest1 up",
		"ip addr add 10.99.0.1/24 dev egdtest0",
		"ip -6 addr add fd00:99::1/64 dev egdtest0 nodad",
		/* So that metadata addresses route, as on a real host. */
		"ip route add default via 10.99.0.2 dev egdtest0",
		"ip -6 route add default via fd00:99::2 dev egdtest0",
	};
	size_t i;

	for (i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
		char line[256];

		snprintf(line, sizeof(line), "%s >/dev/null 2>&1", cmds[i]);
		if (system(line)) {
			child_say(cx, "`%s` failed (iproute2 or veth unavailable)", cmds[i]);
			return CHILD_SKIP;
		}
	}
	return 0;
}

/* A raw IP packet of @proto to @ip: what an SCTP, DCCP or ICMP socket, or a
 * raw one, would send. 0 if it left, or the negative errno. */
static int raw_send(const char *ip, int proto)
{
	/* An ICMP echo request, or any bytes for the other protocols. */
	static const uint8_t echo[8] = { 8, 0, 0xf7, 0xff, 0, 0, 0, 0 };
	struct sockaddr_storage ss;
	socklen_t len;
	int fam = make_addr(ip, 0, &ss, &len), fd, err = 0;

	fd = socket(fam, SOCK_RAW | SOCK_CLOEXEC, proto);
	if (fd < 0)
		return -errno;
	if (sendto(fd, echo, sizeof(echo), 0, (struct sockaddr *)&ss, len) < 0)
		err = -errno;
	close(fd);
	return err;
}

/* Refusals that hold in both phases. */
static int both_phases(struct child_ctx *cx, const char *phase)
{
	static const char *const deny[] = { "169.254.169.254", "100.100.100.200", "10.99.0.200",
					    "fd00:ec2::254", "fd00:99::8001" };
	static const int protos[] = { IPPROTO_ICMP, IPPROTO_SCTP, IPPROTO_DCCP, IPPROTO_UDPLITE,
				      253 /* experimental (RFC 3692) */ };
	char ans[128] = "";
	size_t i;
	int err;

	/* Metadata and the operator's CIDRs: refused before the redirect, so
	 * the daemon never even sees the flow. */
	for (i = 0; i < sizeof(deny) / sizeof(deny[0]); i++) {
		err = tcp_dial(deny[i], OUTSIDE_PORT, ans, sizeof(ans));
		CHECK(cx, err == -ECONNREFUSED || err == -EPERM, "%s: TCP to %s: %d '%s'", phase,
		      deny[i], err, ans);
		err = udp_send(deny[i], QUIC_PORT);
		CHECK(cx, err == -EPERM || err == -ECONNREFUSED, "%s: UDP to %s: %d", phase,
		      deny[i], err);
	}
	/* Only TCP and UDP leave. */
	for (i = 0; i < sizeof(protos) / sizeof(protos[0]); i++) {
		err = raw_send(OUTSIDE4, protos[i]);
		CHECK(cx, err == -EPERM, "%s: IP protocol %d left: %d", phase, protos[i], err);
	}
	err = raw_send(OUTSIDE6, IPPROTO_ICMPV6);
	CHECK(cx, err == -EPERM, "%s: ICMPv6 echo left: %d", phase, err);
	/* DNS to any address lands on the DNS listener, v4 and v6. */
	err = udp_query(OUTSIDE4, 53, ans, sizeof(ans));
	CHECK(cx, err == 0 && !strcmp(ans, "dns"), "%s: DNS v4 not redirected: %d", phase, err);
	err = udp_query(OUTSIDE6, 53, ans, sizeof(ans));
	CHECK(cx, err == 0 && !strcmp(ans, "dns"), "%s: DNS v6 not redirected: %d", phase, err);
	err = udp_query("127.0.0.1", DNS_PORT, ans, sizeof(ans));
	CHECK(cx, err == -EPERM || err == -ECONNREFUSED, "%s: direct DNS dial: %d", phase, err);
	return 0;
}

static int agent_checks(struct child_ctx *cx, struct egd_nft_config *c)
{
	struct egd_ip ic = { .family = EGD_AF_INET };
	struct sockaddr_storage ss;
	uint64_t pkts = 0;
	socklen_t len;
	char ans[128];
	int err, fd;

	err = tcp_dial(OUTSIDE4, OUTSIDE_PORT, ans, sizeof(ans));
	CHECK(cx, err == 0, "agent TCP to " OUTSIDE4 ": %s", strerror(-err));
	CHECK(cx, !strcmp(ans, OUTSIDE4 " 80"), "v4 original dst: '%s'", ans);
	err = tcp_dial(OUTSIDE6, OUTSIDE_PORT, ans, sizeof(ans));
	CHECK(cx, err == 0, "agent TCP to " OUTSIDE6 ": %s", strerror(-err));
	CHECK(cx, !strcmp(ans, OUTSIDE6 " 80"), "v6 original dst: '%s'", ans);

	/* Direct dials to the listener are refused, not served. */
	err = tcp_dial("127.0.0.1", LISTEN_PORT, ans, sizeof(ans));
	CHECK(cx, err == -ECONNREFUSED, "direct dial 127.0.0.1: %d %s", err, ans);
	err = tcp_dial("::1", LISTEN_PORT, ans, sizeof(ans));
	CHECK(cx, err == -ECONNREFUSED, "direct dial ::1: %d", err);
	/* Loopback in the agent phase: the allowed port only. Nothing
	 * listens there, so the stack refuses; the filter does not. */
	err = udp_send("127.0.0.1", LOOPBACK_ALLOWED_PORT);
	CHECK(cx, err == 0 || err == -ECONNREFUSED, "allowed loopback port: %d", err);
	err = udp_send("127.0.0.1", 9);
	CHECK(cx, err == -EPERM, "other loopback port in the agent phase: %d", err);

	/* QUIC and other UDP: refused in the agent phase. */
	err = udp_send(OUTSIDE4, QUIC_PORT);
	CHECK(cx, err == -EPERM || err == -ECONNREFUSED, "agent-phase UDP v4: %d", err);
	err = udp_send(OUTSIDE6, QUIC_PORT);
	CHECK(cx, err == -EPERM || err == -ECONNREFUSED, "agent-phase UDP v6: %d", err);
	if (both_phases(cx, "agent phase"))
		return -1;

	/* Each refusal was counted where /metrics will read it. */
	CHECK(cx, !egd_nft_counter(EGD_NFT_CNT_DIRECT_DIAL, &pkts) && pkts >= 2,
	      "direct_dial counter: %llu", (unsigned long long)pkts);
	CHECK(cx, !egd_nft_counter(EGD_NFT_CNT_REFUSED_UDP, &pkts) && pkts >= 2,
	      "refused_udp counter: %llu", (unsigned long long)pkts);
	CHECK(cx, !egd_nft_counter(EGD_NFT_CNT_DENIED_DST, &pkts) && pkts >= 10,
	      "denied_dst counter: %llu", (unsigned long long)pkts);
	CHECK(cx, egd_nft_counter("no_such_counter", &pkts) == -ENOENT, "unknown counter");

	CHECK(cx, egd_nft_set_phase(EGD_PHASE_VERIFICATION) == 0, "flip");
	CHECK(cx, egd_nft_verify(c, EGD_PHASE_VERIFICATION) == 0, "verify after flip");
	err = udp_send(OUTSIDE4, QUIC_PORT);
	CHECK(cx, err == 0, "verification-phase UDP v4: %s", strerror(-err));
	err = udp_send("127.0.0.1", 9);
	CHECK(cx, err == 0 || err == -ECONNREFUSED, "loopback in verification: %d", err);
	err = tcp_dial(OUTSIDE4, OUTSIDE_PORT, ans, sizeof(ans));
	CHECK(cx, err == 0 && !strcmp(ans, OUTSIDE4 " 80"), "TCP still captured: %d", err);
	if (both_phases(cx, "verification phase"))
		return -1;
	/* QUIC to an intercept address: refused in this phase too. */
	inet_pton(AF_INET, OUTSIDE4, ic.addr);
	CHECK(cx, egd_nft_icaddr_add(&ic, 30) == 0, "icaddr_add");
	err = udp_send(OUTSIDE4, QUIC_PORT);
	CHECK(cx, err == -EPERM || err == -ECONNREFUSED, "QUIC to an intercept address: %d", err);

	/* Re-lock: a UDP flow of the verification phase carries nothing
	 * once the agent phase is back. */
	fd = socket(AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	CHECK(cx, fd >= 0, "socket");
	make_addr(OUTSIDE6, QUIC_PORT, &ss, &len);
	CHECK(cx, connect(fd, (struct sockaddr *)&ss, len) == 0 && send(fd, "v", 1, 0) == 1,
	      "verification-phase UDP flow");
	CHECK(cx, egd_nft_set_phase(EGD_PHASE_AGENT) == 0, "flip back");
	err = send(fd, "a", 1, 0) < 0 ? -errno : 0;
	close(fd);
	CHECK(cx, err == -EPERM, "verification-phase UDP flow after the re-lock: %d", err);
	err = udp_send(OUTSIDE4, QUIC_PORT);
	CHECK(cx, err == -EPERM || err == -ECONNREFUSED, "UDP after flip back: %d", err);
	return 0;
}

static int traffic(struct child_ctx *cx, void *arg)
{
	struct cgroups *cg = arg;
	struct egd_nft_config c;
	int ready[2], err, ret;
	pid_t daemon;
	char ok;

	ret = net_setup(cx);
	if (ret)
		return ret;
	base_config(&c);
	c.daemon_cgroup_id = cg->daemon_id;
	c.daemon_cgroup_level = cg->daemon_level;
	err = egd_nft_install(&c, EGD_PHASE_AGENT);
	if (err == -EOPNOTSUPP || err == -ENOENT) {
		child_say(cx, "nf_tables unavailable: %s", strerror(-err));
		return CHILD_SKIP;
	}
	CHECK(cx, err == 0, "install: %s", strerror(-err));
	CHECK(cx, egd_nft_verify(&c, EGD_PHASE_AGENT) == 0, "verify");

	CHECK(cx, pipe(ready) == 0, "pipe");
	daemon = fork();
	CHECK(cx, daemon >= 0, "fork");
	if (daemon == 0) {
		int fd4, fd6, fdu, fdu6;

		/* The daemon's own UDP leaves even in the agent phase. */
		ok = 'y';
		if (enter_cgroup(cg->daemon) || udp_send(OUTSIDE4, QUIC_PORT))
			ok = 'u';
		fd4 = listen_on("127.0.0.1", LISTEN_PORT, SOCK_STREAM);
		fd6 = listen_on("::1", LISTEN_PORT, SOCK_STREAM);
		fdu = listen_on("127.0.0.1", DNS_PORT, SOCK_DGRAM);
		fdu6 = listen_on("::1", DNS_PORT, SOCK_DGRAM);
		if (fd4 < 0 || fd6 < 0 || fdu < 0 || fdu6 < 0)
			ok = 'l';
		(void)!write(ready[1], &ok, 1);
		if (ok == 'y')
			daemon_serve(fd4, fd6, fdu, fdu6);
		_exit(0);
	}
	close(ready[1]);
	ok = 0;
	(void)!read(ready[0], &ok, 1);
	close(ready[0]);
	if (ok != 'y') {
		kill(daemon, SIGKILL);
		waitpid(daemon, NULL, 0);
		if (ok == 'u')
			return child_say(cx, "daemon-cgroup UDP was refused");
		return child_say(cx, "daemon could not enter its cgroup or listen");
	}
	/* This process is now the agent: same uid as the daemon, other cgroup. */
	ret = enter_cgroup(cg->agent);
	if (ret)
		child_say(cx, "enter agent cgroup: %s", strerror(-ret));
	else
		ret = agent_checks(cx, &c);
	kill(daemon, SIGKILL);
	waitpid(daemon, NULL, 0);
	return ret;
}

static void test_agent_traffic_is_captured_and_udp_refused(void **state)
{
	char why[256] = "";
	struct cgroups cg;

	(void)state;
	if (geteuid() != 0) {
		print_message("skip: needs root (cgroups, network namespace)\n");
		skip();
	}
	if (cgroups_create(&cg, why, sizeof(why))) {
		cgroups_remove(&cg);
		print_message("skip: %s\n", why);
		skip();
	}
	/* The cgroups outlive the child; remove them whatever happened. cmocka
	 * failures longjmp, so run first, clean up, then report. */
	{
		char msg[CHILD_MSG_BYTES] = "";
		int fds[2], status = 0;
		ssize_t n;
		pid_t pid;

		assert_int_equal(pipe(fds), 0);
		pid = fork();
		if (pid == 0) {
			struct child_ctx cx = { .fd = fds[1] };
			int ret;

			close(fds[0]);
			if (unshare(CLONE_NEWNET)) {
				child_say(&cx, "unshare(CLONE_NEWNET): %s", strerror(errno));
				_exit(CHILD_SKIP);
			}
			ret = traffic(&cx, &cg);
			_exit(ret == CHILD_SKIP ? CHILD_SKIP : ret ? 1 : 0);
		}
		close(fds[1]);
		n = pid > 0 ? read(fds[0], msg, sizeof(msg) - 1) : 0;
		msg[n > 0 ? n : 0] = '\0';
		close(fds[0]);
		if (pid > 0)
			waitpid(pid, &status, 0);
		cgroups_remove(&cg);
		assert_true(pid > 0);
		if (WIFEXITED(status) && WEXITSTATUS(status) == CHILD_SKIP) {
			print_message("skip: %s\n", msg);
			skip();
		}
		if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
			fail_msg("in the test namespace: %s (status 0x%x)", msg, status);
	}
	{
		struct stat st;

		assert_int_not_equal(stat(cg.top, &st), 0);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_batch_replaces_table_atomically),
		cmocka_unit_test(test_chains_hook_output_and_filter_drops_by_default),
		cmocka_unit_test(test_nat_exempts_daemon_cgroup_then_redirects_tcp),
		cmocka_unit_test(test_dns_to_any_address_goes_to_the_dns_listener),
		cmocka_unit_test(test_deny_chain_runs_first_and_refuses_the_deny_sets),
		cmocka_unit_test(test_deny_sets_hold_defaults_and_operator_cidrs_merged),
		cmocka_unit_test(test_cidr_and_port_lists_parse_strictly),
		cmocka_unit_test(test_filter_judges_every_packet_by_the_phase),
		cmocka_unit_test(test_daemon_flows_are_marked_and_their_packets_pass),
		cmocka_unit_test(test_refuse_rejects_fast_with_counters_and_rate_limited_log),
		cmocka_unit_test(test_agent_phase_element_jumps_to_refuse),
		cmocka_unit_test(test_verification_phase_element_accepts),
		cmocka_unit_test(test_phase_flip_is_one_element_swapped_in_one_transaction),
		cmocka_unit_test(test_uid_fallback_adds_skuid_match),
		cmocka_unit_test(test_configs_that_would_open_the_agent_are_refused),
		cmocka_unit_test(test_kernel_install_verify_flip_tamper_remove),
		cmocka_unit_test(test_agent_traffic_is_captured_and_udp_refused),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
