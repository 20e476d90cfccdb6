#!/usr/bin/env bash
# The claim experiment (README, "Results": does one OAT / OATS model give the trade-off of
# the dedicated models it replaces?): trains every model of configs/ on the full
# Fashion-MNIST and evaluates it on the test split.
#
#   experiments/fmnist-claim/run.sh            both lanes in parallel (1 libtorch thread each)
#   experiments/fmnist-claim/run.sh NAME...    just these runs, one after the other
#
# Each run lives in $CLAIM_RUNS/NAME (default runs/claim/NAME): checkpoint after every
# epoch, so a killed run resumes where it stopped; finished stages are skipped. Logs go to
# $CLAIM_RUNS/NAME/log.txt. Then `experiments/fmnist-claim/report.sh` writes the table
# and the plot.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck disable=SC1091
source "${OATS_CACHE:-$HOME/.cache/oats}/env.sh"
CFG=experiments/fmnist-claim/configs
RUNS=${CLAIM_RUNS:-runs/claim}
BIN=${OATS_BIN:-${CARGO_TARGET_DIR:-target}/debug}
# Test-split evaluation: first N test images, PGD-20 + APGD-CE (100 it.), per-sample worst case.
EVAL_LIMIT=${EVAL_LIMIT:-1000}
ATTACKS=pgd20,apgd-ce
# Two runs share two cores: one libtorch thread each (more oversubscribes; DESIGN.md).
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

eval_lambdas() {
  case "$1" in
    oat-dual) echo 0,0.1,0.15,0.2,0.25,0.3,0.4,0.5,0.7,1 ;; # S1 plus the unseen 0.15/0.25/0.5/0.7
    oat-normal) echo 0,0.2,0.4,1 ;; # the λ of the dedicated baselines
    oats) echo 0,0.2,0.4,1 ;; # the λ of the dedicated baselines
    *) echo "" ;; # baselines: their own λ
  esac
}

one() {
  local name=$1 dir=$RUNS/$1
  mkdir -p "$dir"
  [ -f "$CFG/$name.yaml" ] || { echo "no config $CFG/$name.yaml" >&2; return 2; }
  {
    echo "== $name: train ($(date -u +%FT%TZ))"
    if [ -f "$dir/checkpoint.safetensors" ]; then
      "$BIN/oats-train" train --config "$CFG/$name.yaml" --run-dir "$dir" --resume --quiet
    else
      "$BIN/oats-train" train --config "$CFG/$name.yaml" --run-dir "$dir" --quiet
    fi
    if [ ! -f "$dir/eval.yaml" ] || [ "$dir/checkpoint.safetensors" -nt "$dir/eval.yaml" ]; then
      echo "== $name: eval on test[:$EVAL_LIMIT] ($(date -u +%FT%TZ))"
      local lam; lam=$(eval_lambdas "$name")
      local start=$SECONDS
      "$BIN/oats-train" eval --checkpoint "$dir" --split test --limit "$EVAL_LIMIT" \
        --attacks "$ATTACKS" ${lam:+--lambdas "$lam"} --out "$dir/eval.yaml" # written atomically
      echo "eval_seconds: $((SECONDS - start))" > "$dir/eval-time.txt"
    fi
    echo "== $name: done ($(date -u +%FT%TZ))"
  } 2>&1 | tee -a "$dir/log.txt"
}

if [ $# -gt 0 ]; then
  for n in "$@"; do one "$n"; done
  exit 0
fi
# Most important first, so a cut-short day still answers the main questions.
lane_a=(oats pgd-ats-l1 pgd-ats-l0 pgd-at-l0 pgd-ats-l0.4)
lane_b=(oat-dual pgd-at-l1 oat-normal pgd-at-l0.4 pgd-at-l0.2 pgd-ats-l0.2)
# Wait for both lanes whatever the first one did (under set -e a bare `wait $a` that fails
# would exit and leave lane B running unwatched), then fail if either lane failed.
"$0" "${lane_a[@]}" & a=$!
"$0" "${lane_b[@]}" & b=$!
failed=0
wait "$a" || { echo "FAIL: lane A (${lane_a[*]}) exited with status $?; see $RUNS/<name>/log.txt" >&2; failed=1; }
wait "$b" || { echo "FAIL: lane B (${lane_b[*]}) exited with status $?; see $RUNS/<name>/log.txt" >&2; failed=1; }
exit "$failed"
