#!/usr/bin/env python3
"""Batch-1 inference latency of PyTorch CPU on the models of ../shared/bench/torch_models.py.

Usage (from the repository root; PyTorch from PyPI):
  python tools/bench/torch_latency.py --threads 2 --json /tmp/torch-b1.json
  hla --threads 2 bench --compare /tmp/torch-b1.json

The reference script times batch 16 / 128 only; a deployed model often sees one image at a
time, with every core on that image. Models, inputs and the timing protocol (2 warm-ups, median
over at least 5 runs and 3 s) are those of torch_models.py, imported from there; the JSON has
its layout (`results` rows with bench, mode, batch, hw, sec, img_s), so `hla bench --compare`
reads it like the reference file.
"""
import argparse, json, os, sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "shared", "bench"))
import torch, torchvision  # noqa: E402
from torch_models import ResNet20, timeit  # noqa: E402

MODELS = [
    ("cifar_resnet20", ResNet20, 32),
    ("resnet18", lambda: torchvision.models.resnet18(weights=None), 224),
    ("mobilenet_v2", lambda: torchvision.models.mobilenet_v2(weights=None), 224),
]

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    info = dict(torch=torch.__version__, threads=torch.get_num_threads(),
                cpu_capability=torch.backends.cpu.get_cpu_capability())
    print(info)
    res = []
    for name, make, hw in MODELS:
        model = make().eval()
        x = torch.randn(1, 3, hw, hw)

        def inf():
            with torch.no_grad():
                model(x)
        t, n = timeit(inf, 2, 5)
        r = dict(bench=name, mode="inference", batch=1, hw=hw, sec=t, img_s=1 / t, reps=n)
        print(r)
        res.append(r)
    if args.json:
        json.dump(dict(info=info, results=res), open(args.json, "w"), indent=1)
