"""The PASCAL spiking neuron and the time-major (T, B, ...) versions of the other layers.

Every spiking-side module takes and returns a time-major tensor ``x_seq`` of shape
``(T, B, ...)``; consecutive layers may have different T (each spiking layer emits
``level`` steps).
"""
from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = [
    "LayerStats", "PascalNeuron", "SeqAffine", "SeqMap", "SpikingAdd", "check_seq",
    "pascal_accumulate_", "pascal_correct_", "pascal_counts", "pascal_emit",
]


def check_seq(x_seq, what, min_dim=3):
    """Raise if ``x_seq`` is not time-major ``(T, B, ...)``."""
    if not torch.is_tensor(x_seq) or x_seq.dim() < min_dim:
        shape = tuple(x_seq.shape) if torch.is_tensor(x_seq) else type(x_seq).__name__
        raise ValueError(f"{what} expects a time-major tensor (T, B, ...) with at least "
                         f"{min_dim} dims, got shape {shape}")


# --- the neuron as pure, in-place step functions on explicit state -------------------------
# Units: membrane potential v and input currents u are measured in spike amplitudes
# (threshold / level), so "v >= 1" is the firing test and the initial potential is 1/2.
# The spike count is an integer tensor; no floating-point tolerance is involved.

def pascal_accumulate_(v, count, u_seq):
    """Phase 1 on a chunk of input steps: ``v += u(t)``; fire (v -= 1, count += 1) if v >= 1.

    Args:
        v: membrane potential, shape ``(B, ...)``, updated in place.
        count: int32 spike count, same shape, updated in place.
        u_seq: input currents in units of the spike amplitude, ``(T_chunk, B, ...)``.
    """
    for u in u_seq:
        v.add_(u)
        fired = v >= 1
        v.sub_(fired.to(v.dtype))
        count.add_(fired)


def pascal_correct_(v, count, num_steps):
    """Phase 2, ``num_steps`` steps: late excitatory spike if v >= 1, inhibitory if v < 0.

    An excitatory correction does v -= 1, count += 1; an inhibitory one v += 1, count -= 1
    (it cancels an earlier spike). Once v is in [0, 1) nothing changes, so a neuron makes
    corrections of one kind only.
    """
    for _ in range(num_steps):
        excite = v >= 1
        inhibit = v < 0
        delta = inhibit.to(v.dtype) - excite.to(v.dtype)
        v.add_(delta)
        count.sub_(delta.to(count.dtype))


def pascal_emit(count, level, start, stop, amplitude):
    """Phase 3, steps ``start..stop-1`` of ``level``: spike at step t iff t < clip(count, 0, L).

    Returns ``(stop - start, B, ...)`` spikes of height ``amplitude`` (front-loaded burst).
    """
    clipped = count.clamp(0, level)
    steps = torch.arange(start, stop, device=count.device, dtype=count.dtype)
    steps = steps.view(-1, *([1] * count.dim()))
    return (steps < clipped.unsqueeze(0)).to(amplitude.dtype).mul_(amplitude)


def pascal_counts(total_u, level):
    """Closed form the neuron reaches: ``clip(floor(sum_t u(t) + 1/2), 0, L)`` (integer)."""
    return torch.floor(total_u + 0.5).clamp_(0, level).to(torch.int32)


@dataclass
class LayerStats:
    """What one spiking layer did in one forward pass (totals over the batch)."""

    name: str
    num_steps_in: int        # T_in: length of the input spike train (1 for the analog layer)
    level: int               # L: steps emitted
    neurons: int             # neurons per image
    batch: int
    emitted_spikes: int      # phase-3 spikes, the only ones that leave the neuron
    excitatory_corrections: int
    inhibitory_corrections: int
    correct_steps: int       # phase-2 length, max(T_in, L) - 1
    counts: torch.Tensor | None = field(default=None, repr=False)  # per-neuron emitted counts

    @property
    def neuron_updates(self):
        """Updates the simulation performed: T_in + (max(T_in, L) - 1) + L per neuron."""
        return self.neurons * self.batch * (self.num_steps_in + self.correct_steps + self.level)

    def as_dict(self):
        return {"name": self.name, "num_steps_in": self.num_steps_in, "level": self.level,
                "neurons": self.neurons, "batch": self.batch,
                "emitted_spikes": self.emitted_spikes,
                "excitatory_corrections": self.excitatory_corrections,
                "inhibitory_corrections": self.inhibitory_corrections,
                "correct_steps": self.correct_steps, "neuron_updates": self.neuron_updates}


class PascalNeuron(nn.Module):
    """Three-phase PASCAL neuron (spec section 3.3) replacing one QCFS layer.

    Input ``x_seq``: currents ``(T_in, B, ...)``. Output: ``(L, B, ...)`` spikes of amplitude
    ``threshold / L`` whose count per neuron is ``clip(floor(sum_t x(t) / (threshold/L) +
    1/2), 0, L)``, exactly the QCFS level of the ANN, whatever the temporal order of the
    inputs. Phases: accumulate ``T_in`` steps, correct ``max(T_in, L) - 1`` steps, emit ``L``
    steps. The phase functions work on chunks of steps so long trains can be streamed.
    """

    def __init__(self, level, threshold, name=""):
        super().__init__()
        self.level = int(level)
        self.register_buffer("threshold", torch.as_tensor(threshold).detach().clone().reshape(()))
        self.name = name
        self._recorder = None  # a list while SpikingNetwork.forward_with_stats runs

    @property
    def amplitude(self):
        return self.threshold / self.level

    def forward(self, x_seq):  # (T_in, B, ...)
        check_seq(x_seq, f"PascalNeuron {self.name!r}", min_dim=2)
        amplitude = self.amplitude.to(x_seq.dtype)
        num_steps_in = x_seq.shape[0]
        v = torch.full_like(x_seq[0], 0.5)
        count = torch.zeros(v.shape, dtype=torch.int32, device=v.device)
        pascal_accumulate_(v, count, x_seq / amplitude)
        accumulated = count.clone() if self._recorder is not None else None
        correct_steps = max(num_steps_in, self.level) - 1
        pascal_correct_(v, count, correct_steps)
        spikes = pascal_emit(count, self.level, 0, self.level, amplitude)
        if self._recorder is not None:
            self._record(count, accumulated, num_steps_in, correct_steps)
        return spikes

    def _record(self, count, accumulated, num_steps_in, correct_steps):
        recorder = self._recorder
        emitted = count.clamp(0, self.level)
        delta = (count - accumulated).to(torch.int64)
        recorder["stats"].append(LayerStats(
            name=self.name, num_steps_in=num_steps_in, level=self.level,
            neurons=count[0].numel(), batch=count.shape[0],
            emitted_spikes=int(emitted.sum()),
            excitatory_corrections=int(delta.clamp(min=0).sum()),
            inhibitory_corrections=int((-delta).clamp(min=0).sum()),
            correct_steps=correct_steps,
            counts=emitted if recorder["keep_counts"] else None))

    def extra_repr(self):
        return f"level={self.level}, threshold={float(self.threshold):.6g}"


class SeqMap(nn.Module):
    """Apply a stateless, constant-free layer (pool, flatten) to every step of ``x_seq``."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x_seq):  # (T, B, ...)
        check_seq(x_seq, f"SeqMap({type(self.layer).__name__})", min_dim=2)
        y = self.layer(x_seq.flatten(0, 1))
        return y.unflatten(0, x_seq.shape[:2])


class SeqAffine(nn.Module):
    """A linear map applied to every step, plus its additive constant once per window.

    The ANN computes ``W x + b`` once; a spiking layer fed a T-step train computes
    ``sum_t (W s_t) + b`` when the constant ``b`` is added at step 0 only, which is exactly
    ``W (sum_t s_t) + b`` (spec section 3.4). Injecting the constant once needs no division by T
    and no knowledge of T at conversion time.
    """

    def __init__(self, layer, bias=None):
        super().__init__()
        self.layer = layer
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def forward(self, x_seq):  # (T, B, ...)
        check_seq(x_seq, f"SeqAffine({type(self.layer).__name__})", min_dim=2)
        y = self.layer(x_seq.flatten(0, 1)).unflatten(0, x_seq.shape[:2])
        if self.bias is not None:
            # bias is per output channel: dim 2 of (T, B, C, ...)
            y[0] += self.bias.view(-1, *([1] * (y.dim() - 3)))
        return y


class ChannelScale(nn.Module):
    """Multiply channel c (dim 1 of ``(N, C, ...)``) by ``scale[c]``: an eval-mode BN's slope."""

    def __init__(self, scale):
        super().__init__()
        self.register_buffer("scale", scale.detach().clone())

    def forward(self, x):
        return x * self.scale.view(-1, *([1] * (x.dim() - 2)))


class SpikingAdd(nn.Module):
    """Residual addition of two trains; different lengths are aligned by their window sums.

    Equal lengths add step by step. Otherwise the shortcut is summed over its steps and added
    to the branch's first step: the next PASCAL neuron depends only on the window sum, so
    this is exact (spec section 3.5). The result has the branch's length.
    """

    def forward(self, branch_seq, shortcut_seq):  # (T_branch, B, ...), (T_shortcut, B, ...)
        check_seq(branch_seq, "SpikingAdd branch", min_dim=2)
        check_seq(shortcut_seq, "SpikingAdd shortcut", min_dim=2)
        if branch_seq.shape[0] == shortcut_seq.shape[0]:
            return branch_seq + shortcut_seq
        out = branch_seq.clone()
        out[0] += shortcut_seq.sum(0)
        return out
