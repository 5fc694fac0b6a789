"""Does the input pipeline keep up with training? Images per second of the CIFAR training
loader alone, and the wall time of training steps with the loader, for several numbers of
loader workers (-j) and torch threads, side by side in one run.

    python3 benchmarks/bench_loader.py --data-root data/cifar10-jpeg -arch resnet20 \
        --out benchmarks/results/loader-cpu-2core.json

Each configuration runs ``--warmup`` steps, then times ``--steps`` steps; the epoch time is
extrapolated to the full training split (steps per epoch x median step time, with the
loader's start-up added once).
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import models  # noqa: E402
from data import SeededAugmentation, get_dataset, make_loader  # noqa: E402


def loader_rate(dataset, batch_size, workers, batches):
    """Images per second of the loader alone over ``batches`` batches (after the first)."""
    loader = make_loader(dataset, batch_size, True, workers,
                         generator=torch.Generator().manual_seed(0))
    iterator = iter(loader)
    next(iterator)
    started, images = time.perf_counter(), 0
    for _ in range(batches):
        images += len(next(iterator)[1])
    return images / (time.perf_counter() - started)


def step_times(dataset, arch, levels, batch_size, workers, threads, warmup, steps):
    """Per-step wall times (loader wait + forward + backward + update) and the loader's
    start-up time."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = models.create_model(arch, num_classes=10, levels=levels).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    started = time.perf_counter()
    iterator = iter(make_loader(dataset, batch_size, True, workers,
                                generator=torch.Generator().manual_seed(0)))
    times = []
    for step in range(warmup + steps):
        tick = time.perf_counter()
        images, labels = next(iterator)
        if step == 0:
            startup = tick - started
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step >= warmup:
            times.append(time.perf_counter() - tick)
    return times, startup


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("-data", "--dataset", default="cifar10")
    parser.add_argument("-arch", default="resnet20")
    parser.add_argument("--levels", type=int, default=4)
    parser.add_argument("-b", "--batch-size", type=int, default=128)
    parser.add_argument("--workers", default="0,1,2")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--loader-batches", type=int, default=40)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    dataset = SeededAugmentation(get_dataset(args.dataset, args.data_root, "train"), seed=0)
    steps_per_epoch = -(-len(dataset) // args.batch_size)
    workers = [int(w) for w in args.workers.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    rows = []
    for j in workers:
        torch.set_num_threads(max(threads))
        rate = loader_rate(dataset, args.batch_size, j, args.loader_batches)
        rows.append({"kind": "loader", "workers": j, "images_per_s": round(rate, 1)})
        print(f"loader alone, -j {j}: {rate:.0f} images/s", flush=True)
    for j in workers:
        for t in threads:
            times, startup = step_times(dataset, args.arch, args.levels, args.batch_size, j, t,
                                        args.warmup, args.steps)
            median = statistics.median(times)
            epoch = startup + median * steps_per_epoch
            rows.append({"kind": "train", "workers": j, "threads": t,
                         "median_step_s": round(median, 4), "startup_s": round(startup, 2),
                         "epoch_s_estimate": round(epoch, 1)})
            print(f"train -j {j}, {t} threads: median step {median:.3f} s, epoch about "
                  f"{epoch / 60:.1f} min", flush=True)
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "torch": torch.__version__, "arch": args.arch, "levels": args.levels,
              "batch_size": args.batch_size, "steps_per_epoch": steps_per_epoch,
              "warmup": args.warmup, "steps": args.steps, "rows": rows}
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(result, handle, indent=1)
            handle.write("\n")


if __name__ == "__main__":
    main()
