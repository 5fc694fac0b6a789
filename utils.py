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

__all__ = ["ArgumentParser", "UsageError", "GracefulInterrupt", "ignore_signals_in_worker",
           "run_main", "setup_logging", "seed_everything", "resolve_device", "parse_levels",
           "parse_thresholds", "progress", "stretch_cosine_schedule", "DATASETS",
           "default_checkpoint_dir"]

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


def add_level_args(group):
    """``--levels``, ``-L/--level`` and ``--init-threshold`` of the training scripts."""
    group.add_argument("--levels", default=None,
                       help="quantization level L: one int for all layers, or a comma-separated "
                            "list with one entry per QCFS layer (default: 4)")
    group.add_argument("-L", "--level", type=int, default=None,
                       help="uniform level, same as --levels N (reference spelling)")
    group.add_argument("--init-threshold", type=float, default=4.0,
                       help="initial QCFS threshold lambda (default: 4.0)")


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


class GracefulInterrupt:
    """Turn the first SIGINT/SIGTERM into a request checked between training steps.

    The first signal sets ``requested`` (the signal number); the loop finishes its step, saves
    a resumable checkpoint and exits. A second signal exits at once (status 128 + signal):
    checkpoints are written atomically, so no file is left half-written. Use as a context
    manager around the training loop (main process only).

    Test hook: ``PASCAL_SIGNAL_AT="E:S[:N]"`` makes the run send itself SIGTERM N times
    (default 1) right after step S of epoch E (both 1-based), so tests interrupt a run at an
    exact point instead of racing a timer.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = None
        self._previous = {}
        self._self_signal = None
        spec = os.environ.get("PASCAL_SIGNAL_AT")
        if spec:
            parts = [int(p) for p in spec.split(":")]
            self._self_signal = (parts[0], parts[1], parts[2] if len(parts) > 2 else 1)

    def __enter__(self):
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False

    def _handle(self, signum, frame):
        if self.requested is not None:
            os._exit(128 + signum)
        self.requested = signum

    def after_step(self, epoch, step):
        """Called after each completed step (0-based ``epoch`` and ``step``)."""
        if self._self_signal and self._self_signal[:2] == (epoch + 1, step + 1):
            for _ in range(self._self_signal[2]):
                os.kill(os.getpid(), signal.SIGTERM)
        return self.requested is not None


def ignore_signals_in_worker(worker_id):
    """DataLoader ``worker_init_fn``: workers leave SIGINT/SIGTERM to the main process."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
