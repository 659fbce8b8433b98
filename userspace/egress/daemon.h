/* SPDX-License-Identifier: MIT */
/*
 * The enforcer (egressd run): listeners, the connection engine, the phase
 * watcher and the admin endpoint, sharing one event loop. This header is the
 * daemon's inside; the CLI only calls egd_daemon_run().
 */
#ifndef EGD_DAEMON_H
#define EGD_DAEMON_H

#include <pthread.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include "core/config.h"
#include "core/loop.h"
#include "datapath/bpf.h"
#include "datapath/nft.h"
#include "datapath/origdst.h"
#include "egress/decide.h"

struct egd_conn;
struct egd_dnsd;
struct egd_icaddr_table;
struct egd_intercept;
struct egd_resolver;

/* Per-worker counters; only their worker writes them, /metrics sums them. */
struct egd_metrics {
	uint64_t conns[EGD_VERDICT_MAX][EGD_REASON_MAX];
	uint64_t bytes_up, bytes_down;
	uint64_t open_tunnels;
	uint64_t tunnel_errors_connect, tunnel_errors_reset, tunnel_closed_idle,
		tunnel_closed_phase;
	uint64_t overload_resets;
	uint64_t sniff_timeouts;
};

/* Empty relay pipes kept per worker for the next tunnel: a tunnel needs
 * two, and making them (pipe2 + F_SETPIPE_SZ, then two closes) was a
 * quarter of the syscalls of a short connection. */
#define EGD_PIPE_POOL_PIPES 128

struct egd_daemon;
struct egd_worker;

/* A listening socket: the watch first, so the watch is the listener. */
struct egd_listener {
	struct egd_watch w;
	struct egd_worker *wk;
	struct egd_addr addr; /* bound address: the local end of every accept */
};

/*
 * One event-loop thread with its own SO_REUSEPORT listeners; the kernel
 * spreads new connections over the workers and a connection stays on the
 * worker that accepted it, so connections need no locks. Worker 0 is the
 * main thread, which also runs the admin endpoint, signals and the phase.
 */
struct egd_worker {
	struct egd_daemon *d;
	unsigned int id;
	struct egd_loop *loop;
	pthread_t thread;
	int started;
	struct egd_listener listen4, listen6;
	struct egd_watch wake; /* eventfd: the phase changed, or stop */
	struct egd_timer idle_scan;
	struct egd_conn *conns; /* doubly linked, every live connection */
	unsigned int n_conns;
	struct egd_resolver *resolver;
	struct egd_metrics m;
	int pipes[EGD_PIPE_POOL_PIPES][2];
	unsigned int n_pipes;
};

struct egd_daemon {
	struct egd_config_run cfg;
	struct egd_loop *loop; /* worker 0's */
	struct egd_bpf bpf;
	enum egd_capture_mode capture;
	enum egd_phase phase; /* written by thread 0 only; read with __atomic */
	uint64_t self_cgroup_id;

	struct egd_watch admin, signals, inotify;
	/* nft mode: the ruleset we install and keep installed. */
	struct egd_nft_config nft;
	int nft_installed;
	struct egd_timer nft_check;
	struct egd_watch nft_monitor;
	struct egd_timer phase_poll;
	/* BPF mode: the kernel's refusals, read every EGD_KERNEL_AUDIT_MS and
	 * turned into one audit line per counter that moved. */
	struct egd_timer kernel_audit;
	uint64_t kernel_seen[EGD_CNT_MAX];
	int inotify_wd;
	/* The sentinel's directory as checked at start: a directory found
	 * there later under another identity was swapped in, not trusted. */
	char sentinel_dir[PATH_MAX];
	dev_t sentinel_dir_dev;
	ino_t sentinel_dir_ino;
	/* The last sentinel ignored (inode, owner, change time), so the poll
	 * reports each one once. */
	ino_t ignored_ino;
	uid_t ignored_uid;
	time_t ignored_ctime;
	uint64_t phase_changes;

	/* The embedded policy proxy (on the first EGRESSD_PROXY_WORKERS
	 * workers, one by default); NULL when intercepted flows go to
	 * EGRESSD_INTERCEPT_UPSTREAM instead. */
	struct egd_intercept *intercept;
	/* The policy DNS, on worker 0's loop, and the addresses it gave for
	 * intercept hosts (read by every worker's decisions). */
	struct egd_dnsd *dnsd;
	struct egd_icaddr_table *icaddr;
	struct egd_worker *workers;
	unsigned int n_workers;
	unsigned int n_conns; /* all workers; __atomic, for max_conns */
	int stopping;	      /* __atomic: workers leave their loops */
	int listening;
};

/* Run the enforcer until SIGTERM/SIGINT. Returns a process exit code. */
int egd_daemon_run(const struct egd_config_run *cfg);
/* Tell every worker but 0 to re-judge its tunnels (the phase changed). */
void egd_daemon_kick_workers(struct egd_daemon *d);

/* engine.c; each runs on @wk's own thread. */
void egd_engine_accept(struct egd_watch *w, uint32_t events);
void egd_engine_phase_changed(struct egd_worker *wk);
void egd_engine_idle_scan(struct egd_worker *wk);
void egd_engine_close_all(struct egd_worker *wk);
void egd_engine_free_pipes(struct egd_worker *wk);

/* daemon.c: the capture datapath. Put @p into it: the BPF phase map, or
 * the nftables phase element (installing the ruleset the first time). */
int egd_capture_set_phase(struct egd_daemon *d, enum egd_phase p);
const char *egd_capture_name(const struct egd_daemon *d);

/* phase.c: the sentinel watcher. */
int egd_phase_start(struct egd_daemon *d);

/*
 * Whether @dir may hold the sentinel, for a daemon running as @uid. 0: it is
 * private (owned by root or @uid, writable by no one else) and every
 * directory above it is too, or sticky (/tmp), so nobody else can create,
 * rename or replace anything on the way. 1: @dir itself is writable by
 * someone else (group, world, another owner): fine only where the sandbox
 * cannot see it. -errno: missing, not a directory, or a directory above it
 * lets others replace it. @why says what is wrong, for the message.
 */
int egd_sentinel_dir_check(const char *dir, uid_t uid, char *why, size_t len);
/* Set the phase everywhere it lives (BPF map, daemon) and act on it. */
void egd_phase_set(struct egd_daemon *d, enum egd_phase p, const char *why);

/* admin.c: the admin endpoint, and the readiness it reports. */
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
/* One line per policy DNS query: event "dns". */
struct egd_audit_dns {
	enum egd_phase phase;
	uint64_t cgroup_id; /* 0: not known */
	const struct egd_addr *src;
	const char *proto;   /* "udp" | "tcp" */
	const char *qname;   /* text form, escaped (dns.h) */
	const char *qtype;   /* "A", "HTTPS", "TYPE65280" */
	const char *verdict; /* egd_dns_verdict_name() */
	const char *rcode;   /* "NOERROR", "REFUSED", ... */
};
void egd_audit_dns(const struct egd_audit_dns *r);
/* One line for @count more refusals (or drops) of the kernel's @counter:
 * event "kernel", with phase, counter and count. */
void egd_audit_kernel(enum egd_phase phase, const char *counter, uint64_t count);
/* Audit lines are buffered per thread and written once per loop turn, whole
 * lines only; this writes the calling thread's. */
void egd_audit_flush(void);

#endif
