"""``convert_to_snn(ann)``: a new PASCAL spiking network computing exactly what the ANN does,
built node by node from the ANN's traced graph (:mod:`models.graph`).

How each value is carried: a spike train of T steps for a batch of B images is one tensor
``(T*B, ...)``, time folded into the batch dimension step-major (rows ``t*B .. t*B+B-1`` are
step t), so every stateless operation -- convolutions, pools, flatten, view/transpose
channel shuffles, chunk, cat along channels -- runs on all steps at once, exactly as the ANN
calls it. Each value's number of steps is static metadata of the converted network
(``Op.num_steps``, from the levels), never an attribute of a tensor.

What each node becomes (its fate, :meth:`SpikingNetwork.fates`):

- the image enters once: one step;
- QCFS: a :class:`~models.spiking.PascalNeuron` (T_in steps in, ``level`` steps out);
- conv/linear: applied to every step; its bias is added once per window, at the first step
  (spec 3.4: ``sum_t (W s_t) + b = W sum_t s_t + b``, so no division by T is needed);
- BatchNorm: folded into the conv/linear before it when that layer's output feeds only the
  BatchNorm; otherwise its scale applies to every step and its shift once per window;
- addition/subtraction: additive constants are added once per window (first step). Trains
  of equal length add step by step. Otherwise the result has the length of the *first*
  tensor operand and every other train is summed over its steps into the result's first
  step. The next PASCAL neuron depends only on the window sum, so any alignment that keeps
  it is exact (spec 3.5); the first operand's length reproduces the reference code's
  residual block (``branch + shortcut``: the branch's length), so the paper models keep
  their step counts, latency and neuron-update counts;
- concatenation: the result is as long as the longest input; shorter trains get zero steps
  appended at the end (window sums, and front-loaded bursts, unchanged);
- average pools, means over space, multiplications by constants, flatten/view/transpose/
  chunk/split: applied to every step as they are (linear, no constant);
- max pooling: applied to every step, only where its input is a front-loaded burst of one
  amplitude per channel (:mod:`models.graph` checks it statically) or the one-step analog
  input. A PASCAL layer emits spike t iff t < count, all of amplitude a, so at step t the
  window's maximum is a iff some count exceeds t: the step-wise max is the burst of the
  largest count, a * max(count) in total, which is what the ANN's max pool of the QCFS
  levels gives. Zero steps appended by a concatenation keep bursts bursts. A max of sums or
  averages of trains is no such burst and is refused;
- dropout and identity: removed;
- output: the per-step outputs are summed over the steps, which gives the ANN logits.

Level boundaries: a spiking layer fed through weightless operations only (pools, additions,
concatenations, max pools, routes, scaling by constants) from spiking layers and the image
gets, on the step path, its window input evaluated as the ANN does it (on its sources' counts
times amplitudes) besides the per-step currents, and takes its count from it, so a
pre-activation exactly on a level boundary is not lost to the rounding of a per-step sum
(:func:`_weightless_cones`, :meth:`models.spiking.PascalNeuron.simulate`).

Two simulation modes, fixed at conversion: ``"step"`` simulates every step; ``"counts"``
carries every train as its window sum (one step) and each neuron takes its count from the
closed form (:func:`models.spiking.pascal_counts`). The same operations run on both; only
the neuron differs.
"""
import copy
import math
from collections import ChainMap

import torch
from torch import fx, nn

from errors import ModelError

from .chunking import MODULE_CALL_COST, Segment, UnitProfile, find_cuts, plan_segments, \
    run_segments
from .graph import get_attr, model_graph
from .qcfs import qcfs_layers
from .spiking import SIM_MODES, LayerStats, PascalNeuron

__all__ = ["Op", "SpikingNetwork", "check_eval_mode", "check_finite", "check_thresholds",
           "convert_to_snn"]

_IMAGE = -1  # env key of the image batch fed to the input op


class _Ref:
    """Placeholder in an op's argument template for the value of op ``index``."""

    __slots__ = ("index",)

    def __init__(self, index):
        self.index = index

    def __repr__(self):
        return f"%{self.index}"


class Op:
    """One node of the converted network.

    Attributes:
        index: position in forward order.
        name: the ANN call-site name (``layer1.0``, ``layer1.0.relu_1``, ``conv1.relu``).
        op: the ANN operation (``Conv2d``, ``torch.cat``, ``Tensor.view``).
        role: see :mod:`models.graph`; a BatchNorm folded into its weighted layer is
            ``folded``.
        kind: analog, burst, train, const or meta (:mod:`models.graph`).
        inputs: indices of the ops whose values it reads.
        num_steps: length of its output train in the step simulator (None for non-tensors).
        fate: what the conversion made of it, in words.
    """

    __slots__ = ("index", "name", "op", "role", "kind", "inputs", "num_steps", "fate", "call",
                 "target", "args", "kwargs", "bound", "tuple_valued", "sign")

    def __init__(self, **fields):
        for key in self.__slots__:
            setattr(self, key, fields.get(key))

    def __repr__(self):
        return f"Op({self.index}, {self.name!r}, {self.op}, {self.role}, steps={self.num_steps})"


class WeightedLayer(nn.Module):
    """A conv/linear layer applied to every step of a folded train ``(T*B, ...)``, its bias
    (with a folded BatchNorm's shift) added once per window, at the first step."""

    def __init__(self, layer, bias):
        super().__init__()
        self.layer = layer
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def forward(self, x, batch):  # (T*B, ...) -> (T*B, ...)
        y = self.layer(x)
        if self.bias is not None:
            bias = self.bias if isinstance(self.layer, nn.Linear) else \
                self.bias.view(-1, *([1] * (y.dim() - 2)))
            y[:batch] += bias
        return y


class ChannelAffine(nn.Module):
    """An eval-mode BatchNorm not folded into a layer: ``scale`` on every step (channel dim 1),
    ``shift`` once per window, at the first step."""

    def __init__(self, scale, shift):
        super().__init__()
        self.register_buffer("scale", scale.detach().clone())
        self.register_buffer("shift", shift.detach().clone())

    def forward(self, x, batch):  # (T*B, C, ...) -> (T*B, C, ...)
        view = (-1, *([1] * (x.dim() - 2)))
        y = x * self.scale.view(view)
        y[:batch] += self.shift.view(view)
        return y


class SpikingNetwork(nn.Module):
    """A converted network. ``forward(x)`` takes the analog image batch ``(B, C, H, W)``.

    The image enters once (T = 1); every spiking layer emits its own number of steps; the
    output is the sum of the last operation's per-step outputs, equal to the ANN logits.

    ``sim`` (fixed at conversion) is ``"step"`` (simulate every time step) or ``"counts"``
    (each train travels as its window sum and each neuron takes its count from the closed
    form). Both give the same logits and emitted spike counts.

    Memory: a layer fed a T-step train holds T activation maps per image where the ANN holds
    one, so the step simulator runs the batch in chunks, segment by segment
    (:mod:`models.chunking`): the operations are cut where exactly one value is alive, and
    each segment runs chunks of as many images as keep every operation's alive values (all
    steps counted) within what the ANN holds at its largest operation for ``step_budget``
    images (default: the batch), with at most a sixteenth of that again held in buffers
    between segments. The plan is made once per batch shape from a one-image counts-path
    probe; :meth:`chunk_plan` shows it. Chunks are independent (images never interact), so
    the result does not depend on them. A larger ``step_budget`` trades memory for speed.
    """

    def __init__(self, ops, layers, constants, sim="step", step_budget=None, input_shape=None):
        super().__init__()
        if sim not in SIM_MODES:
            raise ValueError(f"sim must be one of {SIM_MODES}, got {sim!r}")
        if step_budget is not None and (not isinstance(step_budget, int) or step_budget < 1):
            raise ValueError(f"step_budget must be a positive int or None, got {step_budget!r}")
        self.ops = ops
        self.layers = nn.ModuleDict(layers)
        self.constants = nn.Module()
        for key, value in constants.items():
            self.constants.register_buffer(key, value)
        self._sim = sim
        self.step_budget = step_budget
        self.input_shape = None if input_shape is None else tuple(int(s) for s in input_shape)
        self.output_index = len(ops) - 1
        self._const_keys = {op.index: op.target for op in ops if op.role == "const" and
                            op.call == "constant"}
        self._steps = {"step": [op.num_steps for op in ops],
                       "counts": [None if op.num_steps is None else 1 for op in ops]}
        last_use = {}
        for op in ops:
            for j in op.inputs:
                last_use[j] = op.index
        self._last_use = last_use
        self._free_after = [[] for _ in ops]
        for j, i in last_use.items():
            self._free_after[i].append(j)
        self.max_level = max((op.num_steps for op in ops if op.role == "neuron"), default=1)
        self._window_ops, self._window_sources, self._exact_neurons = _weightless_cones(ops)
        self._units = self._find_units()
        self._plans = {}  # (batch, image shape, dtype, device, budget) -> segments

    @property
    def sim(self):
        """The simulation mode chosen at conversion: ``"step"`` or ``"counts"``."""
        return self._sim

    def neurons(self):
        """``[(name, PascalNeuron), ...]`` in forward order, named as the ANN's QCFS layers."""
        return [(op.name, self.layers[op.target]) for op in self.ops if op.role == "neuron"]

    def fates(self):
        """``[(name, operation, fate), ...]``: what the conversion did with every ANN node."""
        return [(op.name, op.op, op.fate) for op in self.ops]

    # --- running ---------------------------------------------------------------------------

    @torch.inference_mode()
    def forward(self, x):
        return self._forward(x, self._sim)[0]

    @torch.inference_mode()
    def forward_with_stats(self, x, keep_counts=False):
        """``(logits, [LayerStats, ...])`` in forward order; with ``keep_counts`` each entry
        also holds the per-neuron emitted spike counts (int tensor ``(B, ...)``). On the
        counts path the correction spikes are not simulated and are reported as None."""
        logits, entries = self._forward(x, self._sim, record=[], keep_counts=keep_counts)
        per_layer = {}  # each neuron sees the chunks of the batch in batch order
        for entry in entries:
            per_layer.setdefault(entry.name, []).append(entry)
        return logits, [LayerStats.concat(per_layer[name]) for name, _ in self.neurons()
                        if name in per_layer]

    def check_input(self, x):
        """Raise ``ValueError`` (one line) if the network was converted for another per-image
        input shape than ``x``'s."""
        if self.input_shape is not None and tuple(x.shape[1:]) != self.input_shape:
            raise ModelError(
                f"the spiking network was converted for inputs of shape {self.input_shape} "
                f"per image, got {tuple(x.shape[1:])}; convert it again with "
                f"input_shape={tuple(x.shape[1:])} (or without input_shape)")

    @torch.inference_mode()
    def trains(self, x):
        """``{op name: (T, B, ...) tensor}``: every tensor value the network computes for ``x``,
        time-major (the step simulator's trains, or the counts path's one-step window sums),
        the whole batch at once. For inspecting what flows between layers."""
        self.check_input(x)
        values = {}
        self._run_ops({_IMAGE: x}, 0, len(self.ops), x.shape[0], self._sim, probe=values)
        steps = self._steps[self._sim]
        return {self.ops[i].name: v.reshape(steps[i], x.shape[0], *v.shape[1:])
                for i, v in values.items()
                if torch.is_tensor(v) and steps[i] is not None and i != self.output_index}

    def _forward(self, x, sim, record=None, keep_counts=False):
        self.check_input(x)
        segments = self._segments(x) if sim == "step" else [
            Segment(0, len(self.ops), max(1, x.shape[0]))]

        def run_segment(k, value, batch):
            segment = segments[k]
            env = {_IMAGE if segment.source is None else segment.source: value}
            self._run_ops(env, segment.start, segment.stop, batch, sim, record, keep_counts)
            following = segments[k + 1].source if k + 1 < len(segments) else self.output_index
            return env[following]

        return run_segments(x, segments, run_segment), record

    def _lookup(self, env, ref):
        if ref.index in self._const_keys:
            return getattr(self.constants, self._const_keys[ref.index])
        return env[ref.index]

    def _resolve(self, template, env):
        return fx.node.map_aggregate(
            template, lambda a: self._lookup(env, a) if isinstance(a, _Ref) else a)

    def _run_ops(self, env, start, stop, batch, sim, record=None, keep_counts=False,
                 probe=None):
        """Run ops ``start..stop-1`` on ``env`` (index -> value; the images under ``_IMAGE``),
        freeing values after their last use. ``sim``: which neuron to run (the counts path for
        the planning probe). ``record``: a list receiving LayerStats; ``probe``: a dict
        receiving every ``index -> value`` (kept alive: for one-image probes and inspection)."""
        steps = self._steps[sim]
        # step path: the window value (as the counts path computes it) of every value feeding a
        # spiking layer through weightless operations only (see _weightless_cones)
        windows = {} if sim == "step" and self._window_ops else None
        if windows is not None:
            for index in list(env):
                if index in self._window_ops and (self.ops[index].role == "neuron" or
                                                  index in self._window_sources):
                    windows[index] = self._window(self.ops[index], env[index], env, windows,
                                                  batch)
        for op in self.ops[start:stop]:
            if op.index in self._const_keys:
                continue
            role = op.role
            if role == "input":
                value = env.pop(_IMAGE)
            else:
                if role == "neuron":
                    total = None
                    if windows is not None and op.index in self._exact_neurons:
                        total = self._resolve(op.bound["input"], ChainMap(windows, env))
                    value = self._neuron(op, self._input(op, env), batch, sim, steps, record,
                                         keep_counts, total)
                elif role in ("weighted", "batchnorm"):
                    value = self.layers[op.target](self._input(op, env), batch)
                elif role == "folded" or (role == "identity" and op.call != "method"):
                    value = self._input(op, env)  # dropout, nn.Identity (methods are called)
                elif role == "add":
                    value = self._add(op, env, batch, steps)
                elif role == "cat":
                    value = self._cat(op, env, batch, steps)
                elif role == "output":
                    x = self._resolve(op.args, env)[0]
                    value = x.reshape(steps[op.inputs[0]], batch, *x.shape[1:]).sum(0)
                else:
                    value = self._call(op, self._resolve(op.args, env),
                                       self._resolve(op.kwargs, env))
                    if role == "route" and not op.tuple_valued and value.shape[0] != \
                            steps[op.index] * batch:
                        raise ModelError(
                            f"node {op.name!r} ({op.op}) changed the batch dimension to "
                            f"{value.shape[0]} (expected {steps[op.index] * batch}: time is "
                            "folded into it); keep the batch dimension first and whole")
            env[op.index] = value
            if windows is not None and op.index in self._window_ops:
                windows[op.index] = self._window(op, value, env, windows, batch)
            if probe is not None:
                probe[op.index] = value
            for j in self._free_after[op.index]:
                env.pop(j, None)
                if windows is not None:
                    windows.pop(j, None)
        return env

    def _window(self, op, value, env, windows, batch):
        """The window value of ``op`` (its train summed as the ANN computes it): the image
        itself, a spiking layer's count times its amplitude, a weighted layer's train summed
        over its steps, or a weightless operation evaluated on its operands' window values,
        exactly as the counts path does."""
        if op.role == "input":
            return value
        if op.role == "neuron":
            neuron = self.layers[op.target]
            spikes = value.reshape(neuron.level, batch, *value.shape[1:])
            window = (spikes != 0).sum(0).to(value.dtype) * neuron.amplitude.to(value.dtype)
            return torch.where(spikes[0].isnan(), spikes[0], window)  # NaN stays NaN
        if op.index in self._window_sources:
            return value.reshape(self._steps["step"][op.index], batch, *value.shape[1:]).sum(0)
        values = ChainMap(windows, env)
        steps = self._steps["counts"]
        if op.role == "add":
            return self._add(op, values, batch, steps)
        if op.role == "cat":
            return self._cat(op, values, batch, steps)
        return self.apply(op, values)

    def _input(self, op, env):
        """The value of ``op``'s tensor operand (its ``input`` parameter, however written)."""
        return self._resolve(op.bound["input"], env)

    def _call(self, op, args, kwargs):
        if op.call == "module":
            return self.layers[op.target](*args, **kwargs)
        if op.call == "method":
            return getattr(args[0], op.target)(*args[1:], **kwargs)
        return op.target(*args, **kwargs)

    def _neuron(self, op, x, batch, sim, steps, record, keep_counts, total=None):
        neuron = self.layers[op.target]
        keep = record is not None
        if sim == "step":
            num_steps_in = steps[op.inputs[0]]
            spikes, stats = neuron.simulate(x.reshape(num_steps_in, batch, *x.shape[1:]),
                                            record=keep, keep_counts=keep_counts, total=total)
            value = spikes.reshape(neuron.level * batch, *x.shape[1:])
        else:  # the step simulator's input length, for the statistics
            num_steps_in = self._steps["step"][op.inputs[0]]
            value, stats = neuron.window_counts(x, num_steps_in, record=keep,
                                                keep_counts=keep_counts)
        if keep:
            record.append(stats)
        return value

    def _add(self, op, env, batch, steps):
        """``input + other`` or ``input - other`` (``op.sign`` -1) of trains and constants,
        window sums kept: the result has the first train's length (see the module
        docstring)."""
        operands = []  # (value, steps or None for a constant, sign)
        for name, sign in (("input", 1), ("other", op.sign)):
            template = op.bound[name]
            num_steps = steps[template.index] if isinstance(template, _Ref) else None
            operands.append((self._resolve(template, env), num_steps, sign))
        trains = [o for o in operands if o[1] is not None]
        (first, first_steps, first_sign), others = trains[0], trains[1:]
        if others and others[0][1] == first_steps:  # equal lengths: step by step
            y = first + others[0][0] if others[0][2] > 0 else first - others[0][0]
            others = []
        else:
            y = -first if first_sign < 0 else first.clone()
        # operands that broadcast the result to more elements (a (1, C, 1, 1) constant added
        # to a one-channel train): every step of it broadcast, as the ANN broadcasts the value
        shape = torch.broadcast_shapes(y.shape, *(
            (y.shape[0], *value.shape[1:]) if num_steps is not None else value.shape
            for value, num_steps, _ in operands if torch.is_tensor(value)))
        if shape != y.shape:
            y = y.expand(shape).clone()
        for value, num_steps, sign in others:  # summed over its window into the first step
            head = value.reshape(num_steps, batch, *value.shape[1:]).sum(0)
            y[:batch] += head if sign > 0 else -head
        for value, num_steps, sign in operands:  # constants: once per window
            if num_steps is None:
                y[:batch] += value if sign > 0 else -value
        return y

    def _cat(self, op, env, batch, steps):
        """Concatenation; trains shorter than the result get zero steps appended."""
        templates = op.bound["tensors"]
        tensors = list(self._resolve(templates, env))
        if isinstance(templates, _Ref):  # a tuple value passed whole: its parts' length
            templates = [templates] * len(tensors)
        out_steps = steps[op.index]
        for i, (template, value) in enumerate(zip(templates, tensors, strict=True)):
            num_steps = steps[template.index]
            if num_steps < out_steps:
                padding = value.new_zeros(((out_steps - num_steps) * batch, *value.shape[1:]))
                tensors[i] = torch.cat([value, padding])
        return torch.cat(tensors, op.bound["dim"])

    def apply(self, op, env):
        """Evaluate ``op``'s stateless operation as the ANN does (a route, pool, max pool,
        concatenation without padding, identity or size computation) on the values in
        ``env`` (op index -> value; constants are found without it). For analyses of the
        graph such as the cost meter's."""
        if op.role == "folded" or (op.role == "identity" and op.call != "method"):
            return self._input(op, env)
        return self._call(op, self._resolve(op.args, env), self._resolve(op.kwargs, env))

    # --- planning ----------------------------------------------------------------------------

    def probe(self, x):
        """Run the counts path on the first image of ``x``; ``{op index: value}`` (one image,
        every train one step). Used for the chunk plan and by the cost meter (shapes, and the
        values of size computations)."""
        values = {}
        with torch.inference_mode():
            self._run_ops({_IMAGE: x[:1]}, 0, len(self.ops), 1, "counts", probe=values)
        return values

    def _find_units(self):
        """Op ranges between the positions where one tensor train is alive."""
        skip = set(self._const_keys)
        cuts = find_cuts([op.inputs for op in self.ops], skip)
        valid = {position: alive for position, alive in cuts.items()
                 if self.ops[alive].role not in ("meta", "const", "output")
                 and not self.ops[alive].tuple_valued
                 # a window value the next segment could not recover from the train
                 and not (alive in self._window_ops and alive not in self._window_sources
                          and self.ops[alive].role not in ("neuron", "input"))}
        bounds = [0] + sorted(valid) + [len(self.ops)]
        return [(start, stop, valid.get(start)) for start, stop in zip(bounds, bounds[1:])]

    def chunk_plan(self, x):
        """``[(op names, images per chunk), ...]``: the segments the step simulator runs the
        batch ``x`` in, in forward order, with increasing chunk sizes."""
        hidden = ("input", "const", "meta", "output")
        return [([op.name for op in self.ops[s.start:s.stop] if op.role not in hidden], s.size)
                for s in self._segments(x)]

    def _segments(self, x):
        batch = x.shape[0]
        if self._sim == "counts" or batch == 0:
            return [Segment(0, len(self.ops), max(1, batch))]
        key = (batch, tuple(x.shape[1:]), x.dtype, x.device, self.step_budget)
        if key not in self._plans:  # planned once per batch shape
            profiles, ann_work = self._profile(x)
            budget = batch if self.step_budget is None else self.step_budget
            starts = plan_segments(profiles, batch, budget * ann_work)
            segments = []
            for k, (first, size) in enumerate(starts):
                last = starts[k + 1][0] if k + 1 < len(starts) else len(self._units)
                start, source = self._units[first][0], self._units[first][2]
                segments.append(Segment(start, self._units[last - 1][1], size, source,
                                        1 if source is None else self.ops[source].num_steps))
            self._plans[key] = segments
        return self._plans[key]

    def _profile(self, x):
        """``([UnitProfile per unit], ann_work)`` from a one-image probe: alive elements per
        image while each op runs (all steps counted), and the same with every train one step
        (what the ANN holds)."""
        values = self.probe(x)

        def numel(index):
            value = values.get(index)
            if torch.is_tensor(value):
                return value.numel()
            if isinstance(value, (tuple, list)):
                return sum(v.numel() for v in value if torch.is_tensor(v))
            return 0

        sizes = {op.index: numel(op.index) for op in self.ops}
        steps = {op.index: op.num_steps or 0 for op in self.ops}
        work, ann_work, alive = [], 1, set()
        for op in self.ops:
            alive = {j for j in alive if self._last_use.get(j, -1) >= op.index}
            held = sum(steps[j] * sizes[j] for j in alive)
            held_ann = sum(sizes[j] for j in alive if steps[j])
            work.append(held + steps[op.index] * sizes[op.index])
            ann_work = max(ann_work, held_ann + (sizes[op.index] if steps[op.index] else 0))
            if op.index not in self._const_keys:
                alive.add(op.index)
        profiles = []
        for start, stop, _ in self._units:
            ops = self.ops[start:stop]
            following = self._units_output(stop)
            weights = sum(t.numel() for op in ops if op.target in self.layers
                          for t in self.layers[op.target].state_dict().values())
            calls = sum(1 for op in ops if op.role not in ("input", "const", "meta", "folded",
                                                            "identity"))
            profiles.append(UnitProfile(
                work=max(max(work[start:stop]), 1),
                output=max(steps[following] * sizes[following], 1),
                cost=weights + MODULE_CALL_COST * calls))
        return profiles, ann_work

    def _units_output(self, stop):
        for start, _, source in self._units:
            if start == stop:
                return source
        return self.output_index


_WEIGHTLESS = ("pool", "maxpool", "add", "scale", "cat", "route", "identity")
_WINDOW_SOURCES = ("weighted", "batchnorm")


def _weightless_cones(ops):
    """``(values, sources, neurons)``: the spiking layers whose input is computed through
    weightless operations only (pools, means, additions, concatenations, max pools, routes,
    scaling by constants) from spiking layers or the image -- and possibly also from
    weighted layers -- or straight from another spiking layer; every value those inputs are
    computed from; and, among them, the weighted layers (a layer fed by the image alone reads
    it exactly: one step).

    On the step path such a neuron's per-step currents may sum to a value an ulp away from
    the ANN's pre-activation (``3 x (1/6)`` is not ``0.5``), which decides a count at a level
    boundary; the same operations on the sources' window values (counts times amplitudes)
    give the ANN's value exactly, so the step simulator evaluates them alongside. A weighted
    layer in the cone enters with its train summed over its steps: the parts of the input
    that come from spiking layers and the image are then exact, the weighted part as close
    to the ANN as its own per-step sums."""
    values, sources, neurons = set(), set(), set()
    for op in ops:
        if op.role != "neuron":
            continue
        cone, stack, weightless_only = set(), [op.inputs[0]], True
        while stack and weightless_only:
            index = stack.pop()
            if index in cone:
                continue
            cone.add(index)
            role = ops[index].role
            if role in _WEIGHTLESS + ("meta", "folded"):  # sizes: a window has B rows, not T*B
                stack.extend(ops[index].inputs)
            elif role not in ("neuron", "input", "const") + _WINDOW_SOURCES:
                weightless_only = False
        roles = {ops[i].role for i in cone}
        exact_sources = "neuron" in roles or "input" in roles
        if weightless_only and ("neuron" in roles or (exact_sources and roles & set(_WEIGHTLESS))):
            neurons.add(op.index)
            values |= {i for i in cone if ops[i].role != "const"}
            sources |= {i for i in cone if ops[i].role in _WINDOW_SOURCES}
    return values, sources, neurons


def check_thresholds(ann):
    """Raise ``ValueError`` naming the first QCFS layer whose threshold is not finite and > 0."""
    for name, module in qcfs_layers(ann):
        value = float(module.threshold.detach().reshape(-1)[0])
        if not math.isfinite(value) or value <= 0:
            raise ModelError(
                f"QCFS layer {name!r} has threshold {value!r}; PASCAL conversion needs a finite "
                "threshold > 0 (a layer with threshold <= 0 can only output 0 and has no spiking "
                "counterpart). Retrain with thresholds clamped positive "
                "(models.clamp_thresholds_) or fix the checkpoint.")


_TRAINING_SENSITIVE = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
                       nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                       nn.FeatureAlphaDropout)


def check_eval_mode(ann):
    """Raise ``ValueError`` naming the first BatchNorm or Dropout module in training mode.

    In training mode a BatchNorm normalises with the batch's statistics and a Dropout drops
    units at random, so the ANN is not the fixed function the spiking network reproduces.
    """
    for name, module in ann.named_modules():
        if isinstance(module, _TRAINING_SENSITIVE) and module.training:
            raise ModelError(
                f"{type(module).__name__} {name or type(ann).__name__!r} is in training mode "
                "(it would use batch statistics or drop units); call .eval() first")


def check_finite(ann):
    """Raise ``ValueError`` naming the first parameter or buffer holding a NaN or infinity
    (weights, biases, BatchNorm statistics, thresholds): the spiking network would not
    reproduce the ANN's non-finite arithmetic."""
    for name, tensor in (*ann.named_parameters(), *ann.named_buffers()):
        if tensor.is_floating_point() and tensor.device.type != "meta":
            finite = torch.isfinite(tensor.detach())
            if not bool(finite.all()):
                bad = tensor.detach()[~finite]
                what = "NaN" if bool(bad.isnan().any()) else "infinite"
                raise ModelError(
                    f"{name!r} holds {what} values ({int((~finite).sum())} of "
                    f"{tensor.numel()}); conversion needs finite weights, BatchNorm statistics "
                    "and thresholds (fix the checkpoint or retrain)")


def convert_to_snn(ann: nn.Module, sim: str = "step", step_budget=None, *,
                   input_shape=None) -> SpikingNetwork:
    """Return a new spiking network equivalent to ``ann`` (which is left unchanged).

    ``sim="step"`` (default) simulates every time step of every layer; ``sim="counts"`` is the
    exact shortcut that runs each linear layer once on window sums and takes every neuron's
    emitted count from the closed form (same logits and emitted spikes, no correction spikes;
    about the ANN's cost). ``step_budget``: see :class:`SpikingNetwork`. ``input_shape``
    (optional, per image, e.g. ``(3, 32, 32)``) fixes the input's rank for resolving
    negative dims where no convolution or pool reads the image (:func:`models.graph.model_graph`),
    and the network then refuses inputs of any other shape (:meth:`SpikingNetwork.check_input`);
    without it, any shape the ANN accepts runs.

    The ANN is traced with torch.fx (:mod:`models.graph`) and every node converted as the
    module docstring describes; ``snn.fates()`` lists what happened to each. Works for any
    dtype and device the ANN has (``convert_to_snn(ann.double())`` gives the float64
    certificate).

    Raises:
        ValueError: a BatchNorm or Dropout in training mode ("call .eval() first"); a
            threshold <= 0 or non-finite; a NaN or infinite weight, bias or BatchNorm
            statistic (naming the tensor); or one line naming the first node with no exact
            spiking counterpart (a ReLU, SiLU, max pooling of a sum of trains, a product of
            two tensors, ...) and why.
    """
    if sim not in SIM_MODES:
        raise ValueError(f"sim must be one of {SIM_MODES}, got {sim!r}")
    check_eval_mode(ann)
    check_thresholds(ann)
    check_finite(ann)
    graph = model_graph(ann, input_shape=input_shape)
    steps = graph.num_steps()
    ops, layers, constants = [], {}, {}
    with torch.no_grad():
        for g in graph.nodes:
            ops.append(_convert_node(g, graph.root, steps, layers, constants))
    return SpikingNetwork(ops, layers, constants, sim=sim, step_budget=step_budget,
                          input_shape=input_shape)


def _convert_node(g, root, steps, layers, constants):
    node = g.node
    key = node.name  # unique within the graph, a valid attribute name
    index_of = {i.node: i.index for i in g.inputs}
    args = fx.node.map_arg(node.args, lambda n: _Ref(index_of[n]))
    kwargs = fx.node.map_arg(node.kwargs, lambda n: _Ref(index_of[n]))
    bound = None if g.binding is None else fx.node.map_arg(
        dict(g.binding.arguments), lambda n: _Ref(index_of[n]))
    op = Op(index=g.index, name=g.name, op=g.op, role=g.role, kind=g.kind,
            inputs=tuple(i.index for i in g.inputs), num_steps=steps[g.index], args=args,
            kwargs=kwargs, bound=bound, tuple_valued=g.tuple_valued, sign=1,
            fate="applied to every step",
            call={"call_module": "module", "call_method": "method",
                  "call_function": "function"}.get(node.op), target=node.target)
    role = g.role
    if role == "input":
        op.fate = "the analog image, one step"
    elif role == "const":
        if node.op == "get_attr":
            constants[key] = get_attr(root, node.target).detach().clone()
            op.call, op.target, op.fate = "constant", key, "constant"
        else:
            op.fate = "constant, computed as in the ANN"
            if op.call == "module":
                layers[key] = copy.deepcopy(g.module)
                op.target = key
    elif role == "meta":
        op.fate = "size arithmetic, as in the ANN"
    elif role == "neuron":
        layers[key] = PascalNeuron(g.module.level, g.module.threshold, name=g.name)
        op.target = key
        op.fate = f"PASCAL neuron, L={g.module.level}"
    elif role == "weighted":
        layer = copy.deepcopy(g.module)
        bias = layer.bias
        layer.bias = None
        folded = [u for u in g.users if u.folded_into is g]
        if folded:
            scale, shift = _bn_affine(folded[0].module)
            layer.weight.mul_(scale.view(-1, *([1] * (layer.weight.dim() - 1))))
            bias = shift if bias is None else bias * scale + shift
        layers[key] = WeightedLayer(layer, bias)
        op.target = key
        op.fate = ("every step, bias once per window" +
                   (f", with {folded[0].name!r} folded in" if folded else ""))
    elif role == "batchnorm":
        if g.folded_into is not None:
            op.role = "folded"
            op.fate = f"folded into {g.folded_into.name!r}"
        else:
            layers[key] = ChannelAffine(*_bn_affine(g.module))
            op.target = key
            op.fate = "scale every step, shift once per window"
    elif role == "add":
        function, method = node.target, node.target if node.op == "call_method" else None
        subtract = method == "sub" or getattr(function, "__name__", "") in (
            "sub", "isub")
        op.sign = -1 if subtract else 1
        op.fate = "window sums added (first operand's length), constants once per window"
    elif role == "cat":
        op.fate = "concatenated, shorter trains zero-padded at the end"
    elif role == "identity":
        op.fate = "removed (identity at inference)"
    elif role == "maxpool":
        op.fate = ("max of front-loaded bursts, every step" if g.kind == "burst" else
                   "max of the one-step analog input")
    elif role == "output":
        op.fate = "summed over its steps: the logits"
    if op.call == "module" and role in ("pool", "maxpool", "route"):
        layers[key] = copy.deepcopy(g.module)
        op.target = key
    return op


def _bn_affine(bn):
    """Eval-mode BN as ``y = scale * x + shift`` per channel."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift
