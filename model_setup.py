"""The network a training script trains, built from what its user asked for.

:func:`build_model` makes it new (``models.create_model``), from initial weights (this
project's checkpoints, the reference code's QCFS ones, a ReLU network's -- ours or a plain
state dict --, or torchvision's pretrained weights), or rebuilt from the checkpoint a run
continues (:func:`engine.resume_source`). :func:`engine.fit` then trains it.
"""
from dataclasses import dataclass

import models
from checkpoint import (check_model, is_relu, load_checkpoint_file, model_from_checkpoint,
                        pretrained_weights, qcfs_from_relu)
from errors import CheckpointError, CheckpointMismatch

__all__ = ["RunSpec", "ModelConfig", "build_model", "DEFAULT_LEVEL", "DEFAULT_THRESHOLD"]

DEFAULT_LEVEL = 4          # the level of every QCFS layer of a new network without levels
DEFAULT_THRESHOLD = 4.0    # the initial threshold of a new network's QCFS layers


@dataclass(frozen=True)
class RunSpec:
    """What the script knows of the data: ``model_args["dataset"]``, the class count, the
    model variant (stem and classifier) it trains, and the side of its square images."""

    dataset: str
    num_classes: int
    variant: str
    image_size: int


@dataclass(frozen=True)
class ModelConfig:
    """The network to train. ``levels``: an int or one per QCFS layer (None: 4 for a new
    network; a continued run keeps its own unless given). ``init_threshold``: the thresholds
    of a new QCFS network, or None where they come from data (the run's ``init_percentile``).
    ``activation``: ``"qcfs"`` or ``"relu"``. ``dropout``: VGG's dropout (None: 0, or a
    continued run's own). ``initial_checkpoint``: a file whose weights a new run starts from;
    ``pretrained``: torchvision's weights (``"default"`` or a weights name) for ``tv:NAME``."""

    arch: str
    levels: int | list | None = None
    init_threshold: float | None = DEFAULT_THRESHOLD
    activation: str = "qcfs"
    dropout: float | None = None
    initial_checkpoint: str | None = None
    pretrained: str | None = None


def build_model(config, spec, source, logger):
    """``(model, model_args)`` of the network ``config`` describes, for data ``spec``.

    ``source``: the checkpoint the run continues (None for a new run); the model is rebuilt
    from its ``model_args`` after checking that it holds the network ``config`` names
    (:class:`errors.CheckpointMismatch`), and :func:`engine.fit` restores its state.
    """
    shape = (3, spec.image_size, spec.image_size)
    threshold = DEFAULT_THRESHOLD if config.init_threshold is None else config.init_threshold
    if source is not None:
        restored = load_checkpoint_file(source)
        if "optimizer" not in restored or "model_args" not in restored:
            raise CheckpointError(source, "is not a training checkpoint of this project (no "
                                  "optimizer state)", field="resume",
                                  advice="start a new run from its weights with "
                                         "initial_checkpoint=PATH")
        stored = restored["model_args"]
        given = {"activation": config.activation, "arch": config.arch,
                 "variant": spec.variant, "num_classes": spec.num_classes,
                 "dataset": spec.dataset}
        check_model(stored, given, source)
        if config.dropout is not None and config.dropout != stored["dropout"]:
            raise CheckpointMismatch(source, "dropout", stored["dropout"], config.dropout,
                                     advice="leave `dropout` unset to continue it")
        model, model_args = model_from_checkpoint(restored, source)
    elif config.pretrained is not None:
        weights, described, classes = pretrained_weights(
            config.arch, None if config.pretrained == "default" else config.pretrained)
        model, model_args = qcfs_from_relu(
            weights, f"torchvision's {described}", config.arch, spec.dataset, spec.variant,
            spec.num_classes, DEFAULT_LEVEL if config.levels is None else config.levels,
            threshold, 0.0, input_shape=shape, source_classes=classes)
        replaced = model_args.pop("replaced", [])
        logger.info(f"initial weights: torchvision's {described}" + (
            f"; classifier replaced ({classes} -> {spec.num_classes} classes: "
            f"{', '.join(replaced)} freshly initialised)" if replaced else ""))
        _log_thresholds(config, logger)
    elif config.initial_checkpoint:
        model, model_args = _from_initial(config, spec, threshold, shape, logger)
    else:
        relu = config.activation == "relu"
        levels = None if relu else DEFAULT_LEVEL if config.levels is None else config.levels
        dropout = 0.0 if config.dropout is None else config.dropout
        model = models.create_model(config.arch, num_classes=spec.num_classes, levels=levels,
                                    variant=spec.variant, init_threshold=threshold,
                                    dropout=dropout, activation=config.activation,
                                    input_shape=shape)
        model_args = models.model_args_of(model, config.arch, spec.variant, spec.num_classes,
                                          dropout, config.activation)
    model_args["dataset"] = spec.dataset
    model_args["image_size"] = spec.image_size
    return model, model_args


def _from_initial(config, spec, threshold, shape, logger):
    """A new run from the weights in ``config.initial_checkpoint``: a ReLU network's become
    a QCFS network's (thresholds as ``config`` says); a QCFS network's (ours, from any data
    with the same classes, or the reference code's) are rebuilt as a new run of this
    version, with its dropout layout."""
    path = config.initial_checkpoint
    checkpoint = load_checkpoint_file(path)
    if config.activation == "qcfs":
        from_relu = qcfs_from_relu(
            checkpoint, path, config.arch, spec.dataset, spec.variant, spec.num_classes,
            DEFAULT_LEVEL if config.levels is None else config.levels, threshold,
            0.0 if config.dropout is None else config.dropout, input_shape=shape)
        if from_relu is not None:
            logger.info(f"initial weights from the ReLU network in {path}")
            _log_thresholds(config, logger)
            return from_relu
    source, source_args = model_from_checkpoint(checkpoint, path, arch=config.arch,
                                                dataset=spec.dataset, levels=config.levels)
    source_activation = "relu" if is_relu(source_args) else "qcfs"
    if source_activation != config.activation:
        raise CheckpointMismatch(path, "activation", source_activation, config.activation,
                                 advice=f"a new {config.activation} run cannot start from its "
                                        f"weights: pass activation={source_activation!r}")
    dropout = 0.0 if config.dropout is None else config.dropout
    variant = source_args["variant"]
    model = models.create_model(
        config.arch, num_classes=source_args["num_classes"],
        levels=None if config.activation == "relu" else source_args["levels"],
        variant=variant, dropout=dropout, activation=config.activation, input_shape=shape)
    model.load_state_dict(source.state_dict())
    model_args = models.model_args_of(model, config.arch, variant, source_args["num_classes"],
                                      dropout, config.activation)
    logger.info(f"initial weights and thresholds from {path}")
    return model, model_args


def _log_thresholds(config, logger):
    logger.info("thresholds " + ("from data (below)" if config.init_threshold is None
                                 else f"{config.init_threshold:g}"))
