/* SPDX-License-Identifier: MIT */
/*
 * Strict, incremental HTTP/1.1 message parser and the few serializers the
 * policy proxy needs. One parser per connection direction: the agent side
 * parses requests, the upstream side parses responses. Bytes are fed in
 * whatever chunks the socket produced; the parser copies what it must keep
 * (the header block, bounded) and tells the caller how many bytes it took, so
 * pipelined requests are answered one after the other from the same buffer.
 *
 * Strict means: CRLF line ends only, no obs-fold, no whitespace before the
 * colon, no control characters in values, exactly one Host on HTTP/1.1
 * requests, Content-Length and Transfer-Encoding never together, a single
 * Content-Length, and "chunked" as the only transfer coding. Anything else is
 * refused with the status the caller should answer (egd_http_parser_status()),
 * because the proxy must never interpret a message differently from the
 * upstream it forwards to (request smuggling).
 *
 * No sockets, no globals; allocation only for the header block and, unless a
 * body callback is set, the body.
 */
#ifndef EGD_PROXY_HTTP1_H
#define EGD_PROXY_HTTP1_H

#include <stddef.h>
#include <stdint.h>

/* Request line plus all headers (and, on a chunked body, the trailers). Same
 * figure as the usual front-end defaults; far above what an SDK sends. */
#define EGD_HTTP_HEADERS_MAX_BYTES (64 * 1024)
/* More header lines than this is an attack, not a client. */
#define EGD_HTTP_HEADERS_MAX_COUNT 256
/* Default for MAX_REQUEST_BYTES: the reference proxy's request body limit. */
#define EGD_HTTP_BODY_DEFAULT_MAX_BYTES (10 * 1024 * 1024)
/* A chunk-size line: 16 hex digits plus extensions we skip over. */
#define EGD_HTTP_CHUNK_LINE_MAX_BYTES 1024
/* Enough for "%zx\r\n" of any size_t. */
#define EGD_HTTP_CHUNK_HDR_MAX_BYTES 20
/* Method token length: the proxy only knows GET and POST; room for others. */
#define EGD_HTTP_METHOD_MAX_BYTES 32

enum egd_http_kind {
	EGD_HTTP_REQUEST = 0,
	EGD_HTTP_RESPONSE,
};

/* Return values of egd_http_parse() besides a negative errno. */
enum egd_http_result {
	EGD_HTTP_MORE = 0,    /* every byte taken; feed more */
	/* Header block complete and a body follows: the caller may look at
	 * the headers (Expect, early 413) and then feed the rest. A message
	 * without a body goes straight to EGD_HTTP_DONE. */
	EGD_HTTP_HEADERS = 1,
	EGD_HTTP_DONE = 2,    /* message complete; *consumed ends at its last byte */
};

struct egd_http_header {
	const char *name;  /* as sent (case kept), NUL-terminated */
	const char *value; /* leading and trailing whitespace removed */
};

struct egd_http_msg {
	enum egd_http_kind kind;
	/* Request line. */
	char method[EGD_HTTP_METHOD_MAX_BYTES];
	const char *target; /* request-target as sent, query included */
	/* Status line. */
	int status;
	const char *reason;
	int version_minor; /* 0 or 1: HTTP/1.0 or HTTP/1.1 */

	const struct egd_http_header *headers;
	size_t nheaders;
	const struct egd_http_header *trailers;
	size_t ntrailers;

	int chunked;
	/* -1 when the message has no Content-Length header. */
	int64_t content_length;
	/* 1 when the connection may carry another message after this one. */
	int keep_alive;
	/* 1 on a response whose body runs until the connection closes. */
	int until_eof;

	/* The decoded body, when no body callback is set. NUL-terminated for
	 * the convenience of text parsers; body_len excludes the NUL. */
	const uint8_t *body;
	size_t body_len;
};

/* Called with each piece of decoded body, in order, when set. A non-zero
 * return aborts parsing with that (negative errno) value. */
typedef int (*egd_http_body_cb)(void *ctx, const uint8_t *data, size_t len);

struct egd_http_parser;

/* @max_body_bytes bounds the decoded body (413 on a request when exceeded).
 * Returns NULL and sets errno on failure. */
struct egd_http_parser *egd_http_parser_new(enum egd_http_kind kind, size_t max_body_bytes);
void egd_http_parser_destroy(struct egd_http_parser *p);

/* Deliver the body through @cb instead of keeping it (streamed responses). */
void egd_http_parser_set_body_cb(struct egd_http_parser *p, egd_http_body_cb cb, void *ctx);

/* The response answers a HEAD request (or a CONNECT): it has no body
 * whatever its headers say. Call before feeding the response. */
void egd_http_parser_expect_no_body(struct egd_http_parser *p);

/*
 * Feed @len bytes. An interim 1xx response is a complete message of its
 * own: reset and feed the rest for the final response. Sets *consumed to how many were taken (always all of
 * them unless the result is EGD_HTTP_HEADERS or EGD_HTTP_DONE; the rest
 * belongs to the body or to the next message). Returns an egd_http_result,
 * or a negative errno with egd_http_parser_status() telling which answer:
 * -EBADMSG (400), -EMSGSIZE (431, headers), -EFBIG (413, body), -ENOSYS
 * (501, transfer coding), -EPROTONOSUPPORT (505, version). Once an error is
 * returned the connection must be closed after answering.
 */
int egd_http_parse(struct egd_http_parser *p, const uint8_t *buf, size_t len, size_t *consumed);

/* The peer closed the connection. Completes a read-until-close response
 * (EGD_HTTP_DONE); EGD_HTTP_MORE when no message was started; -EBADMSG on a
 * truncated message. */
int egd_http_parse_eof(struct egd_http_parser *p);

/* The message parsed so far; headers are valid from EGD_HTTP_HEADERS on, the
 * body from EGD_HTTP_DONE, until egd_http_parser_reset(). */
const struct egd_http_msg *egd_http_parser_msg(const struct egd_http_parser *p);

/* HTTP status to answer with after an error (400, 413, 431, 501, 505), and a
 * short static reason for the log. */
int egd_http_parser_status(const struct egd_http_parser *p);
const char *egd_http_parser_error(const struct egd_http_parser *p);

/* Forget the finished message and get ready for the next one on the same
 * connection (pipelining, keep-alive). */
void egd_http_parser_reset(struct egd_http_parser *p);

/* First header named @name (case-insensitive) or NULL. */
const char *egd_http_header_get(const struct egd_http_msg *m, const char *name);
/* How many headers are named @name. */
size_t egd_http_header_count(const struct egd_http_msg *m, const char *name);
/* 1 when the comma-separated header @name contains @token (case-insensitive). */
int egd_http_header_has_token(const struct egd_http_msg *m, const char *name, const char *token);

/* The standard reason phrase for @status ("Unknown" when we have none). */
const char *egd_http_reason(int status);

/*
 * A whole response: status line, Content-Type, Content-Length, Connection
 * (keep-alive or close) and @body. Returns a malloc'ed buffer and its length
 * in *out_len, or NULL with errno set.
 */
char *egd_http_response(int status, const char *content_type, const void *body, size_t body_len,
			int keep_alive, size_t *out_len);

/* A JSON error in the reference format, {"detail": @detail}. */
char *egd_http_response_detail(int status, const char *detail, int keep_alive, size_t *out_len);

/* Head of a streamed response: Transfer-Encoding: chunked, no length. */
char *egd_http_response_head_chunked(int status, const char *content_type, int keep_alive,
				     size_t *out_len);

/*
 * A request for the upstream: "@method @path HTTP/1.1", Host, the @n headers
 * given as name/value pairs, Content-Length, then @body. Names and values
 * containing CR, LF or NUL are refused with -EINVAL (NULL, errno) so no
 * caller can inject a header.
 */
char *egd_http_request(const char *method, const char *host, const char *path,
		       const struct egd_http_header *headers, size_t n, const void *body,
		       size_t body_len, size_t *out_len);

/* Chunked encoder: the line that precedes @len bytes of data ("%zx\r\n")
 * written to @out, returning its length. Follow the data with "\r\n". */
size_t egd_http_chunk_head(char out[EGD_HTTP_CHUNK_HDR_MAX_BYTES], size_t len);
/* The data terminator and the last chunk with no trailers. */
#define EGD_HTTP_CHUNK_TAIL "\r\n"
#define EGD_HTTP_CHUNK_LAST "0\r\n\r\n"

/* One whole chunk (head, data, CRLF) in a malloc'ed buffer; NULL + errno. */
char *egd_http_chunk_encode(const void *data, size_t len, size_t *out_len);

#endif /* EGD_PROXY_HTTP1_H */
