/* SPDX-License-Identifier: MIT */
/*
 * The phase follows the sentinel file: present means verification, absent
 * means agent. inotify on the sentinel's directory sees a file created later
 * at once; a slow poll backs it up (and replaces it when the directory does
 * not exist yet), so a missed event costs at most PHASE_POLL_MS.
 *
 * Only the platform may switch the phase, never the agent. So the sentinel's
 * directory must be one the sandbox cannot write: private to root or the
 * daemon's user (checked at start, with every directory above it), or, when
 * others can write it (/tmp), one the sandbox does not see (the daemon's own
 * mount namespace, a container, or `egressd exec`'s command, which gets the
 * directory hidden). A sentinel owned by anyone but root or the daemon's
 * user, or found in a directory swapped in after start, is ignored and
 * audited.
 */
#include "egress/daemon.h"
#include "core/log.h"

#include <errno.h>
#include <jansson.h>
#include <libgen.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

/* Backup poll with a working inotify watch, and the poll without one. The
 * second keeps the promise that the BPF map follows within 100 ms. */
#define PHASE_POLL_MS 1000
#define PHASE_POLL_NO_INOTIFY_MS 50

/* The inode of the initial pid namespace (PROC_PID_INIT_INO in the kernel's
 * include/linux/proc_ns.h, not exported to userspace): fixed, so a daemon can
 * tell whether it runs in a pid namespace of its own. */
#define PROC_PID_INIT_INO 0xEFFFFFFCU

static int trusted_uid(uid_t owner, uid_t uid)
{
	return owner == 0 || owner == uid;
}

int egd_sentinel_dir_check(const char *dir, uid_t uid, char *why, size_t len)
{
	char path[PATH_MAX], *slash;
	struct stat st;
	int first = 1;

	if (!realpath(dir, path)) {
		snprintf(why, len, "%s: %s", dir, strerror(errno));
		return -errno;
	}
	for (;;) {
		if (stat(path, &st)) {
			snprintf(why, len, "%s: %s", path, strerror(errno));
			return -errno;
		}
		if (!S_ISDIR(st.st_mode)) {
			snprintf(why, len, "%s is not a directory", path);
			return -ENOTDIR;
		}
		if (first && (!trusted_uid(st.st_uid, uid) || (st.st_mode & (S_IWGRP | S_IWOTH)))) {
			snprintf(why, len, "%s (owner uid %u, mode %04o) is writable by others",
				 path, (unsigned int)st.st_uid, (unsigned int)(st.st_mode & 07777));
			return 1;
		}
		/* Above it: another user who may write there (and is not held
		 * back by the sticky bit) can rename the directory away and put
		 * one of their own in its place. */
		if (!first && (!trusted_uid(st.st_uid, uid) ||
			       ((st.st_mode & (S_IWGRP | S_IWOTH)) && !(st.st_mode & S_ISVTX)))) {
			snprintf(why, len,
				 "%s, above the sentinel's directory, (owner uid %u, mode %04o) "
				 "lets others replace it",
				 path, (unsigned int)st.st_uid, (unsigned int)(st.st_mode & 07777));
			return -EPERM;
		}
		if (strcmp(path, "/") == 0)
			return 0;
		slash = strrchr(path, '/');
		if (slash == path)
			slash[1] = '\0';
		else
			*slash = '\0';
		first = 0;
	}
}

/*
 * Whether the host's processes see @dir (as the daemon sees it, @mine) as
 * the same directory: 1 yes, 0 no, -errno when the daemon cannot tell. In a
 * pid namespace of its own the daemon is in a container, whose /tmp is its
 * own unless a volume shares it (the deployment's business: see
 * deploy/compose/check.sh). In the host's pid namespace, pid 1's root shows
 * the host's view.
 */
static int dir_shared_with_host(const char *dir, const struct stat *mine)
{
	char path[PATH_MAX + 16];
	struct stat st;

	if (stat("/proc/self/ns/pid", &st))
		return -errno;
	if (st.st_ino != PROC_PID_INIT_INO)
		return 0;
	snprintf(path, sizeof(path), "/proc/1/root%s", dir);
	if (stat(path, &st))
		return errno == ENOENT ? 0 : -errno;
	return st.st_dev == mine->st_dev && st.st_ino == mine->st_ino;
}

/* One audit line for a sentinel that does not count, beside the decisions. */
static void audit_ignored(const struct egd_daemon *d, const struct stat *st, const char *reason)
{
	char ts[40];
	json_t *o;
	char *line;

	egd_timestamp(ts, sizeof(ts));
	o = json_pack("{s:s, s:s, s:s, s:s, s:I, s:s, s:s}", "ts", ts, "event", "sentinel", "phase",
		      egd_phase_name(d->phase), "path", d->cfg.sentinel, "uid",
		      (json_int_t)st->st_uid, "verdict", "ignored", "reason", reason);
	line = o ? json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII) : NULL;
	if (line) {
		FILE *f = egd_audit_stream();

		egd_audit_flush(); /* this thread's decisions first, in order */
		flockfile(f);
		fprintf(f, "%s\n", line);
		fflush(f);
		funlockfile(f);
	}
	free(line);
	json_decref(o);
}

static void ignore(struct egd_daemon *d, const struct stat *st, const char *reason,
		   const char *words)
{
	if (d->ignored_ino == st->st_ino && d->ignored_uid == st->st_uid &&
	    d->ignored_ctime == st->st_ctime)
		return;
	d->ignored_ino = st->st_ino;
	d->ignored_uid = st->st_uid;
	d->ignored_ctime = st->st_ctime;
	egd_warn("SECURITY: sentinel %s ignored: %s; staying in the %s phase", d->cfg.sentinel,
		 words, egd_phase_name(d->phase));
	audit_ignored(d, st, reason);
}

static enum egd_phase sentinel_phase(struct egd_daemon *d)
{
	struct stat st, dir;
	char words[96];

	if (lstat(d->cfg.sentinel, &st))
		return EGD_PHASE_AGENT;
	if (stat(d->sentinel_dir, &dir) || dir.st_dev != d->sentinel_dir_dev ||
	    dir.st_ino != d->sentinel_dir_ino) {
		ignore(d, &st, "directory-replaced",
		       "its directory is not the one checked at start");
		return EGD_PHASE_AGENT;
	}
	if (!trusted_uid(st.st_uid, geteuid())) {
		snprintf(words, sizeof(words), "owned by uid %u, not root or the daemon's uid %u",
			 (unsigned int)st.st_uid, (unsigned int)geteuid());
		ignore(d, &st, "owner", words);
		return EGD_PHASE_AGENT;
	}
	return EGD_PHASE_VERIFICATION;
}

/*
 * At start: the sentinel's directory must exist and be out of the sandbox's
 * reach (see the top of this file). Its path is resolved once, so a symlink
 * swapped in later is not followed.
 */
static int check_sentinel_dir(struct egd_daemon *d)
{
	char dir[PATH_MAX], base[PATH_MAX], why[PATH_MAX + 128];
	struct stat st;
	int rc, shared;

	snprintf(dir, sizeof(dir), "%s", d->cfg.sentinel);
	snprintf(base, sizeof(base), "%s", d->cfg.sentinel);
	rc = egd_sentinel_dir_check(dirname(dir), geteuid(), why, sizeof(why));
	if (rc < 0) {
		egd_err("sentinel %s: %s. The sentinel's directory must exist and be out of the "
			"sandbox's reach",
			d->cfg.sentinel, why);
		return rc;
	}
	if (!realpath(dir, d->sentinel_dir) || stat(d->sentinel_dir, &st))
		return -errno;
	if (rc == 1) {
		shared = d->cfg.sentinel_hidden ? 0 : dir_shared_with_host(d->sentinel_dir, &st);
		if (shared) {
			egd_err("sentinel %s: %s, and the sandbox may share it (%s), so an agent "
				"could create the sentinel and open the network itself. Use a "
				"directory only root or uid %u can write (e.g. --sentinel "
				"/run/egressd/egress-unlocked), or run the daemon where the "
				"directory is its own (a container's /tmp; egressd exec hides it "
				"from its command)",
				d->cfg.sentinel, why,
				shared < 0 ? "the daemon cannot tell whether it does" :
					     "this is the host's own directory",
				(unsigned int)geteuid());
			return -EPERM;
		}
		egd_info("sentinel %s: %s, but the sandbox does not see it (%s)", d->cfg.sentinel,
			 why,
			 d->cfg.sentinel_hidden ? "EGRESSD_SENTINEL_HIDDEN: egressd exec hides it" :
						  "the daemon's own mount namespace");
	}
	d->sentinel_dir_dev = st.st_dev;
	d->sentinel_dir_ino = st.st_ino;
	snprintf(d->cfg.sentinel, sizeof(d->cfg.sentinel), "%s/%s",
		 strcmp(d->sentinel_dir, "/") ? d->sentinel_dir : "", basename(base));
	return 0;
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
	err = check_sentinel_dir(d);
	if (err)
		return err;
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
