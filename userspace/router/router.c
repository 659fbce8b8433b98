/* SPDX-License-Identifier: MIT */
/*
 * The server of `egressd router` (router.h). One event loop; per client
 * connection one struct cconn that owns, while a request is in flight, one
 * upstream connection (struct uconn) taken from the pool or dialled.
 *
 * Bytes move through two bounded buffers per connection, one per direction.
 * A side is read only while the buffer it feeds holds less than
 * OUT_HIGH_BYTES, and each read is at most IO_CHUNK_BYTES, so a request of
 * any size, a never-ending SSE stream or a WebSocket costs a bounded
 * amount of memory whatever the speeds of the two ends (backpressure).
 *
 * Bodies are decoded by the http1 parser (so the router knows where each
 * message ends and can reuse connections) and re-framed unchanged: a
 * Content-Length body keeps its length, a chunked one is re-chunked, and
 * the bytes (gzip or not) are never touched.
 *
 * Why not the policy proxy's upstream client (proxy/upstream.c): it serves
 * one fixed TLS upstream and takes a request body whole; the router needs
 * plain-HTTP connections to thousands of targets, a pool keyed by target
 * and a request body streamed as it arrives. The parser and the loop are
 * shared; the dialling and pooling here are small.
 */
#include "router/router.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "core/grow.h"
#include "core/log.h"
#include "core/loop.h"
#include "proxy/http1.h"
#include "router/rdns.h"
#include "router/route.h"
#include "router/router_config.h"

#define container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

/* One read from a socket: a few TCP segments, and the unit of backpressure. */
#define IO_CHUNK_BYTES (16 * 1024)
/* Stop reading the side that fills a buffer once it holds this much. With
 * one read of IO_CHUNK_BYTES past it at most, a connection holds below
 * 2 x (OUT_HIGH_BYTES + IO_CHUNK_BYTES) of body whatever the body's size. */
#define OUT_HIGH_BYTES (64 * 1024)
/* A client connection with no request in flight and no byte for this long
 * is closed (a keep-alive idle, or a request head that never ends). */
#define CLIENT_IDLE_MS (60 * 1000)
/* Connecting to a sandbox takes at most this (or the request's timeout if
 * shorter), as the reference's connect=min(t, 5). */
#define CONNECT_MAX_MS 5000
/* After the last answer on a closing connection, how long unread request
 * bytes are drained so that closing does not reset the answer away. */
#define LINGER_MS 2000
/* An idle pooled connection is closed after this: sandboxes' servers
 * (uvicorn: 5 s, nginx: 75 s) drop theirs on their own schedule, and a
 * shorter life makes a stale one less likely. */
#define POOL_IDLE_MS (4 * 1000)
/* How often idle pooled connections are swept. */
#define POOL_SWEEP_MS 1000
/* Namespaces with their own label in /metrics; the rest share "_other",
 * so a client cannot grow the metrics without bound. */
#define NS_METRICS_MAX 64
/* Admin requests are a few dozen bytes, answered at once. */
#define ADMIN_REQUEST_MAX_BYTES 4096
#define ADMIN_TIMEOUT_MS 5000
/* The accept queue: a burst of clients waits here instead of being refused. */
#define LISTEN_BACKLOG 4096
/* Path kept for the access line (query never kept). */
#define LOG_PATH_MAX_BYTES 512

static const double latency_buckets_s[] = { 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
					    0.1,    0.25,  0.5,    1,     2.5,  5,     10,
					    30,     60,    180 };
#define N_BUCKETS (sizeof(latency_buckets_s) / sizeof(latency_buckets_s[0]))

struct buf {
	char *p;
	size_t off, len, cap;
};

struct ns_stat {
	char ns[EGD_ROUTE_LABEL_MAX_BYTES + 1];
	unsigned long long by_class[6]; /* [1..5]: 1xx..5xx */
};

struct metrics {
	struct ns_stat ns[NS_METRICS_MAX + 1]; /* the last one is "_other" */
	size_t nns;
	unsigned long long lat_count, lat_bucket[N_BUCKETS];
	double lat_sum;
	unsigned long long ws_open, ws_total, pool_reused, retries, refused_conns;
	unsigned long long upstream_conns;
};

struct router;
struct cconn;

struct uconn {
	struct egd_watch w;
	struct router *r;
	struct cconn *owner; /* NULL while idle in the pool */
	struct uconn *prev, *next;
	char key[EGD_ROUTE_HOST_MAX_BYTES + 8];
	unsigned long long idle_since;
	uint32_t ev;
};

enum cstate { C_HEAD, C_RESOLVE, C_CONNECT, C_PROXY, C_WS, C_CLOSING };

/* What one request/response exchange has seen; zeroed between requests. */
struct exchange {
	int req_done, resp_any, resp_head_sent, resp_done, client_chunked, keep_alive;
	int upgrade, head_only, retry_ok, retried, from_pool, status, counted;
	int req_chunked, client_eof, up_eof, shut_wr;
	unsigned long long t_start, t_ws;
	uint64_t bytes_in, bytes_out;
	char method[EGD_HTTP_METHOD_MAX_BYTES];
	char path[LOG_PATH_MAX_BYTES];
};

struct cconn {
	struct egd_watch w;
	struct egd_timer t;
	struct router *r;
	struct cconn *prev, *next;
	enum cstate st;
	uint32_t ev;
	char peer[INET6_ADDRSTRLEN];
	int trusted, head_started;
	unsigned int nreq;
	unsigned long long t_last;
	struct egd_http_parser *req, *resp;
	size_t in_off, in_len, uin_off, uin_len;
	struct buf cout, uout, head_copy;
	struct uconn *up;
	struct egd_rdns_req *rq;
	struct egd_resolved addrs;
	size_t addr_i;
	struct egd_route route;
	struct exchange x;
	uint8_t in[IO_CHUNK_BYTES];
	uint8_t uin[IO_CHUNK_BYTES];
};

struct listener {
	struct egd_watch w;
	struct router *r;
	int admin;
};

struct admin_conn {
	struct egd_watch w;
	struct egd_timer t;
	struct router *r;
	size_t len;
	char buf[ADMIN_REQUEST_MAX_BYTES];
};

struct router {
	struct egd_loop *loop;
	struct egd_rdns *resolver;
	struct egd_router_config *cfg;
	struct egd_route_cfg rcfg;
	struct listener main, admin;
	struct egd_watch sig;
	struct egd_timer sweep, drain;
	struct cconn *conns;
	unsigned int nconns;
	struct uconn *pool_head, *pool_tail;
	unsigned int nidle;
	int draining;
	FILE *access;
	struct metrics m;
};

/* ---- buffers ----------------------------------------------------------- */

static size_t buf_pending(const struct buf *b)
{
	return b->len - b->off;
}

static int buf_add(struct buf *b, const void *d, size_t n)
{
	if (b->off == b->len)
		b->off = b->len = 0;
	if (b->len + n > b->cap && b->off) {
		memmove(b->p, b->p + b->off, b->len - b->off);
		b->len -= b->off;
		b->off = 0;
	}
	if (b->len + n > b->cap) {
		char *np = egd_grow(b->p, &b->cap, b->len + n, IO_CHUNK_BYTES);

		if (!np)
			return -ENOMEM;
		b->p = np;
	}
	memcpy(b->p + b->len, d, n);
	b->len += n;
	return 0;
}

static int buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int buf_printf(struct buf *b, const char *fmt, ...)
{
	char tmp[1024], *big;
	va_list ap;
	int n, err;

	va_start(ap, fmt);
	n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
	va_end(ap);
	if (n < 0)
		return -EINVAL;
	if ((size_t)n < sizeof(tmp))
		return buf_add(b, tmp, (size_t)n);
	/* Rare (the metrics page): format again into a buffer of the size. */
	big = malloc((size_t)n + 1);
	if (!big)
		return -ENOMEM;
	va_start(ap, fmt);
	vsnprintf(big, (size_t)n + 1, fmt, ap);
	va_end(ap);
	err = buf_add(b, big, (size_t)n);
	free(big);
	return err;
}

/* Three pieces: "name: value\r\n", without a bounce through a format. */
static int buf_header(struct buf *b, const char *name, const char *value)
{
	int err = buf_add(b, name, strlen(name));

	err = err ?: buf_add(b, ": ", 2);
	err = err ?: buf_add(b, value, strlen(value));
	return err ?: buf_add(b, "\r\n", 2);
}

static void buf_free(struct buf *b)
{
	free(b->p);
	memset(b, 0, sizeof(*b));
}

/* Write what @b holds to @fd. 0 (all or EAGAIN), or -errno. */
static int buf_flush(struct buf *b, int fd)
{
	while (buf_pending(b)) {
		ssize_t n = send(fd, b->p + b->off, buf_pending(b), MSG_NOSIGNAL);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return errno == EAGAIN ? 0 : -errno;
		}
		b->off += (size_t)n;
	}
	b->off = b->len = 0;
	return 0;
}

/* ---- metrics and access log -------------------------------------------- */

static struct ns_stat *ns_stat(struct metrics *m, const char *ns)
{
	for (size_t i = 0; i < m->nns; i++)
		if (strcmp(m->ns[i].ns, ns) == 0)
			return &m->ns[i];
	if (m->nns < NS_METRICS_MAX) {
		snprintf(m->ns[m->nns].ns, sizeof(m->ns[0].ns), "%s", ns);
		return &m->ns[m->nns++];
	}
	snprintf(m->ns[NS_METRICS_MAX].ns, sizeof(m->ns[0].ns), "_other");
	return &m->ns[NS_METRICS_MAX];
}

static void observe_latency(struct metrics *m, unsigned long long ms)
{
	double s = (double)ms / 1000.0;

	m->lat_count++;
	m->lat_sum += s;
	for (size_t i = 0; i < N_BUCKETS; i++)
		if (s <= latency_buckets_s[i])
			m->lat_bucket[i]++;
}

/* JSON string body of @s: quotes, backslashes and non-printable bytes
 * escaped (a path is attacker text). */
static void json_str(FILE *f, const char *s)
{
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;

		if (ch == '"' || ch == '\\')
			fprintf(f, "\\%c", ch);
		else if (ch < 0x20 || ch >= 0x7f)
			fprintf(f, "\\u%04x", ch);
		else
			fputc(ch, f);
	}
}

/* One access line and the request counters, once per exchange. */
static void account(struct cconn *c, int status)
{
	struct router *r = c->r;
	const char *ns = c->route.ns[0] ? c->route.ns : "none";
	char ts[40];

	if (c->x.counted)
		return;
	c->x.counted = 1;
	c->x.status = status;
	if (status >= 100 && status < 600)
		ns_stat(&r->m, ns)->by_class[status / 100]++;
	if (!r->access)
		return;
	egd_timestamp(ts, sizeof(ts));
	fprintf(r->access, "{\"ts\":\"%s\",\"event\":\"request\",\"peer\":\"%s\",\"method\":\"", ts,
		c->peer);
	json_str(r->access, c->x.method);
	fputs("\",\"path\":\"", r->access);
	json_str(r->access, c->x.path);
	fprintf(r->access,
		"\",\"sandbox\":\"%s\",\"namespace\":\"%s\",\"port\":%u,\"status\":%d,"
		"\"duration_ms\":%llu,\"bytes_in\":%" PRIu64 ",\"bytes_out\":%" PRIu64 "}\n",
		c->route.id, c->route.ns[0] ? c->route.ns : "", c->route.port, status,
		egd_now_ms() - c->x.t_start, c->x.bytes_in, c->x.bytes_out);
}

/* ---- the pool ---------------------------------------------------------- */

static void uconn_close(struct uconn *u)
{
	if (!u)
		return;
	egd_loop_del(u->r->loop, &u->w);
	if (u->w.fd >= 0)
		close(u->w.fd);
	u->r->m.upstream_conns--;
	free(u);
}

static void pool_unlink(struct router *r, struct uconn *u)
{
	if (u->prev)
		u->prev->next = u->next;
	else
		r->pool_head = u->next;
	if (u->next)
		u->next->prev = u->prev;
	else
		r->pool_tail = u->prev;
	u->prev = u->next = NULL;
	r->nidle--;
}

static struct uconn *pool_take(struct router *r, const char *key)
{
	for (struct uconn *u = r->pool_head; u; u = u->next) {
		if (strcmp(u->key, key))
			continue;
		pool_unlink(r, u);
		return u;
	}
	return NULL;
}

/* Keep @u idle for its target, most recent first, within both bounds. */
static void pool_put(struct router *r, struct uconn *u)
{
	unsigned int same = 0;

	for (struct uconn *p = r->pool_head; p; p = p->next)
		same += strcmp(p->key, u->key) == 0;
	if (r->draining || same >= r->cfg->pool_per_target || r->nidle >= r->cfg->pool_max_idle) {
		uconn_close(u);
		return;
	}
	u->owner = NULL;
	u->idle_since = egd_now_ms();
	/* An idle connection is watched for reading: any byte or the close
	 * of a sandbox that went away retires it before anyone reuses it. */
	if (u->ev != EPOLLIN) {
		u->ev = EPOLLIN;
		if (egd_loop_mod(r->loop, &u->w, EPOLLIN)) {
			uconn_close(u);
			return;
		}
	}
	u->next = r->pool_head;
	if (r->pool_head)
		r->pool_head->prev = u;
	r->pool_head = u;
	if (!r->pool_tail)
		r->pool_tail = u;
	r->nidle++;
}

static void sweep_cb(struct egd_timer *t)
{
	struct router *r = container_of(t, struct router, sweep);
	unsigned long long now = egd_now_ms();

	while (r->pool_tail && r->pool_tail->idle_since + POOL_IDLE_MS <= now) {
		struct uconn *u = r->pool_tail;

		pool_unlink(r, u);
		uconn_close(u);
	}
	egd_timer_arm(r->loop, &r->sweep, now + POOL_SWEEP_MS);
}

/* ---- client connections ------------------------------------------------ */

static void upstream_cb(struct egd_watch *w, uint32_t events);
static int process_head(struct cconn *c);
static int pump_request(struct cconn *c);
static int feed_response(struct cconn *c);
static void update_interest(struct cconn *c);

static void maybe_drained(struct router *r)
{
	if (r->draining && r->nconns == 0)
		egd_loop_stop(r->loop);
}

/* Frees @c and its upstream. Always returns -1, so callers can write
 * "return conn_close(c);" and know @c is gone. */
static int conn_close(struct cconn *c)
{
	struct router *r = c->r;

	if (c->x.upgrade && c->x.t_ws)
		r->m.ws_open--;
	if (c->x.t_start && !c->x.counted && c->x.method[0])
		account(c, c->x.resp_head_sent ? c->x.status : 499);
	egd_rdns_cancel(c->rq);
	uconn_close(c->up);
	egd_timer_cancel(r->loop, &c->t);
	egd_loop_del(r->loop, &c->w);
	close(c->w.fd);
	if (c->prev)
		c->prev->next = c->next;
	else
		r->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	egd_http_parser_destroy(c->req);
	egd_http_parser_destroy(c->resp);
	buf_free(&c->cout);
	buf_free(&c->uout);
	buf_free(&c->head_copy);
	free(c);
	r->nconns--;
	maybe_drained(r);
	return -1;
}

/* When the current state's deadline falls: lazily, from c->t_last, so that
 * progress only stores a time and the heap is touched when the timer fires. */
static unsigned long long deadline(const struct cconn *c)
{
	const struct egd_router_config *cfg = c->r->cfg;
	unsigned long long t = c->route.timeout_ms;

	switch (c->st) {
	case C_HEAD:
		return c->t_last + CLIENT_IDLE_MS;
	case C_RESOLVE:
	case C_CONNECT:
		return c->t_last + (t < CONNECT_MAX_MS ? t : CONNECT_MAX_MS);
	case C_PROXY:
		return c->t_last + t;
	case C_WS: {
		unsigned long long idle = c->t_last + cfg->ws_idle_s * 1000ULL;
		unsigned long long life = c->x.t_ws + cfg->ws_max_s * 1000ULL;

		return idle < life ? idle : life;
	}
	case C_CLOSING:
		return c->t_last + LINGER_MS;
	}
	return c->t_last;
}

static void arm(struct cconn *c)
{
	egd_timer_arm(c->r->loop, &c->t, deadline(c));
}

static void set_state(struct cconn *c, enum cstate st)
{
	c->st = st;
	c->t_last = egd_now_ms();
	arm(c);
}

static int start_closing(struct cconn *c)
{
	uconn_close(c->up);
	c->up = NULL;
	set_state(c, C_CLOSING);
	update_interest(c);
	return 0;
}

/* Go back to reading the next request, or close when that is not allowed. */
static int next_request(struct cconn *c, int keep)
{
	if (!keep || c->r->draining)
		return start_closing(c);
	egd_http_parser_reset(c->req);
	egd_http_parser_reset(c->resp);
	memset(&c->x, 0, sizeof(c->x));
	memset(&c->route, 0, sizeof(c->route));
	c->head_started = c->in_off < c->in_len;
	set_state(c, C_HEAD);
	return 0;
}

/* A response the router writes itself (JSON errors, /healthz). */
static int respond(struct cconn *c, int status, const char *body, int keep)
{
	const struct egd_http_msg *m = egd_http_parser_msg(c->req);
	size_t len = strlen(body);

	keep = keep && c->x.req_done && m->keep_alive && !c->r->draining &&
	       c->nreq < c->r->cfg->max_requests_per_conn;
	if (buf_printf(&c->cout,
		       "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
		       "Content-Length: %zu\r\nConnection: %s\r\n\r\n",
		       status, egd_http_reason(status), len, keep ? "keep-alive" : "close") ||
	    buf_add(&c->cout, body, len))
		return conn_close(c);
	c->x.resp_head_sent = 1;
	c->x.bytes_out += len;
	account(c, status);
	uconn_close(c->up);
	c->up = NULL;
	return next_request(c, keep);
}

static int respond_detail(struct cconn *c, int status, const char *detail, const char *id)
{
	char body[256];
	const char *p;
	size_t n = 0;

	/* The messages are ours and the ID a validated label: no escaping
	 * needed beyond refusing quotes and backslashes outright. */
	n += (size_t)snprintf(body, sizeof(body), "{\"detail\":\"");
	for (p = detail; *p && n + 8 < sizeof(body); p++)
		if (*p != '"' && *p != '\\')
			body[n++] = *p;
	for (p = id ? id : ""; *p && n + 8 < sizeof(body); p++)
		if (*p != '"' && *p != '\\')
			body[n++] = *p;
	snprintf(body + n, sizeof(body) - n, "\"}");
	return respond(c, status, body, 1);
}

/* The upstream could not be used before any answer: 502, or 504 when it
 * was the timeout; after the head, only closing tells the client. */
static int upstream_error(struct cconn *c, int timeout)
{
	if (c->x.resp_head_sent)
		return conn_close(c);
	c->x.req_done = 0; /* whatever the client still sends is not read */
	if (timeout)
		return respond_detail(c, 504, "Timed out waiting for the backend sandbox: ",
				      c->route.id);
	return respond_detail(c, 502, "Could not connect to the backend sandbox: ", c->route.id);
}

static void update_interest(struct cconn *c)
{
	struct router *r = c->r;
	size_t cout = buf_pending(&c->cout), uout = buf_pending(&c->uout);
	int in_room = c->in_len < sizeof(c->in) || c->in_off > 0;
	uint32_t cev = 0, uev = 0;

	switch (c->st) {
	case C_HEAD:
		if (cout < OUT_HIGH_BYTES)
			cev |= EPOLLIN;
		break;
	case C_PROXY:
		if (!c->x.req_done && uout < OUT_HIGH_BYTES && in_room)
			cev |= EPOLLIN;
		if (!c->x.resp_done && cout < OUT_HIGH_BYTES && c->uin_off == c->uin_len)
			uev |= EPOLLIN;
		break;
	case C_WS:
		if (!c->x.client_eof && uout < OUT_HIGH_BYTES && c->in_off == c->in_len)
			cev |= EPOLLIN;
		if (!c->x.up_eof && cout < OUT_HIGH_BYTES && c->uin_off == c->uin_len)
			uev |= EPOLLIN;
		break;
	case C_CONNECT:
		uev |= EPOLLOUT;
		break;
	case C_CLOSING:
		if (c->x.shut_wr)
			cev |= EPOLLIN;
		break;
	case C_RESOLVE:
		break;
	}
	if (cout)
		cev |= EPOLLOUT;
	if (uout)
		uev |= EPOLLOUT;
	if (cev != c->ev && !egd_loop_mod(r->loop, &c->w, cev))
		c->ev = cev;
	if (c->up && uev != c->up->ev && !egd_loop_mod(r->loop, &c->up->w, uev))
		c->up->ev = uev;
}

static int is_idempotent(const char *m)
{
	static const char *const ok[] = { "GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE" };

	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
		if (strcmp(m, ok[i]) == 0)
			return 1;
	return 0;
}

static int build_upstream_head(struct cconn *c, const struct egd_http_msg *m)
{
	struct buf *b = &c->uout;
	const char *xfp = NULL;
	int err, have_xff = 0;

	err = buf_printf(b, "%s ", m->method);
	err = err ?: buf_add(b, m->target, strlen(m->target));
	err = err ?: buf_printf(b, " HTTP/1.1\r\nHost: %s\r\n", c->route.hostport);
	for (size_t i = 0; i < m->nheaders && !err; i++) {
		const struct egd_http_header *h = &m->headers[i];

		if (c->trusted && strcasecmp(h->name, "x-forwarded-for") == 0) {
			err = buf_add(b, have_xff ? ", " : "X-Forwarded-For: ", have_xff ? 2 : 17);
			err = err ?: buf_add(b, h->value, strlen(h->value));
			have_xff = 1;
			continue;
		}
		if (c->trusted && strcasecmp(h->name, "x-forwarded-proto") == 0 && !xfp)
			xfp = h->value;
		if (egd_route_drop_request_header(m, h->name))
			continue;
		/* Origin is dropped on an upgrade, as the Go router does:
		 * Jupyter and code-server compare it with Host, which is now
		 * the sandbox's name. */
		if (c->x.upgrade && strcasecmp(h->name, "origin") == 0)
			continue;
		err = buf_header(b, h->name, h->value);
	}
	if (!err)
		err = have_xff ? buf_printf(b, ", %s\r\n", c->peer) :
				 buf_header(b, "X-Forwarded-For", c->peer);
	err = err ?: buf_header(b, "X-Forwarded-Proto", xfp ? xfp : "http");
	if (!err && c->x.upgrade)
		err = buf_printf(b, "Connection: Upgrade\r\nUpgrade: %s\r\n",
				 egd_http_header_get(m, "upgrade"));
	if (!err && m->chunked)
		err = buf_add(b, "Transfer-Encoding: chunked\r\n", 28);
	else if (!err && m->content_length >= 0)
		err = buf_printf(b, "Content-Length: %" PRId64 "\r\n", m->content_length);
	err = err ?: buf_add(b, "\r\n", 2);
	if (err)
		return err;
	/* Only a request with no body can be sent again as it was. */
	c->x.retry_ok = is_idempotent(m->method) && !m->chunked && m->content_length <= 0 &&
			!c->x.upgrade;
	if (c->x.retry_ok) {
		c->head_copy.off = c->head_copy.len = 0;
		err = buf_add(&c->head_copy, b->p + b->off, buf_pending(b));
	}
	return err;
}

static int attach_upstream(struct cconn *c, int fd)
{
	struct uconn *u = calloc(1, sizeof(*u));

	if (!u) {
		close(fd);
		return -ENOMEM;
	}
	u->r = c->r;
	u->owner = c;
	u->w.fd = fd;
	u->w.cb = upstream_cb;
	u->ev = EPOLLOUT;
	snprintf(u->key, sizeof(u->key), "%s", c->route.hostport);
	if (egd_loop_add(c->r->loop, &u->w, EPOLLOUT)) {
		close(fd);
		free(u);
		return -ENOMEM;
	}
	c->r->m.upstream_conns++;
	c->up = u;
	return 0;
}

/* Dial the next address in c->addrs; 502 once none is left. */
static int connect_next(struct cconn *c)
{
	while (c->addr_i < c->addrs.n) {
		const struct sockaddr *sa = (struct sockaddr *)&c->addrs.addr[c->addr_i];
		int one = 1, fd;

		c->addr_i++;
		fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (fd < 0)
			continue;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		if (connect(fd, sa, c->addrs.len[c->addr_i - 1]) && errno != EINPROGRESS) {
			close(fd);
			continue;
		}
		if (attach_upstream(c, fd))
			return conn_close(c);
		set_state(c, C_CONNECT);
		update_interest(c);
		return 0;
	}
	return upstream_error(c, 0);
}

static void resolved_cb(void *arg, const char *err, const struct egd_resolved *res)
{
	struct cconn *c = arg;

	c->rq = NULL;
	if (err) {
		egd_debug("router: resolving %s: %s", c->route.host, err);
		upstream_error(c, 0);
		return;
	}
	c->addrs = *res;
	c->addr_i = 0;
	connect_next(c);
}

/* An upstream for the exchange: a pooled one when @may_pool, else dial. */
static int get_upstream(struct cconn *c, int may_pool)
{
	struct router *r = c->r;
	struct uconn *u = may_pool ? pool_take(r, c->route.hostport) : NULL;

	if (u) {
		u->owner = c;
		c->up = u;
		c->x.from_pool = 1;
		r->m.pool_reused++;
		set_state(c, C_PROXY);
		update_interest(c);
		return 0;
	}
	if (c->route.has_ip) {
		c->addrs.n = 1;
		memcpy(&c->addrs.addr[0], &c->route.ip, sizeof(c->route.ip));
		c->addrs.len[0] = c->route.ip_len;
		c->addr_i = 0;
		return connect_next(c);
	}
	set_state(c, C_RESOLVE);
	update_interest(c);
	c->rq = egd_rdns_resolve(r->resolver, c->route.host, htons(c->route.port), resolved_cb, c);
	if (!c->rq)
		return upstream_error(c, 0);
	return 0;
}

static int req_body_cb(void *ctx, const uint8_t *data, size_t len)
{
	struct cconn *c = ctx;
	char head[EGD_HTTP_CHUNK_HDR_MAX_BYTES];
	int err;

	c->x.bytes_in += len;
	if (!c->x.req_chunked)
		return buf_add(&c->uout, data, len);
	err = buf_add(&c->uout, head, egd_http_chunk_head(head, len));
	err = err ?: buf_add(&c->uout, data, len);
	return err ?: buf_add(&c->uout, EGD_HTTP_CHUNK_TAIL, 2);
}

static int resp_body_cb(void *ctx, const uint8_t *data, size_t len)
{
	struct cconn *c = ctx;
	char head[EGD_HTTP_CHUNK_HDR_MAX_BYTES];
	int err;

	c->x.bytes_out += len;
	if (!c->x.client_chunked)
		return buf_add(&c->cout, data, len);
	err = buf_add(&c->cout, head, egd_http_chunk_head(head, len));
	err = err ?: buf_add(&c->cout, data, len);
	return err ?: buf_add(&c->cout, EGD_HTTP_CHUNK_TAIL, 2);
}

static int is_healthz(const struct egd_http_msg *m)
{
	size_t n = strcspn(m->target, "?");

	return strcmp(m->method, "GET") == 0 && n == 8 && strncmp(m->target, "/healthz", 8) == 0;
}

/* A request head is complete: answer it here or start proxying it. */
static int start_request(struct cconn *c, int done)
{
	const struct egd_http_msg *m = egd_http_parser_msg(c->req);
	struct router *r = c->r;

	c->nreq++;
	c->x.t_start = egd_now_ms();
	c->x.req_done = done;
	c->x.req_chunked = m->chunked;
	snprintf(c->x.method, sizeof(c->x.method), "%s", m->method);
	egd_route_path_only(m->target, c->x.path, sizeof(c->x.path));
	if (is_healthz(m))
		return respond(c, 200, "{\"status\":\"ok\"}", 1);
	if (strcmp(m->method, "CONNECT") == 0 || m->target[0] != '/')
		return respond_detail(c, strcmp(m->method, "CONNECT") ? 400 : 405,
				      strcmp(m->method, "CONNECT") ? "Invalid request target." :
								     "Method Not Allowed",
				      NULL);
	r->rcfg.token = r->cfg->token[0] ? r->cfg->token : NULL;
	if (egd_route_request(&r->rcfg, m, &c->route))
		return respond_detail(c, c->route.status, c->route.detail, NULL);
	c->x.upgrade = egd_http_header_has_token(m, "connection", "upgrade") &&
		       egd_http_header_has_token(m, "upgrade", "websocket");
	c->x.head_only = strcmp(m->method, "HEAD") == 0;
	if (!done && egd_http_header_has_token(m, "expect", "100-continue") &&
	    buf_add(&c->cout, "HTTP/1.1 100 Continue\r\n\r\n", 25))
		return conn_close(c);
	if (build_upstream_head(c, m))
		return conn_close(c);
	return get_upstream(c, 1);
}

/* C_HEAD: parse what the client sent; answer or start each request. */
static int process_head(struct cconn *c)
{
	while (c->st == C_HEAD && c->in_off < c->in_len) {
		size_t consumed = 0;
		int res;

		c->head_started = 1;
		res = egd_http_parse(c->req, c->in + c->in_off, c->in_len - c->in_off, &consumed);
		c->in_off += consumed;
		if (res < 0) {
			int st = egd_http_parser_status(c->req);

			c->x.t_start = egd_now_ms();
			snprintf(c->x.method, sizeof(c->x.method), "-");
			return respond_detail(c, st ? st : 400, egd_http_reason(st ? st : 400),
					      NULL);
		}
		if (res == EGD_HTTP_MORE)
			break;
		if (start_request(c, res == EGD_HTTP_DONE))
			return -1;
	}
	if (c->in_off == c->in_len)
		c->in_off = c->in_len = 0;
	return 0;
}

/* C_PROXY: move request body from c->in to the upstream buffer. */
static int pump_request(struct cconn *c)
{
	while (!c->x.req_done && c->in_off < c->in_len && buf_pending(&c->uout) < OUT_HIGH_BYTES) {
		size_t consumed = 0;
		int res = egd_http_parse(c->req, c->in + c->in_off, c->in_len - c->in_off,
					 &consumed);

		c->in_off += consumed;
		if (res < 0)
			return conn_close(c); /* a broken body: nothing to answer cleanly */
		if (res == EGD_HTTP_DONE) {
			c->x.req_done = 1;
			if (c->x.req_chunked && buf_add(&c->uout, EGD_HTTP_CHUNK_LAST, 5))
				return conn_close(c);
		}
	}
	if (c->in_off == c->in_len)
		c->in_off = c->in_len = 0;
	return 0;
}

static int send_response_head(struct cconn *c, const struct egd_http_msg *rm)
{
	const struct egd_http_msg *qm = egd_http_parser_msg(c->req);
	struct router *r = c->r;
	struct buf *b = &c->cout;
	int ws = rm->status == 101;
	int no_body = c->x.head_only || rm->status < 200 || rm->status == 204 ||
		      rm->status == 304;
	int err;

	c->x.status = rm->status;
	c->x.keep_alive = qm->keep_alive && !r->draining &&
			  c->nreq < r->cfg->max_requests_per_conn;
	err = buf_printf(b, "HTTP/1.1 %d ", rm->status);
	err = err ?: buf_add(b, rm->reason, strlen(rm->reason));
	err = err ?: buf_add(b, "\r\n", 2);
	for (size_t i = 0; i < rm->nheaders && !err; i++) {
		const struct egd_http_header *h = &rm->headers[i];

		if (ws && (strcasecmp(h->name, "upgrade") == 0 ||
			   strcasecmp(h->name, "connection") == 0)) {
			err = buf_header(b, h->name, h->value);
			continue;
		}
		if (egd_route_drop_response_header(rm, h->name))
			continue;
		err = buf_header(b, h->name, h->value);
	}
	if (ws) {
		/* Connection and Upgrade came with the 101. */
	} else if (rm->content_length >= 0 && (!no_body || c->x.head_only ||
					       rm->status == 304)) {
		err = err ?: buf_printf(b, "Content-Length: %" PRId64 "\r\n", rm->content_length);
	} else if (no_body) {
	} else if (qm->version_minor >= 1) {
		c->x.client_chunked = 1;
		err = err ?: buf_add(b, "Transfer-Encoding: chunked\r\n", 28);
	} else {
		c->x.keep_alive = 0; /* the body ends when the connection does */
	}
	if (!ws) {
		if (!c->x.req_done)
			c->x.keep_alive = 0;
		err = err ?: buf_header(b, "Connection", c->x.keep_alive ? "keep-alive" : "close");
	}
	err = err ?: buf_add(b, "\r\n", 2);
	c->x.resp_head_sent = 1;
	observe_latency(&r->m, egd_now_ms() - c->x.t_start);
	return err;
}

/* The response ended: account, pool the upstream, go on with the client. */
static int finish_exchange(struct cconn *c)
{
	const struct egd_http_msg *rm = egd_http_parser_msg(c->resp);
	struct uconn *u = c->up;

	account(c, rm->status);
	c->up = NULL;
	if (rm->keep_alive && c->x.req_done && !buf_pending(&c->uout) &&
	    c->uin_off == c->uin_len && c->r->cfg->pool_per_target)
		pool_put(c->r, u);
	else
		uconn_close(u);
	c->uin_off = c->uin_len = 0;
	if (next_request(c, c->x.keep_alive && c->x.req_done))
		return -1;
	/* A pipelined request may be waiting in c->in already. */
	return process_head(c);
}

static int start_ws(struct cconn *c)
{
	struct router *r = c->r;

	c->x.t_ws = egd_now_ms();
	r->m.ws_open++;
	r->m.ws_total++;
	account(c, 101);
	set_state(c, C_WS);
	/* Bytes that came with the 101 (a first frame) and those the client
	 * sent after its handshake belong to the relay now. */
	if (c->uin_off < c->uin_len &&
	    buf_add(&c->cout, c->uin + c->uin_off, c->uin_len - c->uin_off))
		return conn_close(c);
	c->uin_off = c->uin_len = 0;
	if (c->in_off < c->in_len && buf_add(&c->uout, c->in + c->in_off, c->in_len - c->in_off))
		return conn_close(c);
	c->in_off = c->in_len = 0;
	return 0;
}

static int feed_response(struct cconn *c)
{
	while (c->st == C_PROXY && c->uin_off < c->uin_len &&
	       buf_pending(&c->cout) < OUT_HIGH_BYTES) {
		const struct egd_http_msg *rm = egd_http_parser_msg(c->resp);
		size_t consumed = 0;
		int res;

		if (!c->x.resp_any && c->x.head_only)
			egd_http_parser_expect_no_body(c->resp);
		c->x.resp_any = 1;
		res = egd_http_parse(c->resp, c->uin + c->uin_off, c->uin_len - c->uin_off,
				     &consumed);
		c->uin_off += consumed;
		if (res < 0)
			return upstream_error(c, 0);
		if (res == EGD_HTTP_MORE)
			break;
		if (rm->status == 101) {
			if (!c->x.upgrade || res != EGD_HTTP_DONE) {
				c->x.resp_head_sent = 0;
				return respond_detail(c, 502,
						      "Backend attempted a WebSocket upgrade over "
						      "HTTP. Connect using the WebSocket protocol "
						      "instead.",
						      NULL);
			}
			if (send_response_head(c, rm))
				return conn_close(c);
			return start_ws(c);
		}
		if (rm->status < 200) {
			/* Interim answers (100, 103) are the router's own business
			 * with the sandbox; the client got its 100 from us. */
			egd_http_parser_reset(c->resp);
			c->x.resp_any = 0;
			continue;
		}
		if (!c->x.resp_head_sent && send_response_head(c, rm))
			return conn_close(c);
		if (res == EGD_HTTP_DONE) {
			if (c->x.client_chunked && buf_add(&c->cout, EGD_HTTP_CHUNK_LAST, 5))
				return conn_close(c);
			c->x.resp_done = 1;
			return finish_exchange(c);
		}
	}
	if (c->uin_off == c->uin_len)
		c->uin_off = c->uin_len = 0;
	return 0;
}

/* The upstream failed (reset, EOF, error). A pooled connection that broke
 * before any response byte is replaced once for a request that can be sent
 * again unchanged; anything else is a 502 (or a close mid-answer). */
static int upstream_failed(struct cconn *c)
{
	if (c->x.from_pool && !c->x.resp_any && c->x.retry_ok && !c->x.retried) {
		uconn_close(c->up);
		c->up = NULL;
		c->x.retried = 1;
		c->x.from_pool = 0;
		c->r->m.retries++;
		c->uout.off = c->uout.len = 0;
		if (buf_add(&c->uout, c->head_copy.p, c->head_copy.len))
			return conn_close(c);
		return get_upstream(c, 0);
	}
	return upstream_error(c, 0);
}

static ssize_t read_into(int fd, uint8_t *base, size_t *off, size_t *len, size_t cap)
{
	ssize_t n;

	if (*off == *len)
		*off = *len = 0;
	if (*len == cap && *off) {
		memmove(base, base + *off, *len - *off);
		*len -= *off;
		*off = 0;
	}
	if (*len == cap)
		return -EAGAIN;
	do
		n = recv(fd, base + *len, cap - *len, 0);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return errno == EAGAIN ? -EAGAIN : -errno;
	*len += (size_t)n;
	return n;
}

/* WebSocket relay: a side that ended is half-closed on the other once its
 * bytes are through; both ended (and flushed) closes the pair. */
static int ws_settle(struct cconn *c)
{
	if (c->x.client_eof && !buf_pending(&c->uout) && c->up)
		shutdown(c->up->w.fd, SHUT_WR);
	if (c->x.up_eof && !buf_pending(&c->cout))
		shutdown(c->w.fd, SHUT_WR);
	if (c->x.client_eof && c->x.up_eof && !buf_pending(&c->uout) && !buf_pending(&c->cout))
		return conn_close(c);
	return 0;
}

static void upstream_cb(struct egd_watch *w, uint32_t events)
{
	struct uconn *u = container_of(w, struct uconn, w);
	struct cconn *c = u->owner;
	ssize_t n;

	if (!c) {
		/* Idle in the pool: data or a close from the sandbox retires it. */
		pool_unlink(u->r, u);
		uconn_close(u);
		return;
	}
	if (c->st == C_CONNECT) {
		int err = 0;
		socklen_t len = sizeof(err);

		if (getsockopt(w->fd, SOL_SOCKET, SO_ERROR, &err, &len) || err) {
			uconn_close(c->up);
			c->up = NULL;
			connect_next(c);
			return;
		}
		set_state(c, C_PROXY);
		events |= EPOLLOUT;
	}
	if (events & EPOLLOUT) {
		if (buf_flush(&c->uout, w->fd)) {
			if (c->st == C_WS)
				conn_close(c);
			else
				upstream_failed(c);
			return;
		}
		c->t_last = egd_now_ms();
		if (c->st == C_PROXY && pump_request(c))
			return;
		if (c->st == C_WS && ws_settle(c))
			return;
	}
	if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
		n = read_into(w->fd, c->uin, &c->uin_off, &c->uin_len, sizeof(c->uin));
		if (n == 0 || (n < 0 && n != -EAGAIN)) {
			if (c->st == C_WS) {
				c->x.up_eof = 1;
				if (ws_settle(c))
					return;
			} else if (c->st == C_PROXY) {
				int res = c->x.resp_any ? egd_http_parse_eof(c->resp) : -1;

				if (res == EGD_HTTP_DONE && n == 0) {
					if (!c->x.resp_head_sent &&
					    send_response_head(c, egd_http_parser_msg(c->resp)))
						return (void)conn_close(c);
					c->x.resp_done = 1;
					if (c->x.client_chunked &&
					    buf_add(&c->cout, EGD_HTTP_CHUNK_LAST, 5))
						return (void)conn_close(c);
					c->x.keep_alive = 0;
					finish_exchange(c);
					return;
				}
				if (c->x.resp_any && c->x.resp_head_sent) {
					conn_close(c);
					return;
				}
				upstream_failed(c);
				return;
			}
		} else if (n > 0) {
			c->t_last = egd_now_ms();
			if (c->st == C_PROXY) {
				if (feed_response(c))
					return;
			} else if (c->st == C_WS) {
				c->x.bytes_out += (uint64_t)n;
				if (buf_add(&c->cout, c->uin + c->uin_off, c->uin_len - c->uin_off))
					return (void)conn_close(c);
				c->uin_off = c->uin_len = 0;
			}
		}
	}
	/* Try the client at once rather than waiting a turn for EPOLLOUT. */
	if (buf_pending(&c->cout) && buf_flush(&c->cout, c->w.fd))
		return (void)conn_close(c);
	if (c->st == C_CLOSING && !buf_pending(&c->cout) && !c->x.shut_wr) {
		shutdown(c->w.fd, SHUT_WR);
		c->x.shut_wr = 1;
	}
	update_interest(c);
}

static void client_cb(struct egd_watch *w, uint32_t events)
{
	struct cconn *c = container_of(w, struct cconn, w);
	ssize_t n;

	if (events & EPOLLOUT) {
		if (buf_flush(&c->cout, w->fd))
			return (void)conn_close(c);
		c->t_last = egd_now_ms();
		if (c->st == C_PROXY && feed_response(c))
			return;
		if (c->st == C_WS && ws_settle(c))
			return;
	}
	if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
		if (c->st == C_CLOSING) {
			char sink[IO_CHUNK_BYTES];

			n = recv(w->fd, sink, sizeof(sink), 0);
			if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
				return (void)conn_close(c);
			return;
		}
		n = read_into(w->fd, c->in, &c->in_off, &c->in_len, sizeof(c->in));
		if (n == 0 || (n < 0 && n != -EAGAIN)) {
			if (c->st == C_WS) {
				c->x.client_eof = 1;
				if (ws_settle(c))
					return;
			} else {
				return (void)conn_close(c);
			}
		} else if (n > 0) {
			c->t_last = egd_now_ms();
			if (c->st == C_HEAD && process_head(c))
				return;
			if (c->st == C_PROXY && pump_request(c))
				return;
			if (c->st == C_WS) {
				c->x.bytes_in += (uint64_t)n;
				if (buf_add(&c->uout, c->in + c->in_off, c->in_len - c->in_off))
					return (void)conn_close(c);
				c->in_off = c->in_len = 0;
			}
		}
	}
	if (c->up && buf_pending(&c->uout) && c->st != C_CONNECT) {
		if (buf_flush(&c->uout, c->up->w.fd)) {
			if (c->st == C_WS)
				return (void)conn_close(c);
			upstream_failed(c);
			return;
		}
		if (c->st == C_PROXY && pump_request(c))
			return;
	}
	if (buf_pending(&c->cout) && buf_flush(&c->cout, w->fd))
		return (void)conn_close(c);
	if (c->st == C_CLOSING && !buf_pending(&c->cout) && !c->x.shut_wr) {
		shutdown(w->fd, SHUT_WR);
		c->x.shut_wr = 1;
	}
	update_interest(c);
}

static void conn_timer_cb(struct egd_timer *t)
{
	struct cconn *c = container_of(t, struct cconn, t);
	unsigned long long now = egd_now_ms(), at = deadline(c);

	if (now < at) {
		egd_timer_arm(c->r->loop, &c->t, at);
		return;
	}
	switch (c->st) {
	case C_RESOLVE:
	case C_CONNECT:
		egd_rdns_cancel(c->rq);
		c->rq = NULL;
		upstream_error(c, 1);
		return;
	case C_PROXY:
		if (!c->x.resp_head_sent)
			upstream_error(c, 1);
		else
			conn_close(c);
		return;
	default:
		conn_close(c);
		return;
	}
}

static int peer_text(const struct sockaddr_storage *ss, char *out, size_t len)
{
	if (ss->ss_family == AF_INET)
		return inet_ntop(AF_INET, &((struct sockaddr_in *)ss)->sin_addr, out,
				 (socklen_t)len) ? 0 : -1;
	if (ss->ss_family == AF_INET6) {
		const struct in6_addr *a = &((struct sockaddr_in6 *)ss)->sin6_addr;

		/* A v4 client on a dual-stack socket is logged as v4. */
		if (IN6_IS_ADDR_V4MAPPED(a))
			return inet_ntop(AF_INET, a->s6_addr + 12, out, (socklen_t)len) ? 0 : -1;
		return inet_ntop(AF_INET6, a, out, (socklen_t)len) ? 0 : -1;
	}
	snprintf(out, len, "unknown");
	return 0;
}

static void accept_client(struct router *r, int fd, const struct sockaddr_storage *ss)
{
	struct cconn *c;
	int one = 1;

	if (r->nconns >= r->cfg->max_conns) {
		r->m.refused_conns++;
		close(fd);
		return;
	}
	c = calloc(1, sizeof(*c));
	if (!c) {
		close(fd);
		return;
	}
	c->r = r;
	c->w.fd = fd;
	c->w.cb = client_cb;
	c->t.cb = conn_timer_cb;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	peer_text(ss, c->peer, sizeof(c->peer));
	c->trusted = r->cfg->ntrusted &&
		     egd_route_cidr_contains(r->cfg->trusted, r->cfg->ntrusted,
					     (struct sockaddr *)ss);
	c->req = egd_http_parser_new(EGD_HTTP_REQUEST, SIZE_MAX);
	c->resp = egd_http_parser_new(EGD_HTTP_RESPONSE, SIZE_MAX);
	if (!c->req || !c->resp || egd_loop_add(r->loop, &c->w, EPOLLIN)) {
		egd_http_parser_destroy(c->req);
		egd_http_parser_destroy(c->resp);
		free(c);
		close(fd);
		return;
	}
	egd_http_parser_set_body_cb(c->req, req_body_cb, c);
	egd_http_parser_set_body_cb(c->resp, resp_body_cb, c);
	c->ev = EPOLLIN;
	c->next = r->conns;
	if (r->conns)
		r->conns->prev = c;
	r->conns = c;
	r->nconns++;
	set_state(c, C_HEAD);
}

/* ---- admin: /healthz, /readyz, /metrics -------------------------------- */

static void admin_close(struct admin_conn *a)
{
	egd_timer_cancel(a->r->loop, &a->t);
	egd_loop_del(a->r->loop, &a->w);
	close(a->w.fd);
	free(a);
}

static void metrics_text(struct router *r, struct buf *b)
{
	struct metrics *m = &r->m;
	buf_printf(b, "# HELP egressd_router_requests_total Requests answered, by status class "
		      "and sandbox namespace.\n# TYPE egressd_router_requests_total counter\n");
	for (size_t i = 0; i <= NS_METRICS_MAX; i++) {
		if (i >= m->nns && i != NS_METRICS_MAX)
			continue;
		if (!m->ns[i].ns[0])
			continue;
		for (int k = 1; k <= 5; k++)
			buf_printf(b,
				   "egressd_router_requests_total{class=\"%dxx\",namespace=\"%s\"} "
				   "%llu\n",
				   k, m->ns[i].ns, m->ns[i].by_class[k]);
	}
	buf_printf(b, "# HELP egressd_router_upstream_latency_seconds Time from a request's "
		      "head to its response's head.\n"
		      "# TYPE egressd_router_upstream_latency_seconds histogram\n");
	for (size_t i = 0; i < N_BUCKETS; i++) {
		buf_printf(b, "egressd_router_upstream_latency_seconds_bucket{le=\"%g\"} %llu\n",
			   latency_buckets_s[i], m->lat_bucket[i]);
	}
	buf_printf(b,
		   "egressd_router_upstream_latency_seconds_bucket{le=\"+Inf\"} %llu\n"
		   "egressd_router_upstream_latency_seconds_sum %.6f\n"
		   "egressd_router_upstream_latency_seconds_count %llu\n",
		   m->lat_count, m->lat_sum, m->lat_count);
	buf_printf(b,
		   "# TYPE egressd_router_websockets_open gauge\n"
		   "egressd_router_websockets_open %llu\n"
		   "# TYPE egressd_router_websockets_total counter\n"
		   "egressd_router_websockets_total %llu\n"
		   "# TYPE egressd_router_pool_idle gauge\negressd_router_pool_idle %u\n"
		   "# TYPE egressd_router_upstream_connections gauge\n"
		   "egressd_router_upstream_connections %llu\n"
		   "# TYPE egressd_router_pool_reused_total counter\n"
		   "egressd_router_pool_reused_total %llu\n"
		   "# TYPE egressd_router_retries_total counter\n"
		   "egressd_router_retries_total %llu\n"
		   "# TYPE egressd_router_client_connections gauge\n"
		   "egressd_router_client_connections %u\n"
		   "# TYPE egressd_router_refused_connections_total counter\n"
		   "egressd_router_refused_connections_total %llu\n"
		   "# TYPE egressd_router_draining gauge\negressd_router_draining %d\n",
		   m->ws_open, m->ws_total, r->nidle, m->upstream_conns, m->pool_reused,
		   m->retries, r->nconns, m->refused_conns, r->draining);
}

static void admin_answer(struct admin_conn *a)
{
	struct buf body = { 0 }, out = { 0 };
	int status = 200;
	const char *type = "application/json";

	if (strncmp(a->buf, "GET /healthz ", 13) == 0) {
		buf_printf(&body, "{\"status\":\"ok\"}");
	} else if (strncmp(a->buf, "GET /readyz ", 12) == 0) {
		status = a->r->draining ? 503 : 200;
		buf_printf(&body, "{\"status\":\"%s\"}", a->r->draining ? "draining" : "ready");
	} else if (strncmp(a->buf, "GET /metrics ", 13) == 0) {
		type = "text/plain; version=0.0.4";
		metrics_text(a->r, &body);
	} else {
		status = 404;
		buf_printf(&body, "{\"detail\":\"Not Found\"}");
	}
	buf_printf(&out, "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
			 "Connection: close\r\n\r\n",
		   status, egd_http_reason(status), type, buf_pending(&body));
	if (body.p)
		buf_add(&out, body.p, buf_pending(&body));
	/* A few KiB into a fresh socket buffer: one send, or the client loses. */
	if (out.p && send(a->w.fd, out.p, buf_pending(&out), MSG_NOSIGNAL) < 0)
		egd_debug("router admin: send: %s", strerror(errno));
	buf_free(&body);
	buf_free(&out);
	admin_close(a);
}

static void admin_cb(struct egd_watch *w, uint32_t events)
{
	struct admin_conn *a = container_of(w, struct admin_conn, w);
	ssize_t n;

	(void)events;
	n = recv(w->fd, a->buf + a->len, sizeof(a->buf) - 1 - a->len, 0);
	if (n <= 0) {
		if (n < 0 && errno == EAGAIN)
			return;
		return admin_close(a);
	}
	a->len += (size_t)n;
	a->buf[a->len] = '\0';
	if (strstr(a->buf, "\r\n\r\n"))
		return admin_answer(a);
	if (a->len == sizeof(a->buf) - 1)
		admin_close(a);
}

static void admin_timer_cb(struct egd_timer *t)
{
	admin_close(container_of(t, struct admin_conn, t));
}

static void listener_cb(struct egd_watch *w, uint32_t events)
{
	struct listener *l = container_of(w, struct listener, w);
	struct router *r = l->r;

	(void)events;
	for (;;) {
		struct sockaddr_storage ss;
		socklen_t len = sizeof(ss);
		int fd = accept4(w->fd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);

		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			if (errno != EAGAIN)
				egd_warn("router: accept: %s", strerror(errno));
			return;
		}
		if (!l->admin) {
			accept_client(r, fd, &ss);
			continue;
		}
		struct admin_conn *a = calloc(1, sizeof(*a));

		if (!a) {
			close(fd);
			continue;
		}
		a->r = r;
		a->w.fd = fd;
		a->w.cb = admin_cb;
		a->t.cb = admin_timer_cb;
		if (egd_loop_add(r->loop, &a->w, EPOLLIN)) {
			close(fd);
			free(a);
			continue;
		}
		egd_timer_arm(r->loop, &a->t, egd_now_ms() + ADMIN_TIMEOUT_MS);
	}
}

static int listen_on(struct router *r, struct listener *l, const struct egd_addr *a, int admin)
{
	struct sockaddr_storage ss = { 0 };
	socklen_t len;
	int one = 1, fd;

	if (a->family == EGD_AF_INET6) {
		struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;

		s6->sin6_family = AF_INET6;
		s6->sin6_port = a->port;
		memcpy(&s6->sin6_addr, a->addr, 16);
		len = sizeof(*s6);
	} else {
		struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;

		s4->sin_family = AF_INET;
		s4->sin_port = a->port;
		s4->sin_addr.s_addr = a->addr[0];
		len = sizeof(*s4);
	}
	fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&ss, len) || listen(fd, LISTEN_BACKLOG)) {
		int err = -errno;

		close(fd);
		return err;
	}
	l->r = r;
	l->admin = admin;
	l->w.fd = fd;
	l->w.cb = listener_cb;
	if (egd_loop_add(r->loop, &l->w, EPOLLIN)) {
		close(fd);
		return -ENOMEM;
	}
	return 0;
}

/* ---- shutdown ---------------------------------------------------------- */

static void drain_cb(struct egd_timer *t)
{
	struct router *r = container_of(t, struct router, drain);

	egd_warn("router: drain deadline passed with %u connection(s) open", r->nconns);
	egd_loop_stop(r->loop);
}

static void start_drain(struct router *r)
{
	struct cconn *c, *next;

	if (r->draining)
		return;
	r->draining = 1;
	egd_info("router: draining %u connection(s), at most %u s", r->nconns,
		 r->cfg->shutdown_s);
	egd_loop_del(r->loop, &r->main.w);
	close(r->main.w.fd);
	r->main.w.fd = -1;
	while (r->pool_head) {
		struct uconn *u = r->pool_head;

		pool_unlink(r, u);
		uconn_close(u);
	}
	/* Connections between requests go now; the others finish theirs and
	 * are told Connection: close. */
	for (c = r->conns; c; c = next) {
		next = c->next;
		if (c->st == C_HEAD && !c->head_started)
			conn_close(c);
	}
	egd_timer_arm(r->loop, &r->drain, egd_now_ms() + r->cfg->shutdown_s * 1000ULL);
	maybe_drained(r);
}

static void signal_cb(struct egd_watch *w, uint32_t events)
{
	struct router *r = container_of(w, struct router, sig);
	struct signalfd_siginfo si;

	(void)events;
	while (read(w->fd, &si, sizeof(si)) == (ssize_t)sizeof(si))
		start_drain(r);
}

int egd_router_main(int argc, char **argv)
{
	static struct egd_router_config cfg;
	struct router r = { 0 };
	sigset_t set;
	int rc = 1, err;

	if (egd_router_config_load(&cfg, argc, argv))
		return 2;
	egd_log_set_level(cfg.log_level);
	r.cfg = &cfg;
	r.rcfg.cluster_domain = cfg.cluster_domain;
	r.rcfg.default_timeout_ms = cfg.timeout_s * 1000U;
	r.rcfg.allowed = cfg.allowed;
	r.rcfg.nallowed = cfg.nallowed;
	if (!cfg.token[0])
		egd_warn("router: ALLOW_UNAUTHENTICATED_ROUTER=true: no token is checked");
	if (strcmp(cfg.access_log, "off") == 0) {
		r.access = NULL;
	} else if (cfg.access_log[0]) {
		r.access = fopen(cfg.access_log, "ae");
		if (!r.access) {
			egd_err("router: ROUTER_ACCESS_LOG %s: %s", cfg.access_log,
				strerror(errno));
			return 1;
		}
		setvbuf(r.access, NULL, _IOLBF, 0);
	} else {
		r.access = stdout;
		setvbuf(stdout, NULL, _IOLBF, 0);
	}
	signal(SIGPIPE, SIG_IGN);
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigprocmask(SIG_BLOCK, &set, NULL);
	r.loop = egd_loop_new();
	if (!r.loop)
		goto out;
	r.resolver = egd_rdns_new(r.loop);
	if (!r.resolver) {
		egd_err("router: resolver: %s", strerror(errno));
		goto out_loop;
	}
	r.sig.fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
	r.sig.cb = signal_cb;
	if (r.sig.fd < 0 || egd_loop_add(r.loop, &r.sig, EPOLLIN))
		goto out_resolver;
	err = listen_on(&r, &r.main, &cfg.listen, 0);
	if (err) {
		egd_err("router: ROUTER_LISTEN: %s", strerror(-err));
		goto out_sig;
	}
	if (cfg.admin.family) {
		err = listen_on(&r, &r.admin, &cfg.admin, 1);
		if (err) {
			egd_err("router: ROUTER_ADMIN_LISTEN: %s", strerror(-err));
			goto out_main;
		}
	}
	r.sweep.cb = sweep_cb;
	r.drain.cb = drain_cb;
	egd_timer_arm(r.loop, &r.sweep, egd_now_ms() + POOL_SWEEP_MS);
	egd_info("router: listening (auth %s, domain %s, timeout %u s)",
		 cfg.token[0] ? "on" : "OFF", cfg.cluster_domain, cfg.timeout_s);
	rc = egd_loop_run(r.loop) ? 1 : 0;
	while (r.conns)
		conn_close(r.conns);
	while (r.pool_head) {
		struct uconn *u = r.pool_head;

		pool_unlink(&r, u);
		uconn_close(u);
	}
	egd_timer_cancel(r.loop, &r.sweep);
	egd_timer_cancel(r.loop, &r.drain);
	if (cfg.admin.family) {
		egd_loop_del(r.loop, &r.admin.w);
		close(r.admin.w.fd);
	}
out_main:
	if (r.main.w.fd >= 0) {
		egd_loop_del(r.loop, &r.main.w);
		close(r.main.w.fd);
	}
out_sig:
	egd_loop_del(r.loop, &r.sig);
	close(r.sig.fd);
out_resolver:
	egd_rdns_free(r.resolver);
out_loop:
	egd_loop_free(r.loop);
out:
	if (r.access && r.access != stdout)
		fclose(r.access);
	return rc;
}
