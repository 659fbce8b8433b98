/* SPDX-License-Identifier: MIT */
/*
 * Intercepted connections into the embedded policy proxy; see intercept.h.
 *
 * The first P workers (EGRESSD_PROXY_WORKERS) each run a proxy, touched by
 * that worker's thread only; what must be one per daemon (the budget ledger
 * and its files, the workspace answer, the CA's leaf cache) is shared,
 * under its own locks. A proxy worker serves what it accepted itself;
 * worker k >= P queues its connections to proxy k % P and wakes it through
 * an eventfd. Fewer proxies than workers is the default (one): a proxy that
 * serves many connections commits many answers per turn, and on a small
 * machine one busy proxy thread spends less CPU per request than several
 * half-idle ones contending for the ledger (bench/README.md).
 */
#include "egress/intercept.h"
#include "core/config.h"
#include "core/log.h"
#include "core/slots.h"
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

/* Connections queued to one proxy and not yet taken, and the bytes they
 * carry (each up to a 16 KiB ClientHello): beyond either the proxy's
 * thread is far behind, and a new one is refused (reset). */
#define INTERCEPT_QUEUE_MAX 4096
#define INTERCEPT_QUEUE_MAX_BYTES (16 * 1024 * 1024)

struct handoff {
	struct handoff *next;
	int fd;
	enum egd_proto proto;
	char host[EGD_HOST_MAX];
	size_t len;
	uint8_t prefix[]; /* the bytes the engine already read */
};

/* Connections from other workers for one proxy, taken by its thread. */
struct inbox {
	struct egd_proxy *proxy;
	unsigned int *slots; /* egd_intercept_new()'s */
	struct egd_loop *loop;
	struct egd_watch wake;
	pthread_mutex_t mu;
	struct handoff *head, **tail; /* FIFO, under mu */
	unsigned int queued;
	size_t queued_bytes;
};

struct egd_intercept {
	struct egd_proxy_config cfg;
	struct egd_ca *ca;
	struct egd_proxy_shared *sh;
	unsigned int n;	     /* proxies: workers 0 .. n-1 */
	unsigned int workers; /* all workers */
	struct egd_proxy **proxies;
	struct inbox inbox[]; /* one per proxy */
};

static int serve(struct egd_proxy *p, int fd, enum egd_proto proto, const char *host,
		 const uint8_t *prefix, size_t len)
{
	if (proto == EGD_PROTO_TLS)
		return egd_proxy_serve_tls(p, fd, host[0] ? host : NULL, prefix, len);
	return egd_proxy_serve_plain(p, fd, prefix, len);
}

/* A proxy's thread: take what other workers queued, in arrival order. */
static void on_wake(struct egd_watch *w, uint32_t events)
{
	struct inbox *in = (struct inbox *)((char *)w - offsetof(struct inbox, wake));
	struct handoff *h, *next;
	uint64_t n;
	int err;

	(void)events;
	if (read(w->fd, &n, sizeof(n)) < 0 && errno != EAGAIN)
		egd_warn("intercept wakeup: %s", strerror(errno));
	pthread_mutex_lock(&in->mu);
	h = in->head;
	in->head = NULL;
	in->tail = &in->head;
	in->queued = 0;
	in->queued_bytes = 0;
	pthread_mutex_unlock(&in->mu);
	for (; h; h = next) {
		next = h->next;
		err = serve(in->proxy, h->fd, h->proto, h->host, h->prefix, h->len);
		if (err) {
			egd_warn("policy proxy refused a connection: %s", strerror(-err));
			egd_slot_give(in->slots);
		}
		free(h);
	}
}

static void inbox_fini(struct inbox *in)
{
	struct handoff *h, *next;

	for (h = in->head; h; h = next) {
		next = h->next;
		close(h->fd);
		egd_slot_give(in->slots);
		free(h);
	}
	if (in->wake.fd >= 0) {
		egd_loop_del(in->loop, &in->wake);
		close(in->wake.fd);
	}
	pthread_mutex_destroy(&in->mu);
}

static int inbox_init(struct inbox *in, struct egd_proxy *p, struct egd_loop *loop,
		      unsigned int *slots)
{
	int err;

	in->proxy = p;
	in->slots = slots;
	in->loop = loop;
	in->tail = &in->head;
	pthread_mutex_init(&in->mu, NULL);
	in->wake.cb = on_wake;
	in->wake.fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (in->wake.fd < 0)
		return -errno;
	err = egd_loop_add(loop, &in->wake, EPOLLIN);
	if (err) {
		close(in->wake.fd);
		in->wake.fd = -1;
	}
	return err;
}

static int start_listener(struct egd_intercept *ic)
{
	/* Flag, else environment, as every proxy setting. */
	const char *addr = egd_proxy_getenv(NULL, "EGRESSD_PROXY_HTTP_LISTEN");
	struct egd_addr a;
	int port;

	if (!addr || !*addr)
		addr = EGD_PROXY_HTTP_LISTEN_DEFAULT;
	if (strcmp(addr, "off") == 0)
		return 0;
	/* Checked with the settings at start; this only turns it into an
	 * address. */
	if (egd_parse_hostport(addr, &a)) {
		egd_err("EGRESSD_PROXY_HTTP_LISTEN=%s: not ADDR:PORT", addr);
		return -EINVAL;
	}
	/* Its connections are few (agents given an explicit base URL):
	 * worker 0's proxy serves them all. */
	port = egd_proxy_listen(ic->proxies[0], &a);
	if (port < 0) {
		egd_err("EGRESSD_PROXY_HTTP_LISTEN=%s: %s%s", addr, strerror(-port),
			port == -EADDRINUSE ? " (set EGRESSD_PROXY_HTTP_LISTEN, or off)" : "");
		return port;
	}
	egd_info("policy proxy listening on %s", addr);
	return 0;
}

struct egd_intercept *egd_intercept_new(struct egd_loop *const *loops, unsigned int workers,
					unsigned int nproxy, unsigned int *slots,
					unsigned int max_slots)
{
	unsigned int n = nproxy && nproxy < workers ? nproxy : workers;
	struct egd_intercept *ic = calloc(1, sizeof(*ic) + n * sizeof(ic->inbox[0]));
	char err[EGD_CONFIG_ERR_MAX_BYTES];
	int ret;

	if (!ic) {
		errno = ENOMEM;
		return NULL;
	}
	if (!n || !(ic->proxies = calloc(n, sizeof(*ic->proxies)))) {
		free(ic);
		errno = !n ? EINVAL : ENOMEM;
		return NULL;
	}
	ic->workers = workers;
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
	ic->sh = egd_proxy_shared_new(&ic->cfg, err, sizeof(err));
	if (!ic->sh) {
		ret = -errno;
		egd_err("policy proxy: %s", err);
		goto err_free;
	}
	for (unsigned int i = 0; i < n; i++) {
		ic->proxies[i] = egd_proxy_new(loops[i], ic->sh, ic->ca, err, sizeof(err));
		if (!ic->proxies[i]) {
			ret = -errno;
			egd_err("policy proxy: %s", err);
			goto err_free;
		}
		ic->n = i + 1;
		egd_proxy_count_served(ic->proxies[i], slots, max_slots);
		ret = inbox_init(&ic->inbox[i], ic->proxies[i], loops[i], slots);
		if (ret) {
			egd_err("policy proxy: handoff queue: %s", strerror(-ret));
			goto err_free;
		}
	}
	ret = start_listener(ic);
	if (ret)
		goto err_free;
	egd_info("policy proxy: embedded on %u of %u worker%s, %s CA, data in %s", n, workers,
		 workers == 1 ? "" : "s", egd_ca_generated(ic->ca) ? "new" : "reused",
		 ic->cfg.data_dir);
	return ic;

err_free:
	egd_intercept_destroy(ic);
	errno = -ret;
	return NULL;
}

void egd_intercept_destroy(struct egd_intercept *ic)
{
	if (!ic)
		return;
	for (unsigned int i = 0; i < ic->n; i++) {
		/* The inbox may not exist for the last one if its setup failed;
		 * a zeroed inbox has nothing queued and no eventfd. */
		if (ic->inbox[i].tail)
			inbox_fini(&ic->inbox[i]);
		egd_proxy_destroy(ic->proxies[i]);
	}
	free(ic->proxies);
	egd_proxy_shared_destroy(ic->sh);
	egd_ca_destroy(ic->ca);
	egd_proxy_config_free(&ic->cfg);
	free(ic);
}

int egd_intercept_handoff(struct egd_intercept *ic, unsigned int worker, int fd,
			  enum egd_proto proto, const char *host, const uint8_t *prefix,
			  size_t prefix_len)
{
	static const uint64_t one = 1;
	struct inbox *in;
	struct handoff *h;
	int err = -EAGAIN;

	if (worker >= ic->workers) {
		close(fd);
		return -EINVAL;
	}
	/* A proxy worker serves what it accepted, on its own thread. */
	if (worker < ic->n)
		return serve(ic->proxies[worker], fd, proto, host, prefix, prefix_len);
	in = &ic->inbox[worker % ic->n];
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
	pthread_mutex_lock(&in->mu);
	if (in->queued < INTERCEPT_QUEUE_MAX &&
	    in->queued_bytes + prefix_len <= INTERCEPT_QUEUE_MAX_BYTES) {
		*in->tail = h;
		in->tail = &h->next;
		in->queued++;
		in->queued_bytes += prefix_len;
		err = 0;
	}
	pthread_mutex_unlock(&in->mu);
	if (err) {
		egd_close_reset(fd); /* refused, as any connection over a limit */
		free(h);
		return err;
	}
	/* A failed write leaves the entry queued for the next wakeup; the
	 * counter cannot overflow at this queue length. */
	if (write(in->wake.fd, &one, sizeof(one)) < 0)
		egd_warn("waking a policy proxy worker: %s", strerror(errno));
	return 0;
}

char *egd_intercept_metrics(struct egd_intercept *ic)
{
	return egd_proxy_metrics(ic->proxies, ic->n);
}
