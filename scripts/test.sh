#!/usr/bin/env bash
# Command (2) of the README: install, build, run the whole test suite under ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
cd build
# Slurm is installed by install-deps.sh: its executor suite must run here, not skip.
export STRATA_REQUIRE_SLURM="${STRATA_REQUIRE_SLURM:-1}"
ctest --output-on-failure --timeout 900 "$@"
# Every libFuzzer target briefly over its committed seed corpus (clang, ASan + UBSan; build-fuzz/): any
# crash, leak, timeout or sanitizer report fails the run. STRATA_FUZZ_SECONDS=0 skips it.
cd .. && [ "${STRATA_FUZZ_SECONDS:-15}" = 0 ] || bash scripts/fuzz.sh "${STRATA_FUZZ_SECONDS:-15}"
