"""Operation counts of a converted network: :class:`CostMeter`, from the network's graph and
the emitted spike counts (the counting rules are in :mod:`snn_cost`, which builds the report;
the reach of one spike is :func:`models.reach.spike_reach`, the nonzero-weight connections of
one input element :func:`models.reach.connections`).
"""
from dataclasses import dataclass

import torch
from torch import nn

from models.reach import connections, spike_reach
from models.roles import Kind, Spikes

__all__ = ["CostMeter"]


@dataclass
class _Weighted:
    name: str
    source: str | None  # the (first) spike source feeding it, None when fed densely
    analog: bool = True  # fed densely by the image (not by a sum or another layer's output)
    num_steps_in: int = 1  # steps of its input train
    weights: int = 0     # weight elements of the layer
    nonzero_weights: int = 0
    input_elements: int = 0  # elements of one input step, one image
    operations: int = 0  # ACs (spike-fed) or MACs (dense), whole run
    ann_macs: int = 0    # the ANN layer's MACs on the same images
    zero_skip_macs: float = 0  # the ANN's MACs whose input element is nonzero
    effective_acs: int = 0   # NeuroBench: binary inputs, nonzero weights, every step
    effective_macs: int = 0  # NeuroBench: non-binary inputs, nonzero weights, every step
    dense: int = 0           # NeuroBench: every connection, every step
    images: int = 0


@dataclass
class _Caused:
    """What one spike source's output costs in one layer (or addition) it feeds, whole run."""

    events: int = 0        # spiking network: spikes x outputs reached (ACs or additions)
    ann: float = 0.0       # the ANN's operations there (MACs or additions), this source's share
    zero_skip: float = 0.0  # the ANN's operations whose input element is nonzero
    elements: int = 0      # input elements of the layer this source makes up
    active: int = 0        # of which nonzero
    weights: float = 0.0   # the layer's weight elements, this source's share


@dataclass
class _Neurons:
    name: str
    level: int
    num_steps_in: int
    neurons: int
    images: int = 0
    emitted_spikes: int = 0
    active: int = 0  # neurons that emitted at least one spike
    neuron_updates: int = 0
    neuron_operations: int = 0


@dataclass
class _Pooled:
    """A max pool of spike bursts: a spike source of its own (its output spikes)."""

    name: str
    level: int = 0  # length of its bursts: the level of the layers it pools
    images: int = 0
    spikes: int = 0


class CostMeter:
    """Count the operations of a converted network from its graph and the emitted spikes.

    Static part (:class:`models.SpikingNetwork` ops, once per image shape with a one-image
    probe for shapes): for every weighted layer, which spike sources its input is made of --
    a spiking layer's output, or a max pool of bursts (spikes that pass a max pool are
    counted after it, the pool's output being their source) -- through element
    rearrangements and copies (concatenation, stacking, chunk/split, flatten/view/transpose,
    nearest upsampling, padding, pixel shuffle, dropout, multiplication by constants)
    followed by average pools and a flatten, which are folded into the layer's reach
    (:func:`spike_reach`). Each role's rule is its handler's (:mod:`models.roles`). A layer whose input is anything else (the
    image, a sum of trains, an interpolation, another layer's output) is fed densely: MACs on every step of
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
        self.caused = {}     # spike source -> {weighted name or "+": _Caused}
        self._plans = {}     # per-image input shape -> _Plan
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
        for s in stats:
            self.neurons[s.name].active += int((s.counts > 0).sum())
        batch = _Batch(self, self._plan(x), x.shape[0], {s.name: s.counts for s in stats})
        for op in self.snn.ops:
            op.handler.meter(self.snn, op, batch)

    def _plan(self, x):
        """The static analysis, once per image shape."""
        key = tuple(x.shape[1:])
        if key not in self._plans:
            self._plans[key] = _Plan(self.snn, self.snn.probe(x))
        return self._plans[key]

    def reach(self, layer, chain, shape):
        """:func:`spike_reach`, cached."""
        key = (id(layer), tuple(_chain_key(m) for m in chain), shape)
        if key not in self._reach_cache:
            self._reach_cache[key] = spike_reach(layer, chain, shape)
        return self._reach_cache[key]

    def connections(self, layer, shape, nonzero_only=True):
        """:func:`connections`, cached."""
        key = ("connections", nonzero_only, id(layer), shape)
        if key not in self._reach_cache:
            self._reach_cache[key] = connections(layer, shape, nonzero_only)
        return self._reach_cache[key]


def _chain_key(module):
    return (type(module).__name__, repr(module))


class _Plan:
    """How every value of a converted network is made of spike sources, from a one-image
    probe (shapes and the values of size computations). The handlers' ``spikes`` rules ask
    it for their operands'.

    Index maps (:class:`models.roles.Spikes` parts) are float64 tensors holding, per element,
    1 + the flat index of the source element it carries, 0 for none (zeros of padding, or
    elements of other sources): every copy and rearrangement then runs on them as it runs on
    the values, zero padding included (float64 holds the indices exactly)."""

    def __init__(self, snn, values):
        self.snn = snn
        self.shapes = {i: tuple(v.shape[1:]) for i, v in values.items() if torch.is_tensor(v)}
        self.meta = {op.index: values[op.index] for op in snn.ops
                     if not op.handler.tensor and op.index in values}
        self._values = values
        self.spikes = {}
        for op in snn.ops:
            self.spikes[op.index] = op.handler.spikes(snn, op, self)

    def spikes_of(self, index):
        return self.spikes.get(index)

    def identity_ids(self, index):
        """Each element carries itself."""
        shape = self.shapes[index]
        return torch.arange(1, int(torch.Size(shape).numel()) + 1,
                            dtype=torch.float64).reshape(1, *shape)

    def _tensor_inputs(self, op):
        return [i for i in op.inputs if self.snn.ops[i].num_steps is not None]

    def first_tensor_spikes(self, op):
        inputs = self._tensor_inputs(op)
        return self.spikes.get(inputs[0]) if inputs else None

    def tensor_spikes(self, op):
        return [self.spikes.get(i) for i in self._tensor_inputs(op)]

    def rearranged_spikes(self, op, flatten_after_pools=False):
        """The operation run on its operands' index maps, one source at a time; None where
        an operand is not tracked or was average-pooled (then counted densely), except a
        flatten to ``(N, features)`` right after the pools, folded into the reach."""
        inputs = self._tensor_inputs(op)
        reps = [self.spikes.get(i) for i in inputs]
        if any(not isinstance(r, Spikes) for r in reps):
            return None
        if any(r.pools for r in reps):
            if flatten_after_pools and len(reps) == 1 and not op.tuple_valued:
                out = self._values[op.index]
                if torch.is_tensor(out) and out.dim() == 2:  # flattened to (N, features)
                    return Spikes(reps[0].parts, reps[0].pools, True)
            return None
        parts = {}
        for source in sorted({s for r in reps for s in r.parts}):
            env = dict(self.meta)
            for index, r in zip(inputs, reps):
                ids = r.parts.get(source)
                env[index] = ids if ids is not None else torch.zeros(
                    (1, *self.shapes[index]), dtype=torch.float64)
            result = self.snn.apply(op, env)
            # index maps are fresh tensors: a rearrangement's result is made contiguous, so
            # a view after a transpose (and the .contiguous() between them) stays valid
            parts[source] = (result.contiguous() if torch.is_tensor(result)
                             else type(result)(r.contiguous() for r in result))
        if op.tuple_valued:
            count = len(parts[next(iter(parts))])
            return [Spikes({s: parts[s][k] for s in parts}) for k in range(count)]
        return Spikes(parts)


class _Batch:
    """One batch being counted: the handlers' ``meter`` rules count through it."""

    def __init__(self, meter, plan, batch, counts):
        self.meter, self.plan, self.batch, self.snn = meter, plan, batch, meter.snn
        self._by_name = counts
        self._counts = {}  # op index -> float64 counts of a burst value (B, ...)

    def layer_counts(self, name):
        return self._by_name[name].to(torch.float64)

    def burst_counts(self, index):
        """Per-image spike counts of the burst value of op ``index`` (float64)."""
        if index not in self._counts:
            op = self.snn.ops[index]
            self._counts[index] = op.handler.burst_counts(self.snn, op, self)
        return self._counts[index]

    def apply_to_counts(self, op):
        """Cat, max pool, copies and channel chunks of bursts: the same operation on counts."""
        env = dict(self.plan.meta)
        env.update({i: self.burst_counts(i) for i in op.inputs if i not in env
                    and self.snn.ops[i].num_steps is not None})
        return self.snn.apply(op, env)

    def _operations(self, layer, spikes):
        """What the spikes of ``spikes`` reaching ``layer`` (None: an addition) cost over the
        batch: ``({source: _Caused}, effective ACs, effective MACs)``, the :class:`_Caused`
        without the ``weights`` share (and, for a layer, without the ``ann`` share), the last
        two NeuroBench's, for the layer.

        A spike is one event, its height folded into the weights it reaches (average pools
        included: one event per output reached). The zero-skipping ANN runs the same graph:
        behind average pools it skips a pooled element that is zero -- or, where that costs
        less (overlapping pool windows), folds the pools into the weights as the spiking
        network does and skips the zero elements before them. Behind pools the layer's input
        is not binary: NeuroBench counts MACs, one per nonzero pooled element per step, the
        bursts being front-loaded (a neuron with count q spikes on steps 0..q-1 of its
        window). The sources' elements are disjoint, so a pool that mixes them sees their
        sum."""
        out, batch = {}, self.batch
        chain = spikes.pools + ((nn.Flatten(),) if spikes.flattened else ())
        combined = members = None
        for source, ids in spikes.parts.items():
            source_counts = self.burst_counts(source).flatten(1)
            flat = ids.flatten().to(torch.int64)
            routed = source_counts[:, (flat - 1).clamp(min=0)] * (flat > 0)
            routed = routed.reshape(batch, *ids.shape[1:])
            reach = self.meter.reach(layer, chain, tuple(ids.shape[1:])).to(routed.device)
            out[source] = _Caused(events=int((routed.to(torch.int64) * reach).sum()),
                                  zero_skip=int(((routed > 0) * reach).sum()),
                                  elements=batch * int((ids > 0).sum()),
                                  active=int((routed > 0).sum()))
            combined = routed if combined is None else combined + routed
            members = (ids > 0) if members is None else members | (ids > 0)
        if combined is None:
            return out, 0, 0
        shape = tuple(combined.shape[1:])
        if not chain:
            acs = 0 if layer is None else int((combined.to(torch.int64) * self.meter.connections(
                layer, shape).to(combined.device)).sum())
            if layer is None:
                for caused in out.values():
                    caused.ann = float(caused.elements)
            return out, acs, 0
        pooled = _through(chain, (combined > 0).to(torch.float64)) > 0
        pooled_shape = tuple(pooled.shape[1:])
        folded = sum(caused.zero_skip for caused in out.values())
        reach = self.meter.reach(layer, (), pooled_shape).to(pooled.device)
        unfolded = int((pooled * reach).sum())
        if unfolded < folded:  # split among the sources by their folded counts
            for caused in out.values():
                caused.zero_skip = unfolded * caused.zero_skip / folded
        if layer is None:  # the ANN adds every element of the pooled operand
            dense = batch * int((_through(chain, members.to(torch.float64)) > 0).sum())
            total = sum(caused.elements for caused in out.values())
            for caused in out.values():
                caused.ann = dense * caused.elements / total
            return out, 0, 0
        nonzero = self.meter.connections(layer, pooled_shape).to(combined.device)
        macs = sum(int(((_through(chain, (combined > step).to(torch.float64)) > 0)
                        * nonzero).sum()) for step in range(int(combined.max())))
        return out, 0, macs

    def count_pooled(self, op):
        """A max pool of bursts: its output spikes, a source of their own."""
        entry = self.meter.pooled.setdefault(op.name, _Pooled(op.name, op.num_steps))
        entry.images += self.batch
        entry.spikes += int(self.burst_counts(op.index).sum())

    def count_shortcut_additions(self, op):
        """A spike carried into an addition costs one addition per element it reaches (the
        ANN: one per element, or per nonzero element when it skips zeros)."""
        for index in op.inputs:
            spikes = self.plan.spikes_of(index)
            if isinstance(spikes, Spikes):
                for source, caused in self._operations(None, spikes)[0].items():
                    name = self.snn.ops[source].name
                    self.meter.additions[name] = self.meter.additions.get(name, 0) + \
                        caused.events
                    _merge(self.meter.caused.setdefault(name, {}), "+", caused)

    def count_weighted(self, op, layer):
        """A weighted layer: ACs from the spikes reaching it, or dense MACs on every step."""
        snn, meter, batch = self.snn, self.meter, self.batch
        source_index = op.inputs[0]
        shape = self.plan.shapes[source_index]
        macs = int(meter.reach(layer, (), shape).sum())
        spikes = self.plan.spikes_of(source_index)
        entry = meter.weighted.get(op.name)
        steps = snn.ops[source_index].num_steps
        if entry is None:
            first = None if spikes is None else snn.ops[next(iter(spikes.parts))].name
            entry = meter.weighted[op.name] = _Weighted(
                op.name, first, analog=snn.ops[source_index].kind == Kind.ANALOG,
                num_steps_in=steps, weights=int(layer.weight.numel()),
                nonzero_weights=int(torch.count_nonzero(layer.weight)),
                input_elements=int(torch.Size(shape).numel()))
        entry.ann_macs += batch * macs
        # NeuroBench's dense count: every weight tap (a tap reading a padding copy included)
        entry.dense += steps * batch * int(meter.connections(layer, shape, False).sum())
        entry.images += batch
        if spikes is None:
            # dense currents: every element of every step is multiplied by the weights; the
            # ANN skips no zero of them, and NeuroBench's effective MACs count every element
            # as nonzero (an upper bound where the input holds exact zeros)
            entry.operations += steps * batch * macs
            entry.zero_skip_macs += batch * macs
            entry.effective_macs += steps * batch * int(meter.connections(layer, shape).sum())
            return
        parts, acs, effective_macs = self._operations(layer, spikes)
        entry.effective_acs += acs
        entry.effective_macs += effective_macs
        elements = {source: int((ids > 0).sum()) for source, ids in spikes.parts.items()}
        reaching = sum(elements[source] for source in parts)
        for source, caused in parts.items():
            entry.operations += caused.events
            entry.zero_skip_macs += caused.zero_skip
            name = snn.ops[source].name
            feeds = meter.feeds.setdefault(name, [])
            if op.name not in feeds:
                feeds.append(op.name)
            # the ANN's MACs and the weights of a layer fed by several sources, split by
            # their share of its input elements; evenly where none of its input elements
            # comes from a source (all padding, e.g. a padded map resampled to its border)
            share = elements[source] / reaching if reaching else 1 / len(parts)
            caused.ann = batch * macs * share
            caused.weights = batch * entry.weights * share
            _merge(meter.caused.setdefault(name, {}), op.name, caused)


def _through(chain, value):
    for module in chain:
        value = module(value)
    return value


def _merge(entries, key, caused):
    """Add ``caused`` to ``entries[key]``."""
    total = entries.setdefault(key, _Caused())
    for field in ("events", "ann", "zero_skip", "elements", "active", "weights"):
        setattr(total, field, getattr(total, field) + getattr(caused, field))
