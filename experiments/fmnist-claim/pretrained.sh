#!/usr/bin/env bash
# Builds the pretrained model shipped in assets/pretrained/oats-small-fmnist from the OATS run
# of the claim experiment (configs/oats.yaml, trained by run.sh):
#   1. export every (λ, width) with --shared-weights: one graph per width with a λ table
#      (5.5× smaller than 18 folded graphs; costs latency, see README "Results"),
#      verified against the trainer in tract and ONNX Runtime;
#   2. calibrate on the validation split (first $CAL_LIMIT images; PGD-20×2 + APGD-CE),
#      which writes the measured SA / RA / latency into the manifest and draws frontier.png;
#   3. copy the training config beside it (the provenance is in README.md there).
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck disable=SC1091
source "${OATS_CACHE:-$HOME/.cache/oats}/env.sh"
RUN=${CLAIM_RUNS:-runs/claim}/oats
OUT=assets/pretrained/oats-small-fmnist
BIN=${OATS_BIN:-${CARGO_TARGET_DIR:-target}/debug}
CAL_LIMIT=${CAL_LIMIT:-500}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
[ -f "$RUN/checkpoint.safetensors" ] || { echo "no trained run in $RUN: run experiments/fmnist-claim/run.sh oats first" >&2; exit 2; }
# oats-export replaces only an earlier export (what it and oats-calibrate write), so the files
# this script adds beside it are moved aside first: the hand-written provenance note comes
# back afterwards, the other two are written anew. If a step fails, all three come back.
EXTRA=(README.md calibration.txt train-config.yaml)
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
"$BIN/oats-export" --checkpoint "$RUN" --out "$OUT" --shared-weights
"$BIN/oats-calibrate" --checkpoint "$RUN" --export "$OUT" --limit "$CAL_LIMIT" | tee "$OUT/calibration.txt"
cp experiments/fmnist-claim/configs/oats.yaml "$OUT/train-config.yaml"
rm -f "$keep/calibration.txt" "$keep/train-config.yaml" # replaced; README.md comes back on exit
du -ch "$OUT"/* | tail -1
