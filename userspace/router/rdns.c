/* SPDX-License-Identifier: MIT */
/*
 * c-ares driven by the event loop (rdns.h): c-ares tells which sockets it
 * wants watched (ARES_OPT_SOCK_STATE_CB), each gets an egd_watch, and one
 * timer follows ares_timeout(). A cancelled request stays with c-ares,
 * which has no per-query cancel, and is freed when its answer comes.
 */
#include "router/rdns.h"

#include <ares.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "core/log.h"

#define container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

/* Sockets c-ares holds at once: one UDP and maybe one TCP per nameserver
 * (resolv.conf allows three). */
#define RDNS_SOCKS_MAX 16

struct rdns_sock {
	struct egd_watch w;
	struct egd_rdns *d;
	int used;
};

struct egd_rdns {
	struct egd_loop *loop;
	ares_channel ch;
	struct egd_timer t;
	struct rdns_sock socks[RDNS_SOCKS_MAX];
	int dead; /* being freed: answers are dropped */
};

struct egd_rdns_req {
	struct egd_rdns *d;
	egd_resolve_cb cb;
	void *arg;
	uint16_t port_be;
	int cancelled;
	/* The answer came inside ares_getaddrinfo() itself (an /etc/hosts
	 * hit): egd_rdns_resolve() delivers it from a deferred call. */
	int immediate, answered, sync_status;
	struct egd_resolved res;
};

static void rearm(struct egd_rdns *d)
{
	struct timeval tv, *tvp = ares_timeout(d->ch, NULL, &tv);

	if (!tvp) {
		egd_timer_cancel(d->loop, &d->t);
		return;
	}
	egd_timer_arm(d->loop, &d->t,
		      egd_now_ms() + (unsigned long long)tvp->tv_sec * 1000 +
			      (unsigned long long)tvp->tv_usec / 1000);
}

static void sock_cb(struct egd_watch *w, uint32_t events)
{
	struct rdns_sock *s = container_of(w, struct rdns_sock, w);
	struct egd_rdns *d = s->d;
	int fd = w->fd;

	ares_process_fd(d->ch, events & (EPOLLIN | EPOLLHUP | EPOLLERR) ? fd : ARES_SOCKET_BAD,
			events & EPOLLOUT ? fd : ARES_SOCKET_BAD);
	rearm(d);
}

static void timer_cb(struct egd_timer *t)
{
	struct egd_rdns *d = container_of(t, struct egd_rdns, t);

	ares_process_fd(d->ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
	rearm(d);
}

static void state_cb(void *data, ares_socket_t fd, int readable, int writable)
{
	struct egd_rdns *d = data;
	struct rdns_sock *s = NULL, *free_slot = NULL;
	uint32_t ev = (readable ? EPOLLIN : 0) | (writable ? EPOLLOUT : 0);

	for (int i = 0; i < RDNS_SOCKS_MAX; i++) {
		if (d->socks[i].used && d->socks[i].w.fd == fd)
			s = &d->socks[i];
		else if (!d->socks[i].used && !free_slot)
			free_slot = &d->socks[i];
	}
	if (!ev) {
		if (s) {
			egd_loop_del(d->loop, &s->w);
			s->used = 0;
		}
		return;
	}
	if (s) {
		egd_loop_mod(d->loop, &s->w, ev);
		return;
	}
	if (!free_slot) {
		/* c-ares then times the query out: logged, never silent. */
		egd_warn("router dns: more than %d resolver sockets", RDNS_SOCKS_MAX);
		return;
	}
	free_slot->d = d;
	free_slot->w.fd = fd;
	free_slot->w.cb = sock_cb;
	if (egd_loop_add(d->loop, &free_slot->w, ev) == 0)
		free_slot->used = 1;
}

struct egd_rdns *egd_rdns_new(struct egd_loop *loop)
{
	struct egd_rdns *d = calloc(1, sizeof(*d));
	struct ares_options o = { 0 };
	int rc;

	if (!d)
		return NULL;
	rc = ares_library_init(ARES_LIB_INIT_ALL);
	if (rc != ARES_SUCCESS)
		goto err;
	d->loop = loop;
	d->t.cb = timer_cb;
	o.sock_state_cb = state_cb;
	o.sock_state_cb_data = d;
	rc = ares_init_options(&d->ch, &o, ARES_OPT_SOCK_STATE_CB);
	if (rc != ARES_SUCCESS) {
		egd_err("router dns: %s", ares_strerror(rc));
		ares_library_cleanup();
		goto err;
	}
	return d;
err:
	free(d);
	errno = ENOMEM;
	return NULL;
}

void egd_rdns_free(struct egd_rdns *d)
{
	if (!d)
		return;
	d->dead = 1;
	/* Runs every pending callback with ARES_EDESTRUCTION: they free
	 * their requests without calling the users. */
	ares_destroy(d->ch);
	for (int i = 0; i < RDNS_SOCKS_MAX; i++)
		if (d->socks[i].used)
			egd_loop_del(d->loop, &d->socks[i].w);
	egd_timer_cancel(d->loop, &d->t);
	ares_library_cleanup();
	free(d);
}

static void deliver(struct egd_rdns_req *q, int status)
{
	if (!q->cancelled && !q->d->dead) {
		if (status == ARES_SUCCESS && q->res.n)
			q->cb(q->arg, NULL, &q->res);
		else
			q->cb(q->arg, status == ARES_SUCCESS ? "no address" : ares_strerror(status),
			      NULL);
	}
	free(q);
}

static void deferred(void *arg)
{
	struct egd_rdns_req *q = arg;

	deliver(q, q->sync_status);
}

static void answer_cb(void *arg, int status, int timeouts, struct ares_addrinfo *ai)
{
	struct egd_rdns_req *q = arg;

	(void)timeouts;
	if (status == ARES_SUCCESS && ai) {
		for (struct ares_addrinfo_node *n = ai->nodes;
		     n && q->res.n < EGD_RESOLVE_MAX_ADDRS; n = n->ai_next) {
			size_t i = q->res.n;

			if (n->ai_family == AF_INET &&
			    n->ai_addrlen >= sizeof(struct sockaddr_in)) {
				memcpy(&q->res.addr[i], n->ai_addr, sizeof(struct sockaddr_in));
				((struct sockaddr_in *)&q->res.addr[i])->sin_port = q->port_be;
				q->res.len[i] = sizeof(struct sockaddr_in);
			} else if (n->ai_family == AF_INET6 &&
				   n->ai_addrlen >= sizeof(struct sockaddr_in6)) {
				memcpy(&q->res.addr[i], n->ai_addr, sizeof(struct sockaddr_in6));
				((struct sockaddr_in6 *)&q->res.addr[i])->sin6_port = q->port_be;
				q->res.len[i] = sizeof(struct sockaddr_in6);
			} else {
				continue;
			}
			q->res.n++;
		}
	}
	if (ai)
		ares_freeaddrinfo(ai);
	if (q->immediate) {
		q->sync_status = status;
		q->answered = 1;
		return;
	}
	deliver(q, status);
}

struct egd_rdns_req *egd_rdns_resolve(struct egd_rdns *d, const char *host, uint16_t port_be,
				      egd_resolve_cb cb, void *arg)
{
	struct ares_addrinfo_hints hints = { .ai_family = AF_UNSPEC,
					     .ai_socktype = SOCK_STREAM };
	struct egd_rdns_req *q = calloc(1, sizeof(*q));

	if (!q)
		return NULL;
	q->d = d;
	q->cb = cb;
	q->arg = arg;
	q->port_be = port_be;
	q->immediate = 1;
	ares_getaddrinfo(d->ch, host, NULL, &hints, answer_cb, q);
	q->immediate = 0;
	if (q->answered && egd_loop_defer(d->loop, deferred, q)) {
		free(q);
		errno = ENOMEM;
		return NULL;
	}
	rearm(d);
	return q;
}

void egd_rdns_cancel(struct egd_rdns_req *req)
{
	if (req)
		req->cancelled = 1;
}
