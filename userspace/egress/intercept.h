/* SPDX-License-Identifier: MIT */
/*
 * The bridge from the connection engine to the embedded policy proxy: one
 * proxy per worker, on that worker's loop, over one shared budget ledger,
 * so an intercepted connection is served by the thread that accepted it.
 * Unless EGRESSD_INTERCEPT_UPSTREAM is set: then intercepted flows keep
 * going, untouched, to that external proxy and none of this is started.
 */
#ifndef EGD_INTERCEPT_H
#define EGD_INTERCEPT_H

#include <stddef.h>
#include <stdint.h>

#include "core/loop.h"
#include "egress/sniff.h"

struct egd_intercept;

/*
 * Load the proxy's settings from the environment, open the pod CA and the
 * budget, create one proxy on each of the @n worker loops @loops (before
 * their threads run) and start the plain listener on
 * EGRESSD_PROXY_HTTP_LISTEN on the first. NULL + errno, with the reason
 * logged.
 */
struct egd_intercept *egd_intercept_new(struct egd_loop *const *loops, unsigned int n);
/* After every worker has stopped, before their loops are freed. Closes
 * the proxies' connections. Accepts NULL. */
void egd_intercept_destroy(struct egd_intercept *ic);

/*
 * Give the proxy of @worker (the calling thread's) the accepted connection
 * @fd (already out of the caller's epoll set), its @proto (TLS or HTTP), the
 * SNI or Host @host ("" for none) and the @prefix bytes already read from
 * it. Takes @fd in every case (closed on error). Returns 0 or -errno.
 */
int egd_intercept_handoff(struct egd_intercept *ic, unsigned int worker, int fd,
			  enum egd_proto proto, const char *host, const uint8_t *prefix,
			  size_t prefix_len);

/* The proxies' counters, summed, in the Prometheus text format, for
 * /metrics. Malloc'ed; NULL + errno. */
char *egd_intercept_metrics(struct egd_intercept *ic);

#endif /* EGD_INTERCEPT_H */
