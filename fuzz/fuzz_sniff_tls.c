/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for the TLS sniffer. Each input is tried twice: as raw
 * bytes from the client, and as the body of a ClientHello that the target
 * frames into records itself (the first byte picks the record size), so that
 * the fuzzer spends its time in the hello parser instead of rediscovering
 * record framing. Besides memory safety it checks the promises of sniff.h:
 * errors name no host, hosts are normalised, and an answer once given does
 * not change when more bytes arrive.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "egress/sniff.h"

/* Record header (5) per record; a chunk of 1 byte per record at most 6x. */
#define FUZZ_FRAMED_MAX_BYTES (6 * (CLIENTHELLO_MAX_BYTES + 4))

static uint8_t framed[FUZZ_FRAMED_MAX_BYTES];

static void check_out(enum egd_sniff_status st, const struct egd_sniff_out *out)
{
	char copy[EGD_HOST_MAX];
	size_t n = strnlen(out->host, sizeof(out->host));

	if (n == sizeof(out->host))
		abort(); /* not NUL-terminated */
	if (st == EGD_SNIFF_MORE)
		return;
	if (out->error && n)
		abort(); /* an error must never come with a host */
	if (n && !out->host_is_ip) {
		memcpy(copy, out->host, n + 1);
		if (egd_host_normalize(copy) || strcmp(copy, out->host))
			abort(); /* reported hosts are already canonical */
	}
}

static int same(const struct egd_sniff_out *a, const struct egd_sniff_out *b)
{
	return a->proto == b->proto && !strcmp(a->host, b->host) &&
	       a->host_is_ip == b->host_is_ip && a->tls_ech == b->tls_ech && a->error == b->error;
}

/* Sniff @buf whole, then some prefixes: any DONE prefix must agree. */
static void sniff_checked(const uint8_t *buf, size_t len, size_t cut)
{
	struct egd_sniff_out full, part;
	enum egd_sniff_status st = egd_sniff(buf, len, &full);
	size_t cuts[] = { len / 2, len ? len - 1 : 0, len ? cut % len : 0 };

	check_out(st, &full);
	for (size_t i = 0; i < sizeof(cuts) / sizeof(cuts[0]); i++) {
		enum egd_sniff_status pst = egd_sniff(buf, cuts[i], &part);

		check_out(pst, &part);
		if (pst == EGD_SNIFF_DONE && (st != EGD_SNIFF_DONE || !same(&part, &full)))
			abort();
	}
	egd_sniff_finish(buf, len, &part);
	check_out(EGD_SNIFF_DONE, &part);
	if (st == EGD_SNIFF_DONE ? !same(&part, &full) : part.host[0] != '\0')
		abort();
	egd_sniff_tls(buf, len, &part);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint8_t hs[4 + CLIENTHELLO_MAX_BYTES];
	size_t chunk, body, n = 0;

	sniff_checked(data, size, size ? data[0] : 0);
	if (size < 1 || size - 1 > CLIENTHELLO_MAX_BYTES)
		return 0;

	/* Handshake header then body, cut into records of @chunk bytes. */
	chunk = (size_t)data[0] * 64 + 1;
	if (chunk > CLIENTHELLO_MAX_BYTES)
		chunk = CLIENTHELLO_MAX_BYTES;
	if (data[0] < 8)
		chunk = data[0] + 1; /* tiny records stress the reassembly */
	body = size - 1;
	hs[0] = 1;
	hs[1] = (uint8_t)(body >> 16);
	hs[2] = (uint8_t)(body >> 8);
	hs[3] = (uint8_t)body;
	memcpy(hs + 4, data + 1, body);
	for (size_t off = 0; off < body + 4; off += chunk) {
		size_t c = body + 4 - off < chunk ? body + 4 - off : chunk;

		framed[n++] = 22;
		framed[n++] = 3;
		framed[n++] = 1;
		framed[n++] = (uint8_t)(c >> 8);
		framed[n++] = (uint8_t)c;
		memcpy(framed + n, hs + off, c);
		n += c;
	}
	sniff_checked(framed, n, body);
	return 0;
}
