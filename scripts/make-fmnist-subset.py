#!/usr/bin/env python3
"""Cuts the bundled Fashion-MNIST subset (assets/fashion-mnist-subset) from the Debian
package dataset-fashion-mnist. Usage: scripts/make-fmnist-subset.py [N_TRAIN N_TEST]"""
import gzip
import struct
import sys

SRC = "/usr/share/datasets/fashion-mnist/"
DST = "assets/fashion-mnist-subset/"


def cut(name, n):
    with gzip.open(SRC + name, "rb") as f:
        data = f.read()
    magic = struct.unpack(">I", data[:4])[0]
    if magic == 0x803:
        _, _, r, c = struct.unpack(">IIII", data[:16])
        out = struct.pack(">IIII", 0x803, n, r, c) + data[16:16 + n * r * c]
    else:
        out = struct.pack(">II", 0x801, n) + data[8:8 + n]
    with gzip.GzipFile(DST + name, "wb", mtime=0) as g:
        g.write(out)


n_train, n_test = (int(a) for a in sys.argv[1:3]) if len(sys.argv) == 3 else (7200, 1000)
for split, n in (("train", n_train), ("t10k", n_test)):
    cut(f"{split}-images-idx3-ubyte.gz", n)
    cut(f"{split}-labels-idx1-ubyte.gz", n)
