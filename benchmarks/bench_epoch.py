"""What one CIFAR-10 training epoch costs here, from timed training steps.

Times ``--steps`` SGD steps (forward, cross-entropy, backward, update; QCFS thresholds clamped
as in training) of each architecture on random 32x32 batches after ``--warmup`` untimed ones,
and the evaluation of one batch, then extrapolates to an epoch of CIFAR-10: 50,000 training
images (391 steps at batch 128) and 10,000 test images. Data loading is not included: its
cost alone is in ``results/loader-cpu-2core.json`` (``bench_loader.py``).

    python3 benchmarks/bench_epoch.py --archs vgg16,resnet20 --json benchmarks/results/epoch-cpu-2core.json
"""
import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import models  # noqa: E402

TRAIN_IMAGES, TEST_IMAGES = 50_000, 10_000


def time_steps(arch, batch, steps, warmup, levels):
    torch.manual_seed(0)
    model = models.create_model(arch, num_classes=10, levels=levels)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))
    times = []
    model.train()
    for i in range(warmup + steps):
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        models.clamp_thresholds_(model)
        if i >= warmup:
            times.append(time.perf_counter() - started)
    model.eval()
    evals = []
    with torch.no_grad():
        for _ in range(3):
            started = time.perf_counter()
            model(x)
            evals.append(time.perf_counter() - started)
    step, evaluate = statistics.median(times), statistics.median(evals)
    epoch = math.ceil(TRAIN_IMAGES / batch) * step + math.ceil(TEST_IMAGES / batch) * evaluate
    return {"arch": arch, "batch": batch, "levels": levels, "steps": steps,
            "step_seconds_median": step, "step_seconds": times,
            "eval_batch_seconds_median": evaluate, "epoch_minutes_estimate": epoch / 60}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", default="vgg16,resnet20")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--levels", type=int, default=4)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rows = []
    for arch in args.archs.split(","):
        row = time_steps(arch, args.batch, args.steps, args.warmup, args.levels)
        print(json.dumps({k: v for k, v in row.items() if k != "step_seconds"}), flush=True)
        rows.append(row)
    if args.json:
        Path(args.json).write_text(json.dumps({"torch": torch.__version__,
                                               "threads": torch.get_num_threads(),
                                               "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
