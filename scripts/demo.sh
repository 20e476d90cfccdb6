#!/usr/bin/env bash
# The main job on the embedded default (called by ./oats demo after set-up):
# train OATS (small preset, bundled Fashion-MNIST subset) → evaluate SA/RA per (λ, width)
# → export every (λ, width) graph, verified against the trainer.
# Re-running reuses finished stages; a killed training run resumes. --fresh starts over.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${OATS_DEMO_RUN:-runs/demo}
if [ "${1:-}" = "--fresh" ]; then
  rm -rf "$RUN"
fi
echo "== build"
# Exactly the build of ./oats test (same packages, features and profile), so one compile
# serves both; --no-run also builds every binary.
cargo test -q --workspace --features "$OATS_FEATURES" --no-run
BIN=target/debug

echo "== 1/3 train (OATS, small preset, assets/fashion-mnist-subset) → $RUN"
if [ -f "$RUN/checkpoint.safetensors" ]; then
  "$BIN/oats-train" train --run-dir "$RUN" --resume   # no-op when the run is complete
else
  "$BIN/oats-train" train --run-dir "$RUN"
fi

echo "== 2/3 evaluate on the test split: SA and RA (PGD-20 and FGSM, per-sample worst case)"
if [ ! -f "$RUN/eval.yaml" ] || [ "$RUN/checkpoint.safetensors" -nt "$RUN/eval.yaml" ]; then
  "$BIN/oats-train" eval --checkpoint "$RUN" --attacks pgd20,fgsm --split test --limit 500 --out "$RUN/eval.yaml" | tee "$RUN/eval.txt"
else
  cat "$RUN/eval.txt"
fi

echo "== 3/3 export every (λ, width) graph, verified in tract and ONNX Runtime"
if [ ! -f "$RUN/export/manifest.yaml" ] || [ "$RUN/checkpoint.safetensors" -nt "$RUN/export/manifest.yaml" ]; then
  "$BIN/oats-export" --checkpoint "$RUN" --out "$RUN/export"
else
  echo "up to date: $RUN/export/manifest.yaml"
fi
echo "done: checkpoint $RUN/checkpoint.safetensors, report $RUN/eval.yaml, graphs $RUN/export/"
