/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for what node and pod mode read from outside: a Pod
 * object from the API (egd_k8s_pod_from_json), a line of /proc/self/cgroup
 * and a cgroup path checked against a pod UID (userspace/k8s/podcg.h). The
 * input is the JSON, and as a string the cgroup file and the path.
 */
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "k8s/api.h"
#include "k8s/podcg.h"

#define UID "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
#define UID_ "0f1e2d3c_4b5a_6978_8796_a5b4c3d2e1f0"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *s = malloc(size + 1), out[PATH_MAX];
	struct egd_k8s_pod pod;
	json_t *obj;

	if (!s)
		return 0;
	memcpy(s, data, size);
	s[size] = '\0';

	obj = json_loadb((const char *)data, size, JSON_DECODE_ANY, NULL);
	if (obj && egd_k8s_pod_from_json(obj, &pod) == 0) {
		if (!*pod.uid || !pod.name || !pod.ns || !pod.phase || !pod.qos_class ||
		    !pod.node_name || !pod.resource_version || pod.n_pod_ips > EGD_K8S_POD_IPS_MAX)
			abort();
		for (size_t i = 0; i < pod.n_pod_ips; i++)
			if (!pod.pod_ips[i] || !*pod.pod_ips[i])
				abort();
		egd_k8s_pod_label(&pod, "egressd.io/phase");
		egd_k8s_pod_annotation(&pod, "egressd.io/max-cost-usd");
	}
	json_decref(obj);

	if (egd_podcg_parse_self(s, out, sizeof(out)) == 0) {
		if (out[0] != '/' || strchr(out, '\n') || !strcmp(out, "/") ||
		    !strncmp(out, "/../", 4) || !strcmp(out, "/.."))
			abort();
	}
	/* A match always names the pod, in its layout's spelling. */
	switch (egd_podcg_match(s, UID)) {
	case EGD_PODCG_SYSTEMD:
		if (!strstr(s, "pod" UID_ ".slice"))
			abort();
		break;
	case EGD_PODCG_CGROUPFS:
		if (!strstr(s, "pod" UID))
			abort();
		break;
	case EGD_PODCG_NONE:
		break;
	}
	/* Whatever the input, it is never taken for a UID unless it is one. */
	if (egd_pod_uid_valid(s) && (strlen(s) != EGD_POD_UID_LEN || strchr(s, '/')))
		abort();
	free(s);
	return 0;
}
