// SPDX-License-Identifier: MIT
/*
 * The admin endpoint's /metrics answer, on a real loop and a loopback
 * listener: an answer far larger than the socket takes at once still
 * arrives whole (it is written as the socket drains), and a rendering that
 * ran out of memory half way answers 500, never 200 with half a page.
 *
 * Two link-time hooks make that happen (-Wl,--wrap, set in CMakeLists.txt
 * for this test only, so no release code carries them): the policy proxy's
 * metrics are replaced by a page of EXTRA_METRICS_BYTES, and realloc() fails
 * on demand.
 */
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/log.h"
#include "core/loop.h"
#include "egress/daemon.h"
#include "egress/intercept.h"

/* Far beyond any loopback socket buffer. */
#define EXTRA_METRICS_BYTES (4 * 1024 * 1024)
/* The client waits this long before reading, so the socket fills. */
#define CLIENT_STALL_MS 200
#define POLL_MS 20
#define TEST_DEADLINE_MS 20000

/* ---- hooks ---------------------------------------------------------------- */

void *__real_realloc(void *p, size_t n);
void *__wrap_realloc(void *p, size_t n);
char *__wrap_egd_intercept_metrics(struct egd_intercept *ic);

/* realloc() to this many bytes or more fails; 0: none does. Set while
 * only the loop's thread allocates. */
static size_t g_realloc_fail_bytes;

void *__wrap_realloc(void *p, size_t n)
{
	if (g_realloc_fail_bytes && n >= g_realloc_fail_bytes) {
		errno = ENOMEM;
		return NULL;
	}
	return __real_realloc(p, n);
}

/* A page of comments as long as EXTRA_METRICS_BYTES, ending in a marker. */
char *__wrap_egd_intercept_metrics(struct egd_intercept *ic)
{
	static const char end[] = "# end of the proxy's metrics\n";
	char *s = malloc(EXTRA_METRICS_BYTES + 1);

	(void)ic;
	if (!s)
		return NULL;
	for (size_t i = 0; i < EXTRA_METRICS_BYTES; i += 64) {
		memset(s + i, 'x', 64);
		s[i] = '#';
		s[i + 63] = '\n';
	}
	memcpy(s + EXTRA_METRICS_BYTES - (sizeof(end) - 1), end, sizeof(end) - 1);
	s[EXTRA_METRICS_BYTES] = 0;
	return s;
}

/* ---- one admin endpoint and one client ------------------------------------ */

struct client {
	int port;
	char *resp;
	size_t len;
	int done; /* __atomic */
};

static void *client_main(void *arg)
{
	static const char req[] = "GET /metrics HTTP/1.1\r\nHost: egressd\r\n\r\n";
	struct client *cl = arg;
	struct sockaddr_in a = { .sin_family = AF_INET,
				 .sin_port = htons((uint16_t)cl->port),
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	size_t cap = EXTRA_METRICS_BYTES + 64 * 1024;
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	ssize_t n;

	cl->resp = malloc(cap);
	if (fd >= 0 && cl->resp && !connect(fd, (struct sockaddr *)&a, sizeof(a)) &&
	    write(fd, req, sizeof(req) - 1) == (ssize_t)sizeof(req) - 1) {
		usleep(CLIENT_STALL_MS * 1000);
		while (cl->len < cap && (n = read(fd, cl->resp + cl->len, cap - cl->len)) > 0)
			cl->len += (size_t)n;
	}
	if (fd >= 0)
		close(fd);
	__atomic_store_n(&cl->done, 1, __ATOMIC_RELEASE);
	return NULL;
}

struct fixture {
	struct egd_daemon d;
	struct client cl;
	struct egd_timer poll;
	unsigned long long deadline;
};

static void poll_cb(struct egd_timer *t)
{
	struct fixture *f = (struct fixture *)((char *)t - offsetof(struct fixture, poll));

	if (__atomic_load_n(&f->cl.done, __ATOMIC_ACQUIRE) || egd_now_ms() > f->deadline) {
		egd_loop_stop(f->d.loop);
		return;
	}
	assert_int_equal(egd_timer_arm(f->d.loop, t, egd_now_ms() + POLL_MS), 0);
}

/* Ask for /metrics once, with realloc() failing from @fail_bytes on (0:
 * never) while the loop serves it. The response is in f->cl. */
static void fetch_metrics(struct fixture *f, size_t fail_bytes)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t alen = sizeof(a);
	pthread_t th;

	memset(f, 0, sizeof(*f));
	f->d.capture = EGD_CAPTURE_BPF;
	f->d.bpf.counters_fd = -1;		    /* no kernel counters */
	f->d.intercept = (struct egd_intercept *)f; /* only ever passed to the hook */
	f->d.loop = egd_loop_new();
	assert_non_null(f->d.loop);
	f->d.admin.fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	assert_true(f->d.admin.fd >= 0);
	assert_int_equal(bind(f->d.admin.fd, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(listen(f->d.admin.fd, 4), 0);
	assert_int_equal(getsockname(f->d.admin.fd, (struct sockaddr *)&a, &alen), 0);
	f->cl.port = ntohs(a.sin_port);
	assert_int_equal(egd_admin_start(&f->d), 0);
	f->poll.cb = poll_cb;
	f->deadline = egd_now_ms() + TEST_DEADLINE_MS;
	assert_int_equal(egd_timer_arm(f->d.loop, &f->poll, egd_now_ms() + POLL_MS), 0);
	assert_int_equal(pthread_create(&th, NULL, client_main, &f->cl), 0);
	g_realloc_fail_bytes = fail_bytes;
	assert_int_equal(egd_loop_run(f->d.loop), 0);
	g_realloc_fail_bytes = 0;
	pthread_join(th, NULL);
	assert_true(f->cl.done);
	egd_loop_del(f->d.loop, &f->d.admin);
	close(f->d.admin.fd);
	egd_loop_free(f->d.loop);
}

static size_t content_length(const char *resp, size_t len, const char **body)
{
	const char *end = memmem(resp, len, "\r\n\r\n", 4), *cl;

	assert_non_null(end);
	cl = memmem(resp, (size_t)(end - resp), "Content-Length: ", 16);
	assert_non_null(cl);
	*body = end + 4;
	return strtoul(cl + 16, NULL, 10);
}

static void test_large_metrics_answer_arrives_whole(void **state)
{
	static const char end[] = "# end of the proxy's metrics\n";
	struct fixture *f = calloc(1, sizeof(*f));
	const char *body;
	size_t want;

	(void)state;
	assert_non_null(f);
	fetch_metrics(f, 0);
	assert_true(f->cl.len > 12);
	assert_memory_equal(f->cl.resp, "HTTP/1.1 200", 12);
	want = content_length(f->cl.resp, f->cl.len, &body);
	assert_true(want > EXTRA_METRICS_BYTES);
	assert_int_equal(f->cl.len - (size_t)(body - f->cl.resp), want);
	/* All of the proxy's part, and what follows it, to the last line. */
	assert_non_null(memmem(body, want, end, sizeof(end) - 1));
	assert_int_equal(body[want - 1], '\n');
	free(f->cl.resp);
	free(f);
}

static void test_metrics_out_of_memory_is_500(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));

	(void)state;
	assert_non_null(f);
	/* The page grows for the daemon's own metrics, then fails to grow
	 * for the proxy's part: half a page is rendered. */
	fetch_metrics(f, EXTRA_METRICS_BYTES);
	assert_true(f->cl.len > 12);
	assert_memory_equal(f->cl.resp, "HTTP/1.1 500", 12);
	free(f->cl.resp);
	free(f);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_large_metrics_answer_arrives_whole),
		cmocka_unit_test(test_metrics_out_of_memory_is_500),
	};

	egd_log_set_level(EGD_LOG_ERR);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
