"""Load state_dicts written by the reference PASCAL code (and QCFS-style names) into our models."""
import torch

from errors import ModelError

__all__ = ["load_reference_state_dict", "state_dict_mismatch", "translate_reference_keys"]

# Threshold names used by the reference PASCAL code (``thresh``) and by QCFS (``up``).
_THRESHOLD_SUFFIXES = (".relu.up", ".thresh", ".up")


def translate_reference_keys(state_dict):
    """Map reference key names onto ours: unwrap, drop ``module.``, rename thresholds."""
    if "model_state_dict" in state_dict and isinstance(state_dict["model_state_dict"], dict):
        state_dict = state_dict["model_state_dict"]
    elif "state_dict" in state_dict and isinstance(state_dict["state_dict"], dict):
        state_dict = state_dict["state_dict"]
    translated = {}
    for key, value in state_dict.items():
        if key.startswith("module."):
            key = key[len("module."):]
        for suffix in _THRESHOLD_SUFFIXES:
            if key.endswith(suffix):
                key = key[: -len(suffix)] + ".threshold"
                if torch.is_tensor(value):
                    value = value.reshape(1)
                break
        translated[key] = value
    return translated


def state_dict_mismatch(own, translated):
    """None if ``translated`` (reference keys already translated) has exactly the keys and
    shapes of the state_dict ``own``; else a one-line description of the difference."""
    missing = sorted(set(own) - set(translated))
    unexpected = sorted(set(translated) - set(own))
    if missing or unexpected:
        return (f"missing keys {_short(missing)}; unexpected keys {_short(unexpected)}")
    wrong = [f"{k} {tuple(translated[k].shape)} vs {tuple(own[k].shape)}" for k in own
             if tuple(translated[k].shape) != tuple(own[k].shape)]
    if wrong:
        return f"shapes do not match: {_short(wrong)} (checkpoint vs model)"
    return None


def load_reference_state_dict(model, state_dict):
    """Load a reference-code checkpoint (bare or under ``model_state_dict``) into ``model``.

    Keys follow the reference layout (``tests/data/reference_state_dict_keys_cifar10.json``
    lists them for the CIFAR-10 models): thresholds named ``thresh`` (or QCFS's ``up``), one per
    QCFS layer. The checkpoint carries no levels: set them on ``model`` first.

    Raises:
        ValueError: listing missing and unexpected keys, or mismatched shapes.
    """
    translated = translate_reference_keys(state_dict)
    problem = state_dict_mismatch(model.state_dict(), translated)
    if problem is not None:
        raise ModelError(f"the checkpoint does not match the model: {problem} (wrong arch, "
                         "variant or number of classes?)")
    model.load_state_dict(translated)
    return model


def _short(items, limit=12):
    if not items:
        return "none"
    text = ", ".join(items[:limit])
    return text + (f", ... ({len(items)} in all)" if len(items) > limit else "")
