#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# The embedded policy proxy with real clients and under stress, behind the
# real capture: the Node `openai` SDK as the agent (streaming and not,
# trusting the pod CA only through NODE_EXTRA_CA_CERTS), 200 parallel
# requests at the budget cap, a restart mid-run and a kill -9 between two
# requests. The fixture is the one of proxy.bats: a fake OpenRouter in the
# server namespace, charging --cost (0.001 USD) per completion.

load lib

NODE_DIR=$BATS_TEST_DIRNAME/node

# The SDK comes from the npm registry, pinned by tests/e2e/node/package-lock.json.
# Installed once per run when missing; when it cannot be, the SDK test says
# why and skips (it never passes without running).
setup_file() {
	: >"$BATS_FILE_TMPDIR/node.skip"
	if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
		echo "node and npm are not installed" >"$BATS_FILE_TMPDIR/node.skip"
	elif [ ! -d "$NODE_DIR/node_modules/openai" ]; then
		if ! timeout 120 npm ci --prefix "$NODE_DIR" --no-audit --no-fund --fetch-retries=1 \
			--fetch-timeout=30000 \
			>"$BATS_FILE_TMPDIR/npm.log" 2>&1 3>&-; then
			echo "npm ci could not install the openai SDK (registry unreachable?):" \
				"$(tail -n 3 "$BATS_FILE_TMPDIR/npm.log" | tr '\n' ' ')" \
				>"$BATS_FILE_TMPDIR/node.skip"
		fi
	fi
}

setup() {
	egd_setup_proxy
}

teardown() {
	egd_teardown
}

# status_of BODY : POST a chat completion as the agent; prints the status
status_of() {
	agent curl -sS -m 20 -o /dev/null -w '%{http_code}' --cacert "$T/ca/ca-bundle.crt" \
		--resolve openrouter.ai:443:$SRV4 -H "Authorization: Bearer $KEY" \
		-H 'Content-Type: application/json' -d "$1" \
		https://openrouter.ai/api/v1/chat/completions
}

BODY='{"model":"anthropic/claude-sonnet-4","messages":[{"role":"user","content":"hi"}]}'

# usage_is PYEXPR : evaluate PYEXPR on proxy_usage.json (u)
usage_is() {
	python3 - "$T/data/proxy_usage.json" "$1" <<'PY'
import json, sys
u = json.load(open(sys.argv[1]))
ok = eval(sys.argv[2])
if not ok:
    print("proxy_usage.json:", u, file=sys.stderr)
sys.exit(0 if ok else 1)
PY
}

# The daemon and anything it left behind, gone.
daemon_gone() {
	! kill -0 "$DAEMON_PID" 2>/dev/null && [ -z "$(cat "$CG/daemon/cgroup.procs")" ]
}

@test "the Node openai SDK as the agent: non-streaming and streaming, CA from NODE_EXTRA_CA_CERTS only" {
	reason=$(cat "$BATS_FILE_TMPDIR/node.skip")
	[ -z "$reason" ] || skip "$reason"
	egd_start_proxy
	# Node resolves openrouter.ai itself: a private /etc/hosts gives it any
	# address; the capture takes the connection wherever it goes.
	echo "203.0.113.9 openrouter.ai" >"$T/hosts"
	node_agent() {
		agent unshare -m sh -c 'mount --bind "$0" /etc/hosts && exec "$@"' "$T/hosts" \
			env -u NODE_TLS_REJECT_UNAUTHORIZED -u SSL_CERT_FILE -u SSL_CERT_DIR \
			-u NODE_OPTIONS "$@" node "$NODE_DIR/chat.mjs" "$KEY"
	}
	run node_agent NODE_EXTRA_CA_CERTS="$T/ca/ca.crt"
	echo "$output"
	[ "$status" -eq 0 ]
	[[ "${lines[0]}" == '{"call":"create","content":"hello","usage":true,"cost":0.001}' ]]
	[[ "${lines[1]}" == '{"call":"stream","content":"hello","usage":true,"cost":0.001}' ]]
	# What the upstream got: both sanitized, zdr forced, the stream flag kept.
	python3 - "$T/upstream.jsonl" <<'PY'
import json, sys
posts = [r for r in map(json.loads, open(sys.argv[1])) if r["method"] == "POST"]
assert len(posts) == 2, posts
for r in posts:
    assert r["path"] == "/api/v1/chat/completions", r
    assert r["body"]["provider"]["zdr"] is True, r
    assert r["body"]["model"] == "anthropic/claude-sonnet-4", r
assert not posts[0]["body"].get("stream"), posts[0]
assert posts[1]["body"]["stream"] is True, posts[1]
PY
	usage_is 'u["requests"] == 2 and abs(u["total_cost_usd"] - 0.002) < 1e-9'
	# Without the variable Node does not trust the pod CA: nothing else
	# made the interception acceptable.
	run node_agent
	[ "$status" -ne 0 ]
	[[ "$output" == *"Connection error"* ]] || [[ "$output" == *certificate* ]]
	[ "$(grep -c '"method": "POST"' "$T/upstream.jsonl")" -eq 2 ]
}

@test "a TLS client slow to send its hello still reaches the proxy" {
	egd_start_proxy
	# Silent for four times the first-byte wait (250 ms) after connecting,
	# as a client starved of CPU can be: in the agent phase that is not
	# taken for a server-speaks-first protocol and refused.
	run agent python3 - "$T/ca/ca-bundle.crt" $SRV4 <<'PY'
import socket, ssl, sys, time
s = socket.create_connection((sys.argv[2], 443), timeout=10)
time.sleep(1.0)
ctx = ssl.create_default_context(cafile=sys.argv[1])
t = ctx.wrap_socket(s, server_hostname="openrouter.ai")
t.sendall(b"GET /healthz HTTP/1.1\r\nHost: openrouter.ai\r\nConnection: close\r\n\r\n")
print(t.recv(200).decode().splitlines()[0])
PY
	echo "$output"
	[ "$status" -eq 0 ]
	[[ "$output" == "HTTP/1.1 200"* ]]
	audit_has proto=tls host=openrouter.ai verdict=intercept
}

@test "200 parallel requests at the cap: spend stays within one reservation, the rest is 429" {
	export MAX_COST_USD=0.01 BUDGET_RESERVE_USD=0.001
	# A proxy on each of the 4 workers: admissions race across threads on
	# the one ledger (the ThreadSanitizer run of this file checks them).
	egd_start_proxy --proxy-workers 0
	# One curl per request, all at once, none retried: every one is
	# answered 200 or 429, even when curl is starved of CPU long enough to
	# be slow with its ClientHello.
	agent sh -c 'seq 200 | xargs -P 200 -I{} sh -c '\''
		curl -sS -m 30 -o /dev/null -w "%{http_code}\n" --cacert "$0/ca/ca-bundle.crt" \
			--resolve openrouter.ai:443:$1 -H "Authorization: Bearer $2" \
			-H "Content-Type: application/json" -d "$3" \
			https://openrouter.ai/api/v1/chat/completions'\'' "$0" "$1" "$2" "$3"' \
		"$T" $SRV4 "$KEY" "$BODY" >"$T/codes" 2>"$T/curl.err" || true
	sort "$T/codes" | uniq -c
	sort "$T/curl.err" | uniq -c | sort -rn | head
	python3 - "$T/codes" "$T/data/proxy_usage.json" "$T/data/proxy_inferences.jsonl" \
		"$T/upstream.jsonl" <<'PY'
import collections, json, sys
codes = collections.Counter(l.strip() for l in open(sys.argv[1]) if l.strip())
u = json.load(open(sys.argv[2]))
inf = [json.loads(l) for l in open(sys.argv[3])]
posts = [r for r in map(json.loads, open(sys.argv[4])) if r["method"] == "POST"]
print(codes, u, len(inf), len(posts))
assert sum(codes.values()) == 200, codes
assert set(codes) <= {"200", "429"}, codes
ok = codes["200"]
# Within the cap plus one reservation, and every admitted request settled
# at its real cost.
assert u["total_cost_usd"] <= 0.01 + 0.001 + 1e-9, u
assert u["requests"] == len(posts), (u, len(posts))
assert abs(u["total_cost_usd"] - 0.001 * u["requests"]) < 1e-9, u
# Spend reaches the cap: nothing was refused too early.
assert u["total_cost_usd"] >= 0.01 - 1e-9, u
# One inference line per settled request. A settled answer is withheld
# (429, cost still counted) only once spend is past the cap: never among the
# first nine (0.009 < 0.01). Float sums may land the tenth a hair over the
# cap (0.010000000000000002), and may admit an eleventh.
assert len(inf) == u["requests"] <= 11, (len(inf), u)
served = sum(1 for r in inf if r["status_code"] == 200)
withheld = sum(1 for r in inf if r["status_code"] == 429)
assert served + withheld == len(inf), inf
assert 9 <= served and ok == served, (ok, served, inf)
assert withheld <= u["requests"] - 9, inf
PY
	# Nothing is admitted any more.
	[ "$(status_of "$BODY")" = 429 ]
	usage_is 'u["total_cost_usd"] <= 0.011 + 1e-9'
}

@test "a restart mid-run continues the ledger and keeps the same CA" {
	egd_start_proxy
	for _ in 1 2 3; do
		[ "$(status_of "$BODY")" = 200 ]
	done
	usage_is 'u["requests"] == 3 and abs(u["total_cost_usd"] - 0.003) < 1e-9'
	cp "$T/ca/ca.crt" "$T/ca.before"
	kill -TERM "$DAEMON_PID"
	wait "$DAEMON_PID" || true
	wait_for 5 daemon_gone
	egd_start_proxy
	cmp "$T/ca.before" "$T/ca/ca.crt"
	for _ in 1 2; do
		[ "$(status_of "$BODY")" = 200 ]
	done
	usage_is 'u["requests"] == 5 and abs(u["total_cost_usd"] - 0.005) < 1e-9'
	usage_is 'u["evaluation_run_id"] == "e2e-run"'
	[ "$(wc -l <"$T/data/proxy_inferences.jsonl")" -eq 5 ]
	# The restarted daemon answers from the same ledger.
	run agent curl -sS -m 10 --cacert "$T/ca/ca-bundle.crt" \
		--resolve openrouter.ai:443:$SRV4 -H "Authorization: Bearer $KEY" \
		https://openrouter.ai/api/v1/usage
	python3 -c "import json,sys; assert json.loads(sys.argv[1])['requests'] == 5" "$output"
}

@test "kill -9 between two requests loses nothing recorded" {
	egd_start_proxy
	for _ in 1 2 3 4; do
		[ "$(status_of "$BODY")" = 200 ]
	done
	kill -KILL "$DAEMON_PID"
	wait "$DAEMON_PID" || true
	wait_for 5 daemon_gone
	usage_is 'u["requests"] == 4 and abs(u["total_cost_usd"] - 0.004) < 1e-9'
	python3 - "$T/data/proxy_inferences.jsonl" <<'PY'
import json, sys
data = open(sys.argv[1]).read()
assert data.endswith("\n"), repr(data[-80:])
lines = [json.loads(l) for l in data.splitlines()]
assert len(lines) == 4, lines
assert all(l["status_code"] == 200 for l in lines), lines
PY
	# No temporary file left where the usage file is rewritten.
	[ "$(ls "$T/data")" = "$(printf 'proxy_inferences.jsonl\nproxy_usage.json')" ]
	# And a new daemon picks the ledger up.
	egd_start_proxy
	[ "$(status_of "$BODY")" = 200 ]
	usage_is 'u["requests"] == 5'
}
