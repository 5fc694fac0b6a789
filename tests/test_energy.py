"""The energy model (energy_model.py) and NeuroBench's metrics in the cost report: hand-computed
networks for every quantity, an independent binarized re-run for the synaptic operations, the
zero-skipping ANN's MACs against the ANN's own activations, and the --report options."""
import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import energy_model
import fuzz_models
import main_test
import snn_cost
from conftest import run_script
from cost_meter import CostMeter
from helpers import (assert_events_cover_zero_skip, assert_one_line_error,
                     calibrate_thresholds_, live_model)
from models import QCFS, convert_to_snn

TIMING = {"T_eff": 0.0, "T_eff_reference": None, "latency_steps": 0,
          "latency_pipelined_steps": 0, "mean_level": 0.0}


def spiking_input(level):
    # threshold == level: an integer input k in 0..level is exactly k spikes
    return QCFS(level=level, init_threshold=float(level))


def report_of(ann, x, sim="counts", **constants):
    snn = convert_to_snn(ann.double().eval(), sim=sim)
    meter = CostMeter(snn)
    _, stats = snn.forward_with_stats(x.double(), keep_counts=True)
    meter.add(x.double(), stats)
    return snn_cost.build_report(meter, TIMING, constants=constants), snn


def linear_net(level=4, outputs=2):
    """Spikes of a 3-neuron layer into a linear layer with ``outputs`` outputs."""
    linear = nn.Linear(3, outputs)
    with torch.no_grad():
        linear.weight.fill_(0.5)
    return nn.Sequential(spiking_input(level), linear)


COUNTS = torch.tensor([[2.0, 0.0, 1.0]])  # one image: 3 spikes, 2 of 3 neurons active


def test_activation_bits():
    assert [energy_model.activation_bits(level) for level in (1, 2, 3, 4, 7, 8, 15, 16)] == \
        [1, 2, 2, 3, 3, 4, 4, 5]


def test_hand_computed_counts_and_energies():
    report, _ = report_of(linear_net(), COUNTS)
    row = report["rows"][0]
    assert row["kind"] == "spiking" and row["layer"] == "0"
    # spikes 2 and 1 reach 2 outputs each: 6 events; the zero-skipping ANN multiplies the 2
    # nonzero inputs by 2 weights each: 4 MACs; dense: 3 x 2 = 6
    assert (row["accumulates_per_image"], row["zero_skip_macs_per_image"],
            row["ann_macs_per_image"]) == (6, 4, 6)
    assert (row["input_elements_per_image"], row["active_input_elements_per_image"],
            row["active_neurons_per_image"], row["weights_per_image"]) == (3, 2, 2, 6)
    assert row["events_per_zero_skip_mac"] == 6 / 4 and row["spikes_per_synapse"] == 6 / 6
    assert row["mean_count_when_active"] == 3 / 2  # E[q | q > 0]
    assert report["totals"]["mean_count_when_active"] == 3 / 2
    # L = 4: 3-bit activations. A MAC: 8x3-bit multiply 0.2 * 24/64 + 32-bit add 0.1
    mac = 0.2 * 24 / 64 + 0.1
    # SRAM: 20 pJ per 64 bits -> 2.5 pJ for an 8-bit weight, 0.9375 for a 3-bit activation,
    # 10 for a 32-bit potential or address word
    dense = 6 * mac + 6 * 2.5 + 3 * 0.9375 + 3 * 0.9375  # MACs, weights, reads, writes
    zero_skip = 4 * mac + 6 * 2.5 + 2 * 0.9375 + 2 * 0.9375
    # the neuron: T_in = 1, L = 4: 2 + 2 * 3 + 4 = 12 operations and 1 + 3 + 4 = 8 steps
    arithmetic = (6 + 3 * 12) * 0.1
    event_driven = arithmetic + 6 * (2.5 + 10 + 10) + 3 * 8 * (10 + 10) + 3 * (10 + 10)
    time_stepped = arithmetic + 6 * 2.5 + 3 * 4 * (20 / 64 + 20 / 64)  # weights, 1-bit maps
    for key, expected in (("qann_dense", dense), ("qann_zero_skip", zero_skip),
                          ("snn_event_driven", event_driven),
                          ("snn_time_stepped", time_stepped)):
        # sums of a few binary fractions and tenths: equal to float rounding
        assert row[f"{key}_pj_per_image"] == pytest.approx(expected, rel=1e-12), key
        assert report["totals"][f"{key}_pj_per_image"] == pytest.approx(expected, rel=1e-12)
    # break-even: events per zero-skipping MAC below which the synaptic work is cheaper
    assert row["break_even_events_per_mac_event_driven"] == pytest.approx(mac / 22.6, rel=1e-12)
    assert row["break_even_events_per_mac_time_stepped"] == pytest.approx(mac / 0.1, rel=1e-12)
    # the proxy is unchanged: 0.9 pJ per accumulate and per neuron operation
    assert row["snn_energy_pj_per_image"] == pytest.approx(0.9 * 6 + 0.9 * 36, rel=1e-12)
    assert row["ann_energy_pj_per_image"] == pytest.approx(4.6 * 6, rel=1e-12)


def test_memory_accesses_per_scenario_in_bits():
    # no arithmetic and 64 pJ per 64-bit access: the memory energy is the number of bits moved
    free = {"int8_mult_pj": 0.0, "int32_add_pj": 0.0, "sram_read_pj_per_64b": 64.0,
            "sram_write_pj_per_64b": 64.0}
    report, _ = report_of(linear_net(), COUNTS, **free)
    row = report["rows"][0]
    # event-driven: each of 6 events reads an 8-bit weight and reads and writes a 32-bit
    # potential; 3 neurons x 8 steps read and write a potential; 3 spikes written and read
    # as 32-bit address events
    assert row["snn_event_driven_pj_per_image"] == 6 * (8 + 32 + 32) + 24 * 64 + 3 * 64
    # time-stepped: 6 weights read once; 3 neurons x 4 emit steps, one bit written and read
    assert row["snn_time_stepped_pj_per_image"] == 6 * 8 + 12 * 2
    # quantized ANN: weights once, activations read (3 bits) and written once
    assert row["qann_dense_pj_per_image"] == 6 * 8 + 3 * 3 + 3 * 3
    assert row["qann_zero_skip_pj_per_image"] == 6 * 8 + 2 * 3 + 2 * 3
    model = report["energy_model"]["totals_pj_per_image"]
    assert model["snn_event_driven"]["arithmetic"] == 0.0
    assert model["snn_event_driven"]["memory"] == 2160
    # a finite reuse: max(stored, MACs / R) reads; R = 0.5 -> 12 weight reads of 6 MACs
    report, _ = report_of(linear_net(), COUNTS, ann_weight_reuse=0.5, **free)
    assert report["rows"][0]["qann_dense_pj_per_image"] == 12 * 8 + 3 * 3 + 3 * 3
    assert report["rows"][0]["qann_zero_skip_pj_per_image"] == 8 * 8 + 2 * 3 + 2 * 3


@pytest.mark.parametrize("level,bits", [(1, 1), (3, 2), (4, 3), (8, 4), (16, 5)])
def test_quantized_mac_energy_scales_with_bit_width(level, bits):
    x = torch.tensor([[level, 0.0, 1.0]])
    report, _ = report_of(linear_net(level), x, sram_read_pj_per_64b=0.0,
                          sram_write_pj_per_64b=0.0)
    row = report["rows"][0]
    assert row["activation_bits"] == bits
    mac = 0.2 * 8 * bits / 64 + 0.1 * 32 / 32
    assert row["qann_dense_pj_per_image"] == pytest.approx(6 * mac, rel=1e-12)
    assert row["qann_zero_skip_pj_per_image"] == pytest.approx(4 * mac, rel=1e-12)
    # 16 x 16-bit weights and activations, a 16-bit accumulator
    report, _ = report_of(linear_net(level), x, sram_read_pj_per_64b=0.0,
                          sram_write_pj_per_64b=0.0, weight_bits=16, accumulator_bits=16)
    wide = 0.2 * 16 * bits / 64 + 0.1 * 16 / 32
    assert report["rows"][0]["qann_dense_pj_per_image"] == pytest.approx(6 * wide, rel=1e-12)


def test_break_even_sentence_follows_the_totals():
    # L = 1 and 100 outputs: one event per zero-skipping MAC; without memory a 0.1 pJ event
    # beats a 0.125 pJ 8x1-bit MAC, and the 3 neurons' 9 operations do not change that
    net = linear_net(level=1, outputs=100)
    x = torch.tensor([[1.0, 0.0, 1.0]])
    report, _ = report_of(net, x, sram_read_pj_per_64b=0.0, sram_write_pj_per_64b=0.0)
    t = report["totals"]
    assert t["snn_time_stepped_pj_per_image"] == pytest.approx((200 + 9) * 0.1, rel=1e-12)
    assert t["qann_zero_skip_pj_per_image"] == pytest.approx(200 * 0.125, rel=1e-12)
    time_stepped = report["energy_model"]["break_even"][1]
    assert time_stepped.startswith("time-stepped") and "costs less" in time_stepped
    assert f"{25 / 20.9:.2f}x less than the zero-skipping" in time_stepped
    # with the default SRAM prices the event-driven network pays 22.5 pJ of memory per event
    report, _ = report_of(net, x)
    event_driven = report["energy_model"]["break_even"][0]
    assert event_driven.startswith("event-driven") and "does not break even" in event_driven
    ratio = report["totals"]["snn_event_driven_pj_per_image"] / \
        report["totals"]["qann_zero_skip_pj_per_image"]
    assert f"{ratio:.2f}x more than the zero-skipping" in event_driven
    assert report["energy_model"]["snn_over_qann"]["event_driven_over_zero_skip"] == ratio


def test_pooled_and_shortcut_inputs_hand_computed():
    # 4x4 spikes -> 2x2 average pool -> 1x1 conv with 3 outputs. Pooled cells: {1, 0, 0, 2}
    # -> nonzero, {0, 0, 0, 0} -> zero, {0, 0, 4, 0} -> nonzero, {0, 0, 0, 1} -> nonzero
    counts = torch.tensor([[[[1, 0, 0, 0], [0, 2, 0, 0], [0, 0, 0, 0], [4, 0, 0, 1]]]]).float()
    ann = nn.Sequential(spiking_input(4), nn.AvgPool2d(2), nn.Conv2d(1, 3, 1, bias=False))
    report, _ = report_of(ann, counts)
    row = report["rows"][0]
    assert row["accumulates_per_image"] == 8 * 3  # 8 spikes, each reaches 3 outputs
    assert row["zero_skip_macs_per_image"] == 3 * 3  # 3 nonzero pooled cells x 3 outputs
    assert row["ann_macs_per_image"] == 4 * 3
    # NeuroBench: the pooled input is not binary, so MACs, per step: a cell is nonzero at
    # step t while some count in it exceeds t -- max counts 2, 0, 4, 1 -> 7 cell-steps
    ops = report["neurobench"]["synaptic_operations"]
    assert (ops["Effective_MACs"], ops["Effective_ACs"]) == (7 * 3, 0)
    assert ops["Dense"] == 4 * 4 * 3  # L = 4 steps of the pooled 2x2 map, 3 outputs each

    # overlapping windows: one neuron with 2 spikes in the centre of a 3x3 map, a 2x2 pool
    # of stride 1 (all 4 pooled cells hold it), flattened into a linear layer with 5 outputs.
    # The spiking network folds the pool into the weights: each spike reaches the 5 outputs
    # once (10 events); the zero-skipping ANN either multiplies 4 nonzero pooled cells by 5
    # weights (20 MACs) or folds the pool as well (1 nonzero element x 5 = 5): it takes 5
    centre = torch.zeros(1, 1, 3, 3)
    centre[0, 0, 1, 1] = 2
    ann = nn.Sequential(spiking_input(4), nn.AvgPool2d(2, stride=1), nn.Flatten(),
                        nn.Linear(4, 5))
    report, _ = report_of(ann, centre)
    row = report["rows"][0]
    assert (row["accumulates_per_image"], row["zero_skip_macs_per_image"],
            row["ann_macs_per_image"]) == (10, 5, 20)

    # an identity shortcut: spikes {1, 0, 4, 2} added to a 1x1 conv's output
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.act0 = spiking_input(4)
            self.conv = nn.Conv2d(1, 1, 1, bias=False)
            self.act = QCFS(level=2, init_threshold=8.0)

        def forward(self, x):
            spikes = self.act0(x)
            return self.act(self.conv(spikes) + spikes)

    report, _ = report_of(Block(), torch.tensor([[[[1.0, 0.0], [4.0, 2.0]]]]))
    row = report["rows"][0]
    assert (row["shortcut_additions_per_image"], row["zero_skip_additions_per_image"],
            row["ann_additions_per_image"]) == (7, 3, 4)
    assert_events_cover_zero_skip(report)


def _binarized_rerun(snn, x):
    """NeuroBench's synaptic operations recomputed from the step path's per-step inputs:
    ``{weighted module: (effective, dense, binary)}`` over the batch. Each weighted layer is
    re-run on every input it received with binarized weights (nonzero -> 1) and inputs
    (nonzero -> 1), no bias (effective), and with all-ones weights and inputs (dense);
    ``binary``: its nonzero inputs all had one value (a spike height), so NeuroBench counts
    ACs, otherwise MACs."""
    snn(x)  # plans the run (a one-image probe), so the hooks below see the run alone
    calls = {}

    def record(module, args, _):
        calls.setdefault(module, []).append(args[0].detach().clone())

    hooks = [layer.layer.register_forward_hook(record) for layer in snn.layers.values()
             if hasattr(layer, "layer")]
    try:
        snn(x)
    finally:
        for hook in hooks:
            hook.remove()
    out = {}
    for module, inputs in calls.items():
        def rerun(value, weight, module=module):
            # the layer itself (its padding mode, stride, groups) with other weights, no bias
            copy_ = copy.deepcopy(module).to(torch.float64)
            copy_.weight.data = weight.to(torch.float64)
            copy_.bias = None
            with torch.no_grad():
                return copy_(value.to(torch.float64))

        binary_w = (module.weight != 0)
        nonzero = torch.cat([value[value != 0] for value in inputs])
        out[module] = (
            sum(int(rerun(value != 0, binary_w).sum()) for value in inputs),
            sum(int(rerun(torch.ones_like(value), torch.ones_like(binary_w)).sum())
                for value in inputs),
            nonzero.numel() > 0 and bool((nonzero == nonzero[0]).all()))
    return out


class PoolNet(nn.Module):
    """conv -> QCFS -> conv (spikes: ACs) -> QCFS -> avgpool -> conv (pooled: MACs) -> QCFS ->
    flatten -> linear (spikes: ACs); some weights exactly zero."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), QCFS(3, 1.0), nn.Conv2d(4, 5, 3, padding=1),
            QCFS(4, 1.0), nn.AvgPool2d(2), nn.Conv2d(5, 6, 3, stride=2, padding=1), QCFS(2, 1.0),
            nn.Flatten(), nn.Linear(6 * 2 * 2, 7))

    def forward(self, x):
        return self.body(x)


def test_neurobench_synaptic_operations_equal_a_binarized_rerun():
    torch.manual_seed(0)
    net = PoolNet().double().eval()
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                module.weight.mul_((torch.rand_like(module.weight) > 0.2).double())
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)  # no exact zeros in the image
    calibrate_thresholds_(net, x)
    report, snn = report_of(net, x, sim="counts")
    rerun = _binarized_rerun(convert_to_snn(net), x)
    # analog conv and the pooled conv: MACs; the two spike-fed layers: ACs
    assert sorted(binary for _, _, binary in rerun.values()) == [False, False, True, True]
    expected = {"Effective_ACs": 0, "Effective_MACs": 0, "Dense": 0}
    for effective, dense, binary in rerun.values():
        expected["Effective_ACs" if binary else "Effective_MACs"] += effective
        expected["Dense"] += dense
    assert report["neurobench"]["synaptic_operations"] == {
        key: value / 3 for key, value in expected.items()}  # per image
    nb = report["neurobench"]
    weights = [m.weight for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    zeros = sum(int((w == 0).sum()) for w in weights)
    assert nb["connection_sparsity"] == zeros / sum(w.numel() for w in weights)
    spikes = report["totals"]["spikes_per_image"]
    slots = sum(r["neurons"] * r["level"] for r in report["rows"] if r["kind"] == "spiking")
    assert nb["activation_sparsity"] == 1 - spikes / slots
    assert nb["footprint_bytes"] == sum(t.numel() * 8 for t in list(snn.parameters()) +
                                        list(snn.buffers()))
    assert nb["membrane_updates"] == report["totals"]["neuron_updates_per_image"]


def _zero_skip_from_ann(model, x):
    """MACs a zero-skipping ANN does, from the ANN's own activations: per weighted layer, the
    structural connections (all-ones weights) of the nonzero input elements."""
    total = [0]

    def count(module, args, _):
        ones = torch.ones_like(module.weight)
        nonzero = (args[0] != 0).to(torch.float64)
        if isinstance(module, nn.Linear):
            out = F.linear(nonzero, ones)
        else:
            out = F.conv2d(nonzero, ones, None, module.stride, module.padding, module.dilation,
                           module.groups)
        total[0] += int(out.sum())

    hooks = [m.register_forward_hook(count) for m in model.modules()
             if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return total[0] / x.shape[0]


@pytest.mark.parametrize("arch,levels", [
    ("vgg_small", [4, 2, 8, 4, 3]),
    ("resnet20", [1, 2, 3, 4, 8, 2, 4, 1, 3, 4, 2, 8, 3, 1, 4, 2, 3, 4, 2]),
])
def test_zero_skip_macs_match_the_ann_activations(arch, levels):
    model, x = live_model(arch, levels, images=2)
    model.eval()
    report, _ = report_of(model, x, sim="counts")
    assert_events_cover_zero_skip(report)
    counted = sum(r["zero_skip_macs_per_image"] for r in report["rows"])
    # the image has no exact zeros, so the ANN's count of its first layer is dense too
    assert counted == _zero_skip_from_ann(model, x)
    # both paths count the same
    step, _ = report_of(model, x, sim="step")
    assert step["totals"] == report["totals"]
    assert step["neurobench"] == report["neurobench"]


def test_constants_checked_loaded_and_echoed(tmp_path):
    assert energy_model.constants()["sram_read_pj_per_64b"] == 20.0
    for bad in ({"sram_read_pj": 1.0}, {"int8_mult_pj": -1.0}, {"weight_bits": 0},
                {"int32_add_pj": None}, {"event_bits": float("nan")}, {"int8_mult_pj": "1"}):
        with pytest.raises(energy_model.ConstantsError):
            energy_model.constants(bad)
    assert energy_model.parse_override("ann_weight_reuse=null") == ("ann_weight_reuse", None)
    assert energy_model.parse_override(" int8_mult_pj = 0.3") == ("int8_mult_pj", 0.3)
    with pytest.raises(energy_model.ConstantsError):
        energy_model.parse_override("int8_mult_pj")
    report, _ = report_of(linear_net(), COUNTS, int8_mult_pj=0.3)
    echoed = report["energy_model"]["constants"]
    assert echoed["int8_mult_pj"]["value"] == 0.3
    assert echoed["sram_read_pj_per_64b"]["uncertain"] is True
    assert "Horowitz" in echoed["int32_add_pj"]["source"]
    # a report's block reads back as overrides
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report["energy_model"]))
    assert energy_model.load_constants(path)["int8_mult_pj"] == 0.3
    path.write_text("[1, 2]")
    with pytest.raises(energy_model.ConstantsError):
        energy_model.load_constants(path)


@pytest.mark.slow
def test_main_test_report_prints_and_writes_the_estimates(digits_run, tmp_path, capsys):
    folder, run_id = digits_run
    constants = tmp_path / "constants.json"
    constants.write_text(json.dumps({"sram_read_pj_per_64b": 10.0, "int8_mult_pj": 0.25}))
    files = {key: tmp_path / f"cost.{key}" for key in ("json", "csv", "png")}
    assert run_script(main_test, [
        "-data", "digits", "--id", run_id, "--checkpoint-dir", str(folder), "--dtype",
        "float64", "-j", "0", "--no-progress", "--num-images", "16", "-b", "16", "--sim",
        "counts", "--report", "--energy-constants", str(constants), "--energy",
        "sram_read_pj_per_64b=5", "--energy", "ann_weight_reuse=4",
        "--report-json", str(files["json"]), "--report-csv", str(files["csv"]),
        "--report-plot", str(files["png"]), "--output", str(tmp_path / "test.json")]) == 0
    out = capsys.readouterr()
    printed = out.out + out.err
    report = json.loads(files["json"].read_text())
    model = report["energy_model"]
    # the command line overrides the file; the file's other value holds
    assert model["constants"]["sram_read_pj_per_64b"]["value"] == 5.0
    assert model["constants"]["int8_mult_pj"]["value"] == 0.25
    assert model["constants"]["ann_weight_reuse"]["value"] == 4.0
    for sentence in model["break_even"]:
        assert sentence in printed
    assert "NeuroBench: footprint" in printed and "synaptic-operation proxy" in printed
    totals = report["totals"]
    for name, part in model["totals_pj_per_image"].items():
        assert totals[f"{name}_pj_per_image"] == part["total"]
        assert math.isclose(part["total"], part["arithmetic"] + part["memory"], rel_tol=1e-12)
        rows = sum(r[f"{name}_pj_per_image"] for r in report["rows"])
        assert math.isclose(rows, part["total"], rel_tol=1e-12)
    assert_events_cover_zero_skip(report)
    header = files["csv"].read_text().splitlines()[0].split(",")
    assert "qann_zero_skip_pj_per_image" in header and "break_even_events_per_mac_event_driven" \
        in header
    result = json.loads((tmp_path / "test.json").read_text())
    assert result["cost"]["break_even"] == model["break_even"]
    assert result["cost"]["neurobench"] == report["neurobench"]


@pytest.mark.slow
@pytest.mark.parametrize("argv,fragment", [
    (["--energy", "sram=3"], "unknown energy constant 'sram'"),
    (["--energy", "int8_mult_pj"], "NAME=VALUE"),
    (["--energy", "weight_bits=-8"], "weight_bits"),
    (["--energy-constants", "missing.json"], "cannot read energy constants"),
])
def test_main_test_refuses_bad_constants(digits_run, capsys, argv, fragment):
    folder, run_id = digits_run
    assert run_script(main_test, ["-data", "digits", "--id", run_id, "--checkpoint-dir",
                                  str(folder), "-j", "0", "--no-progress", "--report"]
                      + argv) == 2
    assert_one_line_error(capsys, fragment)



def test_neurobench_counts_of_fuzzed_models_equal_a_binarized_rerun():
    """The differential fuzzer's models (convolutions of every padding mode, transposed and
    grouped, pools of concatenations, shuffles, copies): per weighted layer, the effective
    and dense counts of the report's meter equal the binarized re-run of the step path's
    inputs; where the layer is fed a non-spike value the meter counts every input element
    as nonzero, an upper bound."""
    checked = 0
    for seed in range(60):
        try:
            _, ann, x, _, _ = fuzz_models.build(seed)
            snn = convert_to_snn(ann)
        except ValueError:  # refused: nothing to count
            continue
        meter = CostMeter(snn)
        meter.add(x, snn.forward_with_stats(x, keep_counts=True)[1])
        rerun = _binarized_rerun(snn, x)
        modules = {op.name: snn.layers[op.target].layer for op in snn.ops
                   if op.name in meter.weighted}
        for name, w in meter.weighted.items():
            effective, dense, _ = rerun[modules[name]]
            counted = w.effective_acs + w.effective_macs
            assert w.dense == dense, (seed, name)
            if w.source is None:
                assert counted >= effective, (seed, name)
            else:
                assert counted == effective, (seed, name)
        checked += 1
    assert checked >= 30  # most generated models are accepted
