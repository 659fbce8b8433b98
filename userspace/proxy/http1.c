/* SPDX-License-Identifier: MIT */
/*
 * The HTTP/1.1 parser and serializers declared in http1.h. The header block
 * is accumulated whole (bounded by EGD_HTTP_HEADERS_MAX_BYTES) and then
 * validated line by line: a two-step design that keeps the strict checks in
 * one readable place. The body is decoded by a small state machine, so any
 * split of the input gives the same result.
 */
#include "proxy/http1.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

#include "core/grow.h"

/* First allocation of the header buffer; it grows by doubling. */
#define HEAD_INITIAL_BYTES 2048
/* Empty lines tolerated before a request line (RFC 9112 2.2), e.g. the
 * CRLF some clients send after a POST body. */
#define LEADING_CRLF_MAX 8
/* Content-Length digits: 19 decimal digits always fit in int64_t. */
#define CONTENT_LENGTH_MAX_DIGITS 18
/* Chunk size hex digits: 15 keep the value below 2^60, no overflow. */
#define CHUNK_SIZE_MAX_DIGITS 15

enum state {
	ST_HEAD = 0,
	ST_BODY_LENGTH,
	ST_CHUNK_SIZE,
	ST_CHUNK_DATA,
	ST_CHUNK_DATA_CR,
	ST_CHUNK_DATA_LF,
	ST_TRAILERS,
	ST_BODY_EOF,
	ST_DONE,
	ST_ERROR,
};

/* A growing byte buffer with a hard limit. */
struct block {
	char *buf;
	size_t len;
	size_t cap;
};

struct egd_http_parser {
	enum egd_http_kind kind;
	enum state st;
	size_t max_body;
	int no_body;
	egd_http_body_cb body_cb;
	void *body_ctx;

	struct egd_http_msg msg;
	struct block head;
	struct block trailer;
	size_t leading_crlf;
	struct egd_http_header hdrs[EGD_HTTP_HEADERS_MAX_COUNT];
	struct egd_http_header trls[EGD_HTTP_HEADERS_MAX_COUNT];

	uint64_t remaining; /* of the Content-Length body or of the chunk */
	char line[EGD_HTTP_CHUNK_LINE_MAX_BYTES];
	size_t line_len;

	uint8_t *body;
	size_t body_len;
	size_t body_cap;
	size_t body_total; /* decoded bytes, also when given to the callback */

	int err_status;
	const char *err_reason;
};

static int fail(struct egd_http_parser *p, int err, int status, const char *reason)
{
	p->st = ST_ERROR;
	p->err_status = status;
	p->err_reason = reason;
	return err;
}

static int bad(struct egd_http_parser *p, const char *reason)
{
	return fail(p, -EBADMSG, 400, reason);
}

struct egd_http_parser *egd_http_parser_new(enum egd_http_kind kind, size_t max_body_bytes)
{
	struct egd_http_parser *p = calloc(1, sizeof(*p));

	if (!p)
		return NULL;
	p->kind = kind;
	p->max_body = max_body_bytes;
	egd_http_parser_reset(p);
	return p;
}

void egd_http_parser_destroy(struct egd_http_parser *p)
{
	if (!p)
		return;
	free(p->head.buf);
	free(p->trailer.buf);
	free(p->body);
	free(p);
}

void egd_http_parser_set_body_cb(struct egd_http_parser *p, egd_http_body_cb cb, void *ctx)
{
	p->body_cb = cb;
	p->body_ctx = ctx;
}

void egd_http_parser_expect_no_body(struct egd_http_parser *p)
{
	p->no_body = 1;
}

void egd_http_parser_reset(struct egd_http_parser *p)
{
	/* Buffers are kept for the next message on the connection; only the
	 * no-body flag is per message. */
	p->st = ST_HEAD;
	p->no_body = 0;
	memset(&p->msg, 0, sizeof(p->msg));
	p->msg.kind = p->kind;
	p->msg.content_length = -1;
	p->head.len = 0;
	p->trailer.len = 0;
	p->leading_crlf = 0;
	p->remaining = 0;
	p->line_len = 0;
	p->body_len = 0;
	p->body_total = 0;
	p->err_status = 0;
	p->err_reason = NULL;
}

const struct egd_http_msg *egd_http_parser_msg(const struct egd_http_parser *p)
{
	return &p->msg;
}

int egd_http_parser_status(const struct egd_http_parser *p)
{
	return p->err_status;
}

const char *egd_http_parser_error(const struct egd_http_parser *p)
{
	return p->err_reason ? p->err_reason : "";
}

/* Append up to what @limit allows; returns how many bytes were taken. */
static size_t block_append(struct block *b, const uint8_t *data, size_t len, size_t limit)
{
	size_t room = limit > b->len ? limit - b->len : 0;
	size_t n = len < room ? len : room;

	if (b->len + n + 1 > b->cap) {
		char *nb = egd_grow(b->buf, &b->cap, b->len + n + 1, HEAD_INITIAL_BYTES);

		if (!nb)
			return (size_t)-1;
		b->buf = nb;
	}
	memcpy(b->buf + b->len, data, n);
	b->len += n;
	b->buf[b->len] = '\0';
	return n;
}

/*
 * End of a header section in @b, searching from @from: the offset just past
 * the empty line, or 0. A bare LF counts here so that a client using bare
 * LFs gets a prompt 400 from the line checks instead of a 431 later.
 */
static size_t find_blank_line(const struct block *b, size_t from)
{
	for (size_t i = from; i < b->len; i++) {
		if (b->buf[i] != '\n')
			continue;
		if (i + 1 < b->len && b->buf[i + 1] == '\n')
			return i + 2;
		if (i + 2 < b->len && b->buf[i + 1] == '\r' && b->buf[i + 2] == '\n')
			return i + 3;
	}
	return 0;
}

/* RFC 9110 tchar. */
static int is_tchar(unsigned char c)
{
	return isalnum(c) || (c && strchr("!#$%&'*+-.^_`|~", c));
}

/* Field value characters: VCHAR, SP, HTAB and obs-text; no other CTLs. */
static int is_field_char(unsigned char c)
{
	return c == '\t' || (c >= 0x20 && c != 0x7f);
}

/*
 * Split the header lines of @buf[0..len) (each ending in CRLF, the last one
 * empty) into @out, writing NULs in place. Returns the count or a negative
 * errno via fail().
 */
static int parse_fields(struct egd_http_parser *p, char *buf, size_t len,
			struct egd_http_header *out, size_t *count)
{
	size_t n = 0;
	char *s = buf, *end = buf + len;

	for (;;) {
		char *eol = memchr(s, '\n', (size_t)(end - s));
		char *colon, *v, *ve;

		if (!eol || eol == s || eol[-1] != '\r')
			return bad(p, "bare LF in header section");
		if (eol - 1 == s)
			break; /* the empty line */
		if (*s == ' ' || *s == '\t')
			return bad(p, "obsolete line folding");
		for (colon = s; colon < eol - 1 && is_tchar((unsigned char)*colon); colon++)
			;
		if (colon == s || *colon != ':')
			return bad(p, "malformed header name");
		if (n == EGD_HTTP_HEADERS_MAX_COUNT)
			return fail(p, -EMSGSIZE, 431, "too many headers");
		*colon = '\0';
		v = colon + 1;
		ve = eol - 1;
		for (char *c = v; c < ve; c++)
			if (!is_field_char((unsigned char)*c))
				return bad(p, "control character in header value");
		while (v < ve && (*v == ' ' || *v == '\t'))
			v++;
		while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
			ve--;
		*ve = '\0';
		out[n].name = s;
		out[n].value = v;
		n++;
		s = eol + 1;
	}
	*count = n;
	return 0;
}

static int parse_version(const char *s, int *minor)
{
	if (strncmp(s, "HTTP/1.", 7) || (s[7] != '0' && s[7] != '1'))
		return -1;
	*minor = s[7] - '0';
	return 0;
}

static int parse_request_line(struct egd_http_parser *p, char *line)
{
	char *sp1 = strchr(line, ' '), *sp2;
	size_t mlen;

	if (!sp1)
		return bad(p, "malformed request line");
	mlen = (size_t)(sp1 - line);
	if (!mlen || mlen >= sizeof(p->msg.method))
		return bad(p, "malformed method");
	for (size_t i = 0; i < mlen; i++)
		if (!is_tchar((unsigned char)line[i]))
			return bad(p, "malformed method");
	memcpy(p->msg.method, line, mlen);
	p->msg.method[mlen] = '\0';

	sp2 = strchr(sp1 + 1, ' ');
	if (!sp2 || sp2 == sp1 + 1)
		return bad(p, "malformed request line");
	for (char *c = sp1 + 1; c < sp2; c++)
		if ((unsigned char)*c <= 0x20 || (unsigned char)*c >= 0x7f)
			return bad(p, "malformed request target");
	*sp2 = '\0';
	p->msg.target = sp1 + 1;
	if (strlen(sp2 + 1) != 8 || strncmp(sp2 + 1, "HTTP/", 5))
		return bad(p, "malformed HTTP version");
	if (parse_version(sp2 + 1, &p->msg.version_minor))
		return fail(p, -EPROTONOSUPPORT, 505, "unsupported HTTP version");
	return 0;
}

static int parse_status_line(struct egd_http_parser *p, char *line)
{
	char *s;

	if (strlen(line) < 12 || line[8] != ' ' || strncmp(line, "HTTP/", 5))
		return bad(p, "malformed status line");
	line[8] = '\0';
	if (parse_version(line, &p->msg.version_minor))
		return fail(p, -EPROTONOSUPPORT, 502, "unsupported HTTP version");
	s = line + 9;
	if (!isdigit((unsigned char)s[0]) || !isdigit((unsigned char)s[1]) ||
	    !isdigit((unsigned char)s[2]) || (s[3] != ' ' && s[3] != '\0'))
		return bad(p, "malformed status code");
	p->msg.status = (s[0] - '0') * 100 + (s[1] - '0') * 10 + (s[2] - '0');
	if (p->msg.status < 100)
		return bad(p, "malformed status code");
	p->msg.reason = s[3] ? s + 4 : s + 3;
	for (const char *c = p->msg.reason; *c; c++)
		if (!is_field_char((unsigned char)*c))
			return bad(p, "control character in reason");
	return 0;
}

static int parse_content_length(const char *v, int64_t *out)
{
	int64_t n = 0;
	size_t len = strlen(v);

	if (!len || len > CONTENT_LENGTH_MAX_DIGITS)
		return -1;
	for (size_t i = 0; i < len; i++) {
		if (!isdigit((unsigned char)v[i]))
			return -1;
		n = n * 10 + (v[i] - '0');
	}
	*out = n;
	return 0;
}

/* The status code of an error found while validating the header block. */
static int head_status(const struct egd_http_parser *p, int request_status)
{
	/* A broken upstream answer is the upstream's fault: 502 for the agent. */
	return p->kind == EGD_HTTP_REQUEST ? request_status : 502;
}

/* Framing and connection semantics from the validated headers. */
static int frame_message(struct egd_http_parser *p)
{
	struct egd_http_msg *m = &p->msg;
	size_t ncl = egd_http_header_count(m, "Content-Length");
	size_t nte = egd_http_header_count(m, "Transfer-Encoding");
	int is_req = p->kind == EGD_HTTP_REQUEST;

	if (is_req && m->version_minor == 1 && egd_http_header_count(m, "Host") != 1)
		return bad(p, "HTTP/1.1 request needs exactly one Host");
	if (!is_req && m->version_minor == 0 && nte)
		return bad(p, "Transfer-Encoding on HTTP/1.0");
	if (ncl > 1)
		return bad(p, "duplicate Content-Length");
	if (ncl && nte)
		return bad(p, "Content-Length with Transfer-Encoding");
	if (ncl && parse_content_length(egd_http_header_get(m, "Content-Length"),
					&m->content_length))
		return bad(p, "invalid Content-Length");
	if (nte) {
		/* Only a single "chunked" is understood; anything we cannot
		 * decode exactly as the upstream would is refused. */
		if (nte > 1 || strcasecmp(egd_http_header_get(m, "Transfer-Encoding"), "chunked"))
			return fail(p, -ENOSYS, head_status(p, 501), "unsupported transfer coding");
		if (is_req && m->version_minor == 0)
			return bad(p, "Transfer-Encoding on HTTP/1.0");
		m->chunked = 1;
	}

	if (m->version_minor == 1)
		m->keep_alive = !egd_http_header_has_token(m, "Connection", "close");
	else
		m->keep_alive = egd_http_header_has_token(m, "Connection", "keep-alive");

	if (!is_req && (p->no_body || m->status < 200 || m->status == 204 || m->status == 304)) {
		m->chunked = 0;
		p->st = ST_DONE;
		return 0;
	}
	if (m->chunked) {
		p->st = ST_CHUNK_SIZE;
	} else if (m->content_length >= 0) {
		if ((uint64_t)m->content_length > p->max_body)
			return fail(p, -EFBIG, head_status(p, 413), "body too large");
		p->remaining = (uint64_t)m->content_length;
		p->st = p->remaining ? ST_BODY_LENGTH : ST_DONE;
	} else if (is_req) {
		p->st = ST_DONE; /* a request without framing has no body */
	} else {
		m->until_eof = 1;
		m->keep_alive = 0;
		p->st = ST_BODY_EOF;
	}
	return 0;
}

static int parse_head(struct egd_http_parser *p)
{
	char *buf = p->head.buf, *eol;
	size_t n;
	int err;

	eol = strchr(buf, '\n');
	if (!eol || eol == buf || eol[-1] != '\r')
		return bad(p, "bare LF in start line");
	eol[-1] = '\0';
	if (memchr(buf, '\r', (size_t)(eol - 1 - buf)))
		return bad(p, "bare CR in start line");
	err = p->kind == EGD_HTTP_REQUEST ? parse_request_line(p, buf) :
					    parse_status_line(p, buf);
	if (err)
		return err;
	err = parse_fields(p, eol + 1, p->head.len - (size_t)(eol + 1 - buf), p->hdrs, &n);
	if (err) {
		if (p->kind == EGD_HTTP_RESPONSE)
			p->err_status = 502;
		return err;
	}
	p->msg.headers = p->hdrs;
	p->msg.nheaders = n;
	err = frame_message(p);
	if (err && p->kind == EGD_HTTP_RESPONSE)
		p->err_status = 502;
	return err;
}

static int body_add(struct egd_http_parser *p, const uint8_t *data, size_t len)
{
	if (!len)
		return 0;
	if (len > p->max_body - p->body_total)
		return fail(p, -EFBIG, head_status(p, 413), "body too large");
	p->body_total += len;
	if (p->body_cb) {
		int err = p->body_cb(p->body_ctx, data, len);

		return err ? fail(p, err < 0 ? err : -ECANCELED, 500, "body callback failed") : 0;
	}
	if (p->body_len + len + 1 > p->body_cap) {
		uint8_t *nb = egd_grow(p->body, &p->body_cap, p->body_len + len + 1,
				       HEAD_INITIAL_BYTES);

		if (!nb)
			return fail(p, -ENOMEM, 500, "out of memory");
		p->body = nb;
	}
	memcpy(p->body + p->body_len, data, len);
	p->body_len += len;
	p->body[p->body_len] = '\0';
	return 0;
}

static void finish(struct egd_http_parser *p)
{
	p->st = ST_DONE;
	p->msg.body = p->body ? p->body : (const uint8_t *)"";
	p->msg.body_len = p->body_cb ? 0 : p->body_len;
}

/* Parse the chunk-size line collected in p->line (CRLF removed). */
static int parse_chunk_size(struct egd_http_parser *p)
{
	uint64_t n = 0;
	size_t i;

	for (i = 0; i < p->line_len && isxdigit((unsigned char)p->line[i]); i++) {
		if (i == CHUNK_SIZE_MAX_DIGITS)
			return bad(p, "chunk size too large");
		n = n * 16 + (uint64_t)(isdigit((unsigned char)p->line[i]) ?
						p->line[i] - '0' :
						(tolower((unsigned char)p->line[i]) - 'a' + 10));
	}
	if (!i)
		return bad(p, "malformed chunk size");
	/* Chunk extensions are ignored, but must be made of sane bytes. */
	while (i < p->line_len && (p->line[i] == ' ' || p->line[i] == '\t'))
		i++;
	if (i < p->line_len && p->line[i] != ';')
		return bad(p, "malformed chunk size");
	for (; i < p->line_len; i++)
		if (!is_field_char((unsigned char)p->line[i]))
			return bad(p, "control character in chunk extension");
	if (n > p->max_body - p->body_total)
		return fail(p, -EFBIG, head_status(p, 413), "body too large");
	p->remaining = n;
	p->st = n ? ST_CHUNK_DATA : ST_TRAILERS;
	return 0;
}

static int parse_trailers(struct egd_http_parser *p)
{
	size_t n = 0;
	int err;

	/* The trailer section is only the empty line in most messages. */
	if (p->trailer.len == 2) {
		finish(p);
		return 0;
	}
	err = parse_fields(p, p->trailer.buf, p->trailer.len, p->trls, &n);
	if (err) {
		if (p->kind == EGD_HTTP_RESPONSE)
			p->err_status = 502;
		return err;
	}
	p->msg.trailers = p->trls;
	p->msg.ntrailers = n;
	finish(p);
	return 0;
}

int egd_http_parse(struct egd_http_parser *p, const uint8_t *buf, size_t len, size_t *consumed)
{
	size_t i = 0;
	int err;

	*consumed = 0;
	if (p->st == ST_ERROR)
		return -EBADMSG;
	if (p->st == ST_DONE)
		return EGD_HTTP_DONE;

	if (p->st == ST_HEAD) {
		size_t old, took, end;

		if (p->kind == EGD_HTTP_REQUEST) {
			while (!p->head.len && i < len && (buf[i] == '\r' || buf[i] == '\n')) {
				if (buf[i] == '\n' && ++p->leading_crlf > LEADING_CRLF_MAX)
					return bad(p, "too many empty lines");
				i++;
			}
		}
		if (i == len) {
			*consumed = len;
			return EGD_HTTP_MORE;
		}
		old = p->head.len;
		took = block_append(&p->head, buf + i, len - i, EGD_HTTP_HEADERS_MAX_BYTES);
		if (took == (size_t)-1)
			return fail(p, -ENOMEM, 500, "out of memory");
		end = find_blank_line(&p->head, old > 2 ? old - 2 : 0);
		if (!end) {
			if (p->head.len >= EGD_HTTP_HEADERS_MAX_BYTES)
				return fail(p, -EMSGSIZE, head_status(p, 431),
					    "header section too large");
			*consumed = len;
			return EGD_HTTP_MORE;
		}
		/* Give back what was copied past the end of the headers. */
		i += end - old;
		p->head.len = end;
		p->head.buf[end] = '\0';
		err = parse_head(p);
		if (err)
			return err;
		*consumed = i;
		if (p->st == ST_DONE)
			finish(p);
		return p->st == ST_DONE ? EGD_HTTP_DONE : EGD_HTTP_HEADERS;
	}

	while (i < len && p->st != ST_DONE) {
		switch (p->st) {
		case ST_BODY_LENGTH:
		case ST_CHUNK_DATA: {
			size_t n = len - i;

			if (n > p->remaining)
				n = (size_t)p->remaining;
			err = body_add(p, buf + i, n);
			if (err)
				return err;
			i += n;
			p->remaining -= n;
			if (!p->remaining) {
				if (p->st == ST_BODY_LENGTH)
					finish(p);
				else
					p->st = ST_CHUNK_DATA_CR;
			}
			break;
		}
		case ST_CHUNK_DATA_CR:
			if (buf[i++] != '\r')
				return bad(p, "chunk data not followed by CRLF");
			p->st = ST_CHUNK_DATA_LF;
			break;
		case ST_CHUNK_DATA_LF:
			if (buf[i++] != '\n')
				return bad(p, "chunk data not followed by CRLF");
			p->line_len = 0;
			p->st = ST_CHUNK_SIZE;
			break;
		case ST_CHUNK_SIZE: {
			uint8_t c = buf[i++];

			if (c == '\n') {
				if (!p->line_len || p->line[p->line_len - 1] != '\r')
					return bad(p, "bare LF in chunk size");
				p->line_len--;
				err = parse_chunk_size(p);
				if (err)
					return err;
				p->line_len = 0;
				break;
			}
			if (p->line_len && p->line[p->line_len - 1] == '\r')
				return bad(p, "bare CR in chunk size");
			if (p->line_len == sizeof(p->line))
				return bad(p, "chunk size line too long");
			p->line[p->line_len++] = (char)c;
			break;
		}
		case ST_TRAILERS: {
			size_t old = p->trailer.len, took, end, limit;

			/* Trailers share the header budget of the message. */
			limit = EGD_HTTP_HEADERS_MAX_BYTES - p->head.len;
			took = block_append(&p->trailer, buf + i, len - i, limit);
			if (took == (size_t)-1)
				return fail(p, -ENOMEM, 500, "out of memory");
			if (p->trailer.len >= 2 && !memcmp(p->trailer.buf, "\r\n", 2))
				end = 2;
			else if (p->trailer.buf[0] == '\n' ||
				 (p->trailer.len >= 2 && p->trailer.buf[0] == '\r'))
				return bad(p, "bare LF or CR in trailer section");
			else
				end = find_blank_line(&p->trailer, old > 2 ? old - 2 : 0);
			if (!end) {
				if (p->trailer.len >= limit)
					return fail(p, -EMSGSIZE, head_status(p, 431),
						    "trailer section too large");
				i += took;
				break;
			}
			i += end - old;
			p->trailer.len = end;
			p->trailer.buf[end] = '\0';
			err = parse_trailers(p);
			if (err)
				return err;
			break;
		}
		case ST_BODY_EOF:
			err = body_add(p, buf + i, len - i);
			if (err)
				return err;
			i = len;
			break;
		default:
			return bad(p, "parser state");
		}
	}
	*consumed = i;
	return p->st == ST_DONE ? EGD_HTTP_DONE : EGD_HTTP_MORE;
}

int egd_http_parse_eof(struct egd_http_parser *p)
{
	if (p->st == ST_BODY_EOF) {
		finish(p);
		return EGD_HTTP_DONE;
	}
	if (p->st == ST_DONE)
		return EGD_HTTP_DONE;
	if (p->st == ST_HEAD && !p->head.len)
		return EGD_HTTP_MORE;
	if (p->st == ST_ERROR)
		return -EBADMSG;
	return fail(p, -EBADMSG, p->kind == EGD_HTTP_REQUEST ? 400 : 502, "truncated message");
}

const char *egd_http_header_get(const struct egd_http_msg *m, const char *name)
{
	for (size_t i = 0; i < m->nheaders; i++)
		if (!strcasecmp(m->headers[i].name, name))
			return m->headers[i].value;
	return NULL;
}

size_t egd_http_header_count(const struct egd_http_msg *m, const char *name)
{
	size_t n = 0;

	for (size_t i = 0; i < m->nheaders; i++)
		n += !strcasecmp(m->headers[i].name, name);
	return n;
}

int egd_http_header_has_token(const struct egd_http_msg *m, const char *name, const char *token)
{
	size_t tlen = strlen(token);

	for (size_t i = 0; i < m->nheaders; i++) {
		const char *s = m->headers[i].value;

		if (strcasecmp(m->headers[i].name, name))
			continue;
		while (*s) {
			const char *e;
			size_t n;

			while (*s == ' ' || *s == '\t' || *s == ',')
				s++;
			e = s;
			while (*e && *e != ',')
				e++;
			n = (size_t)(e - s);
			while (n && (s[n - 1] == ' ' || s[n - 1] == '\t'))
				n--;
			if (n == tlen && !strncasecmp(s, token, n))
				return 1;
			s = e;
		}
	}
	return 0;
}

const char *egd_http_reason(int status)
{
	switch (status) {
	case 100: return "Continue";
	case 200: return "OK";
	case 201: return "Created";
	case 204: return "No Content";
	case 400: return "Bad Request";
	case 401: return "Unauthorized";
	case 402: return "Payment Required";
	case 403: return "Forbidden";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 408: return "Request Timeout";
	case 411: return "Length Required";
	case 413: return "Content Too Large";
	case 421: return "Misdirected Request";
	case 422: return "Unprocessable Content";
	case 429: return "Too Many Requests";
	case 431: return "Request Header Fields Too Large";
	case 500: return "Internal Server Error";
	case 501: return "Not Implemented";
	case 502: return "Bad Gateway";
	case 503: return "Service Unavailable";
	case 504: return "Gateway Timeout";
	case 505: return "HTTP Version Not Supported";
	default: return "Unknown";
	}
}

/* printf into a fresh buffer, then room for @extra more bytes. */
static char *vformat(size_t extra, size_t *len, const char *fmt, ...)
{
	va_list ap;
	char *s;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0)
		return NULL;
	s = malloc((size_t)n + extra + 1);
	if (!s)
		return NULL;
	va_start(ap, fmt);
	vsnprintf(s, (size_t)n + 1, fmt, ap);
	va_end(ap);
	*len = (size_t)n;
	return s;
}

static int status_ok(int status)
{
	return status >= 100 && status <= 999;
}

char *egd_http_response(int status, const char *content_type, const void *body, size_t body_len,
			int keep_alive, size_t *out_len)
{
	size_t n;
	char *s;

	if (!status_ok(status) || strpbrk(content_type, "\r\n")) {
		errno = EINVAL;
		return NULL;
	}
	s = vformat(body_len, &n,
		    "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
		    "Connection: %s\r\n\r\n",
		    status, egd_http_reason(status), content_type, body_len,
		    keep_alive ? "keep-alive" : "close");
	if (!s)
		return NULL;
	if (body_len)
		memcpy(s + n, body, body_len);
	*out_len = n + body_len;
	s[*out_len] = '\0';
	return s;
}

char *egd_http_response_detail(int status, const char *detail, int keep_alive, size_t *out_len)
{
	json_t *o = json_pack("{s:s}", "detail", detail);
	char *body, *s;

	if (!o) {
		errno = EINVAL;
		return NULL;
	}
	body = json_dumps(o, JSON_COMPACT);
	json_decref(o);
	if (!body) {
		errno = ENOMEM;
		return NULL;
	}
	s = egd_http_response(status, "application/json", body, strlen(body), keep_alive, out_len);
	free(body);
	return s;
}

char *egd_http_response_head_chunked(int status, const char *content_type, int keep_alive,
				     size_t *out_len)
{
	if (!status_ok(status) || strpbrk(content_type, "\r\n")) {
		errno = EINVAL;
		return NULL;
	}
	return vformat(0, out_len,
		       "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nTransfer-Encoding: chunked\r\n"
		       "Cache-Control: no-cache\r\nConnection: %s\r\n\r\n",
		       status, egd_http_reason(status), content_type,
		       keep_alive ? "keep-alive" : "close");
}

static int header_safe(const char *s)
{
	for (; *s; s++)
		if (*s == '\r' || *s == '\n')
			return 0;
	return 1;
}

char *egd_http_request(const char *method, const char *host, const char *path,
		       const struct egd_http_header *headers, size_t n, const void *body,
		       size_t body_len, size_t *out_len)
{
	size_t total, off;
	char *s, *hdr;

	if (!header_safe(method) || !header_safe(host) || !header_safe(path) || strchr(path, ' ') ||
	    strchr(method, ' ')) {
		errno = EINVAL;
		return NULL;
	}
	total = 0;
	for (size_t i = 0; i < n; i++) {
		if (!header_safe(headers[i].name) || !header_safe(headers[i].value) ||
		    strchr(headers[i].name, ':')) {
			errno = EINVAL;
			return NULL;
		}
		total += strlen(headers[i].name) + strlen(headers[i].value) + 4;
	}
	hdr = vformat(total + body_len + 2, &off,
		      "%s %s HTTP/1.1\r\nHost: %s\r\nContent-Length: %zu\r\n", method, path, host,
		      body_len);
	if (!hdr)
		return NULL;
	s = hdr;
	for (size_t i = 0; i < n; i++)
		off += (size_t)sprintf(s + off, "%s: %s\r\n", headers[i].name, headers[i].value);
	/* Each sprintf NUL is overwritten by what follows; vformat left room
	 * for the blank line, the body and a final NUL. */
	memcpy(s + off, "\r\n", 2);
	off += 2;
	if (body_len)
		memcpy(s + off, body, body_len);
	off += body_len;
	s[off] = '\0';
	*out_len = off;
	return s;
}

size_t egd_http_chunk_head(char out[EGD_HTTP_CHUNK_HDR_MAX_BYTES], size_t len)
{
	return (size_t)snprintf(out, EGD_HTTP_CHUNK_HDR_MAX_BYTES, "%zx\r\n", len);
}

char *egd_http_chunk_encode(const void *data, size_t len, size_t *out_len)
{
	char head[EGD_HTTP_CHUNK_HDR_MAX_BYTES];
	size_t hlen = egd_http_chunk_head(head, len);
	char *s = malloc(hlen + len + 3);

	if (!s)
		return NULL;
	memcpy(s, head, hlen);
	if (len)
		memcpy(s + hlen, data, len);
	memcpy(s + hlen + len, "\r\n", 3);
	*out_len = hlen + len + 2;
	return s;
}
