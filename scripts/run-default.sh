#!/usr/bin/env bash
# Command (1) of the README: install, build, and run the embedded default experiment end to end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
exec ./build/strata run experiments/default.toml "$@"
