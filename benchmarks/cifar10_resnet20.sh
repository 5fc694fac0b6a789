#!/usr/bin/env bash
# The CIFAR-10 (JPEG copy) runs of docs/real-images.md, end to end: write the image-folder
# copy, train ResNet-20 at uniform L = 4, evaluate it in float64 on both simulation paths and
# against the conventional QCFS spiking network, and plot the training curve. Result files go
# to results/; checkpoints to $RUNS (default /work/cifar-runs; not committed).
#
#   bash benchmarks/cifar10_resnet20.sh /path/to/CIFAR-10-images.git [EPOCHS]
set -euo pipefail
git_dir="$1"
epochs="${2:-20}"
data=data/cifar10-jpeg
runs="${RUNS:-/work/cifar-runs}"
id=resnet20_L4
export OMP_WAIT_POLICY=PASSIVE  # see benchmarks/README.md: a shared 2-core machine
python3 benchmarks/cifar_from_git.py "$git_dir" "$data"
python3 main_train.py -data cifar10 --data-root "$data" -arch resnet20 -epochs "$epochs" \
    --levels 4 --id "$id" --checkpoint-dir "$runs" --resume auto --no-progress
cp "$runs/${id}_epochs.csv" "results/cifar10_${id}_epochs.csv"
bash benchmarks/cifar10_evaluate.sh "$id"  # float64, both simulation paths
# the conventional QCFS spiking network at T = 1..64 beside PASCAL's T_eff, with the cost report
# (on the first 2,000 test images: 64 lock-step timesteps of the whole network per image)
python3 main_test.py -data cifar10 --data-root "$data" --id "$id" --checkpoint-dir "$runs" \
    --sim counts --report --baseline qcfs -T 1,2,4,8,16,32,64 --num-images 2000 --no-progress \
    --output "results/cifar10_${id}_test.json" --report-json "results/cifar10_${id}_cost.json" \
    --report-csv "results/cifar10_${id}_cost.csv" --report-plot "results/cifar10_${id}_cost.png" \
    --baseline-plot "results/cifar10_${id}_baseline.png"
python3 benchmarks/plot_training.py "results/cifar10_${id}_epochs.csv" \
    --label "ResNet-20, uniform L = 4" \
    --title "ResNet-20 on CIFAR-10 (JPEG copy), 2-core CPU" \
    --out "results/cifar10_resnet20_curves.png"
