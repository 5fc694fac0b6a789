"""get_stats.py on a trained checkpoint and the two-phase adaptive schedule end to end."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import get_stats
import get_Teff
import main_train
from al_metric import suggest_level
from checkpoint import load_checkpoint_file, model_from_checkpoint
from conftest import evaluate_digits_run, run_script
from data import get_dataset, make_loader
from helpers import assert_streamed_histograms


@pytest.mark.slow
def test_streamed_histogram_equals_numpy_on_materialized_outputs(digits_run):
    folder, run_id = digits_run
    path = folder / f"{run_id}.pth"
    model, _ = model_from_checkpoint(load_checkpoint_file(path), path)
    loader = make_loader(get_dataset("digits", "", "train", augment=False), 100, False)
    batches = [images for _, (images, _) in zip(range(3), loader)]
    assert_streamed_histograms(model, batches)


@pytest.mark.slow
def test_get_stats_table_json_and_plot(digits_run, tmp_path, capsys):
    folder, run_id = digits_run
    output, plot = tmp_path / "stats.json", tmp_path / "hist.png"
    assert run_script(get_stats, ["-data", "digits", "--id", run_id, "--checkpoint-dir",
                                  str(folder), "--batches", "2", "-b", "64", "-j", "0",
                                  "--no-progress", "--json", str(output), "--plot", str(plot),
                                  "--max-level", "8"]) == 0
    out = capsys.readouterr().out
    result = json.loads(output.read_text())
    assert len(result["layers"]) == 5 and result["num_images"] == 128
    for row in result["layers"]:
        assert row["suggested_level"] == suggest_level(row["metric"], 8)
        assert sum(row["histogram"]) == sum(row["level_counts"])
    assert "--levels " + ",".join(map(str, result["suggested_levels"])) in out
    assert Image.open(plot).size[0] > 100


def test_get_stats_npy_mode(tmp_path, capsys):
    path = tmp_path / "act.npy"
    np.save(path, np.array([0.0] * 50 + [1.0] * 50))
    assert run_script(get_stats, ["--npy", str(path)]) == 0
    assert "metric 9.3333" in capsys.readouterr().out


@pytest.mark.slow
def test_adaptive_schedule_end_to_end(tmp_path, capsys):
    common = ["-data", "digits", "-arch", "vgg_small", "-j", "0", "--no-progress",
              "--checkpoint-dir", str(tmp_path), "--id", "ad", "-lr", "0.1",
              "--init-threshold", "2"]
    assert run_script(main_train, common + ["-epochs", "3", "--adaptive", "--phase1-epochs",
                                            "2", "--levels", "8", "--stats-batches", "4"]) == 0
    checkpoint = torch.load(tmp_path / "ad.pth", weights_only=True)
    adaptive = checkpoint["adaptive"]
    chosen = [suggest_level(row["metric"], 8) for row in adaptive["metrics"]]
    assert checkpoint["model_args"]["levels"] == chosen == adaptive["levels"]
    assert checkpoint["epoch"] == 3
    phase1 = torch.load(tmp_path / "ad_phase1.pth", weights_only=True)
    assert phase1["epoch"] == 2 and phase1["model_args"]["levels"] == [8] * 5
    log = (tmp_path / "ad.log").read_text()
    assert f"adaptive levels: [8, 8, 8, 8, 8] -> {chosen}" in log
    capsys.readouterr()

    result = evaluate_digits_run(tmp_path, "ad", tmp_path / "test.json")
    assert result["levels"] == chosen and result["ann_top1"] == result["snn_top1"]

    assert run_script(get_Teff, ["--id", "ad", "-data", "digits", "--checkpoint-dir",
                                 str(tmp_path)]) in (0, None)
    out = capsys.readouterr().out
    assert f"levels from {tmp_path / 'ad.pth'}" in out and "T_eff = " in out
