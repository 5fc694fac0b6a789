#!/usr/bin/env bash
# GPU smoke check (a few minutes on one GPU): CUDA exactness tests, an AMP training run on
# the bundled digits, and ANN-vs-SNN evaluation on the GPU (float64 step simulation and the
# float32 counts path). Results go to $OUT (default: a temporary folder).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-$(mktemp -d)}
nvidia-smi -L
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, torch.cuda.get_device_name(0))"
timeout 90 python3 -m pytest -q -p no:cacheprovider tests/test_convert.py -k cuda 2>&1 | tail -4
ckpt=$(mktemp -d)
timeout 60 python3 main_train.py -data digits -arch vgg16 -epochs 8 --id gpu --amp -j 4 \
    --no-progress --checkpoint-dir "$ckpt" 2>&1 | tail -3
timeout 40 python3 main_test.py -data digits --id gpu --checkpoint-dir "$ckpt" --dtype float64 \
    -j 2 --no-progress --output "$OUT/gpu_float64.json" 2>&1 | tail -6
timeout 30 python3 main_test.py -data digits --id gpu --checkpoint-dir "$ckpt" --dtype float32 \
    --sim counts -j 2 --no-progress --output "$OUT/gpu_float32_counts.json" 2>&1 | tail -6
rm -rf "$ckpt"
