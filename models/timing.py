"""T_eff (effective timesteps), sequential latency and the fan-ins they need,
derived from the model's graph (:mod:`models.graph`) for every architecture.

The method's arithmetic, shared by get_Teff.py, the cost report and the level search.
"""
from fractions import Fraction

from errors import ModelError

from .graph import model_graph
from .qcfs import qcfs_layers
from .spiking import neuron_operations

__all__ = ["layer_fan_ins", "layer_num_steps_in", "teff", "teff_term", "latency_steps",
           "pipelined_latency_steps", "neuron_operations", "reference_constants",
           "reference_rows", "teff_reference"]

def layer_fan_ins(model):
    """``[(qcfs_name, fan_in), ...]`` in the order of :func:`models.qcfs_layers`.

    The fan-in of a spiking layer is the largest fan-in (``k*k*C_in/groups`` of a conv,
    ``in_features`` of a linear layer) among the weighted layers that reach it through
    weight-free operations only (BatchNorm, pools, max pools, additions, concatenations,
    multiplications by constants, reshapes, dropout) without passing another spiking layer;
    1 if no weighted layer does (each neuron then receives one input per step, e.g. a
    BatchNorm-QCFS pair fed straight by a max-pooled spiking layer). So a layer after a
    residual addition takes the larger of the branch's last conv and a shortcut conv (an
    identity shortcut comes from a spiking layer and adds nothing), and a layer after a
    concatenation the largest of the concatenated branches' last layers. For the paper
    architectures this is the weighted layer right before each activation (ResNet: the
    branch's second conv, whose 9*C exceeds the 1x1 shortcut's C_in).
    """
    graph = model_graph(model)
    memo = {}

    def fan_in(node):  # largest fan-in reaching ``node``'s value, 0 if none
        if node.index not in memo:
            memo[node.index] = node.handler.fan_in(node, [fan_in(i) for i in node.inputs])
        return memo[node.index]

    found = {n.name: max((fan_in(i) for i in n.inputs), default=0) or 1
             for n in graph.neurons()}
    return [(name, found[name]) for name, _ in qcfs_layers(model)]


def layer_num_steps_in(model):
    """``[(qcfs_name, T_in), ...]``: the length of each spiking layer's input train in the
    converted network (from its levels and graph: the image has one step, an addition the
    length of its first operand, a concatenation the longest input's)."""
    graph = model_graph(model)
    steps = graph.num_steps()
    found = {n.name: steps[n.inputs[0].index] for n in graph.neurons()}
    return [(name, found[name]) for name, _ in qcfs_layers(model)]


def teff_term(T, r):
    """One layer's term of T_eff: ``T (1 + (5T - 2) r) / (1 + T r)``, the
    level T times PASCAL's update overhead over a plain IF layer for the layer constant r."""
    return T * (1 + (5 * T - 2) * r) / (1 + T * r)


def teff(levels, fan_ins):
    """Effective timesteps over all spiking layers (every layer counted).

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
        raise ModelError("no spiking layers")
    return sum(row["term"] for row in rows) / len(rows), rows


def latency_steps(model):
    """Sequential steps of each spiking layer and the length of the critical path.

    Layer l needs T_in + max(T_in, L_l) - 1 + L_l steps (accumulate, correct, emit; spec
    3.3), with T_in the length of its input train in the converted network
    (:func:`layer_num_steps_in`: 1 for a layer fed by the image). A layer can start when all
    of its inputs are complete, so the network's latency is the longest path from the image
    to the output through the spiking layers' step counts. In a chain (VGG) that is the sum
    over all layers; in a ResNet block the branch waits for its spiking layer and the
    shortcut does not, so it is the sum again (the activation after the addition takes the
    branch's length: the shortcut's train is folded into the branch's steps).
    Windows are summed without overlap (a layer's emit phase is not counted as the next
    layer's accumulate phase); :func:`pipelined_latency_steps` counts that overlap.

    Returns:
        ``(total, per_layer)``: total steps and ``[(T_in, steps), ...]`` in the order of
        :func:`models.qcfs_layers`.
    """
    total, per_layer, _ = _latencies(model)
    return total, per_layer


def pipelined_latency_steps(model):
    """The critical path when each layer accumulates while the layer before it emits.

    A layer's input window is the previous spiking layer's emit window, so a layer can start
    accumulating L_prev steps before its predecessor finishes: every spiking layer on the
    path but the last saves its L. For a chain that is :func:`latency_steps` minus the sum of
    L over all spiking layers but the last. An addition whose operands differ in length adds
    the other operands' window sums to the first operand's first step, so what follows it
    starts only when they are complete.
    """
    return _latencies(model)[2]


def _latencies(model):
    """``(sequential total, per-layer steps, pipelined total)`` over the model's graph.

    Per node: when its value is complete, sequentially (``done``) and pipelined
    (``finish``), and from when its last steps arrive pipelined (``emitting``: a spiking
    layer's emit window; a value computed from others, the latest of theirs, where a train
    an addition sums into its first step counts from when it is complete). A neuron waits
    for its input to be complete, sequentially, or to start emitting, pipelined.
    """
    graph = model_graph(model)
    steps = graph.num_steps()
    clock = _Clock()
    for node in graph.nodes:
        inputs = [i.index for i in node.inputs]
        clock.done[node.index] = max((clock.done[i] for i in inputs), default=0)
        clock.finish[node.index] = max((clock.finish[i] for i in inputs), default=0)
        clock.emitting[node.index] = max((clock.emitting[i] for i in inputs), default=0)
        node.handler.time(node, steps, clock)
    out = graph.output.index
    return (clock.done[out], [clock.per_layer[name] for name, _ in qcfs_layers(model)],
            clock.finish[out])


class _Clock:
    """Per node: when its value is complete, sequentially (``done``) and pipelined
    (``finish``), and from when its last steps arrive pipelined (``emitting``); per spiking
    layer, ``per_layer[name] = (T_in, steps)``."""

    __slots__ = ("done", "finish", "emitting", "per_layer")

    def __init__(self):
        self.done, self.finish, self.emitting, self.per_layer = {}, {}, {}, {}


# The published T_eff script's constant lists, as exact fractions.
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
    raise ModelError(f"the published script covers vgg16, resnet18 and resnet34, not {arch!r}")


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
