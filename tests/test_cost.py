"""Cost accounting (models/reach.py, cost_meter.py, snn_cost.py), the conventional QCFS
baseline (models/baseline.py, baseline_report.py) and the --report / --baseline options of
main_test.py."""
import csv
import json

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import main_test
import models
import snn_cost
from baseline_report import first_reaching
from conftest import run_script
from cost_meter import CostMeter
from models.timing import latency_steps, layer_fan_ins, teff
from helpers import ann_levels, live_model, multi_segment_snn
from models import QCFS, convert_to_snn
from models.baseline import IFNeuron, convert_to_if, if_step_
from models.resnet import ResidualAdd
from models.reach import dense_macs, spike_reach
from snn_cost import energy_pj


def measure(ann, x, sim="step", chunked=False):
    """Run the converted ``ann`` on ``x`` under a CostMeter; returns (meter, report)."""
    ann = ann.double().eval()
    if chunked:  # counted across chunks joined between segments
        snn = multi_segment_snn(ann, x.double(), sim=sim)
    else:
        snn = convert_to_snn(ann, **({"sim": sim} if sim != "step" else {}))
    meter = CostMeter(snn)
    _, stats = snn.forward_with_stats(x.double(), keep_counts=True)
    meter.add(x.double(), stats)
    timing = {"T_eff": 0.0, "T_eff_reference": None, "latency_steps": 0,
              "latency_pipelined_steps": 0, "mean_level": 0.0}
    return meter, snn_cost.build_report(meter, timing)


def spiking_input(level=4):
    # threshold == level: spike amplitude 1, so an integer input k in 0..level is exactly k
    # spikes of the first spiking layer (QCFS: clip(floor(k + 1/2), 0, L) = k).
    return QCFS(level=level, init_threshold=float(level))


def test_conv_counts_hand_set_spikes_padded_strided():
    conv = nn.Conv2d(2, 3, 3, stride=2, padding=1)
    counts = torch.zeros(1, 2, 5, 5)
    counts[0, 0, 0, 0] = 1  # corner
    counts[0, 1, 1, 1] = 2  # two spikes, inside
    counts[0, 0, 2, 3] = 1
    meter, report = measure(nn.Sequential(spiking_input(), conv), counts)
    # Along one axis of 5 with k=3, s=2, p=1 the outputs read rows {0,1}, {1,2,3}, {3,4}:
    # row i is reached by [1, 2, 1, 2, 1][i] outputs; each output position has 3 channels.
    # (0,0): 1*1*3 = 3; (1,1): 2 spikes * 2*2*3 = 24; (2,3): 1*2*3 = 6.
    assert meter.weighted["1"].operations == 33
    # independent: convolve the spike map with an all-ones kernel, times out_channels
    ones = F.conv2d(counts.double(), torch.ones(1, 2, 3, 3, dtype=torch.float64), stride=2,
                    padding=1)
    assert int(ones.sum()) * 3 == 33
    # ANN MACs of the conv on a dense 2x5x5 input: (1+2+1+2+1)^2 taps * 2 in * 3 out
    assert meter.weighted["1"].ann_macs == 7 * 7 * 2 * 3
    row = [r for r in report["rows"] if r["kind"] == "spiking"][0]
    assert row["spikes_per_image"] == 4 and row["accumulates_per_image"] == 33
    assert row["firing_rate"] == 4 / (2 * 5 * 5 * 4)


def test_average_pool_is_folded_into_the_conv():
    # 4x4 spikes -> 2x2 average pool -> 3x3 conv, padding 1, 2 output channels: on a 2x2 map
    # every output position sees every pooled cell, so each spike costs 4 positions * 2.
    counts = torch.tensor([[[[1, 0, 0, 3], [0, 2, 0, 0], [0, 0, 0, 0], [4, 0, 0, 1]]]]).float()
    ann = nn.Sequential(spiking_input(), nn.AvgPool2d(2), nn.Conv2d(1, 2, 3, padding=1))
    meter, _ = measure(ann, counts)
    assert meter.weighted["2"].operations == 11 * 4 * 2
    assert meter.weighted["2"].ann_macs == 4 * 4 * 2  # ANN: conv on the pooled 2x2 map


def test_linear_counts_hand_set_spikes():
    counts = torch.tensor([[3.0, 0.0, 1.0, 4.0, 0.0, 2.0]])
    meter, _ = measure(nn.Sequential(spiking_input(), nn.Linear(6, 5)), counts)
    assert meter.weighted["1"].operations == 10 * 5
    assert meter.weighted["1"].ann_macs == 6 * 5
    # through Flatten: a (2, 2, 2) map, 8 features
    counts = torch.arange(8.0).remainder(5).reshape(1, 2, 2, 2)
    meter, _ = measure(nn.Sequential(spiking_input(), nn.Flatten(), nn.Linear(8, 3)), counts)
    assert meter.weighted["2"].operations == int(counts.sum()) * 3


def test_analog_first_layer_macs_exclude_padding():
    meter, report = measure(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), QCFS(2, 1.0)),
                            torch.randn(2, 3, 4, 4))
    # per axis of 4 with k=3, p=1: outputs touch 2, 3, 3, 2 real rows -> 10 * 10 taps
    assert meter.weighted["0"].source is None
    assert meter.weighted["0"].operations == 2 * 3 * 4 * 10 * 10  # 2 images
    assert report["rows"][0]["kind"] == "analog"
    assert report["rows"][0]["macs_per_image"] == 1200  # dense count with padding: 1728


class TinyBlock(nn.Module):
    """spikes -> 1x1 conv on the branch, identity shortcut, residual addition, neuron."""

    def __init__(self):
        super().__init__()
        self.act0 = spiking_input()
        self.conv = nn.Conv2d(1, 1, 1, bias=False)
        self.add = ResidualAdd()
        self.act = QCFS(level=2, init_threshold=8.0)

    def forward(self, x):
        spikes = self.act0(x)
        return self.act(self.add(self.conv(spikes), spikes))


def test_identity_shortcut_costs_one_addition_per_spike():
    counts = torch.tensor([[[[1.0, 4.0], [0.0, 2.0]]]])
    meter, report = measure(TinyBlock(), counts)
    assert meter.additions == {"act0": 7}
    assert meter.weighted["conv"].operations == 7  # 1x1 conv, one output channel
    row = report["rows"][0]
    assert row["layer"] == "act0" and row["shortcut_additions_per_image"] == 7


class PooledSpikes(nn.Module):
    """spikes -> 2x2 max pool -> 1x1 conv with 3 outputs."""

    def __init__(self):
        super().__init__()
        self.act0 = spiking_input()
        self.pool = nn.MaxPool2d(2)
        self.conv = nn.Conv2d(1, 3, 1)

    def forward(self, x):
        return self.conv(self.pool(self.act0(x)))


def test_spikes_through_a_max_pool_are_counted_after_it():
    counts = torch.tensor([[[[1.0, 4.0, 0.0, 0.0], [0.0, 2.0, 0.0, 1.0],
                             [3.0, 3.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]]])
    meter, report = measure(PooledSpikes(), counts)
    # the pool emits the burst of the largest count per window: 4, 1, 3, 0 -> 8 spikes,
    # each reaching the 3 outputs of the 1x1 conv at its position
    assert meter.pooled["pool"].spikes == 8
    assert meter.weighted["conv"].operations == 8 * 3
    assert meter.weighted["conv"].source == "pool"
    rows = {row["layer"]: row for row in report["rows"]}
    assert rows["act0"]["spikes_per_image"] == 14 and rows["act0"]["accumulates_per_image"] == 0
    assert rows["pool"]["kind"] == "maxpool" and rows["pool"]["accumulates_per_image"] == 24
    assert report["totals"]["spikes_per_image"] == 14  # pooled spikes are not emitted twice


class ConcatSources(nn.Module):
    """Two spiking layers (4 and 2 steps) concatenated along channels, then a 1x1 conv."""

    def __init__(self):
        super().__init__()
        self.a, self.b = spiking_input(4), spiking_input(2)
        self.conv = nn.Conv2d(2, 3, 1)

    def forward(self, x):
        return self.conv(torch.cat([self.a(x[:, :1]), self.b(x[:, 1:])], 1))


def test_concatenated_sources_each_cause_their_own_accumulates():
    counts = torch.tensor([[[[1.0, 4.0], [0.0, 3.0]], [[2.0, 0.0], [1.0, 1.0]]]])
    meter, report = measure(ConcatSources(), counts)
    assert meter.weighted["conv"].operations == (8 + 4) * 3
    rows = {row["layer"]: row for row in report["rows"]}
    assert rows["a"]["accumulates_per_image"] == 8 * 3
    assert rows["b"]["accumulates_per_image"] == 4 * 3
    # the conv's ANN MACs (2 inputs x 3 outputs x 4 positions) split by input share
    assert rows["a"]["ann_macs_per_image"] == rows["b"]["ann_macs_per_image"] == 12


class PaddingOnlyConv(nn.Module):
    """A 1x1 spiking map padded to 3x3 and resampled back to 1x1 by nearest neighbour keeps
    the padding's corner alone: the convolution after it receives no element of ``a``."""

    def __init__(self):
        super().__init__()
        self.a = spiking_input()
        self.conv = nn.Conv2d(2, 3, 1)

    def forward(self, x):
        padded = F.pad(self.a(x), (1, 1, 1, 1))
        return self.conv(F.interpolate(padded, size=(1, 1), mode="nearest"))


def test_a_layer_fed_only_by_padding_costs_no_accumulates_and_keeps_its_ann_macs():
    counts = torch.tensor([[[[3.0]], [[2.0]]]])
    ann = PaddingOnlyConv().double().eval()
    snn = convert_to_snn(ann)
    with torch.no_grad():
        # the convolution sees zeros: the ANN and the spiking network output its bias
        for net in (ann, snn):
            torch.testing.assert_close(net(counts.double()), ann.conv.bias.view(1, 3, 1, 1),
                                       rtol=0, atol=0)
    meter, report = measure(PaddingOnlyConv(), counts)
    assert meter.weighted["conv"].operations == 0  # no spike reaches it
    rows = {row["layer"]: row for row in report["rows"]}
    assert rows["a"]["spikes_per_image"] == 5 and rows["a"]["accumulates_per_image"] == 0
    # 2 inputs x 3 outputs x 1 position, all of it on a, the conv's only source
    assert rows["a"]["ann_macs_per_image"] == 6 and report["totals"]["ann_macs_per_image"] == 6


class SumToConv(nn.Module):
    """Two spiking layers added (3 and 1 steps), then a convolution: fed densely."""

    def __init__(self):
        super().__init__()
        self.a, self.b = spiking_input(3), spiking_input(1)
        self.conv = nn.Conv2d(1, 2, 3, padding=1)

    def forward(self, x):
        return self.conv(self.a(x) + self.b(x))


def test_a_sum_of_trains_costs_dense_macs_on_every_step():
    counts = torch.tensor([[[[1.0, 0.0, 2.0], [0.0, 1.0, 0.0], [3.0, 0.0, 0.0]]]])
    meter, report = measure(SumToConv(), counts)
    dense = meter.weighted["conv"]
    # 3x3 conv, padding 1, on 3x3: (2+3+2)^2 taps, 1 in, 2 out; the sum has a's 3 steps
    assert dense.ann_macs == 49 * 2 and dense.operations == 3 * 49 * 2
    assert dense.source is None and not dense.analog
    row = {row["layer"]: row for row in report["rows"]}["conv"]
    assert row["kind"] == "dense" and row["num_steps_in"] == 3
    # every spike reaching the sum costs one addition: a (L=3) emits 7, b (L=1) 4
    assert meter.additions == {"a": 7, "b": 4}


def test_report_of_a_torchvision_network_is_the_same_on_both_paths():
    # max pools of bursts and concatenations of fire modules, no linear layer
    model = models.create_model("tv:squeezenet1_1", num_classes=10, levels=[2, 3] * 13)
    from helpers import calibrate_thresholds_, randomize_
    randomize_(model, torch.Generator().manual_seed(0))
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    calibrate_thresholds_(model.double(), x)
    step_meter, step = measure(model, x)
    _, counts = measure(model, x, sim="counts")
    assert step["rows"] == counts["rows"]
    kinds = {row["kind"] for row in step["rows"]}
    assert kinds == {"analog", "spiking", "maxpool"}
    assert all(w.source is not None for name, w in step_meter.weighted.items()
               if name != "features.0")
    assert sum(row["accumulates_per_image"] for row in step["rows"]
               if row["kind"] == "maxpool") > 0


@pytest.mark.parametrize("pool, conv, shape", [
    (nn.AvgPool2d(3, 2, 1), nn.Conv2d(4, 6, 3, stride=2, padding=1), (4, 11, 9)),  # overlapping
    (nn.AdaptiveAvgPool2d(3), nn.Conv2d(4, 6, 2, padding=1, groups=2), (4, 7, 8)),
    (nn.AvgPool2d(2, ceil_mode=True), nn.Conv2d(4, 6, 3, dilation=2, padding=2), (4, 9, 9)),
])
def test_reach_matches_brute_force(pool, conv, shape):
    # Brute force: one one-hot image per spatial position through the pool and an all-ones
    # 1-channel copy of the conv; a position reaches every output that comes out > 0.
    height, width = shape[1:]
    x = torch.eye(height * width, dtype=torch.float64).reshape(-1, 1, height, width)
    probe = nn.Conv2d(1, 1, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                      bias=False).double()
    nn.init.ones_(probe.weight)
    reached = (probe(pool(x)) > 0).flatten(1).sum(1).reshape(height, width)
    expected = reached * (conv.out_channels // conv.groups)
    reach = spike_reach(conv, (pool,), shape)
    assert reach.shape == shape
    assert torch.equal(reach, expected.expand(shape))


def test_energy_arithmetic_hand_example():
    assert energy_pj(accumulates=100, macs=10) == pytest.approx(100 * 0.9 + 10 * 4.6)
    assert energy_pj(100, 10, 50, e_ac=2.0, e_mac=10.0, e_op=0.5) == \
        pytest.approx(200 + 100 + 25)
    counts = torch.tensor([[3.0, 0.0, 1.0, 4.0, 0.0, 2.0]])
    ann = nn.Sequential(nn.Linear(6, 6), spiking_input(), nn.Linear(6, 5))
    snn = convert_to_snn(ann.double())
    meter = CostMeter(snn)
    meter.add(counts.double(), snn.forward_with_stats(counts.double(), keep_counts=True)[1])
    timing = {"T_eff": 1.0, "T_eff_reference": None, "latency_steps": 1,
              "latency_pipelined_steps": 1, "mean_level": 4.0}
    report = snn_cost.build_report(meter, timing, e_ac=2.0, e_mac=10.0, e_op=0.5)
    totals = report["totals"]
    accumulates, macs = totals["accumulates_per_image"], totals["macs_per_image"]
    assert macs == 36 and totals["ann_macs_per_image"] == 36 + 30
    # the 6 neurons of the spiking layer: T_in = 1 (fed by the analog layer), L = 4, so
    # 2*1 + 2*(4 - 1) + 4 = 12 operations each, 72 in all, at 0.5 pJ
    assert totals["neuron_operations_per_image"] == 72
    assert totals["snn_synaptic_energy_pj_per_image"] == pytest.approx(
        2.0 * accumulates + 10.0 * 36)
    assert totals["snn_energy_pj_per_image"] == pytest.approx(
        2.0 * accumulates + 10.0 * 36 + 0.5 * 72)
    assert totals["ann_energy_pj_per_image"] == pytest.approx(10.0 * 66)
    assert totals["energy_ratio_ann_over_snn"] == pytest.approx(
        660 / (2.0 * accumulates + 360 + 36))
    assert totals["energy_ratio_ann_over_snn_synaptic_only"] == pytest.approx(
        660 / (2.0 * accumulates + 360))


def test_neuron_operations_of_one_pascal_neuron_by_hand():
    """2 per accumulate step, 2 per correction step, 1 per emit step."""
    from models.spiking import LayerStats, neuron_operations
    # T_in = 3, L = 5: accumulate 3 steps (6), correct max(3, 5) - 1 = 4 steps (8), emit 5
    assert neuron_operations(3, 5) == 6 + 8 + 5 == 19
    # T_in = 8, L = 2: accumulate 8 (16), correct 7 (14), emit 2
    assert neuron_operations(8, 2) == 16 + 14 + 2 == 32
    assert neuron_operations(1, 1) == 2 + 0 + 1
    for level in range(1, 17):  # T_eff's (5L - 2) is the case T_in = L
        assert neuron_operations(level, level) == 5 * level - 2
    # a layer's statistics count them for every neuron of every image, next to the steps run
    stats = LayerStats(name="x", num_steps_in=3, level=5, neurons=7, batch=2,
                       emitted_spikes=0, excitatory_corrections=None,
                       inhibitory_corrections=None, correct_steps=4)
    assert stats.neuron_operations == 7 * 2 * 19
    assert stats.neuron_updates == 7 * 2 * (3 + 4 + 5)
    # and a converted layer reports them: one neuron fed by the image (T_in = 1), L = 4
    neuron_net = nn.Sequential(nn.Linear(2, 1), spiking_input(), nn.Linear(1, 1))
    snn = convert_to_snn(neuron_net.double())
    _, layer_stats = snn.forward_with_stats(torch.ones(1, 2, dtype=torch.float64))
    assert (layer_stats[0].num_steps_in, layer_stats[0].level) == (1, 4)
    assert layer_stats[0].neuron_operations == 2 * 1 + 2 * 3 + 4


def test_sequential_and_pipelined_latency_of_a_three_layer_network_by_hand():
    """Levels 2, 4, 3 in a chain. Sequential: layer 1 (T_in = 1): 1 + max(1, 2) - 1 + 2 = 4;
    layer 2 (T_in = 2): 2 + 4 - 1 + 4 = 9; layer 3 (T_in = 4): 4 + 4 - 1 + 3 = 10; 23 in all.
    Pipelined: each layer accumulates while the one before emits, saving L1 + L2 = 6: 17."""
    from models.timing import pipelined_latency_steps
    model = nn.Sequential(nn.Linear(3, 4), models.QCFS(level=2), nn.Linear(4, 4),
                          models.QCFS(level=4), nn.Linear(4, 8), models.QCFS(level=3),
                          nn.Linear(8, 2))
    total, per_layer = latency_steps(model)
    assert per_layer == [(1, 4), (2, 9), (4, 10)] and total == 23
    assert pipelined_latency_steps(model) == 23 - 2 - 4 == 17


def ones_conv_accumulates(conv, counts):
    """Independent count: all-ones kernel over the spike-count map, times outputs per group."""
    groups = conv.groups
    kernel = torch.ones(groups, conv.in_channels // groups, *conv.kernel_size,
                        dtype=torch.float64)
    reached = F.conv2d(counts.double(), kernel, stride=conv.stride, padding=conv.padding,
                       dilation=conv.dilation, groups=groups)
    return int(reached.sum()) * (conv.out_channels // groups)


def independent_counts(model, x):
    """ACs per conv/linear and identity-shortcut additions computed on the ANN side from the
    QCFS levels (the spike counts PASCAL emits), by tensor identity, not by the meter's
    hooks; 2x2 average pools are applied as sum pools. Enough for vgg_small and ResNets."""
    _, levels = ann_levels(model, x)
    produced = {}  # id of a tensor -> spike-count map it carries
    handles = []
    for name, module in models.qcfs_layers(model):
        handles.append(module.register_forward_hook(
            lambda m, a, out, name=name: produced.__setitem__(id(out), (out, levels[name]))))
    for module in model.modules():
        if isinstance(module, nn.AvgPool2d):
            def pooled(m, args, out):
                if id(args[0]) in produced:
                    counts = produced[id(args[0])][1].double()
                    produced[id(out)] = (out, F.avg_pool2d(counts, 2) * 4)
            handles.append(module.register_forward_hook(pooled))
    accumulates, additions = {}, 0
    names = {module: name for name, module in model.named_modules()}

    def weighted(module, args):
        entry = produced.get(id(args[0]))
        if entry is not None and isinstance(module, nn.Conv2d):
            accumulates[names[module]] = ones_conv_accumulates(module, entry[1])

    def add(module, args):
        nonlocal additions
        entry = produced.get(id(args[1]))
        if entry is not None:
            additions += int(entry[1].sum())

    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_pre_hook(weighted))
        elif isinstance(module, ResidualAdd):
            handles.append(module.register_forward_pre_hook(add))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    last_name = list(levels)[-1]
    fc_name, fc = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    # the last spiking layer feeds the output layer through a global average pool + flatten
    # (vgg_small) or directly (both reach every output feature once per spike)
    accumulates[fc_name] = int(levels[last_name].sum()) * fc.out_features
    return accumulates, additions


@pytest.mark.parametrize("arch, levels, size, chunked", [
    ("vgg_small", [4, 2, 8, 1, 3], 32, False),
    ("vgg_small", [4, 2, 8, 1, 3], 32, True),  # chunked segments: tags joined between them
    ("resnet18", [2, 1, 2, 1, 3, 1, 2, 2, 1, 2, 1, 1, 2, 1, 2, 1, 2], 8, False),
])
def test_meter_matches_independent_count_on_real_architectures(arch, levels, size, chunked):
    model, x = live_model(arch, levels, images=4 if chunked else 2, size=size)
    expected, additions = independent_counts(model, x)
    meter, _ = measure(model, x, chunked=chunked)
    measured = {name: w.operations for name, w in meter.weighted.items() if w.source}
    if arch == "vgg_small":  # classifier.4 / .7 are fed by classifier neurons, not pools
        expected = {k: v for k, v in expected.items() if k in measured}
    for name, value in expected.items():
        assert measured[name] == value, name
    assert sum(meter.additions.values()) == additions
    if arch == "resnet18":
        assert additions > 0  # identity shortcuts were exercised


def test_counts_simulation_gives_the_same_report():
    model, x = live_model("vgg_small", [4, 2, 8, 1, 3], images=2)
    step_meter, step = measure(model, x)
    counts_meter, counts = measure(model, x, sim="counts")
    for a, b in zip(step["rows"], counts["rows"], strict=True):
        for key in ("spikes_per_image", "accumulates_per_image", "macs_per_image",
                    "neuron_updates_per_image", "ann_macs_per_image"):
            assert a[key] == b[key], (a["layer"], key)


def test_if_neuron_hand_case():
    # threshold 1, constant input 0.3, v starts at 0.5:
    # v = 0.8, 1.1 -> spike (0.1), 0.4, 0.7, 1.0 -> spike (0.0): 2 spikes in 5 steps,
    # floor(5 * 0.3 + 1/2) = 2, as QCFS with T = 5 levels would output
    neuron = IFNeuron(torch.tensor(1.0, dtype=torch.float64))
    x = torch.tensor([0.3], dtype=torch.float64)
    spikes = [float(neuron(x)) for _ in range(5)]
    assert spikes == [0.0, 1.0, 0.0, 0.0, 1.0]
    neuron.reset()
    assert float(neuron(x)) == 0.0  # state starts again from threshold / 2
    v = torch.tensor([0.9, 0.2])
    out = if_step_(v, torch.tensor([0.2, -0.5]), torch.tensor(1.0))
    assert out.tolist() == [1.0, 0.0]
    assert v.tolist() == pytest.approx([0.1, -0.3])  # reset by subtraction, no floor at 0


def test_if_network_is_the_ann_with_if_neurons_and_resets_per_batch():
    model, x = live_model("vgg_small", 2, images=3, dtype=torch.float32)
    if_net = convert_to_if(model)
    assert len(if_net.neurons()) == len(models.qcfs_layers(model))
    assert not any(isinstance(m, QCFS) for m in if_net.modules())
    assert all(isinstance(m, QCFS) for _, m in models.qcfs_layers(model))  # ANN untouched
    first = if_net(x, 4)
    again = if_net(x, 4)  # state reset between calls: same result
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    means = [mean.clone() for _, mean in if_net.running_outputs(x, 4)]
    torch.testing.assert_close(means[-1], first, rtol=0, atol=0)
    with pytest.raises(ValueError, match="threshold"):
        bad = nn.Sequential(nn.Linear(2, 2), QCFS(2, 1.0))
        bad[1].threshold.data.fill_(-1.0)
        convert_to_if(bad)


def test_if_network_residual_block_by_hand():
    # TinyBlock as an IF network, against a hand-written loop: input repeated every step,
    # branch and identity shortcut added per step, mean of the outputs over the steps.
    block = TinyBlock().double()
    with torch.no_grad():
        block.conv.weight.fill_(0.5)
    x = torch.tensor([[[[1.3, 3.1], [0.2, 2.6]]]], dtype=torch.float64)
    v0, v1, total = torch.full_like(x, 2.0), torch.full_like(x, 4.0), torch.zeros_like(x)
    for _ in range(6):
        spikes = if_step_(v0, x, torch.tensor(4.0, dtype=torch.float64))
        total += if_step_(v1, 0.5 * spikes + spikes, torch.tensor(8.0, dtype=torch.float64))
    torch.testing.assert_close(convert_to_if(block)(x, 6), total / 6, rtol=0, atol=1e-12)


def test_first_reaching():
    accuracy = {1: 50.0, 2: 80.0, 4: 89.95, 8: 90.2}
    assert first_reaching(accuracy, 90.0) == 4
    assert first_reaching(accuracy, 95.0) is None


def test_snn_cost_still_exports_the_meter_and_the_reach():
    assert snn_cost.CostMeter is CostMeter
    assert snn_cost.spike_reach is spike_reach
    assert snn_cost.dense_macs is dense_macs


@pytest.mark.slow
def test_report_and_baseline_on_trained_digits(digits_run, tmp_path):
    folder, run_id = digits_run
    files = {key: tmp_path / name for key, name in (
        ("json", "cost.json"), ("csv", "cost.csv"), ("plot", "cost.png"),
        ("baseline", "baseline.png"), ("output", "test.json"))}
    assert run_script(main_test, [
        "-data", "digits", "--id", run_id, "--checkpoint-dir", str(folder), "--dtype",
        "float64", "-j", "0", "--no-progress", "--num-images", "120", "-b", "120",
        "--report", "--baseline", "qcfs",
        "-T", "1,2,4,8,16,32,64", "--e-ac", "2", "--e-mac", "10",
        "--report-json", str(files["json"]), "--report-csv", str(files["csv"]),
        "--report-plot", str(files["plot"]), "--baseline-plot", str(files["baseline"]),
        "--output", str(files["output"])]) == 0
    result = json.loads(files["output"].read_text())
    # PASCAL is exact: float64 SNN accuracy == ANN accuracy. The first 120 test images keep
    # the 64-step baseline inside the time budget (on all 360 the margins are similar).
    assert result["num_images"] == 120
    assert result["snn_top1"] == result["ann_top1"] and result["agreement"] == 100.0
    baseline = result["baseline"]
    top1 = dict(zip(baseline["timesteps"], baseline["top1"], strict=True))
    assert baseline["timesteps"] == [1, 2, 4, 8, 16, 32, 64]
    assert abs(top1[64] - result["ann_top1"]) <= 1.0, top1
    assert top1[1] < top1[64], top1
    assert baseline["pascal"]["top1"] == result["snn_top1"]

    report = json.loads(files["json"].read_text())
    rows = report["rows"]
    assert [r["layer"] for r in rows if r["kind"] == "spiking"] == \
        ["layer1.2", "layer2.2", "layer3.2", "classifier.2", "classifier.5"]
    # the first conv sees the 32x32 image once: 3 -> 16 channels, 3x3 taps with padding 1,
    # the padding taps not counted: along each axis 30 outputs take 3 taps and the 2 border
    # outputs 2, 30 * 3 + 2 * 2 = 94 taps
    assert rows[0]["kind"] == "analog" and rows[0]["macs_per_image"] == 3 * 16 * 94 * 94
    totals = report["totals"]
    assert totals["spikes_per_image"] == pytest.approx(sum(result["spikes_per_image"].values()))
    assert report["energy_pj"] == {"accumulate": 2.0, "mac": 10.0, "neuron_operation": 0.9}
    assert totals["snn_energy_pj_per_image"] == pytest.approx(
        2.0 * (totals["accumulates_per_image"] + totals["shortcut_additions_per_image"])
        + 10.0 * totals["macs_per_image"] + 0.9 * totals["neuron_operations_per_image"])
    assert totals["ann_energy_pj_per_image"] == pytest.approx(10.0 * totals["ann_macs_per_image"])
    levels = [4, 2, 8, 4, 3]
    model = models.create_model("vgg_small", num_classes=10, levels=levels)
    assert report["timing"]["T_eff"] == pytest.approx(teff(levels, layer_fan_ins(model))[0])
    assert report["timing"]["latency_steps"] == latency_steps(model)[0]
    for row in rows[1:]:  # simulated steps: T_in + max(T_in, L) - 1 + L per neuron
        t_in, level = row["num_steps_in"], row["level"]
        steps = t_in + max(t_in, level) - 1 + level
        assert row["neuron_updates_per_image"] == row["neurons"] * steps
        assert row["neuron_operations_per_image"] == row["neurons"] * (
            2 * t_in + 2 * (max(t_in, level) - 1) + level)
        assert row["model_updates_per_image"] == row["neurons"] * (5 * level - 2)

    with open(files["csv"], newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [r["layer"] for r in table] == [r["layer"] for r in rows] + ["total"]
    assert float(table[-1]["accumulates_per_image"]) == pytest.approx(
        totals["accumulates_per_image"])
    for key in ("plot", "baseline"):
        with Image.open(files[key]) as image:
            image.verify()
        with Image.open(files[key]) as image:
            assert image.format == "PNG" and image.size[0] > 300


@pytest.mark.slow
def test_report_and_baseline_refuse_the_wrong_mode(digits_run, capsys):
    folder, run_id = digits_run
    base = ["-data", "digits", "--id", run_id, "--checkpoint-dir", str(folder), "-j", "0",
            "--no-progress"]
    for argv, fragment in ((["--report", "--mode", "ann"], "--report"),
                           (["--baseline", "qcfs", "--mode", "snn"], "--baseline"),
                           (["--baseline", "qcfs", "-T", "0,4"], "--timesteps"),
                           (["--report", "--e-ac", "-1"], "--e-ac")):
        assert run_script(main_test, base + argv) == 2, argv
        err = capsys.readouterr().err
        assert fragment in err and "Traceback" not in err


# --- every accepted model is counted ----------------------------------------------------------

class ShuffleThenConv(nn.Module):
    """A channel shuffle as shufflenet writes it (view, transpose, contiguous, view), then a
    1x1 conv: each spike reaches the conv's 5 output channels once."""

    def __init__(self):
        super().__init__()
        self.a = spiking_input()
        self.conv = nn.Conv2d(4, 5, 1)

    def forward(self, x):
        y = self.a(x)
        n, c, h, w = y.size()
        y = y.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
        return self.conv(y)


class PoolThenLinear(nn.Module):
    def __init__(self, keyword):
        super().__init__()
        self.keyword = keyword
        self.a, self.fc = spiking_input(), nn.Linear(4 * 2 * 2, 5)

    def forward(self, x):
        y = self.a(x)
        y = F.avg_pool2d(y, kernel_size=2) if self.keyword else F.avg_pool2d(y, 2)
        return self.fc(y.flatten(1))


class LinearOn3D(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.fc = spiking_input(), nn.Linear(4, 5)

    def forward(self, x):
        return self.fc(self.a(x)).mean(1)


def hand_counts(shape, seed=0):
    return torch.randint(0, 5, shape, generator=torch.Generator().manual_seed(seed)).double()


@pytest.mark.parametrize("model, shape", [
    (ShuffleThenConv(), (2, 4, 3, 3)), (PoolThenLinear(keyword=True), (2, 4, 4, 4)),
    (PoolThenLinear(keyword=False), (2, 4, 4, 4)), (LinearOn3D(), (2, 3, 4))],
    ids=["channel shuffle", "avg_pool2d(kernel_size=2)", "avg_pool2d(2)", "Linear on 3-D"])
def test_every_spike_reaches_the_five_outputs_once(model, shape):
    counts = hand_counts(shape)
    meter, report = measure(model, counts)
    spiking = [row for row in report["rows"] if row["kind"] == "spiking"]
    assert [row["kind"] for row in report["rows"]] == ["spiking"]  # no dense rows
    # each spike reaches 5 outputs: the 1x1 conv's channels or the linear layer's features
    assert spiking[0]["accumulates_per_image"] == 5 * float(counts.sum()) / shape[0]


def test_a_network_without_weighted_layers_is_reported():
    model = nn.Sequential(spiking_input(), nn.AvgPool2d(2), QCFS(2, 2.0), nn.Flatten())
    counts = hand_counts((3, 1, 4, 4))
    _, report = measure(model, counts)
    assert report["images"] == 3
    assert report["totals"]["spikes_per_image"] == pytest.approx(
        (float(counts.sum()) + float(ann_levels(model.double(), counts)[1]["2"].sum())) / 3)


def test_a_qcfs_module_forward_never_calls_is_refused():
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.spare, self.fc = spiking_input(), QCFS(2), nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.a(x))

    with pytest.raises(ValueError, match=r"^the QCFS module 'spare' is never called by "
                                         r"forward; remove it"):
        convert_to_snn(Unused().eval())


def test_pipelined_latency_waits_for_a_train_folded_into_an_addition():
    """a (L=2, from the image): 1 + 1 + 2 = 4 steps, emitting from step 2; b (L=4, fed by a):
    2 + 3 + 4 = 9 steps from step 2, complete at 11; a + b has a's 2 steps with b's train
    summed into its first step, which exists only once b is complete (11); c (L=3): 2 + 2 +
    3 = 7 steps: 18 pipelined. Sequentially: 4, 13, then 13 + 7 = 20."""
    from models.timing import pipelined_latency_steps

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.conv, self.fc = nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 2)
            self.a, self.b, self.c = QCFS(2), QCFS(4), QCFS(3)

        def forward(self, x):
            a = self.a(self.stem(x))
            return self.fc(self.c(a + self.b(self.conv(a))))

    assert latency_steps(Residual()) == (20, [(1, 4), (2, 9), (2, 7)])
    assert pipelined_latency_steps(Residual()) == 18
