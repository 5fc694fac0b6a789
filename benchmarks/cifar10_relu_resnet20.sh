#!/usr/bin/env bash
# A ReLU ResNet-20 trained here on CIFAR-10 (JPEG copy), then made an exact spiking network:
# post-training QCFS with thresholds from data at L = 4, 8, 16 (no training), and fine-tuned
# 1, 3 and 5 epochs at uniform L = 4 and at the level search's levels for T_eff <= 3 (chosen
# before the first epoch from the L = 8 network). Every network is checked SNN == ANN in
# float64 on all 10,000 test images (counts path). Result files go to results/; checkpoints
# to $RUNS (default /work/cifar-runs; not committed). Stages whose result file exists are
# skipped, so the script can be run again after an interruption; $STAGES (default: all of
# "posttrain percentiles uniform search") selects stages, e.g. to run two side by side.
#
#   bash benchmarks/cifar10_relu_resnet20.sh [EPOCHS] [FINE-TUNE EPOCHS...]
set -euo pipefail
epochs="${1:-20}"
shift || true
finetune=("${@:-1 3 5}")
read -r -a finetune <<< "${finetune[*]}"
data=data/cifar10-jpeg
runs="${RUNS:-/work/cifar-runs}"
relu=resnet20_relu
common=(-data cifar10 --data-root "$data" --no-progress)
stages=" ${STAGES:-posttrain percentiles uniform search} "
export OMP_WAIT_POLICY=PASSIVE  # see benchmarks/README.md: a shared 2-core machine

if [ ! -f "results/cifar10_${relu}_epochs.csv" ]; then
    python3 main_train.py "${common[@]}" -arch resnet20 -epochs "$epochs" --activation relu \
        --id "$relu" --checkpoint-dir "$runs" --resume auto
    cp "$runs/${relu}_epochs.csv" "results/cifar10_${relu}_epochs.csv"
fi

# no training: the ReLU ANN, the QCFS ANN with thresholds from data, and its SNN
for level in 4 8 16; do
    [[ "$stages" == *" posttrain "* ]] || break
    out="results/cifar10_${relu}_posttrain_L${level}.json"
    [ -f "$out" ] || python3 main_test.py "${common[@]}" --checkpoint "$runs/$relu.pth" \
        --levels "$level" --init-threshold auto --dtype float64 --sim counts --output "$out"
done

# the percentile of the thresholds, at L = 4 without training (ANNs only: the SNN equals
# the QCFS ANN, checked above for P = 98)
for p in 95 99 99.9 100; do
    [[ "$stages" == *" percentiles "* ]] || break
    out="results/cifar10_${relu}_posttrain_L4_P${p}.json"
    [ -f "$out" ] || python3 main_test.py "${common[@]}" --checkpoint "$runs/$relu.pth" \
        --levels 4 --init-threshold "auto:$p" --mode ann --output "$out"
done

# fine-tuning from the ReLU weights (thresholds from data), each length its own cosine run
finetune_run() {  # id, then the flags that choose the levels
    local id="$1"
    shift
    local out="results/cifar10_${id}_counts.json"
    [ -f "$out" ] && return
    python3 main_train.py "${common[@]}" -arch resnet20 -epochs "$k" -lr 0.01 \
        --initial-checkpoint "$runs/$relu.pth" --init-threshold auto "$@" \
        --id "$id" --checkpoint-dir "$runs" --resume auto
    cp "$runs/${id}_epochs.csv" "results/cifar10_${id}_epochs.csv"
    python3 main_test.py "${common[@]}" --id "$id" --checkpoint-dir "$runs" --dtype float64 \
        --sim counts --output "$out"
}
for k in "${finetune[@]}"; do
    [[ "$stages" != *" uniform "* ]] || finetune_run "${relu}_L4_ft${k}" --levels 4
    [[ "$stages" != *" search "* ]] || finetune_run "${relu}_search3_ft${k}" --levels 8 \
        --adaptive --phase1-epochs 0 --budget-teff 3
done
