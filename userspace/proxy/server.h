/* SPDX-License-Identifier: MIT */
/*
 * The embedded policy proxy's server side: connections from the agent to
 * openrouter.ai, handed over by the daemon after it read the first bytes
 * (TLS, with a leaf for the SNI host from the pod CA; or plain HTTP), plus
 * the proxy's own plain listener for agents given an explicit base URL.
 *
 * Per request: parse (http1), decide (egd_policy_eval, looking the workspace
 * up when the cache has no answer), forward (upstream.c), relay the answer
 * (buffered and accounted, or streamed as SSE while the scanner watches for
 * the cost), settle the budget, rewrite the usage file and append the
 * inference line. Requests on one connection are answered in order, one at
 * a time, so pipelining needs nothing more.
 *
 * Everything runs on the caller's event loop; nothing here blocks on the
 * network or waits for the disk: the usage files are written before each
 * answer leaves (so a kill -9 loses nothing recorded) and fsync'ed in
 * batches by the budget's syncer thread (see budget.h).
 */
#ifndef EGD_PROXY_SERVER_H
#define EGD_PROXY_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include "egressd.h"
#include "core/loop.h"
#include "proxy/budget.h"
#include "proxy/ca.h"
#include "proxy/proxy_config.h"

/* A keep-alive connection with no request in progress is closed after
 * this long; so is a connection that does not finish its TLS handshake. */
#define EGD_PROXY_IDLE_TIMEOUT_MS (120 * 1000)
#define EGD_PROXY_HANDSHAKE_TIMEOUT_MS (10 * 1000)
/* Pipelined bytes buffered while a request is answered; past this the
 * connection is not read until the answer is out. */
#define EGD_PROXY_PIPELINE_MAX_BYTES (256 * 1024)
/* The workspace endpoint answers a small object. */
#define EGD_PROXY_WS_BODY_MAX_BYTES (1024 * 1024)
/* listen(2) backlog of the plain listener. */
#define EGD_PROXY_LISTEN_BACKLOG 512

struct egd_proxy;
struct egd_proxy_shared;

/*
 * What the proxies of the proxy workers share: the configuration @cfg (must
 * outlive it), the one budget ledger (PROXY_DATA_DIR, proxy_usage.json read
 * back) and the workspace answer. NULL + errno, with a reason in @err.
 */
struct egd_proxy_shared *egd_proxy_shared_new(const struct egd_proxy_config *cfg, char *err,
					      size_t errlen);
/* After every proxy on it is destroyed; flushes the usage files. */
void egd_proxy_shared_destroy(struct egd_proxy_shared *sh);

/*
 * A proxy on @loop (at most one per worker thread, on the first
 * EGRESSD_PROXY_WORKERS of them; each proxy is touched by its loop's thread
 * only) over @sh, with @ca for TLS (NULL: serve_tls is
 * refused). The first proxy of @sh starts the workspace check. NULL +
 * errno, with a reason in @err.
 */
struct egd_proxy *egd_proxy_new(struct egd_loop *loop, struct egd_proxy_shared *sh,
				struct egd_ca *ca, char *err, size_t errlen);
/* Closes every connection and the listeners; reservations in flight are
 * released. The loop must not be running it at the time. */
void egd_proxy_destroy(struct egd_proxy *p);

/* Listen for plain HTTP on @addr (port 0: any). Returns the bound port
 * (> 0) or -errno. */
int egd_proxy_listen(struct egd_proxy *p, const struct egd_addr *addr);

/*
 * Serve an accepted TLS connection to @sni (NULL when the ClientHello had
 * none: the upstream host's certificate is used). @prefix holds the bytes
 * the daemon already read from @fd (the ClientHello); they are given to
 * OpenSSL before the socket. Takes @fd in every case (closed on error).
 * Returns 0 or -errno.
 */
int egd_proxy_serve_tls(struct egd_proxy *p, int fd, const char *sni, const uint8_t *prefix,
			size_t prefix_len);
/* The same for plain HTTP; @prefix is the start of the first request. */
int egd_proxy_serve_plain(struct egd_proxy *p, int fd, const uint8_t *prefix, size_t prefix_len);

/*
 * Count this proxy's connections against a limit of @max shared with the
 * caller in *@slots (the daemon's EGRESSD_MAX_CONNS), updated atomically.
 * For the two calls above the caller holds a unit for the connection; a
 * call that returns 0 takes it over and gives it back when that connection
 * closes (from this proxy's thread); a call that fails leaves it with the
 * caller. Connections accepted by egd_proxy_listen() take their own unit,
 * and one beyond @max is reset and counted (overload_resets). Before the
 * loop runs.
 */
void egd_proxy_count_served(struct egd_proxy *p, unsigned int *slots, unsigned int max);

/* The ledger, for metrics and tests (owned by the proxy). */
struct egd_budget *egd_proxy_budget(struct egd_proxy *p);
/* Connections open (tests, metrics); callable from any thread. */
size_t egd_proxy_conn_count(const struct egd_proxy *p);

/* HTTP statuses are three digits. */
#define EGD_PROXY_STATUS_MAX 600

struct egd_proxy_stats {
	uint64_t by_status[EGD_PROXY_STATUS_MAX]; /* answers to the agent */
	uint64_t upstream_requests;               /* completions and embeddings sent */
	uint64_t upstream_failures;               /* answered 502 or 504 */
	uint64_t upstream_latency_ms_sum;         /* send to response head */
	uint64_t upstream_latency_count;
	uint64_t workspace_lookups;
	uint64_t overload_resets; /* listener connections beyond the limit */
};

/* The counters of the @n proxies @ps, summed; callable from any thread. */
void egd_proxy_stats(struct egd_proxy *const *ps, size_t n, struct egd_proxy_stats *out);

/* The counters of the @n (> 0) proxies @ps (over one shared ledger), spend,
 * remaining budget and reservations in the Prometheus text format, for the
 * admin listener's /metrics; callable from any thread. Malloc'ed; NULL +
 * errno. */
char *egd_proxy_metrics(struct egd_proxy *const *ps, size_t n);

#endif /* EGD_PROXY_SERVER_H */
