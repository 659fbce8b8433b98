/* SPDX-License-Identifier: MIT */
/*
 * The event loop: epoll for readiness, a binary heap for deadlines. It knows
 * nothing about policy. Each watched fd is an egd_watch embedded in its
 * owner; each deadline an egd_timer. A callback may free its owner, or any
 * other owner, as soon as that owner's watches and timers are removed:
 * egd_loop_del() also drops the events the current batch still holds for
 * the watch, so nothing is dispatched to it afterwards.
 */
#ifndef EGD_LOOP_H
#define EGD_LOOP_H

#include <stddef.h>
#include <stdint.h>

struct egd_loop;
struct egd_watch;
struct egd_timer;

typedef void (*egd_watch_cb)(struct egd_watch *w, uint32_t events);
typedef void (*egd_timer_cb)(struct egd_timer *t);

struct egd_watch {
	int fd;
	egd_watch_cb cb;
};

struct egd_timer {
	unsigned long long at_ms; /* monotonic; 0 when not armed */
	size_t heap_idx;
	egd_timer_cb cb;
};

struct egd_loop *egd_loop_new(void);
void egd_loop_free(struct egd_loop *loop);

/* Watch @w->fd for @events (EPOLLIN, EPOLLOUT, EPOLLET, ...). */
int egd_loop_add(struct egd_loop *loop, struct egd_watch *w, uint32_t events);
int egd_loop_mod(struct egd_loop *loop, struct egd_watch *w, uint32_t events);
/* Stop watching @w; its pending events of this turn are dropped too. Call
 * it before freeing @w's owner, also when @w->fd is already closed (-1). */
void egd_loop_del(struct egd_loop *loop, struct egd_watch *w);

/* Arm (or re-arm) @t to fire at monotonic @at_ms. */
int egd_timer_arm(struct egd_loop *loop, struct egd_timer *t, unsigned long long at_ms);
void egd_timer_cancel(struct egd_loop *loop, struct egd_timer *t);

/* Callbacks to run on the next iteration without waiting for readiness
 * (used to yield a busy connection so that others get a turn). */
typedef void (*egd_defer_cb)(void *arg);
int egd_loop_defer(struct egd_loop *loop, egd_defer_cb cb, void *arg);

/* Call @cb(@arg) at the end of every turn, before the loop sleeps again:
 * work batched over a turn (log lines, the proxy's usage files) is written
 * there, once. A few hooks per loop: -ENOSPC past them. */
int egd_loop_on_turn(struct egd_loop *loop, egd_defer_cb cb, void *arg);
void egd_loop_on_turn_remove(struct egd_loop *loop, egd_defer_cb cb, void *arg);
/* Before this turn's hooks, take a non-blocking look for events that came
 * in the meantime and handle them first (a few times at most): a group
 * commit in a hook then covers more work. */
void egd_loop_poll_again(struct egd_loop *loop);

/* The loop's resolver (core/resolve.h), set by egd_resolver_new() and
 * cleared by egd_resolver_free(); NULL when there is none. Answers must come
 * back on the loop that asked, so code holding only a loop (the policy proxy
 * on a worker's loop) finds its resolver here rather than being handed one
 * that another thread's loop owns. */
struct egd_resolver;
struct egd_resolver *egd_loop_resolver(struct egd_loop *loop);
void egd_loop_set_resolver(struct egd_loop *loop, struct egd_resolver *r);

/* Run until egd_loop_stop(). Returns 0, or -errno if epoll fails. */
int egd_loop_run(struct egd_loop *loop);
void egd_loop_stop(struct egd_loop *loop);

#endif
