#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# `egressd router`, the sandboxes' ingress, end to end. The router runs in
# the client namespace ($NS_A) without BPF, cgroups or capture; sandboxes
# are servers (fixtures/sandbox.py) in their own namespace ($NS_S) behind a
# veth. The router resolves names with the system's configuration, and
# `ip netns exec` gives it this test's /etc/hosts and /etc/resolv.conf
# (bind-mounted from /etc/netns/$NS_A/, removed in teardown): the
# <id>.<ns>.svc.cluster.local names point at $SRV4, and the only
# nameserver is a closed port on the namespace's own loopback, so an
# unknown name fails without a packet leaving the test's namespaces.
# Every case of section 1 of the contract, and the reference router's
# published checks (same inputs, same statuses and messages), is a test.

load lib

TOKEN=router-test-token-0123456789
RT=127.0.0.1:8080
ADMIN=127.0.0.1:9090

setup() {
	[ "$(id -u)" -eq 0 ] || skip "needs root (network namespaces)"
	[ -x "$EGRESSD" ] || skip "egressd not built at $EGRESSD"
	egd_setup_net
	mkdir -p "/etc/netns/$NS_A"
	cat >"/etc/netns/$NS_A/hosts" <<-EOF
		127.0.0.1 localhost
		$SRV4 box.default.svc.cluster.local
		$SRV4 box.team-a.svc.cluster.local
		$SRV4 box.default.svc.corp.internal
		$SRV4 stale.default.svc.cluster.local
		$SRV4 test-box.prod.svc.cluster.local
		$SRV4 test-sandbox.default.svc.cluster.local
	EOF
	echo "nameserver 127.0.0.1" >"/etc/netns/$NS_A/resolv.conf"
	sandbox_start
}

teardown() {
	[ -n "${SB2_PID:-}" ] && kill "$SB2_PID" 2>/dev/null
	[ -n "${DNS_PID:-}" ] && kill "$DNS_PID" 2>/dev/null
	egd_teardown
	[ -n "${NS_A:-}" ] && rm -rf "/etc/netns/$NS_A"
	return 0
}

# sandbox_start [sandbox.py flags]: the sandbox on $SRV4:8888, [$SRV6]:8888,
# and $SRV4:9000 and :9999 (other ports).
sandbox_start() {
	rm -f "$T/sb.ready"
	nsenter --net="/run/netns/$NS_S" python3 "$FIX/sandbox.py" --listen $SRV4:8888 \
		--listen "[$SRV6]:8888" --listen $SRV4:9000 --listen $SRV4:9999 --ready "$T/sb.ready" "$@" \
		>"$T/sb.out" 2>&1 3>&- &
	SERVERS_PID=$!
	wait_for 10 test -e "$T/sb.ready"
}

# router_start [flags...]: the router in $NS_A with this test's hosts file;
# ROUTER_* from the environment as exported by the test.
router_start() {
	ip netns exec "$NS_A" "$EGRESSD" router --router-listen $RT \
		--router-admin-listen $ADMIN "$@" >"$T/access.log" 2>"$T/daemon.err" 3>&- &
	DAEMON_PID=$!
	wait_for 10 in_a curl -sf "http://$ADMIN/healthz" || {
		cat "$T/daemon.err" >&2
		return 1
	}
}

# not CMD...: succeeds when CMD fails. A bare "! CMD" would not fail a
# test: bash's errexit ignores negated commands.
not() {
	if "$@"; then
		return 1
	fi
}

in_a() {
	nsenter --net="/run/netns/$NS_A" "$@"
}

# rq [curl args...] URLPATH: a request through the router; prints the body,
# then the status on a line of its own.
rq() {
	local path=${*: -1}
	in_a curl -sS -m 20 -w '\n%{http_code}' "${@:1:$#-1}" "http://$RT$path"
}

# detail BODY_AND_STATUS: {"detail": ...} of rq's output
detail() {
	head -n -1 <<<"$1" | jq -r .detail
}

status_of() {
	tail -n 1 <<<"$1"
}

# upstream_header NAME OUTPUT: the values the sandbox received for NAME
upstream_header() {
	head -n -1 <<<"$2" | jq -r --arg n "$1" \
		'.headers[] | select(.[0] | ascii_downcase == ($n | ascii_downcase)) | .[1]'
}

metric() {
	in_a curl -s "http://$ADMIN/metrics" | awk -v m="$1" 'index($0, m " ") == 1 { print $2 }'
}

# The router's peak resident set, in kB.
hwm_kb() {
	awk '/VmHWM/ { print $2 }' "/proc/$DAEMON_PID/status"
}

# metric_is NAME VALUE: for wait_for, which needs a command it can rerun
metric_is() {
	[ "$(metric "$1")" = "$2" ]
}

open_router() {
	ALLOW_UNAUTHENTICATED_ROUTER=true router_start "$@"
}

# ---- start-up and auth ----------------------------------------------------

@test "router: refuses to start without a token unless told to run open" {
	run ip netns exec "$NS_A" env -u ROUTER_AUTH_TOKEN "$EGRESSD" router --router-listen $RT
	[ "$status" -eq 2 ]
	[[ "$output" == *"refusing to start without ROUTER_AUTH_TOKEN"* ]]
	run ip netns exec "$NS_A" env ALLOW_UNAUTHENTICATED_ROUTER=maybe "$EGRESSD" router
	[ "$status" -eq 2 ]
	[[ "$output" == *"ALLOW_UNAUTHENTICATED_ROUTER"* ]]
}

@test "router: with a token, no or a wrong Authorization is 401 with the reference's messages" {
	ROUTER_AUTH_TOKEN=$TOKEN router_start
	out=$(rq -H 'X-Sandbox-ID: box' /)
	[ "$(status_of "$out")" = 401 ]
	[ "$(detail "$out")" = "Missing or invalid Authorization header." ]
	out=$(rq -H 'X-Sandbox-ID: box' -H "Authorization: Basic $TOKEN" /)
	[ "$(detail "$out")" = "Missing or invalid Authorization header." ]
	out=$(rq -H 'X-Sandbox-ID: box' -H "Authorization: Bearer $TOKEN extra" /)
	[ "$(detail "$out")" = "Missing or invalid Authorization header." ]
	out=$(rq -H 'X-Sandbox-ID: box' -H "Authorization: Bearer ${TOKEN}x" /)
	[ "$(status_of "$out")" = 401 ]
	[ "$(detail "$out")" = "Invalid token." ]
	# Auth comes before validation, as in the reference.
	out=$(rq /)
	[ "$(status_of "$out")" = 401 ]
	# The sandbox saw none of these.
	[ "$(metric 'egressd_router_upstream_connections')" = 0 ]
}

@test "router: the right token routes; Authorization is never forwarded; /healthz needs none" {
	ROUTER_AUTH_TOKEN=$TOKEN router_start
	out=$(rq -H 'X-Sandbox-ID: box' -H "Authorization: bearer $TOKEN" /)
	[ "$(status_of "$out")" = 200 ]
	[ -z "$(upstream_header authorization "$out")" ]
	out=$(rq /healthz)
	[ "$(status_of "$out")" = 200 ]
	[ "$(head -n 1 <<<"$out")" = '{"status":"ok"}' ]
}

@test "router: ROUTER_AUTH_TOKEN_FILE is read, whitespace trimmed" {
	printf '  %s\n' "$TOKEN" >"$T/token"
	ROUTER_AUTH_TOKEN_FILE=$T/token router_start
	out=$(rq -H 'X-Sandbox-ID: box' -H "Authorization: Bearer $TOKEN" /)
	[ "$(status_of "$out")" = 200 ]
	out=$(rq -H 'X-Sandbox-ID: box' -H "Authorization: Bearer nope" /)
	[ "$(status_of "$out")" = 401 ]
}

@test "router: auth off (ALLOW_UNAUTHENTICATED_ROUTER) still drops Authorization" {
	open_router
	out=$(rq -H 'X-Sandbox-ID: box' -H 'Authorization: Bearer app-secret' /)
	[ "$(status_of "$out")" = 200 ]
	[ -z "$(upstream_header authorization "$out")" ]
}

@test "router: the reference router's published unit-test cases, replayed against the C router" {
	# test_sandbox_router.py in kubernetes-sigs/agent-sandbox: same inputs,
	# same statuses and messages. Where the reference mocks its client to
	# fail, the name here does not resolve (my-sandbox, unreachable-sandbox).
	open_router
	out=$(rq /healthz)                                          # TestHealthCheck
	[ "$(status_of "$out")" = 200 ]
	[ "$(head -n 1 <<<"$out")" = '{"status":"ok"}' ]
	out=$(rq -X POST /execute)                                  # missing ID
	[ "$(status_of "$out")" = 400 ]
	[ "$(detail "$out")" = "X-Sandbox-ID header is required." ]
	out=$(rq -X POST -H 'X-Sandbox-ID: my-sandbox' -H 'X-Sandbox-Namespace: bad namespace!' /execute)
	[ "$(status_of "$out")" = 400 ]
	[ "$(detail "$out")" = "Invalid namespace format." ]
	out=$(rq -X POST -H 'X-Sandbox-ID: my-sandbox' -H 'X-Sandbox-Port: not-a-number' /execute)
	[ "$(status_of "$out")" = 400 ]
	[ "$(detail "$out")" = "Invalid port format." ]
	out=$(rq -X POST -H 'X-Sandbox-ID: bad.sandbox.id' /execute)
	[ "$(status_of "$out")" = 400 ]
	[ "$(detail "$out")" = "Invalid sandbox ID format." ]
	out=$(rq -X POST -H 'X-Sandbox-ID: my-sandbox' -H 'X-Sandbox-Namespace: my-namespace' /execute)
	[ "$(status_of "$out")" = 502 ]                             # hyphens valid: routed
	[[ "$(detail "$out")" == "Could not connect to the backend sandbox"* ]]
	out=$(rq -X POST -H 'X-Sandbox-ID: my-sandbox' /execute)    # auth off by choice
	[ "$(status_of "$out")" = 502 ]
	out=$(rq -H 'X-Sandbox-ID: unreachable-sandbox' -d '{"command": "echo hello"}' /execute)
	[ "$(status_of "$out")" = 502 ]
	[[ "$(detail "$out")" == *unreachable-sandbox* ]]
	out=$(rq -X POST -H 'X-Sandbox-ID: test-box' -H 'X-Sandbox-Namespace: prod' \
		-H 'X-Sandbox-Port: 9999' /some/path)                   # target construction
	[ "$(upstream_header host "$out")" = "test-box.prod.svc.cluster.local:9999" ]
	[ "$(head -n -1 <<<"$out" | jq -r .target)" = /some/path ]
	out=$(rq -X POST -H 'X-Sandbox-ID: test-box' -H 'X-Sandbox-Namespace: prod' \
		-H 'X-Sandbox-Port: 9999' -H 'Host: evil.example.com' /execute)
	[[ "$(upstream_header host "$out")" != *evil.example.com* ]]
	out=$(rq -H 'X-Sandbox-ID: test-box' -H 'X-Sandbox-Namespace: prod' \
		-H 'X-Sandbox-Port: 9999' '/execute?cmd=ls&arg=-la')      # query forwarded
	[ "$(head -n -1 <<<"$out" | jq -r .target)" = '/execute?cmd=ls&arg=-la' ]
	body='{"key": "value", "padding": "'$(head -c 2048 /dev/zero | tr '\0' x)'"}'
	out=$(rq -H 'X-Sandbox-ID: test-sandbox' -d "$body" /execute)   # body streamed
	[ "$(head -n -1 <<<"$out" | jq -r .body_len)" = "${#body}" ]
	kill "$DAEMON_PID" && wait "$DAEMON_PID" || true
	# TestAuthentication with ROUTER_AUTH_TOKEN=secret-token.
	ROUTER_AUTH_TOKEN=secret-token router_start
	out=$(rq -X POST -H 'X-Sandbox-ID: my-sandbox' -H 'Authorization: Bearer secret-token' /execute)
	[ "$(status_of "$out")" = 502 ]
	out=$(rq -X POST -H 'X-Sandbox-ID: my-sandbox' /execute)
	[ "$(status_of "$out")" = 401 ]
	[ "$(detail "$out")" = "Missing or invalid Authorization header." ]
	out=$(rq -X POST -H 'X-Sandbox-ID: my-sandbox' -H 'Authorization: Bearer wrong-token' /execute)
	[ "$(status_of "$out")" = 401 ]
	[ "$(detail "$out")" = "Invalid token." ]
}

# ---- validation: the reference's cases ------------------------------------

@test "router: every 400 of the contract, with the reference's message" {
	open_router
	check() { # EXPECTED_DETAIL curl-args...
		local want=$1 out
		shift
		out=$(rq "$@" /)
		[ "$(status_of "$out")" = 400 ] || { echo "status for $*: $out"; return 1; }
		[ "$(detail "$out")" = "$want" ] || { echo "detail for $*: $out"; return 1; }
	}
	check "X-Sandbox-ID header is required."
	check "X-Sandbox-ID header is required." -H 'X-Sandbox-ID;'
	check "Invalid sandbox ID format." -H 'X-Sandbox-ID: a.b'
	check "Invalid sandbox ID format." -H 'X-Sandbox-ID: Bench'
	check "Invalid sandbox ID format." -H "X-Sandbox-ID: $(printf 'a%.0s' {1..64})"
	check "Invalid sandbox ID format." -H 'X-Sandbox-ID: -box'
	check "Invalid sandbox ID format." -H 'X-Sandbox-ID: box-'
	check "Invalid sandbox ID format." -H 'X-Sandbox-ID: box_1'
	check "Invalid sandbox ID format." -H 'X-Sandbox-ID: evil.com:80/x#'
	check "Invalid namespace format." -H 'X-Sandbox-ID: box' -H 'X-Sandbox-Namespace: Team'
	check "Invalid namespace format." -H 'X-Sandbox-ID: box' -H 'X-Sandbox-Namespace: a.b'
	check "Invalid namespace format." -H 'X-Sandbox-ID: box' -H 'X-Sandbox-Namespace;'
	for p in abc 0 65536 +8888 8_888 -1 ' 8888x' 99999999999; do
		check "Invalid port format." -H 'X-Sandbox-ID: box' -H "X-Sandbox-Port: $p"
	done
	check "Invalid target IP address format." -H 'X-Sandbox-ID: box' -H 'X-Sandbox-Pod-IP: not-an-ip'
	check "Invalid target IP address format." -H 'X-Sandbox-ID: box' -H 'X-Sandbox-Pod-IP: 10.0.0.1:80'
	for ip in 127.0.0.1 169.254.169.254 224.0.0.1 0.0.0.0 255.255.255.255 ::1 :: fe80::1 \
		ff02::1 ::ffff:127.0.0.1 ::ffff:169.254.169.254 fd00:ec2::254 100.100.100.200; do
		check "Invalid target IP address." -H 'X-Sandbox-ID: box' -H "X-Sandbox-Pod-IP: $ip"
	done
	# The order of the checks: ID before namespace before port before IP.
	check "Invalid sandbox ID format." -H 'X-Sandbox-ID: B' -H 'X-Sandbox-Namespace: N' \
		-H 'X-Sandbox-Port: x'
	check "Invalid namespace format." -H 'X-Sandbox-ID: b' -H 'X-Sandbox-Namespace: N' \
		-H 'X-Sandbox-Port: x'
	check "Invalid port format." -H 'X-Sandbox-ID: b' -H 'X-Sandbox-Port: x' \
		-H 'X-Sandbox-Pod-IP: 127.0.0.1'
	[ "$(metric 'egressd_router_upstream_connections')" = 0 ]
}

@test "router: header names are case-insensitive; a 63-character ID and leading-zero port route" {
	open_router
	out=$(rq -H 'x-sandbox-id: box' -H 'X-SANDBOX-PORT: 09000' /)
	[ "$(status_of "$out")" = 200 ]
	[ "$(upstream_header host "$out")" = "box.default.svc.cluster.local:9000" ]
	id=$(printf 'b%.0s' {1..63})
	out=$(rq -H "X-Sandbox-ID: $id" /)
	# Valid, so routed: the name does not exist, hence 502 naming the ID.
	[ "$(status_of "$out")" = 502 ]
	[ "$(detail "$out")" = "Could not connect to the backend sandbox: $id" ]
}

# ---- routing --------------------------------------------------------------

@test "router: raw path and query reach the sandbox byte for byte; Host is the target" {
	open_router
	out=$(rq -H 'X-Sandbox-ID: box' -H 'Host: evil.example.com' --path-as-is \
		'/a/%2F..%2Fb/./%2E%2e/c?x=1&y=%2F..%2F&z=%zz')
	[ "$(status_of "$out")" = 200 ]
	[ "$(head -n -1 <<<"$out" | jq -r .target)" = '/a/%2F..%2Fb/./%2E%2e/c?x=1&y=%2F..%2F&z=%zz' ]
	[ "$(upstream_header host "$out")" = "box.default.svc.cluster.local:8888" ]
}

@test "router: namespace, port and CLUSTER_DOMAIN pick the target" {
	CLUSTER_DOMAIN=corp.internal open_router
	out=$(rq -H 'X-Sandbox-ID: box' -H 'X-Sandbox-Port: 9000' /)
	[ "$(upstream_header host "$out")" = "box.default.svc.corp.internal:9000" ]
	out=$(rq -H 'X-Sandbox-ID: box' -H 'X-Sandbox-Namespace: team-a' /)
	# team-a under corp.internal is not in the hosts file.
	[ "$(status_of "$out")" = 502 ]
}

@test "router: the namespace header routes to <id>.<ns>.svc.cluster.local" {
	open_router
	out=$(rq -H 'X-Sandbox-ID: box' -H 'X-Sandbox-Namespace: team-a' /)
	[ "$(status_of "$out")" = 200 ]
	[ "$(upstream_header host "$out")" = "box.team-a.svc.cluster.local:8888" ]
}

@test "router: X-Sandbox-Pod-IP routes to the address, v4 and v6; ROUTER_ALLOWED_CIDRS bounds it" {
	ROUTER_ALLOWED_CIDRS=198.51.100.0/24,2001:db8::/64 open_router
	out=$(rq -H 'X-Sandbox-ID: nosuchname' -H "X-Sandbox-Pod-IP: $SRV4" /)
	[ "$(status_of "$out")" = 200 ]
	[ "$(upstream_header host "$out")" = "$SRV4:8888" ]
	out=$(rq -H 'X-Sandbox-ID: nosuchname' -H "X-Sandbox-Pod-IP: 2001:DB8::1" /)
	[ "$(status_of "$out")" = 200 ]
	[ "$(upstream_header host "$out")" = "[$SRV6]:8888" ]
	out=$(rq -H 'X-Sandbox-ID: box' -H "X-Sandbox-Pod-IP: 203.0.113.5" /)
	[ "$(status_of "$out")" = 400 ]
	[ "$(detail "$out")" = "Invalid target IP address." ]
}

@test "router: 502 for a refused port and for an unknown name, naming the sandbox" {
	open_router
	out=$(rq -H 'X-Sandbox-ID: box' -H 'X-Sandbox-Port: 9' /)
	[ "$(status_of "$out")" = 502 ]
	[ "$(detail "$out")" = "Could not connect to the backend sandbox: box" ]
	out=$(rq -H 'X-Sandbox-ID: nosuch' /)
	[ "$(status_of "$out")" = 502 ]
	[ "$(detail "$out")" = "Could not connect to the backend sandbox: nosuch" ]
}

@test "router: names come from DNS too, and a lookup that hangs delays no other request" {
	# nsenter directly, not in_a: a function run with & is a subshell whose
	# PID is not the server's, and teardown kills by PID.
	nsenter --net="/run/netns/$NS_A" python3 "$FIX/dns.py" --map "dnsbox.default.svc.cluster.local=$SRV4" \
		--log "$T/dns.log" --ready "$T/dns.ready" >/dev/null 2>&1 3>&- &
	DNS_PID=$!
	wait_for 5 test -e "$T/dns.ready"
	open_router
	out=$(rq -H 'X-Sandbox-ID: dnsbox' /)
	[ "$(status_of "$out")" = 200 ]
	[ "$(upstream_header host "$out")" = "dnsbox.default.svc.cluster.local:8888" ]
	grep -qx dnsbox.default.svc.cluster.local "$T/dns.log"
	# A name whose nameserver never answers: 504 at the request's timeout.
	(rq -H 'X-Sandbox-ID: slow' -H 'X-Sandbox-Namespace: x' -H 'X-Sandbox-Timeout: 3' / \
		>"$T/slow.out") &
	slow=$!
	wait_for 2 grep -q '^slow\.' "$T/dns.log"
	# Meanwhile a fresh lookup (another port, so no pooled connection) is
	# answered at once: lookups do not queue behind the stuck one.
	start=$(date +%s%N)
	out=$(rq -H 'X-Sandbox-ID: dnsbox' -H 'X-Sandbox-Port: 9000' /)
	[ "$(status_of "$out")" = 200 ]
	[ $((($(date +%s%N) - start) / 1000000)) -lt 1000 ]
	wait "$slow"
	[ "$(status_of "$(cat "$T/slow.out")")" = 504 ]
	[ "$(detail "$(cat "$T/slow.out")")" = "Timed out waiting for the backend sandbox: slow" ]
}

@test "router: 504 when the sandbox is slower than X-Sandbox-Timeout, capped by PROXY_TIMEOUT_SECONDS" {
	PROXY_TIMEOUT_SECONDS=2 open_router
	start=$SECONDS
	out=$(rq -H 'X-Sandbox-ID: box' -H 'X-Sandbox-Timeout: 1' '/slow?s=4')
	[ "$(status_of "$out")" = 504 ]
	[ "$(detail "$out")" = "Timed out waiting for the backend sandbox: box" ]
	[ $((SECONDS - start)) -le 2 ]
	# Above the cap, and non-numeric, fall back to the cap (2 s): still 504.
	for t in 60 abc -1 0 inf nan 1e3; do
		start=$SECONDS
		out=$(rq -H 'X-Sandbox-ID: box' -H "X-Sandbox-Timeout: $t" '/slow?s=4')
		[ "$(status_of "$out")" = 504 ] || { echo "$t: $out"; false; }
		[ $((SECONDS - start)) -ge 1 ]
		[ $((SECONDS - start)) -le 3 ]
	done
	# Within the timeout: answered.
	out=$(rq -H 'X-Sandbox-ID: box' -H 'X-Sandbox-Timeout: 2' '/slow?s=0.5')
	[ "$(status_of "$out")" = 200 ]
}

@test "router: the timeout bounds idle time, not a stream's total length" {
	PROXY_TIMEOUT_SECONDS=1 open_router
	# Four events 0.6 s apart: 2.4 s in all, never 1 s without a byte.
	out=$(rq -H 'X-Sandbox-ID: box' '/sse?n=4&gap=0.6')
	[ "$(status_of "$out")" = 200 ]
	[ "$(grep -c '^data: tick' <<<"$out")" = 4 ]
}

# ---- headers --------------------------------------------------------------

@test "router: X-Sandbox-*, hop-by-hop and Connection-named headers stay behind; app headers pass" {
	open_router
	out=$(rq -H 'X-Sandbox-ID: box' -H 'X-Sandbox-Namespace: default' -H 'X-Sandbox-Port: 8888' \
		-H 'X-Sandbox-Timeout: 30' -H 'Connection: keep-alive, X-Custom-Hop' \
		-H 'X-Custom-Hop: 1' -H 'X-App-Header: kept' -H 'Keep-Alive: timeout=5' -H 'TE: trailers' \
		-H 'Proxy-Authorization: Basic eA==' -H 'Upgrade: h2c' /)
	[ "$(status_of "$out")" = 200 ]
	names=$(head -n -1 <<<"$out" | jq -r '.headers[][0] | ascii_downcase' | sort | tr '\n' ' ')
	[ "$names" = "accept host user-agent x-app-header x-forwarded-for x-forwarded-proto " ]
}

@test "router: X-Forwarded-For is the peer unless the peer is a trusted proxy" {
	open_router
	out=$(rq -H 'X-Sandbox-ID: box' -H 'X-Forwarded-For: 6.6.6.6' -H 'X-Forwarded-Proto: https' /)
	[ "$(upstream_header x-forwarded-for "$out")" = 127.0.0.1 ]
	[ "$(upstream_header x-forwarded-proto "$out")" = http ]
	kill "$DAEMON_PID" && wait "$DAEMON_PID" || true
	ROUTER_TRUSTED_PROXIES=127.0.0.0/8 open_router
	out=$(rq -H 'X-Sandbox-ID: box' -H 'X-Forwarded-For: 6.6.6.6' -H 'X-Forwarded-Proto: https' /)
	[ "$(upstream_header x-forwarded-for "$out")" = "6.6.6.6, 127.0.0.1" ]
	[ "$(upstream_header x-forwarded-proto "$out")" = https ]
}

@test "router: hop-by-hop response headers are removed; one Date, one Server" {
	open_router
	in_a curl -sS -D "$T/h" -o /dev/null -H 'X-Sandbox-ID: box' "http://$RT/hop"
	grep -qi '^x-kept: 1' "$T/h"
	not grep -qi '^x-hop:' "$T/h"
	not grep -qi '^keep-alive:' "$T/h"
	[ "$(grep -ci '^date:' "$T/h")" = 1 ]
	[ "$(grep -ci '^server:' "$T/h")" = 1 ]
}

# ---- bodies ---------------------------------------------------------------

@test "router: gzip answers pass through untouched (curl --compressed works, length kept)" {
	open_router
	for p in /gzip /gzip-chunked; do
		in_a curl -sS -m 10 --compressed -H 'X-Sandbox-ID: box' -o "$T/plain" "http://$RT$p"
		[ "$(head -n 1 "$T/plain")" = "line 0 of a compressible answer" ]
		[ "$(wc -l <"$T/plain")" = 4000 ]
		# Without --compressed, the gzip bytes themselves arrive.
		in_a curl -sS -m 10 -H 'X-Sandbox-ID: box' -o "$T/raw.gz" "http://$RT$p"
		gzip -t "$T/raw.gz"
	done
	in_a curl -sS -D "$T/h" -o /dev/null -H 'X-Sandbox-ID: box' "http://$RT/gzip"
	grep -qi '^content-encoding: gzip' "$T/h"
	len=$(awk 'tolower($1) == "content-length:" { print $2 }' "$T/h" | tr -d '\r')
	[ "$len" = "$(stat -c %s "$T/raw.gz")" ]
}

@test "router: a 20 MB upload streams to a slow sandbox with bounded router memory" {
	kill "$SERVERS_PID" && wait "$SERVERS_PID" 2>/dev/null || true
	sandbox_start --slow-read 0.002
	open_router
	rq -H 'X-Sandbox-ID: box' / >/dev/null
	base=$(hwm_kb)
	head -c $((20 << 20)) /dev/urandom >"$T/up.bin"
	want=$(sha256sum "$T/up.bin" | cut -c1-64)
	for framing in length chunked; do
		extra=()
		[ $framing = chunked ] && extra=(-H 'Transfer-Encoding: chunked')
		out=$(rq -H 'X-Sandbox-ID: box' "${extra[@]}" --data-binary @"$T/up.bin" /upload)
		[ "$(status_of "$out")" = 200 ]
		[ "$(head -n -1 <<<"$out" | jq -r .body_len)" = $((20 << 20)) ]
		[ "$(head -n -1 <<<"$out" | jq -r .body_sha256)" = "$want" ]
	done
	# The router's peak resident size grows far less than the body: its
	# buffers are bounded (a few 64 KiB buffers per connection).
	echo "router VmHWM ${base} kB before, $(hwm_kb) kB after"
	[ $(($(hwm_kb) - base)) -lt 10240 ]
}

@test "router: a 20 MB download to a slow client keeps router memory bounded" {
	open_router
	rq -H 'X-Sandbox-ID: box' / >/dev/null
	base=$(hwm_kb)
	# A client with a small receive buffer that reads 64 KiB every 5 ms:
	# the sandbox writes far faster, so only backpressure keeps the router
	# from holding the difference.
	in_a python3 - <<-'PY'
		import socket, time
		s = socket.socket()
		s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
		s.connect(("127.0.0.1", 8080))
		s.sendall(b"GET /big?mb=20 HTTP/1.1\r\nHost: r\r\nX-Sandbox-ID: box\r\n"
		          b"Connection: close\r\n\r\n")
		n = 0
		while True:
		    d = s.recv(65536)
		    if not d:
		        break
		    n += len(d)
		    time.sleep(0.005)
		assert n > 20 << 20, n
	PY
	echo "router VmHWM ${base} kB before, $(hwm_kb) kB after"
	[ $(($(hwm_kb) - base)) -lt 10240 ]
}

@test "router: SSE events arrive as the sandbox sends them, not at the end" {
	open_router
	in_a curl -sSN -m 10 -H 'X-Sandbox-ID: box' "http://$RT/sse?n=3&gap=1" |
		while IFS= read -r line; do
			if [ -n "$line" ]; then echo "$(date +%s.%N) $line"; fi
		done >"$T/sse"
	cat "$T/sse"
	[ "$(wc -l <"$T/sse")" = 3 ]
	# Each event reached the client within 0.3 s of the sandbox sending it.
	awk '{ lag = $1 - $5; if (lag < 0 || lag > 0.3) exit 1 }' "$T/sse"
}

@test "router: an HTTP/1.0 client gets a chunked answer unchunked, ended by the close" {
	open_router
	in_a python3 - <<-'PY'
		import gzip, socket
		s = socket.create_connection(("127.0.0.1", 8080), 5)
		s.sendall(b"GET /gzip-chunked HTTP/1.0\r\nX-Sandbox-ID: box\r\n\r\n")
		data = b""
		while True:
		    d = s.recv(65536)
		    if not d:
		        break
		    data += d
		head, _, body = data.partition(b"\r\n\r\n")
		assert head.startswith(b"HTTP/1.1 200"), head
		assert b"transfer-encoding" not in head.lower(), head
		assert b"connection: close" in head.lower(), head
		assert gzip.decompress(body).count(b"\n") == 4000
	PY
}

@test "router: HEAD and OPTIONS are forwarded (the reference answers 405)" {
	open_router
	in_a curl -sS -I -H 'X-Sandbox-ID: box' "http://$RT/x" >"$T/h"
	grep -q '^HTTP/1.1 200' "$T/h"
	grep -qi '^content-length: [1-9]' "$T/h"
	out=$(rq -X OPTIONS -H 'X-Sandbox-ID: box' /x)
	[ "$(status_of "$out")" = 200 ]
	[ "$(head -n -1 <<<"$out" | jq -r .method)" = OPTIONS ]
}

@test "router: a backend 101 on a plain request is a 502, as in the reference" {
	open_router
	out=$(rq -H 'X-Sandbox-ID: box' /upgrade-anyway)
	[ "$(status_of "$out")" = 502 ]
	[ "$(detail "$out")" = "Backend attempted a WebSocket upgrade over HTTP. Connect using the WebSocket protocol instead." ]
}

# ---- WebSocket ------------------------------------------------------------

@test "router: WebSocket echo both ways through the router (text and a 200 kB binary)" {
	ROUTER_AUTH_TOKEN=$TOKEN router_start
	run in_a python3 "$FIX/wsclient.py" 127.0.0.1 8080 /ws -H 'X-Sandbox-ID: box' \
		-H "Authorization: Bearer $TOKEN" -H 'Sec-WebSocket-Protocol: jupyter' \
		-H 'Origin: https://router.example' --msg hello --msg 'second message' --big 200000
	echo "$output"
	[ "$status" -eq 0 ]
	[[ "$output" == *"status: HTTP/1.1 101"* ]]
	[[ "$output" == *"header: Sec-WebSocket-Protocol: jupyter"* ]]
	[[ "$output" == *"echo ok: 200000 bytes"* ]]
	[ "$(metric egressd_router_websockets_total)" = 1 ]
	wait_for 2 metric_is egressd_router_websockets_open 0
}

@test "router: a WebSocket's first message from the sandbox arrives unasked" {
	open_router
	run in_a python3 "$FIX/wsclient.py" 127.0.0.1 8080 /ws-first -H 'X-Sandbox-ID: box' \
		--expect-first hello --msg ping
	echo "$output"
	[ "$status" -eq 0 ]
}

@test "router: WebSocket upgrades need the token too" {
	ROUTER_AUTH_TOKEN=$TOKEN router_start
	run in_a python3 "$FIX/wsclient.py" 127.0.0.1 8080 /ws -H 'X-Sandbox-ID: box' --msg x
	echo "$output"
	[ "$status" -eq 2 ]
	[[ "$output" == *"status: HTTP/1.1 401"* ]]
}

@test "router: an idle WebSocket is closed after ROUTER_WS_IDLE_S" {
	ROUTER_WS_IDLE_S=1 open_router
	run in_a python3 "$FIX/wsclient.py" 127.0.0.1 8080 /ws -H 'X-Sandbox-ID: box' --hold 1
	echo "$output"
	[ "$status" -eq 0 ]
	[[ "$output" =~ "after hold: op=None in "[12]"." ]]
}

# ---- pool, retries, limits ------------------------------------------------

@test "router: keep-alive connections to a sandbox are pooled and reused" {
	open_router
	for _ in 1 2 3 4 5; do
		out=$(rq -H 'X-Sandbox-ID: box' /)
		[ "$(status_of "$out")" = 200 ]
	done
	[ "$(metric egressd_router_pool_reused_total)" -ge 4 ]
	[ "$(metric egressd_router_pool_idle)" = 1 ]
}

@test "router: a pooled connection to a deleted sandbox is not reused" {
	open_router
	out=$(rq -H 'X-Sandbox-ID: box' /)
	[ "$(head -n -1 <<<"$out" | jq -r .server)" = sandbox ]
	[ "$(metric egressd_router_pool_idle)" = 1 ]
	# The sandbox goes away and a new one takes its name and port.
	kill "$SERVERS_PID" && wait "$SERVERS_PID" 2>/dev/null || true
	wait_for 2 metric_is egressd_router_pool_idle 0
	nsenter --net="/run/netns/$NS_S" python3 "$FIX/sandbox.py" --listen $SRV4:8888 \
		--name newbox --ready "$T/sb2.ready" >/dev/null 2>&1 3>&- &
	SB2_PID=$!
	wait_for 10 test -e "$T/sb2.ready"
	out=$(rq -H 'X-Sandbox-ID: box' /)
	[ "$(status_of "$out")" = 200 ]
	[ "$(head -n -1 <<<"$out" | jq -r .server)" = newbox ]
}

@test "router: a stale pooled connection is retried once for GET, never for POST" {
	kill "$SERVERS_PID" && wait "$SERVERS_PID" 2>/dev/null || true
	sandbox_start --stale
	open_router
	out=$(rq -H 'X-Sandbox-ID: box' /one)
	[ "$(status_of "$out")" = 200 ]
	# The pooled connection is now stale: GET goes again on a fresh one.
	out=$(rq -H 'X-Sandbox-ID: box' /two)
	[ "$(status_of "$out")" = 200 ]
	[ "$(metric egressd_router_retries_total)" = 1 ]
	# POST over the (again stale) pooled connection: not sent twice.
	out=$(rq -H 'X-Sandbox-ID: box' -d 'pay=1' /three)
	[ "$(status_of "$out")" = 502 ]
	[ "$(metric egressd_router_retries_total)" = 1 ]
}

@test "router: too many headers or too large a head is refused; ROUTER_MAX_CONNS holds" {
	ROUTER_MAX_CONNS=2 open_router
	args=(-H 'X-Sandbox-ID: box')
	for i in $(seq 1 300); do args+=(-H "X-H$i: v"); done
	out=$(rq "${args[@]}" /)
	[ "$(status_of "$out")" = 431 ]
	out=$(rq -H 'X-Sandbox-ID: box' -H "X-Big: $(head -c 70000 /dev/zero | tr '\0' a)" /)
	[ "$(status_of "$out")" = 431 ]
	# Two idle connections fill the limit; a third is closed at once.
	in_a python3 - <<-'PY'
		import socket, time
		a = socket.create_connection(("127.0.0.1", 8080))
		b = socket.create_connection(("127.0.0.1", 8080))
		time.sleep(0.3)
		c = socket.create_connection(("127.0.0.1", 8080))
		c.settimeout(3)
		c.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
		try:
		    data = c.recv(100)
		except ConnectionResetError:
		    data = b""
		assert data == b"", data
		a.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
		assert a.recv(100).startswith(b"HTTP/1.1 200"), "first connection still served"
	PY
	[ "$(metric egressd_router_refused_connections_total)" -ge 1 ]
}

@test "router: ROUTER_MAX_REQUESTS_PER_CONN closes a keep-alive connection after N requests" {
	ROUTER_MAX_REQUESTS_PER_CONN=2 open_router
	in_a curl -sS -v -H 'X-Sandbox-ID: box' "http://$RT/1" "http://$RT/2" "http://$RT/3" \
		-o /dev/null -o /dev/null -o /dev/null 2>"$T/v"
	[ "$(grep -c '^\* Connected to' "$T/v")" = 2 ]
	grep -qi '^< Connection: close' "$T/v"
}

@test "router: pipelined requests are answered in order on one connection" {
	open_router
	in_a python3 - <<-'PY'
		import socket
		s = socket.create_connection(("127.0.0.1", 8080), 5)
		req = "GET /p%d HTTP/1.1\r\nHost: x\r\nX-Sandbox-ID: box\r\n\r\n"
		s.sendall(b"".join((req % i).encode() for i in range(3)) +
		          b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
		data = b""
		while True:
		    d = s.recv(65536)
		    if not d:
		        break
		    data += d
		text = data.decode()
		pos = [text.find('"target": "/p%d"' % i) for i in range(3)]
		assert all(p > 0 for p in pos) and pos == sorted(pos), text
		assert text.rstrip().endswith('{"status":"ok"}'), text
	PY
}

@test "router: clients that vanish mid-head, mid-body or mid-answer leave no descriptor behind" {
	open_router
	rq -H 'X-Sandbox-ID: box' / >/dev/null
	fds() { ls "/proc/$DAEMON_PID/fd" | wc -l; }
	fds_at_most() { [ "$(fds)" -le "$1" ]; }
	# Idle pooled connections expire in a few seconds: count without them.
	wait_for 10 metric_is egressd_router_pool_idle 0
	base=$(fds)
	in_a python3 - <<-'PY'
		import socket, threading
		HDR = b"X-Sandbox-ID: box\r\nHost: r\r\n"
		def one(kind):
		    s = socket.create_connection(("127.0.0.1", 8080), 5)
		    s.settimeout(5)
		    try:
		        if kind == 0:    # half a head
		            s.sendall(b"GET / HTTP/1.1\r\nX-Sand")
		        elif kind == 1:  # a body cut short
		            s.sendall(b"POST /up HTTP/1.1\r\n" + HDR +
		                      b"Content-Length: 1000000\r\n\r\n" + b"x" * 10000)
		        elif kind == 2:  # an answer abandoned after 100 kB
		            s.sendall(b"GET /big?mb=5 HTTP/1.1\r\n" + HDR + b"\r\n")
		            got = 0
		            while got < 100000:
		                got += len(s.recv(65536))
		        elif kind == 3:  # gone before a slow answer
		            s.sendall(b"GET /slow?s=1 HTTP/1.1\r\n" + HDR + b"\r\n")
		        elif kind == 4:  # a WebSocket dropped without a close frame
		            s.sendall(b"GET /ws HTTP/1.1\r\n" + HDR + b"Upgrade: websocket\r\n"
		                      b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
		                      b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
		            s.recv(1000)
		        else:            # a whole request
		            s.sendall(b"GET / HTTP/1.1\r\n" + HDR + b"Connection: close\r\n\r\n")
		            while s.recv(65536):
		                pass
		    finally:
		        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
		        s.close()
		for _ in range(3):
		    ts = [threading.Thread(target=one, args=(i % 6,)) for i in range(60)]
		    [t.start() for t in ts]
		    [t.join() for t in ts]
	PY
	# Every client connection ends (the slow answers within a few seconds),
	# and the pool drains: back to the baseline.
	wait_for 15 metric_is egressd_router_client_connections 0
	wait_for 15 fds_at_most "$base"
	out=$(rq -H 'X-Sandbox-ID: box' /)
	[ "$(status_of "$out")" = 200 ]
	[ "$(metric egressd_router_websockets_open)" = 0 ]
}

# ---- metrics, logs, shutdown ----------------------------------------------

@test "router: /metrics counts by status class and namespace; access lines have no query" {
	open_router
	rq -H 'X-Sandbox-ID: box' '/a?secret=1' >/dev/null
	rq -H 'X-Sandbox-ID: box' -H 'X-Sandbox-Namespace: team-a' /b >/dev/null
	rq -H 'X-Sandbox-ID: Bad' /c >/dev/null
	[ "$(metric 'egressd_router_requests_total{class="2xx",namespace="default"}')" = 1 ]
	[ "$(metric 'egressd_router_requests_total{class="2xx",namespace="team-a"}')" = 1 ]
	[ "$(metric 'egressd_router_requests_total{class="4xx",namespace="none"}')" = 1 ]
	[ "$(metric 'egressd_router_upstream_latency_seconds_count')" = 2 ]
	not grep -q secret "$T/access.log"
	jq -s -e 'any(.[]; .path == "/a" and .status == 200 and .sandbox == "box")' "$T/access.log"
}

@test "router: SIGTERM stops accepting, lets an in-flight request finish, then exits" {
	open_router
	(rq -H 'X-Sandbox-ID: box' '/slow?s=2' >"$T/inflight") &
	client=$!
	sleep 0.5
	kill -TERM "$DAEMON_PID"
	sleep 0.3
	# No longer accepting.
	not in_a curl -s -m 2 "http://$RT/healthz"
	wait "$client"
	[ "$(status_of "$(cat "$T/inflight")")" = 200 ]
	wait_for 5 sh -c "! kill -0 $DAEMON_PID"
	wait "$DAEMON_PID"
}

@test "router: SIGTERM with ROUTER_SHUTDOWN_S gives up on a request past the deadline" {
	ROUTER_SHUTDOWN_S=1 open_router
	(rq -H 'X-Sandbox-ID: box' '/slow?s=6' >"$T/inflight" 2>&1) &
	client=$!
	sleep 0.5
	start=$SECONDS
	kill -TERM "$DAEMON_PID"
	wait_for 4 sh -c "! kill -0 $DAEMON_PID"
	[ $((SECONDS - start)) -le 3 ]
	wait "$client" || true
	[ "$(status_of "$(cat "$T/inflight")")" != 200 ]
}
