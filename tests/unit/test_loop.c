/* SPDX-License-Identifier: MIT */
/*
 * The event loop's end-of-turn hooks: several per loop, removable, run
 * after a turn's events; egd_loop_poll_again() lets events that arrive
 * during a turn be handled before the hooks; a loop stopped mid-turn still
 * runs them once. And the lifetime rule: once a callback removes a watch,
 * nothing more of the current batch is dispatched to it, so its owner may
 * be freed at once (the crash of an agent closing with a request in flight,
 * whose upstream connection was freed while its event was still pending).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/loop.h"

struct fixture {
	struct egd_loop *loop;
	struct egd_watch a, b;
	int handled;	   /* events handled so far */
	int seen_by_hook[8]; /* `handled` at each hook call */
	int hook_calls, other_calls;
	int poll_again, stop_in_a;
};

static struct fixture f;

static void kick(int fd)
{
	static const uint64_t one = 1;

	assert_int_equal(write(fd, &one, sizeof(one)), sizeof(one));
}

static void drain(int fd)
{
	uint64_t n;

	assert_int_equal(read(fd, &n, sizeof(n)), sizeof(n));
}

/* Event A makes event B ready while its turn runs. */
static void on_a(struct egd_watch *w, uint32_t events)
{
	(void)events;
	drain(w->fd);
	f.handled++;
	if (f.poll_again)
		egd_loop_poll_again(f.loop);
	if (f.stop_in_a)
		egd_loop_stop(f.loop);
	kick(f.b.fd);
}

static void on_b(struct egd_watch *w, uint32_t events)
{
	(void)events;
	drain(w->fd);
	f.handled++;
}

static void hook(void *arg)
{
	(void)arg;
	if (f.hook_calls < 8)
		f.seen_by_hook[f.hook_calls] = f.handled;
	f.hook_calls++;
	/* Both events handled: done. */
	if (f.handled == 2)
		egd_loop_stop(f.loop);
}

static void other_hook(void *arg)
{
	(void)arg;
	f.other_calls++;
}

static int setup(void **state)
{
	(void)state;
	f = (struct fixture){ 0 };
	f.loop = egd_loop_new();
	assert_non_null(f.loop);
	f.a.fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	f.b.fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	f.a.cb = on_a;
	f.b.cb = on_b;
	assert_int_equal(egd_loop_add(f.loop, &f.a, EPOLLIN), 0);
	assert_int_equal(egd_loop_add(f.loop, &f.b, EPOLLIN), 0);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	egd_loop_del(f.loop, &f.a);
	egd_loop_del(f.loop, &f.b);
	close(f.a.fd);
	close(f.b.fd);
	egd_loop_free(f.loop);
	return 0;
}

/* Without a request to poll again, the hook runs after A's turn, before
 * B (made ready during that turn) is handled. */
static void test_hook_runs_after_each_turn(void **state)
{
	(void)state;
	assert_int_equal(egd_loop_on_turn(f.loop, hook, NULL), 0);
	kick(f.a.fd);
	assert_int_equal(egd_loop_run(f.loop), 0);
	assert_int_equal(f.seen_by_hook[0], 1);
	assert_int_equal(f.handled, 2);
}

/* egd_loop_poll_again(): B is handled before the hook's first run, so a
 * commit in the hook covers both. */
static void test_poll_again_gathers_before_hooks(void **state)
{
	(void)state;
	f.poll_again = 1;
	assert_int_equal(egd_loop_on_turn(f.loop, hook, NULL), 0);
	kick(f.a.fd);
	assert_int_equal(egd_loop_run(f.loop), 0);
	assert_int_equal(f.seen_by_hook[0], 2);
	assert_int_equal(f.hook_calls, 1);
}

/* Several hooks run; a removed one no longer does. */
static void test_several_hooks_and_removal(void **state)
{
	(void)state;
	assert_int_equal(egd_loop_on_turn(f.loop, other_hook, NULL), 0);
	assert_int_equal(egd_loop_on_turn(f.loop, hook, NULL), 0);
	kick(f.a.fd);
	assert_int_equal(egd_loop_run(f.loop), 0);
	assert_true(f.other_calls >= 1);
	assert_int_equal(f.other_calls, f.hook_calls);
	egd_loop_on_turn_remove(f.loop, other_hook, NULL);
	f.handled = 0;
	f.other_calls = 0;
	f.poll_again = 0;
	kick(f.a.fd);
	assert_int_equal(egd_loop_run(f.loop), 0);
	assert_int_equal(f.other_calls, 0);
	/* The table is bounded: past it, -ENOSPC rather than a lost hook. */
	for (int i = 0; i < 3; i++)
		assert_int_equal(egd_loop_on_turn(f.loop, other_hook, NULL), 0);
	assert_int_equal(egd_loop_on_turn(f.loop, other_hook, NULL), -ENOSPC);
}

/* Stopped inside a turn that put its hooks off (poll again): they run once
 * as the loop returns, so what the turn batched is written. */
static void test_stop_mid_turn_still_runs_hooks(void **state)
{
	(void)state;
	f.stop_in_a = 1;
	f.poll_again = 1;
	assert_int_equal(egd_loop_on_turn(f.loop, other_hook, NULL), 0);
	kick(f.a.fd);
	assert_int_equal(egd_loop_run(f.loop), 0);
	assert_int_equal(f.handled, 1);
	assert_int_equal(f.other_calls, 1);
}

/* Two owners whose events come in one batch; whichever is handled first
 * tears the other down, as a client connection does with its upstream. */
struct owner {
	struct egd_watch w;
	struct owner *peer;
};

static int batch_handled;
static struct owner *survivor; /* the owner whose event was handled */

static void owner_must_not_run(struct egd_watch *w, uint32_t events)
{
	(void)w;
	(void)events;
	fail_msg("an event was dispatched to a watch removed earlier in its batch");
}

static void owner_close(struct owner *o, int and_free)
{
	egd_loop_del(f.loop, &o->w);
	close(o->w.fd);
	o->w.fd = -1;
	if (and_free)
		free(o);
	else
		o->w.cb = owner_must_not_run;
}

/* Handled first: removes the peer's watch. @and_free: frees the peer too. */
static void owner_handle(struct egd_watch *w, int and_free)
{
	struct owner *o = (struct owner *)w;

	batch_handled++;
	drain(w->fd);
	survivor = o;
	owner_close(o->peer, and_free);
	if (and_free)
		o->peer = NULL;
	egd_loop_stop(f.loop);
}

static void owner_cb_keep(struct egd_watch *w, uint32_t events)
{
	(void)events;
	owner_handle(w, 0);
}

static void owner_cb_free(struct egd_watch *w, uint32_t events)
{
	(void)events;
	owner_handle(w, 1);
}

static void owner_pair(egd_watch_cb cb)
{
	struct owner *a = calloc(1, sizeof(*a)), *b = calloc(1, sizeof(*b));

	assert_non_null(a);
	assert_non_null(b);
	a->peer = b;
	b->peer = a;
	a->w.fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	b->w.fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	a->w.cb = b->w.cb = cb;
	assert_int_equal(egd_loop_add(f.loop, &a->w, EPOLLIN), 0);
	assert_int_equal(egd_loop_add(f.loop, &b->w, EPOLLIN), 0);
	/* Both ready before the loop looks: one epoll_wait() returns both. */
	kick(a->w.fd);
	kick(b->w.fd);
	batch_handled = 0;
	survivor = NULL;
}

/* The removed watch's pending event is dropped: the callback that would
 * fail the test is never called (before the rule, it was). */
static void test_del_drops_events_pending_in_the_batch(void **state)
{
	(void)state;
	owner_pair(owner_cb_keep);
	assert_int_equal(egd_loop_run(f.loop), 0);
	assert_int_equal(batch_handled, 1);
	assert_non_null(survivor);
	free(survivor->peer);
	owner_close(survivor, 1);
}

/* The same with the peer really freed, as the upstream client frees its
 * connection: without the rule ASan reports a use after free here, and a
 * plain build calls into freed memory. */
static void test_owner_freed_in_the_same_batch(void **state)
{
	(void)state;
	owner_pair(owner_cb_free);
	assert_int_equal(egd_loop_run(f.loop), 0);
	assert_int_equal(batch_handled, 1);
	assert_non_null(survivor);
	assert_null(survivor->peer);
	owner_close(survivor, 1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_hook_runs_after_each_turn, setup, teardown),
		cmocka_unit_test_setup_teardown(test_poll_again_gathers_before_hooks, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_several_hooks_and_removal, setup, teardown),
		cmocka_unit_test_setup_teardown(test_stop_mid_turn_still_runs_hooks, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_del_drops_events_pending_in_the_batch, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_owner_freed_in_the_same_batch, setup,
						teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
