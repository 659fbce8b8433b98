/* SPDX-License-Identifier: MIT */
/*
 * sockmap_probe: does this kernel's sockmap receive path break blocking
 * recv()? The question behind `egressd attach --accel on` being refused.
 *
 * The sk_msg fast path needs the agent's own socket in a SOCKHASH. A socket
 * in a sockmap with an sk_msg program gets the kernel's tcp_bpf receive
 * path, which (as read in net/ipv4/tcp_bpf.c) waits for data once and, if
 * it wakes with both queues empty, returns EAGAIN, even on a blocking
 * socket. Any wake-up on the socket's wait queue does that, such as the
 * write-space wake-up that ACKs bring after a large send. A plain TCP socket
 * waits on.
 *
 * The probe runs one scenario twice over loopback TCP, once plainly and once
 * with the client's socket in a SOCKMAP whose sk_msg program passes every
 * message unchanged (no redirect at all):
 *   - a reader thread blocks in recv() on the client socket;
 *   - a writer thread sends 8 MiB on the same socket through a small send
 *     buffer, while the server reads it slowly, so the sender sleeps for
 *     space and is woken by ACKs;
 *   - the server answers one byte a second after the upload ends.
 * A correct blocking recv() returns that byte. Prints one line per run and
 * exits 0 when the sockmap run broke the blocking recv(), 1 when it did not,
 * 2 when the probe could not run (not root, no BPF).
 *
 * No libbpf: the program is two instructions (r0 = SK_PASS; exit), loaded
 * with the bpf() syscall, so this builds with gcc alone.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/bpf.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define UPLOAD_BYTES (8u << 20)
#define CHUNK_BYTES (64u << 10)
#define SNDBUF_BYTES (64 << 10)
#define SERVER_READ_PAUSE_US 2000
#define REPLY_DELAY_S 1

struct run {
	int client, server;
	ssize_t got; /* what the blocking recv() returned */
	int err;
	double secs;
};

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static long bpf(int cmd, union bpf_attr *attr)
{
	return syscall(__NR_bpf, cmd, attr, sizeof(*attr));
}

/* A SOCKMAP with a pass-everything sk_msg program attached; -1 on failure. */
static int sockmap_with_pass_prog(void)
{
	struct bpf_insn prog[] = {
		{ .code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_0, .imm = 1 /* SK_PASS */ },
		{ .code = BPF_JMP | BPF_EXIT },
	};
	union bpf_attr a;
	int map, pfd;

	memset(&a, 0, sizeof(a));
	a.map_type = BPF_MAP_TYPE_SOCKMAP;
	a.key_size = 4;
	a.value_size = 4;
	a.max_entries = 1;
	map = (int)bpf(BPF_MAP_CREATE, &a);
	if (map < 0)
		return -1;
	memset(&a, 0, sizeof(a));
	a.prog_type = BPF_PROG_TYPE_SK_MSG;
	a.insns = (uintptr_t)prog;
	a.insn_cnt = 2;
	a.license = (uintptr_t) "GPL";
	pfd = (int)bpf(BPF_PROG_LOAD, &a);
	if (pfd < 0)
		return -1;
	memset(&a, 0, sizeof(a));
	a.target_fd = (uint32_t)map;
	a.attach_bpf_fd = (uint32_t)pfd;
	a.attach_type = BPF_SK_MSG_VERDICT;
	if (bpf(BPF_PROG_ATTACH, &a))
		return -1;
	close(pfd);
	return map;
}

static int sockmap_add(int map, int fd)
{
	union bpf_attr a;
	uint32_t key = 0, val = (uint32_t)fd;

	memset(&a, 0, sizeof(a));
	a.map_fd = (uint32_t)map;
	a.key = (uintptr_t)&key;
	a.value = (uintptr_t)&val;
	a.flags = BPF_ANY;
	return (int)bpf(BPF_MAP_UPDATE_ELEM, &a);
}

static void *reader(void *arg)
{
	struct run *r = arg;
	char c;
	double t = now_s();

	r->got = recv(r->client, &c, 1, 0);
	r->err = r->got < 0 ? errno : 0;
	r->secs = now_s() - t;
	return NULL;
}

static void *writer(void *arg)
{
	struct run *r = arg;
	static char buf[CHUNK_BYTES];
	size_t sent = 0;

	while (sent < UPLOAD_BYTES) {
		ssize_t n = send(r->client, buf, sizeof(buf), MSG_NOSIGNAL);

		if (n <= 0)
			break;
		sent += (size_t)n;
	}
	return NULL;
}

/* The server end: read the upload slowly, then answer one byte. */
static void *server(void *arg)
{
	struct run *r = arg;
	static char buf[CHUNK_BYTES];
	size_t got = 0;

	while (got < UPLOAD_BYTES) {
		ssize_t n = recv(r->server, buf, sizeof(buf), 0);

		if (n <= 0)
			return NULL;
		got += (size_t)n;
		usleep(SERVER_READ_PAUSE_US);
	}
	sleep(REPLY_DELAY_S);
	send(r->server, "!", 1, MSG_NOSIGNAL);
	return NULL;
}

static int run_once(int map, struct run *r)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(sa);
	int lfd, sndbuf = SNDBUF_BYTES;
	pthread_t rt, wt, st;

	memset(r, 0, sizeof(*r));
	lfd = socket(AF_INET, SOCK_STREAM, 0);
	if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) || listen(lfd, 1) ||
	    getsockname(lfd, (struct sockaddr *)&sa, &len))
		return -1;
	r->client = socket(AF_INET, SOCK_STREAM, 0);
	setsockopt(r->client, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
	if (connect(r->client, (struct sockaddr *)&sa, sizeof(sa)))
		return -1;
	r->server = accept(lfd, NULL, NULL);
	close(lfd);
	if (r->server < 0 || (map >= 0 && sockmap_add(map, r->client)))
		return -1;
	pthread_create(&rt, NULL, reader, r);
	usleep(100 * 1000); /* the reader is asleep in recv() */
	pthread_create(&st, NULL, server, r);
	pthread_create(&wt, NULL, writer, r);
	pthread_join(rt, NULL);
	pthread_join(wt, NULL);
	pthread_join(st, NULL);
	close(r->client);
	close(r->server);
	return 0;
}

static void report(const char *what, const struct run *r)
{
	if (r->got == 1)
		printf("%s: blocking recv() returned the server's byte after %.2f s (correct)\n",
		       what, r->secs);
	else if (r->got == 0)
		printf("%s: blocking recv() returned EOF after %.2f s (wrong)\n", what, r->secs);
	else
		printf("%s: blocking recv() failed with %s after %.2f s, before the server "
		       "answered (broken)\n", what, strerror(r->err), r->secs);
}

int main(void)
{
	struct run plain, mapped;
	int map = sockmap_with_pass_prog();

	if (map < 0) {
		fprintf(stderr, "sockmap_probe: cannot create a sockmap with an sk_msg program: %s\n",
			strerror(errno));
		return 2;
	}
	if (run_once(-1, &plain) || run_once(map, &mapped)) {
		fprintf(stderr, "sockmap_probe: setup failed: %s\n", strerror(errno));
		return 2;
	}
	report("plain TCP socket", &plain);
	report("socket in a sockmap (sk_msg passes all)", &mapped);
	return mapped.got == 1 ? 1 : 0;
}
