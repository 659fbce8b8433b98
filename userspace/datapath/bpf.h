/* SPDX-License-Identifier: MIT */
/*
 * The BPF datapath from userspace: load and attach the programs to a
 * cgroup and pin them (egressd attach), undo it (egressd detach), and open
 * the pinned maps for the daemon (egressd run, status, phase).
 *
 * Pin layout under DIR: maps/<map name>, links/<program name>, and, for the
 * sk_msg fast path, the program itself at prog/egd_sk_msg. Removing a link
 * pin detaches that program.
 */
#ifndef EGD_BPF_H
#define EGD_BPF_H

#include <stddef.h>
#include <stdint.h>

#include "egressd.h"

#define EGD_DEFAULT_PIN_DIR "/sys/fs/bpf/egressd"

struct egd_attach_opts {
	const char *cgroup;		 /* cgroup v2 directory to attach to */
	const char *const *exempt;	 /* cgroup directories never captured */
	size_t n_exempt;
	const char *pin_dir;
	int accel;			 /* load the sk_msg fast path */
	uint16_t dns_port;		 /* policy DNS port, host order; 0: default */
	const struct egd_lpm_key *deny;	 /* always-deny prefixes (egd_deny_cidrs) */
	size_t n_deny;
	const uint16_t *loopback_ports; /* extra loopback ports, host order */
	size_t n_loopback_ports;
	/* Test builds only (EGD_TEST_SWITCHES): attach the packet backstop and
	 * none of the socket hooks, to show what the backstop stops alone. */
	int backstop_only;
};

int egd_bpf_attach(const struct egd_attach_opts *opts);
int egd_bpf_detach(const char *pin_dir);

struct egd_bpf {
	int phase_fd, config_fd, exempt_fd, counters_fd, orig_fd, sockhash_fd;
	int deny_fd, loopback_fd, icaddr_fd;
	char pin_dir[256];
};

/* Mark every descriptor of @b closed, so egd_bpf_close() is safe on it. */
void egd_bpf_init(struct egd_bpf *b);

/* Open the pinned maps. Returns 0, -ENOENT when nothing is attached there. */
int egd_bpf_open(struct egd_bpf *b, const char *pin_dir);
void egd_bpf_close(struct egd_bpf *b);

/* Whether the program links are still pinned (attach done, no detach). */
int egd_bpf_attached(const struct egd_bpf *b);

int egd_bpf_set_phase(struct egd_bpf *b, enum egd_phase phase);
int egd_bpf_get_phase(struct egd_bpf *b, enum egd_phase *phase);
int egd_bpf_exempt_add(struct egd_bpf *b, uint64_t cgroup_id);
int egd_bpf_get_config(struct egd_bpf *b, struct egd_config *cfg);
int egd_bpf_set_config(struct egd_bpf *b, const struct egd_config *cfg);
/* Sum the per-CPU kernel counters into @out. */
int egd_bpf_counters(struct egd_bpf *b, uint64_t out[EGD_CNT_MAX]);
/* Look up and delete the record of one accepted connection. */
int egd_bpf_orig_take(struct egd_bpf *b, const struct egd_tuple *t, struct egd_orig *out);
/* Put the daemon's end of a captured connection in the fast-path map. */
int egd_bpf_sockhash_add(struct egd_bpf *b, const struct egd_tuple *t, int fd);

/*
 * Remember @ip (v4 in addr[0], family EGD_AF_INET or EGD_AF_INET6, pad 0)
 * as an address the policy DNS answered for an intercept host, until
 * @expires_ns (CLOCK_MONOTONIC, the clock of bpf_ktime_get_ns()). A later
 * put replaces the expiry. The map is LRU: the oldest entries go first when
 * it is full. 0 or -errno.
 */
int egd_bpf_icaddr_put(struct egd_bpf *b, const struct egd_ip *ip, uint64_t expires_ns);

/* Let the agent reach loopback port @port (host order) in the agent phase,
 * as a listener of the daemon (the policy proxy's). 0 or -errno. */
int egd_bpf_loopback_allow(struct egd_bpf *b, uint16_t port);

/* What attach (and the daemon) wrote in the always-deny set and the loopback
 * ports, for egressd status: at most @max, in the maps' order. Count or
 * -errno. */
int egd_bpf_deny_list(struct egd_bpf *b, struct egd_lpm_key *out, size_t max);
int egd_bpf_loopback_ports(struct egd_bpf *b, uint16_t *out, size_t max);

const char *egd_counter_name(enum egd_counter c);

/* Make sure @pin_dir can live on a bpffs: mounts /sys/fs/bpf if it is the
 * default location and nothing is mounted there yet. */
int egd_bpffs_ensure(const char *pin_dir);

#endif
