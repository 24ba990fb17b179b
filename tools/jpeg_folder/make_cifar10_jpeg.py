"""Writes the 10,000 CIFAR-10 test images as an ImageNet-layout folder of JPEG files.

    python tools/jpeg_folder/make_cifar10_jpeg.py ../shared/data/cifar10/cifar-10-batches-bin/test_batch.bin /tmp/c10jpg

gives /tmp/c10jpg/val/<class>/NNNNN.jpg (PIL, quality 95; class folders in CIFAR-10 label
order, so sorted names give the labels). Needs numpy and pillow.
"""
import os
import sys

import numpy as np
from PIL import Image

NAMES = "airplane automobile bird cat deer dog frog horse ship truck".split()


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, out = sys.argv[1], sys.argv[2]
    raw = np.fromfile(src, dtype=np.uint8).reshape(-1, 3073)
    for c in NAMES:
        os.makedirs(os.path.join(out, "val", c), exist_ok=True)
    for i, r in enumerate(raw):
        img = r[1:].reshape(3, 32, 32).transpose(1, 2, 0)
        Image.fromarray(img).save(os.path.join(out, "val", NAMES[r[0]], f"{i:05d}.jpg"), quality=95)
    print(f"wrote {len(raw)} images under {out}/val")


if __name__ == "__main__":
    main()
