"""Bounded-memory execution of the step simulator: the network's operations, in forward
order, are cut into segments and each segment runs the batch in chunks of its own size.

Why: a layer fed a T-step train holds T activation maps per image where the ANN holds one,
so at large levels the batch must be split. Splitting the whole network by the longest train
(the simple rule) makes every layer run in small chunks, and every chunk re-reads the layer's
weights, which is what costs most where large weights meet short trains or small maps
(VGG-16's deep layers). Here each segment gets the largest chunk that fits, counting what the
segments around it hold at the same time.

Where the network may be cut: between two operations (in topological order) across which
exactly one value is alive (:func:`find_cuts`): the articulation points of the graph, e.g.
every layer boundary of a chain, every residual-block boundary of a ResNet, every
inception-block or dense-block boundary. The operations between two consecutive cuts form a
*unit*; a unit's

- *work*, per image: the largest total of the values alive while one of its operations runs
  (its inputs, the values kept for later operations and its output), every step of a train
  counted;
- *output*: the value alive at the cut after it, which is gathered for one chunk of the
  segment after it and held while the earlier segments run (a boundary *buffer*).

:func:`plan_segments` picks, among chunk sizes ``ceil(batch / 2**k)``, the segmentation that
re-reads the fewest weights while every segment's chunk x its largest work stays within the
limit and the buffers held around it within a sixteenth of it (cuts go where little is
held: after a pool, or after short trains). A graph without cuts is one unit: the whole
network runs in image chunks.

Speed is not monotonic in chunk size on a CPU: a chunk so large that its trains exceed the C
allocator's mmap threshold pays fresh page faults on every call (see benchmarks/README.md),
so the limit, not the largest possible chunk, is the right target.
"""
import math
from dataclasses import dataclass

import torch

__all__ = ["Segment", "UnitProfile", "find_cuts", "plan_segments", "run_segments"]

# Boundary buffers may hold at most this share of the limit, on top of a segment's work.
BUFFER_SHARE = 1 / 16
# What one extra chunk call of an operation costs, in weight elements read: the per-call
# dispatch and Python overhead (tens of microseconds) next to reading weights (~1 ns each).
MODULE_CALL_COST = 50_000


@dataclass
class UnitProfile:
    """Per image, in tensor elements (every step of a train counted)."""

    work: int     # the largest total alive while one operation of the unit runs
    output: int   # the value alive at the cut after the unit
    cost: int     # one chunk call: weight elements + MODULE_CALL_COST per operation


@dataclass
class Segment:
    """Operations ``start..stop-1`` run on chunks of ``size`` images; ``source`` is the index
    of the one value alive at ``start`` (None for the first segment, fed by the images) and
    ``source_steps`` the length of that value's train."""

    start: int
    stop: int
    size: int
    source: int | None = None
    source_steps: int = 1


def find_cuts(inputs, skip=()):
    """``{position: alive index}``: positions p (0 < p < n) in a topologically ordered list
    of n operations where exactly one value computed before p is used at or after p.

    Args:
        inputs: ``inputs[i]``: indices of the operations whose values operation i reads.
        skip: indices of values that never count as alive (constants, re-read anywhere).
    """
    n = len(inputs)
    last_use = {}
    for i, reads in enumerate(inputs):
        for j in reads:
            last_use[j] = max(last_use.get(j, -1), i)
    cuts, alive = {}, set()
    for p in range(1, n):
        alive.add(p - 1)
        alive = {j for j in alive if last_use.get(j, -1) >= p and j not in skip}
        if len(alive) == 1:
            cuts[p] = next(iter(alive))
    return cuts


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


def run_segments(x, segments, run_segment, k=None):
    """Run ``segments`` on images ``x`` ``(B, ...)``: segment k runs in its chunks, each fed
    by the earlier segments run on that chunk.

    ``run_segment(k, value, batch)`` runs segment k on ``value`` (the images for k = 0,
    else the train alive at its start, folded ``(steps * batch, ...)``) and returns its
    result: the train alive at the next segment's start, or the network's output ``(batch,
    ...)`` for the last one. Chunk results are gathered step by step in batch order.
    """
    k = len(segments) - 1 if k is None else k
    size = segments[k].size
    out_steps = segments[k + 1].source_steps if k + 1 < len(segments) else 1
    chunks = x.split(size) if x.shape[0] else (x,)
    if len(chunks) == 1:
        value = x if k == 0 else run_segments(x, segments, run_segment, k - 1)
        return run_segment(k, value, x.shape[0])
    out, start, parts = None, 0, []
    for chunk in chunks:
        value = chunk if k == 0 else run_segments(chunk, segments, run_segment, k - 1)
        batch = chunk.shape[0]
        h = run_segment(k, value, batch)
        del value
        if not torch.is_tensor(h):  # the network's outputs (a dict, tuple or list of them)
            parts.append(h)
            continue
        h = h.reshape(out_steps, batch, *h.shape[1:])
        if out is None:  # filled chunk by chunk: never a list of parts plus their join
            out = h.new_empty((out_steps, x.shape[0], *h.shape[2:]))
        out[:, start:start + batch] = h
        start += batch
        del h
    if parts:
        return _join(parts)
    return out.reshape(out_steps * x.shape[0], *out.shape[2:])


def _join(parts):
    """The chunks' outputs (each a dict, tuple or list of tensors) joined along the batch."""
    first = parts[0]
    if torch.is_tensor(first):
        return torch.cat(parts)
    if isinstance(first, dict):
        return type(first)((key, _join([p[key] for p in parts])) for key in first)
    joined = [_join(list(items)) for items in zip(*parts, strict=True)]
    return type(first)(*joined) if hasattr(first, "_fields") else type(first)(joined)
