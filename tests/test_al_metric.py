"""AL metric: hand-computed values, the streamed histogram against numpy, the level rule."""
import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

import models
from helpers import assert_streamed_histograms
from al_metric import DEFAULT_THRESHOLDS, al_metric, level_histogram, npy_metrics, suggest_level


@pytest.mark.parametrize("position", range(5))
def test_single_bin_histogram_scores_the_maximum(position):
    counts = [0] * 5
    counts[position] = 100
    # Hand-computed: A = 1, g = 1.5, k = 0.25, b = 3.25 * 12.75.
    result = al_metric(counts)
    assert result["A"] == 1.0
    assert result["metric"] == pytest.approx(41.4375, abs=1e-12)  # float rounding only


def test_two_end_bins():
    # A = 0.75; g^2 = 1/6, k = -11/6: b = (7/6)(32/3) = 112/9; metric = 28/3.
    result = al_metric([50, 0, 0, 0, 50])
    assert result["A"] == 0.75
    assert result["metric"] == pytest.approx(28 / 3, abs=1e-12)
    assert round(result["metric"], 4) == 9.3333


@pytest.mark.parametrize("counts", [[7] * 5, [0] * 5, [3] * 8])
def test_equal_counts_give_the_documented_value(counts):
    result = al_metric(counts, bins=len(counts))
    bins = len(counts)
    assert result == {"A": 0.0, "b": 3 * bins**2 / ((bins - 2) * (bins - 3)), "metric": 0.0}


def test_against_scipy_moments():
    rng = np.random.default_rng(0)
    for bins in (4, 5, 7):
        for _ in range(50):
            h = rng.integers(0, 1000, size=bins)
            if np.all(h == h[0]):
                continue
            m = int(np.sum(h >= h.sum() / bins))
            A = 1 - (m - 1) / (bins - 1)
            g, k = stats.skew(h), stats.kurtosis(h)  # population moments, Fisher (excess)
            expected = A * (g**2 + 1) * (k + 3 * bins**2 / ((bins - 2) * (bins - 3)))
            assert al_metric(h, bins)["metric"] == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_at_average_counts_as_reaching_it():
    # sum 100, average 20: two bins exactly at it count, m = 3 -> A = 0.5.
    assert al_metric([20, 20, 60, 0, 0])["A"] == 0.5


@pytest.mark.parametrize("bad", [dict(counts=[1, 2, 3], bins=3), dict(counts=[1, 2, 3, 4], bins=5),
                                 dict(counts=[1, -1, 0, 0, 0]), dict(counts=[1, np.nan, 0, 0, 0])])
def test_bad_input_raises(bad):
    with pytest.raises(ValueError):
        al_metric(**bad)


def _inputs(level, threshold, generator, low=-0.5, high=1.5):
    step = torch.tensor([threshold], dtype=torch.float32) / level
    k = torch.arange(-1, level + 2, dtype=torch.float32)
    # Level values and the rounding boundaries (k + 1/2) step, exactly, plus random values.
    edges = torch.cat([k * step, (k + 0.5) * step])
    random = (torch.rand(4000, generator=generator) * (high - low) + low) * threshold
    x = torch.cat([edges, random])
    lo, hi = low * threshold, high * threshold
    return x[(x >= lo) & (x <= hi)].reshape(-1, 1)


@pytest.mark.parametrize("level", [1, 2, 3, 4, 5, 8, 10, 16])
@pytest.mark.parametrize("threshold", [1.0, 0.3, 4.0, 0.7])
def test_streamed_histogram_equals_numpy_on_materialized_outputs(level, threshold):
    generator = torch.Generator().manual_seed(level * 100 + int(threshold * 10))
    layer = models.QCFS(level=level, init_threshold=threshold)
    cases = [(-0.5, 1.5), (0.45, 0.8), (0.95, 1.5), (-1.0, 0.0)]  # full, interior, top, all zero
    for low, high in cases:
        assert_streamed_histograms(nn.Sequential(layer),
                                   [_inputs(level, threshold, generator, low, high)])


def test_streamed_histogram_of_a_real_model():
    # Per-level counts streamed over two batches from every QCFS layer of a network, against
    # the numpy histogram of the outputs those layers actually produced.
    torch.manual_seed(0)
    model = models.create_model("vgg_small", num_classes=10, levels=[1, 2, 4, 8, 5],
                                init_threshold=1.0).eval()
    assert_streamed_histograms(model, [torch.randn(8, 3, 32, 32), torch.randn(4, 3, 32, 32)])


def test_level_histogram_rejects_wrong_length():
    with pytest.raises(ValueError):
        level_histogram([1, 2, 3], 1.0, level=4)


@pytest.mark.parametrize("max_level", [1, 2, 3, 4, 7, 8, 16])
def test_suggest_level_is_monotone_and_in_the_allowed_set(max_level):
    allowed = {max_level, math.ceil(max_level / 2), math.ceil(max_level / 4), 1}
    metrics = np.linspace(0, 41.4375, 400)
    suggested = [suggest_level(m, max_level) for m in metrics]
    assert all(type(s) is int and s >= 1 and s in allowed for s in suggested)
    assert suggested == sorted(suggested, reverse=True)
    assert suggested[0] == max_level and suggested[-1] == 1


def test_suggest_level_thresholds():
    assert DEFAULT_THRESHOLDS == (20.0, 30.0, 38.0)
    assert [suggest_level(m, 8) for m in (0, 19.99, 20, 29.99, 30, 37.99, 38, 41.4375)] == \
        [8, 8, 4, 4, 2, 2, 1, 1]
    assert suggest_level(al_metric([50, 0, 0, 0, 50])["metric"], 8) == 8
    assert suggest_level(al_metric([100, 0, 0, 0, 0])["metric"], 8) == 1
    custom = [suggest_level(m, 16, thresholds=[1, 2, 3]) for m in (0.5, 1.5, 2.5, 3.5)]
    assert custom == [16, 8, 4, 1]
    for bad in ([1, 2], [3, 2, 1], [1, 1, 2], [1, 2, float("nan")]):
        with pytest.raises(ValueError):
            suggest_level(5.0, 8, thresholds=bad)
    for bad_level in (0, 2.5, True):
        with pytest.raises(ValueError):
            suggest_level(5.0, bad_level)
    with pytest.raises(ValueError):
        suggest_level(float("nan"), 8)


def test_npy_metrics(tmp_path):
    rng = np.random.default_rng(1)
    arrays = [rng.exponential(size=(10, 3, 4)).astype(np.float32), np.zeros(50),
              rng.normal(size=200)]
    paths = []
    for index, array in enumerate(arrays):
        paths.append(tmp_path / f"act{index}.npy")
        np.save(paths[-1], array)
    results = npy_metrics(paths)
    assert [r["path"] for r in results] == [str(p) for p in paths]
    for result, array in zip(results, arrays, strict=True):
        counts, _ = np.histogram(array, 5)
        assert result["counts"] == counts.tolist()
        assert result["metric"] == al_metric(counts)["metric"]
    assert results[1]["metric"] == pytest.approx(41.4375, abs=1e-12)  # all zeros: one bin
