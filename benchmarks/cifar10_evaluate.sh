#!/usr/bin/env bash
# The exactness check of docs/real-images.md for one CIFAR-10 (JPEG copy) run: float64, the
# counts path on all 10,000 test images and the step path on the first 1,000, written to
# results/cifar10_ID_counts.json and results/cifar10_ID_step1000.json.
#
#   bash benchmarks/cifar10_evaluate.sh ID      (checkpoints in $RUNS, default /work/cifar-runs)
set -euo pipefail
id="$1"
data=data/cifar10-jpeg
runs="${RUNS:-/work/cifar-runs}"
python3 main_test.py -data cifar10 --data-root "$data" --id "$id" --checkpoint-dir "$runs" \
    --dtype float64 --sim counts --no-progress --output "results/cifar10_${id}_counts.json"
python3 main_test.py -data cifar10 --data-root "$data" --id "$id" --checkpoint-dir "$runs" \
    --dtype float64 --sim step --num-images 1000 --no-progress \
    --output "results/cifar10_${id}_step1000.json"
