/* SPDX-License-Identifier: MIT */
/*
 * The phase follows the sentinel file: present means verification, absent
 * means agent. inotify on the sentinel's directory sees a file created later
 * at once; a slow poll backs it up (and replaces it when the directory does
 * not exist yet), so a missed event costs at most PHASE_POLL_MS.
 */
#include "egress/daemon.h"
#include "core/log.h"

#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

/* Backup poll with a working inotify watch, and the poll without one. The
 * second keeps the promise that the BPF map follows within 100 ms. */
#define PHASE_POLL_MS 1000
#define PHASE_POLL_NO_INOTIFY_MS 50

static enum egd_phase sentinel_phase(const struct egd_daemon *d)
{
	struct stat st;

	return stat(d->cfg.sentinel, &st) == 0 ? EGD_PHASE_VERIFICATION : EGD_PHASE_AGENT;
}

void egd_phase_set(struct egd_daemon *d, enum egd_phase p, const char *why)
{
	int err;

	/* The kernel first, so no new flow is judged by the old phase in BPF
	 * while the daemon already has the new one. */
	err = egd_capture_set_phase(d, p);
	if (err) {
		egd_err("setting the %s phase: %s; staying in %s", egd_capture_name(d),
			strerror(-err), egd_phase_name(d->phase));
		return;
	}
	if (p == d->phase)
		return;
	/* Then the daemon: each worker re-judges its own tunnels, worker 0
	 * here, the others when their eventfd wakes them. */
	__atomic_store_n(&d->phase, p, __ATOMIC_RELEASE);
	d->phase_changes++;
	egd_info("phase: %s (%s)", egd_phase_name(p), why);
	if (d->n_workers) {
		egd_engine_phase_changed(&d->workers[0]);
		egd_daemon_kick_workers(d);
	}
}

static void check(struct egd_daemon *d, const char *why)
{
	enum egd_phase p = sentinel_phase(d);

	if (p != d->phase)
		egd_phase_set(d, p, why);
}

static int add_watch(struct egd_daemon *d)
{
	char dir[PATH_MAX];

	snprintf(dir, sizeof(dir), "%s", d->cfg.sentinel);
	d->inotify_wd = inotify_add_watch(d->inotify.fd, dirname(dir),
					  IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO |
						  IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF);
	return d->inotify_wd < 0 ? -errno : 0;
}

static void on_inotify(struct egd_watch *w, uint32_t events)
{
	struct egd_daemon *d = (struct egd_daemon *)((char *)w - offsetof(struct egd_daemon, inotify));
	char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
	int rewatch = 0;

	(void)events;
	for (;;) {
		ssize_t n = read(w->fd, buf, sizeof(buf));

		if (n <= 0)
			break;
		for (char *p = buf; p < buf + n;) {
			struct inotify_event *ev = (struct inotify_event *)p;

			if (ev->mask & (IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF))
				rewatch = 1;
			p += sizeof(*ev) + ev->len;
		}
	}
	if (rewatch)
		d->inotify_wd = -1; /* the directory went away; the poll takes over */
	check(d, "sentinel changed");
}

static void on_poll(struct egd_timer *t)
{
	struct egd_daemon *d = (struct egd_daemon *)((char *)t - offsetof(struct egd_daemon, phase_poll));

	if (d->inotify_wd < 0 && d->inotify.fd >= 0 && add_watch(d) == 0)
		egd_debug("watching the sentinel directory again");
	check(d, "sentinel poll");
	egd_timer_arm(d->loop, t,
		      egd_now_ms() + (d->inotify_wd >= 0 ? PHASE_POLL_MS : PHASE_POLL_NO_INOTIFY_MS));
}

int egd_phase_start(struct egd_daemon *d)
{
	int err;

	if (d->cfg.phase_source == EGD_PHASE_FIXED) {
		egd_phase_set(d, d->cfg.fixed_phase, "fixed by EGRESSD_PHASE");
		/* egd_phase_set skips the BPF write when unchanged; force it. */
		return egd_capture_set_phase(d, d->phase);
	}
	d->inotify.fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	d->inotify.cb = on_inotify;
	d->inotify_wd = -1;
	if (d->inotify.fd < 0) {
		egd_warn("inotify: %s; polling the sentinel every %d ms", strerror(errno),
			 PHASE_POLL_NO_INOTIFY_MS);
	} else {
		err = egd_loop_add(d->loop, &d->inotify, EPOLLIN);
		if (err)
			return err;
		if (add_watch(d))
			egd_warn("cannot watch the directory of %s (%s); polling every %d ms",
				 d->cfg.sentinel, strerror(errno), PHASE_POLL_NO_INOTIFY_MS);
	}
	d->phase_poll.cb = on_poll;
	d->phase = sentinel_phase(d);
	err = egd_capture_set_phase(d, d->phase);
	if (err)
		return err;
	egd_info("phase: %s (sentinel %s %s)", egd_phase_name(d->phase), d->cfg.sentinel,
		 d->phase == EGD_PHASE_VERIFICATION ? "present" : "absent");
	return egd_timer_arm(d->loop, &d->phase_poll,
			     egd_now_ms() + (d->inotify_wd >= 0 ? PHASE_POLL_MS :
								  PHASE_POLL_NO_INOTIFY_MS));
}
