#!/usr/bin/env bash
# Side-by-side speed of one training step: oats-train (tch) vs the same step in PyTorch eager
# (bench/torch_step.py), alternating in one run, printed as a ratio (tch / torch images/s;
# > 1 means tch is faster). Not a test: these machines are noisy, so only the ratio of runs
# taken side by side means anything.
#
#   bench/train-step.sh [ITERS] [PGD_STEPS]   (defaults 3 and 7; ResNet-34 steps take minutes on 2 cores)
#   env: ARCHS="small resnet34", THREADS (libtorch threads, default nproc), R34_ITERS (default 1),
#        OATS_BIN (directory of a built oats-train; default: build it like ./oats test does,
#        into ${CARGO_TARGET_DIR:-target}/debug)
#
# PyTorch eager needs an importable torch: a venv with torch==2.13.0 (the libtorch tch links)
# is created once under ~/.cache/oats/torch-venv (≈ 2.7 GB download from PyPI).
set -euo pipefail
cd "$(dirname "$0")/.."
ITERS=${1:-3}
PGD=${2:-7}
THREADS=${THREADS:-$(nproc)}
CACHE=${OATS_CACHE:-$HOME/.cache/oats}
bash scripts/setup.sh
# shellcheck disable=SC1091
source "$CACHE/env.sh"
VENV=$CACHE/torch-venv
if [ ! -f "$VENV/.done" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --find-links "$CACHE/wheels" torch==2.13.0 numpy
  touch "$VENV/.done"
fi
# The dev profile builds dependencies at opt-level 2 and the compute is libtorch's either way.
# OATS_BIN=<dir> uses an oats-train built already (e.g. by ./oats test) instead of building.
if [ -z "${OATS_BIN:-}" ]; then
  cargo test -q --workspace --features "${OATS_FEATURES:-oats-runtime/ort,oats-export/ort,oats-calibrate/ort}" --no-run
fi
BIN=${OATS_BIN:-${CARGO_TARGET_DIR:-target}/debug}/oats-train
ARCHS=${ARCHS:-"small resnet34"}
printf '%-6s %-9s %12s %12s %8s\n' mode arch "tch img/s" "torch img/s" ratio
for arch in $ARCHS; do
  for mode in oat oats; do
    iters=$ITERS
    [ "$arch" = resnet34 ] && iters=${R34_ITERS:-1}
    t1=$("$BIN" bench-step --mode "$mode" --arch "$arch" --batch 128 --pgd-steps "$PGD" --iters "$iters" --threads "$THREADS" | awk '{print $4}')
    p1=$("$VENV/bin/python" bench/torch_step.py "$mode" "$arch" 128 "$PGD" "$iters" "$THREADS" | awk '{print $4}')
    t2=$("$BIN" bench-step --mode "$mode" --arch "$arch" --batch 128 --pgd-steps "$PGD" --iters "$iters" --threads "$THREADS" | awk '{print $4}')
    p2=$("$VENV/bin/python" bench/torch_step.py "$mode" "$arch" 128 "$PGD" "$iters" "$THREADS" | awk '{print $4}')
    python3 - "$mode" "$arch" "$t1" "$t2" "$p1" "$p2" <<'PY'
import sys
m, a, t1, t2, p1, p2 = sys.argv[1], sys.argv[2], *map(float, sys.argv[3:])
t, p = (t1 + t2) / 2, (p1 + p2) / 2
print(f"{m:<6} {a:<9} {t:12.2f} {p:12.2f} {t / p:8.2f}")
PY
  done
done
