#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# Self-exemption: `egressd run` exempts the cgroup it runs in, and `attach
# --exempt-cgroup` the cgroups it is given. Neither may free the sandbox:
# the attached cgroup and its ancestors are refused, and a cgroup inside the
# attached one is exempt only when attach named it (as lib.bash does with
# $CG/daemon) or the operator says so for pod mode's sidecar. Each test tries
# the mistake and shows the agent still captured.

load lib

setup() {
	skip_unless_capable
	egd_setup_net
	egd_setup_cgroups
	egd_start_servers
}

# The extra cgroups some tests make go first, emptied, so that
# egd_teardown can remove their parents.
teardown() {
	[ -n "${CG:-}" ] && for c in "$CG/agent/box" "$CG/sidecar"; do
		[ -d "$c" ] || continue
		echo 1 >"$c/cgroup.kill" 2>/dev/null
		for _ in 1 2 3 4 5 6 7 8 9 10; do
			rmdir "$c" 2>/dev/null && break
			sleep 0.1
		done
	done
	egd_teardown
}

# run_in CGROUP CMD...: in the agent namespace, in CGROUP.
run_in() {
	nsenter --net="/run/netns/$NS_A" sh -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' "$@"
}

# The agent reaches nothing: its plain HTTP request is judged by the daemon
# (403, audited) and never reaches the server.
agent_captured() {
	local served
	served=$(grep -c '"kind": "http"' "$T/server.log" 2>/dev/null || true)
	run agent curl -sS -m 5 -H 'Host: example.com' -w '%{http_code}' http://$SRV4/
	[[ "$output" == *403 ]]
	audit_has proto=http host=example.com verdict=deny dst=$SRV4:80
	[ "$(grep -c '"kind": "http"' "$T/server.log" 2>/dev/null || true)" = "$served" ]
}

@test "run started in the agent's cgroup refuses, naming both cgroups, and the agent stays captured" {
	egd_attach
	run run_in "$CG/agent" "$EGRESSD" run --mode bpf --pin "$PIN" --sentinel "$T/sentinel" \
		--admin-listen off
	[ "$status" -ne 0 ]
	[[ "$output" == *"refusing to exempt the daemon's own cgroup $CG/agent"* ]]
	[[ "$output" == *"attached cgroup $CG"* ]]
	[[ "$output" != *"listening"* ]]
	# Had the refused daemon exempted its cgroup first, the agent's request
	# would now reach the server directly.
	egd_start_daemon --mode bpf
	agent_captured
}

@test "run started in the attached cgroup itself refuses" {
	egd_attach
	run run_in "$CG" "$EGRESSD" run --mode bpf --pin "$PIN" --sentinel "$T/sentinel" \
		--admin-listen off
	[ "$status" -ne 0 ]
	[[ "$output" == *"own cgroup $CG: it is the sandbox's attached cgroup $CG"* ]]
}

@test "run started in an ancestor of the attached cgroup refuses" {
	"$EGRESSD" attach --cgroup "$CG/agent" --exempt-cgroup "$CG/daemon" --pin "$PIN" \
		--resolvers $SRV4
	run run_in "$CG" "$EGRESSD" run --mode bpf --pin "$PIN" --sentinel "$T/sentinel" \
		--admin-listen off
	[ "$status" -ne 0 ]
	[[ "$output" == *"own cgroup $CG: it is an ancestor of the sandbox's attached cgroup $CG/agent"* ]]
	egd_start_daemon --mode bpf
	agent_captured
}

@test "run started inside the attached cgroup but not exempted at attach refuses" {
	mkdir "$CG/agent/box"
	egd_attach
	run run_in "$CG/agent/box" "$EGRESSD" run --mode bpf --pin "$PIN" \
		--sentinel "$T/sentinel" --admin-listen off
	[ "$status" -ne 0 ]
	[[ "$output" == *"own cgroup $CG/agent/box: it lies inside the sandbox's attached cgroup $CG and attach did not exempt it"* ]]
	# An agent process in that cgroup is still captured.
	egd_start_daemon --mode bpf
	run run_in "$CG/agent/box" curl -sS -m 5 -H 'Host: example.com' -w '%{http_code}' \
		http://$SRV4/
	[[ "$output" == *403 ]]
	! grep -q '"kind": "http"' "$T/server.log" 2>/dev/null
}

@test "pod mode's exception: EGRESSD_ALLOW_EXEMPT_IN_ATTACHED lets a child cgroup exempt itself, and only it" {
	mkdir "$CG/sidecar"
	egd_attach
	: >"$T/audit.log"
	EGRESSD_ALLOW_EXEMPT_IN_ATTACHED=1 run_in "$CG/sidecar" "$EGRESSD" run --mode bpf \
		--pin "$PIN" --sentinel "$T/sentinel" --audit-log "$T/audit.log" \
		--admin-listen off 2>"$T/daemon.err" 3>&- &
	DAEMON_PID=$!
	wait_for 10 port_open 127.0.0.1 15443
	grep -q "exempting own cgroup $CG/sidecar inside the attached cgroup $CG" "$T/daemon.err"
	# The sidecar's cgroup is exempt (it reaches the server), the agent's is not.
	run run_in "$CG/sidecar" curl -sS -m 5 http://$SRV4/
	[ "$output" = "hello-http port=80" ]
	agent_captured
	# The exception never covers the attached cgroup itself.
	EGRESSD_ALLOW_EXEMPT_IN_ATTACHED=1 run run_in "$CG" "$EGRESSD" run --mode bpf \
		--pin "$PIN" --sentinel "$T/sentinel" --admin-listen off --listen 127.0.0.1:15444
	[ "$status" -ne 0 ]
	[[ "$output" == *"it is the sandbox's attached cgroup"* ]]
}

@test "attach refuses to exempt the attached cgroup or an ancestor of it" {
	for ex in "$CG/agent" "$CG" "$CG_ROOT"; do
		run "$EGRESSD" attach --cgroup "$CG/agent" --exempt-cgroup "$ex" --pin "$PIN" \
			--resolvers $SRV4
		[ "$status" -eq 2 ]
		[[ "$output" == *"refusing --exempt-cgroup $ex: it "*" the attached cgroup $CG/agent"* ]]
		[ ! -e "$PIN/links" ]
	done
	# A cgroup inside the attached one, named on purpose, is how the tests
	# run their daemon.
	run "$EGRESSD" attach --cgroup "$CG" --exempt-cgroup "$CG/daemon" --pin "$PIN" \
		--resolvers $SRV4
	[ "$status" -eq 0 ]
	egd_start_daemon --mode bpf
	agent_captured
}

@test "exec keeps its daemon beside the command's cgroup, never above it" {
	run nsenter --net="/run/netns/$NS_A" env EGRESSD_PIN_DIR="$PIN" \
		EGRESSD_SENTINEL="$T/sentinel" EGRESSD_RESOLVERS=$SRV4 \
		"$EGRESSD" exec -- sh -c 'cat /proc/self/cgroup; curl -sS -m 5 -w "code=%{http_code}\n" http://'$SRV4'/'
	[ "$status" -eq 0 ]
	[[ "$output" =~ 0::/egressd-exec-[0-9]+/agent ]]
	[[ "$output" == *"code=403"* ]]
	[[ "$output" != *"hello-http"* ]]
}
