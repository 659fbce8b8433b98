/* SPDX-License-Identifier: MIT */
/*
 * The nftables fallback datapath (see nft.h). The ruleset is described once,
 * as libnftnl objects in a `struct model`; the same model is serialised into
 * the install batch and compared, rule by rule and element by element, with
 * what the kernel reports back. There is no second, hand-written description
 * of the ruleset to drift from the first.
 *
 * What the table looks like (`nft list table inet egressd`):
 *
 *   chain nat_output     nat hook output, priority dstnat - 1, policy accept:
 *       the daemon returns; DNS (udp/tcp 53) goes to the DNS listener if
 *       there is one; loopback returns; every other TCP is redirected to the
 *       transparent listener (127.0.0.1 or ::1, by family).
 *   chain filter_output  filter hook output, priority filter, policy drop:
 *       established/related, the daemon, redirected flows (ct status dnat);
 *       direct dials to the daemon's ports on loopback are refused; the rest
 *       of loopback; DNS to the resolvers; IPv6 neighbour discovery; TCP
 *       that was not captured is refused; then `meta mark & 0 vmap @phase`.
 *   map phase            one element, key 0: `jump refuse` in the agent
 *       phase, `accept` in the verification phase.
 *   chain refuse         rate-limited log, then reject: TCP reset, ICMP port
 *       unreachable for UDP, admin-prohibited for the rest, each counted.
 *
 * Why dstnat - 1: Docker installs its own nat output rules for its embedded
 * resolver (127.0.0.11) at dstnat; running first means the agent's DNS goes
 * to our listener, while the daemon's own DNS is exempt here and still gets
 * Docker's translation.
 */
#include "datapath/nft.h"
#include "core/log.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <libmnl/libmnl.h>
#include <libnftnl/chain.h>
#include <libnftnl/common.h>
#include <libnftnl/expr.h>
#include <libnftnl/object.h>
#include <libnftnl/rule.h>
#include <libnftnl/set.h>
#include <libnftnl/table.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_conntrack_common.h>
#include <linux/netfilter/nf_nat.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>

/* Upper bounds of the model; more is a bug (-E2BIG) or, read back, tampering. */
#define MODEL_CHAINS_MAX 4
#define MODEL_SETS_MAX 4
#define MODEL_OBJS_MAX 4
#define MODEL_RULES_MAX 48

/* Expressions of one rule as text, for comparing with the kernel's copy. */
#define RULE_TEXT_MAX_BYTES 2048

/* Receive buffer for dumps; the kernel sends at most a page per message. */
#define NL_RECV_BYTES MNL_SOCKET_BUFFER_SIZE

/* Refused packets logged per second (and burst): enough to see what an
 * agent is trying, too few for an agent to flood the log. The kernel only
 * logs from a non-initial netns when net.netfilter.nf_log_all_netns=1; the
 * named counters below work everywhere and are what /metrics reads. */
#define REFUSE_LOG_RATE_PER_S 10
#define REFUSE_LOG_UNIT_S 1
#define REFUSE_LOG_BURST_PKTS 20
#define REFUSE_LOG_LEVEL 4 /* warning */
#define REFUSE_LOG_PREFIX "egressd refused: "

/* nat output runs just before Docker's (and everyone's) dstnat rules. */
#define NAT_OUTPUT_PRIORITY (-101)
#define FILTER_OUTPUT_PRIORITY 0

/* Every network namespace numbers its loopback device 1 (LOOPBACK_IFINDEX). */
#define LOOPBACK_IFINDEX 1

/* The root of cgroup v2 has id 1; matching it would exempt every socket. */
#define CGROUP2_ROOT_ID 1

#define DNS_PORT 53

/* ICMPv6 router solicitation .. neighbour advertisement (RFC 4861), sent
 * with hop limit 255 and never routed off the link. */
#define ICMPV6_NDP_FIRST 133
#define ICMPV6_NDP_LAST 136
#define NDP_HOP_LIMIT 255

/* Key types as nft(8) numbers them, so that `nft list` prints the sets. */
#define NFT_TYPE_IPADDR 7
#define NFT_TYPE_IP6ADDR 8
#define NFT_TYPE_INET_SERVICE 13
#define NFT_TYPE_MARK 19

#define CHAIN_NAT "nat_output"
#define CHAIN_FILTER "filter_output"
#define CHAIN_REFUSE "refuse"
#define SET_PORTS "daemon_ports"
#define SET_RESOLVERS4 "resolvers4"
#define SET_RESOLVERS6 "resolvers6"
#define MAP_PHASE "phase"
/* The phase map has one element; its key is this constant. */
#define PHASE_KEY 0u

/* Set ids tie sets to the rules and elements of the same batch. */
enum set_id { SETID_PORTS = 1, SETID_RES4, SETID_RES6, SETID_PHASE };

struct model {
	struct nftnl_table *table;
	struct nftnl_obj *objs[MODEL_OBJS_MAX];
	struct nftnl_chain *chains[MODEL_CHAINS_MAX];
	struct nftnl_set *sets[MODEL_SETS_MAX];
	struct nftnl_rule *rules[MODEL_RULES_MAX];
	size_t n_objs, n_chains, n_sets, n_rules;
	/* First failure, sticky: the builder reads as a list of rules and
	 * checks once at the end. */
	int err;
};

/* ------------------------------------------------------------------------
 * Model: the ruleset as libnftnl objects
 */

static void model_free(struct model *m)
{
	size_t i;

	if (m->table)
		nftnl_table_free(m->table);
	for (i = 0; i < m->n_objs; i++)
		nftnl_obj_free(m->objs[i]);
	for (i = 0; i < m->n_chains; i++)
		nftnl_chain_free(m->chains[i]);
	for (i = 0; i < m->n_sets; i++)
		nftnl_set_free(m->sets[i]);
	for (i = 0; i < m->n_rules; i++)
		nftnl_rule_free(m->rules[i]);
	memset(m, 0, sizeof(*m));
}

static void fail(struct model *m, int err)
{
	if (!m->err)
		m->err = err;
}

static struct nftnl_table *table_new(void)
{
	struct nftnl_table *t = nftnl_table_alloc();

	if (!t)
		return NULL;
	nftnl_table_set_u32(t, NFTNL_TABLE_FAMILY, NFPROTO_INET);
	nftnl_table_set_str(t, NFTNL_TABLE_NAME, EGD_NFT_TABLE);
	return t;
}

static void obj_counter(struct model *m, const char *name)
{
	struct nftnl_obj *o;

	if (m->n_objs == MODEL_OBJS_MAX)
		return fail(m, -E2BIG);
	o = nftnl_obj_alloc();
	if (!o)
		return fail(m, -ENOMEM);
	nftnl_obj_set_u32(o, NFTNL_OBJ_FAMILY, NFPROTO_INET);
	nftnl_obj_set_str(o, NFTNL_OBJ_TABLE, EGD_NFT_TABLE);
	nftnl_obj_set_str(o, NFTNL_OBJ_NAME, name);
	nftnl_obj_set_u32(o, NFTNL_OBJ_TYPE, NFT_OBJECT_COUNTER);
	m->objs[m->n_objs++] = o;
}

static void chain_new(struct model *m, const char *name, const char *type, uint32_t hook, int prio,
		      uint32_t policy)
{
	struct nftnl_chain *c;

	if (m->n_chains == MODEL_CHAINS_MAX)
		return fail(m, -E2BIG);
	c = nftnl_chain_alloc();
	if (!c)
		return fail(m, -ENOMEM);
	nftnl_chain_set_u32(c, NFTNL_CHAIN_FAMILY, NFPROTO_INET);
	nftnl_chain_set_str(c, NFTNL_CHAIN_TABLE, EGD_NFT_TABLE);
	nftnl_chain_set_str(c, NFTNL_CHAIN_NAME, name);
	if (type) {
		nftnl_chain_set_str(c, NFTNL_CHAIN_TYPE, type);
		nftnl_chain_set_u32(c, NFTNL_CHAIN_HOOKNUM, hook);
		nftnl_chain_set_s32(c, NFTNL_CHAIN_PRIO, prio);
		nftnl_chain_set_u32(c, NFTNL_CHAIN_POLICY, policy);
	}
	m->chains[m->n_chains++] = c;
}

static struct nftnl_set *set_new(struct model *m, const char *name, uint32_t id, uint32_t key_type,
				 uint32_t key_len, bool verdict_map)
{
	struct nftnl_set *s;

	if (m->n_sets == MODEL_SETS_MAX) {
		fail(m, -E2BIG);
		return NULL;
	}
	s = nftnl_set_alloc();
	if (!s) {
		fail(m, -ENOMEM);
		return NULL;
	}
	nftnl_set_set_u32(s, NFTNL_SET_FAMILY, NFPROTO_INET);
	nftnl_set_set_str(s, NFTNL_SET_TABLE, EGD_NFT_TABLE);
	nftnl_set_set_str(s, NFTNL_SET_NAME, name);
	nftnl_set_set_u32(s, NFTNL_SET_ID, id);
	nftnl_set_set_u32(s, NFTNL_SET_KEY_TYPE, key_type);
	nftnl_set_set_u32(s, NFTNL_SET_KEY_LEN, key_len);
	if (verdict_map) {
		nftnl_set_set_u32(s, NFTNL_SET_FLAGS, NFT_SET_MAP);
		nftnl_set_set_u32(s, NFTNL_SET_DATA_TYPE, NFT_DATA_VERDICT);
		nftnl_set_set_u32(s, NFTNL_SET_DATA_LEN, sizeof(uint32_t));
	} else {
		nftnl_set_set_u32(s, NFTNL_SET_FLAGS, 0);
	}
	m->sets[m->n_sets++] = s;
	return s;
}

/* One element; @chain != NULL makes it a jump, else @verdict alone. */
static void set_elem(struct model *m, struct nftnl_set *s, const void *key, uint32_t len,
		     int verdict, const char *chain)
{
	struct nftnl_set_elem *e;

	if (!s)
		return;
	e = nftnl_set_elem_alloc();
	if (!e)
		return fail(m, -ENOMEM);
	nftnl_set_elem_set(e, NFTNL_SET_ELEM_KEY, key, len);
	if (verdict != NFT_CONTINUE) {
		nftnl_set_elem_set_u32(e, NFTNL_SET_ELEM_VERDICT, verdict);
		if (chain)
			nftnl_set_elem_set_str(e, NFTNL_SET_ELEM_CHAIN, chain);
	}
	nftnl_set_elem_add(s, e);
}

static void phase_elem(struct model *m, struct nftnl_set *s, enum egd_phase phase)
{
	uint32_t key = PHASE_KEY;

	if (phase == EGD_PHASE_VERIFICATION)
		set_elem(m, s, &key, sizeof(key), NF_ACCEPT, NULL);
	else
		set_elem(m, s, &key, sizeof(key), NFT_JUMP, CHAIN_REFUSE);
}

static struct nftnl_rule *rule_new(struct model *m, const char *chain)
{
	struct nftnl_rule *r;

	if (m->err)
		return NULL;
	if (m->n_rules == MODEL_RULES_MAX) {
		fail(m, -E2BIG);
		return NULL;
	}
	r = nftnl_rule_alloc();
	if (!r) {
		fail(m, -ENOMEM);
		return NULL;
	}
	nftnl_rule_set_u32(r, NFTNL_RULE_FAMILY, NFPROTO_INET);
	nftnl_rule_set_str(r, NFTNL_RULE_TABLE, EGD_NFT_TABLE);
	nftnl_rule_set_str(r, NFTNL_RULE_CHAIN, chain);
	m->rules[m->n_rules++] = r;
	return r;
}

static struct nftnl_expr *expr_add(struct model *m, struct nftnl_rule *r, const char *name)
{
	struct nftnl_expr *e;

	if (!r)
		return NULL;
	e = nftnl_expr_alloc(name);
	if (!e) {
		fail(m, -ENOMEM);
		return NULL;
	}
	nftnl_rule_add_expr(r, e);
	return e;
}

/* ------------------------------------------------------------------------
 * Matches and statements, each the expressions nft(8) would generate
 */

static void cmp(struct model *m, struct nftnl_rule *r, enum nft_cmp_ops op, const void *data,
		uint32_t len)
{
	struct nftnl_expr *e = expr_add(m, r, "cmp");

	if (!e)
		return;
	nftnl_expr_set_u32(e, NFTNL_EXPR_CMP_SREG, NFT_REG_1);
	nftnl_expr_set_u32(e, NFTNL_EXPR_CMP_OP, op);
	nftnl_expr_set(e, NFTNL_EXPR_CMP_DATA, data, len);
}

static void load_meta(struct model *m, struct nftnl_rule *r, enum nft_meta_keys key)
{
	struct nftnl_expr *e = expr_add(m, r, "meta");

	if (!e)
		return;
	nftnl_expr_set_u32(e, NFTNL_EXPR_META_KEY, key);
	nftnl_expr_set_u32(e, NFTNL_EXPR_META_DREG, NFT_REG_1);
}

static void load_payload(struct model *m, struct nftnl_rule *r, enum nft_payload_bases base,
			 uint32_t offset, uint32_t len)
{
	struct nftnl_expr *e = expr_add(m, r, "payload");

	if (!e)
		return;
	nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_BASE, base);
	nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_OFFSET, offset);
	nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_LEN, len);
	nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_DREG, NFT_REG_1);
}

/* reg1 & mask != 0: how nft matches flags such as ct state. */
static void any_bit(struct model *m, struct nftnl_rule *r, uint32_t mask)
{
	struct nftnl_expr *e = expr_add(m, r, "bitwise");
	uint32_t zero = 0;

	if (!e)
		return;
	nftnl_expr_set_u32(e, NFTNL_EXPR_BITWISE_SREG, NFT_REG_1);
	nftnl_expr_set_u32(e, NFTNL_EXPR_BITWISE_DREG, NFT_REG_1);
	nftnl_expr_set_u32(e, NFTNL_EXPR_BITWISE_LEN, sizeof(mask));
	nftnl_expr_set(e, NFTNL_EXPR_BITWISE_MASK, &mask, sizeof(mask));
	nftnl_expr_set(e, NFTNL_EXPR_BITWISE_XOR, &zero, sizeof(zero));
	cmp(m, r, NFT_CMP_NEQ, &zero, sizeof(zero));
}

static void match_u8(struct model *m, struct nftnl_rule *r, enum nft_meta_keys key, uint8_t v)
{
	load_meta(m, r, key);
	cmp(m, r, NFT_CMP_EQ, &v, sizeof(v));
}

static void match_nfproto(struct model *m, struct nftnl_rule *r, uint8_t nfproto)
{
	match_u8(m, r, NFT_META_NFPROTO, nfproto);
}

static void match_l4proto(struct model *m, struct nftnl_rule *r, uint8_t proto)
{
	match_u8(m, r, NFT_META_L4PROTO, proto);
}

/* l4proto, then the destination port (offset 2 in both TCP and UDP). */
static void match_dport(struct model *m, struct nftnl_rule *r, uint8_t proto, uint16_t port)
{
	uint16_t be = htons(port);

	match_l4proto(m, r, proto);
	load_payload(m, r, NFT_PAYLOAD_TRANSPORT_HEADER, 2, sizeof(be));
	cmp(m, r, NFT_CMP_EQ, &be, sizeof(be));
}

static void lookup(struct model *m, struct nftnl_rule *r, const char *set, uint32_t id, int dreg)
{
	struct nftnl_expr *e = expr_add(m, r, "lookup");

	if (!e)
		return;
	nftnl_expr_set_u32(e, NFTNL_EXPR_LOOKUP_SREG, NFT_REG_1);
	nftnl_expr_set_str(e, NFTNL_EXPR_LOOKUP_SET, set);
	nftnl_expr_set_u32(e, NFTNL_EXPR_LOOKUP_SET_ID, id);
	/* Reported back by the kernel even when zero. */
	nftnl_expr_set_u32(e, NFTNL_EXPR_LOOKUP_FLAGS, 0);
	if (dreg >= 0)
		nftnl_expr_set_u32(e, NFTNL_EXPR_LOOKUP_DREG, dreg);
}

static void match_oif_lo(struct model *m, struct nftnl_rule *r)
{
	uint32_t lo = LOOPBACK_IFINDEX;

	load_meta(m, r, NFT_META_OIF);
	cmp(m, r, NFT_CMP_EQ, &lo, sizeof(lo));
}

static void match_ct(struct model *m, struct nftnl_rule *r, enum nft_ct_keys key, uint32_t mask)
{
	struct nftnl_expr *e = expr_add(m, r, "ct");

	if (!e)
		return;
	nftnl_expr_set_u32(e, NFTNL_EXPR_CT_KEY, key);
	nftnl_expr_set_u32(e, NFTNL_EXPR_CT_DREG, NFT_REG_1);
	any_bit(m, r, mask);
}

static void verdict(struct model *m, struct nftnl_rule *r, int code, const char *chain)
{
	struct nftnl_expr *e = expr_add(m, r, "immediate");

	if (!e)
		return;
	nftnl_expr_set_u32(e, NFTNL_EXPR_IMM_DREG, NFT_REG_VERDICT);
	nftnl_expr_set_u32(e, NFTNL_EXPR_IMM_VERDICT, code);
	if (chain)
		nftnl_expr_set_str(e, NFTNL_EXPR_IMM_CHAIN, chain);
}

static void count(struct model *m, struct nftnl_rule *r, const char *counter)
{
	struct nftnl_expr *e = expr_add(m, r, "objref");

	if (!e)
		return;
	nftnl_expr_set_u32(e, NFTNL_EXPR_OBJREF_IMM_TYPE, NFT_OBJECT_COUNTER);
	nftnl_expr_set_str(e, NFTNL_EXPR_OBJREF_IMM_NAME, counter);
}

static void redirect(struct model *m, struct nftnl_rule *r, uint16_t port)
{
	struct nftnl_expr *e;
	uint16_t be = htons(port);

	e = expr_add(m, r, "immediate");
	if (!e)
		return;
	nftnl_expr_set_u32(e, NFTNL_EXPR_IMM_DREG, NFT_REG_1);
	nftnl_expr_set(e, NFTNL_EXPR_IMM_DATA, &be, sizeof(be));
	e = expr_add(m, r, "redir");
	if (!e)
		return;
	nftnl_expr_set_u32(e, NFTNL_EXPR_REDIR_REG_PROTO_MIN, NFT_REG_1);
	nftnl_expr_set_u32(e, NFTNL_EXPR_REDIR_REG_PROTO_MAX, NFT_REG_1);
	/* The kernel adds this flag itself when a port register is given and
	 * reports it back; setting it here keeps verify exact. */
	nftnl_expr_set_u32(e, NFTNL_EXPR_REDIR_FLAGS, NF_NAT_RANGE_PROTO_SPECIFIED);
}

static void reject(struct model *m, struct nftnl_rule *r, uint32_t type, int code)
{
	struct nftnl_expr *e = expr_add(m, r, "reject");

	if (!e)
		return;
	nftnl_expr_set_u32(e, NFTNL_EXPR_REJECT_TYPE, type);
	if (code >= 0)
		nftnl_expr_set_u8(e, NFTNL_EXPR_REJECT_CODE, code);
}

/*
 * The daemon's own sockets. Primary: `socket cgroupv2 level N <id>`, which
 * the agent cannot fake: it would have to move itself into the daemon's
 * cgroup, and cgroupfs is read-only to it. Note that a descendant cgroup of
 * the daemon's also matches (its ancestor at level N is the daemon's), so
 * the agent must never run below the daemon's cgroup.
 *
 * Fallback, only where cgroup matching is unavailable (kernel without
 * `socket cgroupv2`, cgroup v1 only): `meta skuid <uid>`. The trade-off: a
 * uid is not a boundary the agent cannot cross. Any agent process that runs
 * as, or can setuid to, that uid (root in the container, a shared uid
 * namespace mapping, a setuid binary) is exempt from capture. Use it only
 * with a uid dedicated to the daemon that nothing in the agent can reach; we
 * refuse uid 0 outright because agents routinely run as root.
 */
static void daemon_exempt(struct model *m, const struct egd_nft_config *cfg, const char *chain,
			  int code)
{
	struct nftnl_rule *r;

	if (cfg->daemon_cgroup_id) {
		struct nftnl_expr *e;

		r = rule_new(m, chain);
		e = expr_add(m, r, "socket");
		if (e) {
			nftnl_expr_set_u32(e, NFTNL_EXPR_SOCKET_KEY, NFT_SOCKET_CGROUPV2);
			nftnl_expr_set_u32(e, NFTNL_EXPR_SOCKET_DREG, NFT_REG_1);
			nftnl_expr_set_u32(e, NFTNL_EXPR_SOCKET_LEVEL, cfg->daemon_cgroup_level);
		}
		cmp(m, r, NFT_CMP_EQ, &cfg->daemon_cgroup_id, sizeof(cfg->daemon_cgroup_id));
		verdict(m, r, code, NULL);
	}
	if (cfg->use_uid_fallback) {
		r = rule_new(m, chain);
		load_meta(m, r, NFT_META_SKUID);
		cmp(m, r, NFT_CMP_EQ, &cfg->daemon_uid, sizeof(cfg->daemon_uid));
		verdict(m, r, code, NULL);
	}
}

static void build_nat(struct model *m, const struct egd_nft_config *cfg)
{
	struct nftnl_rule *r;

	chain_new(m, CHAIN_NAT, "nat", NF_INET_LOCAL_OUT, NAT_OUTPUT_PRIORITY, NF_ACCEPT);
	daemon_exempt(m, cfg, CHAIN_NAT, NFT_RETURN);

	/* DNS first, so that a loopback resolver (Docker's 127.0.0.11) is
	 * captured too. Without a DNS listener, TCP 53 must not land on the
	 * TLS listener: it stays unredirected and filter_output decides. */
	if (cfg->dns_port) {
		r = rule_new(m, CHAIN_NAT);
		match_dport(m, r, IPPROTO_UDP, DNS_PORT);
		redirect(m, r, cfg->dns_port);
		r = rule_new(m, CHAIN_NAT);
		match_dport(m, r, IPPROTO_TCP, DNS_PORT);
		redirect(m, r, cfg->dns_port);
	} else {
		r = rule_new(m, CHAIN_NAT);
		match_dport(m, r, IPPROTO_TCP, DNS_PORT);
		verdict(m, r, NFT_RETURN, NULL);
	}

	r = rule_new(m, CHAIN_NAT);
	match_oif_lo(m, r);
	verdict(m, r, NFT_RETURN, NULL);

	r = rule_new(m, CHAIN_NAT);
	match_l4proto(m, r, IPPROTO_TCP);
	redirect(m, r, cfg->listen_port);
}

static void build_filter(struct model *m, const struct egd_nft_config *cfg)
{
	static const uint8_t protos[] = { IPPROTO_UDP, IPPROTO_TCP };
	struct nftnl_rule *r;
	struct nftnl_expr *e;
	uint8_t lo, hi;
	uint32_t key;
	size_t i;

	chain_new(m, CHAIN_FILTER, "filter", NF_INET_LOCAL_OUT, FILTER_OUTPUT_PRIORITY, NF_DROP);

	r = rule_new(m, CHAIN_FILTER);
	match_ct(m, r, NFT_CT_STATE,
		 NF_CT_STATE_BIT(IP_CT_ESTABLISHED) | NF_CT_STATE_BIT(IP_CT_RELATED));
	verdict(m, r, NF_ACCEPT, NULL);

	daemon_exempt(m, cfg, CHAIN_FILTER, NF_ACCEPT);

	/* Flows our nat chain redirected to a listener: the only way in. */
	r = rule_new(m, CHAIN_FILTER);
	match_ct(m, r, NFT_CT_STATUS, IPS_DST_NAT);
	verdict(m, r, NF_ACCEPT, NULL);

	/* Direct dials to the listeners (not redirected, so no dnat status)
	 * would skip capture and reach the admin API: refuse them. */
	for (i = 0; i < sizeof(protos); i++) {
		r = rule_new(m, CHAIN_FILTER);
		match_oif_lo(m, r);
		match_l4proto(m, r, protos[i]);
		load_payload(m, r, NFT_PAYLOAD_TRANSPORT_HEADER, 2, sizeof(uint16_t));
		lookup(m, r, SET_PORTS, SETID_PORTS, -1);
		count(m, r, EGD_NFT_CNT_DIRECT_DIAL);
		verdict(m, r, NFT_JUMP, CHAIN_REFUSE);
	}

	r = rule_new(m, CHAIN_FILTER);
	match_oif_lo(m, r);
	verdict(m, r, NF_ACCEPT, NULL);

	/* DNS straight to a configured resolver (the DNS listener, once it
	 * exists, catches the agent's DNS in nat_output before this). */
	for (i = 0; i < sizeof(protos); i++) {
		r = rule_new(m, CHAIN_FILTER);
		match_nfproto(m, r, NFPROTO_IPV4);
		match_dport(m, r, protos[i], DNS_PORT);
		load_payload(m, r, NFT_PAYLOAD_NETWORK_HEADER, 16, 4);
		lookup(m, r, SET_RESOLVERS4, SETID_RES4, -1);
		verdict(m, r, NF_ACCEPT, NULL);

		r = rule_new(m, CHAIN_FILTER);
		match_nfproto(m, r, NFPROTO_IPV6);
		match_dport(m, r, protos[i], DNS_PORT);
		load_payload(m, r, NFT_PAYLOAD_NETWORK_HEADER, 24, 16);
		lookup(m, r, SET_RESOLVERS6, SETID_RES6, -1);
		verdict(m, r, NF_ACCEPT, NULL);
	}
	/* DNS anywhere else is refused in both phases: it is a tunnel. */
	r = rule_new(m, CHAIN_FILTER);
	match_dport(m, r, IPPROTO_UDP, DNS_PORT);
	verdict(m, r, NFT_JUMP, CHAIN_REFUSE);

	/* Neighbour discovery is sent by the kernel, not by the daemon, and
	 * IPv6 stops working without it. Hop limit 255 keeps it on-link. */
	r = rule_new(m, CHAIN_FILTER);
	match_nfproto(m, r, NFPROTO_IPV6);
	match_l4proto(m, r, IPPROTO_ICMPV6);
	load_payload(m, r, NFT_PAYLOAD_TRANSPORT_HEADER, 0, 1);
	e = expr_add(m, r, "range");
	if (e) {
		lo = ICMPV6_NDP_FIRST;
		hi = ICMPV6_NDP_LAST;
		nftnl_expr_set_u32(e, NFTNL_EXPR_RANGE_SREG, NFT_REG_1);
		nftnl_expr_set_u32(e, NFTNL_EXPR_RANGE_OP, NFT_RANGE_EQ);
		nftnl_expr_set(e, NFTNL_EXPR_RANGE_FROM_DATA, &lo, sizeof(lo));
		nftnl_expr_set(e, NFTNL_EXPR_RANGE_TO_DATA, &hi, sizeof(hi));
	}
	load_payload(m, r, NFT_PAYLOAD_NETWORK_HEADER, 7, 1);
	hi = NDP_HOP_LIMIT;
	cmp(m, r, NFT_CMP_EQ, &hi, sizeof(hi));
	verdict(m, r, NF_ACCEPT, NULL);

	/* TCP is captured or refused, whatever the phase. */
	r = rule_new(m, CHAIN_FILTER);
	match_l4proto(m, r, IPPROTO_TCP);
	verdict(m, r, NFT_JUMP, CHAIN_REFUSE);

	/* Everything else follows the phase. The key is a constant, so the
	 * phase is one element that one transaction swaps; it is written as
	 * `meta mark & 0` rather than an immediate 0 because nft(8) prints the
	 * former legibly and can read it back. */
	r = rule_new(m, CHAIN_FILTER);
	load_meta(m, r, NFT_META_MARK);
	e = expr_add(m, r, "bitwise");
	if (e) {
		key = PHASE_KEY;
		nftnl_expr_set_u32(e, NFTNL_EXPR_BITWISE_SREG, NFT_REG_1);
		nftnl_expr_set_u32(e, NFTNL_EXPR_BITWISE_DREG, NFT_REG_1);
		nftnl_expr_set_u32(e, NFTNL_EXPR_BITWISE_LEN, sizeof(key));
		nftnl_expr_set(e, NFTNL_EXPR_BITWISE_MASK, &key, sizeof(key));
		nftnl_expr_set(e, NFTNL_EXPR_BITWISE_XOR, &key, sizeof(key));
	}
	lookup(m, r, MAP_PHASE, SETID_PHASE, NFT_REG_VERDICT);
}

static void build_refuse(struct model *m)
{
	struct nftnl_rule *r;
	struct nftnl_expr *e;

	chain_new(m, CHAIN_REFUSE, NULL, 0, 0, 0);

	r = rule_new(m, CHAIN_REFUSE);
	e = expr_add(m, r, "limit");
	if (e) {
		nftnl_expr_set_u64(e, NFTNL_EXPR_LIMIT_RATE, REFUSE_LOG_RATE_PER_S);
		nftnl_expr_set_u64(e, NFTNL_EXPR_LIMIT_UNIT, REFUSE_LOG_UNIT_S);
		nftnl_expr_set_u32(e, NFTNL_EXPR_LIMIT_BURST, REFUSE_LOG_BURST_PKTS);
		nftnl_expr_set_u32(e, NFTNL_EXPR_LIMIT_TYPE, NFT_LIMIT_PKTS);
		nftnl_expr_set_u32(e, NFTNL_EXPR_LIMIT_FLAGS, 0);
	}
	e = expr_add(m, r, "log");
	if (e) {
		nftnl_expr_set_str(e, NFTNL_EXPR_LOG_PREFIX, REFUSE_LOG_PREFIX);
		nftnl_expr_set_u32(e, NFTNL_EXPR_LOG_LEVEL, REFUSE_LOG_LEVEL);
	}

	/* A reset and a port unreachable make connect() and send() fail at
	 * once (ECONNREFUSED, EPERM) instead of hanging until a timeout. */
	r = rule_new(m, CHAIN_REFUSE);
	match_l4proto(m, r, IPPROTO_TCP);
	count(m, r, EGD_NFT_CNT_REFUSED_TCP);
	reject(m, r, NFT_REJECT_TCP_RST, -1);

	r = rule_new(m, CHAIN_REFUSE);
	match_l4proto(m, r, IPPROTO_UDP);
	count(m, r, EGD_NFT_CNT_REFUSED_UDP);
	reject(m, r, NFT_REJECT_ICMPX_UNREACH, NFT_REJECT_ICMPX_PORT_UNREACH);

	r = rule_new(m, CHAIN_REFUSE);
	count(m, r, EGD_NFT_CNT_REFUSED_OTHER);
	reject(m, r, NFT_REJECT_ICMPX_UNREACH, NFT_REJECT_ICMPX_ADMIN_PROHIBITED);
}

static int config_check(const struct egd_nft_config *cfg)
{
	size_t i;

	if (!cfg->listen_port)
		return -EINVAL;
	if (!cfg->daemon_cgroup_id && !cfg->use_uid_fallback) {
		egd_err("nft: no way to recognise the daemon (no cgroup id, no uid fallback)");
		return -EINVAL;
	}
	if (cfg->daemon_cgroup_id == CGROUP2_ROOT_ID) {
		egd_err("nft: the daemon is in the root cgroup: exempting it exempts everyone");
		return -EINVAL;
	}
	if (cfg->use_uid_fallback && cfg->daemon_uid == 0) {
		egd_err("nft: uid fallback with uid 0 would exempt any root agent");
		return -EINVAL;
	}
	if (cfg->n_resolvers > EGD_NFT_RESOLVERS_MAX)
		return -EINVAL;
	for (i = 0; i < cfg->n_resolvers; i++)
		if (cfg->resolvers[i].family != AF_INET && cfg->resolvers[i].family != AF_INET6)
			return -EINVAL;
	return 0;
}

static int model_build(struct model *m, const struct egd_nft_config *cfg, enum egd_phase phase)
{
	struct nftnl_set *ports, *res4, *res6, *map;
	uint16_t port;
	size_t i;
	int err;

	memset(m, 0, sizeof(*m));
	err = config_check(cfg);
	if (err)
		return err;

	m->table = table_new();
	if (!m->table)
		return -ENOMEM;
	obj_counter(m, EGD_NFT_CNT_DIRECT_DIAL);
	obj_counter(m, EGD_NFT_CNT_REFUSED_TCP);
	obj_counter(m, EGD_NFT_CNT_REFUSED_UDP);
	obj_counter(m, EGD_NFT_CNT_REFUSED_OTHER);

	ports = set_new(m, SET_PORTS, SETID_PORTS, NFT_TYPE_INET_SERVICE, sizeof(port), false);
	port = htons(cfg->listen_port);
	set_elem(m, ports, &port, sizeof(port), NFT_CONTINUE, NULL);
	/* A set refuses duplicates, so a port shared by two listeners is
	 * added once. */
	if (cfg->dns_port && cfg->dns_port != cfg->listen_port) {
		port = htons(cfg->dns_port);
		set_elem(m, ports, &port, sizeof(port), NFT_CONTINUE, NULL);
	}
	if (cfg->admin_port && cfg->admin_port != cfg->listen_port &&
	    cfg->admin_port != cfg->dns_port) {
		port = htons(cfg->admin_port);
		set_elem(m, ports, &port, sizeof(port), NFT_CONTINUE, NULL);
	}
	res4 = set_new(m, SET_RESOLVERS4, SETID_RES4, NFT_TYPE_IPADDR, 4, false);
	res6 = set_new(m, SET_RESOLVERS6, SETID_RES6, NFT_TYPE_IP6ADDR, 16, false);
	for (i = 0; i < cfg->n_resolvers; i++) {
		const struct egd_nft_resolver *res = &cfg->resolvers[i];
		size_t j;
		bool dup = false;

		for (j = 0; j < i; j++)
			dup |= res->family == cfg->resolvers[j].family &&
			       !memcmp(res->addr, cfg->resolvers[j].addr, sizeof(res->addr));
		if (dup)
			continue;
		if (res->family == AF_INET)
			set_elem(m, res4, res->addr, 4, NFT_CONTINUE, NULL);
		else
			set_elem(m, res6, res->addr, 16, NFT_CONTINUE, NULL);
	}
	map = set_new(m, MAP_PHASE, SETID_PHASE, NFT_TYPE_MARK, sizeof(uint32_t), true);
	phase_elem(m, map, phase);

	build_refuse(m);
	build_nat(m, cfg);
	build_filter(m, cfg);

	if (m->err) {
		err = m->err;
		model_free(m);
		return err;
	}
	return 0;
}

static int elems_count(struct nftnl_set *s)
{
	struct nftnl_set_elems_iter *it = nftnl_set_elems_iter_create(s);
	int n = 0;

	if (!it)
		return -ENOMEM;
	while (nftnl_set_elems_iter_next(it))
		n++;
	nftnl_set_elems_iter_destroy(it);
	return n;
}

/* ------------------------------------------------------------------------
 * Batches
 */

struct batch {
	struct mnl_nlmsg_batch *b;
	uint32_t seq;
	uint32_t n_acks; /* messages that will be acknowledged */
	size_t len;	 /* of the caller's buffer */
	int err;
};

static struct nlmsghdr *batch_msg(struct batch *bt, uint16_t type, uint16_t flags)
{
	struct nlmsghdr *nlh;

	if (bt->err)
		return NULL;
	/* Each message is at most a page; stop before the buffer overflows. */
	if (mnl_nlmsg_batch_size(bt->b) + getpagesize() > bt->len) {
		bt->err = -ENOSPC;
		return NULL;
	}
	nlh = nftnl_nlmsg_build_hdr(mnl_nlmsg_batch_current(bt->b), type, NFPROTO_INET,
				    flags | NLM_F_ACK, bt->seq++);
	bt->n_acks++;
	return nlh;
}

static void batch_next(struct batch *bt)
{
	if (!bt->err)
		mnl_nlmsg_batch_next(bt->b);
}

static int batch_start(struct batch *bt, void *buf, size_t len)
{
	memset(bt, 0, sizeof(*bt));
	if (len < 2 * (size_t)getpagesize())
		return -ENOSPC;
	bt->len = len;
	bt->b = mnl_nlmsg_batch_start(buf, len);
	if (!bt->b)
		return -ENOMEM;
	bt->seq = (uint32_t)time(NULL);
	nftnl_batch_begin(mnl_nlmsg_batch_current(bt->b), bt->seq++);
	mnl_nlmsg_batch_next(bt->b);
	return 0;
}

static int batch_finish(struct batch *bt)
{
	int len;

	if (!bt->err) {
		nftnl_batch_end(mnl_nlmsg_batch_current(bt->b), bt->seq++);
		mnl_nlmsg_batch_next(bt->b);
	}
	len = bt->err ? bt->err : (int)mnl_nlmsg_batch_size(bt->b);
	mnl_nlmsg_batch_stop(bt->b);
	return len;
}

static void batch_table(struct batch *bt, uint16_t type, uint16_t flags)
{
	struct nftnl_table *t = table_new();
	struct nlmsghdr *nlh;

	if (!t) {
		bt->err = -ENOMEM;
		return;
	}
	nlh = batch_msg(bt, type, flags);
	if (nlh)
		nftnl_table_nlmsg_build_payload(nlh, t);
	batch_next(bt);
	nftnl_table_free(t);
}

static void batch_phase(struct batch *bt, enum egd_phase phase, uint16_t type, uint16_t flags)
{
	struct model m = { 0 };
	struct nftnl_set *s;
	struct nlmsghdr *nlh;

	s = set_new(&m, MAP_PHASE, SETID_PHASE, NFT_TYPE_MARK, sizeof(uint32_t), true);
	if (type == NFT_MSG_DELSETELEM) {
		uint32_t key = PHASE_KEY;

		set_elem(&m, s, &key, sizeof(key), NFT_CONTINUE, NULL);
	} else {
		phase_elem(&m, s, phase);
	}
	if (m.err) {
		bt->err = m.err;
	} else {
		nlh = batch_msg(bt, type, flags);
		if (nlh)
			nftnl_set_elems_nlmsg_build_payload(nlh, s);
		batch_next(bt);
	}
	model_free(&m);
}

/* Add-then-delete makes the delete succeed whether or not the table was
 * there; the whole batch commits or nothing does, so the namespace is never
 * without a table between the two. */
static int batch_install(struct batch *bt, const struct model *m)
{
	struct nlmsghdr *nlh;
	size_t i;

	batch_table(bt, NFT_MSG_NEWTABLE, NLM_F_CREATE);
	batch_table(bt, NFT_MSG_DELTABLE, 0);

	nlh = batch_msg(bt, NFT_MSG_NEWTABLE, NLM_F_CREATE | NLM_F_EXCL);
	if (nlh)
		nftnl_table_nlmsg_build_payload(nlh, m->table);
	batch_next(bt);
	for (i = 0; i < m->n_objs; i++) {
		nlh = batch_msg(bt, NFT_MSG_NEWOBJ, NLM_F_CREATE | NLM_F_EXCL);
		if (nlh)
			nftnl_obj_nlmsg_build_payload(nlh, m->objs[i]);
		batch_next(bt);
	}
	/* Chains before the map: its element jumps to one. */
	for (i = 0; i < m->n_chains; i++) {
		nlh = batch_msg(bt, NFT_MSG_NEWCHAIN, NLM_F_CREATE | NLM_F_EXCL);
		if (nlh)
			nftnl_chain_nlmsg_build_payload(nlh, m->chains[i]);
		batch_next(bt);
	}
	for (i = 0; i < m->n_sets; i++) {
		nlh = batch_msg(bt, NFT_MSG_NEWSET, NLM_F_CREATE | NLM_F_EXCL);
		if (nlh)
			nftnl_set_nlmsg_build_payload(nlh, m->sets[i]);
		batch_next(bt);
		/* An empty set (no resolvers yet) has no element message. */
		if (elems_count(m->sets[i]) <= 0)
			continue;
		nlh = batch_msg(bt, NFT_MSG_NEWSETELEM, NLM_F_CREATE | NLM_F_EXCL);
		if (nlh)
			nftnl_set_elems_nlmsg_build_payload(nlh, m->sets[i]);
		batch_next(bt);
	}
	for (i = 0; i < m->n_rules; i++) {
		nlh = batch_msg(bt, NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND);
		if (nlh)
			nftnl_rule_nlmsg_build_payload(nlh, m->rules[i]);
		batch_next(bt);
	}
	return bt->err;
}

int egd_nft_build(const struct egd_nft_config *cfg, enum egd_phase phase, void *buf, size_t len)
{
	struct model m;
	struct batch bt;
	int err;

	err = model_build(&m, cfg, phase);
	if (err)
		return err;
	err = batch_start(&bt, buf, len);
	if (!err) {
		batch_install(&bt, &m);
		err = batch_finish(&bt);
	}
	model_free(&m);
	return err;
}

/* Delete and re-add the one element: the kernel has no in-place update of
 * an element's verdict, and inside one transaction there is no moment
 * without it. */
int egd_nft_build_phase(enum egd_phase phase, void *buf, size_t len)
{
	struct batch bt;
	int err;

	err = batch_start(&bt, buf, len);
	if (err)
		return err;
	batch_phase(&bt, phase, NFT_MSG_DELSETELEM, 0);
	batch_phase(&bt, phase, NFT_MSG_NEWSETELEM, NLM_F_CREATE | NLM_F_EXCL);
	return batch_finish(&bt);
}

/* ------------------------------------------------------------------------
 * Talking to the kernel
 */

static struct mnl_socket *nl_open(void)
{
	struct mnl_socket *nl = mnl_socket_open(NETLINK_NETFILTER);

	if (!nl)
		return NULL;
	if (mnl_socket_bind(nl, 0, MNL_SOCKET_AUTOPID) < 0) {
		int err = errno;

		mnl_socket_close(nl);
		errno = err;
		return NULL;
	}
	return nl;
}

/*
 * Send a batch and collect one acknowledgement per message. nfnetlink runs
 * the whole transaction inside sendmsg(), so every answer is queued by the
 * time it returns: read without blocking until the queue is empty.
 */
static int nl_send_batch(const void *buf, size_t len, uint32_t n_acks)
{
	char rbuf[NL_RECV_BYTES];
	struct mnl_socket *nl;
	uint32_t acks = 0;
	int err = 0;

	nl = nl_open();
	if (!nl)
		return -errno;
	if (mnl_socket_sendto(nl, buf, len) < 0) {
		err = -errno;
		goto out;
	}
	for (;;) {
		ssize_t n = recv(mnl_socket_get_fd(nl), rbuf, sizeof(rbuf), MSG_DONTWAIT);
		const struct nlmsghdr *nlh;
		int left;

		if (n < 0) {
			if (errno != EAGAIN && errno != EWOULDBLOCK && !err)
				err = -errno;
			break;
		}
		left = (int)n;
		for (nlh = (const struct nlmsghdr *)rbuf; mnl_nlmsg_ok(nlh, left);
		     nlh = mnl_nlmsg_next(nlh, &left)) {
			const struct nlmsgerr *e;

			if (nlh->nlmsg_type != NLMSG_ERROR)
				continue;
			e = mnl_nlmsg_get_payload(nlh);
			if (e->error && !err)
				err = e->error;
			acks++;
		}
	}
	/* No error and no ack would mean the batch was never processed. */
	if (!err && acks != n_acks)
		err = -EPROTO;
out:
	mnl_socket_close(nl);
	return err;
}

static uint32_t batch_acks(const void *buf, size_t len)
{
	const struct nlmsghdr *nlh;
	int left = (int)len;
	uint32_t n = 0;

	for (nlh = buf; mnl_nlmsg_ok(nlh, left); nlh = mnl_nlmsg_next(nlh, &left))
		if (nlh->nlmsg_flags & NLM_F_ACK)
			n++;
	return n;
}

int egd_nft_install(const struct egd_nft_config *cfg, enum egd_phase phase)
{
	char *buf;
	int len, err;

	buf = malloc(EGD_NFT_BATCH_MAX_BYTES);
	if (!buf)
		return -ENOMEM;
	len = egd_nft_build(cfg, phase, buf, EGD_NFT_BATCH_MAX_BYTES);
	if (len < 0) {
		err = len;
		goto out;
	}
	err = nl_send_batch(buf, len, batch_acks(buf, len));
	if (err)
		egd_err("nft: installing table inet %s: %s", EGD_NFT_TABLE, strerror(-err));
out:
	free(buf);
	return err;
}

int egd_nft_set_phase(enum egd_phase phase)
{
	char *buf;
	int len, err;

	buf = malloc(EGD_NFT_BATCH_MAX_BYTES);
	if (!buf)
		return -ENOMEM;
	len = egd_nft_build_phase(phase, buf, EGD_NFT_BATCH_MAX_BYTES);
	err = len < 0 ? len : nl_send_batch(buf, len, batch_acks(buf, len));
	if (err)
		egd_err("nft: setting the phase: %s", strerror(-err));
	free(buf);
	return err;
}

int egd_nft_remove(void)
{
	char *buf;
	struct batch bt;
	int len, err;

	buf = malloc(EGD_NFT_BATCH_MAX_BYTES);
	if (!buf)
		return -ENOMEM;
	err = batch_start(&bt, buf, EGD_NFT_BATCH_MAX_BYTES);
	if (!err) {
		batch_table(&bt, NFT_MSG_DELTABLE, 0);
		len = batch_finish(&bt);
		err = len < 0 ? len : nl_send_batch(buf, len, batch_acks(buf, len));
	}
	free(buf);
	return err;
}

/* ------------------------------------------------------------------------
 * Reading the table back
 */

/* What a dump collects: one kind of object, in kernel order. */
struct dump {
	int kind; /* NFT_MSG_NEW* of the objects expected */
	void *items[MODEL_RULES_MAX + 1];
	size_t n;
	int err;
};

static void dump_free(struct dump *d)
{
	size_t i;

	for (i = 0; i < d->n; i++) {
		switch (d->kind) {
		case NFT_MSG_NEWTABLE:
			nftnl_table_free(d->items[i]);
			break;
		case NFT_MSG_NEWCHAIN:
			nftnl_chain_free(d->items[i]);
			break;
		case NFT_MSG_NEWSET:
		case NFT_MSG_NEWSETELEM:
			nftnl_set_free(d->items[i]);
			break;
		case NFT_MSG_NEWOBJ:
			nftnl_obj_free(d->items[i]);
			break;
		case NFT_MSG_NEWRULE:
			nftnl_rule_free(d->items[i]);
			break;
		}
	}
	d->n = 0;
}

static int dump_cb(const struct nlmsghdr *nlh, void *data)
{
	struct dump *d = data;
	void *o = NULL;
	int ret = -1;

	/* More objects than we ever install is itself a mismatch. */
	if (d->n == sizeof(d->items) / sizeof(d->items[0])) {
		d->err = -EBADMSG;
		return MNL_CB_OK;
	}
	switch (d->kind) {
	case NFT_MSG_NEWTABLE:
		o = nftnl_table_alloc();
		ret = o ? nftnl_table_nlmsg_parse(nlh, o) : -1;
		break;
	case NFT_MSG_NEWCHAIN:
		o = nftnl_chain_alloc();
		ret = o ? nftnl_chain_nlmsg_parse(nlh, o) : -1;
		break;
	case NFT_MSG_NEWSET:
		o = nftnl_set_alloc();
		ret = o ? nftnl_set_nlmsg_parse(nlh, o) : -1;
		break;
	case NFT_MSG_NEWSETELEM:
		/* Elements may come in several messages: gather them in one set. */
		if (d->n == 1) {
			if (nftnl_set_elems_nlmsg_parse(nlh, d->items[0]) < 0)
				d->err = -EBADMSG;
			return d->err ? MNL_CB_ERROR : MNL_CB_OK;
		}
		o = nftnl_set_alloc();
		ret = o ? nftnl_set_elems_nlmsg_parse(nlh, o) : -1;
		break;
	case NFT_MSG_NEWOBJ:
		o = nftnl_obj_alloc();
		ret = o ? nftnl_obj_nlmsg_parse(nlh, o) : -1;
		break;
	case NFT_MSG_NEWRULE:
		o = nftnl_rule_alloc();
		ret = o ? nftnl_rule_nlmsg_parse(nlh, o) : -1;
		break;
	}
	if (!o) {
		d->err = -ENOMEM;
		return MNL_CB_ERROR;
	}
	d->items[d->n++] = o;
	if (ret < 0) {
		d->err = -EBADMSG;
		return MNL_CB_ERROR;
	}
	return MNL_CB_OK;
}

/*
 * Ask for one kind of object of our table. @obj names the table (and the
 * set, for elements); it goes in the request so that the kernel filters.
 */
static int nl_dump(struct mnl_socket *nl, uint16_t type, uint16_t flags, int kind,
		   void (*payload)(struct nlmsghdr *, const void *), const void *obj,
		   struct dump *d)
{
	char buf[NL_RECV_BYTES];
	struct nlmsghdr *nlh;
	uint32_t seq = (uint32_t)time(NULL), portid = mnl_socket_get_portid(nl);
	ssize_t n;
	int ret;

	memset(d, 0, sizeof(*d));
	d->kind = kind;
	nlh = nftnl_nlmsg_build_hdr(buf, type, NFPROTO_INET, flags, seq);
	payload(nlh, obj);
	if (mnl_socket_sendto(nl, nlh, nlh->nlmsg_len) < 0)
		return -errno;
	for (;;) {
		n = mnl_socket_recvfrom(nl, buf, sizeof(buf));
		if (n < 0)
			return -errno;
		ret = mnl_cb_run(buf, n, seq, portid, dump_cb, d);
		if (ret < 0)
			return d->err ? d->err : -errno;
		if (ret == MNL_CB_STOP)
			break;
	}
	return d->err;
}

static void pl_table(struct nlmsghdr *nlh, const void *o)
{
	nftnl_table_nlmsg_build_payload(nlh, o);
}

static void pl_chain(struct nlmsghdr *nlh, const void *o)
{
	nftnl_chain_nlmsg_build_payload(nlh, o);
}

static void pl_set(struct nlmsghdr *nlh, const void *o)
{
	nftnl_set_nlmsg_build_payload(nlh, (struct nftnl_set *)o);
}

static void pl_setelem(struct nlmsghdr *nlh, const void *o)
{
	nftnl_set_elems_nlmsg_build_payload(nlh, (struct nftnl_set *)o);
}

static void pl_obj(struct nlmsghdr *nlh, const void *o)
{
	nftnl_obj_nlmsg_build_payload(nlh, o);
}

static void pl_rule(struct nlmsghdr *nlh, const void *o)
{
	nftnl_rule_nlmsg_build_payload(nlh, (struct nftnl_rule *)o);
}

/* Say what differs (for the operator chasing a tamper alert) and fail. */
static int mismatch(const char *what)
{
	egd_debug("nft: table inet %s differs from ours: %s", EGD_NFT_TABLE, what);
	return -EBADMSG;
}

static bool str_eq(const char *a, const char *b)
{
	return a && b && !strcmp(a, b);
}

/* The expressions of a rule as one line of libnftnl's own notation. */
static int rule_text(const struct nftnl_rule *r, char *buf, size_t len)
{
	struct nftnl_expr_iter *it = nftnl_expr_iter_create(r);
	struct nftnl_expr *e;
	size_t off = 0;
	int n;

	if (!it)
		return -ENOMEM;
	buf[0] = '\0';
	while ((e = nftnl_expr_iter_next(it))) {
		n = snprintf(buf + off, len - off, "[%s ", nftnl_expr_get_str(e, NFTNL_EXPR_NAME));
		if (n < 0 || (size_t)n >= len - off)
			break;
		off += n;
		n = nftnl_expr_snprintf(buf + off, len - off, e, NFTNL_OUTPUT_DEFAULT, 0);
		if (n < 0 || (size_t)n >= len - off)
			break;
		off += n;
		/* libnftnl does not print the cgroup level; it matters most. */
		if (nftnl_expr_is_set(e, NFTNL_EXPR_SOCKET_LEVEL) &&
		    !strcmp(nftnl_expr_get_str(e, NFTNL_EXPR_NAME), "socket")) {
			n = snprintf(buf + off, len - off, " level %u",
				     nftnl_expr_get_u32(e, NFTNL_EXPR_SOCKET_LEVEL));
			if (n < 0 || (size_t)n >= len - off)
				break;
			off += n;
		}
		n = snprintf(buf + off, len - off, "] ");
		if (n < 0 || (size_t)n >= len - off)
			break;
		off += n;
	}
	nftnl_expr_iter_destroy(it);
	return e ? -ENOSPC : 0;
}

static bool chain_u32_eq(const struct nftnl_chain *a, const struct nftnl_chain *b, uint16_t attr)
{
	if (nftnl_chain_is_set(a, attr) != nftnl_chain_is_set(b, attr))
		return false;
	return !nftnl_chain_is_set(a, attr) ||
	       nftnl_chain_get_u32(a, attr) == nftnl_chain_get_u32(b, attr);
}

static bool chain_eq(const struct nftnl_chain *want, const struct nftnl_chain *got)
{
	bool base = nftnl_chain_is_set(want, NFTNL_CHAIN_HOOKNUM);

	if (!str_eq(nftnl_chain_get_str(want, NFTNL_CHAIN_NAME),
		    nftnl_chain_get_str(got, NFTNL_CHAIN_NAME)))
		return false;
	if (base != nftnl_chain_is_set(got, NFTNL_CHAIN_HOOKNUM))
		return false;
	if (!base)
		return true;
	return str_eq(nftnl_chain_get_str(want, NFTNL_CHAIN_TYPE),
		      nftnl_chain_get_str(got, NFTNL_CHAIN_TYPE)) &&
	       chain_u32_eq(want, got, NFTNL_CHAIN_HOOKNUM) &&
	       chain_u32_eq(want, got, NFTNL_CHAIN_PRIO) &&
	       chain_u32_eq(want, got, NFTNL_CHAIN_POLICY) &&
	       /* A hook on a device or a dormant flag would make it inert. */
	       !nftnl_chain_is_set(got, NFTNL_CHAIN_DEV) &&
	       !(nftnl_chain_is_set(got, NFTNL_CHAIN_FLAGS) &&
		 nftnl_chain_get_u32(got, NFTNL_CHAIN_FLAGS) & ~NFT_CHAIN_BASE);
}

static bool set_eq(const struct nftnl_set *want, const struct nftnl_set *got)
{
	static const uint16_t attrs[] = { NFTNL_SET_FLAGS, NFTNL_SET_KEY_TYPE, NFTNL_SET_KEY_LEN,
					  NFTNL_SET_DATA_TYPE };
	size_t i;

	if (!str_eq(nftnl_set_get_str(want, NFTNL_SET_NAME),
		    nftnl_set_get_str(got, NFTNL_SET_NAME)))
		return false;
	for (i = 0; i < sizeof(attrs) / sizeof(attrs[0]); i++) {
		uint32_t w =
			nftnl_set_is_set(want, attrs[i]) ? nftnl_set_get_u32(want, attrs[i]) : 0;
		uint32_t g = nftnl_set_is_set(got, attrs[i]) ? nftnl_set_get_u32(got, attrs[i]) : 0;

		if (w != g)
			return false;
	}
	return true;
}

/* Order-insensitive: each wanted element present exactly once, nothing
 * else. Quadratic, which is fine for sets of at most 16. */
static bool elem_eq(struct nftnl_set_elem *a, struct nftnl_set_elem *b)
{
	uint32_t la, lb;
	const void *ka = nftnl_set_elem_get(a, NFTNL_SET_ELEM_KEY, &la);
	const void *kb = nftnl_set_elem_get(b, NFTNL_SET_ELEM_KEY, &lb);
	bool va = nftnl_set_elem_is_set(a, NFTNL_SET_ELEM_VERDICT);
	bool vb = nftnl_set_elem_is_set(b, NFTNL_SET_ELEM_VERDICT);

	if (!ka || !kb || la != lb || memcmp(ka, kb, la) || va != vb)
		return false;
	if (!va)
		return true;
	if (nftnl_set_elem_get_u32(a, NFTNL_SET_ELEM_VERDICT) !=
	    nftnl_set_elem_get_u32(b, NFTNL_SET_ELEM_VERDICT))
		return false;
	if (nftnl_set_elem_is_set(a, NFTNL_SET_ELEM_CHAIN) !=
	    nftnl_set_elem_is_set(b, NFTNL_SET_ELEM_CHAIN))
		return false;
	return !nftnl_set_elem_is_set(a, NFTNL_SET_ELEM_CHAIN) ||
	       str_eq(nftnl_set_elem_get_str(a, NFTNL_SET_ELEM_CHAIN),
		      nftnl_set_elem_get_str(b, NFTNL_SET_ELEM_CHAIN));
}

static bool elems_eq(struct nftnl_set *want, struct nftnl_set *got)
{
	struct nftnl_set_elems_iter *wi, *gi;
	struct nftnl_set_elem *we, *ge;
	bool ok = true;

	if (elems_count(want) != elems_count(got))
		return false;
	wi = nftnl_set_elems_iter_create(want);
	if (!wi)
		return false;
	while (ok && (we = nftnl_set_elems_iter_next(wi))) {
		int found = 0;

		gi = nftnl_set_elems_iter_create(got);
		if (!gi) {
			ok = false;
			break;
		}
		while ((ge = nftnl_set_elems_iter_next(gi)))
			found += elem_eq(we, ge);
		nftnl_set_elems_iter_destroy(gi);
		ok = found == 1;
	}
	nftnl_set_elems_iter_destroy(wi);
	return ok;
}

static int verify_sets(struct mnl_socket *nl, const struct model *m)
{
	struct dump d, de;
	size_t i, j;
	int err;

	err = nl_dump(nl, NFT_MSG_GETSET, NLM_F_DUMP | NLM_F_ACK, NFT_MSG_NEWSET, pl_set,
		      m->sets[0], &d);
	if (err)
		goto out;
	if (d.n != m->n_sets) {
		err = mismatch("number of sets");
		goto out;
	}
	for (i = 0; i < m->n_sets && !err; i++) {
		const char *name = nftnl_set_get_str(m->sets[i], NFTNL_SET_NAME);

		for (j = 0; j < d.n; j++)
			if (str_eq(name, nftnl_set_get_str(d.items[j], NFTNL_SET_NAME)))
				break;
		if (j == d.n || !set_eq(m->sets[i], d.items[j])) {
			err = mismatch(name);
			break;
		}
		err = nl_dump(nl, NFT_MSG_GETSETELEM, NLM_F_DUMP | NLM_F_ACK, NFT_MSG_NEWSETELEM,
			      pl_setelem, m->sets[i], &de);
		/* An empty set answers with no message at all. */
		if (!err) {
			struct nftnl_set *got = de.n ? de.items[0] : nftnl_set_alloc();

			if (!got)
				err = -ENOMEM;
			else if (!elems_eq(m->sets[i], got))
				err = mismatch(name);
			if (got && !de.n)
				nftnl_set_free(got);
		}
		dump_free(&de);
	}
out:
	dump_free(&d);
	return err;
}

static int verify_rules(struct mnl_socket *nl, const struct model *m)
{
	struct nftnl_rule *filter;
	char *want, *got;
	struct dump d;
	size_t i;
	int err;

	want = malloc(2 * RULE_TEXT_MAX_BYTES);
	if (!want)
		return -ENOMEM;
	got = want + RULE_TEXT_MAX_BYTES;
	/* Filter on the table alone: a chain name would narrow the dump. */
	filter = nftnl_rule_alloc();
	if (!filter) {
		free(want);
		return -ENOMEM;
	}
	nftnl_rule_set_u32(filter, NFTNL_RULE_FAMILY, NFPROTO_INET);
	nftnl_rule_set_str(filter, NFTNL_RULE_TABLE, EGD_NFT_TABLE);
	err = nl_dump(nl, NFT_MSG_GETRULE, NLM_F_DUMP | NLM_F_ACK, NFT_MSG_NEWRULE, pl_rule, filter,
		      &d);
	nftnl_rule_free(filter);
	if (err)
		goto out;
	/* Rules come back chain by chain in chain order; ours were built in
	 * the same order (refuse, nat, filter), so compare position by
	 * position. A rule added, removed, moved or altered breaks it. */
	if (d.n != m->n_rules) {
		err = mismatch("number of rules");
		goto out;
	}
	for (i = 0; i < m->n_rules && !err; i++) {
		if (!str_eq(nftnl_rule_get_str(m->rules[i], NFTNL_RULE_CHAIN),
			    nftnl_rule_get_str(d.items[i], NFTNL_RULE_CHAIN)) ||
		    nftnl_rule_is_set(d.items[i], NFTNL_RULE_USERDATA)) {
			err = mismatch("rule chain");
			break;
		}
		err = rule_text(m->rules[i], want, RULE_TEXT_MAX_BYTES);
		if (!err)
			err = rule_text(d.items[i], got, RULE_TEXT_MAX_BYTES);
		if (!err && strcmp(want, got)) {
			egd_debug("nft: rule %zu differs:\n  want %s\n  got  %s", i, want, got);
			err = mismatch("rule");
		}
	}
out:
	dump_free(&d);
	free(want);
	return err;
}

static int verify_model(struct mnl_socket *nl, const struct model *m)
{
	struct dump d;
	size_t i, j;
	int err;

	err = nl_dump(nl, NFT_MSG_GETTABLE, NLM_F_ACK, NFT_MSG_NEWTABLE, pl_table, m->table, &d);
	if (err)
		goto out;
	/* A dormant table is unhooked: present but enforcing nothing. */
	if (d.n != 1 || (nftnl_table_is_set(d.items[0], NFTNL_TABLE_FLAGS) &&
			 nftnl_table_get_u32(d.items[0], NFTNL_TABLE_FLAGS))) {
		err = mismatch("table flags");
		goto out;
	}
	dump_free(&d);

	err = nl_dump(nl, NFT_MSG_GETCHAIN, NLM_F_DUMP | NLM_F_ACK, NFT_MSG_NEWCHAIN, pl_chain,
		      m->chains[0], &d);
	if (err)
		goto out;
	if (d.n != m->n_chains) {
		err = mismatch("number of chains");
		goto out;
	}
	for (i = 0; i < m->n_chains; i++) {
		for (j = 0; j < d.n; j++)
			if (chain_eq(m->chains[i], d.items[j]))
				break;
		if (j == d.n) {
			err = mismatch(nftnl_chain_get_str(m->chains[i], NFTNL_CHAIN_NAME));
			goto out;
		}
	}
	dump_free(&d);

	err = nl_dump(nl, NFT_MSG_GETOBJ, NLM_F_DUMP | NLM_F_ACK, NFT_MSG_NEWOBJ, pl_obj,
		      m->objs[0], &d);
	if (err)
		goto out;
	if (d.n != m->n_objs) {
		err = mismatch("number of counters");
		goto out;
	}
	for (i = 0; i < m->n_objs; i++) {
		for (j = 0; j < d.n; j++)
			if (str_eq(nftnl_obj_get_str(m->objs[i], NFTNL_OBJ_NAME),
				   nftnl_obj_get_str(d.items[j], NFTNL_OBJ_NAME)) &&
			    nftnl_obj_get_u32(d.items[j], NFTNL_OBJ_TYPE) == NFT_OBJECT_COUNTER)
				break;
		if (j == d.n) {
			err = mismatch(nftnl_obj_get_str(m->objs[i], NFTNL_OBJ_NAME));
			goto out;
		}
	}
	dump_free(&d);

	err = verify_sets(nl, m);
	if (!err)
		err = verify_rules(nl, m);
out:
	dump_free(&d);
	return err;
}

int egd_nft_verify(const struct egd_nft_config *cfg, enum egd_phase phase)
{
	struct mnl_socket *nl;
	struct model m;
	int err;

	err = model_build(&m, cfg, phase);
	if (err)
		return err;
	nl = nl_open();
	if (!nl) {
		err = -errno;
		goto out_free;
	}
	err = verify_model(nl, &m);
	mnl_socket_close(nl);
out_free:
	model_free(&m);
	return err;
}

int egd_nft_counter(const char *name, uint64_t *packets)
{
	struct mnl_socket *nl;
	struct nftnl_obj *o;
	struct dump d;
	int err;

	o = nftnl_obj_alloc();
	if (!o)
		return -ENOMEM;
	nftnl_obj_set_u32(o, NFTNL_OBJ_FAMILY, NFPROTO_INET);
	nftnl_obj_set_str(o, NFTNL_OBJ_TABLE, EGD_NFT_TABLE);
	nftnl_obj_set_str(o, NFTNL_OBJ_NAME, name);
	nftnl_obj_set_u32(o, NFTNL_OBJ_TYPE, NFT_OBJECT_COUNTER);
	nl = nl_open();
	if (!nl) {
		err = -errno;
		goto out_free;
	}
	err = nl_dump(nl, NFT_MSG_GETOBJ, NLM_F_ACK, NFT_MSG_NEWOBJ, pl_obj, o, &d);
	if (!err && d.n != 1)
		err = -ENOENT;
	if (!err)
		*packets = nftnl_obj_get_u64(d.items[0], NFTNL_OBJ_CTR_PKTS);
	dump_free(&d);
	mnl_socket_close(nl);
out_free:
	nftnl_obj_free(o);
	return err;
}

int egd_nft_monitor_open(void)
{
	struct sockaddr_nl sa = { .nl_family = AF_NETLINK };
	int fd, group = NFNLGRP_NFTABLES;

	fd = socket(AF_NETLINK, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, NETLINK_NETFILTER);
	if (fd < 0)
		return -errno;
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) ||
	    setsockopt(fd, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, &group, sizeof(group))) {
		int err = -errno;

		close(fd);
		return err;
	}
	return fd;
}

int egd_nft_monitor_drain(int fd)
{
	char buf[NL_RECV_BYTES];
	int n = 0, err = 0;

	for (;;) {
		ssize_t r = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);

		if (r > 0) {
			n++;
			continue;
		}
		if (r < 0 && errno == ENOBUFS) {
			err = -ENOBUFS;
			continue;
		}
		if (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
			return -errno;
		break;
	}
	return err ? err : n;
}
