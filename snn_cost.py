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
- *Zero-skipping MACs* of a quantized ANN running the same graph: one per (nonzero input
  element, output) pair -- behind average pools, per nonzero pooled element, or with the
  pools folded into the weights where that is fewer. An exact conversion's ACs are never
  fewer (each active neuron fires at least once per output it reaches).
- *Energy*, the synaptic-operation proxy: ``e_ac * (ACs + shortcut additions) + e_mac *
  (analog and dense MACs) + e_op * neuron operations`` for the SNN, ``e_mac * MACs`` for the
  ANN. Defaults are the usual 45 nm CMOS figures (Horowitz, ISSCC 2014): 0.9 pJ per
  accumulate, 4.6 pJ per multiply-accumulate (32-bit float), and a neuron operation priced
  as one accumulate (0.9 pJ); the ratio is reported with and without the neuron
  operations. :mod:`energy_model` adds memory traffic (event-driven and time-stepped) and
  the bit-matched quantized ANN (dense and zero-skipping), :func:`neurobench_metrics`
  NeuroBench's metrics.
- *Latency*: sequential (every layer accumulates, corrects and emits in turn) and pipelined
  (a layer accumulates while the layer before it emits: :mod:`models.timing`).

:class:`CostMeter` (``cost_meter.py``) derives, from a converted :class:`models.SpikingNetwork`'s
graph, which spike sources feed each weighted layer, and counts operations from the emitted
spike counts ``forward_with_stats(x, keep_counts=True)`` returns, with the reach of one spike
from :func:`models.reach.spike_reach`; :func:`build_report` here turns them into per-layer rows
and totals, priced in energy, which :func:`format_report`, :func:`write_report_json`,
:func:`write_report_csv` and :func:`plot_report` write out. ``CostMeter``, ``spike_reach`` and
``dense_macs`` can still be imported from here.
"""
import csv
import json
from pathlib import Path

import energy_model
from cost_meter import CostMeter
from models.reach import dense_macs, spike_reach
from models.timing import (latency_steps, layer_fan_ins, pipelined_latency_steps, teff,
                           teff_reference)
from plotting import pyplot, save

__all__ = ["E_AC_PJ", "E_MAC_PJ", "E_OP_PJ", "CostMeter", "spike_reach", "dense_macs", "energy_pj",
           "timing_summary", "build_report", "format_report", "write_report_json",
           "write_report_csv", "plot_report"]

# the synaptic-operation proxy's prices (pJ): energy_model.CONSTANTS has their sources
E_AC_PJ = energy_model.CONSTANTS["fp32_add_pj"].value
E_MAC_PJ = energy_model.CONSTANTS["fp32_mac_pj"].value
E_OP_PJ = energy_model.CONSTANTS["neuron_op_pj"].value


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


def build_report(meter, timing, e_ac=None, e_mac=None, e_op=None, constants=None):
    """Per-layer rows and totals (per image) from a :class:`CostMeter` after a run.

    Rows, in forward order: an ``"analog"`` row per weighted layer fed by the image (its
    MACs), a ``"dense"`` row per weighted layer fed by another non-spike value (a sum of
    trains, another layer's output: MACs on every step of its input), a ``"spiking"`` row per
    spiking layer -- its spikes, firing rate (spikes per neuron per step), neuron updates, and
    the ACs / shortcut additions its spikes cause in the layers they feed, next to those
    layers' ANN MACs (split by input share where several sources feed one layer) and the
    MACs a zero-skipping ANN would do -- and a ``"maxpool"`` row per max pool of spike
    bursts, whose output spikes are counted as a source of their own (its spikes are not
    added to the emitted total).

    ``constants`` (name -> value) override :data:`energy_model.CONSTANTS`; ``e_ac``,
    ``e_mac`` and ``e_op`` set the proxy's ``fp32_add_pj``, ``fp32_mac_pj`` and
    ``neuron_op_pj``. The report carries the synaptic-operation proxy, the memory-inclusive
    and quantized-ANN estimates (:func:`energy_model.estimate`) and NeuroBench's metrics
    (:func:`neurobench_metrics`).
    """
    overrides = dict(constants or {})
    for name, value in (("fp32_add_pj", e_ac), ("fp32_mac_pj", e_mac), ("neuron_op_pj", e_op)):
        if value is not None:
            overrides[name] = value
    values = energy_model.constants(overrides)
    e_ac, e_mac, e_op = values["fp32_add_pj"], values["fp32_mac_pj"], values["neuron_op_pj"]
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
             "if_updates_per_image": 0.0, "ann_macs_per_image": 0.0, "spikes_per_image": 0.0,
             "active_neurons_per_image": 0.0, "zero_skip_macs_per_image": 0.0,
             "ann_additions_per_image": 0.0, "zero_skip_additions_per_image": 0.0,
             "input_elements_per_image": 0.0, "active_input_elements_per_image": 0.0,
             "weights_per_image": 0.0}

    def caused(source, images):
        """The row fields of what ``source``'s spikes cause in the layers they feed."""
        entries = meter.caused.get(source, {})
        layers = [v for key, v in entries.items() if key != "+"]
        additions = entries.get("+")
        return {"accumulates_per_image": sum(v.events for v in layers) / images,
                "ann_macs_per_image": sum(v.ann for v in layers) / images,
                "zero_skip_macs_per_image": sum(v.zero_skip for v in layers) / images,
                "input_elements_per_image": sum(v.elements for v in layers) / images,
                "active_input_elements_per_image": sum(v.active for v in layers) / images,
                "weights_per_image": sum(v.weights for v in layers) / images,
                "shortcut_additions_per_image": meter.additions.get(source, 0) / images,
                "ann_additions_per_image": additions.ann / images if additions else 0.0,
                "zero_skip_additions_per_image":
                    additions.zero_skip / images if additions else 0.0}

    for w in meter.weighted.values():
        if w.source is None:
            rows.append(dict(empty, layer=w.name, kind="analog" if w.analog else "dense",
                             num_steps_in=w.num_steps_in, feeds=w.name,
                             macs_per_image=w.operations / w.images,
                             ann_macs_per_image=w.ann_macs / w.images,
                             zero_skip_macs_per_image=w.zero_skip_macs / w.images,
                             input_elements_per_image=float(w.input_elements),
                             weights_per_image=float(w.weights)))
    for n in meter.neurons.values():
        level = n.level
        rows.append(dict(
            empty, layer=n.name, kind="spiking", level=level, num_steps_in=n.num_steps_in,
            neurons=n.neurons, feeds=" ".join(meter.feeds.get(n.name, [])),
            spikes_per_image=n.emitted_spikes / n.images,
            firing_rate=n.emitted_spikes / (n.images * n.neurons * level),
            active_neurons_per_image=n.active / n.images,
            neuron_updates_per_image=n.neuron_updates / n.images,
            neuron_operations_per_image=n.neuron_operations / n.images,
            model_updates_per_image=float(n.neurons * (5 * level - 2)),
            if_updates_per_image=float(n.neurons * level), **caused(n.name, n.images)))
    for p in meter.pooled.values():
        rows.append(dict(
            empty, layer=p.name, kind="maxpool", level=p.level, num_steps_in=None,
            feeds=" ".join(meter.feeds.get(p.name, [])), spikes_per_image=p.spikes / p.images,
            **caused(p.name, p.images)))
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
    report = {"images": images, "rows": rows, "totals": totals, "timing": dict(timing),
              "energy_pj": {"accumulate": e_ac, "mac": e_mac, "neuron_operation": e_op}}
    energy_model.estimate(report, values)
    report["neurobench"] = neurobench_metrics(meter, report)
    return report


def neurobench_metrics(meter, report):
    """NeuroBench's static and workload metrics (arXiv 2304.04640) of the run, per image.

    - footprint: bytes of the converted network's parameters and buffers, as stored;
    - connection sparsity: zero weights / all weights of the weighted layers (BN folded);
    - activation sparsity: 1 - spikes / (neurons x steps) over the spiking layers' outputs,
      each layer's output train being its L steps;
    - synaptic operations: ``Dense`` (every connection, every step a layer runs),
      ``Effective_ACs`` (a binary input: nonzero input x nonzero weight pairs, every step)
      and ``Effective_MACs`` (the same for a non-binary input);
    - membrane updates: the neuron steps simulated (see the notes).
    """
    snn = meter.snn
    weighted = list(meter.weighted.values())
    weights = sum(w.weights for w in weighted)
    spiking = [row for row in report["rows"] if row["kind"] == "spiking"]
    outputs = sum(row["neurons"] * row["level"] for row in spiking)
    tensors = list(snn.parameters()) + list(snn.buffers())
    return {
        "footprint_bytes": sum(t.numel() * t.element_size() for t in tensors),
        "connection_sparsity": (weights - sum(w.nonzero_weights for w in weighted)) / weights
        if weights else 0.0,
        "activation_sparsity": 1 - report["totals"]["spikes_per_image"] / outputs
        if outputs else 0.0,
        "synaptic_operations": {
            "Effective_MACs": sum(w.effective_macs / w.images for w in weighted),
            "Effective_ACs": sum(w.effective_acs / w.images for w in weighted),
            "Dense": sum(w.dense / w.images for w in weighted)},
        "membrane_updates": report["totals"]["neuron_updates_per_image"],
        "notes": [
            "footprint: the converted network's parameters and buffers as stored, in the "
            "evaluation's dtype (float64 takes twice float32's bytes; int8 weights a quarter)",
            "a spike is a binary event: its height (threshold / L) is folded into the "
            "weights it reaches, so spike inputs count as ACs (NeuroBench's check of a "
            "{0, 1} input would call them MACs)",
            "a layer behind an average pool sees a non-binary input: MACs, one per nonzero "
            "pooled element per step (front-loaded bursts)",
            "the analog first layer and layers fed a non-spike value count every input "
            "element as nonzero (an upper bound where the input holds exact zeros)",
            "biases (added once per window) are not synaptic operations, as in NeuroBench",
            "membrane updates: every neuron step the PASCAL neuron simulates (T_in + "
            "max(T_in, L) - 1 + L per neuron); NeuroBench counts only steps whose potential "
            "changes, at most this",
        ],
    }


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
          ("ANN MACs/img", "ann_macs_per_image", ">", 12),
          ("0-skip MACs/img", "zero_skip_macs_per_image", ">", 15))


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
        f"synaptic-operation proxy (float32 arithmetic, no memory, against the float32 ANN) "
        f"per image: SNN {t['snn_energy_pj_per_image'] / 1e6:.4g} uJ "
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
    lines.extend(format_energy(report))
    reference = ("n/a" if timing["T_eff_reference"] is None
                 else f"{timing['T_eff_reference']:.4f}")
    lines.append(f"T_eff = {timing['T_eff']:.4f} (all layers), {reference} (published script); "
                 f"mean level {timing['mean_level']:.3f}; latency {timing['latency_steps']} "
                 f"steps sequential, {timing['latency_pipelined_steps']} pipelined")
    return lines


def _uj(pj):
    return f"{pj / 1e6:.4g} uJ"


def format_energy(report):
    """The memory-inclusive and quantized-ANN estimates, the break-even and NeuroBench's
    metrics as printable lines."""
    t, model, nb = report["totals"], report["energy_model"], report["neurobench"]
    parts = model["totals_pj_per_image"]

    def with_memory(name):
        part = parts[name]
        share = part["memory"] / part["total"] if part["total"] else 0.0
        return f"{_uj(part['total'])} ({share:.0%} memory)"

    c = {name: entry["value"] for name, entry in model["constants"].items()}
    lines = [
        f"quantized ANN (int{c['weight_bits']:g} weights, ceil(log2(L+1))-bit activations, "
        f"int{c['accumulator_bits']:g} accumulators) per image: dense "
        f"{with_memory('qann_dense')}, zero-skipping {with_memory('qann_zero_skip')}",
        f"spiking network (int{c['weight_bits']:g} weights, {c['potential_bits']:g}-bit "
        f"potentials) per image: event-driven {with_memory('snn_event_driven')}, "
        f"time-stepped {with_memory('snn_time_stepped')}",
    ]
    lines.extend(f"  {sentence}" for sentence in model["break_even"])

    def number(value, digits=3):
        return "-" if value is None else f"{value:.{digits}g}"

    lines.append(f"synaptic events per zero-skipping MAC: {number(t['events_per_zero_skip_mac'])}"
                 f" (never below 1 in an exact conversion); E[q | q > 0] = "
                 f"{number(t['mean_count_when_active'])} spikes per active neuron; "
                 f"{number(t['spikes_per_synapse'])} spikes per synapse")
    ops = nb["synaptic_operations"]
    lines.append(f"NeuroBench: footprint {nb['footprint_bytes'] / 1e6:.4g} MB, connection "
                 f"sparsity {nb['connection_sparsity']:.4f}, activation sparsity "
                 f"{nb['activation_sparsity']:.4f}, synaptic operations Effective_ACs "
                 f"{_si(ops['Effective_ACs'])}, Effective_MACs {_si(ops['Effective_MACs'])}, "
                 f"Dense {_si(ops['Dense'])}, membrane updates {_si(nb['membrane_updates'])} "
                 "(per image; how they are counted: the JSON's notes)")
    return lines


_ESTIMATE_FIELDS = ("snn_event_driven_pj_per_image", "snn_time_stepped_pj_per_image",
                    "qann_dense_pj_per_image", "qann_zero_skip_pj_per_image")

_CSV_FIELDS = ("layer", "kind", "level", "num_steps_in", "neurons", "feeds", "spikes_per_image",
               "firing_rate", "accumulates_per_image", "shortcut_additions_per_image",
               "macs_per_image", "neuron_updates_per_image", "neuron_operations_per_image",
               "model_updates_per_image", "if_updates_per_image", "ann_macs_per_image",
               "snn_energy_pj_per_image", "snn_synaptic_energy_pj_per_image",
               "ann_energy_pj_per_image", "active_neurons_per_image", "zero_skip_macs_per_image",
               "ann_additions_per_image", "zero_skip_additions_per_image",
               "input_elements_per_image", "active_input_elements_per_image",
               "weights_per_image", "activation_bits", "events_per_zero_skip_mac",
               "spikes_per_synapse", "mean_count_when_active", "zero_skip_mac_pj", "event_pj_event_driven",
               "event_pj_time_stepped", "break_even_events_per_mac_event_driven",
               "break_even_events_per_mac_time_stepped") + _ESTIMATE_FIELDS


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


def plot_report(report, path, title=""):
    """PNG: per-layer operations, energies (log scales) and spikes per image with the firing
    rate.

    A spiking layer's bars are the operations its spikes cause in the layers they feed (SNN
    ACs and shortcut additions) next to those layers' ANN MACs, and the energies of the
    three estimates (the proxy, the spiking network with memory in both scenarios, the
    quantized ANN dense and zero-skipping); the analog row is the first layer's MACs."""
    plt = pyplot()
    rows = report["rows"]
    names = [row["layer"] for row in rows]
    x = range(len(rows))
    snn_ops = [row["accumulates_per_image"] + row["shortcut_additions_per_image"] for row in rows]
    macs = [row["macs_per_image"] for row in rows]
    ann = [row["ann_macs_per_image"] for row in rows]
    fig, (top, middle, bottom) = plt.subplots(3, 1, figsize=(max(8, 0.55 * len(rows) + 3), 11),
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
    top.set_title(title or (
        "operations caused by each layer's output; energy per image: SNN "
        f"{t['snn_event_driven_pj_per_image'] / 1e6:.4g} uJ event-driven, "
        f"{t['snn_time_stepped_pj_per_image'] / 1e6:.4g} uJ time-stepped; zero-skipping "
        f"quantized ANN {t['qann_zero_skip_pj_per_image'] / 1e6:.4g} uJ"), fontsize=9)
    estimates = (("ann_energy_pj_per_image", "float32 ANN, proxy", "#dddddd"),
                 ("snn_energy_pj_per_image", "SNN, proxy (fp32 arithmetic)", "#aec7e8"),
                 ("snn_event_driven_pj_per_image", "SNN, event-driven (memory incl.)", "#1f77b4"),
                 ("snn_time_stepped_pj_per_image", "SNN, time-stepped (memory incl.)", "#17becf"),
                 ("qann_dense_pj_per_image", "quantized ANN, dense", "#7f7f7f"),
                 ("qann_zero_skip_pj_per_image", "quantized ANN, zero-skipping", "#2ca02c"))
    width = 0.8 / len(estimates)
    for k, (key, label, color) in enumerate(estimates):
        middle.bar([i - 0.4 + (k + 0.5) * width for i in x], [row[key] for row in rows], width,
                   label=label, color=color)
    middle.set_yscale("log")
    middle.set_ylabel("energy per image (pJ)")
    middle.set_ylim(top=max([row[key] for row in rows for key, _, _ in estimates] + [1.0]) * 30)
    middle.legend(fontsize=7, loc="upper center", ncol=3)
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
    save(fig, path)
