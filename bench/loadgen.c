/* SPDX-License-Identifier: MIT */
/*
 * The load generator and the sink server behind bench/tunnel.
 *
 * Every connection opens the way a TLS client does: it sends a ClientHello
 * record with SNI example.com and waits for the server's first bytes (a small
 * fake handshake record). Only then does the benchmark traffic start, so a
 * relay that sniffs the hello (nginx ssl_preread, egressd) has done its work
 * and established its upstream before anything is timed.
 *
 *   loadgen server ADDR:PORT [THREADS]
 *	Reads the first TLS record, answers REPLY_BYTES, then drains until
 *	EOF. If bytes followed the hello it sends their count (8 bytes, big
 *	endian) before closing, so the client can check nothing was lost.
 *   loadgen relay ADDR:PORT UPSTREAM:PORT [THREADS]
 *	A bare relay: no policy, no sniffing, no log (below).
 *   loadgen bulk ADDR:PORT STREAMS SECONDS
 *	STREAMS parallel connections each send for SECONDS after the
 *	handshake, half-close, and wait for the server's count. Prints one
 *	line: "bulk MBps=... bytes=... secs=... errors=... spurious_eagain=...".
 *   loadgen rate ADDR:PORT WORKERS SECONDS
 *	WORKERS threads loop connect, hello, read reply, close for SECONDS.
 *	Prints "rate cps=... conns=... errors=... p50_us=... p99_us=...
 *	spurious_eagain=...".
 *
 * The server is epoll-based with one SO_REUSEPORT listener per thread, so
 * the sink is never the bottleneck of a path that runs through a relay.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* The server's answer to a hello: about the size of a ServerHello record. */
#define REPLY_BYTES 128
/* One send()/recv() of bulk data; large enough that syscalls are not the cost. */
#define BULK_CHUNK_BYTES (256 * 1024)
/* A client gives up on a socket that stays silent this long (a broken path). */
#define CLIENT_TIMEOUT_S 10
/* Connection latencies kept per rate worker for the percentiles. */
#define LAT_SAMPLES_MAX (1 << 20)
/* Largest first record the server accepts (a TLS record's limit plus header). */
#define HELLO_MAX_BYTES (5 + 16384)
#define SERVER_THREADS_MAX 16
#define WORKERS_MAX 256

static struct sockaddr_in target;
static uint8_t hello[512];
static size_t hello_len;

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void put16(uint8_t *p, unsigned int v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}

/*
 * Build a TLS 1.3 ClientHello with SNI example.com, the shape a modern
 * client sends: TLS 1.2 legacy version, 32-byte session id, the common
 * suites, supported_versions, groups, an x25519 key share, signature
 * algorithms and ALPN. Random fields are filled with a fixed pattern; no
 * server here completes the handshake.
 */
static void build_hello(void)
{
	static const uint8_t suites[] = { 0x13, 0x01, 0x13, 0x02, 0x13, 0x03, 0xc0, 0x2b,
					  0xc0, 0x2f, 0xc0, 0x2c, 0xc0, 0x30, 0xcc, 0xa9,
					  0xcc, 0xa8, 0x00, 0x9c, 0x00, 0x9d };
	static const uint8_t sigalgs[] = { 0x04, 0x03, 0x08, 0x04, 0x04, 0x01, 0x05, 0x03,
					   0x08, 0x05, 0x05, 0x01, 0x08, 0x06, 0x06, 0x01 };
	static const char host[] = "example.com";
	uint8_t *p = hello, *hs, *ext;
	size_t hl = sizeof(host) - 1, i;

	*p++ = 0x16; /* handshake record */
	put16(p, 0x0301);
	p += 4; /* record length, filled in below */
	hs = p;
	*p++ = 0x01; /* ClientHello */
	p += 3;	     /* handshake length */
	put16(p, 0x0303);
	p += 2;
	for (i = 0; i < 32; i++)
		*p++ = (uint8_t)(i * 7 + 1); /* random */
	*p++ = 32;
	for (i = 0; i < 32; i++)
		*p++ = (uint8_t)(i * 13 + 5); /* legacy session id */
	put16(p, sizeof(suites));
	p += 2;
	memcpy(p, suites, sizeof(suites));
	p += sizeof(suites);
	*p++ = 1; /* compression methods: null */
	*p++ = 0;
	ext = p;
	p += 2;

	put16(p, 0x0000); /* server_name */
	put16(p + 2, hl + 5);
	put16(p + 4, hl + 3);
	p[6] = 0; /* host_name */
	put16(p + 7, hl);
	memcpy(p + 9, host, hl);
	p += 9 + hl;

	put16(p, 0x002b); /* supported_versions: 1.3, 1.2 */
	put16(p + 2, 5);
	p[4] = 4;
	put16(p + 5, 0x0304);
	put16(p + 7, 0x0303);
	p += 9;

	put16(p, 0x000a); /* supported_groups: x25519, P-256 */
	put16(p + 2, 6);
	put16(p + 4, 4);
	put16(p + 6, 0x001d);
	put16(p + 8, 0x0017);
	p += 10;

	put16(p, 0x0033); /* key_share: x25519 */
	put16(p + 2, 38);
	put16(p + 4, 36);
	put16(p + 6, 0x001d);
	put16(p + 8, 32);
	for (i = 0; i < 32; i++)
		p[10 + i] = (uint8_t)(i * 29 + 3);
	p += 42;

	put16(p, 0x000d); /* signature_algorithms */
	put16(p + 2, sizeof(sigalgs) + 2);
	put16(p + 4, sizeof(sigalgs));
	memcpy(p + 6, sigalgs, sizeof(sigalgs));
	p += 6 + sizeof(sigalgs);

	put16(p, 0x0010); /* ALPN: h2, http/1.1 */
	put16(p + 2, 14);
	put16(p + 4, 12);
	memcpy(p + 6, "\x02h2\x08http/1.1", 12);
	p += 18;

	put16(ext, (unsigned int)(p - ext - 2));
	hello_len = (size_t)(p - hello);
	put16(hello + 3, (unsigned int)(hello_len - 5));
	hs[1] = 0;
	put16(hs + 2, (unsigned int)(hello_len - 9));
}

static int parse_addr(const char *s, struct sockaddr_in *sa)
{
	char buf[64], *colon;

	snprintf(buf, sizeof(buf), "%s", s);
	colon = strrchr(buf, ':');
	if (!colon)
		return -EINVAL;
	*colon = '\0';
	memset(sa, 0, sizeof(*sa));
	sa->sin_family = AF_INET;
	sa->sin_port = htons((uint16_t)atoi(colon + 1));
	return inet_pton(AF_INET, buf, &sa->sin_addr) == 1 ? 0 : -EINVAL;
}

/* ---- server ---- */

struct srv_conn {
	int fd;
	int replied;
	size_t have; /* bytes of the first record read so far */
	uint64_t after; /* bytes that followed it */
	uint8_t head[HELLO_MAX_BYTES];
};

static void srv_close(int ep, struct srv_conn *c)
{
	epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	free(c);
}

/* Read the first record (header, then its body); answer once it is whole. */
static int srv_read_hello(struct srv_conn *c)
{
	static const uint8_t reply_hdr[5] = { 0x16, 0x03, 0x03, 0x00, REPLY_BYTES - 5 };
	uint8_t reply[REPLY_BYTES] = { 0 };
	size_t want = 5;
	ssize_t n;

	for (;;) {
		if (c->have >= 5)
			want = 5 + (((size_t)c->head[3] << 8) | c->head[4]);
		if (c->have >= want)
			break;
		n = recv(c->fd, c->head + c->have, want - c->have, 0);
		if (n == 0)
			return -1;
		if (n < 0)
			return errno == EAGAIN ? 0 : -1;
		c->have += (size_t)n;
	}
	memcpy(reply, reply_hdr, sizeof(reply_hdr));
	if (send(c->fd, reply, sizeof(reply), MSG_NOSIGNAL) != sizeof(reply))
		return -1;
	c->replied = 1;
	return 1;
}

/* Drain; on EOF report the count when there was bulk data, then close. */
static int srv_drain(struct srv_conn *c, uint8_t *buf)
{
	uint64_t be;
	int i;
	ssize_t n;

	for (;;) {
		n = recv(c->fd, buf, BULK_CHUNK_BYTES, 0);
		if (n > 0) {
			c->after += (uint64_t)n;
			continue;
		}
		if (n < 0)
			return errno == EAGAIN ? 0 : -1;
		break;
	}
	if (c->after) {
		for (i = 0, be = 0; i < 8; i++)
			((uint8_t *)&be)[i] = (uint8_t)(c->after >> (56 - 8 * i));
		send(c->fd, &be, sizeof(be), MSG_NOSIGNAL);
	}
	return -1;
}

/*
 * One thread's SO_REUSEPORT listener on @sa, in a new epoll set (its data
 * pointer NULL) returned in *@ep; exits on failure, naming @who.
 */
static int thread_listener(const struct sockaddr_in *sa, int *ep, const char *who)
{
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = NULL };
	int one = 1, lfd;

	lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	*ep = epoll_create1(EPOLL_CLOEXEC);
	if (lfd < 0 || *ep < 0)
		goto err;
	setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	setsockopt(lfd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
	if (bind(lfd, (const struct sockaddr *)sa, sizeof(*sa)) || listen(lfd, 4096) ||
	    epoll_ctl(*ep, EPOLL_CTL_ADD, lfd, &ev))
		goto err;
	return lfd;
err:
	perror(who);
	exit(1);
}

static void *server_thread(void *arg)
{
	struct epoll_event evs[64], ev;
	uint8_t *buf = malloc(BULK_CHUNK_BYTES);
	int one = 1, lfd, ep, i, n;

	if (!buf) {
		perror("server");
		exit(1);
	}
	lfd = thread_listener(arg, &ep, "server");
	for (;;) {
		n = epoll_wait(ep, evs, 64, -1);
		for (i = 0; i < n; i++) {
			struct srv_conn *c = evs[i].data.ptr;
			int r;

			if (!c) {
				int fd;

				while ((fd = accept4(lfd, NULL, NULL,
						     SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
					c = calloc(1, sizeof(*c));
					if (!c) {
						close(fd);
						continue;
					}
					c->fd = fd;
					setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
					ev.events = EPOLLIN | EPOLLRDHUP;
					ev.data.ptr = c;
					epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
				}
				continue;
			}
			r = c->replied ? 0 : srv_read_hello(c);
			if (r >= 0 && c->replied)
				r = srv_drain(c, buf);
			if (r < 0)
				srv_close(ep, c);
		}
	}
}

static int run_server(int argc, char **argv)
{
	static struct sockaddr_in sa;
	pthread_t t;
	int threads = argc > 3 ? atoi(argv[3]) : 2, i;

	if (parse_addr(argv[2], &sa) || threads < 1 || threads > SERVER_THREADS_MAX) {
		fprintf(stderr, "server: bad address or thread count\n");
		return 2;
	}
	for (i = 1; i < threads; i++)
		pthread_create(&t, NULL, server_thread, &sa);
	server_thread(&sa);
	return 0;
}

/* ---- relay: a bare one, for comparison ---- */

/*
 * A relay with no policy at all: accept, dial the one upstream at once (no
 * waiting for a hello, no sniffing, no lookup, no log), copy both ways,
 * pass each FIN on, close. Edge-triggered epoll registered once per socket,
 * so no epoll_ctl after the ADD; a short recv() counts as "drained" unless
 * a FIN was reported. It does what every relay that terminates the agent's
 * TCP must do per connection and nothing more: bench/tunnel measures it
 * beside nginx and egressd to show what policy costs and what it does not.
 *
 * It copies through a per-thread buffer and does not splice, so its bulk
 * figures are a copying relay's.
 */

#define RELAY_THREADS_MAX 16

struct relay_pair;

struct relay_end {
	struct relay_pair *p;
	int side; /* 0: the client's socket, 1: the upstream's */
};

/* Bytes moving from fd[from] to fd[1 - from]. */
struct relay_dir {
	uint8_t *pending; /* what the receiver did not take yet (malloc'ed) */
	size_t off, len;
	int readable; /* the source may have bytes or a FIN */
	int fin_seen; /* epoll reported the source's FIN */
	int eof_read;
	int eof_sent;
};

struct relay_pair {
	int fd[2];
	int connected;
	int dead; /* closed; freed after this epoll_wait batch */
	struct relay_pair *next_dead;
	struct relay_end end[2];
	struct relay_dir dir[2]; /* dir[0]: client -> upstream */
};

static struct sockaddr_in relay_up;
/* Closed pairs of this thread's current batch: the batch may still name them. */
static __thread struct relay_pair *relay_dead;

static void relay_close(struct relay_pair *p)
{
	close(p->fd[0]); /* closing leaves epoll: nothing else holds the fd */
	close(p->fd[1]);
	p->dead = 1;
	p->next_dead = relay_dead;
	relay_dead = p;
}

static void relay_reap(void)
{
	while (relay_dead) {
		struct relay_pair *p = relay_dead;

		relay_dead = p->next_dead;
		free(p->dir[0].pending);
		free(p->dir[1].pending);
		free(p);
	}
}

/* Move what can move in direction k; -1 when the pair is finished. */
static int relay_pump(struct relay_pair *p, int k, uint8_t *buf)
{
	struct relay_dir *d = &p->dir[k];
	int from = p->fd[k], to = p->fd[1 - k];
	ssize_t n;

	for (;;) {
		if (d->off < d->len) {
			if (!p->connected)
				return 0;
			n = send(to, d->pending + d->off, d->len - d->off, MSG_NOSIGNAL);
			if (n < 0)
				return errno == EAGAIN ? 0 : -1;
			d->off += (size_t)n;
			if (d->off < d->len)
				return 0; /* the next EPOLLOUT edge resumes */
			free(d->pending);
			d->pending = NULL;
			d->off = d->len = 0;
		}
		if (d->eof_sent || !d->readable)
			return 0;
		if (d->eof_read) {
			if (!p->connected)
				return 0;
			if (p->dir[1 - k].eof_sent)
				return -1; /* close() sends the last FIN */
			shutdown(to, SHUT_WR);
			d->eof_sent = 1;
			return 0;
		}
		n = recv(from, buf, BULK_CHUNK_BYTES, 0);
		if (n == 0) {
			d->eof_read = 1;
			continue;
		}
		if (n < 0) {
			if (errno != EAGAIN)
				return -1;
			d->readable = 0;
			return 0;
		}
		if ((size_t)n < BULK_CHUNK_BYTES && !d->fin_seen)
			d->readable = 0; /* short: drained; new bytes bring a new edge */
		if (p->connected) {
			ssize_t w = send(to, buf, (size_t)n, MSG_NOSIGNAL);

			if (w < 0 && errno != EAGAIN)
				return -1;
			if (w == n)
				continue;
			if (w < 0)
				w = 0;
			buf += w;
			n -= w;
		}
		d->pending = malloc((size_t)n);
		if (!d->pending)
			return -1;
		memcpy(d->pending, buf, (size_t)n);
		d->len = (size_t)n;
		return 0;
	}
}

static void relay_event(struct relay_end *e, uint32_t ev, uint8_t *buf)
{
	struct relay_pair *p = e->p;
	int s = e->side;

	if (p->dead)
		return;
	if (s == 1 && !p->connected) {
		if (ev & (EPOLLERR | EPOLLHUP)) {
			relay_close(p);
			return;
		}
		if (ev & EPOLLOUT)
			p->connected = 1;
	}
	if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
		p->dir[s].readable = 1;
	if (ev & (EPOLLRDHUP | EPOLLHUP))
		p->dir[s].fin_seen = 1;
	if (relay_pump(p, 0, buf) < 0 || relay_pump(p, 1, buf) < 0)
		relay_close(p);
}

static void relay_accept(int ep, int lfd)
{
	struct epoll_event ev;
	int fd, up, one = 1;

	while ((fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
		struct relay_pair *p = calloc(1, sizeof(*p));

		up = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (!p || up < 0 ||
		    (connect(up, (const struct sockaddr *)&relay_up, sizeof(relay_up)) &&
		     errno != EINPROGRESS)) {
			close(fd);
			if (up >= 0)
				close(up);
			free(p);
			continue;
		}
		setsockopt(up, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		p->fd[0] = fd;
		p->fd[1] = up;
		for (int s = 0; s < 2; s++) {
			p->end[s].p = p;
			p->end[s].side = s;
			ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
			ev.data.ptr = &p->end[s];
			epoll_ctl(ep, EPOLL_CTL_ADD, p->fd[s], &ev);
		}
	}
}

static void *relay_thread(void *arg)
{
	struct epoll_event evs[64];
	uint8_t *buf = malloc(BULK_CHUNK_BYTES);
	int lfd, ep, i, n;

	if (!buf) {
		perror("relay");
		exit(1);
	}
	lfd = thread_listener(arg, &ep, "relay");
	for (;;) {
		n = epoll_wait(ep, evs, 64, -1);
		for (i = 0; i < n; i++) {
			if (evs[i].data.ptr)
				relay_event(evs[i].data.ptr, evs[i].events, buf);
			else
				relay_accept(ep, lfd);
		}
		relay_reap();
	}
}

static int run_relay(int argc, char **argv)
{
	static struct sockaddr_in sa;
	pthread_t t;
	int threads = argc > 4 ? atoi(argv[4]) : 2, i;

	if (parse_addr(argv[2], &sa) || parse_addr(argv[3], &relay_up) || threads < 1 ||
	    threads > RELAY_THREADS_MAX) {
		fprintf(stderr, "relay: bad address or thread count\n");
		return 2;
	}
	for (i = 1; i < threads; i++)
		pthread_create(&t, NULL, relay_thread, &sa);
	relay_thread(&sa);
	return 0;
}

/* ---- clients ---- */

static int dial(void)
{
	struct timeval tv = { .tv_sec = CLIENT_TIMEOUT_S };
	int one = 1, fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return -1;
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (connect(fd, (struct sockaddr *)&target, sizeof(target))) {
		int err = errno;

		close(fd);
		errno = err;
		return -1;
	}
	return fd;
}

/*
 * Blocking recv() calls that returned EAGAIN long before SO_RCVTIMEO. A
 * blocking socket must never do that, but one in a sockmap can (seen with
 * egressd --accel on); count it, say so, and read on so the figures of the
 * path can still be had.
 */
static unsigned long spurious_eagain;

static int recv_all(int fd, void *buf, size_t len)
{
	size_t got = 0;

	while (got < len) {
		double t0 = now_s();
		ssize_t n = recv(fd, (char *)buf + got, len - got, 0);

		if (n < 0 && errno == EAGAIN && now_s() - t0 < CLIENT_TIMEOUT_S / 2) {
			__atomic_add_fetch(&spurious_eagain, 1, __ATOMIC_RELAXED);
			continue;
		}
		if (n <= 0)
			return -1;
		got += (size_t)n;
	}
	return 0;
}

/* Connect, send the hello, read the reply: the TLS-shaped opening. */
static int open_tls_ish(void)
{
	uint8_t reply[REPLY_BYTES];
	int fd = dial(), err;

	if (fd < 0)
		return -1;
	if (send(fd, hello, hello_len, MSG_NOSIGNAL) != (ssize_t)hello_len)
		goto err;
	errno = 0;
	if (recv_all(fd, reply, sizeof(reply)))
		goto err;
	if (reply[0] != 0x16) {
		errno = EPROTO;
		goto err;
	}
	return fd;
err:
	err = errno ? errno : ECONNRESET; /* EOF before the reply: closed on us */
	close(fd);
	errno = err;
	return -1;
}

struct worker {
	pthread_t t;
	double secs;
	/* results */
	uint64_t bytes, conns, errors;
	double t0, t1;
	uint32_t *lat_us;
	size_t nlat;
};

static void *bulk_worker(void *arg)
{
	struct worker *w = arg;
	uint8_t *buf = malloc(BULK_CHUNK_BYTES);
	uint64_t be = 0, echoed = 0;
	double end;
	size_t i;
	int fd;

	if (!buf)
		goto err;
	for (i = 0; i < BULK_CHUNK_BYTES; i++)
		buf[i] = (uint8_t)(i * 31 + 7);
	fd = open_tls_ish();
	if (fd < 0) {
		fprintf(stderr, "bulk: opening: %s\n", strerror(errno));
		goto err;
	}
	w->t0 = now_s();
	end = w->t0 + w->secs;
	while (now_s() < end) {
		ssize_t n = send(fd, buf, BULK_CHUNK_BYTES, MSG_NOSIGNAL);

		if (n <= 0) {
			fprintf(stderr, "bulk: send after %llu bytes: %s\n",
				(unsigned long long)w->bytes, strerror(errno));
			goto err_close;
		}
		w->bytes += (uint64_t)n;
	}
	shutdown(fd, SHUT_WR);
	errno = 0;
	if (recv_all(fd, &be, sizeof(be))) {
		fprintf(stderr, "bulk: no count from the server after %llu bytes: %s\n",
			(unsigned long long)w->bytes, errno ? strerror(errno) : "EOF");
		goto err_close;
	}
	w->t1 = now_s();
	for (i = 0; i < 8; i++)
		echoed = (echoed << 8) | ((uint8_t *)&be)[i];
	if (echoed != w->bytes) {
		fprintf(stderr, "bulk: sent %llu bytes, server counted %llu\n",
			(unsigned long long)w->bytes, (unsigned long long)echoed);
		goto err_close;
	}
	close(fd);
	free(buf);
	return NULL;
err_close:
	close(fd);
err:
	w->errors++;
	free(buf);
	return NULL;
}

static void *rate_worker(void *arg)
{
	struct worker *w = arg;
	double end = now_s() + w->secs, t;

	while ((t = now_s()) < end) {
		int fd = open_tls_ish();

		if (fd < 0) {
			/* One line per worker is enough to tell what broke. */
			if (!w->errors++)
				fprintf(stderr, "rate: %s\n", strerror(errno));
			continue;
		}
		close(fd);
		w->conns++;
		if (w->nlat < LAT_SAMPLES_MAX)
			w->lat_us[w->nlat++] = (uint32_t)((now_s() - t) * 1e6);
	}
	return NULL;
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

static int run_clients(int argc, char **argv, int bulk)
{
	static struct worker ws[WORKERS_MAX];
	uint64_t bytes = 0, conns = 0, errors = 0;
	double t0 = 0, t1 = 0, start;
	uint32_t *lat = NULL;
	size_t nlat = 0;
	int n, i;

	if (argc < 5 || parse_addr(argv[2], &target) || (n = atoi(argv[3])) < 1 ||
	    n > WORKERS_MAX || atof(argv[4]) <= 0) {
		fprintf(stderr, "usage: loadgen %s ADDR:PORT N SECONDS\n", argv[1]);
		return 2;
	}
	start = now_s();
	for (i = 0; i < n; i++) {
		ws[i].secs = atof(argv[4]);
		if (!bulk) {
			ws[i].lat_us = malloc(LAT_SAMPLES_MAX * sizeof(uint32_t));
			if (!ws[i].lat_us)
				return 1;
		}
		pthread_create(&ws[i].t, NULL, bulk ? bulk_worker : rate_worker, &ws[i]);
	}
	for (i = 0; i < n; i++) {
		pthread_join(ws[i].t, NULL);
		bytes += ws[i].bytes;
		conns += ws[i].conns;
		errors += ws[i].errors;
		if (ws[i].t1 > 0) {
			if (!t0 || ws[i].t0 < t0)
				t0 = ws[i].t0;
			if (ws[i].t1 > t1)
				t1 = ws[i].t1;
		}
	}
	if (bulk) {
		double secs = t1 > t0 ? t1 - t0 : 0;

		printf("bulk MBps=%.1f bytes=%llu secs=%.3f errors=%llu spurious_eagain=%lu\n",
		       secs > 0 && !errors ? (double)bytes / secs / 1e6 : 0.0,
		       (unsigned long long)bytes, secs, (unsigned long long)errors,
		       spurious_eagain);
		return errors ? 1 : 0;
	}
	for (i = 0; i < n; i++)
		nlat += ws[i].nlat;
	lat = malloc((nlat + 1) * sizeof(*lat));
	if (!lat)
		return 1;
	for (i = 0, nlat = 0; i < n; i++) {
		memcpy(lat + nlat, ws[i].lat_us, ws[i].nlat * sizeof(*lat));
		nlat += ws[i].nlat;
	}
	qsort(lat, nlat, sizeof(*lat), cmp_u32);
	printf("rate cps=%.0f conns=%llu errors=%llu p50_us=%u p99_us=%u spurious_eagain=%lu\n",
	       (double)conns / (now_s() - start), (unsigned long long)conns,
	       (unsigned long long)errors, nlat ? lat[nlat / 2] : 0,
	       nlat ? lat[nlat * 99 / 100] : 0, spurious_eagain);
	return 0;
}

int main(int argc, char **argv)
{
	signal(SIGPIPE, SIG_IGN);
	build_hello();
	if (argc >= 3 && !strcmp(argv[1], "server"))
		return run_server(argc, argv);
	if (argc >= 4 && !strcmp(argv[1], "relay"))
		return run_relay(argc, argv);
	if (argc >= 2 && !strcmp(argv[1], "bulk"))
		return run_clients(argc, argv, 1);
	if (argc >= 2 && !strcmp(argv[1], "rate"))
		return run_clients(argc, argv, 0);
	if (argc >= 2 && !strcmp(argv[1], "hello")) {
		/* For checking the hello against a parser: write it to stdout. */
		fwrite(hello, 1, hello_len, stdout);
		return 0;
	}
	fprintf(stderr, "usage: loadgen server ADDR:PORT [THREADS]\n"
			"       loadgen relay ADDR:PORT UPSTREAM:PORT [THREADS]\n"
			"       loadgen bulk ADDR:PORT STREAMS SECONDS\n"
			"       loadgen rate ADDR:PORT WORKERS SECONDS\n"
			"       loadgen hello > hello.bin\n");
	return 2;
}
