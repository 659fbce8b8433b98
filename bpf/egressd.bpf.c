// SPDX-License-Identifier: GPL-2.0-only
/*
 * The kernel side of egressd. Attached to the sandbox's cgroup, these
 * programs make every TCP connection of the agent land on the daemon's
 * loopback listener and remember where it was really going; send all DNS
 * (port 53, UDP and TCP, any address) to the daemon's policy DNS and give
 * the replies the address the agent asked; refuse the always-deny
 * destinations, loopback ports that are not the daemon's, UDP in the agent
 * phase, sockets other than TCP and UDP, and routing options; and, under all
 * of it, drop in the agent phase any packet bound for a non-loopback
 * address. The daemon's own cgroup is exempt by id; nothing here trusts a
 * uid or mark.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_tracing.h>
#include "egressd.h"

#define ALLOW 1
#define REFUSE 0 /* sock_addr and sock programs: the syscall fails with EPERM */

#define SOCK_STREAM 1
#define SOCK_DGRAM 2
#define SOCK_RAW 3
#define AF_PACKET 17
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define PAGE_SIZE 4096
/* Socket options, as <linux/in.h> and <linux/in6.h> number them. */
#define SOL_IP 0
#define SOL_IPV6 41
#define IP_OPTIONS 4
#define IP_RETOPTS 7
#define IPV6_2292HOPOPTS 3
#define IPV6_2292DSTOPTS 4
#define IPV6_2292RTHDR 5
#define IPV6_2292PKTOPTIONS 6
#define IPV6_HOPOPTS 54
#define IPV6_RTHDRDSTOPTS 55
#define IPV6_RTHDR 57
#define IPV6_DSTOPTS 59
#define LOOPBACK4 0x7f000001 /* 127.0.0.1, host order */

char LICENSE[] SEC("license") = "GPL";

/* Load-time switch for the sk_msg fast path (egressd attach --accel). */
const volatile __u32 accel_enabled = 0;

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} phase_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct egd_config);
} config_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, EGD_EXEMPT_MAX_ENTRIES);
	__type(key, __u64);
	__type(value, __u8);
} exempt_map SEC(".maps");

/* Always-deny destinations (EGRESSD_DENY_CIDRS): v4 kept v4-mapped. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, EGD_DENY_MAX_ENTRIES);
	__type(key, struct egd_lpm_key);
	__type(value, __u8);
} deny_map SEC(".maps");

/* Loopback ports (host order) the agent may reach in the agent phase besides
 * the capture and DNS ports of config_map. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, EGD_LOOPBACK_PORTS_MAX_ENTRIES);
	__type(key, __u16);
	__type(value, __u8);
} loopback_ports SEC(".maps");

/* Addresses the policy DNS answered for intercept hosts (see egressd.h). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, EGD_ICADDR_MAX_ENTRIES);
	__type(key, struct egd_ip);
	__type(value, struct egd_icaddr);
} icaddr_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, EGD_CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

/* The original destination, stored on the socket itself: it lives exactly as
 * long as the socket, so getpeername() can answer it and nothing leaks. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct egd_orig);
} sk_orig SEC(".maps");

/* The same record keyed by 4-tuple, for the daemon to find from accept().
 * The daemon deletes what it reads; LRU bounds what it never reads. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, EGD_ORIG_MAX_ENTRIES);
	__type(key, struct egd_tuple);
	__type(value, struct egd_orig);
} orig_by_tuple SEC(".maps");

/* Both ends of each captured loopback connection, for the sk_msg fast path. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, EGD_SOCKHASH_MAX_ENTRIES);
	__type(key, struct egd_tuple);
	__type(value, __u64);
} sockhash SEC(".maps");

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &idx);

	if (v)
		*v += 1;
}

static __always_inline int is_exempt(void)
{
	__u64 id = bpf_get_current_cgroup_id();

	return bpf_map_lookup_elem(&exempt_map, &id) != NULL;
}

static __always_inline __u32 current_phase(void)
{
	__u32 zero = 0;
	__u32 *p = bpf_map_lookup_elem(&phase_map, &zero);

	/* No phase yet means the agent phase: the closed one. */
	return p ? *p : EGD_PHASE_AGENT;
}

static __always_inline __be16 listen_port(void)
{
	__u32 zero = 0;
	struct egd_config *c = bpf_map_lookup_elem(&config_map, &zero);

	return c && c->listen_port ? c->listen_port : bpf_htons(EGD_DEFAULT_LISTEN_PORT);
}

/* 127.0.0.0/8 and 0.0.0.0 (which Linux connects to the local host). */
static __always_inline int loopback4(__be32 a)
{
	__u32 h = bpf_ntohl(a);

	return (h >> 24) == 127 || h == 0;
}

static __always_inline int v4mapped(const __u32 *a)
{
	return a[0] == 0 && a[1] == 0 && a[2] == bpf_htonl(0x0000ffff);
}

static __always_inline int loopback6(const __u32 *a)
{
	if (v4mapped(a))
		return loopback4(a[3]);
	/* ::1 and :: */
	return a[0] == 0 && a[1] == 0 && a[2] == 0 && (a[3] == 0 || a[3] == bpf_htonl(1));
}

static __always_inline __be16 dns_port(void)
{
	__u32 zero = 0;
	struct egd_config *c = bpf_map_lookup_elem(&config_map, &zero);

	/* Fail closed: without a configured port DNS still goes to the
	 * default one, where nothing answers if no daemon listens. */
	return c && c->dns_port ? c->dns_port : bpf_htons(EGD_DEFAULT_DNS_PORT);
}

/* Destination as the policy sees it: v4 in addr[0] (a v4-mapped v6 address
 * included), v6 in addr[0..3]. */
static __always_inline int dst_loopback(const struct egd_addr *d)
{
	return d->family == EGD_AF_INET ? loopback4(d->addr[0]) : loopback6(d->addr);
}

static __always_inline int denied_cidr(const struct egd_addr *d)
{
	struct egd_lpm_key k = { .prefixlen = 128 };

	if (d->family == EGD_AF_INET) {
		k.addr[2] = bpf_htonl(0x0000ffff);
		k.addr[3] = d->addr[0];
	} else {
		__builtin_memcpy(k.addr, d->addr, sizeof(k.addr));
	}
	return bpf_map_lookup_elem(&deny_map, &k) != NULL;
}

/* In the agent phase loopback is the daemon's listeners and the ports the
 * operator named, not whatever else listens on the host. */
static __always_inline int loopback_port_ok(__be16 port)
{
	__u16 p = bpf_ntohs(port);

	if (port == listen_port() || port == dns_port())
		return 1;
	return bpf_map_lookup_elem(&loopback_ports, &p) != NULL;
}

/* An unexpired address the policy DNS gave for an intercept host. */
static __always_inline int intercept_addr(const struct egd_addr *d)
{
	struct egd_ip ip = { .family = d->family };
	struct egd_icaddr *v;

	__builtin_memcpy(ip.addr, d->addr, sizeof(ip.addr));
	v = bpf_map_lookup_elem(&icaddr_map, &ip);
	return v && v->expires_ns > bpf_ktime_get_ns();
}

enum { TO_SELF = 0, TO_CAPTURE, TO_DNS };

/*
 * The one policy of connect (TCP and UDP) and sendmsg (UDP), in order:
 * port 53 goes to the policy DNS whatever the address (even an always-deny
 * one: a node-local cache at 169.254.20.10 is common, and redirected DNS
 * never reaches the address anyway); the always-deny set is refused in both
 * phases; loopback is limited to the daemon's ports in the agent phase; TCP
 * elsewhere goes to the capture listener; UDP elsewhere is refused in the
 * agent phase, and to intercept addresses (QUIC) in both. *to says where to
 * rewrite the destination.
 */
static __always_inline int judge(const struct egd_addr *dst, int tcp, int *to)
{
	__u32 phase = current_phase();

	*to = TO_SELF;
	if (dst->port == bpf_htons(EGD_DNS_PORT)) {
		*to = TO_DNS;
		count(EGD_CNT_DNS_REDIRECTED);
		return ALLOW;
	}
	if (denied_cidr(dst)) {
		count(EGD_CNT_DENY_CIDR);
		return REFUSE;
	}
	if (dst_loopback(dst)) {
		if (phase != EGD_PHASE_VERIFICATION && !loopback_port_ok(dst->port)) {
			count(EGD_CNT_LOOPBACK_DENIED);
			return REFUSE;
		}
		count(tcp ? EGD_CNT_TCP_LOOPBACK : EGD_CNT_UDP_ALLOWED_LOOPBACK);
		return ALLOW;
	}
	if (tcp) {
		*to = TO_CAPTURE;
		return ALLOW;
	}
	if (intercept_addr(dst)) {
		count(EGD_CNT_UDP_INTERCEPT_DENIED);
		return REFUSE;
	}
	if (phase == EGD_PHASE_VERIFICATION) {
		count(EGD_CNT_UDP_ALLOWED_VERIFICATION);
		return ALLOW;
	}
	count(EGD_CNT_UDP_DENIED);
	return REFUSE;
}

static __always_inline int record(struct bpf_sock_addr *ctx, const struct egd_addr *dst)
{
	struct egd_orig *o;

	if (!ctx->sk)
		return -1;
	o = bpf_sk_storage_get(&sk_orig, ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!o)
		return -1;
	o->dst = *dst;
	o->cgroup_id = bpf_get_current_cgroup_id();
	return 0;
}

static __always_inline void dst_of4(struct bpf_sock_addr *ctx, struct egd_addr *dst)
{
	dst->family = EGD_AF_INET;
	dst->port = (__be16)ctx->user_port;
	dst->addr[0] = ctx->user_ip4;
}

static __always_inline void dst_of6(struct bpf_sock_addr *ctx, struct egd_addr *dst)
{
	__u32 a[4];

	a[0] = ctx->user_ip6[0];
	a[1] = ctx->user_ip6[1];
	a[2] = ctx->user_ip6[2];
	a[3] = ctx->user_ip6[3];
	dst->port = (__be16)ctx->user_port;
	if (v4mapped(a)) {
		/* A v4 destination reached through a dual-stack socket: judge
		 * and record it as v4, which is what the daemon will dial. */
		dst->family = EGD_AF_INET;
		dst->addr[0] = a[3];
	} else {
		dst->family = EGD_AF_INET6;
		__builtin_memcpy(dst->addr, a, sizeof(a));
	}
}

/* Apply judge()'s verdict to a v4 socket address: record the original
 * destination and rewrite it to the daemon's listener. */
static __always_inline int apply4(struct bpf_sock_addr *ctx, int tcp)
{
	struct egd_addr dst = {};
	int to, v;

	dst_of4(ctx, &dst);
	v = judge(&dst, tcp, &to);
	if (v != ALLOW || to == TO_SELF)
		return v;
	/* Without a record the daemon could not tell where a TCP flow was
	 * going; for DNS the agent's resolver would see a reply from the
	 * wrong address. Either way the flow is refused. */
	if (record(ctx, &dst)) {
		count(EGD_CNT_ORIG_RECORD_FAILED);
		return REFUSE;
	}
	ctx->user_ip4 = bpf_htonl(LOOPBACK4);
	ctx->user_port = to == TO_DNS ? dns_port() : listen_port();
	if (to == TO_CAPTURE)
		count(EGD_CNT_TCP_REDIRECTED);
	return ALLOW;
}

static __always_inline int apply6(struct bpf_sock_addr *ctx, int tcp)
{
	struct egd_addr dst = {};
	int to, v;

	dst_of6(ctx, &dst);
	v = judge(&dst, tcp, &to);
	if (v != ALLOW || to == TO_SELF)
		return v;
	if (record(ctx, &dst)) {
		count(EGD_CNT_ORIG_RECORD_FAILED);
		return REFUSE;
	}
	if (dst.family == EGD_AF_INET) {
		/* Stay v4-mapped: the socket is talking v4, so it must land
		 * on the v4 listener. */
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = bpf_htonl(0x0000ffff);
		ctx->user_ip6[3] = bpf_htonl(LOOPBACK4);
	} else {
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = 0;
		ctx->user_ip6[3] = bpf_htonl(1);
	}
	ctx->user_port = to == TO_DNS ? dns_port() : listen_port();
	if (to == TO_CAPTURE)
		count(EGD_CNT_TCP_REDIRECTED);
	return ALLOW;
}

/* Sockets other than TCP and UDP cannot be created (sock_create); one made
 * before the attach is refused here, in both phases. */
static __always_inline int other_proto(void)
{
	count(EGD_CNT_OTHER_DENIED);
	return REFUSE;
}

SEC("cgroup/connect4")
int egd_connect4(struct bpf_sock_addr *ctx)
{
	if (is_exempt()) {
		count(EGD_CNT_EXEMPT);
		return ALLOW;
	}
	if (ctx->protocol != IPPROTO_TCP && ctx->protocol != IPPROTO_UDP)
		return other_proto();
	return apply4(ctx, ctx->protocol == IPPROTO_TCP);
}

SEC("cgroup/connect6")
int egd_connect6(struct bpf_sock_addr *ctx)
{
	if (is_exempt()) {
		count(EGD_CNT_EXEMPT);
		return ALLOW;
	}
	if (ctx->protocol != IPPROTO_TCP && ctx->protocol != IPPROTO_UDP)
		return other_proto();
	return apply6(ctx, ctx->protocol == IPPROTO_TCP);
}

/* Unconnected UDP (and ping sockets made before the attach). Connected
 * sends skip this hook: their destination was judged at connect, and what
 * was connected in the verification phase meets the backstop below. */
SEC("cgroup/sendmsg4")
int egd_sendmsg4(struct bpf_sock_addr *ctx)
{
	if (is_exempt())
		return ALLOW;
	if (ctx->protocol != IPPROTO_UDP)
		return other_proto();
	return apply4(ctx, 0);
}

SEC("cgroup/sendmsg6")
int egd_sendmsg6(struct bpf_sock_addr *ctx)
{
	if (is_exempt())
		return ALLOW;
	if (ctx->protocol != IPPROTO_UDP)
		return other_proto();
	return apply6(ctx, 0);
}

/* The agent sees the address it dialled, not the daemon's listener. */
static __always_inline struct egd_orig *orig_of(struct bpf_sock_addr *ctx)
{
	if (!ctx->sk)
		return NULL;
	return bpf_sk_storage_get(&sk_orig, ctx->sk, 0, 0);
}

/*
 * A DNS reply comes from the policy DNS listener; stub resolvers (glibc,
 * musl, Go, c-ares) drop a reply whose source is not the server they asked,
 * so it is given the source the agent sent to. One record per socket: the
 * last port-53 destination. A socket asking two servers at once gets both
 * answers from the last one (the stubs above ask one server at a time).
 */
SEC("cgroup/recvmsg4")
int egd_recvmsg4(struct bpf_sock_addr *ctx)
{
	struct egd_orig *o = orig_of(ctx);

	if (!o || o->dst.family != EGD_AF_INET || o->dst.port != bpf_htons(EGD_DNS_PORT))
		return 1;
	if (ctx->user_ip4 != bpf_htonl(LOOPBACK4) || ctx->user_port != dns_port())
		return 1;
	ctx->user_ip4 = o->dst.addr[0];
	ctx->user_port = o->dst.port;
	count(EGD_CNT_DNS_REPLY_RESTORED);
	return 1;
}

SEC("cgroup/recvmsg6")
int egd_recvmsg6(struct bpf_sock_addr *ctx)
{
	struct egd_orig *o = orig_of(ctx);
	__u32 a[4];

	if (!o || o->dst.port != bpf_htons(EGD_DNS_PORT) || ctx->user_port != dns_port())
		return 1;
	a[0] = ctx->user_ip6[0];
	a[1] = ctx->user_ip6[1];
	a[2] = ctx->user_ip6[2];
	a[3] = ctx->user_ip6[3];
	if (o->dst.family == EGD_AF_INET) {
		if (!v4mapped(a) || a[3] != bpf_htonl(LOOPBACK4))
			return 1;
		ctx->user_ip6[3] = o->dst.addr[0];
	} else {
		if (a[0] || a[1] || a[2] || a[3] != bpf_htonl(1))
			return 1;
		ctx->user_ip6[0] = o->dst.addr[0];
		ctx->user_ip6[1] = o->dst.addr[1];
		ctx->user_ip6[2] = o->dst.addr[2];
		ctx->user_ip6[3] = o->dst.addr[3];
	}
	ctx->user_port = o->dst.port;
	count(EGD_CNT_DNS_REPLY_RESTORED);
	return 1;
}

SEC("cgroup/getpeername4")
int egd_getpeername4(struct bpf_sock_addr *ctx)
{
	struct egd_orig *o = orig_of(ctx);

	if (o && o->dst.family == EGD_AF_INET) {
		ctx->user_ip4 = o->dst.addr[0];
		ctx->user_port = o->dst.port;
	}
	return ALLOW;
}

SEC("cgroup/getpeername6")
int egd_getpeername6(struct bpf_sock_addr *ctx)
{
	struct egd_orig *o = orig_of(ctx);

	if (!o)
		return ALLOW;
	if (o->dst.family == EGD_AF_INET) {
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = bpf_htonl(0x0000ffff);
		ctx->user_ip6[3] = o->dst.addr[0];
	} else {
		ctx->user_ip6[0] = o->dst.addr[0];
		ctx->user_ip6[1] = o->dst.addr[1];
		ctx->user_ip6[2] = o->dst.addr[2];
		ctx->user_ip6[3] = o->dst.addr[3];
	}
	ctx->user_port = o->dst.port;
	return ALLOW;
}

/*
 * Only TCP and UDP: MPTCP, SCTP, UDP-Lite, DCCP, raw and ICMP (ping) sockets
 * are refused in both phases. Some of them never pass the connect and
 * sendmsg hooks (ping's sendmsg, raw), so they must not exist at all.
 * inet_create() has already turned protocol 0 into the real one here.
 */
SEC("cgroup/sock_create")
int egd_sock_create(struct bpf_sock *ctx)
{
	__u32 family = ctx->family, type = ctx->type, proto = ctx->protocol;

	if (is_exempt())
		return ALLOW;
	if (family == AF_PACKET) {
		count(EGD_CNT_SOCK_DENIED);
		return REFUSE;
	}
	if (family != EGD_AF_INET && family != EGD_AF_INET6)
		return ALLOW;
	if ((type == SOCK_STREAM && proto == IPPROTO_TCP) ||
	    (type == SOCK_DGRAM && proto == IPPROTO_UDP))
		return ALLOW;
	count(EGD_CNT_SOCK_DENIED);
	return REFUSE;
}

/*
 * Options that make a packet go somewhere other than the address the
 * connect and sendmsg hooks judged: IPv6 routing headers (a type 4 segment
 * list sends a datagram "to ::1" out to the first segment) and IPv4 source
 * routing. Hop-by-hop and destination options cannot route, but an agent has
 * no use for them either and the 2292 API's PKTOPTIONS carries a routing
 * header inside: all are refused. Per-datagram control messages
 * (IPV6_RTHDR in sendmsg) do not pass here: the backstop drops their
 * packets, whose IPv6 destination is the first segment.
 */
SEC("cgroup/setsockopt")
int egd_setsockopt(struct bpf_sockopt *ctx)
{
	int level = ctx->level, name = ctx->optname;

	if (is_exempt())
		goto allow;
	if ((level == SOL_IP && (name == IP_OPTIONS || name == IP_RETOPTS)) ||
	    (level == SOL_IPV6 &&
	     (name == IPV6_RTHDR || name == IPV6_2292RTHDR || name == IPV6_HOPOPTS ||
	      name == IPV6_2292HOPOPTS || name == IPV6_DSTOPTS || name == IPV6_2292DSTOPTS ||
	      name == IPV6_RTHDRDSTOPTS || name == IPV6_2292PKTOPTIONS))) {
		count(EGD_CNT_SOCKOPT_DENIED);
		return REFUSE;
	}
allow:
	/* A value larger than a page is not in optval: let the kernel use the
	 * caller's buffer as it is. */
	if (ctx->optlen > PAGE_SIZE)
		ctx->optlen = 0;
	return ALLOW;
}

/*
 * The packet-level backstop. In the agent phase every allowed flow of the
 * sandbox ends on a loopback listener of the daemon, so a packet for any
 * other address got past the socket hooks: a socket made before the attach,
 * a UDP socket connected in the verification phase, a ping socket, a reply
 * on a flow a remote peer opened, a routing header. It is dropped and
 * counted. Exemption is by the socket's cgroup (the daemon may live under
 * the attached cgroup, as in the tests).
 */
SEC("cgroup_skb/egress")
int egd_backstop(struct __sk_buff *skb)
{
	__u64 id;
	__u8 ver;

	/* Anything but the verification phase is the agent phase. */
	if (current_phase() == EGD_PHASE_VERIFICATION)
		return ALLOW;
	id = bpf_skb_cgroup_id(skb);
	if (bpf_map_lookup_elem(&exempt_map, &id))
		return ALLOW;
	if (bpf_skb_load_bytes(skb, 0, &ver, 1))
		goto drop;
	if (ver >> 4 == 4) {
		struct iphdr ip;

		if (bpf_skb_load_bytes(skb, 0, &ip, sizeof(ip)))
			goto drop;
		if (bpf_ntohl(ip.daddr) >> 24 == 127)
			return ALLOW;
	} else if (ver >> 4 == 6) {
		struct ipv6hdr ip6;
		__u32 d[4];

		if (bpf_skb_load_bytes(skb, 0, &ip6, sizeof(ip6)))
			goto drop;
		__builtin_memcpy(d, &ip6.daddr, sizeof(d));
		if (!d[0] && !d[1] && !d[2] && d[3] == bpf_htonl(1))
			return ALLOW;
	}
drop:
	count(EGD_CNT_BACKSTOP_DROPPED);
	return REFUSE;
}

/*
 * Packet sockets are created outside inet_create(), so cgroup/sock_create
 * never sees them. The per-cgroup LSM hook does (kernels with BPF LSM, 6.0+).
 * Attached when available; see egd_bpf_attach().
 */
SEC("lsm_cgroup/socket_create")
int BPF_PROG(egd_lsm_socket_create, int family, int type, int protocol, int kern)
{
	if (kern || is_exempt())
		return ALLOW;
	if (family == AF_PACKET || type == SOCK_RAW) {
		count(EGD_CNT_SOCK_DENIED);
		return REFUSE;
	}
	return ALLOW;
}

/* Fill @t from a sock_ops context: src is this socket's end, dst the peer.
 * v4 carried over a v6 socket is keyed as v4, as accept() reports it. */
static __always_inline void tuple_of(struct bpf_sock_ops *skops, struct egd_tuple *t)
{
	__u32 l[4] = { skops->local_ip6[0], skops->local_ip6[1], skops->local_ip6[2],
		       skops->local_ip6[3] };
	__u32 r[4] = { skops->remote_ip6[0], skops->remote_ip6[1], skops->remote_ip6[2],
		       skops->remote_ip6[3] };

	__builtin_memset(t, 0, sizeof(*t));
	t->src.port = bpf_htons((__u16)skops->local_port);
	t->dst.port = (__be16)(skops->remote_port >> 16);
	if (skops->family == EGD_AF_INET || v4mapped(r)) {
		t->src.family = EGD_AF_INET;
		t->dst.family = EGD_AF_INET;
		t->src.addr[0] = skops->family == EGD_AF_INET ? skops->local_ip4 : l[3];
		t->dst.addr[0] = skops->family == EGD_AF_INET ? skops->remote_ip4 : r[3];
	} else {
		t->src.family = EGD_AF_INET6;
		t->dst.family = EGD_AF_INET6;
		__builtin_memcpy(t->src.addr, l, sizeof(l));
		__builtin_memcpy(t->dst.addr, r, sizeof(r));
	}
}

SEC("sockops")
int egd_sockops(struct bpf_sock_ops *skops)
{
	struct egd_tuple t;
	struct egd_orig *o;
	struct bpf_sock *sk;

	if (skops->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB)
		return 1;
	sk = skops->sk;
	if (!sk)
		return 1;
	o = bpf_sk_storage_get(&sk_orig, sk, 0, 0);
	if (!o)
		return 1;
	tuple_of(skops, &t);
	/* This runs before the final ACK leaves, so the record is in place
	 * before the daemon's accept() can return. */
	bpf_map_update_elem(&orig_by_tuple, &t, o, BPF_ANY);
	if (accel_enabled)
		bpf_sock_hash_update(skops, &sockhash, &t, BPF_ANY);
	return 1;
}

/* Fast path: a message from one end of a captured loopback connection goes
 * straight to the other end's receive queue. Keys are (own end, peer end),
 * so the peer is found by swapping them. */
SEC("sk_msg")
int egd_sk_msg(struct sk_msg_md *msg)
{
	struct egd_tuple peer = {};
	/* Context fields are read one by one: the verifier refuses derived
	 * pointers into the context. */
	__u32 family = msg->family;
	__u32 r[4] = { msg->remote_ip6[0], msg->remote_ip6[1], msg->remote_ip6[2],
		       msg->remote_ip6[3] };
	__u32 l[4] = { msg->local_ip6[0], msg->local_ip6[1], msg->local_ip6[2],
		       msg->local_ip6[3] };

	if (family == EGD_AF_INET || v4mapped(r)) {
		peer.src.family = EGD_AF_INET;
		peer.dst.family = EGD_AF_INET;
		peer.src.addr[0] = family == EGD_AF_INET ? msg->remote_ip4 : r[3];
		peer.dst.addr[0] = family == EGD_AF_INET ? msg->local_ip4 : l[3];
	} else {
		peer.src.family = EGD_AF_INET6;
		peer.dst.family = EGD_AF_INET6;
		__builtin_memcpy(peer.src.addr, r, sizeof(r));
		__builtin_memcpy(peer.dst.addr, l, sizeof(l));
	}
	peer.src.port = (__be16)(msg->remote_port >> 16);
	peer.dst.port = bpf_htons((__u16)msg->local_port);
	/* If the peer is not in the map the message takes the normal path. */
	bpf_msg_redirect_hash(msg, &sockhash, &peer, BPF_F_INGRESS);
	return SK_PASS;
}
