"""Failure modes through the real scripts: signals, divergence, bad files, reproducibility."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import checkpoint
import main_test
import main_train
from conftest import run_script
from models import PascalNeuron, pascal_counts
from helpers import assert_one_line_error

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["-data", "digits", "-arch", "vgg_small", "-epochs", "2", "-b", "128", "-j", "0",
         "--no-progress", "--levels", "4,2,8,4,3"]


def train_subprocess(folder, run_id, *extra, signal_at=None):
    env = dict(os.environ, OMP_NUM_THREADS="2")
    env.pop("PASCAL_SIGNAL_AT", None)
    if signal_at:
        env["PASCAL_SIGNAL_AT"] = signal_at
    return subprocess.run([sys.executable, str(ROOT / "main_train.py"), *TRAIN, "--id", run_id,
                           "--checkpoint-dir", str(folder), *extra], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runs")
    done = train_subprocess(folder, "full")
    assert done.returncode == 0, done.stderr
    return folder, torch.load(folder / "full.pth", weights_only=True)["state_dict"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_sigterm_mid_epoch_then_resume_matches_uninterrupted(uninterrupted):
    folder, full = uninterrupted
    stopped = train_subprocess(folder, "cut", signal_at="2:3")
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr
    assert "interrupted" in stopped.stdout and "resume with:" in stopped.stdout
    assert "--resume_from_ckpt=1" in stopped.stdout
    saved = torch.load(folder / "cut.pth", weights_only=True)
    assert saved["epoch"] == 1 and saved["partial_epoch"]["step"] == 3
    resumed = train_subprocess(folder, "cut", "--resume_from_ckpt=1")
    assert resumed.returncode == 0, resumed.stderr
    assert "after epoch 1 + 3 steps of epoch 2" in resumed.stdout
    final = torch.load(folder / "cut.pth", weights_only=True)
    assert final["epoch"] == 2 and final["partial_epoch"] is None
    assert_same_weights(final["state_dict"], full)


def test_second_signal_exits_at_once_and_keeps_the_checkpoint(uninterrupted):
    folder, _ = uninterrupted
    stopped = train_subprocess(folder, "twice", signal_at="2:3:2")
    assert stopped.returncode == 128 + signal.SIGTERM
    assert "resume with" not in stopped.stdout  # no time taken to save: it left at once
    saved = torch.load(folder / "twice.pth", weights_only=True)  # epoch-1 checkpoint, intact
    assert saved["epoch"] == 1
    assert not list(folder.glob(".twice.pth.tmp-*"))


def test_crash_between_write_and_rename_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "run.pth"
    checkpoint.save_checkpoint(path, {"epoch": 1})
    before = path.read_bytes()

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.os, "replace", crash)
    with pytest.raises(OSError):
        checkpoint.save_checkpoint(path, {"epoch": 2, "weights": torch.zeros(1000)})
    assert path.read_bytes() == before
    assert list(tmp_path.iterdir()) == [path]


def nan_at(monkeypatch, epoch, step):
    """Make the loss NaN at one step (1-based epoch and step) of the in-process run."""
    real = main_train.F.cross_entropy
    calls = {"n": 0}
    steps_per_epoch = 12  # 1,437 digits / batch 128

    def loss(logits, targets, *args, **kwargs):
        value = real(logits, targets, *args, **kwargs)
        if kwargs.get("reduction") == "sum":
            return value  # evaluation
        calls["n"] += 1
        if calls["n"] == (epoch - 1) * steps_per_epoch + step:
            return value * float("nan")
        return value

    monkeypatch.setattr(main_train.F, "cross_entropy", loss)


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    nan_at(monkeypatch, epoch=2, step=2)
    argv = TRAIN + ["--id", "nan", "--checkpoint-dir", str(tmp_path)]
    assert run_script(main_train, argv) == 3
    out = capsys.readouterr().out
    assert "loss is nan at epoch 2, step 2" in out and "--skip-nonfinite" in out
    assert torch.load(tmp_path / "nan.pth", weights_only=True)["epoch"] == 1


def test_skip_nonfinite_counts_skipped_batches(tmp_path, monkeypatch):
    nan_at(monkeypatch, epoch=1, step=5)
    argv = TRAIN + ["--id", "skip", "--checkpoint-dir", str(tmp_path), "--skip-nonfinite"]
    assert run_script(main_train, argv) == 0
    log = (tmp_path / "skip.log").read_text()
    assert "epoch 1 step 5: non-finite loss, skipped" in log
    assert "(1 non-finite batches skipped)" in log


def test_same_seed_gives_bit_identical_weights(uninterrupted, tmp_path):
    folder, full = uninterrupted
    assert run_script(main_train, TRAIN + ["--id", "again", "--checkpoint-dir",
                                           str(tmp_path)]) == 0
    assert_same_weights(torch.load(tmp_path / "again.pth", weights_only=True)["state_dict"], full)


def test_deterministic_flag_turns_on_deterministic_algorithms(tmp_path):
    done = train_subprocess(tmp_path, "det", "--deterministic", "-epochs", "1")
    assert done.returncode == 0, done.stderr
    assert "deterministic algorithms on" in done.stdout


def test_bad_checkpoints(digits_run, tmp_path, capsys):
    folder, run_id = digits_run
    base = ["-data", "digits", "-j", "0", "--no-progress", "--num-images", "8"]
    good = torch.load(folder / f"{run_id}.pth", weights_only=True)
    for value, layer in ((float("nan"), "layer2.2"), (-0.5, "classifier.2")):
        bad = dict(good, state_dict=dict(good["state_dict"]))
        bad["state_dict"][f"{layer}.threshold"] = torch.tensor([value])
        path = tmp_path / f"bad{value}.pth"
        torch.save(bad, path)
        assert run_script(main_test, base + ["--checkpoint", str(path)]) == 2
        assert_one_line_error(capsys, layer, "threshold", "> 0")
    pickled = tmp_path / "pickled.pth"
    torch.save(torch.nn.Linear(2, 2), pickled)  # a whole module: pickled code
    assert run_script(main_test, base + ["--checkpoint", str(pickled)]) == 2
    assert_one_line_error(capsys, "pickled", "state_dict")
    assert run_script(main_test, ["-data", "cifar100", "--checkpoint",
                                  str(folder / f"{run_id}.pth")]) == 2
    assert_one_line_error(capsys, "10 classes", "cifar100")
    with pytest.raises(SystemExit):
        main_train.get_args_parser().parse_args(["--levels"])
    assert_one_line_error(capsys, "--levels", "expected one argument")
    if not torch.cuda.is_available():
        assert run_script(main_train, TRAIN + ["--amp", "--id", "x", "--checkpoint-dir",
                                               str(tmp_path)]) == 2
        assert_one_line_error(capsys, "--amp", "CUDA")


def image_tree(root, unreadable=False, empty_class=False):
    for split in ("train", "val"):
        for label in ("a", "b"):
            folder = root / split / label
            folder.mkdir(parents=True)
            if empty_class and label == "b":
                continue
            for i in range(3):
                Image.new("RGB", (16, 16), (i * 40, 0, 0)).save(folder / f"{i}.png")
    if unreadable:
        (root / "val" / "a" / "broken.png").write_bytes(b"not a png")
    return root


def test_bad_dataset_trees(tmp_path, capsys):
    import models
    model = models.create_model("vgg_small", num_classes=2, levels=2)
    ckpt = tmp_path / "folder.pth"
    torch.save({"format_version": 1, "state_dict": model.state_dict(), "args": {"image_size": 32},
                "model_args": {"arch": "vgg_small", "variant": "cifar", "num_classes": 2,
                               "levels": [2] * 5, "dataset": "imagenet"}}, ckpt)
    base = ["-data", "imagenet", "--checkpoint", str(ckpt), "-j", "0", "--no-progress",
            "--mode", "ann"]
    assert run_script(main_test, base + ["--data-root", str(tmp_path / "none")]) == 2
    assert_one_line_error(capsys, "val", "not a directory")
    empty = image_tree(tmp_path / "empty", empty_class=True)
    assert run_script(main_test, base + ["--data-root", str(empty)]) == 2
    assert_one_line_error(capsys, "no usable images", "b")
    broken = image_tree(tmp_path / "broken", unreadable=True)
    assert run_script(main_test, base + ["--data-root", str(broken)]) == 2
    assert_one_line_error(capsys, "broken.png")


# --- the neuron, property-based -------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(units=st.lists(st.integers(-64 * 12, 64 * 12), min_size=1, max_size=12),
       level=st.integers(1, 16))
def test_neuron_count_equals_closed_form(units, level):
    """Any input train, T_in and L: emitted count == clip(floor(sum + 1/2), 0, L).

    Inputs are multiples of 1/64 spike amplitude (amplitude 1/4 here), so every partial sum
    is exact and ties at k + 1/2 really are ties.
    """
    amplitude = 0.25
    neuron = PascalNeuron(level, torch.tensor(amplitude * level, dtype=torch.float64))
    x_seq = torch.tensor(units, dtype=torch.float64).view(-1, 1) / 64 * amplitude
    emitted = int((neuron(x_seq) != 0).sum())
    total = torch.tensor(sum(units) / 64, dtype=torch.float64)
    assert emitted == int(pascal_counts(total, level))
