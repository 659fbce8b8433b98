# SPDX-License-Identifier: MIT
# Shared setup for the e2e suite. Every test gets its own pair of network
# namespaces (agent side and server side, joined by a veth), its own cgroup
# tree under cgroup2 (sandbox/agent and sandbox/daemon), its own bpffs and
# pin directory, and its own daemon. teardown undoes all of it, also when
# the test failed. Nothing here touches the machine's own namespace or the
# cgroups its services live in.

REPO=$(cd "$BATS_TEST_DIRNAME/../.." && pwd)
EGRESSD=${EGRESSD:-$REPO/build/egressd}
FIX=$REPO/tests/e2e/fixtures

# Capture mode under test: bpf (cgroup programs) or nft (nftables ruleset).
# scripts/test.sh runs the capture suites once in each.
MODE=${EGD_E2E_MODE:-bpf}

SRV4=198.51.100.1	# TEST-NET-2: documentation space, never routed
AG4=198.51.100.2
SRV6=2001:db8::1
AG6=2001:db8::2

skip_unless_capable() {
	[ "$(id -u)" -eq 0 ] || skip "needs root (network namespaces, cgroups, BPF)"
	[ -e /sys/kernel/btf/vmlinux ] || skip "kernel without BTF"
	CG_ROOT=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/mounts)
	[ -n "$CG_ROOT" ] || skip "no cgroup2 hierarchy mounted"
	[ -x "$EGRESSD" ] || skip "egressd not built at $EGRESSD"
	# Every daemon a test starts keeps the proxy's CA and ledger in the
	# test's own directory, never in the machine's defaults.
	egd_proxy_dirs
}

# Run a command in the agent namespace, in the agent cgroup. nsenter, not
# `ip netns exec`: the latter remounts /sys and would hide cgroup2.
agent() {
	nsenter --net="/run/netns/$NS_A" sh -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' \
		"$CG/agent" "$@"
}

# The same namespace, in the daemon's (exempt) cgroup.
exempt() {
	nsenter --net="/run/netns/$NS_A" sh -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' \
		"$CG/daemon" "$@"
}

# Servers run in the server namespace and in a cgroup of their own, so
# teardown can kill every one of them at once. It is a sibling of the
# sandbox cgroup, not a child: the programs attached there would capture it.
in_srv() {
	exec nsenter --net="/run/netns/$NS_S" sh -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' \
		"$CG_SRV" "$@"
}

wait_for() { # wait_for SECONDS CMD... : retry until CMD succeeds
	local end=$((SECONDS + $1))
	shift
	until "$@" 2>/dev/null; do
		[ "$SECONDS" -lt "$end" ] || return 1
		sleep 0.05
	done
}

port_open() { # port_open HOST PORT, from the exempt cgroup
	exempt python3 -c "import socket,sys; socket.create_connection(('$1', $2), 1)"
}

egd_setup_net() {
	ID="$$-${BATS_TEST_NUMBER:-0}"
	NS_A="egdt-a-$ID"
	NS_S="egdt-s-$ID"
	T=$BATS_TEST_TMPDIR
	ip netns add "$NS_A"
	ip netns add "$NS_S"
	ip -n "$NS_A" link set lo up
	# Let unprivileged ICMP echo sockets exist, so the test sees egressd refuse
	# them rather than the kernel default.
	nsenter --net="/run/netns/$NS_A" sysctl -qw net.ipv4.ping_group_range="0 2147483647"
	ip -n "$NS_S" link set lo up
	ip -n "$NS_A" link add v0 type veth peer name v1 netns "$NS_S"
	ip -n "$NS_A" addr add $AG4/24 dev v0
	ip -n "$NS_S" addr add $SRV4/24 dev v1
	ip -n "$NS_A" addr add $AG6/64 dev v0 nodad
	ip -n "$NS_S" addr add $SRV6/64 dev v1 nodad
	ip -n "$NS_A" link set v0 up
	# A default route, so dialling any address (203.0.113.0/24 in tests) gets
	# as far as the capture instead of failing with ENETUNREACH.
	ip -n "$NS_A" route add default via $SRV4
	ip -n "$NS_A" -6 route add default via $SRV6
	ip -n "$NS_S" link set v1 up
}

egd_setup_cgroups() {
	CG="$CG_ROOT/egdt-$ID"
	CG_SRV="$CG_ROOT/egdt-$ID-srv"
	mkdir -p "$CG/agent" "$CG/daemon" "$CG_SRV"
	mkdir -p "$T/bpffs"
	mount -t bpf bpf "$T/bpffs"
	PIN="$T/bpffs/egressd"
}

egd_cert() {
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
		-keyout "$T/key.pem" -out "$T/cert.pem" -days 1 -subj /CN=example.com \
		-addext "subjectAltName=DNS:example.com,DNS:openrouter.ai,DNS:allowed.test" \
		2>/dev/null
}

egd_start_servers() {
	egd_cert
	in_srv python3 "$FIX/servers.py" --cert "$T/cert.pem" --key "$T/key.pem" \
		--log "$T/server.log" --ready "$T/servers.ready" \
		--tls $SRV4:443 --tls "[$SRV6]:443" --tls $SRV4:8443 \
		--http $SRV4:80 --http "[$SRV6]:80" \
		--banner $SRV4:2222 --echo $SRV4:7001 --echo "[$SRV6]:7001" \
		--udp $SRV4:53 --udp $SRV4:5353 >"$T/servers.out" 2>&1 3>&- &
	SERVERS_PID=$!
	wait_for 10 test -e "$T/servers.ready"
}

# egd_start_daemon [egressd run flags...]; DAEMON_PREFIX=(cmd...) wraps it.
DAEMON_PREFIX=()
egd_start_daemon() {
	: >"$T/audit.log"
	nsenter --net="/run/netns/$NS_A" sh -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' \
		"$CG/daemon" "${DAEMON_PREFIX[@]}" "$EGRESSD" run --pin "$PIN" --sentinel "$T/sentinel" \
		--audit-log "$T/audit.log" "$@" 2>"$T/daemon.err" 3>&- &
	DAEMON_PID=$!
	wait_for 10 port_open 127.0.0.1 15443 || {
		cat "$T/daemon.err" >&2
		return 1
	}
}

egd_attach() {
	"$EGRESSD" attach --cgroup "$CG" --exempt-cgroup "$CG/daemon" --pin "$PIN" \
		"$@" 2>"$T/attach.err"
}

# The standard fixture: network, cgroups, servers, capture, daemon.
egd_setup() {
	skip_unless_capable
	egd_setup_net
	egd_setup_cgroups
	egd_start_servers
	if [ "$MODE" = nft ]; then
		EGRESSD_RESOLVERS=$SRV4 egd_start_daemon --mode nft "$@"
	else
		egd_attach
		egd_start_daemon --mode bpf "$@"
	fi
}

# The phase the kernel side enforces right now: the BPF phase map, or the
# nftables phase element.
kernel_phase() {
	if [ "$MODE" = nft ]; then
		nsenter --net="/run/netns/$NS_A" nft list map inet egressd phase |
			grep -q ': accept' && echo verification || echo agent
	else
		"$EGRESSD" phase --pin "$PIN"
	fi
}

bpf_only() {
	[ "$MODE" = bpf ] || skip "$1"
}

egd_teardown() {
	[ -n "${DAEMON_PID:-}" ] && kill "$DAEMON_PID" 2>/dev/null
	[ -n "${SERVERS_PID:-}" ] && kill "$SERVERS_PID" 2>/dev/null
	if [ -n "${CG:-}" ]; then
		for c in "$CG/agent" "$CG/daemon" "$CG_SRV" "$CG"; do
			[ -e "$c/cgroup.kill" ] && echo 1 >"$c/cgroup.kill" 2>/dev/null
		done
	fi
	wait 2>/dev/null
	[ -n "${PIN:-}" ] && [ -e "$PIN" ] && "$EGRESSD" detach --pin "$PIN" 2>/dev/null
	[ -n "${T:-}" ] && mountpoint -q "$T/bpffs" && umount "$T/bpffs"
	if [ -n "${CG:-}" ]; then
		for c in "$CG/agent" "$CG/daemon" "$CG_SRV" "$CG"; do
			for _ in 1 2 3 4 5 6 7 8 9 10; do
				[ -d "$c" ] || break
				rmdir "$c" 2>/dev/null && break
				sleep 0.1
			done
		done
	fi
	[ -n "${NS_A:-}" ] && ip netns del "$NS_A" 2>/dev/null
	[ -n "${NS_S:-}" ] && ip netns del "$NS_S" 2>/dev/null
	if [ -n "${BATS_TEST_COMPLETED:-}" ]; then :; else
		echo "--- daemon stderr" >&2
		cat "$T/daemon.err" >&2 2>/dev/null
		echo "--- audit log" >&2
		cat "$T/audit.log" >&2 2>/dev/null
	fi
	return 0
}

# audit_has KEY=VALUE... : some decision line matches all pairs
audit_has() {
	python3 - "$T/audit.log" "$@" <<'PY'
import json, sys
path, pairs = sys.argv[1], [a.split("=", 1) for a in sys.argv[2:]]
for line in open(path):
    rec = json.loads(line)
    if all(str(rec.get(k)) == v for k, v in pairs):
        sys.exit(0)
sys.exit(1)
PY
}

# metric NAME{labels} : its value from /metrics ("" when absent)
metric() {
	# From the daemon's cgroup: in nft mode anyone else dialling the admin
	# port directly is refused, as an agent should be.
	exempt curl -s http://127.0.0.1:15000/metrics |
		awk -v m="$1" 'index($0, m " ") == 1 { print $2 }'
}

phase_now_is() {
	[ "$(kernel_phase)" = "$1" ]
}

flip_to_verification() {
	touch "$T/sentinel"
	wait_for 2 phase_now_is verification
}

flip_to_agent() {
	rm -f "$T/sentinel"
	wait_for 2 phase_now_is agent
}

# Keep the embedded policy proxy's CA, CA key and usage files in the test's
# own directory: their defaults are the machine's /var/lib/egressd,
# /var/run/egressd/ca and /proxy-data.
egd_proxy_dirs() {
	export EGRESSD_CA_DIR=$BATS_TEST_TMPDIR/ca EGRESSD_CA_KEY_DIR=$BATS_TEST_TMPDIR/cakey
	export PROXY_DATA_DIR=$BATS_TEST_TMPDIR/data
	mkdir -p "$PROXY_DATA_DIR"
}

# The embedded policy proxy's fixture (proxy.bats, proxy_clients.bats): the
# fake OpenRouter in the server namespace, the BPF capture, and the proxy's
# settings with the test key KEY. egd_start_proxy then runs the daemon.
KEY=sk-or-test-egressd-agent-key
egd_setup_proxy() {
	skip_unless_capable
	egd_setup_net
	egd_setup_cgroups
	egd_cert
	# The fake stands where openrouter.ai resolves for the proxy, and keeps
	# every request it received in upstream.jsonl.
	in_srv python3 "$FIX/fake_openrouter.py" --listen $SRV4 --port 443 \
		--cert "$T/cert.pem" --key "$T/key.pem" --record "$T/upstream.jsonl" \
		--port-file "$T/fake.port" >"$T/fake.out" 2>&1 3>&- &
	SERVERS_PID=$!
	wait_for 10 test -e "$T/fake.port"
	egd_attach
	egd_proxy_dirs
	export UPSTREAM_CA_FILE=$T/cert.pem UPSTREAM_RESOLVE=openrouter.ai:443:$SRV4
	export OPENROUTER_MANAGEMENT_KEY=mgmt-test OPENROUTER_WORKSPACE_ID=ws-test
	export RESTRICTED_MODELS=openai/gpt-4o EVALUATION_RUN_ID=e2e-run
	OPENROUTER_EXPECTED_API_KEY_SHA256=$(printf %s "$KEY" | sha256sum | cut -d' ' -f1)
	export OPENROUTER_EXPECTED_API_KEY_SHA256
}

# The capture port opens before the proxy has its CA and listener; /readyz
# answers 200 only once everything is up.
proxy_ready() {
	[ "$(exempt curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:15000/readyz)" = 200 ]
}

egd_start_proxy() {
	egd_start_daemon --admin-listen 127.0.0.1:15000 --workers 4 "$@" || return 1
	wait_for 30 proxy_ready || {
		cat "$T/daemon.err" >&2
		return 1
	}
}
