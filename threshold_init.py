"""Thresholds from data: each QCFS layer's threshold set to a percentile of its input.

For a network that starts from ReLU weights (or a new one), a constant threshold ignores the
range each layer's activations actually take. :func:`data_thresholds_` sets the thresholds in
forward order: layer l's threshold becomes the P-th percentile (linear interpolation between
the two nearest ranks, as ``numpy.percentile``'s default) of the *positive* values of its
input on calibration images, with layers 1..l-1 already quantized by their new thresholds,
floored at the smallest threshold training keeps (:func:`models.clamp_thresholds_`) and, for
a layer that was a ReLU6, capped at 6.

The percentile is exact and needs no more memory than a fixed histogram, however many values
a layer has (``torch.quantile`` refuses more than 2^24 elements, and 512 CIFAR images of a
64x32x32 layer are 33.5 M): two passes over the calibration images per layer. The first
counts the positive values in 2^19 buckets of their float64 bit patterns (for non-negative
floats the bit pattern orders like the value: a bucket is a range of values within 2^-8
relative of each other); the second keeps only the values in the buckets that hold the two
ranks needed, sorts those and reads the ranks off.
"""
import math

import torch

from models import qcfs_layers
from utils import DEFAULT_PERCENTILE, progress

MIN_THRESHOLD = 1e-3  # the floor models.clamp_thresholds_ keeps during training

_SHIFT = 44  # float64 bits: 1 sign (0 for positives) + 11 exponent + 8 mantissa per bucket
_BUCKETS = 1 << (63 - _SHIFT)


class _Stop(Exception):
    """Raised by the hook once the layer's input is seen: the rest of the network is skipped."""


def _layer_inputs(model, layer, loader):
    """Yield, batch by batch, the positive values of ``layer``'s input (float64, 1-D)."""
    param = next(model.parameters())

    def hook(_module, args):
        raise _Stop(args[0])

    handle = layer.register_forward_pre_hook(hook)
    try:
        for images, _ in loader:
            try:
                model(images.to(device=param.device, dtype=param.dtype))
            except _Stop as stop:
                x = stop.args[0].detach().reshape(-1)
                yield x[x > 0].to(torch.float64)
            else:
                raise RuntimeError("the QCFS layer was not called by the model's forward")
    finally:
        handle.remove()


def _keys(values):
    return values.view(torch.int64) >> _SHIFT


def exact_percentile(passes, percentile):
    """``(value, count)``: the ``percentile``-th percentile (linear interpolation) of the
    values that ``passes()`` yields (non-negative float64 1-D tensors, the same values on
    every call; None if there are none) and their number. Two calls of ``passes``; memory:
    one 2^19-bucket histogram plus the values of at most two buckets."""
    counts = None
    for values in passes():
        hist = torch.bincount(_keys(values).cpu(), minlength=_BUCKETS)
        counts = hist if counts is None else counts + hist
    total = 0 if counts is None else int(counts.sum())
    if total == 0:
        return None, 0
    position = (total - 1) * percentile / 100.0
    low = math.floor(position)
    high = min(low + 1, total - 1)
    ends = torch.cumsum(counts, 0)
    first, last = (int(torch.searchsorted(ends, rank, right=True)) for rank in (low, high))
    before = int(ends[first - 1]) if first > 0 else 0
    kept = [v[(k >= first) & (k <= last)] for v in passes() for k in (_keys(v),)]
    kept = torch.sort(torch.cat(kept).cpu()).values
    a, b = float(kept[low - before]), float(kept[high - before])
    return a + (position - low) * (b - a), total


@torch.no_grad()
def data_thresholds_(model, loader, percentile=DEFAULT_PERCENTILE, show_progress=False):
    """Set every QCFS threshold of ``model`` from data, in forward order (module docstring).

    ``loader`` yields ``(images, labels)`` batches: calibration images with evaluation
    transforms (e.g. :func:`level_search.calibration_loader`); it is read twice per layer.
    The model runs in eval mode (restored afterwards) in the dtype and on the device of its
    parameters. Returns ``[(layer name, threshold, positive values seen), ...]``.
    """
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile!r}")
    was_training = model.training
    model.eval()
    chosen = []
    try:
        layers = qcfs_layers(model)
        for name, layer in progress(layers, show_progress, desc="thresholds", unit="layer"):
            def passes(layer=layer):
                return _layer_inputs(model, layer, loader)

            value, seen = exact_percentile(passes, percentile)
            threshold = MIN_THRESHOLD if value is None else max(value, MIN_THRESHOLD)
            if getattr(layer, "cap", None) is not None:  # a ReLU6's 6, a clamp's bound
                threshold = min(threshold, float(layer.cap))
            layer.threshold.fill_(threshold)
            chosen.append((name, float(layer.threshold), seen))
    finally:
        model.train(was_training)
    return chosen
