#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# The core promise, end to end on a real cgroup with the real BPF programs:
# in the agent phase only the intercept host gets through; after the
# sentinel flip everything is tunnelled to where the agent dialled; the
# flip back closes those tunnels.

load lib

setup() {
	egd_setup --admin-listen 127.0.0.1:15000 --intercept-upstream $SRV4:8443
}

teardown() {
	egd_teardown
}

@test "agent phase: TLS to another host gets a TLS access_denied alert" {
	run agent curl -sS -m 5 --cacert "$T/cert.pem" --resolve example.com:443:$SRV4 \
		https://example.com/
	[ "$status" -eq 35 ]
	[[ "$output" == *"alert access denied"* ]]
	audit_has event=decision host=example.com proto=tls verdict=deny reason=not-allowed \
		dst=$SRV4:443
	[ "$(metric 'egressd_connections_total{verdict="deny",reason="not-allowed"}')" = 1 ]
}

@test "agent phase: openssl s_client is refused too" {
	run agent sh -c "echo | openssl s_client -connect $SRV4:443 -servername example.com 2>&1"
	[[ "$output" == *"alert access denied"* ]]
	audit_has host=example.com verdict=deny
}

@test "agent phase: plain HTTP gets a 403 with the reason" {
	run agent curl -sS -m 5 -H 'Host: example.com' -w '%{http_code}' http://$SRV4/
	[[ "$output" == *"refused in the agent phase"* ]]
	[[ "$output" == *403 ]]
	audit_has proto=http host=example.com verdict=deny dst=$SRV4:80
	! grep -q '"kind": "http"' "$T/server.log" 2>/dev/null
}

@test "agent phase: another TCP port is refused, even for a server that speaks first" {
	start=$(date +%s%N)
	run agent python3 "$FIX/client.py" tcp $SRV4 2222 '' 10
	elapsed_ms=$((($(date +%s%N) - start) / 1000000))
	[ "$output" = ECONNRESET ]
	# Refused at the sniff deadline (5 s), not after the first-byte wait:
	# in the agent phase a silent client may be a TLS client slow to
	# write its hello (see "a TLS client slow to send its hello").
	[ "$elapsed_ms" -ge 4500 ]
	[ "$elapsed_ms" -lt 7000 ]
	audit_has dst=$SRV4:2222 proto=tcp verdict=deny reason=no-host
	! grep -q banner "$T/server.log" 2>/dev/null
}

@test "agent phase: IPv6 is captured and refused" {
	run agent curl -sS -m 5 --cacert "$T/cert.pem" --resolve "example.com:443:[$SRV6]" \
		https://example.com/
	[ "$status" -eq 35 ]
	audit_has "dst=[$SRV6]:443" verdict=deny host=example.com
}

@test "agent phase: a v4-mapped IPv6 destination is captured and refused" {
	run agent python3 "$FIX/client.py" tcp ::ffff:$SRV4 80 'GET / HTTP/1.1\r\nHost: example.com\r\n\r\n'
	[ "$output" = "HTTP/1.1 403 Forbidden" ]
	audit_has dst=$SRV4:80 verdict=deny host=example.com
}

@test "agent phase: UDP other than DNS is refused with EPERM" {
	run agent python3 "$FIX/client.py" udp $SRV4 5353
	[ "$output" = EPERM ]
	run agent python3 "$FIX/client.py" udp-connected $SRV4 5353
	[ "$output" = EPERM ]
	run agent python3 "$FIX/client.py" udp $SRV4 53
	if [ "$MODE" = nft ]; then
		# nft mode sends every DNS packet to the policy DNS listener,
		# never to the resolver (nft.bats covers the answers).
		[ "$output" != reply ]
		run grep -s '"port": 53' "$T/server.log"
		[ -z "$output" ]
		return 0
	fi
	# BPF mode: port 53 goes to the policy DNS on loopback, never to the
	# resolver (sidedoors_bpf.bats tests the answers).
	sleep 0.2
	! grep -q '"port": 53' "$T/server.log"
	[ "$(metric 'egressd_kernel_events_total{event="udp_denied"}')" -ge 2 ]
	[ "$(metric 'egressd_kernel_events_total{event="dns_redirected"}')" -ge 1 ]
}

@test "agent phase: raw and ICMP sockets are refused" {
	bpf_only "nftables cannot refuse socket creation: the agent must lack CAP_NET_RAW"
	for kind in icmp icmp6 ping; do
		run agent python3 "$FIX/client.py" raw $kind
		echo "$kind: $output"
		[ "$output" = EPERM ]
	done
}

@test "agent phase: packet sockets are refused where the kernel has BPF LSM" {
	bpf_only "nftables cannot refuse socket creation: the agent must lack CAP_NET_RAW"
	"$EGRESSD" status --pin "$PIN" | grep -q 'packet sockets refused: yes' ||
		skip "no BPF LSM in this kernel: packet sockets need CAP_NET_RAW dropped instead"
	run agent python3 "$FIX/client.py" raw packet
	[ "$output" = EPERM ]
}

@test "intercept host reaches the intercept upstream with the ClientHello intact" {
	run agent curl -sS -m 5 --cacert "$T/cert.pem" --resolve openrouter.ai:443:203.0.113.9 \
		https://openrouter.ai/
	[ "$status" -eq 0 ]
	# The upstream (port 8443) saw the SNI and finished the handshake, which
	# covers the hello's bytes in its transcript: they arrived unchanged.
	[[ "$output" == "hello-tls sni=openrouter.ai port=8443" ]]
	audit_has host=openrouter.ai verdict=intercept reason=intercept-host dst=203.0.113.9:443
}

@test "verification phase: TLS, plain HTTP and no-SNI flows go to the original destination" {
	flip_to_verification
	run agent curl -sS -m 5 --cacert "$T/cert.pem" --resolve example.com:443:$SRV4 \
		https://example.com/
	[ "$output" = "hello-tls sni=example.com port=443" ]
	run agent curl -sS -m 5 http://$SRV4/
	[ "$output" = "hello-http port=80" ]
	run agent sh -c "printf 'GET / HTTP/1.0\r\n\r\n' | openssl s_client -quiet -noservername -connect $SRV4:443 2>/dev/null"
	[[ "$output" == *"hello-tls sni=- port=443"* ]]
	run agent curl -sS -m 5 --cacert "$T/cert.pem" --resolve "example.com:443:[$SRV6]" \
		https://example.com/
	[ "$output" = "hello-tls sni=example.com port=443" ]
	audit_has phase=verification verdict=tunnel host=example.com dst=$SRV4:443
	audit_has phase=verification verdict=tunnel proto=http dst=$SRV4:80
	audit_has event=close verdict=tunnel dst=$SRV4:80
}

@test "verification phase: non-TLS and server-speaks-first protocols are tunnelled" {
	flip_to_verification
	run agent python3 "$FIX/client.py" tcp $SRV4 7001 'plain bytes\n'
	[ "$output" = "plain bytes" ]
	run agent python3 "$FIX/client.py" tcp $SRV4 2222
	[ "$output" = "BANNER egressd-test" ]
	run agent python3 "$FIX/client.py" udp $SRV4 5353
	[ "$output" = reply ]
	audit_has dst=$SRV4:2222 verdict=tunnel proto=tcp
}

@test "removing the sentinel closes the tunnels opened in the verification phase" {
	flip_to_verification
	agent python3 "$FIX/client.py" hold $SRV4 7001 10 "$T/held" >"$T/hold.out" 3>&- &
	holder=$!
	wait_for 5 test -e "$T/held"
	flip_to_agent
	wait $holder
	[ "$(cat "$T/hold.out")" != still-open ]
	audit_has event=close detail=phase-change dst=$SRV4:7001
	run agent python3 "$FIX/client.py" tcp $SRV4 7001 'again\n'
	[ "$output" = ECONNRESET ]
}

@test "the kernel's phase follows the sentinel within 100 ms" {
	touch "$T/sentinel"
	sleep 0.1
	[ "$(kernel_phase)" = verification ]
	rm "$T/sentinel"
	sleep 0.1
	[ "$(kernel_phase)" = agent ]
}

@test "the daemon's own cgroup is not redirected" {
	run exempt python3 "$FIX/client.py" tcp $SRV4 7001 'direct\n'
	[ "$output" = direct ]
	[ "$MODE" = nft ] || [ "$(metric 'egressd_kernel_events_total{event="exempt"}')" -ge 1 ]
	! audit_has dst=$SRV4:7001
}

@test "the agent's getpeername shows the address it dialled" {
	flip_to_verification
	run agent python3 "$FIX/client.py" peername $SRV4 7001
	[ "$output" = "$SRV4:7001" ]
	run agent python3 "$FIX/client.py" peername $SRV6 7001
	[ "$output" = "$SRV6:7001" ]
}

@test "a direct dial to the listener is refused" {
	run agent python3 "$FIX/client.py" tcp 127.0.0.1 15443 'GET / HTTP/1.1\r\nHost: example.com\r\n\r\n'
	if [ "$MODE" = nft ]; then
		# The ruleset refuses it before it reaches the listener.
		[ "$output" = ECONNRESET ] || [ "$output" = ECONNREFUSED ]
	else
		# Loopback is not captured: it reaches the listener, which finds
		# no original destination and refuses.
		[ "$output" = "HTTP/1.1 403 Forbidden" ]
		audit_has reason=no-original-dst verdict=deny
	fi
}
