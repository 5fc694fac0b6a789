"""The converted network's layers that hold weights: a convolution or linear layer with its
bias injected once per window, and an unfolded BatchNorm's per-channel affine map."""
import torch
from torch import nn

__all__ = ["ChannelAffine", "WeightedLayer", "bn_affine"]


class WeightedLayer(nn.Module):
    """A conv/linear layer applied to every step of a folded train ``(T*B, ...)``, its bias
    (with a folded BatchNorm's shift) added once per window, at the first step."""

    def __init__(self, layer, bias):
        super().__init__()
        self.layer = layer
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def forward(self, x, batch):  # (T*B, ...) -> (T*B, ...)
        y = self.layer(x)
        if self.bias is not None:
            bias = self.bias if isinstance(self.layer, nn.Linear) else \
                self.bias.view(-1, *([1] * (y.dim() - 2)))
            y[:batch] += bias
        return y


class ChannelAffine(nn.Module):
    """An eval-mode BatchNorm not folded into a layer: ``scale`` on every step (channel dim 1),
    ``shift`` once per window, at the first step."""

    def __init__(self, scale, shift):
        super().__init__()
        self.register_buffer("scale", scale.detach().clone())
        self.register_buffer("shift", shift.detach().clone())

    def forward(self, x, batch):  # (T*B, C, ...) -> (T*B, C, ...)
        view = (-1, *([1] * (x.dim() - 2)))
        y = x * self.scale.view(view)
        y[:batch] += self.shift.view(view)
        return y


def bn_affine(bn):
    """Eval-mode BN as ``y = scale * x + shift`` per channel."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift
