"""What a PASCAL spiking run costs: spikes, synaptic operations, neuron updates, energy, T_eff.

Counting rules (all counts are exact integers, per image unless said otherwise):

- *Accumulates* (ACs): a spike entering a weighted layer (conv or linear, BN folded in) adds
  one weight to every output it is connected to. A spike at input position p of a conv costs
  ``out_channels / groups`` times the number of output positions whose receptive field
  contains p, so zero padding and stride are accounted for exactly; a linear layer costs
  ``out_features`` per spike. Average pools (and flatten) between a spiking layer and the
  weighted layer are folded into it: the spike reaches every output the pooled value reaches.
- *Shortcut additions*: a spike carried by an identity shortcut into a residual addition
  costs one addition (counted separately from the ACs).
- *MACs* of the analog first layer, which sees the image once, and of the equivalent ANN:
  one per (input element, output element) pair joined by a weight, i.e. only the kernel taps
  that touch a real input (padding taps are not counted). Pools, biases and BN are not
  counted for either network.
- *Neuron operations*: the PASCAL neuron's own work in the unit system of T_eff's (5L - 2):
  ``2 T_in + 2 (max(T_in, L) - 1) + L`` per neuron (2 per accumulate and correction step, 1
  per emit step; ``5L - 2`` when ``T_in = L``; :func:`models.spiking.neuron_operations`),
  next to the steps the simulation runs, ``T_in + (max(T_in, L) - 1) + L`` per neuron
  (``LayerStats.neuron_updates``), and the ``L`` of a plain integrate-and-fire neuron.
- *Energy*: ``e_ac * (ACs + shortcut additions) + e_mac * (analog and dense MACs) +
  e_op * neuron operations`` for the SNN, ``e_mac * MACs`` for the ANN. Defaults are the usual
  45 nm CMOS figures (Horowitz, ISSCC 2014): 0.9 pJ per accumulate, 4.6 pJ per
  multiply-accumulate (32-bit float), and a neuron operation priced as one accumulate
  (0.9 pJ); the energy ratio is reported with and without the neuron operations.
- *Latency*: sequential (every layer accumulates, corrects and emits in turn) and pipelined
  (a layer accumulates while the layer before it emits: :mod:`models.timing`).

:class:`CostMeter` derives, from a converted :class:`models.SpikingNetwork`'s graph, which
spike sources feed each weighted layer, and counts operations from the emitted spike counts
``forward_with_stats(x, keep_counts=True)`` returns; :func:`build_report` turns them into
per-layer rows and totals.
"""
import csv
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from models.timing import (latency_steps, layer_fan_ins, pipelined_latency_steps, teff,
                           teff_reference)

__all__ = ["E_AC_PJ", "E_MAC_PJ", "E_OP_PJ", "CostMeter", "spike_reach", "dense_macs", "energy_pj",
           "timing_summary", "build_report", "format_report", "write_report_json",
           "write_report_csv", "plot_report", "first_reaching", "plot_baseline"]

E_AC_PJ = 0.9    # pJ per accumulate (32-bit float add, 45 nm)
E_MAC_PJ = 4.6   # pJ per multiply-accumulate (32-bit float mult + add, 45 nm)
E_OP_PJ = E_AC_PJ  # pJ per neuron operation: an add or compare, priced as an accumulate

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_WEIGHTED = _CONV + (nn.Linear,)
_POOLS = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
          nn.AdaptiveAvgPool3d)
_REACH_BATCH = 4096  # one-hot probes per chunk when measuring a reach


# --- how many outputs one spike reaches -------------------------------------------------------

def spike_reach(layer, chain, source_shape):
    """Operations one spike at each position of a spiking layer's output causes in ``layer``.

    Args:
        layer: the weighted layer (``nn.Conv1d/2d/3d`` or ``nn.Linear``) the spikes reach, or
            None to count the elements the spike reaches through ``chain`` alone (an identity
            shortcut: one addition each).
        chain: the modules between the spiking layer and ``layer``, in order: average pools
            (any kind) and at most one final ``nn.Flatten``.
        source_shape: per-image shape of the spike map, ``(C, *spatial)`` or ``(features,)``.

    Returns:
        int64 tensor of shape ``source_shape``: for a conv, ``out_channels / groups`` times the
        number of output positions whose (pool-folded) receptive field contains the position;
        for a linear layer, ``out_features`` (0 where a pool drops the position).

    Every layer here connects each spatial dimension independently (box kernels, per-dimension
    stride and padding), so the reach is the product of one-dimensional reaches; each is
    measured by running the real pools and an all-ones copy of the conv on one-hot
    hyperplanes, which keeps stride, padding, dilation, ceil_mode and adaptive windows exact.
    All weights of those probes are positive, so "reached" is simply "output > 0".
    """
    source_shape = tuple(int(s) for s in source_shape)
    pools, flattened = _split_chain(chain)
    if layer is None:
        fan_out, count_outputs = 1, True
    elif isinstance(layer, nn.Linear):
        # A Linear layer acts on the last dimension: every element it sees reaches its
        # out_features outputs, whatever the leading dimensions (a 3-D value included).
        fan_out, count_outputs = layer.out_features, False
    elif isinstance(layer, _CONV):
        if flattened:
            raise ValueError("a Flatten before a convolution is not supported")
        fan_out, count_outputs = layer.out_channels // layer.groups, True
    else:
        raise TypeError(f"cannot count operations of {type(layer).__name__}")
    spatial = source_shape[1:]
    if not spatial:
        if pools:
            raise ValueError(f"pooling a flat spike vector of shape {source_shape}")
        return torch.full(source_shape, fan_out, dtype=torch.int64)
    probe = _surrogate(layer, len(spatial)) if isinstance(layer, _CONV) else None
    reach = torch.full((), fan_out, dtype=torch.int64)
    for dim, size in enumerate(spatial):
        per_index = _reach_along(dim, spatial, pools, probe)  # (size,) outputs reached along dim
        if not count_outputs:
            per_index = (per_index > 0).to(torch.int64)
        view = [1] * len(spatial)
        view[dim] = size
        reach = reach * per_index.view(view)
    return reach.unsqueeze(0).expand(source_shape).contiguous()


def dense_macs(layer, input_shape):
    """MACs of ``layer`` on one dense input of per-image shape ``input_shape`` (no padding taps)."""
    return int(spike_reach(layer, (), input_shape).sum())


def _split_chain(chain):
    pools, flattened = [], False
    for module in chain:
        if isinstance(module, nn.Flatten):
            flattened = True
        elif isinstance(module, _POOLS) and not flattened:
            pools.append(module)
        else:
            raise TypeError(f"cannot fold {type(module).__name__} between a spiking layer and "
                            "the layer it feeds (only average pools, then Flatten)")
    return pools, flattened


def _surrogate(conv, num_spatial):
    """A one-channel copy of ``conv`` with all-ones weights and no bias."""
    if conv.weight.dim() - 2 != num_spatial:
        raise ValueError(f"{type(conv).__name__} fed by a map with {num_spatial} spatial dims")
    probe = type(conv)(1, 1, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                       dilation=conv.dilation, bias=False, padding_mode=conv.padding_mode)
    probe = probe.to(torch.float64)
    with torch.no_grad():
        probe.weight.fill_(1.0)
    return probe


@torch.no_grad()
def _reach_along(dim, spatial, pools, probe):
    """For each index i along ``dim``: output indices along ``dim`` reached from the hyperplane
    ``x[dim] == i`` (ones on every other dimension)."""
    size = spatial[dim]
    counts = []
    for start in range(0, size, _REACH_BATCH):
        index = torch.arange(start, min(size, start + _REACH_BATCH))
        x = torch.zeros((len(index), 1, *spatial), dtype=torch.float64)
        x.movedim(dim + 2, 1)[torch.arange(len(index)), index] = 1.0
        for pool in pools:
            x = pool(x)
        if probe is not None:
            x = probe(x)
        hit = x[:, 0] > 0  # (n, *out_spatial)
        if len(spatial) > 1:  # reached along dim from anywhere on the other dims
            hit = hit.movedim(dim + 1, 1).flatten(2).any(2)  # (n, out_size along dim)
        counts.append(hit.sum(1).to(torch.int64))
    return torch.cat(counts)


# --- counting from the graph and the emitted spike counts --------------------------------------

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


# --- energy, T_eff, report --------------------------------------------------------------------

def energy_pj(accumulates=0, macs=0, neuron_operations=0, e_ac=E_AC_PJ, e_mac=E_MAC_PJ,
              e_op=E_OP_PJ):
    """``e_ac * accumulates + e_mac * macs + e_op * neuron_operations`` (pJ)."""
    return e_ac * accumulates + e_mac * macs + e_op * neuron_operations


def timing_summary(model, arch, variant, dataset, levels):
    """T_eff in both modes of get_Teff.py and the sequential latency, for ``model``'s levels."""
    value, _ = teff(levels, layer_fan_ins(model))
    summary = {"T_eff": value, "T_eff_reference": None, "T_eff_reference_note": None,
               "latency_steps": latency_steps(model)[0],
               "latency_pipelined_steps": pipelined_latency_steps(model),
               "mean_level": sum(levels) / len(levels)}
    try:
        reference_dataset = "imagenet" if variant == "imagenet" else dataset
        summary["T_eff_reference"], summary["T_eff_reference_note"] = \
            teff_reference(arch, reference_dataset, levels)
    except ValueError:
        summary["T_eff_reference_note"] = f"the published script has no constants for {arch}"
    return summary


def build_report(meter, timing, e_ac=E_AC_PJ, e_mac=E_MAC_PJ, e_op=E_OP_PJ):
    """Per-layer rows and totals (per image) from a :class:`CostMeter` after a run.

    Rows, in forward order: an ``"analog"`` row per weighted layer fed by the image (its
    MACs), a ``"dense"`` row per weighted layer fed by another non-spike value (a sum of
    trains, another layer's output: MACs on every step of its input), a ``"spiking"`` row per
    spiking layer -- its spikes, firing rate (spikes per neuron per step), neuron updates, and
    the ACs / shortcut additions its spikes cause in the layers they feed, next to those
    layers' ANN MACs (split by input share where several sources feed one layer) -- and a
    ``"maxpool"`` row per max pool of spike bursts, whose output spikes are counted as a
    source of their own (its spikes are not added to the emitted total).
    """
    rows = []
    images = max([entry.images for entries in (meter.weighted, meter.neurons, meter.pooled)
                  for entry in entries.values()], default=0)
    if images == 0:
        raise ValueError("the meter saw no images: run the network before building the report")
    order = {op.name: op.index for op in meter.snn.ops}
    empty = {"level": None, "neurons": None, "firing_rate": None, "accumulates_per_image": 0.0,
             "shortcut_additions_per_image": 0.0, "macs_per_image": 0.0,
             "neuron_updates_per_image": 0.0, "neuron_operations_per_image": 0.0,
             "model_updates_per_image": 0.0,
             "if_updates_per_image": 0.0, "ann_macs_per_image": 0.0, "spikes_per_image": 0.0}

    def caused(source, images):
        entries = meter.caused.get(source, {})
        return (sum(v[0] for v in entries.values()) / images,
                sum(v[1] for v in entries.values()) / images)

    for w in meter.weighted.values():
        if w.source is None:
            rows.append(dict(empty, layer=w.name, kind="analog" if w.analog else "dense",
                             num_steps_in=w.num_steps_in, feeds=w.name,
                             macs_per_image=w.operations / w.images,
                             ann_macs_per_image=w.ann_macs / w.images))
    for n in meter.neurons.values():
        level = n.level
        accumulates, ann_macs = caused(n.name, n.images)
        rows.append(dict(
            empty, layer=n.name, kind="spiking", level=level, num_steps_in=n.num_steps_in,
            neurons=n.neurons, feeds=" ".join(meter.feeds.get(n.name, [])),
            spikes_per_image=n.emitted_spikes / n.images,
            firing_rate=n.emitted_spikes / (n.images * n.neurons * level),
            accumulates_per_image=accumulates,
            shortcut_additions_per_image=meter.additions.get(n.name, 0) / n.images,
            neuron_updates_per_image=n.neuron_updates / n.images,
            neuron_operations_per_image=n.neuron_operations / n.images,
            model_updates_per_image=float(n.neurons * (5 * level - 2)),
            if_updates_per_image=float(n.neurons * level), ann_macs_per_image=ann_macs))
    for p in meter.pooled.values():
        accumulates, ann_macs = caused(p.name, p.images)
        rows.append(dict(
            empty, layer=p.name, kind="maxpool", num_steps_in=None,
            feeds=" ".join(meter.feeds.get(p.name, [])), spikes_per_image=p.spikes / p.images,
            accumulates_per_image=accumulates,
            shortcut_additions_per_image=meter.additions.get(p.name, 0) / p.images,
            ann_macs_per_image=ann_macs))
    rows.sort(key=lambda row: order.get(row["layer"], len(order)))
    for row in rows:
        row["snn_synaptic_energy_pj_per_image"] = energy_pj(
            row["accumulates_per_image"] + row["shortcut_additions_per_image"],
            row["macs_per_image"], 0, e_ac, e_mac, e_op)
        row["snn_energy_pj_per_image"] = row["snn_synaptic_energy_pj_per_image"] + energy_pj(
            neuron_operations=row["neuron_operations_per_image"], e_op=e_op)
        row["ann_energy_pj_per_image"] = energy_pj(macs=row["ann_macs_per_image"], e_mac=e_mac)

    spiking = [row for row in rows if row["kind"] == "spiking"]

    def total(key):
        return sum(row[key] for row in (spiking if key == "spikes_per_image" else rows))

    neurons = sum(row["neurons"] for row in spiking)
    totals = {key: total(key) for key in (
        "spikes_per_image", "accumulates_per_image", "shortcut_additions_per_image",
        "macs_per_image", "neuron_updates_per_image", "neuron_operations_per_image",
        "model_updates_per_image", "if_updates_per_image", "ann_macs_per_image",
        "snn_energy_pj_per_image", "snn_synaptic_energy_pj_per_image",
        "ann_energy_pj_per_image")}
    slots = sum(row["neurons"] * row["level"] for row in spiking)
    totals.update(neurons=neurons, firing_rate=totals["spikes_per_image"] / slots if slots else 0.0)
    for key, energy in (("energy_ratio_ann_over_snn", "snn_energy_pj_per_image"),
                        ("energy_ratio_ann_over_snn_synaptic_only",
                         "snn_synaptic_energy_pj_per_image")):
        totals[key] = (totals["ann_energy_pj_per_image"] / totals[energy]
                       if totals[energy] else None)
    return {"images": images, "rows": rows, "totals": totals, "timing": dict(timing),
            "energy_pj": {"accumulate": e_ac, "mac": e_mac, "neuron_operation": e_op}}


def _si(value):
    """1234567 -> '1.23M'."""
    if value is None:
        return "-"
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


_TABLE = (("layer", "layer", "<", 20), ("L", "level", ">", 3), ("T_in", "num_steps_in", ">", 4),
          ("spikes/img", "spikes_per_image", ">", 10), ("rate", "firing_rate", ">", 6),
          ("ACs/img", "accumulates_per_image", ">", 9),
          ("adds/img", "shortcut_additions_per_image", ">", 8),
          ("MACs/img", "macs_per_image", ">", 8),
          ("steps/img", "neuron_updates_per_image", ">", 10),
          ("neuron ops/img", "neuron_operations_per_image", ">", 14),
          ("ANN MACs/img", "ann_macs_per_image", ">", 12))


def _cell(key, value):
    if value is None:
        return "-"
    if key in ("level", "num_steps_in"):
        return str(value)
    if key == "firing_rate":
        return f"{value:.3f}"
    if key == "layer":
        return value
    return _si(value) if value else "0"


def format_report(report):
    """The report as printable lines: a per-layer table, totals, energy and timing."""
    header = " ".join(f"{title:{align}{width}}" for title, _, align, width in _TABLE)
    lines = [header, "-" * len(header)]
    for row in report["rows"] + [dict(report["totals"], layer="total", level=None,
                                      num_steps_in=None)]:
        if row["layer"] == "total":
            lines.append("-" * len(header))
        lines.append(" ".join(f"{_cell(key, row.get(key)):{align}{width}}"
                              for _, key, align, width in _TABLE))
    t, e, timing = report["totals"], report["energy_pj"], report["timing"]

    def ratio(key):
        return f"{t[key]:.2f}x" if t[key] else "-"

    lines.append(
        f"energy per image: SNN {t['snn_energy_pj_per_image'] / 1e6:.4g} uJ "
        f"({e['accumulate']} pJ/AC, {e['mac']} pJ/MAC, {e['neuron_operation']} pJ/neuron "
        f"operation), ANN {t['ann_energy_pj_per_image'] / 1e6:.4g} uJ; ANN/SNN = "
        f"{ratio('energy_ratio_ann_over_snn')} ({ratio('energy_ratio_ann_over_snn_synaptic_only')} "
        f"counting synaptic operations only: SNN {t['snn_synaptic_energy_pj_per_image'] / 1e6:.4g}"
        " uJ)")
    lines.append(f"neuron operations: {_si(t['neuron_operations_per_image'])}/img (2 T_in + "
                 f"2 (max(T_in, L) - 1) + L per neuron; (5L-2) model with T_in = L: "
                 f"{_si(t['model_updates_per_image'])}); simulated steps "
                 f"{_si(t['neuron_updates_per_image'])}/img; IF neurons with the same L: "
                 f"{_si(t['if_updates_per_image'])}/img")
    reference = ("n/a" if timing["T_eff_reference"] is None
                 else f"{timing['T_eff_reference']:.4f}")
    lines.append(f"T_eff = {timing['T_eff']:.4f} (all layers), {reference} (published script); "
                 f"mean level {timing['mean_level']:.3f}; latency {timing['latency_steps']} "
                 f"steps sequential, {timing['latency_pipelined_steps']} pipelined")
    return lines


_CSV_FIELDS = ("layer", "kind", "level", "num_steps_in", "neurons", "feeds", "spikes_per_image",
               "firing_rate", "accumulates_per_image", "shortcut_additions_per_image",
               "macs_per_image", "neuron_updates_per_image", "neuron_operations_per_image",
               "model_updates_per_image", "if_updates_per_image", "ann_macs_per_image",
               "snn_energy_pj_per_image", "snn_synaptic_energy_pj_per_image",
               "ann_energy_pj_per_image")


def write_report_json(report, path, extra=None):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(report, **(extra or {})), indent=2) + "\n")


def write_report_csv(report, path):
    """One row per layer (analog and spiking) and a final ``total`` row."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=_CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in report["rows"]:
            writer.writerow(row)
        writer.writerow(dict(report["totals"], layer="total", kind="total"))


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_report(report, path, title=""):
    """PNG: per-layer operations (log scale) and spikes per image with the firing rate.

    A spiking layer's bars are the operations its spikes cause in the layers they feed (SNN
    ACs and shortcut additions) next to those layers' ANN MACs; the analog row is the first
    layer's MACs."""
    plt = _pyplot()
    rows = report["rows"]
    names = [row["layer"] for row in rows]
    x = range(len(rows))
    snn_ops = [row["accumulates_per_image"] + row["shortcut_additions_per_image"] for row in rows]
    macs = [row["macs_per_image"] for row in rows]
    ann = [row["ann_macs_per_image"] for row in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(8, 0.55 * len(rows) + 3), 7.5),
                                      sharex=True)
    width = 0.4
    top.bar([i - width / 2 for i in x], ann, width, label="ANN MACs", color="#999999")
    top.bar([i + width / 2 for i in x], snn_ops, width, label="SNN accumulates (+ shortcut adds)",
            color="#1f77b4")
    top.bar([i + width / 2 for i in x], macs, width, label="SNN MACs (analog first layer)",
            color="#d62728")
    top.set_yscale("log")
    top.set_ylabel("operations per image\n(in the layers this one feeds)")
    highest = max(ann + snn_ops + macs + [1.0])
    top.set_ylim(top=highest * 30)  # room for the legend above the bars
    top.legend(fontsize=8, loc="upper center", ncol=3)
    t = report["totals"]
    top.set_title(title or (f"operations caused by each layer's output; energy per image: SNN "
                            f"{t['snn_energy_pj_per_image'] / 1e6:.4g} uJ, ANN "
                            f"{t['ann_energy_pj_per_image'] / 1e6:.4g} uJ"), fontsize=10)
    spikes = [row["spikes_per_image"] for row in rows]
    bars = bottom.bar(list(x), spikes, 0.6, color="#2ca02c")
    for bar, row in zip(bars, rows, strict=True):
        if row["firing_rate"] is not None:
            bottom.annotate(f"{row['firing_rate']:.2f}", (bar.get_x() + bar.get_width() / 2,
                                                          bar.get_height()),
                            ha="center", va="bottom", fontsize=7)
    bottom.set_ylabel("spikes per image\n(label: spikes/neuron/step)")
    bottom.set_xticks(list(x))
    bottom.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- the conventional QCFS baseline -----------------------------------------------------------

def first_reaching(accuracy, target, tolerance=0.1):
    """Smallest T whose accuracy is >= ``target - tolerance`` (percentage points), else None."""
    for num_steps in sorted(accuracy):
        if accuracy[num_steps] >= target - tolerance - 1e-9:
            return num_steps
    return None


def plot_baseline(baseline, path, title=""):
    """PNG: baseline accuracy against T (log2 axis), the ANN line and PASCAL's point at its
    T_eff and at its latency. ``baseline`` holds lists ``timesteps`` and ``top1``, ``ann_top1``
    and ``pascal`` (``top1``, ``T_eff``, ``latency_steps``; None entries are left out)."""
    plt = _pyplot()
    steps, accuracy = list(baseline["timesteps"]), list(baseline["top1"])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(steps, accuracy, "o-", color="#1f77b4",
            label="conventional QCFS SNN (IF neurons, one T for all layers)")
    if baseline.get("ann_top1") is not None:
        ax.axhline(baseline["ann_top1"], color="#999999", linestyle="--",
                   label=f"QCFS ANN {baseline['ann_top1']:.2f}%")
    pascal = baseline.get("pascal") or {}
    xs = list(steps)
    if pascal.get("top1") is not None:
        ax.plot([pascal["T_eff"]], [pascal["top1"]], "*", markersize=15, color="#d62728",
                label=f"PASCAL {pascal['top1']:.2f}% at T_eff = {pascal['T_eff']:.2f}")
        ax.plot([pascal["latency_steps"]], [pascal["top1"]], "D", markersize=8,
                color="#d62728", fillstyle="none",
                label=f"PASCAL at its latency, {pascal['latency_steps']} steps")
        xs += [pascal["T_eff"], pascal["latency_steps"]]
    ax.set_xscale("log", base=2)
    ax.set_xlim(min(xs) / 1.5, max(xs) * 1.5)
    ax.set_xlabel("timesteps T (log2)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title or "accuracy against timesteps", fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)

