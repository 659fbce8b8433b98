/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for the HTTP/1.x sniffer and the dispatch in egd_sniff().
 * Besides memory safety it checks the promises of sniff.h: errors name no
 * host, hosts are normalised, and an answer once given does not change when
 * more bytes arrive (a DONE prefix agrees with the whole input).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "egress/sniff.h"

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
	       a->host_is_ip == b->host_is_ip && a->error == b->error;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct egd_sniff_out full, part;
	enum egd_sniff_status st = egd_sniff(data, size, &full);
	size_t cuts[] = { size / 2, size ? size - 1 : 0, size > 1 ? data[0] % size : 0 };

	check_out(st, &full);
	for (size_t i = 0; i < sizeof(cuts) / sizeof(cuts[0]); i++) {
		enum egd_sniff_status pst = egd_sniff(data, cuts[i], &part);

		check_out(pst, &part);
		if (pst == EGD_SNIFF_DONE && (st != EGD_SNIFF_DONE || !same(&part, &full)))
			abort();
	}
	egd_sniff_finish(data, size, &part);
	check_out(EGD_SNIFF_DONE, &part);
	if (st == EGD_SNIFF_DONE ? !same(&part, &full) : part.host[0] != '\0')
		abort();

	/* The HTTP sniffer directly, for inputs the dispatch would turn away. */
	st = egd_sniff_http(data, size, &full);
	check_out(st, &full);
	return 0;
}
