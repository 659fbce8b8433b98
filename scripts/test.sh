#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Installs what is missing, builds, and runs every test: cppcheck and the
# format of the changed lines, unit tests (CTest + cmocka), with BUILD_MATRIX=1
# a build in every build type with every sanitizer option (28 builds), the
# same unit tests under ASan+UBSan, a short smoke run of every
# libFuzzer target, and the end-to-end suite (bats; real BPF, namespaces and
# cgroups, so it needs root). Output ends with the bats summary.
#
# Settings: FUZZ_SECONDS (per target, default 10), SKIP_E2E=1, SKIP_FUZZ=1,
# BUILD_MATRIX=1, SKIP_ASAN=1, SKIP_TSAN=1, JOBS (default: number of CPUs).
set -euo pipefail

cd "$(dirname "$0")/.."
JOBS=${JOBS:-$(nproc)}
FUZZ_SECONDS=${FUZZ_SECONDS:-10}

step() { printf '\n==> %s\n' "$*"; }

step "dependencies"
./scripts/install-deps.sh

step "build (RelWithDebInfo)"
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
make -C build -j"$JOBS" --no-print-directory

step "static analysis (cppcheck) and format of the changed lines"
./scripts/static-check.sh
./scripts/format-check.sh

step "unit tests"
(cd build && ctest --output-on-failure)

if [ "${BUILD_MATRIX:-0}" = 1 ]; then
	step "every build type with every sanitizer option (gcc and clang)"
	JOBS=$JOBS ./scripts/build-matrix.sh
fi

if [ "${SKIP_ASAN:-0}" != 1 ]; then
	step "unit tests under ASan+UBSan"
	cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DEGD_SANITIZE=ON >/dev/null
	make -C build-asan -j"$JOBS" --no-print-directory
	(cd build-asan && ctest --output-on-failure)
fi

if [ "${SKIP_FUZZ:-0}" != 1 ]; then
	step "fuzz smoke (${FUZZ_SECONDS}s per target)"
	CC=clang cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DEGD_FUZZ=ON >/dev/null
	targets=$(cd fuzz && ls fuzz_*.c | sed 's/\.c$//')
	# shellcheck disable=SC2086
	make -C build-fuzz -j"$JOBS" --no-print-directory $targets
	for t in $targets; do
		corpus=$(mktemp -d)
		[ -d "fuzz/corpus/$t" ] && cp -r "fuzz/corpus/$t/." "$corpus/"
		echo "--- $t"
		rc=0
		(cd "$corpus" && "$OLDPWD/build-fuzz/$t" -max_total_time="$FUZZ_SECONDS" \
			-print_final_stats=1 -artifact_prefix="$corpus/" "$corpus" >"$corpus.log" 2>&1) ||
			rc=$?
		grep -E '^stat::(number_of_executed_units|average_exec_per_sec)' "$corpus.log" || true
		if [ "$rc" -ne 0 ]; then
			tail -40 "$corpus.log" >&2
			echo "fuzz target $t failed (exit $rc); reproducer kept in $corpus" >&2
			exit 1
		fi
		rm -rf "$corpus" "$corpus.log"
	done
fi

if [ "${SKIP_E2E:-0}" != 1 ]; then
	step "end-to-end tests (bats)"
	if [ "$(id -u)" -ne 0 ]; then
		echo "the e2e suite needs root (namespaces, cgroups, BPF); run as root" >&2
		exit 1
	fi
	# The capture suites, the policy DNS and the bypass suite once more
	# with the nftables datapath; the rest of the suite runs once below.
	echo "--- capture in nft mode"
	EGD_E2E_MODE=nft bats --formatter tap --timing tests/e2e/capture.bats tests/e2e/tunnel.bats \
		tests/e2e/dns.bats tests/e2e/bypass.bats
	if [ "${SKIP_TSAN:-0}" != 1 ]; then
		# The proxy's workers share one ledger, and the other workers
		# hand connections to them (proxy.bats runs a proxy on every
		# worker too): its suites once more with a ThreadSanitizer
		# daemon, which must report nothing.
		echo "--- policy proxy under ThreadSanitizer"
		cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=Debug -DEGD_TSAN=ON >/dev/null
		make -C build-tsan -j"$JOBS" --no-print-directory egressd test_proxy_budget
		tsan_dir=$(mktemp -d)
		TSAN_OPTIONS="log_path=$tsan_dir/report halt_on_error=0" build-tsan/test_proxy_budget
		EGRESSD=$PWD/build-tsan/egressd TSAN_OPTIONS="log_path=$tsan_dir/report" \
			bats --formatter tap tests/e2e/proxy.bats tests/e2e/proxy_clients.bats
		if compgen -G "$tsan_dir/report*" >/dev/null; then
			cat "$tsan_dir"/report* >&2
			echo "ThreadSanitizer reported the above (kept in $tsan_dir)" >&2
			exit 1
		fi
		rm -rf "$tsan_dir"
	fi
	echo "--- everything (BPF mode)"
	# The pretty formatter ends with bats' own summary; strip its terminal
	# control sequences so logs stay readable.
	bats --formatter pretty --timing tests/e2e | sed -u 's/\x1b\[[0-9;]*[A-Za-z]//g'
fi
