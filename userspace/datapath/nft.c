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
 *   chain deny_output    filter hook output, priority mangle (-150), policy
 *       accept: the daemon and the link's own ICMPv6 (neighbour discovery,
 *       MLD reports) pass; any other packet to the always-deny sets (deny4,
 *       deny6: EGD_NFT_DENY_DEFAULT plus EGRESSD_DENY_CIDRS) is refused.
 *       It runs before NAT, so it judges the address the agent dialled, in
 *       both phases, before anything else can accept.
 *   chain nat_output     nat hook output, priority dstnat - 1, policy accept:
 *       the daemon returns; every UDP and TCP packet to port 53, whatever
 *       its address, goes to the policy DNS listener (conntrack gives the
 *       replies their original source back); loopback returns; every other
 *       TCP is redirected to the transparent listener (127.0.0.1 or ::1).
 *   chain filter_output  filter hook output, priority filter, policy drop.
 *       There is no blanket "established" accept: every packet of the agent
 *       is judged by the phase in force when it is sent, so a re-lock stops
 *       every flow the verification phase let out (UDP, replies on inbound
 *       flows, loopback) at its next packet. In order: the daemon (its
 *       sockets, and flows bearing its conntrack mark); flows
 *       our nat chain redirected (ct status dnat: they keep it for life, in
 *       both directions); the link's ICMPv6; ICMP errors on loopback (ct
 *       related); every protocol but TCP and UDP refused; direct dials to
 *       the daemon's ports refused; loopback flows whose server port is in
 *       loopback_allow; the rest of loopback by the phase; UDP (QUIC) to an
 *       intercept address (icaddr4, icaddr6, filled with timeouts by the
 *       policy DNS) refused; TCP the nat chain did not capture refused (but
 *       not replies on an inbound flow, which the phase judges); DNS that
 *       escaped the redirect refused; then `meta mark & 0 vmap @phase`.
 *   chain daemon_input   filter hook input, policy accept: a flow a host
 *       outside opens to a daemon listener gets the daemon's conntrack mark,
 *       as do the daemon's own flows in filter_output; packets of flows so
 *       marked pass (a listener's SYN-ACK has no full socket to match).
 *   map phase            one element, key 0: `jump refuse` in the agent
 *       phase, `accept` in the verification phase.
 *   chain refuse         rate-limited log, then reject: TCP reset, ICMP port
 *       unreachable for UDP, admin-prohibited for the rest, each counted.
 *
 * In the agent phase, then, nothing of the agent leaves for a non-loopback
 * address but through the daemon: not a reply on a flow a host outside
 * opened (the agent listening), not a flow opened before the flip.
 *
 * Why dstnat - 1: Docker installs its own nat output rules for its embedded
 * resolver (127.0.0.11) at dstnat; running first means the agent's DNS goes
 * to our listener, while the daemon's own DNS is exempt here and still gets
 * Docker's translation.
 *
 * Why no conntrack flush on re-lock: a flush would also drop the NAT
 * bindings of the flows redirected to the daemon (the agent's LLM calls in
 * flight), and an entry re-created from a mid-stream packet is as good as
 * the old one to an "established" rule. Judging every packet needs neither.
 */
#include "datapath/nft.h"
#include "core/log.h"

#include <arpa/inet.h>
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
#define MODEL_CHAINS_MAX 6
#define MODEL_SETS_MAX 8
#define MODEL_OBJS_MAX 8
#define MODEL_RULES_MAX 64

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

/* The deny chain runs at mangle priority: after conntrack (-200), so that
 * the reset it sends the agent carries the refused flow's conntrack entry
 * (ct state related) and passes the loopback rules, and before NAT, so that
 * it still sees the address the agent dialled. nat output just before
 * Docker's (and everyone's) dstnat rules. */
#define DENY_OUTPUT_PRIORITY (-150)
#define NAT_OUTPUT_PRIORITY (-101)
#define FILTER_OUTPUT_PRIORITY 0
#define FILTER_INPUT_PRIORITY 0

/* Conntrack mark of the daemon's flows ("egd"); nothing else in a sandbox's
 * namespace sets conntrack marks. */
#define CT_MARK_DAEMON 0x00656764u

/* Every network namespace numbers its loopback device 1 (LOOPBACK_IFINDEX). */
#define LOOPBACK_IFINDEX 1

/* The root of cgroup v2 has id 1; matching it would exempt every socket. */
#define CGROUP2_ROOT_ID 1

/* ICMPv6 router solicitation .. neighbour advertisement (RFC 4861), sent
 * with hop limit 255 and never routed off the link. */
#define ICMPV6_NDP_FIRST 133
#define ICMPV6_NDP_LAST 136
#define NDP_HOP_LIMIT 255
/* MLD queries and v1 reports/done (RFC 2710), and v2 reports (RFC 3810):
 * the kernel announces its solicited-node groups with them, hop limit 1. */
#define ICMPV6_MLD_FIRST 130
#define ICMPV6_MLD_LAST 132
#define ICMPV6_MLD2_REPORT 143
#define MLD_HOP_LIMIT 1

/* Key types as nft(8) numbers them, so that `nft list` prints the sets. */
#define NFT_TYPE_IPADDR 7
#define NFT_TYPE_IP6ADDR 8
#define NFT_TYPE_INET_SERVICE 13
#define NFT_TYPE_MARK 19

#define CHAIN_DENY "deny_output"
#define CHAIN_INPUT "daemon_input"
#define CHAIN_NAT "nat_output"
#define CHAIN_FILTER "filter_output"
#define CHAIN_REFUSE "refuse"
#define SET_PORTS "daemon_ports"
#define SET_LO_ALLOW "loopback_allow"
#define SET_DENY4 "deny4"
#define SET_DENY6 "deny6"
#define SET_ICADDR4 "icaddr4"
#define SET_ICADDR6 "icaddr6"
#define MAP_PHASE "phase"
/* The phase map has one element; its key is this constant. */
#define PHASE_KEY 0u

/* Set ids tie sets to the rules and elements of the same batch. */
enum set_id {
	SETID_PORTS = 1,
	SETID_LO_ALLOW,
	SETID_DENY4,
	SETID_DENY6,
	SETID_ICADDR4,
	SETID_ICADDR6,
	SETID_PHASE
};

/* Intercept addresses per family carried across a reinstall: they must fit
 * one netlink message (a page, about 60 bytes each); an intercept host has a
 * handful of addresses, and the policy DNS adds any other again. */
#define ICADDR_CARRY_MAX 48

/* CIDRs in one deny set: the built-in ones and the operator's. */
#define DENY_CIDRS_MAX (EGD_NFT_DENY_MAX + 16)

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

/* @flags: NFT_SET_MAP makes it a verdict map; NFT_SET_INTERVAL, NFT_SET_TIMEOUT
 * as the kernel defines them. */
static struct nftnl_set *set_new(struct model *m, const char *name, uint32_t id, uint32_t key_type,
				 uint32_t key_len, uint32_t flags)
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
	nftnl_set_set_u32(s, NFTNL_SET_FLAGS, flags);
	if (flags & NFT_SET_MAP) {
		nftnl_set_set_u32(s, NFTNL_SET_DATA_TYPE, NFT_DATA_VERDICT);
		nftnl_set_set_u32(s, NFTNL_SET_DATA_LEN, sizeof(uint32_t));
	}
	/* A bound the kernel enforces: the daemon adding more fails
	 * (-ENFILE) rather than growing the set without end. */
	if (flags & NFT_SET_TIMEOUT)
		nftnl_set_set_u32(s, NFTNL_SET_DESC_SIZE, EGD_NFT_ICADDR_MAX);
	m->sets[m->n_sets++] = s;
	return s;
}

/* One element; @chain != NULL makes it a jump, else @verdict alone. */
static struct nftnl_set_elem *set_elem(struct model *m, struct nftnl_set *s, const void *key,
				       uint32_t len, int verdict, const char *chain)
{
	struct nftnl_set_elem *e;

	if (!s)
		return NULL;
	e = nftnl_set_elem_alloc();
	if (!e) {
		fail(m, -ENOMEM);
		return NULL;
	}
	nftnl_set_elem_set(e, NFTNL_SET_ELEM_KEY, key, len);
	if (verdict != NFT_CONTINUE) {
		nftnl_set_elem_set_u32(e, NFTNL_SET_ELEM_VERDICT, verdict);
		if (chain)
			nftnl_set_elem_set_str(e, NFTNL_SET_ELEM_CHAIN, chain);
	}
	nftnl_set_elem_add(s, e);
	return e;
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
static void load_ct(struct model *m, struct nftnl_rule *r, enum nft_ct_keys key, int dir);

/* What daemon_exempt() adds besides matching the daemon's own sockets. */
#define EXEMPT_SET_MARK (1u << 0) /* stamp the flow with CT_MARK_DAEMON */
#define EXEMPT_MARKED (1u << 1)	  /* and accept packets of flows so stamped */
#define EXEMPT_NO_UID (1u << 2)	  /* no uid rule (input: no socket owner yet) */

static void ct_mark_set(struct model *m, struct nftnl_rule *r)
{
	struct nftnl_expr *e;
	uint32_t mark = CT_MARK_DAEMON;

	e = expr_add(m, r, "immediate");
	if (e) {
		nftnl_expr_set_u32(e, NFTNL_EXPR_IMM_DREG, NFT_REG_1);
		nftnl_expr_set(e, NFTNL_EXPR_IMM_DATA, &mark, sizeof(mark));
	}
	e = expr_add(m, r, "ct");
	if (e) {
		nftnl_expr_set_u32(e, NFTNL_EXPR_CT_KEY, NFT_CT_MARK);
		nftnl_expr_set_u32(e, NFTNL_EXPR_CT_SREG, NFT_REG_1);
	}
}

static void daemon_exempt(struct model *m, const struct egd_nft_config *cfg, const char *chain,
			  int code, uint32_t flags)
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
		if (flags & EXEMPT_SET_MARK)
			ct_mark_set(m, r);
		if (code != NFT_CONTINUE)
			verdict(m, r, code, NULL);
	}
	if (cfg->use_uid_fallback && !(flags & EXEMPT_NO_UID)) {
		r = rule_new(m, chain);
		load_meta(m, r, NFT_META_SKUID);
		cmp(m, r, NFT_CMP_EQ, &cfg->daemon_uid, sizeof(cfg->daemon_uid));
		if (flags & EXEMPT_SET_MARK)
			ct_mark_set(m, r);
		verdict(m, r, code, NULL);
	}
	/*
	 * `socket cgroupv2` only knows full sockets: the SYN-ACK of a daemon
	 * listener (sent by a request socket) and the ACKs of a TIME_WAIT one
	 * match nothing. The flow's mark, stamped by the daemon's own packets
	 * (output) or by its listener's lookup (input), covers them. The agent
	 * cannot set a conntrack mark (that needs CAP_NET_ADMIN).
	 */
	if (flags & EXEMPT_MARKED) {
		uint32_t mark = CT_MARK_DAEMON;

		r = rule_new(m, chain);
		load_ct(m, r, NFT_CT_MARK, -1);
		cmp(m, r, NFT_CMP_EQ, &mark, sizeof(mark));
		verdict(m, r, code, NULL);
	}
}

/* reg1 = ct @key (in @dir, or -1 for none). */
static void load_ct(struct model *m, struct nftnl_rule *r, enum nft_ct_keys key, int dir)
{
	struct nftnl_expr *e = expr_add(m, r, "ct");

	if (!e)
		return;
	nftnl_expr_set_u32(e, NFTNL_EXPR_CT_KEY, key);
	nftnl_expr_set_u32(e, NFTNL_EXPR_CT_DREG, NFT_REG_1);
	if (dir >= 0)
		nftnl_expr_set_u8(e, NFTNL_EXPR_CT_DIR, (uint8_t)dir);
}

/* `meta mark & 0 vmap @phase`. The key is a constant, so the phase is one
 * element that one transaction swaps; it is written as `meta mark & 0`
 * rather than an immediate 0 because nft(8) prints the former legibly and
 * can read it back. */
static void phase_vmap(struct model *m, struct nftnl_rule *r)
{
	struct nftnl_expr *e;
	uint32_t key = PHASE_KEY;

	load_meta(m, r, NFT_META_MARK);
	e = expr_add(m, r, "bitwise");
	if (e) {
		nftnl_expr_set_u32(e, NFTNL_EXPR_BITWISE_SREG, NFT_REG_1);
		nftnl_expr_set_u32(e, NFTNL_EXPR_BITWISE_DREG, NFT_REG_1);
		nftnl_expr_set_u32(e, NFTNL_EXPR_BITWISE_LEN, sizeof(key));
		nftnl_expr_set(e, NFTNL_EXPR_BITWISE_MASK, &key, sizeof(key));
		nftnl_expr_set(e, NFTNL_EXPR_BITWISE_XOR, &key, sizeof(key));
	}
	lookup(m, r, MAP_PHASE, SETID_PHASE, NFT_REG_VERDICT);
}

/* icmpv6 type @lo..@hi with hop limit @hops: link-scoped by construction
 * (a router never forwards them), sent by the kernel, carrying no data of
 * the agent's. */
static void icmpv6_link(struct model *m, const char *chain, uint8_t lo, uint8_t hi, uint8_t hops)
{
	struct nftnl_rule *r = rule_new(m, chain);
	struct nftnl_expr *e;

	match_nfproto(m, r, NFPROTO_IPV6);
	match_l4proto(m, r, IPPROTO_ICMPV6);
	load_payload(m, r, NFT_PAYLOAD_TRANSPORT_HEADER, 0, 1);
	if (lo == hi) {
		cmp(m, r, NFT_CMP_EQ, &lo, sizeof(lo));
	} else {
		e = expr_add(m, r, "range");
		if (e) {
			nftnl_expr_set_u32(e, NFTNL_EXPR_RANGE_SREG, NFT_REG_1);
			nftnl_expr_set_u32(e, NFTNL_EXPR_RANGE_OP, NFT_RANGE_EQ);
			nftnl_expr_set(e, NFTNL_EXPR_RANGE_FROM_DATA, &lo, sizeof(lo));
			nftnl_expr_set(e, NFTNL_EXPR_RANGE_TO_DATA, &hi, sizeof(hi));
		}
	}
	load_payload(m, r, NFT_PAYLOAD_NETWORK_HEADER, 7, 1);
	cmp(m, r, NFT_CMP_EQ, &hops, sizeof(hops));
	verdict(m, r, NF_ACCEPT, NULL);
}

/* What the link needs to work at all: IPv6 neighbour discovery and MLD. */
static void link_needs(struct model *m, const char *chain)
{
	icmpv6_link(m, chain, ICMPV6_NDP_FIRST, ICMPV6_NDP_LAST, NDP_HOP_LIMIT);
	icmpv6_link(m, chain, ICMPV6_MLD_FIRST, ICMPV6_MLD_LAST, MLD_HOP_LIMIT);
	icmpv6_link(m, chain, ICMPV6_MLD2_REPORT, ICMPV6_MLD2_REPORT, MLD_HOP_LIMIT);
}

/* `<family> daddr @set counter name @counter jump refuse`, or without the
 * counter; @l4proto 0 for any protocol. */
static void refuse_daddr(struct model *m, const char *chain, uint8_t nfproto, uint8_t l4proto,
			 const char *set, uint32_t id, const char *counter)
{
	struct nftnl_rule *r = rule_new(m, chain);

	match_nfproto(m, r, nfproto);
	if (l4proto)
		match_l4proto(m, r, l4proto);
	if (nfproto == NFPROTO_IPV4)
		load_payload(m, r, NFT_PAYLOAD_NETWORK_HEADER, 16, 4);
	else
		load_payload(m, r, NFT_PAYLOAD_NETWORK_HEADER, 24, 16);
	lookup(m, r, set, id, -1);
	if (counter)
		count(m, r, counter);
	verdict(m, r, NFT_JUMP, CHAIN_REFUSE);
}

/* Before everything: the always-deny destinations, in both phases. The
 * daemon is exempt (its own resolvers may be link-local, as AWS's
 * 169.254.169.253): what it dials for the agent is the agent's original
 * destination, which this chain has already judged. */
static void build_deny(struct model *m, const struct egd_nft_config *cfg)
{
	chain_new(m, CHAIN_DENY, "filter", NF_INET_LOCAL_OUT, DENY_OUTPUT_PRIORITY, NF_ACCEPT);
	daemon_exempt(m, cfg, CHAIN_DENY, NF_ACCEPT, EXEMPT_MARKED);
	/* ff02::1:ff00:0/104 and ff02::16 are multicast: the link's own
	 * ICMPv6 must pass before the multicast deny. */
	link_needs(m, CHAIN_DENY);
	refuse_daddr(m, CHAIN_DENY, NFPROTO_IPV4, 0, SET_DENY4, SETID_DENY4,
		     EGD_NFT_CNT_DENIED_DST);
	refuse_daddr(m, CHAIN_DENY, NFPROTO_IPV6, 0, SET_DENY6, SETID_DENY6,
		     EGD_NFT_CNT_DENIED_DST);
}

/* Flows that hosts outside open to a daemon listener (a probe of the admin
 * port, the proxy's HTTP listener): stamped at the door, so that the
 * listener's answers (see daemon_exempt()) leave in the agent phase, while
 * the agent's own answers to inbound flows do not. The mark follows the
 * kernel's socket lookup: an agent that shared a daemon listener's port on a
 * non-loopback address (SO_REUSEPORT under the daemon's uid, SO_REUSEADDR on
 * UDP) could answer through it, so the agent runs under another uid and the
 * listeners stay on loopback unless they must not. */
static void build_input(struct model *m, const struct egd_nft_config *cfg)
{
	chain_new(m, CHAIN_INPUT, "filter", NF_INET_LOCAL_IN, FILTER_INPUT_PRIORITY, NF_ACCEPT);
	daemon_exempt(m, cfg, CHAIN_INPUT, NFT_CONTINUE, EXEMPT_SET_MARK | EXEMPT_NO_UID);
}

static void build_nat(struct model *m, const struct egd_nft_config *cfg)
{
	struct nftnl_rule *r;

	chain_new(m, CHAIN_NAT, "nat", NF_INET_LOCAL_OUT, NAT_OUTPUT_PRIORITY, NF_ACCEPT);
	daemon_exempt(m, cfg, CHAIN_NAT, NFT_RETURN, 0);

	/* DNS first, whatever the address, so that a loopback resolver
	 * (Docker's 127.0.0.11, systemd's 127.0.0.53) is captured too. */
	r = rule_new(m, CHAIN_NAT);
	match_dport(m, r, IPPROTO_UDP, EGD_DNS_PORT);
	redirect(m, r, cfg->dns_port);
	r = rule_new(m, CHAIN_NAT);
	match_dport(m, r, IPPROTO_TCP, EGD_DNS_PORT);
	redirect(m, r, cfg->dns_port);

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
	uint8_t dir;
	size_t i;

	chain_new(m, CHAIN_FILTER, "filter", NF_INET_LOCAL_OUT, FILTER_OUTPUT_PRIORITY, NF_DROP);

	daemon_exempt(m, cfg, CHAIN_FILTER, NF_ACCEPT, EXEMPT_SET_MARK | EXEMPT_MARKED);

	/* Flows our nat chain redirected to a listener: the only way in. */
	r = rule_new(m, CHAIN_FILTER);
	match_ct(m, r, NFT_CT_STATUS, IPS_DST_NAT);
	verdict(m, r, NF_ACCEPT, NULL);

	link_needs(m, CHAIN_FILTER);

	/* ICMP errors between local sockets (port unreachable from a closed
	 * loopback port): they tell a client at once, and stay on the host. */
	r = rule_new(m, CHAIN_FILTER);
	match_oif_lo(m, r);
	match_ct(m, r, NFT_CT_STATE, NF_CT_STATE_BIT(IP_CT_RELATED));
	verdict(m, r, NF_ACCEPT, NULL);

	/* Only TCP and UDP, in both phases: SCTP, DCCP, UDP-Lite, ICMP echo,
	 * raw IP protocols. nftables cannot refuse the socket itself; its
	 * packets go nowhere. */
	r = rule_new(m, CHAIN_FILTER);
	for (i = 0; i < sizeof(protos); i++) {
		load_meta(m, r, NFT_META_L4PROTO);
		cmp(m, r, NFT_CMP_NEQ, &protos[i], sizeof(protos[i]));
	}
	verdict(m, r, NFT_JUMP, CHAIN_REFUSE);

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

	/* Loopback flows to an allowed port, both directions: the flow's
	 * server port is its original destination port. */
	for (i = 0; i < sizeof(protos); i++) {
		r = rule_new(m, CHAIN_FILTER);
		match_oif_lo(m, r);
		match_l4proto(m, r, protos[i]);
		load_ct(m, r, NFT_CT_PROTO_DST, IP_CT_DIR_ORIGINAL);
		lookup(m, r, SET_LO_ALLOW, SETID_LO_ALLOW, -1);
		verdict(m, r, NF_ACCEPT, NULL);
	}
	/* The rest of loopback (local proxies, the host's services under
	 * `exec`-like setups, other sidecars) follows the phase. */
	r = rule_new(m, CHAIN_FILTER);
	match_oif_lo(m, r);
	phase_vmap(m, r);

	/* QUIC to an address the policy DNS gave for an intercept host would
	 * go around the policy proxy: refused, so clients fall back to TCP. */
	refuse_daddr(m, CHAIN_FILTER, NFPROTO_IPV4, IPPROTO_UDP, SET_ICADDR4, SETID_ICADDR4, NULL);
	refuse_daddr(m, CHAIN_FILTER, NFPROTO_IPV6, IPPROTO_UDP, SET_ICADDR6, SETID_ICADDR6, NULL);

	/* TCP the agent opens is captured or refused, whatever the phase
	 * (one not redirected was opened before the table, or is a
	 * mid-stream packet). Replies on a flow a host outside opened follow
	 * the phase below: never in the agent phase. */
	r = rule_new(m, CHAIN_FILTER);
	match_l4proto(m, r, IPPROTO_TCP);
	load_ct(m, r, NFT_CT_DIRECTION, -1);
	dir = IP_CT_DIR_ORIGINAL;
	cmp(m, r, NFT_CMP_EQ, &dir, sizeof(dir));
	verdict(m, r, NFT_JUMP, CHAIN_REFUSE);

	/* DNS that the nat chain did not redirect (a flow from before the
	 * table) is a tunnel: refused in both phases. */
	for (i = 0; i < sizeof(protos); i++) {
		r = rule_new(m, CHAIN_FILTER);
		match_dport(m, r, protos[i], EGD_DNS_PORT);
		verdict(m, r, NFT_JUMP, CHAIN_REFUSE);
	}

	/* Everything else follows the phase. */
	r = rule_new(m, CHAIN_FILTER);
	phase_vmap(m, r);
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
	if (!cfg->dns_port) {
		egd_err("nft: no DNS port: the agent's DNS would have nowhere to go but out");
		return -EINVAL;
	}
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
	if (cfg->n_deny > EGD_NFT_DENY_MAX || cfg->n_loopback_allow > EGD_NFT_LOOPBACK_ALLOW_MAX)
		return -EINVAL;
	for (i = 0; i < cfg->n_deny; i++)
		if ((cfg->deny[i].family != AF_INET || cfg->deny[i].prefix > 32) &&
		    (cfg->deny[i].family != AF_INET6 || cfg->deny[i].prefix > 128))
			return -EINVAL;
	for (i = 0; i < cfg->n_loopback_allow; i++)
		if (!cfg->loopback_allow[i])
			return -EINVAL;
	return 0;
}

/* ------------------------------------------------------------------------
 * Interval sets: CIDRs as the kernel's rbtree wants them
 */

/* [start, end) of one CIDR, big-endian numbers of @len bytes; @top when
 * the range runs to the last address (end would not fit). */
struct range {
	uint8_t start[16], end[16];
	bool top;
};

/* Byte @i of the netmask of a /@prefix. */
static uint8_t prefix_mask(int prefix, int i)
{
	int keep = prefix - 8 * i;

	return keep >= 8 ? 0xff : keep <= 0 ? 0 : (uint8_t)(0xff << (8 - keep));
}

static void cidr_range(const struct egd_nft_cidr *c, size_t len, struct range *r)
{
	size_t i;
	int carry = 1;

	memset(r, 0, sizeof(*r));
	for (i = 0; i < len; i++) {
		uint8_t mask = prefix_mask(c->prefix, (int)i);

		r->start[i] = c->addr[i] & mask;
		r->end[i] = r->start[i] | (uint8_t)~mask;
	}
	/* end = last address + 1. Counted down from len to 1 rather than with
	 * i-- in the condition: gcc's -Wstringop-overflow in optimised ASan
	 * builds takes the latter for a write at end[-1]. */
	for (i = len; i > 0 && carry; i--) {
		carry = r->end[i - 1] == 0xff;
		r->end[i - 1]++;
	}
	r->top = carry;
}

/* a <= b, both ends of ranges (a top end is above everything). */
static bool end_ge(const struct range *a, const uint8_t *start, size_t len)
{
	return a->top || memcmp(a->end, start, len) >= 0;
}

static void interval_elem(struct model *m, struct nftnl_set *s, const uint8_t *key, size_t len,
			  bool end)
{
	struct nftnl_set_elem *e = set_elem(m, s, key, (uint32_t)len, NFT_CONTINUE, NULL);

	if (e && end)
		nftnl_set_elem_set_u32(e, NFTNL_SET_ELEM_FLAGS, NFT_SET_ELEM_INTERVAL_END);
}

/*
 * The elements of an interval set holding @cidrs of @family: sorted, with
 * overlapping and adjacent ranges merged (the kernel refuses overlaps), each
 * range a start element and an end element flagged INTERVAL_END (none for a
 * range that runs to the last address), and an end element at zero first
 * when the first range starts above it: what nft(8) sends for the same set.
 */
static void interval_elems(struct model *m, struct nftnl_set *s, int family,
			   const struct egd_nft_cidr *cidrs, size_t n)
{
	struct range r[DENY_CIDRS_MAX], tmp;
	size_t len = family == AF_INET ? 4 : 16, nr = 0, i, j;
	static const uint8_t zero[16];

	for (i = 0; i < n && nr < DENY_CIDRS_MAX; i++)
		if (cidrs[i].family == family)
			cidr_range(&cidrs[i], len, &r[nr++]);
	/* Insertion sort by start: a few dozen ranges. */
	for (i = 1; i < nr; i++)
		for (j = i; j > 0 && memcmp(r[j - 1].start, r[j].start, len) > 0; j--) {
			tmp = r[j];
			r[j] = r[j - 1];
			r[j - 1] = tmp;
		}
	/* Merge in place. */
	for (i = 0, j = 1; j < nr; j++) {
		if (end_ge(&r[i], r[j].start, len)) {
			if (r[j].top || (!r[i].top && memcmp(r[j].end, r[i].end, len) > 0)) {
				memcpy(r[i].end, r[j].end, len);
				r[i].top = r[j].top;
			}
		} else {
			r[++i] = r[j];
		}
	}
	if (nr)
		nr = i + 1;
	// cppcheck-suppress uninitvar ; r[0] is read only when nr > 0, i.e. filled
	if (nr && memcmp(r[0].start, zero, len))
		interval_elem(m, s, zero, len, true);
	for (i = 0; i < nr; i++) {
		interval_elem(m, s, r[i].start, len, false);
		if (!r[i].top)
			interval_elem(m, s, r[i].end, len, true);
	}
}

static void deny_sets(struct model *m, const struct egd_nft_config *cfg)
{
	struct egd_nft_cidr all[DENY_CIDRS_MAX];
	struct nftnl_set *s4, *s6;
	int n;

	n = egd_nft_parse_cidrs(EGD_NFT_DENY_DEFAULT, all, DENY_CIDRS_MAX);
	if (n < 0 || (size_t)n + cfg->n_deny > DENY_CIDRS_MAX)
		return fail(m, -EINVAL);
	memcpy(&all[n], cfg->deny, cfg->n_deny * sizeof(cfg->deny[0]));
	n += (int)cfg->n_deny;
	s4 = set_new(m, SET_DENY4, SETID_DENY4, NFT_TYPE_IPADDR, 4, NFT_SET_INTERVAL);
	s6 = set_new(m, SET_DENY6, SETID_DENY6, NFT_TYPE_IP6ADDR, 16, NFT_SET_INTERVAL);
	interval_elems(m, s4, AF_INET, all, (size_t)n);
	interval_elems(m, s6, AF_INET6, all, (size_t)n);
}

/* Sets whose elements the daemon changes at run time: verify checks their
 * definition, not their content. */
static bool set_is_dynamic(const char *name)
{
	return name && (!strcmp(name, SET_ICADDR4) || !strcmp(name, SET_ICADDR6));
}

static void port_elem(struct model *m, struct nftnl_set *s, uint16_t port)
{
	uint16_t be = htons(port);

	set_elem(m, s, &be, sizeof(be), NFT_CONTINUE, NULL);
}

static int model_build(struct model *m, const struct egd_nft_config *cfg, enum egd_phase phase)
{
	struct nftnl_set *ports, *lo, *map;
	size_t i, j;
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
	obj_counter(m, EGD_NFT_CNT_DENIED_DST);

	ports = set_new(m, SET_PORTS, SETID_PORTS, NFT_TYPE_INET_SERVICE, sizeof(uint16_t), 0);
	port_elem(m, ports, cfg->listen_port);
	/* A set refuses duplicates, so a port shared by two listeners is
	 * added once. */
	if (cfg->dns_port != cfg->listen_port)
		port_elem(m, ports, cfg->dns_port);
	if (cfg->admin_port && cfg->admin_port != cfg->listen_port &&
	    cfg->admin_port != cfg->dns_port)
		port_elem(m, ports, cfg->admin_port);
	lo = set_new(m, SET_LO_ALLOW, SETID_LO_ALLOW, NFT_TYPE_INET_SERVICE, sizeof(uint16_t), 0);
	for (i = 0; i < cfg->n_loopback_allow; i++) {
		bool dup = false;

		for (j = 0; j < i; j++)
			dup |= cfg->loopback_allow[j] == cfg->loopback_allow[i];
		if (!dup)
			port_elem(m, lo, cfg->loopback_allow[i]);
	}
	deny_sets(m, cfg);
	set_new(m, SET_ICADDR4, SETID_ICADDR4, NFT_TYPE_IPADDR, 4, NFT_SET_TIMEOUT);
	set_new(m, SET_ICADDR6, SETID_ICADDR6, NFT_TYPE_IP6ADDR, 16, NFT_SET_TIMEOUT);
	map = set_new(m, MAP_PHASE, SETID_PHASE, NFT_TYPE_MARK, sizeof(uint32_t), NFT_SET_MAP);
	phase_elem(m, map, phase);

	build_refuse(m);
	build_deny(m, cfg);
	build_nat(m, cfg);
	build_filter(m, cfg);
	build_input(m, cfg);

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

	s = set_new(&m, MAP_PHASE, SETID_PHASE, NFT_TYPE_MARK, sizeof(uint32_t), NFT_SET_MAP);
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

/* Add-delete-add: the delete then succeeds whether or not the address was
 * there, and the last add gives it a fresh timeout; one transaction. */
int egd_nft_build_icaddr(const struct egd_ip *ip, uint32_t ttl_s, void *buf, size_t len)
{
	static const uint8_t mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
	const uint8_t *a = (const uint8_t *)ip->addr;
	struct model m = { 0 };
	struct nftnl_set *s[3];
	struct nftnl_set_elem *e;
	struct batch bt;
	const char *name;
	uint32_t klen;
	int err, i;

	if (!ttl_s || (ip->family != EGD_AF_INET && ip->family != EGD_AF_INET6))
		return -EINVAL;
	/* A v4-mapped answer is dialled as IPv4: the kernel sends IPv4. */
	if (ip->family == EGD_AF_INET6 && !memcmp(a, mapped, sizeof(mapped))) {
		a += sizeof(mapped);
		klen = 4;
	} else {
		klen = ip->family == EGD_AF_INET ? 4 : 16;
	}
	name = klen == 4 ? SET_ICADDR4 : SET_ICADDR6;
	for (i = 0; i < 3; i++) {
		s[i] = set_new(&m, name, 0, klen == 4 ? NFT_TYPE_IPADDR : NFT_TYPE_IP6ADDR, klen,
			       NFT_SET_TIMEOUT);
		nftnl_set_unset(s[i], NFTNL_SET_ID);
		e = set_elem(&m, s[i], a, klen, NFT_CONTINUE, NULL);
		if (e && i == 2)
			nftnl_set_elem_set_u64(e, NFTNL_SET_ELEM_TIMEOUT, (uint64_t)ttl_s * 1000);
	}
	err = m.err ? m.err : batch_start(&bt, buf, len);
	if (!err) {
		static const uint16_t types[3] = { NFT_MSG_NEWSETELEM, NFT_MSG_DELSETELEM,
						   NFT_MSG_NEWSETELEM };

		for (i = 0; i < 3; i++) {
			struct nlmsghdr *nlh = batch_msg(&bt, types[i], i == 1 ? 0 : NLM_F_CREATE);

			if (nlh)
				nftnl_set_elems_nlmsg_build_payload(nlh, s[i]);
			batch_next(&bt);
		}
		err = batch_finish(&bt);
	}
	model_free(&m);
	return err;
}

int egd_nft_icaddr_add(const struct egd_ip *ip, uint32_t ttl_s)
{
	char *buf;
	int len, err;

	buf = malloc(EGD_NFT_BATCH_MAX_BYTES);
	if (!buf)
		return -ENOMEM;
	len = egd_nft_build_icaddr(ip, ttl_s, buf, EGD_NFT_BATCH_MAX_BYTES);
	err = len < 0 ? len : nl_send_batch(buf, len, batch_acks(buf, len));
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
 * else. Quadratic, which is fine for sets of a few dozen. */
static bool elem_eq(struct nftnl_set_elem *a, struct nftnl_set_elem *b)
{
	uint32_t la, lb;
	const void *ka = nftnl_set_elem_get(a, NFTNL_SET_ELEM_KEY, &la);
	const void *kb = nftnl_set_elem_get(b, NFTNL_SET_ELEM_KEY, &lb);
	bool va = nftnl_set_elem_is_set(a, NFTNL_SET_ELEM_VERDICT);
	bool vb = nftnl_set_elem_is_set(b, NFTNL_SET_ELEM_VERDICT);

	uint32_t fa = nftnl_set_elem_is_set(a, NFTNL_SET_ELEM_FLAGS) ?
			      nftnl_set_elem_get_u32(a, NFTNL_SET_ELEM_FLAGS) : 0;
	uint32_t fb = nftnl_set_elem_is_set(b, NFTNL_SET_ELEM_FLAGS) ?
			      nftnl_set_elem_get_u32(b, NFTNL_SET_ELEM_FLAGS) : 0;

	/* The flags say which elements end an interval. */
	if (!ka || !kb || la != lb || memcmp(ka, kb, la) || va != vb || fa != fb)
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
		if (set_is_dynamic(name))
			continue;
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

/*
 * Carry the intercept addresses of the table being replaced into the new
 * one, with what is left of their timeouts: a reinstall (after tampering, or
 * a failed phase flip) must not reopen QUIC to them until the policy DNS
 * answers again. Best effort: no table, no set, nothing to carry.
 */
static void carry_icaddrs(struct model *m)
{
	static const char *const names[] = { SET_ICADDR4, SET_ICADDR6 };
	struct mnl_socket *nl = nl_open();
	size_t i, j;

	if (!nl)
		return;
	for (i = 0; i < m->n_sets; i++) {
		struct nftnl_set_elems_iter *it;
		struct nftnl_set_elem *e;
		struct dump d;
		int n = 0;

		for (j = 0; j < 2; j++)
			if (str_eq(nftnl_set_get_str(m->sets[i], NFTNL_SET_NAME), names[j]))
				break;
		if (j == 2)
			continue;
		if (nl_dump(nl, NFT_MSG_GETSETELEM, NLM_F_DUMP | NLM_F_ACK, NFT_MSG_NEWSETELEM,
			    pl_setelem, m->sets[i], &d) || !d.n) {
			dump_free(&d);
			continue;
		}
		it = nftnl_set_elems_iter_create(d.items[0]);
		while (it && (e = nftnl_set_elems_iter_next(it)) && n < ICADDR_CARRY_MAX) {
			uint32_t klen;
			const void *key = nftnl_set_elem_get(e, NFTNL_SET_ELEM_KEY, &klen);
			uint64_t left = nftnl_set_elem_is_set(e, NFTNL_SET_ELEM_EXPIRATION) ?
						nftnl_set_elem_get_u64(e, NFTNL_SET_ELEM_EXPIRATION) :
						0;
			struct nftnl_set_elem *c;

			if (!key || !left)
				continue;
			c = set_elem(m, m->sets[i], key, klen, NFT_CONTINUE, NULL);
			if (c)
				nftnl_set_elem_set_u64(c, NFTNL_SET_ELEM_TIMEOUT, left);
			n++;
		}
		if (it)
			nftnl_set_elems_iter_destroy(it);
		dump_free(&d);
	}
	mnl_socket_close(nl);
}

int egd_nft_install(const struct egd_nft_config *cfg, enum egd_phase phase)
{
	struct batch bt;
	struct model m;
	char *buf;
	int len, err;

	err = model_build(&m, cfg, phase);
	if (err)
		return err;
	carry_icaddrs(&m);
	buf = malloc(EGD_NFT_BATCH_MAX_BYTES);
	if (!buf) {
		err = -ENOMEM;
		goto out_free;
	}
	err = m.err ? m.err : batch_start(&bt, buf, EGD_NFT_BATCH_MAX_BYTES);
	if (!err) {
		batch_install(&bt, &m);
		len = batch_finish(&bt);
		err = len < 0 ? len : nl_send_batch(buf, len, batch_acks(buf, len));
	}
	if (err)
		egd_err("nft: installing table inet %s: %s", EGD_NFT_TABLE, strerror(-err));
	free(buf);
out_free:
	model_free(&m);
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

/* ------------------------------------------------------------------------
 * Parsing the operator's lists
 */

#define LIST_SEPARATORS ", \t"

int egd_nft_parse_cidrs(const char *s, struct egd_nft_cidr *out, int max)
{
	char buf[4096], *save = NULL, *tok;
	int n = 0;

	if (strlen(s) >= sizeof(buf))
		return -EINVAL;
	snprintf(buf, sizeof(buf), "%s", s);
	for (tok = strtok_r(buf, LIST_SEPARATORS, &save); tok;
	     tok = strtok_r(NULL, LIST_SEPARATORS, &save)) {
		struct egd_nft_cidr c = { 0 };
		char *slash = strchr(tok, '/'), *end;
		unsigned long prefix;
		int bits, i;

		if (n == max)
			return -E2BIG;
		if (slash)
			*slash = '\0';
		if (inet_pton(AF_INET, tok, c.addr) == 1)
			c.family = AF_INET;
		else if (inet_pton(AF_INET6, tok, c.addr) == 1)
			c.family = AF_INET6;
		else
			return -EINVAL;
		bits = c.family == AF_INET ? 32 : 128;
		prefix = (unsigned long)bits;
		if (slash) {
			errno = 0;
			prefix = strtoul(slash + 1, &end, 10);
			if (errno || end == slash + 1 || *end || prefix > (unsigned long)bits)
				return -EINVAL;
		}
		c.prefix = (uint8_t)prefix;
		/* Host bits set: 10.0.0.1/8 is a typo for something. */
		for (i = 0; i < bits / 8; i++) {
			if (c.addr[i] & ~prefix_mask((int)prefix, i))
				return -EINVAL;
		}
		out[n++] = c;
	}
	return n;
}

int egd_nft_parse_ports(const char *s, uint16_t *out, int max)
{
	char buf[4096], *save = NULL, *tok;
	int n = 0;

	if (strlen(s) >= sizeof(buf))
		return -EINVAL;
	snprintf(buf, sizeof(buf), "%s", s);
	for (tok = strtok_r(buf, LIST_SEPARATORS, &save); tok;
	     tok = strtok_r(NULL, LIST_SEPARATORS, &save)) {
		unsigned long port;
		char *end;

		if (n == max)
			return -E2BIG;
		errno = 0;
		port = strtoul(tok, &end, 10);
		if (errno || *end || port == 0 || port > 65535 || tok[0] == '-' || tok[0] == '+')
			return -EINVAL;
		out[n++] = (uint16_t)port;
	}
	return n;
}
