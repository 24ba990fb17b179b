#!/usr/bin/env python3
"""Golden values for hla-data's transforms, from torchvision on PIL images.

Writes crates/data/tests/golden_transforms.txt, read by the `torchvision_golden_*` tests in
crates/data/src/tests.rs. Generated with torch 2.15.0, torchvision 0.29.2, Pillow 13.0.0:

    python3 -m venv /tmp/tv && /tmp/tv/bin/pip install torch torchvision pillow numpy
    /tmp/tv/bin/python crates/data/tests/golden_transforms.py [SHARED_DATA_DIR]

Inputs are lossless so that only the transforms are compared (JPEG decoders may differ by a
grey level): a synthetic 53x41 RGB image given by a formula (rebuilt identically in Rust), and,
when ../shared/data is present, the PNG `bad-images/png-disguised.JPEG` (250x188).

`decode` lines give Pillow's decode of the shipped ImageNet JPEGs (size + 4x4 grid of
per-channel block means), to check the JPEG decoder and colour conversion within a tolerance.

Each case is written as `case NAME`, `shape C H W`, then the output tensor's float32 bit
patterns in hex (C-order), or, for the large real-image cases, `fnv1a64` of the uint8 HWC image
before ToTensor plus the bits of the first 16 normalised values of channel 0, row 0.
"""
import os
import struct
import sys

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import functional as F

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
HERE = os.path.dirname(os.path.abspath(__file__))


def synth(w=53, h=41):
    a = np.zeros((h, w, 3), np.uint8)
    for y in range(h):
        for x in range(w):
            a[y, x] = ((x * 7 + y * 3) % 256, (x * x + y * 5 + 11) % 256, ((x ^ y) * 9 + 50) % 256)
    return Image.fromarray(a, "RGB")


def norm(pil):
    return F.normalize(F.to_tensor(pil), MEAN, STD)


def bits(t):
    return " ".join("%08x" % struct.unpack("<I", struct.pack("<f", v))[0] for v in t.flatten().tolist())


def fnv1a64(b):
    h = 0xCBF29CE484222325
    for x in b:
        h = ((h ^ x) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def main():
    shared = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "..", "..", "..", "shared", "data")
    img = synth()
    cases = [
        # resized_crop(img, top, left, height, width, size): RandomResizedCrop with a fixed box
        ("rrc_down", F.resized_crop(img, 5, 9, 30, 37, [24, 24])),
        ("rrc_up", F.resized_crop(img, 3, 2, 11, 8, [20, 20])),
        ("rrc_down_flip", F.hflip(F.resized_crop(img, 5, 9, 30, 37, [24, 24]))),
        # Resize(shorter side) + CenterCrop, including a crop larger than the image (padding)
        ("resize32_center24", F.center_crop(F.resize(img, 32), 24)),
        ("resize16_center20", F.center_crop(F.resize(img, 16), 20)),
        ("resize64_center33", F.center_crop(F.resize(img, 64), 33)),
    ]
    out = []
    for name, pil in cases:
        t = norm(pil)
        out.append("case %s\nshape %d %d %d\n%s\n" % (name, *t.shape, bits(t)))
    png = os.path.join(shared, "bad-images", "png-disguised.JPEG")
    if os.path.exists(png):
        real = Image.open(png).convert("RGB")
        for name, pil in [
            ("png_eval_256_224", F.center_crop(F.resize(real, 256), 224)),
            ("png_rrc_224", F.resized_crop(real, 20, 30, 120, 150, [224, 224])),
        ]:
            t = norm(pil)
            out.append("case %s\nshape %d %d %d\nfnv1a64 %016x\nrow0 %s\n"
                       % (name, *t.shape, fnv1a64(np.asarray(pil).tobytes()), bits(t[0, 0, :16])))
    # Decoder reference: Pillow's RGB decode of the shipped real JPEGs, as the image size and the
    # mean of each channel over a 4x4 grid of blocks (row-major, then R, G, B), 48 values.
    data = os.path.join(HERE, "..", "..", "..", "data")
    for rel in sorted(os.path.relpath(os.path.join(r, f), data)
                      for r, _, fs in os.walk(os.path.join(data, "imagenette", "val")) for f in fs):
        a = np.asarray(Image.open(os.path.join(data, rel)).convert("RGB"), dtype=np.float64)
        h, w = a.shape[:2]
        grid = [a[h * by // 4:h * (by + 1) // 4, w * bx // 4:w * (bx + 1) // 4, c].mean()
                for by in range(4) for bx in range(4) for c in range(3)]
        out.append("decode %s %d %d %s\n" % (rel, w, h, " ".join("%.4f" % g for g in grid)))
    with open(os.path.join(HERE, "golden_transforms.txt"), "w") as f:
        f.write("".join(out))


if __name__ == "__main__":
    main()
