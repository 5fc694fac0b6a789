"""Failure modes, injected from outside: signals (from another process, or sent while a
chosen sample is read), non-finite data and a diverging learning rate, a process killed while
it saves; bad files and data trees; reproducibility."""
import os
import re
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
from torch.utils.data import Subset

import checkpoint
import engine
import main_test
import main_train
import models
from config import TrainConfig
from conftest import run_script
from data import get_dataset
from errors import ExitCode
from helpers import FaultAt, assert_one_line_error, recording_logger
from models import PascalNeuron, pascal_counts
from utils import run_main

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


# the in-process runs: engine.fit on the digits as TRAIN trains them, faults from the data
BATCH = 128
EPOCH_READS = 1437  # the digits' training images: the samples one epoch reads


def read_in_step(epoch, step):
    """The number of the sample read in the middle of step ``step`` of epoch ``epoch`` (both
    1-based): fit reads one sample first (the image size), then each epoch's in batches."""
    return 1 + (epoch - 1) * EPOCH_READS + (step - 1) * BATCH + BATCH // 2


def fit_digits(folder, run_id, train_set, epochs=2, **changes):
    """``(FitResult, log messages)`` of engine.fit: vgg_small on ``train_set`` (the digits
    with a fault), levels 4,2,8,4,3, batch 128, evaluated on 64 test digits."""
    torch.manual_seed(0)
    model = models.create_model("vgg_small", num_classes=10, levels=[4, 2, 8, 4, 3])
    test_set = Subset(get_dataset("digits", None, "test"), range(64))
    logger, messages = recording_logger(run_id)
    config = TrainConfig(epochs=epochs, batch_size=BATCH, lr=0.05, workers=0, run_id=run_id,
                         checkpoint_dir=folder, show_progress=False, **changes)
    return engine.fit(model, train_set, test_set, config, logger=logger), messages


@pytest.mark.slow
def test_second_sigint_stops_at_once_and_keeps_the_checkpoint(tmp_path):
    handler = signal.getsignal(signal.SIGINT)
    train_set = FaultAt(get_dataset("digits", None, "train"), read_in_step(2, 3),
                        signals=(signal.SIGINT, signal.SIGINT))
    statuses = []
    # the scripts' wrapper: the second SIGINT's KeyboardInterrupt is status 130
    assert run_main(lambda _: statuses.append(fit_digits(tmp_path, "twice", train_set)),
                    None) == 130
    assert statuses == []  # fit never returned
    saved = torch.load(tmp_path / "twice.pth", weights_only=True)  # epoch-1 checkpoint, intact
    assert saved["epoch"] == 1 and saved["partial_epoch"] is None
    assert not list(tmp_path.glob(".twice.pth.tmp-*"))
    assert signal.getsignal(signal.SIGINT) is handler  # the run's handlers are gone


@pytest.mark.slow
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
    step = saved["partial_epoch"]["step"]
    assert saved["epoch"] == 1 and 0 < step < 12, output
    assert output.splitlines()[-2:] == [
        f"interrupted (signal 15) at epoch 2, step {step}; resumable checkpoint {path}",
        "run the same command with --resume auto (or --resume_from_ckpt=1) to continue"], output
    resumed = train_subprocess(tmp_path, "ext", "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr
    assert f"after epoch 1 + {step} steps of epoch 2" in resumed.stdout
    assert_same_weights(torch.load(path, weights_only=True)["state_dict"], full)


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


KILLED_WHILE_SAVING = """
import os, signal, sys
sys.path.insert(0, {repo!r})
import torch
from checkpoint import save_checkpoint


class KillWhenSaved:
    \"\"\"Pickled inside torch.save, after the temporary file is open: SIGKILL, no cleanup.\"\"\"

    def __reduce__(self):
        os.kill(os.getpid(), signal.SIGKILL)


save_checkpoint({path!r}, {{"epoch": 2, "weights": torch.ones(1000), "kill": KillWhenSaved()}})
"""


@pytest.mark.slow
def test_a_process_killed_while_saving_leaves_the_old_checkpoint(tmp_path):
    path = tmp_path / "run.pth"
    checkpoint.save_checkpoint(path, {"epoch": 1, "weights": torch.zeros(1000)})
    before = path.read_bytes()
    script = tmp_path / "save.py"
    script.write_text(KILLED_WHILE_SAVING.format(repo=str(ROOT), path=str(path)))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr
    # it died inside save_checkpoint: its temporary file is there, the checkpoint unchanged
    assert [p.name for p in tmp_path.glob(".run.pth.tmp-*")] != []
    assert path.read_bytes() == before
    loaded = checkpoint.load_checkpoint_file(path)
    assert loaded["epoch"] == 1 and torch.equal(loaded["weights"], torch.zeros(1000))


@pytest.mark.slow
def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    train_set = FaultAt(get_dataset("digits", None, "train"), read_in_step(2, 2),
                        nonfinite=True)  # a NaN image in step 2 of epoch 2
    result, messages = fit_digits(tmp_path, "nan", train_set)
    assert (result.status, result.epochs) == (ExitCode.DIVERGED, 1)
    assert messages[-1] == (f"training stopped: loss is nan at epoch 2, step 2; the last good "
                            f"checkpoint ({tmp_path / 'nan.pth'}) is intact")
    saved = torch.load(tmp_path / "nan.pth", weights_only=True)
    assert saved["epoch"] == 1 and saved["partial_epoch"] is None


@pytest.mark.slow
def test_a_diverging_script_says_which_flags_help(tmp_path, capsys):
    """A learning rate of 1e9 makes the loss non-finite within the first epoch: status 3,
    nothing saved, and the advice names the script's flags."""
    argv = TRAIN + ["--id", "lr", "--checkpoint-dir", str(tmp_path), "-lr", "1e9"]
    assert run_script(main_train, argv) == ExitCode.DIVERGED
    lines = capsys.readouterr().out.splitlines()
    assert re.match(r"training stopped: loss is (nan|inf) at epoch 1, step \d+;", lines[-2]), \
        lines[-2:]
    assert lines[-1] == "lower -lr, or pass --skip-nonfinite to skip non-finite steps"
    assert not (tmp_path / "lr.pth").exists()


@pytest.mark.slow
def test_skip_nonfinite_counts_skipped_batches(tmp_path):
    train_set = FaultAt(get_dataset("digits", None, "train"), read_in_step(1, 5),
                        nonfinite=True)
    result, messages = fit_digits(tmp_path, "skip", train_set, epochs=1, skip_nonfinite=True)
    assert result.status == ExitCode.OK
    assert "epoch 1 step 5: non-finite loss, skipped" in messages
    epoch_line = next(m for m in messages if m.startswith("epoch 1/1 "))
    assert epoch_line.endswith("(1 non-finite batches skipped)"), epoch_line
    rows = (tmp_path / "skip_epochs.csv").read_text().splitlines()
    assert dict(zip(rows[0].split(","), rows[1].split(",")))["skipped_batches"] == "1"


def test_a_skipped_step_leaves_the_network_finite(tmp_path):
    torch.manual_seed(0)
    model = models.create_model("vgg_small", num_classes=10, levels=[4, 2, 8, 4, 3])
    train_set = FaultAt(Subset(get_dataset("digits", None, "train"), range(128)), 1 + 64 + 32,
                        nonfinite=True)  # step 2 of batch 64
    test_set = Subset(get_dataset("digits", None, "test"), range(64))
    config = TrainConfig(epochs=1, batch_size=64, workers=0, run_id="skip",
                         checkpoint_dir=tmp_path, show_progress=False, skip_nonfinite=True)
    result = engine.fit(model, train_set, test_set, config, logger=recording_logger("nan")[0])
    assert result.status == ExitCode.OK
    state = torch.load(tmp_path / "skip.pth", weights_only=True)["state_dict"]
    assert [key for key, value in state.items() if not torch.isfinite(value.float()).all()] == []


@pytest.mark.slow
def test_same_seed_gives_bit_identical_weights(uninterrupted, tmp_path):
    folder, full = uninterrupted
    assert run_script(main_train, TRAIN + ["--id", "again", "--checkpoint-dir",
                                           str(tmp_path)]) == 0
    assert_same_weights(torch.load(tmp_path / "again.pth", weights_only=True)["state_dict"], full)


@pytest.mark.slow
def test_deterministic_flag_turns_on_deterministic_algorithms(tmp_path):
    done = train_subprocess(tmp_path, "det", "--deterministic", "-epochs", "1")
    assert done.returncode == 0, done.stderr
    assert "deterministic algorithms on" in done.stdout


@pytest.mark.slow
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
