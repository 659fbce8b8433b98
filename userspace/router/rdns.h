/* SPDX-License-Identifier: MIT */
/*
 * The router's name resolution: c-ares on the event loop. Lookups run
 * concurrently (a slow or dead nameserver delays only the names asked of
 * it, where core/resolve.c's one getaddrinfo thread would queue every
 * lookup behind it), with the system's configuration: /etc/hosts, then the
 * nameservers and search rules of /etc/resolv.conf, as getaddrinfo does.
 * Answers have the same shape as core/resolve.h's.
 */
#ifndef EGD_ROUTER_RDNS_H
#define EGD_ROUTER_RDNS_H

#include <stdint.h>

#include "core/loop.h"
#include "core/resolve.h"

struct egd_rdns;
struct egd_rdns_req;

/* NULL + errno. */
struct egd_rdns *egd_rdns_new(struct egd_loop *loop);
/* Outstanding requests end without their callbacks. NULL is a no-op. */
void egd_rdns_free(struct egd_rdns *d);

/* Resolve @host; @cb(@arg, err, res) later on the loop, never from within
 * this call, every address with port @port_be. NULL + errno. */
struct egd_rdns_req *egd_rdns_resolve(struct egd_rdns *d, const char *host, uint16_t port_be,
				      egd_resolve_cb cb, void *arg);
/* The callback will not be called; @arg may be freed at once. NULL is a
 * no-op. Not from inside the callback. */
void egd_rdns_cancel(struct egd_rdns_req *req);

#endif /* EGD_ROUTER_RDNS_H */
