"""T_eff (effective timesteps), sequential latency and the fan-ins they need (spec section 5).

The method's arithmetic, shared by get_Teff.py, the cost report and the level search.
"""
from fractions import Fraction

from torch import nn

from .qcfs import QCFS, qcfs_layers
from .resnet import BasicBlock

__all__ = ["layer_fan_ins", "teff", "teff_term", "latency_steps", "reference_constants",
           "reference_rows", "teff_reference"]


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
        if isinstance(module, QCFS):
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
    return [(name, fan_ins[name]) for name, _ in qcfs_layers(model)]


def teff_term(T, r):
    """One layer's term of T_eff: ``T (1 + (5T - 2) r) / (1 + T r)`` (spec section 5), the
    level T times PASCAL's update overhead over a plain IF layer for the layer constant r."""
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
        rows.append({"name": name, "level": level, "fan_in": fan_in, "r": r,
                     "term": teff_term(T, r)})
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
    return [{"pair": index, "level": T, "r": float(r), "term": teff_term(T, float(r))}
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
