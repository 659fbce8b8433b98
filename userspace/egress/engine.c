/* SPDX-License-Identifier: MIT */
/*
 * The connection engine: accept a captured flow, find where it was going,
 * sniff its first bytes, ask decide(), and obey: refuse in the client's own
 * protocol, or dial the destination and relay both ways with splice().
 *
 * Sockets are edge-triggered; every handler reads or writes until EAGAIN.
 * A connection's memory is freed on the next loop turn (through the defer
 * queue), so an event already taken from epoll for it finds it marked dead
 * rather than freed.
 */
#include "egress/daemon.h"
#include "egress/resolve.h"
#include "core/log.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

/* The sniff buffer: a maximal ClientHello plus the headers of the records
 * it may be split into. */
#define SNIFF_BUF_BYTES (CLIENTHELLO_MAX_BYTES + 1024)
/* Pipe capacity per direction; larger pipes mean fewer splice() calls. */
#define RELAY_PIPE_BYTES (256 * 1024)
/* Bytes one connection may move per turn before others get theirs. */
#define RELAY_TURN_BYTES (4 * 1024 * 1024)

#define CONN_EVENTS (EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET)

enum conn_state { ST_SNIFF, ST_RESOLVE, ST_CONNECT, ST_REPLAY, ST_RELAY };

struct dir {
	int pipe[2];
	size_t pending; /* bytes in the pipe */
	int eof;	/* source said EOF */
	int shut;	/* shutdown(SHUT_WR) sent to the sink */
};

struct egd_conn {
	struct egd_conn *prev, *next;
	struct egd_daemon *d;
	struct egd_watch cw, uw; /* client (agent) and upstream */
	struct egd_timer timer;
	enum conn_state state;
	int dead, defer_queued;

	struct egd_intent intent;
	struct egd_addr peer;
	struct egd_decision dec;
	unsigned long long start_ms, last_ms;

	uint8_t *buf; /* sniffed bytes, replayed to the upstream */
	size_t len, sent;
	int client_eof_in_sniff;

	struct egd_resolve_req *rreq;
	struct dir up, down; /* up: client -> upstream */
	uint64_t bytes_up, bytes_down;
	int counted_open;
};

static void conn_free_cb(void *arg)
{
	free(arg);
}

static void audit_conn(struct egd_conn *c, const char *event, const char *detail, int totals)
{
	struct egd_audit_rec r = {
		.event = event,
		.phase = c->intent.phase,
		.cgroup_id = c->intent.cgroup_id,
		.src = &c->peer,
		.dst = &c->intent.orig,
		.proto = c->intent.sniff.proto,
		.host = c->intent.sniff.host,
		.verdict = c->dec.verdict,
		.reason = c->dec.reason,
		.detail = detail,
		.has_totals = totals,
		.bytes_up = c->bytes_up,
		.bytes_down = c->bytes_down,
		.duration_ms = egd_now_ms() - c->start_ms,
	};

	egd_audit(&r);
}

static void close_fd(struct egd_loop *loop, struct egd_watch *w, int rst)
{
	if (w->fd < 0)
		return;
	egd_loop_del(loop, w);
	if (rst) {
		/* Linger 0: close() sends RST, so the peer fails at once. */
		struct linger lg = { .l_onoff = 1, .l_linger = 0 };

		setsockopt(w->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	}
	close(w->fd);
	w->fd = -1;
}

static void close_pipe(struct dir *dr)
{
	for (int i = 0; i < 2; i++) {
		if (dr->pipe[i] >= 0)
			close(dr->pipe[i]);
		dr->pipe[i] = -1;
	}
}

/* End the connection. @why non-NULL logs a close line (tunnels only). */
static void conn_close(struct egd_conn *c, const char *why, int rst)
{
	struct egd_daemon *d = c->d;

	if (c->dead)
		return;
	c->dead = 1;
	if (why)
		audit_conn(c, "close", why, 1);
	if (c->counted_open)
		d->m.open_tunnels--;
	egd_resolve_cancel(c->rreq);
	egd_timer_cancel(d->loop, &c->timer);
	close_fd(d->loop, &c->cw, rst);
	close_fd(d->loop, &c->uw, rst);
	close_pipe(&c->up);
	close_pipe(&c->down);
	free(c->buf);
	c->buf = NULL;
	if (c->prev)
		c->prev->next = c->next;
	else
		d->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	d->n_conns--;
	if (egd_loop_defer(d->loop, conn_free_cb, c))
		egd_warn("connection memory leaked: defer queue full");
}

/* --- refusals -------------------------------------------------------------- */

static void deny(struct egd_conn *c)
{
	/* TLS alert record: fatal (2), access_denied (49). */
	static const uint8_t tls_alert[] = { 0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x31 };
	char body[512], msg[768];
	int n;

	switch (c->intent.sniff.proto) {
	case EGD_PROTO_TLS:
		if (write(c->cw.fd, tls_alert, sizeof(tls_alert)) < 0)
			egd_debug("tls alert: %s", strerror(errno));
		shutdown(c->cw.fd, SHUT_WR);
		conn_close(c, NULL, 0);
		return;
	case EGD_PROTO_HTTP:
		snprintf(body, sizeof(body), "egressd: %s%s refused in the %s phase (%s)\n",
			 c->intent.sniff.host[0] ? "host " : "connection",
			 c->intent.sniff.host, egd_phase_name(c->intent.phase),
			 egd_reason_name(c->dec.reason));
		n = snprintf(msg, sizeof(msg),
			     "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\n"
			     "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
			     strlen(body), body);
		if (write(c->cw.fd, msg, (size_t)n) < 0)
			egd_debug("http 403: %s", strerror(errno));
		shutdown(c->cw.fd, SHUT_WR);
		conn_close(c, NULL, 0);
		return;
	default:
		conn_close(c, NULL, 1);
		return;
	}
}

/* --- relay ----------------------------------------------------------------- */

static int open_pipe(struct dir *dr)
{
	if (pipe2(dr->pipe, O_NONBLOCK | O_CLOEXEC))
		return -errno;
	/* Best effort: the default 64 KiB works, only slower. */
	fcntl(dr->pipe[1], F_SETPIPE_SZ, RELAY_PIPE_BYTES);
	return 0;
}

/*
 * Move what is available from @src to @dst through @dr's pipe. Returns 0 when
 * blocked (waiting for readiness), 1 when the turn budget ran out, -errno on
 * a socket error.
 */
static int pump(struct egd_conn *c, struct dir *dr, int src, int dst, uint64_t *total,
		size_t *budget)
{
	for (;;) {
		ssize_t n;

		if (dr->pending) {
			n = splice(dr->pipe[0], NULL, dst, NULL, dr->pending,
				   SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
			if (n > 0) {
				dr->pending -= (size_t)n;
				*total += (uint64_t)n;
				c->last_ms = egd_now_ms();
				if ((size_t)n >= *budget)
					return 1;
				*budget -= (size_t)n;
				continue;
			}
			if (n < 0 && errno == EAGAIN)
				return 0;
			return n < 0 ? -errno : -EPIPE;
		}
		if (dr->eof) {
			if (!dr->shut) {
				/* Half-close: pass the client's FIN on, keep the
				 * other direction flowing. */
				shutdown(dst, SHUT_WR);
				dr->shut = 1;
			}
			return 0;
		}
		n = splice(src, NULL, dr->pipe[1], NULL, RELAY_PIPE_BYTES,
			   SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
		if (n > 0) {
			dr->pending = (size_t)n;
			continue;
		}
		if (n == 0) {
			dr->eof = 1;
			continue;
		}
		if (errno == EAGAIN)
			return 0;
		return -errno;
	}
}

static void relay(struct egd_conn *c);

static void relay_deferred(void *arg)
{
	struct egd_conn *c = arg;

	c->defer_queued = 0;
	if (!c->dead)
		relay(c);
}

static void relay(struct egd_conn *c)
{
	size_t budget = RELAY_TURN_BYTES;
	int a, b;
	uint64_t up0 = c->bytes_up, down0 = c->bytes_down;

	a = pump(c, &c->up, c->cw.fd, c->uw.fd, &c->bytes_up, &budget);
	b = a < 0 ? 0 : pump(c, &c->down, c->uw.fd, c->cw.fd, &c->bytes_down, &budget);
	c->d->m.bytes_up += c->bytes_up - up0;
	c->d->m.bytes_down += c->bytes_down - down0;
	if (a < 0 || b < 0) {
		c->d->m.tunnel_errors_reset++;
		conn_close(c, strerror(-(a < 0 ? a : b)), 1);
		return;
	}
	if (c->up.shut && c->down.shut) {
		conn_close(c, "eof", 0);
		return;
	}
	if ((a == 1 || b == 1) && !c->defer_queued) {
		/* Edge-triggered: no new event will come for bytes already
		 * waiting, so come back next turn ourselves. */
		c->defer_queued = 1;
		if (egd_loop_defer(c->d->loop, relay_deferred, c))
			c->defer_queued = 0;
	}
}

/* Send the sniffed bytes before anything else, then relay. */
static void replay(struct egd_conn *c)
{
	while (c->sent < c->len) {
		ssize_t n = send(c->uw.fd, c->buf + c->sent, c->len - c->sent, MSG_NOSIGNAL);

		if (n < 0) {
			if (errno == EAGAIN)
				return;
			c->d->m.tunnel_errors_reset++;
			conn_close(c, strerror(errno), 1);
			return;
		}
		c->sent += (size_t)n;
		c->bytes_up += (uint64_t)n;
		c->d->m.bytes_up += (uint64_t)n;
	}
	free(c->buf);
	c->buf = NULL;
	if (open_pipe(&c->up) || open_pipe(&c->down)) {
		conn_close(c, "out of pipes", 1);
		return;
	}
	c->state = ST_RELAY;
	c->up.eof = c->client_eof_in_sniff;
	relay(c);
}

static void on_upstream(struct egd_watch *w, uint32_t events)
{
	struct egd_conn *c = (struct egd_conn *)((char *)w - offsetof(struct egd_conn, uw));
	int soerr = 0;
	socklen_t sl = sizeof(soerr);

	if (c->dead)
		return;
	if (c->state == ST_CONNECT) {
		if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
			return;
		getsockopt(w->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
		if (soerr) {
			c->d->m.tunnel_errors_connect++;
			conn_close(c, strerror(soerr), 1);
			return;
		}
		egd_timer_cancel(c->d->loop, &c->timer);
		c->state = ST_REPLAY;
	}
	if (c->state == ST_REPLAY)
		replay(c);
	else if (c->state == ST_RELAY)
		relay(c);
}

static void on_timer(struct egd_timer *t);

static void dial(struct egd_conn *c, const struct egd_addr *to)
{
	struct egd_daemon *d = c->d;
	struct sockaddr_storage ss;
	socklen_t sl = egd_addr_to_sockaddr(to, &ss);
	int fd, err;

	fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		conn_close(c, strerror(errno), 1);
		return;
	}
	c->uw.fd = fd;
	c->uw.cb = on_upstream;
	err = egd_loop_add(d->loop, &c->uw, CONN_EVENTS);
	if (err) {
		conn_close(c, strerror(-err), 1);
		return;
	}
	c->state = ST_CONNECT;
	egd_timer_arm(d->loop, &c->timer, egd_now_ms() + d->cfg.connect_timeout_ms);
	if (connect(fd, (struct sockaddr *)&ss, sl) && errno != EINPROGRESS) {
		d->m.tunnel_errors_connect++;
		conn_close(c, strerror(errno), 1);
		return;
	}
	/* Completion (or failure) is reported as EPOLLOUT on the new fd. */
}

static void on_resolved(void *arg, const char *err, const struct egd_addr *addr)
{
	struct egd_conn *c = arg;

	c->rreq = NULL;
	if (err) {
		c->d->m.tunnel_errors_connect++;
		conn_close(c, err, 1);
		return;
	}
	dial(c, addr);
}

/* --- decision -------------------------------------------------------------- */

static void decide_and_act(struct egd_conn *c)
{
	struct egd_daemon *d = c->d;

	egd_timer_cancel(d->loop, &c->timer);
	c->intent.phase = d->phase;
	c->dec = egd_decide(&d->cfg.policy, &c->intent);
	d->m.conns[c->dec.verdict][c->dec.reason]++;
	audit_conn(c, "decision", c->intent.sniff.error, 0);

	switch (c->dec.verdict) {
	case EGD_VERDICT_DENY:
		deny(c);
		return;
	case EGD_VERDICT_INTERCEPT:
		c->counted_open = 1;
		d->m.open_tunnels++;
		dial(c, &d->cfg.intercept_upstream);
		return;
	case EGD_VERDICT_TUNNEL:
		c->counted_open = 1;
		d->m.open_tunnels++;
		if (c->dec.dial_by_name) {
			c->state = ST_RESOLVE;
			egd_timer_arm(d->loop, &c->timer,
				      egd_now_ms() + d->cfg.connect_timeout_ms);
			c->rreq = egd_resolve(d->resolver, c->intent.sniff.host,
					      c->intent.orig.port, on_resolved, c);
			if (!c->rreq)
				conn_close(c, "resolver: out of memory", 1);
			return;
		}
		dial(c, &c->intent.orig);
		return;
	default:
		conn_close(c, NULL, 1);
	}
}

static void sniff_more(struct egd_conn *c)
{
	struct egd_daemon *d = c->d;
	size_t before = c->len;

	for (;;) {
		ssize_t n;

		if (c->len == SNIFF_BUF_BYTES)
			break;
		n = recv(c->cw.fd, c->buf + c->len, SNIFF_BUF_BYTES - c->len, 0);
		if (n > 0) {
			c->len += (size_t)n;
			continue;
		}
		if (n == 0) {
			c->client_eof_in_sniff = 1;
			break;
		}
		if (errno == EAGAIN)
			break;
		conn_close(c, NULL, 1); /* reset by the client: nothing to decide */
		return;
	}
	if (c->len > 0 && egd_sniff(c->buf, c->len, &c->intent.sniff) == EGD_SNIFF_DONE) {
		decide_and_act(c);
		return;
	}
	if (c->client_eof_in_sniff || c->len == SNIFF_BUF_BYTES) {
		egd_sniff_finish(c->buf, c->len, &c->intent.sniff);
		decide_and_act(c);
		return;
	}
	if (before == 0 && c->len > 0) {
		/* First bytes in: the rest of the hello has a longer deadline. */
		egd_timer_arm(d->loop, &c->timer, c->start_ms + d->cfg.sniff_timeout_ms);
	}
}

static void on_client(struct egd_watch *w, uint32_t events)
{
	struct egd_conn *c = (struct egd_conn *)((char *)w - offsetof(struct egd_conn, cw));

	if (c->dead)
		return;
	switch (c->state) {
	case ST_SNIFF:
		if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
			sniff_more(c);
		return;
	case ST_RELAY:
		relay(c);
		return;
	default:
		/* Resolving, connecting or replaying: the client waits; its
		 * bytes stay in the socket until the relay starts. */
		if (events & (EPOLLERR | EPOLLHUP))
			conn_close(c, "client reset", 1);
		return;
	}
}

static void on_timer(struct egd_timer *t)
{
	struct egd_conn *c = (struct egd_conn *)((char *)t - offsetof(struct egd_conn, timer));

	if (c->dead)
		return;
	switch (c->state) {
	case ST_SNIFF:
		/* No first byte (a server-speaks-first protocol) or a hello that
		 * never completed (slowloris): decide on what we have. */
		if (c->len)
			c->d->m.sniff_timeouts++;
		egd_sniff_finish(c->buf, c->len, &c->intent.sniff);
		decide_and_act(c);
		return;
	case ST_RESOLVE:
	case ST_CONNECT:
		c->d->m.tunnel_errors_connect++;
		conn_close(c, "connect timeout", 1);
		return;
	default:
		return;
	}
}

/* --- accept ---------------------------------------------------------------- */

static void accept_one(struct egd_daemon *d, int fd)
{
	struct egd_orig orig = { 0 };
	struct egd_conn *c;
	int err;

	if (d->n_conns >= d->cfg.max_conns) {
		struct linger lg = { .l_onoff = 1, .l_linger = 0 };

		d->m.overload_resets++;
		setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
		close(fd);
		return;
	}
	c = calloc(1, sizeof(*c));
	if (c)
		c->buf = malloc(SNIFF_BUF_BYTES);
	if (!c || !c->buf) {
		if (c)
			free(c);
		close(fd);
		return;
	}
	c->d = d;
	c->cw.fd = fd;
	c->cw.cb = on_client;
	c->uw.fd = -1;
	c->up.pipe[0] = c->up.pipe[1] = c->down.pipe[0] = c->down.pipe[1] = -1;
	c->timer.cb = on_timer;
	c->start_ms = c->last_ms = egd_now_ms();
	c->state = ST_SNIFF;
	c->next = d->conns;
	if (d->conns)
		d->conns->prev = c;
	d->conns = c;
	d->n_conns++;

	err = egd_orig_dst(d->capture, &d->bpf, fd, &orig, &c->peer);
	c->intent.has_orig = err == 0;
	c->intent.orig = orig.dst;
	c->intent.cgroup_id = orig.cgroup_id;
	if (err && err != -ENOENT)
		egd_warn("original destination: %s", strerror(-err));

	err = egd_loop_add(d->loop, &c->cw, CONN_EVENTS);
	if (err) {
		conn_close(c, NULL, 1);
		return;
	}
	egd_timer_arm(d->loop, &c->timer, c->start_ms + d->cfg.first_byte_ms);
}

void egd_engine_accept(struct egd_watch *w, uint32_t events)
{
	struct egd_listener *l = (struct egd_listener *)w;
	struct egd_daemon *d = l->d;

	(void)events;
	for (;;) {
		int fd = accept4(w->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

		if (fd < 0) {
			if (errno == EMFILE || errno == ENFILE)
				egd_warn("accept: %s (raise the fd limit or lower "
					 "EGRESSD_MAX_CONNS)",
					 strerror(errno));
			else if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
				egd_warn("accept: %s", strerror(errno));
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			return;
		}
		accept_one(d, fd);
	}
}

void egd_engine_phase_changed(struct egd_daemon *d)
{
	struct egd_conn *c = d->conns, *next;

	/* Re-ask decide() for every tunnel under the new phase; what it would
	 * no longer allow is closed. Going back to the agent phase thus ends
	 * the tunnels the verification phase opened. */
	for (; c; c = next) {
		struct egd_intent in;
		struct egd_decision now;

		next = c->next;
		if (c->state == ST_SNIFF || c->dec.verdict == EGD_VERDICT_DENY)
			continue;
		in = c->intent;
		in.phase = d->phase;
		now = egd_decide(&d->cfg.policy, &in);
		if (now.verdict != c->dec.verdict) {
			d->m.tunnel_closed_phase++;
			conn_close(c, "phase-change", 1);
		}
	}
}

void egd_engine_idle_scan(struct egd_daemon *d)
{
	unsigned long long now = egd_now_ms(), idle = d->cfg.idle_timeout_s * 1000ull;
	struct egd_conn *c = d->conns, *next;

	for (; c; c = next) {
		next = c->next;
		if (c->state == ST_RELAY && now - c->last_ms >= idle) {
			d->m.tunnel_closed_idle++;
			conn_close(c, "idle-timeout", 0);
		}
	}
}

void egd_engine_close_all(struct egd_daemon *d)
{
	while (d->conns)
		conn_close(d->conns, d->conns->state == ST_RELAY ? "shutdown" : NULL, 1);
}
