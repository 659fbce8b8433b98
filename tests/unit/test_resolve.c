// SPDX-License-Identifier: MIT
/*
 * The loop's resolver, and the upstream client's use of it: every address of
 * a name, IP literals, cancellation (from outside and from another answer's
 * callback), one resolver per loop, and the upstream's address fallback,
 * answer cache and lookups abandoned in flight.
 *
 * Names come from a private /etc/hosts, bind-mounted in a mount namespace of
 * this process with an nsswitch.conf that says "hosts: files", so no lookup
 * leaves the machine. Without the privilege for that, those tests skip.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/log.h"
#include "core/loop.h"
#include "core/resolve.h"
#include "proxy/proxy_config.h"
#include "proxy/upstream.h"

/* A test that has not finished by then is stuck, not slow. */
#define TEST_DEADLINE_MS 10000
/* many.test has more addresses than an answer keeps. */
#define MANY_ADDRS (EGD_RESOLVE_MAX_ADDRS + 2)

static char g_dir[64], g_hosts[128];
static int g_private_hosts; /* the namespace with our /etc/hosts is in place */

/* The hosts file; @extra is appended (the cache test takes a name away). */
static void write_hosts(const char *extra)
{
	FILE *f = fopen(g_hosts, "w"); /* same inode: the bind mount sees it */

	assert_non_null(f);
	fprintf(f, "127.0.0.1 localhost one.test\n");
	fprintf(f, "127.0.0.11 multi.test\n127.0.0.12 multi.test\n127.0.0.13 multi.test\n");
	/* glibc keeps these in file order: nothing listens on the first, so
	 * the upstream must fall back to the second. */
	fprintf(f, "127.0.0.21 fallback.test\n127.0.0.22 fallback.test\n");
	for (int i = 1; i <= MANY_ADDRS; i++)
		fprintf(f, "127.0.1.%d many.test\n", i);
	fputs(extra, f);
	fclose(f);
}

static int bind_file(const char *dir, const char *name, const char *text, const char *target)
{
	char path[128];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "w");
	if (!f)
		return -1;
	fputs(text, f);
	fclose(f);
	return mount(path, target, NULL, MS_BIND, NULL);
}

static int group_setup(void **state)
{
	(void)state;
	snprintf(g_dir, sizeof(g_dir), "/tmp/egd-resolve-XXXXXX");
	if (!mkdtemp(g_dir))
		return -1;
	snprintf(g_hosts, sizeof(g_hosts), "%s/hosts", g_dir);
	/* Before any thread exists: the namespace is per thread until then,
	 * and the resolvers' threads inherit it. */
	if (unshare(CLONE_NEWNS) || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) ||
	    bind_file(g_dir, "nsswitch.conf", "hosts: files\n", "/etc/nsswitch.conf") ||
	    bind_file(g_dir, "hosts", "", "/etc/hosts"))
		return 0;
	g_private_hosts = 1;
	write_hosts("");
	return 0;
}

static int group_teardown(void **state)
{
	char cmd[128];

	(void)state;
	snprintf(cmd, sizeof(cmd), "rm -rf %s", g_dir);
	return system(cmd) ? -1 : 0;
}

#define NEED_PRIVATE_HOSTS()                                                              \
	do {                                                                              \
		if (!g_private_hosts)                                                     \
			skip(); /* no mount namespace: names would go to real DNS */     \
	} while (0)

/* ---- the resolver alone ----------------------------------------------------- */

struct answer {
	struct egd_loop *loop;
	int called;
	int stop; /* stop the loop when this one arrives */
	char err[128];
	struct egd_resolved res;
	struct egd_resolve_req *cancel; /* cancelled from this callback */
};

static void on_answer(void *arg, const char *err, const struct egd_resolved *res)
{
	struct answer *a = arg;

	a->called++;
	snprintf(a->err, sizeof(a->err), "%s", err ? err : "");
	a->res = *res;
	egd_resolve_cancel(a->cancel);
	if (a->stop)
		egd_loop_stop(a->loop);
}

static void deadline_cb(struct egd_timer *t)
{
	(void)t;
	fail_msg("deadline passed");
}

static void run_until_stopped(struct egd_loop *loop)
{
	struct egd_timer deadline = { .cb = deadline_cb };

	egd_timer_arm(loop, &deadline, egd_now_ms() + TEST_DEADLINE_MS);
	assert_int_equal(egd_loop_run(loop), 0);
	egd_timer_cancel(loop, &deadline);
}

/* Resolve @host on a fresh loop and resolver into @a. */
static void resolve_one(const char *host, uint16_t port, struct answer *a)
{
	struct egd_loop *loop = egd_loop_new();
	struct egd_resolver *r;

	assert_non_null(loop);
	r = egd_resolver_new(loop);
	assert_non_null(r);
	memset(a, 0, sizeof(*a));
	a->loop = loop;
	a->stop = 1;
	assert_non_null(egd_resolve(r, host, htons(port), on_answer, a));
	run_until_stopped(loop);
	egd_resolver_free(r);
	egd_loop_free(loop);
	assert_int_equal(a->called, 1);
}

static const char *v4(const struct egd_resolved *res, size_t i, uint16_t *port)
{
	static char buf[INET_ADDRSTRLEN];
	const struct sockaddr_in *in = (const struct sockaddr_in *)&res->addr[i];

	assert_int_equal(in->sin_family, AF_INET);
	assert_int_equal(res->len[i], sizeof(*in));
	*port = ntohs(in->sin_port);
	return inet_ntop(AF_INET, &in->sin_addr, buf, sizeof(buf));
}

static void test_ip_literal_answered(void **state)
{
	struct answer a;
	uint16_t port;

	(void)state;
	resolve_one("127.0.0.1", 8443, &a);
	assert_string_equal(a.err, "");
	assert_int_equal(a.res.n, 1);
	assert_string_equal(v4(&a.res, 0, &port), "127.0.0.1");
	assert_int_equal(port, 8443);
}

static void test_hosts_name_resolved(void **state)
{
	struct answer a;
	uint16_t port;

	(void)state;
	NEED_PRIVATE_HOSTS();
	resolve_one("one.test", 80, &a);
	assert_string_equal(a.err, "");
	assert_int_equal(a.res.n, 1);
	assert_string_equal(v4(&a.res, 0, &port), "127.0.0.1");
	assert_int_equal(port, 80);
}

static void test_every_address_returned(void **state)
{
	const char *want[] = { "127.0.0.11", "127.0.0.12", "127.0.0.13" };
	int seen[3] = { 0 };
	struct answer a;

	(void)state;
	NEED_PRIVATE_HOSTS();
	resolve_one("multi.test", 443, &a);
	assert_string_equal(a.err, "");
	assert_int_equal(a.res.n, 3);
	for (size_t i = 0; i < a.res.n; i++) {
		uint16_t port;
		const char *s = v4(&a.res, i, &port);

		assert_int_equal(port, 443);
		for (int j = 0; j < 3; j++)
			seen[j] += !strcmp(s, want[j]);
	}
	assert_true(seen[0] == 1 && seen[1] == 1 && seen[2] == 1);
}

static void test_addresses_capped(void **state)
{
	struct answer a;

	(void)state;
	NEED_PRIVATE_HOSTS();
	resolve_one("many.test", 443, &a);
	assert_string_equal(a.err, "");
	assert_int_equal(a.res.n, EGD_RESOLVE_MAX_ADDRS);
}

static void test_unknown_name_fails(void **state)
{
	struct answer a;

	(void)state;
	NEED_PRIVATE_HOSTS();
	resolve_one("missing.test", 443, &a);
	assert_string_not_equal(a.err, "");
	assert_int_equal(a.res.n, 0);
}

static void test_long_name_refused(void **state)
{
	struct egd_loop *loop = egd_loop_new();
	struct egd_resolver *r = egd_resolver_new(loop);
	char host[EGD_RESOLVE_HOST_MAX_BYTES + 1];

	(void)state;
	assert_non_null(r);
	memset(host, 'a', sizeof(host) - 1);
	host[sizeof(host) - 1] = 0;
	errno = 0;
	assert_null(egd_resolve(r, host, htons(443), on_answer, NULL));
	assert_int_equal(errno, ENAMETOOLONG);
	egd_resolver_free(r);
	egd_loop_free(loop);
}

static void test_cancelled_request_never_answered(void **state)
{
	struct egd_loop *loop = egd_loop_new();
	struct egd_resolver *r = egd_resolver_new(loop);
	struct answer gone = { .loop = loop }, last = { .loop = loop, .stop = 1 };

	(void)state;
	assert_non_null(r);
	egd_resolve_cancel(egd_resolve(r, "127.0.0.1", htons(1), on_answer, &gone));
	/* One worker answers in order: this one comes after. */
	assert_non_null(egd_resolve(r, "127.0.0.2", htons(1), on_answer, &last));
	run_until_stopped(loop);
	assert_int_equal(gone.called, 0);
	assert_int_equal(last.called, 1);
	egd_resolver_free(r);
	egd_loop_free(loop);
}

static void test_cancel_from_another_callback(void **state)
{
	struct egd_loop *loop = egd_loop_new();
	struct egd_resolver *r = egd_resolver_new(loop);
	struct answer first = { .loop = loop }, second = { .loop = loop },
		      last = { .loop = loop, .stop = 1 };

	(void)state;
	assert_non_null(r);
	assert_non_null(egd_resolve(r, "127.0.0.1", htons(1), on_answer, &first));
	first.cancel = egd_resolve(r, "127.0.0.2", htons(1), on_answer, &second);
	assert_non_null(first.cancel);
	assert_non_null(egd_resolve(r, "127.0.0.3", htons(1), on_answer, &last));
	run_until_stopped(loop);
	assert_int_equal(first.called, 1);
	assert_int_equal(second.called, 0);
	assert_int_equal(last.called, 1);
	egd_resolver_free(r);
	egd_loop_free(loop);
}

static void test_one_resolver_per_loop(void **state)
{
	struct egd_loop *loop = egd_loop_new();
	struct egd_resolver *r = egd_resolver_new(loop);

	(void)state;
	assert_non_null(r);
	assert_ptr_equal(egd_loop_resolver(loop), r);
	errno = 0;
	assert_null(egd_resolver_new(loop));
	assert_int_equal(errno, EBUSY);
	egd_resolver_free(r);
	assert_null(egd_loop_resolver(loop));
	/* Lookups still queued when it goes are dropped without a call. */
	r = egd_resolver_new(loop);
	assert_non_null(r);
	for (int i = 0; i < 4; i++)
		assert_non_null(egd_resolve(r, "127.0.0.1", htons(1), on_answer, NULL));
	egd_resolver_free(r);
	egd_loop_free(loop);
}

/* ---- the upstream client on the resolver -------------------------------------- */

/* A plain HTTP server on @addr that answers @n requests 200 and closes
 * each connection, on its own thread. */
struct server {
	int fd, port, n, served;
	pthread_t thread;
};

static void *serve(void *arg)
{
	struct server *s = arg;
	static const char resp[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
				   "Connection: close\r\n\r\nok";

	for (int i = 0; i < s->n; i++) {
		char buf[4096];
		size_t len = 0;
		int fd = accept(s->fd, NULL, NULL);

		if (fd < 0)
			break;
		while (len < sizeof(buf) - 1) {
			ssize_t got = read(fd, buf + len, sizeof(buf) - 1 - len);

			if (got <= 0)
				break;
			len += (size_t)got;
			buf[len] = 0;
			if (strstr(buf, "\r\n\r\n"))
				break;
		}
		(void)!write(fd, resp, sizeof(resp) - 1);
		close(fd);
		s->served++;
	}
	return NULL;
}

static void server_start(struct server *s, const char *addr, int n)
{
	struct sockaddr_in a = { .sin_family = AF_INET };
	socklen_t l = sizeof(a);

	assert_int_equal(inet_pton(AF_INET, addr, &a.sin_addr), 1);
	s->n = n;
	s->served = 0;
	s->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(s->fd >= 0);
	assert_int_equal(bind(s->fd, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(listen(s->fd, 8), 0);
	assert_int_equal(getsockname(s->fd, (struct sockaddr *)&a, &l), 0);
	s->port = ntohs(a.sin_port);
	assert_int_equal(pthread_create(&s->thread, NULL, serve, s), 0);
}

static void server_stop(struct server *s)
{
	shutdown(s->fd, SHUT_RDWR);
	pthread_join(s->thread, NULL);
	close(s->fd);
}

static const char *g_base_url;

static const char *up_env(void *ctx, const char *name)
{
	(void)ctx;
	if (!strcmp(name, "UPSTREAM_BASE_URL"))
		return g_base_url;
	if (!strcmp(name, "UPSTREAM_TIMEOUT_S"))
		return "5";
	return NULL;
}

struct up_test {
	struct egd_loop *loop;
	struct egd_resolver *resolver;
	struct egd_proxy_config cfg;
	struct egd_upstream *up;
	char url[64];
	int status, done, err;
	/* Called from on_done instead of stopping the loop (which cannot be
	 * run again once stopped), to chain a second request. */
	void (*then)(struct up_test *t);
};

static int up_on_head(void *ctx, const struct egd_http_msg *m)
{
	((struct up_test *)ctx)->status = m->status;
	return 0;
}

static void up_on_done(void *ctx, int err)
{
	struct up_test *t = ctx;

	void (*then)(struct up_test *t) = t->then;

	t->done++;
	t->err = err;
	t->then = NULL;
	if (then)
		then(t);
	else
		egd_loop_stop(t->loop);
}

static const struct egd_upstream_cbs up_cbs = { .on_head = up_on_head, .on_done = up_on_done };

static void up_new(struct up_test *t, const char *host, int port)
{
	char err[256];

	memset(t, 0, sizeof(*t));
	snprintf(t->url, sizeof(t->url), "http://%s:%d", host, port);
	g_base_url = t->url;
	assert_int_equal(egd_proxy_config_load(&t->cfg, up_env, NULL, err, sizeof(err)), 0);
	t->loop = egd_loop_new();
	assert_non_null(t->loop);
	t->resolver = egd_resolver_new(t->loop);
	assert_non_null(t->resolver);
	t->up = egd_upstream_new(t->loop, egd_loop_resolver(t->loop), &t->cfg);
	assert_non_null(t->up);
}

static void up_free(struct up_test *t)
{
	egd_upstream_destroy(t->up);
	egd_resolver_free(t->resolver);
	egd_loop_free(t->loop);
	egd_proxy_config_free(&t->cfg);
}

static void up_send(struct up_test *t)
{
	t->status = 0;
	assert_non_null(egd_upstream_send(t->up, "GET", "/", NULL, 0, NULL, 0, &up_cbs, t));
}

static void up_get(struct up_test *t)
{
	up_send(t);
	run_until_stopped(t->loop);
	assert_int_equal(t->done, 1);
}

static void test_upstream_name_needs_resolver(void **state)
{
	struct up_test t;
	char err[256];

	(void)state;
	memset(&t, 0, sizeof(t));
	g_base_url = "http://up.test:80";
	assert_int_equal(egd_proxy_config_load(&t.cfg, up_env, NULL, err, sizeof(err)), 0);
	t.loop = egd_loop_new();
	errno = 0;
	assert_null(egd_upstream_new(t.loop, NULL, &t.cfg));
	assert_int_equal(errno, EINVAL);
	/* An IP literal is never resolved, so it needs none. */
	egd_proxy_config_free(&t.cfg);
	g_base_url = "http://127.0.0.1:80";
	assert_int_equal(egd_proxy_config_load(&t.cfg, up_env, NULL, err, sizeof(err)), 0);
	t.up = egd_upstream_new(t.loop, NULL, &t.cfg);
	assert_non_null(t.up);
	up_free(&t);
}

static void test_upstream_falls_back_to_next_address(void **state)
{
	struct server s;
	struct up_test t;
	struct answer a;
	uint16_t port;

	(void)state;
	NEED_PRIVATE_HOSTS();
	resolve_one("fallback.test", 80, &a);
	assert_int_equal(a.res.n, 2);
	assert_string_equal(v4(&a.res, 0, &port), "127.0.0.21"); /* the dead one first */
	server_start(&s, "127.0.0.22", 1);
	up_new(&t, "fallback.test", s.port);
	up_get(&t);
	assert_int_equal(t.err, 0);
	assert_int_equal(t.status, 200);
	up_free(&t);
	server_stop(&s);
	assert_int_equal(s.served, 1);
}

/* The name is gone; the second connection (the server closed the first)
 * still reaches the server with the address kept for the TTL. */
static void forget_name_and_send_again(struct up_test *t)
{
	assert_int_equal(t->err, 0);
	assert_int_equal(t->status, 200);
	write_hosts("");
	up_send(t);
}

static void test_upstream_answer_cached(void **state)
{
	struct server s;
	struct up_test t;

	(void)state;
	NEED_PRIVATE_HOSTS();
	write_hosts("127.0.0.1 cache.test\n");
	server_start(&s, "127.0.0.1", 2);
	up_new(&t, "cache.test", s.port);
	t.then = forget_name_and_send_again;
	up_send(&t);
	run_until_stopped(t.loop);
	assert_int_equal(t.done, 2);
	assert_int_equal(t.err, 0);
	assert_int_equal(t.status, 200);
	up_free(&t);
	server_stop(&s);
	assert_int_equal(s.served, 2);
}

static void test_upstream_unknown_name_unreachable(void **state)
{
	struct up_test t;

	(void)state;
	NEED_PRIVATE_HOSTS();
	up_new(&t, "missing.test", 80);
	up_get(&t);
	assert_int_equal(t.err, -EHOSTUNREACH);
	up_free(&t);
}

/* A request abandoned, or its client destroyed, while its lookup is in
 * flight: no callback, and (under ASan) nothing touched after it is gone. */
static void test_upstream_lookup_abandoned(void **state)
{
	struct up_test t;
	struct answer last;
	struct egd_upstream_req *r;

	(void)state;
	NEED_PRIVATE_HOSTS();
	up_new(&t, "one.test", 1);
	r = egd_upstream_send(t.up, "GET", "/", NULL, 0, NULL, 0, &up_cbs, &t);
	assert_non_null(r);
	egd_upstream_cancel(r);
	assert_non_null(egd_upstream_send(t.up, "GET", "/", NULL, 0, NULL, 0, &up_cbs, &t));
	egd_upstream_destroy(t.up);
	t.up = NULL;
	/* Both lookups are answered before this one. */
	memset(&last, 0, sizeof(last));
	last.loop = t.loop;
	last.stop = 1;
	assert_non_null(egd_resolve(t.resolver, "one.test", htons(1), on_answer, &last));
	run_until_stopped(t.loop);
	assert_int_equal(last.called, 1);
	assert_int_equal(t.done, 0);
	up_free(&t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_ip_literal_answered),
		cmocka_unit_test(test_hosts_name_resolved),
		cmocka_unit_test(test_every_address_returned),
		cmocka_unit_test(test_addresses_capped),
		cmocka_unit_test(test_unknown_name_fails),
		cmocka_unit_test(test_long_name_refused),
		cmocka_unit_test(test_cancelled_request_never_answered),
		cmocka_unit_test(test_cancel_from_another_callback),
		cmocka_unit_test(test_one_resolver_per_loop),
		cmocka_unit_test(test_upstream_name_needs_resolver),
		cmocka_unit_test(test_upstream_falls_back_to_next_address),
		cmocka_unit_test(test_upstream_answer_cached),
		cmocka_unit_test(test_upstream_unknown_name_unreachable),
		cmocka_unit_test(test_upstream_lookup_abandoned),
	};

	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
