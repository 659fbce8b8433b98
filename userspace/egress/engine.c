/* SPDX-License-Identifier: MIT */
/*
 * The connection engine: accept a captured flow, find where it was going,
 * sniff its first bytes, ask decide(), and obey: refuse in the client's own
 * protocol, or dial the destination and relay both ways with splice().
 *
 * Each connection lives on the worker thread that accepted it and is touched
 * by no other. Sockets are edge-triggered; every handler reads or writes
 * until EAGAIN (or until a short read says the socket is empty). A
 * connection's memory is freed on the next loop turn (through the defer
 * queue), so an event already taken from epoll for it finds it marked dead
 * rather than freed.
 */
#include "egress/daemon.h"
#include "egress/icaddr.h"
#include "egress/intercept.h"
#include "datapath/origdst.h"
#include "core/counter.h"
#include "core/log.h"
#include "core/resolve.h"
#include "core/slots.h"

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
/* Pipe capacity per direction; larger pipes mean fewer splice() calls. 1 MiB
 * (the default pipe-max-size) halves them against 256 KiB in bench/tunnel's
 * bulk runs; pages are held only while the sink lags behind the source. */
#define RELAY_PIPE_BYTES (1024 * 1024)
/* Bytes one connection may move per turn before others get theirs. */
#define RELAY_TURN_BYTES (4 * 1024 * 1024)
/* A direction starts by copying through a buffer of this size: for the few
 * bytes of a request or a reply one recv() and one send() beat splicing in
 * and out of a pipe, and a short recv() proves the socket empty, which saves
 * the read that would only say EAGAIN. The first full read marks a bulk
 * flow, which is spliced from then on. */
#define RELAY_COPY_BYTES (16 * 1024)

#define CONN_EVENTS (EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET)

enum conn_state { ST_SNIFF, ST_RESOLVE, ST_CONNECT, ST_REPLAY, ST_RELAY };

struct dir {
	int pipe[2];	/* made on first need, from the worker's pool */
	size_t pending; /* bytes in the pipe */
	int eof;	/* source said EOF */
	int shut;	/* shutdown(SHUT_WR) sent to the sink */
	int bulk;	/* splice rather than copy */
	/* The source may have bytes: an event said so, or the last read
	 * filled its buffer. Edge-triggered epoll reports every arrival, so
	 * while this is 0 a read would only return EAGAIN. */
	int readable;
	/* An event reported the source's FIN or an error. A FIN queued behind
	 * the data raises no new edge, so from then on a short read does not
	 * mean empty: read on until EOF. */
	int hup;
};

struct egd_conn {
	struct egd_conn *prev, *next;
	struct egd_worker *wk;
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

	/* Tunnelled before the client sent anything (a server-speaks-first
	 * guess): its first bytes are looked at once more (late_hello()). */
	int late_check;

	struct egd_resolve_req *rreq;
	struct dir up, down; /* up: client -> upstream */
	uint64_t bytes_up, bytes_down;
	int counted_open;
	int slot_moved; /* its EGRESSD_MAX_CONNS slot went to the policy proxy */
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

/*
 * No EPOLL_CTL_DEL first: closing the only reference to a socket takes it out
 * of the epoll set, and an event for it already taken this turn finds the
 * connection marked dead.
 */
static void close_fd(struct egd_watch *w, int rst)
{
	if (w->fd < 0)
		return;
	if (rst)
		egd_close_reset(w->fd);
	else
		close(w->fd);
	w->fd = -1;
}

static int open_pipe(struct egd_worker *wk, struct dir *dr)
{
	if (wk->n_pipes) {
		wk->n_pipes--;
		dr->pipe[0] = wk->pipes[wk->n_pipes][0];
		dr->pipe[1] = wk->pipes[wk->n_pipes][1];
		return 0;
	}
	if (pipe2(dr->pipe, O_NONBLOCK | O_CLOEXEC))
		return -errno;
	/* Best effort: the default 64 KiB works, only slower. */
	fcntl(dr->pipe[1], F_SETPIPE_SZ, RELAY_PIPE_BYTES);
	return 0;
}

/* An empty pipe goes back to the pool; one with bytes in it is closed (they
 * belong to a dead tunnel and must not leak into the next). */
static void close_pipe(struct egd_worker *wk, struct dir *dr)
{
	if (dr->pipe[0] >= 0 && !dr->pending && wk->n_pipes < EGD_PIPE_POOL_PIPES) {
		wk->pipes[wk->n_pipes][0] = dr->pipe[0];
		wk->pipes[wk->n_pipes][1] = dr->pipe[1];
		wk->n_pipes++;
		dr->pipe[0] = dr->pipe[1] = -1;
		return;
	}
	for (int i = 0; i < 2; i++) {
		if (dr->pipe[i] >= 0)
			close(dr->pipe[i]);
		dr->pipe[i] = -1;
	}
}

/* End the connection. @why non-NULL logs a close line (tunnels only). */
static void conn_close(struct egd_conn *c, const char *why, int rst)
{
	struct egd_worker *wk = c->wk;

	if (c->dead)
		return;
	c->dead = 1;
	if (why)
		audit_conn(c, "close", why, 1);
	if (c->counted_open)
		EGD_COUNTER_DEC(wk->m.open_tunnels);
	egd_resolve_cancel(c->rreq);
	egd_timer_cancel(wk->loop, &c->timer);
	close_fd(&c->cw, rst);
	close_fd(&c->uw, rst);
	close_pipe(wk, &c->up);
	close_pipe(wk, &c->down);
	free(c->buf);
	c->buf = NULL;
	if (c->prev)
		c->prev->next = c->next;
	else
		wk->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	wk->n_conns--;
	if (!c->slot_moved)
		egd_slot_give(&c->d->n_conns);
	if (egd_loop_defer(wk->loop, conn_free_cb, c))
		egd_warn("connection memory leaked: defer queue full");
}

/*
 * Arm @c's deadline. Arming can fail only when the loop's timer heap cannot
 * grow (-ENOMEM); a connection kept without a deadline could then sit in
 * the sniff or connect state for ever, holding its slot, so it is reset
 * instead. 0, or the error with @c closed (the caller returns).
 */
static int conn_arm(struct egd_conn *c, unsigned long long at_ms)
{
	int err = egd_timer_arm(c->wk->loop, &c->timer, at_ms);

	if (err)
		conn_close(c, "no deadline: out of memory", 1);
	return err;
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

/* Send @len bytes just read; what the sink does not take now waits in the
 * (empty, hence large enough) pipe for the sink's EPOLLOUT. */
static int forward(struct egd_conn *c, struct dir *dr, int dst, const uint8_t *buf, size_t len,
		   uint64_t *total)
{
	ssize_t n = send(dst, buf, len, MSG_NOSIGNAL | MSG_DONTWAIT);
	int err;

	if (n < 0) {
		if (errno != EAGAIN)
			return -errno;
		n = 0;
	}
	*total += (uint64_t)n;
	c->last_ms = egd_now_ms();
	if ((size_t)n == len)
		return 0;
	if (dr->pipe[0] < 0) {
		err = open_pipe(c->wk, dr);
		if (err)
			return err;
	}
	if (write(dr->pipe[1], buf + n, len - (size_t)n) != (ssize_t)(len - (size_t)n))
		return -EIO;
	dr->pending = len - (size_t)n;
	return 0;
}

/*
 * A client tunnelled as silent that then speaks: if its first bytes are a
 * ClientHello (or an HTTP head) for a host the policy intercepts, riding the
 * tunnel would skip the policy proxy just by waiting out the first-byte
 * wait. Returns 1 to refuse the flow. A TLS hello that is not whole in the
 * first read is refused too: the agent's hop is loopback, where a hello
 * written at once arrives whole, so a split one was split on purpose.
 */
static int late_hello(struct egd_conn *c, const uint8_t *buf, size_t len)
{
	struct egd_intent in = c->intent;
	struct egd_decision dec;

	c->late_check = 0;
	memset(&in.sniff, 0, sizeof(in.sniff));
	if (egd_sniff(buf, len, &in.sniff) == EGD_SNIFF_MORE) {
		egd_sniff_finish(buf, len, &in.sniff);
		return in.sniff.proto == EGD_PROTO_TLS;
	}
	if (!in.sniff.host[0])
		return 0;
	in.phase = __atomic_load_n(&c->d->phase, __ATOMIC_ACQUIRE);
	dec = egd_decide(&c->d->cfg.policy, &in);
	return dec.verdict == EGD_VERDICT_INTERCEPT;
}

/*
 * Move what is available from @src to @dst: copied while the flow is small,
 * through @dr's pipe with splice() once it is bulk. Returns 0 when blocked
 * (waiting for readiness), 1 when the turn budget ran out, -errno on a
 * socket error.
 */
static int pump(struct egd_conn *c, struct dir *dr, const struct dir *other, int src, int dst,
		uint64_t *total, size_t *budget)
{
	for (;;) {
		ssize_t n;
		int err;

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
				/* Half-close: pass the FIN on, keep the other
				 * direction flowing. When the other direction is
				 * done too, the close() that follows sends this
				 * FIN (both receive queues are empty, read to
				 * EOF, so it is a FIN and not a RST). */
				if (!other->shut)
					shutdown(dst, SHUT_WR);
				dr->shut = 1;
			}
			return 0;
		}
		if (!dr->readable)
			return 0;
		if (!dr->bulk) {
			uint8_t buf[RELAY_COPY_BYTES];

			n = recv(src, buf, sizeof(buf), 0);
			if (n > 0 && dr == &c->up && c->late_check &&
			    late_hello(c, buf, (size_t)n))
				return -EACCES;
			if (n > 0) {
				err = forward(c, dr, dst, buf, (size_t)n, total);
				if (err)
					return err;
				if ((size_t)n < sizeof(buf) && !dr->hup)
					dr->readable = 0; /* a short read emptied it */
				else
					dr->bulk = 1;
				if ((size_t)n >= *budget)
					return 1;
				*budget -= (size_t)n;
				continue;
			}
		} else {
			if (dr->pipe[0] < 0) {
				err = open_pipe(c->wk, dr);
				if (err)
					return err;
			}
			n = splice(src, NULL, dr->pipe[1], NULL, RELAY_PIPE_BYTES,
				   SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
			if (n > 0) {
				dr->pending = (size_t)n;
				continue;
			}
		}
		if (n == 0) {
			dr->eof = 1;
			continue;
		}
		if (errno == EAGAIN) {
			dr->readable = 0;
			return 0;
		}
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

	a = pump(c, &c->up, &c->down, c->cw.fd, c->uw.fd, &c->bytes_up, &budget);
	b = a < 0 ? 0 : pump(c, &c->down, &c->up, c->uw.fd, c->cw.fd, &c->bytes_down, &budget);
	EGD_COUNTER_ADD(c->wk->m.bytes_up, c->bytes_up - up0);
	EGD_COUNTER_ADD(c->wk->m.bytes_down, c->bytes_down - down0);
	if (a == -EACCES) {
		conn_close(c, "late hello for an intercepted host", 1);
		return;
	}
	if (a < 0 || b < 0) {
		EGD_COUNTER_INC(c->wk->m.tunnel_errors_reset);
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
		if (egd_loop_defer(c->wk->loop, relay_deferred, c))
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
			EGD_COUNTER_INC(c->wk->m.tunnel_errors_reset);
			conn_close(c, strerror(errno), 1);
			return;
		}
		c->sent += (size_t)n;
		c->bytes_up += (uint64_t)n;
		EGD_COUNTER_ADD(c->wk->m.bytes_up, (uint64_t)n);
	}
	free(c->buf);
	c->buf = NULL;
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
	if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
		c->down.readable = 1;
	if (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))
		c->down.hup = 1;
	if (c->state == ST_CONNECT) {
		if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
			return;
		/* Writable without an error or hangup means connected; only a
		 * failure needs SO_ERROR to say why. */
		if (events & (EPOLLERR | EPOLLHUP)) {
			getsockopt(w->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
			EGD_COUNTER_INC(c->wk->m.tunnel_errors_connect);
			conn_close(c, strerror(soerr ? soerr : ECONNREFUSED), 1);
			return;
		}
		egd_timer_cancel(c->wk->loop, &c->timer);
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
	struct egd_worker *wk = c->wk;
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
	err = egd_loop_add(wk->loop, &c->uw, CONN_EVENTS);
	if (err) {
		conn_close(c, strerror(-err), 1);
		return;
	}
	c->state = ST_CONNECT;
	if (conn_arm(c, egd_now_ms() + d->cfg.connect_timeout_ms))
		return;
	if (connect(fd, (struct sockaddr *)&ss, sl) && errno != EINPROGRESS) {
		EGD_COUNTER_INC(wk->m.tunnel_errors_connect);
		conn_close(c, strerror(errno), 1);
		return;
	}
	/* Completion (or failure) is reported as EPOLLOUT on the new fd. */
}

/* Only the first address is dialled, under the one connect deadline of the
 * tunnel; the agent's client sees a failure and may retry. */
static void on_resolved(void *arg, const char *err, const struct egd_resolved *res)
{
	struct egd_conn *c = arg;
	struct egd_addr to;

	c->rreq = NULL;
	if (err) {
		EGD_COUNTER_INC(c->wk->m.tunnel_errors_connect);
		conn_close(c, err, 1);
		return;
	}
	egd_addr_from_sockaddr(&to, (const struct sockaddr *)&res->addr[0]);
	dial(c, &to);
}

/* --- decision -------------------------------------------------------------- */

/*
 * The embedded proxy takes the client socket and the bytes sniffed from it;
 * the engine's part of the connection ends here. The socket leaves the
 * engine's watch first: it stays open, and this worker's proxy watches it
 * on the same loop.
 */
static void hand_off(struct egd_conn *c)
{
	int fd = c->cw.fd, err;

	egd_loop_del(c->wk->loop, &c->cw);
	c->cw.fd = -1;
	err = egd_intercept_handoff(c->d->intercept, c->wk->id, fd, c->intent.sniff.proto,
				    c->intent.sniff.host, c->buf, c->len);
	if (err)
		egd_warn("handing a connection to the policy proxy: %s", strerror(-err));
	else
		/* Its EGRESSD_MAX_CONNS slot goes with it: the proxy gives it
		 * back when the connection ends, so an agent cannot hold more
		 * than the limit by opening them to the LLM host. */
		c->slot_moved = 1;
	conn_close(c, NULL, 0);
}


static void decide_and_act(struct egd_conn *c)
{
	struct egd_worker *wk = c->wk;
	struct egd_daemon *d = c->d;

	egd_timer_cancel(wk->loop, &c->timer);
	/* A phase change after this load also kicks this worker, which then
	 * re-judges this connection under the new phase. */
	c->intent.phase = __atomic_load_n(&d->phase, __ATOMIC_ACQUIRE);
	c->dec = egd_decide(&d->cfg.policy, &c->intent);
	EGD_COUNTER_INC(wk->m.conns[c->dec.verdict][c->dec.reason]);
	audit_conn(c, "decision", c->intent.sniff.error, 0);

	switch (c->dec.verdict) {
	case EGD_VERDICT_DENY:
		deny(c);
		return;
	case EGD_VERDICT_INTERCEPT:
		if (d->intercept) {
			hand_off(c);
			return;
		}
		c->counted_open = 1;
		EGD_COUNTER_INC(wk->m.open_tunnels);
		dial(c, &d->cfg.intercept_upstream);
		return;
	case EGD_VERDICT_TUNNEL:
		c->counted_open = 1;
		EGD_COUNTER_INC(wk->m.open_tunnels);
		c->late_check = !c->len;
		if (c->dec.dial_by_name) {
			c->state = ST_RESOLVE;
			if (conn_arm(c, egd_now_ms() + d->cfg.connect_timeout_ms))
				return;
			c->rreq = egd_resolve(wk->resolver, c->intent.sniff.host,
					      c->intent.orig.port, on_resolved, c);
			if (!c->rreq)
				conn_close(c, strerror(errno), 1);
			return;
		}
		dial(c, &c->intent.orig);
		return;
	default:
		conn_close(c, NULL, 1);
	}
}

/*
 * Read what the client sent so far and ask the sniffer after each read: a
 * hello that arrives in one segment is decided after one recv(), without a
 * second one to see EAGAIN. Whatever the client sent after the hello stays
 * in the socket for the relay, which reads until EAGAIN before waiting.
 */
static void sniff_more(struct egd_conn *c)
{
	struct egd_daemon *d = c->d;
	size_t before = c->len;

	for (;;) {
		size_t room = SNIFF_BUF_BYTES - c->len;
		ssize_t n;

		if (!room)
			break;
		n = recv(c->cw.fd, c->buf + c->len, room, 0);
		if (n > 0) {
			c->len += (size_t)n;
			c->up.readable = (size_t)n == room || c->up.hup;
			if (egd_sniff(c->buf, c->len, &c->intent.sniff) == EGD_SNIFF_DONE) {
				decide_and_act(c);
				return;
			}
			/* A short read emptied the socket; the next segment
			 * raises a new edge. Not so a FIN already reported:
			 * read on to see it and decide without waiting. */
			if ((size_t)n < room && !c->up.hup)
				break;
			continue;
		}
		if (n == 0) {
			c->client_eof_in_sniff = 1;
			break;
		}
		if (errno == EAGAIN) {
			c->up.readable = 0;
			break;
		}
		conn_close(c, NULL, 1); /* reset by the client: nothing to decide */
		return;
	}
	if (c->client_eof_in_sniff || c->len == SNIFF_BUF_BYTES) {
		egd_sniff_finish(c->buf, c->len, &c->intent.sniff);
		decide_and_act(c);
		return;
	}
	if (before == 0 && c->len > 0) {
		/* First bytes in: the rest of the hello has a longer deadline. */
		conn_arm(c, c->start_ms + d->cfg.sniff_timeout_ms);
	}
}

static void on_client(struct egd_watch *w, uint32_t events)
{
	struct egd_conn *c = (struct egd_conn *)((char *)w - offsetof(struct egd_conn, cw));

	if (c->dead)
		return;
	if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
		c->up.readable = 1;
	if (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))
		c->up.hup = 1;
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

/*
 * The first-byte wait tells a server-speaks-first protocol (SSH, SMTP) from a
 * client that has yet to send its hello, and deciding without a host is
 * worth it only where that can open something: a tunnel in the verification
 * phase. In the agent phase a connection without a host is refused whatever
 * it would say, and a TLS client merely slow to write its ClientHello (a
 * CPU-starved one, still loading its CA bundle) would be reset on its way to
 * the intercept host. There a silent client keeps the sniff deadline. 1 when
 * the timer was re-armed for it (or @c closed because it could not be).
 */
static int silent_wait_more(struct egd_conn *c)
{
	unsigned long long deadline = c->start_ms + c->d->cfg.sniff_timeout_ms;

	if (__atomic_load_n(&c->d->phase, __ATOMIC_ACQUIRE) != EGD_PHASE_AGENT ||
	    egd_now_ms() >= deadline)
		return 0;
	conn_arm(c, deadline);
	return 1;
}

static void on_timer(struct egd_timer *t)
{
	struct egd_conn *c = (struct egd_conn *)((char *)t - offsetof(struct egd_conn, timer));

	if (c->dead)
		return;
	switch (c->state) {
	case ST_SNIFF:
		if (!c->len) {
			/* Timers run after the turn's events: a hello that came in
			 * during a long turn is in the socket, its event not yet
			 * taken. Read it rather than call the client silent. */
			sniff_more(c);
			if (c->dead || c->state != ST_SNIFF || c->len)
				return;
			if (silent_wait_more(c))
				return;
		}
		/* No first byte (a server-speaks-first protocol) or a hello that
		 * never completed (slowloris): decide on what we have. */
		if (c->len)
			EGD_COUNTER_INC(c->wk->m.sniff_timeouts);
		egd_sniff_finish(c->buf, c->len, &c->intent.sniff);
		decide_and_act(c);
		return;
	case ST_RESOLVE:
	case ST_CONNECT:
		EGD_COUNTER_INC(c->wk->m.tunnel_errors_connect);
		conn_close(c, "connect timeout", 1);
		return;
	default:
		return;
	}
}

/* --- accept ---------------------------------------------------------------- */

/*
 * Where the connection was going. The local end is the listener's own
 * address and accept4() gave the peer, so the BPF record is looked up
 * without getsockname()/getpeername().
 */
static int find_orig(struct egd_listener *l, int fd, const struct sockaddr *peer,
		     struct egd_addr *peer_out, struct egd_orig *orig)
{
	struct egd_daemon *d = l->wk->d;
	struct egd_tuple t;

	if (d->capture != EGD_CAPTURE_BPF || peer->sa_family == AF_UNSPEC)
		return egd_orig_dst(d->capture, &d->bpf, fd, orig, peer_out);
	memset(&t, 0, sizeof(t));
	egd_addr_from_sockaddr(&t.src, peer);
	t.dst = l->addr;
	*peer_out = t.src;
	return egd_bpf_orig_take(&d->bpf, &t, orig);
}

/*
 * Refuse @fd before it became a connection: its original-destination record
 * is taken out of the BPF map first (it would stay there otherwise, filling
 * the map until a later connection from the same 4-tuple found a stale
 * destination), then the client gets a reset.
 */
static void refuse_accepted(struct egd_listener *l, int fd, const struct sockaddr *peer)
{
	struct egd_addr ignored_peer;
	struct egd_orig ignored;

	find_orig(l, fd, peer, &ignored_peer, &ignored);
	egd_close_reset(fd);
}

static void accept_one(struct egd_listener *l, int fd, const struct sockaddr *peer)
{
	struct egd_worker *wk = l->wk;
	struct egd_daemon *d = wk->d;
	struct egd_orig orig = { 0 };
	struct egd_conn *c;
	int err;

	if (!egd_slot_take(&d->n_conns, d->cfg.max_conns)) {
		EGD_COUNTER_INC(wk->m.overload_resets);
		refuse_accepted(l, fd, peer);
		return;
	}
	c = calloc(1, sizeof(*c));
	if (c)
		c->buf = malloc(SNIFF_BUF_BYTES);
	if (!c || !c->buf) {
		/* A reset, as for any refusal: a plain close would look like
		 * a server that answered and hung up. */
		egd_warn("accept: out of memory; connection reset");
		free(c);
		egd_slot_give(&d->n_conns);
		refuse_accepted(l, fd, peer);
		return;
	}
	c->wk = wk;
	c->d = d;
	c->cw.fd = fd;
	c->cw.cb = on_client;
	c->uw.fd = -1;
	c->up.pipe[0] = c->up.pipe[1] = c->down.pipe[0] = c->down.pipe[1] = -1;
	c->timer.cb = on_timer;
	c->start_ms = c->last_ms = egd_now_ms();
	c->state = ST_SNIFF;
	c->next = wk->conns;
	if (wk->conns)
		wk->conns->prev = c;
	wk->conns = c;
	wk->n_conns++;

	err = find_orig(l, fd, peer, &c->peer, &orig);
	c->intent.has_orig = err == 0;
	c->intent.orig = orig.dst;
	c->intent.cgroup_id = orig.cgroup_id;
	if (err && err != -ENOENT)
		egd_warn("original destination: %s", strerror(-err));
	if (c->intent.has_orig && d->icaddr) {
		struct egd_ip ip;

		egd_ip_from_addr(&ip, &orig.dst);
		c->intent.orig_intercept =
			egd_icaddr_lookup(d->icaddr, &ip, egd_icaddr_now_ns(), NULL, 0);
	}

	err = egd_loop_add(wk->loop, &c->cw, CONN_EVENTS);
	if (err) {
		conn_close(c, NULL, 1);
		return;
	}
	conn_arm(c, c->start_ms + d->cfg.first_byte_ms);
}

void egd_engine_accept(struct egd_watch *w, uint32_t events)
{
	struct egd_listener *l = (struct egd_listener *)w;

	(void)events;
	for (;;) {
		struct sockaddr_storage ss;
		socklen_t sl = sizeof(ss);
		int fd;

		ss.ss_family = AF_UNSPEC;
		fd = accept4(w->fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
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
		accept_one(l, fd, (struct sockaddr *)&ss);
	}
}

void egd_engine_phase_changed(struct egd_worker *wk)
{
	struct egd_daemon *d = wk->d;
	enum egd_phase phase = __atomic_load_n(&d->phase, __ATOMIC_ACQUIRE);
	struct egd_conn *c = wk->conns, *next;

	/* Re-ask decide() for every tunnel under the new phase; what it would
	 * no longer allow is closed. Going back to the agent phase thus ends
	 * the tunnels the verification phase opened. */
	for (; c; c = next) {
		struct egd_intent in;
		struct egd_decision now;

		next = c->next;
		if (c->state == ST_SNIFF) {
			/* A silent client past its first-byte wait was kept
			 * waiting only because the agent phase would refuse it;
			 * the verification phase tunnels it now. */
			if (!c->len && phase != EGD_PHASE_AGENT &&
			    egd_now_ms() >= c->start_ms + d->cfg.first_byte_ms)
				decide_and_act(c);
			continue;
		}
		if (c->dec.verdict == EGD_VERDICT_DENY)
			continue;
		in = c->intent;
		in.phase = phase;
		now = egd_decide(&d->cfg.policy, &in);
		if (now.verdict != c->dec.verdict) {
			EGD_COUNTER_INC(wk->m.tunnel_closed_phase);
			conn_close(c, "phase-change", 1);
		}
	}
}

void egd_engine_idle_scan(struct egd_worker *wk)
{
	unsigned long long now = egd_now_ms(), idle = wk->d->cfg.idle_timeout_s * 1000ull;
	struct egd_conn *c = wk->conns, *next;

	for (; c; c = next) {
		next = c->next;
		if (c->state == ST_RELAY && now - c->last_ms >= idle) {
			EGD_COUNTER_INC(wk->m.tunnel_closed_idle);
			conn_close(c, "idle-timeout", 0);
		}
	}
}

void egd_engine_close_all(struct egd_worker *wk)
{
	while (wk->conns)
		conn_close(wk->conns, wk->conns->state == ST_RELAY ? "shutdown" : NULL, 1);
}

void egd_engine_free_pipes(struct egd_worker *wk)
{
	while (wk->n_pipes) {
		wk->n_pipes--;
		close(wk->pipes[wk->n_pipes][0]);
		close(wk->pipes[wk->n_pipes][1]);
	}
}
