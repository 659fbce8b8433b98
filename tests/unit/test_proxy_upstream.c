// SPDX-License-Identifier: MIT
/*
 * The upstream client's retry rule, against a plain-HTTP upstream on a
 * thread that counts the requests it read: a request that reached the
 * upstream is never sent a second time unless its method is idempotent
 * (a chat completion run twice is billed twice upstream), while a pooled
 * connection the upstream closed while it sat idle is still replaced by a
 * fresh one without the caller seeing an error.
 */
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
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
#include "proxy/proxy_config.h"
#include "proxy/upstream.h"

/* Each test is over in well under a second; past this it is stuck. */
#define UPSTREAM_TIMEOUT_S 5
#define SERVER_POLL_MS 50
#define REQ_MAX_BYTES 4096

static const char ANSWER[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

enum first_conn {
	/* Answer the first request, then read the second and close. */
	CLOSE_AFTER_READING_SECOND,
	/* Answer the first request, then close while the connection idles. */
	CLOSE_AFTER_FIRST_ANSWER,
};

struct server {
	int lfd, port;
	enum first_conn mode;
	pthread_t thread;
	int stop;	    /* set by the test, read by the thread */
	int requests;	    /* requests read, every connection */
	int conns;	    /* connections accepted */
	int closed_pipe[2]; /* a byte when the first connection was closed */
	pthread_mutex_t mu;
	int running; /* the thread is up: server_stop() has work to do */
};

/* Read one request (head and Content-Length body); 1, or 0 at EOF/error. */
static int read_request(int fd)
{
	char buf[REQ_MAX_BYTES + 1];
	size_t len = 0;
	char *end = NULL, *cl;
	ssize_t n;

	while (len < REQ_MAX_BYTES) {
		n = read(fd, buf + len, REQ_MAX_BYTES - len);
		if (n <= 0)
			return 0;
		len += (size_t)n;
		buf[len] = 0;
		end = strstr(buf, "\r\n\r\n");
		if (!end)
			continue;
		cl = strstr(buf, "Content-Length: ");
		if (!cl || (size_t)(end + 4 - buf) + strtoul(cl + 16, NULL, 10) <= len)
			return 1;
	}
	return 0;
}

static void count_request(struct server *s)
{
	pthread_mutex_lock(&s->mu);
	s->requests++;
	pthread_mutex_unlock(&s->mu);
}

static void *server_main(void *arg)
{
	struct server *s = arg;
	int first = 1;

	for (;;) {
		struct pollfd p = { .fd = s->lfd, .events = POLLIN };
		int fd, stop;

		pthread_mutex_lock(&s->mu);
		stop = s->stop;
		pthread_mutex_unlock(&s->mu);
		if (stop)
			return NULL;
		if (poll(&p, 1, SERVER_POLL_MS) != 1)
			continue;
		fd = accept(s->lfd, NULL, NULL);
		if (fd < 0)
			continue;
		pthread_mutex_lock(&s->mu);
		s->conns++;
		pthread_mutex_unlock(&s->mu);
		if (first) {
			first = 0;
			/* No cmocka assertion on this thread: a failed
			 * write shows as a failed call in the test. */
			if (read_request(fd)) {
				count_request(s);
				if (write(fd, ANSWER, strlen(ANSWER)) < 0)
					perror("server write");
			}
			if (s->mode == CLOSE_AFTER_READING_SECOND && read_request(fd))
				count_request(s);
			close(fd);
			if (write(s->closed_pipe[1], "c", 1) != 1)
				perror("server pipe");
			continue;
		}
		/* Later connections answer every request until EOF. */
		while (read_request(fd)) {
			count_request(s);
			if (write(fd, ANSWER, strlen(ANSWER)) != (ssize_t)strlen(ANSWER))
				break;
		}
		close(fd);
	}
}

static void server_start(struct server *s, enum first_conn mode)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t alen = sizeof(a);

	memset(s, 0, sizeof(*s));
	s->mode = mode;
	pthread_mutex_init(&s->mu, NULL);
	assert_int_equal(pipe(s->closed_pipe), 0);
	s->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(s->lfd >= 0);
	assert_int_equal(bind(s->lfd, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(listen(s->lfd, 8), 0);
	assert_int_equal(getsockname(s->lfd, (struct sockaddr *)&a, &alen), 0);
	s->port = ntohs(a.sin_port);
	assert_int_equal(pthread_create(&s->thread, NULL, server_main, s), 0);
	s->running = 1;
}

static int server_stop(struct server *s)
{
	int requests;

	if (!s->running)
		return s->requests;
	s->running = 0;
	pthread_mutex_lock(&s->mu);
	s->stop = 1;
	pthread_mutex_unlock(&s->mu);
	pthread_join(s->thread, NULL);
	close(s->lfd);
	close(s->closed_pipe[0]);
	close(s->closed_pipe[1]);
	requests = s->requests;
	pthread_mutex_destroy(&s->mu);
	return requests;
}

/* One server per test, stopped in teardown even when the test failed. */
static struct server g_srv;

static int teardown(void **state)
{
	(void)state;
	server_stop(&g_srv);
	return 0;
}

/* ---- the client side --------------------------------------------------- */

#define MAX_CALLS 2

/* The calls of one test, made one after the other from a single run of the
 * loop (a stopped loop stays stopped). */
struct script {
	struct egd_loop *loop;
	struct egd_proxy_config cfg;
	struct egd_upstream *u;
	const char *methods[MAX_CALLS];
	/* Before the second call, wait until the upstream closed the first
	 * connection, from inside the loop so that it sees nothing of it. */
	int wait_close_fd;
	size_t next;
	int status[MAX_CALLS];
	int err[MAX_CALLS];
};

static void script_next(void *arg);

static int on_head(void *ctx, const struct egd_http_msg *m)
{
	struct script *s = ctx;

	s->status[s->next - 1] = m->status;
	return 0;
}

static void on_done(void *ctx, int err)
{
	struct script *s = ctx;

	s->err[s->next - 1] = err;
	assert_int_equal(egd_loop_defer(s->loop, script_next, s), 0);
}

static const struct egd_upstream_cbs cbs = { .on_head = on_head, .on_done = on_done };

static void script_next(void *arg)
{
	static const char body[] = "{\"model\":\"m\",\"messages\":[]}";
	struct script *s = arg;
	char b;

	if (s->next == MAX_CALLS) {
		egd_loop_stop(s->loop);
		return;
	}
	if (s->next == 1) {
		/* The first answer left its connection in the pool. */
		assert_int_equal(egd_upstream_idle_count(s->u), 1);
		if (s->wait_close_fd >= 0) {
			assert_int_equal(read(s->wait_close_fd, &b, 1), 1);
			usleep(20 * 1000);
		}
	}
	s->err[s->next] = 1;
	s->next++;
	assert_non_null(egd_upstream_send(s->u, s->methods[s->next - 1], "/api/v1/chat/completions",
					  NULL, 0, body, strlen(body), &cbs, s));
}

static void script_run(struct script *s, int port)
{
	s->cfg.upstream_host = "127.0.0.1";
	s->cfg.upstream_port = (unsigned short)port;
	s->cfg.upstream_timeout_s = UPSTREAM_TIMEOUT_S;
	s->loop = egd_loop_new();
	assert_non_null(s->loop);
	s->u = egd_upstream_new(s->loop, NULL, &s->cfg);
	assert_non_null(s->u);
	assert_int_equal(egd_loop_defer(s->loop, script_next, s), 0);
	assert_int_equal(egd_loop_run(s->loop), 0);
	egd_upstream_destroy(s->u);
	egd_loop_free(s->loop);
	assert_int_equal(s->next, MAX_CALLS);
}

/* ---- tests ------------------------------------------------------------- */

static void test_post_read_then_closed_is_not_sent_twice(void **state)
{
	struct script sc = { .methods = { "POST", "POST" }, .wait_close_fd = -1 };
	struct server *s = &g_srv;

	(void)state;
	server_start(s, CLOSE_AFTER_READING_SECOND);
	script_run(&sc, s->port);
	assert_int_equal(sc.err[0], 0);
	assert_int_equal(sc.status[0], 200);
	/* The pooled connection carried the second POST; the upstream read
	 * it and closed without answering. It may have run it: the caller
	 * gets an error (502), and the upstream never sees it again. */
	assert_true(sc.err[1] < 0);
	assert_int_equal(server_stop(s), 2);
}

static void test_get_read_then_closed_is_retried(void **state)
{
	struct script sc = { .methods = { "GET", "GET" }, .wait_close_fd = -1 };
	struct server *s = &g_srv;

	(void)state;
	server_start(s, CLOSE_AFTER_READING_SECOND);
	script_run(&sc, s->port);
	assert_int_equal(sc.err[0], 0);
	/* GET is idempotent (RFC 9110, 9.2.2): sent again on a fresh
	 * connection, and answered. */
	assert_int_equal(sc.err[1], 0);
	assert_int_equal(sc.status[1], 200);
	assert_int_equal(server_stop(s), 3);
}

static void test_post_on_connection_closed_while_idle_gets_fresh_one(void **state)
{
	struct script sc = { .methods = { "POST", "POST" } };
	struct server *s = &g_srv;

	(void)state;
	server_start(s, CLOSE_AFTER_FIRST_ANSWER);
	sc.wait_close_fd = s->closed_pipe[0];
	script_run(&sc, s->port);
	assert_int_equal(sc.err[0], 0);
	/* The upstream closed the pooled connection while the loop was not
	 * looking: the check at reuse finds it dead, and a fresh connection
	 * carries the POST, once. */
	assert_int_equal(sc.err[1], 0);
	assert_int_equal(sc.status[1], 200);
	assert_int_equal(server_stop(s), 2);
	assert_int_equal(s->conns, 2);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_post_read_then_closed_is_not_sent_twice, teardown),
		cmocka_unit_test_teardown(test_get_read_then_closed_is_retried, teardown),
		cmocka_unit_test_teardown(test_post_on_connection_closed_while_idle_gets_fresh_one,
					  teardown),
	};

	egd_log_set_level(EGD_LOG_ERR);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
