// SPDX-License-Identifier: MIT
/*
 * proxyload: a keep-alive HTTPS load generator for bench/proxy.
 *
 *   proxyload ADDR:PORT SNI CAFILE CONNS SECS KEY
 *
 * CONNS threads each open one TLS connection to ADDR:PORT (SNI and
 * certificate name SNI, verified against CAFILE), then, once all are
 * connected, POST the same small chat completion to /api/v1/chat/completions
 * over and over for SECS seconds, one request in flight per connection.
 * Prints one line: rps=... p50_us=... p99_us=... requests=... errors=...
 * A request counts when its answer is a complete 200 (Content-Length or
 * chunked body read to the end); anything else is an error, and the thread
 * reconnects. Handshakes are not timed.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

static struct sockaddr_in g_addr;
static const char *g_sni;
static SSL_CTX *g_ctx;
static char g_req[2048];
static size_t g_req_len;
static double g_secs;
static pthread_barrier_t g_start;
static int64_t g_t0, g_t1;

struct worker {
	pthread_t th;
	uint32_t *lat; /* microseconds */
	size_t n, cap;
	unsigned long errors;
};

static int64_t now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static SSL *dial(void)
{
	int one = 1, fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	SSL *s;

	if (fd < 0)
		return NULL;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (connect(fd, (struct sockaddr *)&g_addr, sizeof(g_addr))) {
		close(fd);
		return NULL;
	}
	s = SSL_new(g_ctx);
	SSL_set_fd(s, fd);
	SSL_set_tlsext_host_name(s, g_sni);
	SSL_set1_host(s, g_sni);
	if (SSL_connect(s) != 1) {
		ERR_print_errors_fp(stderr);
		SSL_free(s);
		close(fd);
		return NULL;
	}
	return s;
}

static void hangup(SSL *s)
{
	int fd;

	if (!s)
		return;
	fd = SSL_get_fd(s);
	SSL_free(s);
	close(fd);
}

/* One response: 0 on a complete 200, -1 otherwise. buf keeps leftovers. */
struct rbuf {
	char d[65536];
	size_t len;
};

static int fill(SSL *s, struct rbuf *b)
{
	int n;

	if (b->len == sizeof(b->d))
		return -1;
	n = SSL_read(s, b->d + b->len, (int)(sizeof(b->d) - b->len));
	if (n <= 0)
		return -1;
	b->len += (size_t)n;
	return 0;
}

static void consume(struct rbuf *b, size_t n)
{
	memmove(b->d, b->d + n, b->len - n);
	b->len -= n;
}

static int read_response(SSL *s, struct rbuf *b)
{
	char *end, *p;
	size_t hl;
	long clen = -1;
	int status, chunked = 0;

	while (!(end = memmem(b->d, b->len, "\r\n\r\n", 4)))
		if (fill(s, b))
			return -1;
	hl = (size_t)(end - b->d) + 4;
	if (sscanf(b->d, "HTTP/1.%*d %d", &status) != 1)
		return -1;
	for (p = b->d; p < end; p++) {
		if (*p != '\n')
			continue;
		if (!strncasecmp(p + 1, "content-length:", 15))
			clen = strtol(p + 16, NULL, 10);
		else if (!strncasecmp(p + 1, "transfer-encoding:", 18) &&
			 memmem(p + 19, (size_t)(end - p - 19), "chunked", 7))
			chunked = 1;
	}
	consume(b, hl);
	if (chunked) {
		for (;;) {
			char *nl;
			long sz;

			while (!(nl = memmem(b->d, b->len, "\r\n", 2)))
				if (fill(s, b))
					return -1;
			sz = strtol(b->d, NULL, 16);
			consume(b, (size_t)(nl - b->d) + 2);
			while (b->len < (size_t)sz + 2)
				if (fill(s, b))
					return -1;
			consume(b, (size_t)sz + 2);
			if (sz == 0)
				break;
		}
	} else {
		if (clen < 0 || clen > (long)sizeof(b->d))
			return -1;
		while (b->len < (size_t)clen)
			if (fill(s, b))
				return -1;
		consume(b, (size_t)clen);
	}
	return status == 200 ? 0 : -1;
}

static void *run(void *arg)
{
	struct worker *w = arg;
	static __thread struct rbuf b;
	SSL *s = dial();

	if (!s)
		w->errors++;
	pthread_barrier_wait(&g_start); /* all connected */
	pthread_barrier_wait(&g_start); /* g_t1 is set */
	while (now_us() < g_t1) {
		int64_t t;

		if (!s) {
			s = dial();
			b.len = 0;
			if (!s) {
				w->errors++;
				usleep(10000);
				continue;
			}
		}
		t = now_us();
		if (SSL_write(s, g_req, (int)g_req_len) != (int)g_req_len || read_response(s, &b)) {
			w->errors++;
			hangup(s);
			s = NULL;
			continue;
		}
		if (w->n == w->cap) {
			w->cap = w->cap ? w->cap * 2 : 65536;
			w->lat = realloc(w->lat, w->cap * sizeof(*w->lat));
			if (!w->lat)
				abort();
		}
		w->lat[w->n++] = (uint32_t)(now_us() - t);
	}
	hangup(s);
	return NULL;
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
	static const char body[] =
		"{\"model\":\"anthropic/claude-sonnet-4\","
		"\"messages\":[{\"role\":\"user\",\"content\":\"Say hello.\"}]}";
	struct worker *w;
	uint32_t *all;
	size_t total = 0, k = 0;
	unsigned long errors = 0;
	char host[64], *colon;
	int conns, i;

	if (argc != 7) {
		fprintf(stderr, "usage: proxyload ADDR:PORT SNI CAFILE CONNS SECS KEY\n");
		return 2;
	}
	snprintf(host, sizeof(host), "%s", argv[1]);
	colon = strrchr(host, ':');
	if (!colon)
		return 2;
	*colon = 0;
	g_addr.sin_family = AF_INET;
	g_addr.sin_port = htons((uint16_t)atoi(colon + 1));
	if (inet_pton(AF_INET, host, &g_addr.sin_addr) != 1)
		return 2;
	g_sni = argv[2];
	conns = atoi(argv[4]);
	g_secs = atof(argv[5]);
	if (conns < 1 || g_secs <= 0)
		return 2;
	g_req_len = (size_t)snprintf(g_req, sizeof(g_req),
				     "POST /api/v1/chat/completions HTTP/1.1\r\n"
				     "Host: %s\r\n"
				     "Authorization: Bearer %s\r\n"
				     "Content-Type: application/json\r\n"
				     "Content-Length: %zu\r\n"
				     "\r\n%s",
				     g_sni, argv[6], sizeof(body) - 1, body);

	g_ctx = SSL_CTX_new(TLS_client_method());
	if (!g_ctx || SSL_CTX_load_verify_locations(g_ctx, argv[3], NULL) != 1) {
		ERR_print_errors_fp(stderr);
		return 1;
	}
	SSL_CTX_set_verify(g_ctx, SSL_VERIFY_PEER, NULL);

	w = calloc((size_t)conns, sizeof(*w));
	pthread_barrier_init(&g_start, NULL, (unsigned)conns + 1);
	for (i = 0; i < conns; i++)
		pthread_create(&w[i].th, NULL, run, &w[i]);
	pthread_barrier_wait(&g_start); /* every handshake done: start the clock */
	g_t0 = now_us();
	g_t1 = g_t0 + (int64_t)(g_secs * 1e6);
	pthread_barrier_wait(&g_start);
	for (i = 0; i < conns; i++) {
		pthread_join(w[i].th, NULL);
		total += w[i].n;
		errors += w[i].errors;
	}
	all = malloc((total ? total : 1) * sizeof(*all));
	for (i = 0; i < conns; i++) {
		memcpy(all + k, w[i].lat, w[i].n * sizeof(*all));
		k += w[i].n;
	}
	qsort(all, total, sizeof(*all), cmp_u32);
	printf("rps=%.0f p50_us=%u p99_us=%u requests=%zu errors=%lu\n",
	       (double)total / ((double)(now_us() - g_t0) / 1e6),
	       total ? all[total / 2] : 0, total ? all[total * 99 / 100] : 0, total, errors);
	return total ? 0 : 1;
}
