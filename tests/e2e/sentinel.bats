#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# Only the platform switches the phase. The sentinel's directory must be out
# of the sandbox's reach (refused at start otherwise), a sentinel owned by
# another user is ignored and audited, and under `egressd exec` the command
# runs in a mount namespace of its own where it can neither create the
# sentinel nor leave its cgroup nor touch the pinned programs. Each test
# tries the attack.

load lib

teardown() {
	[ -n "${EXEC_PID:-}" ] && kill "$EXEC_PID" 2>/dev/null
	egd_teardown
}

# The daemon, as lib.bash starts it but with its output kept, for a start
# that is expected to fail.
try_run() {
	run exempt "$EGRESSD" run --mode bpf --pin "$PIN" --admin-listen off "$@"
}

in_host_pid_ns() {
	[ "$(stat -L -c %i /proc/self/ns/pid)" = 4026531836 ]
}

@test "a sentinel in a directory others can write is refused at start, with the reason" {
	skip_unless_capable
	egd_setup_net
	egd_setup_cgroups
	egd_attach
	in_host_pid_ns || skip "in a container the daemon's directories are its own"
	mkdir -m 0777 "$T/open" && chmod 0777 "$T/open"
	try_run --sentinel "$T/open/egress-unlocked"
	[ "$status" -ne 0 ]
	[[ "$output" == *"sentinel $T/open/egress-unlocked: $T/open (owner uid 0, mode 0777) is writable by others"* ]]
	[[ "$output" == *"an agent could create the sentinel and open the network itself"* ]]
	[[ "$output" != *"ready:"* ]]
	# Sticky (like /tmp) is no better: anyone may still create the file.
	mkdir "$T/sticky" && chmod 1777 "$T/sticky"
	try_run --sentinel "$T/sticky/egress-unlocked"
	[ "$status" -ne 0 ]
	[[ "$output" == *"mode 1777) is writable by others"* ]]
	# Nor is the default, /tmp/egress-unlocked, on the host.
	try_run
	[ "$status" -ne 0 ]
	[[ "$output" == *"sentinel /tmp/egress-unlocked: /tmp (owner uid 0, mode 1777) is writable by others"* ]]
	# A private directory under one others could rename away is refused too.
	mkdir -p "$T/open/inner"
	try_run --sentinel "$T/open/inner/egress-unlocked"
	[ "$status" -ne 0 ]
	[[ "$output" == *"$T/open, above the sentinel's directory, (owner uid 0, mode 0777) lets others replace it"* ]]
	# A directory that does not exist cannot be checked.
	try_run --sentinel "$T/nowhere/egress-unlocked"
	[ "$status" -ne 0 ]
	[[ "$output" == *"$T/nowhere: No such file or directory"* ]]
	# A fixed phase watches no sentinel.
	exempt "$EGRESSD" run --mode bpf --pin "$PIN" --admin-listen off --phase agent \
		2>"$T/daemon.err" 3>&- &
	DAEMON_PID=$!
	wait_for 10 port_open 127.0.0.1 15443
}

@test "a sentinel owned by another user is ignored and audited; the platform's counts" {
	egd_setup
	# Made aside and moved in whole, as an agent with write access would.
	touch "$T/other"
	chown nobody "$T/other"
	mv "$T/other" "$T/sentinel"
	sleep 1.5 # past the backup poll
	[ "$(kernel_phase)" = agent ]
	run agent curl -sS -m 5 -H 'Host: example.com' -w '%{http_code}' http://$SRV4/
	[[ "$output" == *403 ]]
	grep -q "SECURITY: sentinel $T/sentinel ignored: owned by uid $(id -u nobody)" "$T/daemon.err"
	audit_has event=sentinel verdict=ignored reason=owner uid="$(id -u nobody)" \
		path="$T/sentinel"
	[ "$(grep -c '"event":"sentinel"' "$T/audit.log")" = 1 ] # once, not at every poll
	# The same file, once root owns it, is the platform's: the phase flips.
	chown root "$T/sentinel"
	wait_for 2 phase_now_is verification
	run agent curl -sS -m 5 http://$SRV4/
	[ "$output" = "hello-http port=80" ]
}

@test "a sentinel in a directory swapped in after start is ignored" {
	egd_setup
	# The capture port opens before the policy proxy has written its CA
	# into $T: wait until the daemon is wholly up before moving $T away.
	wait_for 30 proxy_ready
	mkdir "$T/swap"
	# The test's directory replaced by another of the same name.
	mv "$T" "$T.orig" 2>/dev/null || skip "the test directory cannot be renamed here"
	mkdir "$T"
	touch "$T/sentinel"
	sleep 1.5
	PIN=$T.orig/bpffs/egressd run kernel_phase
	rm -f "$T/sentinel"
	rmdir "$T"
	mv "$T.orig" "$T"
	[ "$output" = agent ]
	grep -q "its directory is not the one checked at start" "$T/daemon.err"
}

# exec_agent SENTINEL SCRIPT: egressd exec in the agent namespace, with the
# test's pins, the sentinel at SENTINEL and SCRIPT as the (root) command.
exec_agent() {
	nsenter --net="/run/netns/$NS_A" env EGRESSD_PIN_DIR="$PIN" \
		EGRESSD_SENTINEL="$1" EGRESSD_RESOLVERS=$SRV4 \
		"$EGRESSD" exec --audit-log "$T/audit.log" -- sh -c "$2" 2>"$T/exec.err"
}

# exec always captures with BPF, whatever EGD_E2E_MODE says.
exec_phase_is() {
	[ "$("$EGRESSD" phase --pin "$PIN")" = "$1" ]
}

exec_setup() {
	skip_unless_capable
	egd_setup_net
	egd_setup_cgroups
	egd_start_servers
	: >"$T/audit.log"
}

@test "under exec, a root agent creating the sentinel does not flip the phase; the platform does" {
	exec_setup
	mkdir "$T/platform"
	exec_agent "$T/platform/egress-unlocked" "
		touch $T/platform/egress-unlocked 2>&1; echo touch=\$?
		for p in \$(pgrep -x egressd); do
			touch /proc/\$p/root$T/platform/egress-unlocked 2>/dev/null && echo via-proc=\$p
		done
		sleep 1.2
		curl -sS -m 5 -o /dev/null -w 'before=%{http_code}\n' http://$SRV4/
		touch $T/agent-done
		i=0; while [ ! -e $T/go ] && [ \$i -lt 400 ]; do sleep 0.05; i=\$((i + 1)); done
		curl -sS -m 5 http://$SRV4/" >"$T/exec.out" &
	EXEC_PID=$!
	wait_for 20 test -e "$T/agent-done"
	[ ! -e "$T/platform/egress-unlocked" ]
	exec_phase_is agent
	# The platform creates it: the phase flips for the same command.
	touch "$T/platform/egress-unlocked"
	wait_for 2 exec_phase_is verification
	touch "$T/go"
	wait "$EXEC_PID"
	EXEC_PID=
	cat "$T/exec.out"
	grep -q "touch=1" "$T/exec.out"
	grep -q "Read-only file system" "$T/exec.out"
	! grep -q "via-proc" "$T/exec.out"
	grep -q "before=403" "$T/exec.out"
	grep -q "hello-http port=80" "$T/exec.out"
}

@test "under exec, a sentinel in a directory others can write is hidden from the command" {
	exec_setup
	mkdir "$T/tmp" && chmod 1777 "$T/tmp"
	echo kept >"$T/tmp/host-file"
	run exec_agent "$T/tmp/egress-unlocked" "
		ls -A $T/tmp; touch $T/tmp/egress-unlocked && echo created-in-private
		sleep 1.2
		curl -sS -m 5 -o /dev/null -w 'after=%{http_code}\n' http://$SRV4/"
	cat "$T/exec.err"
	[ "$status" -eq 0 ]
	[[ "$output" != *host-file* ]] # an empty private directory
	[[ "$output" == *created-in-private* ]]
	[[ "$output" == *after=403* ]]
	[ ! -e "$T/tmp/egress-unlocked" ]
	grep -q "but the sandbox does not see it (EGRESSD_SENTINEL_HIDDEN" "$T/exec.err"
}

@test "under exec, a root agent cannot leave its cgroup, unpin the programs or undo the mounts" {
	exec_setup
	run exec_agent "$T/sentinel" "
		cg=\$(sed -n 's/^0:://p' /proc/self/cgroup)
		echo \$\$ > $CG_ROOT/cgroup.procs 2>/dev/null && echo moved-to-root
		echo \$\$ > $CG_ROOT\${cg%/agent}/daemon/cgroup.procs 2>/dev/null && echo moved-to-daemon
		echo \$\$ > $CG/daemon/cgroup.procs 2>/dev/null && echo moved-to-test-daemon
		mkdir $CG_ROOT/egd-escape 2>/dev/null && echo made-cgroup
		ls $PIN/links 2>/dev/null && echo pins-visible
		rm -f $PIN/links/egd_connect4 $PIN/links/egd_sendmsg4 2>/dev/null
		ls /sys/fs/bpf 2>/dev/null | grep -q . && echo bpffs-visible
		mount -o remount,rw $CG_ROOT 2>/dev/null && echo remounted
		umount $T 2>/dev/null && echo unmounted
		mount -t cgroup2 none /mnt 2>/dev/null && echo mounted-cgroup2
		nsenter -t 1 -m true 2>/dev/null && echo setns
		sed -n 's/^CapBnd:[[:space:]]*//p' /proc/self/status
		sed -n 's/^0:://p' /proc/self/cgroup
		curl -sS -m 5 -o /dev/null -w 'code=%{http_code}\n' http://$SRV4/"
	cat "$T/exec.err"
	[ "$status" -eq 0 ]
	for escaped in moved-to-root moved-to-daemon moved-to-test-daemon made-cgroup pins-visible \
		bpffs-visible remounted unmounted mounted-cgroup2 setns; do
		[[ "$output" != *"$escaped"* ]]
	done
	[[ "$output" =~ /egressd-exec-[0-9]+/agent ]]
	[[ "$output" == *code=403* ]]
	# CAP_SYS_ADMIN (bit 21) is out of the command's bounding set.
	bnd=$(printf '%s\n' "${lines[@]}" | grep -E '^[0-9a-f]{16}$')
	[ $((0x$bnd & (1 << 21))) -eq 0 ]
	audit_has dst=$SRV4:80 verdict=deny
	[ ! -e "$CG_ROOT/egd-escape" ]
}
