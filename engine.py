"""The training engine of main_train.py and main.py: one epoch loop for one process or many.

It owns what a training run does once the data and the model's recipe are known: building or
restoring the run (``--resume``, ``--resume_from_ckpt``, ``--initial-checkpoint``, elastic
restarts), the epoch loop (AMP, threshold clamping, divergence), evaluation, the adaptive
(two-phase) level switch, self-describing checkpoints (epoch ends and mid-epoch stops), stop
requests by signal, and the per-epoch log and CSV. The scripts parse arguments, build the
data and call :func:`prepare_run` and :func:`fit`.

Under DDP (a process group exists) every decision that changes what the processes do next is
agreed by a collective: whether to stop after a step (a signal reached any process), whether
a step's loss is finite everywhere, and the levels of the adaptive switch (computed on rank
0, broadcast, then checked on every rank). Only rank 0 logs and writes files.

Reproducibility: every step seeds torch from (run seed, epoch, step, rank), every sample
draws its augmentation from (run seed, epoch, index) and every epoch's order comes from
(run seed, epoch) alone, so a run stopped anywhere and resumed repeats, bit for bit on the
same processes, what an uninterrupted run does; no generator state needs saving.
"""
import csv
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
from checkpoint import (FORMAT_VERSION, checkpoint_path, is_own_format, is_relu,
                        load_checkpoint_file, model_from_checkpoint, plain, pretrained_weights,
                        qcfs_from_relu, restore_training_state, save_checkpoint)
from data import SeededAugmentation, make_loader, shard_order
from level_search import calibration_loader, default_candidates, minimum_teff, search_levels
from threshold_init import data_thresholds_
from utils import UsageError, progress

__all__ = ["MIN_THRESHOLD", "DistContext", "RunSpec", "Run", "StopRequest", "Diverged",
           "EpochProgress", "resume_source", "prepare_run", "fit", "evaluate",
           "enable_determinism", "elastic_restart_count"]

MIN_THRESHOLD = 1e-3  # thresholds are clamped to at least this after every optimizer step


@dataclass(frozen=True)
class DistContext:
    """Where this process stands. ``distributed``: a process group exists (torchrun or the
    spawn launch); collectives then run on ``device`` (the CPU for gloo, the GPU for nccl)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    distributed: bool = False

    @property
    def is_main(self):
        return self.rank == 0


@dataclass(frozen=True)
class RunSpec:
    """What the script knows of the data: ``model_args["dataset"]``, the class count, the
    model variant (stem and classifier) it trains, and the side of its square images."""

    dataset: str
    num_classes: int
    variant: str
    image_size: int


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
      resumable checkpoint, and the run exits with status 128 + signal;
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


def resume_source(args, latest):
    """The checkpoint a run continues from, or None for a new run.

    ``--resume PATH`` names it; ``--resume_from_ckpt=1`` means ``latest``; ``--resume auto``
    means ``latest`` if it exists, else a new run. A worker restarted by torchrun behaves as
    ``--resume auto`` and ignores ``--overwrite`` (otherwise a restart would start over).
    A new run where ``latest`` exists needs ``--overwrite``.
    """
    restarted = elastic_restart_count() > 0
    if args.resume == "auto" or restarted:
        return latest if latest.exists() else None
    if args.resume:
        return Path(args.resume)
    if args.resume_from_ckpt:
        return latest
    if latest.exists() and not args.overwrite:
        raise UsageError(f"run {args.id!r} already has a checkpoint ({latest}): pass "
                         "--resume_from_ckpt=1 (or --resume auto) to continue it, --overwrite to "
                         "start over, or another --id")
    return None


def prepare_run(args, spec, ctx, logger):
    """Build the model and its optimizer, schedule and AMP scaler, new or restored.

    Reads ``args``: arch, levels, init_threshold, id, checkpoint_dir, resume,
    resume_from_ckpt, initial_checkpoint, overwrite, lr, momentum, weight_decay, epochs, amp.
    """
    latest = checkpoint_path(args.checkpoint_dir, args.id)
    source = resume_source(args, latest)
    restored = from_relu = None
    if source is None and args.pretrained is not None:
        weights, described, classes = pretrained_weights(
            args.arch, None if args.pretrained == "default" else args.pretrained)
        from_relu = qcfs_from_relu(
            weights, f"torchvision's {described}", args.arch, spec.dataset, spec.variant,
            spec.num_classes, 4 if args.levels is None else args.levels,
            _constant_threshold(args.init_threshold), 0.0,
            input_shape=(3, spec.image_size, spec.image_size), source_classes=classes)
        replaced = from_relu[1].pop("replaced", [])
        logger.info(f"initial weights: torchvision's {described}" + (
            f"; classifier replaced ({classes} -> {spec.num_classes} classes: "
            f"{', '.join(replaced)} freshly initialised)" if replaced else ""))
    elif source is None and args.initial_checkpoint:
        # weights from any dataset with the same classes (the checkpoint's own arch, class
        # count and shapes are checked), rebuilt as a new run of this version: its dropout
        # layout; a ReLU network's weights become a QCFS network's
        checkpoint = load_checkpoint_file(args.initial_checkpoint)
        if args.activation == "qcfs":
            from_relu = qcfs_from_relu(
                checkpoint, args.initial_checkpoint, args.arch, spec.dataset, spec.variant,
                spec.num_classes, 4 if args.levels is None else args.levels,
                _constant_threshold(args.init_threshold),
                0.0 if args.dropout is None else args.dropout,
                input_shape=(3, spec.image_size, spec.image_size))
    if source is not None:
        restored = load_checkpoint_file(source, args.checkpoint_dir)
        if not is_own_format(restored) or "optimizer" not in restored:
            raise UsageError(f"{source} is not a training checkpoint of this project (no "
                             "optimizer state): use --initial-checkpoint to start a new run "
                             "from its weights")
        _check_same_run(restored["model_args"], args.arch, spec, source, args.activation)
        stored = restored["model_args"].get("dropout")
        if args.dropout is not None and args.dropout != stored:
            raise UsageError(f"{source} was trained with dropout {stored} (None: the layout "
                             f"before dropout was recorded), not {args.dropout}: drop --dropout "
                             "to continue it")
        model, model_args = model_from_checkpoint(restored, source)
        if args.levels is not None:
            old = model_args["levels"]
            new = models.set_levels(model, args.levels)
            if new != old:
                logger.info(f"levels changed at epoch {restored['epoch']}: {old} -> {new} "
                            "(phase 2: same optimizer, schedule and epoch counter)")
            model_args["levels"] = new
    elif from_relu is not None:
        model, model_args = from_relu
        if args.initial_checkpoint:
            logger.info(f"initial weights from the ReLU network in {args.initial_checkpoint}")
        logger.info("thresholds " + ("from data (below)" if isinstance(args.init_threshold, tuple)
                                     else f"{args.init_threshold:g}"))
    elif args.initial_checkpoint:
        source, source_args = model_from_checkpoint(
            checkpoint, args.initial_checkpoint, arch=args.arch, dataset=spec.dataset,
            levels=args.levels)
        source_activation = "relu" if is_relu(source_args) else "qcfs"
        if source_activation != args.activation:
            raise UsageError(f"{args.initial_checkpoint} holds a {source_activation} network; "
                             f"a new --activation {args.activation} run cannot start from its "
                             f"weights: pass --activation {source_activation}")
        dropout = 0.0 if args.dropout is None else args.dropout
        variant = source_args.get("variant", spec.variant)
        model = models.create_model(
            args.arch, num_classes=source_args["num_classes"],
            levels=None if args.activation == "relu" else source_args["levels"],
            variant=variant, dropout=dropout, activation=args.activation,
            input_shape=(3, spec.image_size, spec.image_size))
        model.load_state_dict(source.state_dict())
        model_args = models.model_args_of(model, args.arch, variant, source_args["num_classes"],
                                          dropout, args.activation)
        logger.info(f"initial weights and thresholds from {args.initial_checkpoint}")
    else:
        relu = args.activation == "relu"
        levels = None if relu else 4 if args.levels is None else args.levels
        dropout = 0.0 if args.dropout is None else args.dropout
        model = models.create_model(args.arch, num_classes=spec.num_classes, levels=levels,
                                    variant=spec.variant,
                                    init_threshold=_constant_threshold(args.init_threshold),
                                    dropout=dropout, activation=args.activation,
                                    input_shape=(3, spec.image_size, spec.image_size))
        model_args = models.model_args_of(model, args.arch, spec.variant, spec.num_classes,
                                          dropout, args.activation)
    model_args["dataset"] = spec.dataset
    model.to(ctx.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    scaler = torch.amp.GradScaler("cuda") if args.amp else None
    run = Run(model, model_args, optimizer, scheduler, scaler)
    if restored is not None:
        run.start_epoch, run.best_acc1 = restore_training_state(
            restored, optimizer, scheduler, scaler, args.epochs, logger)
        run.adaptive = restored.get("adaptive")
        if restored.get("partial_epoch"):
            saved = restored["partial_epoch"]
            run.partial = EpochProgress(**{k: saved[k] for k in asdict(EpochProgress())})
        run.resumed_from = source
    if run.start_epoch >= args.epochs:
        raise UsageError(f"run {args.id} already finished {run.start_epoch} epochs: raise "
                         "-epochs to train longer")
    return run


def _constant_threshold(init_threshold):
    """The threshold a new model is built with: the number given, or (for ``auto``, replaced
    from data before training) the default 4.0."""
    return 4.0 if isinstance(init_threshold, tuple) else init_threshold


def init_thresholds_from_data(run, stats_set, percentile, calib_images, batch_size, workers,
                              ctx, logger, show_progress=False):
    """``--init-threshold auto:P`` on a run that starts now: every QCFS threshold from the
    P-th percentile of its inputs on a fixed calibration subset of the training split
    (:mod:`threshold_init`). Every process computes the same values from the same images;
    DDP's start-up broadcast of rank 0's parameters then makes them equal bit for bit."""
    calibration = calibration_loader(stats_set, calib_images, batch_size, workers,
                                     device=ctx.device)
    started = time.time()
    chosen = data_thresholds_(run.model, calibration, percentile, show_progress=show_progress)
    used = len(calibration.dataset)
    table = ", ".join(f"{name} {threshold:.4g}" for name, threshold, _ in chosen)
    logger.info(f"thresholds from data: the {percentile:g}th percentile of each layer's positive "
                f"inputs on {used} training images ({time.time() - started:.0f}s): {table}")
    return chosen


def _check_same_run(stored, arch, spec, path, activation="qcfs"):
    """A checkpoint continued (or fine-tuned) here must hold the model this run trains."""
    stored_activation = "relu" if is_relu(stored) else "qcfs"
    if stored_activation != activation:
        raise UsageError(f"{path} holds a {stored_activation} network but --activation is "
                         f"{activation}: pass --activation {stored_activation}")
    for key, given, flag in (("arch", arch, "-arch"), ("variant", spec.variant, "--variant"),
                             ("num_classes", spec.num_classes, None)):
        value = stored.get(key)
        if key == "variant" and value is None:
            continue
        if value != given:
            if flag is None:
                raise UsageError(f"{path} has {value} classes but the data has {given}: "
                                 "continue it on the data it was trained on")
            raise UsageError(f"{path} holds {key} {value} but {flag} is {given}: pass "
                             f"{flag} {value}")
    if stored.get("dataset") not in (None, spec.dataset):
        raise UsageError(f"{path} was trained on {stored['dataset']}, not {spec.dataset}: "
                         f"pass -data {stored['dataset']}")


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


@torch.no_grad()
def evaluate(model, loader, ctx, show_progress=True, desc="test"):
    """``(top-1 %, mean loss, images)`` of ``model`` in eval mode, summed over every process's
    shard under DDP (each image in exactly one shard)."""
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=ctx.device)  # correct, loss, images
    for images, targets in progress(loader, show_progress, desc=desc):
        images = images.to(ctx.device, non_blocking=True)
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


def fit(args, ctx, run, train_set, test_set, stats_set, logger, sync_bn=False,
        describe=""):
    """Train ``run`` to ``args.epochs``; returns the exit status.

    0: finished. 3: the loss diverged (the last good checkpoint is kept). 128 + signal: every
    process stopped after the same step on a signal, and rank 0 wrote a resumable checkpoint.

    ``train_set`` yields augmented training samples (each sample's augmentation is seeded
    here); ``test_set`` is the held-out split (sharded over processes); ``stats_set``: training
    images with evaluation transforms, for the adaptive switch. Reads ``args``: epochs,
    batch_size (global), workers, seed, skip_nonfinite, adaptive, phase1_epochs, max_level,
    thresholds, stats_batches, budget_teff, candidates, calib_images, no_progress, id,
    checkpoint_dir.
    """
    model_without_ddp = run.model
    if run.adaptive is None:
        check_budget(model_without_ddp, args)
    model = model_without_ddp
    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model_without_ddp = run.model = model
    if ctx.distributed:
        model = DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    batch_size = args.batch_size // ctx.world_size
    train_set = SeededAugmentation(train_set, args.seed)
    test_shard = Subset(test_set, range(ctx.rank, len(test_set), ctx.world_size))
    test_loader = make_loader(test_shard, max(batch_size, 256 // ctx.world_size), False,
                              args.workers, device=ctx.device)
    show = ctx.is_main and not args.no_progress
    latest = checkpoint_path(args.checkpoint_dir, args.id)
    csv_path = Path(args.checkpoint_dir) / f"{args.id}_epochs.csv"
    best_acc1, adaptive = run.best_acc1, run.adaptive

    def snapshot(epoch_done, partial=None, test=None):
        state = {
            "format_version": FORMAT_VERSION, "model_args": run.model_args,
            "state_dict": model_without_ddp.state_dict(),
            "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
            "scaler": run.scaler.state_dict() if run.scaler is not None else None,
            "epoch": epoch_done, "best_acc1": best_acc1,
            "partial_epoch": asdict(partial) if partial else None,
            "adaptive": adaptive, "world_size": ctx.world_size, "args": checkpoint_args(args)}
        if test is not None:
            state["test_acc1"], state["test_images"] = test
        return state

    if ctx.is_main:
        restart = elastic_restart_count()
        restarted = f"restarted by torchrun (restart {restart}): " if restart else ""
        if run.resumed_from is not None:
            where = f"epoch {run.start_epoch}" + (
                f" + {run.partial.step} steps of epoch {run.start_epoch + 1}"
                if run.partial else "")
            logger.info(f"{restarted}resuming run {args.id} after {where} "
                        f"(best {best_acc1:.2f}%) from {run.resumed_from}")
        elif restarted:
            logger.info(f"{restarted}no checkpoint of run {args.id} yet: starting it over")
        activations = ("ReLU activations (no levels)" if is_relu(run.model_args)
                       else f"levels {run.model_args['levels']}")
        logger.info(f"run {args.id}: {args.arch} on {run.model_args['dataset']}, "
                    f"{activations}, {len(train_set)} train / {len(test_set)} test "
                    f"images" + (f", {describe}" if describe else ""))
    with StopRequest() as stop:
        for epoch in range(run.start_epoch, args.epochs):
            started = time.time()
            state = run.partial if epoch == run.start_epoch and run.partial else EpochProgress()
            if not ctx.is_main and state.step:
                # rank 0 holds the saved totals of the partial epoch; the others start at 0
                state = EpochProgress(step=state.step, skipped=state.skipped)
            train_set.set_epoch(epoch)
            order = shard_order(len(train_set), epoch_seed(args.seed, epoch), ctx.rank,
                                ctx.world_size)
            loader = make_loader(train_set, batch_size, True, args.workers,
                                 sampler=order[state.step * batch_size:], device=ctx.device)
            lr = run.optimizer.param_groups[0]["lr"]
            try:
                train_one_epoch(model, loader, run, ctx, epoch, state, stop, args, logger,
                                show)
            except Diverged as error:
                logger.error(f"training stopped: {error}; the last good checkpoint ({latest}) "
                             "is intact: lower -lr, or pass --skip-nonfinite")
                return 3
            except Interrupted as stopped:
                totals = _summed_progress(stopped.progress, ctx)
                if ctx.is_main:
                    save_checkpoint(latest, snapshot(epoch, totals))
                    logger.error(f"interrupted (signal {stopped.signum}) at epoch {epoch + 1}, "
                                 f"step {totals.step}; resumable checkpoint {latest}; run the "
                                 "same command with --resume auto (or --resume_from_ckpt=1) to "
                                 "continue")
                return 128 + stopped.signum
            run.scheduler.step()
            if ctx.distributed:
                # BatchNorm running statistics drift apart between processes (each updates them
                # on its own batches); use rank 0's everywhere, as the checkpoint saves them.
                for buffer in model_without_ddp.buffers():
                    dist.broadcast(buffer, src=0)
            totals = _summed_progress(state, ctx)
            train_loss = totals.loss_sum / max(totals.seen, 1)
            train_acc1 = 100.0 * totals.correct / max(totals.seen, 1)
            test_acc1, test_loss, test_images = evaluate(model_without_ddp, test_loader, ctx,
                                                         show)
            is_best = test_acc1 > best_acc1
            best_acc1 = max(best_acc1, test_acc1)
            switched = False
            if args.adaptive and epoch + 1 == args.phase1_epochs and adaptive is None:
                logger.info(f"epoch {epoch + 1}: phase 1 ends with test top-1 {test_acc1:.2f}%")
                if ctx.is_main:
                    phase1 = snapshot(epoch + 1, test=(test_acc1, test_images))
                    save_checkpoint(Path(args.checkpoint_dir) / f"{args.id}_phase1.pth", phase1)
                adaptive = switch_levels(model_without_ddp, run.model_args, stats_set, args,
                                         ctx, logger)
                adaptive.update(phase1_epochs=args.phase1_epochs, phase1_test_acc1=test_acc1)
                # phase-2 accuracy is not comparable with phase 1: track the best afresh
                best_acc1, is_best, switched = 0.0, False, True
            if ctx.is_main:
                state_dict = snapshot(epoch + 1, test=(test_acc1, test_images))
                save_checkpoint(latest, state_dict)
                if is_best:
                    save_checkpoint(checkpoint_path(args.checkpoint_dir, args.id, best=True),
                                    state_dict)
                seconds = time.time() - started
                logger.info(f"epoch {epoch + 1}/{args.epochs}  lr {lr:.4f}  train loss "
                            f"{train_loss:.4f} acc {train_acc1:.2f}%  test loss {test_loss:.4f} "
                            f"acc {test_acc1:.2f}% ({test_images} images)  " +
                            ("levels changed, best reset" if switched else
                             f"best {best_acc1:.2f}%") + f"  {seconds:.1f}s" +
                            (f"  ({state.skipped} non-finite batches skipped)"
                             if state.skipped else ""))
                write_csv_row(csv_path, {
                    "epoch": epoch + 1, "lr": lr, "train_loss": train_loss,
                    "train_acc1": train_acc1, "test_loss": test_loss, "test_acc1": test_acc1,
                    "test_images": test_images, "best_acc1": best_acc1,
                    "seconds": round(time.time() - started, 2), "skipped_batches": state.skipped,
                    "processes": ctx.world_size,
                    "levels": ",".join(map(str, run.model_args["levels"]))})
            signum = stop.agreed(ctx)
            if signum is not None and epoch + 1 < args.epochs:
                logger.error(f"interrupted (signal {signum}) after epoch {epoch + 1}; checkpoint "
                             f"{latest}; run the same command with --resume auto (or "
                             "--resume_from_ckpt=1) to continue")
                return 128 + signum
    logger.info(f"done: best test top-1 {best_acc1:.2f}%; checkpoint {latest}")
    return 0


def epoch_seed(seed, epoch):
    """The seed of one epoch's sample order."""
    return seed * 100_003 + epoch


def train_one_epoch(model, loader, run, ctx, epoch, state, stop, args, logger, show):
    """Continue epoch ``epoch`` from ``state`` over ``loader`` (the remaining batches).

    Each step: seed, forward, agree that the loss is finite (else stop with
    :class:`Diverged`, or skip the step with ``--skip-nonfinite``), update, clamp thresholds to
    >= MIN_THRESHOLD (so the network keeps a spiking counterpart), then agree whether to stop
    (:class:`Interrupted`).
    """
    model.train()
    bar = progress(loader, show, desc=f"epoch {epoch + 1} train", initial=state.step,
                   total=state.step + len(loader))
    for images, targets in bar:
        step = state.step
        torch.manual_seed(step_seed(args.seed, epoch, step, ctx.rank))
        images = images.to(ctx.device, non_blocking=True)
        targets = targets.to(ctx.device, non_blocking=True)
        with torch.autocast(ctx.device.type, dtype=torch.float16,
                            enabled=run.scaler is not None):
            logits = model(images)
            loss = F.cross_entropy(logits, targets)
        if not _agree_finite(loss, ctx):
            if not args.skip_nonfinite:
                raise Diverged(f"loss is {loss.item()} at epoch {epoch + 1}, step {step + 1}"
                               + (" (on some process)" if ctx.distributed else ""))
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


def switch_levels(model, model_args, stats_set, args, ctx, logger):
    """Phase 1 -> 2 of the adaptive schedule: the AL metric of every layer on the first
    ``args.stats_batches`` x global batch training images (evaluation transforms) and the level
    rule; with ``args.budget_teff``, the level search (:mod:`level_search`) on
    ``args.calib_images`` of them chooses instead, the AL rule's levels being one of the
    combinations it measures. Rank 0 computes, every process takes its levels, and all check
    that they agree. Sets the levels on ``model`` and in ``model_args``; returns the
    ``adaptive`` record.
    """
    chosen = [None]
    if ctx.is_main:
        images = min(len(stats_set), args.stats_batches * args.batch_size)
        loader = make_loader(Subset(stats_set, range(images)), args.batch_size // ctx.world_size,
                             False, args.workers, device=ctx.device)
        counts = collect_level_counts(model, loader, ctx.device)
        rows = layer_metrics(model, counts, 5, args.max_level, args.thresholds)
        logger.info(f"AL metric on {images} training images:\n{format_table(rows)}")
        al_levels = [r["suggested_level"] for r in rows]
        record = {"method": "al_metric", "levels": al_levels, "metrics": [
            {k: r[k] for k in ("name", "level", "metric", "suggested_level")} for r in rows]}
        if args.budget_teff is not None:
            calibration = calibration_loader(
                stats_set, args.calib_images, args.batch_size // ctx.world_size, args.workers,
                device=ctx.device)
            result = search_levels(model, calibration, args.budget_teff,
                                   candidates=args.candidates, max_level=args.max_level,
                                   al_levels=al_levels, show_progress=not args.no_progress)
            logger.info(
                f"level search at T_eff <= {args.budget_teff:g} on "
                f"{len(calibration.dataset)} training images ({result.num_evaluations} evaluations, {result.seconds:.0f}s): "
                f"{result.levels}, T_eff {result.teff:.4f}, calibration loss "
                f"{result.calibration_loss:.4f}; AL rule {result.al_rule.levels}: T_eff "
                f"{result.al_rule.teff:.4f}, calibration loss "
                f"{result.al_rule.calibration_loss:.4f}")
            record.update(method="level_search", levels=result.levels,
                          budget_teff=args.budget_teff, al_levels=al_levels,
                          level_search=result.as_dict())
        chosen = [record]
    if ctx.distributed:  # the timeout of this wait is --dist-timeout (rank 0 measures above)
        dist.broadcast_object_list(chosen, src=0,
                                   device=ctx.device if ctx.device.type == "cuda" else None)
    record = chosen[0]
    old = models.get_levels(model)
    levels = models.set_levels(model, record["levels"])
    model_args["levels"] = levels
    if ctx.distributed:
        every = [None] * ctx.world_size
        dist.all_gather_object(every, models.get_levels(model))
        if any(other != levels for other in every):
            raise RuntimeError(f"processes disagree on the adaptive levels: {every}")
    logger.info(f"adaptive levels: {old} -> {levels}" + (
        f" (the same on all {ctx.world_size} processes)" if ctx.distributed else ""))
    return record


def check_budget(model, args):
    """With ``--budget-teff``, refuse (before phase 1) a budget the candidates cannot meet."""
    if not args.adaptive or args.budget_teff is None:
        return
    candidates = args.candidates or default_candidates(
        args.max_level or max(models.get_levels(model)))
    lowest = minimum_teff(model, candidates)
    if args.budget_teff < lowest:
        raise UsageError(f"--budget-teff {args.budget_teff:g} is below the smallest T_eff the "
                         f"candidate levels {candidates} reach on this model ({lowest:.4f}): "
                         "raise it")


def checkpoint_args(args):
    """The run's arguments as plain values (main_test.py reads ``image_size`` from them)."""
    values = plain(vars(args))
    values.pop("classes", None)  # the class folder names live in the data folder
    return values


def write_csv_row(path, row):
    new = not Path(path).exists()
    with open(path, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)
