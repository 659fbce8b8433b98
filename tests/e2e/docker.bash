# SPDX-License-Identifier: MIT
# A Docker engine of the test's own, for tests/e2e/compose.bats.
#
# dockerd runs inside a network namespace the test creates ($NS_D), in a
# mount namespace of its own, with its own data root, exec root, pidfile,
# socket and cgroup parent: its bridge, its iptables rules and its
# ip_forward live in $NS_D and die with it, its overlay mounts die with its
# mount namespace, and the machine's own namespace is never touched. $NS_D's
# only way out is a veth to the server namespace $NS_S (198.51.100.1, the
# suite's usual servers), which forwards nothing: a container's traffic can
# reach the test's servers and nothing else. The engine's DNS for containers
# (--dns) is $NS_S too, so Docker's embedded resolver forwards there.
#
# No image registry is reachable: the base images the Dockerfile and
# compose.yaml name are made with debootstrap (from the Debian mirror apt
# uses, in the machine's namespace) and `docker import`, with the packages
# the Dockerfile would install already included, so `docker build
# --network=none` skips its apt step. They stay in the data root between
# runs, so only the first run on a machine pays for them.
#
# Debian's binaries by absolute path: another `docker` may come first in
# PATH on some machines.

DOCKER=/usr/bin/docker
DOCKERD=/usr/sbin/dockerd
COMPOSE=/usr/bin/docker-compose
# Kept between runs (the base images); everything else is per run.
EGD_DOCKER_ROOT=${EGD_DOCKER_ROOT:-/var/lib/egressd-e2e-docker}
EGD_DOCKER_EXEC_ROOT=/run/egressd-e2e-docker
EGD_DOCKER_SOCK=/run/egressd-e2e-docker.sock
EGD_DOCKER_PIDFILE=/run/egressd-e2e-docker.pid
# The pid of the run that owns the engine.
EGD_DOCKER_OWNER=/run/egressd-e2e-docker.owner
# Containers' cgroups go under this parent, never under another engine's.
EGD_DOCKER_CGROUP_PARENT=egressd-e2e-docker
# Debootstrap's .deb cache: a rebuilt base image downloads nothing twice.
EGD_DEB_CACHE=${EGD_DEB_CACHE:-/var/cache/egressd-e2e/debs}
EGD_DEBIAN_MIRROR=${EGD_DEBIAN_MIRROR:-http://deb.debian.org/debian}
# Addresses of the engine's bridges: the benchmarking range (RFC 2544),
# inside $NS_D only.
EGD_DOCKER_BIP=198.18.0.1/24
EGD_DOCKER_POOL=198.18.64.0/18
# How long the engine may take to answer after start.
EGD_DOCKER_START_S=60

export DOCKER_HOST=unix://$EGD_DOCKER_SOCK

# egd_dockerfile_pkgs DOCKERFILE N: the packages of the Nth `for p in ...;
# do` list in DOCKERFILE (1: the build stage, 2: the runtime stage), comma
# separated for debootstrap --include. Read from the Dockerfile, so the base
# images always hold what its apt-get lines would install, which a build
# then skips (with --network=none it could not run).
egd_dockerfile_pkgs() {
	sed -e ':a' -e '/\\$/{N;s/\\\n//;ba}' "$1" | grep -o 'for p in [^;]*; do' | sed -n "$2p" |
		sed 's/^for p in //; s/; do$//' | tr -s ' \t' '\n' | grep -v '^$' | paste -sd, -
}
# The test agent: the tools the checks run inside the agent container.
EGD_BASE_AGENT_PKGS=curl,ca-certificates,python3-minimal,nftables,iproute2,libcap2-bin

# egd_docker_why_not: print why an engine cannot run here, or nothing.
egd_docker_why_not() {
	[ "$(id -u)" -eq 0 ] || { echo "needs root (dockerd, network namespaces)"; return; }
	[ -x "$DOCKERD" ] && [ -x "$DOCKER" ] && [ -x "$COMPOSE" ] ||
		{ echo "docker.io / docker-compose not installed (scripts/install-deps.sh)"; return; }
	command -v debootstrap >/dev/null || { echo "debootstrap not installed"; return; }
	modprobe -q overlay 2>/dev/null
	grep -qw overlay /proc/filesystems || { echo "no overlay filesystem in this kernel"; return; }
	unshare --net --mount true 2>/dev/null || { echo "cannot create network namespaces"; return; }
}

# egd_docker_claim: make this run (process $1, the bats file's) the
# engine's owner. Fails, saying so, while another live run owns it: two runs
# must not share, or stop, one engine.
egd_docker_claim() {
	local owner
	owner=$(cat "$EGD_DOCKER_OWNER" 2>/dev/null)
	if [ -n "$owner" ] && [ "$owner" != "$1" ] && kill -0 "$owner" 2>/dev/null; then
		echo "another run (pid $owner) is using the test engine" >&2
		return 1
	fi
	echo "$1" >"$EGD_DOCKER_OWNER"
}

# egd_docker_stale: stop an engine a killed earlier run left behind. It is
# ours by its pidfile and socket, which no other engine uses, and its owner
# is gone (egd_docker_claim).
egd_docker_stale() {
	local pid
	pid=$(cat "$EGD_DOCKER_PIDFILE" 2>/dev/null) || return 0
	if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null &&
		grep -qF -- "$EGD_DOCKER_SOCK" "/proc/$pid/cmdline" 2>/dev/null; then
		kill "$pid"
		for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		kill -9 "$pid" 2>/dev/null
	fi
	rm -f "$EGD_DOCKER_PIDFILE"
}

# egd_docker_net: the engine's namespace and the server namespace, joined.
egd_docker_net() {
	ip netns add "$NS_D"
	ip netns add "$NS_S"
	ip -n "$NS_D" link set lo up
	ip -n "$NS_S" link set lo up
	ip -n "$NS_D" link add v0 type veth peer name v1 netns "$NS_S"
	ip -n "$NS_D" addr add 198.51.100.2/24 dev v0
	ip -n "$NS_S" addr add 198.51.100.1/24 dev v1
	ip -n "$NS_D" link set v0 up
	ip -n "$NS_S" link set v1 up
	# Every destination a container dials leaves through the server
	# namespace, which routes nothing further.
	ip -n "$NS_D" route add default via 198.51.100.1
	# The server side answers the bridge's addresses via the engine (the
	# engine masquerades them anyway; this is for clarity of failures).
	ip -n "$NS_S" route add 198.18.0.0/16 via 198.51.100.2
}

# egd_docker_start: the engine, in $NS_D. Its log is $T/dockerd.log.
egd_docker_start() {
	egd_docker_stale
	mkdir -p "$EGD_DOCKER_ROOT" "$EGD_DOCKER_EXEC_ROOT"
	# A mount namespace of its own (private propagation): its overlay and
	# netns mounts vanish with it. A tmpfs over /run/containerd hides any
	# system containerd, so dockerd starts its own under the exec root.
	nsenter --net="/run/netns/$NS_D" unshare --mount --propagation private \
		sh -c 'mount -t tmpfs tmpfs /run/containerd 2>/dev/null ||
			{ mkdir -p /run/containerd && mount -t tmpfs tmpfs /run/containerd; }
			exec "$@"' sh \
		"$DOCKERD" --data-root "$EGD_DOCKER_ROOT" --exec-root "$EGD_DOCKER_EXEC_ROOT" \
		--pidfile "$EGD_DOCKER_PIDFILE" -H "unix://$EGD_DOCKER_SOCK" \
		--cgroup-parent "$EGD_DOCKER_CGROUP_PARENT" \
		--bip "$EGD_DOCKER_BIP" --default-address-pool "base=$EGD_DOCKER_POOL,size=24" \
		--dns 198.51.100.1 --ip6tables=false --iptables=true \
		--log-level warn >"$T/dockerd.log" 2>&1 3>&- &
	DOCKERD_PID=$!
	local end=$((SECONDS + EGD_DOCKER_START_S))
	until "$DOCKER" version >/dev/null 2>&1; do
		if ! kill -0 "$DOCKERD_PID" 2>/dev/null || [ "$SECONDS" -ge "$end" ]; then
			echo "dockerd did not start:" >&2
			tail -30 "$T/dockerd.log" >&2
			return 1
		fi
		sleep 0.2
	done
}

# egd_docker_base TAG PACKAGES: import a debootstrap'ed bookworm as TAG
# unless the engine has it already with the same packages (a label on the
# image records them: a Dockerfile that needs one more package gets a new
# base, not an apt-get that cannot reach a mirror).
egd_docker_base() {
	local tag=$1 pkgs=$2 dir have
	have=$("$DOCKER" image inspect -f '{{index .Config.Labels "egressd.e2e.packages"}}' "$tag" \
		2>/dev/null) || have=
	[ "$have" = "$pkgs" ] && return 0
	dir=$(mktemp -d /var/tmp/egressd-e2e-rootfs.XXXXXX)
	mkdir -p "$EGD_DEB_CACHE"
	echo "# making $tag with debootstrap (first run on this machine)" >&3
	if ! debootstrap --variant=minbase --cache-dir="$EGD_DEB_CACHE" --include="$pkgs" \
		bookworm "$dir" "$EGD_DEBIAN_MIRROR" >"$T/debootstrap-${tag//[:\/]/_}.log" 2>&1; then
		tail -20 "$T/debootstrap-${tag//[:\/]/_}.log" >&2
		rm -rf "$dir"
		return 1
	fi
	rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
	tar -C "$dir" -c . | "$DOCKER" import -c 'CMD ["bash"]' \
		-c "LABEL egressd.e2e.packages=$pkgs" - "$tag" >/dev/null
	local rc=$?
	rm -rf "$dir"
	return $rc
}

# egd_docker_stop: the engine and everything it started, its namespaces,
# its cgroups. Safe to call twice, after a partial start, and under set -e
# (every step goes on whatever the one before found).
egd_docker_stop() {
	local pid
	if [ -n "${DOCKERD_PID:-}" ] && kill -0 "$DOCKERD_PID" 2>/dev/null; then
		kill "$DOCKERD_PID" 2>/dev/null || true
		for _ in $(seq 1 150); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.1; done
		kill -9 "$DOCKERD_PID" 2>/dev/null || true
		wait "$DOCKERD_PID" 2>/dev/null || true
	fi
	# Whatever is left in the engine's namespace (containerd, shims) or in
	# its containers' cgroups was started by this test.
	if [ -n "${NS_D:-}" ] && [ -e "/run/netns/$NS_D" ]; then
		for pid in $(ip netns pids "$NS_D" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
	fi
	for pid in $(cat /sys/fs/cgroup/$EGD_DOCKER_CGROUP_PARENT/cgroup.procs \
		/sys/fs/cgroup/$EGD_DOCKER_CGROUP_PARENT/*/cgroup.procs \
		/sys/fs/cgroup/*/$EGD_DOCKER_CGROUP_PARENT/*/cgroup.procs 2>/dev/null | sort -u); do
		kill -9 "$pid" 2>/dev/null || true
	done
	rm -f "$EGD_DOCKER_PIDFILE" "$EGD_DOCKER_SOCK" "$EGD_DOCKER_OWNER" || true
	rm -rf "$EGD_DOCKER_EXEC_ROOT" || true
	[ -z "${NS_D:-}" ] || ip netns del "$NS_D" 2>/dev/null || true
	[ -z "${NS_S:-}" ] || ip netns del "$NS_S" 2>/dev/null || true
	# The containers' cgroups (v2, or each v1 controller).
	for d in /sys/fs/cgroup/$EGD_DOCKER_CGROUP_PARENT /sys/fs/cgroup/*/$EGD_DOCKER_CGROUP_PARENT; do
		[ -d "$d" ] || continue
		for _ in 1 2 3 4 5 6 7 8 9 10; do
			find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
			[ -d "$d" ] || break
			sleep 0.2
		done
	done
	return 0
}
