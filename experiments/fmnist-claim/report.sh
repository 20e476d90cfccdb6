#!/usr/bin/env bash
# Tables and plots of the claim experiment from the runs of run.sh, into docs/results/:
#   oat-vs-pgd-at.{md,png,svg}    OAT (dual BN), OAT (normal BN), PGD-AT at λ ∈ {0, 0.2, 0.4, 1}
#   oats-vs-pgd-ats.{md,png,svg}  OATS vs PGD-ATS per width
# Runs without an eval.yaml yet are left out (with a note), so a partial day still reports.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck disable=SC1091
source "${OATS_CACHE:-$HOME/.cache/oats}/env.sh"
RUNS=${CLAIM_RUNS:-runs/claim}
BIN=${OATS_BIN:-${CARGO_TARGET_DIR:-target}/debug}
OUT=docs/results
mkdir -p "$OUT"
present() {
  for n in "$@"; do
    if [ -f "$RUNS/$n/eval.yaml" ]; then echo "$RUNS/$n"; else echo "note: $RUNS/$n has no eval.yaml yet; left out" >&2; fi
  done
}
mapfile -t oat < <(present oat-dual oat-normal pgd-at-l0 pgd-at-l0.2 pgd-at-l0.4 pgd-at-l1)
[ ${#oat[@]} -gt 0 ] && "$BIN/oats-compare" "${oat[@]}" --out "$OUT/oat-vs-pgd-at" \
  --title "One OAT model vs dedicated PGD-AT models (Fashion-MNIST, small preset, 3 epochs)"
mapfile -t oats < <(present oats pgd-ats-l0 pgd-ats-l0.2 pgd-ats-l0.4 pgd-ats-l1)
[ ${#oats[@]} -gt 0 ] && "$BIN/oats-compare" "${oats[@]}" --out "$OUT/oats-vs-pgd-ats" \
  --title "One OATS model vs dedicated PGD-ATS models, per width (Fashion-MNIST, 3 epochs)"
true
