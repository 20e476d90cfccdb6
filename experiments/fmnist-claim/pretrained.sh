#!/usr/bin/env bash
# Builds the pretrained model shipped in assets/pretrained/oats-small-fmnist from the OATS run
# of the claim experiment (configs/oats.yaml, trained by run.sh):
#   1. export it --package-only: package.safetensors (every weight once) and a manifest listing
#      the 18 trained (λ, width), no graph files: the device derives each configuration, and
#      any λ in the trained range, from the package. Every configuration is verified against
#      the trainer, derived, in tract and ONNX Runtime;
#   2. calibrate the λ grid $CAL_LAMBDAS (default 0, 0.05, …, 1) at every width on the
#      validation split (first $CAL_LIMIT images; PGD-20×2 + APGD-CE): the grid points become
#      derived entries of the manifest with measured SA / RA / latency, and frontier.png is
#      drawn;
#   3. copy the training config beside it (the provenance is in README.md there);
#   4. add int8 graphs for λ ∈ $INT8_LAMBDAS (default 0, 0.2, 0.4, 1) at every width
#      (`oats-export --int8-only`: ranges from 512 training images, verified against the float
#      configuration on 1000 validation images in tract and ONNX Runtime) and calibrate them
#      (`oats-calibrate --int8-only`, the same images and attacks as step 2, transfer + direct).
#   `INT8_ONLY=1 experiments/fmnist-claim/pretrained.sh` runs steps 4 alone on the shipped
#   model (its float metrics stay).
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck disable=SC1091
source "${OATS_CACHE:-$HOME/.cache/oats}/env.sh"
RUN=${CLAIM_RUNS:-runs/claim}/oats
OUT=assets/pretrained/oats-small-fmnist
BIN=${OATS_BIN:-${CARGO_TARGET_DIR:-target}/debug}
CAL_LIMIT=${CAL_LIMIT:-500}
CAL_LAMBDAS=${CAL_LAMBDAS:-0:0.05:1}
INT8_LAMBDAS=${INT8_LAMBDAS:-0,0.2,0.4,1}
DATA_DIR=${DATA_DIR:-/usr/share/datasets/fashion-mnist}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
[ -f "$RUN/checkpoint.safetensors" ] || { echo "no trained run in $RUN: run experiments/fmnist-claim/run.sh oats first" >&2; exit 2; }
# oats-export replaces only an earlier export (what it and oats-calibrate write), so the files
# this script adds beside it are moved aside first: the hand-written provenance note comes
# back afterwards, the other two are written anew. If a step fails, all three come back.
EXTRA=(README.md calibration.txt train-config.yaml int8-export.txt calibration-int8.txt)
keep=$(mktemp -d)
restore() {
  for f in "${EXTRA[@]}"; do
    if [ -e "$keep/$f" ]; then mv -f "$keep/$f" "$OUT/$f"; fi
  done
  rmdir "$keep" 2>/dev/null || true
}
trap restore EXIT
for f in "${EXTRA[@]}"; do
  if [ -e "$OUT/$f" ]; then mv "$OUT/$f" "$keep/$f"; fi
done
int8() {
  "$BIN/oats-export" --checkpoint "$RUN" --out "$OUT" --int8-only --int8-lambdas "$INT8_LAMBDAS" \
    --data-dir "$DATA_DIR" --quiet | tee "$OUT/int8-export.txt"
  "$BIN/oats-calibrate" --checkpoint "$RUN" --export "$OUT" --limit "$CAL_LIMIT" --int8-only \
    --data "$DATA_DIR" --quiet | tee "$OUT/calibration-int8.txt"
}
if [ "${INT8_ONLY:-0}" = 1 ]; then
  restore
  trap - EXIT
  int8
  du -ch "$OUT"/* | tail -1
  exit 0
fi
"$BIN/oats-export" --checkpoint "$RUN" --out "$OUT" --package-only
"$BIN/oats-calibrate" --checkpoint "$RUN" --export "$OUT" --limit "$CAL_LIMIT" --lambdas "$CAL_LAMBDAS" --quiet | tee "$OUT/calibration.txt"
cp experiments/fmnist-claim/configs/oats.yaml "$OUT/train-config.yaml"
int8
rm -f "$keep/calibration.txt" "$keep/train-config.yaml" "$keep/int8-export.txt" "$keep/calibration-int8.txt" # replaced; README.md comes back on exit
du -ch "$OUT"/* | tail -1
