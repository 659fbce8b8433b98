/* SPDX-License-Identifier: MIT */
/*
 * egressd run: open the datapath, listen, follow the phase, serve until told
 * to stop. If anything needed for enforcement is missing the daemon exits
 * non-zero; with nobody listening on the capture port the agent's
 * connections are refused, which is the closed state we want.
 */
#include "egress/daemon.h"
#include "egress/resolve.h"
#include "datapath/cgroup.h"
#include "core/log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#define LISTEN_BACKLOG 4096
#define IDLE_SCAN_MS 1000

static int listen_on(const struct egd_addr *a, const char *what)
{
	struct sockaddr_storage ss;
	socklen_t sl = egd_addr_to_sockaddr(a, &ss);
	char name[64];
	int one = 1, fd;

	egd_addr_format(a, name, sizeof(name));
	fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		goto err;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (ss.ss_family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&ss, sl) || listen(fd, LISTEN_BACKLOG)) {
		int err = errno;

		close(fd);
		errno = err;
		goto err;
	}
	egd_info("%s listening on %s", what, name);
	return fd;
err:
	egd_err("%s on %s: %s%s", what, name, strerror(errno),
		errno == EADDRINUSE ? " (another egressd running? set EGRESSD_LISTEN / "
				      "EGRESSD_ADMIN_LISTEN)" :
				      "");
	return -errno;
}

static void raise_fd_limit(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
}

static void on_signal(struct egd_watch *w, uint32_t events)
{
	struct egd_daemon *d = (struct egd_daemon *)((char *)w - offsetof(struct egd_daemon, signals));
	struct signalfd_siginfo si;

	(void)events;
	while (read(w->fd, &si, sizeof(si)) == sizeof(si)) {
		egd_info("signal %u: shutting down", si.ssi_signo);
		egd_loop_stop(d->loop);
	}
}

static void on_idle_scan(struct egd_timer *t)
{
	struct egd_daemon *d = (struct egd_daemon *)((char *)t - offsetof(struct egd_daemon, idle_scan));

	egd_engine_idle_scan(d);
	egd_timer_arm(d->loop, t, egd_now_ms() + IDLE_SCAN_MS);
}

static int setup_signals(struct egd_daemon *d)
{
	sigset_t set;

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

static int setup_bpf(struct egd_daemon *d)
{
	struct egd_config c;
	char self[PATH_MAX];
	int err;

	err = egd_bpf_open(&d->bpf, d->cfg.pin_dir);
	if (err)
		return err;
	/* The daemon must never capture itself, wherever it was started. */
	if (egd_cgroup_of_pid(0, self, sizeof(self)) == 0 &&
	    egd_cgroup_id(self, &d->self_cgroup_id) == 0) {
		err = egd_bpf_exempt_add(&d->bpf, d->self_cgroup_id);
		if (err) {
			egd_err("exempting own cgroup %s: %s", self, strerror(-err));
			return err;
		}
	} else {
		egd_warn("cannot tell the daemon's own cgroup; relying on attach's exemptions");
	}
	err = egd_bpf_get_config(&d->bpf, &c);
	if (err)
		return err;
	c.listen_port = htons(d->cfg.listen_port);
	c.daemon_cgroup_id = d->self_cgroup_id;
	return egd_bpf_set_config(&d->bpf, &c);
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

int egd_daemon_run(const struct egd_config_run *cfg)
{
	struct egd_daemon *d = calloc(1, sizeof(*d));
	struct egd_addr a4 = { .family = EGD_AF_INET }, a6 = { .family = EGD_AF_INET6 };
	int err, rc = 1;

	if (!d)
		return 1;
	d->cfg = *cfg;
	d->bpf.phase_fd = d->bpf.config_fd = d->bpf.exempt_fd = d->bpf.resolver_fd = -1;
	d->bpf.counters_fd = d->bpf.orig_fd = d->bpf.sockhash_fd = -1;
	d->listen4.w.fd = d->listen6.w.fd = d->admin.fd = d->signals.fd = d->inotify.fd = -1;
	d->capture = EGD_CAPTURE_BPF;
	raise_fd_limit();

	d->loop = egd_loop_new();
	if (!d->loop)
		goto out;
	if (setup_signals(d))
		goto out;
	d->resolver = egd_resolver_new(d->loop);
	if (!d->resolver) {
		egd_err("starting the resolver thread: %s", strerror(errno));
		goto out;
	}
	if (setup_bpf(d))
		goto out;

	a4.addr[0] = htonl(INADDR_LOOPBACK);
	a4.port = a6.port = htons(cfg->listen_port);
	a6.addr[3] = htonl(1);
	d->listen4.d = d->listen6.d = d;
	d->listen4.w.cb = d->listen6.w.cb = egd_engine_accept;
	d->listen4.w.fd = listen_on(&a4, "capture");
	if (d->listen4.w.fd < 0)
		goto out;
	d->listen6.w.fd = listen_on(&a6, "capture");
	if (d->listen6.w.fd < 0) {
		/* No IPv6 loopback: v6 connects land nowhere and fail, closed. */
		egd_warn("no IPv6 listener; IPv6 connections of the agent will fail");
	}
	if (egd_loop_add(d->loop, &d->listen4.w, EPOLLIN | EPOLLET) ||
	    (d->listen6.w.fd >= 0 && egd_loop_add(d->loop, &d->listen6.w, EPOLLIN | EPOLLET)))
		goto out;
	if (cfg->admin.family) {
		d->admin.fd = listen_on(&cfg->admin, "admin");
		if (d->admin.fd < 0 || egd_admin_start(d))
			goto out;
	}
	err = egd_phase_start(d);
	if (err) {
		egd_err("phase: %s", strerror(-err));
		goto out;
	}
	d->idle_scan.cb = on_idle_scan;
	egd_timer_arm(d->loop, &d->idle_scan, egd_now_ms() + IDLE_SCAN_MS);
	d->listening = 1;
	egd_info("ready: mode bpf, pin %s, phase %s", cfg->pin_dir, egd_phase_name(d->phase));
	notify_ready();

	rc = egd_loop_run(d->loop) ? 1 : 0;
	egd_engine_close_all(d);

out:
	if (d->loop) {
		/* Run the deferred frees of closed connections. */
		egd_loop_stop(d->loop);
	}
	egd_resolver_free(d->resolver);
	for (int *fd = (int[]){ d->listen4.w.fd, d->listen6.w.fd, d->admin.fd, d->signals.fd,
				d->inotify.fd, -2 };
	     *fd != -2; fd++)
		if (*fd >= 0)
			close(*fd);
	egd_bpf_close(&d->bpf);
	egd_loop_free(d->loop);
	free(d);
	return rc;
}
