/* SPDX-License-Identifier: MIT */
/*
 * egressd: the command line. Each subcommand is a thin layer over the
 * datapath (attach, detach, phase, status), the daemon (run) or both
 * (exec, the local mode).
 */
#include "core/caps.h"
#include "core/config.h"
#include "core/log.h"
#include "datapath/bpf.h"
#include "datapath/cgroup.h"
#include "datapath/nft.h"
#include "datapath/rules.h"
#include "egress/daemon.h"
#include "proxy/ca.h"
#include "proxy/proxy_config.h"
#include "router/router.h"
#include "router/router_config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <libgen.h>
#include <limits.h>
#include <linux/capability.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

/* How long exec waits for its daemon to listen before giving up. */
#define EXEC_READY_TIMEOUT_MS 10000
#define EGD_VERSION "0.1.0"

static void usage(FILE *out)
{
	fprintf(out, "egressd " EGD_VERSION " - egress enforcement for agent sandboxes\n\n"
		     "usage:\n"
		     "  egressd attach --cgroup PATH [--exempt-cgroup PATH]... [--pin DIR]\n"
		     "                 [--accel on|off] [--dns-listen ADDR:PORT,...]\n"
		     "                 [--deny-cidrs CIDR,...] [--loopback-allow PORT,...]\n"
		     "  egressd detach [--pin DIR]\n"
		     "  egressd run [SETTINGS]\n"
		     "  egressd exec [--phase agent|verification] [SETTINGS] -- CMD [ARG]...\n"
		     "  egressd phase [--pin DIR]\n"
		     "  egressd status [--pin DIR]\n"
		     "  egressd nft-remove        remove the nftables fallback ruleset\n"
		     "  egressd router [ROUTER SETTINGS]   the sandboxes' ingress router\n\n"
		     "settings (flag, environment variable, [default]):\n");
	egd_config_usage(out);
	fprintf(out, "\nrouter settings (flag, environment variable, [default]):\n");
	egd_router_config_usage(out);
	fprintf(out,
		"\nattach reads EGRESSD_DNS_LISTEN (the policy DNS port the kernel sends all "
		"DNS to, default %d), EGRESSD_DENY_CIDRS, EGRESSD_LOOPBACK_ALLOW and "
		"EGRESSD_PROXY_HTTP_LISTEN (its port is reachable on loopback).\n",
		EGD_DEFAULT_DNS_PORT);
}

/* The kernel side's lists, filled by kernel_settings() for egd_bpf_attach(). */
struct kernel_lists {
	struct egd_lpm_key deny[EGD_DENY_MAX_ENTRIES];
	uint16_t ports[EGD_LOOPBACK_PORTS_MAX_ENTRIES];
};

/*
 * The settings the kernel side is attached with: the policy DNS port, the
 * always-deny prefixes (defaults + @deny), the loopback ports of the agent
 * phase (@loopback + the policy proxy's HTTP port, @proxy_http). NULL means
 * unset. Messages name the variable; returns 0 or -EINVAL.
 */
static int kernel_settings(struct egd_attach_opts *o, struct kernel_lists *l, const char *dns,
			   const char *deny, const char *loopback, const char *proxy_http)
{
	struct egd_addr a;
	int n;

	if (egd_dns_listen_port(dns, &o->dns_port)) {
		egd_err("bad EGRESSD_DNS_LISTEN \"%s\": expected ADDR:PORT items on 127.0.0.0/8 or "
			"::1, all with the same port",
			dns);
		return -EINVAL;
	}
	n = egd_deny_cidrs(deny, l->deny, EGD_DENY_MAX_ENTRIES);
	if (n < 0) {
		egd_err("bad EGRESSD_DENY_CIDRS \"%s\": expected ADDR/LEN prefixes, comma "
			"separated (at most %d)",
			deny, EGD_NFT_DENY_MAX);
		return -EINVAL;
	}
	o->deny = l->deny;
	o->n_deny = (size_t)n;
	/* The same limit as nft mode's; the map keeps room for the policy
	 * proxy's port. */
	_Static_assert(EGD_NFT_LOOPBACK_ALLOW_MAX < EGD_LOOPBACK_PORTS_MAX_ENTRIES,
		       "loopback port map too small");
	n = egd_parse_port_list(loopback, l->ports, EGD_NFT_LOOPBACK_ALLOW_MAX);
	if (n < 0) {
		egd_err("bad EGRESSD_LOOPBACK_ALLOW \"%s\": expected ports, comma separated (at "
			"most %d)",
			loopback, EGD_NFT_LOOPBACK_ALLOW_MAX);
		return -EINVAL;
	}
	if (!proxy_http)
		proxy_http = EGD_PROXY_HTTP_LISTEN_DEFAULT;
	if (strcmp(proxy_http, "off") != 0) {
		if (egd_parse_hostport(proxy_http, &a)) {
			egd_err("bad EGRESSD_PROXY_HTTP_LISTEN \"%s\"", proxy_http);
			return -EINVAL;
		}
		l->ports[n++] = ntohs(a.port);
	}
	o->loopback_ports = l->ports;
	o->n_loopback_ports = (size_t)n;
#ifdef EGD_TEST_SWITCHES
	/* The e2e test of the backstop alone; not in builds with EGD_TEST_SWITCHES off
	 * (the Docker image). */
	o->backstop_only = getenv("EGRESSD_TEST_BACKSTOP_ONLY") &&
			   strcmp(getenv("EGRESSD_TEST_BACKSTOP_ONLY"), "1") == 0;
#endif
	return 0;
}

/*
 * An exempt cgroup that is the attached one, or one of its ancestors, frees
 * the agent: its processes are the sandbox, and an agent that can move
 * itself up the tree lands in it. Refused. A cgroup inside the attached one
 * (the tests' $CG/daemon, a pod's sidecar container) is allowed, since it is
 * named here on purpose.
 */
static int check_exempt(const char *cgroup, const char *const *exempt, size_t n)
{
	char cg[PATH_MAX], ex[PATH_MAX];

	if (!realpath(cgroup, cg)) {
		egd_err("cgroup %s: %s", cgroup, strerror(errno));
		return -errno;
	}
	for (size_t i = 0; i < n; i++) {
		enum egd_cgroup_rel rel;

		if (!realpath(exempt[i], ex)) {
			egd_err("exempt cgroup %s: %s", exempt[i], strerror(errno));
			return -errno;
		}
		rel = egd_cgroup_relation(ex, cg);
		if (rel == EGD_CG_SAME || rel == EGD_CG_ANCESTOR) {
			egd_err("refusing --exempt-cgroup %s: it %s the attached cgroup %s, so "
				"the agent would go uncaptured; exempt a cgroup outside the "
				"sandbox (or a child of it made for the daemon)",
				ex, egd_cgroup_rel_words(rel), cg);
			return -EPERM;
		}
	}
	return 0;
}

static int cmd_attach(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "cgroup", required_argument, NULL, 'c' },
		{ "exempt-cgroup", required_argument, NULL, 'e' },
		{ "pin", required_argument, NULL, 'p' },
		{ "accel", required_argument, NULL, 'a' },
		{ "resolvers", required_argument, NULL, 'r' },
		{ "dns-listen", required_argument, NULL, 'd' },
		{ "deny-cidrs", required_argument, NULL, 'D' },
		{ "loopback-allow", required_argument, NULL, 'l' },
		{ 0 },
	};
	const char *exempt[EGD_EXEMPT_MAX_ENTRIES];
	static struct kernel_lists lists;
	struct egd_attach_opts o = { .pin_dir = getenv("EGRESSD_PIN_DIR") };
	const char *dns = getenv("EGRESSD_DNS_LISTEN"), *deny = getenv("EGRESSD_DENY_CIDRS");
	const char *loopback = getenv("EGRESSD_LOOPBACK_ALLOW");
	int c;

	if (!o.pin_dir)
		o.pin_dir = EGD_DEFAULT_PIN_DIR;
	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (c) {
		case 'c':
			o.cgroup = optarg;
			break;
		case 'e':
			if (o.n_exempt == EGD_EXEMPT_MAX_ENTRIES) {
				egd_err("at most %d exempt cgroups", EGD_EXEMPT_MAX_ENTRIES);
				return 2;
			}
			exempt[o.n_exempt++] = optarg;
			break;
		case 'p':
			o.pin_dir = optarg;
			break;
		case 'a':
			if (strcmp(optarg, "on") && strcmp(optarg, "off")) {
				egd_err("--accel takes on or off");
				return 2;
			}
			o.accel = strcmp(optarg, "on") == 0;
			break;
		case 'r':
			/* Kept so that older scripts still attach: the agent's DNS
			 * goes to the policy DNS whatever resolver it names. */
			egd_warn("--resolvers is ignored by attach: all DNS goes to the policy "
				 "DNS, which forwards to EGRESSD_RESOLVERS");
			break;
		case 'd':
			dns = optarg;
			break;
		case 'D':
			deny = optarg;
			break;
		case 'l':
			loopback = optarg;
			break;
		default:
			return 2;
		}
	}
	if (!o.cgroup || optind != argc) {
		egd_err("attach needs --cgroup PATH and nothing else (see egressd help)");
		return 2;
	}
	if (kernel_settings(&o, &lists, dns, deny, loopback, getenv("EGRESSD_PROXY_HTTP_LISTEN")))
		return 2;
	o.exempt = exempt;
	if (check_exempt(o.cgroup, exempt, o.n_exempt))
		return 2;
	return egd_bpf_attach(&o) ? 1 : 0;
}

static const char *pin_arg(int argc, char **argv)
{
	const char *pin = getenv("EGRESSD_PIN_DIR");

	for (int i = 0; i < argc; i++) {
		if (strcmp(argv[i], "--pin") == 0 && i + 1 < argc)
			pin = argv[++i];
		else if (strncmp(argv[i], "--pin=", 6) == 0)
			pin = argv[i] + 6;
		else {
			egd_err("unexpected argument \"%s\"", argv[i]);
			return NULL;
		}
	}
	return pin ? pin : EGD_DEFAULT_PIN_DIR;
}

static int cmd_detach(int argc, char **argv)
{
	const char *pin = pin_arg(argc, argv);

	if (!pin)
		return 2;
	if (egd_bpf_detach(pin))
		return 1;
	egd_info("detached %s", pin);
	return 0;
}

static int cmd_phase(int argc, char **argv)
{
	const char *pin = pin_arg(argc, argv);
	struct egd_bpf b;
	enum egd_phase p;
	int err;

	if (!pin || egd_bpf_open(&b, pin))
		return pin ? 1 : 2;
	err = egd_bpf_get_phase(&b, &p);
	egd_bpf_close(&b);
	if (err) {
		egd_err("reading phase: %s", strerror(-err));
		return 1;
	}
	printf("%s\n", egd_phase_name(p));
	return 0;
}

/* The always-deny set and the extra loopback ports, as the kernel has them. */
static void print_kernel_lists(struct egd_bpf *b)
{
	static struct egd_lpm_key deny[EGD_DENY_MAX_ENTRIES];
	uint16_t ports[EGD_LOOPBACK_PORTS_MAX_ENTRIES];
	char buf[INET6_ADDRSTRLEN];
	int n;

	n = egd_bpf_deny_list(b, deny, EGD_DENY_MAX_ENTRIES);
	printf("always-deny (both phases):");
	for (int i = 0; i < n; i++) {
		const struct egd_lpm_key *k = &deny[i];
		int v4 = k->prefixlen >= 96 && !k->addr[0] && !k->addr[1] &&
			 k->addr[2] == htonl(0x0000ffff);

		inet_ntop(v4 ? AF_INET : AF_INET6, v4 ? (const void *)&k->addr[3] : k->addr, buf,
			  sizeof(buf));
		printf(" %s/%u", buf, v4 ? k->prefixlen - 96 : k->prefixlen);
	}
	printf("%s\n", n < 0 ? " (unreadable)" : "");
	n = egd_bpf_loopback_ports(b, ports, EGD_LOOPBACK_PORTS_MAX_ENTRIES);
	printf("loopback ports besides capture and DNS (agent phase):");
	for (int i = 0; i < n; i++)
		printf(" %u", ports[i]);
	printf("%s\n", n < 0 ? " (unreadable)" : n == 0 ? " none" : "");
}

static int cmd_status(int argc, char **argv)
{
	const char *pin = pin_arg(argc, argv);
	uint64_t k[EGD_CNT_MAX];
	char lsm[PATH_MAX];
	struct egd_config c;
	struct egd_bpf b;
	enum egd_phase p;

	if (!pin)
		return 2;
	if (egd_bpf_open(&b, pin)) {
		uint64_t n;

		/* No BPF attachment: perhaps the nftables fallback is in place. */
		if (egd_nft_counter(EGD_NFT_CNT_DIRECT_DIAL, &n) == 0) {
			printf("mode: nft\ntable: inet %s present\n", EGD_NFT_TABLE);
			static const char *const names[] = EGD_NFT_COUNTER_NAMES;

			printf("counters (packets):\n");
			for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
				if (egd_nft_counter(names[i], &n) == 0)
					printf("  %-26s %llu\n", names[i], (unsigned long long)n);
			return 0;
		}
		printf("mode: none\nattached: no (%s), no nftables table\n", pin);
		return 1;
	}
	printf("mode: bpf\npin: %s\nattached: %s\n", pin, egd_bpf_attached(&b) ? "yes" : "no");
	snprintf(lsm, sizeof(lsm), "%s/links/egd_lsm_socket_create", pin);
	printf("packet sockets refused: %s\n", access(lsm, F_OK) == 0 ? "yes (BPF LSM)" : "no (no BPF LSM)");
	snprintf(lsm, sizeof(lsm), "%s/links/egd_backstop", pin);
	printf("packet backstop: %s\n", access(lsm, F_OK) == 0 ? "attached" : "not attached");
	if (egd_bpf_get_phase(&b, &p) == 0)
		printf("phase: %s\n", egd_phase_name(p));
	if (egd_bpf_get_config(&b, &c) == 0)
		printf("listen port: %u\ndns port: %u\naccel: %s\ndaemon cgroup id: %llu\n",
		       ntohs(c.listen_port), ntohs(c.dns_port),
		       c.flags & EGD_CFG_ACCEL ? "on" : "off",
		       (unsigned long long)c.daemon_cgroup_id);
	print_kernel_lists(&b);
	if (egd_bpf_counters(&b, k) == 0) {
		printf("kernel counters:\n");
		for (int i = 0; i < EGD_CNT_MAX; i++)
			printf("  %-26s %llu\n", egd_counter_name(i), (unsigned long long)k[i]);
	}
	egd_bpf_close(&b);
	return 0;
}

static int cmd_nft_remove(int argc, char **argv)
{
	int err;

	(void)argv;
	if (argc) {
		egd_err("nft-remove takes no arguments");
		return 2;
	}
	err = egd_nft_remove();
	if (err == -ENOENT) {
		egd_info("no table inet %s in this network namespace", EGD_NFT_TABLE);
		return 0;
	}
	if (err) {
		egd_err("removing table inet %s: %s", EGD_NFT_TABLE, strerror(-err));
		return 1;
	}
	egd_info("removed table inet %s: the agent's network is no longer captured",
		 EGD_NFT_TABLE);
	return 0;
}

/*
 * The policy proxy's settings are read when the daemon starts it; check
 * them with the daemon's own, so a bad flag stops `run` or `exec` before
 * anything is attached. Not when an external proxy serves intercepted flows.
 */
static int check_proxy_settings(const struct egd_config_run *cfg)
{
	struct egd_proxy_config pc;
	char err[EGD_CONFIG_ERR_MAX_BYTES];

	if (cfg->intercept_upstream.family)
		return 0;
	if (egd_proxy_config_load(&pc, egd_proxy_getenv, NULL, err, sizeof(err))) {
		egd_err("policy proxy: %s", err);
		return -EINVAL;
	}
	egd_proxy_config_free(&pc);
	return 0;
}

static int cmd_run(int argc, char **argv)
{
	struct egd_config_run cfg;
	FILE *audit;

	if (egd_config_load(&cfg, argc, argv) || check_proxy_settings(&cfg))
		return 2;
	egd_log_set_level(cfg.log_level);
	if (cfg.audit_log[0]) {
		audit = fopen(cfg.audit_log, "ae");
		if (!audit) {
			egd_err("audit log %s: %s", cfg.audit_log, strerror(errno));
			return 1;
		}
		egd_audit_set_stream(audit);
	}
	return egd_daemon_run(&cfg);
}

/* --- exec: the local mode --------------------------------------------------- */

static volatile sig_atomic_t forward_to;

static void forward_signal(int sig)
{
	if (forward_to > 0)
		kill(forward_to, sig);
}

static pid_t start_daemon(const char *pin, const char *cgroup, int argc, char **argv, int ready_w,
			  int audit_to_stderr)
{
	pid_t pid = fork();

	if (pid != 0)
		return pid;
	/* Child: become `egressd run`, in the cgroup attach exempted for it. */
	char fdbuf[16], pinflag[PATH_MAX + 8];
	char **args = calloc((size_t)argc + 5, sizeof(*args));
	int n = 0, err = egd_cgroup_enter(cgroup, getpid());

	if (err) {
		egd_err("entering %s: %s", cgroup, strerror(-err));
		_exit(127);
	}
	if (!args)
		_exit(127);
	snprintf(fdbuf, sizeof(fdbuf), "%d", ready_w);
	setenv("EGRESSD_READY_FD", fdbuf, 1);
	/* The command will not see the sentinel's directory (sandbox_mounts). */
	setenv("EGRESSD_SENTINEL_HIDDEN", "1", 1);
	snprintf(pinflag, sizeof(pinflag), "--pin=%s", pin);
	args[n++] = "egressd";
	args[n++] = "run";
	args[n++] = pinflag;
	args[n++] = "--mode=bpf"; /* exec always attaches; never fall back to nft */
	for (int i = 0; i < argc; i++)
		args[n++] = argv[i];
	args[n] = NULL;
	if (audit_to_stderr)
		dup2(2, 1); /* keep decision lines apart from the command's stdout */
	execv("/proc/self/exe", args);
	egd_err("starting the daemon: %s", strerror(errno));
	_exit(127);
}

static int wait_ready(int fd, pid_t daemon)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	char c;
	int n = poll(&p, 1, EXEC_READY_TIMEOUT_MS);

	if (n == 1 && read(fd, &c, 1) == 1)
		return 0;
	if (waitpid(daemon, NULL, WNOHANG) == daemon)
		egd_err("the daemon exited before it was ready (see above)");
	else
		egd_err("the daemon was not ready within %d ms", EXEC_READY_TIMEOUT_MS);
	return -1;
}

/*
 * Point the usual TLS trust variables of the child at the daemon's CA, when
 * the daemon has published one, so intercepted flows verify without the
 * command knowing about egressd.
 */
static void trust_ca_for_child(void)
{
	const char *dir = egd_config_get("EGRESSD_CA_DIR");
	char bundle[PATH_MAX], ca[PATH_MAX];

	if (!dir || !*dir)
		dir = EGD_CA_DIR_DEFAULT;
	snprintf(bundle, sizeof(bundle), "%s/ca-bundle.crt", dir);
	snprintf(ca, sizeof(ca), "%s/ca.crt", dir);
	if (access(bundle, R_OK) || access(ca, R_OK))
		return;
	setenv("SSL_CERT_FILE", bundle, 1);
	setenv("REQUESTS_CA_BUNDLE", bundle, 1);
	setenv("CURL_CA_BUNDLE", bundle, 1);
	setenv("GIT_SSL_CAINFO", bundle, 1);
	setenv("NODE_EXTRA_CA_CERTS", ca, 1);
}

/*
 * The daemon needed the proxy's credentials; the command it polices must
 * not inherit them (a sandboxed agent reading the management key from its
 * own environment would defeat the proxy). The *_FILE forms name files the
 * agent may not be able to read, but their paths say where to look.
 */
static void hide_secrets_from_child(void)
{
	static const char *const secrets[] = {
		"OPENROUTER_MANAGEMENT_KEY",	      "OPENROUTER_MANAGEMENT_KEY_FILE",
		"OPENROUTER_UPSTREAM_API_KEY",	      "OPENROUTER_UPSTREAM_API_KEY_FILE",
		"EGRESSD_CA_KEY_DIR",
	};

	for (size_t i = 0; i < sizeof(secrets) / sizeof(secrets[0]); i++)
		unsetenv(secrets[i]);
}

/*
 * The command's own mount namespace. A root command could otherwise create
 * the sentinel itself, write another cgroup's cgroup.procs to leave the
 * sandbox, or unlink the pinned links. So, in a namespace of its own:
 * every bpffs is covered by an empty read-only tmpfs (the pins are absent),
 * every cgroup filesystem is read-only, and the sentinel's directory is
 * hidden: a directory others may write (/tmp) is replaced by an empty
 * private tmpfs, as systemd's PrivateTmp= does, any other is made
 * read-only, so the command still reads what is there (its scripts, the CA)
 * but creates nothing. Then the capabilities that would undo this, or reach
 * around it, leave the command's bounding set.
 */

/* A mountinfo line is far shorter; longer ones are skipped (and stay as
 * they are, which for the few kinds we act on never happens). */
#define MOUNTINFO_LINE_MAX_BYTES 8192

/*
 * Dropped for the command, each a way around the namespace above:
 * SYS_ADMIN mounts, unmounts, remounts and setns() (and bpf() with
 * unprivileged BPF off); BPF the rest of bpf(); SYS_PTRACE reaching into the
 * exempt daemon, or through /proc/PID/root into another mount namespace;
 * SYS_MODULE and SYS_RAWIO the kernel itself; NET_ADMIN tun devices, whose
 * packets no socket hook sees. A root command keeps the others (it is root
 * on the host all the same: README says what that still allows).
 */
static const int exec_dropped_caps[] = { CAP_SYS_ADMIN,	 CAP_BPF,	CAP_SYS_PTRACE,
					 CAP_SYS_MODULE, CAP_SYS_RAWIO, CAP_NET_ADMIN };

/* Hand-written rather than with libcap: three system calls, and the daemon
 * needs libcap nowhere else. */
static int drop_caps(void)
{
	struct __user_cap_header_struct h = { .version = _LINUX_CAPABILITY_VERSION_3 };
	struct __user_cap_data_struct c[_LINUX_CAPABILITY_U32S_3];
	size_t n = sizeof(exec_dropped_caps) / sizeof(exec_dropped_caps[0]);

	for (size_t i = 0; i < n; i++)
		/* EINVAL: a kernel that does not know the capability (CAP_BPF
		 * before 5.8) cannot grant it either. */
		if (prctl(PR_CAPBSET_DROP, exec_dropped_caps[i], 0, 0, 0) && errno != EINVAL)
			return -errno;
	if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) && errno != EINVAL)
		return -errno;
	if (syscall(SYS_capget, &h, c))
		return -errno;
	for (size_t i = 0; i < n; i++) {
		__u32 bit = 1u << (exec_dropped_caps[i] % 32);
		int w = exec_dropped_caps[i] / 32;

		c[w].effective &= ~bit;
		c[w].permitted &= ~bit;
		c[w].inheritable &= ~bit;
	}
	return syscall(SYS_capset, &h, c) ? -errno : 0;
}

/* Make the mount at @mp read-only in this namespace, keeping its other
 * per-mount flags (a bind remount sets them all at once). */
static int remount_ro(const char *mp)
{
	static const struct {
		unsigned long st, ms;
	} keep[] = { { ST_NOSUID, MS_NOSUID },	   { ST_NODEV, MS_NODEV },
		     { ST_NOEXEC, MS_NOEXEC },	   { ST_NOATIME, MS_NOATIME },
		     { ST_NODIRATIME, MS_NODIRATIME }, { ST_RELATIME, MS_RELATIME } };
	unsigned long fl = MS_REMOUNT | MS_BIND | MS_RDONLY;
	struct statvfs sv;

	if (statvfs(mp, &sv))
		return -errno;
	for (size_t i = 0; i < sizeof(keep) / sizeof(keep[0]); i++)
		if (sv.f_flag & keep[i].st)
			fl |= keep[i].ms;
	return mount(NULL, mp, NULL, fl, NULL) ? -errno : 0;
}

/* mountinfo writes space, tab, newline and backslash as \ooo. */
static void unescape_octal(char *s)
{
	char *w = s;

	for (; *s; s++) {
		if (s[0] == '\\' && s[1] >= '0' && s[1] <= '3' && s[2] >= '0' && s[2] <= '7' &&
		    s[3] >= '0' && s[3] <= '7') {
			*w++ = (char)((s[1] - '0') * 64 + (s[2] - '0') * 8 + (s[3] - '0'));
			s += 3;
		} else {
			*w++ = *s;
		}
	}
	*w = '\0';
}

/* Cover every bpffs, make every cgroup filesystem read-only. The table is
 * read whole first: the mounts made here would show up in it. */
static int seal_kernel_mounts(void)
{
	char *buf = NULL, line[MOUNTINFO_LINE_MAX_BYTES];
	size_t len = 0;
	FILE *f = fopen("/proc/self/mountinfo", "re"), *mem;
	int err = 0;

	if (!f)
		return -errno;
	mem = open_memstream(&buf, &len);
	if (!mem) {
		fclose(f);
		return -ENOMEM;
	}
	while (fgets(line, sizeof(line), f))
		fputs(line, mem);
	fclose(f);
	if (fclose(mem))
		return -ENOMEM;
	for (char *save = NULL, *l = strtok_r(buf, "\n", &save); l && !err;
	     l = strtok_r(NULL, "\n", &save)) {
		char mp[PATH_MAX], fstype[64];
		const char *dash = strstr(l, " - ");

		if (!dash || sscanf(l, "%*s %*s %*s %*s %4095s", mp) != 1 ||
		    sscanf(dash + 3, "%63s", fstype) != 1)
			continue;
		unescape_octal(mp);
		if (strcmp(fstype, "bpf") == 0) {
			if (mount("egressd-hidden", mp, "tmpfs",
				  MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
				  "size=4k,mode=0555"))
				err = -errno;
		} else if (strcmp(fstype, "cgroup2") == 0 || strcmp(fstype, "cgroup") == 0) {
			err = remount_ro(mp);
		} else {
			continue;
		}
		/* Under a bpffs covered a moment ago: already out of reach. */
		if (err == -ENOENT)
			err = 0;
		if (err)
			egd_err("sealing %s (%s) for the command: %s", mp, fstype, strerror(-err));
	}
	free(buf);
	return err;
}

static int hide_sentinel_dir(const char *dir)
{
	struct stat st;
	int err;

	if (stat(dir, &st))
		return -errno;
	if ((st.st_mode & (S_IWGRP | S_IWOTH)) || (st.st_uid != 0 && st.st_uid != geteuid())) {
		const char *ca = getenv("SSL_CERT_FILE");
		size_t n = strlen(dir);

		if (mount("egressd-private", dir, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777"))
			return -errno;
		if (ca && strncmp(ca, dir, n) == 0 && ca[n] == '/')
			egd_warn("the CA bundle %s is in %s, which the command gets empty: set "
				 "EGRESSD_CA_DIR elsewhere for TLS through the policy proxy",
				 ca, dir);
		return 0;
	}
	/* Not recursive: mounts below it (a test's bpffs) stay out of sight. */
	if (mount(dir, dir, NULL, MS_BIND, NULL))
		return -errno;
	err = remount_ro(dir);
	return err;
}

/* In the command's child, before exec: see the comment above. @sentinel_dir
 * is NULL when the phase is fixed. Any failure stops the command. */
static int sandbox_mounts(const char *sentinel_dir)
{
	char cwd[PATH_MAX];
	int err, have_cwd = getcwd(cwd, sizeof(cwd)) != NULL;

	if (unshare(CLONE_NEWNS))
		return -errno;
	/* Slave: nothing done here reaches the host; the host's later mounts
	 * still reach the command. */
	if (mount(NULL, "/", NULL, MS_REC | MS_SLAVE, NULL))
		return -errno;
	err = seal_kernel_mounts();
	if (!err && sentinel_dir) {
		err = hide_sentinel_dir(sentinel_dir);
		if (err)
			egd_err("hiding the sentinel's directory %s: %s", sentinel_dir,
				strerror(-err));
	}
	if (err)
		return err;
	/* The working directory still points at what the mounts cover. */
	if (!have_cwd || chdir(cwd)) {
		egd_warn("the working directory is out of the command's sight; it starts in /");
		if (chdir("/"))
			return -errno;
	}
	return drop_caps();
}

/* Remove exec's cgroup tree: the command's and the daemon's, then theirs. */
static void destroy_exec_cgroups(const char *base, const char *agent, const char *daemon)
{
	const char *cgs[] = { agent, daemon, base };

	for (size_t i = 0; i < 3; i++)
		if (egd_cgroup_destroy(cgs[i]))
			egd_warn("removing cgroup %s: %s", cgs[i], strerror(errno));
}

static int cmd_exec(int argc, char **argv)
{
	char cg_root[PATH_MAX], base[PATH_MAX], cg[PATH_MAX + 8], daemon_cg[PATH_MAX + 8];
	char pin[PATH_MAX], sentinel_dir[PATH_MAX], *sentinel_arg = NULL;
	static struct kernel_lists lists;
	const char *exempt[1];
	struct egd_attach_opts o = { 0 };
	struct egd_config_run check;
	int sep = -1, ready[2], status = 0, rc = 1, accel = 0, audit_flag = 0;
	char **run_argv;
	int run_argc = 0;
	pid_t daemon = -1, child;

	for (int i = 0; i < argc; i++) {
		if (strcmp(argv[i], "--") == 0) {
			sep = i;
			break;
		}
	}
	if (sep < 0 || sep == argc - 1) {
		egd_err("exec needs a command after -- (egressd exec -- CMD ARG...)");
		return 2;
	}
	run_argv = calloc((size_t)sep + 2, sizeof(*run_argv));
	if (!run_argv)
		return 1;
	for (int i = 0; i < sep; i++) {
		if (strcmp(argv[i], "--accel=on") == 0) {
			accel = 1;
			continue;
		}
		if (strncmp(argv[i], "--audit-log", 11) == 0)
			audit_flag = 1;
		run_argv[run_argc++] = argv[i];
	}
	/* Local mode: no admin or proxy port unless asked for, so two execs
	 * can run side by side. */
	if (!getenv("EGRESSD_ADMIN_LISTEN"))
		setenv("EGRESSD_ADMIN_LISTEN", "off", 1);
	if (!getenv("EGRESSD_PROXY_HTTP_LISTEN"))
		setenv("EGRESSD_PROXY_HTTP_LISTEN", "off", 1);
	/* Validate the daemon's settings here, where the user sees the error. */
	if (egd_config_load(&check, run_argc, run_argv) || check_proxy_settings(&check))
		return 2;
	egd_log_set_level(check.log_level);
	/* The directory the command must not write in: the daemon checks the
	 * rest of the rule when it starts. */
	if (check.phase_source == EGD_PHASE_FROM_SENTINEL) {
		sentinel_arg = strdup(check.sentinel);
		if (!sentinel_arg || !realpath(dirname(sentinel_arg), sentinel_dir)) {
			egd_err("sentinel %s: its directory: %s", check.sentinel, strerror(errno));
			free(sentinel_arg);
			return 2;
		}
		free(sentinel_arg);
		if (strcmp(sentinel_dir, "/") == 0) {
			egd_err("sentinel %s: exec cannot hide / from the command; put the "
				"sentinel in a directory of its own",
				check.sentinel);
			return 2;
		}
	}

	if (egd_cgroup2_root(cg_root, sizeof(cg_root))) {
		egd_err("no cgroup2 hierarchy mounted (see /proc/mounts)");
		return 1;
	}
	/* One tree: the command's cgroup (attached) and, beside it, the
	 * daemon's (exempt). exec's own cgroup is neither: exempting it would
	 * exempt an ancestor of the sandbox when exec runs in the root. */
	snprintf(base, sizeof(base), "%s/egressd-exec-%d", cg_root, getpid());
	snprintf(cg, sizeof(cg), "%s/agent", base);
	snprintf(daemon_cg, sizeof(daemon_cg), "%s/daemon", base);
	if (getenv("EGRESSD_PIN_DIR"))
		snprintf(pin, sizeof(pin), "%s", getenv("EGRESSD_PIN_DIR"));
	else
		snprintf(pin, sizeof(pin), "/sys/fs/bpf/egressd-exec-%d", getpid());
	if (mkdir(base, 0755) || mkdir(cg, 0755) || mkdir(daemon_cg, 0755)) {
		egd_err("creating cgroups under %s: %s", base, strerror(errno));
		goto out_cgroup;
	}
	exempt[0] = daemon_cg;
	o.exempt = exempt;
	o.n_exempt = 1;
	if (kernel_settings(&o, &lists, egd_config_get("EGRESSD_DNS_LISTEN"),
			    egd_config_get("EGRESSD_DENY_CIDRS"),
			    egd_config_get("EGRESSD_LOOPBACK_ALLOW"),
			    egd_config_get("EGRESSD_PROXY_HTTP_LISTEN")))
		goto out_cgroup;
	o.cgroup = cg;
	o.pin_dir = pin;
	o.accel = accel;
	if (egd_bpf_attach(&o))
		goto out_cgroup;

	if (pipe2(ready, O_CLOEXEC))
		goto out_detach;
	fcntl(ready[1], F_SETFD, 0); /* the daemon inherits the write end */
	fflush(NULL);
	daemon = start_daemon(pin, daemon_cg, run_argc, run_argv, ready[1], !audit_flag);
	close(ready[1]);
	if (daemon < 0 || wait_ready(ready[0], daemon)) {
		close(ready[0]);
		goto out_daemon;
	}
	close(ready[0]);

	child = fork();
	if (child == 0) {
		int err = egd_cgroup_enter(cg, getpid());

		trust_ca_for_child();
		hide_secrets_from_child();

		if (err) {
			egd_err("entering %s: %s", cg, strerror(-err));
			_exit(126);
		}
		err = sandbox_mounts(check.phase_source == EGD_PHASE_FROM_SENTINEL ? sentinel_dir :
										       NULL);
		if (err) {
			egd_err("setting up the command's mount namespace: %s; not running it",
				strerror(-err));
			_exit(126);
		}
		execvp(argv[sep + 1], argv + sep + 1);
		egd_err("%s: %s", argv[sep + 1], strerror(errno));
		_exit(127);
	}
	if (child < 0)
		goto out_daemon;
	forward_to = child;
	signal(SIGINT, forward_signal);
	signal(SIGTERM, forward_signal);
	while (waitpid(child, &status, 0) < 0 && errno == EINTR)
		;
	forward_to = 0;
	rc = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);

out_daemon:
	if (daemon > 0) {
		kill(daemon, SIGTERM);
		while (waitpid(daemon, NULL, 0) < 0 && errno == EINTR)
			;
	}
out_detach:
	egd_bpf_detach(pin);
out_cgroup:
	destroy_exec_cgroups(base, cg, daemon_cg);
	free(run_argv);
	return rc;
}

int main(int argc, char **argv)
{
	const char *cmd = argc > 1 ? argv[1] : "help";

	/* The image's binary holds CAP_NET_ADMIN as permitted only (see
	 * core/caps.h): make it effective for the commands that touch
	 * nftables. Where it is not permitted this does nothing, and nft mode
	 * then fails at install with EPERM, closed. */
	if (!strcmp(cmd, "run") || !strcmp(cmd, "nft-remove") || !strcmp(cmd, "status"))
		egd_cap_raise(CAP_NET_ADMIN);
	if (strcmp(cmd, "attach") == 0)
		return cmd_attach(argc - 1, argv + 1);
	if (strcmp(cmd, "detach") == 0)
		return cmd_detach(argc - 2, argv + 2);
	if (strcmp(cmd, "run") == 0)
		return cmd_run(argc - 2, argv + 2);
	if (strcmp(cmd, "exec") == 0)
		return cmd_exec(argc - 2, argv + 2);
	if (strcmp(cmd, "router") == 0)
		return egd_router_main(argc - 2, argv + 2);
	if (strcmp(cmd, "nft-remove") == 0)
		return cmd_nft_remove(argc - 2, argv + 2);
	if (strcmp(cmd, "phase") == 0)
		return cmd_phase(argc - 2, argv + 2);
	if (strcmp(cmd, "status") == 0)
		return cmd_status(argc - 2, argv + 2);
	if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
		printf("egressd %s\n", EGD_VERSION);
		return 0;
	}
	if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
		usage(stdout);
		return 0;
	}
	egd_err("unknown command \"%s\"", cmd);
	usage(stderr);
	return 2;
}
