/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for the HTTP/1.1 parser: the input is fed as requests
 * (pipelined, in pieces whose size comes from the first byte) and then as a
 * response, and every accepted message is checked for internal consistency.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/http1.h"

/* Small enough that the fuzzer reaches the 413 paths. */
#define FUZZ_BODY_MAX_BYTES 4096

static void check_msg(const struct egd_http_msg *m)
{
	for (size_t i = 0; i < m->nheaders; i++)
		if (!m->headers[i].name[0] || strpbrk(m->headers[i].value, "\r\n"))
			abort();
	if (m->body_len > FUZZ_BODY_MAX_BYTES)
		abort();
	if (m->chunked && m->content_length >= 0)
		abort();
}

static void run(enum egd_http_kind kind, const uint8_t *data, size_t size, size_t step)
{
	struct egd_http_parser *p = egd_http_parser_new(kind, FUZZ_BODY_MAX_BYTES);
	size_t off = 0;

	if (!p)
		return;
	while (off < size) {
		size_t n = size - off < step ? size - off : step, used = 0;
		int r = egd_http_parse(p, data + off, n, &used);

		if (used > n)
			abort();
		if (r < 0) {
			int st = egd_http_parser_status(p);

			if (st < 400 || st > 599)
				abort();
			break;
		}
		off += used;
		if (r == EGD_HTTP_DONE) {
			check_msg(egd_http_parser_msg(p));
			egd_http_parser_reset(p);
		} else if (r == EGD_HTTP_MORE && used != n) {
			abort();
		}
	}
	if (off == size && egd_http_parse_eof(p) == EGD_HTTP_DONE)
		check_msg(egd_http_parser_msg(p));
	egd_http_parser_destroy(p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	size_t step;

	if (!size)
		return 0;
	step = (size_t)data[0] % 64 + 1;
	run(EGD_HTTP_REQUEST, data + 1, size - 1, step);
	run(EGD_HTTP_REQUEST, data + 1, size - 1, size);
	run(EGD_HTTP_RESPONSE, data + 1, size - 1, step);
	return 0;
}
