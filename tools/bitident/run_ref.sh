#!/bin/bash
# Reference runs for the bit-identity check: B = binary, O = output root, T = threads.
B=$1; O=$2; T=${3:-2}
cd "$(dirname "$0")/../.."
set -x
rm -rf $O; mkdir -p $O
S="--set data.train_limit=1000 --set data.test_limit=500"
$B --json --threads $T --out $O/demo demo > $O/demo.jsonl 2>$O/demo.err
$B --json --threads $T --out $O/train train --config configs/demo.toml --set train.epochs=2 $S > $O/train.jsonl 2>&1
$B --json --threads $T --out $O/train-hs train --config configs/demo.toml --set train.epochs=1 --set train.mode=hyperspherical $S > $O/train-hs.jsonl 2>&1
$B --json --threads $T --out $O/q-hla quantize --config configs/demo.toml --from $O/train --set hla.t_step_pct=20 --set hla.stage2_epochs=1 $S > $O/q-hla.jsonl 2>&1
$B --json --threads $T --out $O/q-twn quantize --config configs/demo.toml --from $O/train --method twn --set hla.stage2_epochs=2 $S > $O/q-twn.jsonl 2>&1
$B --json --threads $T --out $O/q-ttq quantize --config configs/demo.toml --from $O/train --method ttq --set hla.stage2_epochs=2 $S > $O/q-ttq.jsonl 2>&1
$B --json --threads $T export $O/q-hla > $O/export.jsonl 2>&1
$B --json --threads $T eval $O/q-hla/model.ternary.safetensors > $O/eval.jsonl 2>&1
echo done > $O/DONE
