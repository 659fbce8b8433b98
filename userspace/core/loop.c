/* SPDX-License-Identifier: MIT */
/* epoll plus a deadline heap; see loop.h. */
#include "core/loop.h"
#include "core/log.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

/* Events taken per epoll_wait(); more wait for the next turn. */
#define LOOP_EVENTS_PER_WAIT 256
/* Upper bound on one sleep, so the loop never misses a stop request. */
#define LOOP_MAX_SLEEP_MS 1000
/* End-of-turn hooks: the audit log and the policy proxy's commit. */
#define LOOP_ON_TURN_MAX 4
/* Non-blocking looks for more events before the hooks, when asked: enough
 * to gather what arrives while a turn runs, bounded so the hooks still run
 * on a loop that never goes idle. */
#define LOOP_POLL_AGAIN_MAX 4

struct defer {
	egd_defer_cb cb;
	void *arg;
};

struct egd_loop {
	int epfd;
	int stop;
	struct egd_timer **heap;
	size_t heap_len, heap_cap;
	struct defer *defers;
	size_t defer_len, defer_cap;
	struct defer on_turn[LOOP_ON_TURN_MAX];
	size_t on_turn_len;
	int poll_again; /* egd_loop_poll_again() during this turn */
	struct egd_resolver *resolver;
	/* The batch being dispatched: egd_loop_del() clears the events it
	 * still holds for the watch it removes (see there). */
	struct epoll_event *batch;
	int batch_len;
};

static void run_defers(struct egd_loop *loop);

struct egd_loop *egd_loop_new(void)
{
	struct egd_loop *loop = calloc(1, sizeof(*loop));

	if (!loop)
		return NULL;
	loop->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (loop->epfd < 0) {
		int err = errno;

		free(loop);
		errno = err;
		return NULL;
	}
	return loop;
}

void egd_loop_free(struct egd_loop *loop)
{
	if (!loop)
		return;
	/* Deferred work (frees of closed connections, mostly) still runs. */
	run_defers(loop);
	close(loop->epfd);
	free(loop->heap);
	free(loop->defers);
	free(loop);
}

struct egd_resolver *egd_loop_resolver(struct egd_loop *loop)
{
	return loop->resolver;
}

void egd_loop_set_resolver(struct egd_loop *loop, struct egd_resolver *r)
{
	loop->resolver = r;
}

int egd_loop_add(struct egd_loop *loop, struct egd_watch *w, uint32_t events)
{
	struct epoll_event ev = { .events = events, .data.ptr = w };

	return epoll_ctl(loop->epfd, EPOLL_CTL_ADD, w->fd, &ev) ? -errno : 0;
}

int egd_loop_mod(struct egd_loop *loop, struct egd_watch *w, uint32_t events)
{
	struct epoll_event ev = { .events = events, .data.ptr = w };

	return epoll_ctl(loop->epfd, EPOLL_CTL_MOD, w->fd, &ev) ? -errno : 0;
}

/*
 * One epoll_wait() batch can hold events for several watches, and handling
 * one (a client leaving mid-request) can free another (its upstream
 * connection) whose event comes later in the same batch. Removing a watch
 * therefore also forgets the events the batch still holds for it, so an
 * owner may free itself, or another, as soon as its watches are removed:
 * the loop never dispatches to a removed watch. libuv does the same when it
 * stops an fd (uv__platform_invalidate_fd). At most LOOP_EVENTS_PER_WAIT
 * entries are looked at, and only while a batch is being dispatched.
 */
void egd_loop_del(struct egd_loop *loop, struct egd_watch *w)
{
	if (w->fd >= 0)
		epoll_ctl(loop->epfd, EPOLL_CTL_DEL, w->fd, NULL);
	for (int i = 0; i < loop->batch_len; i++)
		if (loop->batch[i].data.ptr == w)
			loop->batch[i].data.ptr = NULL;
}

/* --- deadline heap (min-heap on at_ms) ------------------------------------ */

static void heap_set(struct egd_loop *loop, size_t i, struct egd_timer *t)
{
	loop->heap[i] = t;
	t->heap_idx = i;
}

static void heap_up(struct egd_loop *loop, size_t i)
{
	struct egd_timer *t = loop->heap[i];

	while (i > 0) {
		size_t parent = (i - 1) / 2;

		if (loop->heap[parent]->at_ms <= t->at_ms)
			break;
		heap_set(loop, i, loop->heap[parent]);
		i = parent;
	}
	heap_set(loop, i, t);
}

static void heap_down(struct egd_loop *loop, size_t i)
{
	struct egd_timer *t = loop->heap[i];

	for (;;) {
		size_t l = 2 * i + 1, r = l + 1, min = i;
		unsigned long long min_at = t->at_ms;

		if (l < loop->heap_len && loop->heap[l]->at_ms < min_at) {
			min = l;
			min_at = loop->heap[l]->at_ms;
		}
		if (r < loop->heap_len && loop->heap[r]->at_ms < min_at)
			min = r;
		if (min == i)
			break;
		heap_set(loop, i, loop->heap[min]);
		i = min;
	}
	heap_set(loop, i, t);
}

void egd_timer_cancel(struct egd_loop *loop, struct egd_timer *t)
{
	size_t i = t->heap_idx;
	struct egd_timer *last;

	if (!t->at_ms)
		return;
	t->at_ms = 0;
	last = loop->heap[--loop->heap_len];
	if (last == t)
		return;
	heap_set(loop, i, last);
	heap_up(loop, i);
	heap_down(loop, last->heap_idx);
}

int egd_timer_arm(struct egd_loop *loop, struct egd_timer *t, unsigned long long at_ms)
{
	if (at_ms == 0)
		at_ms = 1;
	if (t->at_ms) {
		t->at_ms = at_ms;
		heap_up(loop, t->heap_idx);
		heap_down(loop, t->heap_idx);
		return 0;
	}
	if (loop->heap_len == loop->heap_cap) {
		size_t cap = loop->heap_cap ? loop->heap_cap * 2 : 64;
		struct egd_timer **h = realloc(loop->heap, cap * sizeof(*h));

		if (!h)
			return -ENOMEM;
		loop->heap = h;
		loop->heap_cap = cap;
	}
	t->at_ms = at_ms;
	heap_set(loop, loop->heap_len++, t);
	heap_up(loop, t->heap_idx);
	return 0;
}

int egd_loop_defer(struct egd_loop *loop, egd_defer_cb cb, void *arg)
{
	if (loop->defer_len == loop->defer_cap) {
		size_t cap = loop->defer_cap ? loop->defer_cap * 2 : 32;
		struct defer *d = realloc(loop->defers, cap * sizeof(*d));

		if (!d)
			return -ENOMEM;
		loop->defers = d;
		loop->defer_cap = cap;
	}
	loop->defers[loop->defer_len++] = (struct defer){ cb, arg };
	return 0;
}

static void run_timers(struct egd_loop *loop)
{
	unsigned long long now = egd_now_ms();

	while (loop->heap_len && loop->heap[0]->at_ms <= now) {
		struct egd_timer *t = loop->heap[0];

		egd_timer_cancel(loop, t);
		t->cb(t);
	}
}

static void run_defers(struct egd_loop *loop)
{
	/* Take the current batch; callbacks may defer again for next turn. */
	size_t n = loop->defer_len;
	struct defer *batch;

	if (!n)
		return;
	batch = malloc(n * sizeof(*batch));
	if (!batch)
		return; /* retried next turn */
	memcpy(batch, loop->defers, n * sizeof(*batch));
	loop->defer_len = 0;
	for (size_t i = 0; i < n; i++)
		batch[i].cb(batch[i].arg);
	free(batch);
}

int egd_loop_on_turn(struct egd_loop *loop, egd_defer_cb cb, void *arg)
{
	if (loop->on_turn_len == LOOP_ON_TURN_MAX)
		return -ENOSPC;
	loop->on_turn[loop->on_turn_len++] = (struct defer){ cb, arg };
	return 0;
}

void egd_loop_on_turn_remove(struct egd_loop *loop, egd_defer_cb cb, void *arg)
{
	for (size_t i = 0; i < loop->on_turn_len; i++) {
		if (loop->on_turn[i].cb == cb && loop->on_turn[i].arg == arg) {
			memmove(&loop->on_turn[i], &loop->on_turn[i + 1],
				(loop->on_turn_len - i - 1) * sizeof(loop->on_turn[0]));
			loop->on_turn_len--;
			return;
		}
	}
}

void egd_loop_poll_again(struct egd_loop *loop)
{
	loop->poll_again = 1;
}

int egd_loop_run(struct egd_loop *loop)
{
	struct epoll_event evs[LOOP_EVENTS_PER_WAIT];
	int polls = 0; /* non-blocking looks since the hooks last ran */

	while (!loop->stop) {
		int timeout = LOOP_MAX_SLEEP_MS, n;

		if (polls || loop->defer_len) {
			timeout = 0;
		} else if (loop->heap_len) {
			unsigned long long now = egd_now_ms(), at = loop->heap[0]->at_ms;

			timeout = at <= now ? 0 : (at - now < LOOP_MAX_SLEEP_MS ? (int)(at - now) :
										   LOOP_MAX_SLEEP_MS);
		}
		n = epoll_wait(loop->epfd, evs, LOOP_EVENTS_PER_WAIT, timeout);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			egd_err("epoll_wait: %s", strerror(errno));
			return -errno;
		}
		loop->batch = evs;
		loop->batch_len = n;
		for (int i = 0; i < n; i++) {
			struct egd_watch *w = evs[i].data.ptr;

			if (w) /* NULL: removed by an earlier event of this batch */
				w->cb(w, evs[i].events);
		}
		loop->batch_len = 0;
		run_defers(loop);
		run_timers(loop);
		if (loop->poll_again && n > 0 && polls < LOOP_POLL_AGAIN_MAX) {
			loop->poll_again = 0;
			polls++;
			continue;
		}
		loop->poll_again = 0;
		polls = 0;
		for (size_t i = 0; i < loop->on_turn_len; i++)
			loop->on_turn[i].cb(loop->on_turn[i].arg);
	}
	/* Stopped in a turn that put its hooks off for another look: what it
	 * batched is still written. */
	if (polls)
		for (size_t i = 0; i < loop->on_turn_len; i++)
			loop->on_turn[i].cb(loop->on_turn[i].arg);
	return 0;
}

void egd_loop_stop(struct egd_loop *loop)
{
	loop->stop = 1;
}
