"""Energy of a converted network and of its bit-matched quantized ANN, memory included.

Three estimates per image, from the operation counts of a cost report
(:func:`snn_cost.build_report`; every count is exact):

1. the *synaptic-operation proxy* (:func:`snn_cost.energy_pj`): float32 arithmetic only,
   against the float32 ANN -- the figure papers usually quote;
2. the spiking network with int8 weights, memory traffic included, in two scenarios:
   *event-driven* (membrane potentials in SRAM: every synaptic event reads its weight and
   reads and writes the potential it reaches, every simulated neuron step reads and writes
   one potential, every spike is written to and read from an event queue as one address
   word) and *time-stepped* (potentials in registers, weights stationary: each weight read
   once per image, spikes exchanged as one-bit maps, one bit per neuron per emit step);
3. the bit-matched quantized ANN: int8 weights, ``ceil(log2(L + 1))``-bit activations after a
   layer of level L, wide accumulators; *dense* (every MAC) or *zero-skipping* (only MACs
   whose input element is nonzero), weights and activations read at a stated reuse, each
   activation written once (zero-skipping: the nonzero ones).

The analog first layer (and any layer fed a non-spike value) costs the same on both sides:
int8 weights times ``input_bits`` inputs, read at the ANN's reuse, once per input step.
Pools, biases and BatchNorm are not counted on either side; an average pool's output is
costed at its input's bit width.

Scaling rules (from Horowitz's 8-bit and 32-bit figures): an integer multiply costs
``int8_mult_pj * b1 * b2 / 64`` (array multiplier: area grows with the product of the widths;
this gives 3.2 pJ at 32 x 32 bits against Horowitz's 3.1), an integer add
``int32_add_pj * b / 32`` (0.025 pJ at 8 bits against 0.03), an SRAM access of ``b`` bits
``sram_*_pj_per_64b * b / 64`` (optimistic for narrow accesses: a real array reads a whole
word).
"""
import json
import math
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Constant", "CONSTANTS", "constants", "load_constants", "parse_override",
           "activation_bits", "estimate", "ConstantsError"]


class ConstantsError(ValueError):
    """An energy constant that does not exist or has an invalid value."""


@dataclass(frozen=True)
class Constant:
    value: float | None
    unit: str
    source: str
    uncertain: bool = False


_HOROWITZ = "Horowitz, ISSCC 2014, 45 nm, 0.9 V"

CONSTANTS = {
    "fp32_add_pj": Constant(0.9, "pJ", f"{_HOROWITZ}: 32-bit float add (the proxy's "
                                       "accumulate)"),
    "fp32_mac_pj": Constant(4.6, "pJ", f"{_HOROWITZ}: 32-bit float multiply 3.7 + add 0.9 "
                                       "(the proxy's MAC)"),
    "neuron_op_pj": Constant(0.9, "pJ", "the proxy's neuron operation (an add or compare), "
                                        "priced as a 32-bit float add"),
    "int8_mult_pj": Constant(0.2, "pJ", f"{_HOROWITZ}: 8-bit integer multiply"),
    "int32_add_pj": Constant(0.1, "pJ", f"{_HOROWITZ}: 32-bit integer add"),
    "sram_read_pj_per_64b": Constant(
        20.0, "pJ", f"{_HOROWITZ}: 64-bit read of a 32 KB SRAM (8 KB: 10, 1 MB: 100); the "
                    "array size is a design choice", uncertain=True),
    "sram_write_pj_per_64b": Constant(
        20.0, "pJ", "assumed equal to a read (Horowitz lists reads only)", uncertain=True),
    "weight_bits": Constant(8, "bit", "int8 weights, both networks"),
    "input_bits": Constant(8, "bit", "the image and any other non-spike input"),
    "accumulator_bits": Constant(32, "bit", "the quantized ANN's accumulators"),
    "potential_bits": Constant(32, "bit", "a spiking neuron's membrane potential (as wide as "
                                          "the ANN's accumulator)", uncertain=True),
    "event_bits": Constant(32, "bit", "one address event per spike (event-driven traffic)",
                           uncertain=True),
    "ann_weight_reuse": Constant(
        None, "MACs per read", "null: each weight read once per image (ideal reuse); a number "
                               "R: max(weights, MACs / R) reads", uncertain=True),
    "ann_activation_reuse": Constant(
        None, "MACs per read", "null: each input activation read once per image; a number R: "
                               "max(elements, MACs / R) reads", uncertain=True),
}

_OPTIONAL = {"ann_weight_reuse", "ann_activation_reuse"}  # may be null
_BITS = {"weight_bits", "input_bits", "accumulator_bits", "potential_bits", "event_bits"}


def constants(overrides=None):
    """The constants' values, ``overrides`` (name -> value) applied and checked."""
    values = {name: c.value for name, c in CONSTANTS.items()}
    for name, value in (overrides or {}).items():
        if name not in CONSTANTS:
            raise ConstantsError(f"unknown energy constant {name!r}; known: "
                                 f"{', '.join(CONSTANTS)}")
        if value is None and name not in _OPTIONAL:
            raise ConstantsError(f"energy constant {name!r} needs a number")
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                    not math.isfinite(value) or value < 0:
                raise ConstantsError(f"energy constant {name!r} must be a finite number >= 0, "
                                     f"got {value!r}")
            if (name in _BITS or name in _OPTIONAL) and value <= 0:
                raise ConstantsError(f"energy constant {name!r} must be > 0, got {value!r}")
        values[name] = value
    return values


def load_constants(path):
    """Overrides from a JSON file: ``{"name": value, ...}`` (or a report's ``"energy_model"``
    block, whose ``"constants"`` entries carry ``"value"``)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ConstantsError(f"cannot read energy constants from {path}: {error}") from None
    if isinstance(data, dict) and isinstance(data.get("constants"), dict):
        data = data["constants"]
    if not isinstance(data, dict):
        raise ConstantsError(f"{path}: expected a JSON object of name: value")
    return {name: (value["value"] if isinstance(value, dict) and "value" in value else value)
            for name, value in data.items()}


def parse_override(text):
    """``"name=value"`` (value a number, or ``null``/``none`` for the reuse factors)."""
    name, sep, value = text.partition("=")
    if not sep:
        raise ConstantsError(f"--energy expects NAME=VALUE, got {text!r}")
    name, value = name.strip(), value.strip()
    if value.lower() in ("null", "none"):
        return name, None
    try:
        return name, float(value)
    except ValueError:
        raise ConstantsError(f"--energy {name}: {value!r} is not a number") from None


def activation_bits(level):
    """Bits of a quantized activation with ``level`` + 1 values: ``ceil(log2(L + 1))``."""
    return max(1, math.ceil(math.log2(level + 1)))


class _Prices:
    """Energy per operation and per access from the constants and the scaling rules."""

    def __init__(self, c):
        self.c = c

    def mult(self, b1, b2):
        return self.c["int8_mult_pj"] * b1 * b2 / 64

    def add(self, bits):
        return self.c["int32_add_pj"] * bits / 32

    def read(self, bits):
        return self.c["sram_read_pj_per_64b"] * bits / 64

    def write(self, bits):
        return self.c["sram_write_pj_per_64b"] * bits / 64

    @staticmethod
    def reads(stored, operations, reuse):
        """Reads of ``stored`` values used by ``operations`` at the given reuse (None: each
        read once)."""
        return stored if reuse is None else max(stored, operations / reuse)

    def mac(self, activation):
        c = self.c
        return self.mult(c["weight_bits"], activation) + self.add(c["accumulator_bits"])

    def mac_with_memory(self, activation):
        """A MAC and its share of the reads when the reuse is finite."""
        c, cost = self.c, self.mac(activation)
        if c["ann_weight_reuse"] is not None:
            cost += self.read(c["weight_bits"]) / c["ann_weight_reuse"]
        if c["ann_activation_reuse"] is not None:
            cost += self.read(activation) / c["ann_activation_reuse"]
        return cost

    def event(self, scenario):
        """One synaptic event: add a weight to a potential (event-driven: read the weight,
        read and write the potential)."""
        c = self.c
        cost = self.add(c["potential_bits"])
        if scenario == "event_driven":
            cost += (self.read(c["weight_bits"]) + self.read(c["potential_bits"]) +
                     self.write(c["potential_bits"]))
        return cost

    def dense_layer(self, macs, weights, elements):
        """A layer fed a non-spike value, the same on both sides: ``(arithmetic, memory)``."""
        c = self.c
        bits = c["input_bits"]
        memory = (self.reads(weights, macs, c["ann_weight_reuse"]) * self.read(c["weight_bits"])
                  + self.reads(elements, macs, c["ann_activation_reuse"]) * self.read(bits))
        return macs * self.mac(bits), memory


SCENARIOS = ("event_driven", "time_stepped")
VARIANTS = ("dense", "zero_skip")


def _row_energies(row, p):
    """``{estimate: (arithmetic, memory)}`` (pJ per image) for one report row."""
    c = p.c
    if row["kind"] in ("analog", "dense"):
        steps = row["num_steps_in"] or 1
        snn = p.dense_layer(row["macs_per_image"], row["weights_per_image"],
                            row["input_elements_per_image"] * steps)
        ann = p.dense_layer(row["ann_macs_per_image"], row["weights_per_image"],
                            row["input_elements_per_image"])
        return {"snn_event_driven": snn, "snn_time_stepped": snn, "qann_dense": ann,
                "qann_zero_skip": ann}
    b, bv = row["activation_bits"], c["potential_bits"]
    spiking = row["kind"] == "spiking"
    out = {}
    for variant in VARIANTS:
        dense = variant == "dense"
        macs = row["ann_macs_per_image" if dense else "zero_skip_macs_per_image"]
        adds = row["ann_additions_per_image" if dense else "zero_skip_additions_per_image"]
        elements = row["input_elements_per_image" if dense else
                       "active_input_elements_per_image"]
        written = (row["neurons"] if dense else row["active_neurons_per_image"]) if spiking \
            else 0.0
        arithmetic = macs * p.mac(b) + adds * p.add(c["accumulator_bits"])
        memory = (p.reads(row["weights_per_image"], macs, c["ann_weight_reuse"])
                  * p.read(c["weight_bits"])
                  + p.reads(elements, macs, c["ann_activation_reuse"]) * p.read(b)
                  + adds * p.read(b) + written * p.write(b))
        out[f"qann_{variant}"] = (arithmetic, memory)
    events, adds = row["accumulates_per_image"], row["shortcut_additions_per_image"]
    arithmetic = (events + adds + row["neuron_operations_per_image"]) * p.add(bv)
    potential = p.read(bv) + p.write(bv)
    out["snn_event_driven"] = (arithmetic, events * (p.read(c["weight_bits"]) + potential)
                               + adds * potential
                               + row["neuron_updates_per_image"] * potential
                               + (row["spikes_per_image"] if spiking else 0.0)
                               * (p.write(c["event_bits"]) + p.read(c["event_bits"])))
    maps = row["neurons"] * row["level"] if spiking else 0.0
    out["snn_time_stepped"] = (arithmetic, row["weights_per_image"] * p.read(c["weight_bits"])
                               + maps * (p.write(1) + p.read(1)))
    return out


ESTIMATES = ("snn_event_driven", "snn_time_stepped", "qann_dense", "qann_zero_skip")


def _ratio(a, b):
    return a / b if b else None


def estimate(report, values):
    """Add the memory-inclusive and quantized-ANN estimates to ``report`` (in place).

    Each row gains ``{estimate}_pj_per_image`` for the four estimates, the per-operation
    costs and break-evens; the report gains ``"energy_model"``: constants, totals (with the
    arithmetic/memory split), the ratios and one plain sentence per scenario."""
    p = _Prices(values)
    totals = {name: [0.0, 0.0] for name in ESTIMATES}
    for row in report["rows"]:
        if row["kind"] in ("spiking", "maxpool"):
            row["activation_bits"] = activation_bits(row["level"])
            zero_skip = row["zero_skip_macs_per_image"]
            row["events_per_zero_skip_mac"] = _ratio(row["accumulates_per_image"], zero_skip)
            row["spikes_per_synapse"] = _ratio(row["accumulates_per_image"],
                                               row["ann_macs_per_image"])
            row["mean_count_when_active"] = _ratio(row["spikes_per_image"],
                                                   row["active_neurons_per_image"])
            row["zero_skip_mac_pj"] = p.mac_with_memory(row["activation_bits"])
            for scenario in SCENARIOS:
                event = p.event(scenario)
                row[f"event_pj_{scenario}"] = event
                # below this many events per zero-skipping MAC the layer's synaptic work
                # costs less in the spiking network
                row[f"break_even_events_per_mac_{scenario}"] = _ratio(row["zero_skip_mac_pj"],
                                                                      event)
        for name, (arithmetic, memory) in _row_energies(row, p).items():
            row[f"{name}_pj_per_image"] = arithmetic + memory
            totals[name][0] += arithmetic
            totals[name][1] += memory
    t = report["totals"]
    for name, (arithmetic, memory) in totals.items():
        t[f"{name}_pj_per_image"] = arithmetic + memory
    spike_rows = [r for r in report["rows"] if r["kind"] in ("spiking", "maxpool")]
    accumulates = sum(r["accumulates_per_image"] for r in spike_rows)
    t["zero_skip_macs_per_image"] = sum(r["zero_skip_macs_per_image"] for r in spike_rows)
    t["spike_fed_ann_macs_per_image"] = sum(r["ann_macs_per_image"] for r in spike_rows)
    t["events_per_zero_skip_mac"] = _ratio(accumulates, t["zero_skip_macs_per_image"])
    t["spikes_per_synapse"] = _ratio(accumulates, t["spike_fed_ann_macs_per_image"])
    active = sum(r["active_neurons_per_image"] for r in report["rows"] if r["kind"] == "spiking")
    t["mean_count_when_active"] = _ratio(t["spikes_per_image"], active)
    ratios = {f"{scenario}_over_{variant}": _ratio(t[f"snn_{scenario}_pj_per_image"],
                                                   t[f"qann_{variant}_pj_per_image"])
              for scenario in SCENARIOS for variant in VARIANTS}
    report["energy_model"] = {
        "constants": {name: {"value": values[name], "unit": c.unit, "source": c.source,
                             "uncertain": c.uncertain} for name, c in CONSTANTS.items()},
        "totals_pj_per_image": {name: {"total": a + m, "arithmetic": a, "memory": m}
                                for name, (a, m) in totals.items()},
        "snn_over_qann": ratios,
        "break_even": [_sentence(t, scenario) for scenario in SCENARIOS],
    }
    return report


_SCENARIO_TEXT = {"event_driven": "event-driven (potentials in SRAM)",
                  "time_stepped": "time-stepped (potentials in registers, weights stationary)"}


def _sentence(t, scenario):
    snn = t[f"snn_{scenario}_pj_per_image"]
    zero_skip, dense = t["qann_zero_skip_pj_per_image"], t["qann_dense_pj_per_image"]

    def compare(other, what):
        if not other:
            return f"the {what} quantized ANN costs nothing"
        r = snn / other
        if r < 1:
            return f"{1 / r:.2f}x less than the {what} quantized ANN ({other / 1e6:.4g} uJ)"
        return f"{r:.2f}x more than the {what} quantized ANN ({other / 1e6:.4g} uJ)"

    verdict = "costs less" if snn < zero_skip else "does not break even"
    return (f"{_SCENARIO_TEXT[scenario]}: the spiking network {verdict} against the "
            f"zero-skipping quantized ANN: {snn / 1e6:.4g} uJ per image, "
            f"{compare(zero_skip, 'zero-skipping')} and {compare(dense, 'dense')}")
