"""T_eff (effective timesteps) and latency of a PASCAL network for per-layer levels.

    python get_Teff.py -arch vgg16 -data cifar10 --levels 8,4,4,1,4,4,1,1,1,1,1,4,8,8,8
    python get_Teff.py -data cifar10 --id myid                 # levels from the checkpoint
    python get_Teff.py -arch resnet18 --levels 4,4,4,... --reference   # the published script
"""
import json
import sys
from pathlib import Path

import torch

import models
from checkpoint import is_relu, load_checkpoint_file
from models.timing import (latency_steps, layer_fan_ins, pipelined_latency_steps, reference_rows,
                           teff, teff_reference)
from utils import (EVAL_TERMS, DATASETS, ArgumentParser, UsageError, arch_name, parse_levels, resolve_checkpoint,
                   run_main)

TERMS = EVAL_TERMS  # how the library's errors name this script's flags



def _fail(message):
    raise UsageError(message)


def _resolve(args):
    """(arch, variant, dataset, levels, source) from the command line and/or checkpoint."""
    arch, variant, dataset = args.arch, args.variant, args.dataset
    if args.levels is not None:
        if arch is None:
            _fail("--levels needs -arch")
        levels, source = parse_levels(args.levels), "--levels"
    else:
        if args.checkpoint is None and args.checkpoint_dir is None and args.dataset is None:
            _fail("--id needs -data (checkpoints live in {dataset}-checkpoints) or "
                  "--checkpoint-dir")
        path, checkpoint_dir = resolve_checkpoint(args)
        checkpoint = load_checkpoint_file(path, checkpoint_dir)
        if not isinstance(checkpoint.get("model_args"), dict):
            _fail(f"{path} has no model_args (a checkpoint from the reference code?): pass "
                  "-arch and --levels instead")
        model_args = checkpoint["model_args"]
        if is_relu(model_args):
            _fail(f"{path} holds a ReLU network (trained with --activation relu): it has no "
                  "levels and no T_eff; pass -arch and --levels for the QCFS network instead")
        for key, given in (("arch", arch), ("variant", variant), ("dataset", dataset)):
            stored = model_args[key]
            if given is not None and stored is not None and given != stored:
                _fail(f"checkpoint {path} has {key} {stored!r} but {given!r} was given; "
                      f"drop the option or pick the matching checkpoint")
        arch = model_args["arch"]
        variant = variant or model_args["variant"]
        dataset = dataset or model_args["dataset"]
        levels, source = model_args["levels"], str(path)
        known = arch in models.list_models() or models.is_torchvision_arch(arch)
        if not known or levels is None:
            _fail(f"checkpoint {path} has unusable model_args {model_args!r}")
    variant = variant or ("imagenet" if dataset == "imagenet" else "cifar")
    return arch, variant, dataset, levels, source


def get_args_parser():
    parser = ArgumentParser(
        description="T_eff and latency of a PASCAL network for per-layer levels.")
    model = parser.add_argument_group("model")
    model.add_argument("-arch", "--arch", type=arch_name, default=None,
                       help="architecture, as main_train.py's -arch (default: the checkpoint's; "
                            "required with --levels)")
    model.add_argument("-data", "--dataset", choices=list(DATASETS), default=None,
                       help="dataset; selects the variant and the checkpoint dir (default: none)")
    model.add_argument("--variant", choices=models.VARIANTS, default=None,
                       help="model variant (default: imagenet for -data imagenet, else cifar)")
    source = parser.add_argument_group("levels (exactly one)")
    exclusive = source.add_mutually_exclusive_group(required=True)
    exclusive.add_argument("--levels", default=None,
                           help="one int (all layers) or a comma-separated list, one per "
                                "QCFS layer")
    exclusive.add_argument("--id", default=None,
                           help="read levels from {checkpoint-dir}/{id}.pth")
    exclusive.add_argument("--checkpoint", default=None,
                           help="read levels from this checkpoint file")
    source.add_argument("-suffix", "--suffix", default="",
                        help="id suffix, as in main_train.py (default: none)")
    source.add_argument("--checkpoint-dir", default=None,
                        help="where --id looks (default: {dataset}-checkpoints)")
    output = parser.add_argument_group("output")
    output.add_argument("--reference", action="store_true",
                        help="reproduce the published script (its constants, its zip truncation) "
                             "instead of counting every layer (default: off)")
    output.add_argument("--json", default=None, metavar="FILE",
                        help="also write the results as JSON (default: no file)")
    return parser


def main(args):
    arch, variant, dataset, levels, source = _resolve(args)
    # Only shapes are needed: the meta device builds even ImageNet VGG-16 without allocating.
    with torch.device("meta"):
        model = models.create_model(arch, num_classes=DATASETS.get(dataset, (10,))[0], levels=1,
                                    variant=variant)
    names = [name for name, _ in models.qcfs_layers(model)]
    if not isinstance(levels, int) and len(levels) != len(names):
        _fail(f"{arch} ({variant}) has {len(names)} QCFS layers, so the levels need "
              f"{len(names)} comma-separated values (or one int for all); got {len(levels)}")
    try:
        levels = models.set_levels(model, levels)
    except ValueError as exc:
        _fail(str(exc))

    fan_ins = layer_fan_ins(model)
    value, rows = teff(levels, fan_ins)
    total_latency, per_layer = latency_steps(model)
    pipelined = pipelined_latency_steps(model)
    mean_level = sum(levels) / len(levels)
    result = {"arch": arch, "variant": variant, "dataset": dataset, "levels_from": source,
              "levels": levels, "mean_level": mean_level, "latency_steps": total_latency,
              "latency_pipelined_steps": pipelined,
              "mode": "reference" if args.reference else "all-layers"}

    print(f"{arch} ({variant} variant), {len(levels)} spiking layers, levels from {source}")
    print(f"{'layer':<34} {'L':>3} {'fan_in':>7} {'r':>10} {'term':>9} {'T_in':>5} {'steps':>6}")
    for row, (t_in, steps) in zip(rows, per_layer, strict=True):
        row.update(t_in=t_in, latency_steps=steps)
        print(f"{row['name']:<34} {row['level']:>3} {row['fan_in']:>7} {row['r']:>10.6f} "
              f"{row['term']:>9.4f} {t_in:>5} {steps:>6}")
    result["layers"] = rows
    print(f"mean level = {mean_level:.4f}")
    print(f"sequential latency = {total_latency} steps (T_in + max(T_in, L) - 1 + L per layer, "
          f"summed along the longest path)")
    print(f"pipelined latency = {pipelined} steps (each layer accumulates while the one before "
          f"it emits: L saved per layer on the path but the last)")
    if args.reference:
        reference_dataset = "imagenet" if variant == "imagenet" else (dataset or "cifar10")
        try:
            value_ref, warning = teff_reference(arch, reference_dataset, levels)
        except ValueError as exc:
            _fail(str(exc))
        reference = reference_rows(arch, reference_dataset, levels)
        print("published script's pairs (its constants, zip-truncated):")
        print(f"{'pair':>4} {'L':>3} {'r':>10} {'term':>9}")
        for row in reference:
            print(f"{row['pair']:>4} {row['level']:>3} {row['r']:>10.6f} {row['term']:>9.4f}")
        print(f"warning: {warning}")
        print(f"all-layer T_eff (default mode) would be {value:.4f}")
        result.update(T_eff=value_ref, T_eff_all_layers=value, warning=warning,
                      reference_pairs=reference)
        value = value_ref
    else:
        result["T_eff"] = value
    print(f"T_eff = {value:.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, get_args_parser().parse_args(), TERMS))
