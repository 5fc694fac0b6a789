"""Failure modes through the real scripts: signals, divergence, bad files, reproducibility."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import checkpoint
import engine
import main_test
import main_train
from conftest import run_script
from models import PascalNeuron, pascal_counts
from helpers import assert_one_line_error

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["-data", "digits", "-arch", "vgg_small", "-epochs", "2", "-b", "128", "-j", "0",
         "--no-progress", "--levels", "4,2,8,4,3"]


def train_subprocess(folder, run_id, *extra):
    env = dict(os.environ, OMP_NUM_THREADS="2")
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


def signal_at(monkeypatch, epoch, step, *signals):
    """Send real signals to this process when step ``step`` of epoch ``epoch`` (both 1-based)
    begins, in-process runs only; each is handled before the next is sent."""
    real = engine.step_seed

    def seed(run_seed, epoch_index, step_index, rank):
        if (epoch_index + 1, step_index + 1) == (epoch, step):
            for signum in signals:
                os.kill(os.getpid(), signum)
        return real(run_seed, epoch_index, step_index, rank)

    monkeypatch.setattr(engine, "step_seed", seed)


def test_sigterm_mid_epoch_then_resume_matches_uninterrupted(uninterrupted, tmp_path,
                                                              monkeypatch, capsys):
    folder, full = uninterrupted
    argv = TRAIN + ["--id", "cut", "--checkpoint-dir", str(tmp_path)]
    # SIGTERM twice (a scheduler may signal a worker directly and through its launcher): the
    # second is ignored; the step in hand finishes and a resumable checkpoint is written
    signal_at(monkeypatch, 2, 3, signal.SIGTERM, signal.SIGTERM)
    assert run_script(main_train, argv) == 128 + signal.SIGTERM
    out = capsys.readouterr().out
    assert "interrupted (signal 15) at epoch 2, step 3" in out and "--resume auto" in out
    saved = torch.load(tmp_path / "cut.pth", weights_only=True)
    assert saved["epoch"] == 1 and saved["partial_epoch"]["step"] == 3
    monkeypatch.undo()
    # resumed in a fresh process, as a user would
    resumed = train_subprocess(tmp_path, "cut", "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr
    assert "after epoch 1 + 3 steps of epoch 2" in resumed.stdout
    final = torch.load(tmp_path / "cut.pth", weights_only=True)
    assert final["epoch"] == 2 and final["partial_epoch"] is None
    assert_same_weights(final["state_dict"], full)


def test_second_sigint_stops_at_once_and_keeps_the_checkpoint(tmp_path, monkeypatch, capsys):
    argv = TRAIN + ["--id", "twice", "--checkpoint-dir", str(tmp_path)]
    handler = signal.getsignal(signal.SIGINT)
    signal_at(monkeypatch, 2, 3, signal.SIGINT, signal.SIGINT)
    assert run_script(main_train, argv) == 130
    assert "resumable checkpoint" not in capsys.readouterr().out  # left at once, saved nothing
    saved = torch.load(tmp_path / "twice.pth", weights_only=True)  # epoch-1 checkpoint, intact
    assert saved["epoch"] == 1 and saved["partial_epoch"] is None
    assert not list(tmp_path.glob(".twice.pth.tmp-*"))
    assert signal.getsignal(signal.SIGINT) is handler  # the run's handlers are gone


def test_sigterm_from_outside_the_process_mid_epoch(uninterrupted, tmp_path):
    """The same as a scheduler does it: SIGTERM to the training process's pid, from another
    process, while it trains; the run stops after a step and resumes to the same weights."""
    folder, full = uninterrupted
    env = dict(os.environ, OMP_NUM_THREADS="2")
    process = subprocess.Popen([sys.executable, str(ROOT / "main_train.py"), *TRAIN, "--id",
                                "ext", "--checkpoint-dir", str(tmp_path)], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    path = tmp_path / "ext.pth"
    deadline = time.monotonic() + 300
    while not path.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    # into epoch 2 by 0.3 s of CPU time (an epoch of 12 steps takes several seconds)
    used = cpu_seconds(process.pid)
    while cpu_seconds(process.pid) - used < 0.3 and process.poll() is None and \
            time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGTERM)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 128 + signal.SIGTERM, output
    saved = torch.load(path, weights_only=True)
    assert saved["epoch"] == 1 and 0 < saved["partial_epoch"]["step"] < 12, output
    resumed = train_subprocess(tmp_path, "ext", "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_weights(torch.load(path, weights_only=True)["state_dict"], full)


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
    real = engine.F.cross_entropy
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

    monkeypatch.setattr(engine.F, "cross_entropy", loss)


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
