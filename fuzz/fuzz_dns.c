/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for the policy DNS's message code. Each input is parsed
 * as an agent's query; whatever the verdict, an answer is built from what
 * was parsed; a query that parsed is forwarded (the built query must parse
 * again, without ECS or cookie) and the input, with QR set, is relayed as
 * if it were the upstream's answer to it. Besides memory safety it checks
 * the promises of dns.h: answers never pass the size limit given, what is
 * relayed is well-formed, and the text form of a name is always terminated.
 * The input is also read as an answer, for its address records.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "egress/dns.h"

static uint8_t out[EGD_DNS_MSG_MAX_BYTES];
static size_t addrs;

static void count_addr(void *arg, const char *owner, int plain, const struct egd_dns_rr *rr)
{
	(void)arg;
	(void)plain;
	if (strnlen(owner, EGD_DNS_TEXT_MAX_BYTES) == EGD_DNS_TEXT_MAX_BYTES ||
	    (rr->type != EGD_DNS_T_A && rr->type != EGD_DNS_T_AAAA))
		abort();
	addrs++;
}
static uint8_t copy[EGD_DNS_MSG_MAX_BYTES + 1];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const struct egd_dns_rr rr[] = {
		{ .type = EGD_DNS_T_A, .ttl = 3600, .addr = { 198, 51, 100, 7 } },
		{ .type = EGD_DNS_T_AAAA, .ttl = 1, .addr = { 0x20, 0x01, 0x0d, 0xb8 } },
	};
	struct egd_dns_query q, q2;
	int rc, n;
	size_t limit;

	egd_dns_answer_addrs(data, size, count_addr, NULL);
	rc = egd_dns_parse_query(data, size, &q);
	if (strnlen(q.qname, sizeof(q.qname)) == sizeof(q.qname))
		abort();
	if (rc < 0)
		return 0;
	limit = size && (data[0] & 1) ? EGD_DNS_MSG_MAX_BYTES : q.udp_size;
	n = egd_dns_build_answer(&q, rc, rr, 2, 30, limit, out, sizeof(out));
	if (n > (int)limit || (n < 0 && limit >= 512))
		abort();
	if (rc != EGD_DNS_NOERROR)
		return 0;
	n = egd_dns_build_forward(&q, 0x1234, out, sizeof(out));
	if (n < 0 || egd_dns_parse_query(out, (size_t)n, &q2) != EGD_DNS_NOERROR ||
	    q2.had_ecs || q2.had_cookie || q2.qtype != q.qtype ||
	    q2.qname_wire_len != q.qname_wire_len)
		abort();
	if (size > EGD_DNS_MSG_MAX_BYTES)
		return 0;
	memcpy(copy, data, size);
	if (size > 2)
		copy[2] |= 0x80;
	n = egd_dns_relay_answer(&q, copy, size, 30, limit, out, sizeof(out));
	if (n > (int)limit)
		abort();
	if (n > 0 && egd_dns_answer_addrs(out, (size_t)n, count_addr, NULL) < 0)
		abort(); /* what we relay is well-formed */
	return 0;
}
