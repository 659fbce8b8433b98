/* SPDX-License-Identifier: MIT */
/*
 * The decision log: one JSON object per line, fields as in DESIGN.md. Hosts
 * come from the agent and may hold anything; jansson does the escaping.
 *
 * Lines are gathered in a per-thread buffer and written together at the end
 * of the loop turn (egd_audit_flush), one write for many connections instead
 * of two per connection. Each flush holds the stream's lock and writes whole
 * lines only, so lines of different workers never interleave.
 */
#include "egress/daemon.h"
#include "core/log.h"

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A line longer than this is written on its own; hosts are at most 255
 * bytes, so even an escaped one fits. */
#define AUDIT_LINE_MAX_BYTES 4096
/* Flush before the buffer grows past this, turn or no turn. */
#define AUDIT_BUF_BYTES (64 * 1024)

static __thread char audit_buf[AUDIT_BUF_BYTES];
static __thread size_t audit_len;

void egd_audit_flush(void)
{
	FILE *f;

	if (!audit_len)
		return;
	f = egd_audit_stream();
	flockfile(f);
	fwrite_unlocked(audit_buf, 1, audit_len, f);
	fflush_unlocked(f);
	funlockfile(f);
	audit_len = 0;
}

static void append(const char *line, size_t len)
{
	if (audit_len + len > sizeof(audit_buf))
		egd_audit_flush();
	if (len > sizeof(audit_buf)) {
		FILE *f = egd_audit_stream();

		flockfile(f);
		fwrite_unlocked(line, 1, len, f);
		fflush_unlocked(f);
		funlockfile(f);
		return;
	}
	// cppcheck-suppress uninitvar ; callers fill line through a writer cppcheck cannot follow
	memcpy(audit_buf + audit_len, line, len);
	audit_len += len;
}

/* Bytes that need no escaping beyond \" and \\ (printable ASCII), the case
 * of every host the sniffer accepts and every detail the engine writes. */
static int plain(const char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || (unsigned char)*s > 0x7e)
			return 0;
	return 1;
}

struct line {
	char *p;
	size_t len, cap;
	int full;
};

static void put(struct line *l, const char *s, size_t n)
{
	if (l->full || l->len + n > l->cap) {
		l->full = 1;
		return;
	}
	memcpy(l->p + l->len, s, n);
	l->len += n;
}

static void put_str(struct line *l, const char *key, const char *v)
{
	put(l, ",\"", 2);
	put(l, key, strlen(key));
	put(l, "\":\"", 3);
	for (const char *run = v;; v++) {
		if (*v && *v != '"' && *v != '\\')
			continue;
		put(l, run, (size_t)(v - run));
		if (!*v)
			break;
		put(l, "\\", 1);
		run = v;
	}
	put(l, "\"", 1);
}

static void put_uint(struct line *l, const char *key, uint64_t v)
{
	char num[48];
	int n = snprintf(num, sizeof(num), ",\"%s\":%lld", key, (long long)v);

	put(l, num, (size_t)n);
}

/*
 * The line jansson would write (JSON_COMPACT | JSON_ENSURE_ASCII, fields in
 * insertion order), without building a json_t: the tree and its dump were
 * a tenth of the daemon's CPU at a high connection rate. Returns the length,
 * or 0 when a string needs jansson's escaping or the line does not fit.
 */
static size_t format_fast(const struct egd_audit_rec *r, const char *ts, const char *src,
			  const char *dst, char *buf, size_t cap)
{
	struct line l = { .p = buf, .cap = cap };
	const char *host = r->host ? r->host : "";

	if (!plain(host) || (r->detail && !plain(r->detail)))
		return 0;
	put(&l, "{\"ts\":\"", 7);
	put(&l, ts, strlen(ts));
	put(&l, "\"", 1);
	put_str(&l, "event", r->event);
	put_str(&l, "phase", egd_phase_name(r->phase));
	put_uint(&l, "cgroup", r->cgroup_id);
	put_str(&l, "src", src);
	put_str(&l, "dst", dst);
	put_str(&l, "proto", egd_proto_name(r->proto));
	put_str(&l, "host", host);
	put_str(&l, "verdict", egd_verdict_name(r->verdict));
	put_str(&l, "reason", egd_reason_name(r->reason));
	if (r->detail)
		put_str(&l, "detail", r->detail);
	if (r->has_totals) {
		put_uint(&l, "bytes_up", r->bytes_up);
		put_uint(&l, "bytes_down", r->bytes_down);
		put_uint(&l, "duration_ms", r->duration_ms);
	}
	put(&l, "}\n", 2);
	return l.full ? 0 : l.len;
}

void egd_audit(const struct egd_audit_rec *r)
{
	char ts[40], src[64], dst[64], line[AUDIT_LINE_MAX_BYTES];
	size_t n;
	json_t *o;

	egd_timestamp(ts, sizeof(ts));
	egd_addr_format(r->src, src, sizeof(src));
	egd_addr_format(r->dst, dst, sizeof(dst));
	n = format_fast(r, ts, src, dst, line, sizeof(line));
	if (n) {
		append(line, n);
		return;
	}
	o = json_pack("{s:s, s:s, s:s, s:I, s:s, s:s, s:s, s:s, s:s, s:s}", "ts", ts, "event",
		      r->event, "phase", egd_phase_name(r->phase), "cgroup",
		      (json_int_t)r->cgroup_id, "src", src, "dst", dst, "proto",
		      egd_proto_name(r->proto), "host", r->host ? r->host : "", "verdict",
		      egd_verdict_name(r->verdict), "reason", egd_reason_name(r->reason));
	if (!o)
		return;
	if (r->detail)
		json_object_set_new(o, "detail", json_string(r->detail));
	if (r->has_totals) {
		json_object_set_new(o, "bytes_up", json_integer((json_int_t)r->bytes_up));
		json_object_set_new(o, "bytes_down", json_integer((json_int_t)r->bytes_down));
		json_object_set_new(o, "duration_ms", json_integer((json_int_t)r->duration_ms));
	}
	n = json_dumpb(o, line, sizeof(line) - 1, JSON_COMPACT | JSON_ENSURE_ASCII);
	if (n > 0 && n < sizeof(line)) {
		line[n] = '\n';
		append(line, n + 1);
	} else if (n > 0) {
		/* Too long for the stack buffer: let jansson allocate. */
		char *big = json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII);

		if (big) {
			size_t len = strlen(big);
			char *nl = realloc(big, len + 1 + 1);

			if (nl) {
				big = nl;
				big[len] = '\n';
				append(big, len + 1);
			}
			free(big);
		}
	}
	json_decref(o);
}

void egd_audit_dns(const struct egd_audit_dns *r)
{
	char ts[40], src[64], line[AUDIT_LINE_MAX_BYTES];
	struct line l = { .p = line, .cap = sizeof(line) };
	json_t *o;
	size_t n;

	egd_timestamp(ts, sizeof(ts));
	egd_addr_format(r->src, src, sizeof(src));
	/* The query name's text form escapes every byte that is not a host
	 * character, so the fast path is the rule; jansson is the fallback. */
	if (plain(r->qname)) {
		put(&l, "{\"ts\":\"", 7);
		put(&l, ts, strlen(ts));
		put(&l, "\"", 1);
		put_str(&l, "event", "dns");
		put_str(&l, "phase", egd_phase_name(r->phase));
		put_uint(&l, "cgroup", r->cgroup_id);
		put_str(&l, "src", src);
		put_str(&l, "proto", r->proto);
		put_str(&l, "qname", r->qname);
		put_str(&l, "qtype", r->qtype);
		put_str(&l, "verdict", r->verdict);
		put_str(&l, "rcode", r->rcode);
		put(&l, "}\n", 2);
		if (!l.full) {
			append(line, l.len);
			return;
		}
	}
	o = json_pack("{s:s, s:s, s:s, s:I, s:s, s:s, s:s, s:s, s:s, s:s}", "ts", ts, "event",
		      "dns", "phase", egd_phase_name(r->phase), "cgroup",
		      (json_int_t)r->cgroup_id, "src", src, "proto", r->proto, "qname", r->qname,
		      "qtype", r->qtype, "verdict", r->verdict, "rcode", r->rcode);
	if (!o)
		return;
	n = json_dumpb(o, line, sizeof(line) - 1, JSON_COMPACT | JSON_ENSURE_ASCII);
	if (n > 0 && n < sizeof(line)) {
		line[n] = '\n';
		append(line, n + 1);
	}
	json_decref(o);
}

void egd_audit_kernel(enum egd_phase phase, const char *counter, uint64_t count)
{
	char ts[40], line[256];
	int n;

	egd_timestamp(ts, sizeof(ts));
	/* Every field is ours (a counter name, a number): nothing to escape. */
	n = snprintf(line, sizeof(line),
		     "{\"ts\":\"%s\",\"event\":\"kernel\",\"phase\":\"%s\",\"counter\":\"%s\","
		     "\"count\":%llu}\n",
		     ts, egd_phase_name(phase), counter, (unsigned long long)count);
	if (n > 0 && (size_t)n < sizeof(line))
		append(line, (size_t)n);
}
