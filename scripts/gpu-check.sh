#!/usr/bin/env bash
# One prepared run on a CUDA machine (CUDA toolkit, PyTorch >= 2.7 from pip, CMake, a C++20 compiler, python3;
# no apt): builds strata against the pip LibTorch, runs the portable-vs-native parity tests with the
# portable side on the GPU, the forward fixtures in f32 and bf16 on the GPU, and `strata bench` of capture
# and the SAE step at phase5_4 widths (tok/s, fraction of the GPU's GEMM rate measured in the same run),
# then extrapolates the phase5_4 time. Everything it prints goes to one results file.
#
# The Debian -dev packages strata builds against travel as .debs (fetched on a Debian 12 machine with
# `scripts/gpu-check.sh --fetch-debs DIR`) and are unpacked into a prefix inside the build tree, never
# into /. Their libraries need glibc >= 2.36 (Debian 12's).
#
# Usage:
#   scripts/gpu-check.sh --fetch-debs DIR          on Debian 12: download the .debs into DIR (apt-get download)
#   scripts/gpu-check.sh [--debs DIR] [--build-dir DIR] [--out FILE] [--device cuda:0] [--dry-run]
# --dry-run checks the arguments and the prerequisites, prints every command it would run, and runs the
# extrapolation on sample figures; it builds and runs nothing (tests/test_core_gpu_check.cpp runs it).
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
debs="$here/shared/gpu-debs"
build="$here/build-gpu"
out=""
device="cuda:0"
dry_run=0
fetch_dir=""

# The packages of scripts/install-deps.sh that strata compiles or links against, with the runtime
# libraries they name (build tools, libtorch, OpenBLAS and gnuplot stay out: the GPU machine brings its
# own compiler and LibTorch, and the check draws no figures).
DEBS=(
  libboost1.81-dev libboost-test1.81-dev libboost-test1.81.0 libboost-iostreams1.81-dev libboost-iostreams1.81.0
  libboost-system1.81-dev libboost-system1.81.0 libboost-filesystem1.81-dev libboost-filesystem1.81.0
  libboost-atomic1.81.0 libboost-regex1.81.0 libboost-math1.81-dev
  libtomlplusplus-dev libtomlplusplus3 libxtensor-dev xtl-dev nlohmann-json3-dev libcli11-dev
  libspdlog-dev libspdlog1.10 libfmt-dev libfmt9 libpcre2-dev libpcre2-8-0 libicu-dev libicu72
  libssl-dev libssl3 zlib1g-dev
)

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --debs) debs="$2"; shift 2 ;;
    --build-dir) build="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --device) device="$2"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    --fetch-debs) fetch_dir="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu-check: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
case "$device" in
  cuda|cuda:[0-9]*) ;;
  *) echo "gpu-check: --device '$device' is not a CUDA device (use cuda or cuda:N)" >&2; exit 2 ;;
esac

if [ -n "$fetch_dir" ]; then
  command -v apt-get >/dev/null || { echo "gpu-check: --fetch-debs needs apt-get (a Debian 12 machine)" >&2; exit 2; }
  mkdir -p "$fetch_dir"
  (cd "$fetch_dir" && apt-get download "${DEBS[@]}")
  echo "gpu-check: $(ls "$fetch_dir"/*.deb | wc -l) .debs in $fetch_dir ($(du -sh "$fetch_dir" | cut -f1))"
  exit 0
fi

# The results file: $OUT/gpu-check.txt when the caller provides an output folder, else build-gpu/.
if [ -z "$out" ]; then
  if [ -n "${OUT:-}" ]; then out="$OUT/gpu-check.txt"; else out="$build/gpu-check.txt"; fi
fi
mkdir -p "$(dirname "$out")"
: > "$out"
say() { echo "$*" | tee -a "$out"; }
# Runs a command (or only shows it under --dry-run), its output into the results file too.
step() {
  say "\$ $*"
  if [ "$dry_run" = 1 ]; then return 0; fi
  local rc=0
  "$@" 2>&1 | tee -a "$out" || rc=${PIPESTATUS[0]}
  [ "$rc" = 0 ] || say "gpu-check: exit status $rc"
  return 0
}

say "# strata gpu-check $(date -u +%Y-%m-%dT%H:%M:%SZ)"
say "commit: $(git -C "$here" rev-parse HEAD 2>/dev/null || echo unknown)"

# ---------------------------------------------------------------- prerequisites
missing=()
for tool in cmake python3; do command -v "$tool" >/dev/null || missing+=("$tool"); done
command -v c++ >/dev/null || command -v g++ >/dev/null || missing+=("a C++20 compiler (c++/g++)")
torch_prefix=""
if command -v python3 >/dev/null; then
  torch_prefix="$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)' 2>/dev/null || true)"
  [ -n "$torch_prefix" ] || missing+=("PyTorch for python3 (pip install torch>=2.7)")
  say "torch: $(python3 -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda, "cxx11abi", torch.compiled_with_cxx11_abi())' 2>/dev/null || echo none)"
fi
command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ] || missing+=("the CUDA toolkit (nvcc; find_package(Torch) of a CUDA wheel needs it)")
command -v nvidia-smi >/dev/null && say "gpu: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1)"
ls "$debs"/*.deb >/dev/null 2>&1 || missing+=("the .debs in $debs (scripts/gpu-check.sh --fetch-debs $debs on Debian 12)")
if [ ${#missing[@]} -gt 0 ]; then
  for m in "${missing[@]}"; do say "missing: $m"; done
  if [ "$dry_run" = 0 ]; then say "gpu-check: cannot run without the above"; exit 1; fi
fi

# ---------------------------------------------------------------- the prefix of unpacked .debs
deps="$build/deps"
unpack_debs() {
  mkdir -p "$deps"
  for deb in "$debs"/*.deb; do
    if command -v dpkg-deb >/dev/null; then
      dpkg-deb -x "$deb" "$deps"
    else  # a .deb is an ar archive holding data.tar.{xz,gz}: python's tarfile reads both
      python3 - "$deb" "$deps" <<'EOF'
import io, sys, tarfile
data = open(sys.argv[1], "rb").read()
assert data[:8] == b"!<arch>\n", "not a .deb"
pos = 8
while pos < len(data):
    name, size = data[pos:pos + 16].decode().strip().rstrip("/"), int(data[pos + 48:pos + 58].decode())
    body = data[pos + 60:pos + 60 + size]
    if name.startswith("data.tar"):
        tarfile.open(fileobj=io.BytesIO(body)).extractall(sys.argv[2])
    pos += 60 + size + (size & 1)
EOF
    fi
  done
}
multiarch="$deps/usr/lib/x86_64-linux-gnu"
export PKG_CONFIG_PATH="$multiarch/pkgconfig:$deps/usr/share/pkgconfig"
export PKG_CONFIG_SYSROOT_DIR="$deps"  # the .pc files say /usr: resolve that inside the prefix
torch_lib="${torch_prefix%/share/cmake}/../lib"
export LD_LIBRARY_PATH="$multiarch:$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export STRATA_TEST_DEVICE="$device"  # the parity tests put their portable side on this device

if [ "$dry_run" = 1 ]; then
  say "\$ unpack $(ls "$debs"/*.deb 2>/dev/null | wc -l) .debs from $debs into $deps"
else
  unpack_debs
fi
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
step cmake -S "$here" -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
  "-DCMAKE_PREFIX_PATH=$torch_prefix;$deps/usr;$multiarch/cmake" "-DCMAKE_CXX_FLAGS=-isystem $deps/usr/include"
step cmake --build "$build" -j "$(nproc)" --target strata test_sae_portable test_models test_stats test_transfer test_transfer_metrics

# ---------------------------------------------------------------- parity and fixtures on the GPU
say "## parity: portable path on $device against the native CPU kernels (tests/test_sae_portable.cpp)"
step "$build/tests/test_sae_portable" --log_level=message
say "## forward fixtures on $device: f32 (portable attention) and the bf16/f16 rows (tests/test_models.cpp)"
step "$build/tests/test_models" --log_level=message
say "## transfer metrics (tests/test_transfer.cpp, tests/test_stats.cpp, tests/test_transfer_metrics.cpp)"
step "$build/tests/test_transfer"
step "$build/tests/test_stats"
step "$build/tests/test_transfer_metrics"

# ---------------------------------------------------------------- benchmarks at phase5_4 widths
strata="$build/apps/strata/strata"
[ -x "$strata" ] || strata="$build/strata"
bench_log="$build/gpu-check-bench.txt"
[ "$dry_run" = 1 ] || : > "$bench_log"
bench() {
  say "\$ strata $*"
  [ "$dry_run" = 1 ] && return 0
  local rc=0
  "$strata" "$@" 2>&1 | tee -a "$out" "$bench_log" || rc=${PIPESTATUS[0]}
  [ "$rc" = 0 ] || say "gpu-check: exit status $rc"
}
say "## SAE training step (phase5_4: expansion 8, batch 4096; d_in of gpt2-medium, gemma-2b/pythia-1.4b, phi-2)"
for d_in in 1024 2048 2560; do
  bench bench sae --device "$device" --d-in "$d_in" --expansion 8 --batch 4096 --repeats 10 --no-reference
done
say "## capture (gpt2-medium config, phase5_4 batch 32 x 128, layers 4..20) in bf16 and f32"
for dtype in bf16 f32; do
  bench bench capture --device "$device" --dtype "$dtype" --batch 32 --seq-len 128 --layers 4,8,12,16,20 --repeats 10
done
if "$strata" bench transfer --help >/dev/null 2>&1; then
  say "## transfer"
  bench bench transfer --device "$device"
fi

# ---------------------------------------------------------------- extrapolated phase5_4 time
say "## extrapolated phase5_4 time"
extrapolate() {
  python3 - "$1" <<'EOF'
import re, sys
text = open(sys.argv[1]).read()
# SAE step tok/s per d_in (ReLU, the phase5_4 architecture): "SAE training step: d_in N" then "  relu  X tok/s".
sae = {}
for block in re.split(r"(?=SAE training step: d_in )", text):
    d = re.match(r"SAE training step: d_in (\d+)", block)
    r = re.search(r"^\s*relu\s+([\d.]+) tok/s", block, re.M)
    if d and r:
        sae[int(d.group(1))] = float(r.group(1))
# Capture: achieved GFLOP/s of the bf16 capture step (gpt2-medium shape) scales to the other models by FLOPs.
cap = re.findall(r"random weights, (\w+) on .*?\n(?:.*\n)*?capture step \(forward \+ store append\)\s+([\d.]+) tok/s\s+([\d.]+) GFLOP/s", text)
capture_gflops = {dtype: float(g) for dtype, _, g in cap}
# phase5_4: 50 x 32 x 128 = 204800 tokens per model; 10 epochs over 90% of them per SAE; 5 SAEs per model
# plus one ceiling SAE. Model widths and the forward GFLOP per token up to the deepest captured layer
# (2 x non-embedding parameters x deepest / n_layers).
tokens = 50 * 32 * 128
models = {"gemma-2b": (2048, 2 * 1.98e9 * 15 / 18), "gpt2-medium": (1024, 2 * 0.302e9 * 20 / 24),
          "phi-2": (2560, 2 * 2.65e9 * 27 / 32), "pythia-1.4b": (2048, 2 * 1.21e9 * 20 / 24)}
sae_tokens = 10 * 0.9 * tokens
total = 0.0
for name, (d_in, flop_per_token) in models.items():
    if d_in not in sae:
        print(f"{name}: no SAE figure for d_in {d_in}")
        continue
    t_sae = 6 * sae_tokens / sae[d_in]
    g = capture_gflops.get("bf16") or capture_gflops.get("f32")
    t_cap = tokens * flop_per_token / (g * 1e9) if g else float("nan")
    total += t_sae + (t_cap if g else 0)
    print(f"{name}: capture {t_cap:.0f} s, 6 SAEs {t_sae:.0f} s")
print(f"phase5_4 capture + SAE training: {total / 60:.1f} min (goal < 10 min on one H200; transfer not included)")
EOF
}
if [ "$dry_run" = 1 ]; then
  sample="$(mktemp)"
  cat > "$sample" <<'EOF'
SAE training step: d_in 1024, d_sae 8192, batch 4096, fp32, device cuda:0, portable kernels, 16 threads (BLAS core x)
  relu     2000000 tok/s  0.002 s/step  30000.0 GFLOP/s = 60% of GEMM
SAE training step: d_in 2048, d_sae 16384, batch 4096, fp32, device cuda:0, portable kernels, 16 threads (BLAS core x)
  relu     500000 tok/s  0.008 s/step  30000.0 GFLOP/s = 60% of GEMM
SAE training step: d_in 2560, d_sae 20480, batch 4096, fp32, device cuda:0, portable kernels, 16 threads (BLAS core x)
  relu     320000 tok/s  0.013 s/step  30000.0 GFLOP/s = 60% of GEMM
gpt2-medium config, random weights, bf16 on cuda:0 (portable attention), batch 32x128, layers 4,8,12,16,20 (16 threads, BLAS core x)
GEMM ceiling (bf16) [4096x1024]@[1024x8192]: 600000.0 GFLOP/s; GEMM-bound capture limit 1.0 tok/s
capture forward (blocks 1..20)                  400000.0 tok/s  200000.0 GFLOP/s   33.3% of GEMM
capture step (forward + store append)           300000.0 tok/s  150000.0 GFLOP/s   25.0% of GEMM
EOF
  say "(dry run: the extrapolation on sample figures)"
  extrapolate "$sample" | tee -a "$out"
  rm -f "$sample"
else
  extrapolate "$bench_log" | tee -a "$out"
fi
say "results: $out"
