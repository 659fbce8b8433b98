/* SPDX-License-Identifier: MIT */
/*
 * Sniffers for the first bytes of a captured connection: the SNI of a TLS
 * ClientHello (reassembled across records and reads) or the Host of an
 * HTTP/1.x request. Everything here is a pure function of the bytes seen so
 * far. The parsers are deliberately stricter than a TLS stack or an HTTP
 * server: whenever the bytes could be read two ways, we refuse to name a host
 * rather than name one the upstream might not agree with.
 *
 * Every answer is prefix-stable: once egd_sniff() returns EGD_SNIFF_DONE for
 * some bytes, it returns the same answer for any longer buffer that starts
 * with them. The daemon may therefore stop reading at the first DONE, and the
 * fuzzers check this property.
 */
#include "egress/sniff.h"

#include <arpa/inet.h>
#include <stdbool.h>
#include <string.h>

/* TLS record header: type, version, length. */
#define TLS_RECORD_HEADER_BYTES 5
/* RFC 8446 5.1: a plaintext record (the only kind before the server speaks)
 * carries at most 2^14 bytes. */
#define TLS_RECORD_MAX_BYTES 16384
/* Handshake header: msg_type and a 24-bit length. */
#define TLS_HANDSHAKE_HEADER_BYTES 4
#define TLS_CONTENT_HANDSHAKE 22
#define TLS_HANDSHAKE_CLIENT_HELLO 1
#define TLS_VERSION_MAJOR 3
#define TLS_RANDOM_BYTES 32
/* RFC 8446 4.1.2: legacy_session_id is at most 32 bytes. */
#define TLS_SESSION_ID_MAX_BYTES 32
#define TLS_EXT_SERVER_NAME 0x0000
#define TLS_EXT_ENCRYPTED_CLIENT_HELLO 0xfe0d
#define TLS_SNI_HOST_NAME 0
/* One bit per possible extension type, to find duplicates in one pass. */
#define TLS_EXT_TYPES 65536

/* Longest method token we wait for; the longest registered one
 * (UPDATEREDIRECTREF) has 17 letters. */
#define HTTP_METHOD_MAX_CHARS 20
/* "HTTP/1.1" */
#define HTTP_VERSION_CHARS 8
/* Largest TCP port, for the port of a Host header or absolute target. */
#define PORT_MAX 65535
/* The longest textual IPv6 address, without brackets or NUL. */
#define IPV6_LITERAL_MAX_CHARS (INET6_ADDRSTRLEN - 1)
/* RFC 1035: a label is 1..63 octets, a name at most 253 characters. */
#define DNS_LABEL_MAX_CHARS 63
#define DNS_NAME_MAX_CHARS (EGD_HOST_MAX - 1)

/* A bounds-checked view of bytes still to be parsed. */
struct cursor {
	const uint8_t *p;
	size_t n;
};

static enum egd_sniff_status fail(struct egd_sniff_out *out, const char *reason)
{
	out->host[0] = '\0';
	out->host_is_ip = 0;
	out->error = reason;
	return EGD_SNIFF_DONE;
}

/* fail() for helpers that return 0 or -1. */
static int reject(struct egd_sniff_out *out, const char *reason)
{
	fail(out, reason);
	return -1;
}

static int get_u8(struct cursor *c, unsigned int *v)
{
	if (c->n < 1)
		return -1;
	*v = c->p[0];
	c->p++;
	c->n--;
	return 0;
}

static int get_u16(struct cursor *c, unsigned int *v)
{
	if (c->n < 2)
		return -1;
	*v = (unsigned int)c->p[0] << 8 | c->p[1];
	c->p += 2;
	c->n -= 2;
	return 0;
}

/* Split the next @len bytes off @c into @sub. */
static int get_bytes(struct cursor *c, size_t len, struct cursor *sub)
{
	if (c->n < len)
		return -1;
	sub->p = c->p;
	sub->n = len;
	c->p += len;
	c->n -= len;
	return 0;
}

/* A length-prefixed vector: @width is 1 or 2 bytes of length. */
static int get_vector(struct cursor *c, int width, struct cursor *sub)
{
	unsigned int len;

	if ((width == 1 ? get_u8(c, &len) : get_u16(c, &len)) < 0)
		return -1;
	return get_bytes(c, len, sub);
}

/* --- host names ------------------------------------------------------------ */

static bool is_digit(int ch)
{
	return ch >= '0' && ch <= '9';
}

static bool is_upper(int ch)
{
	return ch >= 'A' && ch <= 'Z';
}

static bool is_dns_char(int ch)
{
	return is_digit(ch) || (ch >= 'a' && ch <= 'z') || ch == '-' || ch == '_';
}

int egd_host_normalize(char *host)
{
	size_t len, label = 0, i;
	bool numeric = true;

	for (i = 0; host[i]; i++) {
		if (is_upper(host[i]))
			host[i] = (char)(host[i] - 'A' + 'a');
	}
	len = i;
	if (len > 0 && host[len - 1] == '.')
		host[--len] = '\0';
	if (len == 0 || len > DNS_NAME_MAX_CHARS)
		return -1;

	for (i = 0; i <= len; i++) {
		if (i == len || host[i] == '.') {
			if (label == 0 || label > DNS_LABEL_MAX_CHARS)
				return -1;
			label = 0;
			if (i < len)
				numeric = true;
			continue;
		}
		if (!is_dns_char(host[i]))
			return -1;
		numeric = numeric && is_digit(host[i]);
		label++;
	}
	/*
	 * No top-level domain is all digits. A name like "1.2.3.4." or "127.1"
	 * is an address in disguise that resolvers may treat as one, so it must
	 * not pass as a DNS name that policy would match as text.
	 */
	if (numeric)
		return -1;
	return 0;
}

/*
 * Fill @host from @len raw bytes naming a host without brackets or port: an
 * IPv4 or IPv6 literal (canonicalised, *@is_ip set) or a DNS name
 * (normalised). Returns -1 if it is neither; @host is then unspecified.
 */
static int set_host(char host[EGD_HOST_MAX], int *is_ip, const uint8_t *name, size_t len)
{
	char tmp[EGD_HOST_MAX + 1]; /* a 253-character name plus its root dot */
	uint8_t addr[sizeof(struct in6_addr)];
	int af = 0;

	if (len == 0 || len > EGD_HOST_MAX || memchr(name, '\0', len))
		return -1;
	memcpy(tmp, name, len);
	tmp[len] = '\0';

	if (inet_pton(AF_INET, tmp, addr) == 1)
		af = AF_INET;
	else if (inet_pton(AF_INET6, tmp, addr) == 1)
		af = AF_INET6;
	if (af) {
		/* One spelling per address, so "::0001" and "::1" match alike. */
		if (!inet_ntop(af, addr, host, EGD_HOST_MAX))
			return -1;
		*is_ip = 1;
		return 0;
	}

	if (egd_host_normalize(tmp) < 0)
		return -1;
	memcpy(host, tmp, strlen(tmp) + 1);
	*is_ip = 0;
	return 0;
}

/* --- TLS --------------------------------------------------------------------- */

/* RFC 8701: GREASE values are 0x?a?a with both bytes equal. */
static bool is_grease(unsigned int v)
{
	return (v & 0x0f0f) == 0x0a0a && (v >> 8) == (v & 0xff);
}

/*
 * RFC 6066 3: a list holding exactly one entry, of type host_name. A second
 * name of any type would leave us guessing which one the server will use.
 * Returns 0, or -1 with @out failed.
 */
static int parse_server_name(struct cursor ext, struct egd_sniff_out *out)
{
	struct cursor list, name;
	unsigned int type;

	if (get_vector(&ext, 2, &list) < 0 || ext.n != 0 || get_u8(&list, &type) < 0 ||
	    get_vector(&list, 2, &name) < 0 || list.n != 0 || type != TLS_SNI_HOST_NAME ||
	    set_host(out->host, &out->host_is_ip, name.p, name.n) < 0)
		return reject(out, "bad sni");
	return 0;
}

/* Parse a complete ClientHello body (after the handshake header). */
static enum egd_sniff_status parse_client_hello(struct cursor c, struct egd_sniff_out *out)
{
	uint64_t seen[TLS_EXT_TYPES / 64];
	struct cursor skip, suites, comp, exts, ext;
	unsigned int version, type;

	if (get_u16(&c, &version) < 0 || version >> 8 != TLS_VERSION_MAJOR ||
	    get_bytes(&c, TLS_RANDOM_BYTES, &skip) < 0)
		return fail(out, "bad client hello");
	if (get_vector(&c, 1, &skip) < 0 || skip.n > TLS_SESSION_ID_MAX_BYTES)
		return fail(out, "bad session id");
	if (get_vector(&c, 2, &suites) < 0 || suites.n == 0 || suites.n % 2)
		return fail(out, "bad cipher suites");
	if (get_vector(&c, 1, &comp) < 0 || comp.n == 0)
		return fail(out, "bad compression");
	/* Extensions are optional (SSL 3.0, old TLS 1.0 clients): no SNI then. */
	if (c.n == 0)
		return EGD_SNIFF_DONE;
	if (get_vector(&c, 2, &exts) < 0 || c.n != 0)
		return fail(out, "bad extensions");

	memset(seen, 0, sizeof(seen));
	while (exts.n > 0) {
		if (get_u16(&exts, &type) < 0 || get_vector(&exts, 2, &ext) < 0)
			return fail(out, "bad extensions");
		/* Clients may repeat GREASE types; they carry no meaning. */
		if (is_grease(type))
			continue;
		if (seen[type / 64] & (UINT64_C(1) << (type % 64)))
			return fail(out, "duplicate extension");
		seen[type / 64] |= UINT64_C(1) << (type % 64);

		if (type == TLS_EXT_ENCRYPTED_CLIENT_HELLO) {
			out->tls_ech = 1;
		} else if (type == TLS_EXT_SERVER_NAME && parse_server_name(ext, out) < 0) {
			return EGD_SNIFF_DONE;
		}
	}
	return EGD_SNIFF_DONE;
}

enum egd_sniff_status egd_sniff_tls(const uint8_t *buf, size_t len, struct egd_sniff_out *out)
{
	/* The reassembled handshake message; it only lives for this call. */
	uint8_t hs[TLS_HANDSHAKE_HEADER_BYTES + CLIENTHELLO_MAX_BYTES];
	size_t have = 0, need = 0, off = 0;
	struct cursor body;

	memset(out, 0, sizeof(*out));
	out->proto = EGD_PROTO_TLS;

	for (;;) {
		size_t rlen, avail;

		/* Judge each header byte as soon as it arrives: garbage after a
		 * 0x16 should not make the caller wait for its deadline. */
		if (off < len && buf[off] != TLS_CONTENT_HANDSHAKE)
			return fail(out, "unexpected record");
		if (off + 1 < len && buf[off + 1] != TLS_VERSION_MAJOR)
			return fail(out, "bad record version");
		if (len - off < TLS_RECORD_HEADER_BYTES)
			return EGD_SNIFF_MORE;
		rlen = (size_t)buf[off + 3] << 8 | buf[off + 4];
		/* RFC 8446 5.1 forbids empty handshake fragments. */
		if (rlen == 0 || rlen > TLS_RECORD_MAX_BYTES)
			return fail(out, "bad record length");
		/*
		 * The hello must end where a record ends: a client sends nothing
		 * else before the server answers. Judged from headers alone, so
		 * that a reader that stops early and one that waits agree.
		 */
		if (need && have + rlen > need)
			return fail(out, "trailing data");
		off += TLS_RECORD_HEADER_BYTES;

		avail = len - off < rlen ? len - off : rlen;
		for (size_t i = 0; i < avail; i++) {
			/* Never past @need (checked above and below), so in @hs. */
			hs[have++] = buf[off + i];
			if (have == 1 && hs[0] != TLS_HANDSHAKE_CLIENT_HELLO)
				return fail(out, "not client hello");
			if (have != TLS_HANDSHAKE_HEADER_BYTES)
				continue;
			need = (size_t)hs[1] << 16 | (size_t)hs[2] << 8 | hs[3];
			if (need > CLIENTHELLO_MAX_BYTES)
				return fail(out, "oversize");
			need += TLS_HANDSHAKE_HEADER_BYTES;
			if (have + rlen - (i + 1) > need)
				return fail(out, "trailing data");
		}
		if (need && have == need)
			break;
		if (avail < rlen)
			return EGD_SNIFF_MORE;
		off += rlen;
	}
	body.p = hs + TLS_HANDSHAKE_HEADER_BYTES;
	body.n = need - TLS_HANDSHAKE_HEADER_BYTES;
	return parse_client_hello(body, out);
}

/* --- HTTP/1.x ---------------------------------------------------------------- */

/* RFC 9110 5.6.2: the characters of a token (header names, methods). */
static bool is_tchar(int ch)
{
	return is_digit(ch) || (ch >= 'a' && ch <= 'z') || is_upper(ch) ||
	       (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

/* Visible ASCII, as in a request target. */
static bool is_vchar(int ch)
{
	return ch > 0x20 && ch < 0x7f;
}

static bool is_ows(int ch)
{
	return ch == ' ' || ch == '\t';
}

/* ASCII-only, locale-free: header names and schemes are ASCII by definition. */
static bool ascii_caseeq(const uint8_t *a, const char *b, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		int ch = a[i];

		if (is_upper(ch))
			ch = ch - 'A' + 'a';
		if (ch != b[i])
			return false;
	}
	return true;
}

/*
 * Parse "host", "host:port", "[v6]" or "[v6]:port" (the authority of an
 * absolute target, a CONNECT target or a Host value) into @host. Userinfo
 * ("allowed@evil") is refused by the host check since '@' is not a DNS
 * character. Returns 0 or -1.
 */
static int parse_authority(const uint8_t *s, size_t n, bool need_port, char host[EGD_HOST_MAX],
			   int *is_ip)
{
	const uint8_t *rest;
	unsigned long port = 0;
	size_t rn, i;

	if (n > 0 && s[0] == '[') {
		const uint8_t *close = memchr(s, ']', n);
		size_t in;

		if (!close)
			return -1;
		in = (size_t)(close - s) - 1;
		/* Brackets hold IPv6 only; no zone ids, no IPvFuture. */
		if (in > IPV6_LITERAL_MAX_CHARS || !memchr(s + 1, ':', in) ||
		    set_host(host, is_ip, s + 1, in) < 0 || !*is_ip)
			return -1;
		rest = close + 1;
		rn = n - in - 2;
	} else {
		const uint8_t *colon = memchr(s, ':', n);
		size_t hn = colon ? (size_t)(colon - s) : n;

		if (set_host(host, is_ip, s, hn) < 0)
			return -1;
		rest = s + hn;
		rn = n - hn;
	}

	if (rn == 0)
		return need_port ? -1 : 0;
	/* ":" then 1-5 digits; an empty port is legal in URIs but no client
	 * sends one, so it is more likely a trick than a request. */
	if (rest[0] != ':' || rn < 2 || rn > 6)
		return -1;
	for (i = 1; i < rn; i++) {
		if (!is_digit(rest[i]))
			return -1;
		port = port * 10 + (unsigned long)(rest[i] - '0');
	}
	return port <= PORT_MAX ? 0 : -1;
}

/* What the request line and headers have told us so far. */
struct http_state {
	bool http11;
	bool have_target_host;
	bool have_host_header;
	char target_host[EGD_HOST_MAX];
	int target_is_ip;
};

/*
 * "METHOD SP target SP HTTP/1.x", CRLF already removed. Returns 1 for the
 * HTTP/2 preface (nothing more to learn), 0 to go on, or -1 with @out failed.
 */
static int parse_request_line(const uint8_t *l, size_t n, struct http_state *st,
			      struct egd_sniff_out *out)
{
	static const char scheme[] = "http://";
	const size_t scheme_len = sizeof(scheme) - 1;
	const uint8_t *target, *version;
	size_t m = 0, t = 0;

	while (m < n && is_upper(l[m]))
		m++;
	if (m == 0 || m > HTTP_METHOD_MAX_CHARS || m == n || l[m] != ' ')
		return reject(out, "bad request line");
	target = l + m + 1;
	while (m + 1 + t < n && is_vchar(target[t]))
		t++;
	if (t == 0 || m + 1 + t + 1 + HTTP_VERSION_CHARS != n || target[t] != ' ')
		return reject(out, "bad request line");
	version = target + t + 1;

	if (m == 3 && !memcmp(l, "PRI", 3) && t == 1 && target[0] == '*' &&
	    !memcmp(version, "HTTP/2.0", HTTP_VERSION_CHARS))
		return 1;
	if (!memcmp(version, "HTTP/1.1", HTTP_VERSION_CHARS))
		st->http11 = true;
	else if (memcmp(version, "HTTP/1.0", HTTP_VERSION_CHARS))
		return reject(out, "bad version");

	if (target[0] == '/')
		return 0;
	if (t == 1 && target[0] == '*')
		return m == 7 && !memcmp(l, "OPTIONS", 7) ? 0 : reject(out, "bad target");
	if (m == 7 && !memcmp(l, "CONNECT", 7)) {
		/* Authority-form: the target is where the client wants a tunnel. */
		if (parse_authority(target, t, true, st->target_host, &st->target_is_ip) < 0)
			return reject(out, "bad host");
		st->have_target_host = true;
		return 0;
	}
	if (t > scheme_len && ascii_caseeq(target, scheme, scheme_len)) {
		/* Absolute-form: the authority runs to the path, query or fragment. */
		const uint8_t *a = target + scheme_len;
		size_t an = 0;

		while (scheme_len + an < t && !strchr("/?#", a[an]))
			an++;
		if (parse_authority(a, an, false, st->target_host, &st->target_is_ip) < 0)
			return reject(out, "bad host");
		st->have_target_host = true;
		return 0;
	}
	return reject(out, "bad target");
}

/* "name: value", CRLF removed. Returns 0, or -1 with @out failed. */
static int parse_header(const uint8_t *l, size_t n, struct http_state *st,
			struct egd_sniff_out *out)
{
	char host[EGD_HOST_MAX];
	int is_ip = 0;
	size_t k = 0, v, e;

	/* RFC 9112 5.2: obsolete line folding; a proxy and a server would
	 * disagree about whether it continues the previous value. */
	if (is_ows(l[0]))
		return reject(out, "obs-fold");
	/* RFC 9112 5.1: no whitespace before the colon. */
	while (k < n && is_tchar(l[k]))
		k++;
	if (k == 0 || k == n || l[k] != ':')
		return reject(out, "bad header");
	for (v = k + 1; v < n; v++) {
		if ((l[v] < 0x20 && l[v] != '\t') || l[v] == 0x7f)
			return reject(out, "bad header");
	}
	if (k != 4 || !ascii_caseeq(l, "host", 4))
		return 0;

	if (st->have_host_header)
		return reject(out, "duplicate host");
	st->have_host_header = true;
	for (v = k + 1; v < n && is_ows(l[v]); v++)
		;
	for (e = n; e > v && is_ows(l[e - 1]); e--)
		;
	/* RFC 9112 3.2: an empty Host is allowed when the target has none. */
	if (v == e)
		return st->have_target_host ? reject(out, "host mismatch") : 0;
	if (parse_authority(l + v, e - v, false, host, &is_ip) < 0)
		return reject(out, "bad host");
	if (st->have_target_host && strcmp(host, st->target_host))
		return reject(out, "host mismatch");
	memcpy(out->host, host, sizeof(host));
	out->host_is_ip = is_ip;
	return 0;
}

/*
 * Line endings are strictly CRLF. RFC 9112 2.2 lets a server accept a bare LF,
 * but a sniffer that splits lines differently from the upstream is how
 * request smuggling starts, so a bare LF (or a CR inside a line) is an error.
 */
enum egd_sniff_status egd_sniff_http(const uint8_t *buf, size_t len, struct egd_sniff_out *out)
{
	size_t lim = len < HTTP_SNIFF_MAX_BYTES ? len : HTTP_SNIFF_MAX_BYTES;
	struct http_state st = { 0 };
	bool first = true;
	size_t off = 0;

	memset(out, 0, sizeof(*out));
	out->proto = EGD_PROTO_HTTP;

	for (;;) {
		const uint8_t *lf = memchr(buf + off, '\n', lim - off);
		size_t end, n;

		if (!lf)
			return len >= HTTP_SNIFF_MAX_BYTES ? fail(out, "oversize") : EGD_SNIFF_MORE;
		end = (size_t)(lf - buf);
		if (end == off || buf[end - 1] != '\r')
			return fail(out, "bare lf");
		n = end - 1 - off;

		if (first) {
			int r = parse_request_line(buf + off, n, &st, out);

			if (r < 0)
				return EGD_SNIFF_DONE;
			if (r > 0) /* HTTP/2 prior knowledge: no Host to read */
				return EGD_SNIFF_DONE;
			first = false;
		} else if (n == 0) {
			break;
		} else if (parse_header(buf + off, n, &st, out) < 0) {
			return EGD_SNIFF_DONE;
		}
		off = end + 1;
	}

	if (st.have_target_host) {
		memcpy(out->host, st.target_host, sizeof(out->host));
		out->host_is_ip = st.target_is_ip;
	} else if (!st.have_host_header && st.http11) {
		/* RFC 9112 3.2: an HTTP/1.1 request without Host is invalid. */
		return fail(out, "missing host");
	}
	return EGD_SNIFF_DONE;
}

/* --- dispatch ---------------------------------------------------------------- */

enum egd_sniff_status egd_sniff(const uint8_t *buf, size_t len, struct egd_sniff_out *out)
{
	memset(out, 0, sizeof(*out));
	if (len == 0)
		return EGD_SNIFF_MORE;
	/* An SSLv2-style hello starts with a length byte; it is not TLS we can read. */
	if (buf[0] == TLS_CONTENT_HANDSHAKE)
		return egd_sniff_tls(buf, len, out);
	for (size_t i = 0; i < len; i++) {
		if (buf[i] == ' ' && i > 0)
			return egd_sniff_http(buf, len, out);
		if (!is_upper(buf[i]) || i == HTTP_METHOD_MAX_CHARS)
			return EGD_SNIFF_DONE;
	}
	/* Still a possible method name. */
	return EGD_SNIFF_MORE;
}

/*
 * If the bytes already hold a complete answer, that answer stands: finishing
 * never knows less than sniffing. Otherwise the message was cut short and no
 * host is named from a part of it.
 */
void egd_sniff_finish(const uint8_t *buf, size_t len, struct egd_sniff_out *out)
{
	if (egd_sniff(buf, len, out) == EGD_SNIFF_DONE)
		return;
	memset(out, 0, sizeof(*out));
	if (len == 0)
		return;
	/* egd_sniff() only waits on a TLS record or an HTTP method. */
	out->proto = buf[0] == TLS_CONTENT_HANDSHAKE ? EGD_PROTO_TLS : EGD_PROTO_HTTP;
	out->error = "truncated";
}
