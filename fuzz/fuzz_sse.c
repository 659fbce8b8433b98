/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for the SSE scanner: the input is fed whole and in
 * pieces whose size comes from the first byte; both runs must see the same
 * events, since chunking is an accident of the network.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/sse.h"

static void count_event(void *ctx, const struct egd_sse_event *ev)
{
	uint64_t *h = ctx;

	/* An order-sensitive digest of the events seen. */
	*h = *h * 1099511628211u + ev->data_len + 1;
	for (size_t i = 0; i < ev->data_len; i++)
		*h = (*h ^ (uint8_t)ev->data[i]) * 1099511628211u;
	if (strlen(ev->data) > ev->data_len)
		abort();
}

static uint64_t run(const uint8_t *data, size_t size, size_t step, struct egd_sse_summary *out)
{
	uint64_t h = 14695981039346656037u;
	struct egd_sse *s = egd_sse_new(count_event, &h);

	if (!s)
		abort();
	for (size_t off = 0; off < size; off += step)
		if (egd_sse_feed(s, data + off, size - off < step ? size - off : step))
			abort();
	*out = *egd_sse_summary(s);
	egd_sse_finish(s);
	egd_sse_destroy(s);
	return h;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct egd_sse_summary a, b;

	if (!size)
		return 0;
	if (run(data + 1, size - 1, size, &a) != run(data + 1, size - 1, data[0] % 16 + 1, &b))
		abort();
	if (a.events != b.events || a.comments != b.comments || a.done != b.done)
		abort();
	return 0;
}
