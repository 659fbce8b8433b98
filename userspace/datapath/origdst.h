/* SPDX-License-Identifier: MIT */
/*
 * Where was this accepted connection really going? One answer for every
 * capture mode: the 4-tuple record the BPF programs left (eBPF mode), or
 * SO_ORIGINAL_DST from conntrack (nftables mode).
 */
#ifndef EGD_ORIGDST_H
#define EGD_ORIGDST_H

#include <sys/socket.h>

#include "egressd.h"

struct egd_bpf;

enum egd_capture_mode {
	EGD_CAPTURE_BPF = 0,
	EGD_CAPTURE_NFT,
};

/* Fill @out for the accepted socket @fd; also returns the agent's end in
 * @peer. Returns 0, -ENOENT when the flow was not captured (a direct dial to
 * the listener), another -errno on failure. */
int egd_orig_dst(enum egd_capture_mode mode, struct egd_bpf *b, int fd, struct egd_orig *out,
		 struct egd_addr *peer);

/* Conversions between egd_addr and sockaddr; v4-mapped v6 becomes v4. */
void egd_addr_from_sockaddr(struct egd_addr *a, const struct sockaddr *sa);
socklen_t egd_addr_to_sockaddr(const struct egd_addr *a, struct sockaddr_storage *ss);
/* "1.2.3.4:443" or "[2001:db8::1]:443" */
void egd_addr_format(const struct egd_addr *a, char *buf, size_t len);

#endif
