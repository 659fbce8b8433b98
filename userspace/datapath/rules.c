/* SPDX-License-Identifier: MIT */
/* Parsers of the kernel side's lists; see rules.h. */
#include "datapath/rules.h"
#include "core/config.h"
#include "datapath/nft.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*
 * The lists are parsed by nft mode's parsers, so that one setting has one
 * grammar and one limit in both modes (and in the settings check at start);
 * here they only become the BPF maps' keys.
 */
int egd_parse_cidr_list(const char *s, struct egd_lpm_key *out, size_t max)
{
	struct egd_nft_cidr c[EGD_NFT_DENY_MAX];
	int n;

	if (!s)
		return 0;
	n = egd_nft_parse_cidrs(s, c, EGD_NFT_DENY_MAX);
	if (n < 0)
		return n;
	if ((size_t)n > max)
		return -E2BIG;
	for (int i = 0; i < n; i++) {
		memset(&out[i], 0, sizeof(out[i]));
		if (c[i].family == AF_INET) {
			out[i].addr[2] = htonl(0x0000ffff);
			memcpy(&out[i].addr[3], c[i].addr, 4);
			out[i].prefixlen = 96u + c[i].prefix;
		} else {
			memcpy(out[i].addr, c[i].addr, 16);
			out[i].prefixlen = c[i].prefix;
		}
	}
	return n;
}

int egd_deny_cidrs(const char *extra, struct egd_lpm_key *out, size_t max)
{
	int n = egd_parse_cidr_list(EGD_NFT_DENY_DEFAULT, out, max), m;

	if (n < 0)
		return n;
	m = egd_parse_cidr_list(extra, out + n, max - (size_t)n);
	return m < 0 ? m : n + m;
}

int egd_parse_port_list(const char *s, uint16_t *out, size_t max)
{
	return s ? egd_nft_parse_ports(s, out, (int)max) : 0;
}

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

static int is_loopback(const struct egd_addr *a)
{
	if (a->family == EGD_AF_INET)
		return (ntohl(a->addr[0]) >> 24) == 127;
	return !a->addr[0] && !a->addr[1] && !a->addr[2] && ntohl(a->addr[3]) == 1;
}

int egd_dns_listen_port(const char *s, uint16_t *port)
{
	char item[INET6_ADDRSTRLEN + 8]; /* "[v6]:port" */
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
