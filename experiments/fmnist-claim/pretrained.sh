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
# The export replaces $OUT atomically; keep the hand-written provenance note.
note=$(mktemp); cp "$OUT/README.md" "$note" 2>/dev/null || true
"$BIN/oats-export" --checkpoint "$RUN" --out "$OUT" --shared-weights
[ -s "$note" ] && cp "$note" "$OUT/README.md"; rm -f "$note"
"$BIN/oats-calibrate" --checkpoint "$RUN" --export "$OUT" --limit "$CAL_LIMIT" | tee "$OUT/calibration.txt"
cp experiments/fmnist-claim/configs/oats.yaml "$OUT/train-config.yaml"
du -ch "$OUT"/* | tail -1
