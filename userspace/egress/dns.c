/* SPDX-License-Identifier: MIT */
/*
 * DNS message parsing and building for the policy DNS; see dns.h for why
 * it is hand-written. Every read is bounds-checked against the message
 * length; names are rebuilt into a fixed buffer with their length checked
 * at each label, and compression pointers must go strictly backwards, so a
 * hostile message can neither loop nor overrun.
 */
#include "egress/dns.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#define HDR_BYTES 12
#define RR_FIXED_BYTES 10 /* type, class, ttl, rdlength */
#define LABEL_MAX_BYTES 63

/* Header flags (second 16-bit word). */
#define F_QR 0x8000
#define F_AA 0x0400
#define F_TC 0x0200
#define F_RD 0x0100
#define F_RA 0x0080
#define F_AD 0x0020
#define F_CD 0x0010

static uint16_t get16(const uint8_t *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}

static uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}

static void put32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

/*
 * Read the name at *@off of @msg into @wire (uncompressed, case kept) and
 * move *@off past it. Returns the wire length, or -1: truncated, a label
 * or name too long, a reserved label type, a pointer that does not go
 * strictly backwards, or too many pointers.
 */
static int read_name(const uint8_t *msg, size_t len, size_t *off, uint8_t *wire)
{
	// cppcheck-suppress duplicateAssignExpression ; both start where the name does
	size_t pos = *off, limit = *off, n = 0, end = 0;
	int ptrs = 0, jumped = 0;

	for (;;) {
		uint8_t l;

		if (pos >= len)
			return -1;
		l = msg[pos];
		if ((l & 0xc0) == 0xc0) {
			size_t to;

			if (pos + 1 >= len || ++ptrs > EGD_DNS_NAME_MAX_PTRS)
				return -1;
			to = (size_t)(l & 0x3f) << 8 | msg[pos + 1];
			/* Strictly before the run of labels that led here:
			 * every hop goes further back, so none can loop. */
			if (to >= limit)
				return -1;
			if (!jumped)
				end = pos + 2;
			jumped = 1;
			limit = to;
			pos = to;
			continue;
		}
		if (l & 0xc0)
			return -1; /* 0x40/0x80: extended and reserved label types */
		if (n + 1 + l > EGD_DNS_NAME_WIRE_MAX_BYTES || pos + 1 + l > len)
			return -1;
		memcpy(wire + n, msg + pos, 1 + (size_t)l);
		n += 1 + (size_t)l;
		pos += 1 + (size_t)l;
		if (!l)
			break;
	}
	*off = jumped ? end : pos;
	return (int)n;
}

/* Skip a name without keeping it (the same checks as read_name()). */
static int skip_name(const uint8_t *msg, size_t len, size_t *off)
{
	uint8_t scratch[EGD_DNS_NAME_WIRE_MAX_BYTES];

	return read_name(msg, len, off, scratch) < 0 ? -1 : 0;
}

static int host_char(uint8_t c)
{
	return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
}

/*
 * The text form of a wire name: lowercase, dots between labels, and every
 * byte that is not a host character (a dot inside a label included, so
 * "openrouter.ai" as one label never reads as the two-label name) escaped
 * as \DDD. Returns 1 when nothing had to be escaped.
 */
static int name_text(const uint8_t *wire, char *out, size_t cap)
{
	size_t o = 0;
	int plain = 1;

	if (wire[0] == 0) {
		snprintf(out, cap, ".");
		return 0;
	}
	for (size_t i = 0; wire[i];) {
		uint8_t l = wire[i++];

		if (o && o + 1 < cap)
			out[o++] = '.';
		for (uint8_t k = 0; k < l; k++, i++) {
			uint8_t c = wire[i];

			if (c >= 'A' && c <= 'Z')
				c = (uint8_t)(c - 'A' + 'a');
			if (host_char(c)) {
				if (o + 1 < cap)
					out[o++] = (char)c;
			} else {
				plain = 0;
				if (o + 4 < cap)
					o += (size_t)snprintf(out + o, cap - o, "\\%03u", c);
			}
		}
	}
	out[o < cap ? o : cap - 1] = '\0';
	return plain;
}

/* Case-insensitive equality of two wire names (ASCII letters only fold). */
static int same_name(const uint8_t *a, const uint8_t *b, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		uint8_t x = a[i], y = b[i];

		if (x >= 'A' && x <= 'Z')
			x = (uint8_t)(x - 'A' + 'a');
		if (y >= 'A' && y <= 'Z')
			y = (uint8_t)(y - 'A' + 'a');
		if (x != y)
			return 0;
	}
	return 1;
}

/* The OPT record's RDATA: a list of {code, length, data}. */
static int parse_opt_options(const uint8_t *p, size_t len, struct egd_dns_query *q)
{
	size_t off = 0;

	while (off < len) {
		uint16_t code, olen;

		if (len - off < 4)
			return -1;
		code = get16(p + off);
		olen = get16(p + off + 2);
		off += 4;
		if (olen > len - off)
			return -1;
		if (code == EGD_DNS_OPT_ECS)
			q->had_ecs = 1;
		else if (code == EGD_DNS_OPT_COOKIE)
			q->had_cookie = 1;
		off += olen;
	}
	return 0;
}

int egd_dns_parse_query(const uint8_t *msg, size_t len, struct egd_dns_query *q)
{
	uint16_t flags, qd, an, ns, ar;
	size_t off = HDR_BYTES;
	int n, opts = 0;

	memset(q, 0, sizeof(*q));
	q->udp_size = EGD_DNS_UDP_MIN_BYTES;
	if (len < HDR_BYTES)
		return -1;
	q->id = get16(msg);
	flags = get16(msg + 2);
	if (flags & F_QR)
		return -1;
	q->opcode = (uint8_t)((flags >> 11) & 0xf);
	q->rd = !!(flags & F_RD);
	qd = get16(msg + 4);
	an = get16(msg + 6);
	ns = get16(msg + 8);
	ar = get16(msg + 10);
	if (q->opcode != 0)
		return EGD_DNS_NOTIMP;
	if (qd != 1 || an || ns || len > EGD_DNS_MSG_MAX_BYTES)
		return EGD_DNS_FORMERR;

	n = read_name(msg, len, &off, q->qname_wire);
	if (n < 0 || len - off < 4)
		return EGD_DNS_FORMERR;
	q->qname_wire_len = (size_t)n;
	q->qtype = get16(msg + off);
	q->qclass = get16(msg + off + 2);
	off += 4;
	q->plain = name_text(q->qname_wire, q->qname, sizeof(q->qname));
	q->has_question = 1;

	/* The additional section: one OPT at most, and nothing else (a query
	 * has no business carrying other records; TSIG could not survive
	 * the rewrite anyway). */
	for (uint16_t i = 0; i < ar; i++) {
		uint16_t type, rdlen;
		uint32_t ttl;
		size_t name_at = off;

		if (skip_name(msg, len, &off) || len - off < RR_FIXED_BYTES)
			return EGD_DNS_FORMERR;
		type = get16(msg + off);
		ttl = get32(msg + off + 4);
		rdlen = get16(msg + off + 8);
		if (rdlen > len - off - RR_FIXED_BYTES)
			return EGD_DNS_FORMERR;
		if (type != EGD_DNS_T_OPT || ++opts > 1 || msg[name_at] != 0)
			return EGD_DNS_FORMERR;
		q->has_edns = 1;
		q->udp_size = get16(msg + off + 2);
		if (q->udp_size < EGD_DNS_UDP_MIN_BYTES)
			q->udp_size = EGD_DNS_UDP_MIN_BYTES;
		if (q->udp_size > EGD_DNS_UDP_MAX_BYTES)
			q->udp_size = EGD_DNS_UDP_MAX_BYTES;
		q->edns_version = (uint8_t)(ttl >> 16);
		q->edns_do = !!(ttl & 0x8000);
		if (parse_opt_options(msg + off + RR_FIXED_BYTES, rdlen, q))
			return EGD_DNS_FORMERR;
		off += RR_FIXED_BYTES + rdlen;
	}
	if (off != len)
		return EGD_DNS_FORMERR; /* trailing bytes */
	if (q->has_edns && q->edns_version > 0)
		return EGD_DNS_BADVERS;
	if (q->qclass != EGD_DNS_CLASS_IN)
		return EGD_DNS_REFUSED;
	return EGD_DNS_NOERROR;
}

/* An OPT record without options: our UDP size, @ext_rcode, DO from @q. */
static size_t put_opt(const struct egd_dns_query *q, uint8_t ext_rcode, uint8_t *p)
{
	p[0] = 0; /* root */
	put16(p + 1, EGD_DNS_T_OPT);
	put16(p + 3, EGD_DNS_UDP_MAX_BYTES);
	put32(p + 5, (uint32_t)ext_rcode << 24 | (q->edns_do ? 0x8000u : 0));
	put16(p + 9, 0);
	return 11;
}

#define OPT_BYTES 11

/* Header and question of an answer to @q; returns the offset after them. */
static size_t put_head(const struct egd_dns_query *q, int rcode, uint8_t *out)
{
	uint16_t flags = F_QR | F_RA | (uint16_t)(q->opcode << 11) | (q->rd ? F_RD : 0) |
			 (uint16_t)(rcode & 0xf);
	size_t off = HDR_BYTES;

	memset(out, 0, HDR_BYTES);
	put16(out, q->id);
	put16(out + 2, flags);
	if (q->has_question) {
		put16(out + 4, 1);
		memcpy(out + off, q->qname_wire, q->qname_wire_len);
		off += q->qname_wire_len;
		put16(out + off, q->qtype);
		put16(out + off + 2, q->qclass);
		off += 4;
	}
	return off;
}

int egd_dns_build_answer(const struct egd_dns_query *q, int rcode, const struct egd_dns_rr *rr,
			 size_t n, uint32_t max_ttl_s, size_t limit, uint8_t *out, size_t cap)
{
	size_t off, need = HDR_BYTES + (q->has_question ? q->qname_wire_len + 4 : 0);
	size_t opt = q->has_edns ? OPT_BYTES : 0, ans = 0;
	uint16_t count = 0;

	if (limit > cap)
		limit = cap;
	/* BADVERS lives in the OPT record's extended rcode; without an OPT
	 * (never the case: BADVERS needs an OPT to be asked) send FORMERR. */
	if (rcode > 15 && !q->has_edns)
		rcode = EGD_DNS_FORMERR;
	for (size_t i = 0; rcode == EGD_DNS_NOERROR && i < n; i++) {
		if (rr[i].type != q->qtype)
			continue;
		/* Owner is a pointer to the question's name (offset 12). */
		ans += 2u + RR_FIXED_BYTES + (rr[i].type == EGD_DNS_T_A ? 4u : 16u);
		count++;
	}
	if (need + opt > limit)
		return -ENOSPC;
	off = put_head(q, rcode, out);
	if (need + ans + opt > limit) {
		put16(out + 2, get16(out + 2) | F_TC);
		count = 0;
	}
	for (size_t i = 0; count && i < n; i++) {
		size_t alen = rr[i].type == EGD_DNS_T_A ? 4 : 16;

		if (rr[i].type != q->qtype)
			continue;
		put16(out + off, 0xc000 | HDR_BYTES);
		put16(out + off + 2, rr[i].type);
		put16(out + off + 4, EGD_DNS_CLASS_IN);
		put32(out + off + 6, rr[i].ttl < max_ttl_s ? rr[i].ttl : max_ttl_s);
		put16(out + off + 10, (uint16_t)alen);
		memcpy(out + off + 12, rr[i].addr, alen);
		off += 12 + alen;
	}
	put16(out + 6, count);
	if (opt) {
		off += put_opt(q, (uint8_t)(rcode >> 4), out + off);
		put16(out + 10, 1);
	}
	return (int)off;
}

int egd_dns_build_forward(const struct egd_dns_query *q, uint16_t id, uint8_t *out, size_t cap)
{
	size_t off;

	if (!q->has_question || HDR_BYTES + q->qname_wire_len + 4 + OPT_BYTES > cap)
		return -ENOSPC;
	memset(out, 0, HDR_BYTES);
	put16(out, id);
	put16(out + 2, F_RD);
	put16(out + 4, 1);
	put16(out + 10, 1);
	off = HDR_BYTES;
	memcpy(out + off, q->qname_wire, q->qname_wire_len);
	off += q->qname_wire_len;
	put16(out + off, q->qtype);
	put16(out + off + 2, q->qclass);
	off += 4;
	off += put_opt(q, 0, out + off);
	return (int)off;
}

int egd_dns_relay_answer(const struct egd_dns_query *q, const uint8_t *in, size_t len,
			 uint32_t max_ttl_s, size_t limit, uint8_t *out, size_t cap)
{
	uint8_t wire[EGD_DNS_NAME_WIRE_MAX_BYTES];
	uint16_t flags, counts[3], kept_ar = 0, ext_rcode = 0;
	size_t off = HDR_BYTES, o;
	int n, seen_opt = 0;

	if (limit > cap)
		limit = cap;
	if (len < HDR_BYTES || !q->has_question)
		return -EBADMSG;
	flags = get16(in + 2);
	if (!(flags & F_QR) || get16(in + 4) != 1)
		return -EBADMSG;
	for (int s = 0; s < 3; s++)
		counts[s] = get16(in + 6 + 2 * s);
	/* The same question, the same length: then every compression pointer
	 * of the upstream's records still points where it did. */
	n = read_name(in, len, &off, wire);
	if (n < 0 || (size_t)n != q->qname_wire_len || off != HDR_BYTES + (size_t)n ||
	    !same_name(wire, q->qname_wire, (size_t)n) || len - off < 4 ||
	    get16(in + off) != q->qtype || get16(in + off + 2) != q->qclass)
		return -EBADMSG;
	off += 4;
	if (off > cap)
		return -ENOSPC;
	memcpy(out, in, off);
	put16(out, q->id);
	memcpy(out + HDR_BYTES, q->qname_wire, q->qname_wire_len);
	o = off;

	for (int s = 0; s < 3; s++) {
		for (uint16_t i = 0; i < counts[s]; i++) {
			size_t start = off;
			uint16_t type, rdlen;
			uint32_t ttl;

			if (skip_name(in, len, &off) || len - off < RR_FIXED_BYTES)
				return -EBADMSG;
			type = get16(in + off);
			ttl = get32(in + off + 4);
			rdlen = get16(in + off + 8);
			if (rdlen > len - off - RR_FIXED_BYTES)
				return -EBADMSG;
			off += RR_FIXED_BYTES + rdlen;
			if (s == 2 && type == EGD_DNS_T_OPT) {
				if (seen_opt++)
					return -EBADMSG;
				ext_rcode = (uint16_t)(ttl >> 24);
				continue; /* rewritten below, without its options */
			}
			/* Records after the OPT (TSIG, SIG(0)) signed the
			 * upstream's message, not ours: dropped. */
			if (s == 2 && seen_opt)
				continue;
			if (o + (off - start) > cap)
				return -ENOSPC;
			memcpy(out + o, in + start, off - start);
			if (type != EGD_DNS_T_OPT) {
				size_t ttl_at = o + (off - start) - rdlen - 6;

				if (ttl > max_ttl_s)
					put32(out + ttl_at, max_ttl_s);
			}
			o += off - start;
			if (s == 2)
				kept_ar++;
		}
	}
	if (off != len)
		return -EBADMSG;
	if (q->has_edns) {
		if (o + OPT_BYTES > cap)
			return -ENOSPC;
		o += put_opt(q, (uint8_t)ext_rcode, out + o);
		kept_ar++;
	}
	put16(out + 10, kept_ar);
	if (o > limit) {
		/* Too big for the client's datagram: header, question, OPT and
		 * TC, so that it asks again over TCP. */
		size_t qend = HDR_BYTES + q->qname_wire_len + 4;

		o = qend;
		put16(out + 2, get16(out + 2) | F_TC);
		put16(out + 6, 0);
		put16(out + 8, 0);
		put16(out + 10, 0);
		if (q->has_edns) {
			o += put_opt(q, (uint8_t)ext_rcode, out + o);
			put16(out + 10, 1);
		}
	}
	return (int)o;
}

int egd_dns_answer_addrs(const uint8_t *msg, size_t len, egd_dns_addr_cb cb, void *arg)
{
	uint8_t wire[EGD_DNS_NAME_WIRE_MAX_BYTES];
	char text[EGD_DNS_TEXT_MAX_BYTES];
	size_t off = HDR_BYTES;
	uint16_t qd, an;
	int found = 0;

	if (len < HDR_BYTES)
		return -EBADMSG;
	qd = get16(msg + 4);
	an = get16(msg + 6);
	for (uint16_t i = 0; i < qd; i++) {
		if (skip_name(msg, len, &off) || len - off < 4)
			return -EBADMSG;
		off += 4;
	}
	for (uint16_t i = 0; i < an; i++) {
		struct egd_dns_rr rr = { 0 };
		uint16_t rdlen;

		if (read_name(msg, len, &off, wire) < 0 || len - off < RR_FIXED_BYTES)
			return -EBADMSG;
		rr.type = get16(msg + off);
		rr.ttl = get32(msg + off + 4);
		rdlen = get16(msg + off + 8);
		off += RR_FIXED_BYTES;
		if (rdlen > len - off)
			return -EBADMSG;
		if (get16(msg + off - 8) == EGD_DNS_CLASS_IN &&
		    ((rr.type == EGD_DNS_T_A && rdlen == 4) ||
		     (rr.type == EGD_DNS_T_AAAA && rdlen == 16))) {
			int plain = name_text(wire, text, sizeof(text));

			memcpy(rr.addr, msg + off, rdlen);
			cb(arg, text, plain, &rr);
			found++;
		}
		off += rdlen;
	}
	return found;
}

const char *egd_dns_type_name(uint16_t type, char *buf, size_t len)
{
	static const struct {
		uint16_t t;
		const char *name;
	} names[] = {
		{ 1, "A" },	{ 2, "NS" },	{ 5, "CNAME" },	 { 6, "SOA" },	  { 12, "PTR" },
		{ 15, "MX" },	{ 16, "TXT" },	{ 28, "AAAA" },	 { 33, "SRV" },	  { 41, "OPT" },
		{ 64, "SVCB" }, { 65, "HTTPS" }, { 255, "ANY" }, { 257, "CAA" },
	};

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (names[i].t == type)
			return names[i].name;
	snprintf(buf, len, "TYPE%u", type);
	return buf;
}

const char *egd_dns_rcode_name(int rcode)
{
	static const char *const names[] = { "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN",
					     "NOTIMP",	"REFUSED" };

	if (rcode >= 0 && rcode < (int)(sizeof(names) / sizeof(names[0])))
		return names[rcode];
	return rcode == EGD_DNS_BADVERS ? "BADVERS" : "RCODE?";
}
