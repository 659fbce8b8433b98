/* SPDX-License-Identifier: MIT */
/* The original destination of an accepted connection; see origdst.h. */
#include "datapath/origdst.h"
#include "datapath/bpf.h"

#include <arpa/inet.h>
#include <errno.h>
#include <linux/netfilter_ipv4.h>
#include <linux/netfilter_ipv6/ip6_tables.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

void egd_addr_from_sockaddr(struct egd_addr *a, const struct sockaddr *sa)
{
	memset(a, 0, sizeof(*a));
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)sa;

		a->family = EGD_AF_INET;
		a->port = in->sin_port;
		a->addr[0] = in->sin_addr.s_addr;
	} else if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;

		a->port = in6->sin6_port;
		if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
			a->family = EGD_AF_INET;
			memcpy(&a->addr[0], &in6->sin6_addr.s6_addr[12], 4);
		} else {
			a->family = EGD_AF_INET6;
			memcpy(a->addr, &in6->sin6_addr, 16);
		}
	}
}

socklen_t egd_addr_to_sockaddr(const struct egd_addr *a, struct sockaddr_storage *ss)
{
	memset(ss, 0, sizeof(*ss));
	if (a->family == EGD_AF_INET) {
		struct sockaddr_in *in = (struct sockaddr_in *)ss;

		in->sin_family = AF_INET;
		in->sin_port = a->port;
		in->sin_addr.s_addr = a->addr[0];
		return sizeof(*in);
	}
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;

	in6->sin6_family = AF_INET6;
	in6->sin6_port = a->port;
	memcpy(&in6->sin6_addr, a->addr, 16);
	return sizeof(*in6);
}

void egd_addr_format(const struct egd_addr *a, char *buf, size_t len)
{
	char ip[INET6_ADDRSTRLEN];

	if (a->family == EGD_AF_INET) {
		inet_ntop(AF_INET, a->addr, ip, sizeof(ip));
		snprintf(buf, len, "%s:%u", ip, ntohs(a->port));
	} else if (a->family == EGD_AF_INET6) {
		inet_ntop(AF_INET6, a->addr, ip, sizeof(ip));
		snprintf(buf, len, "[%s]:%u", ip, ntohs(a->port));
	} else {
		snprintf(buf, len, "-");
	}
}

static int orig_from_conntrack(int fd, int family, struct egd_orig *out)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	int err;

	if (family == AF_INET)
		err = getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, &ss, &len);
	else
		err = getsockopt(fd, SOL_IPV6, IP6T_SO_ORIGINAL_DST, &ss, &len);
	if (err)
		return errno == ENOENT || errno == ENOPROTOOPT ? -ENOENT : -errno;
	memset(out, 0, sizeof(*out));
	egd_addr_from_sockaddr(&out->dst, (struct sockaddr *)&ss);
	return 0;
}

int egd_orig_dst(enum egd_capture_mode mode, struct egd_bpf *b, int fd, struct egd_orig *out,
		 struct egd_addr *peer)
{
	struct sockaddr_storage local, remote;
	socklen_t llen = sizeof(local), rlen = sizeof(remote);
	struct egd_tuple t;
	int err;

	if (getsockname(fd, (struct sockaddr *)&local, &llen) ||
	    getpeername(fd, (struct sockaddr *)&remote, &rlen))
		return -errno;
	egd_addr_from_sockaddr(&t.src, (struct sockaddr *)&remote);
	egd_addr_from_sockaddr(&t.dst, (struct sockaddr *)&local);
	if (peer)
		*peer = t.src;

	if (mode == EGD_CAPTURE_NFT) {
		err = orig_from_conntrack(fd, local.ss_family, out);
		/* conntrack reports the listener itself for a direct dial. */
		if (!err && memcmp(&out->dst, &t.dst, sizeof(t.dst)) == 0)
			return -ENOENT;
		return err;
	}
	return egd_bpf_orig_take(b, &t, out);
}
