"""``convert_to_snn(ann)``: a new PASCAL spiking network computing exactly what the ANN does."""
import copy
import math

import torch
from torch import nn

from .qcfs import QCFS, qcfs_layers
from .resnet import ResidualAdd
from .spiking import ChannelScale, PascalNeuron, SeqAffine, SeqMap, SpikingAdd

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
    """

    def __init__(self, body):
        super().__init__()
        self.body = body

    def neurons(self):
        """``[(name, PascalNeuron), ...]`` in forward order, named as the ANN's QCFS layers."""
        return [(m.name, m) for m in self.body.modules() if isinstance(m, PascalNeuron)]

    @torch.inference_mode()
    def forward(self, x):
        out_seq = self.body(x.unsqueeze(0))  # (T_last, B, num_classes)
        return out_seq.sum(0)

    def forward_with_stats(self, x, keep_counts=False):
        """``(logits, [LayerStats, ...])``; with ``keep_counts`` each entry also holds the
        per-neuron emitted spike counts (int tensor ``(B, ...)``)."""
        recorder = {"stats": [], "keep_counts": keep_counts}
        neurons = [m for _, m in self.neurons()]
        for m in neurons:
            m._recorder = recorder
        try:
            logits = self(x)
        finally:
            for m in neurons:
                m._recorder = None
        return logits, recorder["stats"]


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


def convert_to_snn(ann: nn.Module) -> SpikingNetwork:
    """Return a new spiking network equivalent to ``ann`` (which is left unchanged).

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
    check_thresholds(ann)
    body = copy.deepcopy(ann).eval()
    with torch.no_grad():
        _convert_children(body, prefix="")
    return SpikingNetwork(body)


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
