/* SPDX-License-Identifier: MIT */
/*
 * The bridge from the connection engine to the embedded policy proxy. The
 * budget ledger must be one per daemon, so the proxy lives on worker 0's
 * loop only; the other workers hand their intercepted connections over
 * through a small queue and an eventfd, and worker 0 serves them. Unless
 * EGRESSD_INTERCEPT_UPSTREAM is set: then intercepted flows keep going,
 * untouched, to that external proxy and none of this is started.
 */
#ifndef EGD_INTERCEPT_H
#define EGD_INTERCEPT_H

#include <stddef.h>
#include <stdint.h>

#include "core/loop.h"
#include "egress/sniff.h"

/* Connections waiting for worker 0; past this a worker's handoff is
 * refused (the agent sees a reset) rather than memory growing without
 * bound while worker 0 is stuck. */
#define EGD_INTERCEPT_QUEUE_MAX 4096

struct egd_intercept;

/*
 * Load the proxy's settings from the environment, open the pod CA, create
 * the proxy on @loop (worker 0's; the calling thread must be the one that
 * runs it) and start its plain listener on EGRESSD_PROXY_HTTP_LISTEN. NULL +
 * errno, with the reason logged.
 */
struct egd_intercept *egd_intercept_new(struct egd_loop *loop);
/* After every other worker has stopped, with @loop not running. Closes the
 * queued connections. Accepts NULL. */
void egd_intercept_destroy(struct egd_intercept *ic);

/*
 * Give the proxy the accepted connection @fd (already out of the caller's
 * epoll set), its @proto (TLS or HTTP), the SNI or Host @host ("" for none)
 * and the @prefix bytes already read from it. Callable from any worker;
 * copies what it needs. Takes @fd in every case (closed on error). Returns 0
 * or -errno.
 */
int egd_intercept_handoff(struct egd_intercept *ic, int fd, enum egd_proto proto,
			  const char *host, const uint8_t *prefix, size_t prefix_len);

/* The proxy's counters in the Prometheus text format, for /metrics (worker
 * 0's thread only). Malloc'ed; NULL + errno. */
char *egd_intercept_metrics(struct egd_intercept *ic);

#endif /* EGD_INTERCEPT_H */
