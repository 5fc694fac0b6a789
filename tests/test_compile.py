"""--compile: training, resuming and evaluation through torch.compile; eager mode, with one
warning line, where no C++ compiler is available."""
import json
import os
import subprocess
import sys

import pytest
import torch

import main_test
import main_train
from conftest import run_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train_args(folder, run_id, epochs, *extra):
    return ["-data", "digits", "-arch", "vgg_small", "-epochs", str(epochs), "--id", run_id,
            "-b", "64", "--levels", "4", "-lr", "0.05", "--init-threshold", "2", "-j", "0",
            "--no-progress", "--deterministic", "--checkpoint-dir", str(folder), *extra]


def load(folder, run_id):
    return torch.load(folder / f"{run_id}.pth", map_location="cpu", weights_only=False)


@pytest.mark.slow
def test_compiled_run_is_deterministic_resumes_and_keeps_the_checkpoint_keys(tmp_path):
    assert run_script(main_train, train_args(tmp_path, "eager", 1)) == 0
    for run_id in ("comp", "again"):
        # as a new process would: compiled graphs of the previous run (whose shapes guide
        # the next compilations) forgotten; inductor's disk cache kept
        torch._dynamo.reset()
        assert run_script(main_train, train_args(tmp_path, run_id, 1, "--compile")) == 0
    eager, comp, again = (load(tmp_path, r) for r in ("eager", "comp", "again"))
    # the checkpoint of a compiled run is an eager run's: same keys (no _orig_mod.), same
    # shapes, so eager scripts read it
    assert list(comp["state_dict"]) == list(eager["state_dict"])
    assert all(comp["state_dict"][k].shape == v.shape for k, v in eager["state_dict"].items())
    assert comp["config"]["compile"] is True and eager["config"]["compile"] is False
    # --deterministic: the same command twice gives the same weights, bit for bit
    for key, value in comp["state_dict"].items():
        assert torch.equal(value, again["state_dict"][key]), key
    log = (tmp_path / "comp.log").read_text()
    assert "torch.compile: " in log and "s of epoch 1 compiling" in log
    # resumed, compiled, for a second epoch
    assert run_script(main_train, train_args(tmp_path, "comp", 2, "--compile",
                                             "--resume", "auto")) == 0
    rows = (tmp_path / "comp_epochs.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == ["1", "2"]
    resumed = load(tmp_path, "comp")
    assert resumed["epoch"] == 2 and list(resumed["state_dict"]) == list(eager["state_dict"])
    # main_test --compile: the compiled ANN equals the spiking network on every image, in
    # float64, every spike count equal to its ANN level
    out = tmp_path / "test.json"
    assert run_script(main_test, ["-data", "digits", "--id", "comp", "--checkpoint-dir",
                                  str(tmp_path), "--dtype", "float64", "--sim", "counts",
                                  "--compile", "-j", "0", "--no-progress", "--output",
                                  str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["num_images"] == 360
    assert result["agreement"] == 100.0 and result["ann_top1"] == result["snn_top1"]
    assert sum(result["differing_neurons"].values()) == 0


def test_without_a_compiler_compile_warns_once_and_trains_eagerly(tmp_path):
    # CXX names a program that fails and the caches are empty: neither the fused QCFS kernel
    # nor inductor can build. --compile then warns in one line and runs the eager code: the
    # weights equal, bit for bit, those of the same command without --compile.
    env = dict(os.environ, CXX="/bin/false", TORCH_EXTENSIONS_DIR=str(tmp_path / "ext"),
               TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"), OMP_NUM_THREADS="1")
    runs = {}
    for run_id, extra in (("plain", []), ("asked", ["--compile"])):
        done = subprocess.run([sys.executable, "main_train.py",
                               *train_args(tmp_path, run_id, 1, *extra)],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        runs[run_id] = done.stdout  # the log goes to stdout
    warned = [line for line in runs["asked"].splitlines() if "--compile:" in line]
    assert len(warned) == 1
    assert "--compile: no working C++ compiler (" in warned[0]
    assert warned[0].endswith("; running in eager mode")
    assert "--compile:" not in runs["plain"]
    plain, asked = load(tmp_path, "plain"), load(tmp_path, "asked")
    for key, value in plain["state_dict"].items():
        assert torch.equal(value, asked["state_dict"][key]), key
