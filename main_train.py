"""Train a QCFS network on CIFAR-10/100 or the bundled digits (the first half of PASCAL).

    python3 main_train.py -data=cifar10 -arch=vgg16 -epochs=200 --id=myid
    python3 main_train.py -data digits -arch vgg16 -epochs 8 --id quick
"""
import csv
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

import models
from al_metric import DEFAULT_THRESHOLDS, collect_level_counts, format_table, layer_metrics
from checkpoint import (FORMAT_VERSION, checkpoint_path, is_own_format,
                        load_checkpoint_file, model_from_checkpoint, plain,
                        restore_training_state, rng_state, save_checkpoint, set_rng_state)
from data import SeededAugmentation, epoch_order, get_dataset, make_loader
from utils import (DATASETS, ArgumentParser, GracefulInterrupt, UsageError, add_device_args,
                   add_level_args, add_output_flags, default_checkpoint_dir, env_data_root,
                   parse_levels, parse_thresholds, progress, resolve_device, run_main,
                   seed_everything, setup_logging)

# Per-dataset defaults where the paper's CIFAR recipe does not fit (spec section 6).
DEFAULTS = {
    "cifar10": {"lr": 0.1, "batch_size": 128, "epochs": 300},
    "cifar100": {"lr": 0.05, "batch_size": 128, "epochs": 300},
    "digits": {"lr": 0.05, "batch_size": 64, "epochs": 8},
}
MIN_THRESHOLD = 1e-3  # thresholds are clamped to at least this after every optimizer step


class Diverged(Exception):
    """The loss became NaN or infinite."""


def get_args_parser(add_help=True):
    parser = ArgumentParser(
        description="Train a QCFS network (per-layer levels) for PASCAL conversion.",
        add_help=add_help, allow_abbrev=False)
    group = parser.add_argument_group("model and data")
    group.add_argument("-data", "--dataset", default="cifar10", choices=list(DEFAULTS),
                       help="dataset (default: cifar10; digits ships with scikit-learn)")
    group.add_argument("-arch", "--arch", default="vgg16", choices=models.list_models(),
                       help="architecture (default: vgg16)")
    add_level_args(group)
    group.add_argument("--data-root", default=None,
                       help="dataset folder (default: $PASCAL_DATA, else ./data)")
    group.add_argument("--download", action="store_true",
                       help="download CIFAR if it is missing (default: never download)")
    group = parser.add_argument_group("optimisation")
    group.add_argument("-epochs", "--epochs", type=int, default=None,
                       help="total epochs (default: 300 for CIFAR, 8 for digits)")
    group.add_argument("-b", "--batch-size", type=int, default=None,
                       help="batch size (default: 128 for CIFAR, 64 for digits)")
    group.add_argument("-lr", "--lr", type=float, default=None,
                       help="initial learning rate, cosine schedule (default: 0.1 CIFAR-10, "
                            "0.05 CIFAR-100 and digits)")
    group.add_argument("-wd", "--weight-decay", type=float, default=5e-4,
                       help="SGD weight decay (default: 5e-4)")
    group.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default: 0.9)")
    group.add_argument("--amp", action="store_true",
                       help="mixed precision on CUDA (QCFS arithmetic stays float32)")
    group.add_argument("--skip-nonfinite", action="store_true",
                       help="skip batches whose loss is NaN/inf instead of stopping "
                            "(default: stop, keeping the last good checkpoint)")
    group = parser.add_argument_group("adaptive layerwise levels (two-phase schedule)")
    group.add_argument("--adaptive", action="store_true",
                       help="train --phase1-epochs with uniform levels, choose per-layer levels "
                            "from the AL metric, continue to --epochs (default: off)")
    group.add_argument("--phase1-epochs", type=int, default=None,
                       help="epochs before the levels are chosen (required with --adaptive)")
    group.add_argument("--max-level", type=int, default=None,
                       help="level of the least concentrated layers (default: the largest "
                            "phase-1 level)")
    group.add_argument("--thresholds", default=None,
                       help="metric cut points t1,t2,t3 of the level rule (default: get_stats.py's)")
    group.add_argument("--stats-batches", type=int, default=20,
                       help="training batches (evaluation transforms) the metric is measured on "
                            "(default: 20)")
    group = parser.add_argument_group("run and checkpoints")
    group.add_argument("--id", default=None,
                       help="run id: checkpoints are {checkpoint-dir}/{id}.pth and {id}_best.pth "
                            "(default: {arch}_{dataset})")
    group.add_argument("-suffix", "--suffix", default="",
                       help="appended to the id as {id}_{suffix} (default: none)")
    group.add_argument("--checkpoint-dir", default=None,
                       help="where checkpoints, logs and CSVs go (default: {dataset}-checkpoints)")
    group.add_argument("--resume_from_ckpt", "--resume-from-ckpt", type=int, default=0,
                       choices=[0, 1], help="1: continue the run {id} from its latest checkpoint "
                                            "(default: 0)")
    group.add_argument("--resume", default=None, metavar="PATH",
                       help="continue the run saved in PATH (full state)")
    group.add_argument("--initial-checkpoint", default=None, metavar="PATH",
                       help="start a new run from the weights and thresholds in PATH (ours or "
                            "the reference code's), fresh optimizer and schedule")
    group.add_argument("--overwrite", action="store_true",
                       help="start over even if run {id} already has a checkpoint")
    group = parser.add_argument_group("machine")
    add_device_args(group)
    group.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    group.add_argument("--deterministic", action="store_true",
                       help="deterministic algorithms (bit-reproducible on CUDA too; slower)")
    add_output_flags(group)
    return parser


def resolve_args(args):
    """Fill dataset defaults and check flag combinations (before any expensive work)."""
    defaults = DEFAULTS[args.dataset]
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.epochs < 1:
        raise UsageError(f"-epochs must be >= 1, got {args.epochs}")
    if args.batch_size < 1:
        raise UsageError(f"-b must be >= 1, got {args.batch_size}")
    if args.level is not None and args.levels is not None:
        raise UsageError("give either -L N or --levels, not both")
    args.levels = parse_levels(args.levels if args.levels is not None else args.level)
    if args.resume and args.initial_checkpoint:
        raise UsageError("--resume continues a run and --initial-checkpoint starts a new one: "
                         "give only one")
    if args.resume_from_ckpt and args.initial_checkpoint:
        raise UsageError("--resume_from_ckpt=1 and --initial-checkpoint exclude each other: "
                         "give only one")
    if args.adaptive:
        if args.phase1_epochs is None or not 1 <= args.phase1_epochs < args.epochs:
            raise UsageError(f"--adaptive needs --phase1-epochs N with 1 <= N < -epochs "
                             f"({args.epochs}), got {args.phase1_epochs}")
        args.thresholds = parse_thresholds(args.thresholds, DEFAULT_THRESHOLDS)
        if args.max_level is not None and args.max_level < 1:
            raise UsageError(f"--max-level must be >= 1, got {args.max_level}")
    elif args.phase1_epochs is not None:
        raise UsageError("--phase1-epochs only makes sense with --adaptive")
    if not args.init_threshold > 0:
        raise UsageError(f"--init-threshold must be > 0, got {args.init_threshold}")
    args.device = resolve_device(args.device)
    if args.amp and args.device.type != "cuda":
        raise UsageError("--amp needs a CUDA device: drop --amp to train in float32 on the CPU")
    args.id = args.id or f"{args.arch}_{args.dataset}"
    if args.suffix:
        args.id = f"{args.id}_{args.suffix}"
    args.checkpoint_dir = Path(args.checkpoint_dir or default_checkpoint_dir(args.dataset))
    args.data_root = args.data_root or env_data_root()
    return args


@dataclass
class EpochProgress:
    """Running totals of one training epoch; saved with a mid-epoch checkpoint."""

    step: int = 0          # completed steps of this epoch
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    skipped: int = 0


class Interrupted(Exception):
    """A stop was requested (signal); carries the epoch's progress so far."""

    def __init__(self, progress):
        super().__init__(f"interrupted after step {progress.step}")
        self.progress = progress


def train_one_epoch(model, loader, optimizer, device, epoch, args, scaler=None, logger=None,
                    step_hook=None, progress_state=None, interrupt=None):
    """One pass over ``loader``; returns ``(mean loss, top-1 %, skipped batches)``.

    Thresholds are clamped to >= MIN_THRESHOLD after every optimizer step, so the network
    always has a spiking counterpart. ``progress_state`` continues a partly done epoch
    (``loader`` then yields only the remaining batches). If ``interrupt.after_step`` reports
    a stop request, the step in hand is finished and :class:`Interrupted` is raised.
    """
    model.train()
    state = progress_state or EpochProgress()
    bar = progress(loader, not args.no_progress, desc=f"epoch {epoch + 1} train",
                   initial=state.step, total=state.step + len(loader))
    for images, targets in bar:
        step = state.step
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=scaler is not None):
            logits = model(images)
            loss = F.cross_entropy(logits, targets)
        if not torch.isfinite(loss):
            if not args.skip_nonfinite:
                raise Diverged(f"loss is {loss.item()} at epoch {epoch + 1}, step {step + 1}")
            state.skipped += 1
            if logger:
                logger.warning(f"epoch {epoch + 1} step {step + 1}: non-finite loss, skipped")
        else:
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            models.clamp_thresholds_(model, MIN_THRESHOLD)
            state.loss_sum += loss.item() * len(targets)
            state.correct += int((logits.argmax(1) == targets).sum())
            state.seen += len(targets)
        state.step += 1
        if step_hook is not None:
            step_hook(epoch, step)
        if interrupt is not None and interrupt.after_step(epoch, step):
            raise Interrupted(state)
    return state.loss_sum / max(state.seen, 1), 100.0 * state.correct / max(state.seen, 1), \
        state.skipped


@torch.no_grad()
def evaluate(model, loader, device, show_progress=True, dtype=None, desc="test"):
    """``(top-1 %, mean loss, images)`` of the ANN in eval mode."""
    model.eval()
    total_loss, correct, seen = 0.0, 0, 0
    for images, targets in progress(loader, show_progress, desc=desc):
        images = images.to(device, dtype=dtype or torch.float32)
        targets = targets.to(device)
        logits = model(images)
        total_loss += float(F.cross_entropy(logits.float(), targets, reduction="sum"))
        correct += int((logits.argmax(1) == targets).sum())
        seen += len(targets)
    return 100.0 * correct / max(seen, 1), total_loss / max(seen, 1), seen


def build_run(args, logger):
    """Model, model_args, start epoch, best accuracy and the checkpoint to restore from."""
    latest = checkpoint_path(args.checkpoint_dir, args.id)
    num_classes, variant = DATASETS[args.dataset]
    resume_path = args.resume or (latest if args.resume_from_ckpt else None)
    if resume_path is None and latest.exists() and not args.overwrite:
        raise UsageError(f"run {args.id!r} already has a checkpoint ({latest}): pass "
                         "--resume_from_ckpt=1 to continue it, --overwrite to start over, or "
                         "another --id")
    if resume_path is not None:
        checkpoint = load_checkpoint_file(resume_path, args.checkpoint_dir)
        if not is_own_format(checkpoint) or "optimizer" not in checkpoint:
            raise UsageError(f"{resume_path} is not a training checkpoint of this project "
                             "(no optimizer state): use --initial-checkpoint to start a new "
                             "run from its weights")
        stored = checkpoint["model_args"]
        if stored["arch"] != args.arch:
            raise UsageError(f"{resume_path} holds a {stored['arch']} model but -arch is "
                             f"{args.arch}: pass -arch {stored['arch']}")
        if stored.get("dataset") not in (None, args.dataset):
            raise UsageError(f"{resume_path} was trained on {stored['dataset']}, not "
                             f"{args.dataset}: pass -data {stored['dataset']}")
        model, model_args = model_from_checkpoint(checkpoint, resume_path)
        if args.levels is not None:
            old = model_args["levels"]
            new = models.set_levels(model, args.levels)
            if new != old:
                logger.info(f"levels changed at epoch {checkpoint['epoch']}: {old} -> {new} "
                            "(phase 2: same optimizer, schedule and epoch counter)")
            model_args["levels"] = new
        return model, model_args, checkpoint
    if args.initial_checkpoint:
        checkpoint = load_checkpoint_file(args.initial_checkpoint)
        model, model_args = model_from_checkpoint(
            checkpoint, args.initial_checkpoint, arch=args.arch, dataset=args.dataset,
            levels=args.levels)
        logger.info(f"initial weights and thresholds from {args.initial_checkpoint}")
    else:
        levels = 4 if args.levels is None else args.levels
        model = models.create_model(args.arch, num_classes=num_classes, levels=levels,
                                    variant=variant, init_threshold=args.init_threshold)
        model_args = models.model_args_of(model, args.arch, variant, num_classes)
    model_args["dataset"] = args.dataset
    return model, model_args, None


def choose_levels(model, args, device, logger):
    """Phase 1 -> 2 of the adaptive schedule: AL metric per layer, then the level rule."""
    from torch.utils.data import Subset
    stats_set = get_dataset(args.dataset, args.data_root, "train", augment=False)
    stats_set = Subset(stats_set, range(min(len(stats_set),
                                            args.stats_batches * args.batch_size)))
    loader = make_loader(stats_set, args.batch_size, False, args.workers, device=device)
    counts = collect_level_counts(model, loader, device)
    rows = layer_metrics(model, counts, 5, args.max_level, args.thresholds)
    old = models.get_levels(model)
    new = models.set_levels(model, [r["suggested_level"] for r in rows])
    logger.info(f"AL metric on {len(stats_set)} training images:\n{format_table(rows)}")
    logger.info(f"adaptive levels: {old} -> {new}")
    return new, rows


def epoch_seed(seed, epoch):
    """Every epoch draws its data order and augmentation from its own seed, so a resumed run
    repeats exactly what an uninterrupted one would have done."""
    return seed * 100_003 + epoch


def main(args):
    args = resolve_args(args)
    args.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    logger = setup_logging(args.checkpoint_dir / f"{args.id}.log")
    seed_everything(args.seed)
    if args.deterministic:
        enable_determinism()
        logger.info("deterministic algorithms on (torch.use_deterministic_algorithms)")
    device = args.device

    train_set = get_dataset(args.dataset, args.data_root, "train", download=args.download)
    test_set = get_dataset(args.dataset, args.data_root, "test", download=args.download)
    model, model_args, restored = build_run(args, logger)
    model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    scaler = torch.amp.GradScaler("cuda") if args.amp else None
    start_epoch, best_acc1, adaptive, partial = 0, 0.0, None, None
    if restored is not None:
        adaptive = restored.get("adaptive")
        start_epoch, best_acc1 = restore_training_state(restored, optimizer, scheduler, scaler,
                                                        args.epochs, logger)
        if restored.get("partial_epoch"):
            partial = EpochProgress(**restored["partial_epoch"])
        set_rng_state(restored["rng"])
        where = f"epoch {start_epoch}" + (f" + {partial.step} steps of epoch {start_epoch + 1}"
                                          if partial else "")
        logger.info(f"resuming run {args.id} after {where} (best {best_acc1:.2f}%)")
    if start_epoch >= args.epochs:
        raise UsageError(f"run {args.id} already finished {start_epoch} epochs: raise -epochs "
                         "to train longer")

    logger.info(f"run {args.id}: {args.arch} on {args.dataset}, levels {model_args['levels']}, "
                f"{len(train_set)} train / {len(test_set)} test images, device {device}")
    train_set = SeededAugmentation(train_set, args.seed)
    test_loader = make_loader(test_set, max(args.batch_size, 256), False, args.workers,
                              device=device)
    csv_path = args.checkpoint_dir / f"{args.id}_epochs.csv"
    latest = checkpoint_path(args.checkpoint_dir, args.id)

    def snapshot(epoch_done, partial_epoch=None):
        return {
            "format_version": FORMAT_VERSION, "model_args": model_args,
            "state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "epoch": epoch_done, "best_acc1": best_acc1,
            "partial_epoch": asdict(partial_epoch) if partial_epoch else None,
            "rng": rng_state(), "args": plain(vars(args)), "adaptive": adaptive,
        }

    with GracefulInterrupt() as interrupt:
        for epoch in range(start_epoch, args.epochs):
            started = time.time()
            state = partial if epoch == start_epoch and partial else EpochProgress()
            if state.step == 0:
                # each epoch draws from its own seed: a resumed run repeats an uninterrupted one
                seed_everything(epoch_seed(args.seed, epoch))
            train_set.set_epoch(epoch)
            order = epoch_order(len(train_set), epoch_seed(args.seed, epoch))
            loader = make_loader(train_set, args.batch_size, True, args.workers,
                                 sampler=order[state.step * args.batch_size:], device=device)
            lr = optimizer.param_groups[0]["lr"]
            try:
                train_loss, train_acc1, skipped = train_one_epoch(
                    model, loader, optimizer, device, epoch, args, scaler, logger,
                    progress_state=state, interrupt=interrupt)
            except Diverged as error:
                logger.error(f"training stopped: {error}; the last good checkpoint ({latest}) "
                             "is intact: lower -lr, or pass --skip-nonfinite")
                return 3
            except Interrupted as stop:
                save_checkpoint(latest, snapshot(epoch, stop.progress))
                logger.error(f"interrupted (signal {interrupt.requested}) at epoch {epoch + 1}, "
                             f"step {stop.progress.step}; resumable checkpoint {latest}; "
                             f"resume with: {resume_command(args)}")
                return 128 + interrupt.requested
            scheduler.step()
            test_acc1, test_loss, _ = evaluate(model, test_loader, device, not args.no_progress)
            is_best = test_acc1 > best_acc1
            best_acc1 = max(best_acc1, test_acc1)
            if args.adaptive and epoch + 1 == args.phase1_epochs and adaptive is None:
                logger.info(f"epoch {epoch + 1}: phase 1 ends with test top-1 {test_acc1:.2f}%")
                phase1 = snapshot(epoch + 1)
                phase1["test_acc1"] = test_acc1
                save_checkpoint(args.checkpoint_dir / f"{args.id}_phase1.pth", phase1)
                levels, rows = choose_levels(model, args, device, logger)
                model_args["levels"] = levels
                adaptive = {"phase1_epochs": args.phase1_epochs, "phase1_test_acc1": test_acc1,
                            "levels": levels, "metrics": [
                                {k: r[k] for k in ("name", "level", "metric", "suggested_level")}
                                for r in rows]}
                # phase-2 accuracy is not comparable with phase 1: track the best afresh
                best_acc1, is_best = 0.0, False
            state_dict = snapshot(epoch + 1)
            state_dict["test_acc1"] = test_acc1
            save_checkpoint(latest, state_dict)
            if is_best:
                save_checkpoint(checkpoint_path(args.checkpoint_dir, args.id, best=True),
                                state_dict)
            seconds = time.time() - started
            logger.info(f"epoch {epoch + 1}/{args.epochs}  lr {lr:.4f}  train loss "
                        f"{train_loss:.4f} acc {train_acc1:.2f}%  test loss {test_loss:.4f} "
                        f"acc {test_acc1:.2f}%  best {best_acc1:.2f}%  {seconds:.1f}s" +
                        (f"  ({skipped} non-finite batches skipped)" if skipped else ""))
            write_csv_row(csv_path, {"epoch": epoch + 1, "lr": lr, "train_loss": train_loss,
                                     "train_acc1": train_acc1, "test_loss": test_loss,
                                     "test_acc1": test_acc1, "best_acc1": best_acc1,
                                     "seconds": round(seconds, 2), "skipped_batches": skipped,
                                     "levels": ",".join(map(str, model_args["levels"]))})
    logger.info(f"done: best test top-1 {best_acc1:.2f}%; checkpoint {latest}")
    return 0


def resume_command(args):
    """The command line that continues this run."""
    argv = [a for a in sys.argv[1:] if not a.startswith(("--overwrite", "--resume_from_ckpt",
                                                        "--resume-from-ckpt"))]
    return " ".join(["python3", "main_train.py", *argv, "--resume_from_ckpt=1"]) if argv else \
        f"python3 main_train.py -data {args.dataset} -arch {args.arch} --id {args.id} " \
        f"--checkpoint-dir {args.checkpoint_dir} --resume_from_ckpt=1"


def enable_determinism():
    """Deterministic algorithms everywhere (CUDA included); slower on GPU."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def write_csv_row(path, row):
    new = not Path(path).exists()
    with open(path, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


if __name__ == "__main__":
    sys.exit(run_main(main, get_args_parser().parse_args()))
