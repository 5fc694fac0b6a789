"""Bounded-memory execution of the step simulator: the network's forward chain is cut into
segments and each segment runs the batch in chunks of its own size.

Why: a layer fed a T-step train holds T activation maps per image where the ANN holds one,
so at large levels the batch must be split. Splitting the whole network by the longest train
(the simple rule) makes every layer run in small chunks, and every chunk re-reads the layer's
weights, which is what costs most where large weights meet short trains or small maps
(VGG-16's deep layers). Here each segment gets the largest chunk that fits, counting what the
segments around it hold at the same time:

- a unit's *work*: per image, the largest (inputs + output) of any module inside it, with
  every step of a train counted;
- a segment boundary's *buffer*: the output of the segment before it, gathered for one chunk
  of the segment after it, is held while the earlier segments run.

:func:`plan_segments` picks, among chunk sizes ``ceil(batch / 2**k)``, the segmentation that
re-reads the fewest weights while every segment's chunk x its largest work stays within the
limit and the buffers held around it within a sixteenth of it (cuts go where little is
held: after a pool, or after short trains).

Speed is not monotonic in chunk size on a CPU: a chunk so large that its trains exceed the C
allocator's mmap threshold pays fresh page faults on every call (see benchmarks/README.md),
so the limit, not the largest possible chunk, is the right target.
"""
import math
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from .spiking import PascalNeuron, nominal_steps

__all__ = ["UnitProfile", "forward_chain", "plan_segments", "profile_units",
           "run_segments"]

# Boundary buffers may hold at most this share of the limit, on top of a segment's work.
BUFFER_SHARE = 1 / 16
# What one extra chunk call of a module costs, in weight elements read: the per-call
# dispatch and Python overhead (tens of microseconds) next to reading weights (~1 ns each).
MODULE_CALL_COST = 50_000


def forward_chain(module):
    """Modules whose application in order is ``module``'s forward: ``nn.Sequential`` is
    unrolled, a module with a ``forward_chain()`` method (VGG, ResNet) gives its own list, and
    anything else is one unit."""
    if isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward:
        children = list(module)
    elif callable(getattr(module, "forward_chain", None)):
        children = module.forward_chain()
    else:
        return [module]
    return [unit for child in children for unit in forward_chain(child)]


@dataclass
class UnitProfile:
    """Per image, in tensor elements (every step of a train counted)."""

    work: int     # the largest (inputs + output) of any module call inside the unit
    output: int   # the unit's output train
    cost: int     # one chunk call: weight elements + MODULE_CALL_COST per module


def profile_units(body, units, x):
    """``([UnitProfile, ...], ann_work)`` from a one-image probe of ``body`` on ``x[:1]``.

    The probe runs the counts path (every train one step, tagged with the length it stands
    for), so it costs about one ANN image. ``ann_work`` is the largest (inputs + output) of
    any module with every train one step: what the ANN holds per image at its largest layer.
    Hooks and stats recorders already on the modules are suspended during the probe.
    """
    work, output, ann_work = {}, {}, [1]

    def record(module, args, out):
        tensors = [t for t in (*args, out) if torch.is_tensor(t) and t.dim() >= 2]
        per_step = [t[0, 0].numel() for t in tensors]  # probe: T = B = 1
        total = sum(nominal_steps(t) * n for t, n in zip(tensors, per_step))
        work[module] = max(work.get(module, 0), total)
        ann_work[0] = max(ann_work[0], sum(per_step))
        if torch.is_tensor(out) and out.dim() >= 2:
            output[module] = nominal_steps(out) * out[0, 0].numel()

    with _probing(body, record):
        body(x[:1].unsqueeze(0))
    profiles = []
    for unit in units:
        modules = list(unit.modules())
        weights = sum(p.numel() for p in unit.parameters()) + sum(
            b.numel() for b in unit.buffers())
        calls = sum(1 for m in modules if not m._modules)
        profiles.append(UnitProfile(
            work=max(max((work.get(m, 1) for m in modules), default=1), 1),
            output=output.get(unit, 1), cost=weights + MODULE_CALL_COST * calls))
    return profiles, ann_work[0]


@contextmanager
def _probing(body, hook):
    saved = []
    neurons = [m for m in body.modules() if isinstance(m, PascalNeuron)]
    neuron_state = [(m, m.sim, m._recorder) for m in neurons]
    handles = []
    try:
        for m in body.modules():
            saved.append((m, m._forward_hooks, m._forward_pre_hooks))
            m._forward_hooks, m._forward_pre_hooks = OrderedDict(), OrderedDict()
            handles.append(m.register_forward_hook(hook))
        for m in neurons:
            m.sim, m._recorder = "counts", None
        yield
    finally:
        for handle in handles:
            handle.remove()
        for m, forward_hooks, pre_hooks in saved:
            m._forward_hooks, m._forward_pre_hooks = forward_hooks, pre_hooks
        for m, sim, recorder in neuron_state:
            m.sim, m._recorder = sim, recorder


def plan_segments(profiles, batch, limit):
    """``[(first unit index, chunk size), ...]`` in forward order, chunk sizes increasing.

    Minimises the weights re-read (each unit's ``cost`` times its number of chunk calls)
    subject to: a segment's chunk x its largest unit work is at most ``limit`` elements, and
    the buffers held while it runs -- for every later segment, its chunk x the output of the
    segment before it, gathered there -- at most ``BUFFER_SHARE * limit``. When no plan fits
    (a single image already exceeds the limit), every unit runs image by image.
    """
    n = len(profiles)
    sizes = sorted({math.ceil(batch / 2 ** k) for k in range(max(batch, 1).bit_length() + 1)})
    prefix_cost = [0]
    for p in profiles:
        prefix_cost.append(prefix_cost[-1] + p.cost)

    work_table = [[0] * (n + 1) for _ in range(n)]  # largest work of units first..stop-1
    for first in range(n):
        for stop in range(first + 1, n + 1):
            work_table[first][stop] = max(work_table[first][stop - 1], profiles[stop - 1].work)

    def segment_work(first, stop):
        return work_table[first][stop]

    # frontier[(start, size)]: Pareto-optimal (held, cost, plan) for "segments from `start`
    # to the end are fixed, the first of them runs chunks of `size`, and `held` elements of
    # buffers are held around it"
    frontier = {}

    def offer(key, held, cost, plan):
        entries = frontier.setdefault(key, [])
        if any(h <= held and c <= cost for h, c, _ in entries):
            return
        entries[:] = [e for e in entries if not (held <= e[0] and cost <= e[1])]
        entries.append((held, cost, plan))

    for start in range(n):
        for size in sizes:
            if size * segment_work(start, n) <= limit:
                calls = math.ceil(batch / size)
                offer((start, size), 0, calls * (prefix_cost[n] - prefix_cost[start]),
                      ((start, size),))
    for start in range(n - 1, 0, -1):  # extend each partial plan by an earlier segment
        for size in sizes:
            for held, cost, plan in frontier.get((start, size), []):
                buffer_held = held + size * profiles[start - 1].output
                if buffer_held > limit * BUFFER_SHARE:
                    continue
                for first in range(start):
                    work = segment_work(first, start)
                    for smaller in sizes:
                        if smaller >= size or smaller * work > limit:
                            continue
                        calls = math.ceil(batch / smaller)
                        offer((first, smaller), buffer_held,
                              cost + calls * (prefix_cost[start] - prefix_cost[first]),
                              ((first, smaller),) + plan)
    complete = [(cost, len(plan), held, plan) for (start, _), entries in frontier.items()
                if start == 0 for held, cost, plan in entries]
    if not complete:
        return [(0, 1)]
    return list(min(complete, key=lambda c: c[:3])[3])


def run_segments(x, segments, k=None):
    """Run ``segments`` (``[(units, chunk size), ...]``) on images ``x`` ``(B, ...)``:
    segment k runs in its chunks, each fed by the earlier segments run on that chunk.
    Returns the last segment's output train ``(T, B, ...)``."""
    k = len(segments) - 1 if k is None else k
    units, size = segments[k]
    chunks = x.split(size)
    out, attributes, start = None, [], 0
    for chunk in chunks:
        h = chunk.unsqueeze(0) if k == 0 else run_segments(chunk, segments, k - 1)
        for unit in units:
            h = unit(h)
        if len(chunks) == 1:
            return h
        if out is None:  # filled chunk by chunk: never a list of parts plus their join
            out = h.new_empty((h.shape[0], x.shape[0], *h.shape[2:]))
        out[:, start:start + h.shape[1]] = h
        start += h.shape[1]
        attributes.append(dict(getattr(h, "__dict__", {})))
        del h
    _join_attributes(out, attributes)
    return out


def _join_attributes(out, parts):
    """Attributes of the joined chunks (``nominal_steps``, tags set by hooks): values with a
    ``cat`` classmethod are concatenated, equal plain values kept, others dropped."""
    for attr, value in parts[0].items():
        values = [p.get(attr) for p in parts]
        if hasattr(type(value), "cat"):
            setattr(out, attr, type(value).cat(values))
        elif isinstance(value, (int, float, str, tuple)) and all(v == value for v in values):
            setattr(out, attr, value)
