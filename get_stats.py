"""AL metric of every QCFS layer of a checkpoint, and the per-layer levels it suggests.

    python3 get_stats.py -data=cifar10 -arch=vgg16 --id=myid [--batches N] [--bins 5]
    python3 get_stats.py --npy layer1.npy layer2.npy          # the reference script's mode
"""
import json
import math
import sys
from pathlib import Path

import numpy as np
from torch.utils.data import Subset

import models
from al_metric import (DEFAULT_THRESHOLDS, collect_level_counts, format_table, layer_metrics,
                       npy_metrics)
from checkpoint import (load_checkpoint_file, model_from_checkpoint, resolve_checkpoint,
                        trained_image_size)
from data import get_dataset, make_loader
from utils import (DATASETS, ArgumentParser, UsageError, add_device_args, add_output_flags,
                   env_data_root, parse_levels, parse_thresholds, resolve_device, run_main)


def get_args_parser(add_help=True):
    parser = ArgumentParser(
        description="AL metric per QCFS layer (spec section 4) and suggested per-layer levels.",
        add_help=add_help, allow_abbrev=False)
    group = parser.add_argument_group("checkpoint")
    group.add_argument("-data", "--dataset", default="cifar10", choices=list(DATASETS),
                       help="dataset (default: cifar10)")
    group.add_argument("-arch", "--arch", default=None, choices=models.list_models(),
                       help="architecture (default: the checkpoint's)")
    group.add_argument("--id", default=None, help="run id: {checkpoint-dir}/{id}.pth")
    group.add_argument("-suffix", "--suffix", default="", help="id suffix, as in main_train.py")
    group.add_argument("--checkpoint-dir", default=None,
                       help="folder of the run (default: {dataset}-checkpoints)")
    group.add_argument("--checkpoint", default=None, metavar="PATH", help="a checkpoint file")
    group.add_argument("--levels", default=None,
                       help="levels of a reference-code checkpoint (default: the checkpoint's)")
    group = parser.add_argument_group("measurement")
    group.add_argument("--split", choices=["train", "test"], default="train",
                       help="images to measure on, always with evaluation transforms "
                            "(default: train)")
    group.add_argument("--batches", type=int, default=20,
                       help="number of batches to measure (default: 20; 0 = the whole split)")
    group.add_argument("-b", "--batch-size", type=int, default=128,
                       help="batch size (default: 128)")
    group.add_argument("--bins", type=int, default=5, help="histogram bins (default: 5)")
    group.add_argument("--max-level", type=int, default=None,
                       help="level given to the least concentrated layers (default: the largest "
                            "current level)")
    group.add_argument("--thresholds", default=None,
                       help="three increasing metric cut points t1,t2,t3 of the level rule "
                            f"(default: {','.join(f'{t:g}' for t in DEFAULT_THRESHOLDS)})")
    group.add_argument("--npy", nargs="+", default=None, metavar="FILE",
                       help="reference mode: print the metric of each saved activation array")
    group = parser.add_argument_group("output")
    group.add_argument("--json", default=None, metavar="FILE",
                       help="results as JSON (default: next to the checkpoint, {id}_stats.json)")
    group.add_argument("--plot", default=None, metavar="FILE.png",
                       help="draw each layer's level histogram with its metric and suggested L")
    group.add_argument("--data-root", default=None,
                       help="dataset folder (default: $PASCAL_DATA, else ./data)")
    add_device_args(group)
    add_output_flags(group)
    return parser


def plot_histograms(rows, path, title=""):
    """One bar chart per layer of the fraction of outputs at each level, with metric and L."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    columns = min(5, len(rows))
    lines = math.ceil(len(rows) / columns)
    figure, axes = plt.subplots(lines, columns, figsize=(3.2 * columns, 2.4 * lines),
                                squeeze=False)
    for axis, row in zip(axes.flat, rows):
        counts = np.asarray(row["level_counts"], dtype=float)
        axis.bar(range(len(counts)), counts / max(counts.sum(), 1), color="tab:blue")
        axis.set_title(row["name"], fontsize=8)
        axis.set_xlabel(f"level k (L = {row['level']})", fontsize=7)
        axis.tick_params(labelsize=7)
        axis.text(0.97, 0.95, f"metric {row['metric']:.1f}\nsuggested L = "
                  f"{row['suggested_level']}", transform=axis.transAxes, ha="right", va="top",
                  fontsize=7, bbox={"facecolor": "white", "alpha": 0.8, "lw": 0})
    for axis in list(axes.flat)[len(rows):]:
        axis.axis("off")
    figure.suptitle(title or "QCFS output levels per layer (fraction of outputs)", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(args):
    if args.bins < 4:
        raise UsageError(f"--bins must be >= 4 (the metric divides by (bins-2)(bins-3)), "
                         f"got {args.bins}")
    if args.npy:
        for result in npy_metrics(args.npy, args.bins):
            print(f"{result['path']}: histogram {result['counts']}  A {result['A']:.4f}  "
                  f"b {result['b']:.4f}  metric {result['metric']:.4f}")
        return 0
    thresholds = parse_thresholds(args.thresholds, DEFAULT_THRESHOLDS)
    if args.max_level is not None and args.max_level < 1:
        raise UsageError(f"--max-level must be >= 1, got {args.max_level}")
    device = resolve_device(args.device)
    path, checkpoint_dir = resolve_checkpoint(args)
    checkpoint = load_checkpoint_file(path, checkpoint_dir)
    model, model_args = model_from_checkpoint(checkpoint, path, arch=args.arch,
                                              dataset=args.dataset,
                                              levels=parse_levels(args.levels))
    model.to(device)
    dataset = get_dataset(args.dataset, args.data_root or env_data_root(), args.split,
                          augment=False, image_size=trained_image_size(checkpoint))
    if args.batches:
        dataset = Subset(dataset, range(min(len(dataset), args.batches * args.batch_size)))
    loader = make_loader(dataset, args.batch_size, False, args.workers, device=device)
    counts = collect_level_counts(model, loader, device, show_progress=not args.no_progress)
    rows = layer_metrics(model, counts, args.bins, args.max_level, thresholds)
    suggested = [r["suggested_level"] for r in rows]
    print(f"{model_args['arch']} on {args.dataset} ({args.split} split, {len(dataset)} images, "
          f"evaluation transforms), {args.bins} bins")
    print(format_table(rows))
    print(f"suggested levels: --levels {','.join(map(str, suggested))}")
    print("(metric -> level rule: this project's own, thresholds "
          f"{','.join(f'{t:g}' for t in thresholds)}; the paper's were not available)")
    output = Path(args.json) if args.json else path.with_name(f"{path.stem}_stats.json")
    output.write_text(json.dumps({
        "arch": model_args["arch"], "dataset": args.dataset, "split": args.split,
        "num_images": len(dataset), "bins": args.bins, "thresholds": list(thresholds),
        "levels": model_args["levels"], "suggested_levels": suggested, "layers": rows},
        indent=2) + "\n")
    print(f"results written to {output}")
    if args.plot:
        plot_histograms(rows, args.plot, f"{model_args['arch']} on {args.dataset}: QCFS output "
                                         "levels, AL metric and suggested L")
        print(f"histograms drawn in {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, get_args_parser().parse_args()))
