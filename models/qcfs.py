"""QCFS activation: the quantized, clipped, shifted ReLU that PASCAL networks are trained with."""
import numbers

import torch
from torch import fx, nn

from errors import ModelError

__all__ = ["QCFS", "qcfs_layers", "get_levels", "set_levels", "clamp_thresholds_",
           "validate_levels"]


class _QCFSFunction(torch.autograd.Function):
    """y = step * clamp(floor(x / step + 1/2), 0, L) with step = threshold / L.

    Backward is the QCFS straight-through estimator: floor passes gradients unchanged, so
    inside the clipping range (0 <= x <= threshold) dy/dx = 1 and dy/dthreshold =
    (y - x) / threshold; above the range y = threshold (dy/dthreshold = 1, dy/dx = 0); below it
    y = 0 (no gradient). With m = [0 <= x <= threshold] that is dy/dthreshold = (y - m x) /
    threshold everywhere (above, y / threshold = 1; below, y = 0), so the threshold gradient
    is two dot products, (<g, y> - <g m, x>) / threshold, and g m is the input gradient.
    One fused function with a handful of in-place, single-dtype passes keeps a training
    step within a few percent of ReLU's (benchmarks/bench_snn.py measures it).
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)
    def forward(ctx, x, threshold, level):
        step = threshold.reshape(()) / level  # 0-dim: the cheapest broadcast
        y = torch.div(x, step).add_(0.5).floor_().clamp_(0, level).mul_(step)
        ctx.save_for_backward(x, y, threshold)
        return y

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad_y):
        x, y, threshold = ctx.saved_tensors
        # m as a float tensor (comparing against the clamped value avoids bool tensors,
        # whose mixed-dtype arithmetic is many times slower on CPU); then g * m in place.
        grad_x = torch.clamp_min(x, 0).clamp_max_(threshold).eq_(x)
        grad_x.mul_(grad_y)
        grad_threshold = None
        if ctx.needs_input_grad[1]:
            # a 1-element tensor, not a Python float: no device synchronisation
            gy = torch.dot(grad_y.reshape(-1), y.reshape(-1))
            gmx = torch.dot(grad_x.reshape(-1), x.reshape(-1))
            grad_threshold = ((gy - gmx) / threshold).reshape(threshold.shape)
        return (grad_x if ctx.needs_input_grad[0] else None), grad_threshold, None


class QCFS(nn.Module):
    """Quantization-clip-floor-shift activation.

    q(x) = threshold * clip(floor(x * L / threshold + 1/2) / L, 0, 1), with one trainable
    scalar ``threshold`` (lambda) and an integer ``level`` L >= 1. Its outputs take the L+1
    values {0, threshold/L, ..., threshold}; threshold/L is the spike amplitude of the
    converted spiking layer.
    """

    relu6 = False  # set by qcfsify where the layer replaced a ReLU6 (caps data thresholds)

    def __init__(self, level: int = 4, init_threshold: float = 4.0):
        super().__init__()
        self.level = _check_level(level, "level")
        self.threshold = nn.Parameter(torch.tensor([float(init_threshold)]))

    def forward(self, x):
        return _QCFSFunction.apply(x, self.threshold, self.level)

    def quantize(self, x):
        """Integer level k = clamp(floor(x / (threshold/L) + 1/2), 0, L) of every element."""
        step = self.threshold.detach().to(x.dtype) / self.level
        return torch.floor(x / step + 0.5).clamp_(0, self.level).to(torch.int64)

    def extra_repr(self):
        return f"level={self.level}"


def _check_level(value, what):
    # bool is an int subclass; a level of True is a bug, not 1.
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = int(value)
    elif isinstance(value, float) and value.is_integer():
        value = int(value)
    else:
        raise ModelError(f"{what} must be an integer >= 1, got {value!r}")
    if value < 1:
        raise ModelError(f"{what} must be an integer >= 1, got {value!r}")
    return value


def qcfs_layers(model: nn.Module):
    """``[(name, QCFS module), ...]`` in forward order (the order of ``levels``).

    For a ``torch.fx.GraphModule`` (what :func:`models.qcfsify` returns) the order is the
    graph's, i.e. the order of the calls; for other modules it is registration order, which
    is forward order in the models of this package (tested).
    """
    if isinstance(model, fx.GraphModule):
        layers, seen = [], set()
        for node in model.graph.nodes:
            if node.op == "call_module" and node.target not in seen:
                module = model.get_submodule(node.target)
                if isinstance(module, QCFS):
                    layers.append((node.target, module))
                    seen.add(node.target)
        return layers
    return [(name, m) for name, m in model.named_modules() if isinstance(m, QCFS)]


def get_levels(model: nn.Module):
    """The per-layer levels of ``model`` as a list of ints."""
    return [m.level for _, m in qcfs_layers(model)]


def validate_levels(levels, layer_names):
    """Expand ``levels`` (an int or one entry per QCFS layer) to a list of ints, or raise."""
    names = list(layer_names)
    if isinstance(levels, str):
        raise ModelError(
            f"levels must be an int or a sequence of ints, got the string {levels!r} "
            "(parse comma-separated text with utils.parse_levels first)")
    if isinstance(levels, (int, float)) and not isinstance(levels, bool):
        return [_check_level(levels, "level")] * len(names)
    try:
        levels = list(levels)
    except TypeError:
        raise ModelError(f"levels must be an int or a sequence of ints, got {levels!r}") from None
    if len(levels) != len(names):
        shown = ", ".join(names) if len(names) <= 40 else ", ".join(names[:40]) + ", ..."
        raise ModelError(
            f"the model has {len(names)} QCFS layers ({shown}); got {len(levels)} levels")
    return [_check_level(v, f"level of {name}") for v, name in zip(levels, names, strict=True)]


def set_levels(model: nn.Module, levels):
    """Set every QCFS layer's level from an int or a per-layer sequence; returns the list."""
    layers = qcfs_layers(model)
    expanded = validate_levels(levels, [name for name, _ in layers])
    for (_, module), level in zip(layers, expanded, strict=True):
        module.level = level
    return expanded


@torch.no_grad()
def clamp_thresholds_(model: nn.Module, min_value: float = 1e-3):
    """Keep every threshold >= ``min_value`` (call after each optimizer step).

    Gradient descent can push a small threshold through zero; a non-positive threshold has
    no spiking counterpart, so training projects it back onto the positive range.
    """
    for _, module in qcfs_layers(model):
        module.threshold.clamp_(min=min_value)
