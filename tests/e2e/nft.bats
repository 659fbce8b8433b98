#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# The nftables fallback (egressd run --mode nft): the same daemon and the
# same decisions, with capture by a ruleset in the shared network namespace
# instead of the cgroup programs. The agent runs in another cgroup of the
# same namespace, as a Compose agent joined with network_mode service:egressd.

load lib

nft_setup() {
	skip_unless_capable
	command -v nft >/dev/null || skip "nft CLI missing (used to tamper with the table)"
	egd_setup_net
	egd_setup_cgroups
	egd_start_servers
	EGRESSD_RESOLVERS=$SRV4 egd_start_daemon --mode nft --admin-listen 127.0.0.1:15000 \
		--intercept-upstream $SRV4:8443 "$@"
}

in_agent_ns() {
	nsenter --net="/run/netns/$NS_A" "$@"
}

phase_is() {
	[ "$(metric egressd_phase)" = "$1" ]
}

setup() {
	# Any daemon here that serves the embedded proxy keeps its CA and
	# ledger in the test's own directory, never the machine's.
	egd_proxy_dirs
}

teardown() {
	[ -n "${NS_A:-}" ] && in_agent_ns "$EGRESSD" nft-remove >/dev/null 2>&1
	egd_teardown
}

# The behaviours shared with BPF mode (refusals, intercept, IPv6, UDP, the
# flip and back) are capture.bats, run a second time with EGD_E2E_MODE=nft.
# These are the cases only the nftables mode has.

@test "nft: an unprivileged agent of another uid is captured and cannot touch the ruleset" {
	nft_setup
	# As in Compose: another uid, no capabilities at all.
	run agent setpriv --reuid 1000 --regid 1000 --clear-groups --inh-caps=-all \
		--bounding-set=-all curl -sS -m 5 -k \
		--resolve example.com:443:$SRV4 https://example.com/
	[ "$status" -eq 35 ]
	audit_has host=example.com verdict=deny
	run agent setpriv --reuid 1000 --regid 1000 --clear-groups --inh-caps=-all \
		--bounding-set=-all nft delete table inet egressd
	[ "$status" -ne 0 ]
	in_agent_ns nft list table inet egressd >/dev/null
}

@test "nft: a deleted table is restored and the agent stays refused" {
	nft_setup
	in_agent_ns nft delete table inet egressd
	wait_for 5 in_agent_ns nft list table inet egressd
	run agent curl -sS -m 5 --cacert "$T/cert.pem" --resolve example.com:443:$SRV4 \
		https://example.com/
	[ "$status" -eq 35 ]
	grep -q SECURITY "$T/daemon.err"
}

@test "nft: an altered rule is put back" {
	nft_setup
	in_agent_ns nft flush chain inet egressd filter_output
	wait_for 5 sh -c "nsenter --net=/run/netns/$NS_A nft list chain inet egressd filter_output | grep -q 'ct status dnat'"
	grep -q "was altered" "$T/daemon.err"
}

@test "nft: with the daemon killed the agent is still refused (the table stays)" {
	nft_setup
	kill -9 "$DAEMON_PID"
	wait "$DAEMON_PID" || true
	DAEMON_PID=
	run agent curl -sS -m 5 http://$SRV4/
	[ "$status" -ne 0 ]
	run agent python3 "$FIX/client.py" udp-connected $SRV4 5353
	[ "$output" = EPERM ]
}

@test "nft: the agent cannot dial the daemon's listener directly" {
	nft_setup
	run agent python3 "$FIX/client.py" tcp 127.0.0.1 15443 'GET / HTTP/1.1\r\nHost: example.com\r\n\r\n'
	[ "$output" = ECONNRESET ] || [ "$output" = ECONNREFUSED ]
	run agent python3 "$FIX/client.py" tcp 127.0.0.1 15000 'GET /metrics HTTP/1.0\r\n\r\n'
	[ "$output" = ECONNRESET ] || [ "$output" = ECONNREFUSED ]
}

@test "nft: an agent with the daemon's uid but not its cgroup is still captured" {
	nft_setup
	# The daemon runs as root here; so does the agent: only the cgroup differs.
	run agent python3 "$FIX/client.py" tcp $SRV4 7001 'hello\n'
	[ "$output" = ECONNRESET ]
	audit_has dst=$SRV4:7001 verdict=deny
}

@test "nft: when the ruleset cannot be installed the daemon exits non-zero and is never ready" {
	skip_unless_capable
	egd_setup_net
	egd_setup_cgroups
	# Without CAP_NET_ADMIN, installing the table fails.
	run nsenter --net="/run/netns/$NS_A" capsh --drop=cap_net_admin -- -c \
		"$EGRESSD run --mode nft --admin-listen 127.0.0.1:15000 --sentinel $T/sentinel"
	[ "$status" -ne 0 ]
	[[ "$output" == *"installing the ruleset"* ]]
}
