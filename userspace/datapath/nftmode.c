/* SPDX-License-Identifier: MIT */
/* nftables capture for the daemon; see nftmode.h. */
#include "datapath/nftmode.h"
#include "datapath/cgroup.h"
#include "core/caps.h"
#include "core/config.h"
#include "core/log.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <unistd.h>

/* Depth of the daemon's cgroup as /proc/self/cgroup names it: "/" is 0,
 * "/a/b" is 2. That is the level `socket cgroupv2` compares at. */
static int own_cgroup_level(uint32_t *level)
{
	char line[4096];
	FILE *f = fopen("/proc/self/cgroup", "re");
	int err = -ENOENT;

	if (!f)
		return -errno;
	while (fgets(line, sizeof(line), f)) {
		char *p;

		if (strncmp(line, "0::", 3))
			continue;
		line[strcspn(line, "\n")] = '\0';
		*level = 0;
		for (p = line + 3; *p; p++)
			if (*p == '/' && p[1])
				(*level)++;
		err = 0;
		break;
	}
	fclose(f);
	return err;
}

/* The operator's lists; a bad one stops the daemon at start, naming it. */
static int operator_lists(struct egd_nft_config *nc)
{
	const char *deny = egd_config_get("EGRESSD_DENY_CIDRS");
	const char *lo = egd_config_get("EGRESSD_LOOPBACK_ALLOW");
	int n;

	n = deny ? egd_nft_parse_cidrs(deny, nc->deny, EGD_NFT_DENY_MAX) : 0;
	if (n < 0) {
		egd_err("bad EGRESSD_DENY_CIDRS \"%s\": expected at most %d CIDRs (ADDR/LEN, "
			"no host bits), comma separated",
			deny, EGD_NFT_DENY_MAX);
		return -EINVAL;
	}
	nc->n_deny = (size_t)n;
	n = lo ? egd_nft_parse_ports(lo, nc->loopback_allow, EGD_NFT_LOOPBACK_ALLOW_MAX) : 0;
	if (n < 0) {
		egd_err("bad EGRESSD_LOOPBACK_ALLOW \"%s\": expected at most %d ports, comma "
			"separated",
			lo, EGD_NFT_LOOPBACK_ALLOW_MAX);
		return -EINVAL;
	}
	nc->n_loopback_allow = (size_t)n;
	return 0;
}

int egd_nftmode_check_kernel(int private_cgns, const char *release, const char *version)
{
	if (private_cgns == 0 || egd_kernel_cgns_socket_match(release, version))
		return 0;
	egd_err("nft mode: egressd is in a private cgroup namespace (as every container is on a "
		"cgroup v2 host) and kernel %s counts `socket cgroupv2` levels from the host's "
		"root, so the ruleset would capture egressd's own connections. Needs Linux 6.11, "
		"or 6.1.112, 6.6.53, 6.10.12 or later in those series; or run the egressd "
		"container in the host's cgroup namespace (docker run --cgroupns=host, Compose "
		"cgroup: host)",
		release ? release : "(unknown)");
	return -ENOTSUP;
}

int egd_nftmode_config(struct egd_nft_config *nc, uint16_t listen_port, uint16_t dns_port,
		       uint16_t admin_port)
{
	char self[4096];
	int err;

	memset(nc, 0, sizeof(*nc));
	nc->listen_port = listen_port;
	nc->dns_port = dns_port;
	nc->admin_port = admin_port;
	err = egd_cgroup_of_pid(0, self, sizeof(self));
	if (!err)
		err = egd_cgroup_id(self, &nc->daemon_cgroup_id);
	if (!err)
		err = own_cgroup_level(&nc->daemon_cgroup_level);
	if (!err) {
		struct utsname u;
		int priv = egd_in_private_cgroupns();

		if (priv < 0)
			egd_warn("nft mode: cannot tell the cgroup namespace (%s); taken as private",
				 strerror(-priv));
		if (uname(&u))
			memset(&u, 0, sizeof(u));
		err = egd_nftmode_check_kernel(priv, u.release, u.version);
		if (err)
			return err;
	}
	if (err) {
		/* Without a cgroup to match, the uid is the only way left to tell
		 * the daemon from the agent: weaker (an agent running as the
		 * same uid would be exempt, see nft.c), so only for a non-root
		 * daemon, whose uid the agent is not given. */
		if (getuid() == 0) {
			egd_err("nft mode: cannot tell the daemon's own cgroup (%s), and as root "
				"its uid cannot stand in for it: an agent running as root would "
				"be exempt",
				strerror(-err));
			return err;
		}
		egd_warn("nft mode: no cgroup for the daemon (%s); exempting uid %u instead",
			 strerror(-err), getuid());
		nc->daemon_cgroup_id = 0;
		nc->daemon_cgroup_level = 0;
		nc->use_uid_fallback = 1;
		nc->daemon_uid = getuid();
	}
	return operator_lists(nc);
}

int egd_nftmode_start(const struct egd_nft_config *nc, enum egd_phase phase)
{
	int err = egd_nft_install(nc, phase);

	if (err) {
		egd_err("nft mode: installing the ruleset: %s (needs CAP_NET_ADMIN and nf_tables%s)",
			strerror(-err),
			err == -EPERM ? "; in a container: cap_add NET_ADMIN, and no "
					"no-new-privileges, which drops the binary's file capability" :
					"");
		return err;
	}
	err = egd_nft_verify(nc, phase);
	if (err) {
		egd_err("nft mode: the ruleset read back from the kernel is not the one installed "
			"(%s)",
			strerror(-err));
		return err;
	}
	egd_info("nft mode: table inet %s installed and verified (daemon cgroup id %llu at "
		 "level %u)",
		 EGD_NFT_TABLE, (unsigned long long)nc->daemon_cgroup_id,
		 nc->daemon_cgroup_level);
	return 0;
}

int egd_nftmode_enforce(const struct egd_nft_config *nc, enum egd_phase phase)
{
	int err = egd_nft_verify(nc, phase);

	if (!err)
		return 0;
	egd_err("SECURITY: nftables table inet %s %s; reinstalling", EGD_NFT_TABLE,
		err == -ENOENT ? "was removed" : "was altered");
	return egd_nftmode_start(nc, phase);
}
