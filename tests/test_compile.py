"""--compile: training, resuming and evaluation through torch.compile; eager mode, with one
warning line, where no C++ compiler is available."""
import copy
import json
import os
import subprocess
import sys

import pytest
import torch

import main_test
import main_train
import models
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


@pytest.mark.slow
def test_compiled_training_follows_eager_training_in_float64():
    # torch.compile sums some values in another order than eager mode (BatchNorm statistics,
    # gradient reductions) and otherwise computes the same thing. In float32 that rounding,
    # amplified by training, moves the loss after 20 steps about as far as rounding alone
    # moves an eager run (weights moved by one ulp, another number of threads;
    # docs/speed.md); in float64 it is about 1e-16, so 20 SGD steps of a compiled QCFS
    # ResNet (BatchNorm, residual adds, pooling, the thresholds' gradients) must end at the
    # eager run's loss to 1e-12 relative: the slack covers rounding, and any difference in
    # what is computed (a threshold gradient off by even 1e-9) exceeds it.
    torch.manual_seed(0)
    net = models.create_model("resnet20", num_classes=10, levels=4).double().train()
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 3, 8, 8, generator=gen, dtype=torch.float64),
                torch.randint(0, 10, (8,), generator=gen)) for _ in range(4)]

    def losses(model):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9,
                                    weight_decay=5e-4)
        out = []
        for step in range(20):
            x, y = batches[step % 4]
            optimizer.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            out.append(loss.item())
        return out, model

    eager, eager_net = losses(copy.deepcopy(net))
    torch._dynamo.reset()
    with torch._dynamo.config.patch(suppress_errors=False):
        compiled, compiled_net = losses(torch.compile(copy.deepcopy(net), fullgraph=True))
    assert eager[-1] != eager[0]  # it trains
    assert compiled == pytest.approx(eager, rel=1e-12)
    for (name, a), b in zip(eager_net.named_parameters(), compiled_net.parameters()):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12), name
