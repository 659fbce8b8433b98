/* SPDX-License-Identifier: MIT */
/* Load, attach, pin and open the BPF datapath; see bpf.h. */
#include "datapath/bpf.h"
#include "datapath/cgroup.h"
#include "core/log.h"
#include "egressd.skel.h"

#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <dirent.h>
#include <bpf/libbpf.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#define BPF_FS_MAGIC_NUMBER 0xcafe4a11

static const char *const map_names[] = {
	"phase_map", "config_map", "exempt_map",     "counters",   "orig_by_tuple",
	"sockhash",  "deny_map",   "loopback_ports", "icaddr_map",
};
#define N_MAPS (sizeof(map_names) / sizeof(map_names[0]))

const char *egd_counter_name(enum egd_counter c)
{
	static const char *const names[EGD_CNT_MAX] = {
		[EGD_CNT_TCP_REDIRECTED] = "tcp_redirected",
		[EGD_CNT_TCP_LOOPBACK] = "tcp_loopback",
		[EGD_CNT_EXEMPT] = "exempt",
		[EGD_CNT_DNS_REDIRECTED] = "dns_redirected",
		[EGD_CNT_UDP_ALLOWED_VERIFICATION] = "udp_allowed_verification",
		[EGD_CNT_UDP_ALLOWED_LOOPBACK] = "udp_allowed_loopback",
		[EGD_CNT_UDP_DENIED] = "udp_denied",
		[EGD_CNT_SOCK_DENIED] = "socket_denied",
		[EGD_CNT_OTHER_DENIED] = "other_proto_denied",
		[EGD_CNT_ORIG_RECORD_FAILED] = "record_failed",
		[EGD_CNT_DNS_REPLY_RESTORED] = "dns_reply_restored",
		[EGD_CNT_DENY_CIDR] = "deny_cidr_refused",
		[EGD_CNT_LOOPBACK_DENIED] = "loopback_port_refused",
		[EGD_CNT_SOCKOPT_DENIED] = "sockopt_refused",
		[EGD_CNT_UDP_INTERCEPT_DENIED] = "udp_intercept_refused",
		[EGD_CNT_BACKSTOP_DROPPED] = "backstop_dropped",
	};

	return c < EGD_CNT_MAX && names[c] ? names[c] : "?";
}

static int is_bpffs(const char *path)
{
	struct statfs st;

	return statfs(path, &st) == 0 && (unsigned long)st.f_type == BPF_FS_MAGIC_NUMBER;
}

int egd_bpffs_ensure(const char *pin_dir)
{
	char parent[PATH_MAX];
	char *slash;

	snprintf(parent, sizeof(parent), "%s", pin_dir);
	/* Walk up to the deepest directory that exists. */
	while (access(parent, F_OK) != 0) {
		slash = strrchr(parent, '/');
		if (!slash || slash == parent)
			break;
		*slash = '\0';
	}
	if (is_bpffs(parent))
		return 0;
	if (strncmp(pin_dir, "/sys/fs/bpf/", 12) == 0 && !is_bpffs("/sys/fs/bpf")) {
		if (mount("bpf", "/sys/fs/bpf", "bpf", 0, "mode=0700")) {
			egd_err("mounting bpffs on /sys/fs/bpf: %s", strerror(errno));
			return -errno;
		}
		egd_info("mounted bpffs on /sys/fs/bpf");
		return 0;
	}
	egd_err("%s is not on a bpf filesystem (mount -t bpf bpf DIR)", parent);
	return -ENOTSUP;
}

static int mkdirs(const char *path, mode_t mode)
{
	char buf[PATH_MAX];

	snprintf(buf, sizeof(buf), "%s", path);
	for (char *p = buf + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(buf, mode) && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	if (mkdir(buf, mode) && errno != EEXIST)
		return -errno;
	return 0;
}

static int pin_path(char *buf, size_t len, const char *dir, const char *kind, const char *name)
{
	int n = snprintf(buf, len, "%s/%s/%s", dir, kind, name);

	return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

/*
 * The LSM hook that refuses packet sockets needs BPF LSM in the running
 * kernel. Without it the agent must lack CAP_NET_RAW (which a container
 * without privileges does): say so, and go on.
 */
static int attach_lsm(struct egressd *skel, int cg_fd, const char *pin_dir)
{
	struct bpf_program *prog = skel->progs.egd_lsm_socket_create;
	struct bpf_link *link;
	char path[PATH_MAX];
	int err;

	if (!bpf_program__autoload(prog)) {
		egd_warn("BPF LSM unavailable here: packet sockets are not refused by egressd; "
			 "run the agent without CAP_NET_RAW");
		return 0;
	}
	link = bpf_program__attach_cgroup(prog, cg_fd);
	if (!link) {
		err = -errno;
		egd_err("attaching %s: %s", bpf_program__name(prog), strerror(-err));
		return err;
	}
	err = pin_path(path, sizeof(path), pin_dir, "links", bpf_program__name(prog));
	if (!err)
		err = bpf_link__pin(link, path);
	bpf_link__destroy(link);
	return err;
}

static int print_quiet(enum libbpf_print_level level, const char *fmt, va_list ap)
{
	(void)level;
	(void)fmt;
	(void)ap;
	return 0;
}

static int bpf_lsm_active(void)
{
	char buf[512] = "";
	FILE *f = fopen("/sys/kernel/security/lsm", "re");

	if (!f)
		return 0;
	if (!fgets(buf, sizeof(buf), f))
		buf[0] = '\0';
	fclose(f);
	for (char *tok = strtok(buf, ",\n"); tok; tok = strtok(NULL, ",\n"))
		if (strcmp(tok, "bpf") == 0)
			return 1;
	return 0;
}

/* Every program with its link, in attach order: the backstop first, so
 * nothing the socket hooks let through slips out while they are attached.
 * sk_msg is not a cgroup program and is handled apart. */
static int attach_cgroup_progs(struct egressd *skel, int cg_fd, const char *pin_dir,
			       int backstop_only)
{
	struct bpf_program *progs[] = {
		skel->progs.egd_backstop,     skel->progs.egd_sock_create,
		skel->progs.egd_setsockopt,   skel->progs.egd_connect4,
		skel->progs.egd_connect6,     skel->progs.egd_sendmsg4,
		skel->progs.egd_sendmsg6,     skel->progs.egd_recvmsg4,
		skel->progs.egd_recvmsg6,     skel->progs.egd_getpeername4,
		skel->progs.egd_getpeername6, skel->progs.egd_sockops,
	};
	size_t n = backstop_only ? 1 : sizeof(progs) / sizeof(progs[0]);
	char path[PATH_MAX];

	for (size_t i = 0; i < n; i++) {
		const char *name = bpf_program__name(progs[i]);
		struct bpf_link *link = bpf_program__attach_cgroup(progs[i], cg_fd);
		int err;

		if (!link) {
			err = -errno;
			egd_err("attaching %s: %s", name, strerror(-err));
			return err;
		}
		err = pin_path(path, sizeof(path), pin_dir, "links", name);
		if (!err)
			err = bpf_link__pin(link, path);
		bpf_link__destroy(link); /* the pin keeps it attached */
		if (err) {
			egd_err("pinning link %s at %s: %s", name, path, strerror(-err));
			return err;
		}
	}
	return backstop_only ? 0 : attach_lsm(skel, cg_fd, pin_dir);
}

static int write_initial_state(struct egressd *skel, const struct egd_attach_opts *o)
{
	__u32 zero = 0, agent = EGD_PHASE_AGENT;
	struct egd_config cfg = {
		.listen_port = htons(EGD_DEFAULT_LISTEN_PORT),
		.dns_port = htons(o->dns_port ? o->dns_port : EGD_DEFAULT_DNS_PORT),
		.flags = o->accel ? EGD_CFG_ACCEL : 0,
	};
	char self[PATH_MAX];
	__u8 one = 1;
	int err;

	if (egd_cgroup_of_pid(0, self, sizeof(self)) == 0) {
		uint64_t id;

		if (egd_cgroup_id(self, &id) == 0)
			cfg.daemon_cgroup_id = id;
	}
	err = bpf_map__update_elem(skel->maps.phase_map, &zero, sizeof(zero), &agent,
				   sizeof(agent), BPF_ANY);
	if (!err)
		err = bpf_map__update_elem(skel->maps.config_map, &zero, sizeof(zero), &cfg,
					   sizeof(cfg), BPF_ANY);
	for (size_t i = 0; !err && i < o->n_exempt; i++) {
		uint64_t id;

		err = egd_cgroup_id(o->exempt[i], &id);
		if (err) {
			egd_err("exempt cgroup %s: %s", o->exempt[i], strerror(-err));
			return err;
		}
		err = bpf_map__update_elem(skel->maps.exempt_map, &id, sizeof(id), &one,
					   sizeof(one), BPF_ANY);
	}
	for (size_t i = 0; !err && i < o->n_deny; i++)
		err = bpf_map__update_elem(skel->maps.deny_map, &o->deny[i], sizeof(o->deny[i]),
					   &one, sizeof(one), BPF_ANY);
	for (size_t i = 0; !err && i < o->n_loopback_ports; i++) {
		__u16 port = o->loopback_ports[i];

		err = bpf_map__update_elem(skel->maps.loopback_ports, &port, sizeof(port), &one,
					   sizeof(one), BPF_ANY);
	}
	if (err)
		egd_err("writing initial map state: %s", strerror(-err));
	return err;
}

int egd_bpf_attach(const struct egd_attach_opts *o)
{
	struct egressd *skel = NULL;
	char path[PATH_MAX];
	struct bpf_map *map;
	int cg_fd = -1, err;

	if (o->n_exempt > EGD_EXEMPT_MAX_ENTRIES || o->n_deny > EGD_DENY_MAX_ENTRIES ||
	    o->n_loopback_ports > EGD_LOOPBACK_PORTS_MAX_ENTRIES)
		return -E2BIG;
	/* Always-deny without its defaults would open cloud metadata: the
	 * caller passes egd_deny_cidrs(), which starts with them. */
	if (!o->n_deny) {
		egd_err("no always-deny prefixes given (a bug: the defaults are missing)");
		return -EINVAL;
	}
	/*
	 * The sk_msg path stays off until it is both correct and faster (see
	 * bench/README.md): the daemon's sockets are never in the SOCKHASH, so
	 * nothing is redirected, the agent's socket pays the sockmap's cost
	 * anyway, and a blocking recv() on it can return EAGAIN, which clients
	 * treat as fatal. The last is the kernel's: any socket in a sockmap
	 * with an sk_msg program gets tcp_bpf_recvmsg(), which gives up after
	 * one wake-up with nothing queued (bench/sockmap_probe.c shows it with
	 * a program that redirects nothing). The agent's socket must be in the
	 * map for the fast path to see its sends, so no daemon-side fix exists.
	 * Refusing is better than an agent that breaks.
	 */
	if (o->accel) {
		egd_err("--accel on: experimental fast path disabled: the sk_msg redirect has "
			"no peer socket to reach and breaks blocking recv() in the agent; "
			"attach with --accel off");
		return -EOPNOTSUPP;
	}
	err = pin_path(path, sizeof(path), o->pin_dir, "links", "egd_connect4");
	if (err)
		return err;
	if (access(path, F_OK) == 0) {
		egd_err("already attached at %s (egressd detach --pin %s first)", o->pin_dir,
			o->pin_dir);
		return -EEXIST;
	}
	err = egd_bpffs_ensure(o->pin_dir);
	if (err)
		return err;

	cg_fd = open(o->cgroup, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (cg_fd < 0) {
		err = -errno;
		egd_err("cgroup %s: %s", o->cgroup, strerror(-err));
		return err;
	}

	/* The LSM program is the one a kernel may refuse (no BPF LSM, or
	 * lockdown): without it, load the rest rather than nothing. */
	for (int with_lsm = bpf_lsm_active(); ; with_lsm = 0) {
		skel = egressd__open();
		if (!skel) {
			err = -errno;
			egd_err("opening BPF object: %s", strerror(-err));
			goto err_close_cg;
		}
		skel->rodata->accel_enabled = o->accel ? 1 : 0;
		if (!o->accel)
			bpf_program__set_autoload(skel->progs.egd_sk_msg, false);
		if (!with_lsm)
			bpf_program__set_autoload(skel->progs.egd_lsm_socket_create, false);
		/* A refused LSM program is expected on some kernels: keep its
		 * verifier chatter out of the operator's way. */
		libbpf_print_fn_t old = with_lsm ? libbpf_set_print(print_quiet) : NULL;

		err = egressd__load(skel);
		if (with_lsm)
			libbpf_set_print(old);
		if (!err || !with_lsm)
			break;
		egd_debug("loading the BPF LSM program: %s", strerror(-err));
		egressd__destroy(skel);
	}
	if (err) {
		egd_err("loading BPF programs: %s (needs root or CAP_BPF+CAP_NET_ADMIN, and a "
			"kernel with BTF)",
			strerror(-err));
		goto err_destroy;
	}

	char sub[PATH_MAX];
	const char *kinds[] = { "maps", "links", "prog" };

	for (size_t i = 0; i < 3; i++) {
		snprintf(sub, sizeof(sub), "%s/%s", o->pin_dir, kinds[i]);
		err = mkdirs(sub, 0700);
		if (err) {
			egd_err("creating %s: %s", sub, strerror(-err));
			goto err_destroy;
		}
	}
	bpf_object__for_each_map(map, skel->obj)
	{
		const char *name = bpf_map__name(map);

		if (strchr(name, '.')) /* .rodata and friends are not shared state */
			continue;
		err = pin_path(path, sizeof(path), o->pin_dir, "maps", name);
		if (!err)
			err = bpf_map__pin(map, path);
		if (err) {
			egd_err("pinning map %s: %s", name, strerror(-err));
			goto err_unpin;
		}
	}
	err = write_initial_state(skel, o);
	if (err)
		goto err_unpin;
	if (o->accel) {
		err = bpf_prog_attach(bpf_program__fd(skel->progs.egd_sk_msg),
				      bpf_map__fd(skel->maps.sockhash), BPF_SK_MSG_VERDICT, 0);
		if (err) {
			err = -errno;
			egd_err("attaching sk_msg to sockhash: %s", strerror(-err));
			goto err_unpin;
		}
		pin_path(path, sizeof(path), o->pin_dir, "prog", "egd_sk_msg");
		bpf_program__pin(skel->progs.egd_sk_msg, path);
	}
	err = attach_cgroup_progs(skel, cg_fd, o->pin_dir, o->backstop_only);
	if (err)
		goto err_unpin;

	egressd__destroy(skel);
	close(cg_fd);
	egd_info("attached to %s, pinned under %s%s%s", o->cgroup, o->pin_dir,
		 o->accel ? " (sk_msg fast path on)" : "",
		 o->backstop_only ? " (TEST SWITCH: packet backstop only, no socket hooks)" : "");
	return 0;

err_unpin:
	egd_bpf_detach(o->pin_dir);
err_destroy:
	egressd__destroy(skel);
err_close_cg:
	close(cg_fd);
	return err;
}

static void unlink_dir(const char *dir, const char *kind)
{
	char sub[PATH_MAX], path[PATH_MAX + 256];
	struct dirent *de;
	DIR *d;

	snprintf(sub, sizeof(sub), "%s/%s", dir, kind);
	d = opendir(sub);
	if (!d)
		return;
	while ((de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue;
		if ((size_t)snprintf(path, sizeof(path), "%s/%s", sub, de->d_name) >= sizeof(path))
			continue;
		if (unlink(path))
			egd_warn("removing %s: %s", path, strerror(errno));
	}
	closedir(d);
	rmdir(sub);
}

int egd_bpf_detach(const char *pin_dir)
{
	char path[PATH_MAX];

	snprintf(path, sizeof(path), "%s/maps", pin_dir);
	if (access(pin_dir, F_OK)) {
		egd_err("nothing attached at %s", pin_dir);
		return -ENOENT;
	}
	/* Links first: once they are gone nothing new is captured. */
	unlink_dir(pin_dir, "links");
	unlink_dir(pin_dir, "prog");
	unlink_dir(pin_dir, "maps");
	if (rmdir(pin_dir) && errno != ENOENT)
		egd_warn("removing %s: %s", pin_dir, strerror(errno));
	return 0;
}

/* The descriptors of @b, in the order of map_names. */
#define MAP_FDS(b)                                                                                 \
	{                                                                                          \
		&(b)->phase_fd, &(b)->config_fd, &(b)->exempt_fd, &(b)->counters_fd,               \
			&(b)->orig_fd, &(b)->sockhash_fd, &(b)->deny_fd, &(b)->loopback_fd,        \
			&(b)->icaddr_fd                                                            \
	}

void egd_bpf_init(struct egd_bpf *b)
{
	int *fds[N_MAPS] = MAP_FDS(b);

	for (size_t i = 0; i < N_MAPS; i++)
		*fds[i] = -1;
}

int egd_bpf_open(struct egd_bpf *b, const char *pin_dir)
{
	int *fds[N_MAPS] = MAP_FDS(b);
	char path[PATH_MAX];

	egd_bpf_init(b);
	snprintf(b->pin_dir, sizeof(b->pin_dir), "%s", pin_dir);
	for (size_t i = 0; i < N_MAPS; i++) {
		int err = pin_path(path, sizeof(path), pin_dir, "maps", map_names[i]);

		if (!err) {
			*fds[i] = bpf_obj_get(path);
			if (*fds[i] < 0)
				err = -errno;
		}
		if (err) {
			if (err == -ENOENT)
				egd_err("no egressd attachment at %s (run egressd attach first)",
					pin_dir);
			else
				egd_err("opening %s: %s", path, strerror(-err));
			egd_bpf_close(b);
			return err;
		}
	}
	return 0;
}

void egd_bpf_close(struct egd_bpf *b)
{
	if (!b)
		return;

	int *fds[N_MAPS] = MAP_FDS(b);

	for (size_t i = 0; i < N_MAPS; i++) {
		if (*fds[i] >= 0)
			close(*fds[i]);
		*fds[i] = -1;
	}
}

int egd_bpf_attached(const struct egd_bpf *b)
{
	char path[PATH_MAX];

	if (pin_path(path, sizeof(path), b->pin_dir, "links", "egd_connect4"))
		return 0;
	return access(path, F_OK) == 0;
}

int egd_bpf_set_phase(struct egd_bpf *b, enum egd_phase phase)
{
	__u32 zero = 0, v = phase;

	return bpf_map_update_elem(b->phase_fd, &zero, &v, BPF_ANY) ? -errno : 0;
}

int egd_bpf_get_phase(struct egd_bpf *b, enum egd_phase *phase)
{
	__u32 zero = 0, v = 0;

	if (bpf_map_lookup_elem(b->phase_fd, &zero, &v))
		return -errno;
	*phase = v == EGD_PHASE_VERIFICATION ? EGD_PHASE_VERIFICATION : EGD_PHASE_AGENT;
	return 0;
}

int egd_bpf_exempt_add(struct egd_bpf *b, uint64_t cgroup_id)
{
	__u8 one = 1;

	return bpf_map_update_elem(b->exempt_fd, &cgroup_id, &one, BPF_ANY) ? -errno : 0;
}

int egd_bpf_get_config(struct egd_bpf *b, struct egd_config *cfg)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(b->config_fd, &zero, cfg) ? -errno : 0;
}

int egd_bpf_set_config(struct egd_bpf *b, const struct egd_config *cfg)
{
	__u32 zero = 0;

	return bpf_map_update_elem(b->config_fd, &zero, cfg, BPF_ANY) ? -errno : 0;
}

int egd_bpf_counters(struct egd_bpf *b, uint64_t out[EGD_CNT_MAX])
{
	int ncpu = libbpf_num_possible_cpus();
	__u64 *vals;

	if (ncpu <= 0)
		return -EINVAL;
	vals = calloc((size_t)ncpu, sizeof(*vals));
	if (!vals)
		return -ENOMEM;
	for (__u32 i = 0; i < EGD_CNT_MAX; i++) {
		out[i] = 0;
		if (bpf_map_lookup_elem(b->counters_fd, &i, vals))
			continue;
		for (int c = 0; c < ncpu; c++)
			out[i] += vals[c];
	}
	free(vals);
	return 0;
}

int egd_bpf_orig_take(struct egd_bpf *b, const struct egd_tuple *t, struct egd_orig *out)
{
	if (bpf_map_lookup_and_delete_elem(b->orig_fd, t, out) == 0)
		return 0;
	/* Older kernels lack lookup-and-delete on hash maps. */
	if (errno == EINVAL || errno == 524 /* ENOTSUPP */ || errno == EOPNOTSUPP) {
		if (bpf_map_lookup_elem(b->orig_fd, t, out))
			return -errno;
		bpf_map_delete_elem(b->orig_fd, t);
		return 0;
	}
	return -errno;
}

int egd_bpf_sockhash_add(struct egd_bpf *b, const struct egd_tuple *t, int fd)
{
	__u64 v = (__u64)fd;

	return bpf_map_update_elem(b->sockhash_fd, t, &v, BPF_ANY) ? -errno : 0;
}

int egd_bpf_icaddr_put(struct egd_bpf *b, const struct egd_ip *ip, uint64_t expires_ns)
{
	struct egd_icaddr v = { .expires_ns = expires_ns };
	struct egd_ip k = { .family = ip->family };

	if (ip->family == EGD_AF_INET) {
		k.addr[0] = ip->addr[0];
	} else if (ip->family == EGD_AF_INET6 && !ip->addr[0] && !ip->addr[1] &&
		   ip->addr[2] == htonl(0x0000ffff)) {
		/* The kernel judges a v4-mapped destination as v4. */
		k.family = EGD_AF_INET;
		k.addr[0] = ip->addr[3];
	} else if (ip->family == EGD_AF_INET6) {
		memcpy(k.addr, ip->addr, sizeof(k.addr));
	} else {
		return -EAFNOSUPPORT;
	}
	return bpf_map_update_elem(b->icaddr_fd, &k, &v, BPF_ANY) ? -errno : 0;
}

int egd_bpf_loopback_allow(struct egd_bpf *b, uint16_t port)
{
	__u8 one = 1;

	if (!port)
		return -EINVAL;
	return bpf_map_update_elem(b->loopback_fd, &port, &one, BPF_ANY) ? -errno : 0;
}

/* Every key of the map behind @fd (key size @ksz) into @out, at most @max. */
static int map_keys(int fd, void *out, size_t ksz, size_t max)
{
	char *o = out;
	size_t n = 0;
	void *prev = NULL;

	while (n < max && bpf_map_get_next_key(fd, prev, o + n * ksz) == 0) {
		prev = o + n * ksz;
		n++;
	}
	if (n < max && errno != ENOENT)
		return -errno;
	return (int)n;
}

int egd_bpf_deny_list(struct egd_bpf *b, struct egd_lpm_key *out, size_t max)
{
	return map_keys(b->deny_fd, out, sizeof(*out), max);
}

int egd_bpf_loopback_ports(struct egd_bpf *b, uint16_t *out, size_t max)
{
	return map_keys(b->loopback_fd, out, sizeof(*out), max);
}
