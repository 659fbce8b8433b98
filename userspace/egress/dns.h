/* SPDX-License-Identifier: MIT */
/*
 * DNS messages for the policy DNS: parse an agent's query, build the answer
 * (A/AAAA records, NODATA, an error), build the query the daemon forwards,
 * and clean the upstream's answer before it is relayed. Pure functions of
 * byte buffers and structs: no sockets, no allocation, no globals.
 *
 * Hand-written because c-ares (1.18, Debian 12) parses answers only
 * (ares_parse_*_reply) and builds queries only from a name
 * (ares_create_query); it has no parser for a query it receives, and none
 * that keeps a question's exact bytes (0x20 case) or an EDNS0 OPT record.
 */
#ifndef EGD_DNS_H
#define EGD_DNS_H

#include <stddef.h>
#include <stdint.h>

#include "egress/sniff.h" /* EGD_HOST_MAX */

/* A DNS message over TCP is at most 65535 bytes (two-byte length). */
#define EGD_DNS_MSG_MAX_BYTES 65535
/* Plain DNS over UDP without EDNS0 (RFC 1035). */
#define EGD_DNS_UDP_MIN_BYTES 512
/* The EDNS0 UDP size we offer and honour at most: DNS flag day 2020's value,
 * which avoids IP fragmentation on every common path. */
#define EGD_DNS_UDP_MAX_BYTES 1232
/* A name on the wire, length bytes and the root's 0 included (RFC 1035). */
#define EGD_DNS_NAME_WIRE_MAX_BYTES 255
/* Compression pointers followed in one name. Each must point strictly
 * before the last, so loops end anyway; this bounds the work of a long
 * backward chain too. */
#define EGD_DNS_NAME_MAX_PTRS 16
/* The text form of a name with every byte escaped as \DDD still fits. */
#define EGD_DNS_TEXT_MAX_BYTES (4 * EGD_DNS_NAME_WIRE_MAX_BYTES + 1)

enum egd_dns_rcode {
	EGD_DNS_NOERROR = 0,
	EGD_DNS_FORMERR = 1,
	EGD_DNS_SERVFAIL = 2,
	EGD_DNS_NXDOMAIN = 3,
	EGD_DNS_NOTIMP = 4,
	EGD_DNS_REFUSED = 5,
	EGD_DNS_BADVERS = 16, /* extended rcode: needs an OPT record */
};

enum egd_dns_type {
	EGD_DNS_T_A = 1,
	EGD_DNS_T_CNAME = 5,
	EGD_DNS_T_TXT = 16,
	EGD_DNS_T_AAAA = 28,
	EGD_DNS_T_OPT = 41,
	EGD_DNS_T_SVCB = 64,
	EGD_DNS_T_HTTPS = 65,
	EGD_DNS_T_ANY = 255,
};

#define EGD_DNS_CLASS_IN 1

/* EDNS0 options never passed on, in either direction. */
#define EGD_DNS_OPT_ECS 8     /* client subnet: says where the agent is */
#define EGD_DNS_OPT_COOKIE 10 /* a per-client token: a tracking channel */

/* What parsing a query gave; a header with no question is only answered. */
struct egd_dns_query {
	uint16_t id;
	uint8_t opcode;
	int rd;			/* recursion desired, echoed */
	int has_question;	/* a question was parsed (FORMERR answers echo it) */
	/* The question's name as sent (case kept, compression undone). */
	uint8_t qname_wire[EGD_DNS_NAME_WIRE_MAX_BYTES];
	size_t qname_wire_len;
	/* Lowercase text, no trailing dot ("." for the root), bytes outside
	 * [a-z0-9-_] and dots inside labels escaped as \DDD: for the audit
	 * log, and for matching when @plain. */
	char qname[EGD_DNS_TEXT_MAX_BYTES];
	int plain;		/* qname is a plausible host name (matchable) */
	uint16_t qtype, qclass;
	int has_edns;
	uint8_t edns_version;
	int edns_do;		/* DNSSEC OK bit, kept when forwarding */
	uint16_t udp_size;	/* the client's limit, in [512, EGD_DNS_UDP_MAX_BYTES] */
	int had_ecs, had_cookie; /* seen and dropped */
};

/*
 * Parse the query @msg of @len bytes (without TCP's length prefix) into @q.
 * Returns the rcode to answer with: EGD_DNS_NOERROR when @q holds one
 * question to serve; EGD_DNS_FORMERR (malformed, truncated, several
 * questions, answer or authority records, more than one OPT), EGD_DNS_NOTIMP
 * (an opcode other than QUERY), EGD_DNS_REFUSED (a class other than IN) or
 * EGD_DNS_BADVERS (EDNS version above 0), to be sent with
 * egd_dns_build_answer(); or -1 when nothing should be sent (shorter than a
 * header, or a response rather than a query: answering those would make the
 * daemon a reflector).
 */
int egd_dns_parse_query(const uint8_t *msg, size_t len, struct egd_dns_query *q);

/* One address record of an answer. */
struct egd_dns_rr {
	uint16_t type; /* EGD_DNS_T_A or EGD_DNS_T_AAAA */
	uint32_t ttl;
	uint8_t addr[16]; /* 4 bytes for A */
};

/*
 * Write the answer to @q into @out (@cap bytes): @rcode, then @n records
 * (each TTL capped at @max_ttl_s; records whose type is not the question's
 * are left out), and an OPT record without options if the query had one.
 * If the message would pass @limit bytes (the client's UDP size, or
 * EGD_DNS_MSG_MAX_BYTES over TCP), the records are left out and TC is set.
 * Returns the length, or -ENOSPC.
 */
int egd_dns_build_answer(const struct egd_dns_query *q, int rcode, const struct egd_dns_rr *rr,
			 size_t n, uint32_t max_ttl_s, size_t limit, uint8_t *out, size_t cap);

/*
 * The query the daemon forwards for @q, under ID @id: the same question,
 * RD set, and an OPT record (our UDP size, the client's DO bit, no
 * options) whether or not the client sent one. Nothing else of the
 * client's message is passed on. Returns the length, or -ENOSPC.
 */
int egd_dns_build_forward(const struct egd_dns_query *q, uint16_t id, uint8_t *out, size_t cap);

/*
 * Turn the upstream's answer @in (@len bytes) into the answer for @q, in
 * @out: the client's ID, the question as the client spelt it, every
 * record's TTL capped at @max_ttl_s, and the OPT record (if the client
 * sent one) rewritten without options; records in the additional section
 * other than OPT are kept. If the result would pass @limit, it is cut to
 * the header and question with TC set. Returns the length, -EBADMSG when
 * @in is malformed or answers another question, or -ENOSPC.
 */
int egd_dns_relay_answer(const struct egd_dns_query *q, const uint8_t *in, size_t len,
			 uint32_t max_ttl_s, size_t limit, uint8_t *out, size_t cap);

/*
 * Call @cb for every A and AAAA record in the answer section of the
 * (already relayed, hence well-formed) answer @msg, with its owner's text
 * form (as egd_dns_query.qname: lowercase, escaped) and whether that is a
 * plain host name. Returns the number of records, or -EBADMSG.
 */
typedef void (*egd_dns_addr_cb)(void *arg, const char *owner, int plain,
				const struct egd_dns_rr *rr);
int egd_dns_answer_addrs(const uint8_t *msg, size_t len, egd_dns_addr_cb cb, void *arg);

/* "A", "AAAA", "HTTPS", ... or "TYPE<n>" in @buf. */
const char *egd_dns_type_name(uint16_t type, char *buf, size_t len);
/* "NOERROR", "REFUSED", ... */
const char *egd_dns_rcode_name(int rcode);

#endif /* EGD_DNS_H */
