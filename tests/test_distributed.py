"""main.py on a generated ImageFolder tree: torchrun, the reference spawn launch, one process;
elastic restarts and preemption, with faults injected from outside (real signals to the real
process ids, found as children of the launcher in /proc; killed processes).

The multi-process runs are real subprocesses (2 CPU processes, gloo), as a user starts them;
single-process runs call ``main(args)`` in-process like the other script tests.
"""
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Subset

import main as main_imagenet
import main_test
from al_metric import DEFAULT_THRESHOLDS, collect_level_counts, layer_metrics
from checkpoint import load_checkpoint_file, model_from_checkpoint
from data import image_folder, imagenet_transforms, make_loader
from conftest import run_script
from helpers import assert_one_line_error
from models.timing import layer_fan_ins, teff

REPO = Path(__file__).resolve().parents[1]
NUM_CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS = 4, 40, 5
NUM_VAL = NUM_CLASSES * VAL_PER_CLASS + 1  # 21: odd, so a padding sampler would count 22
BATCH = 8
STEPS = NUM_CLASSES * TRAIN_PER_CLASS // BATCH  # 20 steps per epoch
# vgg_small learns the coloured classes within one epoch with these settings, so the
# checkpoints make distinct, well-separated predictions (not a constant network)
COMMON = ["-a", "vgg_small", "--image-size", "32", "-b", str(BATCH), "--lr", "0.1",
          "--init-threshold", "1", "-j", "0", "--no-progress"]
CPU = COMMON + ["-dev", "cpu"]  # the gloo runs stay on the CPU on a machine with GPUs too
LAUNCH_TIMEOUT = 120  # seconds; the acceptance bound for a job with a dead worker
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
pytestmark = pytest.mark.slow  # real training jobs, most of them several processes


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    """DIR/train and DIR/val: 4 classes of 64x64 PNGs, each class a noisy colour."""
    root = tmp_path_factory.mktemp("imagefolder")
    rng = np.random.default_rng(0)
    colours = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40)]
    for split, count in (("train", TRAIN_PER_CLASS), ("val", VAL_PER_CLASS)):
        for index, colour in enumerate(colours):
            folder = root / split / f"n{index:08d}"
            folder.mkdir(parents=True)
            extra = 1 if split == "val" and index == 0 else 0
            for i in range(count + extra):
                pixels = np.asarray(colour)[None, None, :] + rng.normal(0, 40, (64, 64, 3))
                Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
                    folder / f"{i}.png")
    return root


@pytest.fixture
def one_thread():
    """In-process runs on one thread, as each launched process gets (OMP_NUM_THREADS=1):
    tiny convolutions gain nothing from more, and lose much when the cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(argv, torchrun=False, nproc=2, max_restarts=0):
    """Start main.py as a user would, in its own session; returns the Popen."""
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
                                "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RESTART_COUNT")}
    environment["OMP_NUM_THREADS"] = "1"
    prefix = [sys.executable, "-m", "torch.distributed.run", "--standalone",
              f"--nproc_per_node={nproc}", f"--max-restarts={max_restarts}"] \
        if torchrun else [sys.executable]
    return subprocess.Popen(prefix + [str(REPO / "main.py")] + argv, cwd=REPO,
                            env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def finish(process, timeout=LAUNCH_TIMEOUT):
    """Wait for the job; past ``timeout`` kill it and every process it started, and fail."""
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for pid in descendants(process.pid) + [process.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        output, _ = process.communicate()
        pytest.fail(f"main.py still running after {timeout}s:\n{output[-3000:]}")
    return process.returncode, output


def launch(argv, torchrun=False, nproc=2):
    """Run main.py to the end; returns ``(returncode, seconds, output)``."""
    started = time.monotonic()
    status, output = finish(start(argv, torchrun, nproc))
    return status, time.monotonic() - started, output


def children(pid):
    """Process ids whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def descendants(pid):
    found = []
    for child in children(pid):
        found += [child] + descendants(child)
    return found


def training_workers(launcher):
    """``{rank: pid}`` of the training processes a launcher started: its children that run
    main.py (torchrun sets RANK in their environment; spawned workers are numbered in start
    order, which is their local rank)."""
    workers = {}
    for pid in sorted(children(launcher)):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                command = handle.read()
            with open(f"/proc/{pid}/environ", "rb") as handle:
                environment = dict(item.split(b"=", 1) for item in handle.read().split(b"\0")
                                   if b"=" in item)
        except OSError:
            continue
        if b"RANK" in environment:
            workers[int(environment[b"RANK"])] = pid
        elif b"spawn_main" in command:
            workers[len(workers)] = pid
    return workers


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def signal_arrived(pid, signum):
    """Whether ``signum`` has reached stopped process ``pid``: pending for the process or one
    of its threads, or being handled by one of them.

    The second case is real: when the signal arrives before the kernel has stopped every
    thread (the machine is busy), a thread takes it first (a lower signal number is taken
    before SIGSTOP), its handler's frame is set up with the signal blocked, and the thread
    stops before running it. Nothing in these processes blocks SIGTERM otherwise (the
    workers' and torch's threads block no signal), so a blocked SIGTERM means exactly this.
    """
    bit = 1 << (signum - 1)
    masks = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/status") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key in ("SigPnd", "ShdPnd", "SigBlk"):
                    masks |= int(value, 16)
    return bool(masks & bit)


def wait_until(condition, process, what, timeout=LAUNCH_TIMEOUT):
    """Poll ``condition`` until it holds; if the job ends first, or an error occurs, or
    ``timeout`` passes, stop the job and fail with its output."""
    deadline = time.monotonic() + timeout
    try:
        while not condition():
            if process.poll() is not None:
                pytest.fail(f"the job ended before {what}:\n{process.communicate()[0][-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{timeout}s passed")
            time.sleep(0.005)
    except (OSError, TimeoutError) as error:
        states = {pid: process_state(pid) for pid in [process.pid] + descendants(process.pid)}
        for pid in descendants(process.pid) + [process.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        pytest.fail(f"waiting until {what}: {error!r}; processes: {states}; the job said:\n"
                    f"{process.communicate()[0][-4000:]}")


def process_state(pid):
    """State, pending and caught signals and command of a process, for failure messages."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            lines = [line.split(":", 1) for line in handle]
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            command = handle.read().replace(b"\0", b" ")[-80:].decode(errors="replace")
    except OSError as error:
        return repr(error)
    keep = ("State", "SigPnd", "ShdPnd", "SigBlk", "SigCgt", "Threads")
    return {key: value.strip() for key, value in lines if key in keep} | {"cmd": command}


def wait_for_workers(process, count=2):
    workers = {}

    def found():
        workers.update(training_workers(process.pid))
        return len(workers) >= count

    wait_until(found, process, f"{count} training processes started")
    return workers


def signal_all(pids, signum):
    for pid in pids:
        os.kill(pid, signum)


def assert_same_training_state(path_a, path_b):
    """Every state_dict tensor (parameters, buffers, thresholds) and every momentum buffer."""
    a = torch.load(path_a, weights_only=True)
    b = torch.load(path_b, weights_only=True)
    assert a["epoch"] == b["epoch"] and a["partial_epoch"] is b["partial_epoch"] is None
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    momentum_a, momentum_b = a["optimizer"]["state"], b["optimizer"]["state"]
    assert momentum_a.keys() == momentum_b.keys() and momentum_a
    for key, state in momentum_a.items():
        assert torch.equal(state["momentum_buffer"], momentum_b[key]["momentum_buffer"]), key


def evaluate_checkpoint(image_root, folder, run_id, dtype, mode="both"):
    """main_test.py in-process on DIR/val, as the README tells users to run it."""
    output = folder / f"{run_id}_{dtype}_{mode}.json"
    assert run_script(main_test, [
        "-data", "imagenet", "--data-root", str(image_root), "--id", run_id,
        "--checkpoint-dir", str(folder), "--dtype", dtype, "--mode", mode, "-dev", "cpu",
        "-j", "0", "--no-progress", "--output", str(output)]) == 0
    return json.loads(output.read_text())


def check_run(image_root, folder, run_id, epochs=1, levels=None):
    """A finished run's checkpoint: self-describing, exact as SNN, and its reported test
    accuracy is that of a single-process evaluation over every val image exactly once."""
    checkpoint = torch.load(folder / f"{run_id}.pth", weights_only=True)
    assert checkpoint["model_args"] == {"arch": "vgg_small", "variant": "imagenet",
                                        "num_classes": NUM_CLASSES,
                                        "levels": levels or [4] * 5, "dataset": "imagenet",
                                        "dropout": 0.0, "activation": "qcfs",
                                        "image_size": 32}
    assert checkpoint["epoch"] == epochs and checkpoint["config"]["epochs"] >= epochs
    assert checkpoint["test_images"] == NUM_VAL
    log = (folder / f"{run_id}.log").read_text()
    assert f"acc {checkpoint['test_acc1']:.2f}% ({NUM_VAL} images)" in log

    exact = evaluate_checkpoint(image_root, folder, run_id, "float64")
    assert exact["num_images"] == NUM_VAL
    assert exact["ann_top1"] == exact["snn_top1"] and exact["agreement"] == 100.0
    assert all(v == 1.0 for v in exact["layer_count_agreement"].values())
    # same images, same weights, same BatchNorm statistics: the same count of correct images
    assert checkpoint["test_acc1"] == exact["ann_top1"]
    single = evaluate_checkpoint(image_root, folder, run_id, "float32", mode="ann")
    assert checkpoint["test_acc1"] == single["ann_top1"]
    return checkpoint, exact


def run_argv(folder, run_id, image_root, epochs=3, *extra):
    return CPU + ["--epochs", str(epochs), "--id", run_id, "--checkpoint-dir", str(folder),
                  "--resume", "auto", *extra, str(image_root)]


@pytest.fixture(scope="module")
def uninterrupted(image_root, tmp_path_factory):
    """A 3-epoch, 2-process torchrun run that nothing interrupts: what every interrupted and
    resumed run must end equal to."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    status, _, output = launch(run_argv(folder, "full", image_root), torchrun=True)
    assert status == 0, output
    return folder / "full.pth"


def test_torchrun_two_cpu_processes(image_root, tmp_path, one_thread):
    status, seconds, output = launch(CPU + ["--epochs", "1", "--id", "tr",
                                            "--checkpoint-dir", str(tmp_path),
                                            str(image_root)], torchrun=True)
    assert status == 0, output
    assert "2 process(es) (torchrun, gloo)" in output, output
    assert f"batch {BATCH} ({BATCH // 2} per process)" in output
    _, exact = check_run(image_root, tmp_path, "tr")
    assert exact["ann_top1"] > 40  # learned something (chance: 25 %)


def test_main_train_under_torchrun(tmp_path):
    """main_train.py runs the same engine under torchrun: the digits on 2 gloo processes."""
    environment = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    environment["OMP_NUM_THREADS"] = "1"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", str(REPO / "main_train.py"), "-data", "digits",
                           "-arch", "vgg_small", "-epochs", "1", "-b", "128", "-j", "0",
                           "--no-progress", "--id", "mt", "--checkpoint-dir", str(tmp_path)],
                          cwd=REPO, env=environment, capture_output=True, text=True,
                          timeout=LAUNCH_TIMEOUT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 processes (torchrun, gloo), batch 128 (64 per process)" in done.stdout
    checkpoint = torch.load(tmp_path / "mt.pth", weights_only=True)
    assert checkpoint["epoch"] == 1 and checkpoint["world_size"] == 2
    assert checkpoint["test_images"] == 360


def test_reference_spawn_launch_two_cpu_processes(image_root, tmp_path, one_thread):
    status, seconds, output = launch(CPU + ["--epochs", "1", "--id", "sp",
                                            "--checkpoint-dir", str(tmp_path)] +
                                     spawn_argv() + [str(image_root)])
    assert status == 0, output
    assert "2 process(es) (--multiprocessing-distributed, gloo)" in output, output
    check_run(image_root, tmp_path, "sp")


def spawn_argv(nproc=2, backend="gloo"):
    """The reference README's launch line; on CPUs, gloo and --nproc N processes."""
    return ["--dist-url", f"tcp://127.0.0.1:{free_port()}", "--dist-backend", backend,
            "--multiprocessing-distributed", "--world-size", "1", "--rank", "0"] + \
        (["--nproc", str(nproc)] if nproc else [])


def test_elastic_restart_resumes_and_matches_an_uninterrupted_run(image_root, tmp_path,
                                                                  uninterrupted):
    """torchrun --max-restarts=1: rank 1 killed in epoch 2; the group restarts, resumes from
    the epoch-1 checkpoint and ends where the uninterrupted run ends, bit for bit."""
    process = start(run_argv(tmp_path, "el", image_root), torchrun=True, max_restarts=1)
    path = tmp_path / "el.pth"
    workers = wait_for_workers(process)
    wait_until(path.exists, process, "the epoch-1 checkpoint appeared")
    signal_all(workers.values(), signal.SIGSTOP)
    assert torch.load(path, weights_only=True)["epoch"] == 1
    os.kill(workers[1], signal.SIGKILL)
    os.kill(workers[0], signal.SIGCONT)
    status, output = finish(process)
    assert status == 0, output
    assert "restarted by torchrun (restart 1): resuming run el after epoch 1" in output, output
    log = (tmp_path / "el.log").read_text()
    assert "restarted by torchrun (restart 1)" in log and "epoch 3/3" in log
    assert_same_training_state(path, uninterrupted)


@pytest.mark.parametrize("torchrun", [True, False], ids=["torchrun", "spawn"])
def test_sigterm_to_the_launcher_saves_mid_epoch_and_the_relaunch_matches(
        image_root, tmp_path, uninterrupted, torchrun):
    """A scheduler's preemption: SIGTERM to the launcher in the middle of epoch 2. Every
    process stops after the same step, rank 0 writes a mid-epoch checkpoint, the job exits
    non-zero; the same command again finishes the run, equal to the uninterrupted one."""
    argv = run_argv(tmp_path, "pre", image_root) + ([] if torchrun else spawn_argv())
    process = start(argv, torchrun=torchrun)
    path = tmp_path / "pre.pth"
    workers = list(wait_for_workers(process).values())
    wait_until(path.exists, process, "the epoch-1 checkpoint appeared")
    # let the workers spend some CPU time in epoch 2 (an epoch takes several times this),
    # so that the signal lands between its first and last steps
    used = {pid: cpu_seconds(pid) for pid in workers}
    wait_until(lambda: all(cpu_seconds(pid) - used[pid] >= 0.06 for pid in workers), process,
               "epoch 2 was under way")
    signal_all(workers, signal.SIGSTOP)
    assert torch.load(path, weights_only=True)["epoch"] == 1
    os.kill(process.pid, signal.SIGTERM)
    # the launcher forwards SIGTERM to every (stopped) worker: wait until it has arrived
    wait_until(lambda: all(signal_arrived(pid, signal.SIGTERM) for pid in workers), process,
               "SIGTERM reached the workers")
    signal_all(workers, signal.SIGCONT)
    status, output = finish(process)
    assert status != 0, output
    saved = torch.load(path, weights_only=True)
    assert saved["epoch"] == 1 and 0 < saved["partial_epoch"]["step"] < STEPS, \
        saved["partial_epoch"]
    assert "interrupted (signal 15) at epoch 2" in output, output
    assert not list(tmp_path.glob(".pre.pth.tmp-*"))

    if not torchrun:
        argv = run_argv(tmp_path, "pre", image_root) + spawn_argv()  # a fresh port
    status, output = finish(start(argv, torchrun=torchrun))
    assert status == 0, output
    assert f"resuming run pre after epoch 1 + {saved['partial_epoch']['step']} steps of " \
           "epoch 2" in output, output
    assert_same_training_state(path, uninterrupted)


@pytest.mark.parametrize("torchrun", [True, False], ids=["torchrun", "spawn"])
def test_a_killed_worker_ends_the_job_and_the_last_checkpoint_stays(image_root, tmp_path,
                                                                    torchrun):
    """No restarts: rank 1 killed in epoch 2 ends the whole job within seconds; nothing is
    written after the collective error, so the epoch-1 checkpoint stays and loads."""
    argv = CPU + ["--epochs", "3", "--id", "k", "--checkpoint-dir", str(tmp_path)] + \
        ([] if torchrun else spawn_argv()) + [str(image_root)]
    process = start(argv, torchrun=torchrun)
    path = tmp_path / "k.pth"
    workers = wait_for_workers(process)
    wait_until(path.exists, process, "the epoch-1 checkpoint appeared")
    before = path.read_bytes()
    started = time.monotonic()
    os.kill(workers[1], signal.SIGKILL)
    status, output = finish(process)
    assert status != 0, output
    assert time.monotonic() - started < LAUNCH_TIMEOUT
    assert path.read_bytes() == before  # epoch 2 never completed
    checkpoint = load_checkpoint_file(path)
    assert checkpoint["partial_epoch"] is None
    model, model_args = model_from_checkpoint(checkpoint, path, dataset="imagenet")
    assert model_args["num_classes"] == NUM_CLASSES


def test_a_nonfinite_loss_is_agreed_by_every_process(image_root, tmp_path):
    """A learning rate of 1e9 diverges within a few steps. Every process sees the agreed
    decision: all stop (status 3, nothing written), or with --skip-nonfinite all skip the
    same steps and the run completes (no process waits in a gradient exchange)."""
    argv = CPU + ["--lr", "1e9", "--epochs", "1", "--checkpoint-dir", str(tmp_path)]
    status, _, output = launch(argv + ["--id", "nan", str(image_root)], torchrun=True)
    assert status != 0 and "exitcode  : 3" in output, output
    assert "training stopped: loss is nan at epoch 1" in output, output
    assert not (tmp_path / "nan.pth").exists()
    status, _, output = launch(argv + ["--id", "skip", "--skip-nonfinite", str(image_root)],
                               torchrun=True)
    assert status == 0, output
    rows = (tmp_path / "skip_epochs.csv").read_text().splitlines()
    skipped = int(rows[1].split(",")[rows[0].split(",").index("skipped_batches")])
    assert 0 < skipped <= STEPS and f"({skipped} non-finite batches skipped)" in output


def test_adaptive_levels_under_ddp(image_root, tmp_path):
    """--adaptive with 2 processes: rank 0 computes the AL metric, every rank takes (and
    checks) the same levels, they are stored, and the result is exact as an SNN."""
    argv = CPU + ["--epochs", "2", "--adaptive", "--phase1-epochs", "1", "--levels", "8",
                  "--stats-batches", "4", "--id", "ad", "--checkpoint-dir", str(tmp_path),
                  str(image_root)]
    status, _, output = launch(argv, torchrun=True)
    assert status == 0, output
    checkpoint = torch.load(tmp_path / "ad.pth", weights_only=True)
    levels = checkpoint["model_args"]["levels"]
    assert checkpoint["adaptive"]["levels"] == levels
    assert checkpoint["adaptive"]["method"] == "al_metric"
    assert f"-> {levels} (the same on all 2 processes)" in output, output

    # the levels are the AL rule's on the phase-1 weights: recompute them independently,
    # on the same 4 x 8 training images with evaluation transforms
    phase1 = load_checkpoint_file(tmp_path / "ad_phase1.pth")
    model, _ = model_from_checkpoint(phase1, tmp_path / "ad_phase1.pth")
    stats = Subset(image_folder(image_root, "train", imagenet_transforms(False, 32)),
                   range(4 * BATCH))
    counts = collect_level_counts(model, make_loader(stats, 4, False), torch.device("cpu"))
    rows = layer_metrics(model, counts, 5, None, DEFAULT_THRESHOLDS)
    assert levels == [row["suggested_level"] for row in rows]
    check_run(image_root, tmp_path, "ad", epochs=2, levels=levels)


def test_level_search_under_ddp(image_root, tmp_path):
    """--adaptive --budget-teff with 2 processes: rank 0 searches, the levels are broadcast
    and checked on every rank, they meet the budget, and the result is exact as an SNN."""
    argv = CPU + ["--epochs", "2", "--adaptive", "--phase1-epochs", "1", "--levels", "8",
                  "--budget-teff", "3", "--calib-images", "32", "--id", "ls",
                  "--checkpoint-dir", str(tmp_path), str(image_root)]
    status, _, output = launch(argv, torchrun=True)
    assert status == 0, output
    checkpoint = torch.load(tmp_path / "ls.pth", weights_only=True)
    adaptive, levels = checkpoint["adaptive"], checkpoint["model_args"]["levels"]
    assert adaptive["method"] == "level_search" and adaptive["budget_teff"] == 3.0
    assert adaptive["levels"] == levels == adaptive["level_search"]["levels"]
    assert f"-> {levels} (the same on all 2 processes)" in output, output
    assert "level search at T_eff <= 3 on 32 training images" in output
    model, _ = model_from_checkpoint(checkpoint, tmp_path / "ls.pth")
    assert teff(levels, layer_fan_ins(model))[0] <= 3.0 + 1e-9
    check_run(image_root, tmp_path, "ls", epochs=2, levels=levels)


def test_single_process_resume_restores_optimizer_and_schedule(image_root, tmp_path,
                                                               one_thread):
    # the runs compared are separate processes started alike (OMP_NUM_THREADS=1): a run in
    # this process, started with other thread settings, rounds differently, and training
    # amplifies that
    common = CPU + ["--epochs", "2", "--checkpoint-dir", str(tmp_path)]
    status, _, output = launch(common + ["--id", "full", str(image_root)])
    assert status == 0, output

    # a scheduler's SIGTERM to a single training process (no launcher) in the middle of
    # epoch 2: the step in hand finishes, a mid-epoch checkpoint is written, it exits 128 + 15
    process = start(common + ["--id", "split", str(image_root)])
    path = tmp_path / "split.pth"
    wait_until(path.exists, process, "the epoch-1 checkpoint appeared")
    used = cpu_seconds(process.pid)  # an epoch takes several times this much CPU time
    wait_until(lambda: cpu_seconds(process.pid) - used >= 0.06, process, "epoch 2 was under way")
    os.kill(process.pid, signal.SIGTERM)
    status, output = finish(process)
    assert status == 128 + signal.SIGTERM, output
    after = torch.load(path, weights_only=True)
    step = after["partial_epoch"]["step"]
    assert after["epoch"] == 1 and 0 < step < STEPS, output
    status, _, output = launch(common + ["--id", "split", "--resume", str(path),
                                         str(image_root)])
    assert status == 0, output
    assert f"resuming run split after epoch 1 + {step} steps of epoch 2" in \
        (tmp_path / "split.log").read_text()
    assert_same_training_state(tmp_path / "full.pth", tmp_path / "split.pth")

    # the reference workflow: a finished run continued with new per-layer levels to more
    # epochs (phase 2) follows the cosine of the new length from where it stands, not the
    # finished schedule's final rate of 0
    assert run_script(main_imagenet, CPU + ["--epochs", "3", "--checkpoint-dir", str(tmp_path),
                                            "--id", "full", "--resume_from_ckpt=1",
                                            "--levels", "2,4,4,8,1", str(image_root)]) == 0
    rows = (tmp_path / "full_epochs.csv").read_text().splitlines()
    assert rows[0].split(",")[:2] == ["epoch", "lr"] and rows[-1].startswith("3,")
    assert float(rows[-1].split(",")[1]) == pytest.approx(0.1 * (1 + math.cos(math.pi * 2 / 3))
                                                          / 2)
    phase2 = torch.load(tmp_path / "full.pth", weights_only=True)
    assert phase2["epoch"] == 3 and phase2["model_args"]["levels"] == [2, 4, 4, 8, 1]
    # an existing run is neither overwritten nor resumed silently
    assert run_script(main_imagenet, common + ["--id", "split", str(image_root)]) == 2


def test_data_root_flag_and_device_spellings(image_root, tmp_path, capsys, one_thread):
    argv = CPU + ["--epochs", "1", "--id", "dr", "--checkpoint-dir", str(tmp_path)]
    assert run_script(main_imagenet, argv + ["--data-root", str(image_root)]) == 0
    assert torch.load(tmp_path / "dr.pth", weights_only=True)["epoch"] == 1
    assert run_script(main_imagenet, argv + ["--overwrite"]) == 2
    assert_one_line_error(capsys, "no data folder", "--data-root")
    assert run_script(main_imagenet, argv + ["--overwrite", "--data-root", str(tmp_path),
                                             str(image_root)]) == 2
    assert_one_line_error(capsys, "given twice")
    for device, fragment in (("meta", "not supported"), ("cuda:x", "unknown device")):
        assert run_script(main_imagenet, COMMON + ["-dev", device, str(image_root)]) == 2
        assert_one_line_error(capsys, fragment)


def test_bad_data_folders_give_one_line_and_exit_2(tmp_path, capsys):
    def tree(name, files):
        root = tmp_path / name
        root.mkdir()
        for relative in files:  # "x/" is an empty folder, "x.png" an image, else a text file
            if relative.endswith("/"):
                (root / relative).mkdir(parents=True, exist_ok=True)
                continue
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            if relative.endswith(".png"):
                Image.new("RGB", (8, 8)).save(root / relative)
            else:
                (root / relative).write_text("x")
        return root

    image = "a/0.png"
    cases = [
        (tmp_path / "nowhere", ["is not a directory"]),
        (tree("no_train", [f"val/{image}"]), ["train", "is missing", "train/ and val/"]),
        (tree("no_val", [f"train/{image}"]), ["val", "is missing"]),
        (tree("no_classes", ["train/readme.txt", f"val/{image}"]), ["no class sub-folders"]),
        (tree("no_images", ["train/a/notes.txt", "val/a/notes.txt"]), ["holds no images"]),
        (tree("empty_class", [f"train/{image}", "train/b/", f"val/{image}", "val/b/"]),
         ["b holds no images"]),
        (tree("class_mismatch", [f"train/{image}", "train/b/0.png", f"val/{image}"]),
         ["same class folders", "only in train/: b"]),
    ]
    for root, fragments in cases:
        # a tree wrongly accepted would train one short epoch, not 90 of ResNet-34
        assert run_script(main_imagenet, CPU + ["--epochs", "1", "--checkpoint-dir",
                                                str(tmp_path / "ck"), str(root)]) == 2, root
        assert_one_line_error(capsys, *fragments)
    assert not (tmp_path / "ck").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on CPU machines")
def test_reference_nccl_line_without_gpus_suggests_gloo(image_root, tmp_path, capsys):
    argv = ["-a", "resnet34", "--dist-url", "tcp://127.0.0.1:23456", "--dist-backend", "nccl",
            "--multiprocessing-distributed", "--world-size", "1", "--rank", "0", str(image_root)]
    args = main_imagenet.get_args_parser().parse_args(argv)  # the README line, verbatim
    assert (args.arch, args.dist_backend, args.world_size, args.rank) == \
        ("resnet34", "nccl", 1, 0)
    assert run_script(main_imagenet, argv) == 2
    assert_one_line_error(capsys, "nccl", "--dist-backend gloo")
    assert run_script(main_imagenet, argv[:4] + ["--dist-backend", "gloo"] + argv[6:]) == 2
    assert_one_line_error(capsys, "--nproc")
    for flags, fragment in ((["--amp"], "--amp"), (["--sync-bn"], "--sync-bn"),
                            (["--world-size", "2"], "--multiprocessing-distributed"),
                            (["--nproc", "2"], "--nproc_per_node"),
                            (["-dev", "cuda"], "CUDA is not available")):
        assert run_script(main_imagenet, flags + [str(image_root)]) == 2
        assert_one_line_error(capsys, fragment)


def assert_grad_scaler_scale(scale):
    """GradScaler starts at 2**16 and only halves (on an overflow) or doubles (after 2000
    clean steps, more than these runs take): a power of two no larger than 65536."""
    mantissa, exponent = math.frexp(float(scale))
    assert mantissa == 0.5 and exponent - 1 <= 16, scale


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("torchrun", [False, True], ids=["spawn", "torchrun"])
def test_nccl_amp_sync_bn_on_gpus(image_root, tmp_path, torchrun):
    """One process per visible GPU with NCCL, AMP and SyncBatchNorm; resume keeps the scaler."""
    argv = COMMON + ["--epochs", "1", "--id", "gpu", "--checkpoint-dir", str(tmp_path),
                     "--amp", "--sync-bn"]
    argv += [] if torchrun else spawn_argv(nproc=None, backend="nccl")
    nproc = torch.cuda.device_count()
    status, _, output = launch(argv + [str(image_root)], torchrun, nproc=nproc)
    assert status == 0, output
    assert f"{nproc} process(es)" in output and "nccl" in output and "AMP" in output
    checkpoint = torch.load(tmp_path / "gpu.pth", weights_only=True)
    assert_grad_scaler_scale(checkpoint["scaler"]["scale"])
    exact = evaluate_checkpoint(image_root, tmp_path, "gpu", "float64")
    assert exact["ann_top1"] == exact["snn_top1"] and exact["num_images"] == NUM_VAL
    argv[argv.index("--epochs") + 1] = "2"
    status, _, output = launch(argv + ["--resume_from_ckpt=1", str(image_root)], torchrun,
                               nproc=nproc)
    assert status == 0, output
    assert "resuming run gpu after epoch 1" in output and "epoch 2/2" in output


@cuda
@pytest.mark.cuda
def test_single_gpu_amp_in_process(image_root, tmp_path):
    argv = COMMON + ["--epochs", "1", "--id", "amp", "--checkpoint-dir", str(tmp_path),
                     "--amp", str(image_root)]
    assert run_script(main_imagenet, argv) == 0
    checkpoint = torch.load(tmp_path / "amp.pth", weights_only=True)
    assert checkpoint["config"]["amp"]
    assert_grad_scaler_scale(checkpoint["scaler"]["scale"])
    assert checkpoint["test_images"] == NUM_VAL
