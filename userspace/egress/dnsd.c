/* SPDX-License-Identifier: MIT */
/*
 * The policy DNS server; see dnsd.h. One event loop runs it all: the UDP
 * sockets (level-triggered, a bounded batch per wakeup), the TCP listener
 * and connections, and c-ares, whose sockets are watched on the same loop
 * through its socket-state callback and whose deadlines are one loop timer.
 * Nothing here blocks: a query that needs the upstream waits as a request
 * object until c-ares calls back.
 *
 * The daemon's own answers (A/AAAA for allowed names) come from a small
 * cache with the upstream's TTL (capped), and concurrent questions for the
 * same name and type wait for one lookup rather than each sending its own.
 */
#include "egress/dnsd.h"
#include "egress/daemon.h"
#include "datapath/origdst.h"
#include "core/counter.h"
#include "core/log.h"
#include "core/slots.h"

#include <ares.h>
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

/* Datagrams read per wakeup before the loop serves others. */
#define UDP_BATCH 64
/* c-ares sockets watched at once: one UDP and one TCP per server. */
#define ARES_SOCKS_MAX (2 * EGD_RESOLVERS_MAX_ENTRIES + 4)
/* Addresses kept per name and type (a CDN gives a handful). */
#define CACHE_ADDRS_MAX 8
/* Slots probed for a name in the cache before one is evicted. */
#define CACHE_PROBE 8
/* Bytes a TCP client may leave unread in our send buffer before it is cut
 * off: enough for a full pipeline of large answers. */
#define TCP_WBUF_MAX_BYTES (EGD_DNSD_TCP_MAX_INFLIGHT * 4096 + 2 * 65537)
#define TCP_BACKLOG 128

enum xport { X_UDP = 0, X_TCP };

struct egd_dnsd;

struct tcp_conn {
	struct egd_watch w; /* first: the watch is the connection */
	struct egd_timer idle;
	struct egd_dnsd *s;
	struct tcp_conn *prev, *next;
	struct egd_addr peer;
	uint64_t cgroup_id;
	uint8_t rbuf[2 + EGD_DNS_MSG_MAX_BYTES];
	size_t rlen;
	uint8_t *wbuf;
	size_t wlen, woff, wcap;
	unsigned int inflight;
	uint32_t events;
	int dead, eof;
};

/* A query being answered; on the stack when answered at once. */
struct req {
	struct req *next; /* waiting on a cache entry */
	struct egd_dnsd *s;
	enum xport xport;
	int udp_fd;
	struct sockaddr_storage peer;
	socklen_t peer_len;
	struct egd_addr src;
	uint64_t cgroup_id;
	struct tcp_conn *conn;
	enum egd_phase phase;
	enum egd_dns_verdict verdict;
	int intercept;
	struct egd_dns_query q;
};

struct centry {
	int used, pending, intercept;
	uint16_t qtype;
	int rcode;
	unsigned long long expires_ms;
	uint32_t ttl; /* as given at fill time, capped */
	size_t n;
	struct egd_dns_rr rr[CACHE_ADDRS_MAX];
	struct req *waiters;
	char name[EGD_HOST_MAX];
};

struct ares_sock {
	struct egd_watch w;
	struct egd_dnsd *s;
	int used;
};

struct udp_sock {
	struct egd_watch w;
	struct egd_dnsd *s;
};

struct tcp_listener {
	struct egd_watch w;
	struct egd_dnsd *s;
	struct egd_addr addr; /* bound: the local end of every accept */
};

struct dnsd_metrics {
	uint64_t queries[EGD_DNS_V_MAX];
	uint64_t rcodes[6], rcode_other;
	uint64_t upstream_failures;
	uint64_t dropped;     /* not a query, or no room to answer */
	uint64_t overload;    /* pending full, TCP full */
	uint64_t cache_hits;
};

/* Answers to one batch of datagrams, sent with one sendmmsg(). */
struct udp_batch {
	int active, fd, n;
	struct mmsghdr mh[UDP_BATCH];
	struct iovec iov[UDP_BATCH];
	struct sockaddr_storage peer[UDP_BATCH];
	uint8_t buf[UDP_BATCH][EGD_DNS_UDP_MAX_BYTES];
	/* Datagrams of the batch, read with one recvmmsg(). */
	struct mmsghdr rmh[UDP_BATCH];
	struct iovec riov[UDP_BATCH];
	struct sockaddr_storage rpeer[UDP_BATCH];
	uint8_t rbuf[UDP_BATCH][EGD_DNS_UDP_MAX_BYTES];
};

struct egd_dnsd {
	struct egd_loop *loop;
	struct udp_batch batch;
	struct egd_dnsd_config cfg;
	struct udp_sock udp4, udp6;
	struct tcp_listener tcp4, tcp6;
	struct tcp_conn *conns;
	unsigned int n_conns;
	unsigned int n_pending;
	ares_channel ch;
	int ares_ok;
	struct ares_sock asock[ARES_SOCKS_MAX];
	struct egd_timer ares_timer;
	struct dnsd_metrics m;
	struct centry cache[EGD_DNSD_CACHE_ENTRIES];
	uint8_t out[2 + EGD_DNS_MSG_MAX_BYTES];
};

const char *egd_dns_verdict_name(enum egd_dns_verdict v)
{
	static const char *const names[] = { "resolve", "nodata", "refuse", "forward",
					     "malformed" };

	return v < EGD_DNS_V_MAX ? names[v] : "?";
}

static int addr_type(uint16_t t)
{
	return t == EGD_DNS_T_A || t == EGD_DNS_T_AAAA;
}

enum egd_dns_verdict egd_dns_policy(const struct egd_policy *policy, enum egd_phase phase,
				    const struct egd_dns_query *q, int *intercept)
{
	char host[EGD_HOST_MAX];
	int named = 0, icpt = 0, allow = 0;

	if (q->plain && strlen(q->qname) < sizeof(host)) {
		memcpy(host, q->qname, strlen(q->qname) + 1);
		named = egd_host_normalize(host) == 0;
	}
	if (named) {
		/* The one matcher decide() uses: what the DNS gives out and
		 * what the capture lets through can never disagree. */
		icpt = egd_hostlist_match(&policy->intercept, host);
		allow = egd_hostlist_match(&policy->agent_allow, host);
	}
	*intercept = icpt;
	/* An intercept host gets the daemon's own addresses and nothing else
	 * in both phases: no HTTPS/SVCB record (ECH config, alternative
	 * endpoints), no ANY that could carry one. */
	if (icpt)
		return addr_type(q->qtype) ? EGD_DNS_V_RESOLVE : EGD_DNS_V_NODATA;
	if (phase == EGD_PHASE_VERIFICATION)
		return EGD_DNS_V_FORWARD;
	if (!allow)
		return EGD_DNS_V_REFUSE;
	return addr_type(q->qtype) ? EGD_DNS_V_RESOLVE : EGD_DNS_V_NODATA;
}

/* --- replies ---------------------------------------------------------------- */

static void conn_close(struct tcp_conn *c);
static void conn_update(struct tcp_conn *c);
static void conn_process(struct tcp_conn *c);

static void conn_free_cb(void *arg)
{
	struct tcp_conn *c = arg;

	free(c->wbuf);
	free(c);
}

static void conn_flush(struct tcp_conn *c)
{
	while (c->woff < c->wlen) {
		ssize_t n = send(c->w.fd, c->wbuf + c->woff, c->wlen - c->woff,
				 MSG_NOSIGNAL | MSG_DONTWAIT);

		if (n < 0) {
			if (errno != EAGAIN)
				conn_close(c);
			return;
		}
		c->woff += (size_t)n;
	}
	c->woff = c->wlen = 0;
}

static void conn_queue(struct tcp_conn *c, const uint8_t *msg, size_t len)
{
	size_t need = c->wlen + 2 + len;

	if (c->dead)
		return;
	if (need > TCP_WBUF_MAX_BYTES) {
		conn_close(c);
		return;
	}
	if (need > c->wcap) {
		size_t cap = c->wcap ? c->wcap : 4096;
		uint8_t *nb;

		while (cap < need)
			cap *= 2;
		nb = realloc(c->wbuf, cap);
		if (!nb) {
			conn_close(c);
			return;
		}
		c->wbuf = nb;
		c->wcap = cap;
	}
	c->wbuf[c->wlen] = (uint8_t)(len >> 8);
	c->wbuf[c->wlen + 1] = (uint8_t)len;
	memcpy(c->wbuf + c->wlen + 2, msg, len);
	c->wlen = need;
	conn_flush(c);
}

static void audit_req(struct egd_dnsd *s, const struct req *r, int rcode)
{
	char tbuf[16];
	struct egd_audit_dns a = {
		.phase = r->phase,
		.cgroup_id = r->cgroup_id, /* 0: not known (every datagram) */
		.src = &r->src,
		.proto = r->xport == X_TCP ? "tcp" : "udp",
		.qname = r->q.has_question ? r->q.qname : "",
		.qtype = r->q.has_question ? egd_dns_type_name(r->q.qtype, tbuf, sizeof(tbuf)) : "",
		.verdict = egd_dns_verdict_name(r->verdict),
		.rcode = egd_dns_rcode_name(rcode),
	};

	(void)s;
	egd_audit_dns(&a);
}

static void send_msg(struct egd_dnsd *s, struct req *r, const uint8_t *msg, int len, int rcode)
{
	if (len < 0) {
		EGD_COUNTER_INC(s->m.dropped);
		return;
	}
	EGD_COUNTER_INC(s->m.queries[r->verdict]);
	if (rcode >= 0 && rcode < 6)
		EGD_COUNTER_INC(s->m.rcodes[rcode]);
	else
		EGD_COUNTER_INC(s->m.rcode_other);
	audit_req(s, r, rcode);
	if (r->xport == X_UDP && s->batch.active && r->udp_fd == s->batch.fd &&
	    s->batch.n < UDP_BATCH && (size_t)len <= EGD_DNS_UDP_MAX_BYTES) {
		struct udp_batch *b = &s->batch;
		int i = b->n++;

		memcpy(b->buf[i], msg, (size_t)len);
		memcpy(&b->peer[i], &r->peer, r->peer_len);
		b->iov[i].iov_base = b->buf[i];
		b->iov[i].iov_len = (size_t)len;
		memset(&b->mh[i], 0, sizeof(b->mh[i]));
		b->mh[i].msg_hdr.msg_name = &b->peer[i];
		b->mh[i].msg_hdr.msg_namelen = r->peer_len;
		b->mh[i].msg_hdr.msg_iov = &b->iov[i];
		b->mh[i].msg_hdr.msg_iovlen = 1;
		return;
	}
	if (r->xport == X_UDP) {
		if (sendto(r->udp_fd, msg, (size_t)len, MSG_DONTWAIT, (struct sockaddr *)&r->peer,
			   r->peer_len) < 0)
			EGD_COUNTER_INC(s->m.dropped);
		return;
	}
	conn_queue(r->conn, msg, (size_t)len);
}

static size_t limit_of(const struct req *r)
{
	return r->xport == X_UDP ? r->q.udp_size : EGD_DNS_MSG_MAX_BYTES;
}

static void answer(struct egd_dnsd *s, struct req *r, int rcode, const struct egd_dns_rr *rr,
		   size_t n)
{
	int len = egd_dns_build_answer(&r->q, rcode, rr, n, s->cfg.max_ttl_s, limit_of(r),
				       s->out, EGD_DNS_MSG_MAX_BYTES);

	send_msg(s, r, s->out, len, rcode);
}

/* An async request is done: its TCP connection may go now. */
static void req_done(struct egd_dnsd *s, struct req *r)
{
	struct tcp_conn *c = r->conn;

	s->n_pending--;
	if (c) {
		c->inflight--;
		if (c->dead) {
			if (!c->inflight && egd_loop_defer(s->loop, conn_free_cb, c))
				egd_warn("dns: connection memory leaked: defer queue full");
		} else {
			conn_process(c); /* it may have paused at the inflight cap */
		}
	}
	free(r);
}

/* A copy of the stack request @r that outlives this call; NULL when the
 * pending cap is reached (the caller answers SERVFAIL). */
static struct req *req_keep(struct egd_dnsd *s, const struct req *r)
{
	struct req *k;

	if (s->n_pending >= EGD_DNSD_MAX_PENDING) {
		EGD_COUNTER_INC(s->m.overload);
		return NULL;
	}
	k = malloc(sizeof(*k));
	if (!k)
		return NULL;
	*k = *r;
	k->next = NULL;
	s->n_pending++;
	if (k->conn)
		k->conn->inflight++;
	return k;
}

/* --- c-ares on the loop ----------------------------------------------------- */

static void ares_rearm(struct egd_dnsd *s)
{
	struct timeval tv, *tp = ares_timeout(s->ch, NULL, &tv);

	if (!tp) {
		egd_timer_cancel(s->loop, &s->ares_timer);
		return;
	}
	egd_timer_arm(s->loop, &s->ares_timer,
		      egd_now_ms() + (unsigned long long)tp->tv_sec * 1000 +
			      (unsigned long long)tp->tv_usec / 1000 + 1);
}

static void on_ares_timer(struct egd_timer *t)
{
	struct egd_dnsd *s = (struct egd_dnsd *)((char *)t - offsetof(struct egd_dnsd, ares_timer));

	ares_process_fd(s->ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
	ares_rearm(s);
}

static void on_ares_sock(struct egd_watch *w, uint32_t events)
{
	struct ares_sock *a = (struct ares_sock *)w;
	struct egd_dnsd *s = a->s;
	int fd = w->fd;

	if (!a->used)
		return;
	ares_process_fd(s->ch, events & (EPOLLIN | EPOLLERR | EPOLLHUP) ? fd : ARES_SOCKET_BAD,
			events & EPOLLOUT ? fd : ARES_SOCKET_BAD);
	ares_rearm(s);
}

static void ares_sock_state(void *data, ares_socket_t fd, int readable, int writable)
{
	struct egd_dnsd *s = data;
	struct ares_sock *a = NULL, *free_slot = NULL;
	uint32_t ev = (readable ? EPOLLIN : 0) | (writable ? EPOLLOUT : 0);

	for (int i = 0; i < ARES_SOCKS_MAX; i++) {
		if (s->asock[i].used && s->asock[i].w.fd == fd)
			a = &s->asock[i];
		else if (!s->asock[i].used && !free_slot)
			free_slot = &s->asock[i];
	}
	if (!ev) {
		if (a) {
			egd_loop_del(s->loop, &a->w);
			a->used = 0;
			a->w.fd = -1;
		}
		return;
	}
	if (a) {
		egd_loop_mod(s->loop, &a->w, ev);
		return;
	}
	if (!free_slot) {
		egd_err("dns: more upstream sockets than %d", ARES_SOCKS_MAX);
		return;
	}
	free_slot->w.fd = fd;
	free_slot->w.cb = on_ares_sock;
	free_slot->s = s;
	free_slot->used = 1;
	if (egd_loop_add(s->loop, &free_slot->w, ev)) {
		free_slot->used = 0;
		egd_err("dns: watching an upstream socket failed");
	}
}

static int ares_setup(struct egd_dnsd *s)
{
	struct ares_options o;
	int mask = ARES_OPT_SOCK_STATE_CB | ARES_OPT_FLAGS | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES |
		   ARES_OPT_EDNSPSZ;
	int err;

	err = ares_library_init(ARES_LIB_INIT_ALL);
	if (err)
		goto fail;
	memset(&o, 0, sizeof(o));
	o.sock_state_cb = ares_sock_state;
	o.sock_state_cb_data = s;
	/* NOCHECKRESP: the upstream's SERVFAIL or REFUSED is relayed as it
	 * is, not turned into a retry at the next server; EDNS for the
	 * daemon's own lookups, at the size we offer the agent. */
	o.flags = ARES_FLAG_NOCHECKRESP | ARES_FLAG_EDNS;
	o.timeout = EGD_DNSD_UPSTREAM_TIMEOUT_MS;
	o.tries = EGD_DNSD_UPSTREAM_TRIES;
	o.ednspsz = EGD_DNS_UDP_MAX_BYTES;
	err = ares_init_options(&s->ch, &o, mask);
	if (err)
		goto fail;
	s->ares_ok = 1;
	if (s->cfg.resolvers) {
		struct egd_addr ips[EGD_RESOLVERS_MAX_ENTRIES];
		struct ares_addr_node nodes[EGD_RESOLVERS_MAX_ENTRIES];
		int n = egd_parse_ip_list(s->cfg.resolvers, ips, EGD_RESOLVERS_MAX_ENTRIES);

		if (n <= 0) {
			egd_err("dns: EGRESSD_RESOLVERS \"%s\": no address", s->cfg.resolvers);
			errno = EINVAL;
			return -EINVAL;
		}
		memset(nodes, 0, sizeof(nodes));
		for (int i = 0; i < n; i++) {
			nodes[i].next = i + 1 < n ? &nodes[i + 1] : NULL;
			nodes[i].family = ips[i].family == EGD_AF_INET ? AF_INET : AF_INET6;
			memcpy(&nodes[i].addr, ips[i].addr, ips[i].family == EGD_AF_INET ? 4 : 16);
		}
		err = ares_set_servers(s->ch, nodes);
		if (err)
			goto fail;
	}
	s->ares_timer.cb = on_ares_timer;
	return 0;
fail:
	egd_err("dns: c-ares: %s", ares_strerror(err));
	return -EINVAL;
}

/* --- the daemon's own answers (cache) -------------------------------------- */

static size_t cache_hash(const char *name, uint16_t qtype)
{
	uint32_t h = 2166136261u ^ qtype;

	for (; *name; name++)
		h = (h ^ (uint8_t)*name) * 16777619u;
	return h % EGD_DNSD_CACHE_ENTRIES;
}

/* The entry for @name/@qtype, or the slot to use for it (not pending), or
 * NULL when every slot of its probe window is waiting on a lookup. */
static struct centry *cache_slot(struct egd_dnsd *s, const char *name, uint16_t qtype)
{
	size_t h = cache_hash(name, qtype);
	struct centry *victim = NULL;

	for (size_t i = 0; i < CACHE_PROBE; i++) {
		struct centry *e = &s->cache[(h + i) % EGD_DNSD_CACHE_ENTRIES];

		if (e->used && e->qtype == qtype && !strcmp(e->name, name))
			return e;
		if (e->pending)
			continue;
		if (!e->used) {
			if (!victim || victim->used)
				victim = e;
		} else if (!victim || (victim->used && e->expires_ms < victim->expires_ms)) {
			victim = e;
		}
	}
	if (victim) {
		memset(victim, 0, sizeof(*victim));
		snprintf(victim->name, sizeof(victim->name), "%s", name);
		victim->qtype = qtype;
	}
	return victim;
}

/* Answer @r from the filled entry @e with the TTL that is left. */
static void answer_from(struct egd_dnsd *s, struct req *r, const struct centry *e)
{
	struct egd_dns_rr rr[CACHE_ADDRS_MAX];
	unsigned long long now = egd_now_ms();
	uint32_t left = e->expires_ms > now ? (uint32_t)((e->expires_ms - now + 999) / 1000) : 0;

	if (left > e->ttl)
		left = e->ttl;
	for (size_t i = 0; i < e->n; i++) {
		rr[i] = e->rr[i];
		rr[i].ttl = left;
	}
	answer(s, r, e->rcode, rr, e->n);
}

static void remember(struct egd_dnsd *s, const struct centry *e)
{
	uint64_t exp = egd_icaddr_now_ns() +
		       ((uint64_t)e->ttl + EGD_DNSD_ICADDR_GRACE_S) * 1000000000ull;

	if (!s->cfg.icaddr)
		return;
	for (size_t i = 0; i < e->n; i++) {
		struct egd_ip ip = { .family = e->rr[i].type == EGD_DNS_T_A ? EGD_AF_INET :
									       EGD_AF_INET6 };

		memcpy(ip.addr, e->rr[i].addr, e->rr[i].type == EGD_DNS_T_A ? 4 : 16);
		if (egd_icaddr_add(s->cfg.icaddr, &ip, e->name, exp))
			egd_warn("dns: intercept address for %s not pushed to the datapath",
				 e->name);
	}
}

/* Fill @e from a c-ares answer. */
static void cache_fill(struct egd_dnsd *s, struct centry *e, int status, unsigned char *abuf,
		       int alen)
{
	uint32_t ttl = s->cfg.max_ttl_s, neg = EGD_DNSD_NEG_TTL_S;
	int n = CACHE_ADDRS_MAX;

	if (neg > s->cfg.max_ttl_s)
		neg = s->cfg.max_ttl_s;
	e->n = 0;
	e->rcode = EGD_DNS_NOERROR;
	if (status == ARES_SUCCESS && e->qtype == EGD_DNS_T_A) {
		struct ares_addrttl at[CACHE_ADDRS_MAX];

		status = ares_parse_a_reply(abuf, alen, NULL, at, &n);
		for (int i = 0; status == ARES_SUCCESS && i < n; i++) {
			e->rr[i].type = EGD_DNS_T_A;
			memcpy(e->rr[i].addr, &at[i].ipaddr, 4);
			if ((uint32_t)at[i].ttl < ttl)
				ttl = at[i].ttl < 0 ? 0 : (uint32_t)at[i].ttl;
			e->n++;
		}
	} else if (status == ARES_SUCCESS) {
		struct ares_addr6ttl at[CACHE_ADDRS_MAX];

		status = ares_parse_aaaa_reply(abuf, alen, NULL, at, &n);
		for (int i = 0; status == ARES_SUCCESS && i < n; i++) {
			e->rr[i].type = EGD_DNS_T_AAAA;
			memcpy(e->rr[i].addr, &at[i].ip6addr, 16);
			if ((uint32_t)at[i].ttl < ttl)
				ttl = at[i].ttl < 0 ? 0 : (uint32_t)at[i].ttl;
			e->n++;
		}
	}
	if (status == ARES_SUCCESS && !e->n)
		status = ARES_ENODATA;
	switch (status) {
	case ARES_SUCCESS:
		break;
	case ARES_ENODATA:
		ttl = neg;
		break;
	case ARES_ENOTFOUND:
		e->rcode = EGD_DNS_NXDOMAIN;
		ttl = neg;
		break;
	default:
		/* Timeout, SERVFAIL, no server: said now, not remembered. */
		EGD_COUNTER_INC(s->m.upstream_failures);
		e->rcode = EGD_DNS_SERVFAIL;
		ttl = 0;
		break;
	}
	for (size_t i = 0; i < e->n; i++)
		e->rr[i].ttl = ttl;
	e->ttl = ttl;
	e->expires_ms = egd_now_ms() + ttl * 1000ull;
	if (e->intercept && e->n)
		remember(s, e);
}

static void on_resolved(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
	struct centry *e = arg;
	struct egd_dnsd *s;
	struct req *list = e->waiters, *r;

	(void)timeouts;
	if (status == ARES_EDESTRUCTION || !list)
		return; /* the server is going away; egd_dnsd_free() frees them */
	s = list->s;
	e->pending = 0;
	e->waiters = NULL;
	cache_fill(s, e, status, abuf, alen);
	while ((r = list)) {
		list = r->next;
		answer_from(s, r, e);
		req_done(s, r);
	}
}

static void resolve(struct egd_dnsd *s, struct req *r)
{
	char host[EGD_HOST_MAX];
	struct centry *e;
	struct req *k;

	snprintf(host, sizeof(host), "%s", r->q.qname);
	egd_host_normalize(host); /* checked by egd_dns_policy() */
	e = cache_slot(s, host, r->q.qtype);
	if (e && e->used && !e->pending && e->expires_ms > egd_now_ms()) {
		EGD_COUNTER_INC(s->m.cache_hits);
		answer_from(s, r, e);
		return;
	}
	k = e ? req_keep(s, r) : NULL;
	if (!k) {
		EGD_COUNTER_INC(s->m.overload);
		answer(s, r, EGD_DNS_SERVFAIL, NULL, 0);
		return;
	}
	k->next = e->waiters;
	e->waiters = k;
	if (e->pending)
		return;
	e->used = e->pending = 1;
	e->intercept = r->intercept;
	/* May call back at once (no server): the entry is ready for it. */
	ares_query(s->ch, host, EGD_DNS_CLASS_IN, r->q.qtype, on_resolved, e);
	ares_rearm(s);
}

/* --- forwarding (verification phase) ---------------------------------------- */

/*
 * A relayed answer can carry the intercept host's addresses under another
 * name's question (alias.example CNAME openrouter.ai): every A/AAAA record
 * whose owner is an intercept host is remembered like the daemon's own.
 */
static void remember_owner(void *arg, const char *owner, int plain, const struct egd_dns_rr *rr)
{
	struct egd_dnsd *s = arg;
	char host[EGD_HOST_MAX];
	struct egd_ip ip = { .family = rr->type == EGD_DNS_T_A ? EGD_AF_INET : EGD_AF_INET6 };
	uint32_t ttl = rr->ttl < s->cfg.max_ttl_s ? rr->ttl : s->cfg.max_ttl_s;

	if (!plain || strlen(owner) >= sizeof(host))
		return;
	memcpy(host, owner, strlen(owner) + 1);
	if (egd_host_normalize(host) || !egd_hostlist_match(&s->cfg.policy->intercept, host))
		return;
	memcpy(ip.addr, rr->addr, rr->type == EGD_DNS_T_A ? 4 : 16);
	if (egd_icaddr_add(s->cfg.icaddr, &ip, host,
			   egd_icaddr_now_ns() +
				   ((uint64_t)ttl + EGD_DNSD_ICADDR_GRACE_S) * 1000000000ull))
		egd_warn("dns: intercept address for %s not pushed to the datapath", host);
}

static void on_forwarded(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
	struct req *r = arg;
	struct egd_dnsd *s = r->s;
	int len = -1;

	(void)timeouts;
	if (status == ARES_EDESTRUCTION) {
		free(r); /* the server is going away */
		return;
	}
	if (status == ARES_SUCCESS)
		len = egd_dns_relay_answer(&r->q, abuf, (size_t)alen, s->cfg.max_ttl_s,
					   limit_of(r), s->out, EGD_DNS_MSG_MAX_BYTES);
	if (len < 0) {
		EGD_COUNTER_INC(s->m.upstream_failures);
		answer(s, r, EGD_DNS_SERVFAIL, NULL, 0);
	} else {
		if (s->cfg.icaddr)
			egd_dns_answer_addrs(s->out, (size_t)len, remember_owner, s);
		send_msg(s, r, s->out, len, s->out[3] & 0xf);
	}
	req_done(s, r);
}

static void forward(struct egd_dnsd *s, struct req *r)
{
	uint8_t qbuf[EGD_DNS_NAME_WIRE_MAX_BYTES + 64];
	int len = egd_dns_build_forward(&r->q, 0, qbuf, sizeof(qbuf));
	struct req *k;

	k = len > 0 ? req_keep(s, r) : NULL;
	if (!k) {
		answer(s, r, EGD_DNS_SERVFAIL, NULL, 0);
		return;
	}
	/* c-ares gives the query an ID of its own and checks the answer's
	 * question against it; we put the client's ID back when relaying. */
	ares_send(s->ch, qbuf, len, on_forwarded, k);
	ares_rearm(s);
}

/* --- one query --------------------------------------------------------------- */

static void handle(struct egd_dnsd *s, struct req *r, const uint8_t *msg, size_t len)
{
	int rc = egd_dns_parse_query(msg, len, &r->q);

	if (rc < 0) {
		EGD_COUNTER_INC(s->m.dropped);
		return;
	}
	r->phase = __atomic_load_n(s->cfg.phase, __ATOMIC_ACQUIRE);
	if (rc != EGD_DNS_NOERROR) {
		r->verdict = EGD_DNS_V_MALFORMED;
		answer(s, r, rc, NULL, 0);
		return;
	}
	r->verdict = egd_dns_policy(s->cfg.policy, r->phase, &r->q, &r->intercept);
	switch (r->verdict) {
	case EGD_DNS_V_RESOLVE:
		resolve(s, r);
		return;
	case EGD_DNS_V_NODATA:
		answer(s, r, EGD_DNS_NOERROR, NULL, 0);
		return;
	case EGD_DNS_V_FORWARD:
		forward(s, r);
		return;
	default:
		answer(s, r, EGD_DNS_REFUSED, NULL, 0);
		return;
	}
}

/* --- UDP ---------------------------------------------------------------------- */

static void batch_flush(struct egd_dnsd *s)
{
	struct udp_batch *b = &s->batch;
	int off = 0;

	while (off < b->n) {
		int n = sendmmsg(b->fd, b->mh + off, (unsigned int)(b->n - off), MSG_DONTWAIT);

		if (n <= 0) {
			/* A full socket buffer: the rest is dropped, as a
			 * datagram would be; the clients retry. */
			EGD_COUNTER_ADD(s->m.dropped, (uint64_t)(b->n - off));
			break;
		}
		off += n;
	}
	b->n = 0;
}

/*
 * One recvmmsg() for up to UDP_BATCH datagrams, their answers gathered and
 * sent with one sendmmsg(): under load, two system calls per batch instead
 * of two per query. Answers that wait for the upstream go out on their own
 * later. A datagram larger than EGD_DNS_UDP_MAX_BYTES is dropped and
 * counted: no honest query is that large.
 */
static void on_udp(struct egd_watch *w, uint32_t events)
{
	struct udp_sock *u = (struct udp_sock *)w;
	struct egd_dnsd *s = u->s;
	struct udp_batch *b = &s->batch;
	int n;

	(void)events;
	for (int i = 0; i < UDP_BATCH; i++) {
		b->riov[i].iov_base = b->rbuf[i];
		b->riov[i].iov_len = sizeof(b->rbuf[i]);
		memset(&b->rmh[i], 0, sizeof(b->rmh[i]));
		b->rmh[i].msg_hdr.msg_name = &b->rpeer[i];
		b->rmh[i].msg_hdr.msg_namelen = sizeof(b->rpeer[i]);
		b->rmh[i].msg_hdr.msg_iov = &b->riov[i];
		b->rmh[i].msg_hdr.msg_iovlen = 1;
	}
	n = recvmmsg(w->fd, b->rmh, UDP_BATCH, MSG_DONTWAIT, NULL);
	if (n <= 0)
		return;
	b->active = 1;
	b->fd = w->fd;
	b->n = 0;
	for (int i = 0; i < n; i++) {
		struct req r;

		memset(&r, 0, sizeof(r));
		r.s = s;
		r.xport = X_UDP;
		r.udp_fd = w->fd;
		r.peer_len = b->rmh[i].msg_hdr.msg_namelen;
		memcpy(&r.peer, &b->rpeer[i], r.peer_len);
		egd_addr_from_sockaddr(&r.src, (struct sockaddr *)&r.peer);
		if (b->rmh[i].msg_hdr.msg_flags & MSG_TRUNC) {
			EGD_COUNTER_INC(s->m.dropped);
			continue;
		}
		handle(s, &r, b->rbuf[i], b->rmh[i].msg_len);
	}
	b->active = 0;
	batch_flush(s);
}

/* --- TCP ---------------------------------------------------------------------- */

static void conn_close(struct tcp_conn *c)
{
	struct egd_dnsd *s = c->s;

	if (c->dead)
		return;
	c->dead = 1;
	egd_timer_cancel(s->loop, &c->idle);
	egd_loop_del(s->loop, &c->w);
	close(c->w.fd);
	c->w.fd = -1;
	if (c->prev)
		c->prev->next = c->next;
	else
		s->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	s->n_conns--;
	/* Answers still on their way keep it until the last arrives. */
	if (!c->inflight && egd_loop_defer(s->loop, conn_free_cb, c))
		egd_warn("dns: connection memory leaked: defer queue full");
}

static void conn_update(struct tcp_conn *c)
{
	/* Level-triggered: once the client's FIN is read, RDHUP would be
	 * reported on every turn while its last answers are on their way. */
	uint32_t ev = c->eof ? 0 : EPOLLRDHUP;

	if (c->dead)
		return;
	if (c->inflight < EGD_DNSD_TCP_MAX_INFLIGHT && !c->eof)
		ev |= EPOLLIN;
	if (c->woff < c->wlen)
		ev |= EPOLLOUT;
	if (ev != c->events) {
		c->events = ev;
		egd_loop_mod(c->s->loop, &c->w, ev);
	}
}

/* Serve the whole frames read so far, while the inflight cap allows. */
static void conn_process(struct tcp_conn *c)
{
	size_t off = 0;

	while (!c->dead && c->inflight < EGD_DNSD_TCP_MAX_INFLIGHT && c->rlen - off >= 2) {
		size_t flen = (size_t)c->rbuf[off] << 8 | c->rbuf[off + 1];
		struct req r;

		if (flen == 0) {
			conn_close(c); /* RFC 7766: not a message */
			return;
		}
		if (c->rlen - off < 2 + flen)
			break;
		memset(&r, 0, sizeof(r));
		r.s = c->s;
		r.xport = X_TCP;
		r.conn = c;
		r.src = c->peer;
		r.cgroup_id = c->cgroup_id;
		handle(c->s, &r, c->rbuf + off + 2, flen);
		off += 2 + flen;
	}
	if (c->dead)
		return;
	if (off) {
		memmove(c->rbuf, c->rbuf + off, c->rlen - off);
		c->rlen -= off;
	}
	if (c->eof && !c->inflight && c->woff == c->wlen) {
		conn_close(c);
		return;
	}
	conn_update(c);
}

static void on_conn(struct egd_watch *w, uint32_t events)
{
	struct tcp_conn *c = (struct tcp_conn *)w;

	if (c->dead)
		return;
	/* An error, or both directions shut: nobody to answer. */
	if (events & (EPOLLERR | EPOLLHUP)) {
		conn_close(c);
		return;
	}
	if (events & EPOLLOUT) {
		conn_flush(c);
		if (c->dead)
			return;
	}
	if (events & (EPOLLIN | EPOLLRDHUP)) {
		while (c->rlen < sizeof(c->rbuf)) {
			ssize_t n = recv(c->w.fd, c->rbuf + c->rlen, sizeof(c->rbuf) - c->rlen,
					 MSG_DONTWAIT);

			if (n > 0) {
				c->rlen += (size_t)n;
				continue;
			}
			if (n == 0)
				c->eof = 1;
			else if (errno != EAGAIN) {
				conn_close(c);
				return;
			}
			break;
		}
		egd_timer_arm(c->s->loop, &c->idle, egd_now_ms() + EGD_DNSD_TCP_IDLE_MS);
	}
	conn_process(c);
}

static void on_conn_idle(struct egd_timer *t)
{
	struct tcp_conn *c = (struct tcp_conn *)((char *)t - offsetof(struct tcp_conn, idle));

	if (c->dead)
		return;
	if (c->inflight) {
		egd_timer_arm(c->s->loop, &c->idle, egd_now_ms() + EGD_DNSD_TCP_IDLE_MS);
		return;
	}
	conn_close(c);
}

static void on_accept(struct egd_watch *w, uint32_t events)
{
	struct tcp_listener *l = (struct tcp_listener *)w;
	struct egd_dnsd *s = l->s;

	(void)events;
	for (;;) {
		struct sockaddr_storage ss;
		socklen_t sl = sizeof(ss);
		struct tcp_conn *c;
		int fd = accept4(w->fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);

		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			return;
		}
		if (s->n_conns >= EGD_DNSD_TCP_MAX_CONNS ||
		    !(c = calloc(1, sizeof(*c)))) {
			EGD_COUNTER_INC(s->m.overload);
			egd_close_reset(fd);
			continue;
		}
		c->s = s;
		c->w.fd = fd;
		c->w.cb = on_conn;
		c->idle.cb = on_conn_idle;
		c->events = EPOLLIN | EPOLLRDHUP;
		egd_addr_from_sockaddr(&c->peer, (struct sockaddr *)&ss);
		if (s->cfg.tcp_cgroup &&
		    s->cfg.tcp_cgroup(s->cfg.tcp_cgroup_arg, &c->peer, &l->addr, &c->cgroup_id))
			c->cgroup_id = 0;
		if (egd_loop_add(s->loop, &c->w, c->events)) {
			close(fd);
			free(c);
			continue;
		}
		c->next = s->conns;
		if (s->conns)
			s->conns->prev = c;
		s->conns = c;
		s->n_conns++;
		egd_timer_arm(s->loop, &c->idle, egd_now_ms() + EGD_DNSD_TCP_IDLE_MS);
	}
}

/* --- setup ---------------------------------------------------------------------- */

static int open_sock(int family, int type, uint16_t port, struct egd_addr *bound)
{
	struct sockaddr_storage ss;
	struct egd_addr a = { .family = family == AF_INET ? EGD_AF_INET : EGD_AF_INET6 };
	socklen_t sl;
	int one = 1, fd, err;
	char name[64];

	a.port = htons(port);
	if (family == AF_INET)
		a.addr[0] = htonl(INADDR_LOOPBACK);
	else
		a.addr[3] = htonl(1);
	sl = egd_addr_to_sockaddr(&a, &ss);
	egd_addr_format(&a, name, sizeof(name));
	if (bound)
		*bound = a;
	fd = socket(family, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&ss, sl) ||
	    (type == SOCK_STREAM && listen(fd, TCP_BACKLOG))) {
		err = -errno;
		/* No ::1 (Docker's networks disable IPv6) is no error: there is
		 * nothing of the agent's to answer there. */
		if (family == AF_INET6 && (err == -EADDRNOTAVAIL || err == -EAFNOSUPPORT))
			egd_debug("policy DNS %s on %s: %s (no IPv6 here)",
				  type == SOCK_STREAM ? "tcp" : "udp", name, strerror(-err));
		else
			egd_err("policy DNS %s on %s: %s%s", type == SOCK_STREAM ? "tcp" : "udp",
				name, strerror(-err),
				err == -EADDRINUSE ?
					" (another egressd running? set EGRESSD_DNS_LISTEN)" :
					"");
		close(fd);
		return err;
	}
	return fd;
}

static int watch(struct egd_dnsd *s, struct egd_watch *w, int fd, egd_watch_cb cb)
{
	w->fd = fd;
	w->cb = cb;
	return egd_loop_add(s->loop, w, EPOLLIN);
}

struct egd_dnsd *egd_dnsd_new(struct egd_loop *loop, const struct egd_dnsd_config *cfg)
{
	struct egd_dnsd *s = calloc(1, sizeof(*s));
	int fd, err;

	if (!s)
		return NULL;
	s->loop = loop;
	s->cfg = *cfg;
	s->udp4.w.fd = s->udp6.w.fd = s->tcp4.w.fd = s->tcp6.w.fd = -1;
	s->udp4.s = s->udp6.s = s;
	s->tcp4.s = s->tcp6.s = s;
	err = ares_setup(s);
	if (err)
		goto fail;

	fd = open_sock(AF_INET, SOCK_DGRAM, cfg->port, NULL);
	if (fd < 0 || (err = watch(s, &s->udp4.w, fd, on_udp)))
		goto fail_fd;
	fd = open_sock(AF_INET, SOCK_STREAM, cfg->port, &s->tcp4.addr);
	if (fd < 0 || (err = watch(s, &s->tcp4.w, fd, on_accept)))
		goto fail_fd;
	/* No IPv6 loopback (a kernel without IPv6): v6 queries land nowhere
	 * and fail, closed, as the capture listener's do. */
	fd = open_sock(AF_INET6, SOCK_DGRAM, cfg->port, NULL);
	if (fd >= 0 && (err = watch(s, &s->udp6.w, fd, on_udp)))
		goto fail_fd;
	if (fd >= 0) {
		fd = open_sock(AF_INET6, SOCK_STREAM, cfg->port, &s->tcp6.addr);
		if (fd < 0 || (err = watch(s, &s->tcp6.w, fd, on_accept)))
			goto fail_fd;
	} else if (fd == -EADDRNOTAVAIL || fd == -EAFNOSUPPORT) {
		egd_debug("policy DNS: no IPv6 loopback, no IPv6 listener");
	} else {
		egd_warn("policy DNS: no IPv6 listener");
	}
	if (s->udp6.w.fd >= 0)
		egd_info("policy DNS listening on 127.0.0.1:%u and [::1]:%u (udp, tcp)", cfg->port,
			 cfg->port);
	else
		egd_info("policy DNS listening on 127.0.0.1:%u (udp, tcp)", cfg->port);
	return s;

fail_fd:
	if (fd < 0)
		err = fd;
	else if (err)
		close(fd);
fail:
	egd_dnsd_free(s);
	errno = err < 0 ? -err : EINVAL;
	return NULL;
}

void egd_dnsd_free(struct egd_dnsd *s)
{
	if (!s)
		return;
	while (s->conns) {
		struct tcp_conn *c = s->conns;

		c->inflight = 0; /* their requests are freed below */
		conn_close(c);
	}
	if (s->ares_ok) {
		/* Forwarded requests are freed by their callbacks
		 * (ARES_EDESTRUCTION); lookups' waiters below. */
		ares_destroy(s->ch);
		egd_timer_cancel(s->loop, &s->ares_timer);
	}
	for (size_t i = 0; i < EGD_DNSD_CACHE_ENTRIES; i++) {
		struct req *r = s->cache[i].waiters, *next;

		for (; r; r = next) {
			next = r->next;
			free(r);
		}
	}
	for (struct egd_watch *w = &s->udp4.w;;) {
		if (w->fd >= 0) {
			egd_loop_del(s->loop, w);
			close(w->fd);
		}
		if (w == &s->udp4.w)
			w = &s->udp6.w;
		else if (w == &s->udp6.w)
			w = &s->tcp4.w;
		else if (w == &s->tcp4.w)
			w = &s->tcp6.w;
		else
			break;
	}
	/* Let the loop run the deferred frees of closed connections. */
	free(s);
}

char *egd_dnsd_metrics(struct egd_dnsd *s)
{
	static const char *const rc[] = { "NOERROR", "FORMERR", "SERVFAIL",
					  "NXDOMAIN", "NOTIMP", "REFUSED" };
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);

	if (!f)
		return NULL;
	fprintf(f, "# HELP egressd_dns_queries_total Policy DNS queries by verdict.\n"
		   "# TYPE egressd_dns_queries_total counter\n");
	for (int v = 0; v < EGD_DNS_V_MAX; v++)
		fprintf(f, "egressd_dns_queries_total{verdict=\"%s\"} %llu\n",
			egd_dns_verdict_name(v), (unsigned long long)s->m.queries[v]);
	fprintf(f, "# HELP egressd_dns_responses_total Policy DNS answers by rcode.\n"
		   "# TYPE egressd_dns_responses_total counter\n");
	for (int i = 0; i < 6; i++)
		fprintf(f, "egressd_dns_responses_total{rcode=\"%s\"} %llu\n", rc[i],
			(unsigned long long)s->m.rcodes[i]);
	fprintf(f, "egressd_dns_responses_total{rcode=\"other\"} %llu\n",
		(unsigned long long)s->m.rcode_other);
	fprintf(f,
		"# HELP egressd_dns_upstream_failures_total Lookups and forwards the upstream "
		"did not answer (timeout, SERVFAIL, malformed).\n"
		"# TYPE egressd_dns_upstream_failures_total counter\n"
		"egressd_dns_upstream_failures_total %llu\n"
		"# HELP egressd_dns_dropped_total Datagrams not answered (not a query, or the "
		"answer could not be sent).\n"
		"# TYPE egressd_dns_dropped_total counter\negressd_dns_dropped_total %llu\n"
		"# HELP egressd_dns_overload_total Queries refused for lack of room "
		"(pending lookups, TCP connections).\n"
		"# TYPE egressd_dns_overload_total counter\negressd_dns_overload_total %llu\n"
		"# HELP egressd_dns_cache_hits_total Answers given from the daemon's cache.\n"
		"# TYPE egressd_dns_cache_hits_total counter\negressd_dns_cache_hits_total %llu\n",
		(unsigned long long)s->m.upstream_failures, (unsigned long long)s->m.dropped,
		(unsigned long long)s->m.overload, (unsigned long long)s->m.cache_hits);
	if (s->cfg.icaddr)
		fprintf(f,
			"# HELP egressd_dns_intercept_addresses Addresses the policy DNS gave "
			"for intercept hosts, held now.\n"
			"# TYPE egressd_dns_intercept_addresses gauge\n"
			"egressd_dns_intercept_addresses %zu\n",
			egd_icaddr_count(s->cfg.icaddr));
	if (fclose(f))
		return NULL;
	return buf;
}
