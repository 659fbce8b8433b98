/* SPDX-License-Identifier: MIT */
/*
 * Unit tests for the TLS and HTTP sniffers. Real ClientHellos captured from
 * openssl, curl, python and node (scripts/capture-hellos.sh) are read from
 * tests/data/hello/; everything odd (ECH, GREASE, duplicates, bad names,
 * oversize) is crafted here by a small ClientHello builder so that each test
 * shows the bytes it is about.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "egress/sniff.h"

#ifndef EGD_TEST_DATA
#error "EGD_TEST_DATA must name the tests/data directory"
#endif

/* Room for the largest hello we craft, re-framed one byte per record. */
#define TEST_BUF_BYTES (1 << 17)

struct buf {
	uint8_t b[TEST_BUF_BYTES];
	size_t n;
};

/* Scratch buffers live outside the stack; tests run one at a time. */
static struct buf g_hs, g_exts, g_rec, g_tmp;

static void put(struct buf *b, const void *p, size_t n)
{
	assert_true(b->n + n <= sizeof(b->b));
	memcpy(b->b + b->n, p, n);
	b->n += n;
}

static void put_u8(struct buf *b, unsigned int v)
{
	uint8_t x = (uint8_t)v;

	put(b, &x, 1);
}

static void put_u16(struct buf *b, unsigned int v)
{
	put_u8(b, v >> 8);
	put_u8(b, v);
}

static void put_u24(struct buf *b, unsigned int v)
{
	put_u8(b, v >> 16);
	put_u16(b, v & 0xffff);
}

static void put_ext(struct buf *b, unsigned int type, const void *data, size_t n)
{
	put_u16(b, type);
	put_u16(b, (unsigned int)n);
	put(b, data, n);
}

/* A server_name extension with one host_name entry of @n bytes. */
static void put_sni(struct buf *exts, const char *name, size_t n)
{
	struct buf *e = &g_tmp;

	e->n = 0;
	put_u16(e, (unsigned int)n + 3);
	put_u8(e, 0);
	put_u16(e, (unsigned int)n);
	put(e, name, n);
	put_ext(exts, 0x0000, e->b, e->n);
}

/* A ClientHello handshake message around @exts (NULL: no extensions). */
static void build_hello(struct buf *hs, const struct buf *exts)
{
	static const uint8_t zero[32];
	size_t len_at;

	hs->n = 0;
	put_u8(hs, 1);
	len_at = hs->n;
	put_u24(hs, 0);
	put_u16(hs, 0x0303);
	put(hs, zero, 32); /* random */
	put_u8(hs, 32);
	put(hs, zero, 32); /* session id */
	put_u16(hs, 4);
	put_u16(hs, 0x0a0a); /* a GREASE suite, as Chrome sends */
	put_u16(hs, 0x1301);
	put_u8(hs, 1);
	put_u8(hs, 0);
	if (exts) {
		put_u16(hs, (unsigned int)exts->n);
		put(hs, exts->b, exts->n);
	}
	hs->b[len_at] = (uint8_t)((hs->n - 4) >> 16);
	hs->b[len_at + 1] = (uint8_t)((hs->n - 4) >> 8);
	hs->b[len_at + 2] = (uint8_t)(hs->n - 4);
}

/* Wrap handshake bytes in records of at most @chunk bytes each. */
static void frame(struct buf *rec, const uint8_t *hs, size_t n, size_t chunk)
{
	rec->n = 0;
	for (size_t off = 0; off < n; off += chunk) {
		size_t c = n - off < chunk ? n - off : chunk;

		put_u8(rec, 22);
		put_u16(rec, 0x0301);
		put_u16(rec, (unsigned int)c);
		put(rec, hs + off, c);
	}
}

/* Load a captured hello; its records' payloads are returned in @hs too. */
static void load_capture(const char *name, struct buf *rec, struct buf *hs)
{
	char path[512];
	FILE *f;

	snprintf(path, sizeof(path), "%s/hello/%s.bin", EGD_TEST_DATA, name);
	f = fopen(path, "rb");
	if (!f)
		fail_msg("cannot open %s (run scripts/capture-hellos.sh)", path);
	rec->n = fread(rec->b, 1, sizeof(rec->b), f);
	fclose(f);
	assert_true(rec->n > 5);

	hs->n = 0;
	for (size_t off = 0; off + 5 <= rec->n;) {
		size_t rlen = (size_t)rec->b[off + 3] << 8 | rec->b[off + 4];

		assert_true(off + 5 + rlen <= rec->n);
		put(hs, rec->b + off + 5, rlen);
		off += 5 + rlen;
	}
}

static void expect(const char *name, enum egd_sniff_status got_status,
		   const struct egd_sniff_out *got, enum egd_sniff_status status,
		   enum egd_proto proto, const char *host, int is_ip, const char *error)
{
	if (got_status != status)
		fail_msg("%s: status %d, want %d", name, got_status, status);
	if (status == EGD_SNIFF_MORE)
		return;
	if (got->proto != proto)
		fail_msg("%s: proto %d, want %d", name, got->proto, proto);
	if (strcmp(got->host, host))
		fail_msg("%s: host '%s', want '%s'", name, got->host, host);
	if (got->host_is_ip != is_ip)
		fail_msg("%s: host_is_ip %d, want %d", name, got->host_is_ip, is_ip);
	if ((got->error == NULL) != (error == NULL) || (error && strcmp(got->error, error)))
		fail_msg("%s: error '%s', want '%s'", name, got->error ? got->error : "(null)",
			 error ? error : "(null)");
}

/* Sniff a crafted hello in one record and check it. */
static void expect_hello(const char *name, const struct buf *exts, const char *host, int is_ip,
			 int ech, const char *error)
{
	struct egd_sniff_out out;

	build_hello(&g_hs, exts);
	frame(&g_rec, g_hs.b, g_hs.n, 16384);
	expect(name, egd_sniff(g_rec.b, g_rec.n, &out), &out, EGD_SNIFF_DONE, EGD_PROTO_TLS, host,
	       is_ip, error);
	if (out.tls_ech != ech)
		fail_msg("%s: tls_ech %d, want %d", name, out.tls_ech, ech);
}

/* --- real clients -------------------------------------------------------- */

static const struct capture {
	const char *file;
	const char *host;
	int is_ip;
} captures[] = {
	{ "openssl", "example.com", 0 },
	{ "curl", "example.com", 0 },
	{ "python", "example.com", 0 },
	{ "node", "example.com", 0 },
	{ "openssl-ip", "192.0.2.1", 1 },
	/* No SNI at all: TLS, no host, not an error. */
	{ "openssl-nosni", "", 0 },
	/* curl does not send SNI for an IP-literal URL. */
	{ "curl-ip", "", 0 },
};

#define N_CAPTURES (sizeof(captures) / sizeof(captures[0]))

static void tls_real_clients_name_their_host(void **state)
{
	struct egd_sniff_out out;

	(void)state;
	for (size_t i = 0; i < N_CAPTURES; i++) {
		load_capture(captures[i].file, &g_rec, &g_hs);
		expect(captures[i].file, egd_sniff(g_rec.b, g_rec.n, &out), &out, EGD_SNIFF_DONE,
		       EGD_PROTO_TLS, captures[i].host, captures[i].is_ip, NULL);
		assert_int_equal(out.tls_ech, 0);
	}
}

static void tls_hello_split_across_records(void **state)
{
	static const size_t chunks[] = { 1, 2, 3, 4, 5, 50, 255 };
	struct egd_sniff_out out;
	char name[64];

	(void)state;
	for (size_t i = 0; i < N_CAPTURES; i++) {
		load_capture(captures[i].file, &g_tmp, &g_hs);
		for (size_t c = 0; c < sizeof(chunks) / sizeof(chunks[0]); c++) {
			frame(&g_rec, g_hs.b, g_hs.n, chunks[c]);
			snprintf(name, sizeof(name), "%s/%zu", captures[i].file, chunks[c]);
			expect(name, egd_sniff(g_rec.b, g_rec.n, &out), &out, EGD_SNIFF_DONE,
			       EGD_PROTO_TLS, captures[i].host, captures[i].is_ip, NULL);
		}
	}
}

/* Feed one byte more each time: MORE until the last byte, then the answer. */
static void feed_bytewise(const char *name, const uint8_t *b, size_t n, const char *host, int is_ip)
{
	struct egd_sniff_out out;

	for (size_t k = 0; k < n; k++) {
		if (egd_sniff(b, k, &out) != EGD_SNIFF_MORE)
			fail_msg("%s: answered after %zu of %zu bytes", name, k, n);
	}
	expect(name, egd_sniff(b, n, &out), &out, EGD_SNIFF_DONE, EGD_PROTO_TLS, host, is_ip, NULL);
}

static void tls_hello_split_across_reads(void **state)
{
	(void)state;
	for (size_t i = 0; i < N_CAPTURES; i++) {
		load_capture(captures[i].file, &g_rec, &g_hs);
		feed_bytewise(captures[i].file, g_rec.b, g_rec.n, captures[i].host,
			      captures[i].is_ip);
		/* Both at once: many records, each arriving a byte at a time. */
		frame(&g_rec, g_hs.b, g_hs.n, 7);
		feed_bytewise(captures[i].file, g_rec.b, g_rec.n, captures[i].host,
			      captures[i].is_ip);
	}
}

static void tls_truncated_hello_finishes_without_host(void **state)
{
	struct egd_sniff_out out;

	(void)state;
	load_capture("openssl", &g_rec, &g_hs);
	/* Even the whole SNI is present here; a cut hello still names nothing. */
	egd_sniff_finish(g_rec.b, g_rec.n - 1, &out);
	expect("truncated", EGD_SNIFF_DONE, &out, EGD_SNIFF_DONE, EGD_PROTO_TLS, "", 0,
	       "truncated");
	egd_sniff_finish(g_rec.b, 3, &out);
	expect("truncated header", EGD_SNIFF_DONE, &out, EGD_SNIFF_DONE, EGD_PROTO_TLS, "", 0,
	       "truncated");
}

static void tls_whole_hello_finishes_with_host(void **state)
{
	struct egd_sniff_out out;

	(void)state;
	load_capture("openssl", &g_rec, &g_hs);
	egd_sniff_finish(g_rec.b, g_rec.n, &out);
	expect("finish", EGD_SNIFF_DONE, &out, EGD_SNIFF_DONE, EGD_PROTO_TLS, "example.com", 0,
	       NULL);
}

/* Whatever arrives after the first DONE must not change the answer. */
static void tls_answer_is_stable_once_done(void **state)
{
	struct egd_sniff_out first, full;

	(void)state;
	load_capture("curl", &g_rec, &g_hs);
	/* A 0-RTT client may send application data right after the hello. */
	put(&g_rec, "\x17\x03\x03\x00\x02hi", 7);
	assert_int_equal(egd_sniff(g_rec.b, g_rec.n - 7, &first), EGD_SNIFF_DONE);
	assert_int_equal(egd_sniff(g_rec.b, g_rec.n, &full), EGD_SNIFF_DONE);
	assert_memory_equal(&first, &full, sizeof(first));
}

/* --- crafted hellos ------------------------------------------------------ */

static void tls_sni_is_normalised(void **state)
{
	(void)state;
	g_exts.n = 0;
	put_sni(&g_exts, "API.OpenRouter.AI.", 18);
	expect_hello("normalised", &g_exts, "api.openrouter.ai", 0, 0, NULL);
}

static void tls_ip_literal_sni_is_flagged(void **state)
{
	(void)state;
	g_exts.n = 0;
	put_sni(&g_exts, "2001:DB8::0001", 14);
	expect_hello("v6", &g_exts, "2001:db8::1", 1, 0, NULL);
}

static void tls_ech_is_flagged_and_outer_sni_reported(void **state)
{
	static const uint8_t ech[] = { 0, 0, 1, 0, 1, 7, 0, 0, 0, 0 };

	(void)state;
	g_exts.n = 0;
	put_sni(&g_exts, "public.example", 14);
	put_ext(&g_exts, 0xfe0d, ech, sizeof(ech));
	expect_hello("ech", &g_exts, "public.example", 0, 1, NULL);
}

static void tls_grease_extensions_are_ignored(void **state)
{
	(void)state;
	g_exts.n = 0;
	put_ext(&g_exts, 0x0a0a, "", 0);
	put_sni(&g_exts, "example.com", 11);
	put_ext(&g_exts, 0xfafa, "\0", 1);
	/* Even a repeated GREASE type is no duplicate: it means nothing. */
	put_ext(&g_exts, 0x0a0a, "", 0);
	expect_hello("grease", &g_exts, "example.com", 0, 0, NULL);
}

static void tls_hello_without_extensions_has_no_host(void **state)
{
	(void)state;
	expect_hello("no extensions", NULL, "", 0, 0, NULL);
}

static void tls_duplicate_extension_is_refused(void **state)
{
	(void)state;
	g_exts.n = 0;
	put_sni(&g_exts, "example.com", 11);
	put_sni(&g_exts, "evil.example", 12);
	expect_hello("duplicate sni", &g_exts, "", 0, 0, "duplicate extension");

	g_exts.n = 0;
	put_ext(&g_exts, 0x002b, "\x02\x03\x04", 3);
	put_sni(&g_exts, "example.com", 11);
	put_ext(&g_exts, 0x002b, "\x02\x03\x04", 3);
	expect_hello("duplicate after sni", &g_exts, "", 0, 0, "duplicate extension");
}

static void tls_bad_sni_is_refused(void **state)
{
	static const struct {
		const char *name;
		size_t len;
	} bad[] = {
		{ "exa mple.com", 12 },
		{ "exa\0mple.com", 12 },
		{ "*.example.com", 13 },
		{ "a..example.com", 14 },
		{ ".example.com", 12 },
		{ "example.com..", 13 },
		{ ".", 1 },
		{ "", 0 },
		{ "example.com:443", 15 },
		{ "user@example.com", 16 },
		{ "\xc3\xa9xample.com", 12 },
		/* Numbers dressed as names: resolvers read them as addresses. */
		{ "1.2.3.4.", 8 },
		{ "127.1", 5 },
		{ "[::1]", 5 },
	};
	char name[300];

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		g_exts.n = 0;
		put_sni(&g_exts, bad[i].name, bad[i].len);
		expect_hello(bad[i].name, &g_exts, "", 0, 0, "bad sni");
	}

	/* A 64-character label, then a 254-character name. */
	memset(name, 'a', 64);
	memcpy(name + 64, ".com", 4);
	g_exts.n = 0;
	put_sni(&g_exts, name, 68);
	expect_hello("long label", &g_exts, "", 0, 0, "bad sni");
	for (size_t i = 0; i < 254; i++)
		name[i] = i % 2 ? '.' : 'a';
	name[253] = 'a';
	g_exts.n = 0;
	put_sni(&g_exts, name, 254);
	expect_hello("long name", &g_exts, "", 0, 0, "bad sni");
	/* 253 characters is allowed, and so is its root dot. */
	name[253] = '.';
	g_exts.n = 0;
	put_sni(&g_exts, name, 254);
	name[253] = '\0';
	expect_hello("longest name", &g_exts, name, 0, 0, NULL);
}

static void tls_sni_list_must_hold_one_host_name(void **state)
{
	static const uint8_t two[] = { 0, 10, 0, 0, 2, 'a', 'b', 0, 0, 2, 'c', 'd' };
	static const uint8_t other_type[] = { 0, 5, 1, 0, 2, 'a', 'b' };
	static const uint8_t empty_list[] = { 0, 0 };
	static const uint8_t short_list[] = { 0, 6, 0, 0, 2, 'a', 'b' };

	(void)state;
	g_exts.n = 0;
	put_ext(&g_exts, 0, two, sizeof(two));
	expect_hello("two names", &g_exts, "", 0, 0, "bad sni");
	g_exts.n = 0;
	put_ext(&g_exts, 0, other_type, sizeof(other_type));
	expect_hello("other type", &g_exts, "", 0, 0, "bad sni");
	g_exts.n = 0;
	put_ext(&g_exts, 0, empty_list, sizeof(empty_list));
	expect_hello("empty list", &g_exts, "", 0, 0, "bad sni");
	g_exts.n = 0;
	put_ext(&g_exts, 0, short_list, sizeof(short_list));
	expect_hello("short list", &g_exts, "", 0, 0, "bad sni");
}

static void tls_malformed_extensions_are_refused(void **state)
{
	struct egd_sniff_out out;

	(void)state;
	/* An extension claiming more bytes than the block holds. */
	g_exts.n = 0;
	put_sni(&g_exts, "example.com", 11);
	put_u16(&g_exts, 0x0010);
	put_u16(&g_exts, 5);
	put(&g_exts, "abc", 3);
	expect_hello("overrun", &g_exts, "", 0, 0, "bad extensions");

	/* Bytes after the extensions block. */
	g_exts.n = 0;
	put_sni(&g_exts, "example.com", 11);
	build_hello(&g_hs, &g_exts);
	put_u8(&g_hs, 0);
	g_hs.b[3]++;
	frame(&g_rec, g_hs.b, g_hs.n, 16384);
	expect("trailing garbage", egd_sniff(g_rec.b, g_rec.n, &out), &out, EGD_SNIFF_DONE,
	       EGD_PROTO_TLS, "", 0, "bad extensions");
}

/* Corrupt one field of a well-formed hello and check the reason. */
static void tls_malformed_hello_fields_are_refused(void **state)
{
	static const struct {
		const char *name;
		size_t at; /* offset in the handshake message */
		uint8_t value;
		const char *error;
	} cases[] = {
		{ "version", 4, 0x02, "bad client hello" },
		{ "session id 33", 38, 33, "bad session id" },
		{ "odd suites", 72, 3, "bad cipher suites" },
		{ "no suites", 72, 0, "bad cipher suites" },
		{ "no compression", 77, 0, "bad compression" },
		{ "not a hello", 0, 2, "not client hello" },
	};
	struct egd_sniff_out out;

	(void)state;
	g_exts.n = 0;
	put_sni(&g_exts, "example.com", 11);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		build_hello(&g_hs, &g_exts);
		g_hs.b[cases[i].at] = cases[i].value;
		frame(&g_rec, g_hs.b, g_hs.n, 16384);
		expect(cases[i].name, egd_sniff(g_rec.b, g_rec.n, &out), &out, EGD_SNIFF_DONE,
		       EGD_PROTO_TLS, "", 0, cases[i].error);
	}
}

static void tls_oversize_hello_is_refused_from_its_header(void **state)
{
	static const uint8_t head[] = { 0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00, 0x40, 0x01 };
	struct egd_sniff_out out;

	(void)state;
	/* Decided from the 4-byte handshake header, without waiting for 16 KiB. */
	expect("oversize", egd_sniff(head, sizeof(head), &out), &out, EGD_SNIFF_DONE, EGD_PROTO_TLS,
	       "", 0, "oversize");
}

static void tls_largest_hello_is_accepted(void **state)
{
	static uint8_t pad[CLIENTHELLO_MAX_BYTES];
	struct egd_sniff_out out;

	(void)state;
	g_exts.n = 0;
	put_sni(&g_exts, "example.com", 11);
	/* Padding (RFC 7685) to make the message exactly the limit. */
	build_hello(&g_hs, &g_exts);
	put_ext(&g_exts, 0x0015, pad, CLIENTHELLO_MAX_BYTES - (g_hs.n - 4) - 4);
	build_hello(&g_hs, &g_exts);
	assert_int_equal(g_hs.n - 4, CLIENTHELLO_MAX_BYTES);
	frame(&g_rec, g_hs.b, g_hs.n, 16384);
	expect("largest", egd_sniff(g_rec.b, g_rec.n, &out), &out, EGD_SNIFF_DONE, EGD_PROTO_TLS,
	       "example.com", 0, NULL);
	/* Any more is over. */
	put_ext(&g_exts, 0x0016, "", 0);
	build_hello(&g_hs, &g_exts);
	frame(&g_rec, g_hs.b, g_hs.n, 16384);
	expect("over", egd_sniff(g_rec.b, g_rec.n, &out), &out, EGD_SNIFF_DONE, EGD_PROTO_TLS, "",
	       0, "oversize");
}

static void tls_bad_records_are_refused(void **state)
{
	static const struct {
		const char *name;
		const char *bytes;
		size_t len;
		const char *error;
	} cases[] = {
		{ "record version", "\x16\x02", 2, "bad record version" },
		{ "empty record", "\x16\x03\x01\x00\x00", 5, "bad record length" },
		{ "huge record", "\x16\x03\x01\x40\x01", 5, "bad record length" },
		{ "server hello", "\x16\x03\x01\x00\x04\x02", 6, "not client hello" },
		/* An alert between two fragments of the hello. */
		{ "alert mid-hello", "\x16\x03\x01\x00\x02\x01\x00\x15\x03\x01", 10,
		  "unexpected record" },
		/* A record reaching past the end of the hello. */
		{ "trailing data", "\x16\x03\x01\x00\x06\x01\x00\x00\x01", 9, "trailing data" },
		{ "trailing record", "\x16\x03\x01\x00\x02\x01\x00\x16\x03\x01\x00\x04\x00\x01", 14,
		  "trailing data" },
	};
	struct egd_sniff_out out;

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		expect(cases[i].name,
		       egd_sniff((const uint8_t *)cases[i].bytes, cases[i].len, &out), &out,
		       EGD_SNIFF_DONE, EGD_PROTO_TLS, "", 0, cases[i].error);
	}
}

/* --- dispatch -------------------------------------------------------------- */

static void sniff_dispatches_on_first_bytes(void **state)
{
	static const struct {
		const char *name;
		const char *bytes;
		size_t len;
		enum egd_sniff_status status;
		enum egd_proto proto;
	} cases[] = {
		{ "nothing yet", "", 0, EGD_SNIFF_MORE, EGD_PROTO_UNKNOWN },
		{ "tls byte", "\x16", 1, EGD_SNIFF_MORE, EGD_PROTO_TLS },
		{ "method prefix", "GE", 2, EGD_SNIFF_MORE, EGD_PROTO_UNKNOWN },
		{ "method", "OPTIONS", 7, EGD_SNIFF_MORE, EGD_PROTO_UNKNOWN },
		{ "lowercase", "get / HTTP/1.1\r\n", 16, EGD_SNIFF_DONE, EGD_PROTO_UNKNOWN },
		{ "ssh", "SSH-2.0-OpenSSH_9.2\r\n", 21, EGD_SNIFF_DONE, EGD_PROTO_UNKNOWN },
		{ "leading space", " GET", 4, EGD_SNIFF_DONE, EGD_PROTO_UNKNOWN },
		{ "long token", "ABCDEFGHIJKLMNOPQRSTU", 21, EGD_SNIFF_DONE, EGD_PROTO_UNKNOWN },
		{ "sslv2 hello", "\x80\x2e\x01\x00\x02", 5, EGD_SNIFF_DONE, EGD_PROTO_UNKNOWN },
		{ "tls alert", "\x15\x03\x01\x00\x02", 5, EGD_SNIFF_DONE, EGD_PROTO_UNKNOWN },
		{ "binary", "\x00\x01\x02", 3, EGD_SNIFF_DONE, EGD_PROTO_UNKNOWN },
	};
	struct egd_sniff_out out;

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		expect(cases[i].name,
		       egd_sniff((const uint8_t *)cases[i].bytes, cases[i].len, &out), &out,
		       cases[i].status, cases[i].proto, "", 0, NULL);
	}
}

static void finish_reports_truncated_by_first_byte(void **state)
{
	static const struct {
		const char *name;
		const char *bytes;
		enum egd_proto proto;
		const char *error;
	} cases[] = {
		{ "nothing sent", "", EGD_PROTO_UNKNOWN, NULL },
		{ "method prefix", "PO", EGD_PROTO_HTTP, "truncated" },
		{ "headers cut", "GET / HTTP/1.1\r\nHost: example.com\r\n", EGD_PROTO_HTTP,
		  "truncated" },
		{ "tls header", "\x16\x03\x01", EGD_PROTO_TLS, "truncated" },
		{ "garbage", "\x01\x02", EGD_PROTO_UNKNOWN, NULL },
	};
	struct egd_sniff_out out;

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		egd_sniff_finish((const uint8_t *)cases[i].bytes, strlen(cases[i].bytes), &out);
		expect(cases[i].name, EGD_SNIFF_DONE, &out, EGD_SNIFF_DONE, cases[i].proto, "", 0,
		       cases[i].error);
	}
}

/* --- HTTP ------------------------------------------------------------------ */

static const struct http_case {
	const char *name;
	const char *req;
	enum egd_sniff_status status;
	const char *host;
	int is_ip;
	const char *error;
} http_cases[] = {
	{ "plain", "GET / HTTP/1.1\r\nHost: example.com\r\n\r\n", EGD_SNIFF_DONE, "example.com", 0,
	  NULL },
	{ "case and ows", "POST /x HTTP/1.1\r\nAccept: */*\r\nhOsT: \t Example.COM:8080 \t\r\n\r\n",
	  EGD_SNIFF_DONE, "example.com", 0, NULL },
	{ "v4 literal", "GET / HTTP/1.1\r\nHost: 192.0.2.1:80\r\n\r\n", EGD_SNIFF_DONE, "192.0.2.1",
	  1, NULL },
	{ "v6 literal", "GET / HTTP/1.1\r\nHost: [2001:DB8::1]:8080\r\n\r\n", EGD_SNIFF_DONE,
	  "2001:db8::1", 1, NULL },
	{ "v6 no port", "HEAD / HTTP/1.1\r\nHost: [::1]\r\n\r\n", EGD_SNIFF_DONE, "::1", 1, NULL },
	{ "trailing dot", "GET / HTTP/1.1\r\nHost: example.com.\r\n\r\n", EGD_SNIFF_DONE,
	  "example.com", 0, NULL },
	{ "absolute form", "GET http://Example.com:8080/p?q HTTP/1.1\r\nHost: example.com\r\n\r\n",
	  EGD_SNIFF_DONE, "example.com", 0, NULL },
	{ "absolute no host header", "GET HTTP://example.com HTTP/1.1\r\n\r\n", EGD_SNIFF_DONE,
	  "example.com", 0, NULL },
	{ "absolute v6", "GET http://[::1]:80/ HTTP/1.1\r\nHost: [::1]\r\n\r\n", EGD_SNIFF_DONE,
	  "::1", 1, NULL },
	{ "connect", "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
	  EGD_SNIFF_DONE, "example.com", 0, NULL },
	{ "options star", "OPTIONS * HTTP/1.1\r\nHost: example.com\r\n\r\n", EGD_SNIFF_DONE,
	  "example.com", 0, NULL },
	{ "http/1.0 no host", "GET / HTTP/1.0\r\n\r\n", EGD_SNIFF_DONE, "", 0, NULL },
	{ "empty host", "GET / HTTP/1.1\r\nHost:\r\n\r\n", EGD_SNIFF_DONE, "", 0, NULL },
	{ "h2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", EGD_SNIFF_DONE, "", 0, NULL },
	{ "missing host", "GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", EGD_SNIFF_DONE, "", 0,
	  "missing host" },
	{ "duplicate host", "GET / HTTP/1.1\r\nHost: a.example\r\nHOST: b.example\r\n\r\n",
	  EGD_SNIFF_DONE, "", 0, "duplicate host" },
	{ "duplicate same host", "GET / HTTP/1.1\r\nHost: a.example\r\nHost: a.example\r\n\r\n",
	  EGD_SNIFF_DONE, "", 0, "duplicate host" },
	{ "host mismatch", "GET http://a.example/ HTTP/1.1\r\nHost: b.example\r\n\r\n",
	  EGD_SNIFF_DONE, "", 0, "host mismatch" },
	{ "connect mismatch", "CONNECT a.example:443 HTTP/1.1\r\nHost: b.example\r\n\r\n",
	  EGD_SNIFF_DONE, "", 0, "host mismatch" },
	{ "empty host vs target", "GET http://a.example/ HTTP/1.1\r\nHost:\r\n\r\n", EGD_SNIFF_DONE,
	  "", 0, "host mismatch" },
	{ "obs-fold", "GET / HTTP/1.1\r\nHost: a.example\r\n evil.example\r\n\r\n", EGD_SNIFF_DONE,
	  "", 0, "obs-fold" },
	{ "obs-fold tab", "GET / HTTP/1.1\r\nX: y\r\n\tHost: a.example\r\n\r\n", EGD_SNIFF_DONE, "",
	  0, "obs-fold" },
	{ "bare lf", "GET / HTTP/1.1\nHost: a.example\n\n", EGD_SNIFF_DONE, "", 0, "bare lf" },
	{ "bare lf in headers", "GET / HTTP/1.1\r\nX: y\nHost: a.example\r\n\r\n", EGD_SNIFF_DONE,
	  "", 0, "bare lf" },
	{ "bare cr", "GET / HTTP/1.1\r\nX: y\rHost: a.example\r\n\r\n", EGD_SNIFF_DONE, "", 0,
	  "bad header" },
	{ "space before colon", "GET / HTTP/1.1\r\nHost : a.example\r\n\r\n", EGD_SNIFF_DONE, "", 0,
	  "bad header" },
	{ "no colon", "GET / HTTP/1.1\r\nHost a.example\r\n\r\n", EGD_SNIFF_DONE, "", 0,
	  "bad header" },
	{ "bad host chars", "GET / HTTP/1.1\r\nHost: a example\r\n\r\n", EGD_SNIFF_DONE, "", 0,
	  "bad host" },
	{ "userinfo", "GET http://a.example@b.example/ HTTP/1.1\r\n\r\n", EGD_SNIFF_DONE, "", 0,
	  "bad host" },
	{ "unbracketed v6", "GET / HTTP/1.1\r\nHost: ::1\r\n\r\n", EGD_SNIFF_DONE, "", 0,
	  "bad host" },
	{ "bad port", "GET / HTTP/1.1\r\nHost: a.example:99999\r\n\r\n", EGD_SNIFF_DONE, "", 0,
	  "bad host" },
	{ "empty port", "GET / HTTP/1.1\r\nHost: a.example:\r\n\r\n", EGD_SNIFF_DONE, "", 0,
	  "bad host" },
	{ "zone id", "GET / HTTP/1.1\r\nHost: [fe80::1%25eth0]\r\n\r\n", EGD_SNIFF_DONE, "", 0,
	  "bad host" },
	{ "name in brackets", "GET / HTTP/1.1\r\nHost: [a.example]\r\n\r\n", EGD_SNIFF_DONE, "", 0,
	  "bad host" },
	{ "connect without port", "CONNECT a.example HTTP/1.1\r\n\r\n", EGD_SNIFF_DONE, "", 0,
	  "bad host" },
	{ "http/1.2", "GET / HTTP/1.2\r\nHost: a.example\r\n\r\n", EGD_SNIFF_DONE, "", 0,
	  "bad version" },
	{ "http/0.9", "GET /\r\n", EGD_SNIFF_DONE, "", 0, "bad request line" },
	{ "two spaces", "GET  / HTTP/1.1\r\n", EGD_SNIFF_DONE, "", 0, "bad request line" },
	{ "star not options", "GET * HTTP/1.1\r\n", EGD_SNIFF_DONE, "", 0, "bad target" },
	{ "other scheme", "GET ftp://a.example/ HTTP/1.1\r\n", EGD_SNIFF_DONE, "", 0,
	  "bad target" },
	{ "incomplete line", "GET / HTTP/1.1\r\nHost: a.exa", EGD_SNIFF_MORE, "", 0, NULL },
	{ "no blank line", "GET / HTTP/1.1\r\nHost: a.example\r\n", EGD_SNIFF_MORE, "", 0, NULL },
};

static void http_requests_name_their_host(void **state)
{
	struct egd_sniff_out out;

	(void)state;
	for (size_t i = 0; i < sizeof(http_cases) / sizeof(http_cases[0]); i++) {
		const struct http_case *c = &http_cases[i];

		expect(c->name, egd_sniff((const uint8_t *)c->req, strlen(c->req), &out), &out,
		       c->status, EGD_PROTO_HTTP, c->host, c->is_ip, c->error);
	}
}

static void http_nul_in_header_is_refused(void **state)
{
	static const char req[] = "GET / HTTP/1.1\r\nX: a\0b\r\nHost: a.example\r\n\r\n";
	struct egd_sniff_out out;

	(void)state;
	expect("nul", egd_sniff((const uint8_t *)req, sizeof(req) - 1, &out), &out, EGD_SNIFF_DONE,
	       EGD_PROTO_HTTP, "", 0, "bad header");
}

static void http_request_split_across_reads(void **state)
{
	static const char req[] = "GET /index.html HTTP/1.1\r\nUser-Agent: curl/7.88.1\r\n"
				  "Host: example.com\r\nAccept: */*\r\n\r\n";
	const size_t n = sizeof(req) - 1;
	struct egd_sniff_out out;

	(void)state;
	for (size_t k = 0; k < n; k++) {
		if (egd_sniff((const uint8_t *)req, k, &out) != EGD_SNIFF_MORE)
			fail_msg("answered after %zu of %zu bytes", k, n);
	}
	expect("whole", egd_sniff((const uint8_t *)req, n, &out), &out, EGD_SNIFF_DONE,
	       EGD_PROTO_HTTP, "example.com", 0, NULL);
}

static void http_oversize_head_is_refused(void **state)
{
	static const char line[] = "GET / HTTP/1.1\r\nX-Pad: ";
	struct egd_sniff_out out;

	(void)state;
	memset(g_rec.b, 'a', HTTP_SNIFF_MAX_BYTES + 100);
	memcpy(g_rec.b, line, sizeof(line) - 1);
	expect("one short", egd_sniff(g_rec.b, HTTP_SNIFF_MAX_BYTES - 1, &out), &out,
	       EGD_SNIFF_MORE, EGD_PROTO_HTTP, "", 0, NULL);
	expect("at limit", egd_sniff(g_rec.b, HTTP_SNIFF_MAX_BYTES, &out), &out, EGD_SNIFF_DONE,
	       EGD_PROTO_HTTP, "", 0, "oversize");
	/* A head ending past the limit is still over, even with a Host. */
	memcpy(g_rec.b + HTTP_SNIFF_MAX_BYTES + 2, "\r\nHost: a.example\r\n\r\n", 21);
	expect("past limit", egd_sniff(g_rec.b, HTTP_SNIFF_MAX_BYTES + 23, &out), &out,
	       EGD_SNIFF_DONE, EGD_PROTO_HTTP, "", 0, "oversize");
}

static void http_host_read_before_body(void **state)
{
	static const char req[] = "POST /api HTTP/1.1\r\nHost: example.com\r\n"
				  "Content-Length: 5\r\n\r\nHost:";
	struct egd_sniff_out out;

	(void)state;
	expect("body ignored", egd_sniff((const uint8_t *)req, sizeof(req) - 1, &out), &out,
	       EGD_SNIFF_DONE, EGD_PROTO_HTTP, "example.com", 0, NULL);
}

/* --- host names ------------------------------------------------------------ */

static void host_normalize_accepts_and_canonicalises(void **state)
{
	static const struct {
		const char *in;
		const char *out;
	} ok[] = {
		{ "Example.COM", "example.com" },
		{ "example.com.", "example.com" },
		{ "_dmarc.example.com", "_dmarc.example.com" },
		{ "xn--bcher-kva.example", "xn--bcher-kva.example" },
		{ "localhost", "localhost" },
		{ "1.0.0.127.in-addr.arpa", "1.0.0.127.in-addr.arpa" },
		{ "3com.com", "3com.com" },
	};
	static const char *const bad[] = {
		"",    ".",   "example.com..", "a..b",	  ".a",	 "a b",
		"a/b", "*.a", "é.a",	       "1.2.3.4", "123",
	};
	char host[EGD_HOST_MAX + 1];

	(void)state;
	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		snprintf(host, sizeof(host), "%s", ok[i].in);
		if (egd_host_normalize(host) != 0)
			fail_msg("%s refused", ok[i].in);
		assert_string_equal(host, ok[i].out);
	}
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		snprintf(host, sizeof(host), "%s", bad[i]);
		if (egd_host_normalize(host) != -1)
			fail_msg("'%s' accepted", bad[i]);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(tls_real_clients_name_their_host),
		cmocka_unit_test(tls_hello_split_across_records),
		cmocka_unit_test(tls_hello_split_across_reads),
		cmocka_unit_test(tls_truncated_hello_finishes_without_host),
		cmocka_unit_test(tls_whole_hello_finishes_with_host),
		cmocka_unit_test(tls_answer_is_stable_once_done),
		cmocka_unit_test(tls_sni_is_normalised),
		cmocka_unit_test(tls_ip_literal_sni_is_flagged),
		cmocka_unit_test(tls_ech_is_flagged_and_outer_sni_reported),
		cmocka_unit_test(tls_grease_extensions_are_ignored),
		cmocka_unit_test(tls_hello_without_extensions_has_no_host),
		cmocka_unit_test(tls_duplicate_extension_is_refused),
		cmocka_unit_test(tls_bad_sni_is_refused),
		cmocka_unit_test(tls_sni_list_must_hold_one_host_name),
		cmocka_unit_test(tls_malformed_extensions_are_refused),
		cmocka_unit_test(tls_malformed_hello_fields_are_refused),
		cmocka_unit_test(tls_oversize_hello_is_refused_from_its_header),
		cmocka_unit_test(tls_largest_hello_is_accepted),
		cmocka_unit_test(tls_bad_records_are_refused),
		cmocka_unit_test(sniff_dispatches_on_first_bytes),
		cmocka_unit_test(finish_reports_truncated_by_first_byte),
		cmocka_unit_test(http_requests_name_their_host),
		cmocka_unit_test(http_nul_in_header_is_refused),
		cmocka_unit_test(http_request_split_across_reads),
		cmocka_unit_test(http_oversize_head_is_refused),
		cmocka_unit_test(http_host_read_before_body),
		cmocka_unit_test(host_normalize_accepts_and_canonicalises),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
