#!/usr/bin/env bash
# Installs exactly the Debian 12 packages strata needs to build, test and run.
# Idempotent: when every package is already present it returns in well under a second.
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config git
  clang libclang-rt-14-dev          # the libFuzzer targets (cmake --preset fuzz: clang++ 14, its libFuzzer; scripts/fuzz.sh)
  libtorch-dev                      # LibTorch 1.13 (CPU)
  libopenblas0-openmp               # fast BLAS honouring LibTorch's thread count (see README: numerics)
  libboost-test-dev libboost-math-dev libboost-iostreams-dev libboost-system-dev libboost-filesystem-dev
  libtomlplusplus-dev nlohmann-json3-dev libcli11-dev
  libspdlog-dev libfmt-dev libpcre2-dev libicu-dev libssl-dev zlib1g-dev
  libgnuplot-iostream-dev gnuplot-nox
  slurmctld slurmd slurm-client munge  # a throw-away single-node Slurm for the executor tests (tests/slurm/)
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "[install-deps] installing: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Debian's libtorch links the generic libblas.so.3; make the OpenMP OpenBLAS the provider of it.
blas_alt=$(update-alternatives --list libblas.so.3-x86_64-linux-gnu 2>/dev/null | grep openblas-openmp || true)
if [ -n "$blas_alt" ]; then
  current=$(readlink -f /etc/alternatives/libblas.so.3-x86_64-linux-gnu 2>/dev/null || true)
  if [ "$current" != "$(readlink -f "$blas_alt")" ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO update-alternatives --set libblas.so.3-x86_64-linux-gnu "$blas_alt" >/dev/null
  fi
  lapack_alt=$(update-alternatives --list liblapack.so.3-x86_64-linux-gnu 2>/dev/null | grep openblas-openmp || true)
  if [ -n "$lapack_alt" ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO update-alternatives --set liblapack.so.3-x86_64-linux-gnu "$lapack_alt" >/dev/null
  fi
fi
