/* SPDX-License-Identifier: MIT */
/*
 * EGRESSD_MAX_CONNS: one count of the connections held at once, shared by
 * every worker and the policy proxy, and the reset that refuses one more.
 */
#ifndef EGD_CORE_SLOTS_H
#define EGD_CORE_SLOTS_H

#include <sys/socket.h>
#include <unistd.h>

/* Take one of @max slots counted in *@used: 1, or 0 when all are taken
 * (the count is left as it was). Any thread. */
static inline int egd_slot_take(unsigned int *used, unsigned int max)
{
	if (__atomic_add_fetch(used, 1, __ATOMIC_RELAXED) <= max)
		return 1;
	__atomic_fetch_sub(used, 1, __ATOMIC_RELAXED);
	return 0;
}

static inline void egd_slot_give(unsigned int *used)
{
	__atomic_fetch_sub(used, 1, __ATOMIC_RELAXED);
}

/* Close @fd with an RST (linger 0), so the peer fails at once instead of
 * reading an orderly end. */
static inline void egd_close_reset(int fd)
{
	struct linger lg = { .l_onoff = 1, .l_linger = 0 };

	setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	close(fd);
}

#endif
