#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# The router's Kubernetes deployment, checked offline: deploy/k8s/router/
# check.sh on the real manifests must pass, and on copies with one
# invariant broken it must fail, naming that invariant. The mutations are
# what show each check can fail. No root, no cluster needed.

REPO=$(cd "$BATS_TEST_DIRNAME/../.." && pwd)
CHECK=$REPO/deploy/k8s/router/check.sh
PY=python3
[ -x /usr/bin/python3 ] && PY=/usr/bin/python3

setup() {
	command -v kubectl >/dev/null || skip "kubectl (kubernetes-client) not installed"
	export EGD_K8S_DIR=$BATS_TEST_TMPDIR/k8s
	mkdir -p "$EGD_K8S_DIR"
	cp -r "$REPO/deploy/k8s/router" "$REPO/deploy/k8s/router-gateway" "$EGD_K8S_DIR/"
}

# mutate FILE PYTHON: run PYTHON on d, the YAML of FILE (relative to the
# copied deploy/k8s), with c the router container when FILE is the
# Deployment, and write it back; the file must have changed.
mutate() {
	local f=$EGD_K8S_DIR/$1
	cp "$f" "$BATS_TEST_TMPDIR/orig"
	"$PY" - "$f" "$2" <<'PYEOF'
import sys, yaml
path, code = sys.argv[1:]
d = yaml.safe_load(open(path))
if d.get("kind") == "Deployment":
    c = d["spec"]["template"]["spec"]["containers"][0]
    pod = d["spec"]["template"]["spec"]
exec(code)
yaml.safe_dump(d, open(path, "w"), sort_keys=False)
PYEOF
	! cmp -s "$BATS_TEST_TMPDIR/orig" "$f"
}

# not CMD...: succeeds when CMD fails. A bare "! CMD" would not fail a
# test: bash's errexit ignores negated commands.
not() {
	if "$@"; then
		return 1
	fi
}

fails_with() {
	[ "$status" -eq 1 ] || { echo "status $status, expected 1"; echo "$output"; return 1; }
	grep -qF -- "FAIL: $1" <<<"$output" || { echo "no 'FAIL: $1' in:"; echo "$output"; return 1; }
}

@test "deploy router: the manifests render and keep every invariant" {
	run "$CHECK"
	echo "$output"
	[ "$status" -eq 0 ]
	not grep -q '^FAIL' <<<"$output"
	[ "$(grep -c '^ok:' <<<"$output")" -ge 30 ]
}

@test "deploy router: one replica fails" {
	mutate router/deployment.yaml 'd["spec"]["replicas"] = 1'
	run "$CHECK"
	fails_with "Deployment: at least 2 replicas"
}

@test "deploy router: no spread over nodes fails" {
	mutate router/deployment.yaml 'pod["topologySpreadConstraints"].pop()'
	run "$CHECK"
	fails_with "Deployment: spread over zones and nodes"
}

@test "deploy router: a writable root filesystem fails" {
	mutate router/deployment.yaml 'c["securityContext"]["readOnlyRootFilesystem"] = False'
	run "$CHECK"
	fails_with "Deployment: readOnlyRootFilesystem"
}

@test "deploy router: privilege escalation allowed fails" {
	mutate router/deployment.yaml 'c["securityContext"]["allowPrivilegeEscalation"] = True'
	run "$CHECK"
	fails_with "Deployment: allowPrivilegeEscalation false"
}

@test "deploy router: an added capability fails" {
	mutate router/deployment.yaml 'c["securityContext"]["capabilities"]["add"] = ["NET_ADMIN"]'
	run "$CHECK"
	fails_with "Deployment: capabilities drop ALL, add none"
}

@test "deploy router: running as root fails" {
	mutate router/deployment.yaml 'pod["securityContext"]["runAsUser"] = 0'
	run "$CHECK"
	fails_with "Deployment: runAsNonRoot with a non-zero runAsUser"
}

@test "deploy router: a probe on the proxy port fails" {
	mutate router/deployment.yaml 'c["livenessProbe"]["httpGet"]["port"] = "http"'
	run "$CHECK"
	fails_with "Deployment: liveness is /healthz on the admin port"
}

@test "deploy router: readiness on /healthz (never 503 while draining) fails" {
	mutate router/deployment.yaml 'c["readinessProbe"]["httpGet"]["path"] = "/healthz"'
	run "$CHECK"
	fails_with "Deployment: readiness is /readyz on the admin port"
}

@test "deploy router: a grace period shorter than the drain fails" {
	mutate router/deployment.yaml 'pod["terminationGracePeriodSeconds"] = 10'
	run "$CHECK"
	fails_with "Deployment: terminationGracePeriodSeconds exceeds ROUTER_SHUTDOWN_S"
}

@test "deploy router: a literal token fails" {
	mutate router/deployment.yaml \
		'c["env"] = [e for e in c["env"] if e["name"] != "ROUTER_AUTH_TOKEN_FILE"] + [{"name": "ROUTER_AUTH_TOKEN", "value": "hunter2"}]'
	run "$CHECK"
	fails_with "Deployment: the token comes from a Secret"
}

@test "deploy router: ALLOW_UNAUTHENTICATED_ROUTER=true fails" {
	mutate router/deployment.yaml \
		'c["env"].append({"name": "ALLOW_UNAUTHENTICATED_ROUTER", "value": "true"})'
	run "$CHECK"
	fails_with "Deployment: ALLOW_UNAUTHENTICATED_ROUTER is not set true"
}

@test "deploy router: a misspelt setting fails" {
	[ -x "$REPO/build/egressd" ] || skip "egressd not built"
	mutate router/deployment.yaml 'c["env"].append({"name": "ROUTER_WS_IDLE", "value": "5"})'
	run "$CHECK"
	fails_with "Deployment: every variable is a router setting (unknown: ROUTER_WS_IDLE)"
}

@test "deploy router: a Service exposing the admin port fails" {
	mutate router/service.yaml \
		'd["spec"]["ports"].append({"name": "admin", "port": 9090, "targetPort": 9090})'
	run "$CHECK"
	fails_with "Service: does not expose the admin port"
}

@test "deploy router: no PodDisruptionBudget fails" {
	sed -i '/pdb.yaml/d' "$EGD_K8S_DIR/router/kustomization.yaml"
	run "$CHECK"
	fails_with "exactly one PodDisruptionBudget"
}

@test "deploy router: an egress rule open to every destination fails" {
	mutate router/networkpolicy.yaml 'd["spec"]["egress"].append({"ports": [{"port": 443}]})'
	run "$CHECK"
	fails_with "NetworkPolicy: egress only to DNS"
}

@test "deploy router: an ipBlock egress fails" {
	mutate router/networkpolicy.yaml \
		'd["spec"]["egress"][1]["to"].append({"ipBlock": {"cidr": "0.0.0.0/0"}})'
	run "$CHECK"
	fails_with "NetworkPolicy: egress only to DNS"
}

@test "deploy router: a NetworkPolicy without Egress fails" {
	mutate router/networkpolicy.yaml 'd["spec"]["policyTypes"] = ["Ingress"]'
	run "$CHECK"
	fails_with "NetworkPolicy: policyTypes has Egress"
}

@test "deploy router: an HTTPRoute to another Service fails" {
	mutate router-gateway/httproute.yaml \
		'd["spec"]["rules"][0]["backendRefs"][0]["name"] = "sandbox-router-svc"'
	run "$CHECK"
	fails_with "HTTPRoute: sends to the router Service's port"
}

@test "deploy router: a kustomization that does not render fails" {
	echo "  - missing.yaml" >>"$EGD_K8S_DIR/router/kustomization.yaml"
	run "$CHECK"
	[ "$status" -eq 1 ]
	grep -q "FAIL: kubectl kustomize router" <<<"$output"
}
