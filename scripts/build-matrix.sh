#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Builds the tree (daemon, unit tests, fuzz targets) in every build type with
# every sanitizer option, with gcc and with clang (EGD_FUZZ with clang only,
# as libFuzzer needs it), so that a warning only an optimised or instrumented
# build sees cannot hide: -Werror holds in every one. Builds go to
# $OUT/<compiler>-<type>-<option> (default OUT=build-matrix); it stops at the
# first that fails and names it.
#
# Settings: OUT, JOBS (default: number of CPUs), TYPES, COMPILERS, OPTIONS
# (space-separated subsets of the defaults below).
set -euo pipefail

cd "$(dirname "$0")/.."
OUT=${OUT:-build-matrix}
JOBS=${JOBS:-$(nproc)}
TYPES=${TYPES:-"Debug Release RelWithDebInfo MinSizeRel"}
COMPILERS=${COMPILERS:-"gcc clang"}
OPTIONS=${OPTIONS:-"plain EGD_SANITIZE EGD_TSAN EGD_FUZZ"}
mkdir -p "$OUT"

for cc in $COMPILERS; do
	for type in $TYPES; do
		for opt in $OPTIONS; do
			[ "$opt" = EGD_FUZZ ] && [ "$cc" != clang ] && continue
			dir="$OUT/$cc-$type-$opt"
			flags=(-DCMAKE_BUILD_TYPE="$type")
			[ "$opt" != plain ] && flags+=(-D"$opt"=ON)
			printf '==> %s\n' "$dir"
			if ! CC=$cc cmake -S . -B "$dir" "${flags[@]}" >"$dir.log" 2>&1 ||
				! make -C "$dir" -j"$JOBS" --no-print-directory >>"$dir.log" 2>&1; then
				grep -E 'error|Error' "$dir.log" | head -20 >&2
				echo "build $dir failed (log: $dir.log)" >&2
				exit 1
			fi
		done
	done
done
echo "every build passed"
