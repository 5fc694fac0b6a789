"""``convert_to_snn(ann)``: a new PASCAL spiking network computing exactly what the ANN does."""
import copy
import math

import torch
from torch import nn

from .chunking import forward_chain, plan_segments, profile_units, run_segments
from .qcfs import QCFS, qcfs_layers
from .resnet import ResidualAdd
from .spiking import (SIM_MODES, ChannelScale, LayerStats, PascalNeuron, SeqAffine, SeqMap,
                      SpikingAdd)

__all__ = ["SpikingNetwork", "check_thresholds", "convert_to_snn"]

_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
# Linear and free of additive constants: applied to every time step as they are.
_STEPWISE = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d,
             nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.Flatten, nn.Unflatten)
# Identity at inference.
_DROPPED = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


class SpikingNetwork(nn.Module):
    """A converted network. ``forward(x)`` takes the analog image batch ``(B, C, H, W)``.

    The image enters once (T = 1); every spiking layer emits its own number of steps; the
    output is the sum of the last layer's per-step outputs, equal to the ANN logits.

    ``sim`` is ``"step"`` (simulate every time step) or ``"counts"`` (each train travels as
    its window sum and each neuron takes its count from the closed form; see
    :mod:`models.spiking`). Both give the same logits and emitted spike counts.

    Memory: a layer fed a T-step train holds T activation maps per image where the ANN holds
    one, so the step simulator runs the batch in chunks, segment by segment
    (:mod:`models.chunking`). The forward chain (``nn.Sequential`` children, or a module's
    ``forward_chain()``: VGG and ResNet have one) is cut into segments; each runs chunks of
    as many images as keep every layer call's tensors (inputs + output, all steps) within
    what the ANN's largest layer call holds for ``step_budget`` images (default: the batch),
    with at most a sixteenth of that again held in buffers between segments. Long trains on
    large maps thus run in small chunks and the layers after them (short trains or small
    maps, often the largest weights) in large ones, so their weights are read few times. The
    plan is made once per batch shape from a one-image probe; :meth:`chunk_plan` shows it.
    Chunks are independent (images never interact), so the result does not depend on them.
    A larger ``step_budget`` trades memory for speed.
    """

    def __init__(self, body, sim="step", step_budget=None):
        super().__init__()
        if sim not in SIM_MODES:
            raise ValueError(f"sim must be one of {SIM_MODES}, got {sim!r}")
        if step_budget is not None and (not isinstance(step_budget, int) or step_budget < 1):
            raise ValueError(f"step_budget must be a positive int or None, got {step_budget!r}")
        self.body = body
        self.sim = sim
        self.step_budget = step_budget
        for _, neuron in self.neurons():
            neuron.sim = sim
        self.max_level = max((m.level for _, m in self.neurons()), default=1)
        self.units = forward_chain(body)
        self._plans = {}  # (batch, image shape, dtype, device, budget) -> segments

    def neurons(self):
        """``[(name, PascalNeuron), ...]`` in forward order, named as the ANN's QCFS layers."""
        return [(m.name, m) for m in self.body.modules() if isinstance(m, PascalNeuron)]

    def chunk_plan(self, x):
        """``[(unit names, images per chunk), ...]``: the segments the step simulator runs
        the batch ``x`` in, in forward order, with increasing chunk sizes."""
        names = {m: name or "body" for name, m in self.body.named_modules()}
        return [([names[u] for u in units], size) for units, size in self._segments(x)]

    def _segments(self, x):
        batch = x.shape[0]
        if self.sim == "counts" or batch == 0:
            return [(self.units, max(1, batch))]  # counts: every train is one step long
        key = (batch, tuple(x.shape[1:]), x.dtype, x.device, self.step_budget)
        if key not in self._plans:  # planned once per batch shape (~0.1 s for VGG-16)
            profiles, ann_work = profile_units(self.body, self.units, x)
            budget = batch if self.step_budget is None else self.step_budget
            starts = plan_segments(profiles, batch, budget * ann_work)
            stops = [start for start, _ in starts[1:]] + [len(self.units)]
            self._plans[key] = [(self.units[start:stop], size)
                                for (start, size), stop in zip(starts, stops)]
        return self._plans[key]

    @torch.inference_mode()
    def forward(self, x):
        return run_segments(x, self._segments(x)).sum(0)  # (T_last, B, K) -> (B, K)

    def forward_with_stats(self, x, keep_counts=False):
        """``(logits, [LayerStats, ...])``; with ``keep_counts`` each entry also holds the
        per-neuron emitted spike counts (int tensor ``(B, ...)``). On the counts path the
        correction spikes are not simulated and are reported as None."""
        recorder = {"stats": [], "keep_counts": keep_counts}
        neurons = [m for _, m in self.neurons()]
        for m in neurons:
            m._recorder = recorder
        try:
            logits = self(x)
        finally:
            for m in neurons:
                m._recorder = None
        # one entry per neuron call and chunk; each neuron sees the chunks in batch order
        per_layer = {}
        for entry in recorder["stats"]:
            per_layer.setdefault(entry.name, []).append(entry)
        return logits, [LayerStats.concat(parts) for parts in per_layer.values()]


def check_thresholds(ann):
    """Raise ``ValueError`` naming the first QCFS layer whose threshold is not finite and > 0."""
    for name, module in qcfs_layers(ann):
        value = float(module.threshold.detach().reshape(-1)[0])
        if not math.isfinite(value) or value <= 0:
            raise ValueError(
                f"QCFS layer {name!r} has threshold {value!r}; PASCAL conversion needs a finite "
                "threshold > 0 (a layer with threshold <= 0 can only output 0 and has no spiking "
                "counterpart). Retrain with thresholds clamped positive "
                "(models.clamp_thresholds_) or fix the checkpoint.")


def convert_to_snn(ann: nn.Module, sim: str = "step", step_budget=None) -> SpikingNetwork:
    """Return a new spiking network equivalent to ``ann`` (which is left unchanged).

    ``sim="step"`` (default) simulates every time step of every layer; ``sim="counts"`` is the
    exact shortcut that runs each linear layer once on window sums and takes every neuron's
    emitted count from the closed form (same logits and emitted spikes, no correction spikes;
    about the ANN's cost). ``step_budget``: see :class:`SpikingNetwork`.

    The ANN's module tree is copied and each leaf replaced by its time-major version: QCFS by
    a :class:`PascalNeuron`, conv/linear by a per-step map whose bias is injected once per
    window (an eval-mode BatchNorm directly after it in a ``Sequential`` is folded into it;
    elsewhere it becomes a per-step scale plus a once-per-window shift), pools and flattens
    applied per step, dropout removed, :class:`ResidualAdd` by :class:`SpikingAdd`. Container
    modules keep their own ``forward``, which must only call child modules.

    Works for any dtype and device the ANN has (``convert_to_snn(ann.double())`` gives the
    float64 certificate). Raises ``ValueError`` for a threshold <= 0 or non-finite and
    ``TypeError`` for a layer with no exact spiking counterpart (max pooling, ReLU, ...).
    """
    if sim not in SIM_MODES:
        raise ValueError(f"sim must be one of {SIM_MODES}, got {sim!r}")
    check_thresholds(ann)
    body = copy.deepcopy(ann).eval()
    with torch.no_grad():
        _convert_children(body, prefix="")
    return SpikingNetwork(body, sim=sim, step_budget=step_budget)


def _convert_children(module, prefix):
    children = list(module.named_children())
    folded = set()
    if isinstance(module, nn.Sequential):
        # Fold each BN into the weighted layer right before it: order is known in a Sequential.
        for (name, child), (next_name, following) in zip(children, children[1:]):
            if isinstance(child, _WEIGHTED) and isinstance(following, _BATCHNORM):
                setattr(module, name, _fold(child, following, prefix + next_name))
                setattr(module, next_name, nn.Identity())
                folded.update((name, next_name))
    for name, child in children:
        if name in folded:
            continue
        full_name = prefix + name
        replacement = _convert_leaf(child, full_name)
        if replacement is None:
            _convert_children(child, full_name + ".")
        elif replacement is not child:
            setattr(module, name, replacement)


def _convert_leaf(module, name):
    """The spiking replacement of ``module``, or None for a container to recurse into."""
    if isinstance(module, QCFS):
        return PascalNeuron(module.level, module.threshold, name=name)
    if isinstance(module, _WEIGHTED):
        bias = module.bias
        module.bias = None
        return SeqAffine(module, bias)
    if isinstance(module, _BATCHNORM):
        scale, shift = _bn_affine(module, name)
        return SeqAffine(ChannelScale(scale), shift)
    if isinstance(module, _STEPWISE):
        return SeqMap(module)
    if isinstance(module, _DROPPED):
        return nn.Identity()
    if isinstance(module, ResidualAdd):
        return SpikingAdd()
    if isinstance(module, nn.Sequential) or len(module._modules) > 0:
        return None
    raise TypeError(
        f"cannot convert layer {name!r} ({type(module).__name__}): PASCAL conversion is exact "
        "only for QCFS activations, conv/linear, BatchNorm, average pooling, flatten, dropout "
        "and ResidualAdd (max pooling and ReLU are not linear/quantized; use AvgPool2d / QCFS)")


def _bn_affine(bn, name):
    """Eval-mode BN as ``y = scale * x + shift`` per channel."""
    if bn.running_mean is None or bn.running_var is None:
        raise TypeError(f"cannot convert BatchNorm {name!r}: it has no running statistics, so "
                        "in eval mode it is not a fixed affine map")
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


def _fold(layer, bn, bn_name):
    """``bn(layer(x))`` as one per-step map plus a once-per-window constant."""
    scale, shift = _bn_affine(bn, bn_name)
    layer.weight.mul_(scale.view(-1, *([1] * (layer.weight.dim() - 1))))
    bias = shift if layer.bias is None else layer.bias * scale + shift
    layer.bias = None
    return SeqAffine(layer, bias)
