/* SPDX-License-Identifier: MIT */
/*
 * egressd run: open the datapath, start one event-loop worker per CPU (each
 * with its own SO_REUSEPORT listeners), follow the phase, serve until told
 * to stop. If anything needed for enforcement is missing the daemon exits
 * non-zero; with nobody listening on the capture port the agent's
 * connections are refused, which is the closed state we want.
 */
#include "egress/daemon.h"
#include "egress/dnsd.h"
#include "egress/icaddr.h"
#include "egress/intercept.h"
#include "datapath/cgroup.h"
#include "datapath/nftmode.h"
#include "core/log.h"
#include "core/resolve.h"
#include "proxy/proxy_config.h"

#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#define LISTEN_BACKLOG 4096
#define IDLE_SCAN_MS 1000

static void listen_failed(const char *what, const char *name, int err)
{
	egd_err("%s on %s: %s%s", what, name, strerror(err),
		err == EADDRINUSE ? " (another egressd running? set EGRESSD_LISTEN / "
				    "EGRESSD_ADMIN_LISTEN)" :
				    "");
}

/* A host or container without IPv6 (Docker's default networks disable it,
 * so ::1 does not exist) is not an error: there is nothing to capture. */
static int no_ipv6(int family, int err)
{
	return family == AF_INET6 && (err == EADDRNOTAVAIL || err == EAFNOSUPPORT);
}

/*
 * Listen on @a. @reuseport lets every worker bind its own listener to the
 * same address, and the kernel spreads connections over them.
 */
static int listen_on(const struct egd_addr *a, const char *what, int reuseport, int quiet)
{
	struct sockaddr_storage ss;
	socklen_t sl = egd_addr_to_sockaddr(a, &ss);
	char name[64];
	int one = 1, fd, err;

	egd_addr_format(a, name, sizeof(name));
	fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		goto err;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (reuseport)
		setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
	if (ss.ss_family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&ss, sl) || listen(fd, LISTEN_BACKLOG)) {
		err = errno;
		close(fd);
		errno = err;
		goto err;
	}
	if (!quiet)
		egd_info("%s listening on %s", what, name);
	return fd;
err:
	err = errno;
	if (!quiet && no_ipv6(ss.ss_family, err))
		egd_debug("%s on %s: %s (no IPv6 here)", what, name, strerror(err));
	else if (!quiet)
		listen_failed(what, name, err);
	return -err;
}

/*
 * SO_REUSEPORT would let a second egressd (same user) join this one's
 * listeners and take half of the agent's connections. A plain bind first
 * fails with EADDRINUSE while anyone listens on @a, as before workers.
 */
static int port_free(const struct egd_addr *a, const char *what)
{
	struct sockaddr_storage ss;
	socklen_t sl = egd_addr_to_sockaddr(a, &ss);
	char name[64];
	int one = 1, fd, err = 0;

	fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return 0; /* no such family: listen_on says so */
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (ss.ss_family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&ss, sl) && errno == EADDRINUSE) {
		err = -EADDRINUSE;
		egd_addr_format(a, name, sizeof(name));
		listen_failed(what, name, EADDRINUSE);
	}
	close(fd);
	return err;
}

static void raise_fd_limit(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
}

static void stop_workers(struct egd_daemon *d)
{
	__atomic_store_n(&d->stopping, 1, __ATOMIC_RELEASE);
	egd_daemon_kick_workers(d);
}

void egd_daemon_kick_workers(struct egd_daemon *d)
{
	uint64_t one = 1;

	for (unsigned int i = 1; i < d->n_workers; i++)
		if (d->workers[i].wake.fd >= 0 &&
		    write(d->workers[i].wake.fd, &one, sizeof(one)) < 0)
			egd_warn("waking worker %u: %s", i, strerror(errno));
}

static void on_signal(struct egd_watch *w, uint32_t events)
{
	struct egd_daemon *d = (struct egd_daemon *)((char *)w - offsetof(struct egd_daemon, signals));
	struct signalfd_siginfo si;

	(void)events;
	while (read(w->fd, &si, sizeof(si)) == sizeof(si)) {
		egd_info("signal %u: shutting down", si.ssi_signo);
		stop_workers(d);
		egd_loop_stop(d->loop);
	}
}

/* A worker's eventfd: thread 0 changed the phase, or asks it to stop. */
static void on_wake(struct egd_watch *w, uint32_t events)
{
	struct egd_worker *wk =
		(struct egd_worker *)((char *)w - offsetof(struct egd_worker, wake));
	uint64_t n;

	(void)events;
	if (read(w->fd, &n, sizeof(n)) < 0 && errno != EAGAIN)
		egd_warn("worker %u wakeup: %s", wk->id, strerror(errno));
	if (__atomic_load_n(&wk->d->stopping, __ATOMIC_ACQUIRE)) {
		egd_loop_stop(wk->loop);
		return;
	}
	egd_engine_phase_changed(wk);
}

static void on_idle_scan(struct egd_timer *t)
{
	struct egd_worker *wk =
		(struct egd_worker *)((char *)t - offsetof(struct egd_worker, idle_scan));

	egd_engine_idle_scan(wk);
	egd_timer_arm(wk->loop, t, egd_now_ms() + IDLE_SCAN_MS);
}

static void on_turn(void *arg)
{
	(void)arg;
	egd_audit_flush();
}

static int setup_signals(struct egd_daemon *d)
{
	sigset_t set;

	/* Blocked before any worker starts, so that only thread 0's signalfd
	 * ever sees them. */
	signal(SIGPIPE, SIG_IGN);
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigprocmask(SIG_BLOCK, &set, NULL);
	d->signals.fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
	d->signals.cb = on_signal;
	if (d->signals.fd < 0)
		return -errno;
	return egd_loop_add(d->loop, &d->signals, EPOLLIN);
}

/*
 * The daemon exempts the cgroup it runs in, by id. Started by mistake in the
 * sandbox's cgroup, or above it (where an agent that moves itself up goes
 * free), that would exempt the agent: refused. A cgroup inside the attached
 * one is how the tests and pod mode lay things out; it is exempted only when
 * `attach --exempt-cgroup` named it already, or when the operator says so
 * (EGRESSD_ALLOW_EXEMPT_IN_ATTACHED, for pod mode's sidecar, whose container
 * cgroup is a child of the pod cgroup). Never implicitly.
 */
static int exempt_self(struct egd_daemon *d)
{
	char self[PATH_MAX], root[PATH_MAX], att[PATH_MAX] = "";
	enum egd_cgroup_rel rel;
	uint64_t att_id;
	__u8 v;
	int err, listed;

	if (egd_cgroup_of_pid(0, self, sizeof(self)) ||
	    egd_cgroup_id(self, &d->self_cgroup_id)) {
		egd_warn("cannot tell the daemon's own cgroup; relying on attach's exemptions");
		return 0;
	}
	err = egd_cgroup_attached_id(d->cfg.pin_dir, &att_id);
	if (err) {
		egd_err("cannot tell which cgroup the programs under %s are attached to (%s); "
			"not exempting the daemon's own cgroup %s blindly",
			d->cfg.pin_dir, strerror(-err), self);
		return err;
	}
	if (egd_cgroup2_root(root, sizeof(root)) == 0 &&
	    egd_cgroup_path_of_id(root, att_id, att, sizeof(att)) == 0)
		rel = egd_cgroup_relation(self, att);
	else if (att_id == d->self_cgroup_id)
		rel = EGD_CG_SAME;
	else
		rel = EGD_CG_DESCENDANT; /* unknown: treated as the riskier case it may be */
	if (!att[0])
		snprintf(att, sizeof(att), "(id %llu, outside this cgroup view)",
			 (unsigned long long)att_id);
	listed = bpf_map_lookup_elem(d->bpf.exempt_fd, &d->self_cgroup_id, &v) == 0;

	if (rel == EGD_CG_SAME || rel == EGD_CG_ANCESTOR) {
		egd_err("refusing to exempt the daemon's own cgroup %s: it %s the sandbox's "
			"attached cgroup %s, so the agent would go uncaptured. Start egressd run "
			"in a cgroup outside the sandbox",
			self, egd_cgroup_rel_words(rel), att);
		return -EPERM;
	}
	if (rel == EGD_CG_DESCENDANT && listed) {
		egd_info("own cgroup %s lies inside the attached cgroup %s and was exempted at "
			 "attach", self, att);
		return 0;
	}
	if (rel == EGD_CG_DESCENDANT && !d->cfg.allow_exempt_in_attached) {
		egd_err("refusing to exempt the daemon's own cgroup %s: it lies inside the "
			"sandbox's attached cgroup %s and attach did not exempt it. Name it with "
			"attach --exempt-cgroup, or start egressd run outside the sandbox "
			"(pod mode's sidecar: EGRESSD_ALLOW_EXEMPT_IN_ATTACHED=1)",
			self, att);
		return -EPERM;
	}
	if (rel == EGD_CG_DESCENDANT)
		egd_warn("exempting own cgroup %s inside the attached cgroup %s "
			 "(EGRESSD_ALLOW_EXEMPT_IN_ATTACHED)", self, att);
	err = egd_bpf_exempt_add(&d->bpf, d->self_cgroup_id);
	if (err)
		egd_err("exempting own cgroup %s: %s", self, strerror(-err));
	return err;
}

/*
 * The kernel refuses and drops without the daemon seeing it; these counters
 * say so in the audit log. A line per packet would let an agent flood the
 * log as fast as it can send: one line per counter that moved, once every
 * EGD_KERNEL_AUDIT_MS, bounds it at a handful of lines a second.
 */
#define EGD_KERNEL_AUDIT_MS 1000

static const enum egd_counter kernel_refusals[] = {
	EGD_CNT_UDP_DENIED,	      EGD_CNT_SOCK_DENIED,
	EGD_CNT_OTHER_DENIED,	      EGD_CNT_DENY_CIDR,
	EGD_CNT_LOOPBACK_DENIED,      EGD_CNT_SOCKOPT_DENIED,
	EGD_CNT_UDP_INTERCEPT_DENIED, EGD_CNT_BACKSTOP_DROPPED,
	EGD_CNT_ORIG_RECORD_FAILED,
};

static void kernel_audit(struct egd_daemon *d, int report)
{
	enum egd_phase p = __atomic_load_n(&d->phase, __ATOMIC_RELAXED);
	uint64_t k[EGD_CNT_MAX];

	if (egd_bpf_counters(&d->bpf, k))
		return;
	for (size_t i = 0; i < sizeof(kernel_refusals) / sizeof(kernel_refusals[0]); i++) {
		enum egd_counter c = kernel_refusals[i];

		if (report && k[c] > d->kernel_seen[c])
			egd_audit_kernel(p, egd_counter_name(c), k[c] - d->kernel_seen[c]);
		d->kernel_seen[c] = k[c];
	}
}

static void on_kernel_audit(struct egd_timer *t)
{
	struct egd_daemon *d =
		(struct egd_daemon *)((char *)t - offsetof(struct egd_daemon, kernel_audit));

	kernel_audit(d, 1);
	egd_timer_arm(d->loop, t, egd_now_ms() + EGD_KERNEL_AUDIT_MS);
}

/*
 * The policy proxy's plain-HTTP listener is one of the daemon's loopback
 * ports the agent may reach in the agent phase. attach allowed the port it
 * was told; the daemon allows the one it listens on, which may differ.
 */
static int allow_proxy_port(struct egd_daemon *d)
{
	const char *v = egd_proxy_getenv(NULL, "EGRESSD_PROXY_HTTP_LISTEN");
	struct egd_addr a;
	int err;

	if (!v || !*v)
		v = EGD_PROXY_HTTP_LISTEN_DEFAULT;
	if (strcmp(v, "off") == 0 || egd_parse_hostport(v, &a))
		return 0; /* off, or refused by the settings check already */
	err = egd_bpf_loopback_allow(&d->bpf, ntohs(a.port));
	if (err)
		egd_err("allowing the policy proxy's port %u to the agent: %s", ntohs(a.port),
			strerror(-err));
	return err;
}

static int setup_bpf(struct egd_daemon *d)
{
	struct egd_config c;
	int err;

	err = egd_bpf_open(&d->bpf, d->cfg.pin_dir);
	if (err)
		return err;
	/* The daemon must never capture itself, nor free the agent. */
	err = exempt_self(d);
	if (err)
		return err;
	err = egd_bpf_get_config(&d->bpf, &c);
	if (err)
		return err;
	c.listen_port = htons(d->cfg.listen_port);
	c.daemon_cgroup_id = d->self_cgroup_id;
	err = egd_bpf_set_config(&d->bpf, &c);
	if (!err)
		err = allow_proxy_port(d);
	if (err)
		return err;
	/* Refusals from before this daemon are not its to report. */
	kernel_audit(d, 0);
	d->kernel_audit.cb = on_kernel_audit;
	return egd_timer_arm(d->loop, &d->kernel_audit, egd_now_ms() + EGD_KERNEL_AUDIT_MS);
}

/* How often the installed nftables ruleset is read back and compared, on
 * top of the change notifications (which can be lost under load). */
#define NFT_CHECK_MS 1000

const char *egd_capture_name(const struct egd_daemon *d)
{
	return d->capture == EGD_CAPTURE_NFT ? "nft" : "bpf";
}

int egd_capture_set_phase(struct egd_daemon *d, enum egd_phase p)
{
	int err;

	if (d->capture == EGD_CAPTURE_BPF)
		return egd_bpf_set_phase(&d->bpf, p);
	if (!d->nft_installed) {
		err = egd_nftmode_start(&d->nft, p);
		if (!err)
			d->nft_installed = 1;
		return err;
	}
	/* One element swapped in one transaction; if that fails, reinstall
	 * the whole table in the new phase rather than keep the old one. */
	err = egd_nft_set_phase(p);
	return err ? egd_nftmode_start(&d->nft, p) : 0;
}

static void nft_enforce(struct egd_daemon *d)
{
	enum egd_phase p = __atomic_load_n(&d->phase, __ATOMIC_RELAXED);

	if (egd_nftmode_enforce(&d->nft, p))
		egd_err("nft mode: could not restore the ruleset; the agent is not captured "
			"as intended until it is");
}

static void on_nft_check(struct egd_timer *t)
{
	struct egd_daemon *d = (struct egd_daemon *)((char *)t - offsetof(struct egd_daemon, nft_check));

	nft_enforce(d);
	egd_timer_arm(d->loop, t, egd_now_ms() + NFT_CHECK_MS);
}

static void on_nft_monitor(struct egd_watch *w, uint32_t events)
{
	struct egd_daemon *d = (struct egd_daemon *)((char *)w - offsetof(struct egd_daemon, nft_monitor));

	(void)events;
	egd_nft_monitor_drain(w->fd);
	nft_enforce(d);
}

/* Watch the ruleset once it is installed: a timer always, change
 * notifications where the kernel gives them. */
static int nft_watch(struct egd_daemon *d)
{
	int err;

	d->nft_check.cb = on_nft_check;
	/* Re-armed from its own callback, which never allocates: only this
	 * first arming can fail, and without it tampering went unnoticed. */
	err = egd_timer_arm(d->loop, &d->nft_check, egd_now_ms() + NFT_CHECK_MS);
	if (err)
		return err;
	d->nft_monitor.fd = egd_nft_monitor_open();
	d->nft_monitor.cb = on_nft_monitor;
	if (d->nft_monitor.fd < 0) {
		egd_warn("nft mode: no change notifications (%s); checking every %d ms",
			 strerror(-d->nft_monitor.fd), NFT_CHECK_MS);
		d->nft_monitor.fd = -1;
		return 0;
	}
	return egd_loop_add(d->loop, &d->nft_monitor, EPOLLIN);
}

static int setup_nft(struct egd_daemon *d)
{
	uint16_t admin = d->cfg.admin.family ? ntohs(d->cfg.admin.port) : 0;

	d->capture = EGD_CAPTURE_NFT;
	return egd_nftmode_config(&d->nft, d->cfg.listen_port, d->cfg.dns_port, admin);
}

/* --mode auto: BPF when `egressd attach` left its maps pinned, else nft. */
static int setup_capture(struct egd_daemon *d)
{
	char probe[PATH_MAX];

	switch (d->cfg.mode) {
	case EGD_MODE_BPF:
		return setup_bpf(d);
	case EGD_MODE_NFT:
		return setup_nft(d);
	default:
		snprintf(probe, sizeof(probe), "%s/maps/phase_map", d->cfg.pin_dir);
		if (access(probe, F_OK) == 0) {
			egd_info("mode auto: BPF attachment found at %s", d->cfg.pin_dir);
			return setup_bpf(d);
		}
		egd_info("mode auto: no BPF attachment at %s; using nftables", d->cfg.pin_dir);
		return setup_nft(d);
	}
}

static void notify_ready(void)
{
	/* `egressd exec` passes a pipe to learn when the daemon serves. */
	const char *s = getenv("EGRESSD_READY_FD");
	int fd = s ? atoi(s) : -1;

	if (fd > 2) {
		if (write(fd, "R", 1) < 0)
			egd_warn("ready notification: %s", strerror(errno));
		close(fd);
	}
}

static unsigned int worker_count(const struct egd_config_run *cfg)
{
	long n = cfg->workers ? (long)cfg->workers : sysconf(_SC_NPROCESSORS_ONLN);

	if (n < 1)
		n = 1;
	return n > EGD_WORKERS_MAX ? EGD_WORKERS_MAX : (unsigned int)n;
}

/* Worker @wk's loop, resolver and listeners; worker 0 reuses d->loop. */
static int worker_setup(struct egd_daemon *d, struct egd_worker *wk)
{
	struct egd_addr a4 = { .family = EGD_AF_INET }, a6 = { .family = EGD_AF_INET6 };
	int quiet = wk->id != 0, err;

	wk->loop = wk->id ? egd_loop_new() : d->loop;
	if (!wk->loop)
		return -errno;
	err = egd_loop_on_turn(wk->loop, on_turn, NULL);
	if (err)
		return err;
	wk->resolver = egd_resolver_new(wk->loop);
	if (!wk->resolver) {
		err = -errno;
		egd_err("starting the resolver thread: %s", strerror(errno));
		return err;
	}
	if (wk->id) {
		wk->wake.fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
		wk->wake.cb = on_wake;
		if (wk->wake.fd < 0)
			return -errno;
		err = egd_loop_add(wk->loop, &wk->wake, EPOLLIN);
		if (err)
			return err;
	}

	a4.addr[0] = htonl(INADDR_LOOPBACK);
	a4.port = a6.port = htons(d->cfg.listen_port);
	a6.addr[3] = htonl(1);
	wk->listen4.wk = wk->listen6.wk = wk;
	wk->listen4.addr = a4;
	wk->listen6.addr = a6;
	wk->listen4.w.cb = wk->listen6.w.cb = egd_engine_accept;
	wk->listen4.w.fd = listen_on(&a4, "capture", 1, quiet);
	if (wk->listen4.w.fd < 0)
		return wk->listen4.w.fd;
	/* No IPv6 loopback: v6 connects land nowhere and fail, closed. */
	if (wk->id == 0 || d->workers[0].listen6.w.fd >= 0) {
		wk->listen6.w.fd = listen_on(&a6, "capture", 1, quiet);
		if (wk->listen6.w.fd < 0 && wk->id == 0 && no_ipv6(AF_INET6, -wk->listen6.w.fd))
			egd_debug("no IPv6 loopback; IPv6 connections of the agent fail");
		else if (wk->listen6.w.fd < 0 && wk->id == 0)
			egd_warn("no IPv6 listener; IPv6 connections of the agent will fail");
	}
	err = egd_loop_add(wk->loop, &wk->listen4.w, EPOLLIN | EPOLLET);
	if (!err && wk->listen6.w.fd >= 0)
		err = egd_loop_add(wk->loop, &wk->listen6.w, EPOLLIN | EPOLLET);
	if (err)
		return err;
	wk->idle_scan.cb = on_idle_scan;
	return egd_timer_arm(wk->loop, &wk->idle_scan, egd_now_ms() + IDLE_SCAN_MS);
}

static void *worker_main(void *arg)
{
	struct egd_worker *wk = arg;

	if (egd_loop_run(wk->loop))
		egd_err("worker %u stopped on an event-loop error", wk->id);
	egd_engine_close_all(wk);
	egd_audit_flush();
	return NULL;
}

/* After the worker's thread has ended (or never started). */
static void worker_free(struct egd_worker *wk)
{
	egd_resolver_free(wk->resolver);
	for (int *fd = (int[]){ wk->listen4.w.fd, wk->listen6.w.fd, wk->wake.fd, -2 }; *fd != -2;
	     fd++)
		if (*fd >= 0)
			close(*fd);
	if (wk->loop) {
		/* Run the deferred frees of closed connections. */
		egd_loop_stop(wk->loop);
		if (wk->id)
			egd_loop_free(wk->loop);
	}
	egd_engine_free_pipes(wk);
}

static int start_workers(struct egd_daemon *d)
{
	struct egd_addr a4 = { .family = EGD_AF_INET }, a6 = { .family = EGD_AF_INET6 };
	unsigned int n = worker_count(&d->cfg);
	int err;

	a4.addr[0] = htonl(INADDR_LOOPBACK);
	a4.port = a6.port = htons(d->cfg.listen_port);
	a6.addr[3] = htonl(1);
	if (port_free(&a4, "capture") || port_free(&a6, "capture"))
		return -EADDRINUSE;
	d->workers = calloc(n, sizeof(*d->workers));
	if (!d->workers)
		return -ENOMEM;
	for (unsigned int i = 0; i < n; i++) {
		struct egd_worker *wk = &d->workers[i];

		wk->d = d;
		wk->id = i;
		wk->listen4.w.fd = wk->listen6.w.fd = wk->wake.fd = -1;
		d->n_workers = i + 1;
		err = worker_setup(d, wk);
		if (err)
			return err;
	}
	return 0;
}

static int start_intercept(struct egd_daemon *d)
{
	struct egd_loop **loops = calloc(d->n_workers, sizeof(*loops));

	if (!loops)
		return -ENOMEM;
	for (unsigned int i = 0; i < d->n_workers; i++)
		loops[i] = d->workers[i].loop;
	d->intercept = egd_intercept_new(loops, d->n_workers, d->cfg.proxy_workers, &d->n_conns,
					 d->cfg.max_conns);
	free(loops);
	return d->intercept ? 0 : -errno;
}

/* BPF mode: a TCP connection the kernel redirected to the policy DNS has
 * the same record as a captured flow; its cgroup goes into the audit. */
static int dns_tcp_cgroup(void *arg, const struct egd_addr *peer, const struct egd_addr *local,
			  uint64_t *cgroup_id)
{
	struct egd_daemon *d = arg;
	struct egd_tuple t = { .src = *peer, .dst = *local };
	struct egd_orig o;
	int err = egd_bpf_orig_take(&d->bpf, &t, &o);

	if (!err)
		*cgroup_id = o.cgroup_id;
	return err;
}

/* nft mode: the intercept-address table feeds the ruleset's set, which
 * refuses UDP (QUIC) to those addresses. */
static int icaddr_to_nft(void *arg, const struct egd_ip *ip, uint64_t expires_ns)
{
	uint64_t now = egd_icaddr_now_ns();
	uint64_t left_s = expires_ns > now ? (expires_ns - now + 999999999ull) / 1000000000ull : 1;

	(void)arg;
	return egd_nft_icaddr_add(ip, left_s > UINT32_MAX ? UINT32_MAX : (uint32_t)left_s);
}

/* Text room for EGD_RESOLVERS_MAX_ENTRIES addresses, comma separated. */
#define NFT_RESOLVERS_TEXT_BYTES (EGD_RESOLVERS_MAX_ENTRIES * (INET6_ADDRSTRLEN + 1))
#define RESOLV_CONF "/etc/resolv.conf"

static int any_loopback(const struct egd_addr *a, int n)
{
	for (int i = 0; i < n; i++)
		if (egd_addr_is_loopback(&a[i]))
			return 1;
	return 0;
}

/*
 * Where the policy DNS sends its own lookups in nft mode (@given:
 * EGRESSD_RESOLVERS). The ruleset redirects every port-53 packet of this
 * namespace that is not the daemon's to the policy DNS, so a resolver on
 * loopback here (Docker's embedded 127.0.0.11 under Compose, a local stub)
 * whose upstream queries leave from this namespace as another process sends
 * them back to the policy DNS, and nothing resolves. Letting those queries
 * out un-redirected would need telling them from the agent's by something
 * the agent cannot forge: not the uid (dockerd is root, and an agent may be
 * root), and the socket cgroup is not always matchable (this falls back to
 * the uid on hybrid cgroup hosts). So the daemon asks the upstream itself,
 * as itself, and the ruleset keeps no exception: EGRESSD_RESOLVERS when
 * given; else, when resolv.conf names loopback and Docker (25.0 on) lists
 * the servers it asks from this namespace ("# ExtServers:"), those; else
 * resolv.conf, with a warning when it is on loopback (Docker 20.10 writes no
 * such comment: set EGRESSD_RESOLVERS, as deploy/compose does). Returns the
 * list for the policy DNS, in @buf, or @given, or NULL for resolv.conf.
 */
static const char *nft_dns_resolvers(const char *given, char *buf, size_t len)
{
	struct egd_addr a[EGD_RESOLVERS_MAX_ENTRIES];
	int n, n_host = 0;
	size_t off = 0;

	if (given) {
		n = egd_parse_ip_list(given, a, EGD_RESOLVERS_MAX_ENTRIES);
		if (n > 0 && any_loopback(a, n))
			egd_warn("dns: EGRESSD_RESOLVERS \"%s\" is on loopback in the namespace "
				 "nft mode captures: unless that resolver asks its upstream from "
				 "another namespace, its queries come back to the policy DNS and "
				 "names do not resolve",
				 given);
		return given;
	}
	n = egd_resolvers_from_file(RESOLV_CONF, a, EGD_RESOLVERS_MAX_ENTRIES);
	if (!any_loopback(a, n))
		return NULL;
	n = egd_resolvers_docker_ext(RESOLV_CONF, a, EGD_RESOLVERS_MAX_ENTRIES, &n_host);
	if (n > 0) {
		for (int i = 0; i < n; i++) {
			char t[INET6_ADDRSTRLEN];
			int fam = a[i].family == EGD_AF_INET ? AF_INET : AF_INET6;

			if (!inet_ntop(fam, a[i].addr, t, sizeof(t)))
				return NULL;
			off += (size_t)snprintf(buf + off, len - off, "%s%s", i ? "," : "", t);
			if (off >= len)
				return NULL;
		}
		egd_info("dns: resolv.conf names a loopback resolver; asking Docker's upstream "
			 "servers (ExtServers) directly: %s",
			 buf);
		return buf;
	}
	/* Docker's "host(ADDR)" servers are asked from the host's namespace:
	 * that forward does not come back here. */
	if (n == 0 && n_host > 0)
		return NULL;
	egd_warn("dns: %s names a loopback resolver and EGRESSD_RESOLVERS is unset: in nft "
		 "mode its upstream queries come back to the policy DNS and names do not "
		 "resolve; set EGRESSD_RESOLVERS to the upstream resolvers' addresses",
		 RESOLV_CONF);
	return NULL;
}

/* BPF mode: the kernel's intercept-address map, which refuses UDP (QUIC)
 * to those addresses in both phases. */
static int icaddr_to_bpf(void *arg, const struct egd_ip *ip, uint64_t expires_ns)
{
	return egd_bpf_icaddr_put(arg, ip, expires_ns);
}

/*
 * The policy DNS on worker 0's loop, in every capture mode: the kernel side
 * sends the agent's port-53 traffic to it. In BPF mode the kernel learns
 * its port from the config map once it listens.
 */
static int start_dns(struct egd_daemon *d)
{
	struct egd_dnsd_config dc = {
		.port = d->cfg.dns_port,
		.max_ttl_s = d->cfg.dns_max_ttl_s,
		.policy = &d->cfg.policy,
		.phase = &d->phase,
		.resolvers = egd_config_get("EGRESSD_RESOLVERS"),
	};
	char resolvers[NFT_RESOLVERS_TEXT_BYTES];
	struct egd_config c;

	/* Empty reads as unset, as Compose's ${EGRESSD_RESOLVERS:-} gives it
	 * (an empty --resolvers is refused by egd_config_load()). */
	if (dc.resolvers && !*dc.resolvers)
		dc.resolvers = NULL;
	if (d->capture == EGD_CAPTURE_NFT)
		dc.resolvers = nft_dns_resolvers(dc.resolvers, resolvers, sizeof(resolvers));

	d->icaddr = egd_icaddr_new();
	if (!d->icaddr)
		return -errno;
	/* The intercept-address sink (egd_icaddr_set_sink()) feeds the
	 * datapath: nft mode's set here; the BPF map in BPF mode. */
	if (d->capture == EGD_CAPTURE_NFT)
		egd_icaddr_set_sink(d->icaddr, icaddr_to_nft, NULL);
	else
		egd_icaddr_set_sink(d->icaddr, icaddr_to_bpf, &d->bpf);
	dc.icaddr = d->icaddr;
	if (d->capture == EGD_CAPTURE_BPF) {
		dc.tcp_cgroup = dns_tcp_cgroup;
		dc.tcp_cgroup_arg = d;
	}
	d->dnsd = egd_dnsd_new(d->loop, &dc);
	if (!d->dnsd)
		return -errno;
	if (d->capture == EGD_CAPTURE_BPF && egd_bpf_get_config(&d->bpf, &c) == 0) {
		c.dns_port = htons(d->cfg.dns_port);
		return egd_bpf_set_config(&d->bpf, &c);
	}
	return 0;
}

/* Threads start once the phase is known, so no worker decides without it. */
static int run_worker_threads(struct egd_daemon *d)
{
	for (unsigned int i = 1; i < d->n_workers; i++) {
		int err = pthread_create(&d->workers[i].thread, NULL, worker_main, &d->workers[i]);

		if (err) {
			egd_err("starting worker %u: %s", i, strerror(err));
			return -err;
		}
		d->workers[i].started = 1;
	}
	return 0;
}

int egd_daemon_run(const struct egd_config_run *cfg)
{
	struct egd_daemon *d = calloc(1, sizeof(*d));
	const char *step;
	int err, rc = 1;

	if (!d) {
		egd_err("not starting: %s", strerror(ENOMEM));
		return 1;
	}
	d->cfg = *cfg;
	egd_bpf_init(&d->bpf);
	d->admin.fd = d->signals.fd = d->inotify.fd = d->nft_monitor.fd = -1;
	d->capture = EGD_CAPTURE_BPF;
	raise_fd_limit();

	/*
	 * Each step's failure is logged once here, with the step, so that the
	 * daemon never exits 1 without a word; some steps have already said
	 * more about it (which address, which file), this line ends the story.
	 */
	step = "event loop";
	d->loop = egd_loop_new();
	err = d->loop ? 0 : -errno;
	if (err)
		goto fail;
	step = "signal handling";
	err = setup_signals(d);
	if (err)
		goto fail;
	step = "capture";
	err = setup_capture(d);
	if (err)
		goto fail;
	step = "workers";
	err = start_workers(d);
	if (err)
		goto fail;
	if (cfg->admin.family) {
		step = "admin endpoint";
		d->admin.fd = listen_on(&cfg->admin, "admin", 0, 0);
		err = d->admin.fd < 0 ? d->admin.fd : egd_admin_start(d);
		if (err)
			goto fail;
	}
	step = "phase";
	err = egd_phase_start(d);
	if (err)
		goto fail;
	if (d->capture == EGD_CAPTURE_NFT) {
		step = "nft ruleset watch";
		err = nft_watch(d);
		if (err)
			goto fail;
	}
	step = "policy DNS";
	err = start_dns(d);
	if (err)
		goto fail;
	/* The policy proxy (on EGRESSD_PROXY_WORKERS workers, one by default,
	 * over one budget ledger). It starts once capture is in place: a
	 * daemon that cannot enforce exits before it writes a CA. */
	if (!cfg->intercept_upstream.family) {
		step = "policy proxy";
		err = start_intercept(d);
		if (err)
			goto fail;
	}
	step = "worker threads";
	err = run_worker_threads(d);
	if (err)
		goto fail;
	d->listening = 1;
	egd_info("ready: mode %s, pin %s, phase %s, %u worker%s", egd_capture_name(d),
		 cfg->pin_dir,
		 egd_phase_name(d->phase), d->n_workers, d->n_workers == 1 ? "" : "s");
	notify_ready();

	rc = egd_loop_run(d->loop) ? 1 : 0;
	goto out;

fail:
	egd_err("not starting: %s: %s", step, strerror(err < 0 ? -err : EINVAL));
out:
	if (d->n_workers) {
		stop_workers(d);
		egd_engine_close_all(&d->workers[0]);
		for (unsigned int i = 1; i < d->n_workers; i++)
			if (d->workers[i].started)
				pthread_join(d->workers[i].thread, NULL);
		egd_audit_flush();
		/* The proxies' connections live on the workers' loops, and
		 * their upstreams may have lookups queued on the workers'
		 * resolvers: they go first, while both still exist. */
		egd_intercept_destroy(d->intercept);
		d->intercept = NULL;
		egd_dnsd_free(d->dnsd);
		d->dnsd = NULL;
		for (unsigned int i = 0; i < d->n_workers; i++)
			worker_free(&d->workers[i]);
	} else if (d->loop) {
		egd_loop_stop(d->loop);
	}
	egd_audit_flush();
	for (int *fd = (int[]){ d->admin.fd, d->signals.fd, d->inotify.fd, d->nft_monitor.fd, -2 };
	     *fd != -2; fd++)
		if (*fd >= 0)
			close(*fd);
	egd_intercept_destroy(d->intercept);
	egd_dnsd_free(d->dnsd);
	egd_icaddr_free(d->icaddr);
	egd_bpf_close(&d->bpf);
	egd_loop_free(d->loop);
	free(d->workers);
	free(d);
	return rc;
}
