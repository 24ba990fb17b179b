#!/usr/bin/env python3
"""Compare regenerated golden files with the ones the tests read, tensor by tensor.

Usage (from the repository root):
  python tools/golden/compare_golden.py NEW_DIR [REF_DIR]

REF_DIR defaults to ../shared/golden (what crates/models/src/testutil.rs reads). Every *.safetensors file of
NEW_DIR is compared with the file of the same name in REF_DIR: names, dtypes and shapes must match; then per tensor
whether the bytes are identical, else max |new - ref| and that divided by max |ref| (the relative measure the golden
README uses for its float32-vs-float64 figures). Metadata keys that differ are listed, and the sha256 of both files
is printed (bytes can differ only by metadata or header order when every tensor is bit-identical).
Needs numpy and safetensors only (no torch). Exit status 1 if a name, dtype or shape differs or a file is missing.
"""
import hashlib
import json
import os
import struct
import sys

import numpy as np
from safetensors.numpy import load_file


def metadata(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n)).get("__metadata__", {})


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def compare(new_path, ref_path):
    """Prints one report; returns False on a structural mismatch (names, dtypes, shapes)."""
    new, ref = load_file(new_path), load_file(ref_path)
    name = os.path.basename(new_path)
    ok = True
    if set(new) != set(ref):
        print(f"{name}: tensor names differ; only new: {sorted(set(new) - set(ref))}, "
              f"only ref: {sorted(set(ref) - set(new))}")
        ok = False
    identical, worst = 0, []
    for k in sorted(set(new) & set(ref)):
        a, b = new[k], ref[k]
        if a.dtype != b.dtype or a.shape != b.shape:
            print(f"{name}: {k}: dtype/shape {a.dtype}{list(a.shape)} vs {b.dtype}{list(b.shape)}")
            ok = False
            continue
        if a.tobytes() == b.tobytes():
            identical += 1
            continue
        d = np.abs(a.astype(np.float64) - b.astype(np.float64))
        scale = float(np.abs(b.astype(np.float64)).max()) if b.size else 0.0
        mx = float(d.max()) if d.size else 0.0
        worst.append((mx / scale if scale > 0 else float("inf"), mx, scale, int((d > 0).sum()), b.size, k))
    total = len(set(new) & set(ref))
    print(f"{name}: {identical}/{total} tensors bit-identical")
    for rel, mx, scale, nd, size, k in sorted(worst, reverse=True):
        print(f"    {k:50s} max|diff| {mx:.3e}  max|ref| {scale:.3e}  rel {rel:.3e}  ({nd}/{size} elements differ)")
    mn, mr = metadata(new_path), metadata(ref_path)
    for k in sorted(set(mn) | set(mr)):
        if mn.get(k) != mr.get(k):
            print(f"    metadata {k}: new {mn.get(k)!r} vs ref {mr.get(k)!r}")
    print(f"    sha256 new {sha256(new_path)}\n    sha256 ref {sha256(ref_path)}")
    return ok


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    repo = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
    new_dir = sys.argv[1]
    ref_dir = sys.argv[2] if len(sys.argv) == 3 else os.path.join(repo, "..", "shared", "golden")
    files = sorted(f for f in os.listdir(new_dir) if f.endswith(".safetensors"))
    if not files:
        sys.exit(f"no .safetensors files in {new_dir}")
    ok = True
    for f in files:
        ref = os.path.join(ref_dir, f)
        if not os.path.exists(ref):
            print(f"{f}: no reference file {ref}")
            ok = False
            continue
        ok &= compare(os.path.join(new_dir, f), ref)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
