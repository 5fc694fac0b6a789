"""The PASCAL spiking neuron and the time-major (T, B, ...) versions of the other layers.

Every spiking-side module takes and returns a time-major tensor ``x_seq`` of shape
``(T, B, ...)``; consecutive layers may have different T (each spiking layer emits
``level`` steps).

Two simulation modes share these modules (``PascalNeuron.sim``):

- ``"step"``: every time step of every layer is simulated; the neuron runs its three phases.
- ``"counts"``: a spike train travels as its window sum, a one-step tensor ``(1, B, ...)``
  holding ``count * amplitude``, so each linear layer runs once instead of T times; each
  neuron computes its emitted count from its summed input with the closed form
  :func:`pascal_counts`. The tensor carries, as the attribute ``nominal_steps``, the length
  the train has in the step simulator, so statistics still report the true ``T_in``.
"""
from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = [
    "SIM_MODES", "LayerStats", "PascalNeuron", "SeqAffine", "SeqMap", "SpikingAdd", "check_seq",
    "nominal_steps", "pascal_accumulate_", "pascal_correct_", "pascal_counts", "pascal_emit",
]

SIM_MODES = ("step", "counts")


def check_seq(x_seq, what, min_dim=3):
    """Raise if ``x_seq`` is not time-major ``(T, B, ...)``."""
    if not torch.is_tensor(x_seq) or x_seq.dim() < min_dim:
        shape = tuple(x_seq.shape) if torch.is_tensor(x_seq) else type(x_seq).__name__
        raise ValueError(f"{what} expects a time-major tensor (T, B, ...) with at least "
                         f"{min_dim} dims, got shape {shape}")


def nominal_steps(x_seq):
    """Length of the spike train ``x_seq`` stands for.

    Its own T in the step simulator; on the counts path, where a train travels as its
    one-step window sum, the length the step simulator would give it.
    """
    return getattr(x_seq, "nominal_steps", x_seq.shape[0])


def _carry_nominal_steps(y_seq, num_steps):
    """Tag a counts-path window sum with the length of the train it stands for."""
    if num_steps != y_seq.shape[0]:
        y_seq.nominal_steps = num_steps
    return y_seq


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
                "correct_steps": self.correct_steps, "neuron_updates": self.neuron_updates}


class PascalNeuron(nn.Module):
    """Three-phase PASCAL neuron (spec section 3.3) replacing one QCFS layer.

    Input ``x_seq``: currents ``(T_in, B, ...)``. Output: ``(L, B, ...)`` spikes of amplitude
    ``threshold / L`` whose count per neuron is ``clip(floor(sum_t x(t) / (threshold/L) +
    1/2), 0, L)``, exactly the QCFS level of the ANN, whatever the temporal order of the
    inputs. Phases: accumulate ``T_in`` steps, correct ``max(T_in, L) - 1`` steps, emit ``L``
    steps. The phase functions work on chunks of steps so long trains can be streamed.

    With ``sim="counts"`` the input is a window sum ``(1, B, ...)`` and the output the window
    sum of the emitted train, ``count * amplitude`` as ``(1, B, ...)``, with the count from
    :func:`pascal_counts`; the phases, and so the correction spikes, are not simulated.
    """

    def __init__(self, level, threshold, name="", sim="step"):
        super().__init__()
        if sim not in SIM_MODES:
            raise ValueError(f"sim must be one of {SIM_MODES}, got {sim!r}")
        self.level = int(level)
        self.register_buffer("threshold", torch.as_tensor(threshold).detach().clone().reshape(()))
        self.name = name
        self.sim = sim
        self._recorder = None  # a dict while SpikingNetwork.forward_with_stats runs

    @property
    def amplitude(self):
        return self.threshold / self.level

    def forward(self, x_seq):  # (T_in, B, ...)
        check_seq(x_seq, f"PascalNeuron {self.name!r}", min_dim=2)
        amplitude = self.amplitude.to(x_seq.dtype)
        if self.sim == "counts":
            return self._forward_counts(x_seq, amplitude)
        num_steps_in = x_seq.shape[0]
        v = torch.full_like(x_seq[0], 0.5)
        count = torch.zeros_like(v)  # integer values held in v's dtype: exact, no conversions
        pascal_accumulate_(v, count, x_seq, amplitude)
        accumulated = count.clone() if self._recorder is not None else None
        correct_steps = max(num_steps_in, self.level) - 1
        pascal_correct_(v, count, correct_steps)
        del v
        if self._recorder is not None:
            emitted = count.clamp(0, self.level).to(torch.int32)
            delta = (count - accumulated).to(torch.int64)
            self._record(emitted, num_steps_in, correct_steps,
                         int(delta.clamp(min=0).sum()), int((-delta).clamp(min=0).sum()))
        return pascal_emit(count, self.level, 0, self.level, amplitude)

    def _forward_counts(self, x_seq, amplitude):  # (1, B, ...) window sums
        num_steps_in = nominal_steps(x_seq)
        total = x_seq[0] if x_seq.shape[0] == 1 else x_seq.sum(0)
        # pascal_counts in place, kept in the input dtype: floor(total/amplitude + 1/2)
        count = torch.div(total, amplitude).add_(0.5).floor_().clamp_(0, self.level)
        if self._recorder is not None:
            self._record(count.to(torch.int32), num_steps_in,
                         max(num_steps_in, self.level) - 1, None, None)
        return _carry_nominal_steps(count.mul_(amplitude).unsqueeze(0), self.level)

    def _record(self, emitted, num_steps_in, correct_steps, excitatory, inhibitory):
        recorder = self._recorder
        recorder["stats"].append(LayerStats(
            name=self.name, num_steps_in=num_steps_in, level=self.level,
            neurons=emitted[0].numel(), batch=emitted.shape[0],
            emitted_spikes=int(emitted.sum(dtype=torch.int64)),
            excitatory_corrections=excitatory, inhibitory_corrections=inhibitory,
            correct_steps=correct_steps,
            counts=emitted if recorder["keep_counts"] else None))

    def extra_repr(self):
        return f"level={self.level}, threshold={float(self.threshold):.6g}, sim={self.sim}"


class SeqMap(nn.Module):
    """Apply a stateless, constant-free layer (pool, flatten) to every step of ``x_seq``."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x_seq):  # (T, B, ...)
        check_seq(x_seq, f"SeqMap({type(self.layer).__name__})", min_dim=2)
        y = self.layer(x_seq.flatten(0, 1))
        return _carry_nominal_steps(y.unflatten(0, x_seq.shape[:2]), nominal_steps(x_seq))


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
        return _carry_nominal_steps(y, nominal_steps(x_seq))


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
    this is exact (spec section 3.5). The result has the branch's length. On the counts path
    both are one-step window sums and simply add.
    """

    def forward(self, branch_seq, shortcut_seq):  # (T_branch, B, ...), (T_shortcut, B, ...)
        check_seq(branch_seq, "SpikingAdd branch", min_dim=2)
        check_seq(shortcut_seq, "SpikingAdd shortcut", min_dim=2)
        if branch_seq.shape[0] == shortcut_seq.shape[0]:
            out = branch_seq + shortcut_seq
        else:
            out = branch_seq.clone()
            out[0] += shortcut_seq.sum(0)
        return _carry_nominal_steps(out, nominal_steps(branch_seq))
