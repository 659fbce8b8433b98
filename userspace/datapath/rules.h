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
 * Parse a list of prefixes ("ADDR/LEN", or an address alone for a host), in
 * the grammar and limit of nft mode's egd_nft_parse_cidrs(), into LPM keys,
 * v4 as v4-mapped v6. Returns the count, -EINVAL on a bad item, -E2BIG past
 * @max or EGD_NFT_DENY_MAX.
 */
int egd_parse_cidr_list(const char *s, struct egd_lpm_key *out, size_t max);

/* The always-deny defaults (EGD_NFT_DENY_DEFAULT, the one list both modes
 * use: link-local, cloud metadata, "this network", multicast, broadcast)
 * followed by @extra (NULL or "" for none): the operator's list adds, it
 * never replaces. Count or -errno. */
int egd_deny_cidrs(const char *extra, struct egd_lpm_key *out, size_t max);

/* Parse a list of ports (1..65535) into @out, host order, as
 * egd_nft_parse_ports() does. Count, -EINVAL or -E2BIG. NULL or "" is an
 * empty list. */
int egd_parse_port_list(const char *s, uint16_t *out, size_t max);

/*
 * The port of EGRESSD_DNS_LISTEN: "ADDR:PORT" items, comma separated, all
 * on loopback and on one port, since the kernel sends DNS to 127.0.0.1 and
 * ::1 at that port. NULL gives EGD_DEFAULT_DNS_PORT. 0 or -EINVAL.
 */
int egd_dns_listen_port(const char *s, uint16_t *port);

#endif
