/* SPDX-License-Identifier: MIT */
/*
 * One worker thread, a queue in, a queue out, an eventfd to wake the loop.
 * A plain thread rather than c-ares: lookups here are rare (allowlisted
 * hosts only) and getaddrinfo() honours nsswitch and /etc/hosts exactly as
 * the agent's own resolver would.
 */
#include "egress/resolve.h"
#include "datapath/origdst.h"
#include "core/log.h"

#include <errno.h>
#include <stdio.h>
#include <sys/epoll.h>
#include <netdb.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

struct egd_resolve_req {
	struct egd_resolve_req *next;
	char host[256];
	uint16_t port_be;
	egd_resolve_cb cb;
	void *arg;
	int cancelled; /* touched on the loop thread only */
	int gai_err;
	struct egd_addr addr;
};

struct egd_resolver {
	struct egd_loop *loop;
	struct egd_watch w;
	pthread_t thread;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct egd_resolve_req *in_head, *in_tail, *done;
	int stop;
};

static void *worker(void *arg)
{
	struct egd_resolver *r = arg;

	pthread_mutex_lock(&r->mu);
	for (;;) {
		struct egd_resolve_req *req;
		struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *res = NULL;
		uint64_t one = 1;

		while (!r->stop && !r->in_head)
			pthread_cond_wait(&r->cv, &r->mu);
		if (r->stop)
			break;
		req = r->in_head;
		r->in_head = req->next;
		if (!r->in_head)
			r->in_tail = NULL;
		pthread_mutex_unlock(&r->mu);

		req->gai_err = getaddrinfo(req->host, NULL, &hints, &res);
		if (!req->gai_err && res) {
			egd_addr_from_sockaddr(&req->addr, res->ai_addr);
			req->addr.port = req->port_be;
		}
		if (res)
			freeaddrinfo(res);

		pthread_mutex_lock(&r->mu);
		req->next = r->done;
		r->done = req;
		if (write(r->w.fd, &one, sizeof(one)) < 0)
			egd_warn("resolver wakeup: %s", strerror(errno));
	}
	pthread_mutex_unlock(&r->mu);
	return NULL;
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
	list = r->done;
	r->done = NULL;
	pthread_mutex_unlock(&r->mu);
	while (list) {
		struct egd_resolve_req *req = list;

		list = req->next;
		if (!req->cancelled)
			req->cb(req->arg, req->gai_err ? gai_strerror(req->gai_err) : NULL,
				&req->addr);
		free(req);
	}
}

struct egd_resolver *egd_resolver_new(struct egd_loop *loop)
{
	struct egd_resolver *r = calloc(1, sizeof(*r));
	int err;

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
	egd_loop_del(r->loop, &r->w);
	close(r->w.fd);
	for (struct egd_resolve_req *q = r->in_head, *next; q; q = next) {
		next = q->next;
		free(q);
	}
	for (struct egd_resolve_req *q = r->done, *next; q; q = next) {
		next = q->next;
		free(q);
	}
	free(r);
}

struct egd_resolve_req *egd_resolve(struct egd_resolver *r, const char *host, uint16_t port_be,
				    egd_resolve_cb cb, void *arg)
{
	struct egd_resolve_req *req = calloc(1, sizeof(*req));

	if (!req)
		return NULL;
	snprintf(req->host, sizeof(req->host), "%s", host);
	req->port_be = port_be;
	req->cb = cb;
	req->arg = arg;
	pthread_mutex_lock(&r->mu);
	if (r->in_tail)
		r->in_tail->next = req;
	else
		r->in_head = req;
	r->in_tail = req;
	pthread_cond_signal(&r->cv);
	pthread_mutex_unlock(&r->mu);
	return req;
}

void egd_resolve_cancel(struct egd_resolve_req *req)
{
	if (req)
		req->cancelled = 1;
}
