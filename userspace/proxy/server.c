// SPDX-License-Identifier: MIT
/*
 * The policy proxy's connections; see server.h. A connection alternates
 * between reading a request (parser fed from its input buffer) and answering
 * it (busy: the policy decided, perhaps a workspace lookup, then the
 * upstream exchange). Bytes of the next pipelined request wait in the input
 * buffer until the answer is queued, which keeps answers in order.
 *
 * A connection is freed from a deferred callback, never while a function up
 * the stack may still hold it: closing only marks it dead and detaches it.
 */
#include "proxy/server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "core/counter.h"
#include "core/grow.h"
#include "core/log.h"
#include "core/slots.h"
#include "datapath/origdst.h"
#include "proxy/http1.h"
#include "proxy/policy.h"
#include "proxy/sockbio.h"
#include "proxy/sse.h"
#include "proxy/upstream.h"
#include "proxy/usage.h"

#define container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

/* One read from the agent; SSL records are at most 16 KiB. */
#define SRV_READ_CHUNK_BYTES (16 * 1024)
/* Output queued beyond this while relaying a stream: the agent is not
 * reading, and the connection is dropped rather than buffering forever. */
#define SRV_OUT_MAX_BYTES (EGD_UPSTREAM_RESPONSE_MAX_BYTES + 1024 * 1024)

#define SRV_MSG_UNREACHABLE "Upstream unreachable"
#define SRV_MSG_TIMEOUT "Upstream timed out"
#define SRV_MSG_BAD_UPSTREAM "Upstream answered with an invalid response"

struct pconn {
	struct egd_proxy *p;
	struct pconn *prev, *next;
	struct pconn *ws_next; /* waiting for the workspace lookup */
	int ws_waiting;
	struct egd_watch watch;
	uint32_t events;
	struct egd_timer timer;
	SSL *ssl;
	int holds_slot; /* gives a unit of p->slots back on close */
	int handshaking;
	int prefix_rbio; /* reading the daemon's prefix from a memory BIO */
	int ssl_want_write;
	char *sni;
	struct egd_http_parser *parser;
	uint8_t *in;
	size_t in_len, in_cap;
	char *out;
	size_t out_len, out_off, out_cap;
	int busy;
	int close_after;
	int peer_eof;
	int dead;
	int in_ucb;
	int in_process; /* conn_process() is on the stack: it will go on */
	int held;	 /* output waits for the turn's commit (proxy_commit()) */
	int resume_pending; /* conn_resume() is deferred */
	int read_capped;    /* the last read stopped at the pipeline cap */
	struct pconn *held_next;

	/* The request being answered. */
	struct egd_policy_result res;
	struct egd_ledger after; /* as settle() left it, for the inference line */
	int have_after;
	char *verified_auth; /* an Authorization header that passed the key check */
	int have_res;
	char endpoint[64];
	int keep_alive;
	int version_minor;
	unsigned long long started_ms;
	unsigned long long upstream_sent_ms;
	struct egd_upstream_req *ureq;
	int status;
	char *ctype;
	int is_sse;
	int streaming;
	uint8_t *rbody;
	size_t rbody_len, rbody_cap;
	struct egd_sse *sse;
};

struct listener {
	struct egd_watch watch;
	struct egd_proxy *p;
	struct listener *next;
};

/* What the proxies of all workers share. */
struct egd_proxy_shared {
	const struct egd_proxy_config *cfg;
	struct egd_budget *budget;
	pthread_mutex_t mu;
	struct egd_ws_cache ws; /* under mu */
	int first_lookup;       /* under mu: the first proxy checks at start */
};

struct egd_proxy {
	struct egd_loop *loop;
	struct egd_proxy_shared *sh;
	const struct egd_proxy_config *cfg;
	struct egd_ca *ca;
	struct egd_budget *budget;
	struct egd_upstream *up;
	struct pconn *conns;
	size_t nconns;
	unsigned int *slots; /* egd_proxy_count_served(); NULL: not counted */
	unsigned int max_slots;
	struct listener *listeners;
	struct egd_ws_cache ws; /* copy of sh->ws, refreshed once stale */
	/* This worker's lookup refreshing the shared workspace answer. */
	struct egd_upstream_req *ws_req;
	int ws_status;
	char *ws_body;
	size_t ws_len;
	struct pconn *ws_waiters;
	/* Answers whose inference lines (in pend) must be on disk before they
	 * leave: committed once at the end of the loop's turn. */
	struct pconn *held;
	uint8_t *pend;
	size_t pend_len, pend_cap;
	int commit_err; /* the last commit's error, logged when it changes */
	/* Written by this proxy's thread only; read with relaxed loads. */
	struct egd_proxy_stats stats;
};

static void conn_cb(struct egd_watch *w, uint32_t events);
static void conn_close(struct pconn *c);
static void conn_flush(struct pconn *c);
static void conn_process(struct pconn *c);
static void conn_update_events(struct pconn *c);
static void conn_read_all(struct pconn *c);
static void conn_check_pending(struct pconn *c);
static void conn_defer_read(struct pconn *c);
static void ws_lookup_start(struct egd_proxy *p);
static void act_on_result(struct pconn *c);
static void abandon_request(struct pconn *c);

/* ---- buffers ------------------------------------------------------------- */

static int buf_append(uint8_t **buf, size_t *len, size_t *cap, const void *data, size_t n)
{
	if (*len + n > *cap) {
		uint8_t *b = egd_grow(*buf, cap, *len + n, 4096);

		if (!b)
			return -ENOMEM;
		*buf = b;
	}
	memcpy(*buf + *len, data, n);
	*len += n;
	return 0;
}

static int queue_out(struct pconn *c, const void *data, size_t n)
{
	/* Reclaim what was written before growing. */
	if (c->out_off && c->out_off == c->out_len)
		c->out_off = c->out_len = 0;
	if (c->out_len - c->out_off + n > SRV_OUT_MAX_BYTES)
		return -ENOBUFS;
	return buf_append((uint8_t **)&c->out, &c->out_len, &c->out_cap, data, n);
}

/* Queue a malloc'ed message and free it; -ENOMEM when @msg is NULL. @n is
 * read only here, after the call that produced @msg has set it. */
static int queue_owned(struct pconn *c, char *msg, const size_t *n)
{
	int err;

	if (!msg)
		return -ENOMEM;
	err = queue_out(c, msg, *n);
	free(msg);
	return err;
}

static void count_status(struct pconn *c, int status)
{
	if (status > 0 && status < EGD_PROXY_STATUS_MAX)
		EGD_COUNTER_INC(c->p->stats.by_status[status]);
}

static void send_detail(struct pconn *c, int status, const char *detail)
{
	size_t n;
	char *msg = egd_http_response_detail(status, detail, c->keep_alive, &n);

	count_status(c, status);
	if (queue_owned(c, msg, &n))
		c->close_after = 1;
}

/* ---- I/O ------------------------------------------------------------------ */

/* Swap the prefix memory BIO for the socket once OpenSSL has drained it. */
static int prefix_drained(struct pconn *c)
{
	BIO *sock;

	if (!c->prefix_rbio || BIO_ctrl_pending(SSL_get_rbio(c->ssl)))
		return 0;
	sock = egd_sockbio_new(c->watch.fd);
	if (!sock)
		return 0;
	SSL_set0_rbio(c->ssl, sock);
	c->prefix_rbio = 0;
	return 1;
}

static ssize_t conn_read(struct pconn *c, void *buf, size_t len)
{
	ssize_t n;
	int e;

	if (!c->ssl) {
		n = read(c->watch.fd, buf, len);
		return n >= 0 ? n : (errno == EAGAIN || errno == EINTR) ? -EAGAIN : -errno;
	}
	for (;;) {
		ERR_clear_error();
		n = SSL_read(c->ssl, buf, (int)len);
		if (n > 0)
			return n;
		e = SSL_get_error(c->ssl, (int)n);
		if (e == SSL_ERROR_WANT_READ && prefix_drained(c))
			continue;
		break;
	}
	if (e == SSL_ERROR_WANT_READ)
		return -EAGAIN;
	if (e == SSL_ERROR_WANT_WRITE) {
		c->ssl_want_write = 1;
		return -EAGAIN;
	}
	if (e == SSL_ERROR_ZERO_RETURN || (e == SSL_ERROR_SYSCALL && !ERR_peek_error()))
		return 0;
	return -EPROTO;
}

static ssize_t conn_write(struct pconn *c, const void *buf, size_t len)
{
	ssize_t n;
	int e;

	if (!c->ssl) {
		n = send(c->watch.fd, buf, len, MSG_NOSIGNAL);
		return n >= 0 ? n : (errno == EAGAIN || errno == EINTR) ? -EAGAIN : -errno;
	}
	ERR_clear_error();
	n = SSL_write(c->ssl, buf, (int)(len > INT32_MAX ? INT32_MAX : len));
	if (n > 0)
		return n;
	e = SSL_get_error(c->ssl, (int)n);
	if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ)
		return -EAGAIN;
	return -EPIPE;
}

static void conn_flush(struct pconn *c)
{
	if (c->held)
		return; /* proxy_commit() flushes it */
	while (!c->dead && !c->handshaking && c->out_off < c->out_len) {
		ssize_t n = conn_write(c, c->out + c->out_off, c->out_len - c->out_off);

		if (n == -EAGAIN)
			break;
		if (n < 0) {
			conn_close(c);
			return;
		}
		c->out_off += (size_t)n;
	}
	if (c->dead)
		return;
	if (c->out_off == c->out_len) {
		c->out_off = c->out_len = 0;
		if (c->close_after && !c->busy) {
			conn_close(c);
			return;
		}
	}
	conn_update_events(c);
}

static void conn_update_events(struct pconn *c)
{
	uint32_t ev = 0;

	if (c->dead)
		return;
	if (c->handshaking) {
		ev = c->ssl_want_write ? EPOLLOUT : EPOLLIN;
	} else {
		/* Stop reading while the pipeline buffer is full or the
		 * connection is ending. */
		if (!c->close_after && !c->peer_eof && c->in_len < EGD_PROXY_PIPELINE_MAX_BYTES)
			ev |= EPOLLIN;
		if ((c->out_off < c->out_len && !c->held) || c->ssl_want_write)
			ev |= EPOLLOUT;
	}
	if (ev != c->events && !egd_loop_mod(c->p->loop, &c->watch, ev))
		c->events = ev;
}

/* ---- lifetime ------------------------------------------------------------- */

static void conn_free(void *arg)
{
	struct pconn *c = arg;

	egd_http_parser_destroy(c->parser);
	SSL_free(c->ssl);
	free(c->sni);
	free(c->in);
	free(c->out);
	free(c->ctype);
	free(c->verified_auth);
	free(c->rbody);
	egd_sse_destroy(c->sse);
	free(c);
}

static void request_reset(struct pconn *c)
{
	if (c->have_res) {
		if (c->res.reserved)
			egd_budget_release(c->p->budget, c->res.reservation_usd);
		egd_policy_result_fini(&c->res);
		c->have_res = 0;
	}
	free(c->ctype);
	c->ctype = NULL;
	c->rbody_len = 0;
	egd_sse_destroy(c->sse);
	c->sse = NULL;
	c->status = 0;
	c->is_sse = c->streaming = 0;
}

static void ws_unwait(struct pconn *c)
{
	struct pconn **pp;

	for (pp = &c->p->ws_waiters; *pp; pp = &(*pp)->ws_next) {
		if (*pp == c) {
			*pp = c->ws_next;
			break;
		}
	}
	c->ws_waiting = 0;
	c->ws_next = NULL;
}

static void unhold(struct pconn *c)
{
	struct pconn **pp;

	for (pp = &c->p->held; *pp; pp = &(*pp)->held_next) {
		if (*pp == c) {
			*pp = c->held_next;
			break;
		}
	}
	c->held = 0;
	c->held_next = NULL;
}

static void conn_close(struct pconn *c)
{
	struct egd_proxy *p = c->p;

	if (c->dead)
		return;
	c->dead = 1;
	abandon_request(c);
	/* Inside an upstream callback, the callback's return value ends the
	 * request; cancelling here would free it under the upstream's feet. */
	if (c->ureq && !c->in_ucb)
		egd_upstream_cancel(c->ureq);
	c->ureq = NULL;
	if (c->ws_waiting)
		ws_unwait(c);
	if (c->held)
		unhold(c);
	request_reset(c);
	/* A close_notify tells the agent the end is deliberate; one
	 * non-blocking attempt, no waiting for the peer's. */
	if (c->ssl && !c->handshaking) {
		ERR_clear_error();
		SSL_shutdown(c->ssl);
	}
	egd_timer_cancel(p->loop, &c->timer);
	egd_loop_del(p->loop, &c->watch);
	close(c->watch.fd);
	c->watch.fd = -1;
	if (c->prev)
		c->prev->next = c->next;
	else
		p->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	EGD_COUNTER_DEC(p->nconns);
	if (c->holds_slot)
		egd_slot_give(p->slots);
	if (egd_loop_defer(p->loop, conn_free, c))
		egd_warn("proxy: cannot defer a free; leaking one connection");
}

static void conn_timeout(struct egd_timer *t)
{
	conn_close(container_of(t, struct pconn, timer));
}

/* 0, or -ENOMEM when the loop's timer heap cannot grow: the caller closes
 * the connection rather than keep one that no deadline would ever end. */
static int conn_arm_idle(struct pconn *c)
{
	return egd_timer_arm(c->p->loop, &c->timer,
			     egd_now_ms() + (c->handshaking ? EGD_PROXY_HANDSHAKE_TIMEOUT_MS :
							      EGD_PROXY_IDLE_TIMEOUT_MS));
}

static struct pconn *conn_new(struct egd_proxy *p, int fd, const uint8_t *prefix,
			      size_t prefix_len, int tls)
{
	struct pconn *c = calloc(1, sizeof(*c));
	int one = 1;

	if (!c)
		return NULL;
	c->p = p;
	c->watch.fd = fd;
	c->watch.cb = conn_cb;
	c->timer.cb = conn_timeout;
	c->keep_alive = 1;
	c->parser = egd_http_parser_new(EGD_HTTP_REQUEST, p->cfg->max_request_bytes);
	if (!c->parser)
		goto err_free;
	if (!tls && prefix_len && buf_append(&c->in, &c->in_len, &c->in_cap, prefix, prefix_len))
		goto err_free;
	if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK))
		goto err_free;
	/* Answers are written whole; Nagle would delay each SSE chunk. */
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	return c;
err_free:
	egd_http_parser_destroy(c->parser);
	free(c->in);
	free(c);
	return NULL;
}

static int conn_register(struct pconn *c)
{
	struct egd_proxy *p = c->p;
	int err;

	c->events = EPOLLIN;
	err = egd_loop_add(p->loop, &c->watch, EPOLLIN);
	if (err)
		return err;
	err = conn_arm_idle(c);
	if (err) {
		egd_loop_del(p->loop, &c->watch);
		return err;
	}
	c->next = p->conns;
	if (p->conns)
		p->conns->prev = c;
	p->conns = c;
	EGD_COUNTER_INC(p->nconns);
	return 0;
}

/* ---- answering ------------------------------------------------------------ */

/* Record the request's outcome. The line is committed with the others of
 * this loop turn, and @c's output waits for it (proxy_commit()). */
static void log_inference(struct pconn *c, int status, const struct egd_usage *u, double cost,
			  const char *error)
{
	struct egd_proxy *p = c->p;
	struct egd_inference r = { 0 };
	struct egd_ledger snap;
	char *line;

	/* The ledger as this request's charge left it, else as it is now. */
	if (c->have_after)
		snap = c->after;
	else
		egd_budget_snapshot(p->budget, &snap);
	c->have_after = 0;
	r.endpoint = c->endpoint;
	r.model = c->res.model;
	r.status_code = status;
	r.total_cost_usd = snap.spent_usd;
	r.budget_remaining_usd = egd_ledger_remaining(&snap);
	clock_gettime(CLOCK_REALTIME, &r.timestamp);
	r.usage = u;
	r.cost_usd = cost;
	r.latency_ms = (int64_t)(egd_now_ms() - c->started_ms);
	r.error = error;
	line = egd_inference_line(&r);
	if (!line || buf_append(&p->pend, &p->pend_len, &p->pend_cap, line, strlen(line)))
		egd_warn("proxy: cannot queue an inference line");
	free(line);
	if (!c->dead && !c->held) {
		c->held = 1;
		c->held_next = p->held;
		p->held = c;
	}
	/* Answers that arrive meanwhile join this commit. */
	egd_loop_poll_again(p->loop);
}

/* End of the loop's turn: the turn's inference lines and the newest ledger
 * go to disk in one commit, then the answers they describe leave. */
static void proxy_commit(void *arg)
{
	struct egd_proxy *p = arg;
	struct pconn *c, *next;
	int err;

	if (!p->held && !p->pend_len)
		return;
	err = egd_budget_commit(p->budget, (const char *)p->pend, p->pend_len);
	p->pend_len = 0;
	if (err != p->commit_err) {
		if (err)
			egd_warn("proxy: cannot write the usage files: %s", strerror(-err));
		else
			egd_info("proxy: the usage files are written again");
		p->commit_err = err;
	}
	c = p->held;
	p->held = NULL;
	for (; c; c = next) {
		next = c->held_next;
		c->held = 0;
		c->held_next = NULL;
		conn_flush(c);
	}
}

/* The answer is queued: forget the request, read the next one. */
static void request_done(struct pconn *c)
{
	request_reset(c);
	c->busy = 0;
	if (!c->keep_alive)
		c->close_after = 1;
	conn_flush(c);
	if (c->dead)
		return;
	if (conn_arm_idle(c)) {
		conn_close(c);
		return;
	}
	/* A local answer comes from inside conn_process(), whose loop picks
	 * up the next request; recursing would grow the stack with each
	 * pipelined request. */
	if (!c->in_process)
		conn_process(c);
}

/* Charge the ledger for a finished upstream exchange; 1 when over the cap. */
static int settle(struct pconn *c, const struct egd_usage *u, int status, double *cost)
{
	int over;

	*cost = egd_ledger_charge(u, status, c->res.reservation_usd);
	over = egd_budget_settle(c->p->budget, c->res.reservation_usd, c->res.model, *cost,
				 u->prompt_tokens, u->completion_tokens, &c->after);
	c->have_after = 1;
	c->res.reserved = 0;
	return over > 0;
}

/* The agent left while its request was upstream. The upstream bills it
 * anyway, so charge what the stream reported so far, or the reservation
 * when it reported nothing: leaving early must not make a request free. */
static void abandon_request(struct pconn *c)
{
	struct egd_usage u = { 0 };
	double cost;

	if (!c->have_res || !c->res.reserved || (!c->ureq && !c->in_ucb))
		return;
	if (c->sse)
		u = egd_sse_summary(c->sse)->usage;
	settle(c, &u, c->status ? c->status : 200, &cost);
	log_inference(c, c->status, &u, cost, "agent disconnected");
}

static void upstream_failed(struct pconn *c, int err)
{
	int status = err == -ETIMEDOUT ? 504 : 502;
	const char *msg = err == -ETIMEDOUT ? SRV_MSG_TIMEOUT
			  : err == -EBADMSG ? SRV_MSG_BAD_UPSTREAM
					    : SRV_MSG_UNREACHABLE;

	egd_budget_release(c->p->budget, c->res.reservation_usd);
	c->res.reserved = 0;
	EGD_COUNTER_INC(c->p->stats.upstream_failures);
	send_detail(c, status, msg);
	log_inference(c, status, NULL, 0, msg);
}

static void finish_stream(struct pconn *c, int err)
{
	struct egd_usage u;
	double cost;

	egd_sse_finish(c->sse);
	u = egd_sse_summary(c->sse)->usage;
	settle(c, &u, c->status, &cost);
	if (err) {
		/* The status line is gone; ending without the last chunk is
		 * how the agent learns the stream broke. */
		log_inference(c, c->status, &u, cost, "upstream stream interrupted");
		c->keep_alive = 0;
		c->close_after = 1;
		return;
	}
	if (queue_out(c, EGD_HTTP_CHUNK_LAST, strlen(EGD_HTTP_CHUNK_LAST)))
		c->close_after = 1;
	log_inference(c, c->status, &u, cost, NULL);
}

static void finish_buffered(struct pconn *c)
{
	struct egd_usage u;
	double cost;
	size_t n;
	int over;

	if (c->sse) {
		egd_sse_finish(c->sse);
		u = egd_sse_summary(c->sse)->usage;
	} else {
		egd_usage_from_body((const char *)c->rbody, c->rbody_len, &u);
	}
	over = settle(c, &u, c->status, &cost);
	/* As the reference: the answer that pushed spend over the cap is
	 * withheld; its cost still counts. */
	if (over && c->status < 400) {
		send_detail(c, 429, EGD_MSG_BUDGET);
		log_inference(c, 429, &u, cost, EGD_MSG_BUDGET);
		return;
	}
	count_status(c, c->status);
	if (queue_owned(c,
			egd_http_response(c->status, c->ctype ? c->ctype : "application/json",
					  c->rbody, c->rbody_len, c->keep_alive, &n),
			&n))
		c->close_after = 1;
	log_inference(c, c->status, &u, cost, NULL);
}

static int up_on_head(void *ctx, const struct egd_http_msg *m)
{
	struct pconn *c = ctx;
	const char *ct = egd_http_header_get(m, "Content-Type");
	size_t n;

	c->status = m->status;
	c->ctype = ct ? strdup(ct) : NULL;
	EGD_COUNTER_ADD(c->p->stats.upstream_latency_ms_sum, egd_now_ms() - c->upstream_sent_ms);
	EGD_COUNTER_INC(c->p->stats.upstream_latency_count);
	c->is_sse = ct && !strncasecmp(ct, "text/event-stream", 17);
	if (c->is_sse) {
		c->sse = egd_sse_new(NULL, NULL);
		if (!c->sse)
			return -ENOMEM;
	}
	/* HTTP/1.0 has no chunked coding: such an agent gets the stream
	 * whole at the end, still accounted by the scanner. */
	if (c->is_sse && c->res.stream && c->version_minor >= 1 && m->status < 300) {
		c->streaming = 1;
		count_status(c, m->status);
		c->in_ucb = 1;
		char *head = egd_http_response_head_chunked(m->status, c->ctype, c->keep_alive, &n);

		if (queue_owned(c, head, &n))
			conn_close(c);
		else
			conn_flush(c);
		c->in_ucb = 0;
		if (c->dead)
			return -ECANCELED;
	}
	return 0;
}

static int up_on_body(void *ctx, const uint8_t *data, size_t len)
{
	struct pconn *c = ctx;
	size_t n;

	if (c->sse && egd_sse_feed(c->sse, data, len))
		return -ENOMEM;
	if (!c->streaming)
		return buf_append(&c->rbody, &c->rbody_len, &c->rbody_cap, data, len);
	c->in_ucb = 1;
	if (queue_owned(c, egd_http_chunk_encode(data, len, &n), &n))
		conn_close(c);
	else
		conn_flush(c);
	c->in_ucb = 0;
	if (!c->dead)
		return 0;
	/* The agent went away mid-stream; conn_close() charged it. */
	return -ECANCELED;
}

static void up_on_done(void *ctx, int err)
{
	struct pconn *c = ctx;

	c->ureq = NULL;
	if (c->streaming)
		finish_stream(c, err);
	else if (err)
		upstream_failed(c, err);
	else
		finish_buffered(c);
	request_done(c);
}

static const struct egd_upstream_cbs up_cbs = {
	.on_head = up_on_head,
	.on_body = up_on_body,
	.on_done = up_on_done,
};

static void forward(struct pconn *c)
{
	struct egd_http_header h[2] = {
		{ "Authorization", c->res.upstream_authorization },
		{ "Content-Type", c->res.upstream_content_type },
	};

	c->upstream_sent_ms = egd_now_ms();
	EGD_COUNTER_INC(c->p->stats.upstream_requests);
	c->ureq = egd_upstream_send(c->p->up, "POST", c->res.upstream_path, h, 2,
				    c->res.upstream_body, c->res.upstream_body_len, &up_cbs, c);
	if (!c->ureq) {
		upstream_failed(c, -errno);
		request_done(c);
	}
}

static void act_on_result(struct pconn *c)
{
	size_t n;

	switch (c->res.action) {
	case EGD_POLICY_RESPOND:
		count_status(c, c->res.status);
		if (queue_owned(c,
				egd_http_response(c->res.status, c->res.content_type, c->res.body,
						  c->res.body_len, c->keep_alive, &n),
				&n))
			c->close_after = 1;
		request_done(c);
		return;
	case EGD_POLICY_FORWARD:
		forward(c);
		return;
	case EGD_POLICY_NEED_WORKSPACE:
		c->ws_waiting = 1;
		c->ws_next = c->p->ws_waiters;
		c->p->ws_waiters = c;
		ws_lookup_start(c->p);
		return;
	}
}

static void handle_request(struct pconn *c)
{
	const struct egd_http_msg *m = egd_http_parser_msg(c->parser);
	struct egd_proxy *p = c->p;
	struct egd_policy_request req = {
		.method = m->method,
		.target = m->target,
		.authorization = egd_http_header_get(m, "Authorization"),
		.host = egd_http_header_get(m, "Host"),
		.sni = c->sni,
		.body = m->body,
		.body_len = m->body_len,
	};
	const char *auth = req.authorization;
	enum egd_ws_state ws;
	size_t plen;

	/* A keep-alive agent sends the same key with every request: hash it
	 * once per connection. */
	req.authorization_verified = auth && c->verified_auth && !strcmp(auth, c->verified_auth);
	c->busy = 1;
	c->started_ms = egd_now_ms();
	c->keep_alive = m->keep_alive;
	c->version_minor = m->version_minor;
	plen = strcspn(m->target, "?");
	snprintf(c->endpoint, sizeof(c->endpoint), "%.*s", (int)plen, m->target);
	egd_timer_cancel(p->loop, &c->timer);
	/* This worker's copy of the shared answer, refreshed from it only
	 * once stale: no lock per request. */
	ws = egd_ws_cache_get(&p->ws, p->cfg->workspace_ttl_s, (int64_t)egd_now_ms());
	if (ws == EGD_WS_UNKNOWN) {
		pthread_mutex_lock(&p->sh->mu);
		p->ws = p->sh->ws;
		pthread_mutex_unlock(&p->sh->mu);
		ws = egd_ws_cache_get(&p->ws, p->cfg->workspace_ttl_s, (int64_t)egd_now_ms());
	}
	if (egd_policy_eval(p->cfg, &req, ws, p->budget, &c->res)) {
		egd_http_parser_reset(c->parser);
		c->keep_alive = 0;
		send_detail(c, 500, "Internal error");
		request_done(c);
		return;
	}
	c->have_res = 1;
	/* Forwarding, or waiting only for the workspace (checked last), means
	 * the key matched. */
	if ((c->res.action == EGD_POLICY_FORWARD || c->res.action == EGD_POLICY_NEED_WORKSPACE) &&
	    auth && !req.authorization_verified) {
		free(c->verified_auth);
		c->verified_auth = strdup(auth);
	}
	egd_http_parser_reset(c->parser);
	act_on_result(c);
}

/* Parse what is buffered while no request is being answered. */
static void conn_process(struct pconn *c)
{
	size_t off = 0;

	c->in_process = 1;
	while (!c->dead && !c->busy && !c->close_after && off < c->in_len) {
		size_t used = 0;
		int ret = egd_http_parse(c->parser, c->in + off, c->in_len - off, &used);

		off += used;
		if (ret == EGD_HTTP_MORE)
			break;
		if (ret == EGD_HTTP_HEADERS) {
			const struct egd_http_msg *m = egd_http_parser_msg(c->parser);
			static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";

			if (egd_http_header_has_token(m, "Expect", "100-continue") &&
			    queue_out(c, cont, sizeof(cont) - 1))
				c->close_after = 1;
			continue;
		}
		if (ret == EGD_HTTP_DONE) {
			handle_request(c);
			continue;
		}
		/* A request we will not interpret: answer and close, since
		 * the rest of the stream cannot be trusted to frame. */
		c->keep_alive = 0;
		send_detail(c, egd_http_parser_status(c->parser), egd_http_parser_error(c->parser));
		c->close_after = 1;
	}
	if (!c->dead && !c->busy && c->peer_eof && !c->close_after) {
		/* Half-close after the last request: answer what came, then go. */
		c->close_after = 1;
	}
	c->in_process = 0;
	if (c->dead)
		return;
	/* One move for the whole batch, not one per pipelined request. */
	if (off) {
		memmove(c->in, c->in + off, c->in_len - off);
		c->in_len -= off;
	}
	conn_flush(c);
	if (!c->dead)
		conn_check_pending(c);
}

/* ---- the workspace lookup ------------------------------------------------ */

static int ws_on_head(void *ctx, const struct egd_http_msg *m)
{
	struct egd_proxy *p = ctx;

	p->ws_status = m->status;
	return 0;
}

static int ws_on_body(void *ctx, const uint8_t *data, size_t len)
{
	struct egd_proxy *p = ctx;
	char *b;

	if (p->ws_len + len > EGD_PROXY_WS_BODY_MAX_BYTES)
		return -EFBIG;
	b = realloc(p->ws_body, p->ws_len + len + 1);
	if (!b)
		return -ENOMEM;
	memcpy(b + p->ws_len, data, len);
	p->ws_len += len;
	b[p->ws_len] = 0;
	p->ws_body = b;
	return 0;
}

static void ws_resolved(struct egd_proxy *p, enum egd_ws_state state)
{
	struct pconn *c;

	pthread_mutex_lock(&p->sh->mu);
	egd_ws_cache_put(&p->sh->ws, state, (int64_t)egd_now_ms());
	p->ws = p->sh->ws;
	pthread_mutex_unlock(&p->sh->mu);
	free(p->ws_body);
	p->ws_body = NULL;
	p->ws_len = 0;
	if (state != EGD_WS_SAFE)
		egd_warn("proxy: workspace check says %s",
			 state == EGD_WS_UNSAFE ? "unsafe" : "lookup failed");
	/* Each waiter may finish and pick up its next request, which may wait
	 * again; take them one at a time off the list. */
	while ((c = p->ws_waiters)) {
		p->ws_waiters = c->ws_next;
		c->ws_next = NULL;
		c->ws_waiting = 0;
		if (egd_policy_resume(&c->res, state, p->budget)) {
			send_detail(c, 500, "Internal error");
			request_done(c);
			continue;
		}
		act_on_result(c);
	}
}

static void ws_on_done(void *ctx, int err)
{
	struct egd_proxy *p = ctx;

	p->ws_req = NULL;
	ws_resolved(p, err ? EGD_WS_FAILED
			   : egd_workspace_judge(p->ws_status, p->ws_body ? p->ws_body : "",
						 p->ws_len));
}

static const struct egd_upstream_cbs ws_cbs = {
	.on_head = ws_on_head,
	.on_body = ws_on_body,
	.on_done = ws_on_done,
};

static void ws_lookup_start(struct egd_proxy *p)
{
	char path[512], *auth = NULL;
	struct egd_http_header h[1];

	if (p->ws_req)
		return;
	if (!egd_proxy_config_enforcing(p->cfg) ||
	    egd_workspace_path(p->cfg->workspace_id, path, sizeof(path)) ||
	    asprintf(&auth, "Bearer %s", p->cfg->management_key) < 0) {
		ws_resolved(p, EGD_WS_FAILED);
		return;
	}
	h[0].name = "Authorization";
	h[0].value = auth;
	p->ws_status = 0;
	EGD_COUNTER_INC(p->stats.workspace_lookups);
	p->ws_req = egd_upstream_send(p->up, "GET", path, h, 1, NULL, 0, &ws_cbs, p);
	free(auth);
	if (!p->ws_req)
		ws_resolved(p, EGD_WS_FAILED);
}

/* ---- connection events --------------------------------------------------- */

static void conn_handshake(struct pconn *c)
{
	int e;

	for (;;) {
		ERR_clear_error();
		e = SSL_do_handshake(c->ssl);
		if (e == 1) {
			c->handshaking = 0;
			c->ssl_want_write = 0;
			if (conn_arm_idle(c))
				conn_close(c);
			return;
		}
		e = SSL_get_error(c->ssl, e);
		if (e == SSL_ERROR_WANT_READ && prefix_drained(c))
			continue;
		break;
	}
	if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
		c->ssl_want_write = e == SSL_ERROR_WANT_WRITE;
		conn_update_events(c);
		return;
	}
	egd_info("proxy: TLS handshake for %s failed: %s", c->sni ? c->sni : "(no SNI)",
		 ERR_reason_error_string(ERR_peek_last_error()) ?: "peer closed");
	conn_close(c);
}

/* The socket is known empty after a read of @n bytes into a buffer of
 * @len: a short read with nothing left inside OpenSSL. The loop is
 * level-triggered, so skipping the read that would say EAGAIN loses
 * nothing. */
static int conn_drained(struct pconn *c, size_t n, size_t len)
{
	if (!c->ssl)
		return n < len;
	return !c->prefix_rbio && !SSL_has_pending(c->ssl) &&
	       egd_sockbio_drained(SSL_get_rbio(c->ssl));
}

static void conn_read_all(struct pconn *c)
{
	uint8_t buf[SRV_READ_CHUNK_BYTES];

	c->read_capped = 0;
	while (!c->dead && !c->peer_eof) {
		if (c->in_len >= EGD_PROXY_PIPELINE_MAX_BYTES) {
			c->read_capped = 1; /* stopped by the cap, not the socket */
			break;
		}
		ssize_t n = conn_read(c, buf, sizeof(buf));

		if (n == -EAGAIN)
			break;
		if (n < 0) {
			conn_close(c);
			return;
		}
		if (n == 0) {
			c->peer_eof = 1;
			/* Nothing in progress: nobody to answer. */
			if (!c->busy && !c->in_len && c->out_off == c->out_len) {
				conn_close(c);
				return;
			}
			break;
		}
		if (buf_append(&c->in, &c->in_len, &c->in_cap, buf, (size_t)n)) {
			conn_close(c);
			return;
		}
		if (!c->busy && conn_arm_idle(c)) {
			conn_close(c);
			return;
		}
		if (conn_drained(c, (size_t)n, sizeof(buf)))
			break;
	}
}

/* Deferred by conn_check_pending(): read what OpenSSL holds. */
static void conn_resume(void *arg)
{
	struct pconn *c = arg;

	c->resume_pending = 0;
	if (c->dead)
		return; /* its free is deferred after this */
	conn_read_all(c);
	if (!c->dead)
		conn_process(c);
}

/*
 * With read-ahead, OpenSSL may hold bytes it already took off the socket
 * (the rest of a pipelined request, a record read with the one before)
 * while reading stopped: the pipeline buffer was full, or a request was
 * busy. No epoll event will announce them, so once there is room they are
 * read on the loop's next pass (deferred: no recursion into the parser).
 */
static void conn_defer_read(struct pconn *c)
{
	if (c->resume_pending)
		return;
	c->resume_pending = 1;
	if (egd_loop_defer(c->p->loop, conn_resume, c))
		c->resume_pending = 0;
}

static void conn_check_pending(struct pconn *c)
{
	/* Only after a read stopped by the cap: one that stopped on the socket
	 * left at most a partial record, which the socket's next bytes (and
	 * their epoll event) complete. */
	if (c->dead || !c->ssl || c->handshaking || c->resume_pending || !c->read_capped ||
	    c->peer_eof || c->close_after || c->in_len >= EGD_PROXY_PIPELINE_MAX_BYTES ||
	    !SSL_has_pending(c->ssl))
		return;
	conn_defer_read(c);
}

static void conn_cb(struct egd_watch *w, uint32_t events)
{
	struct pconn *c = container_of(w, struct pconn, watch);

	if (c->handshaking) {
		conn_handshake(c);
		if (c->dead || c->handshaking)
			return;
	}
	if (events & EPOLLOUT || c->ssl_want_write) {
		c->ssl_want_write = 0;
		conn_flush(c);
		if (c->dead)
			return;
	}
	conn_read_all(c);
	if (c->dead)
		return;
	conn_process(c);
}

/* ---- entry points ---------------------------------------------------------- */

int egd_proxy_serve_plain(struct egd_proxy *p, int fd, const uint8_t *prefix, size_t prefix_len)
{
	struct pconn *c = conn_new(p, fd, prefix, prefix_len, 0);
	int err;

	if (!c) {
		close(fd);
		return -ENOMEM;
	}
	err = conn_register(c);
	if (err) {
		close(fd);
		conn_free(c);
		return err;
	}
	c->holds_slot = p->slots != NULL;
	/* The prefix may already hold a whole request. */
	conn_process(c);
	return 0;
}

void egd_proxy_count_served(struct egd_proxy *p, unsigned int *slots, unsigned int max)
{
	p->slots = slots;
	p->max_slots = max;
}

int egd_proxy_serve_tls(struct egd_proxy *p, int fd, const char *sni, const uint8_t *prefix,
			size_t prefix_len)
{
	struct pconn *c;
	SSL_CTX *ctx;
	BIO *rbio = NULL, *wbio = NULL;
	int err = -ENOMEM;

	if (!p->ca) {
		close(fd);
		return -EOPNOTSUPP;
	}
	ctx = egd_ca_server_ctx(p->ca, sni ? sni : p->cfg->upstream_host);
	if (!ctx) {
		err = -errno;
		close(fd);
		return err;
	}
	c = conn_new(p, fd, NULL, 0, 1);
	if (!c) {
		SSL_CTX_free(ctx);
		close(fd);
		return -ENOMEM;
	}
	c->ssl = SSL_new(ctx);
	SSL_CTX_free(ctx);
	if (!c->ssl)
		goto err_free;
	if (sni && !(c->sni = strdup(sni)))
		goto err_free;
	/* OpenSSL reads the ClientHello the daemon already took off the
	 * socket from memory, then the socket itself (prefix_drained()). */
	rbio = prefix_len ? BIO_new(BIO_s_mem()) : egd_sockbio_new(fd);
	wbio = egd_sockbio_new(fd);
	if (!rbio || !wbio)
		goto err_bio;
	if (prefix_len) {
		if (BIO_write(rbio, prefix, (int)prefix_len) != (int)prefix_len)
			goto err_bio;
		/* Empty means "wait for more", not end of stream. */
		BIO_set_mem_eof_return(rbio, -1);
		c->prefix_rbio = 1;
	}
	SSL_set_bio(c->ssl, rbio, wbio);
	SSL_set_accept_state(c->ssl);
	c->handshaking = 1;
	err = conn_register(c);
	if (err) {
		close(fd);
		conn_free(c);
		return err;
	}
	c->holds_slot = p->slots != NULL;
	conn_handshake(c);
	/* A handshake that completes here (the client's Finished came while
	 * its flight was written) may have read the client's request too
	 * (read-ahead): no epoll event will come for it, so read it on the
	 * loop's next pass. conn_cb() reads after the handshakes it runs. */
	if (!c->dead && !c->handshaking && SSL_has_pending(c->ssl))
		conn_defer_read(c);
	return 0;

err_bio:
	BIO_free(rbio);
	BIO_free(wbio);
err_free:
	close(fd);
	conn_free(c);
	return err;
}

static void listener_cb(struct egd_watch *w, uint32_t events)
{
	struct listener *l = container_of(w, struct listener, watch);

	(void)events;
	for (;;) {
		int fd = accept4(w->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

		if (fd < 0) {
			if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
				egd_warn("proxy: accept: %s", strerror(errno));
			return;
		}
		if (l->p->slots && !egd_slot_take(l->p->slots, l->p->max_slots)) {
			EGD_COUNTER_INC(l->p->stats.overload_resets);
			egd_close_reset(fd);
			continue;
		}
		if (egd_proxy_serve_plain(l->p, fd, NULL, 0) && l->p->slots)
			egd_slot_give(l->p->slots);
	}
}

int egd_proxy_listen(struct egd_proxy *p, const struct egd_addr *addr)
{
	struct sockaddr_storage ss;
	struct listener *l;
	socklen_t len = egd_addr_to_sockaddr(addr, &ss);
	int fd, one = 1, err;

	fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (ss.ss_family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&ss, len) || listen(fd, EGD_PROXY_LISTEN_BACKLOG) ||
	    getsockname(fd, (struct sockaddr *)&ss, &len)) {
		err = -errno;
		goto err_close;
	}
	l = calloc(1, sizeof(*l));
	if (!l) {
		err = -ENOMEM;
		goto err_close;
	}
	l->p = p;
	l->watch.fd = fd;
	l->watch.cb = listener_cb;
	err = egd_loop_add(p->loop, &l->watch, EPOLLIN);
	if (err) {
		free(l);
		goto err_close;
	}
	l->next = p->listeners;
	p->listeners = l;
	return ntohs(ss.ss_family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
					     : ((struct sockaddr_in6 *)&ss)->sin6_port);

err_close:
	close(fd);
	return err;
}

struct egd_proxy_shared *egd_proxy_shared_new(const struct egd_proxy_config *cfg, char *err,
					      size_t errlen)
{
	struct egd_proxy_shared *sh = calloc(1, sizeof(*sh));
	int ret;

	if (!sh) {
		snprintf(err, errlen, "out of memory");
		errno = ENOMEM;
		return NULL;
	}
	sh->cfg = cfg;
	pthread_mutex_init(&sh->mu, NULL);
	sh->budget = egd_budget_new(cfg->max_cost_usd, cfg->budget_reserve_usd,
				    cfg->evaluation_run_id, cfg->data_dir);
	if (!sh->budget) {
		ret = -errno;
		snprintf(err, errlen, "cannot create the budget: %s", strerror(-ret));
		goto err_free;
	}
	ret = egd_budget_load(sh->budget, err, errlen);
	if (ret)
		goto err_free;
	return sh;

err_free:
	egd_proxy_shared_destroy(sh);
	errno = -ret;
	return NULL;
}

void egd_proxy_shared_destroy(struct egd_proxy_shared *sh)
{
	if (!sh)
		return;
	egd_budget_destroy(sh->budget); /* flushes what is still queued */
	pthread_mutex_destroy(&sh->mu);
	free(sh);
}

struct egd_proxy *egd_proxy_new(struct egd_loop *loop, struct egd_proxy_shared *sh,
				struct egd_ca *ca, char *err, size_t errlen)
{
	struct egd_proxy *p = calloc(1, sizeof(*p));
	int first;

	if (!p) {
		snprintf(err, errlen, "out of memory");
		errno = ENOMEM;
		return NULL;
	}
	p->loop = loop;
	p->sh = sh;
	p->cfg = sh->cfg;
	p->ca = ca;
	p->budget = sh->budget;
	p->up = egd_upstream_new(loop, egd_loop_resolver(loop), p->cfg);
	if (!p->up) {
		int ret = -errno;

		snprintf(err, errlen, "cannot set up the upstream client: %s", strerror(-ret));
		free(p);
		errno = -ret;
		return NULL;
	}
	if (egd_loop_on_turn(loop, proxy_commit, p)) {
		snprintf(err, errlen, "no room for the proxy's end-of-turn hook");
		egd_upstream_destroy(p->up);
		free(p);
		errno = ENOSPC;
		return NULL;
	}
	/* Checked once at start, so the first request rarely waits. */
	pthread_mutex_lock(&sh->mu);
	first = !sh->first_lookup;
	sh->first_lookup = 1;
	pthread_mutex_unlock(&sh->mu);
	if (first && egd_proxy_config_enforcing(p->cfg))
		ws_lookup_start(p);
	return p;
}

void egd_proxy_destroy(struct egd_proxy *p)
{
	if (!p)
		return;
	/* What was answered this turn is recorded before anything closes. */
	proxy_commit(p);
	egd_loop_on_turn_remove(p->loop, proxy_commit, p);
	while (p->conns)
		conn_close(p->conns);
	/* Closing charged any request still upstream: record those too. */
	if (p->pend_len && egd_budget_commit(p->budget, (const char *)p->pend, p->pend_len))
		egd_warn("proxy: the last inference lines could not be written");
	free(p->pend);
	/* conn_close() deferred the frees; they run with the loop's next
	 * turn, or when the loop is freed. */
	while (p->listeners) {
		struct listener *l = p->listeners;

		p->listeners = l->next;
		egd_loop_del(p->loop, &l->watch);
		close(l->watch.fd);
		free(l);
	}
	egd_upstream_cancel(p->ws_req);
	free(p->ws_body);
	egd_upstream_destroy(p->up);
	free(p);
}

struct egd_budget *egd_proxy_budget(struct egd_proxy *p)
{
	return p->budget;
}

size_t egd_proxy_conn_count(const struct egd_proxy *p)
{
	return __atomic_load_n(&p->nconns, __ATOMIC_RELAXED);
}

/* Relaxed loads: each counter has one writer, its proxy's thread; a scrape
 * may be a few events behind, never torn. */
static uint64_t load(const uint64_t *v)
{
	return __atomic_load_n(v, __ATOMIC_RELAXED);
}

void egd_proxy_stats(struct egd_proxy *const *ps, size_t n, struct egd_proxy_stats *out)
{
	memset(out, 0, sizeof(*out));
	for (size_t i = 0; i < n; i++) {
		const struct egd_proxy_stats *s = &ps[i]->stats;

		for (int k = 0; k < EGD_PROXY_STATUS_MAX; k++)
			out->by_status[k] += load(&s->by_status[k]);
		out->upstream_requests += load(&s->upstream_requests);
		out->upstream_failures += load(&s->upstream_failures);
		out->upstream_latency_ms_sum += load(&s->upstream_latency_ms_sum);
		out->upstream_latency_count += load(&s->upstream_latency_count);
		out->workspace_lookups += load(&s->workspace_lookups);
		out->overload_resets += load(&s->overload_resets);
	}
}

char *egd_proxy_metrics(struct egd_proxy *const *ps, size_t n)
{
	struct egd_proxy_stats sum, *s = &sum;
	struct egd_ledger snap;
	char *buf = NULL;
	size_t len = 0, nconns = 0;
	FILE *f;

	if (!n) {
		errno = EINVAL;
		return NULL;
	}
	f = open_memstream(&buf, &len);
	if (!f)
		return NULL;
	egd_proxy_stats(ps, n, &sum);
	for (size_t i = 0; i < n; i++)
		nconns += egd_proxy_conn_count(ps[i]);
	egd_budget_snapshot(ps[0]->budget, &snap);
	fputs("# HELP egressd_proxy_requests_total Answers of the policy proxy by HTTP status.\n"
	      "# TYPE egressd_proxy_requests_total counter\n",
	      f);
	for (int i = 0; i < EGD_PROXY_STATUS_MAX; i++)
		if (s->by_status[i])
			fprintf(f, "egressd_proxy_requests_total{code=\"%d\"} %llu\n", i,
				(unsigned long long)s->by_status[i]);
	fprintf(f,
		"# TYPE egressd_proxy_upstream_requests_total counter\n"
		"egressd_proxy_upstream_requests_total %llu\n"
		"# TYPE egressd_proxy_upstream_failures_total counter\n"
		"egressd_proxy_upstream_failures_total %llu\n"
		"# HELP egressd_proxy_upstream_latency_seconds Request sent to response head.\n"
		"# TYPE egressd_proxy_upstream_latency_seconds summary\n"
		"egressd_proxy_upstream_latency_seconds_sum %.3f\n"
		"egressd_proxy_upstream_latency_seconds_count %llu\n"
		"# TYPE egressd_proxy_workspace_lookups_total counter\n"
		"egressd_proxy_workspace_lookups_total %llu\n"
		"# HELP egressd_proxy_overload_resets_total Connections to the proxy's own "
		"listener reset at EGRESSD_MAX_CONNS.\n"
		"# TYPE egressd_proxy_overload_resets_total counter\n"
		"egressd_proxy_overload_resets_total %llu\n"
		"# TYPE egressd_proxy_spend_usd gauge\n"
		"egressd_proxy_spend_usd %.17g\n"
		"# TYPE egressd_proxy_budget_remaining_usd gauge\n"
		"egressd_proxy_budget_remaining_usd %.17g\n"
		"# TYPE egressd_proxy_reserved_usd gauge\n"
		"egressd_proxy_reserved_usd %.17g\n"
		"# TYPE egressd_proxy_in_flight gauge\n"
		"egressd_proxy_in_flight %llu\n"
		"# TYPE egressd_proxy_connections gauge\n"
		"egressd_proxy_connections %zu\n",
		(unsigned long long)s->upstream_requests, (unsigned long long)s->upstream_failures,
		(double)s->upstream_latency_ms_sum / 1000.0,
		(unsigned long long)s->upstream_latency_count,
		(unsigned long long)s->workspace_lookups,
		(unsigned long long)s->overload_resets, snap.spent_usd,
		egd_ledger_remaining(&snap), snap.reserved_usd, (unsigned long long)snap.in_flight,
		nconns);
	if (fclose(f)) {
		free(buf);
		errno = ENOMEM;
		return NULL;
	}
	return buf;
}
