/* SPDX-License-Identifier: MIT */
/*
 * The enforcer (egressd run): listeners, the connection engine, the phase
 * watcher and the admin endpoint, sharing one event loop. This header is the
 * daemon's inside; the CLI only calls egd_daemon_run().
 */
#ifndef EGD_DAEMON_H
#define EGD_DAEMON_H

#include <stdint.h>

#include "core/config.h"
#include "core/loop.h"
#include "datapath/bpf.h"
#include "datapath/origdst.h"
#include "egress/decide.h"

struct egd_conn;
struct egd_resolver;

struct egd_metrics {
	uint64_t conns[EGD_VERDICT_MAX][EGD_REASON_MAX];
	uint64_t bytes_up, bytes_down;
	uint64_t open_tunnels;
	uint64_t tunnel_errors_connect, tunnel_errors_reset, tunnel_closed_idle,
		tunnel_closed_phase;
	uint64_t overload_resets;
	uint64_t sniff_timeouts;
	uint64_t phase_changes;
};

struct egd_daemon;

/* A listening socket: the watch first, so the watch is the listener. */
struct egd_listener {
	struct egd_watch w;
	struct egd_daemon *d;
};

struct egd_daemon {
	struct egd_config_run cfg;
	struct egd_loop *loop;
	struct egd_bpf bpf;
	enum egd_capture_mode capture;
	enum egd_phase phase;
	uint64_t self_cgroup_id;

	struct egd_listener listen4, listen6;
	struct egd_watch admin, signals, inotify;
	struct egd_timer phase_poll, idle_scan;
	int inotify_wd;

	struct egd_conn *conns; /* doubly linked, every live connection */
	unsigned int n_conns;
	struct egd_resolver *resolver;
	struct egd_metrics m;
	int listening;
};

/* Run the enforcer until SIGTERM/SIGINT. Returns a process exit code. */
int egd_daemon_run(const struct egd_config_run *cfg);

/* engine.c */
void egd_engine_accept(struct egd_watch *w, uint32_t events);
void egd_engine_phase_changed(struct egd_daemon *d);
void egd_engine_idle_scan(struct egd_daemon *d);
void egd_engine_close_all(struct egd_daemon *d);

/* phase.c: the sentinel watcher. */
int egd_phase_start(struct egd_daemon *d);
/* Set the phase everywhere it lives (BPF map, daemon) and act on it. */
void egd_phase_set(struct egd_daemon *d, enum egd_phase p, const char *why);

/* admin.c */
int egd_admin_start(struct egd_daemon *d);
int egd_daemon_ready(const struct egd_daemon *d);

/* audit.c: one JSON line per decision and per close. */
struct egd_audit_rec {
	const char *event; /* "decision" | "close" */
	enum egd_phase phase;
	uint64_t cgroup_id;
	const struct egd_addr *src, *dst;
	enum egd_proto proto;
	const char *host;
	enum egd_verdict verdict;
	enum egd_reason reason;
	const char *detail; /* sniff error, dial error, why it closed; may be NULL */
	int has_totals;
	uint64_t bytes_up, bytes_down, duration_ms;
};
void egd_audit(const struct egd_audit_rec *r);

#endif
