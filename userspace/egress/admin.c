/* SPDX-License-Identifier: MIT */
/*
 * The admin endpoint: /healthz (the loop is alive), /readyz (attached and
 * listening, so the agent is both captured and served) and /metrics in the
 * Prometheus text format. One short request per connection; anything slow
 * or large is dropped.
 */
#include "egress/daemon.h"
#include "egress/dnsd.h"
#include "egress/intercept.h"
#include "core/grow.h"
#include "core/log.h"
#include "core/slots.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

/* A request head must fit here; admin clients send a few dozen bytes. */
#define ADMIN_REQUEST_MAX_BYTES 4096
#define ADMIN_TIMEOUT_MS 5000

struct admin_conn {
	struct egd_watch w;
	struct egd_timer t;
	struct egd_daemon *d;
	size_t len;
	char buf[ADMIN_REQUEST_MAX_BYTES];
	/* The answer, written as the socket takes it (a /metrics answer can
	 * be larger than the socket buffer); NULL while reading. */
	char *out;
	size_t out_len, out_off;
};

struct sbuf {
	char *p;
	size_t len, cap;
	int failed; /* out of memory: the text is incomplete */
};

static void sb_printf(struct sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(struct sbuf *b, const char *fmt, ...)
{
	va_list ap;
	char *np;
	int n;

	for (;;) {
		va_start(ap, fmt);
		n = vsnprintf(b->p ? b->p + b->len : NULL, b->p ? b->cap - b->len : 0, fmt, ap);
		va_end(ap);
		if (n < 0 || b->failed) {
			b->failed = 1;
			return;
		}
		if (b->p && b->len + (size_t)n < b->cap) {
			b->len += (size_t)n;
			return;
		}
		np = egd_grow(b->p, &b->cap, b->len + (size_t)n + 1, 8192);
		if (!np) {
			b->failed = 1;
			return;
		}
		b->p = np;
	}
}

int egd_daemon_ready(const struct egd_daemon *d)
{
	if (!d->listening)
		return 0;
	if (d->capture == EGD_CAPTURE_BPF)
		return egd_bpf_attached(&d->bpf);
	return d->nft_installed;
}

/* Relaxed loads: each counter has one writer, its worker; a scrape may be a
 * few events behind, never torn. */
#define SUM(dst, field)                                                                   \
	do {                                                                               \
		(dst)->field = 0;                                                          \
		for (unsigned int i_ = 0; i_ < d->n_workers; i_++)                        \
			(dst)->field += __atomic_load_n(&d->workers[i_].m.field,           \
							__ATOMIC_RELAXED);                 \
	} while (0)

static void sum_metrics(const struct egd_daemon *d, struct egd_metrics *m)
{
	for (int v = 0; v < EGD_VERDICT_MAX; v++)
		for (int r = 0; r < EGD_REASON_MAX; r++)
			SUM(m, conns[v][r]);
	SUM(m, bytes_up);
	SUM(m, bytes_down);
	SUM(m, open_tunnels);
	SUM(m, tunnel_errors_connect);
	SUM(m, tunnel_errors_reset);
	SUM(m, tunnel_closed_idle);
	SUM(m, tunnel_closed_phase);
	SUM(m, overload_resets);
	SUM(m, sniff_timeouts);
}

static void render_metrics(struct egd_daemon *d, struct sbuf *b)
{
	struct egd_metrics sum, *m = &sum;
	uint64_t k[EGD_CNT_MAX];

	sum_metrics(d, &sum);

	sb_printf(b, "# HELP egressd_connections_total Captured TCP connections by verdict and reason.\n"
		     "# TYPE egressd_connections_total counter\n");
	for (int v = 0; v < EGD_VERDICT_MAX; v++)
		for (int r = 0; r < EGD_REASON_MAX; r++)
			if (m->conns[v][r])
				sb_printf(b,
					  "egressd_connections_total{verdict=\"%s\",reason=\"%s\"} "
					  "%llu\n",
					  egd_verdict_name(v), egd_reason_name(r),
					  (unsigned long long)m->conns[v][r]);
	sb_printf(b,
		  "# HELP egressd_bytes_total Bytes relayed, up = agent to destination.\n"
		  "# TYPE egressd_bytes_total counter\n"
		  "egressd_bytes_total{direction=\"up\"} %llu\n"
		  "egressd_bytes_total{direction=\"down\"} %llu\n",
		  (unsigned long long)m->bytes_up, (unsigned long long)m->bytes_down);
	sb_printf(b,
		  "# HELP egressd_open_tunnels Tunnels and intercepted flows open now.\n"
		  "# TYPE egressd_open_tunnels gauge\negressd_open_tunnels %llu\n",
		  (unsigned long long)m->open_tunnels);
	sb_printf(b,
		  "# HELP egressd_phase 0 = agent, 1 = verification.\n"
		  "# TYPE egressd_phase gauge\negressd_phase %d\n"
		  "# HELP egressd_phase_changes_total Phase flips seen.\n"
		  "# TYPE egressd_phase_changes_total counter\negressd_phase_changes_total %llu\n",
		  d->phase, (unsigned long long)d->phase_changes);
	sb_printf(b,
		  "# HELP egressd_tunnel_events_total Tunnels that ended other than by EOF.\n"
		  "# TYPE egressd_tunnel_events_total counter\n"
		  "egressd_tunnel_events_total{event=\"connect_failed\"} %llu\n"
		  "egressd_tunnel_events_total{event=\"reset\"} %llu\n"
		  "egressd_tunnel_events_total{event=\"idle_timeout\"} %llu\n"
		  "egressd_tunnel_events_total{event=\"phase_change\"} %llu\n",
		  (unsigned long long)m->tunnel_errors_connect,
		  (unsigned long long)m->tunnel_errors_reset,
		  (unsigned long long)m->tunnel_closed_idle,
		  (unsigned long long)m->tunnel_closed_phase);
	sb_printf(b,
		  "# HELP egressd_sniff_timeouts_total Clients that started a hello and "
		  "never finished it.\n"
		  "# TYPE egressd_sniff_timeouts_total counter\negressd_sniff_timeouts_total %llu\n"
		  "# HELP egressd_overload_resets_total Connections reset at EGRESSD_MAX_CONNS.\n"
		  "# TYPE egressd_overload_resets_total counter\n"
		  "egressd_overload_resets_total %llu\n",
		  (unsigned long long)m->sniff_timeouts, (unsigned long long)m->overload_resets);
	sb_printf(b, "# HELP egressd_ready 1 when attached and listening.\n"
		     "# TYPE egressd_ready gauge\negressd_ready %d\n",
		  egd_daemon_ready(d));
	sb_printf(b,
		  "# HELP egressd_capture_mode The capture datapath in use.\n"
		  "# TYPE egressd_capture_mode gauge\negressd_capture_mode{mode=\"%s\"} 1\n",
		  egd_capture_name(d));
	if (d->capture == EGD_CAPTURE_NFT) {
		static const char *const names[] = EGD_NFT_COUNTER_NAMES;
		uint64_t n;

		sb_printf(b, "# HELP egressd_nft_refused_packets_total Packets the ruleset "
			     "refused.\n# TYPE egressd_nft_refused_packets_total counter\n");
		for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
			if (egd_nft_counter(names[i], &n) == 0)
				sb_printf(b, "egressd_nft_refused_packets_total{counter=\"%s\"} %llu\n",
					  names[i], (unsigned long long)n);
	}
	if (d->dnsd) {
		char *dx = egd_dnsd_metrics(d->dnsd);

		if (dx)
			sb_printf(b, "%s", dx);
		free(dx);
	}
	if (d->intercept) {
		char *px = egd_intercept_metrics(d->intercept);

		/* NULL only when out of memory: the page would lack them. */
		if (px)
			sb_printf(b, "%s", px);
		else
			b->failed = 1;
		free(px);
	}
	if (d->capture == EGD_CAPTURE_BPF && egd_bpf_counters(&d->bpf, k) == 0) {
		sb_printf(b, "# HELP egressd_kernel_events_total Decisions taken in the "
			     "kernel by the cgroup programs.\n"
			     "# TYPE egressd_kernel_events_total counter\n");
		for (int i = 0; i < EGD_CNT_MAX; i++)
			sb_printf(b, "egressd_kernel_events_total{event=\"%s\"} %llu\n",
				  egd_counter_name(i), (unsigned long long)k[i]);
	}
}

static void admin_close(struct admin_conn *a)
{
	egd_timer_cancel(a->d->loop, &a->t);
	egd_loop_del(a->d->loop, &a->w);
	close(a->w.fd);
	free(a->out);
	free(a);
}

/* Write what the socket takes of the answer; the rest when it is writable
 * again (the connection's deadline still bounds the whole exchange). Closes
 * once all is written, or on an error. */
static void admin_flush(struct admin_conn *a)
{
	while (a->out_off < a->out_len) {
		ssize_t n =
			send(a->w.fd, a->out + a->out_off, a->out_len - a->out_off, MSG_NOSIGNAL);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN) {
			if (egd_loop_mod(a->d->loop, &a->w, EPOLLOUT | EPOLLET))
				break;
			return;
		}
		if (n < 0) {
			egd_debug("admin reply: %s", strerror(errno));
			break;
		}
		a->out_off += (size_t)n;
	}
	admin_close(a);
}

static void respond(struct admin_conn *a, int status, const char *ctype, const char *body,
		    size_t len)
{
	/* For when there is no memory for the answer itself. */
	static const char oom[] = "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n"
				  "Connection: close\r\n\r\n";
	char head[256];
	const char *text = status == 200 ? "OK" :
			   status == 404 ? "Not Found" :
			   status == 405 ? "Method Not Allowed" :
			   status == 500 ? "Internal Server Error" :
			   status == 503 ? "Service Unavailable" :
					   "Bad Request";
	int n = snprintf(head, sizeof(head),
			 "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
			 "Connection: close\r\n\r\n",
			 status, text, ctype, len);

	a->out = malloc((size_t)n + len);
	if (!a->out) {
		if (send(a->w.fd, oom, sizeof(oom) - 1, MSG_NOSIGNAL) < 0)
			egd_debug("admin reply: %s", strerror(errno));
		admin_close(a);
		return;
	}
	memcpy(a->out, head, (size_t)n);
	if (len)
		memcpy(a->out + n, body, len);
	a->out_len = (size_t)n + len;
	admin_flush(a);
}

static void handle(struct admin_conn *a)
{
	char method[16], path[256];
	struct sbuf b = { 0 };

	if (sscanf(a->buf, "%15s %255s", method, path) != 2) {
		respond(a, 400, "text/plain", "bad request\n", 12);
		return;
	}
	path[strcspn(path, "?")] = '\0';
	if (strcmp(method, "GET") && strcmp(method, "HEAD")) {
		respond(a, 405, "text/plain", "GET only\n", 9);
	} else if (strcmp(path, "/healthz") == 0) {
		respond(a, 200, "text/plain", "ok\n", 3);
	} else if (strcmp(path, "/readyz") == 0) {
		if (egd_daemon_ready(a->d))
			respond(a, 200, "text/plain", "ready\n", 6);
		else
			respond(a, 503, "text/plain", "not ready\n", 10);
	} else if (strcmp(path, "/metrics") == 0) {
		render_metrics(a->d, &b);
		/* Half a page of metrics would read as counters gone to 0. */
		if (b.failed)
			respond(a, 500, "text/plain", "out of memory\n", 14);
		else
			respond(a, 200, "text/plain; version=0.0.4", b.p ? b.p : "", b.len);
		free(b.p);
	} else {
		respond(a, 404, "text/plain", "not found\n", 10);
	}
}

static void on_admin_conn(struct egd_watch *w, uint32_t events)
{
	struct admin_conn *a = (struct admin_conn *)w;

	(void)events;
	if (a->out) {
		admin_flush(a);
		return;
	}
	for (;;) {
		ssize_t n = recv(w->fd, a->buf + a->len, sizeof(a->buf) - 1 - a->len, 0);

		if (n > 0) {
			a->len += (size_t)n;
			a->buf[a->len] = '\0';
			if (strstr(a->buf, "\r\n\r\n") || strstr(a->buf, "\n\n")) {
				handle(a);
				return;
			}
			if (a->len == sizeof(a->buf) - 1) {
				respond(a, 400, "text/plain", "request too large\n", 18);
				return;
			}
			continue;
		}
		if (n < 0 && errno == EAGAIN)
			return;
		admin_close(a);
		return;
	}
}

static void on_admin_timeout(struct egd_timer *t)
{
	admin_close((struct admin_conn *)((char *)t - offsetof(struct admin_conn, t)));
}

static void on_admin_accept(struct egd_watch *w, uint32_t events)
{
	struct egd_daemon *d = (struct egd_daemon *)((char *)w - offsetof(struct egd_daemon, admin));

	(void)events;
	for (;;) {
		int fd = accept4(w->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		struct admin_conn *a;

		if (fd < 0)
			return;
		a = calloc(1, sizeof(*a));
		if (!a) {
			egd_close_reset(fd);
			continue;
		}
		a->d = d;
		a->w.fd = fd;
		a->w.cb = on_admin_conn;
		a->t.cb = on_admin_timeout;
		if (egd_loop_add(d->loop, &a->w, EPOLLIN | EPOLLET)) {
			close(fd);
			free(a);
			continue;
		}
		/* Without its deadline a silent client would hold it for ever. */
		if (egd_timer_arm(d->loop, &a->t, egd_now_ms() + ADMIN_TIMEOUT_MS))
			admin_close(a);
	}
}

int egd_admin_start(struct egd_daemon *d)
{
	d->admin.cb = on_admin_accept;
	return egd_loop_add(d->loop, &d->admin, EPOLLIN | EPOLLET);
}
