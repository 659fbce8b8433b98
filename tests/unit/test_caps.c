/* SPDX-License-Identifier: MIT */
/*
 * core/caps.h and the nft-mode kernel check: which kernel releases count
 * `socket cgroupv2` levels from the caller's cgroup namespace, the refusal
 * when they do not and the daemon is in a private namespace (the refusal
 * cannot be reached for real on a kernel with the fix, so it is tested
 * here), the namespace probe in a namespace this test unshares, and raising
 * a permitted-only capability in a forked child that sets up its own sets.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include <linux/capability.h>
#include <sched.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/caps.h"
#include "datapath/nftmode.h"

static void test_kernel_releases(void **state)
{
	static const struct {
		const char *release;
		const char *version;
		bool fixed;
	} cases[] = {
		{ "6.11.0", NULL, true },
		{ "6.11", NULL, true },
		{ "6.18.44-fc-v1252", NULL, true },
		{ "7.0.1", NULL, true },
		{ "6.12.0-rc1", NULL, true },
		{ "6.1.112", NULL, true },
		{ "6.1.111", NULL, false },
		/* Debian 12: the release names the ABI, the version the patch. */
		{ "6.1.0-26-amd64", NULL, false },
		{ "6.1.0-26-amd64", "#1 SMP PREEMPT_DYNAMIC Debian 6.1.112-1 (2024-09-30)", true },
		{ "6.1.0-25-amd64", "#1 SMP PREEMPT_DYNAMIC Debian 6.1.106-3 (2024-08-26)", false },
		/* A Debian version of another series is not this kernel's. */
		{ "6.1.0-25-amd64", "#1 SMP Debian 6.6.60-1", false },
		{ "6.5.0", "#1 SMP Ubuntu", false },
		{ "6.1.119-1-amd64", NULL, true },
		{ "6.6.53", NULL, true },
		{ "6.6.52", NULL, false },
		{ "6.10.12", NULL, true },
		{ "6.10.11", NULL, false },
		{ "6.9.12", NULL, false },
		{ "6.5.13", NULL, false },
		{ "5.15.167", NULL, false },
		{ "5.10.0", NULL, false },
		{ "4.19.0", NULL, false },
		{ "", NULL, false },
		{ "garbage", NULL, false },
	};

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		bool got = egd_kernel_cgns_socket_match(cases[i].release, cases[i].version);

		if (got != cases[i].fixed)
			fail_msg("%s: expected %d, got %d", cases[i].release, cases[i].fixed, got);
	}
	assert_false(egd_kernel_cgns_socket_match(NULL, NULL));
}

static void test_refuses_old_kernel_in_private_namespace(void **state)
{
	(void)state;
	assert_int_equal(egd_nftmode_check_kernel(1, "6.1.100", NULL), -ENOTSUP);
	assert_int_equal(egd_nftmode_check_kernel(1, "5.15.0", NULL), -ENOTSUP);
	assert_int_equal(egd_nftmode_check_kernel(1, NULL, NULL), -ENOTSUP);
	/* Cannot tell the namespace: as private, closed. */
	assert_int_equal(egd_nftmode_check_kernel(-ENOENT, "6.1.100", NULL), -ENOTSUP);
}

static void test_accepts_fixed_kernel_or_initial_namespace(void **state)
{
	(void)state;
	assert_int_equal(egd_nftmode_check_kernel(1, "6.1.112", NULL), 0);
	assert_int_equal(egd_nftmode_check_kernel(1, "6.11.0", NULL), 0);
	assert_int_equal(egd_nftmode_check_kernel(-ENOENT, "6.6.53", NULL), 0);
	assert_int_equal(egd_nftmode_check_kernel(1, "6.1.0-26-amd64",
						  "#1 SMP PREEMPT_DYNAMIC Debian 6.1.112-1 (2024-09-30)"),
			 0);
	/* In the initial namespace levels are absolute on every kernel. */
	assert_int_equal(egd_nftmode_check_kernel(0, "5.10.0", NULL), 0);
}

/* Run @fn in a forked child; its return value is the exit status. */
static int in_child(int (*fn)(void))
{
	int status;
	pid_t pid = fork();

	if (pid == 0)
		_exit(fn());
	assert_true(pid > 0);
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	return WEXITSTATUS(status);
}

static int probe_after_unshare(void)
{
	if (unshare(CLONE_NEWCGROUP))
		return 100;
	return egd_in_private_cgroupns() == 1 ? 0 : 101;
}

static void test_private_namespace_is_seen(void **state)
{
	(void)state;
	if (geteuid() != 0)
		skip(); /* unshare(CLONE_NEWCGROUP) needs CAP_SYS_ADMIN */
	assert_int_equal(in_child(probe_after_unshare), 0);
}

static int set_caps(uint32_t permitted, uint32_t effective)
{
	struct __user_cap_header_struct hdr = { .version = _LINUX_CAPABILITY_VERSION_3 };
	struct __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3] = { 0 };

	data[0].permitted = permitted;
	data[0].effective = effective;
	return (int)syscall(SYS_capset, &hdr, data);
}

static int effective_has(int cap)
{
	struct __user_cap_header_struct hdr = { .version = _LINUX_CAPABILITY_VERSION_3 };
	struct __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3] = { 0 };

	if (syscall(SYS_capget, &hdr, data))
		return -1;
	return !!(data[0].effective & (1u << cap));
}

static int raise_permitted_only(void)
{
	const uint32_t na = 1u << CAP_NET_ADMIN;

	if (set_caps(na, 0) || effective_has(CAP_NET_ADMIN) != 0)
		return 100;
	if (egd_cap_raise(CAP_NET_ADMIN) != 0)
		return 101;
	if (effective_has(CAP_NET_ADMIN) != 1)
		return 102;
	/* Raising what is already effective is a no-op. */
	return egd_cap_raise(CAP_NET_ADMIN) == 0 ? 0 : 103;
}

static int raise_not_permitted(void)
{
	if (set_caps(1u << CAP_NET_RAW, 0))
		return 100;
	if (egd_cap_raise(CAP_NET_ADMIN) != -EPERM)
		return 101;
	return effective_has(CAP_NET_ADMIN) == 0 ? 0 : 102;
}

static void test_raise_capability(void **state)
{
	(void)state;
	assert_int_equal(egd_cap_raise(-1), -EINVAL);
	assert_int_equal(egd_cap_raise(32 * _LINUX_CAPABILITY_U32S_3), -EINVAL);
	if (geteuid() != 0)
		skip(); /* the children set their own sets from a full one */
	assert_int_equal(in_child(raise_permitted_only), 0);
	assert_int_equal(in_child(raise_not_permitted), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_kernel_releases),
		cmocka_unit_test(test_refuses_old_kernel_in_private_namespace),
		cmocka_unit_test(test_accepts_fixed_kernel_or_initial_namespace),
		cmocka_unit_test(test_private_namespace_is_seen),
		cmocka_unit_test(test_raise_capability),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
