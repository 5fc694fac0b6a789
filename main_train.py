"""Train a QCFS network on CIFAR-10/100 or the bundled digits (the first half of PASCAL).

    python3 main_train.py -data=cifar10 -arch=vgg16 -epochs=200 --id=myid
    python3 main_train.py -data digits -arch vgg16 -epochs 8 --id quick
    torchrun --standalone --nproc_per_node=4 main_train.py -data cifar100 -arch resnet18

The training itself (resuming, signals, evaluation, checkpoints, the adaptive schedule, DDP)
is the engine's (engine.py), shared with main.py.
"""
import os
from pathlib import Path

import engine
from data import get_dataset
from distributed import ProcessPlace, exit_process, launch_mode, process_device, run_worker
from model_setup import RunSpec, build_model
from train_args import (TERMS, add_adaptive_args, add_model_args, add_optimisation_args,
                        add_process_group_args, add_run_args, add_training_machine_args,
                        check_training_args, fit_from_args, init_percentile, model_config,
                        process_config, train_config)
from utils import (DATASETS, ArgumentParser, UsageError, add_output_flags, arch_help, arch_name,
                   default_checkpoint_dir, default_run_id, env_data_root, error_line, run_main,
                   seed_everything, setup_logging, silent_logger)

# Per-dataset defaults: the paper's CIFAR recipe, and a shorter schedule for the digits.
DEFAULTS = {
    "cifar10": {"lr": 0.1, "batch_size": 128, "epochs": 300},
    "cifar100": {"lr": 0.05, "batch_size": 128, "epochs": 300},
    "digits": {"lr": 0.05, "batch_size": 64, "epochs": 8},
}


def get_args_parser(add_help=True):
    parser = ArgumentParser(
        description="Train a QCFS network (per-layer levels) for PASCAL conversion.",
        add_help=add_help, allow_abbrev=False)
    group = parser.add_argument_group("model and data")
    group.add_argument("-data", "--dataset", default="cifar10", choices=list(DEFAULTS),
                       help="dataset (default: cifar10; digits ships with scikit-learn)")
    group.add_argument("-arch", "--arch", default="vgg16", type=arch_name,
                       help=arch_help("vgg16"))
    add_model_args(group)
    group.add_argument("--data-root", default=None,
                       help="dataset folder (default: $PASCAL_DATA, else ./data)")
    group.add_argument("--image-size", type=int, default=None,
                       help="resize the 32x32 images to this size, for architectures that need "
                            "larger inputs (default: 32)")
    group.add_argument("--download", action="store_true",
                       help="download CIFAR if it is missing (default: never download)")
    add_optimisation_args(
        parser.add_argument_group("optimisation"),
        epochs_help="total epochs, cosine schedule (default: 300 for CIFAR, 8 for digits)",
        batch_help="batch size (default: 128 for CIFAR, 64 for digits)",
        lr_help="initial learning rate (default: 0.1 CIFAR-10, 0.05 CIFAR-100 and digits)",
        weight_decay=5e-4)
    add_adaptive_args(parser)
    add_run_args(parser.add_argument_group("run and checkpoints"), "{arch}_{dataset}",
                 "{dataset}-checkpoints")
    group = parser.add_argument_group("machine")
    add_training_machine_args(group, workers=2)
    add_output_flags(group)
    add_process_group_args(parser.add_argument_group(
        "several processes (launched by torchrun; -b is the global batch)"))
    return parser


def resolve_args(args):
    """Fill dataset defaults and check flag combinations (before any expensive work)."""
    for key, value in DEFAULTS[args.dataset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.id = args.id or default_run_id(args.arch, args.dataset)
    args.checkpoint_dir = Path(args.checkpoint_dir or default_checkpoint_dir(args.dataset))
    check_training_args(args)
    if args.image_size is not None and args.image_size < 8:
        raise UsageError(f"--image-size must be >= 8, got {args.image_size}")
    args.launch = launch_mode(False, 1)
    processes = int(os.environ.get("WORLD_SIZE", 1))
    device = process_device(args.device, 0, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    if args.amp and device.type != "cuda":
        raise UsageError("--amp needs a CUDA device: drop --amp to train in float32 on the CPU")
    args.dist_backend = args.dist_backend or ("nccl" if device.type == "cuda" else "gloo")
    args.dist_url = None  # torchrun's environment
    if args.launch == "torchrun":
        if args.download:
            raise UsageError("--download with several processes would download once per "
                             "process: download with one process first, then launch")
        if args.batch_size % processes:
            raise UsageError(f"-b {args.batch_size} is the global batch and must be a multiple "
                             f"of the {processes} processes")
    args.data_root = args.data_root or env_data_root()
    return args


def main(args):
    args = resolve_args(args)
    place = ProcessPlace(args.launch, int(os.environ.get("LOCAL_RANK", 0)))
    return run_worker(lambda ctx: train(args, ctx), place, process_config(args),
                      lambda error: error_line(error, TERMS))


def train(args, ctx):
    """One training process (the only one, or one of torchrun's)."""
    size = args.image_size
    train_set = get_dataset(args.dataset, args.data_root, "train", download=args.download,
                            image_size=size)
    test_set = get_dataset(args.dataset, args.data_root, "test", download=args.download,
                           image_size=size)
    percentile = init_percentile(args)
    stats_set = get_dataset(args.dataset, args.data_root, "train", augment=False,
                            image_size=size) if args.adaptive or percentile else None
    if ctx.is_main:
        args.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        logger = setup_logging(args.checkpoint_dir / f"{args.id}.log")
    else:
        logger = silent_logger()
    if hasattr(train_set, "source"):
        logger.info(f"data: {train_set.source}")
    seed_everything(args.seed)
    if args.deterministic:
        engine.enable_determinism()
        logger.info("deterministic algorithms on (torch.use_deterministic_algorithms)")
    num_classes, variant = DATASETS[args.dataset]
    spec = RunSpec(dataset=args.dataset, num_classes=num_classes, variant=variant,
                   image_size=size or 32)
    config = train_config(args)
    model, model_args = build_model(model_config(args), spec, engine.resume_source(config),
                                    logger)
    describe = f"device {ctx.device}" + (
        f", {ctx.world_size} processes (torchrun, {args.dist_backend}), batch "
        f"{args.batch_size} ({args.batch_size // ctx.world_size} per process)"
        if ctx.distributed else "")
    return fit_from_args(args, config, model, model_args, (train_set, test_set, stats_set),
                         ctx, logger, describe)


if __name__ == "__main__":
    exit_process(run_main(main, get_args_parser().parse_args(), TERMS))
