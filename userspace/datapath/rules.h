/* SPDX-License-Identifier: MIT */
/*
 * The kernel side's lists, parsed from the settings `egressd attach` reads:
 * the always-deny prefixes (EGRESSD_DENY_CIDRS, on top of the defaults),
 * the extra loopback ports the agent may reach (EGRESSD_LOOPBACK_ALLOW) and
 * the policy DNS port (EGRESSD_DNS_LISTEN). Pure functions: strings in,
 * map keys out.
 */
#ifndef EGD_RULES_H
#define EGD_RULES_H

#include <stddef.h>
#include <stdint.h>

#include "egressd.h"

/*
 * Always refused, in both phases, whatever EGRESSD_DENY_CIDRS says (it adds
 * to these, it never replaces them): link-local and the cloud metadata
 * services (AWS IMDS v4 at 169.254.169.254 and v6 at fd00:ec2::254, Alibaba
 * 100.100.100.200), "this network", multicast and broadcast.
 */
#define EGD_DENY_CIDRS_DEFAULT                                                                    \
	"169.254.0.0/16,fe80::/10,fd00:ec2::254/128,100.100.100.200/32,0.0.0.0/8,224.0.0.0/4,"  \
	"ff00::/8,255.255.255.255/32"

/*
 * Parse a comma list of prefixes ("ADDR/LEN", or an address alone for a
 * host) into LPM keys, v4 as v4-mapped v6. Blanks around items are allowed,
 * empty items are not. Returns the count, -EINVAL on a bad item, -E2BIG
 * past @max.
 */
int egd_parse_cidr_list(const char *s, struct egd_lpm_key *out, size_t max);

/* The defaults followed by @extra (NULL or "" for none). Count or -errno. */
int egd_deny_cidrs(const char *extra, struct egd_lpm_key *out, size_t max);

/* Parse a comma list of ports (1..65535) into @out, host order. Count,
 * -EINVAL or -E2BIG. An empty string is an empty list. */
int egd_parse_port_list(const char *s, uint16_t *out, size_t max);

/*
 * The port of EGRESSD_DNS_LISTEN: "ADDR:PORT" items, comma separated, all
 * on loopback and on one port, since the kernel sends DNS to 127.0.0.1 and
 * ::1 at that port. NULL gives EGD_DEFAULT_DNS_PORT. 0 or -EINVAL.
 */
int egd_dns_listen_port(const char *s, uint16_t *port);

#endif
