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
  (``sum_t (W s_t) + b = W sum_t s_t + b``, so no division by T is needed);
- BatchNorm: folded into the conv/linear before it when that layer's output feeds only the
  BatchNorm; otherwise its scale applies to every step and its shift once per window;
- addition/subtraction: additive constants are added once per window (first step). Trains
  of equal length add step by step. Otherwise the result has the length of the *first*
  tensor operand and every other train is summed over its steps into the result's first
  step. The next PASCAL neuron depends only on the window sum, so any alignment that keeps
  it is exact; the first operand's length reproduces the reference code's
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
import math
from collections import ChainMap

import torch
from torch import fx, nn

from errors import ModelError

from .chunking import MODULE_CALL_COST, Segment, UnitProfile, find_cuts, plan_segments, \
    run_segments
from .graph import model_graph
from .qcfs import qcfs_layers
from .roles import HANDLERS, leaves, segment_boundary, weightless_cones
from .spiking import SIM_MODES, LayerStats

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
        role: a :class:`models.roles.Role`; a BatchNorm folded into its weighted layer is
            ``folded``.
        kind: a :class:`models.roles.Kind`.
        inputs: indices of the ops whose values it reads.
        num_steps: length of its output train in the step simulator (None for non-tensors).
        fate: what the conversion made of it, in words.
        call: how it is called: ``"module"`` (``target`` names the layer), ``"method"``
            (``target`` is the method's name), ``"function"`` (``function`` is the callable)
            or ``"constant"`` (``target`` names the buffer); None for the input and output.
        args, kwargs, bound: the call's arguments, as written and by parameter name, with
            other ops' values as placeholders.
    """

    __slots__ = ("index", "name", "op", "role", "kind", "inputs", "num_steps", "fate", "call",
                 "target", "function", "args", "kwargs", "bound", "tuple_valued", "sign", "key")

    def __init__(self, *, index, name, op, role, kind, inputs, num_steps, call, target,
                 function, args, kwargs, bound, tuple_valued, key):
        self.index, self.name, self.op, self.role, self.kind = index, name, op, role, kind
        self.inputs, self.num_steps, self.call, self.target = inputs, num_steps, call, target
        self.function, self.args, self.kwargs, self.bound = function, args, kwargs, bound
        self.tuple_valued, self.key = tuple_valued, key
        self.fate, self.sign = "", 1

    @property
    def handler(self):
        """The handler of its role (:data:`models.roles.HANDLERS`)."""
        return HANDLERS[self.role]

    def __repr__(self):
        return f"Op({self.index}, {self.name!r}, {self.op}, {self.role}, steps={self.num_steps})"


class _Run:
    """What one pass over the ops needs besides the values: the env key of the images, the
    batch, each value's number of steps, what to record and the step path's window values."""

    __slots__ = ("image", "batch", "sim", "steps", "record", "keep_counts", "windows")

    def __init__(self, batch, sim, steps, record, keep_counts, windows):
        self.image, self.batch, self.sim, self.steps = _IMAGE, batch, sim, steps
        self.record, self.keep_counts, self.windows = record, keep_counts, windows


class _Build:
    """The layers and constants a conversion collects, and the ANN they come from."""

    __slots__ = ("root", "layers", "constants")

    def __init__(self, root):
        self.root, self.layers, self.constants = root, {}, {}


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
        self._const_keys = {op.index: op.target for op in ops if op.call == "constant"}
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
        self.max_level = max((op.num_steps for op in ops if op.handler.spiking), default=1)
        self._window_ops, self._window_sources, self.exact_neurons = weightless_cones(ops)
        self._units = self._find_units()
        self._plans = {}  # (batch, image shape, dtype, device, budget) -> segments

    @property
    def sim(self):
        """The simulation mode chosen at conversion: ``"step"`` or ``"counts"``."""
        return self._sim

    def neurons(self):
        """``[(name, PascalNeuron), ...]`` in forward order, named as the ANN's QCFS layers."""
        return [(op.name, self.layers[op.target]) for op in self.ops if op.handler.spiking]

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
        # spiking layer through weightless operations only (see models.roles.weightless_cones)
        windows = {} if sim == "step" and self._window_ops else None
        run = _Run(batch, sim, steps, record, keep_counts, windows)
        if windows is not None:
            for index in list(env):
                op = self.ops[index] if index != _IMAGE else None
                if index in self._window_ops and (op.handler.spiking or
                                                  index in self._window_sources):
                    windows[index] = op.handler.window(self, op, env[index],
                                                       ChainMap(windows, env), batch)
        for op in self.ops[start:stop]:
            if op.index in self._const_keys:
                continue
            value = op.handler.run(self, op, env, run)
            env[op.index] = value
            if windows is not None and op.index in self._window_ops:
                windows[op.index] = op.handler.window(self, op, value, ChainMap(windows, env),
                                                      batch)
            if probe is not None:
                probe[op.index] = value
            for j in self._free_after[op.index]:
                env.pop(j, None)
                if windows is not None:
                    windows.pop(j, None)
        return env

    @property
    def step_counts(self):
        """Each op's number of steps on the step path (None for non-tensors)."""
        return self._steps["step"]

    @property
    def window_steps(self):
        """Each op's number of steps on the counts path: 1 (None for non-tensors)."""
        return self._steps["counts"]

    def is_ref(self, template):
        """Whether an argument template is a placeholder for another op's value."""
        return isinstance(template, _Ref)

    def resolve(self, template, env):
        """An argument template with every placeholder replaced by its value in ``env``."""
        return self._resolve(template, env)

    def input_value(self, op, env):
        """The value of ``op``'s tensor operand (its ``input`` parameter, however written)."""
        return self._resolve(op.bound["input"], env)

    def call(self, op, env):
        """``op``'s call as the ANN makes it, on the values in ``env``."""
        args, kwargs = self._resolve(op.args, env), self._resolve(op.kwargs, env)
        if op.call == "module":
            return self.layers[op.target](*args, **kwargs)
        if op.call == "method":
            return getattr(args[0], op.target)(*args[1:], **kwargs)
        return op.function(*args, **kwargs)

    def neuron(self, op, x, run, total=None):
        """Run the PASCAL neuron of ``op`` on its input ``x`` (``run``: see :class:`_Run`)."""
        neuron = self.layers[op.target]
        keep = run.record is not None
        batch = run.batch
        if run.sim == "step":
            num_steps_in = run.steps[op.inputs[0]]
            spikes, stats = neuron.simulate(x.reshape(num_steps_in, batch, *x.shape[1:]),
                                            record=keep, keep_counts=run.keep_counts,
                                            total=total)
            value = spikes.reshape(neuron.level * batch, *x.shape[1:])
        else:  # the step simulator's input length, for the statistics
            num_steps_in = self._steps["step"][op.inputs[0]]
            value, stats = neuron.window_counts(x, num_steps_in, record=keep,
                                                keep_counts=run.keep_counts)
        if keep:
            run.record.append(stats)
        return value

    def apply(self, op, env):
        """Evaluate ``op``'s stateless operation as the ANN does (a route, pool, max pool,
        concatenation without padding, identity or size computation) on the values in
        ``env`` (op index -> value; constants are found without it). For analyses of the
        graph such as the cost meter's."""
        return op.handler.apply(self, op, env)

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
                 if segment_boundary(self.ops[alive], self._window_ops, self._window_sources)}
        bounds = [0] + sorted(valid) + [len(self.ops)]
        return [(start, stop, valid.get(start)) for start, stop in zip(bounds, bounds[1:])]

    def chunk_plan(self, x):
        """``[(op names, images per chunk), ...]``: the segments the step simulator runs the
        batch ``x`` in, in forward order, with increasing chunk sizes."""
        return [([op.name for op in self.ops[s.start:s.stop] if op.handler.visible], s.size)
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
            return sum(v.numel() for v in leaves(value) if torch.is_tensor(v))

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
            calls = sum(1 for op in ops if op.handler.module_call)
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
    build = _Build(graph.root)
    with torch.no_grad():
        ops = [_convert_node(g, steps, build) for g in graph.nodes]
    return SpikingNetwork(ops, build.layers, build.constants, sim=sim, step_budget=step_budget,
                          input_shape=input_shape)


def _convert_node(g, steps, build):
    node = g.node
    index_of = {i.node: i.index for i in g.inputs}
    args = fx.node.map_arg(node.args, lambda n: _Ref(index_of[n]))
    kwargs = fx.node.map_arg(node.kwargs, lambda n: _Ref(index_of[n]))
    bound = None if g.binding is None else fx.node.map_arg(
        dict(g.binding.arguments), lambda n: _Ref(index_of[n]))
    op = Op(index=g.index, name=g.name, op=g.op, role=g.role, kind=g.kind,
            inputs=tuple(i.index for i in g.inputs), num_steps=steps[g.index], args=args,
            kwargs=kwargs, bound=bound, tuple_valued=g.tuple_valued,
            call={"call_module": "module", "call_method": "method",
                  "call_function": "function"}.get(node.op),
            target=node.target, function=g.function,
            key=node.name)  # unique within the graph, a valid attribute name
    g.handler.convert(g, op, build)
    return op
