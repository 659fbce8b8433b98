/* SPDX-License-Identifier: MIT */
/*
 * datapath/cgroup.c: how two cgroups stand to each other, from their paths.
 * `egressd run` and `attach` refuse an exemption on it, so a prefix that is
 * not a parent ("/a/bc" and "/a/b") must not count as one.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "datapath/cgroup.h"

static void test_relation_table(void **state)
{
	static const struct {
		const char *a, *b;
		enum egd_cgroup_rel want;
	} cases[] = {
		{ "/sys/fs/cgroup/sandbox", "/sys/fs/cgroup/sandbox", EGD_CG_SAME },
		{ "/sys/fs/cgroup/sandbox/", "/sys/fs/cgroup/sandbox", EGD_CG_SAME },
		{ "/sys/fs/cgroup", "/sys/fs/cgroup/sandbox", EGD_CG_ANCESTOR },
		{ "/sys/fs/cgroup/", "/sys/fs/cgroup/sandbox/agent", EGD_CG_ANCESTOR },
		{ "/sys/fs/cgroup/sandbox/daemon", "/sys/fs/cgroup/sandbox", EGD_CG_DESCENDANT },
		{ "/sys/fs/cgroup/sandbox/a/b", "/sys/fs/cgroup/sandbox/", EGD_CG_DESCENDANT },
		/* A shared prefix is not a parent. */
		{ "/sys/fs/cgroup/sandbox2", "/sys/fs/cgroup/sandbox", EGD_CG_UNRELATED },
		{ "/sys/fs/cgroup/sand", "/sys/fs/cgroup/sandbox", EGD_CG_UNRELATED },
		{ "/sys/fs/cgroup/egressd-exec-1/daemon", "/sys/fs/cgroup/egressd-exec-1/agent",
		  EGD_CG_UNRELATED },
		/* The root of a hierarchy mounted at / (a cgroup namespace). */
		{ "/", "/pod/agent", EGD_CG_ANCESTOR },
		{ "/pod", "/", EGD_CG_DESCENDANT },
		{ "/", "/", EGD_CG_SAME },
	};

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		enum egd_cgroup_rel got = egd_cgroup_relation(cases[i].a, cases[i].b);

		if (got != cases[i].want)
			fail_msg("%s vs %s: got %d, want %d", cases[i].a, cases[i].b, got,
				 cases[i].want);
	}
}

static void test_words_name_the_relation(void **state)
{
	(void)state;
	assert_string_equal(egd_cgroup_rel_words(EGD_CG_SAME), "is");
	assert_string_equal(egd_cgroup_rel_words(EGD_CG_ANCESTOR), "is an ancestor of");
	assert_string_equal(egd_cgroup_rel_words(EGD_CG_DESCENDANT), "lies inside");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_relation_table),
		cmocka_unit_test(test_words_name_the_relation),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
