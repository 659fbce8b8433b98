// SPDX-License-Identifier: GPL-2.0-only
/*
 * The kernel side of egressd. Attached to the sandbox's cgroup, these
 * programs make every TCP connection of the agent land on the daemon's
 * loopback listener, remember where it was really going, keep UDP to the
 * configured resolvers in the agent phase, and refuse raw and packet sockets.
 * The daemon's own cgroup is exempt by id; nothing here trusts a uid or mark.
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

/* Resolver addresses (port 0) the agent may send DNS to in the agent phase. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, EGD_RESOLVERS_MAX_ENTRIES);
	__type(key, struct egd_addr);
	__type(value, __u8);
} resolver_map SEC(".maps");

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

static __always_inline int resolver_allowed(struct egd_addr *dst)
{
	struct egd_addr key = *dst;

	if (bpf_ntohs(dst->port) != EGD_DNS_PORT)
		return 0;
	key.port = 0;
	return bpf_map_lookup_elem(&resolver_map, &key) != NULL;
}

/* UDP policy shared by sendmsg and connect: the agent phase reaches only
 * loopback and the resolvers' port 53. */
static __always_inline int udp_verdict(struct egd_addr *dst, int is_loopback)
{
	if (current_phase() == EGD_PHASE_VERIFICATION) {
		count(EGD_CNT_UDP_ALLOWED_VERIFICATION);
		return ALLOW;
	}
	if (is_loopback) {
		count(EGD_CNT_UDP_ALLOWED_LOOPBACK);
		return ALLOW;
	}
	if (resolver_allowed(dst)) {
		count(EGD_CNT_UDP_ALLOWED_DNS);
		return ALLOW;
	}
	count(EGD_CNT_UDP_DENIED);
	return REFUSE;
}

static __always_inline int record(struct bpf_sock_addr *ctx, struct egd_addr *dst)
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

static __always_inline int other_proto(void)
{
	if (current_phase() == EGD_PHASE_VERIFICATION)
		return ALLOW;
	count(EGD_CNT_OTHER_DENIED);
	return REFUSE;
}

SEC("cgroup/connect4")
int egd_connect4(struct bpf_sock_addr *ctx)
{
	struct egd_addr dst = {};

	if (is_exempt()) {
		count(EGD_CNT_EXEMPT);
		return ALLOW;
	}
	dst.family = EGD_AF_INET;
	dst.port = (__be16)ctx->user_port;
	dst.addr[0] = ctx->user_ip4;

	if (ctx->protocol == IPPROTO_UDP)
		return udp_verdict(&dst, loopback4(dst.addr[0]));
	if (ctx->protocol != IPPROTO_TCP)
		return other_proto();
	if (loopback4(dst.addr[0])) {
		count(EGD_CNT_TCP_LOOPBACK);
		return ALLOW;
	}
	/* Without a record the daemon could not tell where this was going, and
	 * an unredirected connect would be an open door: refuse it. */
	if (record(ctx, &dst)) {
		count(EGD_CNT_ORIG_RECORD_FAILED);
		return REFUSE;
	}
	ctx->user_ip4 = bpf_htonl(LOOPBACK4);
	ctx->user_port = listen_port();
	count(EGD_CNT_TCP_REDIRECTED);
	return ALLOW;
}

SEC("cgroup/connect6")
int egd_connect6(struct bpf_sock_addr *ctx)
{
	struct egd_addr dst = {};
	__u32 a[4];

	if (is_exempt()) {
		count(EGD_CNT_EXEMPT);
		return ALLOW;
	}
	a[0] = ctx->user_ip6[0];
	a[1] = ctx->user_ip6[1];
	a[2] = ctx->user_ip6[2];
	a[3] = ctx->user_ip6[3];
	dst.port = (__be16)ctx->user_port;
	if (v4mapped(a)) {
		/* A v4 destination reached through a dual-stack socket: record it
		 * as v4, which is what the daemon will dial. */
		dst.family = EGD_AF_INET;
		dst.addr[0] = a[3];
	} else {
		dst.family = EGD_AF_INET6;
		__builtin_memcpy(dst.addr, a, sizeof(a));
	}

	if (ctx->protocol == IPPROTO_UDP)
		return udp_verdict(&dst, loopback6(a));
	if (ctx->protocol != IPPROTO_TCP)
		return other_proto();
	if (loopback6(a)) {
		count(EGD_CNT_TCP_LOOPBACK);
		return ALLOW;
	}
	if (record(ctx, &dst)) {
		count(EGD_CNT_ORIG_RECORD_FAILED);
		return REFUSE;
	}
	if (dst.family == EGD_AF_INET) {
		/* Stay v4-mapped: the socket may be v6-only-capable but is
		 * talking v4, so it must land on the v4 listener. */
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
	ctx->user_port = listen_port();
	count(EGD_CNT_TCP_REDIRECTED);
	return ALLOW;
}

SEC("cgroup/sendmsg4")
int egd_sendmsg4(struct bpf_sock_addr *ctx)
{
	struct egd_addr dst = {};

	if (is_exempt())
		return ALLOW;
	dst.family = EGD_AF_INET;
	dst.port = (__be16)ctx->user_port;
	dst.addr[0] = ctx->user_ip4;
	return udp_verdict(&dst, loopback4(dst.addr[0]));
}

SEC("cgroup/sendmsg6")
int egd_sendmsg6(struct bpf_sock_addr *ctx)
{
	struct egd_addr dst = {};
	__u32 a[4];

	if (is_exempt())
		return ALLOW;
	a[0] = ctx->user_ip6[0];
	a[1] = ctx->user_ip6[1];
	a[2] = ctx->user_ip6[2];
	a[3] = ctx->user_ip6[3];
	dst.port = (__be16)ctx->user_port;
	if (v4mapped(a)) {
		dst.family = EGD_AF_INET;
		dst.addr[0] = a[3];
	} else {
		dst.family = EGD_AF_INET6;
		__builtin_memcpy(dst.addr, a, sizeof(a));
	}
	return udp_verdict(&dst, loopback6(a));
}

/* The agent sees the address it dialled, not the daemon's listener. */
static __always_inline struct egd_orig *orig_of(struct bpf_sock_addr *ctx)
{
	if (!ctx->sk)
		return NULL;
	return bpf_sk_storage_get(&sk_orig, ctx->sk, 0, 0);
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

SEC("cgroup/sock_create")
int egd_sock_create(struct bpf_sock *ctx)
{
	if (is_exempt())
		return ALLOW;
	/* Raw and packet sockets would bypass every hook above. */
	if (ctx->type == SOCK_RAW || ctx->family == AF_PACKET) {
		count(EGD_CNT_SOCK_DENIED);
		return REFUSE;
	}
	if (ctx->protocol == IPPROTO_TCP || ctx->protocol == IPPROTO_UDP)
		return ALLOW;
	/* ICMP echo, SCTP, MPTCP and the like: closed in the agent phase. */
	if (current_phase() == EGD_PHASE_VERIFICATION)
		return ALLOW;
	count(EGD_CNT_SOCK_DENIED);
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
