"""main.py on a generated ImageFolder tree: torchrun, the reference spawn launch, one process.

The multi-process runs are real subprocesses (2 CPU processes, gloo), as a user starts them;
single-process runs call ``main(args)`` in-process like the other script tests.
"""
import copy
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

import main as main_imagenet
import main_test
from checkpoint import load_checkpoint_file, model_from_checkpoint
from conftest import run_script
from helpers import assert_one_line_error

REPO = Path(__file__).resolve().parents[1]
NUM_CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS = 4, 12, 5
NUM_VAL = NUM_CLASSES * VAL_PER_CLASS + 1  # 21: odd, so a padding sampler would count 22
# vgg_small learns the coloured classes within one epoch of 6 steps with these settings, so
# the checkpoints make distinct, well-separated predictions (not a constant network)
COMMON = ["-a", "vgg_small", "--image-size", "32", "-b", "8", "--lr", "0.1",
          "--init-threshold", "1", "-j", "0", "--no-progress"]
CPU = COMMON + ["-dev", "cpu"]  # the gloo runs stay on the CPU on a machine with GPUs too
LAUNCH_TIMEOUT = 120  # seconds; the acceptance bound for a job with a dead worker
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


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


def launch(argv, torchrun=False, env=None, nproc=2):
    """Run main.py as a user would; returns ``(returncode, seconds, output)``.

    The job gets its own process group so that, should it outlive LAUNCH_TIMEOUT, the test
    kills every process it started (launcher and workers) and fails instead of hanging.
    """
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
                                "MASTER_ADDR", "MASTER_PORT", main_imagenet.KILL_RANK_ENV)}
    environment.update({"OMP_NUM_THREADS": "1", **(env or {})})
    prefix = [sys.executable, "-m", "torch.distributed.run", "--standalone",
              f"--nproc_per_node={nproc}"] if torchrun else [sys.executable]
    started = time.monotonic()
    process = subprocess.Popen(prefix + [str(REPO / "main.py")] + argv, cwd=REPO,
                               env=environment, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=LAUNCH_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"main.py still running after {LAUNCH_TIMEOUT}s:\n{output[-3000:]}")
    return process.returncode, time.monotonic() - started, output


def spawn_argv(nproc=2, backend="gloo"):
    """The reference README's launch line; on CPUs, gloo and --nproc N processes."""
    return ["--dist-url", f"tcp://127.0.0.1:{free_port()}", "--dist-backend", backend,
            "--multiprocessing-distributed", "--world-size", "1", "--rank", "0"] + \
        (["--nproc", str(nproc)] if nproc else [])


def evaluate_checkpoint(image_root, folder, run_id, dtype, mode="both"):
    """main_test.py in-process on DIR/val, as the README tells users to run it."""
    output = folder / f"{run_id}_{dtype}_{mode}.json"
    assert run_script(main_test, [
        "-data", "imagenet", "--data-root", str(image_root), "--id", run_id,
        "--checkpoint-dir", str(folder), "--dtype", dtype, "--mode", mode, "-dev", "cpu",
        "-j", "0", "--no-progress", "--output", str(output)]) == 0
    return json.loads(output.read_text())


def check_run(image_root, folder, run_id, epochs=1):
    """A finished run's checkpoint: self-describing, exact as SNN, and its reported val
    accuracy is that of a single-process evaluation over every val image exactly once."""
    checkpoint = torch.load(folder / f"{run_id}.pth", weights_only=True)
    assert checkpoint["model_args"] == {"arch": "vgg_small", "variant": "imagenet",
                                        "num_classes": NUM_CLASSES, "levels": [4] * 5,
                                        "dataset": "imagenet"}
    assert checkpoint["epoch"] == epochs and checkpoint["args"]["image_size"] == 32
    assert checkpoint["val_images"] == NUM_VAL
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


def test_torchrun_two_cpu_processes(image_root, tmp_path, one_thread):
    status, seconds, output = launch(CPU + ["--epochs", "1", "--id", "tr",
                                               "--checkpoint-dir", str(tmp_path),
                                               str(image_root)], torchrun=True)
    assert status == 0, output
    assert "2 process(es) (torchrun, gloo)" in output, output
    assert "batch 8 (4 per process)" in output
    _, exact = check_run(image_root, tmp_path, "tr")
    assert exact["ann_top1"] > 40  # learned something (chance: 25 %)


def test_reference_spawn_launch_two_cpu_processes(image_root, tmp_path, one_thread):
    status, seconds, output = launch(CPU + ["--epochs", "1", "--id", "sp",
                                               "--checkpoint-dir", str(tmp_path)] +
                                     spawn_argv() + [str(image_root)])
    assert status == 0, output
    assert "2 process(es) (--multiprocessing-distributed, gloo)" in output, output
    check_run(image_root, tmp_path, "sp")


@pytest.mark.parametrize("torchrun", [True, False], ids=["torchrun", "spawn"])
def test_dead_worker_fails_the_job_and_keeps_the_checkpoint(image_root, tmp_path, torchrun,
                                                            one_thread):
    argv = CPU + ["--epochs", "2", "--id", "k", "--checkpoint-dir", str(tmp_path)] + \
        ([] if torchrun else spawn_argv()) + [str(image_root)]
    status, seconds, output = launch(argv, torchrun=torchrun,
                                     env={main_imagenet.KILL_RANK_ENV: "1"})
    assert status != 0, output
    assert seconds < LAUNCH_TIMEOUT
    checkpoint = load_checkpoint_file(tmp_path / "k.pth")
    assert checkpoint["epoch"] == 1  # rank 1 died in epoch 2; epoch 1's file is whole
    model, model_args = model_from_checkpoint(checkpoint, tmp_path / "k.pth",
                                              dataset="imagenet")
    assert model_args["num_classes"] == NUM_CLASSES
    if not torchrun:
        return
    # the same job started again continues at epoch 2 from the surviving checkpoint
    status, _, output = launch(argv + ["--resume_from_ckpt=1"], torchrun=True)
    assert status == 0, output
    assert "resuming run k after epoch 1" in output and "epoch 2/2" in output
    assert "epoch 1/2" not in output.split("resuming")[1]
    check_run(image_root, tmp_path, "k", epochs=2)


def test_single_process_resume_restores_optimizer_and_schedule(image_root, tmp_path,
                                                               monkeypatch, one_thread):
    common = CPU + ["--epochs", "2", "--checkpoint-dir", str(tmp_path)]
    assert run_script(main_imagenet, common + ["--id", "full", str(image_root)]) == 0

    original = main_imagenet.train_one_epoch
    seen = {}

    def interrupted(model, loader, optimizer, device, epoch, *args, **kwargs):
        if epoch == 1:
            raise KeyboardInterrupt  # stopped at the start of epoch 2
        return original(model, loader, optimizer, device, epoch, *args, **kwargs)

    def recording(model, loader, optimizer, device, epoch, *args, **kwargs):
        seen[epoch] = {"optimizer": copy.deepcopy(optimizer.state_dict()),
                       "lr": optimizer.param_groups[0]["lr"]}
        return original(model, loader, optimizer, device, epoch, *args, **kwargs)

    monkeypatch.setattr(main_imagenet, "train_one_epoch", interrupted)
    assert run_script(main_imagenet, common + ["--id", "split", str(image_root)]) == 130
    after_one = torch.load(tmp_path / "split.pth", weights_only=True)
    assert after_one["epoch"] == 1
    monkeypatch.setattr(main_imagenet, "train_one_epoch", recording)
    assert run_script(main_imagenet, common + ["--id", "split", "--resume",
                                               str(tmp_path / "split.pth"),
                                               str(image_root)]) == 0

    assert list(seen) == [1]  # continued at the next epoch, not from scratch
    restored = seen[1]["optimizer"]
    assert restored["param_groups"][0]["lr"] == after_one["optimizer"]["param_groups"][0]["lr"]
    assert seen[1]["lr"] == pytest.approx(0.05)  # cosine over 2 epochs from 0.1
    for key, state in after_one["optimizer"]["state"].items():
        assert torch.equal(restored["state"][key]["momentum_buffer"],
                           state["momentum_buffer"]), key
    full = torch.load(tmp_path / "full.pth", weights_only=True)
    split = torch.load(tmp_path / "split.pth", weights_only=True)
    assert split["epoch"] == 2
    for key, value in full["state_dict"].items():  # same data order, augmentation, updates
        assert torch.equal(value, split["state_dict"][key]), key
    assert "resuming run split after epoch 1" in (tmp_path / "split.log").read_text()

    # the reference workflow: a finished run continued with new per-layer levels to more
    # epochs (phase 2) follows the cosine of the new length from where it stands, not the
    # finished schedule's final rate of 0
    seen.clear()
    assert run_script(main_imagenet, CPU + ["--epochs", "3", "--checkpoint-dir", str(tmp_path),
                                            "--id", "full", "--resume_from_ckpt=1",
                                            "--levels", "2,4,4,8,1", str(image_root)]) == 0
    assert list(seen) == [2]
    assert seen[2]["lr"] == pytest.approx(0.1 * (1 + math.cos(math.pi * 2 / 3)) / 2)
    phase2 = torch.load(tmp_path / "full.pth", weights_only=True)
    assert phase2["epoch"] == 3 and phase2["model_args"]["levels"] == [2, 4, 4, 8, 1]
    # an existing run is neither overwritten nor resumed silently
    assert run_script(main_imagenet, common + ["--id", "split", str(image_root)]) == 2


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
                            (["--nproc", "2"], "--nproc_per_node")):
        assert run_script(main_imagenet, flags + [str(image_root)]) == 2
        assert_one_line_error(capsys, fragment)


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
    assert checkpoint["scaler"] and checkpoint["scaler"]["scale"] > 0
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
    assert checkpoint["args"]["amp"] and checkpoint["scaler"]["scale"] > 0
    assert checkpoint["val_images"] == NUM_VAL
