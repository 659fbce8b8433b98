#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# The side doors of BPF mode, one attack per test, each tried from the
# agent's cgroup against the server ("internet") namespace. Every test
# asserts the agent's error AND that nothing reached the other side: the
# servers log what they receive, and a sniffer on the server's end of the
# veth logs every IP packet that arrives, whatever its protocol or port.
#
# The policy DNS is the daemon's; here a stand-in (fixtures/dns_standin.py,
# in the exempt cgroup of the agent's namespace) answers on 127.0.0.1:15053
# and [::1]:15053, so these tests check the kernel's redirection alone.

load lib

META4=169.254.169.254
META6=fd00:ec2::254
EXTRA4=198.51.100.9 # added to EGRESSD_DENY_CIDRS by the tests that need it
SD=$BATS_TEST_DIRNAME/fixtures/sidedoors.py

# Servers at the metadata addresses, on port 53 (UDP and TCP), and the usual
# ones; then the sniffer on v1.
sd_servers() {
	ip -n "$NS_S" addr add $META4/32 dev v1
	ip -n "$NS_S" addr add $EXTRA4/32 dev v1
	ip -n "$NS_S" addr add $META6/128 dev v1 nodad
	egd_cert
	in_srv python3 "$FIX/servers.py" --cert "$T/cert.pem" --key "$T/key.pem" \
		--log "$T/server.log" --ready "$T/servers.ready" \
		--http $SRV4:80 --http "[$SRV6]:80" --http $META4:80 --http "[$META6]:80" \
		--http $EXTRA4:80 --echo $SRV4:7001 --record $SRV4:53 --record "[$SRV6]:53" \
		--udp $SRV4:53 --udp "[$SRV6]:53" --udp $META4:123 --udp "[$META6]:123" \
		--udp $SRV4:5353 --udp $SRV4:443 --udp "[$SRV6]:443" >"$T/servers.out" 2>&1 3>&- &
	SERVERS_PID=$!
	wait_for 10 test -e "$T/servers.ready"
	: >"$T/sniff.log"
	in_srv python3 "$FIX/sniff.py" --dev v1 --log "$T/sniff.log" --ready "$T/sniff.ready" \
		>"$T/sniff.out" 2>&1 3>&- &
	wait_for 10 test -e "$T/sniff.ready"
}

sd_setup() { # sd_setup [attach flags...]: no daemon
	skip_unless_capable
	egd_setup_net
	egd_setup_cgroups
	sd_servers
	egd_attach "$@" || {
		cat "$T/attach.err" >&2
		return 1
	}
}

dns_standin() {
	: >"$T/dns.log"
	exempt python3 "$FIX/dns_standin.py" --answer 192.0.2.77 \
		--listen 127.0.0.1:15053 --listen "[::1]:15053" \
		--log "$T/dns.log" --ready "$T/dns.ready" >"$T/dns.out" 2>&1 3>&- &
	wait_for 10 test -e "$T/dns.ready"
}

setup() {
	skip_unless_capable
}

teardown() {
	egd_teardown
}

# reached KEY=VALUE... : the sniffer saw a packet from the agent namespace
# matching all pairs (after a moment for the packet to arrive).
reached() {
	sleep 0.3
	python3 - "$T/sniff.log" "$@" <<'PY'
import json, sys
path, pairs = sys.argv[1], [a.split("=", 1) for a in sys.argv[2:]]
for line in open(path):
    rec = json.loads(line)
    if rec["src"] not in ("198.51.100.2", "2001:db8::2"):
        continue
    if all(str(rec.get(k)) == v for k, v in pairs):
        sys.exit(0)
sys.exit(1)
PY
}

# served KEY=VALUE... : a server in the server namespace logged it.
served() {
	python3 - "$T/server.log" "$@" <<'PY'
import json, sys, os
path, pairs = sys.argv[1], [a.split("=", 1) for a in sys.argv[2:]]
if not os.path.exists(path):
    sys.exit(1)
for line in open(path):
    rec = json.loads(line)
    if all(str(rec.get(k)) == v for k, v in pairs):
        sys.exit(0)
sys.exit(1)
PY
}

counter() { # counter NAME: the kernel counter from egressd status
	"$EGRESSD" status --pin "$PIN" | awk -v n="$1" '$1 == n { print $2 }'
}

@test "DNS over UDP to the configured resolver and to any other address reaches only the policy DNS" {
	sd_setup
	dns_standin
	# The sniffer works: the exempt cgroup's query does reach the resolver.
	run exempt python3 "$SD" dns-udp $SRV4
	[ "$output" = "answer=no-answer from=$SRV4:53" ] # the echo server's copy
	reached dst=$SRV4 dport=53
	: >"$T/sniff.log"
	: >"$T/server.log"
	# The agent asks the resolver, another address, and over IPv6 and a
	# v4-mapped address: every answer is the stand-in's, from the address
	# the agent asked (the stub resolvers' check).
	for dst in $SRV4 203.0.113.53 $SRV6 2001:db8:ffff::53 ::ffff:$SRV4 127.0.0.53; do
		run agent python3 "$SD" dns-udp $dst
		echo "$dst: $output"
		[ "$output" = "answer=192.0.2.77 from=$dst:53" ]
	done
	run agent python3 "$SD" dns-udp $SRV4 53 connected
	[ "$output" = "answer=192.0.2.77 from=$SRV4:53 peer=$SRV4:53" ]
	run agent python3 "$SD" dns-udp $SRV6 53 connected
	[ "$output" = "answer=192.0.2.77 from=$SRV6:53 peer=$SRV6:53" ]
	[ "$(grep -c '"transport": "udp"' "$T/dns.log")" -eq 8 ]
	! reached dport=53
	! served port=53
	[ "$(counter dns_reply_restored)" -ge 8 ]
}

@test "dig through the redirection gets the policy DNS's answer, over UDP and TCP" {
	command -v dig >/dev/null || skip "dig not installed (bind9-dnsutils)"
	sd_setup
	dns_standin
	run agent dig +short +tries=1 +time=2 @$SRV4 probe.example A
	[ "$output" = 192.0.2.77 ]
	run agent dig +short +tries=1 +time=2 @203.0.113.53 probe.example A
	[ "$output" = 192.0.2.77 ]
	run agent dig +short +tries=1 +time=2 -6 @$SRV6 probe.example A
	[ "$output" = 192.0.2.77 ]
	run agent dig +tcp +short +tries=1 +time=2 @$SRV4 probe.example A
	[ "$output" = 192.0.2.77 ]
	grep -q '"transport": "tcp"' "$T/dns.log"
	! reached dport=53
	! served port=53
}

# in_resolv NAMESERVER CMD...: run CMD as the agent with a resolv.conf naming
# NAMESERVER, bind-mounted in a mount namespace of its own (the machine's
# file is never touched).
in_resolv() {
	local ns=$1
	shift
	printf 'nameserver %s\noptions timeout:2 attempts:1\n' "$ns" >"$T/resolv.$ns.conf"
	agent unshare -m sh -c 'mount --bind "$0" /etc/resolv.conf && exec "$@"' \
		"$T/resolv.$ns.conf" "$@"
}

@test "real stub resolvers (glibc, Python, Node's c-ares) accept the redirected answers" {
	sd_setup
	dns_standin
	grep -q '^hosts:.*dns' /etc/nsswitch.conf || skip "nsswitch.conf does not ask DNS for hosts"
	for ns in $SRV4 203.0.113.53 $SRV6; do
		run in_resolv $ns getent ahostsv4 probe.example
		echo "getent via $ns: $output"
		[ "${lines[0]%% *}" = 192.0.2.77 ]
		run in_resolv $ns python3 -c \
			"import socket; print(socket.getaddrinfo('probe.example', 443, socket.AF_INET)[0][4][0])"
		[ "$output" = 192.0.2.77 ]
	done
	if command -v node >/dev/null; then
		run in_resolv $SRV4 node -e \
			"require('dns').resolve4('probe.example', (e, a) => console.log(e ? e.code : a[0]))"
		echo "node resolve4: $output"
		[ "$output" = 192.0.2.77 ]
		run in_resolv $SRV4 node -e \
			"require('dns').lookup('probe.example', 4, (e, a) => console.log(e ? e.code : a))"
		[ "$output" = 192.0.2.77 ]
	fi
	! reached dport=53
	! served port=53
}

@test "DNS over TCP to any address reaches only the policy DNS" {
	sd_setup
	dns_standin
	for dst in $SRV4 203.0.113.53 $SRV6; do
		run agent python3 "$SD" dns-tcp $dst
		echo "$dst: $output"
		[ "$output" = "answer=192.0.2.77 peer=$dst:53" ]
	done
	[ "$(grep -c '"transport": "tcp"' "$T/dns.log")" -eq 3 ]
	! reached dport=53
	! served port=53
	[ "$(counter dns_redirected)" -ge 3 ]
}

@test "metadata and other always-deny addresses are refused in both phases, v4, v6 and v4-mapped" {
	sd_setup --deny-cidrs $EXTRA4/32
	egd_start_daemon --mode bpf
	for phase in agent verification; do
		[ $phase = agent ] || flip_to_verification
		for dst in $META4 $META6 ::ffff:$META4 $EXTRA4 169.254.1.1; do
			run agent python3 "$FIX/client.py" tcp $dst 80 'GET / HTTP/1.0\r\n\r\n'
			echo "$phase tcp $dst: $output"
			[ "$output" = EPERM ]
		done
		for dst in $META4 $META6 ::ffff:$META4; do
			run agent python3 "$FIX/client.py" udp $dst 123
			echo "$phase udp $dst: $output"
			[ "$output" = EPERM ]
			run agent python3 "$FIX/client.py" udp-connected $dst 123
			[ "$output" = EPERM ]
		done
		# Multicast and broadcast are in the set too.
		run agent python3 "$FIX/client.py" udp 224.0.0.251 5353
		[ "$output" = EPERM ]
		run agent python3 "$FIX/client.py" udp ff02::fb 5353
		[ "$output" = EPERM ]
	done
	# The operator's prefix extends the defaults, it does not replace
	# them: the rest of the server's /24 is still tunnelled.
	run agent python3 "$FIX/client.py" tcp $SRV4 80 'GET / HTTP/1.1\r\nHost: example.com\r\n\r\n'
	[ "$output" = "HTTP/1.1 200 OK" ]
	! reached dst=$META4
	! reached dst=$META6
	! reached dst=$EXTRA4
	! served port=123
	! grep -q "$META4\|$EXTRA4" "$T/audit.log"
	[ "$(counter deny_cidr_refused)" -ge 26 ]
	# egressd status shows the set the kernel holds, defaults and addition.
	"$EGRESSD" status --pin "$PIN" | grep '^always-deny' >"$T/deny.txt"
	grep -qw "$EXTRA4/32" "$T/deny.txt"
	grep -qw "169.254.0.0/16" "$T/deny.txt"
	grep -qw "fd00:ec2::254/128" "$T/deny.txt"
}

@test "sockets other than TCP and UDP are refused in both phases" {
	sd_setup
	egd_start_daemon --mode bpf
	for phase in agent verification; do
		[ $phase = agent ] || flip_to_verification
		for kind in tcp udp tcp6 udp6; do
			run agent python3 "$SD" sock $kind
			[ "$output" = created ]
		done
		tried=0
		for kind in mptcp mptcp6 sctp sctp-seqpacket udplite udplite6 dccp raw-icmp raw-udp \
			raw6 ping ping6; do
			# What the kernel here cannot make for anyone is no door.
			if [ "$(exempt python3 "$SD" sock $kind)" != created ]; then
				echo "$kind: not available in this kernel" >&3
				continue
			fi
			run agent python3 "$SD" sock $kind
			echo "$phase $kind: $output"
			[ "$output" = EPERM ]
			tried=$((tried + 1))
		done
		# Raw and ping sockets exist in any kernel this runs on.
		[ $tried -ge 5 ]
	done
	run agent python3 "$SD" ping $SRV4
	[ "$output" = EPERM ]
	! reached proto=1
	[ "$(counter socket_denied)" -ge 12 ]
	"$EGRESSD" status --pin "$PIN" | grep -q '^packet sockets refused: '
}

@test "routing headers and IP options are refused on the sandbox's sockets" {
	sd_setup
	for opt in rthdr hopopts dstopts pktoptions ip_options; do
		run agent python3 "$SD" sockopt $opt
		echo "$opt: $output"
		[ "$output" = EPERM ]
	done
	# The same options are no business of the exempt cgroup's.
	run exempt python3 "$SD" sockopt rthdr
	[ "$output" = set ]
	[ "$(counter sockopt_refused)" -ge 5 ]
}

@test "a routing header set on a socket made before the attach is dropped by the backstop" {
	skip_unless_capable
	egd_setup_net
	egd_setup_cgroups
	sd_servers
	# Control, nothing attached yet: the header does send "[::1]" datagrams
	# out to the server.
	touch "$T/go0"
	run agent python3 "$SD" rthdr-sticky 15443 $SRV6 "$T/m0" "$T/go0"
	[ "$output" = sent ]
	reached dst=$SRV6 proto=43 # IPv6 routing header
	: >"$T/sniff.log"
	# The attack: the option is set before the attach, the datagram sent
	# after it. The sendmsg hook sees ::1 and the capture port, and lets it
	# through; the packet's destination is the server.
	agent python3 "$SD" rthdr-sticky 15443 $SRV6 "$T/m1" "$T/go1" >"$T/rthdr.out" 3>&- &
	pid=$!
	wait_for 5 test -e "$T/m1"
	egd_attach
	touch "$T/go1"
	wait $pid
	cat "$T/rthdr.out"
	[ "$(cat "$T/rthdr.out")" = EPERM ]
	! reached dst=$SRV6
	[ "$(counter backstop_dropped)" -ge 1 ]
}

@test "agent phase: loopback reaches only the daemon's ports and EGRESSD_LOOPBACK_ALLOW" {
	sd_setup --loopback-allow 9997
	egd_start_daemon --mode bpf --admin-listen 127.0.0.1:15000
	# Listeners that are not the daemon's: a local proxy, say.
	exempt socat TCP-LISTEN:9999,bind=127.0.0.1,fork,reuseaddr SYSTEM:'echo local' 3>&- &
	exempt socat TCP6-LISTEN:9999,bind=[::1],fork,reuseaddr SYSTEM:'echo local6' 3>&- &
	exempt socat TCP-LISTEN:9997,bind=127.0.0.1,fork,reuseaddr SYSTEM:'echo allowed' 3>&- &
	exempt socat UDP-RECVFROM:9998,bind=127.0.0.1,fork SYSTEM:'echo udp' 3>&- &
	wait_for 5 port_open 127.0.0.1 9999
	wait_for 5 port_open 127.0.0.1 9997
	run agent python3 "$FIX/client.py" tcp 127.0.0.1 9999
	[ "$output" = EPERM ]
	run agent python3 "$FIX/client.py" tcp ::1 9999
	[ "$output" = EPERM ]
	run agent python3 "$FIX/client.py" tcp ::ffff:127.0.0.1 9999
	[ "$output" = EPERM ]
	run agent python3 "$FIX/client.py" tcp 127.0.0.2 9999
	[ "$output" = EPERM ]
	run agent python3 "$FIX/client.py" udp 127.0.0.1 9998
	[ "$output" = EPERM ]
	# The admin port is the operator's, not the agent's.
	run agent python3 "$FIX/client.py" tcp 127.0.0.1 15000 'GET /metrics HTTP/1.0\r\n\r\n'
	[ "$output" = EPERM ]
	# 0.0.0.0 connects to the local host: refused as an always-deny address.
	run agent python3 "$FIX/client.py" tcp 0.0.0.0 9999
	[ "$output" = EPERM ]
	run agent python3 "$FIX/client.py" tcp 127.0.0.1 9997
	[ "$output" = allowed ]
	# The capture listener itself is reachable (and refuses a direct dial).
	run agent python3 "$FIX/client.py" tcp 127.0.0.1 15443 'GET / HTTP/1.1\r\nHost: example.com\r\n\r\n'
	[ "$output" != EPERM ]
	[ "$(counter loopback_port_refused)" -ge 6 ]
	"$EGRESSD" status --pin "$PIN" | grep '^loopback ports' | grep -qw 9997
	wait_for 3 audit_has event=kernel phase=agent counter=loopback_port_refused
	# The verification phase does not limit loopback.
	flip_to_verification
	run agent python3 "$FIX/client.py" tcp 127.0.0.1 9999
	[ "$output" = local ]
}

@test "the backstop alone (socket hooks detached) lets nothing reach the internet" {
	[ -n "$(strings "$EGRESSD" | grep -x EGRESSD_TEST_BACKSTOP_ONLY)" ] ||
		skip "egressd built without EGD_TEST_SWITCHES"
	EGRESSD_TEST_BACKSTOP_ONLY=1 sd_setup
	grep -q 'packet backstop only' "$T/attach.err"
	bpftool cgroup show "$CG" | grep -q egd_backstop
	! bpftool cgroup show "$CG" | grep -q 'egd_connect\|egd_sendmsg\|egd_sock_create'
	# Control: from the exempt cgroup the same probes do reach the server.
	run exempt python3 "$FIX/client.py" udp $SRV4 5353
	[ "$output" = reply ]
	run exempt python3 "$SD" ping $SRV4
	[ "$output" = reply ]
	reached dst=$SRV4 dport=5353
	reached dst=$SRV4 proto=1
	: >"$T/sniff.log"
	: >"$T/server.log"
	# Nothing stops these at the socket now; the backstop drops them.
	run agent python3 "$FIX/client.py" tcp $SRV4 7001 'hello\n' 1
	[ "$output" != hello ]
	run agent python3 "$FIX/client.py" tcp $SRV6 80 'GET / HTTP/1.0\r\n\r\n' 1
	[ "$output" != "HTTP/1.1 200 OK" ]
	run agent python3 "$FIX/client.py" udp $SRV4 5353
	[ "$output" != reply ]
	run agent python3 "$FIX/client.py" udp-connected $SRV4 53
	[ "$output" != reply ]
	run agent python3 "$FIX/client.py" udp ::ffff:$SRV4 5353
	[ "$output" != reply ]
	run agent python3 "$SD" ping $SRV4
	[ "$output" != reply ]
	run agent python3 "$SD" ping $SRV6
	[ "$output" != reply ]
	run agent python3 "$FIX/client.py" raw icmp
	[ "$output" = created ] # no sock_create hook: the socket exists...
	run agent python3 -c "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP); s.sendto(b'\x08\x00\xf7\xff\x00\x00\x00\x00', ('$SRV4', 0)); print('sent')"
	! reached
	! served
	[ "$(counter backstop_dropped)" -ge 8 ]
}

@test "the backstop drops the agent's replies on flows a remote peer opened" {
	sd_setup
	agent python3 "$SD" listen-tcp 9000 "$T/tcp.ready" 5 >"$T/tcp.out" 3>&- &
	tcp_pid=$!
	agent python3 "$SD" listen-udp 9001 "$T/udp.ready" 5 >"$T/udp.out" 3>&- &
	udp_pid=$!
	wait_for 5 test -e "$T/tcp.ready"
	wait_for 5 test -e "$T/udp.ready"
	# From the "internet": connect in, and send a datagram in.
	run nsenter --net="/run/netns/$NS_S" python3 -c "
import socket
s = socket.socket(); s.settimeout(3)
try:
    s.connect(('$AG4', 9000)); print('connected', s.recv(100))
except OSError as e:
    print(type(e).__name__)"
	echo "tcp in: $output"
	[[ "$output" != connected* ]]
	run nsenter --net="/run/netns/$NS_S" python3 -c "
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
s.sendto(b'hello', ('$AG4', 9001))
try:
    print('reply', s.recv(100))
except OSError as e:
    print(type(e).__name__)"
	echo "udp in: $output"
	[[ "$output" != reply* ]]
	wait $tcp_pid $udp_pid || true
	# The SYN reached the listener, the handshake never completed.
	[ "$(cat "$T/tcp.out")" = timeout ]
	# The datagram reached the agent; its reply was refused at sendmsg.
	[ "$(cat "$T/udp.out")" = EPERM ]
	! reached sport=9000
	! reached sport=9001
	[ "$(counter backstop_dropped)" -ge 1 ]
}

@test "a UDP socket connected in the verification phase is silenced by a re-lock" {
	sd_setup
	egd_start_daemon --mode bpf
	flip_to_verification
	agent python3 "$SD" udp-relock $SRV4 5353 "$T/sent1" "$T/go" >"$T/relock.out" 3>&- &
	pid=$!
	wait_for 5 test -e "$T/sent1"
	flip_to_agent
	: >"$T/sniff.log"
	touch "$T/go"
	wait $pid
	cat "$T/relock.out"
	[ "$(cut -d' ' -f1 "$T/relock.out")" = reply ]
	[ "$(cut -d' ' -f2 "$T/relock.out")" != reply ]
	served kind=udp port=5353 data=before-relock
	! served kind=udp port=5353 data=after-relock
	! reached dst=$SRV4 dport=5353
	[ "$(counter backstop_dropped)" -ge 1 ]
	# The daemon turns the kernel's drops into an audit line.
	wait_for 3 audit_has event=kernel phase=agent counter=backstop_dropped
}

# icaddr_put ADDR SECONDS: the policy DNS's record that ADDR was answered for
# an intercept host, expiring SECONDS from now (negative: already expired),
# written as egd_bpf_icaddr_put() does.
icaddr_put() {
	local key val
	key=$(python3 -c "
import socket, struct, sys
a = '$1'
if ':' in a:
    k = struct.pack('=HH', 10, 0) + socket.inet_pton(socket.AF_INET6, a)
else:
    k = struct.pack('=HH', 2, 0) + socket.inet_aton(a) + bytes(12)
print(' '.join('%02x' % b for b in k))")
	val=$(python3 -c "
import struct, time
t = time.clock_gettime_ns(time.CLOCK_MONOTONIC) + int($2 * 1e9)
print(' '.join('%02x' % b for b in struct.pack('=Q', t)))")
	# shellcheck disable=SC2086
	bpftool map update pinned "$PIN/maps/icaddr_map" key hex $key value hex $val
}

@test "UDP (QUIC) to an intercept address is refused in both phases; an expired one is not" {
	sd_setup
	egd_start_daemon --mode bpf
	icaddr_put $SRV4 60
	icaddr_put $SRV6 -1
	run agent python3 "$FIX/client.py" udp $SRV4 443
	[ "$output" = EPERM ]
	flip_to_verification
	for probe in udp udp-connected; do
		run agent python3 "$FIX/client.py" $probe $SRV4 443
		[ "$output" = EPERM ]
		run agent python3 "$FIX/client.py" $probe ::ffff:$SRV4 443
		[ "$output" = EPERM ]
	done
	# Expired: ordinary verification-phase UDP, which reaches the server.
	run agent python3 "$FIX/client.py" udp $SRV6 443
	[ "$output" = reply ]
	! reached dst=$SRV4 dport=443
	reached dst=$SRV6 dport=443
	[ "$(counter udp_intercept_refused)" -ge 5 ]
}
