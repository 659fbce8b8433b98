#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# A demo sandbox on this machine, no setup needed (root required: it loads
# BPF and creates a network namespace). It builds egressd, makes a small
# private "internet" (a network namespace with a web server at 198.51.100.1,
# reachable only from the sandbox namespace), and runs an agent under
# `egressd exec`:
#   1. agent phase: the agent's HTTPS and HTTP requests are refused;
#   2. the platform creates the sentinel file;
#   3. verification phase: the same requests go through to the server.
# Nothing here sends traffic outside the two namespaces it creates.
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$(pwd)
if [ "$(id -u)" -ne 0 ]; then
	echo "demo: needs root (BPF, cgroups, network namespaces): sudo $0" >&2
	exit 1
fi

say() { printf '\n\033[1m%s\033[0m\n' "$*"; }

say "Preparing: dependencies and build (first run takes a minute)"
./scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
make -C build -j"$(nproc)" --no-print-directory egressd >/dev/null
EGRESSD=$REPO/build/egressd

DEMO=$(mktemp -d /tmp/egressd-demo.XXXXXX)
NS=egd-demo-$$
NET=egd-demo-net-$$
cleanup() {
	[ -n "${SERVER_PID:-}" ] && kill "$SERVER_PID" 2>/dev/null
	[ -n "${EXEC_PID:-}" ] && kill "$EXEC_PID" 2>/dev/null
	wait 2>/dev/null || true
	mountpoint -q "$DEMO/bpffs" && umount "$DEMO/bpffs"
	ip netns del "$NS" 2>/dev/null || true
	ip netns del "$NET" 2>/dev/null || true
	rm -rf "$DEMO"
}
trap cleanup EXIT

say "Building the demo world"
ip netns add "$NS"
ip netns add "$NET"
ip -n "$NS" link set lo up
ip -n "$NET" link set lo up
ip -n "$NS" link add v0 type veth peer name v1 netns "$NET"
ip -n "$NS" addr add 198.51.100.2/24 dev v0
ip -n "$NET" addr add 198.51.100.1/24 dev v1
ip -n "$NS" link set v0 up
ip -n "$NET" link set v1 up
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
	-keyout "$DEMO/key.pem" -out "$DEMO/cert.pem" -subj /CN=example.com \
	-addext "subjectAltName=DNS:example.com" 2>/dev/null
nsenter --net="/run/netns/$NET" python3 "$REPO/tests/e2e/fixtures/servers.py" \
	--cert "$DEMO/cert.pem" --key "$DEMO/key.pem" --ready "$DEMO/ready" \
	--tls 198.51.100.1:443 --http 198.51.100.1:80 >/dev/null 2>&1 &
SERVER_PID=$!
for _ in $(seq 100); do [ -e "$DEMO/ready" ] && break; sleep 0.05; done
mkdir "$DEMO/bpffs"
mount -t bpf bpf "$DEMO/bpffs"
echo "  sandbox namespace $NS, 'internet' namespace $NET with example.com at 198.51.100.1"

# The agent: the same two requests before and after the sentinel appears.
cat >"$DEMO/agent.sh" <<AGENT
#!/bin/sh
try() {
	printf '  agent> %s\n' "\$*"
	out=\$("\$@" 2>&1) && printf '         OK: %s\n' "\$out" || printf '         REFUSED: %s\n' "\$out"
}
requests() {
	try curl -sS -m 5 --cacert $DEMO/cert.pem --resolve example.com:443:198.51.100.1 https://example.com/
	try curl -sS -m 5 --fail-with-body http://198.51.100.1/
}
requests
touch $DEMO/agent-waiting
while [ ! -e $DEMO/go ]; do sleep 0.05; done
requests
AGENT
chmod +x "$DEMO/agent.sh"

say "1. Agent phase: the agent may reach only the LLM gateway (openrouter.ai)"
# The sentinel in a directory of its own: exec makes it read-only for the
# agent, which keeps writing its own files in $DEMO.
mkdir "$DEMO/platform"
export EGRESSD_PIN_DIR=$DEMO/bpffs/egressd EGRESSD_SENTINEL=$DEMO/platform/egress-unlocked
export EGRESSD_RESOLVERS=198.51.100.1 EGRESSD_LOG_LEVEL=warning
# The embedded policy proxy's CA, kept in the demo's own directory.
export EGRESSD_CA_DIR=$DEMO/ca EGRESSD_CA_KEY_DIR=$DEMO/ca-key PROXY_DATA_DIR=$DEMO/data
nsenter --net="/run/netns/$NS" "$EGRESSD" exec --audit-log "$DEMO/audit.log" \
	-- "$DEMO/agent.sh" &
EXEC_PID=$!
for _ in $(seq 200); do [ -e "$DEMO/agent-waiting" ] && break; sleep 0.05; done

say "2. The platform creates the sentinel $EGRESSD_SENTINEL"
touch "$EGRESSD_SENTINEL"
sleep 0.2
say "3. Verification phase: the rest of the network opens, untouched"
touch "$DEMO/go"
wait "$EXEC_PID"
EXEC_PID=

say "What egressd decided (one JSON line each in its audit log; here in words)"
python3 - "$DEMO/audit.log" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r["event"] != "decision":
        continue
    host = r["host"] or "(no host named)"
    print(f"  {r['phase']:>12} phase: {r['proto']:>4} to {r['dst']:<20} host {host:<16}"
          f" -> {r['verdict']} ({r['reason']})")
PY
say "Done. Try it yourself: sudo build/egressd exec -- curl https://example.com"
