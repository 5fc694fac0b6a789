"""``convert_to_snn(ann)``: a new PASCAL spiking network computing exactly what the ANN does."""
import copy
import math

import torch
from torch import nn

from .qcfs import QCFS, qcfs_layers
from .resnet import ResidualAdd
from .spiking import (SIM_MODES, ChannelScale, LayerStats, PascalNeuron, SeqAffine, SeqMap,
                      SpikingAdd)

__all__ = ["SpikingNetwork", "convert_to_snn", "check_thresholds"]

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

    Memory: a layer fed an L-step train holds L activation maps per image where the ANN holds
    one. The step simulator therefore runs the batch in chunks of
    ``max(1, step_budget // max_level)`` images, so no train holds more than ``step_budget``
    (image, step) pairs; by default ``step_budget`` is the batch size, which keeps the
    simulator's peak memory close to the ANN's on the same batch, whatever the levels.
    Chunks are independent (images never interact), so the result does not depend on them.
    Each chunk reads every layer's weights again, so a larger budget trades memory for speed
    where large weights meet short trains (benchmarks/README.md: VGG-16 at the reference
    levels, budget 2 x batch: 1.21x instead of 1.45x the ideal time, 2.1-2.6x the ANN's memory).
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

    def neurons(self):
        """``[(name, PascalNeuron), ...]`` in forward order, named as the ANN's QCFS layers."""
        return [(m.name, m) for m in self.body.modules() if isinstance(m, PascalNeuron)]

    def chunk_size(self, batch):
        """Images per chunk of the step simulator for a batch of ``batch`` images."""
        if self.sim == "counts":
            return batch  # every train is one step long
        budget = batch if self.step_budget is None else self.step_budget
        return min(batch, max(1, budget // self.max_level))

    @torch.inference_mode()
    def forward(self, x):
        chunks = x.split(self.chunk_size(x.shape[0]))
        outputs = [self.body(chunk.unsqueeze(0)).sum(0) for chunk in chunks]  # (T_last, b, K)
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)

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
        # every chunk records one entry per neuron call, in the same order
        entries = recorder["stats"]
        num_chunks = math.ceil(x.shape[0] / self.chunk_size(x.shape[0]))
        per_chunk = len(entries) // num_chunks
        return logits, [LayerStats.concat(entries[i::per_chunk]) for i in range(per_chunk)]


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
