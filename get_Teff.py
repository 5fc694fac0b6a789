"""T_eff (effective timesteps) and sequential latency of a PASCAL network for per-layer levels.

    python get_Teff.py -arch vgg16 -data cifar10 --levels 8,4,4,1,4,4,1,1,1,1,1,4,8,8,8
    python get_Teff.py -data cifar10 --id myid                 # levels from the checkpoint
    python get_Teff.py -arch resnet18 --levels 4,4,4,... --reference   # the published script
"""
import json
import sys
from fractions import Fraction
from pathlib import Path

import torch
from torch import nn

import models
from checkpoint import load_checkpoint_file, resolve_checkpoint
from models.resnet import BasicBlock
from utils import DATASETS, ArgumentParser, UsageError, parse_levels, run_main



def layer_fan_ins(model):
    """``[(qcfs_name, fan_in), ...]`` in the order of :func:`models.qcfs_layers`.

    fan_in is k*k*C_in/groups (conv) or in_features (linear) of the weighted layer that
    immediately precedes the activation in forward order. For the activation after a residual
    addition (``BasicBlock.act``) that is the branch's second conv (``residual_function.3``):
    the shortcut conv is a parallel path, although it is registered after the branch.
    """
    fan_ins = {}

    def visit(module, name, fan_in):
        # Returns the fan-in of the last weighted layer on the path out of ``module``.
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            return module.weight.shape[1:].numel()
        if isinstance(module, models.QCFS):
            if fan_in is None:
                raise ValueError(f"QCFS layer {name} has no conv/linear layer before it")
            fan_ins[name] = fan_in
            return fan_in
        prefix = name + "." if name else ""
        if isinstance(module, BasicBlock):
            branch = visit(module.residual_function, prefix + "residual_function", fan_in)
            visit(module.shortcut, prefix + "shortcut", fan_in)
            return visit(module.act, prefix + "act", branch)
        for child_name, child in module.named_children():
            fan_in = visit(child, prefix + child_name, fan_in)
        return fan_in

    visit(model, "", None)
    return [(name, fan_ins[name]) for name, _ in models.qcfs_layers(model)]


def _term(T, r):
    # T (1 + (5T - 2) r) / (1 + T r): the per-layer term of T_eff (spec section 5).
    return T * (1 + (5 * T - 2) * r) / (1 + T * r)


def teff(levels, fan_ins):
    """Effective timesteps over all spiking layers (spec section 5, every layer counted).

        T_eff = mean_l  T_l (1 + (5 T_l - 2) r_l) / (1 + T_l r_l),   r_l = (4/3) / fan_in_l

    T_l is layer l's level; the per-layer term is T_l times PASCAL's energy overhead over a
    plain IF layer.

    Args:
        levels: one int per spiking layer.
        fan_ins: one fan-in per layer, as ints or as the ``(name, fan_in)`` pairs of
            :func:`layer_fan_ins`.

    Returns:
        ``(T_eff, rows)``, rows one dict per layer: name, level, fan_in, r, term.
    """
    rows = []
    for index, (level, entry) in enumerate(zip(levels, fan_ins, strict=True)):
        name, fan_in = entry if isinstance(entry, tuple) else (str(index), entry)
        T, r = level, (4 / 3) / fan_in
        rows.append({"name": name, "level": level, "fan_in": fan_in, "r": r, "term": _term(T, r)})
    if not rows:
        raise ValueError("no spiking layers")
    return sum(row["term"] for row in rows) / len(rows), rows


def latency_steps(levels):
    """Sequential steps of each spiking layer and their sum along the critical path.

    Layer l needs T_in + max(T_in, L_l) - 1 + L_l steps (accumulate, correct, emit; spec
    3.3), with T_in = 1 for the first spiking layer (the analog image enters once) and
    T_in = L_{l-1} otherwise. In a ResNet block the branch activation
    (``residual_function.2``) takes the block input (L of the previous activation) and the
    activation after the addition takes T_in = L of the branch activation: the shortcut's
    L_prev-step train is folded into the branch's steps (spec 3.5), and the branch, which
    waits for a spiking layer, is the critical path. So in every registered model T_in is the
    level of the previous activation in forward order, and the critical path visits all of
    them. Windows are summed without overlap (a layer's emit phase is not counted as the next
    layer's accumulate phase), as the issue defines it; with that overlap the total would be
    smaller by the sum of L over all layers but the last.

    Returns:
        ``(total, per_layer)``: total steps and ``[(T_in, steps), ...]``.
    """
    per_layer = []
    t_in = 1
    for level in levels:
        per_layer.append((t_in, t_in + max(t_in, level) - 1 + level))
        t_in = level
    return sum(steps for _, steps in per_layer), per_layer


# The published T_eff script's constant lists (spec section 5), as exact fractions.
def _vgg16_reference_constants(imagenet):
    convs = ([Fraction(4, 81)] + [Fraction(1, 432)] * 2 + [Fraction(1, 864)] * 2
             + [Fraction(1, 1728)] * 3 + [Fraction(1, 3456)] * 5)
    if imagenet:
        return convs + [Fraction(1, 19200), Fraction(1, 3072), Fraction(1, 3072)]
    return convs + [Fraction(1, 384)] * 3


def _resnet_reference_constants(stem, blocks_per_stage):
    # One constant per residual *block* (not per activation), then the FC layer.
    blocks = [Fraction(1, 27 * channels)
              for channels, count in zip((64, 128, 256, 512), blocks_per_stage, strict=True)
              for _ in range(count)]
    return [stem] + blocks + [Fraction(1, 384)]


def reference_constants(arch, dataset):
    """The published script's list of r constants for ``arch`` (VGG-16 differs on ImageNet)."""
    if arch == "vgg16":
        return _vgg16_reference_constants(dataset == "imagenet")
    if arch == "resnet18":
        return _resnet_reference_constants(Fraction(1, 216), (2, 2, 2, 2))
    if arch == "resnet34":
        return _resnet_reference_constants(Fraction(1, 162), (3, 4, 6, 3))
    raise ValueError(f"the published script covers vgg16, resnet18 and resnet34, not {arch!r}")


def reference_rows(arch, dataset, levels):
    """The (level, constant) pairs the published script averages: ``[{pair, level, r, term}]``."""
    # The published script's truncating zip, reproduced on purpose (see teff_reference).
    pairs = zip(levels, reference_constants(arch, dataset))
    return [{"pair": index, "level": T, "r": float(r), "term": _term(T, float(r))}
            for index, (T, r) in enumerate(pairs)]


def teff_reference(arch, dataset, levels):
    """T_eff exactly as the published script computes it, and what that computation drops.

    Same per-layer term as :func:`teff`, but with the script's constant lists (16 for VGG-16,
    whose CIFAR FC2/FC3 entries repeat FC1's 1/384; for ResNets one per residual block plus
    stem and FC: 10 for ResNet-18, 18 for ResNet-34) paired with the per-activation levels by
    plain ``zip``, which silently stops at the shorter list, and averaged over the pairs that
    survive. ``dataset == "imagenet"`` selects VGG-16's ImageNet FC constants.

    Returns:
        ``(T_eff, warning)``: warning is a one-line explanation of the truncation.
    """
    levels = list(levels)
    num_constants = len(reference_constants(arch, dataset))
    rows = reference_rows(arch, dataset, levels)
    value = sum(row["term"] for row in rows) / len(rows)
    if len(levels) > num_constants:
        warning = (f"the published script pairs {num_constants} constants with {len(levels)} "
                   f"levels by zip: the last {len(levels) - num_constants} spiking layers are "
                   f"ignored and the mean is over the first {len(rows)} only"
                   + (" (its ResNet constants are one per residual block, not one per "
                      "activation, so even those pairs are misaligned)"
                      if arch.startswith("resnet") else ""))
    elif num_constants > len(levels):
        warning = (f"the published script pairs {num_constants} constants with {len(levels)} "
                   f"levels by zip: its last {num_constants - len(levels)} constant(s) are "
                   f"dropped (for VGG-16 the final classifier layer, which feeds no spiking "
                   f"layer); all {len(levels)} spiking layers are counted")
    else:
        warning = f"{num_constants} constants and {len(levels)} levels: nothing dropped"
    return value, warning


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
        for key, given in (("arch", arch), ("variant", variant), ("dataset", dataset)):
            stored = model_args.get(key)
            if given is not None and stored is not None and given != stored:
                _fail(f"checkpoint {path} has {key} {stored!r} but {given!r} was given; "
                      f"drop the option or pick the matching checkpoint")
        arch = model_args.get("arch")
        variant = variant or model_args.get("variant")
        dataset = dataset or model_args.get("dataset")
        levels, source = model_args.get("levels"), str(path)
        if arch not in models.list_models() or levels is None:
            _fail(f"checkpoint {path} has unusable model_args {model_args!r}")
    variant = variant or ("imagenet" if dataset == "imagenet" else "cifar")
    return arch, variant, dataset, levels, source


def get_args_parser():
    parser = ArgumentParser(
        description="T_eff and latency of a PASCAL network for per-layer levels (spec section 5).")
    model = parser.add_argument_group("model")
    model.add_argument("-arch", "--arch", choices=models.list_models(), default=None,
                       help="architecture (default: the checkpoint's; required with --levels)")
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
    total_latency, per_layer = latency_steps(levels)
    mean_level = sum(levels) / len(levels)
    result = {"arch": arch, "variant": variant, "dataset": dataset, "levels_from": source,
              "levels": levels, "mean_level": mean_level, "latency_steps": total_latency,
              "mode": "reference" if args.reference else "all-layers"}

    print(f"{arch} ({variant} variant), {len(levels)} spiking layers, levels from {source}")
    print(f"{'layer':<34} {'L':>3} {'fan_in':>7} {'r':>10} {'term':>9} {'T_in':>5} {'steps':>6}")
    for row, (t_in, steps) in zip(rows, per_layer, strict=True):
        row.update(t_in=t_in, latency_steps=steps)
        print(f"{row['name']:<34} {row['level']:>3} {row['fan_in']:>7} {row['r']:>10.6f} "
              f"{row['term']:>9.4f} {t_in:>5} {steps:>6}")
    result["layers"] = rows
    print(f"mean level = {mean_level:.4f}")
    print(f"sequential latency = {total_latency} steps "
          f"(sum over layers of T_in + max(T_in, L) - 1 + L)")
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
    sys.exit(run_main(main, get_args_parser().parse_args()))
