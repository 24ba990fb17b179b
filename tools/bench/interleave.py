#!/usr/bin/env python3
"""Ours against PyTorch CPU case by case, in interleaved pairs: for every case (a model, a mode,
a batch), PyTorch and `hla bench` run back to back within seconds, several times, the order
alternating between pairs; the table gives each pair's ratio and their median.

Why: on a shared virtual machine the speed of both sides drifts by a third within minutes.
Measuring all of PyTorch's cases and then all of ours (`hla bench --compare`) puts minutes
between the two figures of a ratio; here they are seconds apart, and the drift shows as the
spread of the pairs instead of moving the median.

Models, inputs and the timing protocol (2 warm-ups, median over at least 5 runs and 3 s) are
those of ../shared/bench/torch_models.py (imported from there); ours are `hla bench --compare`
on a reference file that holds the one case PyTorch just measured, so both sides time the same
work the same way. Peak memory is not measured here (see torch_peak_memory.py).

usage (from the repository root; PyTorch from PyPI):
  python tools/bench/interleave.py --threads 2 --pairs 5 [--hla target/release/hla]
      [--isa avx2] [--cases r20,r18,mbv2,b1,hla] [--json out.json] > table.md

`--isa avx2` runs our AVX2 kernels and PyTorch's AVX2 code (`ATEN_CPU_CAPABILITY=avx2
ONEDNN_MAX_CPU_ISA=AVX2`, unless already set); the header names both sides' ISA.

`hla` adds pairs of our own: the ResNet-20 training step (batch 128) on the HLA path and on the
FP path (`hla bench --path hla|fp`), whose time ratio the speed issue bounds by 1.15.
"""
import argparse, json, os, statistics, subprocess, sys, tempfile, time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "shared", "bench"))
# `--isa avx2` holds PyTorch to its AVX2 code too, as the README's AVX2 rounds do: its dispatch
# reads these when torch is imported, so they are set before the import
_isa = [a.split("=", 1)[1] for a in sys.argv if a.startswith("--isa=")]
_isa += [b for a, b in zip(sys.argv, sys.argv[1:]) if a == "--isa"]
if _isa[-1:] == ["avx2"]:
    os.environ.setdefault("ATEN_CPU_CAPABILITY", "avx2")
    os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
import torch, torch.nn.functional as F, torchvision  # noqa: E402
from torch_models import ResNet20, timeit  # noqa: E402

# (group, bench name as in torch_models.py, constructor, batch, image size, classes, modes)
CASES = [
    ("r20", "cifar_resnet20", ResNet20, 128, 32, 10, ("train_step", "inference")),
    ("r18", "resnet18", lambda: torchvision.models.resnet18(weights=None), 16, 224, 1000,
     ("train_step", "inference")),
    ("mbv2", "mobilenet_v2", lambda: torchvision.models.mobilenet_v2(weights=None), 16, 224,
     1000, ("train_step", "inference")),
    ("b1", "cifar_resnet20", ResNet20, 1, 32, 10, ("inference",)),
    ("b1", "resnet18", lambda: torchvision.models.resnet18(weights=None), 1, 224, 1000,
     ("inference",)),
    ("b1", "mobilenet_v2", lambda: torchvision.models.mobilenet_v2(weights=None), 1, 224, 1000,
     ("inference",)),
]


def torch_case(model, mode, batch, hw, ncls):
    """One mode of torch_models.bench_model: (seconds per run, runs)."""
    x = torch.randn(batch, 3, hw, hw)
    if mode == "inference":
        model.eval()

        def inf():
            with torch.no_grad():
                model(x)
        return timeit(inf, 2, 5)
    y = torch.randint(0, ncls, (batch,))
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    return timeit(step, 2, 5)


def hla_result(args, rest):
    """The last result line of `hla [--threads, --isa] bench REST --json` (exits on failure)."""
    cmd = [args.hla, "--threads", str(args.threads)]
    if args.isa:
        cmd += ["--isa", args.isa]
    cmd += ["bench", *rest, "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"interleave: {' '.join(cmd)} failed: {out.stderr.strip()}")
    lines = [json.loads(ln) for ln in out.stdout.splitlines() if ln.startswith("{")]
    res = [ln for ln in lines if ln.get("event") == "result"]
    if not res:
        sys.exit(f"interleave: no result line from {' '.join(cmd)}")
    return res[-1]


def ours_case(args, info, row):
    """`hla bench --compare` on a reference file holding `row` only: its result."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(dict(info=info, results=[row]), f)
    try:
        return hla_result(args, ["--compare", f.name])
    finally:
        os.unlink(f.name)


def ours_path(args, path):
    """`hla bench` of a ResNet-20 training step (batch 128) on `path` (fp or hla): images/s and
    the kernels' ISA."""
    res = hla_result(args, ["--arch", "resnet20", "--batch", "128", "--what", "train",
                            "--path", path])
    return res["train_images_per_s"], res["isa"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--hla", default=os.path.join("target", "release", "hla"))
    ap.add_argument("--isa", default=None, help="passed to hla as --isa (e.g. avx2)")
    ap.add_argument("--cases", default="r20,r18,mbv2,b1,hla")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    groups = set(args.cases.split(","))
    unknown = groups - {c[0] for c in CASES} - {"hla"}
    if unknown:
        sys.exit(f"interleave: unknown case group(s) {sorted(unknown)}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    info = dict(torch=torch.__version__, torchvision=torchvision.__version__,
                threads=torch.get_num_threads(),
                cpu_capability=torch.backends.cpu.get_cpu_capability())
    cases = [c for c in CASES if c[0] in groups]
    models = {}
    # work → list of (ours, pytorch, ratio), plus the folded inference of ours
    pairs, hla_pairs, cpu, isa = {}, [], None, None
    t0 = time.time()
    for p in range(args.pairs):
        for _, name, make, batch, hw, ncls, modes in cases:
            if (name, batch) not in models:
                models[(name, batch)] = make()
            model = models[(name, batch)]
            for mode in modes:
                def run_torch():
                    sec, n = torch_case(model, mode, batch, hw, ncls)
                    return dict(bench=name, mode=mode, batch=batch, hw=hw, sec=sec,
                                img_s=batch / sec, reps=n)
                # alternate the order, so that a steady drift does not favour one side
                if p % 2 == 0:
                    row = run_torch()
                    res = ours_case(args, info, row)
                else:
                    # ours first, on a placeholder figure; PyTorch's then replaces it
                    res = ours_case(args, info, dict(bench=name, mode=mode, batch=batch, hw=hw,
                                                     sec=1.0, img_s=float(batch)))
                    row = run_torch()
                cpu, isa = res["cpu"], res["isa"]
                for r in res["rows"]:
                    what = {"train_step": "training step", "inference": "inference",
                            "inference_folded": "inference, BN folded"}[r["mode"]]
                    work = f"{r['arch']} {what}, batch {batch}, {hw}²"
                    ours = r["images_per_s"]
                    pairs.setdefault(work, []).append((ours, row["img_s"], ours / row["img_s"]))
                print(f"pair {p + 1}/{args.pairs}: {name} {mode} batch {batch}: PyTorch "
                      f"{row['img_s']:.1f} img/s, ours {res['rows'][0]['images_per_s']:.1f} "
                      f"({time.time() - t0:.0f} s)", file=sys.stderr)
        if "hla" in groups:
            # the HLA path's step time over the FP path's, both ours, order alternating
            if p % 2 == 0:
                fp, isa = ours_path(args, "fp")
                hla, _ = ours_path(args, "hla")
            else:
                hla, isa = ours_path(args, "hla")
                fp, _ = ours_path(args, "fp")
            hla_pairs.append((hla, fp, fp / hla))
            print(f"pair {p + 1}/{args.pairs}: resnet20 training step, FP {fp:.1f} img/s, HLA "
                  f"{hla:.1f} ({time.time() - t0:.0f} s)", file=sys.stderr)
    if cpu is None:  # only our own pairs ran: the CPU as `hla bench --compare` names it
        names = [ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                 if ln.startswith("model name")] if os.path.exists("/proc/cpuinfo") else []
        cpu = names[0] if names else "unknown CPU"
    print(f"{cpu}; our kernels: {isa}; {args.threads} threads; PyTorch {info['torch']} "
          f"({info['cpu_capability']}); {args.pairs} interleaved pairs per case, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
    print("| work | ours img/s (median) | PyTorch img/s (median) | ours / PyTorch: median "
          "(pairs) |")
    print("|---|---|---|---|")
    summary = []
    for work, ps in pairs.items():
        ratios = [r for _, _, r in ps]
        med = statistics.median(ratios)
        print(f"| {work} | {statistics.median(o for o, _, _ in ps):.1f} | "
              f"{statistics.median(t for _, t, _ in ps):.1f} | **{med:.2f}** "
              f"({', '.join(f'{r:.2f}' for r in ratios)}) |")
        summary.append(dict(work=work, ours=[o for o, _, _ in ps],
                            torch=[t for _, t, _ in ps], ratios=ratios, median=med))
    hla_summary = None
    if hla_pairs:
        ratios = [r for _, _, r in hla_pairs]
        med = statistics.median(ratios)
        print(f"\nHLA path / FP path, our ResNet-20 training step at batch 128 (step time; "
              f"target ≤ 1.15): median **{med:.2f}** ({', '.join(f'{r:.2f}' for r in ratios)}); "
              f"img/s HLA {statistics.median(h for h, _, _ in hla_pairs):.1f}, FP "
              f"{statistics.median(f for _, f, _ in hla_pairs):.1f} (medians)")
        hla_summary = dict(hla=[h for h, _, _ in hla_pairs], fp=[f for _, f, _ in hla_pairs],
                           ratios=ratios, median=med)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(cpu=cpu, isa=isa, threads=args.threads, torch=info,
                           pairs=args.pairs, cases=summary, hla_over_fp=hla_summary), f,
                      indent=1)


if __name__ == "__main__":
    main()
