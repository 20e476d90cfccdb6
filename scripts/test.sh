#!/usr/bin/env bash
# The whole test suite (called by ./oats test after set-up; .ci/run calls ./oats test).
set -euo pipefail
cd "$(dirname "$0")/.."
# The edge runtime must never link libtorch.
if cargo tree -p oats-runtime --features ort -e normal 2>/dev/null | grep -qE '(tch|torch-sys) v'; then
  echo "FAIL: oats-runtime depends on tch/torch-sys" >&2
  exit 1
fi
# One libtorch thread per test: cargo runs tests in parallel, and OpenMP threads that
# oversubscribe 2 cores spin-wait each other into 10-50x slowdowns (measured).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
cargo test --workspace --features "$OATS_FEATURES" "$@"
