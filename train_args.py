"""The flags both training scripts share (main_train.py, main.py): their definitions, their
checks in one place, and the configs they become (:class:`model_setup.ModelConfig`,
:class:`config.TrainConfig`, :class:`distributed.ProcessConfig`).

:data:`TERMS` maps the configuration fields that the library's errors name to these flags,
for :func:`utils.error_line`.
"""
from pathlib import Path

import engine
from al_metric import DEFAULT_THRESHOLDS
from config import MEMORY_FORMATS, AdaptiveConfig, TrainConfig
from distributed import ProcessConfig
from errors import ExitCode
from model_setup import ModelConfig
from utils import (DEFAULT_PERCENTILE, UsageError, parse_init_threshold, parse_levels,
                   parse_thresholds)

__all__ = ["TERMS", "add_model_args", "add_optimisation_args", "add_adaptive_args",
           "add_run_args", "add_process_group_args", "add_training_machine_args",
           "check_training_args", "model_config", "train_config", "process_config",
           "init_percentile", "fit_from_args"]

TERMS = {
    "epochs": "-epochs", "batch_size": "-b", "lr": "-lr", "momentum": "--momentum",
    "weight_decay": "-wd", "workers": "-j", "seed": "--seed", "run_id": "--id",
    "checkpoint_dir": "--checkpoint-dir", "resume": "--resume", "overwrite": "--overwrite",
    "skip_nonfinite": "--skip-nonfinite", "compile": "--compile",
    "memory_format": "--memory-format", "phase1_epochs": "--phase1-epochs",
    "max_level": "--max-level", "thresholds": "--thresholds",
    "stats_batches": "--stats-batches", "budget_teff": "--budget-teff",
    "candidates": "--candidates", "calib_images": "--calib-images", "arch": "-arch",
    "levels": "--levels", "activation": "--activation", "dropout": "--dropout",
    "dataset": "-data", "variant": "--variant", "initial_checkpoint": "--initial-checkpoint",
    "pretrained": "--pretrained", "checkpoint": "--resume", "data_root": "--data-root",
    "download": "--download", "image_size": "--image-size",
}


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



def add_optimisation_args(group, epochs_help, batch_help, lr_help, weight_decay):
    """``-epochs``, ``-b``, ``-lr``, ``-wd``, ``--momentum``, ``--amp``, ``--compile``,
    ``--memory-format``, ``--skip-nonfinite``.

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
    group.add_argument("--compile", action="store_true",
                       help="train and evaluate through torch.compile: the first steps compile "
                            "(cached on disk for later runs), the rest run faster; eager mode "
                            "with a warning where no compiler is available (default: off)")
    group.add_argument("--memory-format", choices=MEMORY_FORMATS, default="auto",
                       help="layout of 4-D weights and activations while training: "
                            "channels_last (NHWC) or contiguous (NCHW); auto: channels_last on "
                            "the CPU for convolutional networks (faster there), contiguous on "
                            "GPUs; checkpoints hold contiguous weights either way "
                            "(default: auto)")
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


def check_training_args(args):
    """Check the shared training flags once, before any expensive work: their combinations
    here (UsageError), their values through the configs they make (:class:`errors.
    ConfigError`, which the scripts print with :data:`TERMS`). Parses ``--levels``,
    ``--init-threshold``, ``--thresholds`` and ``--candidates`` in place and appends
    ``-suffix`` to the id; returns ``args``. Call it once the script has filled its defaults
    (``args.checkpoint_dir`` included)."""
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
        if args.phase1_epochs is None:
            raise UsageError("--adaptive needs --phase1-epochs N, the epochs before the levels "
                             "are chosen")
        if args.phase1_epochs == 0 and not (args.initial_checkpoint or args.pretrained or
                                            args.resume or args.resume_from_ckpt):
            raise UsageError("--phase1-epochs 0 chooses the levels before training, from "
                             "trained weights: pass --initial-checkpoint or --pretrained, or "
                             "train phase 1 for at least one epoch")
        args.thresholds = parse_thresholds(args.thresholds, DEFAULT_THRESHOLDS)
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
    train_config(args).validate()
    return args


def model_config(args):
    """The :class:`model_setup.ModelConfig` of checked training flags."""
    auto = isinstance(args.init_threshold, tuple)
    return ModelConfig(arch=args.arch, levels=args.levels,
                       init_threshold=None if auto else args.init_threshold,
                       activation=args.activation, dropout=args.dropout,
                       initial_checkpoint=args.initial_checkpoint, pretrained=args.pretrained)


def init_percentile(args):
    """The percentile of ``--init-threshold auto[:P]``, or None for a constant threshold."""
    return args.init_threshold[1] if isinstance(args.init_threshold, tuple) else None


def train_config(args):
    """The :class:`config.TrainConfig` of checked training flags."""
    adaptive = None
    if args.adaptive:
        adaptive = AdaptiveConfig(
            phase1_epochs=args.phase1_epochs, max_level=args.max_level,
            thresholds=tuple(args.thresholds), stats_batches=args.stats_batches,
            budget_teff=args.budget_teff,
            candidates=tuple(args.candidates) if args.candidates else None)
    resume = str(Path(args.checkpoint_dir) / f"{args.id}.pth") if args.resume_from_ckpt \
        else args.resume
    return TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
        weight_decay=args.weight_decay, amp=args.amp, skip_nonfinite=args.skip_nonfinite,
        seed=args.seed, workers=args.workers, run_id=args.id,
        checkpoint_dir=args.checkpoint_dir, resume=resume, overwrite=args.overwrite,
        adaptive=adaptive, calib_images=args.calib_images,
        sync_bn=getattr(args, "sync_bn", False), compile=args.compile,
        memory_format=args.memory_format, show_progress=not args.no_progress)


def process_config(args):
    """The :class:`distributed.ProcessConfig` of checked training flags."""
    return ProcessConfig(launch=args.launch, device=args.device, backend=args.dist_backend,
                         dist_url=args.dist_url, timeout=args.dist_timeout,
                         checkpoint=str(Path(args.checkpoint_dir) / f"{args.id}.pth"),
                         debug=args.debug)


def fit_from_args(args, config, model, model_args, data, ctx, logger, describe):
    """:func:`engine.fit` of a training script: ``data`` is ``(train_set, test_set,
    stats_set)``. Returns the exit status; when the run stops early, the log's last line says
    which flags continue it."""
    train_set, test_set, stats_set = data
    result = engine.fit(model, train_set, test_set, config, stats_set=stats_set,
                        model_args=model_args, levels=args.levels,
                        init_percentile=init_percentile(args), ctx=ctx, logger=logger,
                        describe=describe)
    if result.status == ExitCode.DIVERGED:
        logger.error("lower -lr, or pass --skip-nonfinite to skip non-finite steps")
    elif result.status > ExitCode.SIGNAL:
        logger.error("run the same command with --resume auto (or --resume_from_ckpt=1) to "
                     "continue")
    return result.status


