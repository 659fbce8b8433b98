#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# The embedded policy proxy behind the real capture: with no
# EGRESSD_INTERCEPT_UPSTREAM, the agent's connections to openrouter.ai (TLS
# on 443, plain HTTP on 80) are served by the daemon itself, which applies
# the OpenRouter policy and forwards to a fake OpenRouter in the server
# namespace. Several workers, so connections accepted away from the proxy's
# worker take the handoff queue (and, with --proxy-workers 0, several
# proxies share one ledger).

load lib


setup() {
	egd_setup_proxy
}

teardown() {
	egd_teardown
}

# chat URL BODY [curl args...] : POST as the agent; prints body then status
chat() {
	local url=$1 body=$2
	shift 2
	agent curl -sS -m 10 --cacert "$T/ca/ca-bundle.crt" \
		--resolve openrouter.ai:443:$SRV4 --resolve openrouter.ai:80:$SRV4 \
		-H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
		-w '\n%{http_code}' -d "$body" "$@" "$url"
}

# upstream_last PYEXPR : evaluate PYEXPR on the last request the fake got (r)
upstream_last() {
	python3 - "$T/upstream.jsonl" "$1" <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
posts = [l for l in lines if l["method"] == "POST"]
r = posts[-1]
sys.exit(0 if eval(sys.argv[2]) else 1)
PY
}

@test "TLS: an allowed request is sanitized, forwarded and answered 200" {
	egd_start_proxy
	run chat https://openrouter.ai/api/v1/chat/completions \
		'{"model":"anthropic/claude-sonnet-4","messages":[{"role":"user","content":"hi"}],"provider":{"data_collection":"allow"},"plugins":[{"id":"web"}]}'
	[ "$status" -eq 0 ]
	[ "${lines[-1]}" = 200 ]
	[[ "$output" == *'"content": "hello"'* ]]
	upstream_last 'r["path"] == "/api/v1/chat/completions"'
	upstream_last 'r["body"]["provider"]["zdr"] is True'
	upstream_last '"data_collection" not in r["body"]["provider"]'
	upstream_last '"plugins" not in r["body"]'
	upstream_last 'r["body"]["usage"] == {"include": True}'
	audit_has event=decision host=openrouter.ai proto=tls verdict=intercept \
		reason=intercept-host
	# The agent trusted the pod CA, and only because it asked to.
	[ -s "$T/ca/ca.crt" ] && [ ! -e "$T/ca/ca.key" ]
	run agent curl -sS -m 5 --resolve openrouter.ai:443:$SRV4 \
		https://openrouter.ai/api/v1/usage
	[ "$status" -eq 60 ]
}

@test "TLS: a restricted model and a wrong key are refused 403 without reaching upstream" {
	egd_start_proxy
	run chat https://openrouter.ai/api/v1/chat/completions \
		'{"model":"openai/gpt-4o","messages":[]}'
	[ "${lines[-1]}" = 403 ]
	[[ "$output" == *'Restricted model(s): openai/gpt-4o'* ]]
	run agent curl -sS -m 10 --cacert "$T/ca/ca-bundle.crt" \
		--resolve openrouter.ai:443:$SRV4 -H 'Authorization: Bearer sk-wrong' \
		-w '\n%{http_code}' -d '{"model":"anthropic/claude-sonnet-4","messages":[]}' \
		https://openrouter.ai/api/v1/chat/completions
	[ "${lines[-1]}" = 403 ]
	! grep -q '"method": "POST"' "$T/upstream.jsonl" 2>/dev/null
}

@test "TLS: GET /api/v1/usage is answered locally; the ledger counts requests" {
	egd_start_proxy
	for _ in 1 2 3; do
		run chat https://openrouter.ai/api/v1/chat/completions \
			'{"model":"anthropic/claude-sonnet-4","messages":[]}'
		[ "${lines[-1]}" = 200 ]
	done
	run agent curl -sS -m 10 --cacert "$T/ca/ca-bundle.crt" \
		--resolve openrouter.ai:443:$SRV4 -H "Authorization: Bearer $KEY" \
		-w '\n%{http_code}' https://openrouter.ai/api/v1/usage
	[ "${lines[-1]}" = 200 ]
	python3 -c "import json,sys; assert json.loads(sys.argv[1])['requests'] == 3" \
		"$(printf '%s\n' "${lines[@]:0:${#lines[@]}-1}")"
	! grep -q '"path": "/api/v1/usage"' "$T/upstream.jsonl"
	python3 - "$T/data/proxy_usage.json" <<'PY'
import json, sys
u = json.load(open(sys.argv[1]))
assert u["requests"] == 3, u
assert abs(u["total_cost_usd"] - 0.003) < 1e-9, u
assert u["evaluation_run_id"] == "e2e-run", u
PY
	[ "$(wc -l <"$T/data/proxy_inferences.jsonl")" -eq 3 ]
	# Three completions and the usage answer.
	[ "$(metric 'egressd_proxy_requests_total{code="200"}')" = 4 ]
}

@test "TLS: a streaming request is relayed as server-sent events" {
	egd_start_proxy
	run chat https://openrouter.ai/api/v1/chat/completions \
		'{"model":"anthropic/claude-sonnet-4","stream":true,"messages":[]}' -N
	[ "${lines[-1]}" = 200 ]
	[[ "$output" == *'"content": "hel"'* ]]
	[[ "$output" == *'data: [DONE]'* ]]
	upstream_last 'r["body"]["stream"] is True'
	# The cost came from the final chunk's usage.
	python3 - "$T/data/proxy_usage.json" <<'PY'
import json, sys
u = json.load(open(sys.argv[1]))
assert u["requests"] == 1 and abs(u["total_cost_usd"] - 0.001) < 1e-9, u
PY
}

@test "plain HTTP to openrouter.ai on port 80 gets the same policy" {
	egd_start_proxy
	run chat http://openrouter.ai/api/v1/chat/completions \
		'{"model":"anthropic/claude-sonnet-4","messages":[],"transforms":["x"]}'
	[ "${lines[-1]}" = 200 ]
	upstream_last 'r["body"]["provider"]["zdr"] is True and "transforms" not in r["body"]'
	run chat http://openrouter.ai/api/v1/chat/completions '{"model":"openai/gpt-4o"}'
	[ "${lines[-1]}" = 403 ]
	audit_has host=openrouter.ai proto=http verdict=intercept dst=$SRV4:80
}

@test "an agent given the base URL http://127.0.0.1:8080 reaches the proxy's own listener" {
	egd_start_proxy
	run chat http://127.0.0.1:8080/api/v1/chat/completions \
		'{"model":"anthropic/claude-sonnet-4","messages":[]}'
	[ "${lines[-1]}" = 200 ]
	upstream_last 'r["body"]["provider"]["zdr"] is True'
	run chat http://127.0.0.1:8080/api/v1/chat/completions '{"model":"openai/gpt-4o"}'
	[ "${lines[-1]}" = 403 ]
}

# twelve_chats: 12 requests on 12 connections at once, all answered 200 and
# all counted in the one ledger.
twelve_chats() {
	local pids=()
	for i in $(seq 1 12); do
		chat https://openrouter.ai/api/v1/chat/completions \
			'{"model":"anthropic/claude-sonnet-4","messages":[]}' >"$T/out.$i" 3>&- &
		pids+=($!)
	done
	# Not a bare wait: the daemon is a background job too.
	wait "${pids[@]}"
	for i in $(seq 1 12); do
		[ "$(tail -n1 "$T/out.$i")" = 200 ]
	done
	python3 -c "import json,sys; assert json.load(open(sys.argv[1]))['requests'] == 12" \
		"$T/data/proxy_usage.json"
}

@test "one proxy worker (the default) serves connections every worker accepted" {
	# 4 workers: the 12 connections spread over their listeners, and those
	# of workers 1-3 reach worker 0's proxy through the handoff queue.
	egd_start_proxy
	grep -q 'embedded on 1 of 4 workers' "$T/daemon.err"
	twelve_chats
}

@test "a proxy on every worker (--proxy-workers 0): many connections share one ledger" {
	egd_start_proxy --proxy-workers 0
	grep -q 'embedded on 4 of 4 workers' "$T/daemon.err"
	twelve_chats
}

@test "without the keys the daemon still starts and answers 503" {
	unset OPENROUTER_EXPECTED_API_KEY_SHA256 OPENROUTER_MANAGEMENT_KEY
	egd_start_proxy
	run chat https://openrouter.ai/api/v1/chat/completions \
		'{"model":"anthropic/claude-sonnet-4","messages":[]}'
	[ "${lines[-1]}" = 503 ]
	[[ "$output" == *'enforcement is not configured'* ]]
}

@test "proxy settings given as flags win over the environment" {
	# The environment says otherwise for each; the flags must be what counts.
	export MAX_REQUEST_BYTES=10485760 EGRESSD_PROXY_HTTP_LISTEN=127.0.0.1:8080
	unset OPENROUTER_MANAGEMENT_KEY
	printf 'mgmt-test\n' >"$T/mgmt.key"
	egd_start_proxy --max-request-bytes 100 --restricted-models anthropic/claude-sonnet-4 \
		--proxy-http-listen 127.0.0.1:8090 --openrouter-management-key-file "$T/mgmt.key"
	local big
	big=$(head -c 200 /dev/zero | tr '\0' x)
	run chat https://openrouter.ai/api/v1/chat/completions \
		'{"model":"openai/gpt-4o","messages":[{"role":"user","content":"'"$big"'"}]}'
	[ "${lines[-1]}" = 413 ]
	# Under 100 bytes, and openai/gpt-4o is no longer the restricted one; a
	# management key not read from its file would have meant 503.
	run chat https://openrouter.ai/api/v1/chat/completions '{"model":"openai/gpt-4o","messages":[]}'
	[ "${lines[-1]}" = 200 ]
	run chat http://127.0.0.1:8090/api/v1/chat/completions \
		'{"model":"anthropic/claude-sonnet-4","messages":[]}'
	[ "${lines[-1]}" = 403 ]
	[[ "$output" == *'Restricted model(s): anthropic/claude-sonnet-4'* ]]
}

@test "a bad proxy flag stops the daemon at start, naming the flag" {
	run nsenter --net="/run/netns/$NS_A" \
		"$EGRESSD" run --pin "$PIN" --sentinel "$T/sentinel" --admin-listen off \
		--max-cost-usd lots
	[ "$status" -eq 2 ]
	[[ "$output" == *'bad value "lots" for MAX_COST_USD (--max-cost-usd, from the flag)'* ]]
}

@test "an unusable CA directory stops the daemon at start" {
	# A file where the key directory should be: the CA cannot be opened.
	: >"$T/cakey-file"
	EGRESSD_CA_KEY_DIR=$T/cakey-file run nsenter --net="/run/netns/$NS_A" \
		sh -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' "$CG/daemon" \
		"$EGRESSD" run --pin "$PIN" --sentinel "$T/sentinel" --admin-listen off
	[ "$status" -ne 0 ]
	[[ "$output" == *"pod CA"* ]]
}

@test "EGRESSD_MAX_CONNS bounds the proxy's connections too: one more is reset" {
	# Without the bound an agent could hold any number of TLS sessions to
	# the LLM host (the engine hands each one to the proxy and forgets it)
	# or of connections to the proxy's own listener.
	egd_start_proxy --max-conns 4
	agent python3 - "$SRV4" "$T/ca/ca-bundle.crt" <<'PY'
import socket, ssl, sys, time

addr, cafile = sys.argv[1], sys.argv[2]
ctx = ssl.create_default_context(cafile=cafile)

def dial():
    s = socket.create_connection((addr, 443), timeout=5)
    return ctx.wrap_socket(s, server_hostname="openrouter.ai")

def refused():
    try:
        dial().close()
        return False
    except (OSError, ssl.SSLError):
        return True

held = [dial() for _ in range(4)]  # handshakes done: the proxy holds them
assert refused(), "a fifth connection was served beyond --max-conns 4"
held.pop().close()
deadline = time.time() + 5
while True:  # the proxy gives the slot back once it reads the close
    try:
        held.append(dial())
        break
    except (OSError, ssl.SSLError):
        assert time.time() < deadline, "no slot came back after a close"
        time.sleep(0.1)
assert refused(), "the limit did not hold after a slot was reused"

def listener_answers():
    # The proxy's own plain listener, which the agent reaches directly.
    # A reset can arrive before connect() returns, so the dial is inside
    # the try as well.
    try:
        with socket.create_connection(("127.0.0.1", 8080), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            return s.recv(64).startswith(b"HTTP/1.1 ")
    except OSError:
        return False

assert not listener_answers(), "the proxy's listener served beyond --max-conns 4"
held.pop().close()
deadline = time.time() + 5
while not listener_answers():
    assert time.time() < deadline, "the listener got no slot after a close"
    time.sleep(0.1)
PY
	[ "$(metric egressd_overload_resets_total)" -ge 2 ]
	[ "$(metric egressd_proxy_overload_resets_total)" -ge 1 ]
}
