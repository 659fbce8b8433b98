/* SPDX-License-Identifier: MIT */
/*
 * One worker thread, a queue in, a queue out, an eventfd to wake the loop.
 * A plain thread rather than c-ares: lookups here are rare (allowlisted
 * hosts, and the upstream once a minute) and getaddrinfo() honours
 * nsswitch and /etc/hosts exactly as the agent's own resolver would.
 *
 * A request belongs to the worker thread from egd_resolve() until it is on
 * the done queue, and to the loop thread after; only the loop thread frees
 * it. Cancelling only marks it, so a handle stays valid until its callback
 * would have run, and the worker skips lookups cancelled while queued.
 */
#include "core/resolve.h"
#include "core/log.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

struct egd_resolve_req {
	struct egd_resolve_req *next;
	char host[EGD_RESOLVE_HOST_MAX_BYTES];
	uint16_t port_be;
	egd_resolve_cb cb;
	void *arg;
	int cancelled; /* set by the loop thread, read by both (atomics) */
	int gai_err;
	int sys_errno; /* for EAI_SYSTEM */
	struct egd_resolved res;
};

/* A FIFO of requests, so answers are delivered in the order asked. */
struct req_queue {
	struct egd_resolve_req *head, *tail;
};

struct egd_resolver {
	struct egd_loop *loop;
	struct egd_watch w;
	pthread_t thread;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct req_queue in, done;
	int stop;
};

static void queue_push(struct req_queue *q, struct egd_resolve_req *req)
{
	req->next = NULL;
	if (q->tail)
		q->tail->next = req;
	else
		q->head = req;
	q->tail = req;
}

static void queue_free(struct req_queue *q)
{
	for (struct egd_resolve_req *req = q->head, *next; req; req = next) {
		next = req->next;
		free(req);
	}
	q->head = q->tail = NULL;
}

/* Runs on the worker thread, without the lock. */
static void lookup(struct egd_resolve_req *req)
{
	/* AI_ADDRCONFIG: no IPv6 answers on a host without IPv6, where every
	 * one of them would only be a connect() failure to wait for. */
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_ADDRCONFIG };
	struct addrinfo *res = NULL, *ai;
	struct egd_resolved *out = &req->res;

	req->gai_err = getaddrinfo(req->host, NULL, &hints, &res);
	if (req->gai_err) {
		req->sys_errno = req->gai_err == EAI_SYSTEM ? errno : 0;
		return;
	}
	for (ai = res; ai && out->n < EGD_RESOLVE_MAX_ADDRS; ai = ai->ai_next) {
		struct sockaddr_storage *ss = &out->addr[out->n];

		if ((ai->ai_family != AF_INET && ai->ai_family != AF_INET6) ||
		    ai->ai_addrlen > sizeof(*ss))
			continue;
		memcpy(ss, ai->ai_addr, ai->ai_addrlen);
		if (ai->ai_family == AF_INET)
			((struct sockaddr_in *)ss)->sin_port = req->port_be;
		else
			((struct sockaddr_in6 *)ss)->sin6_port = req->port_be;
		out->len[out->n++] = ai->ai_addrlen;
	}
	freeaddrinfo(res);
}

static void *worker(void *arg)
{
	struct egd_resolver *r = arg;

	pthread_mutex_lock(&r->mu);
	for (;;) {
		struct egd_resolve_req *req;
		uint64_t one = 1;

		while (!r->stop && !r->in.head)
			pthread_cond_wait(&r->cv, &r->mu);
		if (r->stop)
			break;
		req = r->in.head;
		r->in.head = req->next;
		if (!r->in.head)
			r->in.tail = NULL;
		pthread_mutex_unlock(&r->mu);

		if (!__atomic_load_n(&req->cancelled, __ATOMIC_RELAXED))
			lookup(req);

		pthread_mutex_lock(&r->mu);
		queue_push(&r->done, req);
		if (write(r->w.fd, &one, sizeof(one)) < 0)
			egd_warn("resolver wakeup: %s", strerror(errno));
	}
	pthread_mutex_unlock(&r->mu);
	return NULL;
}

static const char *req_error(const struct egd_resolve_req *req)
{
	if (req->gai_err == EAI_SYSTEM)
		return strerror(req->sys_errno);
	if (req->gai_err)
		return gai_strerror(req->gai_err);
	return req->res.n ? NULL : "no IPv4 or IPv6 address";
}

static void on_done(struct egd_watch *w, uint32_t events)
{
	struct egd_resolver *r = (struct egd_resolver *)((char *)w - offsetof(struct egd_resolver, w));
	struct egd_resolve_req *list;
	uint64_t n;

	(void)events;
	if (read(w->fd, &n, sizeof(n)) < 0 && errno != EAGAIN)
		egd_warn("resolver eventfd: %s", strerror(errno));
	pthread_mutex_lock(&r->mu);
	list = r->done.head;
	r->done.head = r->done.tail = NULL;
	pthread_mutex_unlock(&r->mu);
	/* A callback may cancel a request further down this list: the flag
	 * is read just before each call, and the frees happen here only. */
	while (list) {
		struct egd_resolve_req *req = list;

		list = req->next;
		if (!__atomic_load_n(&req->cancelled, __ATOMIC_RELAXED))
			req->cb(req->arg, req_error(req), &req->res);
		free(req);
	}
}

struct egd_resolver *egd_resolver_new(struct egd_loop *loop)
{
	struct egd_resolver *r;
	int err;

	if (egd_loop_resolver(loop)) {
		errno = EBUSY;
		return NULL;
	}
	r = calloc(1, sizeof(*r));
	if (!r)
		return NULL;
	r->loop = loop;
	pthread_mutex_init(&r->mu, NULL);
	pthread_cond_init(&r->cv, NULL);
	r->w.fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	r->w.cb = on_done;
	if (r->w.fd < 0)
		goto err_free;
	err = egd_loop_add(loop, &r->w, EPOLLIN);
	if (err) {
		errno = -err;
		goto err_close;
	}
	err = pthread_create(&r->thread, NULL, worker, r);
	if (err) {
		errno = err;
		goto err_del;
	}
	egd_loop_set_resolver(loop, r);
	return r;

err_del:
	egd_loop_del(loop, &r->w);
err_close:
	close(r->w.fd);
err_free:
	free(r);
	return NULL;
}

void egd_resolver_free(struct egd_resolver *r)
{
	if (!r)
		return;
	pthread_mutex_lock(&r->mu);
	r->stop = 1;
	pthread_cond_signal(&r->cv);
	pthread_mutex_unlock(&r->mu);
	pthread_join(r->thread, NULL);
	if (egd_loop_resolver(r->loop) == r)
		egd_loop_set_resolver(r->loop, NULL);
	egd_loop_del(r->loop, &r->w);
	close(r->w.fd);
	queue_free(&r->in);
	queue_free(&r->done);
	pthread_cond_destroy(&r->cv);
	pthread_mutex_destroy(&r->mu);
	free(r);
}

struct egd_resolve_req *egd_resolve(struct egd_resolver *r, const char *host, uint16_t port_be,
				    egd_resolve_cb cb, void *arg)
{
	struct egd_resolve_req *req;

	if (strlen(host) >= sizeof(req->host)) {
		errno = ENAMETOOLONG;
		return NULL;
	}
	req = calloc(1, sizeof(*req));
	if (!req)
		return NULL;
	snprintf(req->host, sizeof(req->host), "%s", host);
	req->port_be = port_be;
	req->cb = cb;
	req->arg = arg;
	pthread_mutex_lock(&r->mu);
	queue_push(&r->in, req);
	pthread_cond_signal(&r->cv);
	pthread_mutex_unlock(&r->mu);
	return req;
}

void egd_resolve_cancel(struct egd_resolve_req *req)
{
	if (req)
		__atomic_store_n(&req->cancelled, 1, __ATOMIC_RELAXED);
}
