/* SPDX-License-Identifier: MIT */
/*
 * Configuration of the daemon. Every setting is an environment variable and
 * the same setting as a --flag (the flag wins); the names and defaults are
 * the contract in DESIGN.md. Bad values are refused at start with a message
 * naming the variable, never guessed at.
 */
#ifndef EGD_CONFIG_H
#define EGD_CONFIG_H

#include <limits.h>
#include <stdint.h>
#include <stdio.h>

#include "egressd.h"
#include "egress/decide.h"

enum egd_phase_source {
	EGD_PHASE_FROM_SENTINEL = 0, /* follow EGRESSD_SENTINEL */
	EGD_PHASE_FIXED,	     /* EGRESSD_PHASE=agent|verification */
};

enum egd_mode_req {
	EGD_MODE_AUTO = 0,
	EGD_MODE_BPF,
	EGD_MODE_NFT,
};

/* Upper bound on event-loop threads (EGRESSD_WORKERS), whatever the CPU
 * count says: past a few dozen, threads only add memory and contention. */
#define EGD_WORKERS_MAX 64

struct egd_config_run {
	uint16_t listen_port;		/* host order */
	uint16_t dns_port;		/* policy DNS, 127.0.0.1 and ::1; host order */
	unsigned int dns_max_ttl_s;	/* TTL cap of the policy DNS's answers */
	struct egd_addr admin;		/* family 0 when disabled */
	char sentinel[PATH_MAX];
	enum egd_phase_source phase_source;
	enum egd_phase fixed_phase;
	unsigned int sentinel_hidden;	       /* EGRESSD_SENTINEL_HIDDEN */
	unsigned int allow_exempt_in_attached; /* EGRESSD_ALLOW_EXEMPT_IN_ATTACHED */
	struct egd_policy policy;
	struct egd_addr intercept_upstream; /* family 0: the embedded proxy */
	unsigned int first_byte_ms;
	unsigned int sniff_timeout_ms;
	unsigned int connect_timeout_ms;
	unsigned int idle_timeout_s;
	unsigned int max_conns;
	unsigned int workers; /* event-loop threads; 0: one per online CPU */
	unsigned int proxy_workers; /* of them, running the policy proxy; 0: all */
	char pin_dir[PATH_MAX];
	enum egd_mode_req mode;
	int log_level;
	char audit_log[PATH_MAX]; /* empty: stdout */
};

/*
 * Fill @cfg from the environment and @argv (flags of the form --name=value
 * or --name value). Unknown flags and bad values print a message naming the
 * setting and return -EINVAL. @argv/@argc are what follows the subcommand.
 */
int egd_config_load(struct egd_config_run *cfg, int argc, char **argv);

/*
 * Settings without a field above (EGRESSD_RESOLVERS, the policy proxy's):
 * the value of variable @env, its --flag as given to the last
 * egd_config_load() first, else the environment; NULL when neither. Call
 * after egd_config_load(), and from any thread once it has returned.
 */
const char *egd_config_get(const char *env);

/* Where egd_config_get(@env) comes from: "flag", "environment", or NULL. */
const char *egd_config_source(const char *env);

/* The flag of @env without its "--", or NULL when @env has none. */
const char *egd_config_flag(const char *env);

/* The default the settings table shows for @env, or NULL (none, or not a
 * setting). For the proxy's number settings the proxy's loader holds the
 * real default as a number; a unit test keeps the two equal. */
const char *egd_config_default(const char *env);

/* Print the settings table (flag, variable, default, meaning). */
void egd_config_usage(FILE *out);

/* Parse "ADDR:PORT", "[V6]:PORT" or "PORT" (127.0.0.1), with a literal
 * address and a port of digits from 1 to 65535. 0 or -EINVAL. */
int egd_parse_hostport(const char *s, struct egd_addr *out);

/* Parse UPSTREAM_BASE_URL ("http(s)://host[:port]", no path). 0 or -EINVAL. */
int egd_parse_base_url(const char *url, char *host, size_t len, uint16_t *port, int *tls);

/* Parse a comma list of IP addresses into @out (at most @max). Returns the
 * count, or -EINVAL. */
int egd_parse_ip_list(const char *s, struct egd_addr *out, int max);

/* The nameservers of a resolv.conf-format file. Returns the count. */
int egd_resolvers_from_file(const char *path, struct egd_addr *out, int max);

/*
 * The upstream servers Docker's embedded resolver forwards to, from the
 * comment Docker Engine (25.0 on) writes into a container's resolv.conf:
 * "# ExtServers: [192.0.2.53 host(127.0.0.53)]". Only the plain entries,
 * which Docker asks from inside the container's network namespace, go to
 * @out; a "host(ADDR)" entry is asked from the host's namespace, where the
 * container cannot reach it, and is only counted in *@n_host (may be
 * NULL). Returns the count of plain entries; -ENOENT when the file has no
 * such line (an older engine, or no Docker at all).
 */
int egd_resolvers_docker_ext(const char *path, struct egd_addr *out, int max, int *n_host);

/* Whether @a is a loopback address: 127.0.0.0/8, ::1 or ::ffff:127.0.0.0/104. */
int egd_addr_is_loopback(const struct egd_addr *a);

#endif
