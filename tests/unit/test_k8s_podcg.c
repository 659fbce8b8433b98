/* SPDX-License-Identifier: MIT */
/*
 * Pod cgroups by UID: which paths are a pod's cgroup in the kubelet's two
 * layouts (a table), what /proc/self/cgroup tells a privileged and an
 * unprivileged container, the parent check of `attach --pod`, and the search
 * under a cgroup root on a tree of plain directories laid out as a node's.
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
#include <sched.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "datapath/cgroup.h"
#include "k8s/podcg.h"

#define UID "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
#define UID_ "0f1e2d3c_4b5a_6978_8796_a5b4c3d2e1f0"
#define OTHER "11111111-2222-3333-4444-555555555555"
#define OTHER_ "11111111_2222_3333_4444_555555555555"

static void uid_valid(void **state)
{
	(void)state;
	assert_true(egd_pod_uid_valid(UID));
	assert_false(egd_pod_uid_valid(NULL));
	assert_false(egd_pod_uid_valid(""));
	assert_false(egd_pod_uid_valid(UID_));				   /* underscores */
	assert_false(egd_pod_uid_valid("0F1E2D3C-4B5A-6978-8796-A5B4C3D2E1F0")); /* upper */
	assert_false(egd_pod_uid_valid(UID "0"));
	assert_false(egd_pod_uid_valid("../../../../../../../../../../../..."));
	assert_false(egd_pod_uid_valid("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1fg"));
}

struct row {
	const char *path;
	const char *uid;
	enum egd_podcg_layout want;
};

static const struct row rows[] = {
	/* systemd, each QoS class */
	{ "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" UID_ ".slice", UID,
	  EGD_PODCG_SYSTEMD },
	{ "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" UID_ ".slice", UID,
	  EGD_PODCG_SYSTEMD },
	{ "/kubepods.slice/kubepods-pod" UID_ ".slice", UID, EGD_PODCG_SYSTEMD }, /* Guaranteed */
	/* relative, under a mount point, a trailing slash */
	{ "kubepods.slice/kubepods-pod" UID_ ".slice", UID, EGD_PODCG_SYSTEMD },
	{ "/sys/fs/cgroup/kubepods.slice/kubepods-pod" UID_ ".slice/", UID, EGD_PODCG_SYSTEMD },
	/* kind: nested under kubelet.slice */
	{ "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/"
	  "kubelet-kubepods-burstable-pod" UID_ ".slice",
	  UID, EGD_PODCG_SYSTEMD },
	{ "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod" UID_ ".slice", UID,
	  EGD_PODCG_SYSTEMD },
	/* systemd: wrong spelling, wrong pod, wrong parent, a partial word */
	{ "/kubepods.slice/kubepods-pod" UID ".slice", UID, EGD_PODCG_NONE },
	{ "/kubepods.slice/kubepods-pod" OTHER_ ".slice", UID, EGD_PODCG_NONE },
	{ "/kubepods.slice/kubepods-burstable-pod" UID_ ".slice", UID, EGD_PODCG_NONE },
	{ "/kubepods.slice/kubepods-besteffort.slice/kubepods-burstable-pod" UID_ ".slice", UID,
	  EGD_PODCG_NONE },
	{ "/kubepods-pod" UID_ ".slice", UID, EGD_PODCG_NONE },
	{ "/notkubepods.slice/notkubepods-pod" UID_ ".slice", UID, EGD_PODCG_NONE },
	{ "/kubepods.slice/kubepods-guaranteed.slice/kubepods-guaranteed-pod" UID_ ".slice", UID,
	  EGD_PODCG_NONE },
	{ "/kubepods.slice/kubepods-pod" UID_ ".slice/cri-containerd-abc.scope", UID,
	  EGD_PODCG_NONE }, /* a container, not the pod */
	{ "/kubepods.slice/kubepods-pod" UID_ "x.slice", UID, EGD_PODCG_NONE },
	/* cgroupfs, each QoS class */
	{ "/kubepods/burstable/pod" UID, UID, EGD_PODCG_CGROUPFS },
	{ "/kubepods/besteffort/pod" UID, UID, EGD_PODCG_CGROUPFS },
	{ "/kubepods/pod" UID, UID, EGD_PODCG_CGROUPFS }, /* Guaranteed */
	{ "/kubelet/kubepods/burstable/pod" UID, UID, EGD_PODCG_CGROUPFS }, /* kind */
	{ "kubepods/pod" UID, UID, EGD_PODCG_CGROUPFS },
	/* cgroupfs: underscores, another pod, no kubepods, a container */
	{ "/kubepods/burstable/pod" UID_, UID, EGD_PODCG_NONE },
	{ "/kubepods/burstable/pod" OTHER, UID, EGD_PODCG_NONE },
	{ "/kubepods/guaranteed/pod" UID, UID, EGD_PODCG_NONE },
	{ "/burstable/pod" UID, UID, EGD_PODCG_NONE },
	{ "/pod" UID, UID, EGD_PODCG_NONE },
	{ "pod" UID, UID, EGD_PODCG_NONE },
	{ "/kubepods/pod" UID "/0123abcd", UID, EGD_PODCG_NONE },
	/* a UID that is not one matches nothing */
	{ "/kubepods/pod..", "..", EGD_PODCG_NONE },
	{ "/", UID, EGD_PODCG_NONE },
	{ "", UID, EGD_PODCG_NONE },
};

static void match_table(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
		enum egd_podcg_layout got = egd_podcg_match(rows[i].path, rows[i].uid);

		if (got != rows[i].want)
			fail_msg("%s: got %d, want %d", rows[i].path, got, rows[i].want);
	}
}

static void parse_self(void **state)
{
	char out[PATH_MAX];

	(void)state;
	/* privileged container: the host cgroup namespace, the full path */
	assert_int_equal(egd_podcg_parse_self("0::/kubepods.slice/kubepods-pod" UID_
					      ".slice/cri-containerd-aa.scope\n",
					      out, sizeof(out)),
			 0);
	assert_string_equal(out,
			    "/kubepods.slice/kubepods-pod" UID_ ".slice/cri-containerd-aa.scope");
	/* hybrid host: v1 lines before the v2 one */
	assert_int_equal(egd_podcg_parse_self("12:pids:/kubepods/pod" UID "/x\n1:name=systemd:/\n"
					      "0::/kubepods/pod" UID "/x\n",
					      out, sizeof(out)),
			 0);
	assert_string_equal(out, "/kubepods/pod" UID "/x");
	/* unprivileged container: a private cgroup namespace */
	assert_int_equal(egd_podcg_parse_self("0::/\n", out, sizeof(out)), -EPERM);
	assert_int_equal(egd_podcg_parse_self("0::/../crio-bb.scope\n", out, sizeof(out)), -EPERM);
	assert_int_equal(egd_podcg_parse_self("0::/..\n", out, sizeof(out)), -EPERM);
	/* "/..x" is a name, not a climb */
	assert_int_equal(egd_podcg_parse_self("0::/..x\n", out, sizeof(out)), 0);
	/* cgroup v1 only: no v2 line */
	assert_int_equal(egd_podcg_parse_self("4:memory:/kubepods/pod" UID "\n1:cpu:/\n", out,
					      sizeof(out)),
			 -EOPNOTSUPP);
	assert_int_equal(egd_podcg_parse_self("", out, sizeof(out)), -EOPNOTSUPP);
	assert_int_equal(egd_podcg_parse_self("0::/a/b\n", out, 4), -ENAMETOOLONG);
}

static void of_container(void **state)
{
	char out[PATH_MAX];

	(void)state;
	assert_int_equal(egd_podcg_of_container("/kubepods.slice/kubepods-burstable.slice/"
						"kubepods-burstable-pod" UID_
						".slice/cri-containerd-0123.scope",
						UID, out, sizeof(out)),
			 0);
	assert_string_equal(out, "/kubepods.slice/kubepods-burstable.slice/"
				 "kubepods-burstable-pod" UID_ ".slice");
	assert_int_equal(egd_podcg_of_container("/kubepods/besteffort/pod" UID "/0123abcd", UID,
						out, sizeof(out)),
			 0);
	assert_string_equal(out, "/kubepods/besteffort/pod" UID);
	/* told another pod's UID: refuse */
	assert_int_equal(egd_podcg_of_container("/kubepods/besteffort/pod" UID "/0123abcd", OTHER,
						out, sizeof(out)),
			 -ENOENT);
	/* not in a pod at all (exec'd on the host, or a nested cgroup) */
	assert_int_equal(egd_podcg_of_container("/system.slice/ssh.service", UID, out, sizeof(out)),
			 -ENOENT);
	assert_int_equal(egd_podcg_of_container("/kubepods/pod" UID "/c/nested", UID, out,
						sizeof(out)),
			 -ENOENT);
	assert_int_equal(egd_podcg_of_container("/", UID, out, sizeof(out)), -ENOENT);
}

/* A node's tree of plain directories under a temporary root. */
static char root[PATH_MAX];

static void mkdirs(const char *rel)
{
	char path[PATH_MAX];

	snprintf(path, sizeof(path), "%s/%s", root, rel);
	for (char *p = path + strlen(root) + 1; *p; p++) {
		if (*p == '/') {
			*p = '\0';
			mkdir(path, 0755);
			*p = '/';
		}
	}
	assert_true(mkdir(path, 0755) == 0 || errno == EEXIST);
}

static int rm_tree(void)
{
	char cmd[PATH_MAX + 16];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", root);
	return system(cmd);
}

static int tree_setup(void **state)
{
	(void)state;
	snprintf(root, sizeof(root), "/tmp/egd-podcg-XXXXXX");
	assert_non_null(mkdtemp(root));
	mkdirs("system.slice/ssh.service");
	mkdirs("user.slice/user-0.slice/session-1.scope");
	return 0;
}

static int tree_teardown(void **state)
{
	(void)state;
	return rm_tree() ? -1 : 0;
}

static void expect_found(const char *rel)
{
	char out[PATH_MAX], want[PATH_MAX];

	snprintf(want, sizeof(want), "%s/%s", root, rel);
	assert_int_equal(egd_podcg_find(root, UID, out, sizeof(out)), 0);
	assert_string_equal(out, want);
}

static void find_systemd(void **state)
{
	(void)state;
	mkdirs("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" OTHER_
	       ".slice/cri-containerd-1.scope");
	{
		char out[PATH_MAX];

		assert_int_equal(egd_podcg_find(root, UID, out, sizeof(out)), -ENOENT);
	}
	mkdirs("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" UID_
	       ".slice/cri-containerd-2.scope");
	expect_found("kubepods.slice/kubepods-burstable.slice/"
		     "kubepods-burstable-pod" UID_ ".slice");
}

static void find_guaranteed(void **state)
{
	(void)state;
	mkdirs("kubepods.slice/kubepods-pod" UID_ ".slice/cri-containerd-3.scope");
	expect_found("kubepods.slice/kubepods-pod" UID_ ".slice");
}

static void find_cgroupfs(void **state)
{
	(void)state;
	mkdirs("kubepods/besteffort/pod" OTHER "/0123");
	mkdirs("kubepods/burstable/pod" UID "/4567");
	expect_found("kubepods/burstable/pod" UID);
}

/* Away from the usual places: found by the walk. */
static void find_kind_nested(void **state)
{
	(void)state;
	mkdirs("system.slice/docker-abc.scope/kubelet.slice/kubelet-kubepods.slice/"
	       "kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod" UID_
	       ".slice/cri-containerd-4.scope");
	expect_found("system.slice/docker-abc.scope/kubelet.slice/kubelet-kubepods.slice/"
		     "kubelet-kubepods-besteffort.slice/"
		     "kubelet-kubepods-besteffort-pod" UID_ ".slice");
}

static void find_refuses(void **state)
{
	char out[PATH_MAX];

	(void)state;
	/* deeper than the walk goes */
	mkdirs("a/b/c/d/e/kubepods/pod" UID);
	assert_int_equal(egd_podcg_find(root, UID, out, sizeof(out)), -ENOENT);
	/* two candidates off the usual places: refuse to guess */
	mkdirs("x/kubepods/pod" UID);
	mkdirs("y/kubepods/pod" UID);
	assert_int_equal(egd_podcg_find(root, UID, out, sizeof(out)), -ENOTUNIQ);
	/* not a UID */
	assert_int_equal(egd_podcg_find(root, "../etc", out, sizeof(out)), -EINVAL);
	/* the UID as a container name inside another pod is not the pod */
	rm_tree();
	assert_int_equal(mkdir(root, 0755), 0);
	mkdirs("kubepods/burstable/pod" OTHER "/pod" UID);
	assert_int_equal(egd_podcg_find(root, UID, out, sizeof(out)), -ENOENT);
}

static void check_v2(void **state)
{
	char cg2[PATH_MAX];

	(void)state;
	/* the machine's cgroup2 mount passes */
	if (egd_cgroup2_root(cg2, sizeof(cg2)) == 0)
		assert_int_equal(egd_podcg_check_v2(cg2), 0);
	/* a directory on /tmp is not a cgroup2 mount */
	assert_int_equal(egd_podcg_check_v2(root), -EOPNOTSUPP);
	assert_int_equal(egd_podcg_check_v2("/nonexistent-egd"), -ENOENT);
}

/* In a real cgroup2 hierarchy (root only): a process in a container cgroup
 * of a pod finds the pod; told another UID, or in a private cgroup
 * namespace as an unprivileged container is, it refuses. */
static void of_self_in_real_cgroups(void **state)
{
	char cg2[PATH_MAX], top[PATH_MAX], pod[PATH_MAX], ctr[PATH_MAX];
	int res[4] = { 1, 1, 1, 1 }, p[2];
	pid_t pid;
	int status;

	(void)state;
	if (geteuid() != 0 || egd_cgroup2_root(cg2, sizeof(cg2)) || egd_podcg_check_v2(cg2)) {
		skip();
		return;
	}
	snprintf(top, sizeof(top), "%s/egdt-podcg-%d", cg2, (int)getpid());
	snprintf(pod, sizeof(pod), "%s/kubepods/burstable/pod" UID, top);
	snprintf(ctr, sizeof(ctr), "%s/cri-containerd-0123.scope", pod);
	snprintf(root, sizeof(root), "%s", top);
	assert_int_equal(mkdir(top, 0755), 0);
	mkdirs("kubepods/burstable/pod" UID "/cri-containerd-0123.scope");
	assert_int_equal(pipe(p), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		char out[PATH_MAX];

		res[0] = egd_cgroup_enter(ctr, getpid());
		res[1] = egd_podcg_of_self(UID, out, sizeof(out));
		if (res[1] == 0 && strcmp(out, pod))
			res[1] = -EXDEV;
		res[2] = egd_podcg_of_self(OTHER, out, sizeof(out));
		res[3] = unshare(CLONE_NEWCGROUP) ? -errno :
						    egd_podcg_of_self(UID, out, sizeof(out));
		if (write(p[1], res, sizeof(res)) != sizeof(res))
			_exit(2);
		_exit(0);
	}
	close(p[1]);
	assert_int_equal(read(p[0], res, sizeof(res)), sizeof(res));
	close(p[0]);
	assert_int_equal(waitpid(pid, &status, 0), pid);
	rmdir(ctr);
	rmdir(pod);
	snprintf(ctr, sizeof(ctr), "%s/kubepods/burstable", top);
	rmdir(ctr);
	snprintf(ctr, sizeof(ctr), "%s/kubepods", top);
	rmdir(ctr);
	assert_int_equal(rmdir(top), 0);
	assert_int_equal(res[0], 0);
	assert_int_equal(res[1], 0);
	assert_int_equal(res[2], -ENOENT);
	assert_int_equal(res[3], -EPERM);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(uid_valid),
		cmocka_unit_test(match_table),
		cmocka_unit_test(parse_self),
		cmocka_unit_test(of_container),
		cmocka_unit_test_setup_teardown(find_systemd, tree_setup, tree_teardown),
		cmocka_unit_test_setup_teardown(find_guaranteed, tree_setup, tree_teardown),
		cmocka_unit_test_setup_teardown(find_cgroupfs, tree_setup, tree_teardown),
		cmocka_unit_test_setup_teardown(find_kind_nested, tree_setup, tree_teardown),
		cmocka_unit_test_setup_teardown(find_refuses, tree_setup, tree_teardown),
		cmocka_unit_test_setup_teardown(check_v2, tree_setup, tree_teardown),
		cmocka_unit_test(of_self_in_real_cgroups),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
