#!/usr/bin/env bash
# One branch of docs/real-images.md's adaptive comparison: continue the L = 8 phase-1 checkpoint
# (epochs 1-10 of a 20-epoch cosine schedule) for epochs 11-20 at uniform levels, then evaluate
# it in float64 on both simulation paths. Checkpoints go to $RUNS (default /work/cifar-runs),
# which must hold resnet20_L8_adaptive_phase1.pth; result files to results/.
#
#   bash benchmarks/cifar10_resnet20_uniform_branch.sh LEVEL     (e.g. 1 or 2)
# Two branches run side by side on a 2-core machine with OMP_NUM_THREADS=1 each.
set -euo pipefail
level="$1"
data=data/cifar10-jpeg
runs="${RUNS:-/work/cifar-runs}"
id="resnet20_L8_uniform${level}"
export OMP_WAIT_POLICY=PASSIVE  # see benchmarks/README.md: a shared 2-core machine
python3 main_train.py -data cifar10 --data-root "$data" -arch resnet20 -epochs 20 \
    --resume "$runs/resnet20_L8_adaptive_phase1.pth" --levels "$level" --id "$id" \
    --checkpoint-dir "$runs" --no-progress
# epochs 1-10 from the shared phase 1 (the adaptive run's CSV), then this branch's 11-20
{ head -n 11 results/cifar10_resnet20_L8_adaptive_epochs.csv; tail -n +2 "$runs/${id}_epochs.csv"; } \
    > "results/cifar10_${id}_epochs.csv"
bash benchmarks/cifar10_evaluate.sh "$id"  # float64, both simulation paths
