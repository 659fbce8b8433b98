/* SPDX-License-Identifier: MIT */
/*
 * The policy DNS's pure parts as tables: the query parser (malformed,
 * truncated, oversize, compression loops, several questions, classes, EDNS0
 * with client-subnet and cookie, case and trailing dots), the answer and
 * forward builders, the relay of an upstream answer, and the name policy.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <errno.h>

#include <cmocka.h>

#include "egress/dns.h"
#include "egress/dnsd.h"

/* --- building test messages ------------------------------------------------- */

struct msg {
	uint8_t b[70000];
	size_t n;
};

static void u8(struct msg *m, uint8_t v)
{
	m->b[m->n++] = v;
}

static void u16(struct msg *m, uint16_t v)
{
	u8(m, (uint8_t)(v >> 8));
	u8(m, (uint8_t)v);
}

static void u32(struct msg *m, uint32_t v)
{
	u16(m, (uint16_t)(v >> 16));
	u16(m, (uint16_t)v);
}

static void raw(struct msg *m, const void *p, size_t n)
{
	if (!n)
		return;
	memcpy(m->b + m->n, p, n);
	m->n += n;
}

/* "a.b.c" to wire labels (no compression); "" is the root. */
static void name(struct msg *m, const char *s)
{
	while (*s) {
		const char *dot = strchr(s, '.');
		size_t l = dot ? (size_t)(dot - s) : strlen(s);

		u8(m, (uint8_t)l);
		raw(m, s, l);
		s += l;
		if (*s == '.')
			s++;
	}
	u8(m, 0);
}

static void header(struct msg *m, uint16_t id, uint16_t flags, uint16_t qd, uint16_t an,
		   uint16_t ns, uint16_t ar)
{
	m->n = 0;
	u16(m, id);
	u16(m, flags);
	u16(m, qd);
	u16(m, an);
	u16(m, ns);
	u16(m, ar);
}

static void question(struct msg *m, const char *n, uint16_t type, uint16_t cls)
{
	name(m, n);
	u16(m, type);
	u16(m, cls);
}

/* OPT with @size, @ttl word and the options in @opts (already encoded). */
static void opt(struct msg *m, uint16_t size, uint32_t ttl, const uint8_t *opts, size_t olen)
{
	u8(m, 0);
	u16(m, EGD_DNS_T_OPT);
	u16(m, size);
	u32(m, ttl);
	u16(m, (uint16_t)olen);
	raw(m, opts, olen);
}

static void simple(struct msg *m, const char *n, uint16_t type)
{
	header(m, 0xbeef, 0x0100, 1, 0, 0, 0);
	question(m, n, type, EGD_DNS_CLASS_IN);
}

/* --- parser table ------------------------------------------------------------ */

enum kind {
	K_SIMPLE,	 /* one question, no EDNS */
	K_SHORT,	 /* 11 bytes */
	K_RESPONSE,	 /* QR set */
	K_OPCODE,	 /* opcode 2 (STATUS) */
	K_NO_QUESTION,
	K_TWO_QUESTIONS,
	K_ANSWER_RECORD,
	K_TRUNC_NAME,
	K_TRUNC_TYPE,
	K_LONG_LABEL,	 /* 0x40 label type */
	K_LONG_NAME,	 /* 256 bytes on the wire */
	K_SELF_POINTER,	 /* pointer to itself */
	K_FORWARD_POINTER,
	K_POINTER_LOOP,	 /* label, then a pointer back to that label */
	K_CLASS_CH,
	K_TRAILING,
	K_EDNS,		 /* OPT, udp 4096, DO, ECS + cookie */
	K_EDNS_SMALL,	 /* OPT, udp 100 */
	K_EDNS_V1,
	K_TWO_OPT,
	K_OPT_NAMED,	 /* OPT owner not root */
	K_OPT_BAD_OPTION, /* option length past the record */
	K_OTHER_ADDITIONAL,
	K_DOT_IN_LABEL,	 /* "openrouter.ai" as one label */
	K_OVERSIZE,	 /* 65536 bytes */
};

struct prow {
	const char *what;
	enum kind kind;
	const char *qname_in;
	int rc;
	const char *qname; /* expected text, NULL: not checked */
	int plain;
};

static void build(struct msg *m, const struct prow *r)
{
	static const uint8_t ecs_cookie[] = {
		0, 8, 0, 7, 0, 1, 24, 0, 203, 0, 113,		/* ECS 203.0.113.0/24 */
		0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8,		/* client cookie */
	};
	static const uint8_t bad_option[] = { 0, 10, 0, 9, 1, 2, 3 };

	switch (r->kind) {
	case K_SIMPLE:
		simple(m, r->qname_in, EGD_DNS_T_A);
		break;
	case K_SHORT:
		simple(m, "a.b", EGD_DNS_T_A);
		m->n = 11;
		break;
	case K_RESPONSE:
		simple(m, "a.b", EGD_DNS_T_A);
		m->b[2] |= 0x80;
		break;
	case K_OPCODE:
		simple(m, "a.b", EGD_DNS_T_A);
		m->b[2] |= 2 << 3;
		break;
	case K_NO_QUESTION:
		header(m, 1, 0x0100, 0, 0, 0, 0);
		break;
	case K_TWO_QUESTIONS:
		header(m, 1, 0x0100, 2, 0, 0, 0);
		question(m, "a.example", EGD_DNS_T_A, 1);
		question(m, "b.example", EGD_DNS_T_A, 1);
		break;
	case K_ANSWER_RECORD:
		header(m, 1, 0x0100, 1, 1, 0, 0);
		question(m, "a.example", EGD_DNS_T_A, 1);
		u16(m, 0xc00c);
		u16(m, 1);
		u16(m, 1);
		u32(m, 1);
		u16(m, 4);
		u32(m, 0x01020304);
		break;
	case K_TRUNC_NAME:
		simple(m, "abcdef.example", EGD_DNS_T_A);
		m->n = 12 + 5;
		break;
	case K_TRUNC_TYPE:
		simple(m, "a.example", EGD_DNS_T_A);
		m->n -= 3;
		break;
	case K_LONG_LABEL:
		header(m, 1, 0x0100, 1, 0, 0, 0);
		u8(m, 0x40);
		for (int i = 0; i < 64; i++)
			u8(m, 'a');
		u8(m, 0);
		u16(m, 1);
		u16(m, 1);
		break;
	case K_LONG_NAME:
		header(m, 1, 0x0100, 1, 0, 0, 0);
		for (int l = 0; l < 4; l++) { /* 4 x 64 = 256, + root = 257 */
			u8(m, 63);
			for (int i = 0; i < 63; i++)
				u8(m, 'a');
		}
		u8(m, 0);
		u16(m, 1);
		u16(m, 1);
		break;
	case K_SELF_POINTER:
		header(m, 1, 0x0100, 1, 0, 0, 0);
		u16(m, 0xc00c);
		u16(m, 1);
		u16(m, 1);
		break;
	case K_FORWARD_POINTER:
		header(m, 1, 0x0100, 1, 0, 0, 0);
		u16(m, 0xc010);
		u16(m, 1);
		u16(m, 1);
		u8(m, 1);
		u8(m, 'a');
		u8(m, 0);
		break;
	case K_POINTER_LOOP:
		header(m, 1, 0x0100, 1, 0, 0, 0);
		u8(m, 1);
		u8(m, 'a');
		u16(m, 0xc00c); /* back to the label "a": a loop */
		u16(m, 1);
		u16(m, 1);
		break;
	case K_CLASS_CH:
		header(m, 1, 0x0100, 1, 0, 0, 0);
		question(m, "version.bind", EGD_DNS_T_TXT, 3);
		break;
	case K_TRAILING:
		simple(m, "a.example", EGD_DNS_T_A);
		u8(m, 0);
		break;
	case K_EDNS:
		header(m, 7, 0x0100, 1, 0, 0, 1);
		question(m, "a.example", EGD_DNS_T_A, 1);
		opt(m, 4096, 0x8000, ecs_cookie, sizeof(ecs_cookie));
		break;
	case K_EDNS_SMALL:
		header(m, 7, 0x0100, 1, 0, 0, 1);
		question(m, "a.example", EGD_DNS_T_A, 1);
		opt(m, 100, 0, NULL, 0);
		break;
	case K_EDNS_V1:
		header(m, 7, 0x0100, 1, 0, 0, 1);
		question(m, "a.example", EGD_DNS_T_A, 1);
		opt(m, 1232, 1u << 16, NULL, 0);
		break;
	case K_TWO_OPT:
		header(m, 7, 0x0100, 1, 0, 0, 2);
		question(m, "a.example", EGD_DNS_T_A, 1);
		opt(m, 1232, 0, NULL, 0);
		opt(m, 1232, 0, NULL, 0);
		break;
	case K_OPT_NAMED:
		header(m, 7, 0x0100, 1, 0, 0, 1);
		question(m, "a.example", EGD_DNS_T_A, 1);
		u16(m, 0xc00c);
		u16(m, EGD_DNS_T_OPT);
		u16(m, 1232);
		u32(m, 0);
		u16(m, 0);
		break;
	case K_OPT_BAD_OPTION:
		header(m, 7, 0x0100, 1, 0, 0, 1);
		question(m, "a.example", EGD_DNS_T_A, 1);
		opt(m, 1232, 0, bad_option, sizeof(bad_option));
		break;
	case K_OTHER_ADDITIONAL:
		header(m, 7, 0x0100, 1, 0, 0, 1);
		question(m, "a.example", EGD_DNS_T_A, 1);
		u16(m, 0xc00c);
		u16(m, 250); /* TSIG */
		u16(m, 255);
		u32(m, 0);
		u16(m, 0);
		break;
	case K_DOT_IN_LABEL:
		header(m, 1, 0x0100, 1, 0, 0, 0);
		u8(m, 13);
		raw(m, "openrouter.ai", 13);
		u8(m, 0);
		u16(m, 1);
		u16(m, 1);
		break;
	case K_OVERSIZE:
		simple(m, "a.example", EGD_DNS_T_A);
		memset(m->b + m->n, 0, 65536 - m->n);
		m->n = 65536;
		break;
	}
}

#define FE EGD_DNS_FORMERR
static const struct prow prows[] = {
	{ "plain name", K_SIMPLE, "openrouter.ai", 0, "openrouter.ai", 1 },
	{ "mixed case is folded, for matching only", K_SIMPLE, "OpenRouter.AI", 0,
	  "openrouter.ai", 1 },
	{ "root name", K_SIMPLE, "", 0, ".", 0 },
	{ "underscore label", K_SIMPLE, "_dmarc.example", 0, "_dmarc.example", 1 },
	{ "binary label byte escaped", K_SIMPLE, "a\x01.example", 0, "a\\001.example", 0 },
	{ "shorter than a header: dropped", K_SHORT, NULL, -1, NULL, 0 },
	{ "a response: dropped, never reflected", K_RESPONSE, NULL, -1, NULL, 0 },
	{ "opcode STATUS: NOTIMP", K_OPCODE, NULL, EGD_DNS_NOTIMP, NULL, 0 },
	{ "no question", K_NO_QUESTION, NULL, FE, NULL, 0 },
	{ "two questions", K_TWO_QUESTIONS, NULL, FE, NULL, 0 },
	{ "an answer record in a query", K_ANSWER_RECORD, NULL, FE, NULL, 0 },
	{ "name cut short", K_TRUNC_NAME, NULL, FE, NULL, 0 },
	{ "type and class cut short", K_TRUNC_TYPE, NULL, FE, NULL, 0 },
	{ "reserved label type 0x40", K_LONG_LABEL, NULL, FE, NULL, 0 },
	{ "name over 255 bytes", K_LONG_NAME, NULL, FE, NULL, 0 },
	{ "pointer to itself", K_SELF_POINTER, NULL, FE, NULL, 0 },
	{ "pointer forward", K_FORWARD_POINTER, NULL, FE, NULL, 0 },
	{ "compression loop", K_POINTER_LOOP, NULL, FE, NULL, 0 },
	{ "class CH: REFUSED", K_CLASS_CH, NULL, EGD_DNS_REFUSED, "version.bind", 1 },
	{ "trailing bytes", K_TRAILING, NULL, FE, NULL, 0 },
	{ "EDNS0 with ECS and cookie", K_EDNS, NULL, 0, "a.example", 1 },
	{ "EDNS0 with a size under 512", K_EDNS_SMALL, NULL, 0, "a.example", 1 },
	{ "EDNS version 1: BADVERS", K_EDNS_V1, NULL, EGD_DNS_BADVERS, NULL, 0 },
	{ "two OPT records", K_TWO_OPT, NULL, FE, NULL, 0 },
	{ "OPT with an owner name", K_OPT_NAMED, NULL, FE, NULL, 0 },
	{ "OPT option longer than its record", K_OPT_BAD_OPTION, NULL, FE, NULL, 0 },
	{ "TSIG in the additional section", K_OTHER_ADDITIONAL, NULL, FE, NULL, 0 },
	{ "a dot inside a label is not two labels", K_DOT_IN_LABEL, NULL, 0,
	  "openrouter\\046ai", 0 },
	{ "over 65535 bytes", K_OVERSIZE, NULL, FE, NULL, 0 },
};

static struct msg m, out;

static void test_parse_table(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof(prows) / sizeof(prows[0]); i++) {
		const struct prow *r = &prows[i];
		struct egd_dns_query q;
		int rc;

		build(&m, r);
		rc = egd_dns_parse_query(m.b, m.n, &q);
		if (rc != r->rc)
			fail_msg("%s: rc %d, want %d", r->what, rc, r->rc);
		if (r->qname && strcmp(q.qname, r->qname))
			fail_msg("%s: qname \"%s\", want \"%s\"", r->what, q.qname, r->qname);
		if (r->qname && q.plain != r->plain)
			fail_msg("%s: plain %d, want %d", r->what, q.plain, r->plain);
		/* Whatever came in, an answer can be built from what was parsed. */
		if (rc >= 0 &&
		    egd_dns_build_answer(&q, rc, NULL, 0, 30, 512, out.b, sizeof(out.b)) < 12)
			fail_msg("%s: no answer built", r->what);
	}
}

static void test_edns_details(void **state)
{
	struct egd_dns_query q;

	(void)state;
	build(&m, &(struct prow){ .kind = K_EDNS });
	assert_int_equal(egd_dns_parse_query(m.b, m.n, &q), 0);
	assert_true(q.has_edns);
	assert_true(q.edns_do);
	assert_true(q.had_ecs);
	assert_true(q.had_cookie);
	assert_int_equal(q.udp_size, EGD_DNS_UDP_MAX_BYTES); /* 4096 clamped */
	build(&m, &(struct prow){ .kind = K_EDNS_SMALL });
	assert_int_equal(egd_dns_parse_query(m.b, m.n, &q), 0);
	assert_int_equal(q.udp_size, EGD_DNS_UDP_MIN_BYTES);
	build(&m, &(struct prow){ .kind = K_SIMPLE, .qname_in = "a.b" });
	assert_int_equal(egd_dns_parse_query(m.b, m.n, &q), 0);
	assert_false(q.has_edns);
	assert_int_equal(q.udp_size, EGD_DNS_UDP_MIN_BYTES);
}

/* A pointer back into the header is legal (if odd): ID 0x00.. reads as the
 * root. Bounded and backwards, so accepted. */
static void test_pointer_into_header(void **state)
{
	struct egd_dns_query q;

	(void)state;
	header(&m, 0x0001, 0x0100, 1, 0, 0, 0);
	u16(&m, 0xc000);
	u16(&m, 1);
	u16(&m, 1);
	assert_int_equal(egd_dns_parse_query(m.b, m.n, &q), 0);
	assert_string_equal(q.qname, ".");
}

/* --- answers ------------------------------------------------------------------ */

static uint16_t g16(const uint8_t *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}

static void test_answer_a_capped_and_echoed(void **state)
{
	struct egd_dns_query q;
	struct egd_dns_rr rr[3] = {
		{ .type = EGD_DNS_T_A, .ttl = 3600, .addr = { 198, 51, 100, 7 } },
		{ .type = EGD_DNS_T_AAAA, .ttl = 10 }, /* not the question's type */
		{ .type = EGD_DNS_T_A, .ttl = 5, .addr = { 198, 51, 100, 8 } },
	};
	int n;
	size_t qlen;

	(void)state;
	simple(&m, "OpenRouter.AI", EGD_DNS_T_A);
	assert_int_equal(egd_dns_parse_query(m.b, m.n, &q), 0);
	n = egd_dns_build_answer(&q, 0, rr, 3, 30, 512, out.b, sizeof(out.b));
	qlen = 12 + q.qname_wire_len + 4;
	assert_int_equal(n, (int)(qlen + 2 * 16));
	assert_int_equal(g16(out.b), 0xbeef);
	assert_int_equal(g16(out.b + 2), 0x8180); /* QR RD RA, NOERROR */
	assert_int_equal(g16(out.b + 6), 2);
	assert_int_equal(g16(out.b + 10), 0); /* no OPT: the query had none */
	/* The question as the client spelt it (0x20 case kept). */
	assert_memory_equal(out.b + 12, m.b + 12, q.qname_wire_len + 4);
	/* TTLs: 3600 capped to 30, 5 kept. */
	assert_int_equal(g16(out.b + qlen + 6) << 16 | g16(out.b + qlen + 8), 30);
	assert_int_equal(g16(out.b + qlen + 16 + 6) << 16 | g16(out.b + qlen + 16 + 8), 5);
	assert_memory_equal(out.b + qlen + 12, rr[0].addr, 4);
}

static void test_answer_nodata_refused_formerr(void **state)
{
	struct egd_dns_query q;
	int n;

	(void)state;
	simple(&m, "pypi.org", EGD_DNS_T_HTTPS);
	assert_int_equal(egd_dns_parse_query(m.b, m.n, &q), 0);
	n = egd_dns_build_answer(&q, 0, NULL, 0, 30, 512, out.b, sizeof(out.b));
	assert_int_equal(n, 12 + 10 + 4);
	assert_int_equal(g16(out.b + 6), 0);
	assert_int_equal(out.b[3] & 0xf, 0);
	n = egd_dns_build_answer(&q, EGD_DNS_REFUSED, NULL, 0, 30, 512, out.b, sizeof(out.b));
	assert_int_equal(out.b[3] & 0xf, EGD_DNS_REFUSED);
	assert_int_equal(g16(out.b + 4), 1);
	/* Two questions: FORMERR with no question echoed. */
	build(&m, &prows[9]);
	assert_int_equal(egd_dns_parse_query(m.b, m.n, &q), FE);
	n = egd_dns_build_answer(&q, FE, NULL, 0, 30, 512, out.b, sizeof(out.b));
	assert_int_equal(n, 12);
	assert_int_equal(g16(out.b + 4), 0);
	assert_int_equal(out.b[3] & 0xf, FE);
}

static void test_answer_badvers_in_opt(void **state)
{
	struct egd_dns_query q;
	int n;

	(void)state;
	build(&m, &(struct prow){ .kind = K_EDNS_V1 });
	assert_int_equal(egd_dns_parse_query(m.b, m.n, &q), EGD_DNS_BADVERS);
	n = egd_dns_build_answer(&q, EGD_DNS_BADVERS, NULL, 0, 30, 512, out.b, sizeof(out.b));
	assert_int_equal(out.b[3] & 0xf, 0);
	assert_int_equal(g16(out.b + 10), 1);
	assert_int_equal(out.b[n - 11 + 5], 1); /* extended rcode 1 << 4 = 16 */
}

static void test_answer_truncated_over_udp_size(void **state)
{
	struct egd_dns_query q;
	struct egd_dns_rr rr[30];
	int n;

	(void)state;
	memset(rr, 0, sizeof(rr));
	for (int i = 0; i < 30; i++) {
		rr[i].type = EGD_DNS_T_AAAA;
		rr[i].ttl = 60;
		rr[i].addr[15] = (uint8_t)i;
	}
	simple(&m, "many.example", EGD_DNS_T_AAAA);
	assert_int_equal(egd_dns_parse_query(m.b, m.n, &q), 0);
	n = egd_dns_build_answer(&q, 0, rr, 30, 30, q.udp_size, out.b, sizeof(out.b));
	assert_true(n <= 512);
	assert_true(g16(out.b + 2) & 0x0200);
	assert_int_equal(g16(out.b + 6), 0);
	/* Over TCP the same fits whole. */
	n = egd_dns_build_answer(&q, 0, rr, 30, 30, EGD_DNS_MSG_MAX_BYTES, out.b, sizeof(out.b));
	assert_false(g16(out.b + 2) & 0x0200);
	assert_int_equal(g16(out.b + 6), 30);
	assert_int_equal(n, 12 + (int)q.qname_wire_len + 4 + 30 * 28);
}

static void test_forward_strips_options(void **state)
{
	struct egd_dns_query q;
	int n;

	(void)state;
	build(&m, &(struct prow){ .kind = K_EDNS });
	assert_int_equal(egd_dns_parse_query(m.b, m.n, &q), 0);
	n = egd_dns_build_forward(&q, 0x4242, out.b, sizeof(out.b));
	assert_int_equal(n, 12 + (int)q.qname_wire_len + 4 + 11);
	assert_int_equal(g16(out.b), 0x4242);
	assert_int_equal(g16(out.b + 10), 1);
	assert_int_equal(g16(out.b + n - 2), 0);	   /* OPT without options */
	assert_int_equal(g16(out.b + n - 4), 0x8000); /* DO kept */
	/* What we send is itself a query we would accept, without ECS/cookie. */
	assert_int_equal(egd_dns_parse_query(out.b, (size_t)n, &q), 0);
	assert_false(q.had_ecs);
	assert_false(q.had_cookie);
}

/* An upstream answer: the question, @an A records (TTL 3600, the owner a
 * pointer to the question), an OPT with a cookie and ECS. */
static void upstream_answer(struct msg *a, const char *qname, int an)
{
	static const uint8_t opts[] = { 0, 10, 0, 4, 9, 9, 9, 9, 0, 8, 0, 4, 0, 1, 0, 0 };

	header(a, 0x9999, 0x8180, 1, (uint16_t)an, 0, 1);
	question(a, qname, EGD_DNS_T_A, 1);
	for (int i = 0; i < an; i++) {
		u16(a, 0xc00c);
		u16(a, EGD_DNS_T_A);
		u16(a, 1);
		u32(a, 3600);
		u16(a, 4);
		u32(a, 0xc6336400u + (uint32_t)i);
	}
	opt(a, 4096, 0, opts, sizeof(opts));
}

static void count_owner(void *arg, const char *owner, int plain, const struct egd_dns_rr *rr)
{
	static const uint8_t first[4] = { 0xc6, 0x33, 0x64, 0x00 };
	int *seen = arg;

	assert_string_equal(owner, "other.example"); /* the pointer followed, lowercased */
	assert_true(plain);
	assert_int_equal(rr->type, EGD_DNS_T_A);
	assert_int_equal(rr->ttl, 30);
	if (*seen == 0)
		assert_memory_equal(rr->addr, first, 4);
	(*seen)++;
}

static void test_relay(void **state)
{
	static struct msg up;
	struct egd_dns_query q;
	size_t qlen;
	int n;

	(void)state;
	header(&m, 0x1111, 0x0100, 1, 0, 0, 1);
	question(&m, "Other.Example", EGD_DNS_T_A, 1);
	opt(&m, 1232, 0, NULL, 0);
	assert_int_equal(egd_dns_parse_query(m.b, m.n, &q), 0);
	qlen = 12 + q.qname_wire_len + 4;

	upstream_answer(&up, "other.example", 2);
	n = egd_dns_relay_answer(&q, up.b, up.n, 30, q.udp_size, out.b, sizeof(out.b));
	assert_int_equal(n, (int)(qlen + 2 * 16 + 11));
	assert_int_equal(g16(out.b), 0x1111);
	assert_memory_equal(out.b + 12, m.b + 12, q.qname_wire_len); /* client's case */
	assert_int_equal(g16(out.b + 6), 2);
	assert_int_equal(g16(out.b + 10), 1);
	assert_int_equal(g16(out.b + qlen + 8), 30); /* 3600 capped */
	assert_int_equal(g16(out.b + n - 2), 0);     /* OPT: no cookie, no ECS */

	/* The relayed answer's address records, for the intercept table. */
	{
		int seen = 0;

		assert_int_equal(egd_dns_answer_addrs(out.b, (size_t)n, count_owner, &seen), 2);
		assert_int_equal(seen, 2);
	}
	/* Another question: refused as an answer. */
	upstream_answer(&up, "other.exampl", 1);
	assert_int_equal(egd_dns_relay_answer(&q, up.b, up.n, 30, 512, out.b, sizeof(out.b)),
			 -EBADMSG);
	/* Cut short: malformed. */
	upstream_answer(&up, "other.example", 2);
	assert_int_equal(egd_dns_relay_answer(&q, up.b, up.n - 3, 30, 512, out.b, sizeof(out.b)),
			 -EBADMSG);
	/* Too big for the client: TC, question and OPT only. */
	upstream_answer(&up, "other.example", 40);
	n = egd_dns_relay_answer(&q, up.b, up.n, 30, 512, out.b, sizeof(out.b));
	assert_int_equal(n, (int)(qlen + 11));
	assert_true(g16(out.b + 2) & 0x0200);
	assert_int_equal(g16(out.b + 6), 0);
}

/* --- the name policy ----------------------------------------------------------- */

struct polrow {
	const char *what;
	enum egd_phase phase;
	const char *qname;
	uint16_t qtype;
	enum egd_dns_verdict v;
	int intercept;
};

#define AG EGD_PHASE_AGENT
#define VE EGD_PHASE_VERIFICATION
static const struct polrow polrows[] = {
	{ "intercept host A", AG, "openrouter.ai", EGD_DNS_T_A, EGD_DNS_V_RESOLVE, 1 },
	{ "intercept host AAAA, any case", AG, "OpenRouter.AI.", EGD_DNS_T_AAAA,
	  EGD_DNS_V_RESOLVE, 1 },
	{ "intercept host HTTPS", AG, "openrouter.ai", EGD_DNS_T_HTTPS, EGD_DNS_V_NODATA, 1 },
	{ "intercept host HTTPS, verification", VE, "openrouter.ai", EGD_DNS_T_HTTPS,
	  EGD_DNS_V_NODATA, 1 },
	{ "intercept host SVCB, verification", VE, "openrouter.ai", EGD_DNS_T_SVCB,
	  EGD_DNS_V_NODATA, 1 },
	{ "intercept host ANY, verification", VE, "openrouter.ai", EGD_DNS_T_ANY,
	  EGD_DNS_V_NODATA, 1 },
	{ "intercept host A, verification: still the daemon's", VE, "openrouter.ai",
	  EGD_DNS_T_A, EGD_DNS_V_RESOLVE, 1 },
	{ "allowlisted A", AG, "pypi.org", EGD_DNS_T_A, EGD_DNS_V_RESOLVE, 0 },
	{ "allowlisted TXT", AG, "pypi.org", EGD_DNS_T_TXT, EGD_DNS_V_NODATA, 0 },
	{ "wildcard A", AG, "files.pythonhosted.org", EGD_DNS_T_A, EGD_DNS_V_RESOLVE, 0 },
	{ "wildcard apex", AG, "pythonhosted.org", EGD_DNS_T_A, EGD_DNS_V_REFUSE, 0 },
	{ "lookalike suffix", AG, "evilpythonhosted.org", EGD_DNS_T_A, EGD_DNS_V_REFUSE, 0 },
	{ "subdomain of the intercept host", AG, "x.openrouter.ai", EGD_DNS_T_A,
	  EGD_DNS_V_REFUSE, 0 },
	{ "other name", AG, "data.attacker.example", EGD_DNS_T_A, EGD_DNS_V_REFUSE, 0 },
	{ "other name, verification", VE, "data.attacker.example", EGD_DNS_T_TXT,
	  EGD_DNS_V_FORWARD, 0 },
	{ "allowlisted HTTPS, verification: forwarded", VE, "pypi.org", EGD_DNS_T_HTTPS,
	  EGD_DNS_V_FORWARD, 0 },
	{ "root", AG, "", EGD_DNS_T_A, EGD_DNS_V_REFUSE, 0 },
};

static void test_policy_table(void **state)
{
	struct egd_policy pol;

	(void)state;
	memset(&pol, 0, sizeof(pol));
	assert_int_equal(egd_hostlist_parse(&pol.intercept, "openrouter.ai", NULL, 0), 0);
	assert_int_equal(egd_hostlist_parse(&pol.agent_allow, "pypi.org, *.pythonhosted.org",
					    NULL, 0),
			 0);
	for (size_t i = 0; i < sizeof(polrows) / sizeof(polrows[0]); i++) {
		const struct polrow *r = &polrows[i];
		struct egd_dns_query q;
		enum egd_dns_verdict v;
		int icpt = -1;
		char n[300];

		snprintf(n, sizeof(n), "%s", r->qname);
		if (n[0] && n[strlen(n) - 1] == '.')
			n[strlen(n) - 1] = '\0'; /* name() writes the root itself */
		simple(&m, n, r->qtype);
		assert_int_equal(egd_dns_parse_query(m.b, m.n, &q), 0);
		v = egd_dns_policy(&pol, r->phase, &q, &icpt);
		if (v != r->v || icpt != r->intercept)
			fail_msg("%s: verdict %s intercept %d, want %s %d", r->what,
				 egd_dns_verdict_name(v), icpt, egd_dns_verdict_name(r->v),
				 r->intercept);
	}
	/* A single label holding a dot never matches the two-label host. */
	build(&m, &prows[27]);
	{
		struct egd_dns_query q;
		int icpt;

		assert_int_equal(egd_dns_parse_query(m.b, m.n, &q), 0);
		assert_int_equal(egd_dns_policy(&pol, AG, &q, &icpt), EGD_DNS_V_REFUSE);
		assert_int_equal(icpt, 0);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse_table),
		cmocka_unit_test(test_edns_details),
		cmocka_unit_test(test_pointer_into_header),
		cmocka_unit_test(test_answer_a_capped_and_echoed),
		cmocka_unit_test(test_answer_nodata_refused_formerr),
		cmocka_unit_test(test_answer_badvers_in_opt),
		cmocka_unit_test(test_answer_truncated_over_udp_size),
		cmocka_unit_test(test_forward_strips_options),
		cmocka_unit_test(test_relay),
		cmocka_unit_test(test_policy_table),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
