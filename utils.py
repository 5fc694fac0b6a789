"""Shared script plumbing: one-line errors, logging, seeding, devices and level parsing."""
import argparse
import logging
import math
import os
import random
import re
import signal
import sys
from pathlib import Path

import numpy as np
import torch

from errors import ConfigError, ExitCode, PascalError

__all__ = ["ArgumentParser", "UsageError", "ignore_signals_in_worker", "run_main",
           "error_line", "one_line", "setup_logging", "silent_logger", "seed_everything",
           "resolve_device", "parse_levels", "parse_init_threshold", "parse_thresholds",
           "progress", "stretch_cosine_schedule", "DATASETS", "default_checkpoint_dir",
           "default_run_id", "resolve_checkpoint", "env_data_root", "arch_name", "arch_help",
           "add_device_args", "add_output_flags", "EVAL_TERMS"]

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
    """Bad input on a script's command line: printed as one line (problem and fix, naming the
    flag), exit status 2. Library modules raise :class:`errors.PascalError` instead."""


# The configuration fields the library's errors name, as the evaluation scripts spell them
# (main_test.py, get_stats.py, get_Teff.py); the training scripts' are train_args.TERMS.
EVAL_TERMS = {"arch": "-arch", "dataset": "-data", "levels": "--levels", "variant": "--variant",
              "checkpoint": "--checkpoint", "run_id": "--id", "checkpoint_dir": "--checkpoint-dir",
              "budget_teff": "--budget-teff", "pretrained": "--pretrained",
              "activation": "--activation", "calib_images": "--calib-images",
              "data_root": "--data-root", "download": "--download",
              "image_size": "--image-size"}


def one_line(message):
    """``message`` as one line: the last line of an error re-raised from a DataLoader worker
    (which carries the worker's traceback), else its first line."""
    message = str(message).strip()
    if "Original Traceback" in message:
        return message.splitlines()[-1].split(": ", 1)[-1]
    return message.splitlines()[0] if message else message


def error_line(error, terms=None):
    """The one line a script prints for ``error``: a UsageError as it is; a library's
    :class:`errors.PascalError` with the configuration terms of its advice replaced by the
    script's flags. ``terms`` maps a field name to its flag (``{"epochs": "-epochs"}``):
    ``name='value'`` and ``name=value`` become ``flag value``, ``name=True`` becomes
    ``flag``, and a name in backticks becomes its flag (backticks around other words are
    dropped); a :class:`errors.ConfigError`'s leading field name becomes its flag."""
    if isinstance(error, UsageError) or not isinstance(error, PascalError):
        return str(error)
    terms = terms or {}
    message, advice = error.message, error.advice
    if isinstance(error, ConfigError) and error.field in terms:
        message = f"{terms[error.field]} {error.rule}"

    def flag_value(match):
        flag = terms[match.group(1)]
        value = match.group(2) if match.group(2) is not None else match.group(3)
        return flag if value == "True" else f"{flag} {value}"

    if advice:
        if terms:
            names = "|".join(sorted(map(re.escape, terms), key=len, reverse=True))
            advice = re.sub(rf"\b({names})=(?:'([^']*)'|([^'\",;:\s]+))", flag_value, advice)
        advice = re.sub(r"`([^`]*)`", lambda m: terms.get(m.group(1), m.group(1)), advice)
    return message + (f": {advice}" if advice else "")


def run_main(main, args, terms=None):
    """Run ``main(args)``; returns the exit status (:class:`errors.ExitCode`).

    A UsageError or a library's :class:`errors.PascalError` becomes one line on stderr
    (:func:`error_line` with the script's flag ``terms``) and status 2; ``--debug``
    (``args.debug``) shows the traceback instead. Any other exception is a bug and keeps its
    traceback (status 1).
    """
    try:
        status = main(args)
    except (UsageError, PascalError) as error:
        if getattr(args, "debug", False):
            raise
        print(f"error: {one_line(error_line(error, terms))}", file=sys.stderr)
        return ExitCode.USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0 if status is None else int(status)


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


def resolve_checkpoint(args):
    """``(path, checkpoint_dir)`` named by a script's ``--checkpoint`` or ``--id``/``-suffix``
    (in ``--checkpoint-dir``, default ``{dataset}-checkpoints``)."""
    if args.checkpoint:
        return Path(args.checkpoint), None
    checkpoint_dir = Path(args.checkpoint_dir or default_checkpoint_dir(args.dataset))
    run_id = args.id or (default_run_id(args.arch, args.dataset) if args.arch else None)
    if run_id is None:
        raise UsageError("say which checkpoint to use: --id ID (with -data) or "
                         "--checkpoint PATH")
    if args.suffix:
        run_id = f"{run_id}_{args.suffix}"
    return checkpoint_dir / f"{run_id}.pth", checkpoint_dir


def default_run_id(arch, dataset):
    """The run id when --id is not given: ``{arch}_{dataset}``, with the ``:`` of ``tv:NAME``
    as ``-`` (a colon in a file name breaks scp, rsync and Windows file systems)."""
    return f"{arch.replace(':', '-')}_{dataset}"


def default_checkpoint_dir(dataset):
    return f"{dataset}-checkpoints"


def env_data_root():
    """``$PASCAL_DATA`` if set, else ``./data``."""
    return os.environ.get("PASCAL_DATA", "./data")


def ignore_signals_in_worker(worker_id):
    """DataLoader ``worker_init_fn``: workers leave SIGINT/SIGTERM to the main process."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
