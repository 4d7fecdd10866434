#!/bin/bash
# scripts/fuzz.sh [SECONDS] [TARGET...]: builds the libFuzzer targets (cmake --preset fuzz: clang, ASan +
# UBSan) and runs each for SECONDS (default 600) over its committed seed corpus fuzz/corpora/<target>.
# New inputs go to build-fuzz/corpora/<target> (the committed corpus is only read); findings (crash-*,
# leak-*, timeout-*, oom-*) to build-fuzz/findings/. Prints one line per target: executions and findings.
# Exit status 1 when any target found something. Runs at nice 19: the machine may be shared.
# STRATA_FUZZ_RUNS=N also stops each target after N executions (e.g. 1000000 with a long SECONDS cap).
# Needs clang and libFuzzer: apt-get install clang libclang-rt-14-dev (clang 14 ships libFuzzer in it).
set -uo pipefail
seconds=${1:-600}
shift || true
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
all_targets=(fuzz_model_config fuzz_tokenizer_load fuzz_tokenizer_encode fuzz_experiment_toml
  fuzz_safetensors_header fuzz_safetensors_index fuzz_store_meta fuzz_sae_cfg)
[ "$#" -gt 0 ] && targets=("$@") || targets=("${all_targets[@]}")

if [ -z "${STRATA_FUZZ_NO_BUILD:-}" ]; then
  mkdir -p build-fuzz
  [ -f build-fuzz/build.ninja ] || cmake --preset fuzz > build-fuzz/configure.log 2>&1 ||
    { cat build-fuzz/configure.log; exit 1; }
  nice -n 19 cmake --build build-fuzz --target "${targets[@]}" -j "${FUZZ_BUILD_JOBS:-2}" || exit 1
fi

mkdir -p build-fuzz/findings build-fuzz/logs
found=0
# libtorch and ICU keep caches for the life of the process; a leak is a per-input leak (libFuzzer checks
# the allocations of each input), so leak detection stays on.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
for target in "${targets[@]}"; do
  work=build-fuzz/corpora/$target
  mkdir -p "$work"
  log=build-fuzz/logs/$target.log
  scratch=$(mktemp -d)
  runs=()
  [ -n "${STRATA_FUZZ_RUNS:-}" ] && runs=(-runs="$STRATA_FUZZ_RUNS")
  TMPDIR=$scratch nice -n 19 "build-fuzz/fuzz/$target" -max_total_time="$seconds" "${runs[@]}" -timeout=20 -rss_limit_mb=4096 \
    -max_len=65536 -print_final_stats=1 -artifact_prefix="build-fuzz/findings/$target-" \
    "$work" "fuzz/corpora/$target" > "$log" 2>&1
  rc=$?
  rm -rf "$scratch"
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  findings=$(ls build-fuzz/findings/ 2>/dev/null | grep -c "^$target-" || true)
  elapsed=$(grep -o 'Done [0-9]* runs in [0-9]* second' "$log" | grep -o 'in [0-9]*' | grep -o '[0-9]*' | tail -1)
  printf '%-24s %12s executions in %ss, %s findings, exit %s\n' "$target" "${execs:-?}" "${elapsed:-$seconds}" "$findings" "$rc"
  [ "$rc" -ne 0 ] || [ "$findings" -ne 0 ] && found=1
done
exit $found
