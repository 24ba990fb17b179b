#!/bin/bash
# Fingerprints of short runs, to show that a change keeps every value bit for bit: a 1-epoch FP
# training and a shortened HLA quantisation (stage 1 at t = 30 / 44 %, half an epoch of stage 2)
# on 512 images of the shipped CIFAR-10 subset, each on the AVX-512 kernels (where the CPU has
# them) and under `--isa avx2`. Prints one line per run: ISA, run, SHA-256 of its checkpoints,
# SHA-256 of its metrics.csv without the timing columns. Run it with the binary before and after
# a change and compare the output (about 30 s on 2 cores).
#
# usage: tools/bitcheck.sh [HLA_BINARY] [WORK_DIR]   (defaults: target/release/hla, a temp dir)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/hla}
work=${2:-$(mktemp -d)}
data="--set data.train_limit=512 --set data.test_limit=250"
for isa in avx512 avx2; do
  out=$work/$isa
  rm -rf "$out"
  mkdir -p "$out"
  "$bin" --threads 2 train -c configs/demo.toml $data --set train.epochs=1 \
    --out "$out/fp" -q --isa $isa > /dev/null
  "$bin" --threads 2 quantize -c configs/demo.toml -m hla $data --set hla.stage2_epochs=0.5 \
    --set hla.t_end_pct=44 --out "$out/hla" -q --isa $isa > /dev/null
  for run in fp hla; do
    ckpt=$(find "$out/$run" -name '*.safetensors' | sort | xargs cat | sha256sum | cut -c1-16)
    # columns 1-16: everything but images_per_s and seconds
    metrics=$(cut -d, -f1-16 "$out/$run/metrics.csv" | sha256sum | cut -c1-16)
    echo "$isa $run $ckpt $metrics"
  done
done
