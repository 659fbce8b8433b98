/* SPDX-License-Identifier: MIT */
/*
 * `egressd router`: the sandboxes' way in. A reverse proxy on the event
 * loop (core/loop.h) and the HTTP/1 parser (proxy/http1.h) that routes each
 * request by its X-Sandbox-* headers (route.h) to the sandbox's Service,
 * streams bodies both ways with bounded buffers, relays WebSockets, keeps a
 * keep-alive pool per target, and serves /metrics on its admin listener.
 * HTTP/1.1 only, on both sides.
 */
#ifndef EGD_ROUTER_H
#define EGD_ROUTER_H

/* `egressd router [SETTINGS]`: runs until SIGTERM/SIGINT, then drains.
 * Returns the process exit code. */
int egd_router_main(int argc, char **argv);

#endif /* EGD_ROUTER_H */
