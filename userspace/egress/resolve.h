/* SPDX-License-Identifier: MIT */
/*
 * Name resolution off the event loop. getaddrinfo() blocks, so it runs on a
 * worker thread; answers come back through an eventfd on the loop. Used for
 * agent-phase allowlisted hosts, which are dialled by name.
 */
#ifndef EGD_RESOLVE_H
#define EGD_RESOLVE_H

#include <stdint.h>

#include "core/loop.h"
#include "egressd.h"

struct egd_resolver;
struct egd_resolve_req;

/* @addr is valid only during the call; @err is 0 or an EAI_* text. */
typedef void (*egd_resolve_cb)(void *arg, const char *err, const struct egd_addr *addr);

struct egd_resolver *egd_resolver_new(struct egd_loop *loop);
void egd_resolver_free(struct egd_resolver *r);

/* Resolve @host and call @cb(@arg, ...) on the loop thread with the first
 * address, port set to @port_be. Returns a handle for egd_resolve_cancel(). */
struct egd_resolve_req *egd_resolve(struct egd_resolver *r, const char *host, uint16_t port_be,
				    egd_resolve_cb cb, void *arg);
/* The callback will not be called. Safe until the callback has run. */
void egd_resolve_cancel(struct egd_resolve_req *req);

#endif
