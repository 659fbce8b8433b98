/* SPDX-License-Identifier: MIT */
/*
 * The intercept-address table: every address the policy DNS gave the agent
 * for an intercept host, with the host and when the answer expires. A TCP
 * flow to one of them goes to the policy proxy whatever its first bytes say
 * (decide()'s orig_intercept). Entries expire; the table is bounded
 * (EGD_ICADDR_MAX_ENTRIES, as the kernel's map), and a full table drops the
 * entry closest to expiry.
 *
 * Every entry added is also handed to a sink, if one is set: in BPF mode
 * the daemon points it at the kernel's intercept-address map, so the
 * kernel learns each address the moment the agent does.
 *
 * Written by the policy DNS (one thread), read by every worker: a
 * read-write lock guards it.
 */
#ifndef EGD_ICADDR_H
#define EGD_ICADDR_H

#include <stddef.h>
#include <stdint.h>

#include "egressd.h"
#include "egress/sniff.h" /* EGD_HOST_MAX */

struct egd_icaddr_table;

/* Called for every entry added or refreshed, with the entry's expiry on
 * CLOCK_MONOTONIC in ns (bpf_ktime_get_ns()'s clock). 0 or -errno; an
 * error is logged and counted, the table keeps the entry. */
typedef int (*egd_icaddr_put_fn)(void *arg, const struct egd_ip *ip, uint64_t expires_ns);

/* NULL + errno. */
struct egd_icaddr_table *egd_icaddr_new(void);
void egd_icaddr_free(struct egd_icaddr_table *t);

/* Set (or clear, with NULL) the sink. Call before the DNS serves. */
void egd_icaddr_set_sink(struct egd_icaddr_table *t, egd_icaddr_put_fn put, void *arg);

/* Remember that @ip answered for @host until @expires_ns; an entry for @ip
 * already there gets the later expiry. Returns what the sink returned. */
int egd_icaddr_add(struct egd_icaddr_table *t, const struct egd_ip *ip, const char *host,
		   uint64_t expires_ns);

/* 1 when @ip is in the table and not expired at @now_ns (then @host, if
 * non-NULL, gets the name it answered for); 0 otherwise. */
int egd_icaddr_lookup(struct egd_icaddr_table *t, const struct egd_ip *ip, uint64_t now_ns,
		      char *host, size_t len);

/* Drop the entries expired at @now_ns; returns how many remain. */
size_t egd_icaddr_expire(struct egd_icaddr_table *t, uint64_t now_ns);

/* Entries held now (expired ones not yet dropped included); sink errors. */
size_t egd_icaddr_count(struct egd_icaddr_table *t);
uint64_t egd_icaddr_sink_errors(struct egd_icaddr_table *t);

/* CLOCK_MONOTONIC in ns. */
uint64_t egd_icaddr_now_ns(void);

/* The address of an egd_addr, without its port; a v4-mapped IPv6 address
 * becomes the IPv4 one. */
void egd_ip_from_addr(struct egd_ip *ip, const struct egd_addr *a);

#endif /* EGD_ICADDR_H */
