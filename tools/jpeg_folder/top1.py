"""Top-1 of `hla --json infer` output over an ImageNet-layout folder (class = parent folder).

    hla --json infer MODEL /tmp/c10jpg/val | python tools/jpeg_folder/top1.py
"""
import json
import os
import sys

n = ok = 0
for line in sys.stdin:
    try:
        e = json.loads(line)
    except ValueError:
        continue
    if e.get("event") != "prediction":
        continue
    n += 1
    ok += e["top"][0]["name"] == os.path.basename(os.path.dirname(e["file"]))
if n == 0:
    sys.exit("no predictions on standard input")
print(f"{ok}/{n} = {100 * ok / n:.2f}%")
