"""Train a QCFS network on an ImageNet-style folder, in one process or many (torchrun / DDP).

    # the reference README's command: one process per visible GPU
    python main.py -a resnet34 --dist-url 'tcp://127.0.0.1:FREEPORT' --dist-backend 'nccl' \
        --multiprocessing-distributed --world-size 1 --rank 0 /data/imagenet
    # the same with torchrun; elastic: a lost worker restarts the group, which resumes
    torchrun --nproc_per_node=8 --max-restarts=3 main.py -a resnet34 --resume auto /data/imagenet
    # one process, no process group; on a CPU machine, --dist-backend gloo --nproc N spawns N
    python main.py -a resnet18 /data/imagenet

All launch modes run the same function, :func:`worker`, and train with the engine (engine.py)
that main_train.py uses. DIR (or ``--data-root``) holds ``train/CLASS/*`` and ``val/CLASS/*``.
Rank 0 alone logs and writes ``{checkpoint-dir}/{id}.pth`` (and ``{id}_best.pth``), so
``main_test.py -data imagenet --data-root DIR --id ID --checkpoint-dir imagenet-checkpoints``
evaluates it as ANN and SNN.
"""
import os
import sys
from pathlib import Path

import torch
import torch.multiprocessing as mp

import engine
import models
from checkpoint import checkpoint_path
from data import check_image_folder, image_folder, imagenet_transforms
from distributed import (ProcessPlace, detach_from_terminal, exit_process, exit_worker, free_port,
                         launch_mode, process_device, run_worker, spawn)
from model_setup import RunSpec, build_model
from train_args import (TERMS, add_adaptive_args, add_model_args, add_optimisation_args,
                        add_process_group_args, add_run_args, add_training_machine_args,
                        check_training_args, fit_from_args, init_percentile, model_config,
                        process_config, train_config)
from utils import (ArgumentParser, UsageError, add_output_flags, arch_help, arch_name,
                   default_checkpoint_dir, default_run_id, error_line, run_main,
                   seed_everything, setup_logging, silent_logger)

DATASET = "imagenet"  # model_args["dataset"]: what main_test.py's -data names


def get_args_parser(add_help=True):
    parser = ArgumentParser(
        description="Train a QCFS network on an ImageNet-style folder (DIR/train, DIR/val), "
                    "on one process or many (torchrun, or --multiprocessing-distributed).",
        add_help=add_help, allow_abbrev=False)
    parser.add_argument("data", metavar="DIR", nargs="?", default=None,
                        help="folder with train/ and val/, one sub-folder of images per class "
                             "(or --data-root DIR)")
    group = parser.add_argument_group("model and data")
    group.add_argument("--data-root", default=None, metavar="DIR",
                       help="the data folder, as the positional DIR")
    group.add_argument("-a", "-arch", "--arch", default="resnet34", type=arch_name,
                       help=arch_help("resnet34"))
    group.add_argument("--variant", default="imagenet", choices=list(models.VARIANTS),
                       help="network stem/classifier variant (default: imagenet)")
    add_model_args(group)
    group.add_argument("--image-size", type=int, default=224,
                       help="training crop and validation centre crop (default: 224; validation "
                            "resizes to size*256/224 first)")
    group = parser.add_argument_group("optimisation (ImageNet recipe)")
    add_optimisation_args(
        group, epochs_help="total epochs, cosine schedule (default: 90)",
        batch_help="global batch size, split evenly across processes (default: 256)",
        lr_help="initial learning rate (default: 0.1)", weight_decay=1e-4)
    group.add_argument("--sync-bn", action="store_true",
                       help="synchronise BatchNorm statistics across GPUs (default: off)")
    add_adaptive_args(parser)
    add_run_args(parser.add_argument_group("run and checkpoints"), "{arch}_imagenet",
                 "imagenet-checkpoints")
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
    add_process_group_args(group)
    group = parser.add_argument_group("machine")
    add_training_machine_args(group, workers=4)
    add_output_flags(group)
    return parser


def resolve_args(args):
    """Check flags and the data folder once, before any process is started."""
    for key, value in (("epochs", 90), ("batch_size", 256), ("lr", 0.1)):
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.data is not None and args.data_root is not None and args.data != args.data_root:
        raise UsageError(f"the data folder is given twice ({args.data} and --data-root "
                         f"{args.data_root}): give it once")
    args.data = args.data or args.data_root
    if args.data is None:
        raise UsageError("no data folder: pass DIR (or --data-root DIR), the folder that holds "
                         "train/ and val/")
    args.id = args.id or default_run_id(args.arch, DATASET)
    args.checkpoint_dir = Path(args.checkpoint_dir or default_checkpoint_dir(DATASET))
    for flag, value, low in (("--image-size", args.image_size, 32),
                             ("--world-size", args.world_size, 1), ("--rank", args.rank, 0)):
        if value < low:
            raise UsageError(f"{flag} must be >= {low}, got {value}")

    cuda = torch.cuda.is_available()
    if args.dist_backend == "nccl" and not cuda:
        raise UsageError("--dist-backend nccl needs CUDA GPUs and this machine has none: use "
                         "--dist-backend gloo (with --nproc N for --multiprocessing-distributed)")
    args.launch = launch_mode(args.multiprocessing_distributed, args.world_size)
    if args.launch == "spawn":
        if args.nproc is None:
            if not cuda or str(args.device).startswith("cpu"):
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
    local_processes = {"torchrun": int(os.environ.get("LOCAL_WORLD_SIZE", 1)), "single": 1,
                       "spawn": args.nproc or 1}[args.launch]
    # every process checks its own device; check one here so bad input fails before launching
    device = process_device(args.device, 0, local_processes)
    if args.launch == "spawn" and device.type == "cuda" and \
            args.nproc > torch.cuda.device_count():
        raise UsageError(f"--nproc {args.nproc} asks for more processes than the "
                         f"{torch.cuda.device_count()} visible GPU(s): one process per GPU")
    args.dist_backend = args.dist_backend or ("nccl" if device.type == "cuda" else "gloo")
    if args.dist_backend == "nccl" and device.type != "cuda":
        raise UsageError("--dist-backend nccl runs on GPUs only: use --dist-backend gloo with "
                         "-dev cpu")
    if args.amp and device.type != "cuda":
        raise UsageError("--amp needs CUDA: drop --amp to train in float32 on the CPU")
    if args.sync_bn and device.type != "cuda":
        raise UsageError("--sync-bn needs CUDA (PyTorch's SyncBatchNorm has no CPU version): "
                         "drop --sync-bn")

    processes = {"torchrun": int(os.environ.get("WORLD_SIZE", 1)), "single": 1,
                 "spawn": args.world_size * (args.nproc or 1)}[args.launch]
    if args.batch_size % processes:
        nearest = args.batch_size // processes * processes or processes
        raise UsageError(f"-b {args.batch_size} is the global batch and must be a multiple of "
                         f"the {processes} processes: pass -b {nearest}, for example")

    check_training_args(args)
    args.classes = check_image_folder(args.data)
    args.num_classes = len(args.classes)
    return args


def main(args):
    args = resolve_args(args)
    if args.launch != "spawn":
        return worker(int(os.environ.get("LOCAL_RANK", 0)), args)
    try:
        return spawn(spawned_worker, (args,), args.nproc)
    except mp.ProcessExitedException as error:
        # the other workers were stopped; status 2: a usage error, 3: divergence, 128 + n: a
        # signal: the workers said so themselves
        status = error.exit_code if error.exit_code and error.exit_code > 0 else 1
        if status not in (2, 3) and status < 128:
            how = f"was killed by {error.signal_name}" if error.signal_name else \
                f"exited with status {error.exit_code}"
            print(f"error: worker process {error.error_index} {how}; the other workers were "
                  f"stopped (the last checkpoint, if any, is "
                  f"{checkpoint_path(args.checkpoint_dir, args.id)})", file=sys.stderr)
        return status
    except mp.ProcessRaisedException as error:
        print(f"error: a worker process failed:\n{error}", file=sys.stderr)
        return 1


def spawned_worker(local_rank, args):
    """The spawn launch's entry point: the worker's status becomes the process's exit status
    (see :func:`distributed.exit_worker`)."""
    detach_from_terminal()
    exit_worker(worker(local_rank, args))


def worker(local_rank, args):
    """One training process. Every launch mode runs this; returns the exit status.

    torchrun: rank and world size from the environment. Spawn: ``--rank`` is the node rank,
    so the global rank is ``rank * nproc + local_rank``. Single: no process group.
    """
    place = ProcessPlace(args.launch, local_rank, args.rank, args.nproc or 1, args.world_size)
    return run_worker(lambda ctx: train(args, ctx), place, process_config(args),
                      lambda error: error_line(error, TERMS))


def train(args, ctx):
    if ctx.is_main:
        args.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        logger = setup_logging(args.checkpoint_dir / f"{args.id}.log")
    else:
        logger = silent_logger()
    seed_everything(args.seed)
    if args.deterministic:
        engine.enable_determinism()
        logger.info("deterministic algorithms on (torch.use_deterministic_algorithms)")
    spec = RunSpec(dataset=DATASET, num_classes=args.num_classes, variant=args.variant,
                   image_size=args.image_size)
    config = train_config(args)
    model, model_args = build_model(model_config(args), spec, engine.resume_source(config),
                                    logger)
    train_set = image_folder(args.data, "train", imagenet_transforms(True, args.image_size))
    test_set = image_folder(args.data, "val", imagenet_transforms(False, args.image_size))
    percentile = init_percentile(args)
    stats_set = image_folder(args.data, "train", imagenet_transforms(False, args.image_size)) \
        if args.adaptive or percentile else None
    if train_set.classes != args.classes or test_set.classes != args.classes:
        raise UsageError(f"the class folders under {args.data} changed while starting: retry")
    launch = {"torchrun": "torchrun", "spawn": "--multiprocessing-distributed",
              "single": "single process"}[args.launch]
    describe = (f"{args.num_classes} classes, {args.image_size}px from {args.data}; "
                f"{ctx.world_size} process(es) ({launch}"
                + (f", {args.dist_backend}" if ctx.distributed else "")
                + f"), device {ctx.device.type}, batch {args.batch_size} "
                f"({args.batch_size // ctx.world_size} per process)"
                + (", AMP" if args.amp else "") + (", SyncBatchNorm" if args.sync_bn else ""))
    return fit_from_args(args, config, model, model_args, (train_set, test_set, stats_set),
                         ctx, logger, describe)


if __name__ == "__main__":
    exit_process(run_main(main, get_args_parser().parse_args(), TERMS))
