#!/usr/bin/env python3
"""Float against int8 per configuration of the shipped model (README, "int8 configurations").

    python3 experiments/fmnist-claim/int8_table.py [assets/pretrained/oats-small-fmnist]

Reads manifest.yaml (metrics written by oats-calibrate) and prints a markdown table: SA and
worst-case RA of each float configuration that has an int8 twin, and the twin's SA, RA under
the transfer attack, under each direct attack, its worst case, and its top-1 agreement with
the float configuration. Intervals: 95 % Wilson over the calibration's samples.
"""
import math
import sys

import yaml


def wilson(p, n, z=1.96):
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return c - h, c + h


def pct(p, n=None):
    if p is None:
        return "–"
    if n is None:
        return f"{100 * p:.1f}"
    lo, hi = wilson(p, n)
    return f"{100 * p:.1f} ({100 * lo:.0f}–{100 * hi:.0f})"


def main():
    d = sys.argv[1] if len(sys.argv) > 1 else "assets/pretrained/oats-small-fmnist"
    m = yaml.safe_load(open(f"{d}/manifest.yaml"))
    by_id = {g["id"]: g for g in m["graphs"]}
    rows = []
    for g in m["graphs"]:
        if g.get("precision") != "int8":
            continue
        f = by_id[g["quantization"]["float_id"]]
        fm, qm = f.get("metrics", {}), g.get("metrics", {})
        n = qm.get("samples")
        direct = {k: v for k, v in qm.get("ra", {}).items() if k != "transfer"}
        rows.append((g["lambda"], g["width"], [
            f"{g['lambda']:g}", f"{g['width']:g}",
            pct(fm.get("sa"), fm.get("samples")), pct(fm.get("ra_worst"), fm.get("samples")),
            pct(qm.get("sa"), n),
            pct(qm.get("ra", {}).get("transfer")),
            " / ".join(pct(direct[k]) for k in sorted(direct)),
            pct(qm.get("ra_worst"), n),
            f"{100 * g['quantization']['top1_agreement']:.1f}",
        ]))
    keys = sorted({k for g in m["graphs"] if g.get("precision") == "int8"
                   for k in g.get("metrics", {}).get("ra", {}) if k != "transfer"})
    print("| λ | width | float SA | float worst RA | int8 SA | int8 RA transfer | "
          f"int8 RA direct ({' / '.join(keys)}) | int8 worst RA | top-1 agreement |")
    print("|---|---|---|---|---|---|---|---|---|")
    for _, _, r in sorted(rows, key=lambda r: (r[1], r[0])):
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
