#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# A demo sandbox on this machine, no setup needed (root required: it loads
# BPF and creates a network namespace). It builds egressd, makes a small
# private "internet" (a network namespace with a web server for example.com
# at 198.51.100.1, a fake OpenRouter at 198.51.100.3 and a DNS server that
# knows both, reachable only from the sandbox namespace), and runs an agent
# under `egressd exec`:
#   1. agent phase: a DNS lookup of example.com is refused while openrouter.ai
#      resolves; a chat completion goes through the policy proxy (the agent
#      trusts the pod CA through the environment exec sets); a restricted
#      model is refused; the budget left is asked; HTTPS and HTTP to
#      example.com's address are refused;
#   2. the platform creates the sentinel file;
#   3. verification phase: the lookup and the requests go through.
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
	# shellcheck disable=SC2086
	[ -n "${SERVER_PIDS:-}" ] && kill $SERVER_PIDS 2>/dev/null
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
ip -n "$NET" addr add 198.51.100.3/24 dev v1
ip -n "$NS" link set v0 up
ip -n "$NET" link set v1 up
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
	-keyout "$DEMO/key.pem" -out "$DEMO/cert.pem" -subj /CN=example.com \
	-addext "subjectAltName=DNS:example.com,DNS:openrouter.ai" 2>/dev/null
FIX=$REPO/tests/e2e/fixtures
nsenter --net="/run/netns/$NET" python3 "$FIX/servers.py" \
	--cert "$DEMO/cert.pem" --key "$DEMO/key.pem" --ready "$DEMO/ready" \
	--tls 198.51.100.1:443 --http 198.51.100.1:80 >/dev/null 2>&1 &
SERVER_PIDS=$!
nsenter --net="/run/netns/$NET" python3 "$FIX/fake_openrouter.py" --listen 198.51.100.3 \
	--port 443 --cert "$DEMO/cert.pem" --key "$DEMO/key.pem" --port-file "$DEMO/or.port" \
	>/dev/null 2>&1 &
SERVER_PIDS="$SERVER_PIDS $!"
nsenter --net="/run/netns/$NET" python3 "$FIX/dns_server.py" --listen 198.51.100.1 \
	--record example.com:A:198.51.100.1 --record openrouter.ai:A:198.51.100.3 \
	--log "$DEMO/dns.log" --ready "$DEMO/dns.ready" >/dev/null 2>&1 &
SERVER_PIDS="$SERVER_PIDS $!"
for _ in $(seq 100); do
	[ -e "$DEMO/ready" ] && [ -e "$DEMO/or.port" ] && [ -e "$DEMO/dns.ready" ] && break
	sleep 0.05
done
mkdir "$DEMO/bpffs"
mount -t bpf bpf "$DEMO/bpffs"
echo "  sandbox namespace $NS; 'internet' namespace $NET with example.com at 198.51.100.1,"
echo "  a fake OpenRouter at 198.51.100.3 and a DNS server at 198.51.100.1 that knows both"

# The agent: a shell script of ordinary tools. Nothing in it knows about
# egressd; its CA bundle comes from the environment exec sets.
KEY=sk-or-demo-agent-key
cat >"$DEMO/agent.sh" <<AGENT
#!/bin/sh
try() {
	printf '  agent> %s\n' "\$1"
	shift
	if out=\$("\$@" 2>&1); then verdict=OK; else verdict=REFUSED; fi
	[ -n "\$out" ] || out="(no answer)"
	printf '%s\n' "\$out" | sed "1s/^/         \$verdict: /; 2,\\\$s/^/           /"
}
chat() { # MODEL: the answer's text and cost, or curl's error
	body=\$(curl -sS -m 10 --fail-with-body https://openrouter.ai/api/v1/chat/completions \
		-H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
		-d "{\\"model\\":\\"\$1\\",\\"messages\\":[{\\"role\\":\\"user\\",\\"content\\":\\"Say hello.\\"}]}" 2>&1) ||
		{ echo "\$body"; return 1; }
	printf '%s' "\$body" | python3 -c 'import json,sys; r=json.load(sys.stdin); print(r["choices"][0]["message"]["content"], "(cost", r["usage"]["cost"], "USD)")'
}
web() {
	try "look up example.com" getent hosts example.com
	try "HTTPS to example.com at its address" \
		curl -sS -m 5 --cacert $DEMO/cert.pem --resolve example.com:443:198.51.100.1 https://example.com/
	try "HTTP to 198.51.100.1" curl -sS -m 5 --fail-with-body http://198.51.100.1/
}
try "look up openrouter.ai" getent hosts openrouter.ai
try "chat completion, anthropic/claude-sonnet-4" chat anthropic/claude-sonnet-4
try "chat completion, openai/gpt-4o (restricted)" \
	curl -sS -m 10 --fail-with-body https://openrouter.ai/api/v1/chat/completions \
	-H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
	-d '{"model":"openai/gpt-4o","messages":[]}'
try "how much budget is left" curl -sS -m 5 https://openrouter.ai/api/v1/usage
web
touch $DEMO/agent-waiting
while [ ! -e $DEMO/go ]; do sleep 0.05; done
web
AGENT
chmod +x "$DEMO/agent.sh"

say "1. Agent phase: the agent may reach only the LLM gateway (openrouter.ai)"
# The sentinel in a directory of its own: exec makes it read-only for the
# agent, which keeps writing its own files in $DEMO.
mkdir "$DEMO/platform"
export EGRESSD_PIN_DIR=$DEMO/bpffs/egressd EGRESSD_SENTINEL=$DEMO/platform/egress-unlocked
# The policy DNS resolves (and, in the verification phase, forwards) through
# the demo's DNS server.
export EGRESSD_RESOLVERS=198.51.100.1 EGRESSD_LOG_LEVEL=warning
# The embedded policy proxy: its CA and ledger in the demo's own directory;
# the only key it accepts; a workspace to check; a restricted model; a
# budget. Its upstream is the fake OpenRouter, trusted by its certificate.
export EGRESSD_CA_DIR=$DEMO/ca EGRESSD_CA_KEY_DIR=$DEMO/ca-key PROXY_DATA_DIR=$DEMO/data
mkdir -p "$PROXY_DATA_DIR"
OPENROUTER_EXPECTED_API_KEY_SHA256=$(printf %s "$KEY" | sha256sum | cut -d' ' -f1)
export OPENROUTER_EXPECTED_API_KEY_SHA256 OPENROUTER_MANAGEMENT_KEY=demo-mgmt
export OPENROUTER_WORKSPACE_ID=demo-ws RESTRICTED_MODELS=openai/gpt-4o MAX_COST_USD=0.05
export UPSTREAM_CA_FILE=$DEMO/cert.pem UPSTREAM_RESOLVE=openrouter.ai:443:198.51.100.3
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
lines = []
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r["event"] == "dns":
        lines.append(f"  {r['phase']:>12} phase: DNS  {r.get('qname', ''):<22} {r.get('qtype', ''):<5}"
                     f" -> {r.get('verdict', '')} ({r.get('rcode', '')})")
    elif r["event"] == "decision":
        host = r["host"] or "(no host named)"
        lines.append(f"  {r['phase']:>12} phase: {r['proto']:>4} to {r['dst']:<20} host {host:<16}"
                     f" -> {r['verdict']} ({r['reason']})")
# The same decision several times in a row (A and AAAA, retries): once, counted.
i = 0
while i < len(lines):
    j = i
    while j + 1 < len(lines) and lines[j + 1] == lines[i]:
        j += 1
    print(lines[i] + (f"  x{j - i + 1}" if j > i else ""))
    i = j + 1
PY
say "Done. Try it yourself: sudo build/egressd exec -- curl https://example.com"
