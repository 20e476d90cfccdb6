#!/usr/bin/env bash
# The main job on the embedded default (called by ./oats demo after set-up):
# train OATS (small preset, bundled Fashion-MNIST subset) → evaluate SA/RA per (λ, width)
# → export every (λ, width) graph, verified against the trainer → calibrate (measured SA,
# worst-case RA, replay through the runtime, frontier plot) → on-device benchmark → the
# trade-off table again, and the runtime picking a configuration from it by policy.
# Re-running reuses finished stages; a killed training run resumes. --fresh starts over.
# Any stage that fails, the last one included, fails the demo (non-zero exit, stage named).
set -euo pipefail
cd "$(dirname "$0")/.."
stage=set-up
trap 'echo "FAIL: demo stage \"$stage\" failed (exit status $?); its error is above" >&2' ERR
RUN=${OATS_DEMO_RUN:-runs/demo}
# A fresh, uniquely named temporary file beside $1 (never a fixed name, which a planted symlink
# could redirect), with the mode of a normal new file; the caller moves it over $1 when done.
fresh_tmp() {
  local t
  t=$(mktemp "$(dirname "$1")/.$(basename "$1").XXXXXX")
  chmod "$(printf '%04o' $((0666 & ~0$(umask))))" "$t"
  echo "$t"
}
if [ "${1:-}" = "--fresh" ]; then
  # --fresh removes a demo run and nothing else. RUN comes from OATS_DEMO_RUN, so a slip there
  # (".", "$HOME", a training run of your own) must not delete what the demo did not make:
  # the directory may only hold what the stages below write.
  if [ -L "$RUN" ] || { [ -e "$RUN" ] && [ ! -d "$RUN" ]; }; then
    echo "FAIL: --fresh: $RUN (OATS_DEMO_RUN) is not a directory made by the demo; nothing was removed" >&2
    exit 2
  fi
  if [ -d "$RUN" ]; then
    foreign=()
    shopt -s nullglob dotglob
    for p in "$RUN"/*; do
      case ${p##*/} in
        checkpoint.safetensors | checkpoint.yaml | config.yaml | metrics.csv | eval.yaml | eval.txt | calibration.txt | export) ;;
        .oats.lock | .export.oats.lock | .export.?????? | .*.tmp | .eval.txt.?????? | .calibration.txt.??????) ;;
        # What earlier versions of the demo left there.
        eval.txt.tmp | calibration.txt.tmp | export.partial | export.old) ;;
        *) foreign+=("${p##*/}") ;;
      esac
    done
    shopt -u nullglob dotglob
    if [ ${#foreign[@]} -gt 0 ]; then
      echo "FAIL: --fresh: $RUN (OATS_DEMO_RUN) holds files the demo did not make (${foreign[*]:0:5}); nothing was removed. Point OATS_DEMO_RUN at a demo run or a new path" >&2
      exit 2
    fi
    rm -rf -- "$RUN"
  fi
fi
stage=build
echo "== $stage"
# The binaries only, with the feature set of ./oats test, so the demo does not wait for ~20
# test binaries. The dependencies resolve the same way in both builds (proptest is kept off
# its bit-set feature for this, see Cargo.toml), so ./oats test later compiles the workspace
# crates, the test binaries and four small regex/tracing crates, not tract again.
cargo build --workspace --features "$OATS_FEATURES" --bins
BIN=${CARGO_TARGET_DIR:-target}/debug

stage="1/5 train"
echo "== 1/5 train (OATS, small preset, assets/fashion-mnist-subset) → $RUN"
if [ -f "$RUN/checkpoint.safetensors" ]; then
  "$BIN/oats-train" train --run-dir "$RUN" --resume   # no-op when the run is complete
else
  "$BIN/oats-train" train --run-dir "$RUN"
fi

stage="2/5 evaluate"
echo "== 2/5 evaluate on the test split: SA and RA (PGD-20 and FGSM, per-sample worst case)"
if [ ! -f "$RUN/eval.txt" ] || [ "$RUN/checkpoint.safetensors" -nt "$RUN/eval.yaml" ]; then
  tmp=$(fresh_tmp "$RUN/eval.txt")
  "$BIN/oats-train" eval --checkpoint "$RUN" --attacks pgd20,fgsm --split test --limit 500 --out "$RUN/eval.yaml" | tee "$tmp"
  mv "$tmp" "$RUN/eval.txt"
else
  cat "$RUN/eval.txt"
fi

stage="3/5 export"
echo "== 3/5 export every (λ, width) graph, verified in tract and ONNX Runtime"
if [ ! -f "$RUN/export/manifest.yaml" ] || [ "$RUN/checkpoint.safetensors" -nt "$RUN/export/manifest.yaml" ]; then
  "$BIN/oats-export" --checkpoint "$RUN" --out "$RUN/export"
else
  echo "up to date: $RUN/export/manifest.yaml"
fi
stage="4/5 calibrate"
echo "== 4/5 calibrate on the validation split (200 images): PGD-20×2 + APGD-CE, replay through tract and ONNX Runtime"
if [ ! -f "$RUN/calibration.txt" ] || [ "$RUN/checkpoint.safetensors" -nt "$RUN/export/calibration.yaml" ]; then
  tmp=$(fresh_tmp "$RUN/calibration.txt")
  "$BIN/oats-calibrate" --checkpoint "$RUN" --export "$RUN/export" --limit 200 | tee "$tmp"
  mv "$tmp" "$RUN/calibration.txt"
else
  cat "$RUN/calibration.txt"
fi

stage="5/5 benchmark"
echo "== 5/5 on-device benchmark (tract and ONNX Runtime, batch 1)"
"$BIN/oats-bench" "$RUN/export" --backend tract,ort --batch 1 --iters 100

stage="trade-off table"
echo "== the trade-off table (calibrated on the validation split; plot: $RUN/export/frontier.png)"
# Read back from the stored report (calibration.yaml), not scraped from printed output.
"$BIN/oats-calibrate" --export "$RUN/export" --show
stage="policy pick"
echo "== the runtime picks from it: most accurate configuration with worst-case RA ≥ 0.4 (oats-run)"
if ! "$BIN/oats-run" "$RUN/export" assets/examples/*.png --min-ra 0.4 --objective max-sa; then
  echo "FAIL: oats-run could not pick a configuration with worst-case RA ≥ 0.4 and classify the examples (its error is above)" >&2
  exit 1
fi

echo "done: checkpoint $RUN/checkpoint.safetensors, test-split report $RUN/eval.yaml,"
echo "      graphs + calibrated manifest $RUN/export/, frontier plot $RUN/export/frontier.png"
