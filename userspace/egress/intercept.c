/* SPDX-License-Identifier: MIT */
/*
 * Intercepted connections into the embedded policy proxy; see intercept.h.
 *
 * The proxy and everything it owns (ledger, upstream pool, CA leaf cache)
 * are touched by worker 0's thread only. A handoff from that thread is
 * served at once; from another worker it is queued under a mutex and
 * worker 0 is woken through an eventfd, so the proxy itself needs no locks.
 */
#include "egress/intercept.h"
#include "core/log.h"
#include "proxy/ca.h"
#include "proxy/proxy_config.h"
#include "proxy/server.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

struct handoff {
	struct handoff *next;
	int fd;
	enum egd_proto proto;
	char host[EGD_HOST_MAX];
	size_t len;
	uint8_t prefix[]; /* the bytes the engine already read */
};

struct egd_intercept {
	struct egd_loop *loop;
	pthread_t owner; /* the thread that runs @loop */
	struct egd_watch wake;
	struct egd_proxy_config cfg;
	struct egd_ca *ca;
	struct egd_proxy *proxy;

	pthread_mutex_t lock;
	struct handoff *head, **tail; /* FIFO, under @lock */
	unsigned int queued;
};

static void serve(struct egd_intercept *ic, int fd, enum egd_proto proto, const char *host,
		  const uint8_t *prefix, size_t len)
{
	int err;

	if (proto == EGD_PROTO_TLS)
		err = egd_proxy_serve_tls(ic->proxy, fd, host[0] ? host : NULL, prefix, len);
	else
		err = egd_proxy_serve_plain(ic->proxy, fd, prefix, len);
	if (err)
		egd_warn("policy proxy refused a connection: %s", strerror(-err));
}

/* Worker 0: take everything queued so far and serve it in arrival order. */
static void on_wake(struct egd_watch *w, uint32_t events)
{
	struct egd_intercept *ic =
		(struct egd_intercept *)((char *)w - offsetof(struct egd_intercept, wake));
	struct handoff *h, *next;
	uint64_t n;

	(void)events;
	if (read(w->fd, &n, sizeof(n)) < 0 && errno != EAGAIN)
		egd_warn("intercept wakeup: %s", strerror(errno));
	pthread_mutex_lock(&ic->lock);
	h = ic->head;
	ic->head = NULL;
	ic->tail = &ic->head;
	ic->queued = 0;
	pthread_mutex_unlock(&ic->lock);
	for (; h; h = next) {
		next = h->next;
		serve(ic, h->fd, h->proto, h->host, h->prefix, h->len);
		free(h);
	}
}

static int start_listener(struct egd_intercept *ic)
{
	const char *addr = getenv("EGRESSD_PROXY_HTTP_LISTEN");
	int port;

	if (!addr || !*addr)
		addr = EGD_PROXY_HTTP_LISTEN_DEFAULT;
	if (strcmp(addr, "off") == 0)
		return 0;
	port = egd_proxy_listen(ic->proxy, addr);
	if (port < 0) {
		egd_err("EGRESSD_PROXY_HTTP_LISTEN=%s: %s%s", addr, strerror(-port),
			port == -EADDRINUSE ? " (set EGRESSD_PROXY_HTTP_LISTEN, or off)" : "");
		return port;
	}
	egd_info("policy proxy listening on %s", addr);
	return 0;
}

struct egd_intercept *egd_intercept_new(struct egd_loop *loop)
{
	struct egd_intercept *ic = calloc(1, sizeof(*ic));
	char err[EGD_CONFIG_ERR_MAX_BYTES];
	int ret;

	if (!ic)
		return NULL;
	ic->loop = loop;
	ic->owner = pthread_self();
	ic->wake.fd = -1;
	ic->tail = &ic->head;
	pthread_mutex_init(&ic->lock, NULL);

	ret = egd_proxy_config_load(&ic->cfg, egd_proxy_getenv, NULL, err, sizeof(err));
	if (ret) {
		egd_err("policy proxy: %s", err);
		goto err_free;
	}
	/* Missing keys are not fatal: the proxy answers every policed request
	 * 503, as the reference does, which is closed without being down. */
	if (!egd_proxy_config_enforcing(&ic->cfg))
		egd_warn("policy proxy: OPENROUTER_EXPECTED_API_KEY_SHA256, "
			 "OPENROUTER_MANAGEMENT_KEY or OPENROUTER_WORKSPACE_ID unset; "
			 "every request will be refused (503)");
	ic->ca = egd_ca_open_env();
	if (!ic->ca) {
		ret = -errno;
		egd_err("policy proxy: cannot open the pod CA (EGRESSD_CA_KEY_DIR, "
			"EGRESSD_CA_DIR): %s",
			strerror(-ret));
		goto err_free;
	}
	ic->proxy = egd_proxy_new(loop, &ic->cfg, ic->ca, err, sizeof(err));
	if (!ic->proxy) {
		ret = -errno;
		egd_err("policy proxy: %s", err);
		goto err_free;
	}
	ret = start_listener(ic);
	if (ret)
		goto err_free;
	ic->wake.fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	ic->wake.cb = on_wake;
	if (ic->wake.fd < 0) {
		ret = -errno;
		goto err_log;
	}
	ret = egd_loop_add(loop, &ic->wake, EPOLLIN);
	if (ret)
		goto err_log;
	egd_info("policy proxy: embedded, %s CA, data in %s",
		 egd_ca_generated(ic->ca) ? "new" : "reused", ic->cfg.data_dir);
	return ic;

err_log:
	egd_err("policy proxy: handoff queue: %s", strerror(-ret));
err_free:
	egd_intercept_destroy(ic);
	errno = -ret;
	return NULL;
}

void egd_intercept_destroy(struct egd_intercept *ic)
{
	struct handoff *h, *next;

	if (!ic)
		return;
	for (h = ic->head; h; h = next) {
		next = h->next;
		close(h->fd);
		free(h);
	}
	if (ic->wake.fd >= 0) {
		egd_loop_del(ic->loop, &ic->wake);
		close(ic->wake.fd);
	}
	egd_proxy_destroy(ic->proxy);
	egd_ca_destroy(ic->ca);
	egd_proxy_config_free(&ic->cfg);
	pthread_mutex_destroy(&ic->lock);
	free(ic);
}

int egd_intercept_handoff(struct egd_intercept *ic, int fd, enum egd_proto proto,
			  const char *host, const uint8_t *prefix, size_t prefix_len)
{
	static const uint64_t one = 1;
	struct handoff *h;
	int err = -EAGAIN;

	if (pthread_equal(pthread_self(), ic->owner)) {
		serve(ic, fd, proto, host, prefix, prefix_len);
		return 0;
	}
	h = malloc(sizeof(*h) + prefix_len);
	if (!h) {
		close(fd);
		return -ENOMEM;
	}
	h->next = NULL;
	h->fd = fd;
	h->proto = proto;
	snprintf(h->host, sizeof(h->host), "%s", host);
	h->len = prefix_len;
	memcpy(h->prefix, prefix, prefix_len);

	pthread_mutex_lock(&ic->lock);
	if (ic->queued < EGD_INTERCEPT_QUEUE_MAX) {
		*ic->tail = h;
		ic->tail = &h->next;
		ic->queued++;
		err = 0;
	}
	pthread_mutex_unlock(&ic->lock);
	if (err) {
		close(fd);
		free(h);
		return err;
	}
	/* A failed write leaves the entry queued for the next wakeup; the
	 * counter cannot overflow at this queue length. */
	if (write(ic->wake.fd, &one, sizeof(one)) < 0)
		egd_warn("waking worker 0 for an intercepted connection: %s", strerror(errno));
	return 0;
}

char *egd_intercept_metrics(struct egd_intercept *ic)
{
	return egd_proxy_metrics(ic->proxy);
}
