"""engine.fit from Python: the docs' example, resuming a network of one's own bit for bit,
refusals as domain errors, the scripts' one-line translation of them, and checkpoints of
format 1 that still evaluate and resume."""
import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import engine
import main_test
import main_train
import models
from checkpoint import (FORMAT_VERSION, load_checkpoint_file, model_from_checkpoint,
                        save_checkpoint, trained_image_size, upgrade)
from config import AdaptiveConfig, TrainConfig
from conftest import run_script
from data import get_dataset
from errors import (CheckpointError, CheckpointMismatch, ConfigError, ExitCode, ModelError,
                    PascalError)
from helpers import FaultAt
from utils import error_line, run_main

REPO = Path(__file__).resolve().parents[1]
FORMAT1 = REPO / "tests" / "data" / "vgg_small_digits_format1.pth"
# the command that wrote FORMAT1 (one epoch of vgg_small on the digits, format 1; with one
# thread, today's code writes the same weights bit for bit -- checked when it was added,
# not here: kernels differ between CPUs)
FORMAT1_ARGV = ["-data", "digits", "-arch", "vgg_small", "-epochs", "1", "--id", "v1", "-b",
                "32", "--levels", "4,2,8,4,3", "-lr", "0.1", "--init-threshold", "2", "-j", "0",
                "--no-progress"]


def docs_example():
    text = (REPO / "docs" / "python-api.md").read_text()
    return re.search(r"## Example.*?```python\n(.*?)```", text, re.S).group(1)


@pytest.mark.slow
def test_the_docs_example_runs_and_refuses_a_finished_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    namespace = {}
    exec(compile(docs_example(), "docs/python-api.md", "exec"), namespace)
    result = namespace["result"]
    assert result.status == ExitCode.OK and result.epochs == 3
    assert result.checkpoint == Path("my-runs/my_net.pth")
    checkpoint = load_checkpoint_file(result.checkpoint)
    assert checkpoint["config"] == namespace["config"].as_dict()
    assert checkpoint["model_args"]["arch"] == "Sequential"
    assert checkpoint["model_args"]["image_size"] == 32
    # the level search chose the levels within its budget, and they were trained with
    record = checkpoint["adaptive"]
    assert record["method"] == "level_search" and record["levels"] == result.levels
    assert record["level_search"]["teff"] <= 3
    assert models.get_levels(namespace["model"]) == result.levels
    assert result.best_acc1 == checkpoint["best_acc1"]
    # run again: the run is finished, and the refusal names the field
    with pytest.raises(ConfigError) as error:
        exec(compile(docs_example(), "docs/python-api.md", "exec"), {})
    assert error.value.field == "epochs" and "already finished" in str(error.value)


class Net(nn.Module):
    """A network of one's own, outside the model registry."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8),
                                      models.QCFS(2, 2.0), nn.MaxPool2d(4))
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(8 * 8 * 8, 10))

    def forward(self, x):
        return self.head(self.features(x))


def small_config(folder, **changes):
    values = dict(epochs=2, batch_size=64, lr=0.05, workers=0, run_id="net",
                  checkpoint_dir=folder, resume="auto", show_progress=False)
    values.update(changes)
    return TrainConfig(**values)


def test_a_preempted_fit_resumes_bit_identical(tmp_path):
    torch.manual_seed(1)
    initial = Net()
    train_set = get_dataset("digits", None, "train")
    test_set = torch.utils.data.Subset(get_dataset("digits", None, "test"), range(64))
    whole = copy.deepcopy(initial)
    done = engine.fit(whole, train_set, test_set, small_config(tmp_path / "a"))
    assert done.status == 0 and done.epochs == 2
    # SIGTERM twice (a scheduler may signal a worker directly and through its launcher; the
    # second is ignored) while step 5 of epoch 2 loads: fit reads one sample for the image
    # size, then 1,437 per epoch in batches of 64, so read 1 + 1437 + 4 * 64 + 32 is in step
    # 5. That step finishes: status 128 + 15 and a checkpoint 5 steps into epoch 2.
    stopped = engine.fit(copy.deepcopy(initial),
                         FaultAt(train_set, 1 + 1437 + 4 * 64 + 32,
                                 signals=(signal.SIGTERM, signal.SIGTERM)),
                         test_set, small_config(tmp_path / "b"))
    assert stopped.status == ExitCode.SIGNAL + signal.SIGTERM and stopped.epochs == 1
    saved = load_checkpoint_file(tmp_path / "b" / "net.pth")
    assert saved["epoch"] == 1 and saved["partial_epoch"]["step"] == 5
    # a fresh instance (other weights) continues it: the weights come from the checkpoint
    torch.manual_seed(2)
    fresh = Net()
    resumed = engine.fit(fresh, train_set, test_set, small_config(tmp_path / "b"))
    assert resumed.status == 0 and resumed.epochs == 2
    for key, value in whole.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    assert resumed.best_acc1 == done.best_acc1


@pytest.mark.parametrize("memory_format, channels_last",
                         [("auto", True), ("channels_last", True), ("contiguous", False)])
def test_one_step_of_fit_is_one_sgd_step(tmp_path, memory_format, channels_last):
    """A one-step run of fit against SGD written out by hand on the same batch: the weights
    become w - lr (g + wd w) (momentum's buffer starts at the first gradient), the BatchNorm
    statistics move 10 % toward the batch's, in float64 so only summation order differs --
    in either memory layout (``auto`` on the CPU: channels-last), seen by the convolution in
    training and evaluation; the model comes back, and its checkpoint holds it, contiguous."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(16, 3, 8, 8, generator=generator, dtype=torch.float64)
    labels = torch.arange(16) % 4
    data = [(image, int(label)) for image, label in zip(images, labels)]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4),
                          models.QCFS(2, 1.0), nn.Flatten(), nn.Linear(4 * 8 * 8, 4)).double()
    expected = copy.deepcopy(model).train()
    seen = []  # (training?, input channels-last?, weight channels-last?) of every call
    model[0].register_forward_pre_hook(lambda conv, args: seen.append(
        (conv.training, args[0].is_contiguous(memory_format=torch.channels_last),
         conv.weight.is_contiguous(memory_format=torch.channels_last))))
    result = engine.fit(model, data, data, small_config(
        tmp_path, epochs=1, batch_size=16, lr=0.05, weight_decay=1e-3,
        memory_format=memory_format))
    assert result.status == 0
    # one training step, then one evaluation batch; a 3-channel 8x8 batch is contiguous in
    # exactly one of the two layouts
    assert seen == [(True, channels_last, channels_last), (False, channels_last, channels_last)]
    assert all(value.is_contiguous() for value in model.state_dict().values())
    saved = load_checkpoint_file(tmp_path / "net.pth")["state_dict"]
    assert all(value.is_contiguous() for value in saved.values())
    nn.functional.cross_entropy(expected(images), labels).backward()
    with torch.no_grad():
        for param in expected.parameters():
            param -= 0.05 * (param.grad + 1e-3 * param)
    trained = model.state_dict()
    assert trained.keys() == expected.state_dict().keys()
    for key, value in expected.state_dict().items():
        # float64: the same sums in another image order, ~1e-16 relative apart
        torch.testing.assert_close(trained[key], value, rtol=1e-10, atol=1e-12, msg=key)


def test_training_memory_format_rules():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    conv, mlp = Net(), nn.Sequential(nn.Flatten(), nn.Linear(12, 2), models.QCFS(2, 1.0))
    assert engine.training_memory_format("auto", conv, cpu) == torch.channels_last
    assert engine.training_memory_format("auto", mlp, cpu) == torch.contiguous_format
    assert engine.training_memory_format("auto", conv, cuda) == torch.contiguous_format
    for network in (conv, mlp):
        for device in (cpu, cuda):
            assert engine.training_memory_format("channels_last", network, device) == \
                torch.channels_last
            assert engine.training_memory_format("contiguous", network, device) == \
                torch.contiguous_format
    # a batch of other than four dimensions keeps its layout
    vectors = torch.randn(3, 12)
    assert engine.batch_to(vectors, cpu, torch.channels_last).data_ptr() == vectors.data_ptr()
    with pytest.raises(ConfigError) as error:
        small_config(".", memory_format="nhwc").validate()
    assert (error.value.field, error.value.value) == ("memory_format", "nhwc")
    assert main_train.get_args_parser().parse_args(
        ["--memory-format", "contiguous"]).memory_format == "contiguous"
    assert main_train.get_args_parser().parse_args([]).memory_format == "auto"


def test_fit_refuses_before_the_first_step(tmp_path):
    train_set = get_dataset("digits", None, "train")
    test_set = get_dataset("digits", None, "test")
    with pytest.raises(ConfigError) as error:
        engine.fit(Net(), train_set, test_set, small_config(tmp_path, epochs=0))
    assert (error.value.field, error.value.value) == ("epochs", 0)
    with pytest.raises(ConfigError) as error:
        engine.fit(Net(), train_set, test_set, small_config(
            tmp_path, adaptive=AdaptiveConfig(phase1_epochs=2)))
    assert error.value.field == "phase1_epochs"
    with pytest.raises(ConfigError) as error:  # the candidates cannot reach T_eff 1.01
        engine.fit(Net(), train_set, test_set, small_config(
            tmp_path, adaptive=AdaptiveConfig(phase1_epochs=1, budget_teff=1.01,
                                              candidates=(2, 4))))
    assert error.value.field == "budget_teff"
    assert not tmp_path.joinpath("net.pth").exists()
    # a checkpoint of another network is refused by name, and nothing is written
    assert engine.fit(Net(), train_set, torch.utils.data.Subset(test_set, range(8)),
                      small_config(tmp_path, epochs=1)).status == 0
    before = (tmp_path / "net.pth").read_bytes()
    other = models.qcfsify(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(),
                                         nn.Linear(4 * 30 * 30, 10)), levels=2)
    with pytest.raises(CheckpointMismatch) as error:
        engine.fit(other, train_set, test_set, small_config(tmp_path, epochs=2))
    assert (error.value.field, error.value.stored, error.value.given) == \
        ("arch", "Net", "Sequential")
    assert (tmp_path / "net.pth").read_bytes() == before


def test_error_lines_name_the_flags_and_bugs_keep_their_traceback():
    terms = main_train.TERMS
    mismatch = CheckpointMismatch("r.pth", "arch", "resnet20", "vgg16",
                                  advice="pass arch='resnet20'")
    assert error_line(mismatch, terms) == \
        "r.pth holds arch 'resnet20', not 'vgg16': pass -arch resnet20"
    config = ConfigError("budget_teff", 0.5, "is below the smallest T_eff (1.03)",
                         advice="raise `budget_teff`")
    assert error_line(config, terms) == \
        "--budget-teff 0.5 is below the smallest T_eff (1.03): raise --budget-teff"
    exists = CheckpointError("r.pth", "already exists", advice="start over with overwrite=True "
                             "or choose another `run_id`; see https://download.example/x")
    assert error_line(exists, terms) == ("r.pth already exists: start over with --overwrite or "
                                         "choose another --id; see https://download.example/x")
    assert issubclass(ModelError, ValueError) and issubclass(ModelError, PascalError)

    def buggy(args):
        raise ValueError("an internal bug")

    with pytest.raises(ValueError, match="an internal bug"):  # not turned into a usage error
        run_main(buggy, None)

    def refused(args):
        raise mismatch

    assert run_main(refused, None, terms) == ExitCode.USAGE


@pytest.mark.slow
def test_a_format1_checkpoint_upgrades_evaluates_and_resumes(tmp_path, capsys):
    raw = torch.load(FORMAT1, weights_only=True)
    assert raw["format_version"] == 1 and "args" in raw and "image_size" not in raw["model_args"]
    checkpoint = upgrade(raw)
    assert checkpoint["format_version"] == FORMAT_VERSION == 2 and "args" not in checkpoint
    # its image size lived in the command line (None: the data's own 32)
    assert checkpoint["model_args"]["image_size"] is raw["args"]["image_size"] is None
    resized = upgrade({"model_args": {"arch": "vgg_small", "num_classes": 10, "levels": [2]},
                       "state_dict": {}, "args": {"image_size": 48}})
    assert resized["model_args"] == {"arch": "vgg_small", "num_classes": 10, "levels": [2],
                                     "variant": "cifar", "dropout": None, "activation": "qcfs",
                                     "dataset": None, "image_size": 48}
    assert trained_image_size(resized) == 48 and trained_image_size(checkpoint) is None
    assert checkpoint["model_args"]["levels"] == [4, 2, 8, 4, 3]
    assert upgrade(checkpoint) == checkpoint  # idempotent
    newer = dict(raw, format_version=FORMAT_VERSION + 1)
    with pytest.raises(CheckpointError, match="newer"):
        upgrade(newer)
    # it evaluates: the ANN's top-1 is the one it recorded, and the SNN equals the ANN
    old = tmp_path / "old"
    old.mkdir()
    shutil.copy(FORMAT1, old / "v1.pth")
    assert run_script(main_test, ["-data", "digits", "--id", "v1", "--checkpoint-dir", str(old),
                                  "--dtype", "float64", "-j", "0", "--no-progress",
                                  "--output", str(tmp_path / "r.json")]) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["ann_top1"] == pytest.approx(raw["test_acc1"], abs=1e-9)
    assert result["snn_top1"] == result["ann_top1"] and result["agreement"] == 100.0
    # resuming it and resuming its upgrade saved in today's format train alike, bit for bit
    # (so the upgrade keeps everything training reads: weights, optimizer, schedule, epoch)
    new = tmp_path / "new"
    save_checkpoint(new / "v1.pth", checkpoint)
    for folder in (old, new):
        assert run_script(main_train, [*FORMAT1_ARGV[:5], "2", *FORMAT1_ARGV[6:],
                                       "--checkpoint-dir", str(folder), "--resume", "auto"]) == 0
    resumed_old = load_checkpoint_file(old / "v1.pth")
    resumed_new = load_checkpoint_file(new / "v1.pth")
    assert resumed_old["epoch"] == resumed_new["epoch"] == 2
    for key, value in resumed_new["state_dict"].items():
        assert torch.equal(resumed_old["state_dict"][key], value), key
    capsys.readouterr()


@pytest.mark.slow
def test_fit_under_torchrun_from_python(tmp_path):
    """The docs' call inside a torchrun process: the process group is joined and DDP used."""
    script = tmp_path / "train_mine.py"
    script.write_text(f"""
import sys
sys.path.insert(0, {str(REPO)!r})
import torch
import engine, models
from config import TrainConfig
from data import get_dataset
from torch import nn
import atexit
import os
import torch.distributed as dist

def after_the_library():  # exit handlers run last-registered first: this one after fit's
    with open({str(tmp_path)!r} + f"/exit{{os.environ['RANK']}}.txt", "w") as handle:
        handle.write(f"GROUP {{dist.is_initialized()}}")

atexit.register(after_the_library)
torch.manual_seed(0)
model = models.qcfsify(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4),
                                     nn.Flatten(), nn.Linear(8 * 8 * 8, 10)), levels=4)
train_set = torch.utils.data.Subset(get_dataset("digits", None, "train"), range(256))
test_set = torch.utils.data.Subset(get_dataset("digits", None, "test"), range(64))
result = engine.fit(model, train_set, test_set, TrainConfig(
    epochs=1, batch_size=64, workers=0, run_id="ddp", checkpoint_dir={str(tmp_path)!r},
    show_progress=False))
with open({str(tmp_path)!r} + f"/rank{{dist.get_rank()}}.txt", "w") as handle:
    handle.write(f"WORLD {{dist.get_world_size()}} STATUS {{result.status}}")
""")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", str(script)], capture_output=True, text=True,
                          timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    # each rank says what it saw in its own file (the two processes share one stdout)
    for rank in (0, 1):
        assert (tmp_path / f"rank{rank}.txt").read_text() == "WORLD 2 STATUS 0"
        # the group the library joined is left before the interpreter shuts down
        assert (tmp_path / f"exit{rank}.txt").read_text() == "GROUP False"
    checkpoint = load_checkpoint_file(tmp_path / "ddp.pth")
    assert checkpoint["world_size"] == 2 and checkpoint["epoch"] == 1


@pytest.mark.slow
def test_levels_chosen_before_the_first_epoch_from_trained_weights(digits_run, tmp_path,
                                                                    capsys):
    """--phase1-epochs 0: the level search runs on the initial weights, before any step."""
    folder, run_id = digits_run
    common = ["-data", "digits", "-arch", "vgg_small", "-b", "32", "-j", "0", "--no-progress",
              "--checkpoint-dir", str(tmp_path), "-epochs", "1", "--levels", "8",
              "--adaptive", "--phase1-epochs", "0", "--budget-teff", "2"]
    assert run_script(main_train, common + ["--id", "fresh"]) == 2  # nothing to choose from
    assert "trained weights" in capsys.readouterr().err
    assert run_script(main_train, common + [
        "--id", "zero", "--initial-checkpoint", str(folder / f"{run_id}.pth")]) == 0
    phase1 = load_checkpoint_file(tmp_path / "zero_phase1.pth")
    checkpoint = load_checkpoint_file(tmp_path / "zero.pth")
    assert phase1["epoch"] == 0 and phase1["model_args"]["levels"] == [8] * 5
    record = checkpoint["adaptive"]
    assert record["phase1_epochs"] == 0 and record["method"] == "level_search"
    assert record["level_search"]["teff"] <= 2
    assert checkpoint["model_args"]["levels"] == record["levels"] != [8] * 5
    # the phase-1 accuracy is the initial weights' at level 8, measured before any step
    model, _ = model_from_checkpoint(phase1, "zero_phase1.pth")
    acc1, _, images = engine.evaluate(model, torch.utils.data.DataLoader(
        get_dataset("digits", None, "test"), batch_size=256), engine.DistContext(), False)
    assert images == 360 and record["phase1_test_acc1"] == pytest.approx(acc1, abs=1e-9)
