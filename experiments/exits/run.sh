#!/usr/bin/env bash
# Early exits on Fashion-MNIST (issue #16): trains OATS small-deep with exits and the same
# model without them (configs/), exports both and calibrates them on the validation split.
#
#   experiments/exits/run.sh train NAME     train one model (resumes a killed run)
#   experiments/exits/run.sh measure [NAME] export + calibrate both, or one (after training)
#
# Runs live in $EXITS_RUNS (default runs/exits): NAME/ holds the checkpoint (one per epoch),
# NAME/export/ the graphs and the manifest, NAME/calibration-b<budget>/ a copy of the export
# calibrated at that MACs budget (calibration.yaml: thresholds, routed SA/RA under every
# attack, the slowdown attack, wall clock). Needs the binaries built with ONNX Runtime:
#   cargo build -p oats-train -p oats-export -p oats-calibrate \
#     --features oats-export/ort,oats-calibrate/ort
# and a quiet machine for the `measure` stage (it times inference).
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck disable=SC1091
source "${OATS_CACHE:-$HOME/.cache/oats}/env.sh"
CFG=experiments/exits/configs
RUNS=${EXITS_RUNS:-runs/exits}
BIN=${OATS_BIN:-${CARGO_TARGET_DIR:-target}/debug}
LIMIT=${LIMIT:-500}            # validation images calibrated on
LAMBDAS=${LAMBDAS:-0,1}        # configurations compared
WIDTHS=${WIDTHS:-1.0}
BUDGETS=${BUDGETS:-0.6 0.8}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}

train() {
  local name=$1 dir=$RUNS/$1
  mkdir -p "$dir"
  [ -f "$dir/trained" ] && return 0
  local resume=()
  [ -f "$dir/checkpoint.safetensors" ] && resume=(--resume)
  "$BIN/oats-train" train --config "$CFG/$name.yaml" --run-dir "$dir" "${resume[@]}" --quiet \
    2>&1 | tee -a "$dir/log.txt"
  touch "$dir/trained"
}

measure() {
  local name b out models=("$@")
  [ $# -eq 0 ] && models=(oats-plain oats-exits)
  for name in "${models[@]}"; do
    [ -f "$RUNS/$name/trained" ] || { echo "$name is not trained yet" >&2; exit 2; }
    "$BIN/oats-export" --checkpoint "$RUNS/$name" --out "$RUNS/$name/export" \
      --lambdas "$LAMBDAS" --widths "$WIDTHS" --verify tract --verify ort --quiet
  done
  if [[ " ${models[*]} " == *" oats-plain "* ]]; then
    # The model without exits: SA/RA of its whole graphs (its wall clock is the exit model's
    # plain graph, timed beside the routes: the same operators and shapes).
    rm -rf "$RUNS/oats-plain/calibration" && cp -r "$RUNS/oats-plain/export" "$RUNS/oats-plain/calibration"
    "$BIN/oats-calibrate" --checkpoint "$RUNS/oats-plain" --export "$RUNS/oats-plain/calibration" \
      --limit "$LIMIT" --backend tract --backend ort --bench-batch 1 --bench-batch 64 --quiet
  fi
  [[ " ${models[*]} " == *" oats-exits "* ]] || return 0
  for b in $BUDGETS; do
    out=$RUNS/oats-exits/calibration-b$b
    rm -rf "$out" && cp -r "$RUNS/oats-exits/export" "$out"
    "$BIN/oats-calibrate" --checkpoint "$RUNS/oats-exits" --export "$out" --limit "$LIMIT" \
      --backend tract --backend ort --bench-batch 1 --bench-batch 64 --exit-budget "$b" \
      --sanity-limit 0 --quiet # no ε sweep per budget (time); the plain run has one
  done
}

case "${1:-}" in
  train) train "${2:?which model: oats-exits or oats-plain}" ;;
  measure) shift; measure "$@" ;;
  *) sed -n '2,16p' "$0"; exit 2 ;;
esac
