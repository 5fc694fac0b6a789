"""Self-describing checkpoints: atomic writes, weights-only loads, format upgrades.

A checkpoint is a dict of tensors and plain Python values (loadable with
``torch.load(..., weights_only=True)``)::

    format_version  int (FORMAT_VERSION)
    model_args      {"arch", "variant", "num_classes", "levels", "dropout", "activation",
                     "dataset", "image_size"}: what rebuilds the model
    state_dict      the unwrapped model state_dict
    optimizer, scheduler, scaler   state dicts (training checkpoints)
    epoch           number of completed epochs
    partial_epoch   position and running totals inside an interrupted epoch, or None
    best_acc1       best held-out ("test") top-1 so far (percent)
    test_acc1, test_images   held-out top-1 of this epoch and the images it counts
    adaptive        the adaptive level switch's record, or None
    world_size      processes that trained it
    config          the run's TrainConfig as a plain dict (config.TrainConfig.as_dict)

:func:`load_checkpoint_file` passes every checkpoint of this project through
:func:`upgrade`, which brings one of any earlier format version to the current one, so the
rest of the code reads one format. Problems raise :class:`errors.CheckpointError` (or
:class:`errors.CheckpointMismatch`), whose advice names configuration fields (``arch``,
``levels``, ...) that the scripts translate into their flags.
"""
import os
from pathlib import Path

import torch

import models
from errors import CheckpointError, CheckpointMismatch
from utils import DATASETS, stretch_cosine_schedule

FORMAT_VERSION = 2  # 2: model_args complete (image_size included), config instead of args

_MODEL_ARGS_DEFAULTS = {  # format 1 left these out when they had these values
    "variant": "cifar", "dropout": None, "activation": "qcfs", "dataset": None}


def checkpoint_path(checkpoint_dir, run_id, best=False):
    return Path(checkpoint_dir) / (f"{run_id}_best.pth" if best else f"{run_id}.pth")


def trained_image_size(checkpoint):
    """The image size a checkpoint of this project was trained at, or None: the dataset's
    own. Other checkpoints (the reference code's, plain state dicts) do not say: None."""
    if not is_own_format(checkpoint):
        return None
    size = checkpoint["model_args"].get("image_size")
    return int(size) if size else None


def upgrade(checkpoint, path=None):
    """``checkpoint`` (this project's, any format version) in the current format.

    Format 1 (no ``format_version`` before it was recorded) stored the command line as
    ``args`` and left ``model_args`` keys out when they had their default; its image size
    lived in ``args["image_size"]``. Also dropped: ``rng`` and ``val_images``, which older
    checkpoints hold and nothing reads. A checkpoint of a later format than this code knows
    is refused (:class:`errors.CheckpointError`).
    """
    version = int(checkpoint.get("format_version", 1))
    if version > FORMAT_VERSION:
        raise CheckpointError(path, f"has checkpoint format {version}, newer than the "
                              f"{FORMAT_VERSION} this code reads",
                              advice="update this project's code")
    checkpoint = dict(checkpoint)
    model_args = dict(checkpoint["model_args"])
    if version < 2:
        for key, value in _MODEL_ARGS_DEFAULTS.items():
            model_args.setdefault(key, value)
        args = checkpoint.pop("args", None)
        args = args if isinstance(args, dict) else {}
        model_args.setdefault("image_size", args.get("image_size"))
        checkpoint.setdefault("config", None)
        for key in ("partial_epoch", "adaptive", "scaler"):
            checkpoint.setdefault(key, None)
    for key in ("rng", "val_images"):
        checkpoint.pop(key, None)
    checkpoint["model_args"] = model_args
    checkpoint["format_version"] = FORMAT_VERSION
    return checkpoint


def list_ids(checkpoint_dir):
    """Run ids with a checkpoint in ``checkpoint_dir`` (``{id}.pth`` files, not ``_best``)."""
    folder = Path(checkpoint_dir)
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.pth") if not p.stem.endswith("_best"))


def save_checkpoint(path, state):
    """Write ``state`` to ``path`` atomically: a temp file in the same folder, then rename.

    A crash or kill mid-write leaves the previous ``path`` intact; only the temp file, named
    after the writing process, is partial, and it stays until removed by hand.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(state, tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_checkpoint_file(path, checkpoint_dir=None):
    """``torch.load(path, weights_only=True)`` with one-line errors for every bad file."""
    path = Path(path)
    if not path.exists():
        folder = Path(checkpoint_dir) if checkpoint_dir is not None else path.parent
        ids = list_ids(folder)
        known = f"ids with a checkpoint in {folder}: {', '.join(ids)}" if ids else \
            f"{folder} holds no checkpoints"
        raise CheckpointError(None, f"checkpoint {path} does not exist ({known})",
                              field="checkpoint", advice="check `run_id` and `checkpoint_dir`, "
                              "or pass checkpoint=PATH")
    if not path.is_file():
        raise CheckpointError(None, f"checkpoint {path} is not a file", field="checkpoint",
                              advice="pass the .pth file itself")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises many types for a bad file
        text = str(error).splitlines()[0] if str(error) else type(error).__name__
        if "Weights only load failed" in text:  # torch's advice to unpickle blindly: not ours
            text = "not a PyTorch file"
        if "Unsupported global" in str(error):
            raise CheckpointError(
                path, "contains pickled Python objects that safe loading refuses",
                advice="re-save it as a state_dict (torch.save(model.state_dict(), ...)) from "
                "the code that wrote it") from None
        raise CheckpointError(path, f"is not a readable PyTorch checkpoint (truncated or "
                              f"another format: {text})",
                              advice="re-create it or pick another file") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(path, f"holds a {type(checkpoint).__name__}, not a checkpoint "
                              "dict or state_dict")
    if is_own_format(checkpoint):
        try:
            checkpoint = upgrade(checkpoint, path)
        except (KeyError, TypeError, ValueError) as error:
            raise CheckpointError(path, f"has malformed model_args ({error})") from None
    return checkpoint


def is_relu(model_args):
    """Whether ``model_args`` describe a ReLU network (``--activation relu``); checkpoints
    written before ReLU networks could be trained hold QCFS networks."""
    return model_args.get("activation", "qcfs") == "relu"


def is_own_format(checkpoint):
    return "model_args" in checkpoint and "state_dict" in checkpoint


def check_model(stored, given, path):
    """The checkpoint ``path`` must hold the network ``given`` names: each of its
    ``model_args`` fields (activation, arch, variant, class count, dataset) agrees with
    ``stored`` where both say (:class:`errors.CheckpointMismatch` naming the first that
    differs)."""
    for key, value in given.items():
        have = ("relu" if is_relu(stored) else "qcfs") if key == "activation" else \
            stored.get(key)
        if have is None or value is None or have == value:
            continue
        if key == "num_classes":
            raise CheckpointMismatch(path, key, have, value,
                                     advice="continue it on the data it was trained on")
        raise CheckpointMismatch(path, key, have, value, advice=f"pass {key}={have!r}")


def model_from_checkpoint(checkpoint, path, arch=None, dataset=None, levels=None,
                          variant=None):
    """Rebuild the model a checkpoint describes and load its weights.

    Our checkpoints carry ``model_args``; ``arch``/``dataset``/``variant`` given on the command
    line must agree with them, and ``levels`` (if given) override the stored ones. A checkpoint
    written by the reference PASCAL code carries no levels, so ``levels``, ``arch`` and
    ``dataset`` are required for it; its variant (stem and classifier) is read from its tensor
    shapes unless ``variant`` is given (the reference builds every ResNet with the CIFAR stem,
    ImageNet included). Returns ``(model, model_args)``.
    """
    if is_own_format(checkpoint):
        checkpoint = upgrade(checkpoint, path)
        model_args = dict(checkpoint["model_args"])
        if arch is not None and arch != model_args["arch"]:
            raise CheckpointMismatch(path, "arch", model_args["arch"], arch,
                                     advice=f"leave `arch` unset or pass arch="
                                            f"{model_args['arch']!r}")
        stored = model_args["dataset"]
        # An ImageFolder run (main.py) stores its folder's class count, which need not be the
        # table's 1000; a checkpoint is always consistent with the dataset it names.
        if dataset is not None and stored is not None and dataset != stored and \
                DATASETS.get(dataset, (None,))[0] != model_args["num_classes"]:
            raise CheckpointMismatch(
                path, "dataset", stored, dataset,
                advice=f"it has {model_args['num_classes']} classes and {dataset} another "
                       f"number: pass dataset={stored!r}")
        if variant is not None and variant != model_args["variant"]:
            raise CheckpointMismatch(path, "variant", model_args["variant"], variant,
                                     advice="leave `variant` unset")
        if levels is not None:
            if is_relu(model_args):
                raise CheckpointError(path, "holds a ReLU network (trained with activation "
                                      "'relu'), which has no levels", field="levels",
                                      advice="leave `levels` unset")
            model_args["levels"] = levels
        model = _create(model_args, path)
        try:
            model.load_state_dict(checkpoint["state_dict"])
        except RuntimeError as error:
            raise CheckpointError(path, f"does not fit its own model_args: "
                                  f"{str(error).splitlines()[0]}") from None
        model_args["levels"] = models.get_levels(model)
        _check_thresholds(model, path)
        return model, model_args
    # reference-code checkpoint: a bare state_dict or one under model_state_dict
    if arch is None or dataset is None:
        raise CheckpointError(path, "has no model_args (a reference-code checkpoint?)",
                              advice="pass `arch` and `dataset`")
    if levels is None:
        raise CheckpointError(path, "was written by the reference code and carries no levels",
                              field="levels", advice="pass `levels` (one per QCFS layer, as "
                              "its self.list / mylist)")
    num_classes = DATASETS[dataset][0]
    variant = variant or reference_variant(checkpoint, arch, num_classes, dataset, path)
    model_args = {"arch": arch, "variant": variant, "num_classes": num_classes,
                  "levels": levels, "dataset": dataset, "dropout": 0.0, "activation": "qcfs",
                  "image_size": None}
    model = _create(model_args, path)
    try:
        models.load_reference_state_dict(model, checkpoint)
    except ValueError as error:
        raise CheckpointError(path, f"does not match the {variant} variant of {arch} for "
                              f"{dataset}: {error}") from None
    model_args["levels"] = models.get_levels(model)
    _check_thresholds(model, path)
    return model, model_args


_WRAPPERS = ("state_dict", "model", "model_state_dict")


def relu_weights(checkpoint):
    """The ReLU network's state dict that ``checkpoint`` holds, or None if it holds a QCFS
    network: this project's ``--activation relu`` checkpoint, or a plain state dict without
    thresholds (at the top level or under ``state_dict``, ``model`` or ``model_state_dict``;
    a DDP ``module.`` prefix removed) -- e.g. what ``torch.save(torchvision.models.resnet18(
    num_classes=10).state_dict(), f)`` writes."""
    if is_own_format(checkpoint):
        return dict(checkpoint["state_dict"]) if is_relu(checkpoint["model_args"]) else None
    for key in _WRAPPERS:
        if isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    if not checkpoint or not all(torch.is_tensor(v) for v in checkpoint.values()):
        return None
    translated = models.reference.translate_reference_keys(checkpoint)
    if any(key.endswith(".threshold") for key in translated):
        return None
    return translated


def pretrained_weights(arch, name=None):
    """``(state dict, weights' name, their class count)`` of torchvision's pretrained weights
    for ``tv:NAME`` (``name``: e.g. ``IMAGENET1K_V2``; None: torchvision's default), read
    through torch hub's cache (``$TORCH_HOME/hub/checkpoints``) and downloaded into it if
    missing. :class:`errors.CheckpointError`, naming the file and the folder to put it in,
    when it can be neither found nor downloaded."""
    import torchvision
    if not models.is_torchvision_arch(arch):
        raise CheckpointError(None, "pretrained weights are torchvision's", field="pretrained",
                              advice=f"they need arch='tv:NAME', not {arch}")
    model_name = arch[len(models.TORCHVISION_PREFIX):]
    try:
        enum = torchvision.models.get_model_weights(model_name)
    except (KeyError, ValueError):
        raise CheckpointError(None, f"torchvision has no pretrained weights for {model_name}",
                              field="pretrained") from None
    if name is None:
        weights = enum.DEFAULT
    elif name in enum.__members__:
        weights = enum[name]
    else:
        raise CheckpointError(None, f"{arch} has no pretrained weights {name!r}",
                              field="pretrained",
                              advice=f"choose one of {', '.join(enum.__members__)}")
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    file = folder / Path(weights.url).name
    try:
        if not file.is_file():  # fetched here, without torch hub's own "Downloading" line
            folder.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(weights.url, str(file), progress=False)
        state_dict = weights.get_state_dict(progress=False)
    except Exception as error:  # noqa: BLE001 - offline, refused, truncated: all one advice
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(None, f"{enum.__name__}.{weights.name} could not be loaded "
                              f"({reason})", field="pretrained",
                              advice=f"put {file.name} (from {weights.url}) into "
                                     f"{folder}") from None
    return state_dict, f"{enum.__name__}.{weights.name}", len(weights.meta["categories"])


def qcfs_from_relu(checkpoint, path, arch, dataset, variant, num_classes, levels,
                   init_threshold, dropout, input_shape=None, source_classes=None):
    """A new QCFS network of ``arch`` holding the weights of the ReLU network in
    ``checkpoint`` (see :func:`relu_weights`); its thresholds stay at ``init_threshold``.
    ``(model, model_args)``, or None if ``checkpoint`` holds no ReLU network. This project's
    ReLU checkpoints supply their own arch, class count and variant (``arch`` must agree);
    a plain state dict is read as ``arch`` with ``num_classes`` and ``variant``. Keys other
    than the thresholds must match exactly (CheckpointError naming the difference), except, when
    the weights were trained for ``source_classes`` classes, the classifier's: its tensors
    whose first dimension is ``source_classes`` where the model has ``num_classes`` keep
    their fresh initialisation (``model_args["replaced"]`` lists them)."""
    weights = relu_weights(checkpoint)
    if weights is None:
        return None
    if is_own_format(checkpoint):
        stored = checkpoint["model_args"]
        if stored["arch"] != arch:
            raise CheckpointMismatch(path, "arch", stored["arch"], arch,
                                     advice=f"pass arch={stored['arch']!r}")
        num_classes, variant = stored["num_classes"], stored["variant"]
    model = models.create_model(arch, num_classes=num_classes, levels=levels, variant=variant,
                                init_threshold=init_threshold, dropout=dropout,
                                input_shape=input_shape)
    own = {k: v for k, v in model.state_dict().items() if not k.endswith(".threshold")}
    replaced = []
    if source_classes is not None and source_classes != num_classes:
        replaced = [k for k, v in weights.items() if k in own and v.dim() >= 1 and
                    v.shape[0] == source_classes and own[k].shape[0] == num_classes and
                    v.shape[1:] == own[k].shape[1:]]
        weights = {k: v for k, v in weights.items() if k not in replaced}
        own = {k: v for k, v in own.items() if k not in replaced}
    problem = models.reference.state_dict_mismatch(own, weights)
    if problem is not None:
        raise CheckpointError(path, f"is not a ReLU {arch} with {num_classes} classes: "
                              f"{problem}")
    model.load_state_dict(weights, strict=False)
    model_args = models.model_args_of(model, arch, variant, num_classes, dropout)
    model_args["dataset"] = dataset
    if replaced:
        model_args["replaced"] = replaced
    return model, model_args


def reference_variant(checkpoint, arch, num_classes, dataset, path):
    """The variant whose keys and shapes a reference-code state_dict fits (the dataset's own
    variant first), or a CheckpointError saying how it fits neither."""
    translated = models.reference.translate_reference_keys(checkpoint)
    own_first = sorted(models.VARIANTS, key=lambda v: v != DATASETS[dataset][1])
    problems = {}
    for variant in own_first:
        with torch.device("meta"):  # shapes only: nothing is allocated
            model = models.create_model(arch, num_classes=num_classes, levels=1,
                                        variant=variant, dropout=0.0)
        problem = models.reference.state_dict_mismatch(model.state_dict(), translated)
        if problem is None:
            return variant
        problems[variant] = problem
    details = "; ".join(f"{variant}: {problem}" for variant, problem in problems.items())
    raise CheckpointError(path, f"fits neither variant of {arch} with {num_classes} classes "
                          f"({details})", advice="check `arch` and `dataset`")


def _check_thresholds(model, path):
    try:
        models.convert.check_thresholds(model)
    except ValueError as error:
        raise CheckpointError(path, f"holds a network that cannot be converted: {error}") from None


def _create(model_args, path):
    try:
        # dropout None: written before it was recorded, rebuilt with the layout of then
        relu = is_relu(model_args)
        return models.create_model(model_args["arch"], num_classes=model_args["num_classes"],
                                   levels=None if relu else model_args["levels"],
                                   variant=model_args["variant"],
                                   dropout=model_args["dropout"],
                                   activation="relu" if relu else "qcfs")
    except (KeyError, TypeError) as error:
        raise CheckpointError(path, f"has malformed model_args ({error})") from None


def restore_training_state(restored, optimizer, scheduler, scaler, epochs, logger):
    """Load optimizer, cosine schedule and AMP scaler state from the checkpoint ``restored``;
    a schedule saved for another number of epochs is stretched to ``epochs``. Returns
    ``(epochs finished, best top-1)``."""
    optimizer.load_state_dict(restored["optimizer"])
    scheduler.load_state_dict(restored["scheduler"])
    if scheduler.T_max != epochs:
        logger.info(f"schedule length changed from {scheduler.T_max} to {epochs} epochs")
        stretch_cosine_schedule(scheduler, epochs)
    if scaler is not None and restored["scaler"]:
        scaler.load_state_dict(restored["scaler"])
    return int(restored["epoch"]), float(restored["best_acc1"])
