#!/usr/bin/env bash
# The "free but no worse" study (issue #18): trains and evaluates every config of configs/
# in priority order (queue below), resumably.
#
#   experiments/no-worse/run.sh            one lane (1 libtorch thread)
#   experiments/no-worse/run.sh 2          two lanes (a whole 2-core machine)
#   experiments/no-worse/run.sh NAME...    just these runs
#
# Each run lives in $STUDY_RUNS/NAME (default runs/no-worse/NAME): a checkpoint after every
# epoch, so a killed run resumes where it stopped; finished stages are skipped. A lane claims a
# run by creating NAME.claim (with its pid) and skips runs another live lane holds, so lanes
# can be started and stopped at any time. Logs: $STUDY_RUNS/NAME/log.txt.
#
# A finished run is kept in $STUDY_RESULTS/NAME (default experiments/no-worse/results/runs/
# NAME): its eval.yaml, checkpoint.yaml (the checkpoint's config, history and sha256, without
# the weights), metrics.csv, log and times. Commit it: a run kept there is done on any machine.
# runs/ is not committed and a new machine starts without it (session 10's 27 finished runs
# were lost that way). Then
#   cargo run -p oats-calibrate --features ort --example no_worse -- \
#     experiments/no-worse/results/runs experiments/no-worse/results README.md
# writes the table and figure from the kept runs, and the README's copy of the table.
#
# STUDY_UNTIL=13:05 (any `date -d` time): a lane starts a run only when its estimated wall
# time (estimate below, scaled by the epochs still to train) ends before then, and otherwise
# goes on down the queue for one that fits. A run unfinished when the machine goes is lost
# (weights are not kept), so a session's lanes should get its end as STUDY_UNTIL.
#
# The script may be edited while lanes run: everything is in functions, and the last line
# (parsed whole before it runs) calls main and exits.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck disable=SC1091
source "${OATS_CACHE:-$HOME/.cache/oats}/env.sh"
CFG=experiments/no-worse/configs
RUNS=${STUDY_RUNS:-runs/no-worse}
RESULTS=${STUDY_RESULTS:-experiments/no-worse/results/runs}
BIN=${OATS_BIN:-${CARGO_TARGET_DIR:-target}/debug}
EVAL_LIMIT=${EVAL_LIMIT:-1000} # first N test images; PGD-20 + APGD-CE, per-sample worst case
ATTACKS=pgd20,apgd-ce
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p "$RUNS"
UNTIL=""
if [ -n "${STUDY_UNTIL:-}" ]; then
  UNTIL=$(date -d "$STUDY_UNTIL" +%s) || { echo "STUDY_UNTIL=$STUDY_UNTIL: not a time" >&2; exit 2; }
fi

# Wall minutes "train eval" of a run alone on one core (measured in sessions 10 to 12, see
# README.md, rounded up where a kept run took longer: a run that overruns the session is lost;
# slimmable runs train and evaluate three widths). Machines differ: session 18's ran 1.7–2×
# slower than these (×2 OAT epochs of 240–260 s against 127–160 s, both with two lanes), and
# there a run outlasts its estimate, so on a new machine compare one epoch's time first.
estimate() {
  case $1 in
    m1-*-oat-*) echo "8 7" ;;
    m1-*-pgd-at-l0) echo "3 1" ;;
    m1-*-pgd-at-*) echo "6 1" ;;
    m2-*-oat-*) echo "22 14" ;;
    m2-*-pgd-at-l0) echo "7 2" ;;
    m2-*-pgd-at-*) echo "22 3" ;;
    m2-*-oats-*) echo "45 42" ;;
    m2-*-pgd-ats-l0) echo "13 6" ;;
    m2-*-pgd-ats-l1) echo "50 7" ;;
    m2-*-pgd-ats-*) echo "58 7" ;; # a middle λ trains on clean and adversarial images
    m4-*-oat-*) echo "55 64" ;;
    m4-*-pgd-at-l0) echo "12 8" ;;
    m4-*-pgd-at-l1) echo "55 8" ;;
    m4-*-pgd-at-*) echo "72 10" ;;
    full-*-oat-*) echo "32 7" ;;
    full-*-pgd-at-l0) echo "12 1" ;;
    full-*-pgd-at-*) echo "24 1" ;;
    *) echo "60 60" ;;
  esac
}

# Whether run NAME, resumed from its checkpoint if any, fits before STUDY_UNTIL.
fits() {
  [ -z "$UNTIL" ] && return 0
  local name=$1 train eval epochs done=0
  read -r train eval <<< "$(estimate "$name")"
  epochs=$(sed -n 's/^epochs: *\([0-9]*\).*/\1/p' "$CFG/$name.yaml")
  epochs=${epochs:-10}
  if [ -f "$RUNS/$name/metrics.csv" ]; then
    done=$(($(wc -l < "$RUNS/$name/metrics.csv") - 1))
  fi
  local minutes=$((train * (epochs - done) / epochs + eval))
  if [ $(($(date +%s) + minutes * 60)) -gt "$UNTIL" ]; then
    echo "== $name: not started, ≈ $minutes min would end after STUDY_UNTIL=$STUDY_UNTIL" >&2
    return 1
  fi
}

# Most informative first. Session 10 measured ×1 and ×2 (both seeds) and three ×4 runs, but
# kept them only in runs/, which its machine took with it (their summary is in
# results/session10/gap.md); so now: ×4 seed 0 (the ends sampling first: does it hold the
# robust end where capacity closed the clean one?), OATS against PGD-ATS at ×2 seed 0, ×4
# seed 1, the third factor at ×1 (`robust`: cheap, and ×1's dedicated models are kept), OATS
# seed 1, the ×1 and ×2 re-runs (with `robust` at ×2), then the full-split anchors. Within a
# capacity: the two ends of the gap, then the middle. Names without a config (`robust` exists
# at ×1 and ×2 only) are left out.
queue() {
  local s m n
  for pass in "0 4" "oats 0" "1 4" "robust 1" "oats 1" "0 1 2" "1 1 2"; do
    # shellcheck disable=SC2086 # a pass is words: a seed and capacities, or a kind and more
    set -- $pass
    case $1 in
      oats)
        for n in oats-ends pgd-ats-l1 pgd-ats-l0 pgd-ats-l0.4 pgd-ats-l0.2; do echo "m2-s$2-$n"; done
        continue
        ;;
      robust)
        for s in 0 1; do echo "m$2-s$s-oat-robust"; done
        continue
        ;;
    esac
    s=$1; shift
    for m in "$@"; do
      for n in oat-ends pgd-at-l1 pgd-at-l0 oat-ref pgd-at-l0.4 pgd-at-l0.2 oat-robust; do
        if [ -f "$CFG/m$m-s$s-$n.yaml" ]; then echo "m$m-s$s-$n"; fi
      done
    done
  done
  echo full-m1-s0-oat-ref full-m1-s0-pgd-at-l1 full-m1-s0-pgd-at-l0 | tr ' ' '\n'
}

# A claim is live while its pid runs; a killed lane's claim is taken over.
claim() {
  local c=$RUNS/$1.claim
  if mkdir "$c" 2>/dev/null; then echo $$ > "$c/pid"; return 0; fi
  local pid; pid=$(cat "$c/pid" 2>/dev/null || echo "")
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then return 1; fi
  echo $$ > "$c/pid"
}
release() { rm -rf "$RUNS/$1.claim"; }

# Copies a finished run's small files into $RESULTS/NAME (a temporary folder, then a rename, so
# a kept run is never half there).
keep() {
  local name=$1 dir=$RUNS/$1 f
  local tmp=$RESULTS/.$name.tmp
  rm -rf "$tmp"
  mkdir -p "$tmp"
  for f in eval.yaml checkpoint.yaml metrics.csv log.txt train-time.txt eval-time.txt; do
    [ -f "$dir/$f" ] && cp "$dir/$f" "$tmp/"
  done
  rm -rf "${RESULTS:?}/$name"
  mv "$tmp" "$RESULTS/$name"
}

one() {
  local name=$1 dir=$RUNS/$1
  [ -f "$CFG/$name.yaml" ] || { echo "no config $CFG/$name.yaml" >&2; return 2; }
  [ -f "$RESULTS/$name/eval.yaml" ] && return 0
  if [ -f "$dir/eval.yaml" ] && [ ! "$dir/checkpoint.safetensors" -nt "$dir/eval.yaml" ]; then
    keep "$name"
    return 0
  fi
  fits "$name" || return 0
  claim "$name" || return 0
  local rc=0
  claimed "$name" || rc=$?
  release "$name"
  return "$rc"
}

# Trains, evaluates and keeps one claimed run.
claimed() {
  local name=$1 dir=$RUNS/$1
  mkdir -p "$dir"
  # This runs where `set -e` is ignored (`claimed "$name" || rc=$?`), so every failure is explicit:
  # a failed or killed training must not be evaluated and kept as finished.
  {
    echo "== $name: train ($(date -u +%FT%TZ))"
    local start=$SECONDS
    if [ -f "$dir/checkpoint.safetensors" ]; then
      "$BIN/oats-train" train --config "$CFG/$name.yaml" --run-dir "$dir" --resume --quiet ||
        exit 1
    else
      "$BIN/oats-train" train --config "$CFG/$name.yaml" --run-dir "$dir" --quiet || exit 1
    fi
    echo "train_seconds_this_lane: $((SECONDS - start))" >> "$dir/train-time.txt"
    echo "== $name: eval on test[:$EVAL_LIMIT] ($(date -u +%FT%TZ))"
    start=$SECONDS
    "$BIN/oats-train" eval --checkpoint "$dir" --split test --limit "$EVAL_LIMIT" \
      --attacks "$ATTACKS" --out "$dir/eval.yaml" || exit 1 # written atomically
    echo "eval_seconds: $((SECONDS - start))" > "$dir/eval-time.txt"
    echo "== $name: done ($(date -u +%FT%TZ)); kept in $RESULTS/$name"
  } 2>&1 | tee -a "$dir/log.txt"
  local rc=${PIPESTATUS[0]}
  if [ "$rc" != 0 ]; then
    echo "== $name: failed (exit $rc); see $dir/log.txt" >&2
    return "$rc"
  fi
  keep "$name"
}

main() {
  [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || {
    echo "Fashion-MNIST is missing: apt-get install dataset-fashion-mnist" >&2
    return 2
  }
  if [ $# -gt 0 ] && [ "$1" != 1 ] && [ "$1" != 2 ]; then
    for n in "$@"; do one "$n" || return $?; done
    return 0
  fi
  local lanes=${1:-1} a b failed=0
  if [ "$lanes" = 2 ]; then
    lane & a=$!
    sleep 5
    lane & b=$!
    wait "$a" || failed=1
    wait "$b" || failed=1
    return "$failed"
  fi
  lane
}
lane() { for n in $(queue); do one "$n" || exit $?; done; }

main "$@"; exit $?
