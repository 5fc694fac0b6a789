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
- *Neuron updates*: what the PASCAL simulation did, ``T_in + (max(T_in, L) - 1) + L`` per
  neuron (``LayerStats.neuron_updates``), next to the analytical ``5L - 2`` per neuron that
  T_eff assumes (``T_in = L``) and the ``L`` of a plain integrate-and-fire neuron.
- *Energy*: ``e_ac * (ACs + shortcut additions) + e_mac * analog MACs + e_update * neuron
  updates`` for the SNN, ``e_mac * MACs`` for the ANN. Defaults are the usual 45 nm CMOS
  figures (Horowitz, ISSCC 2014): 0.9 pJ per accumulate, 4.6 pJ per multiply-accumulate
  (32-bit float); neuron updates are not priced unless ``e_update`` is set.

:class:`CostMeter` hooks a converted :class:`models.SpikingNetwork` and collects the counts
while it runs; :func:`build_report` turns them into per-layer rows and totals.
"""
import csv
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from models.spiking import PascalNeuron, SeqAffine, SeqMap, SpikingAdd
from models.timing import latency_steps, layer_fan_ins, teff, teff_reference

__all__ = ["E_AC_PJ", "E_MAC_PJ", "CostMeter", "spike_reach", "dense_macs", "energy_pj",
           "timing_summary", "build_report", "format_report", "write_report_json",
           "write_report_csv", "plot_report", "first_reaching", "plot_baseline"]

E_AC_PJ = 0.9    # pJ per accumulate (32-bit float add, 45 nm)
E_MAC_PJ = 4.6   # pJ per multiply-accumulate (32-bit float mult + add, 45 nm)

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
        if not flattened and len(source_shape) != 1:
            raise ValueError(f"a Linear layer fed by a spike map of shape {source_shape} "
                             "without a Flatten in between is not supported")
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


# --- collecting counts while the spiking network runs -----------------------------------------

class _SpikeTag:
    """Attached to a tensor derived from spikes: who emitted them, their per-image counts
    summed over the window ``(B, ...)`` and the stateless modules applied since."""

    __slots__ = ("source", "counts", "chain")

    def __init__(self, source, counts, chain=()):
        self.source, self.counts, self.chain = source, counts, chain

    @classmethod
    def cat(cls, tags):
        """The tag of consecutive image chunks joined (``models.chunking.run_segments``)."""
        if any(t is None or (t.source, t.chain) != (tags[0].source, tags[0].chain)
               for t in tags):
            raise ValueError("cannot join spike tags of different sources")
        return cls(tags[0].source, torch.cat([t.counts for t in tags]), tags[0].chain)


@dataclass
class _Weighted:
    name: str
    source: str | None  # spiking layer feeding it, None for the analog input
    operations: int = 0  # ACs (spike-fed) or MACs (analog), whole run
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


class CostMeter:
    """Count operations of a converted network while it runs (use as a context manager).

    Hooks are registered on the modules of ``snn.body`` in module order: every
    :class:`PascalNeuron` tags its output with its per-neuron spike counts, every
    :class:`SeqMap` (pool, flatten) passes the tag on and records itself in it, and every
    :class:`SeqAffine` around a conv/linear layer turns the tag of its input into ACs with
    :func:`spike_reach`; an untagged input is the analog image (MACs). :class:`SpikingAdd`
    turns a tagged shortcut into additions. Works for both simulation modes (``sim="step"``
    counts the nonzero entries of each train, ``sim="counts"`` reads the window sums).
    Call :meth:`add_layer_stats` with each batch's ``LayerStats`` from
    ``forward_with_stats``.
    """

    def __init__(self, snn):
        self.snn = snn
        self.weighted = {}   # name -> _Weighted, in order of first call
        self.neurons = {}    # name -> _Neurons, in order of first LayerStats
        self.additions = {}  # spiking layer -> shortcut additions its spikes caused
        self.feeds = {}      # spiking layer -> names of the weighted layers it feeds
        self._reach_cache = {}
        self._handles = []
        for name, module in snn.body.named_modules():
            if isinstance(module, PascalNeuron):
                self._handles.append(module.register_forward_hook(self._on_neuron))
            elif isinstance(module, SeqMap):
                self._handles.append(module.register_forward_hook(self._on_map))
            elif isinstance(module, SeqAffine) and isinstance(module.layer, _WEIGHTED):
                self._handles.append(module.register_forward_pre_hook(
                    lambda mod, args, name=name: self._on_weighted(name, mod.layer, args[0])))
            elif isinstance(module, SpikingAdd):
                self._handles.append(module.register_forward_pre_hook(self._on_add))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def close(self):
        for handle in self._handles:
            handle.remove()
        self._handles = []

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

    # hooks
    def _on_neuron(self, module, args, output):
        if getattr(module, "sim", "step") == "counts":
            # the window sum count * amplitude; dividing back is exact up to rounding
            amplitude = module.amplitude.to(output.dtype)
            counts = torch.round(output.sum(0) / amplitude).to(torch.int64)
        else:
            counts = (output != 0).sum(0)  # spikes are the nonzero entries
        output._spike_tag = _SpikeTag(module.name, counts)

    def _on_map(self, module, args, output):
        tag = getattr(args[0], "_spike_tag", None)
        if tag is not None:
            output._spike_tag = _SpikeTag(tag.source, tag.counts, tag.chain + (module.layer,))

    def _on_weighted(self, name, layer, x_seq):  # (T, B, ...)
        tag = getattr(x_seq, "_spike_tag", None)
        entry = self.weighted.get(name)
        if entry is None:
            entry = self.weighted[name] = _Weighted(name, None if tag is None else tag.source)
        batch, shape = x_seq.shape[1], tuple(x_seq.shape[2:])
        macs = self._reach(layer, (), shape).sum()
        entry.ann_macs += batch * int(macs)
        entry.images += batch
        if tag is None:
            # analog currents: every element of every step is multiplied by the weights
            num_steps = getattr(x_seq, "nominal_steps", x_seq.shape[0])
            entry.operations += num_steps * batch * int(macs)
        else:
            entry.operations += self._spike_operations(layer, tag)
            feeds = self.feeds.setdefault(tag.source, [])
            if name not in feeds:
                feeds.append(name)

    def _on_add(self, module, args):
        for x_seq in args:
            tag = getattr(x_seq, "_spike_tag", None)
            if tag is not None:  # an identity shortcut: one addition per spike it delivers
                self.additions[tag.source] = (self.additions.get(tag.source, 0)
                                              + self._spike_operations(None, tag))

    # helpers
    def _reach(self, layer, chain, shape):
        key = (id(layer), tuple(id(m) for m in chain), shape)
        if key not in self._reach_cache:
            self._reach_cache[key] = spike_reach(layer, chain, shape)
        return self._reach_cache[key]

    def _spike_operations(self, layer, tag):
        reach = self._reach(layer, tag.chain, tuple(tag.counts.shape[1:]))
        return int((tag.counts.to(torch.int64) * reach.to(tag.counts.device)).sum())


# --- energy, T_eff, report --------------------------------------------------------------------

def energy_pj(accumulates=0, macs=0, neuron_updates=0, e_ac=E_AC_PJ, e_mac=E_MAC_PJ,
              e_update=0.0):
    """``e_ac * accumulates + e_mac * macs + e_update * neuron_updates`` (pJ)."""
    return e_ac * accumulates + e_mac * macs + e_update * neuron_updates


def timing_summary(model, arch, variant, dataset, levels):
    """T_eff in both modes of get_Teff.py and the sequential latency, for ``model``'s levels."""
    value, _ = teff(levels, layer_fan_ins(model))
    summary = {"T_eff": value, "T_eff_reference": None, "T_eff_reference_note": None,
               "latency_steps": latency_steps(levels)[0],
               "mean_level": sum(levels) / len(levels)}
    try:
        reference_dataset = "imagenet" if variant == "imagenet" else dataset
        summary["T_eff_reference"], summary["T_eff_reference_note"] = \
            teff_reference(arch, reference_dataset, levels)
    except ValueError:
        summary["T_eff_reference_note"] = f"the published script has no constants for {arch}"
    return summary


def build_report(meter, timing, e_ac=E_AC_PJ, e_mac=E_MAC_PJ, e_update=0.0):
    """Per-layer rows and totals (per image) from a :class:`CostMeter` after a run.

    Rows, in forward order: one ``"analog"`` row per weighted layer fed by the image (its
    MACs), then one ``"spiking"`` row per spiking layer: its spikes, firing rate (spikes per
    neuron per step), neuron updates, and the ACs / shortcut additions its spikes cause in
    the layers they feed, next to those layers' ANN MACs.
    """
    rows = []
    images = max([w.images for w in meter.weighted.values()], default=0)
    if images == 0:
        raise ValueError("the meter saw no images: run the network before building the report")
    for w in meter.weighted.values():
        if w.source is None:
            rows.append({"layer": w.name, "kind": "analog", "level": None, "num_steps_in": 1,
                         "neurons": None, "feeds": w.name, "spikes_per_image": 0.0,
                         "firing_rate": None, "accumulates_per_image": 0.0,
                         "shortcut_additions_per_image": 0.0,
                         "macs_per_image": w.operations / w.images,
                         "neuron_updates_per_image": 0.0, "model_updates_per_image": 0.0,
                         "if_updates_per_image": 0.0,
                         "ann_macs_per_image": w.ann_macs / w.images})
    for n in meter.neurons.values():
        feeds = [meter.weighted[name] for name in meter.feeds.get(n.name, [])]
        level = n.level
        rows.append({
            "layer": n.name, "kind": "spiking", "level": level, "num_steps_in": n.num_steps_in,
            "neurons": n.neurons, "feeds": " ".join(w.name for w in feeds),
            "spikes_per_image": n.emitted_spikes / n.images,
            "firing_rate": n.emitted_spikes / (n.images * n.neurons * level),
            "accumulates_per_image": sum(w.operations / w.images for w in feeds),
            "shortcut_additions_per_image": meter.additions.get(n.name, 0) / n.images,
            "macs_per_image": 0.0,
            "neuron_updates_per_image": n.neuron_updates / n.images,
            "model_updates_per_image": float(n.neurons * (5 * level - 2)),
            "if_updates_per_image": float(n.neurons * level),
            "ann_macs_per_image": sum(w.ann_macs / w.images for w in feeds)})
    for row in rows:
        row["snn_energy_pj_per_image"] = energy_pj(
            row["accumulates_per_image"] + row["shortcut_additions_per_image"],
            row["macs_per_image"], row["neuron_updates_per_image"], e_ac, e_mac, e_update)
        row["ann_energy_pj_per_image"] = energy_pj(macs=row["ann_macs_per_image"], e_mac=e_mac)

    def total(key):
        return sum(row[key] for row in rows)

    spiking = [row for row in rows if row["kind"] == "spiking"]
    neurons = sum(row["neurons"] for row in spiking)
    totals = {key: total(key) for key in (
        "spikes_per_image", "accumulates_per_image", "shortcut_additions_per_image",
        "macs_per_image", "neuron_updates_per_image", "model_updates_per_image",
        "if_updates_per_image", "ann_macs_per_image", "snn_energy_pj_per_image",
        "ann_energy_pj_per_image")}
    slots = sum(row["neurons"] * row["level"] for row in spiking)
    totals.update(neurons=neurons, firing_rate=totals["spikes_per_image"] / slots if slots else 0.0)
    totals["energy_ratio_ann_over_snn"] = (totals["ann_energy_pj_per_image"]
                                          / totals["snn_energy_pj_per_image"]
                                          if totals["snn_energy_pj_per_image"] else None)
    return {"images": images, "rows": rows, "totals": totals, "timing": dict(timing),
            "energy_pj": {"accumulate": e_ac, "mac": e_mac, "neuron_update": e_update}}


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
          ("updates/img", "neuron_updates_per_image", ">", 11),
          ("(5L-2)/img", "model_updates_per_image", ">", 10),
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
    lines.append(
        f"energy per image: SNN {t['snn_energy_pj_per_image'] / 1e6:.4g} uJ "
        f"({e['accumulate']} pJ/AC, {e['mac']} pJ/MAC"
        + (f", {e['neuron_update']} pJ/neuron update" if e["neuron_update"] else
           ", neuron updates not priced") +
        f"), ANN {t['ann_energy_pj_per_image'] / 1e6:.4g} uJ; ANN/SNN = "
        + (f"{t['energy_ratio_ann_over_snn']:.2f}x" if t["energy_ratio_ann_over_snn"] else "-"))
    lines.append(f"neuron updates: {_si(t['neuron_updates_per_image'])}/img simulated, "
                 f"{_si(t['model_updates_per_image'])}/img by the (5L-2) model, "
                 f"{_si(t['if_updates_per_image'])}/img for IF neurons with the same L")
    reference = ("n/a" if timing["T_eff_reference"] is None
                 else f"{timing['T_eff_reference']:.4f}")
    lines.append(f"T_eff = {timing['T_eff']:.4f} (all layers), {reference} (published script); "
                 f"mean level {timing['mean_level']:.3f}; sequential latency "
                 f"{timing['latency_steps']} steps")
    return lines


_CSV_FIELDS = ("layer", "kind", "level", "num_steps_in", "neurons", "feeds", "spikes_per_image",
               "firing_rate", "accumulates_per_image", "shortcut_additions_per_image",
               "macs_per_image", "neuron_updates_per_image", "model_updates_per_image",
               "if_updates_per_image", "ann_macs_per_image", "snn_energy_pj_per_image",
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

