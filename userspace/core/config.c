/* SPDX-License-Identifier: MIT */
/* Settings from the environment and flags; see config.h. */
#include <stdio.h>

#include "core/config.h"
#include "core/log.h"
#include "datapath/nft.h" /* the list parsers, shared with nft mode */
#include "proxy/proxy_config.h" /* the proxy's string defaults */

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/*
 * OPT_IPLIST, OPT_CIDRLIST, OPT_PORTLIST and OPT_PROXY have no field in
 * struct egd_config_run: their readers (nft mode, attach under exec, the
 * policy proxy) ask egd_config_get(). The lists are checked here (the same
 * parsers as their readers'); OPT_PROXY is checked by
 * egd_proxy_config_load(), the one parser of the proxy's settings, whose
 * defaults (shown by egressd help) are its own.
 */
enum opt_type { OPT_PORT, OPT_HOSTPORT, OPT_HOSTPORT_OFF, OPT_PATH, OPT_PHASE, OPT_HOSTLIST,
		OPT_URL_HOSTLIST, OPT_UINT, OPT_MODE, OPT_LOGLEVEL, OPT_IPLIST, OPT_CIDRLIST,
		OPT_PORTLIST, OPT_PROXY, OPT_INTERCEPT_CIDRS, OPT_ECH };

struct opt {
	const char *flag;
	const char *env;
	const char *def;
	enum opt_type type;
	size_t off;
	unsigned int min, max; /* OPT_UINT */
	const char *help;
};

#define OFF(f) offsetof(struct egd_config_run, f)

/* Order matters once: EGRESSD_INTERCEPT_HOSTS defaults to the host of
 * UPSTREAM_BASE_URL, so the URL is read first. */
static const struct opt opts[] = {
	{ "listen", "EGRESSD_LISTEN", "127.0.0.1:15443", OPT_PORT, OFF(listen_port), 0, 0,
	  "transparent TCP listener (also on [::1] at the same port)" },
	/* Never "off": the kernel side sends the agent's port-53 traffic here
	 * in every capture mode, and nobody listening would only break the
	 * agent's lookups, not open anything. */
	{ "dns-listen", "EGRESSD_DNS_LISTEN", "127.0.0.1:15053", OPT_PORT, OFF(dns_port), 0, 0,
	  "policy DNS on UDP and TCP (also on [::1] at the same port)" },
	{ "dns-max-ttl-s", "EGRESSD_DNS_MAX_TTL_S", "30", OPT_UINT, OFF(dns_max_ttl_s), 1, 86400,
	  "TTL cap of the policy DNS's answers, its own and relayed" },
	{ "admin-listen", "EGRESSD_ADMIN_LISTEN", "127.0.0.1:15000", OPT_HOSTPORT_OFF, OFF(admin),
	  0, 0, "/healthz, /readyz, /metrics; \"off\" disables" },
	{ "sentinel", "EGRESSD_SENTINEL", "/tmp/egress-unlocked", OPT_PATH, OFF(sentinel), 0, 0,
	  "present = verification phase" },
	{ "phase", "EGRESSD_PHASE", "sentinel", OPT_PHASE, 0, 0, 0,
	  "sentinel (follow the file), or a fixed agent|verification" },
	/* Set by `egressd exec` for its own daemon: the command runs in a
	 * mount namespace where the sentinel's directory is hidden. */
	{ "sentinel-hidden", "EGRESSD_SENTINEL_HIDDEN", "0", OPT_UINT, OFF(sentinel_hidden), 0, 1,
	  "1: the sandbox cannot see the sentinel's directory (its own mount namespace hides "
	  "it; exec sets this), so a directory others can write is accepted" },
	{ "allow-exempt-in-attached", "EGRESSD_ALLOW_EXEMPT_IN_ATTACHED", "0", OPT_UINT,
	  OFF(allow_exempt_in_attached), 0, 1,
	  "1: exempt the daemon's own cgroup even inside the attached cgroup (pod mode's "
	  "sidecar only; never the attached cgroup itself or an ancestor)" },
	{ "upstream-base-url", "UPSTREAM_BASE_URL", EGD_UPSTREAM_BASE_URL_DEFAULT, OPT_URL_HOSTLIST,
	  OFF(policy.intercept), 0, 0, "the LLM gateway; its host is intercepted by default" },
	{ "intercept-hosts", "EGRESSD_INTERCEPT_HOSTS", NULL, OPT_HOSTLIST, OFF(policy.intercept),
	  0, 0, "hosts handed to the policy proxy (default: host of UPSTREAM_BASE_URL)" },
	{ "agent-allow", "EGRESSD_AGENT_ALLOW", "", OPT_HOSTLIST, OFF(policy.agent_allow), 0, 0,
	  "extra hosts tunnelled in the agent phase (exact or *.suffix)" },
	{ "intercept-cidrs", "EGRESSD_INTERCEPT_CIDRS", "", OPT_INTERCEPT_CIDRS,
	  OFF(policy.intercept_cidrs), 0, 0,
	  "comma list of CIDRs: TCP to them goes to the policy proxy whatever its hello says" },
	{ "ech", "EGRESSD_ECH", "refuse", OPT_ECH, OFF(policy.ech_allow), 0, 0,
	  "refuse (TLS hellos with encrypted_client_hello are refused in both phases) or "
	  "allow (judged by outer SNI and destination)" },
	/* No default: unset means the embedded policy proxy serves intercepted
	 * flows; setting it is how an external proxy is kept. */
	{ "intercept-upstream", "EGRESSD_INTERCEPT_UPSTREAM", NULL, OPT_HOSTPORT,
	  OFF(intercept_upstream), 0, 0,
	  "ADDR:PORT of an external proxy given intercepted flows untouched "
	  "(unset: the embedded policy proxy serves them)" },
	{ "first-byte-ms", "EGRESSD_FIRST_BYTE_MS", "250", OPT_UINT, OFF(first_byte_ms), 1, 60000,
	  "verification phase: wait for a client's first byte before tunnelling it "
	  "without a host (the agent phase waits for the sniff deadline)" },
	{ "sniff-timeout-ms", "EGRESSD_SNIFF_TIMEOUT_MS", "5000", OPT_UINT, OFF(sniff_timeout_ms),
	  1, 600000, "deadline for the whole ClientHello or request head" },
	{ "connect-timeout-ms", "EGRESSD_CONNECT_TIMEOUT_MS", "10000", OPT_UINT,
	  OFF(connect_timeout_ms), 1, 600000, "deadline for dialling a tunnel's destination" },
	{ "idle-timeout-s", "EGRESSD_IDLE_TIMEOUT_S", "600", OPT_UINT, OFF(idle_timeout_s), 1,
	  604800, "a tunnel with no traffic either way for this long is closed" },
	{ "max-conns", "EGRESSD_MAX_CONNS", "8192", OPT_UINT, OFF(max_conns), 1, 1000000,
	  "connections handled at once, tunnels and the policy proxy's alike; more are "
	  "reset" },
	{ "workers", "EGRESSD_WORKERS", "0", OPT_UINT, OFF(workers), 0, EGD_WORKERS_MAX,
	  "event-loop threads; 0 = one per online CPU" },
	{ "proxy-workers", "EGRESSD_PROXY_WORKERS", "1", OPT_UINT, OFF(proxy_workers), 0,
	  EGD_WORKERS_MAX,
	  "workers that run the policy proxy (the others hand it their intercepted "
	  "connections); 0 = all" },
	{ "pin", "EGRESSD_PIN_DIR", "/sys/fs/bpf/egressd", OPT_PATH, OFF(pin_dir), 0, 0,
	  "where egressd attach pinned the BPF maps" },
	{ "mode", "EGRESSD_MODE", "auto", OPT_MODE, OFF(mode), 0, 0,
	  "capture: bpf, nft, or auto (bpf when attached, else nft)" },
	{ "log-level", "EGRESSD_LOG_LEVEL", "info", OPT_LOGLEVEL, OFF(log_level), 0, 0,
	  "error|warning|info|debug (diagnostics on stderr)" },
	{ "audit-log", "EGRESSD_AUDIT_LOG", "", OPT_PATH, OFF(audit_log), 0, 0,
	  "decision lines go here instead of stdout" },
	{ "resolvers", "EGRESSD_RESOLVERS", "nameservers of /etc/resolv.conf", OPT_IPLIST, 0, 0, 0,
	  "DNS servers the daemon itself asks (the policy DNS's lookups and forwarding), comma "
	  "list; never an allowlist for the agent, whose DNS all goes to the policy DNS" },
	{ "deny-cidrs", "EGRESSD_DENY_CIDRS", "", OPT_CIDRLIST, 0, 0, 0,
	  "CIDRs the agent never reaches, in both phases, added to the built-in "
	  "169.254.0.0/16, fe80::/10, fd00:ec2::254/128, 100.100.100.200/32, 0.0.0.0/8, "
	  "multicast, broadcast" },
	{ "loopback-allow", "EGRESSD_LOOPBACK_ALLOW", "", OPT_PORTLIST, 0, 0, 0,
	  "loopback ports the agent may dial in the agent phase, comma list" },
	/* The embedded policy proxy's settings, under the names of the
	 * reference proxy's environment (UPSTREAM_BASE_URL is above). The
	 * flag is the variable in lower case, EGRESSD_ dropped. */
	{ "openrouter-expected-api-key-sha256", "OPENROUTER_EXPECTED_API_KEY_SHA256", "", OPT_PROXY,
	  0, 0, 0, "hex SHA-256 of the only runtime key accepted" },
	{ "openrouter-management-key", "OPENROUTER_MANAGEMENT_KEY", "", OPT_PROXY, 0, 0, 0,
	  "secret for the workspace privacy check (better: the variable or -file)" },
	{ "openrouter-management-key-file", "OPENROUTER_MANAGEMENT_KEY_FILE", "", OPT_PROXY, 0, 0,
	  0, "file holding OPENROUTER_MANAGEMENT_KEY (one trailing newline ignored)" },
	{ "openrouter-workspace-id", "OPENROUTER_WORKSPACE_ID", "", OPT_PROXY, 0, 0, 0,
	  "workspace whose privacy settings are checked" },
	{ "openrouter-upstream-api-key", "OPENROUTER_UPSTREAM_API_KEY", "", OPT_PROXY, 0, 0, 0,
	  "key sent upstream instead of the agent's (better: the variable or -file)" },
	{ "openrouter-upstream-api-key-file", "OPENROUTER_UPSTREAM_API_KEY_FILE", "", OPT_PROXY, 0,
	  0, 0, "file holding OPENROUTER_UPSTREAM_API_KEY (one trailing newline ignored)" },
	{ "restricted-models", "RESTRICTED_MODELS", "", OPT_PROXY, 0, 0, 0,
	  "comma list of denied models" },
	{ "provider-order", "PROVIDER_ORDER", "", OPT_PROXY, 0, 0, 0,
	  "comma list of providers forced on every request" },
	{ "provider-allow-fallbacks", "PROVIDER_ALLOW_FALLBACKS", "true", OPT_PROXY, 0, 0, 0,
	  "anything but \"false\" allows fallbacks" },
	{ "max-cost-usd", "MAX_COST_USD", "9999", OPT_PROXY, 0, 0, 0, "budget; 429 once spent" },
	{ "budget-reserve-usd", "BUDGET_RESERVE_USD", "0.01", OPT_PROXY, 0, 0, 0,
	  "held per in-flight request" },
	{ "max-request-bytes", "MAX_REQUEST_BYTES", "10485760", OPT_PROXY, 0, 0, 0,
	  "larger request bodies get 413" },
	{ "workspace-check-ttl-s", "WORKSPACE_CHECK_TTL_S", "60", OPT_PROXY, 0, 0, 0,
	  "how long a workspace privacy answer is trusted" },
	{ "upstream-timeout-s", "UPSTREAM_TIMEOUT_S", "300", OPT_PROXY, 0, 0, 0,
	  "idle time on an upstream request before 504" },
	{ "evaluation-run-id", "EVALUATION_RUN_ID", EGD_EVALUATION_RUN_ID_DEFAULT, OPT_PROXY, 0, 0,
	  0, "recorded in the usage files" },
	{ "proxy-data-dir", "PROXY_DATA_DIR", EGD_PROXY_DATA_DIR_DEFAULT, OPT_PROXY, 0, 0, 0,
	  "proxy_usage.json and proxy_inferences.jsonl" },
	{ "upstream-ca-file", "UPSTREAM_CA_FILE", "", OPT_PROXY, 0, 0, 0,
	  "extra CA for the upstream (default: the system store)" },
	{ "upstream-resolve", "UPSTREAM_RESOLVE", "", OPT_PROXY, 0, 0, 0,
	  "host:port:addr, as curl --resolve" },
	{ "proxy-http-listen", "EGRESSD_PROXY_HTTP_LISTEN", EGD_PROXY_HTTP_LISTEN_DEFAULT,
	  OPT_PROXY, 0, 0, 0,
	  "plain-HTTP listener of the proxy; \"off\" disables (the default under exec)" },
	{ "ca-dir", "EGRESSD_CA_DIR", EGD_CA_DIR_DEFAULT, OPT_PROXY, 0, 0, 0,
	  "ca.crt and ca-bundle.crt are written here for the agent" },
	{ "ca-key-dir", "EGRESSD_CA_KEY_DIR", EGD_CA_KEY_DIR_DEFAULT, OPT_PROXY, 0, 0, 0,
	  "the CA key (0600); never mounted by the agent" },
};
#define N_OPTS (sizeof(opts) / sizeof(opts[0]))

/*
 * The flags given to the last egd_config_load(), by table entry: pointers
 * into its argv, which lives as long as the process. Written at start,
 * before any thread, and only read afterwards.
 */
static const char *flag_vals[N_OPTS];

int egd_parse_hostport(const char *s, struct egd_addr *out)
{
	char host[INET6_ADDRSTRLEN + 2];
	const char *port_s;
	char *end;
	unsigned long port;

	memset(out, 0, sizeof(*out));
	if (s[0] == '[') {
		const char *rb = strchr(s, ']');

		if (!rb || rb[1] != ':' || (size_t)(rb - s - 1) >= sizeof(host))
			return -EINVAL;
		snprintf(host, sizeof(host), "%.*s", (int)(rb - s - 1), s + 1);
		port_s = rb + 2;
		if (inet_pton(AF_INET6, host, out->addr) != 1)
			return -EINVAL;
		out->family = EGD_AF_INET6;
	} else if (strchr(s, ':')) {
		const char *colon = strrchr(s, ':');

		if ((size_t)(colon - s) >= sizeof(host))
			return -EINVAL;
		snprintf(host, sizeof(host), "%.*s", (int)(colon - s), s);
		port_s = colon + 1;
		if (inet_pton(AF_INET, host, out->addr) != 1)
			return -EINVAL;
		out->family = EGD_AF_INET;
	} else {
		port_s = s;
		out->family = EGD_AF_INET;
		out->addr[0] = htonl(INADDR_LOOPBACK);
	}
	/* Digits only: strtoul() alone would take " 80", "+80" and "-0". */
	if (!isdigit((unsigned char)port_s[0]))
		return -EINVAL;
	errno = 0;
	port = strtoul(port_s, &end, 10);
	if (errno || *end || port == 0 || port > 65535)
		return -EINVAL;
	out->port = htons((uint16_t)port);
	return 0;
}

int egd_parse_ip_list(const char *s, struct egd_addr *out, int max)
{
	char buf[4096], *save = NULL, *tok;
	int n = 0;

	if (strlen(s) >= sizeof(buf))
		return -EINVAL;
	snprintf(buf, sizeof(buf), "%s", s);
	for (tok = strtok_r(buf, ", \t", &save); tok; tok = strtok_r(NULL, ", \t", &save)) {
		struct egd_addr a = { 0 };

		if (n == max)
			return -EINVAL;
		if (inet_pton(AF_INET, tok, a.addr) == 1)
			a.family = EGD_AF_INET;
		else if (inet_pton(AF_INET6, tok, a.addr) == 1)
			a.family = EGD_AF_INET6;
		else
			return -EINVAL;
		out[n++] = a;
	}
	return n;
}

int egd_resolvers_from_file(const char *path, struct egd_addr *out, int max)
{
	char line[512];
	FILE *f = fopen(path, "re");
	int n = 0;

	if (!f)
		return 0;
	while (n < max && fgets(line, sizeof(line), f)) {
		char word[64], addr[128];

		if (sscanf(line, "%63s %127s", word, addr) != 2 || strcmp(word, "nameserver"))
			continue;
		addr[strcspn(addr, "%")] = '\0'; /* drop a v6 zone id */
		if (egd_parse_ip_list(addr, &out[n], 1) == 1)
			n++;
	}
	fclose(f);
	return n;
}

/* Hand-written: Docker's comment is no resolv.conf syntax that c-ares or
 * glibc read, and it is one bracketed list of words. */
int egd_resolvers_docker_ext(const char *path, struct egd_addr *out, int max, int *n_host)
{
	static const char tag[] = "# ExtServers: [";
	char line[512];
	FILE *f = fopen(path, "re");
	int n = -ENOENT, hosts = 0;

	if (!f)
		return -ENOENT;
	while (fgets(line, sizeof(line), f)) {
		char *p, *end, *save = NULL;

		if (strncmp(line, tag, sizeof(tag) - 1))
			continue;
		p = line + sizeof(tag) - 1;
		end = strchr(p, ']');
		if (!end)
			continue;
		*end = '\0';
		n = 0;
		hosts = 0;
		for (char *w = strtok_r(p, " \t", &save); w; w = strtok_r(NULL, " \t", &save)) {
			if (!strncmp(w, "host(", 5)) {
				hosts++;
				continue;
			}
			w[strcspn(w, "%")] = '\0'; /* drop a v6 zone id */
			/* "invalid IP" and the like are skipped, as Docker does. */
			if (n < max && egd_parse_ip_list(w, &out[n], 1) == 1)
				n++;
		}
	}
	fclose(f);
	if (n_host)
		*n_host = hosts;
	return n;
}

int egd_addr_is_loopback(const struct egd_addr *a)
{
	const uint8_t *b = (const uint8_t *)a->addr;
	static const uint8_t v4mapped[12] = { [10] = 0xff, [11] = 0xff };
	static const uint8_t one[16] = { [15] = 1 };

	if (a->family == EGD_AF_INET)
		return b[0] == 127;
	return !memcmp(b, one, 16) || (!memcmp(b, v4mapped, 12) && b[12] == 127);
}

/* "http(s)://host[:port][/]": the proxy forwards to fixed API paths, so a
 * path prefix would be silently ignored; refuse it instead. The one parser
 * of UPSTREAM_BASE_URL, for the intercept host and the proxy alike. */
int egd_parse_base_url(const char *url, char *host, size_t len, uint16_t *port, int *tls)
{
	const char *h, *e, *colon;
	unsigned long p;

	if (!strncasecmp(url, "https://", 8)) {
		*tls = 1;
		h = url + 8;
	} else if (!strncasecmp(url, "http://", 7)) {
		*tls = 0;
		h = url + 7;
	} else {
		return -EINVAL;
	}
	e = h + strcspn(h, "/");
	if (*e && strcmp(e, "/"))
		return -EINVAL;
	colon = memchr(h, ':', (size_t)(e - h));
	if (colon) {
		char *pe;

		p = strtoul(colon + 1, &pe, 10);
		if (pe != e || colon + 1 == e || !p || p > 65535)
			return -EINVAL;
	} else {
		p = *tls ? 443 : 80;
		colon = e;
	}
	if (colon == h || (size_t)(colon - h) >= len)
		return -EINVAL;
	for (const char *c = h; c < colon; c++)
		if (!isalnum((unsigned char)*c) && *c != '-' && *c != '.')
			return -EINVAL;
	memcpy(host, h, (size_t)(colon - h));
	host[colon - h] = '\0';
	*port = (uint16_t)p;
	return 0;
}

static int parse_uint(const char *s, unsigned int min, unsigned int max, unsigned int *out)
{
	char *end;
	unsigned long v;

	errno = 0;
	v = strtoul(s, &end, 10);
	if (errno || !*s || *end || v < min || v > max || s[0] == '-')
		return -EINVAL;
	*out = (unsigned int)v;
	return 0;
}

static int apply(struct egd_config_run *cfg, const struct opt *o, const char *v)
{
	void *field = (char *)cfg + o->off;
	char bad[300] = "";
	struct egd_addr a;

	switch (o->type) {
	case OPT_PORT:
		if (egd_parse_hostport(v, &a))
			return -EINVAL;
		/* The BPF programs send captured flows to loopback only. */
		if (!(a.family == EGD_AF_INET && ntohl(a.addr[0]) == INADDR_LOOPBACK))
			return -EINVAL;
		*(uint16_t *)field = ntohs(a.port);
		return 0;
	case OPT_HOSTPORT_OFF:
		if (strcmp(v, "off") == 0) {
			memset(field, 0, sizeof(struct egd_addr));
			return 0;
		}
		/* fall through */
	case OPT_HOSTPORT:
		return egd_parse_hostport(v, field);
	case OPT_PATH:
		if (strlen(v) >= PATH_MAX)
			return -EINVAL;
		snprintf(field, PATH_MAX, "%s", v);
		return 0;
	case OPT_PHASE:
		if (strcmp(v, "sentinel") == 0) {
			cfg->phase_source = EGD_PHASE_FROM_SENTINEL;
		} else if (strcmp(v, "agent") == 0) {
			cfg->phase_source = EGD_PHASE_FIXED;
			cfg->fixed_phase = EGD_PHASE_AGENT;
		} else if (strcmp(v, "verification") == 0) {
			cfg->phase_source = EGD_PHASE_FIXED;
			cfg->fixed_phase = EGD_PHASE_VERIFICATION;
		} else {
			return -EINVAL;
		}
		return 0;
	case OPT_URL_HOSTLIST: {
		char host[EGD_HOST_MAX];
		uint16_t port;
		int tls;

		if (egd_parse_base_url(v, host, sizeof(host), &port, &tls))
			return -EINVAL;
		return egd_hostlist_parse(field, host, bad, sizeof(bad));
	}
	case OPT_HOSTLIST:
		if (egd_hostlist_parse(field, v, bad, sizeof(bad))) {
			egd_err("%s: bad host pattern \"%s\"", o->env, bad);
			return -EINVAL;
		}
		return 0;
	case OPT_UINT:
		return parse_uint(v, o->min, o->max, field);
	case OPT_MODE:
		if (strcmp(v, "auto") == 0)
			*(enum egd_mode_req *)field = EGD_MODE_AUTO;
		else if (strcmp(v, "bpf") == 0)
			*(enum egd_mode_req *)field = EGD_MODE_BPF;
		else if (strcmp(v, "nft") == 0)
			*(enum egd_mode_req *)field = EGD_MODE_NFT;
		else
			return -EINVAL;
		return 0;
	case OPT_LOGLEVEL: {
		static const char *const lv[] = { "error", "warning", "info", "debug" };

		for (int i = 0; i < 4; i++) {
			if (strcmp(v, lv[i]) == 0) {
				*(int *)field = i;
				return 0;
			}
		}
		return -EINVAL;
	}
	case OPT_IPLIST: {
		struct egd_addr ips[EGD_RESOLVERS_MAX_ENTRIES];

		return egd_parse_ip_list(v, ips, EGD_RESOLVERS_MAX_ENTRIES) < 0 ? -EINVAL : 0;
	}
	case OPT_CIDRLIST: {
		struct egd_nft_cidr c[EGD_NFT_DENY_MAX];

		return egd_nft_parse_cidrs(v, c, EGD_NFT_DENY_MAX) < 0 ? -EINVAL : 0;
	}
	case OPT_PORTLIST: {
		uint16_t p[EGD_NFT_LOOPBACK_ALLOW_MAX];

		return egd_nft_parse_ports(v, p, EGD_NFT_LOOPBACK_ALLOW_MAX) < 0 ? -EINVAL : 0;
	}
	case OPT_PROXY:
		return 0;
	case OPT_INTERCEPT_CIDRS:
		if (egd_cidrlist_parse(field, v, bad, sizeof(bad))) {
			egd_err("%s: bad CIDR \"%s\"", o->env, bad);
			return -EINVAL;
		}
		return 0;
	case OPT_ECH:
		if (strcmp(v, "refuse") == 0)
			*(int *)field = 0;
		else if (strcmp(v, "allow") == 0)
			*(int *)field = 1;
		else
			return -EINVAL;
		return 0;
	}
	return -EINVAL;
}

static const char *flag_value(int argc, char **argv, const char *flag, int *err)
{
	size_t fl = strlen(flag);

	for (int i = 0; i < argc; i++) {
		const char *a = argv[i];

		if (strncmp(a, "--", 2) || strncmp(a + 2, flag, fl))
			continue;
		if (a[2 + fl] == '=')
			return a + 3 + fl;
		if (a[2 + fl] == '\0') {
			if (i + 1 < argc)
				return argv[i + 1];
			egd_err("--%s needs a value", flag);
			*err = -EINVAL;
		}
	}
	return NULL;
}

static int known_flags(int argc, char **argv)
{
	for (int i = 0; i < argc; i++) {
		const char *a = argv[i];
		int found = 0;

		if (strncmp(a, "--", 2)) {
			egd_err("unexpected argument \"%s\" (see egressd help)", a);
			return -EINVAL;
		}
		for (size_t j = 0; j < N_OPTS && !found; j++) {
			size_t fl = strlen(opts[j].flag);

			if (strncmp(a + 2, opts[j].flag, fl) == 0 &&
			    (a[2 + fl] == '\0' || a[2 + fl] == '=')) {
				found = 1;
				if (a[2 + fl] == '\0')
					i++; /* its value */
			}
		}
		if (!found) {
			egd_err("unknown option %s (see egressd help)", a);
			return -EINVAL;
		}
	}
	return 0;
}

int egd_config_load(struct egd_config_run *cfg, int argc, char **argv)
{
	int err;

	memset(flag_vals, 0, sizeof(flag_vals));
	err = known_flags(argc, argv);
	if (err)
		return err;
	memset(cfg, 0, sizeof(*cfg));
	for (size_t i = 0; i < N_OPTS; i++) {
		const struct opt *o = &opts[i];
		const char *from = "default", *v = flag_value(argc, argv, o->flag, &err);

		if (err)
			return err;
		/* An empty proxy flag would read as unset, hiding the variable
		 * and giving the default: refused, as an empty value is for
		 * the daemon's own settings. */
		if (v && !*v && (o->type == OPT_PROXY || o->type == OPT_IPLIST)) {
			egd_err("--%s: empty value (leave the flag out for the default)", o->flag);
			return -EINVAL;
		}
		flag_vals[i] = v;
		if (v) {
			from = "flag";
		} else if ((v = getenv(o->env))) {
			from = "environment";
		} else if (o->type == OPT_IPLIST || o->type == OPT_PROXY) {
			continue; /* their defaults belong to their readers */
		} else {
			v = o->def;
		}
		if (!v)
			continue;
		if (apply(cfg, o, v)) {
			if (o->type == OPT_UINT)
				egd_err("bad value \"%s\" for %s (--%s, from the %s): expected "
					"a whole number from %u to %u: %s",
					v, o->env, o->flag, from, o->min, o->max, o->help);
			else
				egd_err("bad value \"%s\" for %s (--%s, from the %s): expected %s",
					v, o->env, o->flag, from, o->help);
			return -EINVAL;
		}
	}
	if (cfg->policy.intercept.n == 0)
		egd_warn("no intercept host: the policy proxy receives nothing");
	return 0;
}

static const struct opt *find(const char *env)
{
	for (size_t i = 0; i < N_OPTS; i++)
		if (strcmp(opts[i].env, env) == 0)
			return &opts[i];
	return NULL;
}

const char *egd_config_get(const char *env)
{
	const struct opt *o = find(env);

	if (o && flag_vals[o - opts])
		return flag_vals[o - opts];
	return getenv(env);
}

const char *egd_config_default(const char *env)
{
	const struct opt *o = find(env);

	return o ? o->def : NULL;
}

const char *egd_config_source(const char *env)
{
	const struct opt *o = find(env);

	if (o && flag_vals[o - opts])
		return "flag";
	return getenv(env) ? "environment" : NULL;
}

const char *egd_config_flag(const char *env)
{
	const struct opt *o = find(env);

	return o ? o->flag : NULL;
}

void egd_config_usage(FILE *out)
{
	for (size_t i = 0; i < N_OPTS; i++) {
		if (opts[i].type == OPT_PROXY && (i == 0 || opts[i - 1].type != OPT_PROXY))
			fprintf(out, "\npolicy proxy settings (a flag's value shows in "
				     "/proc/PID/cmdline: give the two secrets\nby variable or "
				     "*_FILE, not by flag):\n");
		/* A long flag gets a line of its own rather than a ragged column. */
		if (strlen(opts[i].flag) > 20)
			fprintf(out, "  --%s\n  %-22s %-28s [%s]\n  %24s %s\n", opts[i].flag, "",
				opts[i].env, opts[i].def ? opts[i].def : "", "", opts[i].help);
		else
			fprintf(out, "  --%-20s %-28s [%s]\n  %24s %s\n", opts[i].flag,
				opts[i].env, opts[i].def ? opts[i].def : "", "", opts[i].help);
	}
}
