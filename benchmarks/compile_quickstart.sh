#!/usr/bin/env bash
# The README's quick start (VGG-16, digits, 8 epochs) three times eagerly and three times with
# --compile (seeds 0, 1, 2 each); writes each run's final test top-1 and wall time to
# $OUT (default benchmarks/results/quickstart-compile.json). Checkpoints go to $RUNS (default a
# temporary folder). OMP_NUM_THREADS, when set, is the number of threads each run uses.
#
#   bash benchmarks/compile_quickstart.sh
#   OMP_NUM_THREADS=1 OUT=benchmarks/results/quickstart-compile-1thread.json \
#       bash benchmarks/compile_quickstart.sh
set -euo pipefail
runs="${RUNS:-$(mktemp -d)}"
out="${OUT:-benchmarks/results/quickstart-compile.json}"
rows=()
run() {  # id seed extra-flags...
    local id="$1" seed="$2"; shift 2
    local start end
    start=$(date +%s)
    python3 main_train.py -data digits -arch vgg16 -epochs 8 --id "$id" --seed "$seed" \
        --checkpoint-dir "$runs" --no-progress --overwrite "$@" > "$runs/$id.out"
    end=$(date +%s)
    local acc
    acc=$(tail -n 1 "$runs/${id}_epochs.csv" | cut -d, -f6)
    rows+=("{\"id\": \"$id\", \"seed\": $seed, \"flags\": \"$*\", \"final_test_top1\": $acc, \"wall_seconds\": $((end - start))}")
}
run eager0 0
run eager1 1
run eager2 2
run compiled0 0 --compile
run compiled1 1 --compile
run compiled2 2 --compile
{
    echo "{\"command\": \"main_train.py -data digits -arch vgg16 -epochs 8\", \"threads\": $(python3 -c "import torch; print(torch.get_num_threads())"), \"date\": \"$(date -u +%F)\", \"runs\": ["
    (IFS=,; echo "${rows[*]}")
    echo "]}"
} | python3 -m json.tool > "$out"
cat "$out"
