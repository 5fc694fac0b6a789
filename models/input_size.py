"""Which input sizes a model accepts: shape checks on the meta device, no computation."""
import itertools

import torch

from errors import ModelError

__all__ = ["accepts_input", "check_input_size", "min_input_size"]


def accepts_input(model, input_shape):
    """Whether ``model`` runs on a batch of inputs of per-image shape ``input_shape``
    (``(C, H, W)``), judged by a forward pass on the meta device (shapes only)."""
    floats = [t for t in itertools.chain(model.parameters(), model.buffers())
              if t.is_floating_point()]
    dtype = floats[0].dtype if floats else torch.get_default_dtype()
    tensors = {name: torch.empty_like(t, device="meta") for name, t in
               itertools.chain(model.named_parameters(), model.named_buffers())}
    # two images: BatchNorm in training mode refuses a single value per channel
    x = torch.empty((2, *input_shape), device="meta", dtype=dtype)
    try:
        with torch.no_grad():
            torch.func.functional_call(model, tensors, (x,), strict=False)
    except Exception:  # any failure means "not this shape"; check_input_size reports it
        return False
    return True


def min_input_size(model, channels=3, limit=4096):
    """Smallest S such that ``model`` accepts ``(channels, S, S)`` inputs, or None if it
    accepts none up to ``limit`` (binary search: accepted sizes are assumed to be all sizes
    from the smallest one on, as for strided convolutions and pools)."""
    if not accepts_input(model, (channels, limit, limit)):
        return None
    low, high = 1, limit  # high is accepted
    while low < high:
        middle = (low + high) // 2
        if accepts_input(model, (channels, middle, middle)):
            high = middle
        else:
            low = middle + 1
    return high


def check_input_size(model, input_shape, arch="the model"):
    """Raise ``ValueError`` (one line naming the minimum size) unless ``model`` accepts
    inputs of per-image shape ``input_shape`` ``(C, H, W)``."""
    input_shape = tuple(int(s) for s in input_shape)
    if accepts_input(model, input_shape):
        return
    channels, *spatial = input_shape
    got = "x".join(str(s) for s in spatial)
    smallest = min_input_size(model, channels)
    if smallest is None:
        raise ModelError(f"{arch} accepts no {channels}-channel square input up to 4096x4096 "
                         f"(got {channels}x{got}); check the number of input channels")
    if all(s >= smallest for s in spatial):
        raise ModelError(f"{arch} does not accept inputs of shape {channels}x{got} although it "
                         f"accepts {smallest}x{smallest} squares; use a square input")
    raise ModelError(f"{arch} needs inputs of at least {smallest}x{smallest}; got {got} "
                     f"(resize the images to {smallest}x{smallest} or more)")
