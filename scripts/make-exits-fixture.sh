#!/usr/bin/env bash
# Remakes assets/fixtures/exits-tiny/: a real export of a model with side exits (issue #16),
# small enough to commit, for the tests of the C, Python and Java bindings (routed inference,
# thresholds, exit MACs), which cannot train one themselves (no libtorch there).
#
#   scripts/make-exits-fixture.sh
#
# Trains assets/configs/exits-fixture.yaml for one short epoch on the bundled subset, exports
# λ 0 and 1 at width 0.5 (segments and heads verified in tract) and calibrates them on 256
# validation images for 0.7 of the full MACs, so that the manifest carries thresholds. The
# numbers in it are real but come from a model trained for seconds: a fixture, not a result.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
source "${OATS_CACHE:-$HOME/.cache/oats}/env.sh"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
cargo build -q -p oats-train -p oats-export -p oats-calibrate
BIN=${CARGO_TARGET_DIR:-target}/debug
OUT=assets/fixtures/exits-tiny
run=$(mktemp -d)
trap 'rm -rf "$run"' EXIT
"$BIN/oats-train" train --config assets/configs/exits-fixture.yaml --run-dir "$run/run" --quiet
rm -rf "$OUT"
"$BIN/oats-export" --checkpoint "$run/run" --out "$OUT" --lambdas 0,1 --widths 0.5 \
  --verify tract --quiet
"$BIN/oats-calibrate" --checkpoint "$run/run" --export "$OUT" --limit 256 --backend tract \
  --bench-batch 1 --bench-iters 5 --exit-budget 0.7 --sanity-limit 0 --quiet
# The frontier plot says nothing about a model trained for seconds.
rm -f "$OUT/frontier.png" "$OUT/frontier.svg"
ls -l "$OUT"
