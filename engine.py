"""The training engine: :func:`fit` trains a QCFS (or ReLU) network, in one process or many.

    from config import AdaptiveConfig, TrainConfig
    result = engine.fit(model, train_set, test_set, TrainConfig(epochs=5, lr=0.01,
                        run_id="mine", checkpoint_dir="runs", resume="auto"))

``model`` is any network (a QCFS network from ``models.create_model`` or ``models.qcfsify``,
or a ReLU one); ``train_set`` yields augmented ``(image, label)`` samples, ``test_set`` the
held-out ones. :func:`fit` owns what a run does once the model and the data exist: resuming
(``config.resume``, elastic restarts), the memory layout (``config.memory_format``:
channels-last on the CPU), thresholds from data for a new run, the epoch loop
(AMP, threshold clamping, divergence), evaluation, the two-phase level switch (the AL rule
or the level search), self-describing checkpoints (epoch ends and mid-epoch stops), stops on
SIGTERM/SIGINT, and the per-epoch log and CSV. The training scripts build the model
(:mod:`model_setup`) and the config from their flags and call it.

Under DDP (a process group exists: torchrun, or a spawned worker) every decision that
changes what the processes do next is agreed by a collective: whether to stop after a step
(a signal reached any process), whether a step's loss is finite everywhere, and the levels of
the adaptive switch (computed on rank 0, broadcast, then checked on every rank). Only rank 0
logs and writes files.

Reproducibility: every step seeds torch from (run seed, epoch, step, rank), every sample
draws its augmentation from (run seed, epoch, index) and every epoch's order comes from
(run seed, epoch) alone, so a run stopped anywhere and resumed repeats, bit for bit on the
same processes, what an uninterrupted run does; no generator state needs saving.
"""
import csv
import logging
import os
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Subset

import models
from al_metric import collect_level_counts, format_table, layer_metrics
from allocator import keep_freed_memory
from checkpoint import (FORMAT_VERSION, check_model, checkpoint_path, is_own_format, is_relu,
                        load_checkpoint_file, restore_training_state, save_checkpoint)
from compiled import compile_for_steps, compile_seconds
from config import AdaptiveConfig, TrainConfig
from data import SeededAugmentation, make_loader, shard_order
from distributed import DistContext, current_context
from errors import CheckpointError, ConfigError, ExitCode
from level_search import calibration_loader, default_candidates, minimum_teff, search_levels
from threshold_init import MIN_THRESHOLD, data_thresholds_
from utils import progress

__all__ = ["TrainConfig", "AdaptiveConfig", "MIN_THRESHOLD", "DistContext", "Run", "FitResult",
           "StopRequest", "Diverged", "EpochProgress", "resume_source", "start_run", "fit",
           "evaluate", "describe_model", "enable_determinism", "elastic_restart_count",
           "training_memory_format", "batch_to"]


@dataclass
class EpochProgress:
    """Running totals of one training epoch (summed over processes when saved)."""

    step: int = 0          # completed steps of this epoch (the same on every process)
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    skipped: int = 0       # non-finite steps skipped (agreed, so the same on every process)


@dataclass
class Run:
    """A run ready to train: the model (unwrapped), its optimizer state and where it stands."""

    model: nn.Module
    model_args: dict
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None
    start_epoch: int = 0
    best_acc1: float = 0.0
    partial: EpochProgress | None = None
    adaptive: dict | None = None
    resumed_from: Path | None = None
    memory_format: torch.memory_format = torch.contiguous_format


@dataclass(frozen=True)
class FitResult:
    """What :func:`fit` ended with. ``status``: an :class:`errors.ExitCode` value (0 done,
    3 diverged, 128 + N stopped on signal N); ``epochs``: epochs completed; ``best_acc1`` and
    ``last_acc1``: held-out top-1 (percent; the best since the level switch); ``levels``:
    the model's levels at the end; ``checkpoint``: the run's latest checkpoint."""

    status: int
    epochs: int
    best_acc1: float
    last_acc1: float | None
    levels: list
    checkpoint: Path


class Diverged(Exception):
    """The loss became NaN or infinite."""


class Interrupted(Exception):
    """Every process agreed to stop after a step; carries the epoch's progress and signal."""

    def __init__(self, progress_state, signum):
        super().__init__(f"interrupted after step {progress_state.step}")
        self.progress = progress_state
        self.signum = signum


class StopRequest:
    """SIGTERM/SIGINT during training: stop at the next step boundary every process agrees on.

    - the first SIGTERM or SIGINT is recorded; the loop finishes its step, rank 0 writes a
      resumable checkpoint, and the run ends with status 128 + signal;
    - a repeated SIGTERM is ignored: under a scheduler a worker may get it twice, directly
      and from its launcher;
    - a second SIGINT (Ctrl-C again) restores Python's default handler and raises
      KeyboardInterrupt: the run stops at once; nothing is half-written, because checkpoints
      are written atomically.

    Use as a context manager around the loop (the main thread of each process).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = None
        self._previous = {}

    def __enter__(self):
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False

    def _handle(self, signum, frame):
        if self.requested is None:
            self.requested = signum
        elif signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt

    def agreed(self, ctx):
        """The signal every process stops for, or None to go on (a collective under DDP:
        call it at the same point on every process)."""
        if not ctx.distributed:
            return self.requested
        flag = torch.tensor([self.requested or 0], dtype=torch.int64, device=ctx.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item()) or None


def elastic_restart_count():
    """How often torchrun has restarted this worker group (0 outside torchrun)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def resume_source(config):
    """The checkpoint the run of ``config`` continues from, or None for a new run.

    ``resume``: a path names it; ``"auto"`` means the run's latest checkpoint if it exists,
    else a new run. A worker restarted by torchrun behaves as ``"auto"`` and ignores
    ``overwrite`` (otherwise a restart would start over). A new run where the run's checkpoint
    exists needs ``overwrite`` (:class:`errors.CheckpointError`, field ``resume``).
    """
    latest = checkpoint_path(config.checkpoint_dir, config.run_id)
    if config.resume == "auto" or elastic_restart_count() > 0:
        return latest if latest.exists() else None
    if config.resume:
        return Path(config.resume)
    if latest.exists() and not config.overwrite:
        raise CheckpointError(latest, f"run {config.run_id!r} already has this checkpoint",
                              field="resume", advice="continue it with resume='auto', start "
                              "over with overwrite=True, or choose another `run_id`")
    return None


def describe_model(model, image_size=None):
    """``model_args`` for a network built outside the model registry: its class name as
    ``arch``, its levels and activation (what a resumed run is checked against)."""
    levels = models.get_levels(model)
    return {"arch": type(model).__name__, "levels": levels,
            "activation": "qcfs" if levels else "relu", "image_size": image_size}


def start_run(model, model_args, config, ctx, logger, levels=None):
    """A :class:`Run` of ``model``: new (fresh optimizer and schedule), or continuing
    :func:`resume_source`'s checkpoint, whose weights, levels, optimizer, schedule and
    progress are restored after checking that it holds this model (:class:`errors.
    CheckpointMismatch` naming the differing ``model_args`` field). ``levels``, if given,
    replace the model's (for a resumed run: the checkpoint's) levels."""
    source = resume_source(config)
    restored = None
    if source is not None:
        restored = load_checkpoint_file(source, config.checkpoint_dir)
        if not is_own_format(restored) or "optimizer" not in restored:
            raise CheckpointError(source, "is not a training checkpoint of this project (no "
                                  "optimizer state)", field="resume",
                                  advice="start a new run from its weights instead")
        check_model(restored["model_args"], {
            key: model_args.get(key) for key in ("activation", "arch", "variant",
                                                 "num_classes", "dataset", "dropout")}, source)
        try:
            model.load_state_dict(restored["state_dict"])
        except RuntimeError as error:
            raise CheckpointError(source, f"does not fit the model: "
                                  f"{str(error).splitlines()[0]}") from None
        stored_levels = restored["model_args"]["levels"]
        if stored_levels:
            models.set_levels(model, stored_levels)
    if levels is not None:
        old = models.get_levels(model)
        new = models.set_levels(model, levels)
        if restored is not None and new != old:
            logger.info(f"levels changed at epoch {restored['epoch']}: {old} -> {new} "
                        "(phase 2: same optimizer, schedule and epoch counter)")
    model_args = dict(model_args, levels=models.get_levels(model))
    memory_format = training_memory_format(config.memory_format, model, ctx.device)
    model.to(ctx.device, memory_format=memory_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    scaler = torch.amp.GradScaler("cuda") if config.amp else None
    run = Run(model, model_args, optimizer, scheduler, scaler, memory_format=memory_format)
    if restored is not None:
        run.start_epoch, run.best_acc1 = restore_training_state(
            restored, optimizer, scheduler, scaler, config.epochs, logger)
        run.adaptive = restored["adaptive"]
        if restored["partial_epoch"]:
            saved = restored["partial_epoch"]
            run.partial = EpochProgress(**{k: saved[k] for k in asdict(EpochProgress())})
        run.resumed_from = source
    if run.start_epoch >= config.epochs:
        raise ConfigError("epochs", config.epochs,
                          f"must exceed the {run.start_epoch} epochs run {config.run_id} has "
                          "already finished", advice="raise `epochs` to train longer")
    return run


def training_memory_format(choice, model, device):
    """The ``torch.memory_format`` training keeps ``model``'s 4-D weights and activations in,
    for ``choice`` (:attr:`TrainConfig.memory_format`). ``"auto"``: channels-last on the CPU
    for a network with 2-D convolutions -- oneDNN computes CPU convolutions and their
    gradients in NHWC and reorders NCHW tensors to it and back -- contiguous elsewhere (GPUs
    keep the layout they had). The layout changes the order of the convolutions' sums (their
    rounding), not what is computed."""
    if choice == "auto":
        convolutional = any(isinstance(m, nn.Conv2d) for m in model.modules())
        return (torch.channels_last if device.type == "cpu" and convolutional
                else torch.contiguous_format)
    return {"channels_last": torch.channels_last,
            "contiguous": torch.contiguous_format}[choice]


def batch_to(images, device, memory_format=torch.preserve_format):
    """``images`` on ``device`` in ``memory_format`` (batches of other than 4 dimensions
    keep theirs)."""
    if images.dim() != 4:
        memory_format = torch.preserve_format
    return images.to(device, non_blocking=True, memory_format=memory_format)


def enable_determinism():
    """Deterministic algorithms everywhere (CUDA included); slower on GPU."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def step_seed(seed, epoch, step, rank):
    """The torch seed of one training step of one process (dropout and anything else the step
    draws): a pure function of where the step is, so a resumed run draws what an uninterrupted
    one would."""
    return (((seed * 1_000_003 + epoch) * 1_000_033 + step) * 1_009 + rank) % 2**63


def epoch_seed(seed, epoch):
    """The seed of one epoch's sample order."""
    return seed * 100_003 + epoch


@torch.no_grad()
def evaluate(model, loader, ctx, show_progress=True, desc="test",
             memory_format=torch.preserve_format):
    """``(top-1 %, mean loss, images)`` of ``model`` in eval mode, summed over every process's
    shard under DDP (each image in exactly one shard); 4-D batches enter in
    ``memory_format``."""
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=ctx.device)  # correct, loss, images
    for images, targets in progress(loader, show_progress, desc=desc):
        images = batch_to(images, ctx.device, memory_format)
        targets = targets.to(ctx.device, non_blocking=True)
        logits = model(images)
        totals[0] += (logits.argmax(1) == targets).sum()
        totals[1] += F.cross_entropy(logits.float(), targets, reduction="sum").double()
        totals[2] += len(targets)
    if ctx.distributed:
        dist.all_reduce(totals)
    correct, loss_sum, seen = totals.tolist()
    seen = int(seen)
    return 100.0 * correct / max(seen, 1), loss_sum / max(seen, 1), seen


def fit(model, train_set, test_set, config, *, stats_set=None, model_args=None, levels=None,
        init_percentile=None, ctx=None, logger=None, describe=""):
    """Train ``model`` as ``config`` says; returns a :class:`FitResult`.

    ``train_set`` yields augmented training samples (each sample's augmentation is seeded
    here), ``test_set`` the held-out split (sharded over processes). ``stats_set``: training
    images with evaluation transforms, for ``config.adaptive`` and ``init_percentile``
    (default: ``train_set``). ``model_args``: how the model is described in the checkpoint
    (default :func:`describe_model`; the scripts' checkpoints say how to rebuild it).
    ``levels``: the levels to train with (for a resumed run, instead of the checkpoint's).
    ``init_percentile``: for a new run, every QCFS threshold first becomes this percentile of
    its layer's positive inputs on ``config.calib_images`` images of ``stats_set``
    (:mod:`threshold_init`). ``ctx``: where this process stands (default: a process group's
    rank if one exists -- inside torchrun one is joined -- else one process on the model's
    device). ``logger``: where the log lines go (default: the ``pascal`` logger).

    Raises :class:`errors.ConfigError`, :class:`errors.CheckpointError` and
    :class:`errors.CheckpointMismatch` for what the caller can fix; they are raised before
    the first step.
    """
    config.validate()
    if model_args is None:
        model_args = describe_model(model, _image_side(train_set))
    ctx = ctx if ctx is not None else current_context(model)
    logger = logger if logger is not None else logging.getLogger("pascal")
    stats_set = train_set if stats_set is None else stats_set
    if ctx.device.type == "cpu":  # each step reuses the memory the last one freed
        keep_freed_memory()
    run = start_run(model, model_args, config, ctx, logger, levels)
    try:
        if init_percentile is not None and run.resumed_from is None:
            init_thresholds_from_data(run.model, stats_set, init_percentile, config, ctx,
                                      logger)
        if config.adaptive is not None and run.adaptive is None:
            check_budget(run.model, config.adaptive)
        return _Training(run, train_set, test_set, stats_set, config, ctx, logger).loop(
            describe)
    finally:  # the caller gets the model back contiguous (weights unchanged)
        run.model.to(memory_format=torch.contiguous_format)


def _image_side(dataset):
    """The side of the first sample's image (square images), or None if it has no shape."""
    try:
        image = dataset[0][0]
        return int(image.shape[-1])
    except (IndexError, TypeError, AttributeError):
        return None


def init_thresholds_from_data(model, stats_set, percentile, config, ctx, logger):
    """Every QCFS threshold from the ``percentile``-th percentile of its inputs on a fixed
    calibration subset of ``stats_set`` (:mod:`threshold_init`). Every process computes the
    same values from the same images; DDP's start-up broadcast of rank 0's parameters then
    makes them equal bit for bit."""
    calibration = calibration_loader(stats_set, config.calib_images,
                                     max(1, config.batch_size // ctx.world_size),
                                     config.workers, device=ctx.device)
    started = time.time()
    chosen = data_thresholds_(model, calibration, percentile,
                              show_progress=config.show_progress and ctx.is_main)
    used = len(calibration.dataset)
    table = ", ".join(f"{name} {threshold:.4g}" for name, threshold, _ in chosen)
    logger.info(f"thresholds from data: the {percentile:g}th percentile of each layer's positive "
                f"inputs on {used} training images ({time.time() - started:.0f}s): {table}")
    return chosen


def check_budget(model, adaptive):
    """With ``budget_teff``, refuse (before phase 1) a budget the candidates cannot meet."""
    if adaptive.budget_teff is None:
        return
    candidates = list(adaptive.candidates or default_candidates(
        adaptive.max_level or max(models.get_levels(model))))
    lowest = minimum_teff(model, candidates)
    if adaptive.budget_teff < lowest:
        raise ConfigError("budget_teff", adaptive.budget_teff,
                          f"is below the smallest T_eff the candidate levels {candidates} "
                          f"reach on this model ({lowest:.4f})", advice="raise `budget_teff`")


class _Training:
    """The epoch loop of one :func:`fit` call, as named steps over explicit state:
    :meth:`train_epoch`, :meth:`evaluate`, :meth:`switch` (the phase boundary of the adaptive
    schedule) and :meth:`end_epoch` (checkpoint, log line, CSV row)."""

    def __init__(self, run, train_set, test_set, stats_set, config, ctx, logger):
        self.run, self.config, self.ctx, self.logger = run, config, ctx, logger
        self.stats_set = stats_set
        self.best_acc1, self.adaptive = run.best_acc1, run.adaptive
        self.last_acc1 = None
        model = run.model
        if config.sync_bn:
            model = run.model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        # what evaluation calls: the model, or its compiled wrapper (same parameters)
        self.eval_model = (compile_for_steps(model, ctx.device, logger) if config.compile
                           else model)
        self.model = self.eval_model  # what the steps call: DDP's wrapper under DDP
        if ctx.distributed:
            self.model = DistributedDataParallel(
                self.eval_model,
                device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
        self.compiled_seconds = compile_seconds()
        self.batch_size = config.batch_size // ctx.world_size
        self.train_set = SeededAugmentation(train_set, config.seed)
        self.num_train, self.num_test = len(train_set), len(test_set)
        test_shard = Subset(test_set, range(ctx.rank, len(test_set), ctx.world_size))
        self.test_loader = make_loader(test_shard, max(self.batch_size, 256 // ctx.world_size),
                                       False, config.workers, device=ctx.device)
        self.show = ctx.is_main and config.show_progress
        self.latest = checkpoint_path(config.checkpoint_dir, config.run_id)
        self.csv_path = Path(config.checkpoint_dir) / f"{config.run_id}_epochs.csv"

    # -- the loop ---------------------------------------------------------------------------

    def loop(self, describe):
        config, run = self.config, self.run
        self.log_start(describe)
        adaptive = config.adaptive
        with StopRequest() as stop:
            if adaptive is not None and adaptive.phase1_epochs == 0 and self.adaptive is None:
                acc1, _, images = self.evaluate()
                self.switch(0, acc1, images)
            for epoch in range(run.start_epoch, config.epochs):
                started = time.time()
                lr = run.optimizer.param_groups[0]["lr"]
                try:
                    totals = self.train_epoch(epoch, stop)
                except Diverged as error:
                    self.logger.error(
                        f"training stopped: {error}; " + (
                            f"the last good checkpoint ({self.latest}) is intact"
                            if self.latest.exists() else "no checkpoint was written yet"))
                    return self.result(ExitCode.DIVERGED, epoch)
                except Interrupted as stopped:
                    totals = _summed_progress(stopped.progress, self.ctx)
                    if self.ctx.is_main:
                        save_checkpoint(self.latest, self.snapshot(epoch, totals))
                        self.logger.error(
                            f"interrupted (signal {stopped.signum}) at epoch {epoch + 1}, step "
                            f"{totals.step}; resumable checkpoint {self.latest}")
                    return self.result(ExitCode.SIGNAL + stopped.signum, epoch)
                acc1, loss, images = self.evaluate()
                is_best = acc1 > self.best_acc1
                self.best_acc1 = max(self.best_acc1, acc1)
                switched = (adaptive is not None and self.adaptive is None and
                            epoch + 1 == adaptive.phase1_epochs)
                if switched:
                    self.switch(epoch + 1, acc1, images)
                    is_best = False
                self.end_epoch(epoch, lr, totals, (acc1, loss, images), is_best, switched,
                               time.time() - started)
                signum = stop.agreed(self.ctx)
                if signum is not None and epoch + 1 < config.epochs:
                    self.logger.error(
                        f"interrupted (signal {signum}) after epoch {epoch + 1}; checkpoint "
                        f"{self.latest}")
                    return self.result(ExitCode.SIGNAL + signum, epoch + 1)
        self.logger.info(f"done: best test top-1 {self.best_acc1:.2f}%; checkpoint "
                         f"{self.latest}")
        return self.result(ExitCode.OK, config.epochs)

    def result(self, status, epochs):
        return FitResult(status=int(status), epochs=epochs, best_acc1=self.best_acc1,
                         last_acc1=self.last_acc1, levels=models.get_levels(self.run.model),
                         checkpoint=self.latest)

    # -- the steps --------------------------------------------------------------------------

    def train_epoch(self, epoch, stop):
        """Epoch ``epoch`` (continued where a saved partial epoch stopped); returns its
        totals summed over processes, after the schedule's step and, under DDP, rank 0's
        BatchNorm statistics broadcast to every process."""
        run, ctx = self.run, self.ctx
        state = run.partial if epoch == run.start_epoch and run.partial else EpochProgress()
        if not ctx.is_main and state.step:
            # rank 0 holds the saved totals of the partial epoch; the others start at 0
            state = EpochProgress(step=state.step, skipped=state.skipped)
        self.train_set.set_epoch(epoch)
        order = shard_order(len(self.train_set), epoch_seed(self.config.seed, epoch), ctx.rank,
                            ctx.world_size)
        loader = make_loader(self.train_set, self.batch_size, True, self.config.workers,
                             sampler=order[state.step * self.batch_size:], device=ctx.device)
        train_one_epoch(self.model, loader, run, ctx, epoch, state, stop, self.config,
                        self.logger, self.show)
        run.scheduler.step()
        if ctx.distributed:
            # BatchNorm running statistics drift apart between processes (each updates them
            # on its own batches); use rank 0's everywhere, as the checkpoint saves them.
            for buffer in run.model.buffers():
                dist.broadcast(buffer, src=0)
        return _summed_progress(state, ctx)

    def evaluate(self):
        acc1, loss, images = evaluate(self.eval_model, self.test_loader, self.ctx, self.show,
                                      memory_format=self.run.memory_format)
        self.last_acc1 = acc1
        return acc1, loss, images

    def switch(self, epochs_done, acc1, images):
        """The phase boundary of the adaptive schedule after ``epochs_done`` epochs: the
        phase-1 checkpoint, the new levels, and the best top-1 tracked afresh (phase-2
        accuracy is not comparable with phase 1)."""
        adaptive = self.config.adaptive
        self.logger.info(f"epoch {epochs_done}: phase 1 ends with test top-1 {acc1:.2f}%")
        if self.ctx.is_main:
            save_checkpoint(Path(self.config.checkpoint_dir) / f"{self.config.run_id}_phase1.pth",
                            self.snapshot(epochs_done, test=(acc1, images)))
        record = switch_levels(self.run.model, self.stats_set, adaptive, self.config,
                               self.ctx, self.logger)
        record.update(phase1_epochs=adaptive.phase1_epochs, phase1_test_acc1=acc1)
        self.run.model_args["levels"] = record["levels"]
        self.adaptive = record
        self.best_acc1 = 0.0

    def end_epoch(self, epoch, lr, totals, test, is_best, switched, seconds):
        """Rank 0: the checkpoint (and the best one), the log line and the CSV row."""
        if not self.ctx.is_main:
            return
        acc1, loss, images = test
        state = self.snapshot(epoch + 1, test=(acc1, images))
        save_checkpoint(self.latest, state)
        if is_best:
            save_checkpoint(checkpoint_path(self.config.checkpoint_dir, self.config.run_id,
                                            best=True), state)
        train_loss = totals.loss_sum / max(totals.seen, 1)
        train_acc1 = 100.0 * totals.correct / max(totals.seen, 1)
        if self.config.compile:
            spent, self.compiled_seconds = (compile_seconds() - self.compiled_seconds,
                                            compile_seconds())
            if spent >= 0.05:
                self.logger.info(f"torch.compile: {spent:.1f}s of epoch {epoch + 1} compiling "
                                 f"({self.compiled_seconds:.1f}s in this process so far)")
        self.logger.info(
            f"epoch {epoch + 1}/{self.config.epochs}  lr {lr:.4f}  train loss {train_loss:.4f} "
            f"acc {train_acc1:.2f}%  test loss {loss:.4f} acc {acc1:.2f}% ({images} images)  "
            + ("levels changed, best reset" if switched else f"best {self.best_acc1:.2f}%")
            + f"  {seconds:.1f}s"
            + (f"  ({totals.skipped} non-finite batches skipped)" if totals.skipped else ""))
        write_csv_row(self.csv_path, {
            "epoch": epoch + 1, "lr": lr, "train_loss": train_loss, "train_acc1": train_acc1,
            "test_loss": loss, "test_acc1": acc1, "test_images": images,
            "best_acc1": self.best_acc1, "seconds": round(seconds, 2),
            "skipped_batches": totals.skipped, "processes": self.ctx.world_size,
            "levels": ",".join(map(str, self.run.model_args["levels"]))})

    def snapshot(self, epochs_done, partial=None, test=None):
        """The checkpoint after ``epochs_done`` epochs (and ``partial``, the progress inside
        the next one)."""
        run = self.run
        weights = run.model.state_dict()
        for key, value in weights.items():  # whatever layout training keeps them in
            weights[key] = value.contiguous()
        state = {
            "format_version": FORMAT_VERSION, "model_args": run.model_args,
            "state_dict": weights,
            "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
            "scaler": run.scaler.state_dict() if run.scaler is not None else None,
            "epoch": epochs_done, "best_acc1": self.best_acc1,
            "partial_epoch": asdict(partial) if partial else None,
            "adaptive": self.adaptive, "world_size": self.ctx.world_size,
            "config": self.config.as_dict()}
        if test is not None:
            state["test_acc1"], state["test_images"] = test
        return state

    def log_start(self, describe):
        if not self.ctx.is_main:
            return
        run, config = self.run, self.config
        restart = elastic_restart_count()
        restarted = f"restarted by torchrun (restart {restart}): " if restart else ""
        if run.resumed_from is not None:
            where = f"epoch {run.start_epoch}" + (
                f" + {run.partial.step} steps of epoch {run.start_epoch + 1}"
                if run.partial else "")
            self.logger.info(f"{restarted}resuming run {config.run_id} after {where} "
                             f"(best {self.best_acc1:.2f}%) from {run.resumed_from}")
        elif restarted:
            self.logger.info(f"{restarted}no checkpoint of run {config.run_id} yet: starting "
                             "it over")
        activations = ("ReLU activations (no levels)" if is_relu(run.model_args)
                       else f"levels {run.model_args['levels']}")
        dataset = run.model_args.get("dataset")
        self.logger.info(f"run {config.run_id}: {run.model_args['arch']}"
                         + (f" on {dataset}" if dataset else "")
                         + f", {activations}, {self.num_train} train / {self.num_test} test "
                         f"images" + (f", {describe}" if describe else ""))


def train_one_epoch(model, loader, run, ctx, epoch, state, stop, config, logger, show):
    """Continue epoch ``epoch`` from ``state`` over ``loader`` (the remaining batches).

    Each step: seed, forward, agree that the loss is finite (else stop with
    :class:`Diverged`, or skip the step with ``config.skip_nonfinite``), update, clamp
    thresholds to >= MIN_THRESHOLD (so the network keeps a spiking counterpart), then agree
    whether to stop (:class:`Interrupted`).
    """
    model.train()
    bar = progress(loader, show, desc=f"epoch {epoch + 1} train", initial=state.step,
                   total=state.step + len(loader))
    for images, targets in bar:
        step = state.step
        torch.manual_seed(step_seed(config.seed, epoch, step, ctx.rank))
        images = batch_to(images, ctx.device, run.memory_format)
        targets = targets.to(ctx.device, non_blocking=True)
        # a skipped step must leave no trace: its forward already updated BatchNorm's
        # running statistics, which are put back
        buffers = ([(b, b.clone()) for b in run.model.buffers()] if config.skip_nonfinite
                   else None)
        with torch.autocast(ctx.device.type, dtype=torch.float16,
                            enabled=run.scaler is not None):
            logits = model(images)
            loss = F.cross_entropy(logits, targets)
        if not _agree_finite(loss, ctx):
            if not config.skip_nonfinite:
                raise Diverged(f"loss is {loss.item()} at epoch {epoch + 1}, step {step + 1}"
                               + (" (on some process)" if ctx.distributed else ""))
            with torch.no_grad():
                for buffer, saved in buffers:
                    buffer.copy_(saved)
            state.skipped += 1
            logger.warning(f"epoch {epoch + 1} step {step + 1}: non-finite loss, skipped")
        else:
            run.optimizer.zero_grad(set_to_none=True)
            if run.scaler is not None:
                run.scaler.scale(loss).backward()
                run.scaler.step(run.optimizer)
                run.scaler.update()
            else:
                loss.backward()
                run.optimizer.step()
            models.clamp_thresholds_(run.model, MIN_THRESHOLD)
            state.loss_sum += loss.item() * len(targets)
            state.correct += int((logits.argmax(1) == targets).sum())
            state.seen += len(targets)
        state.step += 1
        signum = stop.agreed(ctx)
        if signum is not None:
            raise Interrupted(state, signum)


def _agree_finite(loss, ctx):
    finite = torch.isfinite(loss.detach()).to(torch.int64).reshape(1)
    if ctx.distributed:
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    return bool(finite.item())


def _summed_progress(state, ctx):
    """``state`` with loss, correct and seen summed over processes (a collective under DDP)."""
    if not ctx.distributed:
        return EpochProgress(**asdict(state))
    sums = torch.tensor([state.loss_sum, state.correct, state.seen], dtype=torch.float64,
                        device=ctx.device)
    dist.all_reduce(sums)
    loss_sum, correct, seen = sums.tolist()
    return EpochProgress(step=state.step, loss_sum=loss_sum, correct=int(correct),
                         seen=int(seen), skipped=state.skipped)


def switch_levels(model, stats_set, adaptive, config, ctx, logger):
    """Phase 1 -> 2 of the adaptive schedule: the AL metric of every layer on the first
    ``adaptive.stats_batches`` x global batch images of ``stats_set`` and the level rule; with
    ``adaptive.budget_teff``, the level search (:mod:`level_search`) on ``config.calib_images``
    of them chooses instead, the AL rule's levels being one of the combinations it measures.
    Rank 0 computes, every process takes its levels, and all check that they agree. Sets the
    levels on ``model``; returns the ``adaptive`` record.
    """
    chosen = [None]
    batch = max(1, config.batch_size // ctx.world_size)
    if ctx.is_main:
        images = min(len(stats_set), adaptive.stats_batches * config.batch_size)
        loader = make_loader(Subset(stats_set, range(images)), batch, False, config.workers,
                             device=ctx.device)
        counts = collect_level_counts(model, loader, ctx.device)
        rows = layer_metrics(model, counts, 5, adaptive.max_level, adaptive.thresholds)
        logger.info(f"AL metric on {images} training images:\n{format_table(rows)}")
        al_levels = [r["suggested_level"] for r in rows]
        record = {"method": "al_metric", "levels": al_levels, "metrics": [
            {k: r[k] for k in ("name", "level", "metric", "suggested_level")} for r in rows]}
        if adaptive.budget_teff is not None:
            calibration = calibration_loader(stats_set, config.calib_images, batch,
                                             config.workers, device=ctx.device)
            result = search_levels(
                model, calibration, adaptive.budget_teff,
                candidates=list(adaptive.candidates) if adaptive.candidates else None,
                max_level=adaptive.max_level, al_levels=al_levels,
                show_progress=config.show_progress)
            logger.info(
                f"level search at T_eff <= {adaptive.budget_teff:g} on "
                f"{len(calibration.dataset)} training images ({result.num_evaluations} "
                f"evaluations, {result.seconds:.0f}s): {result.levels}, T_eff "
                f"{result.teff:.4f}, calibration loss {result.calibration_loss:.4f}; AL rule "
                f"{result.al_rule.levels}: T_eff {result.al_rule.teff:.4f}, calibration loss "
                f"{result.al_rule.calibration_loss:.4f}")
            record.update(method="level_search", levels=result.levels,
                          budget_teff=adaptive.budget_teff, al_levels=al_levels,
                          level_search=result.as_dict())
        chosen = [record]
    if ctx.distributed:  # the timeout of this wait is the process group's (rank 0 measures)
        dist.broadcast_object_list(chosen, src=0,
                                   device=ctx.device if ctx.device.type == "cuda" else None)
    record = chosen[0]
    old = models.get_levels(model)
    levels = models.set_levels(model, record["levels"])
    if ctx.distributed:
        every = [None] * ctx.world_size
        dist.all_gather_object(every, models.get_levels(model))
        if any(other != levels for other in every):
            raise RuntimeError(f"processes disagree on the adaptive levels: {every}")
    logger.info(f"adaptive levels: {old} -> {levels}" + (
        f" (the same on all {ctx.world_size} processes)" if ctx.distributed else ""))
    return record


def write_csv_row(path, row):
    new = not Path(path).exists()
    with open(path, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)

