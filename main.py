"""Train a QCFS network on an ImageNet-style folder, in one process or many (torchrun / DDP).

    # the reference README's command: one process per visible GPU
    python main.py -a resnet34 --dist-url 'tcp://127.0.0.1:FREEPORT' --dist-backend 'nccl' \
        --multiprocessing-distributed --world-size 1 --rank 0 /data/imagenet
    # the same with torchrun (environment rendezvous)
    torchrun --nproc_per_node=8 main.py -a resnet34 /data/imagenet
    # one process, no process group; on a CPU machine, --dist-backend gloo --nproc N spawns N
    python main.py -a resnet18 /data/imagenet

All launch modes run the same function, :func:`worker`. DIR holds ``train/CLASS/*`` and
``val/CLASS/*``. Rank 0 alone logs and writes ``{checkpoint-dir}/{id}.pth`` (and
``{id}_best.pth``) in main_train.py's self-describing format, so ``main_test.py -data imagenet
--data-root DIR --id ID --checkpoint-dir imagenet-checkpoints`` evaluates it as ANN and SNN.

Test hook: with ``PASCAL_TEST_KILL_RANK=R`` in the environment, rank R calls ``os._exit(1)``
right after its first optimizer step of the second epoch (used by tests/test_distributed.py
to check that a dead worker ends the whole job).
"""
import argparse
import datetime
import logging
import os
import socket
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Subset
from torch.utils.data.distributed import DistributedSampler

import models
from checkpoint import (FORMAT_VERSION, checkpoint_path, is_own_format, load_checkpoint_file,
                        model_from_checkpoint, plain, restore_training_state, rng_state,
                        save_checkpoint)
from data import check_image_folder, image_folder, imagenet_transforms, make_loader
from main_train import Diverged, epoch_seed, train_one_epoch, write_csv_row
from utils import (ArgumentParser, UsageError, add_level_args, add_output_flags,
                   default_checkpoint_dir, parse_levels, progress, run_main, seed_everything,
                   setup_logging)

DATASET = "imagenet"  # model_args["dataset"]: what main_test.py's -data names
KILL_RANK_ENV = "PASCAL_TEST_KILL_RANK"


def get_args_parser(add_help=True):
    parser = ArgumentParser(
        description="Train a QCFS network on an ImageNet-style folder (DIR/train, DIR/val), "
                    "on one process or many (torchrun, or --multiprocessing-distributed).",
        add_help=add_help, allow_abbrev=False)
    parser.add_argument("data", metavar="DIR",
                        help="folder with train/ and val/, one sub-folder of images per class")
    group = parser.add_argument_group("model")
    group.add_argument("-a", "-arch", "--arch", default="resnet34", choices=models.list_models(),
                       help="architecture (default: resnet34)")
    group.add_argument("--variant", default="imagenet", choices=list(models.VARIANTS),
                       help="network stem/classifier variant (default: imagenet)")
    add_level_args(group)
    group.add_argument("--image-size", type=int, default=224,
                       help="training crop and validation centre crop (default: 224; validation "
                            "resizes to size*256/224 first)")
    group = parser.add_argument_group("optimisation (ImageNet recipe)")
    group.add_argument("-epochs", "--epochs", type=int, default=90,
                       help="total epochs, cosine schedule (default: 90)")
    group.add_argument("-b", "--batch-size", type=int, default=256,
                       help="global batch size, split evenly across processes (default: 256)")
    group.add_argument("-lr", "--lr", "--learning-rate", type=float, default=0.1,
                       help="initial learning rate (default: 0.1)")
    group.add_argument("-wd", "--wd", "--weight-decay", dest="weight_decay", type=float,
                       default=1e-4, help="SGD weight decay (default: 1e-4)")
    group.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default: 0.9)")
    group.add_argument("--amp", action="store_true",
                       help="mixed precision on CUDA; QCFS arithmetic stays float32 (default: off)")
    group.add_argument("--sync-bn", action="store_true",
                       help="synchronise BatchNorm statistics across GPUs (default: off)")
    group = parser.add_argument_group("run and checkpoints")
    group.add_argument("--id", default=None,
                       help="run id: checkpoints are {checkpoint-dir}/{id}.pth and {id}_best.pth "
                            "(default: {arch}_imagenet)")
    group.add_argument("--checkpoint-dir", default=None,
                       help="where checkpoints, the log and the CSV go "
                            "(default: imagenet-checkpoints)")
    group.add_argument("--resume_from_ckpt", "--resume-from-ckpt", type=int, default=0,
                       choices=[0, 1], help="1: continue the run {id} from its latest checkpoint "
                                            "(default: 0)")
    group.add_argument("--resume", default=None, metavar="PATH",
                       help="continue the run saved in PATH: weights, epoch, optimizer, "
                            "schedule and AMP scaler")
    group.add_argument("--overwrite", action="store_true",
                       help="start over even if run {id} already has a checkpoint")
    group = parser.add_argument_group("distributed (see also torchrun)")
    group.add_argument("--multiprocessing-distributed", action="store_true",
                       help="spawn one process per GPU on this node (--nproc on a CPU machine)")
    group.add_argument("--nproc", type=int, default=None,
                       help="processes per node with --multiprocessing-distributed (default: "
                            "the number of visible GPUs; required without GPUs)")
    group.add_argument("--world-size", type=int, default=1,
                       help="with --multiprocessing-distributed: number of nodes (default: 1; "
                            "torchrun sets its own)")
    group.add_argument("--rank", type=int, default=0,
                       help="with --multiprocessing-distributed: this node's rank (default: 0)")
    group.add_argument("--dist-url", default=None,
                       help="rendezvous address tcp://HOST:PORT (default: a free local port; "
                            "required with several nodes)")
    group.add_argument("--dist-backend", default=None, choices=["nccl", "gloo"],
                       help="process-group backend (default: nccl with CUDA, gloo without)")
    group.add_argument("--dist-timeout", type=float, default=1800,
                       help="seconds a collective waits for a missing process before the job "
                            "fails (default: 1800)")
    group = parser.add_argument_group("machine")
    group.add_argument("-dev", "--device", default=None, choices=["cuda", "cpu"],
                       help="cuda (one GPU per process, by local rank) or cpu "
                            "(default: cuda if available)")
    group.add_argument("-j", "--workers", type=int, default=4,
                       help="data-loading worker processes per training process (default: 4)")
    group.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    add_output_flags(group)
    return parser


def resolve_args(args):
    """Check flags and the data folder once, before any process is started."""
    for flag, value, low in (("--epochs", args.epochs, 1), ("-b", args.batch_size, 1),
                             ("--image-size", args.image_size, 32), ("-j", args.workers, 0),
                             ("--world-size", args.world_size, 1), ("--rank", args.rank, 0)):
        if value < low:
            raise UsageError(f"{flag} must be >= {low}, got {value}")
    if args.level is not None and args.levels is not None:
        raise UsageError("give either -L N or --levels, not both")
    args.levels = parse_levels(args.levels if args.levels is not None else args.level)
    if not args.init_threshold > 0:
        raise UsageError(f"--init-threshold must be > 0, got {args.init_threshold}")
    if args.resume and args.resume_from_ckpt:
        raise UsageError("--resume PATH and --resume_from_ckpt=1 both name the run to continue: "
                         "give only one")

    cuda = torch.cuda.is_available()
    if args.dist_backend == "nccl" and not cuda:
        raise UsageError("--dist-backend nccl needs CUDA GPUs and this machine has none: use "
                         "--dist-backend gloo (with --nproc N for --multiprocessing-distributed)")
    args.device = args.device or ("cuda" if cuda else "cpu")
    if args.device == "cuda" and not cuda:
        raise UsageError("--device cuda asked for, but CUDA is not available here: drop it to "
                         "train on the CPU")
    args.dist_backend = args.dist_backend or ("nccl" if args.device == "cuda" else "gloo")
    if args.dist_backend == "nccl" and args.device != "cuda":
        raise UsageError("--dist-backend nccl runs on GPUs only: use --dist-backend gloo with "
                         "--device cpu")
    if args.amp and args.device != "cuda":
        raise UsageError("--amp needs CUDA: drop --amp to train in float32 on the CPU")
    if args.sync_bn and args.device != "cuda":
        raise UsageError("--sync-bn needs CUDA (PyTorch's SyncBatchNorm has no CPU version): "
                         "drop --sync-bn")

    args.launch = launch_mode(args)
    if args.launch == "spawn":
        if args.nproc is None:
            if args.device != "cuda":
                raise UsageError("--multiprocessing-distributed without GPUs needs --nproc N "
                                 "(processes on this machine) and --dist-backend gloo")
            args.nproc = torch.cuda.device_count()
        if args.nproc < 1:
            raise UsageError(f"--nproc must be >= 1, got {args.nproc}")
        if args.dist_url is None:
            if args.world_size > 1:
                raise UsageError("several nodes (--world-size > 1) need --dist-url "
                                 "tcp://HOST:PORT of node 0, the same on every node")
            args.dist_url = f"tcp://127.0.0.1:{free_port()}"
        if args.rank >= args.world_size:
            raise UsageError(f"--rank is this node's rank, 0..{args.world_size - 1} for "
                             f"--world-size {args.world_size}; got {args.rank}")
    elif args.nproc is not None:
        raise UsageError("--nproc only applies with --multiprocessing-distributed (torchrun "
                         "takes --nproc_per_node)")
    if args.device == "cuda" and args.launch == "spawn" and \
            args.nproc > torch.cuda.device_count():
        raise UsageError(f"--nproc {args.nproc} asks for more processes than the "
                         f"{torch.cuda.device_count()} visible GPU(s): one process per GPU")

    processes = {"torchrun": int(os.environ.get("WORLD_SIZE", 1)), "single": 1,
                 "spawn": args.world_size * (args.nproc or 1)}[args.launch]
    if args.batch_size % processes:
        nearest = args.batch_size // processes * processes or processes
        raise UsageError(f"-b {args.batch_size} is the global batch and must be a multiple of "
                         f"the {processes} processes: pass -b {nearest}, for example")

    args.classes = check_image_folder(args.data)
    args.num_classes = len(args.classes)
    args.id = args.id or f"{args.arch}_{DATASET}"
    args.checkpoint_dir = Path(args.checkpoint_dir or default_checkpoint_dir(DATASET))
    return args


def launch_mode(args):
    """``"torchrun"`` (RANK/WORLD_SIZE set), ``"spawn"`` or ``"single"`` (no process group)."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        if args.multiprocessing_distributed:
            raise UsageError("torchrun already starts one process per GPU: drop "
                             "--multiprocessing-distributed")
        return "torchrun"
    if args.multiprocessing_distributed:
        return "spawn"
    if args.world_size > 1:
        raise UsageError("--world-size > 1 needs --multiprocessing-distributed (one process per "
                         "GPU on each node), or launch with torchrun")
    return "single"


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main(args):
    args = resolve_args(args)
    if args.launch != "spawn":
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        return worker(local_rank, args)
    try:
        mp.spawn(spawned_worker, args=(args,), nprocs=args.nproc, join=True)
    except mp.ProcessExitedException as error:
        # mp.spawn stopped the other workers; status 2 means the worker printed a usage error
        status = error.exit_code if error.exit_code and error.exit_code > 0 else 1
        if status != 2:
            how = f"was killed by {error.signal_name}" if error.signal_name else \
                f"exited with status {error.exit_code}"
            print(f"error: worker process {error.error_index} {how}; the other workers were "
                  f"stopped (the last checkpoint, if any, is "
                  f"{checkpoint_path(args.checkpoint_dir, args.id)})", file=sys.stderr)
        return status
    except mp.ProcessRaisedException as error:
        print(f"error: a worker process failed:\n{error}", file=sys.stderr)
        return 1
    return 0


def spawned_worker(local_rank, args):
    """mp.spawn's entry point: the worker's status becomes the process's exit status."""
    status = worker(local_rank, args)
    if status:
        sys.exit(status)


def worker(local_rank, args):
    """One training process. Every launch mode runs this; returns the exit status.

    torchrun: rank and world size from the environment. Spawn: ``--rank`` is the node rank,
    so the global rank is ``rank * nproc + local_rank``. Single: no process group.
    """
    if args.launch == "torchrun":
        rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    elif args.launch == "spawn":
        rank, world_size = args.rank * args.nproc + local_rank, args.world_size * args.nproc
        local_world_size = args.nproc
    else:
        rank, world_size, local_world_size = 0, 1, 1
    distributed = args.launch != "single"
    device = torch.device("cpu")
    if args.device == "cuda":
        if local_rank >= torch.cuda.device_count():
            print(f"error: process {rank} (local rank {local_rank}) has no GPU: this node has "
                  f"{torch.cuda.device_count()}; start at most one process per GPU",
                  file=sys.stderr)
            return 2
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    elif "OMP_NUM_THREADS" not in os.environ:
        # processes on one CPU machine share its cores; oversubscription slows all of them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world_size))

    if distributed:
        init_method = "env://" if args.launch == "torchrun" else args.dist_url
        dist.init_process_group(args.dist_backend, init_method=init_method,
                                world_size=world_size, rank=rank,
                                timeout=datetime.timedelta(seconds=args.dist_timeout))
    status = 1
    try:
        status = train(args, rank, world_size, device)
    except (UsageError, ValueError) as error:
        if args.debug:
            raise
        status = _report(error, rank, args)
    except KeyboardInterrupt:
        status = 130
    finally:
        if distributed and dist.is_initialized():
            # A clean exit waits for every peer, so that no process tears down the group while
            # another still uses it (without this, two-process gloo runs sometimes abort after
            # finishing). After a failure the peers may be mid-collective: skip the barrier.
            if status == 0:
                dist.barrier(device_ids=[device.index] if device.type == "cuda" else None)
            dist.destroy_process_group()
    return status


def _report(error, rank, args):
    """One line on stderr (from rank 0 only: every rank meets the same bad input); status 2."""
    if rank == 0:
        print(f"error: {error}", file=sys.stderr)
    return 2


def train(args, rank, world_size, device):
    distributed = args.launch != "single"
    is_main = rank == 0
    if is_main:
        args.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        logger = setup_logging(args.checkpoint_dir / f"{args.id}.log")
    else:
        logger = silent_logger()
    batch_size = args.batch_size // world_size
    seed_everything(args.seed)

    model, model_args, restored = build_run(args, logger)
    model.to(device)
    if args.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model_without_ddp = model
    if distributed:
        model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.SGD(model_without_ddp.parameters(), lr=args.lr,
                                momentum=args.momentum, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    scaler = torch.amp.GradScaler("cuda") if args.amp else None
    start_epoch, best_acc1 = 0, 0.0
    if restored is not None:
        start_epoch, best_acc1 = restore_training_state(restored, optimizer, scheduler, scaler,
                                                        args.epochs, logger)
        logger.info(f"resuming run {args.id} after epoch {start_epoch} (best {best_acc1:.2f}%)")
    if start_epoch >= args.epochs:
        raise UsageError(f"run {args.id} already finished {start_epoch} epochs: raise --epochs "
                         "to train longer")

    train_set = image_folder(args.data, "train", imagenet_transforms(True, args.image_size))
    val_set = image_folder(args.data, "val", imagenet_transforms(False, args.image_size))
    if train_set.classes != args.classes or val_set.classes != args.classes:
        raise UsageError(f"the class folders under {args.data} changed while starting: retry")
    # Training pads to equal shards (DistributedSampler); validation must count every image
    # exactly once, so each process takes every world_size-th image and the counts are summed.
    train_sampler = DistributedSampler(train_set, num_replicas=world_size, rank=rank,
                                       shuffle=True, seed=args.seed) if distributed else None
    val_shard = Subset(val_set, range(rank, len(val_set), world_size))
    generator = torch.Generator()
    train_loader = make_loader(train_set, batch_size, True, args.workers, generator,
                               sampler=train_sampler, device=device)
    val_loader = make_loader(val_shard, batch_size, False, args.workers, device=device)
    launch = {"torchrun": "torchrun", "spawn": "--multiprocessing-distributed",
              "single": "single process"}[args.launch]
    logger.info(f"run {args.id}: {args.arch} ({args.variant} variant), levels "
                f"{model_args['levels']}, {args.num_classes} classes, {len(train_set)} train / "
                f"{len(val_set)} val images of {args.image_size}px from {args.data}")
    logger.info(f"{world_size} process(es) ({launch}" +
                (f", {args.dist_backend}" if distributed else "") +
                f"), device {device.type}, batch {args.batch_size} ({batch_size} per process)" +
                (", AMP" if args.amp else "") + (", SyncBatchNorm" if args.sync_bn else ""))

    # non-zero ranks train silently; the hook is the kill switch of the tests (module doc)
    worker_args = argparse.Namespace(**vars(args))
    worker_args.no_progress = args.no_progress or not is_main
    worker_args.skip_nonfinite = False  # a rank that skipped a step would desynchronise DDP
    kill_rank = os.environ.get(KILL_RANK_ENV)

    def step_hook(epoch, step):
        if kill_rank is not None and int(kill_rank) == rank and epoch == 1 and step == 0:
            os._exit(1)

    latest = checkpoint_path(args.checkpoint_dir, args.id)
    csv_path = args.checkpoint_dir / f"{args.id}_epochs.csv"
    for epoch in range(start_epoch, args.epochs):
        started = time.time()
        # per-epoch, per-rank seeds: a resumed run repeats what an uninterrupted one does, and
        # the processes (and their loader workers, seeded from generator) draw different
        # augmentations; the shuffle itself is DistributedSampler's (seed, epoch)
        seed = epoch_seed(args.seed, epoch) * 1009 + rank
        seed_everything(seed)
        generator.manual_seed(seed)
        if train_sampler is not None:
            train_sampler.set_epoch(epoch)
        lr = optimizer.param_groups[0]["lr"]
        try:
            train_loss, train_acc1, _ = train_one_epoch(
                model, train_loader, optimizer, device, epoch, worker_args, scaler, logger,
                step_hook=step_hook)
        except Diverged as error:
            logger.error(f"training stopped: {error}; the last good checkpoint ({latest}) is "
                         "intact: lower --lr")
            return 3
        scheduler.step()
        if distributed:
            # BatchNorm running statistics drift apart between processes (each updates them
            # on its own batches); use rank 0's everywhere, as saved in the checkpoint.
            for buffer in model_without_ddp.buffers():
                dist.broadcast(buffer, src=0)
        train_loss, train_acc1 = mean_over_processes([train_loss, train_acc1], device,
                                                     distributed)
        val_acc1, val_loss, val_images = evaluate(model_without_ddp, val_loader, device,
                                                  is_main and not args.no_progress, distributed)
        is_best = val_acc1 > best_acc1
        best_acc1 = max(best_acc1, val_acc1)
        if is_main:
            state = {
                "format_version": FORMAT_VERSION, "model_args": model_args,
                "state_dict": model_without_ddp.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "epoch": epoch + 1, "best_acc1": best_acc1, "test_acc1": val_acc1,
                "val_images": val_images, "rng": rng_state(), "args": checkpoint_args(args),
            }
            save_checkpoint(latest, state)
            if is_best:
                save_checkpoint(checkpoint_path(args.checkpoint_dir, args.id, best=True), state)
            seconds = time.time() - started
            logger.info(f"epoch {epoch + 1}/{args.epochs}  lr {lr:.4f}  train loss "
                        f"{train_loss:.4f} acc {train_acc1:.2f}%  val loss {val_loss:.4f} acc "
                        f"{val_acc1:.2f}% ({val_images} images)  best {best_acc1:.2f}%  "
                        f"{seconds:.1f}s")
            write_csv_row(csv_path, {"epoch": epoch + 1, "lr": lr, "train_loss": train_loss,
                                     "train_acc1": train_acc1, "val_loss": val_loss,
                                     "val_acc1": val_acc1, "val_images": val_images,
                                     "best_acc1": best_acc1, "seconds": round(seconds, 2),
                                     "processes": world_size,
                                     "levels": ",".join(map(str, model_args["levels"]))})
    logger.info(f"done: best val top-1 {best_acc1:.2f}%; checkpoint {latest}")
    return 0


def build_run(args, logger):
    """Model, model_args and the checkpoint to restore from (None for a new run)."""
    latest = checkpoint_path(args.checkpoint_dir, args.id)
    resume_path = args.resume or (latest if args.resume_from_ckpt else None)
    if resume_path is None:
        if latest.exists() and not args.overwrite:
            raise UsageError(f"run {args.id!r} already has a checkpoint ({latest}): pass "
                             "--resume_from_ckpt=1 to continue it, --overwrite to start over, "
                             "or another --id")
        model = models.create_model(args.arch, num_classes=args.num_classes,
                                    levels=4 if args.levels is None else args.levels,
                                    variant=args.variant, init_threshold=args.init_threshold)
        model_args = models.model_args_of(model, args.arch, args.variant, args.num_classes)
        model_args["dataset"] = DATASET
        return model, model_args, None
    checkpoint = load_checkpoint_file(resume_path, args.checkpoint_dir)
    if not is_own_format(checkpoint) or "optimizer" not in checkpoint:
        raise UsageError(f"{resume_path} is not a training checkpoint of this project (no "
                         "optimizer state): it cannot be resumed")
    stored = checkpoint["model_args"]
    for key, given, flag in (("arch", args.arch, "-a"), ("variant", args.variant, "--variant"),
                             ("num_classes", args.num_classes, None)):
        if stored.get(key) != given:
            if flag is None:
                raise UsageError(f"{resume_path} has {stored.get(key)} classes but {args.data}/"
                                 f"train has {given}: resume on the folder it was trained on")
            raise UsageError(f"{resume_path} holds {key} {stored.get(key)} but {flag} is "
                             f"{given}: pass {flag} {stored.get(key)}")
    model, model_args = model_from_checkpoint(checkpoint, resume_path)
    if args.levels is not None:
        old, new = model_args["levels"], models.set_levels(model, args.levels)
        if new != old:
            logger.info(f"levels changed at epoch {checkpoint['epoch']}: {old} -> {new} "
                        "(phase 2: same optimizer, schedule and epoch counter)")
        model_args["levels"] = new
    model_args["dataset"] = DATASET
    return model, model_args, checkpoint


@torch.no_grad()
def evaluate(model, loader, device, show_progress, distributed):
    """``(top-1 %, mean loss, images)`` over every process's shard (float32, eval mode)."""
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # correct, loss sum, images
    for images, targets in progress(loader, show_progress, desc="val"):
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        logits = model(images)
        totals[0] += (logits.argmax(1) == targets).sum()
        totals[1] += F.cross_entropy(logits.float(), targets, reduction="sum").double()
        totals[2] += len(targets)
    if distributed:
        dist.all_reduce(totals)
    correct, loss_sum, seen = totals.tolist()
    seen = int(seen)
    return 100.0 * correct / max(seen, 1), loss_sum / max(seen, 1), seen


def mean_over_processes(values, device, distributed):
    """Per-process means averaged over processes (their training shards are equal in size)."""
    if not distributed:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return (tensor / dist.get_world_size()).tolist()


def checkpoint_args(args):
    """The run's arguments as plain values (main_test.py reads ``image_size`` from them)."""
    values = plain(vars(args))
    values.pop("classes", None)  # 1000 folder names: in the folder, not the checkpoint
    return values


def silent_logger():
    logger = logging.getLogger("pascal.worker")
    logger.handlers.clear()
    logger.addHandler(logging.NullHandler())
    logger.propagate = False
    return logger


if __name__ == "__main__":
    sys.exit(run_main(main, get_args_parser().parse_args()))
