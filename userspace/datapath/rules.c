/* SPDX-License-Identifier: MIT */
/* Parsers of the kernel side's lists; see rules.h. */
#include "datapath/rules.h"
#include "core/config.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Longest item worth reading: a full IPv6 address and "/128". */
#define ITEM_MAX_CHARS (INET6_ADDRSTRLEN + 4)

/* Copy the next comma-separated item of *s, blanks trimmed, into @buf and
 * advance *s past its comma. -EINVAL when it is empty or too long. */
static int next_item(const char **s, char *buf, size_t len)
{
	const char *p = *s, *end = strchr(p, ',');
	size_t n;

	if (!end)
		end = p + strlen(p);
	*s = *end ? end + 1 : end;
	while (p < end && isspace((unsigned char)*p))
		p++;
	while (end > p && isspace((unsigned char)end[-1]))
		end--;
	n = (size_t)(end - p);
	if (n == 0 || n >= len)
		return -EINVAL;
	memcpy(buf, p, n);
	buf[n] = '\0';
	return 0;
}

static int parse_cidr(char *item, struct egd_lpm_key *k)
{
	char *slash = strchr(item, '/'), *end;
	unsigned long len;
	int v6 = strchr(item, ':') != NULL;

	memset(k, 0, sizeof(*k));
	if (slash)
		*slash = '\0';
	if (v6) {
		if (inet_pton(AF_INET6, item, k->addr) != 1)
			return -EINVAL;
	} else {
		k->addr[2] = htonl(0x0000ffff);
		if (inet_pton(AF_INET, item, &k->addr[3]) != 1)
			return -EINVAL;
	}
	len = v6 ? 128 : 32;
	if (slash) {
		if (!isdigit((unsigned char)slash[1]))
			return -EINVAL;
		errno = 0;
		len = strtoul(slash + 1, &end, 10);
		if (errno || *end || len > (v6 ? 128u : 32u))
			return -EINVAL;
	}
	k->prefixlen = (__u32)len + (v6 ? 0 : 96);
	return 0;
}

int egd_parse_cidr_list(const char *s, struct egd_lpm_key *out, size_t max)
{
	char item[ITEM_MAX_CHARS];
	size_t n = 0;

	if (!s || !*s)
		return 0;
	while (*s) {
		if (next_item(&s, item, sizeof(item)))
			return -EINVAL;
		if (n == max)
			return -E2BIG;
		if (parse_cidr(item, &out[n]))
			return -EINVAL;
		n++;
	}
	return (int)n;
}

int egd_deny_cidrs(const char *extra, struct egd_lpm_key *out, size_t max)
{
	int n = egd_parse_cidr_list(EGD_DENY_CIDRS_DEFAULT, out, max), m;

	if (n < 0)
		return n;
	m = egd_parse_cidr_list(extra, out + n, max - (size_t)n);
	return m < 0 ? m : n + m;
}

int egd_parse_port_list(const char *s, uint16_t *out, size_t max)
{
	char item[ITEM_MAX_CHARS], *end;
	unsigned long port;
	size_t n = 0;

	if (!s)
		return 0;
	while (*s) {
		if (next_item(&s, item, sizeof(item)) || !isdigit((unsigned char)item[0]))
			return -EINVAL;
		errno = 0;
		port = strtoul(item, &end, 10);
		if (errno || *end || port == 0 || port > 65535)
			return -EINVAL;
		if (n == max)
			return -E2BIG;
		out[n++] = (uint16_t)port;
	}
	return (int)n;
}

static int is_loopback(const struct egd_addr *a)
{
	if (a->family == EGD_AF_INET)
		return (ntohl(a->addr[0]) >> 24) == 127;
	return !a->addr[0] && !a->addr[1] && !a->addr[2] && ntohl(a->addr[3]) == 1;
}

int egd_dns_listen_port(const char *s, uint16_t *port)
{
	char item[ITEM_MAX_CHARS + 8];
	struct egd_addr a;

	*port = 0;
	if (!s) {
		*port = EGD_DEFAULT_DNS_PORT;
		return 0;
	}
	if (!*s)
		return -EINVAL;
	while (*s) {
		if (next_item(&s, item, sizeof(item)) || egd_parse_hostport(item, &a) ||
		    !is_loopback(&a))
			return -EINVAL;
		if (*port && *port != ntohs(a.port))
			return -EINVAL;
		*port = ntohs(a.port);
	}
	return 0;
}
