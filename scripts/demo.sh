#!/usr/bin/env bash
# The main job on the embedded default (called by ./oats demo after set-up):
# train OATS (small preset, bundled Fashion-MNIST subset) → evaluate SA/RA per (λ, width)
# → export every (λ, width) graph, verified against the trainer → calibrate (measured SA,
# worst-case RA, replay through the runtime, frontier plot) → on-device benchmark → the
# trade-off table again, and the runtime picking a configuration from it by policy.
# Re-running reuses finished stages; a killed training run resumes. --fresh starts over.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${OATS_DEMO_RUN:-runs/demo}
if [ "${1:-}" = "--fresh" ]; then
  rm -rf "$RUN"
fi
echo "== build"
# The binaries only, with the feature set of ./oats test, so the demo does not wait for ~20
# test binaries. The dependencies resolve the same way in both builds (proptest is kept off
# its bit-set feature for this, see Cargo.toml), so ./oats test later compiles the workspace
# crates, the test binaries and four small regex/tracing crates, not tract again.
cargo build --workspace --features "$OATS_FEATURES" --bins
BIN=target/debug

echo "== 1/5 train (OATS, small preset, assets/fashion-mnist-subset) → $RUN"
if [ -f "$RUN/checkpoint.safetensors" ]; then
  "$BIN/oats-train" train --run-dir "$RUN" --resume   # no-op when the run is complete
else
  "$BIN/oats-train" train --run-dir "$RUN"
fi

echo "== 2/5 evaluate on the test split: SA and RA (PGD-20 and FGSM, per-sample worst case)"
if [ ! -f "$RUN/eval.txt" ] || [ "$RUN/checkpoint.safetensors" -nt "$RUN/eval.yaml" ]; then
  "$BIN/oats-train" eval --checkpoint "$RUN" --attacks pgd20,fgsm --split test --limit 500 --out "$RUN/eval.yaml" | tee "$RUN/eval.txt"
else
  cat "$RUN/eval.txt"
fi

echo "== 3/5 export every (λ, width) graph, verified in tract and ONNX Runtime"
if [ ! -f "$RUN/export/manifest.yaml" ] || [ "$RUN/checkpoint.safetensors" -nt "$RUN/export/manifest.yaml" ]; then
  "$BIN/oats-export" --checkpoint "$RUN" --out "$RUN/export"
else
  echo "up to date: $RUN/export/manifest.yaml"
fi
echo "== 4/5 calibrate on the validation split (200 images): PGD-20×2 + APGD-CE, replay through tract and ONNX Runtime"
if [ ! -f "$RUN/calibration.txt" ] || [ "$RUN/checkpoint.safetensors" -nt "$RUN/export/calibration.yaml" ]; then
  "$BIN/oats-calibrate" --checkpoint "$RUN" --export "$RUN/export" --limit 200 | tee "$RUN/calibration.txt"
else
  cat "$RUN/calibration.txt"
fi

echo "== 5/5 on-device benchmark (tract and ONNX Runtime, batch 1)"
"$BIN/oats-bench" "$RUN/export" --backend tract,ort --batch 1 --iters 100

echo "== the trade-off table (calibrated on the validation split; plot: $RUN/export/frontier.png)"
sed -n '/^graph /,/^replay:/p' "$RUN/calibration.txt" | sed '$d'
echo "== the runtime picks from it: most accurate configuration with worst-case RA ≥ 0.4 (oats-run)"
"$BIN/oats-run" "$RUN/export" assets/examples/*.png --min-ra 0.4 --objective max-sa \
  || echo "(oats-run found no configuration for this policy; its error is above)"

echo "done: checkpoint $RUN/checkpoint.safetensors, test-split report $RUN/eval.yaml,"
echo "      graphs + calibrated manifest $RUN/export/, frontier plot $RUN/export/frontier.png"
