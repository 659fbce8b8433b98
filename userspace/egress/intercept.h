/* SPDX-License-Identifier: MIT */
/*
 * The bridge from the connection engine to the embedded policy proxy: a
 * proxy on each of the first EGRESSD_PROXY_WORKERS workers' loops (one by
 * default), over one shared budget ledger. A proxy worker serves what it
 * accepted; another worker queues its intercepted connections to one.
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
 * budget, create a proxy on each of the first @nproxy (0: all) of the
 * @workers loops @loops (before their threads run) and start the plain
 * listener on EGRESSD_PROXY_HTTP_LISTEN on the first. Each connection handed
 * off or accepted by that listener holds a unit of *@slots until it closes
 * (egd_intercept_handoff(), egd_proxy_count_served()); the listener resets
 * a connection that would take the count past @max_slots. NULL + errno,
 * with the reason logged.
 */
struct egd_intercept *egd_intercept_new(struct egd_loop *const *loops, unsigned int workers,
					unsigned int nproxy, unsigned int *slots,
					unsigned int max_slots);
/* After every worker has stopped, before their loops are freed. Closes
 * the proxies' connections. Accepts NULL. */
void egd_intercept_destroy(struct egd_intercept *ic);

/*
 * From @worker's thread, give a proxy (@worker's own, or one @worker queues
 * to) the accepted connection @fd (already out of the caller's epoll set),
 * its @proto (TLS or HTTP), the SNI or Host @host ("" for none) and the
 * @prefix bytes already read from it. Takes @fd in every case: closed on
 * error, reset when the queue is full (-EAGAIN). The connection's unit of
 * egd_intercept_new()'s *@slots (the caller took it at accept) moves with it
 * on success, and the proxy gives it back when the connection ends; on
 * error it stays with the caller.
 * Returns 0 or -errno.
 */
int egd_intercept_handoff(struct egd_intercept *ic, unsigned int worker, int fd,
			  enum egd_proto proto, const char *host, const uint8_t *prefix,
			  size_t prefix_len);

/* The proxies' counters, summed, in the Prometheus text format, for
 * /metrics. Malloc'ed; NULL + errno. */
char *egd_intercept_metrics(struct egd_intercept *ic);

#endif /* EGD_INTERCEPT_H */
