#!/usr/bin/env bash
# Data-parallel training throughput on this machine, side by side in one run (these machines
# are noisy; only ratios of interleaved runs mean anything):
#   1 rank × 1 thread, 1 rank × 2 threads, 2 ranks × 1 thread (gloo on loopback),
# each training the same OATS epoch (embedded default: small preset, batch 128, PGD-5,
# three widths) for BATCHES batches; samples/s is the trainer's own (training loop only, no
# validation), read from metrics.csv. Prints the medians over ROUNDS interleaved rounds and
#   ratio      = (2 ranks × 1 thread) / (1 rank × 2 threads)   same cores, processes vs threads
#   efficiency = (2 ranks × 1 thread) / (2 × (1 rank × 1 thread))   scaling of data parallelism
#
#   bench/data-parallel.sh            env: ROUNDS (3), BATCHES (20), OATS_BIN (dir of a built oats-train)
# Run it on an otherwise idle machine: a busy core makes every number meaningless.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
BATCHES=${BATCHES:-20}
CACHE=${OATS_CACHE:-$HOME/.cache/oats}
bash scripts/setup.sh
# shellcheck disable=SC1091
source "$CACHE/env.sh"
if [ -z "${OATS_BIN:-}" ]; then
  cargo build -q -p oats-train
fi
BIN=${OATS_BIN:-${CARGO_TARGET_DIR:-target}/debug}/oats-train
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# One epoch of BATCHES batches of 128 from the bundled subset.
common=(train --quiet --device cpu --epochs 1 --limit $((BATCHES * 128)) --max-batches "$BATCHES")
rate() { # rate NAME: samples/s of the run in $tmp/NAME (column 5 of metrics.csv)
  awk -F, 'NR == 2 {print $5}' "$tmp/$1/metrics.csv"
}
run() { # run NAME [FLAGS...]: one training run into $tmp/NAME, its log shown only on failure
  local name=$1
  shift
  "$BIN" "${common[@]}" --run-dir "$tmp/$name" "$@" 2>"$tmp/$name.log" \
    || { cat "$tmp/$name.log" >&2; exit 1; }
}
declare -a r11 r12 r21
for round in $(seq 1 "$ROUNDS"); do
  OMP_NUM_THREADS=1 run "a$round"
  r11+=("$(rate "a$round")")
  OMP_NUM_THREADS=2 run "b$round"
  r12+=("$(rate "b$round")")
  OMP_NUM_THREADS=1 run "c$round" --nproc 2
  r21+=("$(rate "c$round")")
  echo "round $round: 1×1 ${r11[-1]}  1×2 ${r12[-1]}  2×1 ${r21[-1]} samples/s" >&2
done
python3 - "${r11[*]}" "${r12[*]}" "${r21[*]}" <<'PY'
import statistics, sys
a, b, c = ([float(v) for v in s.split()] for s in sys.argv[1:])
m = statistics.median
print(f"samples/s (median of {len(a)} interleaved rounds): 1 rank x 1 thread {m(a):.0f}, "
      f"1 rank x 2 threads {m(b):.0f}, 2 ranks x 1 thread {m(c):.0f}")
ratios = [z / y for y, z in zip(b, c)]
print(f"ratio 2 ranks x 1 thread / 1 rank x 2 threads = {m(ratios):.2f} "
      f"(per round: {', '.join(f'{r:.2f}' for r in ratios)})")
effs = [z / (2 * x) for x, z in zip(a, c)]
print(f"scaling efficiency of 2 ranks = {m(effs):.2f} "
      f"(per round: {', '.join(f'{e:.2f}' for e in effs)})")
PY
