#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Checks that the C lines changed since BASE (default: where this branch left
# main) are as clang-format (.clang-format: kernel style, 100 columns) writes
# them; the diff it wants is printed and the exit status is 1 otherwise. Only
# changed lines: formatting the whole tree at once (52 of 86 files would
# change) would collide with every branch in flight.
set -euo pipefail

cd "$(dirname "$0")/.."
base=${1:-$(git merge-base HEAD main 2>/dev/null || git rev-parse HEAD)}
out=$(git clang-format --diff --extensions c,h "$base" -- userspace include tests fuzz bench bpf)
case "$out" in
"" | "no modified files to format" | "clang-format did not modify any files")
	echo "format: changed lines since ${base:0:12} are clang-format clean"
	;;
*)
	printf '%s\n' "$out"
	echo "format: the lines above differ from clang-format (git clang-format $base fixes them)" >&2
	exit 1
	;;
esac
