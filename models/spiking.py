"""The PASCAL spiking neuron: pure step functions on explicit state, the closed form the
neuron reaches, and the per-layer statistics of a run.

A spike train of T steps is a time-major tensor ``x_seq`` of shape ``(T, B, ...)``;
consecutive layers may have different T (each spiking layer emits ``level`` steps). The
network around the neurons (:mod:`models.convert`) keeps trains folded as ``(T*B, ...)``
and passes each train's length explicitly.

Two simulation modes exist, chosen when a network is converted:

- ``"step"``: every time step is simulated; the neuron runs its three phases
  (:meth:`PascalNeuron.simulate`).
- ``"counts"``: a train travels as its window sum, one step ``(B, ...)``, so each linear
  layer runs once instead of T times; each neuron computes its emitted count from its summed
  input with the closed form :func:`pascal_counts` (:meth:`PascalNeuron.window_counts`).
"""
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from errors import ModelError

__all__ = [
    "SIM_MODES", "LayerStats", "PascalNeuron", "check_seq", "neuron_operations",
    "pascal_accumulate_", "pascal_correct_", "pascal_counts", "pascal_emit",
]

SIM_MODES = ("step", "counts")


def check_seq(x_seq, what, min_dim=3):
    """Raise if ``x_seq`` is not time-major ``(T, B, ...)``."""
    if not torch.is_tensor(x_seq) or x_seq.dim() < min_dim:
        shape = tuple(x_seq.shape) if torch.is_tensor(x_seq) else type(x_seq).__name__
        raise ValueError(f"{what} expects a time-major tensor (T, B, ...) with at least "
                         f"{min_dim} dims, got shape {shape}")


# --- the neuron as pure, in-place step functions on explicit state -------------------------
# Units: membrane potential v and input currents u are measured in spike amplitudes
# (threshold / level), so "v >= 1" is the firing test and the initial potential is 1/2.
# Spike counts are integers: an int tensor, or (as PascalNeuron keeps them, to avoid a dtype
# conversion per step) a float tensor of v's dtype holding small integers, which is exact.
# No floating-point tolerance is involved.

def _add_count_(count, delta):
    count.add_(delta if delta.dtype == count.dtype else delta.to(count.dtype))


def pascal_accumulate_(v, count, x_seq, amplitude=None):
    """Phase 1 on a chunk of input steps: ``v += u(t)``; fire (v -= 1, count += 1) if v >= 1.

    Args:
        v: membrane potential, shape ``(B, ...)``, updated in place.
        count: spike count (integer values), same shape, updated in place.
        x_seq: input ``(T_chunk, B, ...)``: currents in units of the spike amplitude, or,
            when ``amplitude`` is given, in the layer's own units, ``u(t) = x(t) / amplitude``
            (divided on the fly, so no scaled copy of the train is made).
        amplitude: optional 0-dim tensor, the spike amplitude ``threshold / level``.
    """
    fired = torch.empty_like(v)
    for x in x_seq:
        if amplitude is None:
            v.add_(x)
        else:
            v.addcdiv_(x, amplitude)  # v + x / amplitude, rounded as the two separate ops
        torch.ge(v, 1, out=fired)
        v.sub_(fired)
        _add_count_(count, fired)


def pascal_correct_(v, count, num_steps):
    """Phase 2, ``num_steps`` steps: late excitatory spike if v >= 1, inhibitory if v < 0.

    An excitatory correction does v -= 1, count += 1; an inhibitory one v += 1, count -= 1
    (it cancels an earlier spike). Once v is in [0, 1) nothing changes, so a neuron makes
    corrections of one kind only, ``k = clamp(floor(v), -num_steps, num_steps)`` of them
    (k > 0 excitatory, k < 0 inhibitory), and ``v -= k``, ``count += k`` are computed in one
    pass instead of ``num_steps``. The results are bit-identical to the step-by-step loop:
    subtracting an integer from a float of magnitude >= 1 that stays on the same side of 0 is
    exact (for |v| below 2**mantissa_bits), and the only rounding, in the last inhibitory
    step ``v + 1`` from v in (-1, 0), is the same single operation. That rounding can give
    exactly 1.0 (v within half an ulp of 1 below 0), after which the loop makes one
    excitatory correction at the next step, if one is left; that is reproduced too.
    """
    if num_steps <= 0:
        return
    corrections = torch.floor(v).clamp_(-num_steps, num_steps)
    v.sub_(corrections)
    _add_count_(count, corrections)
    # The rounding case lands on exactly 1.0 (never above); rare, so test cheaply first.
    rounded_up = v == 1
    if rounded_up.any():
        rounded_up &= corrections < 0  # from an inhibitory run ...
        rounded_up &= corrections > -num_steps  # ... that left a step over
        late = rounded_up.to(v.dtype)
        v.sub_(late)
        _add_count_(count, late)


def pascal_emit(count, level, start, stop, amplitude):
    """Phase 3, steps ``start..stop-1`` of ``level``: spike at step t iff t < clip(count, 0, L).

    Returns ``(stop - start, B, ...)`` spikes of height ``amplitude`` (front-loaded burst).
    Since 0 <= t < L, ``t < clip(count, 0, L)`` is simply ``t < count``: one broadcast
    comparison written straight into the float output, then one in-place scaling.
    """
    if not 0 <= start <= stop <= level:
        raise ValueError(f"emit steps {start}..{stop} must lie within 0..{level}")
    steps = torch.arange(start, stop, dtype=count.dtype, device=count.device)
    # each step laid out like count (NCHW or channels_last), steps outermost
    spikes = torch.empty_strided((stop - start, *count.shape), (count.numel(), *count.stride()),
                                 dtype=amplitude.dtype, device=count.device)
    torch.lt(steps.view(-1, *([1] * count.dim())), count, out=spikes)
    return spikes.mul_(amplitude)


def pascal_counts(total_u, level):
    """Closed form the neuron reaches: ``clip(floor(sum_t u(t) + 1/2), 0, L)`` (integer)."""
    return torch.floor(total_u + 0.5).clamp_(0, level).to(torch.int32)


def neuron_operations(num_steps_in, level):
    """Operations of one PASCAL neuron over a window, in the unit system of T_eff's (5L - 2):
    2 per step of the accumulate phase (add the input, compare), 2 per step of the correction
    phase (compare, correct), 1 per step of the emit phase (compare with the count):

        2 T_in + 2 (max(T_in, L) - 1) + L       (= 5L - 2 when T_in = L)

    A plain integrate-and-fire neuron does L of the same operations in L steps."""
    return 2 * num_steps_in + 2 * (max(num_steps_in, level) - 1) + level


@dataclass
class LayerStats:
    """What one spiking layer did in one forward pass (totals over the batch).

    On the counts path (``sim="counts"``) the correction spikes are not simulated:
    ``excitatory_corrections`` and ``inhibitory_corrections`` are None; the emitted spikes,
    ``num_steps_in`` and the step counts are those of the step simulator.
    """

    name: str
    num_steps_in: int        # T_in: length of the input spike train (1 for the analog layer)
    level: int               # L: steps emitted
    neurons: int             # neurons per image
    batch: int
    emitted_spikes: int      # phase-3 spikes, the only ones that leave the neuron
    excitatory_corrections: int | None
    inhibitory_corrections: int | None
    correct_steps: int       # phase-2 length, max(T_in, L) - 1
    counts: torch.Tensor | None = field(default=None, repr=False)  # per-neuron emitted counts

    @property
    def neuron_updates(self):
        """Updates the step simulation performs: T_in + (max(T_in, L) - 1) + L per neuron."""
        return self.neurons * self.batch * (self.num_steps_in + self.correct_steps + self.level)

    @property
    def neuron_operations(self):
        """Operations in the unit system of T_eff, :func:`neuron_operations` per neuron."""
        return self.neurons * self.batch * neuron_operations(self.num_steps_in, self.level)

    @classmethod
    def concat(cls, parts):
        """One entry for the whole batch from the entries of its consecutive chunks."""
        first = parts[0]
        if len(parts) == 1:
            return first

        def total(attr):
            values = [getattr(p, attr) for p in parts]
            return None if values[0] is None else sum(values)

        counts = None if first.counts is None else torch.cat([p.counts for p in parts])
        return cls(name=first.name, num_steps_in=first.num_steps_in, level=first.level,
                   neurons=first.neurons, batch=total("batch"),
                   emitted_spikes=total("emitted_spikes"),
                   excitatory_corrections=total("excitatory_corrections"),
                   inhibitory_corrections=total("inhibitory_corrections"),
                   correct_steps=first.correct_steps, counts=counts)

    def as_dict(self):
        return {"name": self.name, "num_steps_in": self.num_steps_in, "level": self.level,
                "neurons": self.neurons, "batch": self.batch,
                "emitted_spikes": self.emitted_spikes,
                "excitatory_corrections": self.excitatory_corrections,
                "inhibitory_corrections": self.inhibitory_corrections,
                "correct_steps": self.correct_steps, "neuron_updates": self.neuron_updates,
                "neuron_operations": self.neuron_operations}


class PascalNeuron(nn.Module):
    """Three-phase PASCAL neuron replacing one QCFS layer.

    Input ``x_seq``: currents ``(T_in, B, ...)``. Output: ``(L, B, ...)`` spikes of amplitude
    ``threshold / L`` whose count per neuron is ``clip(floor(sum_t x(t) / (threshold/L) +
    1/2), 0, L)``, exactly the QCFS level of the ANN, whatever the temporal order of the
    inputs. Phases: accumulate ``T_in`` steps, correct ``max(T_in, L) - 1`` steps, emit ``L``
    steps. The phase functions work on chunks of steps so long trains can be streamed.

    ``forward(x_seq)`` is :meth:`simulate` without statistics. :meth:`window_counts` is the
    counts path: window sum in, window sum of the emitted train out, phases not simulated.
    """

    def __init__(self, level, threshold, name=""):
        super().__init__()
        self.level = int(level)
        self.register_buffer("threshold", torch.as_tensor(threshold).detach().clone().reshape(()))
        self.name = name

    @property
    def amplitude(self):
        return self.threshold / self.level

    def forward(self, x_seq):  # (T_in, B, ...)
        return self.simulate(x_seq)[0]

    def simulate(self, x_seq, record=False, keep_counts=False, total=None):
        """Step simulation: ``(spikes (L, B, ...), LayerStats or None)``.

        With ``record`` the statistics of this call are returned (``counts``: the per-neuron
        emitted counts ``(B, ...)`` when ``keep_counts``); otherwise None.

        ``total`` (optional, ``(B, ...)``): the window sum of the input as the ANN computes it.
        The per-step currents sum to it up to rounding; when it is given, the potential at
        the end of the accumulate phase is set from it, ``v = (total / amplitude + 1/2) -
        count``, rounded exactly as the ANN rounds its pre-activation, so the count the
        correction phase reaches is the ANN's level even where the per-step sum lies an ulp
        on the other side of a level boundary.
        """
        check_seq(x_seq, f"PascalNeuron {self.name!r}", min_dim=2)
        amplitude = self.amplitude.to(x_seq.dtype)
        num_steps_in = x_seq.shape[0]
        v = torch.full_like(x_seq[0], 0.5)
        count = torch.zeros_like(v)  # integer values held in v's dtype: exact, no conversions
        pascal_accumulate_(v, count, x_seq, amplitude)
        if total is not None:
            v = torch.div(total, amplitude).add_(0.5).sub_(count)
        accumulated = count.clone() if record else None
        correct_steps = max(num_steps_in, self.level) - 1
        pascal_correct_(v, count, correct_steps)
        undefined = v.isnan()  # a NaN in the window: the ANN's QCFS gives NaN there
        del v
        stats = None
        if record:
            self._check_defined(undefined)
            emitted = count.clamp(0, self.level).to(torch.int32)
            delta = (count - accumulated).to(torch.int64)
            stats = self._stats(emitted, num_steps_in, keep_counts,
                                int(delta.clamp(min=0).sum()), int((-delta).clamp(min=0).sum()))
        spikes = pascal_emit(count, self.level, 0, self.level, amplitude)
        if undefined.any():
            spikes.masked_fill_(undefined, float("nan"))
        return spikes, stats

    def window_counts(self, total, num_steps_in, record=False, keep_counts=False):
        """Counts path: ``(count * amplitude (B, ...), LayerStats or None)``.

        ``total`` is the window sum of the input currents ``(B, ...)``; ``num_steps_in`` the
        length of the train it stands for in the step simulator (reported in the
        statistics, whose correction spikes are None: they are not simulated).
        """
        amplitude = self.amplitude.to(total.dtype)
        # pascal_counts in place, kept in the input dtype: floor(total/amplitude + 1/2)
        count = torch.div(total, amplitude).add_(0.5).floor_().clamp_(0, self.level)
        stats = None
        if record:  # a NaN total stays NaN in the output, as in the ANN
            self._check_defined(count.isnan())
            stats = self._stats(count.to(torch.int32), num_steps_in, keep_counts, None, None)
        return count.mul_(amplitude), stats

    def _check_defined(self, undefined):
        """Refuse to report counts for neurons whose input window holds a NaN (their output
        is NaN, as the ANN's; a count would be an arbitrary integer)."""
        if undefined.any():
            raise ModelError(
                f"spiking layer {self.name!r}: {int(undefined.sum())} neuron(s) received a NaN "
                "input, so their spike counts are undefined (the output is NaN, as in the "
                "ANN); check the input for NaN values")

    def _stats(self, emitted, num_steps_in, keep_counts, excitatory, inhibitory):
        return LayerStats(
            name=self.name, num_steps_in=num_steps_in, level=self.level,
            neurons=math.prod(emitted.shape[1:]), batch=emitted.shape[0],
            emitted_spikes=int(emitted.sum(dtype=torch.int64)),
            excitatory_corrections=excitatory, inhibitory_corrections=inhibitory,
            correct_steps=max(num_steps_in, self.level) - 1,
            counts=emitted if keep_counts else None)

    def extra_repr(self):
        return f"level={self.level}, threshold={float(self.threshold):.6g}"
