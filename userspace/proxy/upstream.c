// SPDX-License-Identifier: MIT
/*
 * The upstream client of the policy proxy; see upstream.h. One connection
 * carries one request at a time (no pipelining towards the upstream: a
 * failure would then be ambiguous for every request queued behind it).
 * Each connection moves through resolve, connect, TLS handshake, active, and
 * idle; while it resolves it waits on the loop's resolver (core/resolve.h)
 * with no watch of its own, after that one egd_watch follows its socket.
 */
#include "proxy/upstream.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "core/log.h"
#include "proxy/sockbio.h"

#define container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

/* One read from the socket; SSL records are at most 16 KiB. */
#define UP_READ_CHUNK_BYTES (16 * 1024)
/* Host header: a DNS name, a colon and a port. */
#define UP_HOST_HEADER_MAX_BYTES 300

enum conn_state { C_RESOLVING, C_CONNECTING, C_HANDSHAKE, C_ACTIVE, C_IDLE };

struct uconn {
	struct egd_upstream *u;
	struct uconn *prev, *next; /* every connection */
	struct uconn *idle_next;
	enum conn_state state;
	struct egd_watch watch;
	uint32_t events;
	int fd;
	SSL *ssl;
	struct egd_resolve_req *rreq; /* while C_RESOLVING */
	struct egd_resolved addrs;
	size_t addr_idx;
	struct egd_timer idle_timer;
	struct egd_upstream_req *req;
	int reused;
	int ssl_want_write;
	int *closed; /* set to 1 by conn_close() while a response is fed */
};

struct egd_upstream_req {
	struct egd_upstream *u;
	struct uconn *c;
	char *out;
	size_t out_len, out_off;
	struct egd_http_parser *parser;
	struct egd_upstream_cbs cbs;
	void *ctx;
	struct egd_timer timer;
	int pending_err; /* reported from the timer, so never inside send() */
	int got_bytes;
	int head_done;
	int retried;
	int idempotent; /* GET or HEAD: safe to send twice (RFC 9110, 9.2.2) */
	int aborted;
};

struct egd_upstream {
	struct egd_loop *loop;
	struct egd_resolver *resolver;
	const struct egd_proxy_config *cfg;
	SSL_CTX *ssl_ctx;
	char host_header[UP_HOST_HEADER_MAX_BYTES];
	int is_ip; /* no SNI for an IP literal (RFC 6066) */
	int fixed; /* UPSTREAM_RESOLVE or an IP literal: never resolve */
	struct egd_resolved addrs;
	unsigned long long addrs_at_ms;
	struct uconn *conns;
	struct uconn *idle;
	size_t nidle;
};

static void conn_cb(struct egd_watch *w, uint32_t events);
static void conn_close(struct uconn *c);
static void req_fail(struct egd_upstream_req *r, int err);
static int conn_start_connect(struct uconn *c);

/* ---- addresses ---------------------------------------------------------- */

static int addr_parse(const char *s, unsigned short port, struct sockaddr_storage *ss,
		      socklen_t *len)
{
	char buf[INET6_ADDRSTRLEN + 2];
	size_t n = strlen(s);
	struct sockaddr_in *in4 = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;

	if (n >= sizeof(buf))
		return -EINVAL;
	if (n > 2 && s[0] == '[' && s[n - 1] == ']') {
		memcpy(buf, s + 1, n - 2);
		buf[n - 2] = 0;
	} else {
		memcpy(buf, s, n + 1);
	}
	memset(ss, 0, sizeof(*ss));
	if (inet_pton(AF_INET, buf, &in4->sin_addr) == 1) {
		in4->sin_family = AF_INET;
		in4->sin_port = htons(port);
		*len = sizeof(*in4);
		return 0;
	}
	if (inet_pton(AF_INET6, buf, &in6->sin6_addr) == 1) {
		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons(port);
		*len = sizeof(*in6);
		return 0;
	}
	return -EINVAL;
}

/*
 * UPSTREAM_RESOLVE as curl's --resolve: "host:port:addr[,addr...]", several
 * entries separated by spaces or semicolons. Only the entry naming our host
 * and port matters. Returns 1 when one was applied, 0 when none matched.
 */
static int resolve_override(struct egd_upstream *u, const char *spec)
{
	char *copy = strdup(spec), *save = NULL, *ent;
	int found = 0, err = 0;

	if (!copy)
		return -ENOMEM;
	for (ent = strtok_r(copy, " ;", &save); ent && !found && !err;
	     ent = strtok_r(NULL, " ;", &save)) {
		char *c1 = strchr(ent, ':'), *c2, *a, *asave = NULL;
		long port;

		if (!c1 || !(c2 = strchr(c1 + 1, ':'))) {
			err = -EINVAL;
			break;
		}
		*c1 = *c2 = 0;
		port = strtol(c1 + 1, NULL, 10);
		if (strcasecmp(ent, u->cfg->upstream_host) || port != u->cfg->upstream_port)
			continue;
		for (a = strtok_r(c2 + 1, ",", &asave); a && u->addrs.n < EGD_RESOLVE_MAX_ADDRS;
		     a = strtok_r(NULL, ",", &asave)) {
			err = addr_parse(a, u->cfg->upstream_port, &u->addrs.addr[u->addrs.n],
					 &u->addrs.len[u->addrs.n]);
			if (err)
				break;
			u->addrs.n++;
		}
		found = !err && u->addrs.n > 0;
		if (!err && !found)
			err = -EINVAL;
	}
	free(copy);
	return err ? err : found;
}

static void dns_done(void *arg, const char *err, const struct egd_resolved *res)
{
	struct uconn *c = arg;
	struct egd_upstream *u = c->u;

	c->rreq = NULL;
	if (err) {
		egd_warn("upstream: cannot resolve %s: %s", u->cfg->upstream_host, err);
		req_fail(c->req, -EHOSTUNREACH);
		return;
	}
	u->addrs = *res;
	u->addrs_at_ms = egd_now_ms();
	c->addrs = *res;
	c->addr_idx = 0;
	if (conn_start_connect(c))
		req_fail(c->req, -EHOSTUNREACH);
}

static int dns_start(struct uconn *c)
{
	struct egd_upstream *u = c->u;

	c->rreq = egd_resolve(u->resolver, u->cfg->upstream_host, htons(u->cfg->upstream_port),
			      dns_done, c);
	if (!c->rreq)
		return -errno;
	c->state = C_RESOLVING;
	return 0;
}

/* ---- TLS ----------------------------------------------------------------- */

static SSL_CTX *client_ctx(const struct egd_proxy_config *cfg)
{
	static const unsigned char alpn[] = "\x08http/1.1";
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());

	if (!ctx)
		return NULL;
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
	/* Whole records in one read(), and a short one means drained. */
	SSL_CTX_set_read_ahead(ctx, 1);
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	if (SSL_CTX_set_default_verify_paths(ctx) != 1)
		egd_warn("upstream: no system trust store");
	if (cfg->upstream_ca_file &&
	    SSL_CTX_load_verify_locations(ctx, cfg->upstream_ca_file, NULL) != 1) {
		egd_err("upstream: cannot load UPSTREAM_CA_FILE %s", cfg->upstream_ca_file);
		SSL_CTX_free(ctx);
		errno = EINVAL;
		return NULL;
	}
	SSL_CTX_set_alpn_protos(ctx, alpn, sizeof(alpn) - 1);
	return ctx;
}

/* ---- connections ------------------------------------------------------- */

static void conn_set_events(struct uconn *c, uint32_t events)
{
	if (c->events == events || c->watch.fd < 0)
		return;
	if (!egd_loop_mod(c->u->loop, &c->watch, events))
		c->events = events;
}

static void conn_unlink_idle(struct uconn *c)
{
	struct uconn **pp;

	for (pp = &c->u->idle; *pp; pp = &(*pp)->idle_next) {
		if (*pp == c) {
			*pp = c->idle_next;
			c->u->nidle--;
			break;
		}
	}
	c->idle_next = NULL;
	egd_timer_cancel(c->u->loop, &c->idle_timer);
}

static void conn_close(struct uconn *c)
{
	struct egd_upstream *u = c->u;

	if (c->state == C_IDLE)
		conn_unlink_idle(c);
	egd_timer_cancel(u->loop, &c->idle_timer);
	/* Also with no fd: the loop drops this turn's pending events for the
	 * watch, so freeing @c below is safe mid-batch. */
	egd_loop_del(u->loop, &c->watch);
	if (c->closed)
		*c->closed = 1;
	/* Closed while resolving: the answer must not find it. */
	egd_resolve_cancel(c->rreq);
	if (c->ssl)
		SSL_free(c->ssl);
	if (c->fd >= 0)
		close(c->fd);
	if (c->req)
		c->req->c = NULL;
	if (c->prev)
		c->prev->next = c->next;
	else
		u->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	free(c);
}

static void idle_timeout(struct egd_timer *t)
{
	conn_close(container_of(t, struct uconn, idle_timer));
}

static struct uconn *conn_new(struct egd_upstream *u)
{
	struct uconn *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	c->u = u;
	c->fd = -1;
	c->watch.fd = -1;
	c->watch.cb = conn_cb;
	c->idle_timer.cb = idle_timeout;
	c->next = u->conns;
	if (u->conns)
		u->conns->prev = c;
	u->conns = c;
	return c;
}

/* Try the addresses from c->addr_idx on until one connect() is under way. */
static int conn_start_connect(struct uconn *c)
{
	struct egd_upstream *u = c->u;

	while (c->addr_idx < c->addrs.n) {
		const struct sockaddr *sa = (const struct sockaddr *)&c->addrs.addr[c->addr_idx];
		int one = 1, fd;

		c->addr_idx++;
		fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (fd < 0)
			continue;
		/* Requests are written whole; Nagle would only delay them. */
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		if (connect(fd, sa, c->addrs.len[c->addr_idx - 1]) && errno != EINPROGRESS) {
			close(fd);
			continue;
		}
		c->fd = fd;
		c->watch.fd = fd;
		c->state = C_CONNECTING;
		c->events = EPOLLOUT;
		if (egd_loop_add(u->loop, &c->watch, EPOLLOUT)) {
			c->watch.fd = -1;
			return -ENOMEM;
		}
		return 0;
	}
	return -ECONNREFUSED;
}

static int conn_start_tls(struct uconn *c)
{
	struct egd_upstream *u = c->u;
	BIO *b;

	c->ssl = SSL_new(u->ssl_ctx);
	if (!c->ssl)
		return -ENOMEM;
	b = egd_sockbio_new(c->fd);
	if (!b)
		return -ENOMEM;
	SSL_set_bio(c->ssl, b, b);
	if (!u->is_ip && SSL_set_tlsext_host_name(c->ssl, u->cfg->upstream_host) != 1)
		return -ENOMEM;
	/* The chain alone is not enough: the name must be the upstream's. */
	if (u->is_ip) {
		if (X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->ssl),
						  u->cfg->upstream_host) != 1)
			return -ENOMEM;
	} else if (SSL_set1_host(c->ssl, u->cfg->upstream_host) != 1) {
		return -ENOMEM;
	}
	c->state = C_HANDSHAKE;
	return 0;
}

/* ---- one request on one connection ------------------------------------- */

static void req_free(struct egd_upstream_req *r)
{
	egd_timer_cancel(r->u->loop, &r->timer);
	egd_http_parser_destroy(r->parser);
	free(r->out);
	free(r);
}

/* (Re)arm @r's deadline. Only the first arming can fail (-ENOMEM, the loop's
 * timer heap could not grow): re-arming an armed timer never allocates. */
static int req_arm(struct egd_upstream_req *r)
{
	unsigned long long ms = (unsigned long long)r->u->cfg->upstream_timeout_s * 1000ULL;

	return egd_timer_arm(r->u->loop, &r->timer, egd_now_ms() + (ms ? ms : 1));
}

/* Report @err once and forget the request; the connection is not reusable. */
static void req_fail(struct egd_upstream_req *r, int err)
{
	struct uconn *c = r->c;

	if (c) {
		c->req = NULL;
		r->c = NULL;
		conn_close(c);
	}
	r->cbs.on_done(r->ctx, err);
	req_free(r);
}

static int req_attach(struct egd_upstream_req *r);

/*
 * A reused connection failed before any answer: the server most likely
 * closed it while idle. Once, on a fresh connection, and only if the
 * request cannot have run: none of it was handed to the socket, or it is
 * idempotent. A POST the upstream read before the connection died may have
 * been run (and billed) there; sending it again would run it twice while
 * the ledger counts it once, so the caller gets the error instead (502).
 * A connection found dead before the request was written is not this case:
 * req_attach() never hands one out (conn_idle_alive()).
 */
static int req_retry(struct egd_upstream_req *r)
{
	struct uconn *c = r->c;

	if (!c || !c->reused || r->got_bytes || r->retried)
		return 0;
	if (r->out_off && !r->idempotent)
		return 0;
	r->retried = 1;
	c->req = NULL;
	r->c = NULL;
	conn_close(c);
	r->out_off = 0;
	egd_http_parser_reset(r->parser);
	return req_attach(r) == 0;
}

static void req_error(struct egd_upstream_req *r, int err)
{
	if (req_retry(r))
		return;
	req_fail(r, err);
}

static int body_cb(void *ctx, const uint8_t *data, size_t len)
{
	struct egd_upstream_req *r = ctx;
	int ret = r->cbs.on_body ? r->cbs.on_body(r->ctx, data, len) : 0;

	if (ret)
		r->aborted = 1;
	return ret;
}

/* The response is complete: the connection goes idle (or away), then the
 * caller hears of it, free to send its next request on the same one. */
static void req_complete(struct egd_upstream_req *r, int reusable)
{
	struct uconn *c = r->c;
	struct egd_upstream *u = r->u;

	c->req = NULL;
	r->c = NULL;
	/* Bytes past the answer, already inside OpenSSL (read-ahead), would
	 * start the next answer on this connection: not reusable. */
	if (reusable && c->ssl && SSL_has_pending(c->ssl))
		reusable = 0;
	/* Pooled only with its idle deadline, else it could idle for ever. */
	if (reusable && u->nidle < EGD_UPSTREAM_POOL_MAX_IDLE &&
	    !egd_timer_arm(u->loop, &c->idle_timer, egd_now_ms() + EGD_UPSTREAM_IDLE_MS)) {
		c->state = C_IDLE;
		c->reused = 1;
		c->idle_next = u->idle;
		u->idle = c;
		u->nidle++;
		conn_set_events(c, EPOLLIN);
	} else {
		conn_close(c);
	}
	r->cbs.on_done(r->ctx, 0);
	req_free(r);
}

/* Returns bytes read, 0 at EOF, -EAGAIN, or another negative errno. */
static ssize_t conn_read(struct uconn *c, void *buf, size_t len)
{
	ssize_t n;
	int e;

	if (!c->ssl) {
		n = read(c->fd, buf, len);
		return n >= 0 ? n : (errno == EAGAIN || errno == EINTR) ? -EAGAIN : -errno;
	}
	ERR_clear_error();
	n = SSL_read(c->ssl, buf, (int)len);
	if (n > 0)
		return n;
	e = SSL_get_error(c->ssl, (int)n);
	if (e == SSL_ERROR_WANT_READ)
		return -EAGAIN;
	if (e == SSL_ERROR_WANT_WRITE) {
		c->ssl_want_write = 1;
		return -EAGAIN;
	}
	if (e == SSL_ERROR_ZERO_RETURN)
		return 0;
	/* A failed read with nothing queued. A close without close_notify is
	 * not this: OpenSSL 3 reports it as SSL_ERROR_SSL (unexpected EOF),
	 * so it is -EPROTO below and the request fails (502), whatever the
	 * parser would have said of a body read to the end. */
	if (e == SSL_ERROR_SYSCALL && !ERR_peek_error())
		return errno && errno != EAGAIN ? -errno : 0;
	return -EPROTO;
}

static ssize_t conn_write(struct uconn *c, const void *buf, size_t len)
{
	ssize_t n;
	int e;

	if (!c->ssl) {
		n = send(c->fd, buf, len, MSG_NOSIGNAL);
		return n >= 0 ? n : (errno == EAGAIN || errno == EINTR) ? -EAGAIN : -errno;
	}
	ERR_clear_error();
	n = SSL_write(c->ssl, buf, (int)len);
	if (n > 0)
		return n;
	e = SSL_get_error(c->ssl, (int)n);
	if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
		return -EAGAIN;
	return -EPIPE;
}

/* The caller gave up from a callback: no on_done, connection unusable. */
static void req_abort(struct egd_upstream_req *r)
{
	struct uconn *c = r->c;

	if (c) {
		c->req = NULL;
		conn_close(c);
	}
	req_free(r);
}

static void req_feed(struct egd_upstream_req *r, const uint8_t *buf, size_t len)
{
	size_t off = 0, used;
	int ret;

	while (off < len) {
		const struct egd_http_msg *m;

		ret = egd_http_parse(r->parser, buf + off, len - off, &used);
		off += used;
		if (r->aborted) {
			req_abort(r);
			return;
		}
		if (ret < 0) {
			egd_warn("upstream: bad response: %s",
				 egd_http_parser_error(r->parser));
			req_fail(r, -EBADMSG);
			return;
		}
		if (ret == EGD_HTTP_MORE)
			continue;
		m = egd_http_parser_msg(r->parser);
		if (m->status < 200) {
			/* 1xx interim: the final answer follows. */
			if (ret == EGD_HTTP_DONE)
				egd_http_parser_reset(r->parser);
			continue;
		}
		if (!r->head_done) {
			r->head_done = 1;
			if (r->cbs.on_head && r->cbs.on_head(r->ctx, m)) {
				req_abort(r);
				return;
			}
		}
		if (ret == EGD_HTTP_DONE) {
			req_complete(r, m->keep_alive && !m->until_eof && off == len);
			return;
		}
	}
}

/* Write what the socket takes of @r's request; 0 (done or would block) or
 * a negative errno. */
static int req_write(struct egd_upstream_req *r)
{
	while (r->out_off < r->out_len) {
		ssize_t n = conn_write(r->c, r->out + r->out_off, r->out_len - r->out_off);

		if (n == -EAGAIN)
			return 0;
		if (n < 0)
			return (int)n;
		r->out_off += (size_t)n;
	}
	return 0;
}

static void conn_active_io(struct uconn *c)
{
	struct egd_upstream_req *r = c->req;
	uint8_t buf[UP_READ_CHUNK_BYTES];
	int closed = 0;
	ssize_t n;

	if (!r) {
		conn_close(c);
		return;
	}
	if (req_write(r)) {
		req_error(r, -EPIPE);
		return;
	}
	c->ssl_want_write = 0;
	for (;;) {
		n = conn_read(c, buf, sizeof(buf));
		if (n == -EAGAIN)
			break;
		if (n < 0) {
			req_error(r, (int)n);
			return;
		}
		if (n == 0) {
			int ret = egd_http_parse_eof(r->parser);

			if (ret == EGD_HTTP_DONE && r->head_done) {
				req_complete(r, 0);
			} else if (ret == EGD_HTTP_DONE) {
				r->head_done = 1;
				if (!r->cbs.on_head ||
				    !r->cbs.on_head(r->ctx, egd_http_parser_msg(r->parser)))
					req_complete(r, 0);
				else
					req_fail(r, -ECANCELED);
			} else {
				req_error(r, -ECONNRESET);
			}
			return;
		}
		r->got_bytes = 1;
		req_arm(r);
		/* The request may finish (or die) inside, and a response
		 * that ends the connection frees it there; stop touching
		 * either unless both are still here and still paired. */
		// cppcheck-suppress autoVariables ; cleared below, or c is freed
		c->closed = &closed;
		req_feed(r, buf, (size_t)n);
		if (closed)
			return;
		c->closed = NULL;
		if (c->req != r)
			return;
		/* A short read with nothing left inside OpenSSL: the socket
		 * is empty, and the level-triggered loop reports the rest. */
		if (c->ssl ? !SSL_has_pending(c->ssl) && egd_sockbio_drained(SSL_get_rbio(c->ssl))
			   : (size_t)n < sizeof(buf))
			break;
	}
	conn_set_events(c, EPOLLIN | (r->out_off < r->out_len || c->ssl_want_write ? EPOLLOUT : 0));
}

static void conn_cb(struct egd_watch *w, uint32_t events)
{
	struct uconn *c = container_of(w, struct uconn, watch);
	int err, e;
	socklen_t len = sizeof(err);

	switch (c->state) {
	case C_RESOLVING:
		/* No watch while resolving: dns_done() moves it on. */
		return;
	case C_IDLE:
		/* Data or EOF on an idle connection: the server closed it or
		 * broke the protocol; either way it is not reusable. */
		conn_close(c);
		return;
	case C_CONNECTING:
		if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) || err) {
			egd_loop_del(c->u->loop, &c->watch);
			close(c->fd);
			c->fd = c->watch.fd = -1;
			if (conn_start_connect(c)) {
				egd_warn("upstream: cannot connect to %s:%u: %s",
					 c->u->cfg->upstream_host, c->u->cfg->upstream_port,
					 strerror(err ? err : errno));
				req_fail(c->req, -ECONNREFUSED);
			}
			return;
		}
		if (!c->u->ssl_ctx) {
			c->state = C_ACTIVE;
			conn_active_io(c);
			return;
		}
		if (conn_start_tls(c)) {
			req_fail(c->req, -ENOMEM);
			return;
		}
		/* fall through */
	case C_HANDSHAKE:
		ERR_clear_error();
		e = SSL_connect(c->ssl);
		if (e == 1) {
			c->state = C_ACTIVE;
			conn_active_io(c);
			return;
		}
		e = SSL_get_error(c->ssl, e);
		if (e == SSL_ERROR_WANT_READ) {
			conn_set_events(c, EPOLLIN);
		} else if (e == SSL_ERROR_WANT_WRITE) {
			conn_set_events(c, EPOLLOUT);
		} else {
			long v = SSL_get_verify_result(c->ssl);

			egd_warn("upstream: TLS handshake with %s failed: %s",
				 c->u->cfg->upstream_host,
				 v != X509_V_OK ? X509_verify_cert_error_string(v)
						: "protocol error");
			req_fail(c->req, -EPROTO);
		}
		return;
	case C_ACTIVE:
		conn_active_io(c);
		return;
	}
	(void)events;
}

/*
 * Whether the idle @c can carry a request: nothing to read and no EOF or
 * error on its socket. The loop closes an idle connection as soon as it sees
 * either (conn_cb), but the server may have closed it since the loop last
 * looked; a request written there would fail after leaving, and could then
 * not be retried (req_retry()). A peek costs one syscall per reuse.
 */
static int conn_idle_alive(const struct uconn *c)
{
	char b;
	ssize_t n;

	if (c->ssl && SSL_has_pending(c->ssl))
		return 0;
	n = recv(c->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
	return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

/* Give @r a connection: an idle one, else a new one. Returns 0 or -errno. */
static int req_attach(struct egd_upstream_req *r)
{
	struct egd_upstream *u = r->u;
	struct uconn *c;
	int err;

	while ((c = u->idle) && !conn_idle_alive(c))
		conn_close(c);
	if (c) {
		conn_unlink_idle(c);
		c->state = C_ACTIVE;
		c->req = r;
		r->c = c;
		/* Write now: an idle connection takes a small request at once,
		 * and waiting for EPOLLOUT costs a loop turn and two
		 * epoll_ctl() per request. A failure is left for the loop to
		 * find (EPOLLOUT fires at once on a broken socket), so no
		 * callback runs inside egd_upstream_send(). */
		if (req_write(r) || r->out_off < r->out_len || c->ssl_want_write)
			conn_set_events(c, EPOLLIN | EPOLLOUT);
		return 0;
	}
	c = conn_new(u);
	if (!c)
		return -ENOMEM;
	c->req = r;
	r->c = c;
	if (u->fixed || (u->addrs.n && egd_now_ms() - u->addrs_at_ms < EGD_UPSTREAM_DNS_TTL_MS)) {
		c->addrs = u->addrs;
		err = conn_start_connect(c);
	} else {
		err = dns_start(c);
	}
	if (err) {
		c->req = NULL;
		r->c = NULL;
		conn_close(c);
	}
	return err;
}

static void req_timer(struct egd_timer *t)
{
	struct egd_upstream_req *r = container_of(t, struct egd_upstream_req, timer);

	if (r->pending_err) {
		req_fail(r, r->pending_err);
		return;
	}
	egd_warn("upstream: no progress in %u s", r->u->cfg->upstream_timeout_s);
	req_fail(r, -ETIMEDOUT);
}

struct egd_upstream_req *egd_upstream_send(struct egd_upstream *u, const char *method,
					   const char *path, const struct egd_http_header *headers,
					   size_t n, const void *body, size_t body_len,
					   const struct egd_upstream_cbs *cbs, void *ctx)
{
	struct egd_upstream_req *r = calloc(1, sizeof(*r));
	int err;

	if (!r) {
		errno = ENOMEM;
		return NULL;
	}
	r->u = u;
	r->cbs = *cbs;
	r->ctx = ctx;
	r->timer.cb = req_timer;
	r->out = egd_http_request(method, u->host_header, path, headers, n, body, body_len,
				  &r->out_len);
	if (!r->out) {
		err = -errno;
		goto err_free;
	}
	r->parser = egd_http_parser_new(EGD_HTTP_RESPONSE, EGD_UPSTREAM_RESPONSE_MAX_BYTES);
	if (!r->parser) {
		err = -errno;
		goto err_free;
	}
	egd_http_parser_set_body_cb(r->parser, body_cb, r);
	if (!strcmp(method, "HEAD"))
		egd_http_parser_expect_no_body(r->parser);
	r->idempotent = !strcmp(method, "GET") || !strcmp(method, "HEAD");
	/* The deadline first: a request the loop could not time out is
	 * refused here, and every later arming of it is a re-arm. */
	err = req_arm(r);
	if (err)
		goto err_free;
	err = req_attach(r);
	if (err) {
		/* Unreachable before trying is still reported from the loop. */
		r->pending_err = err == -ENOMEM ? -ENOMEM : -ECONNREFUSED;
		egd_timer_arm(u->loop, &r->timer, egd_now_ms());
	}
	return r;

err_free:
	req_free(r);
	errno = -err;
	return NULL;
}

void egd_upstream_cancel(struct egd_upstream_req *r)
{
	if (!r)
		return;
	if (r->c) {
		r->c->req = NULL;
		conn_close(r->c);
	}
	req_free(r);
}

size_t egd_upstream_idle_count(const struct egd_upstream *u)
{
	return u->nidle;
}

struct egd_upstream *egd_upstream_new(struct egd_loop *loop, struct egd_resolver *resolver,
				      const struct egd_proxy_config *cfg)
{
	struct egd_upstream *u = calloc(1, sizeof(*u));
	int err, default_port;

	if (!u) {
		errno = ENOMEM;
		return NULL;
	}
	u->loop = loop;
	u->resolver = resolver;
	u->cfg = cfg;
	default_port = cfg->upstream_tls ? 443 : 80;
	if (strchr(cfg->upstream_host, ':'))
		snprintf(u->host_header, sizeof(u->host_header), "[%s]", cfg->upstream_host);
	else
		snprintf(u->host_header, sizeof(u->host_header), "%s", cfg->upstream_host);
	if (cfg->upstream_port != default_port) {
		size_t l = strlen(u->host_header);

		snprintf(u->host_header + l, sizeof(u->host_header) - l, ":%u",
			 cfg->upstream_port);
	}
	err = -EINVAL;
	if (cfg->upstream_resolve) {
		int found = resolve_override(u, cfg->upstream_resolve);

		if (found < 0) {
			egd_err("upstream: bad UPSTREAM_RESOLVE '%s'", cfg->upstream_resolve);
			err = found;
			goto err_free;
		}
		u->fixed = found;
	}
	if (!u->fixed && addr_parse(cfg->upstream_host, cfg->upstream_port, &u->addrs.addr[0],
				    &u->addrs.len[0]) == 0) {
		u->addrs.n = 1;
		u->fixed = 1;
		u->is_ip = 1;
	} else {
		struct sockaddr_storage ss;
		socklen_t l;

		u->is_ip = addr_parse(cfg->upstream_host, 0, &ss, &l) == 0;
	}
	if (!u->fixed && !resolver) {
		egd_err("upstream: %s needs resolving and this loop has no resolver",
			cfg->upstream_host);
		goto err_free;
	}
	if (cfg->upstream_tls) {
		u->ssl_ctx = client_ctx(cfg);
		if (!u->ssl_ctx)
			goto err_free;
	}
	return u;

err_free:
	free(u);
	errno = -err;
	return NULL;
}

void egd_upstream_destroy(struct egd_upstream *u)
{
	if (!u)
		return;
	while (u->conns) {
		struct egd_upstream_req *r = u->conns->req;

		conn_close(u->conns);
		if (r)
			req_free(r);
	}
	SSL_CTX_free(u->ssl_ctx);
	free(u);
}
