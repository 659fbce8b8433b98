/* SPDX-License-Identifier: MIT */
/*
 * Incremental Server-Sent Events scanner. The proxy relays an upstream SSE
 * stream byte for byte as it arrives; this scanner only watches the same
 * bytes go by, so comments (": OPENROUTER PROCESSING") and "data: [DONE]"
 * reach the agent untouched. It assembles events (data lines joined with
 * "\n", per the SSE spec), and from each JSON data payload folds the cost,
 * tokens, model, provider, id and any error into an egd_usage.
 *
 * Memory is bounded: an event whose data passes EGD_SSE_EVENT_MAX_BYTES is
 * dropped from observation (counted in dropped_events), never buffered
 * whole; the relay itself is unaffected.
 */
#ifndef EGD_PROXY_SSE_H
#define EGD_PROXY_SSE_H

#include <stddef.h>
#include <stdint.h>

#include "proxy/usage.h"

/* One event's data (and one line) is kept up to this size. Chat chunks are
 * a few hundred bytes; a final chunk with a large tool call stays far below. */
#define EGD_SSE_EVENT_MAX_BYTES (1024 * 1024)
/* The event type ("event:" field) is cut here. */
#define EGD_SSE_TYPE_MAX_BYTES 64

struct egd_sse_event {
	const char *type; /* "message" when the event named none */
	const char *data; /* data lines joined with "\n", NUL-terminated */
	size_t data_len;
};

/* Called for each complete event, before it is observed. */
typedef void (*egd_sse_event_cb)(void *ctx, const struct egd_sse_event *ev);

struct egd_sse;

/* NULL + errno on failure. @cb may be NULL. */
struct egd_sse *egd_sse_new(egd_sse_event_cb cb, void *ctx);
void egd_sse_destroy(struct egd_sse *s);

/* Scan the next @len bytes of the stream. Returns 0, or -ENOMEM. */
int egd_sse_feed(struct egd_sse *s, const uint8_t *buf, size_t len);

/* The stream ended: a last event not followed by a blank line is discarded,
 * as the SSE spec says. */
void egd_sse_finish(struct egd_sse *s);

struct egd_sse_summary {
	struct egd_usage usage; /* merged over all data payloads */
	uint64_t events;         /* dispatched events */
	uint64_t comments;       /* comment lines seen */
	uint64_t dropped_events; /* events over EGD_SSE_EVENT_MAX_BYTES */
	int done;                /* "data: [DONE]" seen */
	int error;               /* an error event or an "error" member seen */
};

const struct egd_sse_summary *egd_sse_summary(const struct egd_sse *s);

#endif /* EGD_PROXY_SSE_H */
