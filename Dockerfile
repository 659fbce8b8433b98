# SPDX-License-Identifier: MIT
#
# egressd image: built on debian:12 with the -dev packages, run on
# debian:12-slim with only the shared libraries the binary links (no compiler,
# no headers, no bpftool in the final image).
#
#   docker build -t egressd:local .
#
# vmlinux.h: the BPF objects are compiled with CO-RE, so they need *a* kernel
# BTF at build time (relocated at load time on the real kernel; nft mode does
# not load them at all). The build uses, in order:
#   1. --build-arg VMLINUX_BTF=<path inside the build context>, e.g. after
#      `cp /sys/kernel/btf/vmlinux vmlinux.btf` (works with any builder);
#   2. /sys/kernel/btf/vmlinux of the builder's kernel, which BuildKit's RUN
#      containers see through /sys (Docker Desktop and most Linux hosts);
#   3. otherwise the build stops with a message saying how to provide one.
#
# The image is amd64 only: the BPF objects are built with __TARGET_ARCH_x86.

# ---------------------------------------------------------------- build stage
FROM debian:12 AS build

# The build dependencies of scripts/install-deps.sh, less the test, demo and
# fuzz tools. libcmocka-dev stays: CMakeLists.txt requires it at configure
# time even when only the daemon is built. Installed only when missing: a
# base image that has them all already (the e2e suite's, made offline with
# debootstrap and built with --network=none) needs no apt-get at all.
RUN set -eu; \
	missing=; \
	for p in build-essential cmake pkg-config \
		clang bpftool libbpf-dev libelf-dev zlib1g-dev \
		libssl-dev libjansson-dev libc-ares-dev libnftnl-dev libmnl-dev libcurl4-openssl-dev \
		libcmocka-dev; do \
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' \
			|| missing="$missing $p"; \
	done; \
	if [ -n "$missing" ]; then \
		apt-get update \
		&& DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing; \
	fi; \
	rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .

# Empty: use the builder's kernel BTF. Otherwise a path relative to /src.
ARG VMLINUX_BTF=
RUN set -eu; \
	if [ -n "$VMLINUX_BTF" ]; then btf="/src/$VMLINUX_BTF"; \
	else btf=/sys/kernel/btf/vmlinux; fi; \
	if ! [ -r "$btf" ]; then \
		echo "no kernel BTF at $btf: copy one into the build context" \
		     "(cp /sys/kernel/btf/vmlinux vmlinux.btf) and build with" \
		     "--build-arg VMLINUX_BTF=vmlinux.btf" >&2; \
		exit 1; \
	fi; \
	cmake -S . -B /build -DCMAKE_BUILD_TYPE=Release -DEGD_TEST_SWITCHES=OFF -DVMLINUX_BTF="$btf" \
	&& make -C /build -j"$(nproc)" egressd \
	&& install -D -m 0755 /build/egressd /out/usr/local/bin/egressd

# -------------------------------------------------------------- runtime stage
FROM debian:12-slim

# Runtime libraries of the binary (ldd), and ca-certificates: the daemon
# verifies the upstream (openrouter.ai) against the system store and writes
# ca-bundle.crt for the agent as the system CAs plus its own.
COPY --from=build /out/ /

# One layer: the libraries (only those missing, as in the build stage), then
# the file capability, then libcap2-bin removed again so setcap does not stay
# in the image.
#
# Non-root with a file capability, not root: nft mode needs CAP_NET_ADMIN
# only to install its ruleset, and the ruleset's fallback exemption (where
# cgroupv2 socket matching is unavailable) is the daemon's uid. A daemon
# running as root would share uid 0 with every agent image that runs as root,
# so a dedicated uid (10001) keeps that fallback meaningful.
#
# The capability is *permitted* only (cap_net_admin+p, no effective bit):
# `egressd run`, `status` and `nft-remove` raise it themselves when they
# start. With the effective bit, execve refuses to start the binary at all
# where the container's bounding set lacks NET_ADMIN, so even `egressd
# --version` failed with "operation not permitted". Now every command runs
# without it, and nft mode without it stops at start, closed, saying it
# needs NET_ADMIN. The capability applies only when the container's bounding
# set has NET_ADMIN (compose: cap_add) and only without no-new-privileges,
# which makes execve ignore file capabilities.
#
# The BPF modes (attach, node) need root with CAP_BPF and CAP_SYS_ADMIN and
# the host's cgroup hierarchy and bpffs: deploy/k8s runs them as uid 0 in a
# privileged container, where the file capability plays no part.
#
# The uid is a regular one (no --system): system uids end at 999, and
# useradd --system warns about 10001.
RUN set -eu; \
	missing=; \
	for p in libbpf1 libelf1 zlib1g libssl3 libjansson4 libc-ares2 libnftnl11 libmnl0 libcurl4 \
		ca-certificates libcap2-bin; do \
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' \
			|| missing="$missing $p"; \
	done; \
	if [ -n "$missing" ]; then \
		apt-get update \
		&& DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing; \
	fi; \
	setcap cap_net_admin+p /usr/local/bin/egressd; \
	DEBIAN_FRONTEND=noninteractive apt-get purge -y --auto-remove libcap2-bin; \
	rm -rf /var/lib/apt/lists/*; \
	groupadd --gid 10001 egressd; \
	useradd --uid 10001 --gid egressd --no-create-home --no-log-init \
		--home-dir /nonexistent --shell /usr/sbin/nologin egressd; \
	# Owned by egressd: a named volume mounted here starts as a copy of the
	# image's directory, owner included, so the daemon writes without root.
	# /var/lib/egressd holds the CA key, 0700: the agent never mounts it.
	install -d -o egressd -g egressd -m 0755 /var/run/egressd/ca; \
	install -d -o egressd -g egressd -m 0700 /var/lib/egressd; \
	install -d -o egressd -g egressd -m 0750 /proxy-data

# The daemon's defaults, written out so `docker inspect` shows the contract.
# No secret here: keys come from the environment at run time.
ENV EGRESSD_LISTEN=127.0.0.1:15443 \
	EGRESSD_ADMIN_LISTEN=127.0.0.1:15000 \
	EGRESSD_SENTINEL=/tmp/egress-unlocked \
	EGRESSD_CA_DIR=/var/run/egressd/ca \
	PROXY_DATA_DIR=/proxy-data

USER egressd:egressd

# /readyz turns 200 only once capture is in place (ruleset installed and read
# back in nft mode), so "healthy" means the agent is enclosed. bash's
# /dev/tcp: the slim image has no curl, and adding one only for this is
# attack surface.
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 \
	CMD ["bash", "-c", "a=${EGRESSD_ADMIN_LISTEN:-127.0.0.1:15000}; h=${a%:*}; h=${h#[}; h=${h%]}; exec 3<>/dev/tcp/$h/${a##*:} && printf 'GET /readyz HTTP/1.0\\r\\n\\r\\n' >&3 && read -r -t 2 _ code _ <&3 && [ \"$code\" = 200 ]"]

ENTRYPOINT ["/usr/local/bin/egressd"]
# The mode is the daemon's default (or EGRESSD_MODE): compose sets nft.
CMD ["run"]
