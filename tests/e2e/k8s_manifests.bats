#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# The Kubernetes manifests, checked offline (there is no cluster where the
# suite runs): deploy/k8s/check.sh on the real kustomizations must pass, and
# on rendered copies with one invariant broken it must fail, naming that
# invariant. The mutations are what show each check can fail. No root needed.

REPO=$(cd "$BATS_TEST_DIRNAME/../.." && pwd)
CHECK=$REPO/deploy/k8s/check.sh
PY=python3
[ -x /usr/bin/python3 ] && PY=/usr/bin/python3

setup_file() {
	command -v kubectl >/dev/null || return 0
	for m in pod node; do
		KUBECONFIG=/dev/null kubectl kustomize "$REPO/deploy/k8s/$m/example" \
			>"$BATS_FILE_TMPDIR/$m.yaml" 2>/dev/null
	done
}

setup() {
	command -v kubectl >/dev/null || skip "no kubectl (Debian package kubernetes-client)"
	"$PY" -c 'import yaml' 2>/dev/null || skip "no python3-yaml"
}

# mutate pod|node PYTHON: run PYTHON on the rendered example (docs: every
# object; for pod mode pod, spec, att, side, main; for node mode ds, c (the
# egressd container), role, pdb, sb (the sandbox pod spec), wait, main), and
# point EGD_K8S_POD_YAML or EGD_K8S_NODE_YAML at the result.
mutate() {
	local out=$BATS_TEST_TMPDIR/$1.yaml
	if [ "$1" = pod ]; then export EGD_K8S_POD_YAML=$out; else export EGD_K8S_NODE_YAML=$out; fi
	"$PY" - "$BATS_FILE_TMPDIR/$1.yaml" "$out" "$1" "$2" <<'EOF'
import sys, yaml
src, dst, mode, code = sys.argv[1:]
docs = [d for d in yaml.safe_load_all(open(src)) if d]
kind = lambda k: [d for d in docs if d["kind"] == k]
if mode == "pod":
    pod = kind("Pod")[0]; spec = pod["spec"]
    att, side = spec["initContainers"]; main = spec["containers"][0]
else:
    ds = kind("DaemonSet")[0]; c = ds["spec"]["template"]["spec"]["containers"][0]
    role = kind("ClusterRole")[0]; pdb = kind("PodDisruptionBudget")[0]
    sbpod = kind("Pod")[0]; sb = sbpod["spec"]
    wait = sb["initContainers"][0]; main = sb["containers"][0]
def env(ctr, k, v):
    ctr["env"] = [e for e in ctr.get("env", []) if e["name"] != k]
    if v is not None:
        ctr["env"].append({"name": k, "value": v})
before = yaml.safe_dump_all(docs)
exec(code)
after = yaml.safe_dump_all(docs)
# The edit must have changed something, or the test proves nothing.
assert before != after, "mutation changed nothing"
open(dst, "w").write(after)
EOF
}

fails_with() { # fails_with TEXT: check failed, and for this reason
	[ "$status" -eq 1 ] || { echo "status $status, expected 1"; echo "$output"; return 1; }
	grep -qF -- "FAIL: $1" <<<"$output" || { echo "no 'FAIL: $1' in:"; echo "$output"; return 1; }
}

# --- the real manifests pass ------------------------------------------------------

@test "k8s manifests: every base and example overlay renders" {
	run "$CHECK" render
	echo "$output"
	[ "$status" -eq 0 ]
	[ "$(grep -c '^ok: .* renders with kubectl kustomize' <<<"$output")" -eq 4 ]
}

@test "k8s manifests: pod mode keeps every invariant" {
	run "$CHECK" pod
	echo "$output"
	[ "$status" -eq 0 ]
	! grep -q '^FAIL' <<<"$output"
	[[ $output == *"ok: pod sandbox: sidecar proxy: restartPolicy Always (native sidecar)"* ]]
	[[ $output == *"ok: pod sandbox: agent main: SSL_CERT_FILE=/var/run/egressd/ca/ca-bundle.crt"* ]]
}

@test "k8s manifests: node mode keeps every invariant" {
	run "$CHECK" node
	echo "$output"
	[ "$status" -eq 0 ]
	! grep -q '^FAIL' <<<"$output"
	[[ $output == *"ok: RBAC: get, list and watch on pods, nothing else"* ]]
}

@test "k8s manifests: Debian's kubectl 1.20 renders them too, when it is there" {
	# Debian 12's kubernetes-client is kubectl 1.20 (kustomize v2.0.3); the
	# machine may have a newer kubectl, and then this is what install-deps
	# would give a fresh one.
	k=${KUBECTL_120:-}
	if [ -z "$k" ]; then
		v=$(kubectl version --client 2>/dev/null | head -1)
		[[ $v == *v1.20.* ]] && k=kubectl
	fi
	[ -n "$k" ] || skip "no kubectl 1.20 (set KUBECTL_120 to one)"
	KUBECTL=$k run "$CHECK" all
	echo "$output"
	[ "$status" -eq 0 ]
}

# --- broken copies fail, each for its reason ----------------------------------------

@test "k8s manifests: a kustomization that does not render fails" {
	cp -r "$REPO/deploy/k8s" "$BATS_TEST_TMPDIR/k8s"
	echo "  - missing.yaml" >>"$BATS_TEST_TMPDIR/k8s/node/base/kustomization.yaml"
	EGD_README=$REPO/README.md run "$BATS_TEST_TMPDIR/k8s/check.sh" render
	fails_with "node/base renders with kubectl kustomize"
	fails_with "node/example renders with kubectl kustomize"
}

@test "k8s manifests: rendered manifests that do not parse fail" {
	export EGD_K8S_POD_YAML=$BATS_TEST_TMPDIR/pod.yaml
	printf 'kind: Pod\nspec: [unclosed\n' >"$EGD_K8S_POD_YAML"
	run "$CHECK" pod
	fails_with "rendered manifests do not parse"
}

@test "k8s manifests: the sidecar before attach fails" {
	mutate pod 'spec["initContainers"].reverse()'
	run "$CHECK" pod
	fails_with "pod sandbox: the first init container runs \`egressd attach --pod\`"
	fails_with "pod sandbox: one init container after attach runs \`egressd run --pod\`"
}

@test "k8s manifests: an attach that is not privileged, or without POD_UID, fails" {
	mutate pod 'att["securityContext"]["privileged"] = False'
	run "$CHECK" pod
	fails_with "pod sandbox: egressd attach is privileged"
	mutate pod 'att["env"][0]["valueFrom"]["fieldRef"]["fieldPath"] = "metadata.name"'
	run "$CHECK" pod
	fails_with "pod sandbox: egressd attach gets POD_UID from metadata.uid"
}

@test "k8s manifests: a sidecar that is not native, or renamed, fails" {
	mutate pod 'del side["restartPolicy"]'
	run "$CHECK" pod
	fails_with "pod sandbox: sidecar proxy: restartPolicy Always"
	mutate pod 'side["name"] = "egressd"'
	run "$CHECK" pod
	fails_with "pod sandbox: sidecar egressd: named proxy"
}

@test "k8s manifests: a sidecar with a capability or a way to gain one fails" {
	mutate pod 'side["securityContext"]["capabilities"]["add"] = ["BPF"]'
	run "$CHECK" pod
	fails_with "pod sandbox: sidecar proxy: capabilities drop ALL, none added"
	mutate pod 'side["securityContext"]["allowPrivilegeEscalation"] = True'
	run "$CHECK" pod
	fails_with "pod sandbox: sidecar proxy: allowPrivilegeEscalation false"
	mutate pod 'side["securityContext"]["privileged"] = True'
	run "$CHECK" pod
	fails_with "pod sandbox: sidecar proxy: not privileged"
	mutate pod 'del side["securityContext"]["runAsNonRoot"]; side["securityContext"]["readOnlyRootFilesystem"] = False'
	run "$CHECK" pod
	fails_with "pod sandbox: sidecar proxy: runAsNonRoot"
	fails_with "pod sandbox: sidecar proxy: readOnlyRootFilesystem"
}

@test "k8s manifests: a sidecar without a startupProbe on /readyz fails" {
	mutate pod 'del side["startupProbe"]'
	run "$CHECK" pod
	fails_with "pod sandbox: sidecar proxy: startupProbe on /readyz"
	mutate pod 'side["startupProbe"]["httpGet"]["path"] = "/healthz"'
	run "$CHECK" pod
	fails_with "pod sandbox: sidecar proxy: startupProbe on /readyz"
	# The probe must reach the admin listener where it is.
	mutate pod 'env(side, "EGRESSD_ADMIN_LISTEN", "0.0.0.0:15001")'
	run "$CHECK" pod
	fails_with "pod sandbox: sidecar proxy: startupProbe on /readyz at the admin port 15001"
}

@test "k8s manifests: a sidecar seeing every pod's pins fails" {
	mutate pod '[m.pop("subPathExpr") for m in side["volumeMounts"] if m["name"] == "egressd-pins"]'
	run "$CHECK" pod
	fails_with "pod sandbox: sidecar proxy: its only hostPath mount is this pod's pin folder"
}

@test "k8s manifests: an agent with bpffs, cgroupfs or any hostPath fails" {
	mutate pod 'main["volumeMounts"].append({"name": "egressd-pins", "mountPath": "/sys/fs/bpf"})'
	run "$CHECK" pod
	fails_with "pod sandbox: agent main: no hostPath mount (has egressd-pins)"
	fails_with "pod sandbox: agent main: no bpffs, cgroupfs, /sys or /proc mount"
	fails_with "pod sandbox: main mounts no hostPath"
	mutate pod 'spec["volumes"].append({"name": "cg", "emptyDir": {}}); main["volumeMounts"].append({"name": "cg", "mountPath": "/sys/fs/cgroup"})'
	run "$CHECK" pod
	fails_with "pod sandbox: agent main: no bpffs, cgroupfs, /sys or /proc mount"
}

@test "k8s manifests: an agent with a writable CA, or the CA key, fails" {
	mutate pod '[m.pop("readOnly") for m in main["volumeMounts"] if m["name"] == "egressd-ca"]'
	run "$CHECK" pod
	fails_with "pod sandbox: agent main: the CA volume (egressd-ca) is mounted read-only"
	mutate pod 'main["volumeMounts"].append({"name": "egressd-ca-key", "mountPath": "/k", "readOnly": True})'
	run "$CHECK" pod
	fails_with "pod sandbox: agent main: does not mount the CA key volume (egressd-ca-key)"
	fails_with "pod sandbox: only attach and the sidecar mount the CA key"
}

@test "k8s manifests: the CA key beside the certificate fails" {
	mutate pod '
for ctr in (att, side):
    for m in ctr["volumeMounts"]:
        if m["name"] == "egressd-ca-key":
            m["name"] = "egressd-ca"'
	run "$CHECK" pod
	fails_with "pod sandbox: attach writes the CA key to an emptyDir of its own"
}

@test "k8s manifests: an agent trusting the wrong CA file, or missing a variable, fails" {
	mutate pod 'env(main, "SSL_CERT_FILE", "/var/run/egressd/ca/ca.crt")'
	run "$CHECK" pod
	fails_with "pod sandbox: agent main: SSL_CERT_FILE=/var/run/egressd/ca/ca-bundle.crt"
	mutate pod 'env(main, "NODE_EXTRA_CA_CERTS", None)'
	run "$CHECK" pod
	fails_with "pod sandbox: agent main: NODE_EXTRA_CA_CERTS=/var/run/egressd/ca/ca.crt"
}

@test "k8s manifests: an agent with capabilities or privilege fails" {
	mutate pod 'main["securityContext"]["capabilities"]["add"] = ["NET_RAW"]'
	run "$CHECK" pod
	fails_with "pod sandbox: agent main: capabilities drop ALL, none added"
	mutate pod 'main["securityContext"]["allowPrivilegeEscalation"] = True'
	run "$CHECK" pod
	fails_with "pod sandbox: agent main: allowPrivilegeEscalation false"
	mutate pod 'main["securityContext"]["privileged"] = True'
	run "$CHECK" pod
	fails_with "pod sandbox: agent main: not privileged"
}

@test "k8s manifests: a pod with an API token or the host's namespaces fails" {
	mutate pod 'del spec["automountServiceAccountToken"]'
	run "$CHECK" pod
	fails_with "pod sandbox: automountServiceAccountToken false"
	mutate pod 'spec["hostNetwork"] = True; spec["hostPID"] = True'
	run "$CHECK" pod
	fails_with "pod sandbox: no hostNetwork"
	fails_with "pod sandbox: no hostPID"
}

@test "k8s manifests: a sentinel the agent can write fails" {
	mutate pod 'env(side, "EGRESSD_SENTINEL", "/proxy-data/egress-unlocked")'
	run "$CHECK" pod
	fails_with "pod sandbox: the sentinel's directory is on no volume an agent mounts"
}

@test "k8s manifests: latest or untagged images, or no resources, fail" {
	mutate pod 'side["image"] = "registry.example.com/egressd:latest"; main["image"] = "python"'
	run "$CHECK" pod
	fails_with "pod sandbox: proxy: image registry.example.com/egressd:latest is pinned"
	fails_with "pod sandbox: agent main: image python is pinned"
	mutate pod 'del att["resources"]["limits"]'
	run "$CHECK" pod
	fails_with "pod sandbox: egressd-attach: cpu and memory requests and limits"
}

@test "k8s manifests: an egressd variable the README does not document fails" {
	mutate pod 'env(side, "EGRESSD_LISTN", "127.0.0.1:15443")'
	run "$CHECK" pod
	fails_with "pod sandbox: proxy: every egressd variable is in the README tables (missing EGRESSD_LISTN)"
	mutate node 'env(c, "EGRESSD_POD_SELECTR", "a=b")'
	run "$CHECK" node
	fails_with "DaemonSet: every egressd variable is in the README tables (missing EGRESSD_POD_SELECTR)"
}

@test "k8s manifests: a node agent not privileged, or without its node name, fails" {
	mutate node 'c["securityContext"]["privileged"] = False'
	run "$CHECK" node
	fails_with "DaemonSet: egressd node is privileged"
	mutate node '[e.update({"valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}) for e in c["env"] if e["name"] == "NODE_NAME"]'
	run "$CHECK" node
	fails_with "DaemonSet: NODE_NAME from spec.nodeName"
	mutate node 'ds["spec"]["template"]["spec"]["hostNetwork"] = True'
	run "$CHECK" node
	fails_with "DaemonSet: no hostNetwork"
}

@test "k8s manifests: a node agent without probes, or updated OnDelete, fails" {
	mutate node 'del c["readinessProbe"]; c["livenessProbe"]["httpGet"]["path"] = "/metrics"'
	run "$CHECK" node
	fails_with "DaemonSet: readinessProbe on /readyz at the admin port"
	fails_with "DaemonSet: livenessProbe on /healthz at the admin port"
	mutate node 'ds["spec"]["updateStrategy"] = {"type": "OnDelete"}'
	run "$CHECK" node
	fails_with "DaemonSet: RollingUpdate"
}

@test "k8s manifests: RBAC beyond get/list/watch pods fails" {
	mutate node 'role["rules"][0]["verbs"].append("patch")'
	run "$CHECK" node
	fails_with "RBAC: get, list and watch on pods, nothing else"
	mutate node 'role["rules"].append({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]})'
	run "$CHECK" node
	fails_with "RBAC: get, list and watch on pods, nothing else"
	mutate node 'role["rules"][0]["resources"] = ["*"]'
	run "$CHECK" node
	fails_with "RBAC: get, list and watch on pods, nothing else"
	mutate node 'kind("ClusterRoleBinding")[0]["subjects"][0]["name"] = "default"'
	run "$CHECK" node
	fails_with "RBAC: the ServiceAccount is bound to roles defined here"
}

@test "k8s manifests: a PodDisruptionBudget that misses the DaemonSet fails" {
	mutate node 'pdb["spec"]["selector"]["matchLabels"] = {"app": "other"}'
	run "$CHECK" node
	fails_with "PodDisruptionBudget: selects the DaemonSet's pods"
	mutate node 'docs.remove(pdb)'
	run "$CHECK" node
	fails_with "PodDisruptionBudget: selects the DaemonSet's pods"
}

@test "k8s manifests: a sandbox pod not held by egressd wait, or not opted in, fails" {
	mutate node 'sb["initContainers"].insert(0, {"name": "setup", "image": "busybox:1.36", "command": ["true"]})'
	run "$CHECK" node
	fails_with "sandbox pod sandbox: the first init container is \`egressd wait\`"
	mutate node 'del sbpod["metadata"]["labels"]["egressd.io/enforce"]'
	run "$CHECK" node
	fails_with "sandbox pod sandbox: carries the opt-in label egressd.io/enforce=true"
}

@test "k8s manifests: a privileged egressd wait, or a sandbox with hostPath, fails" {
	mutate node 'wait["securityContext"]["privileged"] = True; wait["securityContext"]["capabilities"]["add"] = ["NET_ADMIN"]'
	run "$CHECK" node
	fails_with "sandbox pod sandbox: egressd wait: not privileged"
	fails_with "sandbox pod sandbox: egressd wait: capabilities drop ALL, none added"
	mutate node 'sb["volumes"].append({"name": "bpf", "hostPath": {"path": "/sys/fs/bpf"}})'
	run "$CHECK" node
	fails_with "sandbox pod sandbox: no hostPath volume"
	mutate node 'sb["automountServiceAccountToken"] = True'
	run "$CHECK" node
	fails_with "sandbox pod sandbox: automountServiceAccountToken false"
}

@test "k8s manifests: a sandbox agent with a writable CA or no trust variables fails" {
	mutate node 'main["volumeMounts"][0]["readOnly"] = False'
	run "$CHECK" node
	fails_with "sandbox pod sandbox: agent main: the CA volume (egressd-ca) is mounted read-only"
	mutate node 'env(main, "REQUESTS_CA_BUNDLE", None)'
	run "$CHECK" node
	fails_with "sandbox pod sandbox: agent main: REQUESTS_CA_BUNDLE=/var/run/egressd/ca/ca-bundle.crt"
	mutate node 'wait["volumeMounts"][0]["readOnly"] = True'
	run "$CHECK" node
	fails_with "sandbox pod sandbox: egressd wait writes the CA certificate at /var/run/egressd/ca"
}
