#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Offline checks of the router's Kubernetes deployment: there may be no
# cluster where this runs, so the manifests are rendered with
# `kubectl kustomize` (Debian's kubernetes-client) and the result is read.
# What is checked is what keeps the router safe and available, not style.
#
#   deploy/k8s/router/check.sh
#
# EGD_K8S_DIR is the folder holding router/ and router-gateway/ (default:
# deploy/k8s), so that tests can check mutated copies. EGD_BINARY, when
# built, gives the list of the router's settings (`egressd help`): every
# variable the Deployment sets must be one. Each failed check prints
# "FAIL: ..." and the exit status is 1; 77 when kubectl is missing.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
export EGD_K8S_DIR=${EGD_K8S_DIR:-$REPO/deploy/k8s}
export EGD_BINARY=${EGD_BINARY:-$REPO/build/egressd}
PY=${PYTHON:-python3}
[ -x /usr/bin/python3 ] && PY=${PYTHON:-/usr/bin/python3}

command -v kubectl >/dev/null || { echo "skipped: kubectl not installed"; exit 77; }
"$PY" -c 'import yaml' 2>/dev/null || { echo "FAIL: $PY has no yaml module"; exit 1; }
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
kubectl kustomize "$EGD_K8S_DIR/router" >"$TMP/base.yaml" 2>"$TMP/err" || {
	echo "FAIL: kubectl kustomize router: $(cat "$TMP/err")"
	exit 1
}
kubectl kustomize "$EGD_K8S_DIR/router-gateway" >"$TMP/gw.yaml" 2>"$TMP/err" || {
	echo "FAIL: kubectl kustomize router-gateway: $(cat "$TMP/err")"
	exit 1
}
echo "ok: both kustomizations render"
SETTINGS=""
[ -x "$EGD_BINARY" ] && SETTINGS=$("$EGD_BINARY" help | awk '/^router settings/ { r = 1 } r && $2 ~ /^[A-Z_]+$/ { print $2 }')
export SETTINGS

exec "$PY" - "$TMP/base.yaml" "$TMP/gw.yaml" <<'PYEOF'
import os, sys, yaml

fails = []
def check(cond, what):
    print(("ok: " if cond else "FAIL: ") + what)
    if not cond:
        fails.append(what)

base = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
gw = [d for d in yaml.safe_load_all(open(sys.argv[2])) if d]
def one(docs, kind):
    found = [d for d in docs if d.get("kind") == kind]
    return found[0] if len(found) == 1 else None

dep, svc = one(base, "Deployment"), one(base, "Service")
pdb, np = one(base, "PodDisruptionBudget"), one(base, "NetworkPolicy")
route = one(gw, "HTTPRoute")
for name, obj in (("Deployment", dep), ("Service", svc), ("PodDisruptionBudget", pdb),
                  ("NetworkPolicy", np)):
    check(obj is not None, "exactly one %s" % name)
check(route is not None, "router-gateway: exactly one HTTPRoute")
if fails:
    sys.exit(1)

def matches(selector, labels):
    ml = (selector or {}).get("matchLabels") or {}
    return bool(ml) and all(labels.get(k) == v for k, v in ml.items())

spec = dep["spec"]
pod = spec["template"]["spec"]
plabels = spec["template"]["metadata"].get("labels") or {}
cs = [c for c in pod.get("containers") or [] if "router" in (c.get("args") or [])]
check(len(cs) == 1, "Deployment: one container runs `egressd router`")
if fails:
    sys.exit(1)
c = cs[0]
env = {e["name"]: e for e in c.get("env") or []}
def envval(n, default=None):
    e = env.get(n)
    return e.get("value") if e and "value" in e else default

# --- availability -------------------------------------------------------------
check(int(spec.get("replicas", 1)) >= 2, "Deployment: at least 2 replicas")
keys = {t.get("topologyKey") for t in pod.get("topologySpreadConstraints") or []
        if matches(t.get("labelSelector"), plabels)}
check({"topology.kubernetes.io/zone", "kubernetes.io/hostname"} <= keys,
      "Deployment: spread over zones and nodes (topologySpreadConstraints on its own pods)")
admin = envval("ROUTER_ADMIN_LISTEN", "0.0.0.0:9090")
admin_port = int(admin.rsplit(":", 1)[-1]) if admin != "off" else None
listen_port = int(envval("ROUTER_LISTEN", "0.0.0.0:8080").rsplit(":", 1)[-1])
ports = {p.get("name"): p.get("containerPort") for p in c.get("ports") or []}
def probe_port(p):
    port = ((p or {}).get("httpGet") or {}).get("port")
    return ports.get(port, port)
lp, rp = c.get("livenessProbe"), c.get("readinessProbe")
check(admin_port is not None and probe_port(lp) == admin_port
      and (lp.get("httpGet") or {}).get("path") == "/healthz",
      "Deployment: liveness is /healthz on the admin port")
check(admin_port is not None and probe_port(rp) == admin_port
      and (rp.get("httpGet") or {}).get("path") == "/readyz",
      "Deployment: readiness is /readyz on the admin port (503 while draining)")
shutdown = int(envval("ROUTER_SHUTDOWN_S", "25"))
check(int(pod.get("terminationGracePeriodSeconds", 30)) > shutdown,
      "Deployment: terminationGracePeriodSeconds exceeds ROUTER_SHUTDOWN_S")

# --- hardening ----------------------------------------------------------------
psc, csc = pod.get("securityContext") or {}, c.get("securityContext") or {}
def sc(key):
    return csc.get(key, psc.get(key))
check(sc("runAsNonRoot") is True and sc("runAsUser") not in (None, 0),
      "Deployment: runAsNonRoot with a non-zero runAsUser")
check(csc.get("readOnlyRootFilesystem") is True, "Deployment: readOnlyRootFilesystem")
check(csc.get("allowPrivilegeEscalation") is False,
      "Deployment: allowPrivilegeEscalation false (the image's file capability stays inert)")
check(not csc.get("privileged"), "Deployment: not privileged")
caps = csc.get("capabilities") or {}
check("ALL" in (caps.get("drop") or []) and not caps.get("add"),
      "Deployment: capabilities drop ALL, add none")
check((sc("seccompProfile") or {}).get("type") in ("RuntimeDefault", "Localhost"),
      "Deployment: a seccomp profile")
check(pod.get("automountServiceAccountToken") is False,
      "Deployment: no service account token (the router needs no API access)")
check(not pod.get("hostNetwork") and not pod.get("hostPID"),
      "Deployment: no host namespaces")

# --- auth ---------------------------------------------------------------------
secret_vols = {v["name"]: v["secret"] for v in pod.get("volumes") or [] if "secret" in v}
mounts = {m["mountPath"].rstrip("/"): m["name"] for m in c.get("volumeMounts") or []}
tf = envval("ROUTER_AUTH_TOKEN_FILE")
tok = env.get("ROUTER_AUTH_TOKEN")
from_secret = False
if tf:
    d = os.path.dirname(tf)
    from_secret = mounts.get(d) in secret_vols
if tok is not None:
    ref = (tok.get("valueFrom") or {}).get("secretKeyRef")
    from_secret = bool(ref) and "value" not in tok and not tf
check(from_secret, "Deployment: the token comes from a Secret (never a literal)")
check(str(envval("ALLOW_UNAUTHENTICATED_ROUTER", "false")).lower()
      not in ("1", "true", "t", "yes", "y", "on"),
      "Deployment: ALLOW_UNAUTHENTICATED_ROUTER is not set true")
known = set(os.environ.get("SETTINGS", "").split())
if known:
    unknown = sorted(set(env) - known)
    check(not unknown, "Deployment: every variable is a router setting%s"
          % (" (unknown: %s)" % ", ".join(unknown) if unknown else ""))

# --- service, pdb ---------------------------------------------------------------
check(matches({"matchLabels": svc["spec"].get("selector")}, plabels),
      "Service: selects the router pods")
sp = svc["spec"].get("ports") or []
check(any(ports.get(p.get("targetPort"), p.get("targetPort")) == listen_port for p in sp),
      "Service: targets ROUTER_LISTEN's port")
check(not any(ports.get(p.get("targetPort"), p.get("targetPort")) == admin_port for p in sp),
      "Service: does not expose the admin port")
check(svc["spec"].get("type", "ClusterIP") == "ClusterIP", "Service: ClusterIP")
check(matches(pdb["spec"].get("selector"), plabels), "PodDisruptionBudget: selects the router pods")
check(int(pdb["spec"].get("minAvailable", 0)) >= 1 or "maxUnavailable" in pdb["spec"],
      "PodDisruptionBudget: keeps at least one router")

# --- network policy ---------------------------------------------------------------
nps = np["spec"]
check(matches(nps.get("podSelector"), plabels), "NetworkPolicy: selects the router pods")
check("Egress" in (nps.get("policyTypes") or []), "NetworkPolicy: policyTypes has Egress")
rules = nps.get("egress") or []
def rule_ok(r):
    to, ps = r.get("to") or [], r.get("ports") or []
    if not to or not ps:
        return False  # an empty peer or port list allows everything
    if any("ipBlock" in t for t in to):
        return False
    if all(p.get("port") == 53 for p in ps):
        return all(((t.get("podSelector") or {}).get("matchLabels") or {}).get("k8s-app")
                   == "kube-dns" for t in to)
    return all((t.get("podSelector") or {}).get("matchLabels") for t in to)
check(bool(rules) and all(rule_ok(r) for r in rules),
      "NetworkPolicy: egress only to DNS (kube-dns, port 53) and to labelled sandbox pods, "
      "with ports")
check(any(all(p.get("port") == 53 for p in r.get("ports") or [{}]) for r in rules),
      "NetworkPolicy: DNS allowed")

# --- the example route ----------------------------------------------------------
refs = [b for r in route["spec"].get("rules") or [] for b in r.get("backendRefs") or []]
check(bool(refs) and all(b.get("name") == svc["metadata"]["name"] and
                         b.get("port") in [p.get("port") for p in sp] for b in refs),
      "HTTPRoute: sends to the router Service's port")
check(route["metadata"].get("namespace") == svc["metadata"].get("namespace"),
      "HTTPRoute: in the router's namespace (no ReferenceGrant needed)")
sys.exit(1 if fails else 0)
PYEOF
