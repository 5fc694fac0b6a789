"""Operation counts of a converted network: :class:`CostMeter`, from the network's graph and
the emitted spike counts (the counting rules are in :mod:`snn_cost`, which builds the report;
the reach of one spike is :func:`models.reach.spike_reach`).
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.reach import spike_reach

__all__ = ["CostMeter"]


@dataclass
class _Weighted:
    name: str
    source: str | None  # the (first) spike source feeding it, None when fed densely
    analog: bool = True  # fed densely by the image (not by a sum or another layer's output)
    num_steps_in: int = 1  # steps of its input train
    operations: int = 0  # ACs (spike-fed) or MACs (dense), whole run
    ann_macs: int = 0    # the ANN layer's MACs on the same images
    images: int = 0


@dataclass
class _Neurons:
    name: str
    level: int
    num_steps_in: int
    neurons: int
    images: int = 0
    emitted_spikes: int = 0
    neuron_updates: int = 0
    neuron_operations: int = 0


@dataclass
class _Pooled:
    """A max pool of spike bursts: a spike source of its own (its output spikes)."""

    name: str
    images: int = 0
    spikes: int = 0


class _Spikes:
    """How a value is made of spikes: ``parts[source] = ids`` (per-image tensor shaped like
    the value before ``pools``, holding the flat index of the source element each element
    carries, -1 for elements from other sources), then average ``pools`` (module objects)
    and, if ``flattened``, a flatten."""

    __slots__ = ("parts", "pools", "flattened")

    def __init__(self, parts, pools=(), flattened=False):
        self.parts, self.pools, self.flattened = parts, tuple(pools), flattened


class CostMeter:
    """Count the operations of a converted network from its graph and the emitted spikes.

    Static part (:class:`models.SpikingNetwork` ops, once per image shape with a one-image
    probe for shapes): for every weighted layer, which spike sources its input is made of --
    a spiking layer's output, or a max pool of bursts (spikes that pass a max pool are
    counted after it, the pool's output being their source) -- through element
    rearrangements (concatenation, chunk/split, flatten/view/transpose, dropout,
    multiplication by constants) followed by average pools and a flatten, which are folded
    into the layer's reach (:func:`spike_reach`). A layer whose input is anything else (the
    image, a sum of trains, another layer's output) is fed densely: MACs on every step of
    its input. Dynamic part (:meth:`add`): ACs from the per-neuron emitted counts that
    ``forward_with_stats(x, keep_counts=True)`` returns, so both simulation paths give the
    same counts. Additions: a spike reaching a residual addition costs one addition.

        meter = CostMeter(snn)
        logits, stats = snn.forward_with_stats(x, keep_counts=True)
        meter.add(x, stats)
        report = build_report(meter, timing)
    """

    def __init__(self, snn):
        self.snn = snn
        self.weighted = {}   # name -> _Weighted, in forward order
        self.neurons = {}    # name -> _Neurons, in forward order
        self.pooled = {}     # name -> _Pooled (max pools of bursts), in forward order
        self.additions = {}  # spike source -> shortcut additions its spikes caused
        self.feeds = {}      # spike source -> names of the weighted layers it feeds
        self.caused = {}     # spike source -> {weighted name: [operations, ann macs share]}
        self._plans = {}     # per-image input shape -> static analysis
        self._reach_cache = {}

    def add_layer_stats(self, stats):
        """Add one batch's ``[LayerStats, ...]`` (spikes and neuron updates per layer)."""
        for s in stats:
            entry = self.neurons.get(s.name)
            if entry is None:
                entry = self.neurons[s.name] = _Neurons(s.name, s.level, s.num_steps_in,
                                                        s.neurons)
            entry.images += s.batch
            entry.emitted_spikes += s.emitted_spikes
            entry.neuron_updates += s.neuron_updates
            entry.neuron_operations += s.neuron_operations

    def add(self, x, stats):
        """Count one batch: ``x`` the images it ran on, ``stats`` the ``LayerStats`` of
        ``snn.forward_with_stats(x, keep_counts=True)``."""
        if any(s.counts is None for s in stats):
            raise ValueError("CostMeter.add needs the per-neuron spike counts: run "
                             "snn.forward_with_stats(x, keep_counts=True)")
        self.add_layer_stats(stats)
        plan = self._plan(x)
        snn, batch = self.snn, x.shape[0]
        by_name = {s.name: s.counts for s in stats}
        counts = {}  # op index -> float64 counts of a burst value (B, ...)

        def burst_counts(index):
            if index not in counts:
                op = snn.ops[index]
                if op.role == "neuron":
                    counts[index] = by_name[op.name].to(torch.float64)
                elif op.role in ("identity", "folded"):
                    counts[index] = burst_counts(op.inputs[0])
                else:  # cat, max pool, channel chunks of bursts: the same operation on counts
                    env = dict(plan["meta"])
                    env.update({i: burst_counts(i) for i in op.inputs if i not in env
                                and snn.ops[i].num_steps is not None})
                    counts[index] = snn.apply(op, env)
            return counts[index]

        def operations(layer, spikes, shares=None):
            total = 0
            for source, ids in spikes.parts.items():
                source_counts = burst_counts(source).flatten(1)
                flat = ids.flatten()
                routed = source_counts[:, flat.clamp(min=0)] * (flat >= 0)
                routed = routed.reshape(batch, *ids.shape[1:])
                chain = spikes.pools + ((nn.Flatten(),) if spikes.flattened else ())
                reach = self._reach(layer, chain, tuple(ids.shape[1:]))
                value = int((routed.to(torch.int64) * reach.to(routed.device)).sum())
                total += value
                if shares is not None:
                    shares[snn.ops[source].name] = value
            return total

        for op in snn.ops:
            if op.role == "maxpool" and op.kind == "burst":
                entry = self.pooled.setdefault(op.name, _Pooled(op.name))
                entry.images += batch
                entry.spikes += int(burst_counts(op.index).sum())
            elif op.role == "add":
                for index in op.inputs:
                    spikes = plan["spikes"].get(index)
                    if isinstance(spikes, _Spikes):
                        shares = {}
                        operations(None, spikes, shares)
                        for source, value in shares.items():
                            self.additions[source] = self.additions.get(source, 0) + value
            elif op.role == "weighted":
                layer = snn.layers[op.target].layer
                source_index = op.inputs[0]
                shape = plan["shapes"][source_index]
                macs = self._reach(layer, (), shape).sum()
                spikes = plan["spikes"].get(source_index)
                entry = self.weighted.get(op.name)
                if entry is None:
                    first = None if spikes is None else snn.ops[next(iter(spikes.parts))].name
                    entry = self.weighted[op.name] = _Weighted(
                        op.name, first, analog=snn.ops[source_index].kind == "analog",
                        num_steps_in=snn.ops[source_index].num_steps)
                entry.ann_macs += batch * int(macs)
                entry.images += batch
                if spikes is None:
                    # dense currents: every element of every step is multiplied by the weights
                    steps = snn.ops[source_index].num_steps
                    entry.operations += steps * batch * int(macs)
                    continue
                shares = {}
                entry.operations += operations(layer, spikes, shares)
                elements = {snn.ops[s].name: int((ids >= 0).sum())
                            for s, ids in spikes.parts.items()}
                for source, value in shares.items():
                    feeds = self.feeds.setdefault(source, [])
                    if op.name not in feeds:
                        feeds.append(op.name)
                    caused = self.caused.setdefault(source, {}).setdefault(op.name, [0, 0.0])
                    caused[0] += value
                    # the ANN's MACs of a layer fed by several sources, split by their share
                    # of its input elements
                    caused[1] += batch * int(macs) * elements[source] / sum(elements.values())

    # static analysis, once per image shape
    def _plan(self, x):
        key = tuple(x.shape[1:])
        if key not in self._plans:
            snn = self.snn
            values = snn.probe(x)
            shapes, meta = {}, {}
            for index, value in values.items():
                if torch.is_tensor(value):
                    shapes[index] = tuple(value.shape[1:])
                if snn.ops[index].role == "meta":
                    meta[index] = value
            spikes = {}
            for op in snn.ops:
                spikes[op.index] = _spikes_of(snn, op, spikes, values, meta)
            self._plans[key] = {"shapes": shapes, "meta": meta, "spikes": spikes}
        return self._plans[key]

    def _reach(self, layer, chain, shape):
        key = (id(layer), tuple(_chain_key(m) for m in chain), shape)
        if key not in self._reach_cache:
            self._reach_cache[key] = spike_reach(layer, chain, shape)
        return self._reach_cache[key]


def _chain_key(module):
    return (type(module).__name__, repr(module))


def _identity_ids(value):
    shape = value.shape[1:]
    return torch.arange(int(torch.Size(shape).numel()), dtype=torch.int64).reshape(1, *shape)


def _spikes_of(snn, op, spikes, values, meta):
    """The :class:`_Spikes` of ``op``'s value (a list of them for a tuple), or None."""
    role = op.role
    if role == "neuron" or (role == "maxpool" and op.kind == "burst"):
        return _Spikes({op.index: _identity_ids(values[op.index])})
    inputs = [spikes.get(i) for i in op.inputs]
    if role == "identity" and op.call == "method":  # contiguous, clone: a copy, laid out anew
        role = "route"
    if role in ("identity", "folded", "scale"):
        tensor_inputs = [s for i, s in zip(op.inputs, inputs) if snn.ops[i].num_steps is not None]
        return tensor_inputs[0] if role != "scale" or len(tensor_inputs) == 1 else None
    if role == "route" and isinstance(inputs[0], list):  # a part of a chunk/split
        return inputs[0][op.args[1]] if isinstance(op.args[1], int) else None
    if role in ("route", "cat"):
        tensor_inputs = [i for i in op.inputs if snn.ops[i].num_steps is not None]
        reps = [spikes.get(i) for i in tensor_inputs]
        if any(not isinstance(r, _Spikes) for r in reps):
            return None
        if any(r.pools for r in reps):
            if role == "route" and len(reps) == 1 and not op.tuple_valued:
                out = values[op.index]
                if torch.is_tensor(out) and out.dim() == 2:  # flattened to (N, features)
                    return _Spikes(reps[0].parts, reps[0].pools, True)
            return None  # rearranged after an average pool: not tracked, counted densely
        sources = {s for r in reps for s in r.parts}
        parts = {}
        for source in sorted(sources):
            env = dict(meta)
            for index, r in zip(tensor_inputs, reps):
                ids = r.parts.get(source)
                env[index] = ids if ids is not None else torch.full(
                    (1, *values[index].shape[1:]), -1, dtype=torch.int64)
            result = snn.apply(op, env)
            # index maps are fresh tensors: a rearrangement's result is made contiguous, so
            # a view after a transpose (and the .contiguous() between them) stays valid
            parts[source] = (result.contiguous() if torch.is_tensor(result)
                             else type(result)(r.contiguous() for r in result))
        if op.tuple_valued:
            count = len(parts[next(iter(parts))])
            return [_Spikes({s: parts[s][k] for s in parts}) for k in range(count)]
        return _Spikes(parts)
    if role == "pool":
        rep = inputs[0]
        if not isinstance(rep, _Spikes) or rep.flattened:
            return None
        pool, flatten = _pool_module(snn, op, values)
        if pool is None:
            return None
        return _Spikes(rep.parts, rep.pools + (pool,), flatten)
    return None


_FUNCTIONAL_POOLS = {
    F.avg_pool1d: nn.AvgPool1d, F.avg_pool2d: nn.AvgPool2d, F.avg_pool3d: nn.AvgPool3d,
    F.adaptive_avg_pool1d: nn.AdaptiveAvgPool1d, F.adaptive_avg_pool2d: nn.AdaptiveAvgPool2d,
    F.adaptive_avg_pool3d: nn.AdaptiveAvgPool3d,
}


def _pool_module(snn, op, values):
    """``(pool module, flattens)`` equivalent to a pooling op, for :func:`spike_reach`.

    Functional pools are recognised by the function called (the module classes take the same
    arguments, after the input, with the same names), their arguments read by name however
    the call spelled them; a mean over every spatial dimension is an adaptive pool to size
    1."""
    if op.call == "module":
        return snn.layers[op.target], False
    value = values[op.inputs[0]]
    spatial = value.dim() - 2
    bound = dict(op.bound)  # the arguments by name, however the call spelled them
    if "dim" not in bound:  # a functional pool: the module with the same arguments
        del bound["input"]
        if bound.get("stride") == []:  # the schema's default: the kernel size
            bound["stride"] = None
        return _FUNCTIONAL_POOLS[op.target](**bound), False
    # mean over dims: the whole spatial extent, as an adaptive pool to size 1
    dims = bound["dim"] if isinstance(bound["dim"], (list, tuple)) else (bound["dim"],)
    dims = {d % value.dim() for d in dims}
    keepdim = bound.get("keepdim", False)
    if dims != set(range(2, value.dim())) or spatial not in (1, 2, 3):
        return None, False
    pool = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)[spatial - 1](1)
    return pool, not keepdim
