// SPDX-License-Identifier: MIT
/*
 * dnsload: a closed-loop UDP DNS load generator for bench/dns. CONC
 * connected sockets each keep one query in flight for SECS seconds; a query
 * unanswered for LOST_MS is counted lost and replaced. Prints one line:
 * "qps=N answered=N lost=N noerror=N refused=N nxdomain=N other=N".
 *
 *   dnsload ADDR PORT NAME TYPE SECS CONC
 *
 * NAME with a leading "*." gets a fresh random label per query (every name
 * unique, as an exfiltration attempt's would be); otherwise it is asked as
 * given, every time.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define CONC_MAX 256
/* A query unanswered this long is taken as lost (loopback answers in µs). */
#define LOST_MS 500

static unsigned long long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (unsigned long long)ts.tv_sec * 1000 + (unsigned long long)ts.tv_nsec / 1000000;
}

static size_t build(uint8_t *b, uint16_t id, const char *name, uint16_t type, unsigned int *rnd)
{
	size_t n = 12;
	char label[32];
	const char *p = name;

	memset(b, 0, 12);
	b[0] = (uint8_t)(id >> 8);
	b[1] = (uint8_t)id;
	b[2] = 0x01; /* RD */
	b[5] = 1;
	if (!strncmp(name, "*.", 2)) {
		int l = snprintf(label, sizeof(label), "x%08x%08x", rand_r(rnd), rand_r(rnd));

		b[n++] = (uint8_t)l;
		memcpy(b + n, label, (size_t)l);
		n += (size_t)l;
		p = name + 2;
	}
	while (*p) {
		const char *dot = strchr(p, '.');
		size_t l = dot ? (size_t)(dot - p) : strlen(p);

		b[n++] = (uint8_t)l;
		memcpy(b + n, p, l);
		n += l;
		p += l + (dot ? 1 : 0);
	}
	b[n++] = 0;
	b[n++] = (uint8_t)(type >> 8);
	b[n++] = (uint8_t)type;
	b[n++] = 0;
	b[n++] = 1;
	return n;
}

int main(int argc, char **argv)
{
	struct sockaddr_in sa = { .sin_family = AF_INET };
	unsigned long long answered = 0, lost = 0, rc[6] = { 0 }, start, end;
	unsigned long long sent_at[CONC_MAX];
	uint16_t want[CONC_MAX];
	int fds[CONC_MAX], ep, conc, secs;
	unsigned int rnd = 12345;
	uint16_t type;
	uint8_t q[512], a[4096];

	if (argc != 7) {
		fprintf(stderr, "usage: dnsload ADDR PORT NAME TYPE SECS CONC\n");
		return 2;
	}
	inet_pton(AF_INET, argv[1], &sa.sin_addr);
	sa.sin_port = htons((uint16_t)atoi(argv[2]));
	type = (uint16_t)atoi(argv[4]);
	secs = atoi(argv[5]);
	conc = atoi(argv[6]);
	if (conc < 1 || conc > CONC_MAX)
		return 2;
	ep = epoll_create1(0);
	for (int i = 0; i < conc; i++) {
		struct epoll_event ev = { .events = EPOLLIN, .data.u32 = (uint32_t)i };
		size_t n;

		fds[i] = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
		if (fds[i] < 0 || connect(fds[i], (struct sockaddr *)&sa, sizeof(sa)) ||
		    epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev)) {
			perror("socket");
			return 1;
		}
		want[i] = (uint16_t)(i * 1000);
		n = build(q, want[i], argv[3], type, &rnd);
		sent_at[i] = now_ms();
		send(fds[i], q, n, 0);
	}
	start = now_ms();
	end = start + (unsigned long long)secs * 1000;
	while (now_ms() < end) {
		struct epoll_event evs[64];
		int n = epoll_wait(ep, evs, 64, 50);
		unsigned long long t = now_ms();

		for (int k = 0; k < n; k++) {
			int i = (int)evs[k].data.u32;
			ssize_t r;

			while ((r = recv(fds[i], a, sizeof(a), 0)) >= 12) {
				size_t len;

				if ((uint16_t)(a[0] << 8 | a[1]) != want[i])
					continue; /* a late answer to a lost query */
				answered++;
				rc[(a[3] & 0xf) < 6 ? (a[3] & 0xf) : 2]++;
				want[i]++;
				len = build(q, want[i], argv[3], type, &rnd);
				sent_at[i] = t;
				send(fds[i], q, len, 0);
			}
		}
		for (int i = 0; i < conc; i++) {
			if (t - sent_at[i] >= LOST_MS) {
				size_t len;

				lost++;
				want[i]++;
				len = build(q, want[i], argv[3], type, &rnd);
				sent_at[i] = t;
				send(fds[i], q, len, 0);
			}
		}
	}
	printf("qps=%llu answered=%llu lost=%llu noerror=%llu refused=%llu nxdomain=%llu "
	       "other=%llu\n",
	       answered * 1000 / (now_ms() - start), answered, lost, rc[0], rc[5], rc[3],
	       rc[1] + rc[2] + rc[4]);
	return 0;
}
