"""What a training run is told: plain dataclasses, checked in one place.

:class:`TrainConfig` is what :func:`engine.fit` trains with -- the optimisation, the run's
name and folder, resuming, and optionally :class:`AdaptiveConfig`, the two-phase level
schedule. The training scripts build one from their flags; a Python caller builds one
directly. :meth:`TrainConfig.validate` raises :class:`errors.ConfigError` naming the field.
A checkpoint stores ``config.as_dict()``.
"""
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from al_metric import DEFAULT_THRESHOLDS
from errors import ConfigError

__all__ = ["TrainConfig", "AdaptiveConfig", "check_budget_teff", "MEMORY_FORMATS"]

MEMORY_FORMATS = ("auto", "channels_last", "contiguous")


def check_budget_teff(value):
    """A T_eff budget: None, or a finite number >= 1 (T_eff is at least one step); else
    :class:`errors.ConfigError` for ``budget_teff``."""
    if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value)
                                  and value >= 1):
        raise ConfigError("budget_teff", value, f"must be a number >= 1 (T_eff is at least 1 "
                                                f"step), got {value}")


@dataclass(frozen=True)
class AdaptiveConfig:
    """The two-phase schedule: uniform levels for ``phase1_epochs``, then per-layer levels.

    ``phase1_epochs``: epochs before the switch; 0 switches before the first epoch, for a
    network that starts from trained weights. The levels come from the AL rule (``max_level``,
    ``thresholds``, measured on ``stats_batches`` global batches of training images with
    evaluation transforms), or, with ``budget_teff``, from the level search (the least
    calibration loss on the run's ``calib_images`` images at all-layer T_eff <=
    ``budget_teff``, each layer's level one of ``candidates``).
    """

    phase1_epochs: int
    max_level: int | None = None
    thresholds: tuple = DEFAULT_THRESHOLDS
    stats_batches: int = 20
    budget_teff: float | None = None
    candidates: tuple | None = None

    def validate(self, epochs):
        if not (isinstance(self.phase1_epochs, int) and 0 <= self.phase1_epochs < epochs):
            raise ConfigError("phase1_epochs", self.phase1_epochs,
                              f"must be an integer from 0 to epochs - 1 ({epochs - 1}), got "
                              f"{self.phase1_epochs}")
        if self.max_level is not None and self.max_level < 1:
            raise ConfigError("max_level", self.max_level, f"must be >= 1, got {self.max_level}")
        values = tuple(self.thresholds)
        if len(values) != 3 or not all(math.isfinite(v) for v in values) or \
                not values[0] < values[1] < values[2]:
            raise ConfigError("thresholds", self.thresholds,
                              f"must be three increasing numbers, got {values}")
        _at_least(self, "stats_batches", 1)
        check_budget_teff(self.budget_teff)
        if self.candidates is not None and (
                not self.candidates or min(self.candidates) < 1 or
                not all(isinstance(v, int) for v in self.candidates)):
            raise ConfigError("candidates", self.candidates,
                              f"must be levels >= 1, got {self.candidates}")


@dataclass(frozen=True)
class TrainConfig:
    """One training run.

    Optimisation: SGD (``lr``, ``momentum``, ``weight_decay``) on a cosine schedule over
    ``epochs``; ``batch_size`` is the global batch (split over DDP processes); ``amp``: mixed
    precision on CUDA; ``skip_nonfinite``: skip a step whose loss is NaN/inf instead of
    stopping. ``seed`` fixes every step and every sample's augmentation. ``workers``:
    data-loading processes.

    The run: checkpoints ``{checkpoint_dir}/{run_id}.pth`` (every epoch end and stop) and
    ``{run_id}_best.pth``, a log and ``{run_id}_epochs.csv``. ``resume``: None (a new run;
    refused where the run already has a checkpoint, unless ``overwrite``), ``"auto"``
    (continue the run's checkpoint if there is one) or a checkpoint's path.
    ``adaptive``: the two-phase level schedule, or None. ``calib_images``: the training
    images (evaluation transforms) that thresholds from data and the level search measure
    on. ``sync_bn``: SyncBatchNorm under
    DDP. ``compile``: train and evaluate through ``torch.compile`` (:mod:`compiled`; eager
    mode, with a warning, where it cannot run). ``memory_format``: the layout of 4-D weights
    and activations during training and evaluation -- ``"channels_last"`` (NHWC),
    ``"contiguous"`` (NCHW) or ``"auto"``: channels-last on the CPU for a network with 2-D
    convolutions (faster there), contiguous elsewhere. The model is handed back, and its
    checkpoints hold weights, in the contiguous layout either way. ``show_progress``: progress
    bars on rank 0.
    """

    epochs: int
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    amp: bool = False
    skip_nonfinite: bool = False
    seed: int = 0
    workers: int = 2
    run_id: str = "run"
    checkpoint_dir: Path = Path("checkpoints")
    resume: str | None = None
    overwrite: bool = False
    adaptive: AdaptiveConfig | None = None
    calib_images: int = 512
    sync_bn: bool = False
    compile: bool = False
    memory_format: str = "auto"
    show_progress: bool = True

    def __post_init__(self):
        object.__setattr__(self, "checkpoint_dir", Path(self.checkpoint_dir))

    def validate(self):
        """Raise :class:`errors.ConfigError` for the first field that cannot work."""
        _at_least(self, "epochs", 1)
        _at_least(self, "batch_size", 1)
        _at_least(self, "workers", 0)
        _at_least(self, "calib_images", 1)
        for name in ("lr", "momentum", "weight_decay"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ConfigError(name, value, f"must be a finite number >= 0, got {value}")
        if not self.run_id or "/" in self.run_id:
            raise ConfigError("run_id", self.run_id,
                              f"must be a non-empty name without '/', got {self.run_id!r}")
        if self.resume == "auto" and self.overwrite:
            raise ConfigError("overwrite", self.overwrite,
                              "starts the run over and resume='auto' continues it",
                              advice="give only one")
        if self.memory_format not in MEMORY_FORMATS:
            raise ConfigError("memory_format", self.memory_format,
                              f"must be one of {', '.join(MEMORY_FORMATS)}, got "
                              f"{self.memory_format!r}")
        if self.adaptive is not None:
            self.adaptive.validate(self.epochs)
        return self

    def as_dict(self):
        """Plain values (paths as strings, tuples as lists), as a checkpoint stores them."""
        values = asdict(self)
        values["checkpoint_dir"] = str(self.checkpoint_dir)
        return _plain(values)

    @classmethod
    def from_dict(cls, values):
        """The config :meth:`as_dict` wrote (unknown keys are ignored)."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in values.items() if k in known}
        if values.get("adaptive") is not None:
            adaptive = dict(values["adaptive"])
            for key in ("thresholds", "candidates"):
                if adaptive.get(key) is not None:
                    adaptive[key] = tuple(adaptive[key])
            values["adaptive"] = AdaptiveConfig(**{
                k: v for k, v in adaptive.items()
                if k in {f.name for f in fields(AdaptiveConfig)}})
        return cls(**values)


def _at_least(config, name, low):
    value = getattr(config, name)
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
        raise ConfigError(name, value, f"must be an integer >= {low}, got {value!r}")


def _plain(value):
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value

