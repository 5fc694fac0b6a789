"""The AL metric of an activation histogram, our metric-to-level rule, and the
per-layer statistics of a QCFS network they are computed from."""
import math

import numpy as np
import torch

from models import qcfs_layers
from utils import progress

__all__ = ["DEFAULT_THRESHOLDS", "al_metric", "level_histogram", "suggest_level", "npy_metrics",
           "collect_level_counts", "layer_metrics", "format_table"]

# This project's own metric -> level thresholds (the paper's were not available to us). For
# 5 bins the metric runs from 0 (flat histogram) to 41.4375 (everything in one bin); two
# equal peaks score 9.33, and a histogram with two bins at or above the average count at most
# 0.75 * 41.4375 = 31.08. Trained QCFS layers are mostly zeros, so their metrics crowd the
# upper end (17-41 on VGG-16 / digits), and the cuts sit there:
#   metric < 20        -> max_level             spread out, or a mode with a long tail
#   20 <= metric < 30  -> ceil(max_level / 2)   two bins at or above the average count
#   30 <= metric < 38  -> ceil(max_level / 4)   one dominant bin with a visible tail
#   metric >= 38       -> 1                     almost everything in one bin
# Checked on real runs (docs/levels.md): VGG-16 on the bundled digits, phase 1 at L = 8,
# these cuts kept the accuracy at a third of the uniform T_eff, while (10, 20, 30) sent 13 of
# 15 layers to L = 1 and lost about a point, and (25, 33, 40) spent more T_eff for no gain.
DEFAULT_THRESHOLDS = (20.0, 30.0, 38.0)


def al_metric(counts, bins=5):
    """AL metric of one histogram, as the reference code computes it.

    With h = ``counts`` (one count per bin, ``len(counts) == bins``):

        A = 1 - (m - 1) / (bins - 1),  m = number of bins with h_i >= sum(h) / bins
        g = skewness, k = excess kurtosis of the values h_1..h_bins (population moments)
        b = (g^2 + 1) * (k + 3 bins^2 / ((bins - 2)(bins - 3)))
        metric = A * b

    The moments are those of the *counts* themselves, not of the activations, and b is not
    Sarle's bimodality coefficient (which divides); this reproduces the reference. For 5 bins
    a one-bin histogram scores 41.4375 and counts (50, 0, 0, 0, 50) score 9.3333.

    Equal counts (including an all-zero histogram) have variance 0, which makes g and k 0/0.
    We define g = 0 and k = 0 there, so b = 3 bins^2 / ((bins - 2)(bins - 3)) (12.5 for 5
    bins); every bin then reaches the average, so m = bins, A = 0 and metric = 0, the value
    of a flat histogram. Never NaN.

    Returns:
        ``{"A": float, "b": float, "metric": float}``.

    Raises:
        ValueError: ``bins < 4`` (the constant divides by (bins - 2)(bins - 3)), a count
            vector whose length is not ``bins``, or negative / non-finite counts.
    """
    if not isinstance(bins, int) or bins < 4:
        raise ValueError(
            f"bins must be an integer >= 4 (b divides by (bins-2)(bins-3)), got {bins!r}")
    h = np.asarray(counts, dtype=np.float64)
    if h.shape != (bins,):
        raise ValueError(f"expected {bins} bin counts, got an array of shape {h.shape}")
    if not np.all(np.isfinite(h)) or np.any(h < 0):
        raise ValueError(f"bin counts must be finite and >= 0, got {h.tolist()}")
    # h_i >= sum/bins compared as h_i * bins >= sum: exact for integer counts.
    m = int(np.count_nonzero(h * bins >= h.sum()))
    A = 1.0 - (m - 1) / (bins - 1)
    deviation = h - h.mean()
    variance = np.mean(deviation ** 2)
    if variance > 0:
        g = float(np.mean(deviation ** 3) / variance ** 1.5)
        k = float(np.mean(deviation ** 4) / variance ** 2 - 3.0)
    else:
        g, k = 0.0, 0.0
    b = (g * g + 1.0) * (k + 3.0 * bins ** 2 / ((bins - 2) * (bins - 3)))
    return {"A": A, "b": b, "metric": A * b}


def level_histogram(level_counts, threshold, level, bins=5, dtype=torch.float32):
    """``numpy.histogram`` counts of a QCFS layer's outputs, from its per-level counts.

    A QCFS layer's outputs take the values k * (threshold / L), k = 0..L, so ``level_counts``
    (n_0..n_L: how many outputs equal each value) determine the histogram. The values are
    rebuilt with the model's own arithmetic (``threshold / level`` then ``k * step`` in
    ``dtype``, float32 as in :class:`models.QCFS`), and only levels with a nonzero count take
    part, so the histogram range is the [min, max] of the values actually present, exactly as
    ``numpy.histogram(outputs, bins)`` on the materialized outputs: a value on a bin edge
    lands in the same bin.

    Args:
        level_counts: L+1 non-negative integer counts.
        threshold: the layer's threshold (float or its one-element tensor).
        level: the layer's L.
        bins: number of histogram bins.
        dtype: dtype the model computed its outputs in.

    Returns:
        int64 array of ``bins`` counts.
    """
    counts = np.asarray(level_counts)
    if counts.shape != (level + 1,):
        raise ValueError(
            f"expected {level + 1} level counts for L = {level}, got shape {counts.shape}")
    if counts.size and (not np.issubdtype(counts.dtype, np.integer) or counts.min() < 0):
        raise ValueError(f"level counts must be non-negative integers, got {counts.tolist()}")
    threshold = torch.as_tensor(threshold).detach().to("cpu", dtype).reshape(1)
    step = threshold / level
    values = (torch.arange(level + 1, dtype=dtype) * step).numpy()
    present = counts > 0
    hist, _ = np.histogram(values[present], bins, weights=counts[present])
    return np.rint(hist).astype(np.int64)


def suggest_level(metric, max_level, thresholds=DEFAULT_THRESHOLDS):
    """This project's level for a layer with AL metric ``metric``.

    With thresholds t1 < t2 < t3 (default :data:`DEFAULT_THRESHOLDS` = 20, 30, 38):
    metric < t1 -> max_level; < t2 -> ceil(max_level/2); < t3 -> ceil(max_level/4); else 1.
    Non-increasing in ``metric``: more concentrated layers get fewer levels. The paper's
    thresholds were not available; these are ours, chosen for 5-bin histograms.

    Returns:
        an int >= 1.
    """
    if not isinstance(max_level, int) or isinstance(max_level, bool) or max_level < 1:
        raise ValueError(f"max_level must be an integer >= 1, got {max_level!r}")
    t = [float(x) for x in thresholds]
    if len(t) != 3 or not all(math.isfinite(x) for x in t) or not t[0] < t[1] < t[2]:
        raise ValueError(
            f"thresholds must be 3 increasing finite numbers, got {list(thresholds)!r}")
    metric = float(metric)
    if math.isnan(metric):
        raise ValueError("metric is NaN")
    if metric < t[0]:
        return max_level
    if metric < t[1]:
        return math.ceil(max_level / 2)
    if metric < t[2]:
        return math.ceil(max_level / 4)
    return 1


def npy_metrics(paths, bins=5):
    """The reference script's mode: the metric of each saved activation array.

    Each ``.npy`` file is loaded (no pickles), histogrammed with ``numpy.histogram(values,
    bins)`` over its [min, max], and scored with :func:`al_metric`.

    Returns:
        ``[{"path", "counts", "A", "b", "metric"}, ...]`` in the order of ``paths``.
    """
    results = []
    for path in paths:
        values = np.load(path, allow_pickle=False)
        counts, _ = np.histogram(values, bins)
        results.append({"path": str(path), "counts": counts.tolist(), **al_metric(counts, bins)})
    return results


@torch.no_grad()
def collect_level_counts(model, loader, device, max_batches=None, show_progress=False):
    """Stream, for every QCFS layer, how many outputs took each level 0..L.

    No activation is stored: each batch adds ``bincount(levels)`` per layer. Returns
    ``{layer name: int64 array of L + 1 counts}`` in forward order.
    """
    layers = qcfs_layers(model)
    counts = {name: torch.zeros(m.level + 1, dtype=torch.int64, device=device)
              for name, m in layers}
    handles = []
    for name, module in layers:
        def hook(mod, inputs, output, name=name):
            counts[name] += torch.bincount(mod.quantize(inputs[0]).flatten(),
                                           minlength=mod.level + 1)
        handles.append(module.register_forward_hook(hook))
    model.eval()
    try:
        for index, (images, _) in enumerate(progress(loader, show_progress, desc="statistics")):
            if max_batches and index >= max_batches:
                break
            model(images.to(device))
    finally:
        for handle in handles:
            handle.remove()
    return {name: c.cpu().numpy() for name, c in counts.items()}


def layer_metrics(model, level_counts, bins=5, max_level=None, thresholds=DEFAULT_THRESHOLDS):
    """One row per QCFS layer: histogram, A, b, metric and the suggested level."""
    layers = qcfs_layers(model)
    max_level = max_level or max(m.level for _, m in layers)
    rows = []
    for name, module in layers:
        histogram = level_histogram(level_counts[name], module.threshold, module.level, bins)
        metric = al_metric(histogram, bins)
        rows.append({"name": name, "level": module.level,
                     "threshold": float(module.threshold.detach()),
                     "level_counts": [int(c) for c in level_counts[name]],
                     "histogram": [int(h) for h in histogram], **metric,
                     "suggested_level": suggest_level(metric["metric"], max_level, thresholds)})
    return rows


def format_table(rows):
    lines = [f"{'layer':<32} {'L':>3} {'histogram (5 bins)':<34} {'A':>5} {'b':>8} "
             f"{'metric':>8} {'->L':>4}"]
    for r in rows:
        hist = " ".join(str(h) for h in r["histogram"])
        lines.append(f"{r['name']:<32} {r['level']:>3} {hist:<34} {r['A']:>5.2f} {r['b']:>8.3f} "
                     f"{r['metric']:>8.3f} {r['suggested_level']:>4}")
    return "\n".join(lines)
