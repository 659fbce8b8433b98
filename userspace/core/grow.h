/* SPDX-License-Identifier: MIT */
/*
 * Growing a heap buffer: the one doubling rule behind the daemon's append
 * buffers (proxy output, HTTP heads and bodies, SSE events, JSON, /metrics).
 */
#ifndef EGD_CORE_GROW_H
#define EGD_CORE_GROW_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

/*
 * @buf (capacity *@cap, NULL when 0) reallocated to hold at least @need
 * bytes: the capacity doubles from @initial (> 0; or from *@cap) until it
 * does. Returns the buffer, perhaps moved, with *@cap updated; NULL + errno
 * (ENOMEM) when out of memory or @need cannot be reached, with @buf and
 * *@cap unchanged. Call it only when @need > *@cap: NULL then always means
 * failure.
 */
static inline void *egd_grow(void *buf, size_t *cap, size_t need, size_t initial)
{
	size_t ncap = *cap ? *cap : initial ? initial : 1;
	void *nb;

	/* No object is larger than PTRDIFF_MAX (C11 7.20.3); saying so first
	 * also lets the compiler see that realloc() is never asked for more,
	 * which -Walloc-size-larger-than checks in optimised builds. */
	if (need > PTRDIFF_MAX) {
		errno = ENOMEM;
		return NULL;
	}
	while (ncap < need)
		ncap = ncap > PTRDIFF_MAX / 2 ? need : ncap * 2;
	nb = realloc(buf, ncap);
	if (nb)
		*cap = ncap;
	return nb;
}

#endif
