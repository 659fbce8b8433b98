#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Installs what a fresh Debian 12 needs to build, test and demo egressd.
# Idempotent: packages already present are skipped, apt runs only if needed.
set -euo pipefail

PKGS=(
	bind9-dnsutils # dig: the e2e tests of DNS redirection
	build-essential cmake pkg-config
	clang llvm libclang-rt-14-dev bpftool libbpf-dev libelf-dev zlib1g-dev
	libssl-dev openssl libjansson-dev libc-ares-dev libnftnl-dev libmnl-dev
	libcurl4-openssl-dev
	libcmocka-dev bats cppcheck clang-format
	iproute2 nftables curl socat python3 procps util-linux libcap2-bin
	nginx-light libnginx-mod-stream wrk
	python3-yaml docker-compose
	docker.io debootstrap
	nodejs
	bind9-dnsutils dnsmasq-base
)

# kubectl renders the Kubernetes manifests (deploy/k8s/check.sh). Debian's
# kubernetes-client ships /usr/bin/kubectl, which dpkg refuses to install
# over another package's kubectl (a cloud SDK's): only when there is none.
command -v kubectl >/dev/null || PKGS+=(kubernetes-client)

missing=()
for p in "${PKGS[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
	echo "install-deps: need root to install: ${missing[*]}" >&2
	exit 1
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# docker.io would start a system dockerd on install, whose bridge and
# iptables rules land in the machine's own namespace: tests/e2e/compose.bats
# runs an engine of its own in a namespace it creates instead. A policy-rc.d
# that says no (where none is in place) keeps the package's service down.
policy=/usr/sbin/policy-rc.d
if [[ " ${missing[*]} " == *" docker.io "* ]] && [ ! -e "$policy" ]; then
	printf '#!/bin/sh\n# install-deps.sh: no service starts while installing\nexit 101\n' >"$policy"
	chmod 0755 "$policy"
	trap 'rm -f "$policy"' EXIT
fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
if [[ " ${missing[*]} " == *" docker.io "* ]] && command -v systemctl >/dev/null; then
	systemctl disable -q docker.service docker.socket 2>/dev/null || true
fi
# Debian starts nginx on install; the benchmark runs its own instance.
if command -v systemctl >/dev/null && systemctl is-active -q nginx 2>/dev/null; then
	systemctl stop nginx || true
fi
