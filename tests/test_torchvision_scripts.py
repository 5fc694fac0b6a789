"""A torchvision architecture through every script: -arch tv:resnet18 on the bundled digits."""
import json

import pytest
import torch
from torch.utils.data import Subset

import get_stats
import get_Teff
import main_test
import main_train
import models
import snn_cost
from al_metric import DEFAULT_THRESHOLDS, collect_level_counts, layer_metrics
from checkpoint import load_checkpoint_file, model_from_checkpoint
from conftest import run_script
from cost_meter import CostMeter
from data import get_dataset, make_loader
from helpers import assert_events_cover_zero_skip, assert_one_line_error
from models.timing import latency_steps, layer_fan_ins, pipelined_latency_steps, teff


@pytest.fixture(scope="module")
def tv_run(tmp_path_factory):
    """tv:resnet18 (17 QCFS layers, one per ReLU call site) trained 2 epochs on the digits."""
    folder = tmp_path_factory.mktemp("tv")
    assert run_script(main_train, [
        "-data", "digits", "-arch", "tv:resnet18", "-epochs", "2", "-b", "64", "-j", "0",
        "--levels", "2", "-lr", "0.05", "--init-threshold", "2", "--no-progress", "--id", "tv",
        "--checkpoint-dir", str(folder)]) == 0
    path = folder / "tv.pth"
    model, model_args = model_from_checkpoint(load_checkpoint_file(path), path)
    return folder, path, model, model_args


@pytest.mark.slow
def test_checkpoint_rebuilds_the_torchvision_model(tv_run):
    _, path, model, model_args = tv_run
    import torchvision
    assert model_args["arch"] == "tv:resnet18" and model_args["num_classes"] == 10
    assert model_args["torchvision"] == torchvision.__version__
    names = [name for name, _ in models.qcfs_layers(model)]
    assert len(names) == 17 and names[:3] == ["relu", "layer1.0.relu", "layer1.0.relu_1"]
    assert model_args["levels"] == [2] * 17


@pytest.mark.slow
def test_float64_snn_equals_ann_and_the_report_equals_the_library(tv_run, tmp_path):
    folder, path, model, model_args = tv_run
    output = tmp_path / "all.json"
    assert run_script(main_test, [
        "-data", "digits", "--id", "tv", "--checkpoint-dir", str(folder), "--dtype", "float64",
        "-j", "0", "--no-progress", "-b", "120", "--output", str(output)]) == 0
    result = json.loads(output.read_text())
    assert result["num_images"] == 360 and result["agreement"] == 100.0  # every test image
    assert result["ann_top1"] == result["snn_top1"]
    assert len(result["layer_count_agreement"]) == 17
    assert all(v == 1.0 for v in result["layer_count_agreement"].values())
    assert result["ann_top1"] > 30  # two epochs learn something (chance: 10 %)

    output, report_json = tmp_path / "test.json", tmp_path / "cost.json"
    assert run_script(main_test, [
        "-data", "digits", "--checkpoint", str(path), "--dtype", "float64", "-j", "0",
        "--no-progress", "--num-images", "96", "-b", "48", "--report", "--report-json",
        str(report_json), "--report-csv", str(tmp_path / "c.csv"), "--report-plot",
        str(tmp_path / "c.png"), "--output", str(output)]) == 0
    # the report's numbers are the library's on the same images
    report = json.loads(report_json.read_text())
    double = model.double().eval()
    snn = models.convert_to_snn(double)
    meter = CostMeter(snn)
    test_set = Subset(get_dataset("digits", None, "test"), range(96))
    for images, _ in make_loader(test_set, 48, False):
        images = images.double()
        meter.add(images, snn.forward_with_stats(images, keep_counts=True)[1])
    timing = snn_cost.timing_summary(double, "tv:resnet18", "cifar", "digits", [2] * 17)
    expected = snn_cost.build_report(meter, timing)
    for key in ("accumulates_per_image", "macs_per_image", "spikes_per_image",
                "neuron_operations_per_image", "shortcut_additions_per_image",
                "snn_energy_pj_per_image", "ann_energy_pj_per_image",
                "zero_skip_macs_per_image", "snn_event_driven_pj_per_image",
                "snn_time_stepped_pj_per_image", "qann_dense_pj_per_image",
                "qann_zero_skip_pj_per_image", "events_per_zero_skip_mac"):
        assert report["totals"][key] == pytest.approx(expected["totals"][key], rel=1e-12), key
    assert report["energy_model"]["break_even"] == expected["energy_model"]["break_even"]
    # the same integer counts over the same 96 images: equal
    assert report["neurobench"] == expected["neurobench"]
    assert_events_cover_zero_skip(report)
    assert report["timing"]["T_eff"] == pytest.approx(
        teff([2] * 17, layer_fan_ins(model))[0], rel=1e-12)
    assert report["timing"]["latency_steps"] == latency_steps(model)[0]
    assert report["timing"]["latency_pipelined_steps"] == pipelined_latency_steps(model)
    assert report["timing"]["T_eff_reference"] is None  # no published constants for it


@pytest.mark.slow
def test_get_teff_and_get_stats_print_the_library_values(tv_run, tmp_path, capsys):
    folder, path, model, model_args = tv_run
    out_json = tmp_path / "teff.json"
    assert run_script(get_Teff, ["--id", "tv", "-data", "digits", "--checkpoint-dir",
                                 str(folder), "--json", str(out_json)]) == 0
    printed = capsys.readouterr().out
    value = teff(model_args["levels"], layer_fan_ins(model))[0]
    assert f"T_eff = {value:.4f}" in printed
    result = json.loads(out_json.read_text())
    assert result["T_eff"] == pytest.approx(value, rel=1e-12)
    assert result["latency_steps"] == latency_steps(model)[0]
    assert [row["name"] for row in result["layers"]] == \
        [name for name, _ in models.qcfs_layers(model)]

    stats_json = tmp_path / "stats.json"
    assert run_script(get_stats, ["-data", "digits", "--checkpoint", str(path), "--batches",
                                  "2", "-b", "64", "-j", "0", "--no-progress", "--json",
                                  str(stats_json)]) == 0
    printed = capsys.readouterr().out
    images = Subset(get_dataset("digits", None, "train", augment=False), range(128))
    counts = collect_level_counts(model.float(), make_loader(images, 64, False),
                                  torch.device("cpu"))
    rows = layer_metrics(model, counts, 5, None, DEFAULT_THRESHOLDS)
    suggested = [row["suggested_level"] for row in rows]
    assert f"suggested levels: --levels {','.join(map(str, suggested))}" in printed
    stored = json.loads(stats_json.read_text())
    assert stored["suggested_levels"] == suggested
    assert [row["metric"] for row in stored["layers"]] == \
        pytest.approx([row["metric"] for row in rows], rel=1e-12)


def test_refused_and_too_small_architectures_stop_before_training(tmp_path, capsys):
    base = ["-data", "digits", "-epochs", "1", "-j", "0", "--no-progress", "--checkpoint-dir",
            str(tmp_path)]
    assert run_script(main_train, base + ["-arch", "tv:efficientnet_b0", "--id", "e"]) == 2
    assert_one_line_error(capsys, "tv:efficientnet_b0", "features.0.2", "SiLU")
    assert run_script(main_train, base + ["-arch", "tv:vit_b_16", "--id", "v"]) == 2
    assert_one_line_error(capsys, "tv:vit_b_16", "node")
    assert run_script(main_train, base + ["-arch", "tv:alexnet", "--id", "a"]) == 2
    assert_one_line_error(capsys, "at least 63x63", "got 32x32")
    assert not list(tmp_path.glob("*.pth"))
    with pytest.raises(SystemExit):
        main_train.get_args_parser().parse_args(["-arch", "tv:nonexistent"])
    assert_one_line_error(capsys, "unknown torchvision model 'nonexistent'")


def test_default_run_id_of_a_torchvision_arch_has_no_colon(tmp_path):
    """Without --id, training and evaluation name the run tv-resnet18_digits (a file name
    without the colon of tv:NAME), and agree on it."""
    from utils import resolve_checkpoint
    args = main_train.resolve_args(main_train.get_args_parser().parse_args(
        ["-data", "digits", "-arch", "tv:resnet18", "--checkpoint-dir", str(tmp_path)]))
    assert args.id == "tv-resnet18_digits"
    test_args = main_test.get_args_parser().parse_args(
        ["-data", "digits", "-arch", "tv:resnet18", "--checkpoint-dir", str(tmp_path)])
    assert resolve_checkpoint(test_args)[0] == tmp_path / "tv-resnet18_digits.pth"
