#!/usr/bin/env bash
# A from-scratch ResNet-20 run of docs/real-images.md at one uniform level: train with the
# reference CIFAR recipe for EPOCHS epochs, then evaluate in float64 on both simulation paths.
# Checkpoints go to $RUNS (default /work/cifar-runs); the per-epoch CSV and the evaluation
# files to results/cifar10_resnet20_L{LEVEL}_e{EPOCHS}_*.
#
#   bash benchmarks/cifar10_resnet20_uniform.sh LEVEL EPOCHS     (e.g. 4 30)
# Two runs fit side by side on a 2-core machine with OMP_NUM_THREADS=1 each.
set -euo pipefail
level="$1"
epochs="$2"
data=data/cifar10-jpeg
runs="${RUNS:-/work/cifar-runs}"
id="resnet20_L${level}_e${epochs}"
export OMP_WAIT_POLICY=PASSIVE  # see benchmarks/README.md: a shared 2-core machine
python3 main_train.py -data cifar10 --data-root "$data" -arch resnet20 -epochs "$epochs" \
    --levels "$level" --id "$id" --checkpoint-dir "$runs" --resume auto --no-progress
cp "$runs/${id}_epochs.csv" "results/cifar10_${id}_epochs.csv"
bash benchmarks/cifar10_evaluate.sh "$id"  # float64, both simulation paths
