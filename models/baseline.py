"""The conventional QCFS spiking network: plain integrate-and-fire neurons run in lock-step.

This is the baseline PASCAL is compared with (QCFS, Bu et al., ICLR 2022): every QCFS
activation becomes an integrate-and-fire neuron with threshold lambda (the QCFS threshold),
reset by subtraction, initial membrane potential lambda/2 and spikes of amplitude lambda. The
analog image is fed again at every time step, all layers share one number of steps T and the
whole network advances one step at a time; the prediction after t steps is the mean of the
output layer's outputs over those steps. Unlike PASCAL it is only approximately equal to the
ANN, and the approximation improves with T.
"""
import copy

import torch
from torch import nn

from errors import ModelError

from .qcfs import QCFS

__all__ = ["IFNeuron", "IFNetwork", "convert_to_if", "if_step_"]


def if_step_(v, x, threshold):
    """One integrate-and-fire step on explicit state: charge, fire, reset by subtraction.

        v += x;  s = (v >= threshold);  v -= s * threshold;  output s * threshold

    Args:
        v: membrane potential ``(B, ...)``, updated in place.
        x: input current of this step, same shape.
        threshold: 0-dim tensor, the firing threshold and the spike amplitude.

    Returns:
        The spikes of this step, ``(B, ...)``, of height ``threshold`` (0 elsewhere).
    """
    v.add_(x)
    spikes = torch.ge(v, threshold).to(v.dtype).mul_(threshold)
    v.sub_(spikes)
    return spikes


class IFNeuron(nn.Module):
    """Integrate-and-fire neuron with state, replacing one QCFS layer; one call = one step.

    The membrane potential starts at ``threshold / 2`` on the first step after
    :meth:`reset` (the QCFS shift of 1/2 level, so that T steps approximate
    ``threshold * clip(floor(T * x / threshold + 1/2) / T, 0, 1)``).
    """

    def __init__(self, threshold, name=""):
        super().__init__()
        self.register_buffer("threshold", torch.as_tensor(threshold).detach().clone().reshape(()))
        self.name = name
        self.v = None

    def reset(self):
        self.v = None

    def forward(self, x):  # one step, (B, ...)
        threshold = self.threshold.to(x.dtype)
        if self.v is None or self.v.shape != x.shape:
            self.v = torch.full_like(x, 0.5).mul_(threshold)
        return if_step_(self.v, x, threshold)

    def extra_repr(self):
        return f"threshold={float(self.threshold):.6g}"


class IFNetwork(nn.Module):
    """The ANN with every QCFS layer replaced by an :class:`IFNeuron`.

    Every other layer (conv, BN, linear, pools, flatten, residual additions) is applied to
    each step as it is, biases and BN shifts included: the input is repeated every step, so
    each step's currents are what the ANN's layer would receive.
    """

    def __init__(self, body):
        super().__init__()
        self.body = body

    def neurons(self):
        """``[(name, IFNeuron), ...]`` in forward order, named as the ANN's QCFS layers."""
        return [(m.name, m) for m in self.body.modules() if isinstance(m, IFNeuron)]

    def reset(self):
        for _, neuron in self.neurons():
            neuron.reset()

    @torch.inference_mode()
    def running_outputs(self, x, num_steps):
        """Yield ``(t, mean output over steps 1..t)`` for t = 1..num_steps.

        ``x`` is the analog image batch ``(B, C, H, W)``, fed at every step. The state is
        reset first, so each call starts a fresh simulation of this batch.
        """
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        self.reset()
        total = None
        try:
            for t in range(1, num_steps + 1):
                out = self.body(x)
                total = out.clone() if total is None else total.add_(out)
                yield t, total / t
        finally:
            self.reset()

    def forward(self, x, num_steps):
        """Mean output over ``num_steps`` steps, ``(B, num_classes)``."""
        for _, mean in self.running_outputs(x, num_steps):
            pass
        return mean


def convert_to_if(ann: nn.Module) -> IFNetwork:
    """A new :class:`IFNetwork` from a QCFS ``ann`` (left unchanged), in eval mode.

    Raises ``ValueError`` for a QCFS threshold that is not finite and > 0: an IF neuron with
    such a threshold fires on every step (or never) and approximates nothing.
    """
    body = copy.deepcopy(ann).eval()
    _replace_qcfs(body, prefix="")
    return IFNetwork(body)


def _replace_qcfs(module, prefix):
    for name, child in module.named_children():
        full_name = prefix + name
        if isinstance(child, QCFS):
            threshold = child.threshold.detach().reshape(())
            if not bool(torch.isfinite(threshold)) or float(threshold) <= 0:
                raise ModelError(f"QCFS layer {full_name!r} has threshold {float(threshold)!r}; "
                                 "an integrate-and-fire neuron needs a finite threshold > 0")
            setattr(module, name, IFNeuron(threshold, name=full_name))
        else:
            _replace_qcfs(child, full_name + ".")
