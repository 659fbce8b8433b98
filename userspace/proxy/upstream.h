/* SPDX-License-Identifier: MIT */
/*
 * Non-blocking HTTP/1.1 client to the one upstream of the policy proxy
 * (UPSTREAM_BASE_URL), driven by the event loop. The loop never blocks: the
 * name is resolved by the loop's resolver (or taken from UPSTREAM_RESOLVE or
 * an IP literal) and every address is tried in turn, connect and the TLS handshake are non-blocking, and the
 * response is parsed incrementally with the http1 parser, its body handed to
 * the caller piece by piece so streams are relayed as they arrive.
 *
 * TLS is verified against the system store plus UPSTREAM_CA_FILE, with SNI
 * and the hostname checked. Finished connections go back to a small
 * keep-alive pool, each checked before reuse. A reused connection that fails
 * before any byte of response is retried once on a fresh one, but a request
 * other than GET or HEAD only if none of it was written: the upstream may
 * have run it, and a chat completion run twice is billed twice.
 */
#ifndef EGD_PROXY_UPSTREAM_H
#define EGD_PROXY_UPSTREAM_H

#include <stddef.h>
#include <stdint.h>

#include "core/loop.h"
#include "core/resolve.h"
#include "proxy/http1.h"
#include "proxy/proxy_config.h"

/* Idle keep-alive connections kept; more are closed when they finish. */
#define EGD_UPSTREAM_POOL_MAX_IDLE 32
/* An idle connection is closed after this long: servers drop theirs too
 * (nginx's default keepalive_timeout is 75 s). */
#define EGD_UPSTREAM_IDLE_MS (30 * 1000)
/* A resolved address list is reused this long before asking again. At most
 * EGD_RESOLVE_MAX_ADDRS addresses are tried per connection, in resolver
 * order. */
#define EGD_UPSTREAM_DNS_TTL_MS (60 * 1000)
/* A response body (or header block) beyond this is refused: the proxy
 * buffers non-streaming answers to account their cost. */
#define EGD_UPSTREAM_RESPONSE_MAX_BYTES (64 * 1024 * 1024)

struct egd_upstream;
struct egd_upstream_req;

struct egd_upstream_cbs {
	/* The final response's status line and headers (valid during the
	 * call). Return 0 to go on, or a negative errno to abort. */
	int (*on_head)(void *ctx, const struct egd_http_msg *m);
	/* A piece of decoded body. Return 0, or a negative errno to abort. */
	int (*on_body)(void *ctx, const uint8_t *data, size_t len);
	/*
	 * Exactly once, unless a callback aborted or the request was
	 * cancelled: 0 when the response is complete, -ETIMEDOUT when
	 * UPSTREAM_TIMEOUT_S passed without progress (answer 504), another
	 * negative errno when the upstream was unreachable or broke the
	 * exchange (answer 502). The request is freed after it returns.
	 */
	void (*on_done)(void *ctx, int err);
};

/*
 * A client on @loop. @resolver must deliver on @loop (egd_loop_resolver()
 * gives the loop's own) and outlive the client; it may be NULL when the host
 * never needs resolving (an IP literal, or UPSTREAM_RESOLVE naming it).
 * NULL + errno (EINVAL for a bad UPSTREAM_RESOLVE, an unreadable
 * UPSTREAM_CA_FILE or a name without a resolver). @cfg must outlive the
 * client.
 */
struct egd_upstream *egd_upstream_new(struct egd_loop *loop, struct egd_resolver *resolver,
				      const struct egd_proxy_config *cfg);
/* Closes every connection; requests in flight end without callbacks. */
void egd_upstream_destroy(struct egd_upstream *u);

/*
 * Send @method @path with the @n headers, Host added, and @body (copied).
 * The callbacks run later, from the loop, never from within this call.
 * Returns the request, or NULL + errno.
 */
struct egd_upstream_req *egd_upstream_send(struct egd_upstream *u, const char *method,
					   const char *path, const struct egd_http_header *headers,
					   size_t n, const void *body, size_t body_len,
					   const struct egd_upstream_cbs *cbs, void *ctx);

/* Abandon @r without callbacks. Not from inside @r's own callbacks (return
 * an error from on_head/on_body instead). NULL is a no-op. */
void egd_upstream_cancel(struct egd_upstream_req *r);

/* Connections currently idle in the pool (tests). */
size_t egd_upstream_idle_count(const struct egd_upstream *u);

#endif /* EGD_PROXY_UPSTREAM_H */
