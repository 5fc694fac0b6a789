"""Evaluate a checkpoint as QCFS ANN and as PASCAL SNN, and report how exactly they agree.

    python3 main_test.py -data=cifar10 -arch=vgg16 --id=myid
    python3 main_test.py -data digits --id quick --dtype float64
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import Subset

import models
from checkpoint import checkpoint_path, load_checkpoint_file, model_from_checkpoint
from data import get_dataset, make_loader
from utils import (DATASETS, UsageError, default_checkpoint_dir, env_data_root, parse_levels,
                   progress, resolve_device, run_main, setup_logging)


def get_args_parser(add_help=True):
    parser = argparse.ArgumentParser(
        description="Evaluate a QCFS checkpoint as ANN and as PASCAL spiking network.",
        add_help=add_help, allow_abbrev=False)
    group = parser.add_argument_group("what to evaluate")
    group.add_argument("-data", "--dataset", default="cifar10", choices=list(DATASETS),
                       help="dataset (default: cifar10)")
    group.add_argument("-arch", "--arch", default=None, choices=models.list_models(),
                       help="architecture; checked against the checkpoint, required for a "
                            "reference-code checkpoint (default: from the checkpoint)")
    group.add_argument("--id", default=None,
                       help="run id: evaluates {checkpoint-dir}/{id}.pth (default: {arch}_{dataset})")
    group.add_argument("-suffix", "--suffix", default="", help="id suffix, as in main_train.py")
    group.add_argument("--checkpoint-dir", default=None,
                       help="folder of the run (default: {dataset}-checkpoints)")
    group.add_argument("--checkpoint", default=None, metavar="PATH",
                       help="evaluate this file instead of {checkpoint-dir}/{id}.pth")
    group.add_argument("--levels", default=None,
                       help="per-layer levels (required for reference-code checkpoints; "
                            "default: the checkpoint's)")
    group.add_argument("--data-root", default=None,
                       help="dataset folder (default: $PASCAL_DATA, else ./data)")
    group.add_argument("--num-images", type=int, default=None,
                       help="evaluate only the first N test images (default: all)")
    group = parser.add_argument_group("how")
    group.add_argument("--mode", choices=["ann", "snn", "both"], default="both",
                       help="which networks to run (default: both)")
    group.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                       help="float64 is the exact certificate (ANN and SNN agree on every "
                            "image); float32 is faster (default: float32)")
    group.add_argument("--sim", choices=["step", "counts"], default="step",
                       help="step: simulate every timestep; counts: exact closed-form spike "
                            "counts per window (default: step)")
    group.add_argument("-b", "--batch-size", type=int, default=64,
                       help="evaluation batch size (default: 64)")
    group.add_argument("--output", default=None, metavar="FILE",
                       help="JSON results (default: next to the checkpoint, {id}_test.json)")
    group = parser.add_argument_group("machine")
    group.add_argument("-dev", "--device", default=None,
                       help="cpu, cuda, cuda:N or a GPU index (default: cuda if available)")
    group.add_argument("-j", "--workers", type=int, default=2,
                       help="data-loading workers (default: 2)")
    group.add_argument("--no-progress", action="store_true", help="no progress bars")
    group.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    return parser


@torch.no_grad()
def ann_forward_with_levels(model, x):
    """``(logits, {layer name: integer QCFS level per neuron})`` of the ANN in eval mode."""
    levels, handles = {}, []
    for name, module in models.qcfs_layers(model):
        def hook(mod, inputs, output, name=name):
            levels[name] = mod.quantize(inputs[0])
        handles.append(module.register_forward_hook(hook))
    try:
        logits = model(x)
    finally:
        for handle in handles:
            handle.remove()
    return logits, levels


def resolve_checkpoint(args):
    if args.checkpoint:
        return Path(args.checkpoint), None
    checkpoint_dir = Path(args.checkpoint_dir or default_checkpoint_dir(args.dataset))
    run_id = args.id or (f"{args.arch}_{args.dataset}" if args.arch else None)
    if run_id is None:
        raise UsageError("say which checkpoint to evaluate: --id ID (with -data) or "
                         "--checkpoint PATH")
    if args.suffix:
        run_id = f"{run_id}_{args.suffix}"
    return checkpoint_path(checkpoint_dir, run_id), checkpoint_dir


def evaluate_both(model, snn, loader, device, dtype, mode, show_progress=True):
    """Run ANN and/or SNN over ``loader``; returns a results dict (counts and agreements)."""
    run_ann, run_snn = mode in ("ann", "both"), mode in ("snn", "both")
    totals = {"images": 0, "ann_correct": 0, "snn_correct": 0, "agree": 0}
    layer_equal, layer_total, spikes = {}, {}, {}
    for images, targets in progress(loader, show_progress, desc="evaluate"):
        images = images.to(device, dtype=dtype)
        targets = targets.to(device)
        totals["images"] += len(targets)
        if run_ann:
            ann_logits, ann_levels = ann_forward_with_levels(model, images)
            totals["ann_correct"] += int((ann_logits.argmax(1) == targets).sum())
        if run_snn:
            snn_logits, stats = snn.forward_with_stats(images, keep_counts=run_ann)
            totals["snn_correct"] += int((snn_logits.argmax(1) == targets).sum())
            for s in stats:
                spikes[s.name] = spikes.get(s.name, 0) + s.emitted_spikes
                if run_ann:
                    layer_equal[s.name] = layer_equal.get(s.name, 0) + \
                        int((s.counts == ann_levels[s.name]).sum())
                    layer_total[s.name] = layer_total.get(s.name, 0) + s.counts.numel()
        if run_ann and run_snn:
            totals["agree"] += int((ann_logits.argmax(1) == snn_logits.argmax(1)).sum())
    n = max(totals["images"], 1)
    result = {"num_images": totals["images"],
              "ann_top1": 100.0 * totals["ann_correct"] / n if run_ann else None,
              "snn_top1": 100.0 * totals["snn_correct"] / n if run_snn else None,
              "agreement": 100.0 * totals["agree"] / n if run_ann and run_snn else None}
    if run_ann and run_snn:
        result["layer_count_agreement"] = {
            name: layer_equal[name] / layer_total[name] for name in layer_total}
    if run_snn:
        result["spikes_per_image"] = {name: count / n for name, count in spikes.items()}
    return result


def main(args):
    logger = setup_logging(quiet=False)
    dtype = torch.float64 if args.dtype == "float64" else torch.float32
    device = resolve_device(args.device)
    levels = parse_levels(args.levels)
    if args.num_images is not None and args.num_images < 1:
        raise UsageError(f"--num-images must be >= 1, got {args.num_images}")
    path, checkpoint_dir = resolve_checkpoint(args)
    checkpoint = load_checkpoint_file(path, checkpoint_dir)
    model, model_args = model_from_checkpoint(checkpoint, path, arch=args.arch,
                                              dataset=args.dataset, levels=levels)
    if model_args.get("dataset") not in (None, args.dataset):
        logger.info(f"note: checkpoint trained on {model_args['dataset']}, evaluating on "
                    f"{args.dataset}")
    model = model.to(device=device, dtype=dtype).eval()
    snn = None
    if args.mode in ("snn", "both"):
        snn = models.convert_to_snn(model, **({"sim": args.sim} if args.sim != "step" else {}))

    test_set = get_dataset(args.dataset, args.data_root or env_data_root(), "test",
                           image_size=_image_size(checkpoint))
    if args.num_images is not None:
        test_set = Subset(test_set, range(min(args.num_images, len(test_set))))
    loader = make_loader(test_set, args.batch_size, False, args.workers, device=device)

    started = time.time()
    result = evaluate_both(model, snn, loader, device, dtype, args.mode, not args.no_progress)
    seconds = time.time() - started
    result.update({"arch": model_args["arch"], "dataset": args.dataset,
                   "levels": model_args["levels"], "dtype": args.dtype, "sim": args.sim,
                   "device": str(device), "seconds": round(seconds, 2),
                   "checkpoint": str(path)})
    report(result, logger)
    output = Path(args.output) if args.output else path.with_name(f"{path.stem}_test.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    logger.info(f"results written to {output}")
    return 0


def _image_size(checkpoint):
    args = checkpoint.get("args") if isinstance(checkpoint.get("args"), dict) else {}
    return int(args.get("image_size") or 224)


def report(result, logger):
    logger.info(f"{result['arch']} on {result['dataset']} ({result['num_images']} test images), "
                f"levels {','.join(map(str, result['levels']))}, {result['dtype']}, "
                f"{result['device']}, {result['seconds']:.1f}s")
    if result["ann_top1"] is not None:
        logger.info(f"ANN top-1: {result['ann_top1']:.2f}%")
    if result["snn_top1"] is not None:
        logger.info(f"SNN top-1: {result['snn_top1']:.2f}%  (PASCAL, {result['sim']} simulation)")
    if result["agreement"] is not None:
        logger.info(f"prediction agreement ANN vs SNN: {result['agreement']:.2f}% of images")
        counts = result["layer_count_agreement"]
        exact = sum(1 for v in counts.values() if v == 1.0)
        worst = min(counts, key=counts.get)
        logger.info(f"spike counts equal to ANN levels: {exact}/{len(counts)} layers on every "
                    f"neuron; lowest {worst} {100 * counts[worst]:.4f}%")


if __name__ == "__main__":
    sys.exit(run_main(main, get_args_parser().parse_args()))
