#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# The relay itself: bytes and FINs arriving together, half-closes, prompt
# decisions when a client stops sending.

load lib

setup() {
	egd_setup --admin-listen 127.0.0.1:15000 --intercept-upstream $SRV4:8443
}

teardown() {
	egd_teardown
}

PY='
import socket, sys, time
host, port, data = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
t = time.time()
s = socket.create_connection((host, port))
s.sendall(data)
s.shutdown(socket.SHUT_WR)
out = b""
s.settimeout(8)
try:
    while True:
        b = s.recv(65536)
        if not b:
            break
        out += b
except Exception as e:
    out += ("ERR %s" % e).encode()
print("%.2f %d %r" % (time.time() - t, len(out), out[:40]))
'

@test "data then FIN at once: the tunnel passes both without delay" {
	flip_to_verification
	run agent python3 -c "$PY" $SRV4 7001 "$(printf 'x%.0s' $(seq 3000))"
	[ "${output%% *}" \< "1.00" ]
	[[ "$output" == *" 3000 "* ]]
}

@test "half a request head then FIN: decided at once, not at the sniff deadline" {
	run agent python3 -c "$PY" $SRV4 80 'GET / HTTP/1.1\r\nHost: exa'
	[ "${output%% *}" \< "1.00" ]
}

@test "verification phase: waiting out the first-byte wait does not carry a hello for the intercept host past the proxy" {
	flip_to_verification
	# Silent for 0.6 s (past the 250 ms first-byte wait): tunnelled as a
	# server-speaks-first flow. Then a ClientHello for example.com rides
	# that tunnel, one for openrouter.ai is refused.
	run agent python3 "$FIX/client.py" late-tls $SRV4 443 example.com 0.6
	[[ "$output" == "hello-tls sni=example.com port=443" ]]
	run agent python3 "$FIX/client.py" late-tls $SRV4 443 openrouter.ai 0.6
	[[ "$output" != *hello-tls* ]]
	grep -q 'late hello for an intercepted host' "$T/audit.log"
}
