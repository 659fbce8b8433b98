/* SPDX-License-Identifier: MIT */
/*
 * Name resolution off the event loop, one resolver per loop. getaddrinfo()
 * blocks, so it runs on the resolver's worker thread; answers come back
 * through an eventfd on the loop, with every address of the name, so a
 * caller can fall back from one to the next. Used for the agent-phase
 * allowlisted hosts, which the engine dials by name, and for the policy
 * proxy's upstream.
 */
#ifndef EGD_RESOLVE_H
#define EGD_RESOLVE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "core/loop.h"

/* Addresses kept per answer, in resolver order: enough for a dual-stack
 * name behind a CDN; callers try them in turn, so more would only add
 * timeouts before giving up. */
#define EGD_RESOLVE_MAX_ADDRS 8
/* Longest name accepted, with its NUL (a DNS name is at most 253 bytes). */
#define EGD_RESOLVE_HOST_MAX_BYTES 256

struct egd_resolver;
struct egd_resolve_req;

/* One answer: @n addresses, each with the port asked for. */
struct egd_resolved {
	size_t n;
	struct sockaddr_storage addr[EGD_RESOLVE_MAX_ADDRS];
	socklen_t len[EGD_RESOLVE_MAX_ADDRS];
};

/* @err is NULL on success (then @res->n >= 1), else a text for the log;
 * @res is valid only during the call. */
typedef void (*egd_resolve_cb)(void *arg, const char *err, const struct egd_resolved *res);

/* A resolver on @loop, which becomes the loop's (egd_loop_resolver()).
 * NULL + errno; EBUSY when @loop has one already. */
struct egd_resolver *egd_resolver_new(struct egd_loop *loop);
/* Stops the thread (after the lookup it may be in) and detaches from the
 * loop. Requests still outstanding are dropped without their callbacks and
 * their handles die with them: free the resolver's users first. */
void egd_resolver_free(struct egd_resolver *r);

/*
 * Resolve @host and call @cb(@arg, ...) later, on the loop thread, never
 * from within this call; every address gets the port @port_be (network
 * order). Returns a handle for egd_resolve_cancel(), valid until the
 * callback starts; NULL + errno (ENOMEM, ENAMETOOLONG).
 */
struct egd_resolve_req *egd_resolve(struct egd_resolver *r, const char *host, uint16_t port_be,
				    egd_resolve_cb cb, void *arg);
/* On the loop thread: the callback will not be called, so @arg may be freed
 * at once. Not after the callback has started. NULL is a no-op. */
void egd_resolve_cancel(struct egd_resolve_req *req);

#endif
