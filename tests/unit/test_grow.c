/* SPDX-License-Identifier: MIT */
/*
 * core/grow.h: the capacity doubles from the initial size until the need
 * fits, and a need no doubling can reach fails cleanly instead of wrapping.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "core/grow.h"

static void test_doubles_until_the_need_fits(void **state)
{
	size_t cap = 0;
	char *p;

	(void)state;
	p = egd_grow(NULL, &cap, 1, 16);
	assert_non_null(p);
	assert_int_equal(cap, 16);
	memset(p, 'a', cap);
	p = egd_grow(p, &cap, 17, 16);
	assert_non_null(p);
	assert_int_equal(cap, 32);
	assert_int_equal(p[15], 'a'); /* the bytes move with the buffer */
	p = egd_grow(p, &cap, 200, 16);
	assert_non_null(p);
	assert_int_equal(cap, 256);
	free(p);
}

static void test_unreachable_need_fails_and_keeps_the_buffer(void **state)
{
	size_t cap = 0;
	char *p = egd_grow(NULL, &cap, 64, 64), *q;

	(void)state;
	assert_non_null(p);
	errno = 0;
	q = egd_grow(p, &cap, SIZE_MAX, 64);
	assert_null(q);
	assert_int_equal(errno, ENOMEM);
	assert_int_equal(cap, 64); /* unchanged, and p still valid */
	p[63] = 'z';
	free(p);
}

static void test_zero_initial_still_grows(void **state)
{
	size_t cap = 0;
	char *p;

	(void)state;
	p = egd_grow(NULL, &cap, 5, 0);
	assert_non_null(p);
	assert_true(cap >= 5);
	free(p);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_doubles_until_the_need_fits),
		cmocka_unit_test(test_unreachable_need_fails_and_keeps_the_buffer),
		cmocka_unit_test(test_zero_initial_still_grows),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
