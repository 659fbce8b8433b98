#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Static analysis with cppcheck (Debian's): warnings, portability and
# performance checks over the daemon, the tests, the fuzz targets and the
# benchmarks' C. Zero findings or the exit status is 1. Suppressions live in
# scripts/cppcheck.supp or inline (// cppcheck-suppress ID ; reason), each
# with its reason. The style checks are not enabled: they are taste, and
# clang-format and the compiler's warnings cover the rest.
set -euo pipefail

cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
cppcheck -q --enable=warning,portability,performance --inline-suppr --error-exitcode=1 \
	-D_GNU_SOURCE '-DEGD_TEST_DATA="tests/data"' -Iinclude -Iuserspace -I"$BUILD/gen" \
	--suppress=missingIncludeSystem --suppressions-list=scripts/cppcheck.supp \
	-j"${JOBS:-$(nproc)}" userspace tests/unit fuzz bench
echo "cppcheck: no findings"
