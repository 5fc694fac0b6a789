"""Thresholds from data (threshold_init.py), checked against numpy.percentile on the
materialized values, recomputed independently layer by layer."""
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import models
from threshold_init import MIN_THRESHOLD, data_thresholds_, exact_percentile
from utils import parse_init_threshold


def passes_of(chunks):
    return lambda: iter(chunks)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("percentile", [0.5, 50.0, 99.0, 99.9, 100.0])
def test_exact_percentile_is_numpys_linear_percentile(seed, percentile):
    generator = torch.Generator().manual_seed(seed)
    n = int(torch.randint(1, 5000, (1,), generator=generator))
    values = torch.rand(n, generator=generator, dtype=torch.float64) ** 3 * 10
    if seed % 2:  # many exact duplicates and values packed into one bucket
        values[: n // 2] = 1.0 + torch.arange(n // 2, dtype=torch.float64) * 1e-12
    values[: n // 5] = values[-1]  # ties at one value
    chunks = list(values[torch.randperm(n, generator=generator)].split(97))
    value, count = exact_percentile(passes_of(chunks), percentile)
    expected = float(np.percentile(values.numpy(), percentile))
    assert count == n
    # exact: the same two order statistics and the same interpolation formula; the formula's
    # float rounding may differ from numpy's by an ulp or two
    assert value == pytest.approx(expected, rel=1e-12, abs=0)


def test_exact_percentile_of_nothing():
    assert exact_percentile(passes_of([torch.zeros(0, dtype=torch.float64)]), 50.0) == (None, 0)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = torch.relu(self.conv1(x))
        h = nn.functional.relu6(self.conv2(h) * 3 + h)
        return self.fc(h.mean((2, 3)))


def recompute(model, x, percentile):
    """Layer by layer: set the earlier thresholds, materialize this layer's input, ask numpy."""
    thresholds = []
    for _, layer in models.qcfs_layers(model):
        seen = []
        handle = layer.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach()))
        with torch.no_grad():
            model(x)
        handle.remove()
        values = seen[0].flatten()
        values = values[values > 0].numpy()
        threshold = max(float(np.percentile(values, percentile)), MIN_THRESHOLD)
        if layer.relu6:
            threshold = min(threshold, 6.0)
        layer.threshold.data.fill_(threshold)
        thresholds.append(threshold)
    return thresholds


@pytest.mark.parametrize("percentile", [50.0, 99.0, 100.0])
def test_thresholds_match_an_independent_sequential_recomputation(percentile):
    torch.manual_seed(0)
    model = models.qcfsify(Net(), [3, 2]).double().eval()
    x = torch.randn(12, 3, 6, 6, dtype=torch.float64) * 3
    loader = DataLoader(TensorDataset(x, torch.zeros(12, dtype=torch.long)), batch_size=5)
    chosen = data_thresholds_(model, loader, percentile)
    again = models.qcfsify(Net(), [3, 2]).double().eval()
    again.load_state_dict(model.state_dict())
    expected = recompute(again, x, percentile)
    got = [threshold for _, threshold, _ in chosen]
    assert got == pytest.approx(expected, rel=1e-6)
    assert [name for name, _, _ in chosen] == ["relu", "relu6"]
    assert chosen[0][2] == int((model.conv1(x) > 0).sum())
    # the thresholds differ from the constant start, and the second layer saw quantized input
    assert got[0] != 4.0 and model.training is False


def test_relu6_caps_and_an_inactive_layer_gets_the_floor():
    relu_net = nn.Sequential(nn.Conv2d(1, 1, 1), nn.ReLU6(), nn.Conv2d(1, 1, 1), nn.ReLU())
    with torch.no_grad():
        relu_net[0].weight.fill_(100.0), relu_net[0].bias.zero_()
        relu_net[2].weight.fill_(-1.0), relu_net[2].bias.zero_()
    model = models.qcfsify(relu_net, [2, 2]).double()
    x = torch.rand(4, 1, 3, 3, dtype=torch.float64) + 0.5
    loader = DataLoader(TensorDataset(x, torch.zeros(4)), batch_size=2)
    chosen = data_thresholds_(model, loader, 99.0)
    assert [(t, n) for _, t, n in chosen] == [(6.0, 36), (MIN_THRESHOLD, 0)]


@pytest.mark.parametrize("text, expected", [("auto", ("auto", 98.0)), ("auto:99.9", ("auto", 99.9)),
                                            ("auto:100", ("auto", 100.0)), ("2.5", 2.5)])
def test_parse_init_threshold(text, expected):
    assert parse_init_threshold(text) == expected


@pytest.mark.parametrize("text", ["auto:0", "auto:101", "auto:x", "0", "-1", "nan", "inf", "x"])
def test_parse_init_threshold_refuses(text):
    with pytest.raises(ValueError) as error:
        parse_init_threshold(text)
    assert "\n" not in str(error.value) and repr(text) in str(error.value)
