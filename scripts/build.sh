#!/usr/bin/env bash
# Installs dependencies (idempotent) and builds strata into build/ (Release, Ninja, ccache, shared PCH).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
jobs=$(nproc)
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release > build.configure.log 2>&1 || { cat build.configure.log; exit 1; }
cmake --build build -j "$jobs"
