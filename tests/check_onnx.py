#!/usr/bin/env python3
"""Checks an oats export directory with the reference ONNX tooling:
onnx.checker.check_model(full_check=True) on every graph, and onnxruntime-python logits equal
to the trainer's logits stored in reference.safetensors (max |diff| <= 1e-4, same argmax).
Usage: check_onnx.py EXPORT_DIR. Reads manifest.yaml with a minimal parser (no PyYAML needed:
only the `graphs:` entries' id/file/lambda_index keys are used)."""
import json
import struct
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort


def read_safetensors(path):
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        out[name] = np.frombuffer(raw[base + a:base + b], dtype="<f4").reshape(info["shape"])
    return out


def graph_entries(manifest_text):
    entries, cur, in_graphs = [], None, False
    for line in manifest_text.splitlines():
        if line.startswith("graphs:"):
            in_graphs = True
            continue
        if in_graphs and line and not line.startswith(" ") and not line.startswith("-"):
            in_graphs = False
        if not in_graphs:
            continue
        s = line.strip()
        if s.startswith("- id:"):
            cur = {"id": s.split(":", 1)[1].strip()}
            entries.append(cur)
        elif cur is not None and ":" in s and line.startswith("  ") and not line.startswith("    "):
            k, v = s.split(":", 1)
            cur[k.strip()] = v.strip()
    return entries


def main():
    d = Path(sys.argv[1])
    entries = graph_entries((d / "manifest.yaml").read_text())
    ref = read_safetensors(d / "reference.safetensors")
    x = ref["input"].astype(np.float32)
    checked = set()
    worst = 0.0
    for e in entries:
        path = d / e["file"]
        if path not in checked:
            onnx.checker.check_model(onnx.load(str(path)), full_check=True)
            checked.add(path)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feeds = {"image": x}
        if "lambda_index" in e:
            feeds["lambda_index"] = np.array([int(e["lambda_index"])], dtype=np.int64)
        (got,) = sess.run(["logits"], feeds)
        want = ref["logits." + e["id"]]
        diff = float(np.max(np.abs(got - want)))
        worst = max(worst, diff)
        if diff > 1e-4 or (got.argmax(1) != want.argmax(1)).any():
            print(f"FAIL {e['id']}: max |diff| {diff:.3e}")
            sys.exit(1)
    if not entries:
        print("FAIL: no graphs found in manifest")
        sys.exit(1)
    print(f"onnx.checker full_check: {len(checked)} files; onnxruntime {ort.__version__}: {len(entries)} configurations, max |diff| {worst:.2e}")
    print("all graphs passed")


if __name__ == "__main__":
    main()
