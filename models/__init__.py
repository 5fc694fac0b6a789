"""Model registry: ``create_model(arch, num_classes=..., levels=...)``, ``list_models()``,
and ``qcfsify`` for any ReLU network."""
import functools

from torch import nn

from errors import ModelError

from . import resnet, vgg
from .convert import SpikingNetwork, convert_to_snn
from .graph import UnsupportedModelError
from .input_size import accepts_input, check_input_size, min_input_size
from .qcfs import QCFS, clamp_thresholds_, get_levels, qcfs_layers, set_levels, validate_levels
from .qcfsify import qcfsify
from .reference import load_reference_state_dict
from .spiking import LayerStats, PascalNeuron, pascal_counts
from .torchvision_models import (TORCHVISION_PREFIX, build_torchvision, is_torchvision_arch,
                                 torchvision_names, torchvision_version)

__all__ = [
    "ACTIVATIONS", "QCFS", "PascalNeuron", "SpikingNetwork", "LayerStats", "TORCHVISION_PREFIX",
    "UnsupportedModelError", "VARIANTS", "accepts_input", "check_input_size",
    "clamp_thresholds_", "convert_to_snn", "create_model", "get_levels", "is_torchvision_arch",
    "list_models", "load_reference_state_dict", "min_input_size", "model_args_of",
    "pascal_counts", "qcfs_layers", "qcfsify", "set_levels", "torchvision_names",
    "validate_levels",
]

VARIANTS = ("cifar", "imagenet")

# Paper architectures first, then the CIFAR ResNet-20; vgg_small is a fast stand-in for demos
# and tests.
_REGISTRY = {
    "vgg16": vgg.vgg16,
    "resnet18": resnet.resnet18,
    "resnet34": resnet.resnet34,
    "resnet20": resnet.resnet20,
    "vgg_small": vgg.vgg_small,
}


def list_models():
    """Names of the built-in architectures, paper architectures first. :func:`create_model`
    also takes any torchvision classification model as ``"tv:NAME"`` (see
    :func:`torchvision_names`)."""
    return list(_REGISTRY)


ACTIVATIONS = ("qcfs", "relu")


def create_model(arch, *, num_classes, levels, variant="cifar", init_threshold=4.0,
                 dropout=0.0, activation="qcfs", input_shape=None):
    """Build a QCFS network (or, with ``activation="relu"``, the same network with ReLU).

    Args:
        arch: one of :func:`list_models`, or ``"tv:NAME"`` for torchvision's classification
            model NAME (``torchvision.models.get_model(NAME, weights=None,
            num_classes=...)``, googlenet and inception_v3 without auxiliary classifiers)
            with every ReLU call made a QCFS layer by :func:`qcfsify`.
        num_classes: size of the output layer.
        levels: an int (the same L everywhere) or one int >= 1 per QCFS layer in forward
            order (``[name for name, _ in qcfs_layers(model)]``; vgg16: 15, resnet18: 17,
            resnet34: 33, resnet20: 19), the same meaning as the reference code's per-layer list.
        variant: ``"cifar"`` (32x32 inputs) or ``"imagenet"``; torchvision models have one
            form and ignore it (their smallest input: :func:`min_input_size`).
        init_threshold: initial value of every QCFS threshold (lambda), > 0.
        dropout: probability of the Dropout after every activation of a VGG (the reference's
            default, 0); ResNets have no dropout layers. None rebuilds a VGG as checkpoints
            written before ``model_args`` recorded the dropout (``vgg.LEGACY_DROPOUT``).
        activation: ``"qcfs"`` (the default) or ``"relu"``: the architecture with plain ReLU
            activations (``nn.ReLU``; torchvision models as torchvision builds them), an ANN
            baseline with no levels and no spiking counterpart of its own; ``levels`` must
            then be None.
        input_shape: optional per-image input shape, e.g. ``(3, 32, 32)``: the network must
            accept it (else ``ValueError`` naming the smallest size it takes), and
            :func:`qcfsify` resolves a torchvision model's dims against it.

    Raises:
        ValueError: unknown arch or variant, bad levels (wrong count, < 1, non-integer),
            a non-positive initial threshold, dropout outside [0, 1) (or not 0 for a model
            without this project's dropout layers), or a torchvision model with an operation
            that has no exact spiking counterpart (one line naming the node).
    """
    if variant not in VARIANTS:
        raise ModelError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ModelError(f"num_classes must be a positive integer, got {num_classes!r}")
    if not float(init_threshold) > 0:
        raise ModelError(f"init_threshold must be > 0, got {init_threshold!r}")
    if activation not in ACTIVATIONS:
        raise ModelError(f"unknown activation {activation!r}; choose one of "
                         f"{', '.join(ACTIVATIONS)}")
    relu = activation == "relu"
    if relu and levels is not None:
        raise ModelError(f"a ReLU network has no levels; got levels {levels!r}")
    if is_torchvision_arch(arch):
        if dropout:
            raise ModelError(f"{arch} keeps torchvision's own dropout; --dropout applies to "
                             f"this project's VGGs only, got {dropout!r}")
        model = build_torchvision(arch, num_classes, levels, float(init_threshold),
                                  qcfs=not relu, input_shape=input_shape)
        if input_shape is not None:
            check_input_size(model, input_shape, arch=arch)
        return model
    if arch not in _REGISTRY:
        raise ModelError(f"unknown arch {arch!r}; choose one of {', '.join(_REGISTRY)} or "
                         f"{TORCHVISION_PREFIX}NAME for a torchvision model")
    act_layer = nn.ReLU if relu else functools.partial(QCFS, level=1,
                                                       init_threshold=float(init_threshold))
    if arch in vgg.LEGACY_DROPOUT:
        if dropout is None:
            model = _REGISTRY[arch](num_classes, variant, act_layer,
                                    legacy_dropout=vgg.LEGACY_DROPOUT[arch])
        else:
            model = _REGISTRY[arch](num_classes, variant, act_layer,
                                    dropout=_check_dropout(dropout))
    else:
        if dropout:
            raise ModelError(f"{arch} has no dropout layers; got dropout {dropout!r}")
        model = _REGISTRY[arch](num_classes, variant, act_layer)
    if not relu:
        set_levels(model, levels)
    if input_shape is not None:
        check_input_size(model, input_shape, arch=arch)
    return model


def _check_dropout(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ModelError(f"dropout must be a probability in [0, 1), got {value!r}")
    return float(value)


def model_args_of(model, arch, variant, num_classes, dropout=0.0, activation="qcfs"):
    """The ``model_args`` dict that rebuilds ``model`` with :func:`create_model`; for a
    torchvision model it also records the torchvision version it was built with. A ReLU
    network's levels are ``[]``."""
    args = {"arch": arch, "variant": variant, "num_classes": num_classes,
            "levels": get_levels(model), "dropout": dropout, "activation": activation}
    if is_torchvision_arch(arch):
        args["torchvision"] = torchvision_version()
    return args
