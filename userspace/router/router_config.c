/* SPDX-License-Identifier: MIT */
/* Settings of `egressd router`; see router_config.h. */
#include "router/router_config.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/config.h"
#include "core/log.h"

enum rtype { R_HOSTPORT, R_HOSTPORT_OFF, R_DOMAIN, R_UINT, R_SECRET, R_SECRET_FILE, R_BOOL,
	     R_CIDRS_ALLOWED, R_CIDRS_TRUSTED, R_PATH, R_LOGLEVEL };

struct ropt {
	const char *env;
	const char *def;
	enum rtype type;
	unsigned int min, max;
	size_t off;
	const char *help;
};

#define OFF(f) offsetof(struct egd_router_config, f)
/* A week: past that a limit in seconds is a typo, not a policy. */
#define WEEK_S 604800

static const struct ropt ropts[] = {
	{ "ROUTER_LISTEN", "0.0.0.0:8080", R_HOSTPORT, 0, 0, OFF(listen),
	  "ADDR:PORT the router serves sandboxes' clients on" },
	{ "ROUTER_ADMIN_LISTEN", "0.0.0.0:9090", R_HOSTPORT_OFF, 0, 0, OFF(admin),
	  "/healthz, /readyz, /metrics; \"off\" disables" },
	{ "CLUSTER_DOMAIN", "cluster.local", R_DOMAIN, 0, 0, OFF(cluster_domain),
	  "targets are <id>.<namespace>.svc.<domain>" },
	{ "PROXY_TIMEOUT_SECONDS", "180", R_UINT, 1, WEEK_S, OFF(timeout_s),
	  "default and cap of X-Sandbox-Timeout: each wait on a sandbox (to the response "
	  "head, idle while streaming), never a total" },
	{ "ROUTER_AUTH_TOKEN", "", R_SECRET, 0, 0, OFF(token),
	  "bearer token clients must send (better: the variable or -file)" },
	{ "ROUTER_AUTH_TOKEN_FILE", "", R_SECRET_FILE, 0, 0, OFF(token),
	  "file holding ROUTER_AUTH_TOKEN (surrounding whitespace ignored)" },
	{ "ALLOW_UNAUTHENTICATED_ROUTER", "false", R_BOOL, 0, 0, OFF(allow_unauthenticated),
	  "true: start without a token (anyone reaching the port reaches every sandbox)" },
	{ "ROUTER_ALLOWED_CIDRS", "", R_CIDRS_ALLOWED, 0, 0, OFF(allowed),
	  "pod CIDRs X-Sandbox-Pod-IP must fall in (empty: any address not refused by class)" },
	{ "ROUTER_TRUSTED_PROXIES", "", R_CIDRS_TRUSTED, 0, 0, OFF(trusted),
	  "peers whose X-Forwarded-For/-Proto are kept and appended to" },
	{ "ROUTER_WS_IDLE_S", "3600", R_UINT, 1, WEEK_S, OFF(ws_idle_s),
	  "a WebSocket with no byte either way for this long is closed" },
	{ "ROUTER_WS_MAX_S", "86400", R_UINT, 1, WEEK_S, OFF(ws_max_s),
	  "a WebSocket is closed after this long whatever its traffic" },
	{ "ROUTER_MAX_CONNS", "8192", R_UINT, 1, 1000000, OFF(max_conns),
	  "client connections at once; more are closed at accept" },
	{ "ROUTER_MAX_REQUESTS_PER_CONN", "10000", R_UINT, 1, 100000000,
	  OFF(max_requests_per_conn), "requests on one keep-alive client connection" },
	{ "ROUTER_POOL_PER_TARGET", "16", R_UINT, 0, 100000, OFF(pool_per_target),
	  "idle keep-alive connections kept per sandbox target (0: no pool)" },
	{ "ROUTER_POOL_MAX_IDLE", "1024", R_UINT, 0, 1000000, OFF(pool_max_idle),
	  "idle keep-alive connections kept in total" },
	{ "ROUTER_SHUTDOWN_S", "25", R_UINT, 0, 3600, OFF(shutdown_s),
	  "on SIGTERM, how long in-flight requests may finish" },
	{ "ROUTER_ACCESS_LOG", "", R_PATH, 0, 0, OFF(access_log),
	  "JSON access lines go here (default stdout; \"off\": none)" },
	{ "EGRESSD_LOG_LEVEL", "info", R_LOGLEVEL, 0, 0, OFF(log_level),
	  "error|warning|info|debug (diagnostics on stderr)" },
};
#define N_ROPTS (sizeof(ropts) / sizeof(ropts[0]))

/* "ROUTER_WS_IDLE_S" -> "router-ws-idle-s". */
static void flag_name(const char *env, char *out, size_t len)
{
	size_t i;

	for (i = 0; env[i] && i + 1 < len; i++)
		out[i] = env[i] == '_' ? '-' : (char)tolower((unsigned char)env[i]);
	out[i] = '\0';
}

static const struct ropt *find_flag(const char *arg, size_t len)
{
	char name[64];

	for (size_t i = 0; i < N_ROPTS; i++) {
		flag_name(ropts[i].env, name, sizeof(name));
		if (strlen(name) == len && strncmp(name, arg, len) == 0)
			return &ropts[i];
	}
	return NULL;
}

static int trim_copy(const char *v, char *out, size_t len)
{
	const char *b = v, *e = v + strlen(v);

	while (b < e && isspace((unsigned char)*b))
		b++;
	while (e > b && isspace((unsigned char)e[-1]))
		e--;
	if ((size_t)(e - b) >= len)
		return -EINVAL;
	memcpy(out, b, (size_t)(e - b));
	out[e - b] = '\0';
	return 0;
}

static int read_secret_file(const char *path, char *out, size_t len)
{
	char buf[EGD_ROUTER_TOKEN_MAX_BYTES + 1];
	FILE *f = fopen(path, "re");
	size_t n;

	if (!f)
		return -errno;
	n = fread(buf, 1, sizeof(buf) - 1, f);
	if (ferror(f) || !feof(f)) {
		fclose(f);
		return -EINVAL;
	}
	fclose(f);
	buf[n] = '\0';
	if (memchr(buf, '\0', n))
		return -EINVAL;
	return trim_copy(buf, out, len);
}

static int apply(struct egd_router_config *cfg, const struct ropt *o, const char *v)
{
	char *field = (char *)cfg + o->off;
	char *end;
	unsigned long u;
	int n;

	switch (o->type) {
	case R_HOSTPORT_OFF:
		if (strcmp(v, "off") == 0) {
			memset(field, 0, sizeof(struct egd_addr));
			return 0;
		}
		/* fall through */
	case R_HOSTPORT:
		return egd_parse_hostport(v, (struct egd_addr *)field);
	case R_DOMAIN:
		/* Labels of [a-z0-9-], dots between: what a resolver accepts. */
		if (!*v || strlen(v) >= EGD_ROUTER_DOMAIN_MAX_BYTES || v[0] == '.' ||
		    v[strlen(v) - 1] == '.' || strstr(v, ".."))
			return -EINVAL;
		for (const char *p = v; *p; p++)
			if (!(islower((unsigned char)*p) || isdigit((unsigned char)*p) ||
			      *p == '-' || *p == '.'))
				return -EINVAL;
		snprintf(field, EGD_ROUTER_DOMAIN_MAX_BYTES, "%s", v);
		return 0;
	case R_UINT:
		if (!isdigit((unsigned char)v[0]))
			return -EINVAL;
		errno = 0;
		u = strtoul(v, &end, 10);
		if (errno || *end || u < o->min || u > o->max)
			return -EINVAL;
		*(unsigned int *)field = (unsigned int)u;
		return 0;
	case R_SECRET:
		return trim_copy(v, field, EGD_ROUTER_TOKEN_MAX_BYTES);
	case R_SECRET_FILE:
		if (!*v)
			return 0;
		return read_secret_file(v, field, EGD_ROUTER_TOKEN_MAX_BYTES);
	case R_BOOL: {
		static const char *const yes[] = { "1", "true", "t", "yes", "y", "on" };
		static const char *const no[] = { "0", "false", "f", "no", "n", "off", "" };

		for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++)
			if (strcasecmp(v, yes[i]) == 0)
				return *(int *)field = 1, 0;
		for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++)
			if (strcasecmp(v, no[i]) == 0)
				return *(int *)field = 0, 0;
		return -EINVAL;
	}
	case R_CIDRS_ALLOWED:
	case R_CIDRS_TRUSTED:
		n = egd_route_cidr_parse_list(v, (struct egd_route_cidr *)field,
					      EGD_ROUTE_CIDRS_MAX);
		if (n < 0)
			return -EINVAL;
		if (o->type == R_CIDRS_ALLOWED)
			cfg->nallowed = (size_t)n;
		else
			cfg->ntrusted = (size_t)n;
		return 0;
	case R_PATH:
		if (strlen(v) >= sizeof(cfg->access_log))
			return -EINVAL;
		snprintf(field, sizeof(cfg->access_log), "%s", v);
		return 0;
	case R_LOGLEVEL:
		if (strcmp(v, "error") == 0)
			*(int *)field = EGD_LOG_ERR;
		else if (strcmp(v, "warning") == 0)
			*(int *)field = EGD_LOG_WARN;
		else if (strcmp(v, "info") == 0)
			*(int *)field = EGD_LOG_INFO;
		else if (strcmp(v, "debug") == 0)
			*(int *)field = EGD_LOG_DEBUG;
		else
			return -EINVAL;
		return 0;
	}
	return -EINVAL;
}

int egd_router_config_load(struct egd_router_config *cfg, int argc, char **argv)
{
	const char *vals[N_ROPTS] = { 0 };

	for (int i = 0; i < argc; i++) {
		const char *a = argv[i], *eq;
		const struct ropt *o;
		size_t len;

		if (strncmp(a, "--", 2) != 0) {
			egd_err("unexpected argument \"%s\" (settings are --name=value)", a);
			return -EINVAL;
		}
		a += 2;
		eq = strchr(a, '=');
		len = eq ? (size_t)(eq - a) : strlen(a);
		o = find_flag(a, len);
		if (!o) {
			egd_err("unknown flag --%.*s (see egressd help)", (int)len, a);
			return -EINVAL;
		}
		if (eq) {
			vals[o - ropts] = eq + 1;
		} else if (i + 1 < argc) {
			vals[o - ropts] = argv[++i];
		} else {
			egd_err("--%.*s needs a value", (int)len, a);
			return -EINVAL;
		}
	}
	memset(cfg, 0, sizeof(*cfg));
	for (size_t i = 0; i < N_ROPTS; i++) {
		const struct ropt *o = &ropts[i];
		const char *v = vals[i], *from = "flag";
		char flag[64];

		if (!v) {
			v = getenv(o->env);
			from = "environment";
		}
		if (!v) {
			v = o->def;
			from = "default";
		}
		/* The file, when given, wins over an empty token only. */
		if (o->type == R_SECRET_FILE && cfg->token[0] && *v) {
			egd_err("ROUTER_AUTH_TOKEN and ROUTER_AUTH_TOKEN_FILE both set: "
				"choose one");
			return -EINVAL;
		}
		if (apply(cfg, o, v)) {
			flag_name(o->env, flag, sizeof(flag));
			egd_err("bad value \"%s\" for %s (--%s, from the %s): expected %s",
				o->type == R_SECRET ? "(hidden)" : v, o->env, flag, from, o->help);
			return -EINVAL;
		}
	}
	if (!cfg->token[0] && !cfg->allow_unauthenticated) {
		egd_err("refusing to start without ROUTER_AUTH_TOKEN (or _FILE); set "
			"ALLOW_UNAUTHENTICATED_ROUTER=true to run an open router on purpose");
		return -EINVAL;
	}
	return 0;
}

void egd_router_config_usage(FILE *out)
{
	char flag[64];

	for (size_t i = 0; i < N_ROPTS; i++) {
		flag_name(ropts[i].env, flag, sizeof(flag));
		fprintf(out, "  --%-30s %s [%s]\n      %s\n", flag, ropts[i].env, ropts[i].def,
			ropts[i].help);
	}
}
