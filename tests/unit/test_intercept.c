/* SPDX-License-Identifier: MIT */
/*
 * The handoff from the engine's workers to the policy proxy
 * (egress/intercept.c): the queue to a proxy on another worker is bounded
 * in connections and in bytes, a refused handoff resets the connection and
 * leaves its unit of the daemon's EGRESSD_MAX_CONNS count with the caller,
 * and the proxy gives back the units of what it queued or served.
 *
 * The proxy's loop never runs here, so what other workers queue stays
 * queued: the bounds are reached without racing a consumer.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/loop.h"
#include "egress/intercept.h"

/* intercept.c's bounds, restated: the test fails if they move silently. */
#define QUEUE_MAX 4096
#define QUEUE_MAX_BYTES (16 * 1024 * 1024)
#define HELLO_MAX 16384

struct fix {
	struct egd_loop *loops[2];
	struct egd_intercept *ic;
	unsigned int slots;
	char dir[64];
};

static int setup(void **state)
{
	static struct fix f;
	char path[128];

	memset(&f, 0, sizeof(f));
	snprintf(f.dir, sizeof(f.dir), "/tmp/egd-test-intercept.XXXXXX");
	assert_non_null(mkdtemp(f.dir));
	snprintf(path, sizeof(path), "%s/ca", f.dir);
	setenv("EGRESSD_CA_DIR", path, 1);
	snprintf(path, sizeof(path), "%s/cakey", f.dir);
	setenv("EGRESSD_CA_KEY_DIR", path, 1);
	setenv("PROXY_DATA_DIR", f.dir, 1);
	setenv("EGRESSD_PROXY_HTTP_LISTEN", "off", 1);
	/* An address for the upstream: the loops have no resolver. */
	setenv("UPSTREAM_RESOLVE", "openrouter.ai:443:127.0.0.1", 1);
	for (int i = 0; i < 2; i++)
		assert_non_null(f.loops[i] = egd_loop_new());
	/* Two workers, the proxy on worker 0: worker 1 queues to it. */
	f.ic = egd_intercept_new(f.loops, 2, 1, &f.slots, 1000000);
	assert_non_null(f.ic);
	*state = &f;
	return 0;
}

static int teardown(void **state)
{
	struct fix *f = *state;
	char cmd[160];

	egd_intercept_destroy(f->ic);
	for (int i = 0; i < 2; i++)
		egd_loop_free(f->loops[i]);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
	assert_int_equal(system(cmd), 0);
	return 0;
}

/* Room for @fds descriptors: raise the soft limit, or skip the test. */
static void need_fds(rlim_t fds)
{
	struct rlimit rl;

	assert_int_equal(getrlimit(RLIMIT_NOFILE, &rl), 0);
	if (rl.rlim_cur < fds) {
		rl.rlim_cur = rl.rlim_max < fds ? rl.rlim_max : fds;
		assert_int_equal(setrlimit(RLIMIT_NOFILE, &rl), 0);
	}
	if (rl.rlim_cur < fds) {
		print_message("skipped: RLIMIT_NOFILE's hard limit %llu is below %llu\n",
			      (unsigned long long)rl.rlim_max, (unsigned long long)fds);
		skip();
	}
}

static int fd_open(int fd)
{
	return fcntl(fd, F_GETFD) != -1;
}

/* A connected TCP pair on loopback, where a reset can be seen (a unix
 * socket pair has none): sv[0] the accepted end, sv[1] the dialler's. */
static void tcp_pair(int sv[2])
{
	struct sockaddr_in a = { .sin_family = AF_INET };
	socklen_t len = sizeof(a);
	int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_true(l >= 0);
	assert_int_equal(bind(l, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(listen(l, 1), 0);
	assert_int_equal(getsockname(l, (struct sockaddr *)&a, &len), 0);
	sv[1] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_int_equal(connect(sv[1], (struct sockaddr *)&a, sizeof(a)), 0);
	sv[0] = accept4(l, NULL, NULL, SOCK_CLOEXEC);
	assert_true(sv[0] >= 0);
	close(l);
}

/* Hand one connection from @worker with a @len-byte prefix, as the engine
 * does: its slot, taken at accept, moves with it, or on a refusal stays
 * with the caller, which gives it back. The agent's end goes to *@peer;
 * over loopback TCP when @tcp, else a unix socket pair. */
static int hand(struct fix *f, unsigned int worker, size_t len, int tcp, int *fd, int *peer)
{
	static uint8_t prefix[HELLO_MAX];
	int sv[2], err;

	if (tcp)
		tcp_pair(sv);
	else
		assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	*fd = sv[0];
	*peer = sv[1];
	memset(prefix, 'G', sizeof(prefix));
	f->slots++;
	err = egd_intercept_handoff(f->ic, worker, sv[0], EGD_PROTO_HTTP, "", prefix, len);
	if (err)
		f->slots--; /* the engine's conn_close() */
	return err;
}

/*
 * Queue connections with @len-byte prefixes from worker 1 until the queue
 * refuses one: that must be the (@n + 1)th, refused, reset (the agent sees
 * ECONNRESET, as for any connection over a limit) and its slot left with
 * the caller. Then destroying the proxy closes what it never took
 * and gives back every slot.
 */
static void fill_until_refused(struct fix *f, size_t len, int n)
{
	int *peers, fd, i;
	char b;

	need_fds(2 * (rlim_t)n + 64); /* two per queued connection, and spare */
	peers = calloc((size_t)n + 1, sizeof(*peers));
	assert_non_null(peers);
	for (i = 0; i < n; i++)
		assert_int_equal(hand(f, 1, len, 0, &fd, &peers[i]), 0);
	assert_int_equal(f->slots, n);
	assert_int_equal(hand(f, 1, len, 1, &fd, &peers[n]), -EAGAIN);
	assert_false(fd_open(fd));
	assert_int_equal(recv(peers[n], &b, 1, 0), -1);
	assert_int_equal(errno, ECONNRESET);
	assert_int_equal(f->slots, n);
	egd_intercept_destroy(f->ic);
	f->ic = NULL;
	assert_int_equal(f->slots, 0);
	for (i = 0; i <= n; i++)
		close(peers[i]);
	free(peers);
}

static void test_queue_bounded_in_connections(void **state)
{
	fill_until_refused(*state, 1, QUEUE_MAX);
}

/* 16 KiB hellos: the byte bound stops the queue long before the count. */
static void test_queue_bounded_in_bytes(void **state)
{
	assert_true(QUEUE_MAX_BYTES / HELLO_MAX < QUEUE_MAX);
	fill_until_refused(*state, HELLO_MAX, QUEUE_MAX_BYTES / HELLO_MAX);
}

/* On the proxy's own worker the connection is served at once, and holds
 * its slot until it closes (here, when the proxy is destroyed). */
static void test_served_connection_holds_its_slot(void **state)
{
	struct fix *f = *state;
	int fd, peer;

	assert_int_equal(hand(f, 0, 1, 0, &fd, &peer), 0);
	assert_true(fd_open(fd));
	assert_int_equal(f->slots, 1);
	egd_intercept_destroy(f->ic);
	f->ic = NULL;
	assert_int_equal(f->slots, 0);
	close(peer);
}

static void stop_loop(void *arg)
{
	egd_loop_stop(arg);
}

/* A queued connection the proxy then refuses (here a TLS one whose SNI no
 * certificate can be made for) is closed by the proxy's thread, which
 * gives its slot back. */
static void test_queued_then_refused_gives_its_slot_back(void **state)
{
	static uint8_t hello[1] = { 0x16 };
	struct fix *f = *state;
	int sv[2];

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	f->slots++;
	assert_int_equal(egd_intercept_handoff(f->ic, 1, sv[0], EGD_PROTO_TLS, "bad host!",
					       hello, sizeof(hello)),
			 0);
	assert_int_equal(f->slots, 1);
	/* One turn of the proxy's loop takes the queue. */
	assert_int_equal(egd_loop_on_turn(f->loops[0], stop_loop, f->loops[0]), 0);
	assert_int_equal(egd_loop_run(f->loops[0]), 0);
	assert_int_equal(f->slots, 0);
	assert_false(fd_open(sv[0]));
	close(sv[1]);
}

/* A worker the intercept does not know is refused, not queued anywhere. */
static void test_unknown_worker_refused(void **state)
{
	struct fix *f = *state;
	int fd, peer;

	assert_int_equal(hand(f, 2, 1, 0, &fd, &peer), -EINVAL);
	assert_false(fd_open(fd));
	assert_int_equal(f->slots, 0);
	close(peer);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_queue_bounded_in_connections, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_queue_bounded_in_bytes, setup, teardown),
		cmocka_unit_test_setup_teardown(test_served_connection_holds_its_slot, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_queued_then_refused_gives_its_slot_back, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_unknown_worker_refused, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
