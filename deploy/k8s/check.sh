#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Offline checks of the Kubernetes manifests: there is no cluster where this
# runs, so the kustomizations are rendered with `kubectl kustomize` (no
# server needed) and the result is read. What is checked is what keeps the
# agent enclosed and the privilege where it belongs, not style.
#
#   deploy/k8s/check.sh [all|render|pod|node]
#
# render  every base and example overlay renders (kubectl; exit 77 without)
# pod     the invariants of pod mode, on the rendered pod/example
# node    the invariants of node mode, on the rendered node/example
#
# Each failed check prints "FAIL: ..." and the exit status is 1. Rendered
# files can be given instead, for tests: EGD_K8S_POD_YAML, EGD_K8S_NODE_YAML;
# EGD_README is the README whose tables must document every egressd
# variable; KUBECTL the kubectl to use.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
export EGD_README=${EGD_README:-$REPO/README.md}
KUBECTL=${KUBECTL:-kubectl}
PY=${PYTHON:-python3}
[ -x /usr/bin/python3 ] && PY=${PYTHON:-/usr/bin/python3}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# kustomize DIR OUT: render offline (no kubeconfig, no server).
kustomize() {
	KUBECONFIG=/dev/null "$KUBECTL" kustomize "$HERE/$1" >"$2" 2>"$TMP/err" || {
		echo "FAIL: $1 renders with kubectl kustomize"
		sed 's/^/  /' "$TMP/err"
		return 1
	}
}

render() {
	command -v "$KUBECTL" >/dev/null || {
		echo "render: skipped, no kubectl (Debian package kubernetes-client)"
		return 77
	}
	local rc=0 d
	for d in pod/base pod/example node/base node/example; do
		if kustomize "$d" "$TMP/out.yaml"; then
			echo "ok: $d renders with kubectl kustomize"
		else
			rc=1
		fi
	done
	return $rc
}

# rendered VAR DIR: the file to check, given or rendered now.
rendered() {
	local given=${!1:-}
	if [ -n "$given" ]; then
		echo "$given"
		return
	fi
	command -v "$KUBECTL" >/dev/null || {
		echo "FAIL: no kubectl to render $2 (Debian package kubernetes-client)" >&2
		return 1
	}
	kustomize "$2" "$TMP/${2//\//-}.yaml" >&2 || return 1
	echo "$TMP/${2//\//-}.yaml"
}

# checks MODE FILE: the Python below, on one rendered file.
checks() {
	"$PY" -c 'import yaml' 2>/dev/null || {
		echo "FAIL: $PY has no yaml module (Debian package python3-yaml)"
		return 1
	}
	"$PY" - "$1" "$2" <<'PYEOF'
import os, re, sys, yaml

mode, path = sys.argv[1], sys.argv[2]
fails = []
def check(cond, what):
    print(("ok: " if cond else "FAIL: ") + what)
    if not cond:
        fails.append(what)

try:
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
except (OSError, yaml.YAMLError) as e:
    print("FAIL: rendered manifests do not parse: %s" % e)
    sys.exit(1)

def of_kind(k):
    return [d for d in docs if d.get("kind") == k]

def cmd(c):
    return " ".join(str(x) for x in (c.get("command") or []) + (c.get("args") or []))

def env(c):
    return {e.get("name"): e for e in c.get("env") or []}

def env_val(c, k):
    e = env(c).get(k)
    return e.get("value") if e else None

def sc(c):
    return c.get("securityContext") or {}

def caps_dropped_all(c):
    cp = sc(c).get("capabilities") or {}
    return "ALL" in [str(x).upper() for x in cp.get("drop") or []] and not cp.get("add")

def unprivileged(c, who):
    s = sc(c)
    check(not s.get("privileged"), "%s: not privileged" % who)
    check(caps_dropped_all(c), "%s: capabilities drop ALL, none added" % who)
    check(s.get("allowPrivilegeEscalation") is False, "%s: allowPrivilegeEscalation false" % who)

def image_pinned(c, who):
    img = str(c.get("image") or "")
    tag = img.split("@")[0].rsplit("/", 1)[-1]
    check("@sha256:" in img or (":" in tag and not tag.endswith(":latest")),
          "%s: image %s is pinned by tag or digest, not latest" % (who, img or "<none>"))

def resources(c, who):
    r = c.get("resources") or {}
    ok = all((r.get(k) or {}).get(x) for k in ("requests", "limits") for x in ("cpu", "memory"))
    check(ok, "%s: cpu and memory requests and limits" % who)

def volumes(spec):
    return {v.get("name"): v for v in spec.get("volumes") or []}

def mounts(c):
    return c.get("volumeMounts") or []

def probe_on(p, path, port):
    if not p:
        return False
    hg = p.get("httpGet")
    if hg:
        return hg.get("path") == path and str(hg.get("port")) == str(port)
    ex = " ".join((p.get("exec") or {}).get("command") or [])
    return path in ex and str(port) in ex

def admin_port(c):
    a = env_val(c, "EGRESSD_ADMIN_LISTEN") or "127.0.0.1:15000"
    return a.rsplit(":", 1)[-1]

def agent_checks(spec, c, who, ca_vol, key_vol=None):
    unprivileged(c, who)
    vols = volumes(spec)
    ms = mounts(c)
    host = [m["name"] for m in ms if "hostPath" in vols.get(m.get("name"), {})]
    check(not host, "%s: no hostPath mount%s" % (who, " (has %s)" % ",".join(host) if host else ""))
    bad = [m.get("mountPath") for m in ms
           if re.match(r"^/sys/fs/(bpf|cgroup)(/|$)|^/sys/?$|^/proc/?$", str(m.get("mountPath", "")))]
    check(not bad, "%s: no bpffs, cgroupfs, /sys or /proc mount" % who)
    ca = [m for m in ms if m.get("name") == ca_vol]
    check(len(ca) == 1 and ca[0].get("readOnly") is True,
          "%s: the CA volume (%s) is mounted read-only" % (who, ca_vol))
    if key_vol:
        check(not any(m.get("name") == key_vol for m in ms),
              "%s: does not mount the CA key volume (%s)" % (who, key_vol))
    ca_dir = ca[0]["mountPath"].rstrip("/") if ca else "<none>"
    want = {"SSL_CERT_FILE": "ca-bundle.crt", "REQUESTS_CA_BUNDLE": "ca-bundle.crt",
            "CURL_CA_BUNDLE": "ca-bundle.crt", "GIT_SSL_CAINFO": "ca-bundle.crt",
            "NODE_EXTRA_CA_CERTS": "ca.crt"}
    for k, f in want.items():
        check(env_val(c, k) == "%s/%s" % (ca_dir, f), "%s: %s=%s/%s" % (who, k, ca_dir, f))
    image_pinned(c, who)
    resources(c, who)

def pod_level(spec, who):
    check(spec.get("automountServiceAccountToken") is False,
          "%s: automountServiceAccountToken false (the agent gets no API token)" % who)
    for k in ("hostNetwork", "hostPID", "hostIPC"):
        check(not spec.get(k), "%s: no %s" % (who, k))

documented = set()
try:
    for line in open(os.environ["EGD_README"]):
        if line.startswith("|"):
            documented.update(re.findall(r"`([A-Z][A-Z0-9_]+)`", line.split("|")[1]))
except OSError:
    pass

def documented_env(c, who):
    names = [k for k in env(c) if k.startswith("EGRESSD_") or k in (
        "POD_UID", "NODE_NAME", "PROXY_DATA_DIR", "MAX_COST_USD", "EVALUATION_RUN_ID")]
    missing = sorted(k for k in names if k not in documented)
    check(not missing, "%s: every egressd variable is in the README tables%s"
          % (who, " (missing %s)" % ", ".join(missing) if missing else ""))

# --- pod mode -----------------------------------------------------------------
def pod_mode():
    pods = of_kind("Pod")
    check(len(pods) >= 1, "pod mode: the rendered manifests hold a Pod")
    for pod in pods:
        name = pod.get("metadata", {}).get("name")
        spec = pod.get("spec") or {}
        inits = spec.get("initContainers") or []
        vols = volumes(spec)
        who = "pod %s" % name
        pod_level(spec, who)
        ai = [i for i, c in enumerate(inits) if re.search(r"\begressd attach --pod\b", cmd(c))]
        check(ai == [0], "%s: the first init container runs `egressd attach --pod`" % who)
        att = inits[ai[0]] if ai else {}
        check(sc(att).get("privileged") is True, "%s: egressd attach is privileged "
              "(the host cgroup namespace shows the pod cgroup)" % who)
        uid = env(att).get("POD_UID") or {}
        check(((uid.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath") == "metadata.uid",
              "%s: egressd attach gets POD_UID from metadata.uid" % who)
        si = [i for i, c in enumerate(inits) if re.search(r"\begressd run --pod\b", cmd(c))]
        check(len(si) == 1 and (not ai or si[0] > ai[0]),
              "%s: one init container after attach runs `egressd run --pod`" % who)
        side = inits[si[0]] if si else {}
        sw = "%s: sidecar %s" % (who, side.get("name"))
        check(side.get("restartPolicy") == "Always", "%s: restartPolicy Always (native sidecar)" % sw)
        check(side.get("name") == "proxy",
              "%s: named proxy (platform hooks exec into -c proxy)" % sw)
        unprivileged(side, sw)
        check(sc(side).get("runAsNonRoot") is True, "%s: runAsNonRoot" % sw)
        check(sc(side).get("readOnlyRootFilesystem") is True, "%s: readOnlyRootFilesystem" % sw)
        check(probe_on(side.get("startupProbe"), "/readyz", admin_port(side)),
              "%s: startupProbe on /readyz at the admin port %s (holds the agent back)"
              % (sw, admin_port(side)))
        for c in (att, side):
            image_pinned(c, "%s: %s" % (who, c.get("name")))
            resources(c, "%s: %s" % (who, c.get("name")))
            documented_env(c, "%s: %s" % (who, c.get("name")))
        # The pins: this pod's folder only, for the sidecar.
        pins = [m for m in mounts(side) if "hostPath" in vols.get(m.get("name"), {})]
        check(len(pins) == 1 and pins[0].get("subPathExpr") == "$(POD_UID)",
              "%s: its only hostPath mount is this pod's pin folder (subPathExpr $(POD_UID))" % sw)
        for c in inits + (spec.get("containers") or []):
            if c in (att, side):
                continue
            hp = [m["name"] for m in mounts(c) if "hostPath" in vols.get(m.get("name"), {})]
            check(not hp, "%s: %s mounts no hostPath" % (who, c.get("name")))
        # The CA: certificate and key in separate emptyDirs.
        ca_dir = env_val(att, "EGRESSD_CA_DIR") or "/var/run/egressd/ca"
        key_dir = env_val(att, "EGRESSD_CA_KEY_DIR") or "/var/lib/egressd"
        def vol_at(c, d):
            m = [m for m in mounts(c) if m.get("mountPath", "").rstrip("/") == d.rstrip("/")]
            return m[0] if m else None
        cam, keym = vol_at(att, ca_dir), vol_at(att, key_dir)
        check(bool(cam) and "emptyDir" in vols.get(cam["name"], {}) and not cam.get("readOnly"),
              "%s: attach writes the CA certificate to an emptyDir at %s" % (who, ca_dir))
        check(bool(keym) and "emptyDir" in vols.get(keym["name"], {}) and not keym.get("readOnly")
              and (not cam or keym["name"] != cam["name"]),
              "%s: attach writes the CA key to an emptyDir of its own at %s" % (who, key_dir))
        key_vol = keym["name"] if keym else None
        ca_vol = cam["name"] if cam else None
        users = sorted(c.get("name") for c in inits + (spec.get("containers") or [])
                       if any(m.get("name") == key_vol for m in mounts(c)))
        check(users == sorted([att.get("name"), side.get("name")]),
              "%s: only attach and the sidecar mount the CA key (%s)" % (who, ",".join(users)))
        # The sentinel: on the sidecar's private /tmp.
        sent = env_val(side, "EGRESSD_SENTINEL") or "/tmp/egress-unlocked"
        sd = os.path.dirname(sent)
        on = [m for m in mounts(side) if sd == m.get("mountPath", "").rstrip("/")
              or sd.startswith(m.get("mountPath", "").rstrip("/") + "/")]
        shared = [m["name"] for m in on for c in (spec.get("containers") or [])
                  if any(x.get("name") == m["name"] for x in mounts(c))]
        check(not shared, "%s: the sentinel's directory is on no volume an agent mounts" % who)
        for c in spec.get("containers") or []:
            agent_checks(spec, c, "%s: agent %s" % (who, c.get("name")), ca_vol, key_vol)

# --- node mode ----------------------------------------------------------------
def node_mode():
    dss = of_kind("DaemonSet")
    check(len(dss) == 1, "node mode: one DaemonSet")
    ds = dss[0] if dss else {}
    ns = ds.get("metadata", {}).get("namespace")
    tpl = (ds.get("spec") or {}).get("template") or {}
    spec = tpl.get("spec") or {}
    cs = [c for c in spec.get("containers") or [] if re.search(r"\begressd node\b", cmd(c))]
    check(len(cs) == 1, "DaemonSet: a container runs `egressd node`")
    c = cs[0] if cs else {}
    check(sc(c).get("privileged") is True, "DaemonSet: egressd node is privileged")
    nn = env(c).get("NODE_NAME") or {}
    check(((nn.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath") == "spec.nodeName",
          "DaemonSet: NODE_NAME from spec.nodeName")
    check(probe_on(c.get("readinessProbe"), "/readyz", admin_port(c)),
          "DaemonSet: readinessProbe on /readyz at the admin port")
    check(probe_on(c.get("livenessProbe"), "/healthz", admin_port(c)),
          "DaemonSet: livenessProbe on /healthz at the admin port")
    check(not spec.get("hostNetwork"), "DaemonSet: no hostNetwork (listeners go in pod namespaces)")
    check(((ds.get("spec") or {}).get("updateStrategy") or {}).get("type", "RollingUpdate")
          == "RollingUpdate", "DaemonSet: RollingUpdate")
    image_pinned(c, "DaemonSet")
    resources(c, "DaemonSet")
    documented_env(c, "DaemonSet")
    # RBAC: the service account reads pods, nothing else.
    sa = spec.get("serviceAccountName")
    check(bool(sa) and any(d.get("metadata", {}).get("name") == sa for d in of_kind("ServiceAccount")),
          "DaemonSet: runs as its own ServiceAccount (%s)" % sa)
    roles = {(d["kind"], d["metadata"]["name"]): d for d in of_kind("ClusterRole") + of_kind("Role")}
    bound = []
    for b in of_kind("ClusterRoleBinding") + of_kind("RoleBinding"):
        if any(s.get("kind") == "ServiceAccount" and s.get("name") == sa
               and s.get("namespace", b.get("metadata", {}).get("namespace")) == ns
               for s in b.get("subjects") or []):
            r = b.get("roleRef") or {}
            bound.append(roles.get((r.get("kind"), r.get("name"))))
    check(bool(bound) and all(bound), "RBAC: the ServiceAccount is bound to roles defined here")
    rules = [r for role in bound if role for r in role.get("rules") or []]
    extra = [r for r in rules
             if (r.get("apiGroups") or []) != [""] or (r.get("resources") or []) != ["pods"]
             or not set(r.get("verbs") or []) <= {"get", "list", "watch"} or r.get("resourceNames")]
    verbs = set(v for r in rules for v in r.get("verbs") or [])
    check(bool(rules) and not extra and verbs == {"get", "list", "watch"},
          "RBAC: get, list and watch on pods, nothing else%s"
          % (" (also %s)" % extra if extra else ""))
    # A rollout or a drain takes one node agent at a time.
    sel = ((ds.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    pdbs = [p for p in of_kind("PodDisruptionBudget")
            if ((p.get("spec") or {}).get("selector") or {}).get("matchLabels") == sel
            and p.get("metadata", {}).get("namespace") == ns]
    check(len(pdbs) == 1 and ("maxUnavailable" in pdbs[0]["spec"] or "minAvailable" in pdbs[0]["spec"]),
          "PodDisruptionBudget: selects the DaemonSet's pods")
    # The example sandbox pods: unprivileged, held by `egressd wait`.
    selector = env_val(c, "EGRESSD_POD_SELECTOR") or "egressd.io/enforce=true"
    sk, _, sv = selector.partition("=")
    pods = of_kind("Pod")
    check(len(pods) >= 1, "node mode: an example sandbox Pod")
    for pod in pods:
        who = "sandbox pod %s" % pod.get("metadata", {}).get("name")
        ps = pod.get("spec") or {}
        check((pod.get("metadata", {}).get("labels") or {}).get(sk) == sv,
              "%s: carries the opt-in label %s" % (who, selector))
        pod_level(ps, who)
        inits = ps.get("initContainers") or []
        check(bool(inits) and re.search(r"\begressd wait\b", cmd(inits[0])) is not None,
              "%s: the first init container is `egressd wait`" % who)
        w = inits[0] if inits else {}
        unprivileged(w, "%s: egressd wait" % who)
        check(sc(w).get("runAsNonRoot") is True, "%s: egressd wait runAsNonRoot" % who)
        image_pinned(w, "%s: egressd wait" % who)
        vols = volumes(ps)
        check(not any("hostPath" in v for v in vols.values()), "%s: no hostPath volume" % who)
        ca_dir = env_val(w, "EGRESSD_CA_DIR") or "/var/run/egressd/ca"
        cam = [m for m in mounts(w) if m.get("mountPath", "").rstrip("/") == ca_dir.rstrip("/")]
        check(bool(cam) and not cam[0].get("readOnly"),
              "%s: egressd wait writes the CA certificate at %s" % (who, ca_dir))
        for ac in ps.get("containers") or []:
            agent_checks(ps, ac, "%s: agent %s" % (who, ac.get("name")),
                         cam[0]["name"] if cam else None)

pod_mode() if mode == "pod" else node_mode()
sys.exit(1 if fails else 0)
PYEOF
}

pod() {
	local f
	f=$(rendered EGD_K8S_POD_YAML pod/example) || return 1
	checks pod "$f"
}

node() {
	local f
	f=$(rendered EGD_K8S_NODE_YAML node/example) || return 1
	checks node "$f"
}

what=${1:-all}
case $what in
render | pod | node) "$what" ;;
all)
	rc=0
	render || { s=$?; [ "$s" -eq 77 ] || rc=1; }
	pod || rc=1
	node || rc=1
	exit $rc
	;;
*)
	echo "usage: $0 [all|render|pod|node]" >&2
	exit 2
	;;
esac
