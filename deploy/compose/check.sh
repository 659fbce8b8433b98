#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Offline checks of the container deployment: there may be no Docker engine
# where this runs, so the Compose file and the Dockerfile are checked by
# reading them. What is checked is what keeps the agent enclosed, not style.
#
#   deploy/compose/check.sh [all|schema|compose|dockerfile]
#
# schema     `docker compose config -q`, else `docker-compose config -q`
#            (Debian's docker-compose); exit 77 when neither is installed.
# compose    the invariants of the topology (python3 + python3-yaml).
# dockerfile hadolint-style rules that matter here (python3).
#
# Each failed check prints "FAIL: ..." and the exit status is 1. The files
# can be swapped for tests: EGD_COMPOSE, EGD_DOCKERFILE, EGD_DOCKERIGNORE,
# EGD_README, EGD_COMPOSE_README; EGD_BINARY is a built egressd whose shared
# libraries must all be installed by the runtime stage (skipped if absent).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
export EGD_COMPOSE=${EGD_COMPOSE:-$HERE/compose.yaml}
export EGD_COMPOSE_README=${EGD_COMPOSE_README:-$HERE/README.md}
export EGD_DOCKERFILE=${EGD_DOCKERFILE:-$REPO/Dockerfile}
export EGD_DOCKERIGNORE=${EGD_DOCKERIGNORE:-$(dirname "$EGD_DOCKERFILE")/.dockerignore}
export EGD_README=${EGD_README:-$REPO/README.md}
export EGD_BINARY=${EGD_BINARY:-$REPO/build/egressd}
# Debian's interpreter: python3-yaml installs there, not into a pyenv one.
PY=${PYTHON:-python3}
[ -x /usr/bin/python3 ] && PY=${PYTHON:-/usr/bin/python3}

schema() {
	# Interpolation needs no value here: every variable has a default.
	if docker compose version >/dev/null 2>&1; then
		echo "schema: docker compose config -q"
		docker compose -f "$EGD_COMPOSE" config -q
	elif command -v docker-compose >/dev/null 2>&1; then
		echo "schema: docker-compose config -q ($(docker-compose version --short 2>/dev/null))"
		docker-compose -f "$EGD_COMPOSE" config -q
	else
		echo "schema: skipped, neither docker compose nor docker-compose installed"
		return 77
	fi
	echo "ok: compose schema"
}

compose() {
	"$PY" -c 'import yaml' 2>/dev/null || {
		echo "FAIL: $PY has no yaml module (Debian package python3-yaml)"
		return 1
	}
	"$PY" - <<'PYEOF'
import os, re, sys, yaml

fails = []
def check(cond, what):
    print(("ok: " if cond else "FAIL: ") + what)
    if not cond:
        fails.append(what)

try:
    with open(os.environ["EGD_COMPOSE"]) as f:
        doc = yaml.safe_load(f)
except (OSError, yaml.YAMLError) as e:
    print("FAIL: compose file does not parse: %s" % e)
    sys.exit(1)
check(isinstance(doc, dict) and isinstance(doc.get("services"), dict),
      "compose file has a services mapping")
svcs = doc.get("services") or {}
eg = svcs.get("egressd") or {}
ag = svcs.get("agent") or {}
check(bool(eg) and bool(ag), "services egressd and agent exist")

def env(svc):
    e = svc.get("environment") or {}
    if isinstance(e, list):
        out = {}
        for item in e:
            k, _, v = str(item).partition("=")
            out[k] = v if "=" in str(item) else None
        return out
    return {k: (None if v is None else str(v)) for k, v in e.items()}

def caps(svc, key):
    return {str(c).upper().removeprefix("CAP_") for c in (svc.get(key) or [])}

def mounts(svc):
    """(source, target, read_only) for short and long volume syntax."""
    out = []
    for v in svc.get("volumes") or []:
        if isinstance(v, dict):
            out.append((str(v.get("source", "")), str(v.get("target", "")),
                        bool(v.get("read_only", False))))
        else:
            parts = str(v).split(":")
            if len(parts) == 1:
                out.append(("", parts[0], False))
            else:
                opts = parts[2].split(",") if len(parts) > 2 else []
                out.append((parts[0], parts[1], "ro" in opts))
    return out

def under(path, top):
    path, top = path.rstrip("/"), top.rstrip("/")
    return path == top or path.startswith(top + "/")

eg_env, ag_env = env(eg), env(ag)
eg_m, ag_m = mounts(eg), mounts(ag)

# --- the agent: in egressd's namespace, with nothing to get out of it -------
check(ag.get("network_mode") == "service:egressd",
      "agent: network_mode is service:egressd")
check("ALL" in caps(ag, "cap_drop"), "agent: cap_drop ALL")
bad = caps(ag, "cap_add") & {"ALL", "NET_ADMIN", "NET_RAW", "SYS_ADMIN", "BPF",
                             "SYS_PTRACE", "SYS_MODULE", "NET_BIND_SERVICE"}
check(not bad, "agent: no NET_ADMIN/NET_RAW/SYS_ADMIN/BPF in cap_add%s"
      % (" (has %s)" % ",".join(sorted(bad)) if bad else ""))
check(not ag.get("privileged"), "agent: not privileged")
check(not ag.get("devices"), "agent: no devices")
for key in ("pid", "ipc", "userns_mode", "cgroup", "uts"):
    check(str(ag.get(key, "")) != "host", "agent: %s is not host" % key)
for key in ("networks", "ports", "dns", "extra_hosts"):
    check(key not in ag, "agent: no %s of its own (its network is egressd's)" % key)
# The "=" form: "no-new-privileges:true" is deprecated syntax.
check(any(str(o) in ("no-new-privileges", "no-new-privileges=true")
          for o in ag.get("security_opt") or []),
      "agent: security_opt no-new-privileges=true")
# An init as PID 1 forwards SIGTERM: without it a command that ignores
# SIGTERM as PID 1 (sleep) holds every stop for the whole timeout.
check(ag.get("init") is True, "agent: init: true")
check(not any("docker.sock" in s or under(t, "/sys/fs/cgroup") and not ro
              for s, t, ro in ag_m),
      "agent: no docker socket, no writable cgroupfs")
dep = (ag.get("depends_on") or {})
dep_cond = dep.get("egressd", {}).get("condition") if isinstance(dep, dict) else None
check(dep_cond == "service_healthy",
      "agent: depends_on egressd condition service_healthy (never before capture)")

# --- egressd: NET_ADMIN and nothing more ------------------------------------
check("NET_ADMIN" in caps(eg, "cap_add"), "egressd: cap_add NET_ADMIN")
check("ALL" in caps(eg, "cap_drop"), "egressd: cap_drop ALL")
extra = caps(eg, "cap_add") - {"NET_ADMIN"}
check(not extra, "egressd: no capability but NET_ADMIN%s"
      % (" (has %s)" % ",".join(sorted(extra)) if extra else ""))
check(not eg.get("privileged"), "egressd: not privileged")
check(eg_env.get("EGRESSD_MODE") == "nft", "egressd: EGRESSD_MODE=nft")
check("network_mode" not in eg, "egressd: owns its network namespace")

# Health is readiness: /readyz on the admin address.
admin = eg_env.get("EGRESSD_ADMIN_LISTEN") or "127.0.0.1:15000"
hc = eg.get("healthcheck") or {}
test = hc.get("test")
test_s = " ".join(test) if isinstance(test, list) else str(test or "")
check(not hc.get("disable") and "/readyz" in test_s
      and admin.rsplit(":", 1)[-1] in test_s,
      "egressd: healthcheck asks /readyz on the admin port (%s)" % admin)

# The CA: written by egressd, read-only for the agent, trusted by its clients.
ca_dir = eg_env.get("EGRESSD_CA_DIR") or "/var/run/egressd/ca"
eg_ca = [(s, t, ro) for s, t, ro in eg_m if t.rstrip("/") == ca_dir.rstrip("/")]
check(len(eg_ca) == 1 and eg_ca[0][0] and not eg_ca[0][2],
      "egressd: a writable volume at EGRESSD_CA_DIR (%s)" % ca_dir)
ca_src = eg_ca[0][0] if eg_ca else None
ag_ca = [(s, t, ro) for s, t, ro in ag_m if ca_src and s == ca_src]
check(len(ag_ca) == 1 and ag_ca[0][2], "agent: the CA volume is mounted read-only")
shared = {s for s, _, _ in eg_m if s} & {s for s, _, _ in ag_m if s} - {ca_src}
check(not shared, "agent: shares no volume with egressd but the CA%s"
      % (" (shares %s)" % ",".join(sorted(shared)) if shared else ""))
ag_ca_dir = ag_ca[0][1].rstrip("/") if ag_ca else "<none>"
want = {"SSL_CERT_FILE": "ca-bundle.crt", "REQUESTS_CA_BUNDLE": "ca-bundle.crt",
        "CURL_CA_BUNDLE": "ca-bundle.crt", "GIT_SSL_CAINFO": "ca-bundle.crt",
        "NODE_EXTRA_CA_CERTS": "ca.crt"}
for k, f in want.items():
    check(ag_env.get(k) == "%s/%s" % (ag_ca_dir, f),
          "agent: %s=%s/%s" % (k, ag_ca_dir, f))

# The CA key: a writable volume of egressd's own (the root filesystem is
# read-only), which the "shares no volume" check keeps from the agent.
key_dir = eg_env.get("EGRESSD_CA_KEY_DIR") or "/var/lib/egressd"
key_m = [s for s, t, ro in eg_m if t.rstrip("/") == key_dir.rstrip("/") and s and not ro]
check(bool(key_m) and key_m[0] != ca_src,
      "egressd: the CA key directory (%s) is a writable volume apart from the CA's" % key_dir)
check(not any(under(t, key_dir) or under(key_dir, t) for _, t, _ in ag_m),
      "agent: mounts nothing at or around the CA key directory")

data = eg_env.get("PROXY_DATA_DIR") or "/proxy-data"
check(any(t.rstrip("/") == data.rstrip("/") and s and not ro for s, t, ro in eg_m),
      "egressd: a writable volume at PROXY_DATA_DIR (%s)" % data)

# The sentinel opens the network: the agent must have no way to create it.
sentinel = eg_env.get("EGRESSD_SENTINEL") or "/tmp/egress-unlocked"
ag_writable = {s for s, _, ro in ag_m if s and not ro}
exposed = [s for s, t, _ in eg_m if under(os.path.dirname(sentinel), t) and s in ag_writable]
check(not exposed, "egressd: the sentinel's directory is on nothing the agent can write")
doc_cmd = "docker compose exec egressd touch %s" % sentinel
try:
    readme = open(os.environ["EGD_COMPOSE_README"]).read()
except OSError:
    readme = ""
check(doc_cmd in readme, "deploy/compose/README.md documents `%s`" % doc_cmd)
# The recovery tests/e2e/compose.bats runs: a stranded agent rejoins
# egressd's namespace without egressd being recreated (v1 and v2).
rec_cmd = "docker compose up -d --no-deps --force-recreate agent"
check(rec_cmd in readme, "deploy/compose/README.md documents `%s`" % rec_cmd)

# No secret in the file: keys come from the environment (or .env).
for k, v in eg_env.items():
    if re.search(r"KEY|SECRET|TOKEN|PASSWORD", k) and v:
        check(v.startswith("${"), "egressd: %s is interpolated, not written in" % k)

# Every variable egressd is given is one the README documents (a typo would
# be silently ignored by the daemon and leave a default in force).
try:
    top = open(os.environ["EGD_README"]).read()
except OSError:
    top = ""
documented = set()
for line in top.splitlines():
    if line.startswith("|"):
        cell = line.split("|")[1]
        documented.update(re.findall(r"`([A-Z][A-Z0-9_]+)`", cell))
missing = sorted(k for k in eg_env if k not in documented)
check(not missing, "egressd: every environment variable is in the README table%s"
      % (" (missing %s)" % ", ".join(missing) if missing else ""))

# The image it builds is the repository's Dockerfile.
b = eg.get("build") or {}
if isinstance(b, str):
    b = {"context": b}
ctx = os.path.join(os.path.dirname(os.environ["EGD_COMPOSE"]), b.get("context", "."))
check(os.path.isfile(os.path.join(ctx, b.get("dockerfile", "Dockerfile"))),
      "egressd: build context has the Dockerfile")

sys.exit(1 if fails else 0)
PYEOF
}

dockerfile() {
	"$PY" - <<'PYEOF'
import os, re, subprocess, sys

fails = []
def check(cond, what):
    print(("ok: " if cond else "FAIL: ") + what)
    if not cond:
        fails.append(what)

path = os.environ["EGD_DOCKERFILE"]
try:
    raw = open(path).read()
except OSError as e:
    print("FAIL: no Dockerfile: %s" % e)
    sys.exit(1)

# Instructions as Docker reads them: comment lines dropped (also inside a
# continuation), backslash-continued lines joined.
instrs, cur = [], ""
for line in raw.splitlines():
    if re.match(r"\s*#", line):
        continue
    if not cur and not line.strip():
        continue
    if line.rstrip().endswith("\\"):
        cur += line.rstrip()[:-1] + " "
        continue
    cur += line
    kw, _, args = cur.strip().partition(" ")
    instrs.append((kw.upper(), args.strip()))
    cur = ""
comments = "\n".join(l for l in raw.splitlines() if re.match(r"\s*#", l))

stages, names = [], set()
for kw, args in instrs:
    if kw == "FROM":
        m = re.match(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", args, re.I)
        stages.append({"image": m.group(1), "name": m.group(2), "instrs": []})
        if m.group(2):
            names.add(m.group(2).lower())
    elif stages:
        stages[-1]["instrs"].append((kw, args))
check(len(stages) >= 2, "multi-stage build (%d stages)" % len(stages))
for st in stages:
    img = st["image"]
    if img.lower() in names:
        continue
    tag = img.split("@")[0].rsplit("/", 1)[-1]
    pinned = "@sha256:" in img or (":" in tag and not tag.endswith(":latest"))
    check(pinned, "FROM %s is pinned by tag or digest, not latest" % img)
final = stages[-1] if stages else {"image": "", "instrs": []}
check(re.fullmatch(r"debian:12(\.\d+)?-slim", final["image"]) is not None,
      "runtime stage is debian:12-slim (%s)" % final["image"])

runs = [(i, a) for st in stages for i, a in st["instrs"] if i == "RUN"]
for _, a in runs:
    if "apt-get install" in a or "apt install" in a:
        short = re.sub(r"\s+", " ", a)[:60]
        check("--no-install-recommends" in a, "apt-get install --no-install-recommends: %s..." % short)
        check(re.search(r"\s-y\b|--yes|--assume-yes", a) is not None, "apt-get install -y: %s..." % short)
        check("rm -rf /var/lib/apt/lists" in a, "apt lists removed in the same RUN: %s..." % short)
        check("apt-get update" in a, "apt-get update in the same RUN as install: %s..." % short)
    if re.search(r"\bapt-get update\b", a):
        check("apt-get install" in a, "apt-get update never alone in a RUN")
    check(not re.search(r"(^|[;&|]\s*)(sudo|apt)\s", a), "no sudo, no apt (use apt-get)")
check(not any(i == "ADD" for st in stages for i, _ in st["instrs"]),
      "COPY, not ADD")

# Runtime stage: no toolchain, the libraries the binary needs, not root.
fin_install = " ".join(a for i, a in final["instrs"] if i == "RUN")
tools = re.findall(r"(?<![\w.-])(build-essential|gcc|g\+\+|clang|cmake|make|bpftool|[\w.+-]+-dev)(?![\w.-])",
                   fin_install)
check(not tools, "runtime stage installs no compiler or -dev package%s"
      % (" (%s)" % ", ".join(tools) if tools else ""))
need = ["libbpf1", "libelf1", "zlib1g", "libssl3", "libjansson4", "libc-ares2",
        "libnftnl11", "libmnl0", "ca-certificates"]
binary = os.environ.get("EGD_BINARY", "")
if os.access(binary, os.X_OK):
    # What the built binary really links, by Debian package.
    try:
        out = subprocess.run(["ldd", binary], capture_output=True, text=True).stdout
        for lib in re.findall(r"=>\s*(\S+\.so[.\d]*)", out):
            pk = subprocess.run(["dpkg", "-S", lib], capture_output=True, text=True).stdout
            if not pk:
                pk = subprocess.run(["dpkg", "-S", "*/" + os.path.basename(lib)],
                                    capture_output=True, text=True).stdout
            for p in {l.split(":")[0] for l in pk.splitlines()}:
                if p not in ("libc6",) and not p.endswith("-dev") and p not in need:
                    need.append(p)
    except OSError:
        pass
for p in need:
    check(re.search(r"(?<![\w.-])%s(?![\w.-])" % re.escape(p), fin_install) is not None,
          "runtime stage installs %s" % p)

users = [a for i, a in final["instrs"] if i == "USER"]
root_reason = re.search(r"#\s*root-reason:", comments) is not None
check((users and users[-1].split(":")[0] not in ("root", "0")) or root_reason,
      "runtime stage ends with a non-root USER (or a '# root-reason:' comment)")
hcs = [a for i, a in final["instrs"] if i == "HEALTHCHECK"]
check(bool(hcs) and not hcs[-1].upper().startswith("NONE") and "/readyz" in hcs[-1],
      "HEALTHCHECK on /readyz in the runtime stage")
# Permitted only: with the effective bit, execve refuses the binary wherever
# the container lacks NET_ADMIN, even for `egressd --version`.
setcaps = re.findall(r"setcap\s+(\S+)", fin_install)
check(setcaps == ["cap_net_admin+p"],
      "the file capability is permitted only (cap_net_admin+p)%s"
      % (" (setcap %s)" % ", ".join(setcaps) if setcaps != ["cap_net_admin+p"] else ""))
ep = [a for i, a in final["instrs"] if i == "ENTRYPOINT"]
check(bool(ep) and ep[-1].startswith("["), "ENTRYPOINT in exec form (signals reach egressd)")

# No secret baked in: no ENV/ARG named like one, no key or .env copied.
for st in stages:
    for i, a in st["instrs"]:
        if i in ("ENV", "ARG"):
            check(not re.search(r"(KEY|SECRET|TOKEN|PASSWORD)\w*\s*=", a, re.I)
                  and not re.search(r"^\w*(KEY|SECRET|TOKEN|PASSWORD)\w*$", a, re.I),
                  "no secret in %s %s" % (i, a[:40]))
        if i in ("COPY", "ADD"):
            check(not re.search(r"\.env\b|\.pem\b|\.key\b", a), "no key or .env copied: %s" % a[:40])

# The build does not depend on the builder's /sys having a BTF.
check(any("VMLINUX_BTF" in a for i, a in instrs if i == "ARG")
      and any("-DVMLINUX_BTF=" in a for i, a in instrs if i == "RUN"),
      "vmlinux BTF is a build argument passed to cmake")

try:
    ign = [l.strip() for l in open(os.environ["EGD_DOCKERIGNORE"])
           if l.strip() and not l.startswith("#")]
except OSError:
    ign = []
for p in (".git", "build", "build-*"):
    check(p in ign or "/" + p in ign, ".dockerignore excludes %s" % p)

sys.exit(1 if fails else 0)
PYEOF
}

what=${1:-all}
case $what in
schema | compose | dockerfile) "$what" ;;
all)
	rc=0
	compose || rc=1
	dockerfile || rc=1
	schema || { s=$?; [ "$s" -eq 77 ] || rc=1; }
	exit $rc
	;;
*)
	echo "usage: $0 [all|schema|compose|dockerfile]" >&2
	exit 2
	;;
esac
