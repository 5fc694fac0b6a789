"""Torchvision classification architectures by name, ``tv:NAME``, made QCFS networks."""
from errors import ModelError

from .qcfsify import qcfsify_

__all__ = ["TORCHVISION_PREFIX", "build_torchvision", "is_torchvision_arch",
           "torchvision_names", "torchvision_version"]

TORCHVISION_PREFIX = "tv:"
# Built without their auxiliary classifiers (the spiking network has one output); their
# init_weights flag is given explicitly, as torchvision asks when no weights are loaded.
_AUXILIARY = ("googlenet", "inception_v3")


def is_torchvision_arch(arch):
    """Whether ``arch`` names a torchvision model (``"tv:resnet18"``)."""
    return isinstance(arch, str) and arch.startswith(TORCHVISION_PREFIX)


def torchvision_names():
    """Names of torchvision's classification models (use them as ``tv:NAME``)."""
    import torchvision
    return sorted(torchvision.models.list_models(module=torchvision.models))


def torchvision_version():
    import torchvision
    return torchvision.__version__


def build_torchvision(arch, num_classes, levels, init_threshold, qcfs=True, input_shape=None):
    """``torchvision.models.get_model(NAME, weights=None, num_classes=...)``, qcfsified
    (as torchvision builds it with ``qcfs=False``).

    Raises:
        ValueError: unknown name, or (one line naming the node) an architecture with an
            operation that has no exact spiking counterpart.
    """
    import torchvision
    name = arch[len(TORCHVISION_PREFIX):]
    if name not in torchvision_names():
        raise ModelError(f"unknown torchvision classification model {name!r} in {arch!r}; "
                         "see torchvision.models.list_models(module=torchvision.models)")
    kwargs = {"weights": None, "num_classes": num_classes}
    if name in _AUXILIARY:
        kwargs.update(aux_logits=False, init_weights=True)
    model = torchvision.models.get_model(name, **kwargs)
    if not qcfs:
        return model
    return qcfsify_(model, levels, init_threshold, context=arch, input_shape=input_shape)
