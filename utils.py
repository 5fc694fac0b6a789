"""Shared script plumbing: one-line errors, logging, seeding, devices and level parsing."""
import argparse
import logging
import math
import os
import random
import signal
import sys

import numpy as np
import torch

__all__ = ["ArgumentParser", "UsageError", "ignore_signals_in_worker", "run_main",
           "setup_logging", "silent_logger", "seed_everything", "resolve_device", "parse_levels",
           "parse_thresholds", "progress", "stretch_cosine_schedule", "DATASETS",
           "default_checkpoint_dir", "add_optimisation_args", "add_adaptive_args",
           "add_run_args", "add_process_group_args", "arch_name", "arch_help",
           "add_training_machine_args", "check_training_args"]

# Dataset name -> (number of classes, model variant).
DATASETS = {"cifar10": (10, "cifar"), "cifar100": (100, "cifar"), "digits": (10, "cifar"),
            "imagenet": (1000, "imagenet")}


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and no prefix matching of options."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class UsageError(Exception):
    """Bad input from the user: printed as one line (problem and fix), exit status 2."""


def run_main(main, args):
    """Run ``main(args)``; a UsageError or ValueError becomes one line on stderr and exit 2.

    ``--debug`` (``args.debug``) shows the traceback instead. Returns the exit status.
    """
    try:
        status = main(args)
    except (UsageError, ValueError) as error:
        if getattr(args, "debug", False):
            raise
        message = str(error).strip()
        if "Original Traceback" in message:  # re-raised from a DataLoader worker
            message = message.splitlines()[-1].split(": ", 1)[-1]
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0 if status is None else status


def setup_logging(log_file=None, quiet=False):
    """Log to the console and, if given, to ``log_file`` (appending). Returns the logger."""
    logger = logging.getLogger("pascal")
    logger.handlers.clear()
    logger.setLevel(logging.INFO)
    logger.propagate = False
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(logging.Formatter("%(message)s"))
    console.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.addHandler(console)
    if log_file is not None:
        handler = logging.FileHandler(log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        logger.addHandler(handler)
    return logger


def silent_logger():
    """A logger that drops everything: what processes other than rank 0 log to."""
    logger = logging.getLogger("pascal.silent")
    logger.handlers.clear()
    logger.addHandler(logging.NullHandler())
    logger.propagate = False
    return logger


def seed_everything(seed):
    """Seed Python, NumPy and torch (CPU and CUDA) from one integer."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(spec=None):
    """``None`` -> cuda if available else cpu; ``"0"`` -> cuda:0; else ``torch.device(spec)``."""
    if spec is None or spec == "":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    spec = str(spec)
    if spec.isdigit():
        spec = f"cuda:{spec}"
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UsageError(f"unknown device {spec!r}: use cpu, cuda, cuda:N or a GPU index") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device {spec!r} asked for, but CUDA is not available here: "
                             "drop -dev to run on the CPU")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"device {spec!r} does not exist: this machine has "
                             f"{torch.cuda.device_count()} CUDA device(s)")
    return device


def arch_name(text):
    """argparse type of ``-arch``: a built-in architecture or ``tv:NAME`` (any torchvision
    classification model)."""
    import models  # models is the network side; utils only names its architectures
    if text in models.list_models():
        return text
    if models.is_torchvision_arch(text):
        name = text[len(models.TORCHVISION_PREFIX):]
        if name in models.torchvision_names():
            return text
        raise argparse.ArgumentTypeError(
            f"unknown torchvision model {name!r}: pick one of "
            "torchvision.models.list_models(module=torchvision.models), e.g. tv:resnet50")
    raise argparse.ArgumentTypeError(
        f"invalid choice {text!r}: choose {', '.join(models.list_models())} or tv:NAME for a "
        "torchvision classification model")


DEFAULT_PERCENTILE = 98.0  # --init-threshold auto: the percentile of each layer's inputs
ARCH_HELP = ("architecture: " + "{names}" + ", or tv:NAME for any torchvision classification "
             "model (e.g. tv:resnet50; made a QCFS network, refused in one line if it has an "
             "operation without an exact spiking counterpart)")


def arch_help(default):
    import models
    return ARCH_HELP.format(names=", ".join(models.list_models())) + f" (default: {default})"


def add_model_args(group):
    """``--levels``, ``-L/--level``, ``--init-threshold``, ``--activation`` and ``--dropout``
    of the training scripts."""
    group.add_argument("--levels", default=None,
                       help="quantization level L: one int for all layers, or a comma-separated "
                            "list with one entry per QCFS layer (default: 4)")
    group.add_argument("-L", "--level", type=int, default=None,
                       help="uniform level, same as --levels N (reference spelling)")
    group.add_argument("--init-threshold", default="4.0",
                       help="initial QCFS threshold lambda: a number, or auto[:P] for each "
                            "layer's P-th percentile of its positive inputs on --calib-images "
                            f"training images, in forward order (P default {DEFAULT_PERCENTILE}; "
                            "docs/relu-networks.md) (default: 4.0)")
    group.add_argument("--activation", choices=("qcfs", "relu"), default="qcfs",
                       help="qcfs: the QCFS network PASCAL converts; relu: the same "
                            "architecture with ReLU, an ANN baseline with no levels and no "
                            "spiking counterpart (default: qcfs)")
    group.add_argument("--dropout", type=float, default=None,
                       help="VGG: probability of the Dropout after every activation (default: "
                            "0, as the reference; a resumed run keeps its own)")


def add_device_args(group):
    """``-dev/--device`` and ``-j/--workers`` of the single-process scripts."""
    group.add_argument("-dev", "--device", default=None,
                       help="cpu, cuda, cuda:N or a GPU index (default: cuda if available)")
    group.add_argument("-j", "--workers", type=int, default=2,
                       help="data-loading worker processes (default: 2)")


def add_output_flags(group):
    """``--no-progress`` and ``--debug``, shared by every script."""
    group.add_argument("--no-progress", action="store_true", help="no progress bars")
    group.add_argument("--debug", action="store_true", help="show tracebacks for errors")


def parse_levels(text):
    """``"4"`` -> 4; ``"8,4,4,1"`` -> [8, 4, 4, 1]; anything else raises UsageError."""
    if text is None:
        return None
    if isinstance(text, (int, list)):
        return text
    parts = [p.strip() for p in str(text).replace(" ", ",").split(",") if p.strip()]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise UsageError(f"--levels must be one integer or a comma-separated list of integers, "
                         f"got {text!r}") from None
    if not values:
        raise UsageError("--levels is empty: give one integer or one per QCFS layer")
    if any(v < 1 for v in values):
        raise UsageError(f"--levels must be integers >= 1, got {text!r}")
    return values[0] if len(values) == 1 else values


def parse_init_threshold(text):
    """``"4.0"`` -> ``4.0``; ``"auto"`` -> ``("auto", DEFAULT_PERCENTILE)``; ``"auto:P"`` ->
    ``("auto", P)`` with 0 < P <= 100. Raises ValueError (one line) otherwise."""
    text = str(text).strip()
    if text == "auto" or text.startswith("auto:"):
        percentile = DEFAULT_PERCENTILE
        if text != "auto":
            try:
                percentile = float(text[len("auto:"):])
            except ValueError:
                percentile = math.nan
        if not 0 < percentile <= 100:
            raise ValueError(f"the percentile of auto:P must be a number in (0, 100], got "
                             f"{text!r}")
        return ("auto", percentile)
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"a threshold must be a number > 0, 'auto' or 'auto:P', got "
                         f"{text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"a threshold must be a finite number > 0, got {text!r}")
    return value


def check_budget_teff(value):
    """``--budget-teff``, for every script that takes it: None or a finite number >= 1."""
    if value is not None and not (math.isfinite(value) and value >= 1):
        raise UsageError(f"--budget-teff must be a number >= 1 (T_eff is at least 1 step), "
                         f"got {value}")


def parse_thresholds(text, default):
    """``"t1,t2,t3"`` -> three increasing floats (``default`` for None); else UsageError."""
    if text is None:
        return default
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"--thresholds must be three numbers t1,t2,t3, got {text!r}") from None
    if len(values) != 3 or not all(math.isfinite(v) for v in values) or \
            not values[0] < values[1] < values[2]:
        raise UsageError(f"--thresholds must be three increasing numbers, got {text!r}")
    return values


def stretch_cosine_schedule(scheduler, epochs):
    """Make ``scheduler`` a cosine over ``epochs`` from where it stands.

    CosineAnnealingLR updates the rate recursively from the previous one, so setting T_max
    alone keeps a finished schedule at its final rate (0 for the default eta_min) forever.
    The reference workflow (80 epochs, change the levels, resume to 90) needs the rate that
    a cosine over 90 epochs has at epoch 80: set it in closed form, then let it recurse.
    """
    scheduler.T_max = epochs
    factor = (1 + math.cos(math.pi * scheduler.last_epoch / epochs)) / 2
    for group, base_lr in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, strict=True):
        group["lr"] = scheduler.eta_min + (base_lr - scheduler.eta_min) * factor
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]


def progress(iterable, enabled, **kwargs):
    """A tqdm bar when enabled and stderr is a terminal, else the iterable itself."""
    if not enabled or not sys.stderr.isatty():
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, leave=False, dynamic_ncols=True, **kwargs)


def default_checkpoint_dir(dataset):
    return f"{dataset}-checkpoints"


def env_data_root():
    """``$PASCAL_DATA`` if set, else ``./data``."""
    return os.environ.get("PASCAL_DATA", "./data")


# --- the flags both training scripts share (main_train.py, main.py) ------------------------

def add_optimisation_args(group, epochs_help, batch_help, lr_help, weight_decay):
    """``-epochs``, ``-b``, ``-lr``, ``-wd``, ``--momentum``, ``--amp``, ``--skip-nonfinite``.

    Defaults of epochs, batch size and learning rate are the script's (None here, filled in
    from its dataset); the help texts say what they are."""
    group.add_argument("-epochs", "--epochs", type=int, default=None, help=epochs_help)
    group.add_argument("-b", "--batch-size", type=int, default=None, help=batch_help)
    group.add_argument("-lr", "--lr", "--learning-rate", dest="lr", type=float, default=None,
                       help=lr_help)
    group.add_argument("-wd", "--wd", "--weight-decay", dest="weight_decay", type=float,
                       default=weight_decay, help=f"SGD weight decay (default: {weight_decay:g})")
    group.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default: 0.9)")
    group.add_argument("--amp", action="store_true",
                       help="mixed precision on CUDA; QCFS arithmetic stays float32 (default: off)")
    group.add_argument("--skip-nonfinite", action="store_true",
                       help="skip batches whose loss is NaN/inf (on any process) instead of "
                            "stopping (default: stop, keeping the last good checkpoint)")


def add_adaptive_args(parser):
    """The two-phase layerwise schedule: ``--adaptive`` and its tuning flags."""
    group = parser.add_argument_group("adaptive layerwise levels (two-phase schedule)")
    group.add_argument("--adaptive", action="store_true",
                       help="train --phase1-epochs with uniform levels, choose per-layer levels "
                            "from the AL metric, continue to -epochs (default: off)")
    group.add_argument("--phase1-epochs", type=int, default=None,
                       help="epochs before the levels are chosen (required with --adaptive)")
    group.add_argument("--max-level", type=int, default=None,
                       help="level of the least concentrated layers (default: the largest "
                            "phase-1 level)")
    group.add_argument("--thresholds", default=None,
                       help="metric cut points t1,t2,t3 of the level rule (default: 20,30,38)")
    group.add_argument("--stats-batches", type=int, default=20,
                       help="training batches (evaluation transforms, global batch size) the "
                            "metric is measured on (default: 20)")
    group.add_argument("--budget-teff", type=float, default=None, metavar="X",
                       help="choose the phase-2 levels by the level search instead of the AL "
                            "rule: the least calibration loss at all-layer T_eff <= X (default: "
                            "off; see docs/level-search.md)")
    group.add_argument("--candidates", default=None,
                       help="levels the search may give a layer, comma-separated (default: "
                            "powers of two up to --max-level)")
    group.add_argument("--calib-images", type=int, default=512,
                       help="training images (evaluation transforms) the level search and "
                            "--init-threshold auto measure on (default: 512)")


def default_run_id(arch, dataset):
    """The run id when --id is not given: ``{arch}_{dataset}``, with the ``:`` of ``tv:NAME``
    as ``-`` (a colon in a file name breaks scp, rsync and Windows file systems)."""
    return f"{arch.replace(':', '-')}_{dataset}"


def add_run_args(group, default_id, default_dir):
    """Run id, checkpoint folder, resuming, initial weights and overwriting."""
    group.add_argument("--id", default=None,
                       help="run id: checkpoints are {checkpoint-dir}/{id}.pth and {id}_best.pth "
                            f"(default: {default_id})")
    group.add_argument("-suffix", "--suffix", default="",
                       help="appended to the id as {id}_{suffix} (default: none)")
    group.add_argument("--checkpoint-dir", default=None,
                       help=f"where checkpoints, the log and the CSV go (default: {default_dir})")
    group.add_argument("--resume_from_ckpt", "--resume-from-ckpt", type=int, default=0,
                       choices=[0, 1], help="1: continue the run {id} from its latest checkpoint "
                                            "(default: 0)")
    group.add_argument("--resume", default=None, metavar="PATH|auto",
                       help="continue the run saved in PATH (full state); auto: continue "
                            "{id}.pth if it exists, else start a new run (for relaunched and "
                            "elastic jobs; a worker restarted by torchrun always does this)")
    group.add_argument("--initial-checkpoint", default=None, metavar="PATH",
                       help="start a new run from the weights and thresholds in PATH (ours or "
                            "the reference code's), fresh optimizer and schedule; or from a "
                            "ReLU network's weights (--activation relu checkpoints, plain state "
                            "dicts, torchvision's keys for tv:NAME), thresholds from "
                            "--init-threshold")
    group.add_argument("--pretrained", nargs="?", const="default", default=None,
                       metavar="WEIGHTS",
                       help="tv:NAME: start a new run from torchvision's pretrained weights "
                            "(WEIGHTS, e.g. IMAGENET1K_V2; torchvision's default without it), "
                            "read through torch hub's cache; the classifier is replaced when "
                            "the class count differs; thresholds from --init-threshold")
    group.add_argument("--overwrite", action="store_true",
                       help="start over even if run {id} already has a checkpoint")


def add_process_group_args(group):
    """``--dist-backend`` and ``--dist-timeout``: the process group of a torchrun launch (and of
    main.py's spawn launch)."""
    group.add_argument("--dist-backend", default=None, choices=["nccl", "gloo"],
                       help="process-group backend (default: nccl with CUDA, gloo without)")
    group.add_argument("--dist-timeout", type=float, default=1800,
                       help="seconds a collective waits for a missing process before the job "
                            "fails; covers rank 0's adaptive level choice (default: 1800)")


def add_training_machine_args(group, workers):
    """``-dev``, ``-j``, ``--seed``, ``--deterministic`` of the training scripts."""
    group.add_argument("-dev", "--device", default=None,
                       help="cpu, cuda or cuda:N; with several processes on a node, cuda means "
                            "cuda:LOCAL_RANK for each (default: cuda if available)")
    group.add_argument("-j", "--workers", type=int, default=workers,
                       help=f"data-loading worker processes per training process "
                            f"(default: {workers})")
    group.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    group.add_argument("--deterministic", action="store_true",
                       help="deterministic algorithms (bit-reproducible on CUDA too; slower)")


def check_training_args(args, thresholds_default):
    """Validate the shared training flags once, before any expensive work (UsageError)."""
    for flag, value, low in (("-epochs", args.epochs, 1), ("-b", args.batch_size, 1),
                             ("-j", args.workers, 0)):
        if value < low:
            raise UsageError(f"{flag} must be >= {low}, got {value}")
    if args.level is not None and args.levels is not None:
        raise UsageError("give either -L N or --levels, not both")
    args.levels = parse_levels(args.levels if args.levels is not None else args.level)
    if args.activation == "relu":
        for flag, given in (("--levels / -L", args.levels is not None),
                            ("--adaptive", args.adaptive)):
            if given:
                raise UsageError(f"--activation relu trains a network without levels: drop "
                                 f"{flag}")
    try:
        args.init_threshold = parse_init_threshold(args.init_threshold)
    except ValueError as error:
        raise UsageError(f"--init-threshold: {error}") from None
    if args.activation == "relu" and args.init_threshold != 4.0:
        raise UsageError("--activation relu trains a network without thresholds: drop "
                         "--init-threshold")
    if args.calib_images < 1:
        raise UsageError(f"--calib-images must be >= 1, got {args.calib_images}")
    if args.resume == "auto" and args.overwrite:
        raise UsageError("--resume auto continues an existing run and --overwrite starts it "
                         "over: give only one")
    if args.resume and args.resume_from_ckpt:
        raise UsageError("--resume and --resume_from_ckpt=1 both name the run to continue: "
                         "give only one")
    if args.resume and args.resume != "auto" and args.initial_checkpoint:
        raise UsageError("--resume continues a run and --initial-checkpoint starts a new one: "
                         "give only one")
    if args.pretrained is not None:
        if args.initial_checkpoint:
            raise UsageError("--pretrained and --initial-checkpoint both give the starting "
                             "weights: give only one")
        if args.activation == "relu":
            raise UsageError("--pretrained starts a QCFS network from torchvision's weights: "
                             "drop --activation relu")
    if args.resume_from_ckpt and args.initial_checkpoint:
        raise UsageError("--resume_from_ckpt=1 and --initial-checkpoint exclude each other: "
                         "give only one")
    if args.adaptive:
        if args.phase1_epochs is None or not 1 <= args.phase1_epochs < args.epochs:
            raise UsageError(f"--adaptive needs --phase1-epochs N with 1 <= N < -epochs "
                             f"({args.epochs}), got {args.phase1_epochs}")
        args.thresholds = parse_thresholds(args.thresholds, thresholds_default)
        if args.max_level is not None and args.max_level < 1:
            raise UsageError(f"--max-level must be >= 1, got {args.max_level}")
        if args.stats_batches < 1:
            raise UsageError(f"--stats-batches must be >= 1, got {args.stats_batches}")
        check_budget_teff(args.budget_teff)
        if args.candidates is not None:
            try:
                candidates = sorted({int(v) for v in str(args.candidates).split(",") if v})
            except ValueError:
                candidates = []
            if not candidates or candidates[0] < 1:
                raise UsageError(f"--candidates must be comma-separated levels >= 1, got "
                                 f"{args.candidates!r}")
            args.candidates = candidates
    elif args.phase1_epochs is not None or args.budget_teff is not None:
        raise UsageError("--phase1-epochs and --budget-teff only make sense with --adaptive")
    if args.suffix:
        args.id = f"{args.id}_{args.suffix}"
    return args


def ignore_signals_in_worker(worker_id):
    """DataLoader ``worker_init_fn``: workers leave SIGINT/SIGTERM to the main process."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
