/* SPDX-License-Identifier: MIT */
/*
 * The SSE scanner declared in sse.h. Lines may end in CRLF, LF or a lone CR
 * (the spec allows all three), and a CRLF may be split across two feeds, so
 * the scanner remembers a trailing CR. Everything else is a plain line
 * machine: a blank line dispatches the event gathered so far.
 */
#include "proxy/sse.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "core/grow.h"

struct buf {
	char *p;
	size_t len;
	size_t cap;
};

struct egd_sse {
	egd_sse_event_cb cb;
	void *ctx;
	struct buf line;
	int line_overflow; /* the current line passed the cap */
	int skip_lf;       /* previous byte was CR: a following LF ends nothing */
	struct buf data;
	int has_data;
	int data_overflow; /* the current event passed the cap */
	char type[EGD_SSE_TYPE_MAX_BYTES];
	struct egd_sse_summary sum;
};

struct egd_sse *egd_sse_new(egd_sse_event_cb cb, void *ctx)
{
	struct egd_sse *s = calloc(1, sizeof(*s));

	if (!s)
		return NULL;
	s->cb = cb;
	s->ctx = ctx;
	return s;
}

void egd_sse_destroy(struct egd_sse *s)
{
	if (!s)
		return;
	free(s->line.p);
	free(s->data.p);
	free(s);
}

const struct egd_sse_summary *egd_sse_summary(const struct egd_sse *s)
{
	return &s->sum;
}

/* Append, keeping a NUL after the bytes; -EFBIG past the cap. */
static int buf_add(struct buf *b, const char *d, size_t n)
{
	if (b->len + n > EGD_SSE_EVENT_MAX_BYTES)
		return -EFBIG;
	if (b->len + n + 1 > b->cap) {
		char *np = egd_grow(b->p, &b->cap, b->len + n + 1, 256);

		if (!np)
			return -ENOMEM;
		b->p = np;
	}
	memcpy(b->p + b->len, d, n);
	b->len += n;
	b->p[b->len] = '\0';
	return 0;
}

static void observe(struct egd_sse *s, const struct egd_sse_event *ev)
{
	int is_error_event = !strcmp(ev->type, "error");
	json_t *o;

	if (!strcmp(ev->data, "[DONE]")) {
		s->sum.done = 1;
		return;
	}
	o = json_loadb(ev->data, ev->data_len, 0, NULL);
	if (json_is_object(o)) {
		egd_usage_merge(&s->sum.usage, o);
		if (s->sum.usage.has_error)
			s->sum.error = 1;
	}
	if (is_error_event) {
		s->sum.error = 1;
		if (!s->sum.usage.has_error) {
			s->sum.usage.has_error = 1;
			snprintf(s->sum.usage.error, sizeof(s->sum.usage.error), "%s", ev->data);
		}
	}
	json_decref(o);
}

static void dispatch(struct egd_sse *s)
{
	struct egd_sse_event ev;

	if (s->data_overflow) {
		s->sum.dropped_events++;
	} else if (s->has_data) {
		/* Every data line added a "\n"; the spec drops the last one. */
		if (s->data.len)
			s->data.p[--s->data.len] = '\0';
		ev.type = s->type[0] ? s->type : "message";
		ev.data = s->data.p ? s->data.p : "";
		ev.data_len = s->data.len;
		s->sum.events++;
		if (s->cb)
			s->cb(s->ctx, &ev);
		observe(s, &ev);
	}
	s->data.len = 0;
	s->has_data = 0;
	s->data_overflow = 0;
	s->type[0] = '\0';
}

static int end_line(struct egd_sse *s)
{
	const char *line = s->line.p ? s->line.p : "", *colon, *value;
	size_t nlen, vlen;
	int err = 0;

	if (s->line_overflow) {
		/* We cannot tell what a cut line meant: drop the event. */
		s->data_overflow = 1;
		goto out;
	}
	if (!s->line.len) {
		dispatch(s);
		goto out;
	}
	if (line[0] == ':') {
		s->sum.comments++;
		goto out;
	}
	colon = memchr(line, ':', s->line.len);
	nlen = colon ? (size_t)(colon - line) : s->line.len;
	value = colon ? colon + 1 : line + s->line.len;
	if (*value == ' ')
		value++;
	vlen = s->line.len - (size_t)(value - line);

	if (nlen == 4 && !memcmp(line, "data", 4)) {
		s->has_data = 1;
		if (s->data_overflow)
			goto out;
		err = buf_add(&s->data, value, vlen);
		if (!err)
			err = buf_add(&s->data, "\n", 1);
		if (err == -EFBIG) {
			s->data_overflow = 1;
			err = 0;
		}
	} else if (nlen == 5 && !memcmp(line, "event", 5)) {
		snprintf(s->type, sizeof(s->type), "%.*s", (int)vlen, value);
	}
	/* "id" and "retry" matter to a reconnecting browser, not to us. */
out:
	s->line.len = 0;
	s->line_overflow = 0;
	return err;
}

int egd_sse_feed(struct egd_sse *s, const uint8_t *buf, size_t len)
{
	size_t i = 0;

	while (i < len) {
		const uint8_t *c = buf + i;
		size_t n = 0;
		int err;

		if (s->skip_lf) {
			s->skip_lf = 0;
			if (*c == '\n') {
				i++;
				continue;
			}
		}
		while (i + n < len && c[n] != '\n' && c[n] != '\r')
			n++;
		if (n && !s->line_overflow) {
			err = buf_add(&s->line, (const char *)c, n);
			if (err == -EFBIG)
				s->line_overflow = 1;
			else if (err)
				return err;
		}
		i += n;
		if (i == len)
			break;
		if (buf[i] == '\r')
			s->skip_lf = 1;
		i++;
		err = end_line(s);
		if (err)
			return err;
	}
	return 0;
}

void egd_sse_finish(struct egd_sse *s)
{
	s->line.len = 0;
	s->line_overflow = 0;
	s->data.len = 0;
	s->has_data = 0;
	s->data_overflow = 0;
	s->type[0] = '\0';
}
