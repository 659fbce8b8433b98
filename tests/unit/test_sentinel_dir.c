/* SPDX-License-Identifier: MIT */
/*
 * egress/phase.c: which directories may hold the sentinel. Private ones
 * (owner root or the daemon's user, no one else may write) pass; one others
 * may write is reported as such; one under a directory that lets others
 * replace it, or none at all, is refused.
 */
#include <errno.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "egress/daemon.h"

struct dirs {
	char base[PATH_MAX];
};

static void make(const struct dirs *d, const char *sub, mode_t mode, char *out)
{
	snprintf(out, PATH_MAX, "%s/%s", d->base, sub);
	assert_int_equal(mkdir(out, 0700), 0);
	assert_int_equal(chmod(out, mode), 0); /* past the umask */
}

static int setup(void **state)
{
	struct dirs *d = calloc(1, sizeof(*d));

	if (!d)
		return -1;
	snprintf(d->base, sizeof(d->base), "/tmp/egd-sentinel-XXXXXX");
	if (!mkdtemp(d->base)) {
		free(d);
		return -1;
	}
	*state = d;
	return 0;
}

static int teardown(void **state)
{
	struct dirs *d = *state;
	char cmd[PATH_MAX + 16];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", d->base);
	if (system(cmd))
		return -1;
	free(d);
	return 0;
}

static void test_private_directory_passes(void **state)
{
	char p[PATH_MAX], why[512];

	make(*state, "private", 0755, p);
	assert_int_equal(egd_sentinel_dir_check(p, geteuid(), why, sizeof(why)), 0);
}

static void test_world_or_group_writable_is_reported(void **state)
{
	char p[PATH_MAX], why[512];

	make(*state, "world", 0777, p);
	assert_int_equal(egd_sentinel_dir_check(p, geteuid(), why, sizeof(why)), 1);
	assert_non_null(strstr(why, "mode 0777) is writable by others"));
	make(*state, "sticky", 01777, p);
	assert_int_equal(egd_sentinel_dir_check(p, geteuid(), why, sizeof(why)), 1);
	make(*state, "group", 0775, p);
	assert_int_equal(egd_sentinel_dir_check(p, geteuid(), why, sizeof(why)), 1);
}

static void test_another_owner_is_reported(void **state)
{
	char p[PATH_MAX], why[512];

	make(*state, "theirs", 0755, p);
	/* Root gives the directory away; anyone else asks as a daemon of
	 * another uid. Either way the owner is neither root nor the daemon. */
	if (geteuid() == 0) {
		assert_int_equal(chown(p, 65534, 65534), 0);
		assert_int_equal(egd_sentinel_dir_check(p, 0, why, sizeof(why)), 1);
	} else {
		assert_int_equal(egd_sentinel_dir_check(p, geteuid() + 1, why, sizeof(why)), 1);
	}
	assert_non_null(strstr(why, "is writable by others"));
}

static void test_replaceable_parent_is_refused(void **state)
{
	char open_dir[PATH_MAX], p[PATH_MAX], why[512];

	make(*state, "open", 0777, open_dir);
	make(*state, "open/inner", 0755, p);
	assert_int_equal(egd_sentinel_dir_check(p, geteuid(), why, sizeof(why)), -EPERM);
	assert_non_null(strstr(why, "lets others replace it"));
	/* Sticky above is fine: nobody may rename what they do not own. */
	make(*state, "st", 01777, open_dir);
	make(*state, "st/inner", 0755, p);
	assert_int_equal(egd_sentinel_dir_check(p, geteuid(), why, sizeof(why)), 0);
}

static void test_missing_or_not_a_directory_is_refused(void **state)
{
	struct dirs *d = *state;
	char p[PATH_MAX], why[512];
	FILE *f;

	snprintf(p, sizeof(p), "%s/nowhere", d->base);
	assert_int_equal(egd_sentinel_dir_check(p, geteuid(), why, sizeof(why)), -ENOENT);
	snprintf(p, sizeof(p), "%s/file", d->base);
	f = fopen(p, "w");
	assert_non_null(f);
	fclose(f);
	assert_int_equal(egd_sentinel_dir_check(p, geteuid(), why, sizeof(why)), -ENOTDIR);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_private_directory_passes, setup, teardown),
		cmocka_unit_test_setup_teardown(test_world_or_group_writable_is_reported, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_another_owner_is_reported, setup, teardown),
		cmocka_unit_test_setup_teardown(test_replaceable_parent_is_refused, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_missing_or_not_a_directory_is_refused, setup,
						teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
