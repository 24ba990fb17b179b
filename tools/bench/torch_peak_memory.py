#!/usr/bin/env python3
"""Peak resident memory of PyTorch CPU on the cases `hla bench --compare` measures.

Usage (from the repository root; PyTorch from PyPI):
  python tools/bench/torch_peak_memory.py --threads 2 --json /tmp/torch-mem.json
  hla --threads 2 bench --compare /tmp/torch.json --compare /tmp/torch-mem.json

Models and inputs are those of ../shared/bench/torch_models.py (imported from there). Each case
runs in a fresh process (memory a previous case left with the allocator would otherwise count):
the peak RSS counter (VmHWM) is reset through /proc/self/clear_refs once the model and input are
built, the work runs 2 + 5 times, and VmHWM is read again; the RSS just before is reported too.
`hla bench --compare` measures its own side the same way. Linux only.
"""
import argparse, json, os, subprocess, sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "shared", "bench"))
import torch, torch.nn.functional as F, torchvision  # noqa: E402
from torch_models import ResNet20  # noqa: E402


def status_kib(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def peak_of(fn, runs=7):
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    base = status_kib("VmRSS")
    for _ in range(runs):
        fn()
    return base, status_kib("VmHWM")


def case(name, model, batch, hw, ncls, mode):
    x = torch.randn(batch, 3, hw, hw)
    y = torch.randint(0, ncls, (batch,))
    if mode == "inference":
        model.eval()

        def fn():
            with torch.no_grad():
                model(x)
    else:
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

        def fn():
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
    base, peak = peak_of(fn)
    return dict(bench=name, mode=mode, batch=batch, hw=hw, base_rss_mib=base / 1024,
                peak_rss_mib=peak / 1024)


CASES = [
    ("cifar_resnet20", ResNet20, 128, 32, 10, "train_step"),
    ("cifar_resnet20", ResNet20, 128, 32, 10, "inference"),
    ("cifar_resnet20", ResNet20, 500, 32, 10, "inference"),
    ("resnet18", lambda: torchvision.models.resnet18(weights=None), 16, 224, 1000, "train_step"),
    ("resnet18", lambda: torchvision.models.resnet18(weights=None), 16, 224, 1000, "inference"),
    ("mobilenet_v2", lambda: torchvision.models.mobilenet_v2(weights=None), 16, 224, 1000, "train_step"),
    ("mobilenet_v2", lambda: torchvision.models.mobilenet_v2(weights=None), 16, 224, 1000, "inference"),
]

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    ap.add_argument("--case", type=int, default=None, help="run one case in this process")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.case is not None:
        name, make, batch, hw, ncls, mode = CASES[args.case]
        print(json.dumps(case(name, make(), batch, hw, ncls, mode)))
        sys.exit(0)
    res = []
    for i in range(len(CASES)):
        out = subprocess.run([sys.executable, __file__, "--threads", str(args.threads), "--case", str(i)],
                             check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(r)
        res.append(r)
    info = dict(torch=torch.__version__, threads=torch.get_num_threads(),
                cpu_capability=torch.backends.cpu.get_cpu_capability())
    if args.json:
        json.dump(dict(info=info, results=res), open(args.json, "w"), indent=1)
