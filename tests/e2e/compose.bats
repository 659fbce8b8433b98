#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# The Compose deployment, run for real: a Docker engine of the test's own
# (tests/e2e/docker.bash: inside a network namespace the test creates, with
# its own data root, socket and cgroup parent), base images made offline,
# the image built with --network=none, deploy/compose/compose.yaml brought
# up with docker-compose, and the attacks made from inside the agent
# container against the servers at 198.51.100.1 in another namespace the
# test created. deploy/compose/check.sh (tests/e2e/deploy.bats) is the
# offline fast path; this is the slow, real one.
#
# One deployment for the whole file (setup_file), torn down in
# teardown_file also when a test failed. The tests run in file order; the
# kill -9 and recovery come last.

load docker

REPO=$(cd "$BATS_TEST_DIRNAME/../.." && pwd)
FIX=$REPO/tests/e2e/fixtures
SRV4=198.51.100.1
# openrouter.ai's address in the test's DNS: not $SRV4, which egressd would
# then take for the intercept host's (every connection to an address the
# intercept host resolved to goes to the policy proxy). Nothing listens there.
OR_ADDR=198.51.100.77
# docker-compose with the deployment's file and the test's agent override.
COMPOSE_FILES=(-f "$REPO/deploy/compose/compose.yaml" -f "$FIX/compose.e2e.yaml")
# How long egressd may take to turn healthy after a start or restart (its
# health check runs every 5 s and needs the ruleset read back).
HEALTHY_S=60

dc() { "$COMPOSE" -p "$PROJECT" "${COMPOSE_FILES[@]}" "$@"; }
in_agent() { "$DOCKER" exec "${PROJECT}_agent_1" "$@"; }
in_egressd() { "$DOCKER" exec "${PROJECT}_egressd_1" "$@"; }
egressd_pid() { "$DOCKER" inspect -f '{{.State.Pid}}' "${PROJECT}_egressd_1"; }
# nft in egressd's namespace, from the host (the agent cannot).
ns_nft() { nsenter -t "$(egressd_pid)" -n nft "$@"; }

wait_for() { # wait_for SECONDS CMD...
	local end=$((SECONDS + $1))
	shift
	until "$@" 2>/dev/null; do
		[ "$SECONDS" -lt "$end" ] || return 1
		sleep 0.2
	done
}

egressd_healthy() {
	[ "$("$DOCKER" inspect -f '{{.State.Health.Status}}' "${PROJECT}_egressd_1")" = healthy ]
}

# The phase egressd's ruleset enforces, from the host.
ruleset_phase() {
	ns_nft list map inet egressd phase | grep -q ': accept' && echo verification || echo agent
}
# Functions for wait_for, which retries a command: a "$(...)" argument
# would be evaluated once, before the first try.
phase_is() { [ "$(ruleset_phase)" = "$1" ]; }
agent_has_only_lo() { [ "$(in_agent ls /sys/class/net)" = lo ]; }

# The agent's resolver gives up after one 2 s try: an unanswered lookup
# need not cost glibc's 5 s x 2 per test.
RES_OPTS="timeout:2 attempts:1"

# A fresh token per use, so a match in the servers' log is this lookup's.
token() { printf 'egd%s%04d' "$(date +%s%N | tail -c 9)" "$((RANDOM % 10000))"; }

# curl from the agent: HTTP status on stdout, curl's exit status kept.
agent_curl() { in_agent curl -sS -m 5 -o /dev/null -w '%{http_code}' "$@"; }

# The servers' log and the DNS server's (one JSON line per query, qname in it).
server_log_has() { grep -qF -- "$1" "$T/server.log" "$T/dns.log" 2>/dev/null; }
dns_log_has() { grep -qF -- "\"qname\": \"$1\"" "$T/dns.log" 2>/dev/null; }
# A function, not `! server_log_has`: bash's set -e ignores a negated
# command, so a bare `!` line could never fail a test.
server_log_lacks() { ! server_log_has "$1"; }

# The host namespace's Docker-ish state, to show the engine left it alone.
host_snapshot() {
	ip -br link | awk '{ print $1 }' | grep -E '^(docker|br-|veth)' | sort || true
	echo "ip_forward $(cat /proc/sys/net/ipv4/ip_forward)"
	echo "iptables docker lines $(iptables-save 2>/dev/null | grep -ci docker || true)"
	echo "nft docker lines $(nft list ruleset 2>/dev/null | grep -ci docker || true)"
}

# Everything setup_file does once it knows an engine can run. Each step
# checks its own status: called from an `||` list, set -e is off in here.
compose_up() {
	export PROJECT="egdc$$"
	export NS_D="egdc-d-$$" NS_S="egdc-s-$$"
	host_snapshot >"$T/host.before"
	egd_docker_net || return 1
	echo "# $(date +%T) network namespaces up" >&3
	# The servers: TLS, HTTP, UDP on 5353, and a DNS server on 53 (UDP and
	# TCP; the engine's --dns and egressd's EGRESSD_RESOLVERS, so every query
	# the embedded resolver or egressd forwards lands in its log) that knows
	# openrouter.ai.
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
		-keyout "$T/key.pem" -out "$T/cert.pem" -days 1 -subj /CN=example.com \
		-addext "subjectAltName=DNS:example.com,DNS:openrouter.ai" 2>/dev/null || return 1
	nsenter --net="/run/netns/$NS_S" python3 "$FIX/servers.py" --cert "$T/cert.pem" \
		--key "$T/key.pem" --log "$T/server.log" --ready "$T/servers.ready" \
		--tls $SRV4:443 --http $SRV4:80 --udp $SRV4:5353 \
		>"$T/servers.out" 2>&1 3>&- &
	echo $! >"$T/servers.pid"
	nsenter --net="/run/netns/$NS_S" python3 "$FIX/dns_server.py" --listen $SRV4 \
		--log "$T/dns.log" --ready "$T/dns.ready" --record "openrouter.ai:A:$OR_ADDR" \
		>"$T/dns.out" 2>&1 3>&- &
	echo $! >"$T/dns.pid"
	# Docker 20.10 names only its embedded resolver in egressd's
	# resolv.conf, so the deployment is given the upstream (README.md beside
	# compose.yaml). Exported: every later `dc up` must see the same
	# configuration, or Compose recreates egressd.
	export EGRESSD_RESOLVERS=$SRV4
	egd_docker_start || return 1
	export DOCKERD_PID
	echo "# $(date +%T) engine up" >&3
	local build_pkgs slim_pkgs
	build_pkgs=$(egd_dockerfile_pkgs "$REPO/Dockerfile" 1)
	slim_pkgs=$(egd_dockerfile_pkgs "$REPO/Dockerfile" 2)
	[ -n "$build_pkgs" ] && [ -n "$slim_pkgs" ] || {
		echo "no 'for p in ...; do' package lists in the Dockerfile" >&2
		return 1
	}
	egd_docker_base debian:12 "$build_pkgs" || return 1
	egd_docker_base debian:12-slim "$slim_pkgs" || return 1
	egd_docker_base egressd-e2e-agent:bookworm "$EGD_BASE_AGENT_PKGS" || return 1
	echo "# $(date +%T) base images in place" >&3
	# --network=none: the engine's namespace reaches no mirror anyway, and
	# the Dockerfile skips apt-get when the base has every package.
	# --no-cache: every step runs, so its output can be checked.
	"$DOCKER" build --no-cache --network=none -t egressd:local "$REPO" >"$T/build.log" 2>&1 || {
		tail -30 "$T/build.log" >&2
		return 1
	}
	echo "# $(date +%T) image built" >&3
	dc up -d --no-build >"$T/up.log" 2>&1 || {
		cat "$T/up.log" >&2
		dc logs egressd >&2
		return 1
	}
	echo "# $(date +%T) deployment up (egressd healthy, agent started)" >&3
	wait_for 10 test -e "$T/servers.ready" || { cat "$T/servers.out" >&2; return 1; }
	wait_for 10 test -e "$T/dns.ready" || { cat "$T/dns.out" >&2; return 1; }
}

setup_file() {
	export T=$BATS_FILE_TMPDIR
	local why
	why=$(egd_docker_why_not)
	if [ -n "$why" ]; then
		export EGD_COMPOSE_SKIP="no Docker engine can run here: $why"
		return 0
	fi
	if ! egd_docker_claim "$$"; then
		export EGD_COMPOSE_SKIP="another compose.bats run is using the test engine"
		return 0
	fi
	export EGD_COMPOSE_OWNER=$$
	# Torn down here when it fails half-way, whatever bats does after a
	# failed setup_file.
	compose_up || {
		teardown_file
		return 1
	}
}

teardown_file() {
	[ -n "${EGD_COMPOSE_OWNER:-}" ] || return 0
	if [ -n "${PROJECT:-}" ] && [ -S "$EGD_DOCKER_SOCK" ]; then
		dc down -v -t 5 >/dev/null 2>&1 || true
		# The data root keeps the base images and the last egressd:local,
		# not every run's build (each is a few hundred MB).
		"$DOCKER" image prune -f >/dev/null 2>&1 || true
	fi
	[ ! -s "$T/servers.pid" ] || kill "$(cat "$T/servers.pid")" 2>/dev/null || true
	[ ! -s "$T/dns.pid" ] || kill "$(cat "$T/dns.pid")" 2>/dev/null || true
	egd_docker_stop
}

setup() {
	[ -z "${EGD_COMPOSE_SKIP:-}" ] || skip "$EGD_COMPOSE_SKIP"
	[ -n "${PROJECT:-}" ] || skip "setup_file did not bring the deployment up"
}

@test "compose: the image's commands run without NET_ADMIN, and nft mode without it stops closed" {
	for user in "" "--user 0"; do
		# shellcheck disable=SC2086
		run "$DOCKER" run --rm $user --cap-drop ALL egressd:local --version
		echo "$output"
		[ "$status" -eq 0 ]
		[[ $output == "egressd "* ]]
		# shellcheck disable=SC2086
		run "$DOCKER" run --rm $user --cap-drop ALL egressd:local help
		[ "$status" -eq 0 ]
		[[ $output == *"egressd run"* ]]
		# status answers (nothing attached: exit 1), it does not fail to exec.
		# shellcheck disable=SC2086
		run "$DOCKER" run --rm $user --cap-drop ALL egressd:local status
		echo "$output"
		[[ $output == *"mode: none"* ]]
		[[ $output != *"operation not permitted"* ]]
		# shellcheck disable=SC2086
		run "$DOCKER" run --rm $user --cap-add NET_ADMIN egressd:local --version
		[ "$status" -eq 0 ]
	done
	# nft mode without the capability: refused at install, exits.
	run "$DOCKER" run --rm --cap-drop ALL -e EGRESSD_MODE=nft egressd:local run
	echo "$output"
	[ "$status" -ne 0 ]
	[[ $output == *"needs CAP_NET_ADMIN"* ]]
	# The deployed daemon raised it from its permitted set (bit 12).
	eff=$(awk '/^CapEff/ { print $2 }' "/proc/$(egressd_pid)/status")
	echo "CapEff $eff"
	(((0x$eff >> 12) & 1))
}

@test "compose: the image builds offline without warnings about its user" {
	grep -q 'Successfully tagged egressd:local' "$T/build.log"
	# The runtime stage's RUN ran (no cache), so its output is here.
	grep -q 'Removing libcap2-bin' "$T/build.log"
	# useradd --system warned that 10001 is above SYS_UID_MAX.
	run grep -iE 'SYS_UID_MAX|SYS_GID_MAX|useradd warning|groupadd warning' "$T/build.log"
	echo "$output"
	[ "$status" -eq 1 ]
	[ "$("$DOCKER" run --rm --entrypoint id egressd:local)" = \
		"uid=10001(egressd) gid=10001(egressd) groups=10001(egressd)" ]
}

@test "compose: egressd's start logs no error (no IPv6 in the network is not one)" {
	run dc logs --no-color egressd
	echo "$output"
	[[ $output == *"ready: mode nft"* ]]
	# Allowed: the unconfigured policy proxy, and the uid exemption where
	# the host's cgroup layout gives the container no cgroup2 path.
	errs=$(grep -E 'egressd (error|warning):' <<<"$output" |
		grep -v 'policy proxy:\|exempting uid' || true)
	[ -z "$errs" ]
	[[ $output != *"[::1]:15443"* ]]
}

@test "compose: TLS and HTTP to another host are refused in the agent phase" {
	[ "$(ruleset_phase)" = agent ]
	tok=$(token)
	run agent_curl -k --resolve "$tok.example.com:443:$SRV4" "https://$tok.example.com/"
	echo "$output"
	[ "$status" -eq 35 ] # TLS alert
	[[ $output == *"access denied"* ]]
	run agent_curl -H 'Host: example.com' "http://$SRV4/$tok"
	echo "$output"
	[ "$output" = 403 ]
	server_log_lacks "$tok"
}

@test "compose: openrouter.ai is answered by the policy proxy under the pod CA" {
	# Verified against the pod CA alone: the leaf is egressd's, and the
	# answer is the policy proxy's (the servers never see the request).
	run in_agent curl -sS -m 5 -w '\n%{http_code}' --cacert /var/run/egressd/ca/ca.crt \
		--resolve openrouter.ai:443:$SRV4 -X POST -H 'Content-Type: application/json' \
		-d '{"model":"x","messages":[]}' https://openrouter.ai/api/v1/chat/completions
	echo "$output"
	[ "$status" -eq 0 ]
	# The policy proxy's own answer: no client key, refused.
	[ "${lines[-1]}" = 401 ]
	[[ ${lines[0]} == *'"detail":"Missing Authorization header"'* ]]
	# Against the system CAs alone the same leaf is not trusted.
	run in_agent curl -sS -m 5 -o /dev/null --cacert /etc/ssl/certs/ca-certificates.crt \
		--resolve openrouter.ai:443:$SRV4 https://openrouter.ai/
	[ "$status" -eq 60 ]
	# And the default client settings (CURL_CA_BUNDLE) trust it.
	run agent_curl --resolve openrouter.ai:443:$SRV4 https://openrouter.ai/api/v1/models
	[ "$status" -eq 0 ]
	server_log_lacks openrouter.ai
}

@test "compose: UDP to another host is refused in the agent phase" {
	tok=$(token)
	run in_agent python3 -c "
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
s.sendto(b'$tok', ('$SRV4', 5353))
s.recv(100)"
	echo "$output"
	[ "$status" -ne 0 ]
	sleep 0.5
	server_log_lacks "$tok"
}

@test "compose: the agent has no capabilities and is not the daemon's uid" {
	run in_agent grep -E '^Cap(Inh|Prm|Eff|Bnd|Amb):' /proc/self/status
	echo "$output"
	[ "${#lines[@]}" -eq 5 ]
	[ -z "$(grep -v ':\s0000000000000000$' <<<"$output")" ]
	[ "$(in_agent id -u)" = 1000 ]
}

@test "compose: the agent cannot change the ruleset" {
	before=$(ns_nft list table inet egressd | grep -v packets)
	run in_agent nft flush ruleset
	[ "$status" -ne 0 ]
	run in_agent nft delete table inet egressd
	[ "$status" -ne 0 ]
	run in_agent nft add rule inet egressd filter_output accept
	[ "$status" -ne 0 ]
	[ "$(ns_nft list table inet egressd | grep -v packets)" = "$before" ]
	run agent_curl -H 'Host: example.com' "http://$SRV4/"
	[ "$output" = 403 ]
}

@test "compose: raw and packet sockets are refused to the agent" {
	run in_agent python3 -c 'import socket; socket.socket(socket.AF_INET, socket.SOCK_RAW, 1)'
	echo "$output"
	[[ $output == *PermissionError* ]]
	run in_agent python3 -c 'import socket; socket.socket(socket.AF_PACKET, socket.SOCK_RAW)'
	echo "$output"
	[[ $output == *PermissionError* ]]
}

@test "compose: a name the agent looks up never reaches a resolver outside" {
	# Control: a container on the project network but outside egressd's
	# namespace; its lookup is forwarded to the upstream and logged, so
	# the check below can see a leak.
	ctl=$(token)
	"$DOCKER" run --rm --network "${PROJECT}_default" -e "RES_OPTIONS=$RES_OPTS" \
		egressd-e2e-agent:bookworm timeout 10 getent hosts "$ctl.exfil.test" || true
	wait_for 5 server_log_has "$ctl"
	# The agent, in the agent phase, through the same resolver.
	[ "$(ruleset_phase)" = agent ]
	tok=$(token)
	run "$DOCKER" exec -e "RES_OPTIONS=$RES_OPTS" "${PROJECT}_agent_1" \
		timeout 10 getent hosts "$tok.exfil.test"
	[ "$status" -ne 0 ]
	sleep 1
	server_log_lacks "$tok"
}

# dns_rcode NAME [SERVER]: ask SERVER (default the agent's resolver,
# 127.0.0.11; the ruleset sends every DNS packet of the agent to egressd's
# policy DNS) for NAME's A record, from the agent; prints the answer's RCODE
# and answer count ("0 1"), or fails when nothing answers.
dns_rcode() {
	in_agent python3 -c "
import socket, struct, sys
q = struct.pack('>HHHHHH', 0x4567, 0x0100, 1, 0, 0, 0)
q += b''.join(bytes([len(l)]) + l.encode() for l in sys.argv[1].split('.')) + b'\\0'
q += struct.pack('>HH', 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
s.sendto(q, (sys.argv[2], 53))
r = s.recv(4096)
assert r[:2] == q[:2] and r[2] & 0x80, 'not an answer to this query'
print(r[3] & 0x0f, struct.unpack('>H', r[6:8])[0])" "$1" "${2:-127.0.0.11}"
}

@test "compose: the policy DNS refuses other names to the agent itself, and forwards none" {
	[ "$(ruleset_phase)" = agent ]
	tok=$(token)
	run dns_rcode "$tok.exfil.test"
	echo "$output"
	[ "$status" -eq 0 ]
	# REFUSED (5), no answer: egressd's, not a timeout for want of one.
	[ "$output" = "5 0" ]
	# Straight to the resolver egressd itself asks (EGRESSD_RESOLVERS): the
	# daemon's own way out is not the agent's.
	run dns_rcode "$tok-direct.exfil.test" $SRV4
	echo "$output"
	[ "$status" -eq 0 ]
	[ "$output" = "5 0" ]
	sleep 1
	server_log_lacks "$tok"
}

# Docker's embedded resolver (127.0.0.11) sends its upstream queries from
# inside egressd's namespace, not as egressd, so the ruleset hands them back
# to the policy DNS: a policy DNS forwarding to it could resolve nothing.
# egressd asks EGRESSD_RESOLVERS itself instead (deploy/compose/README.md).
@test "compose: the intercept host resolves for the agent through the policy DNS" {
	[ "$(ruleset_phase)" = agent ]
	run dns_rcode openrouter.ai
	echo "$output"
	[ "$status" -eq 0 ]
	[ "$output" = "0 1" ]
	# Asked of the upstream by egressd (the agent cannot reach it).
	dns_log_has openrouter.ai
	# And in the verification phase any name is forwarded upstream.
	in_egressd touch /tmp/egress-unlocked
	wait_for 5 phase_is verification
	tok=$(token)
	run dns_rcode "$tok.example.com"
	echo "$output"
	in_egressd rm -f /tmp/egress-unlocked
	wait_for 5 phase_is agent
	# The upstream's NXDOMAIN (3), relayed: not a timeout.
	[ "$status" -eq 0 ]
	[ "$output" = "3 0" ]
	dns_log_has "$tok.example.com"
}

@test "compose: the sentinel opens the network and its removal closes it" {
	tok=$(token)
	in_egressd touch /tmp/egress-unlocked
	wait_for 5 phase_is verification
	run agent_curl -H 'Host: example.com' "http://$SRV4/$tok-http"
	[ "$output" = 200 ]
	run agent_curl -k --resolve "$tok-tls.example.com:443:$SRV4" "https://$tok-tls.example.com/"
	[ "$output" = 200 ]
	in_agent python3 -c "
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.sendto(b'$tok-udp', ('$SRV4', 5353))"
	wait_for 5 server_log_has "$tok-udp"
	server_log_has "$tok-http"
	server_log_has "$tok-tls"

	in_egressd rm /tmp/egress-unlocked
	wait_for 5 phase_is agent
	tok=$(token)
	run agent_curl -H 'Host: example.com' "http://$SRV4/$tok"
	[ "$output" = 403 ]
	run agent_curl -k --resolve "$tok.example.com:443:$SRV4" "https://$tok.example.com/"
	[ "$status" -eq 35 ]
	server_log_lacks "$tok"
}

@test "compose: the example agent stops promptly (init forwards SIGTERM)" {
	[ "$(in_agent cat /proc/1/comm)" = docker-init ]
	start=$SECONDS
	dc stop -t 10 agent
	[ $((SECONDS - start)) -lt 5 ]
	dc up -d --no-deps agent
	run agent_curl -H 'Host: example.com' "http://$SRV4/"
	[ "$output" = 403 ]
}

@test "compose: kill -9 of egressd leaves the agent without network; the documented recovery works" {
	id_before=$("$DOCKER" inspect -f '{{.Id}}' "${PROJECT}_egressd_1")
	kill -9 "$(egressd_pid)"
	# The agent's namespace loses its interface: nothing but lo.
	wait_for 10 agent_has_only_lo
	tok=$(token)
	run agent_curl -H 'Host: example.com' "http://$SRV4/$tok"
	[ "$status" -ne 0 ]
	in_agent python3 -c "
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.sendto(b'$tok', ('$SRV4', 5353))" || true
	sleep 0.5
	server_log_lacks "$tok"

	# restart: unless-stopped brings egressd back; a plain `up -d` does
	# not bring the agent back into its namespace.
	wait_for "$HEALTHY_S" egressd_healthy
	dc up -d >/dev/null 2>&1
	agent_has_only_lo

	# The README's steps (deploy/compose/README.md, "If egressd stops").
	dc up -d --no-deps egressd
	wait_for "$HEALTHY_S" egressd_healthy
	dc up -d --no-deps --force-recreate agent
	# egressd was not recreated by it.
	[ "$("$DOCKER" inspect -f '{{.Id}}' "${PROJECT}_egressd_1")" = "$id_before" ]
	# The agent is back, and enclosed.
	in_agent ls /sys/class/net | grep -q eth0
	tok=$(token)
	run agent_curl -H 'Host: example.com' "http://$SRV4/$tok"
	[ "$output" = 403 ]
	run agent_curl --resolve openrouter.ai:443:$SRV4 https://openrouter.ai/api/v1/models
	[ "$status" -eq 0 ]
	server_log_lacks "$tok"
}

@test "compose: the engine left the machine's namespace alone" {
	host_snapshot >"$T/host.during"
	diff "$T/host.before" "$T/host.during"
	# Its bridge and forwarding are in its own namespace.
	ip -n "$NS_D" -br link | grep -q '^docker0'
	[ "$(ip netns exec "$NS_D" cat /proc/sys/net/ipv4/ip_forward)" = 1 ]
}
