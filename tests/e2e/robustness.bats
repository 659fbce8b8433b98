#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# Bad input and bad conditions: each gets a clean refusal or a clear error,
# never a crash or an open door.

load lib

# No test here sets EGRESSD_INTERCEPT_UPSTREAM, so each daemon runs the
# embedded policy proxy; its files stay in the test's directory.
setup() {
	egd_proxy_dirs
}

teardown() {
	egd_teardown
}

@test "garbage after a TLS record header is refused and the daemon lives on" {
	egd_setup --admin-listen 127.0.0.1:15000
	run agent python3 "$FIX/client.py" tcp $SRV4 443 '\x16\x03\x01\x00\x10garbagegarbage!!'
	[ "$output" = "$(printf '\x15\x03\x03\x00\x02\x02\x31')" ] || [ "$output" = ECONNRESET ]
	audit_has dst=$SRV4:443 verdict=deny
	run nsenter --net="/run/netns/$NS_A" curl -sS http://127.0.0.1:15000/healthz
	[ "$output" = ok ]
}

@test "an oversize ClientHello is refused" {
	egd_setup
	# Handshake header announcing 64 KiB: over the 16 KiB limit.
	run agent python3 "$FIX/client.py" tcp $SRV4 443 '\x16\x03\x01\x40\x00\x01\x01\x00\x00'
	audit_has dst=$SRV4:443 verdict=deny reason=malformed
}

@test "a slowloris hello is cut off at the sniff deadline" {
	egd_setup --sniff-timeout-ms 1000 --admin-listen 127.0.0.1:15000
	start=$SECONDS
	# A TLS record header, then one byte every 0.2 s: 6 s for the whole
	# hello, if the daemon waited for it.
	run agent python3 "$FIX/client.py" slow $SRV4 443 \
		16030100190100001503030000000000000000000000000000000000 0.2
	[ $((SECONDS - start)) -lt 4 ]
	[ "$output" != data ]
	audit_has dst=$SRV4:443 verdict=deny reason=malformed detail=truncated
	[ "$(metric egressd_sniff_timeouts_total)" = 1 ]
}

@test "with the daemon down the agent gets no network (fail closed)" {
	egd_setup
	kill "$DAEMON_PID"
	wait "$DAEMON_PID" || true
	DAEMON_PID=
	run agent curl -sS -m 5 http://$SRV4/
	[ "$status" -eq 7 ] # connection refused
	touch "$T/sentinel"
	run agent curl -sS -m 5 http://$SRV4/
	[ "$status" -eq 7 ]
}

@test "run without an attachment exits non-zero with a clear message" {
	skip_unless_capable
	# --mode bpf: in auto mode a missing attachment means nft, in this namespace.
	run unshare -n "$EGRESSD" run --mode bpf --pin "$BATS_TEST_TMPDIR/nothing-here" --admin-listen off
	[ "$status" -ne 0 ]
	[[ "$output" == *"no egressd attachment at"* ]]
}

@test "a port in use is a clear error, not a silent failure" {
	egd_setup
	# In the daemon's cgroup: anywhere in or above the sandbox is refused first.
	run exempt "$EGRESSD" run --pin "$PIN" --sentinel "$T/sentinel" --admin-listen off
	[ "$status" -ne 0 ]
	[[ "$output" == *"Address already in use"* ]]
}

@test "a worker that cannot be set up stops the daemon with a message" {
	skip_unless_capable
	egd_setup_net
	egd_setup_cgroups
	egd_attach
	# Few descriptors and many workers: the first workers get their
	# loops and listeners, a later one runs out. Its listener is opened
	# quietly (one log line per address, not per worker), and the daemon
	# used to exit 1 with nothing said.
	# In the daemon's cgroup: anywhere in or above the sandbox is refused first.
	run exempt prlimit --nofile=64:64 \
		"$EGRESSD" run --mode bpf --pin "$PIN" --admin-listen off --workers 32 \
		--proxy-http-listen off --sentinel "$T/sentinel"
	echo "$output"
	[ "$status" -ne 0 ]
	[[ "$output" == *"not starting: workers: Too many open files"* ]]
}

@test "bad settings are refused at start, naming the variable" {
	skip_unless_capable
	EGRESSD_FIRST_BYTE_MS=soon run unshare -n "$EGRESSD" run --admin-listen off
	[ "$status" -eq 2 ]
	[[ "$output" == *EGRESSD_FIRST_BYTE_MS* ]]
	# A number out of range says which range.
	run unshare -n "$EGRESSD" run --max-conns 0 --admin-listen off
	[ "$status" -eq 2 ]
	[[ "$output" == *"EGRESSD_MAX_CONNS"*"from 1 to 1000000"* ]]
	run unshare -n "$EGRESSD" run --agent-allow 'bad host!' --admin-listen off
	[ "$status" -eq 2 ]
	[[ "$output" == *EGRESSD_AGENT_ALLOW* ]]
	run unshare -n "$EGRESSD" run --listen 10.0.0.1:15443
	[ "$status" -eq 2 ]
	run unshare -n "$EGRESSD" run --no-such-flag
	[ "$status" -eq 2 ]
}

@test "agent allowlist: the host is dialled by name, not by the address the agent chose" {
	skip_unless_capable
	egd_setup_net
	egd_setup_cgroups
	egd_start_servers
	egd_attach
	# allowed.test resolves (for the daemon) to the real server.
	# The daemon gets a private mount namespace with its own /etc/hosts.
	echo "$SRV4 allowed.test" >"$T/hosts"
	DAEMON_PREFIX=(unshare -m sh -c 'mount --bind "$0" /etc/hosts && exec "$@"' "$T/hosts")
	egd_start_daemon --mode bpf --agent-allow allowed.test
	run agent curl -sS -m 5 --cacert "$T/cert.pem" --resolve allowed.test:443:$SRV4 \
		https://allowed.test/
	[ "$output" = "hello-tls sni=allowed.test port=443" ]
	# Naming the allowed host while dialling another address still lands on
	# the allowed host.
	run agent curl -sS -m 5 --cacert "$T/cert.pem" --resolve allowed.test:8443:203.0.113.50 \
		https://allowed.test:8443/
	[ "$output" = "hello-tls sni=allowed.test port=8443" ]
	audit_has host=allowed.test verdict=tunnel reason=agent-allow dst=203.0.113.50:8443
}

@test "status and phase report the attachment" {
	egd_setup
	run "$EGRESSD" status --pin "$PIN"
	[ "$status" -eq 0 ]
	[[ "$output" == *"attached: yes"* ]]
	[[ "$output" == *"phase: agent"* ]]
	[[ "$output" == *"tcp_redirected"* ]]
	run "$EGRESSD" detach --pin "$PIN"
	[ "$status" -eq 0 ]
	run "$EGRESSD" status --pin "$PIN"
	[ "$status" -ne 0 ]
}

@test "exec runs the command captured, with the daemon's CA trusted, and cleans up" {
	skip_unless_capable
	egd_setup_net
	egd_setup_cgroups
	egd_start_servers
	run nsenter --net="/run/netns/$NS_A" env EGRESSD_PIN_DIR="$PIN" \
		EGRESSD_SENTINEL="$T/sentinel" EGRESSD_RESOLVERS=$SRV4 \
		OPENROUTER_MANAGEMENT_KEY=mgmt-secret OPENROUTER_UPSTREAM_API_KEY=up-secret \
		"$EGRESSD" exec -- sh -c \
		"echo \"trust \$SSL_CERT_FILE \$NODE_EXTRA_CA_CERTS\"; cat /proc/self/cgroup;
		 env | grep -c secret; cat /proc/self/environ | tr '\\0' '\\n' | grep -c secret;
		 curl -sS -m 5 -k --resolve example.com:443:$SRV4 https://example.com/; echo rc=\$?"
	[[ "$output" == *"trust $T/ca/ca-bundle.crt $T/ca/ca.crt"* ]]
	# The proxy's credentials stayed with the daemon.
	[[ "$output" != *"mgmt-secret"* ]]
	[ "$(printf '%s\n' "${lines[@]}" | grep -cx 0)" -eq 2 ]
	[[ "$output" == *"0::/egressd-exec-"* ]]
	[[ "$output" == *"rc=35"* ]] # refused: the command was captured
	[ "$status" -eq 0 ]
	# Its cgroup and its pins are gone.
	! ls -d "$CG_ROOT"/egressd-exec-* 2>/dev/null
	[ ! -e "$PIN" ]
}

@test "EGRESSD_MAX_CONNS: a tunnel beyond the limit is reset, and a close frees a slot" {
	egd_setup --max-conns 2 --admin-listen 127.0.0.1:15000
	flip_to_verification
	agent python3 - "$SRV4" <<'PY'
import socket, sys, time

host = sys.argv[1]

def echoes(s):
    try:
        s.sendall(b"ping")
        s.settimeout(3)
        return s.recv(16) == b"ping"
    except OSError:
        return False

def dial():
    return socket.create_connection((host, 7001), timeout=5)

def served():
    # The daemon's reset can arrive before connect() returns: that is a
    # refusal too, so the dial is inside the try.
    try:
        with dial() as s:
            return echoes(s)
    except OSError:
        return False

held = [dial() for _ in range(2)]
assert all(echoes(s) for s in held), "the first two tunnels did not echo"
assert not served(), "a third tunnel was served beyond --max-conns 2"
held.pop().close()
deadline = time.time() + 5
while not served():
    assert time.time() < deadline, "no slot came back after a close"
    time.sleep(0.1)
PY
	[ "$(metric egressd_overload_resets_total)" -ge 1 ]
	# Every connection the kernel recorded was accepted and is closed:
	# the reset ones too left no original-destination record behind.
	if [ "$MODE" = bpf ]; then
		run bpftool -j map dump pinned "$PIN/maps/orig_by_tuple"
		[ "$status" -eq 0 ]
		[ "$(jq length <<<"$output")" -eq 0 ]
	fi
}
