"""Roles and value kinds of the model graph, and the one table of per-role handlers.

A node's *role* is what it becomes in the PASCAL spiking network (:class:`Role`); its value's
*kind* says what the value is made of (:class:`Kind`). :mod:`models.graph` classifies every
node of a traced model; everything that follows -- the number of steps of each train, ranks,
the converter and both simulation paths, the step path's window values, T_eff's fan-ins, the
latencies and the cost meter's spike and operation counts -- asks the node's handler
(``HANDLERS[role]``), so an operation added once is understood everywhere. This is the only
module that branches on a role.

Roles:

- ``input``: the image; it enters once, as an analog current (one step).
- ``const``: a parameter or buffer read by the graph (``get_attr``), or a value computed from
  them alone.
- ``meta``: Python values about tensors (``x.size()``, ``x.shape[0]``, ``c // g``).
- ``neuron``: a QCFS activation, which becomes a PASCAL neuron.
- ``weighted``: a convolution (also transposed, also ``F.conv*`` with parameter weights) or
  linear layer; its bias is injected once per window.
- ``batchnorm``: an eval-mode BatchNorm; ``folded`` into the convolution or linear layer before
  it when that layer's output feeds only the BatchNorm, otherwise a per-step scale plus a
  once-per-window shift.
- ``add``: addition or subtraction of trains and constants (window sums add).
- ``scale``: multiplication or division by a constant.
- ``cat``: concatenation (``torch.cat``) or stacking (``torch.stack``) along a non-batch
  dimension; shorter trains are zero-padded at the end.
- ``pool``: average and adaptive-average pooling, means and sums over non-batch dimensions.
- ``maxpool``: max pooling, only of front-loaded spike bursts or of the one-step analog input.
- ``route``: element rearrangements that keep time folded into the batch dimension:
  flatten, view/reshape, transpose/permute, chunk/split and indexing of their parts.
- ``copy``: maps whose every output element is a copy of one input element or zero: nearest
  upsampling, zero/reflect/replicate/circular padding, pixel shuffle and unshuffle.
- ``resample``: fixed linear interpolation (bilinear, linear, trilinear, bicubic, area).
- ``identity``: dropout (identity at inference), ``nn.Identity``, ``contiguous``, ``clone``.
- ``output``: the network's output (a tensor, or a dict/tuple/list of them); the spiking
  network sums each over its steps.
- ``refused``: no exact spiking counterpart (never part of a converted network).
"""
import builtins
import copy
import enum
import math
import operator
from collections import ChainMap

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.immutable_collections import immutable_dict, immutable_list

from errors import ModelError

from .snn_layers import ChannelAffine, WeightedLayer, bn_affine
from .spiking import PascalNeuron

__all__ = ["HANDLERS", "Kind", "Role", "TENSOR_KINDS", "fold_batchnorms",
           "map_leaves", "view_length_mismatch", "weightless_cones"]


class Role(enum.StrEnum):
    """What a node becomes in the spiking network (see the module docstring)."""

    INPUT = "input"
    CONST = "const"
    META = "meta"
    NEURON = "neuron"
    WEIGHTED = "weighted"
    BATCHNORM = "batchnorm"
    FOLDED = "folded"
    ADD = "add"
    SCALE = "scale"
    CAT = "cat"
    POOL = "pool"
    MAXPOOL = "maxpool"
    ROUTE = "route"
    COPY = "copy"
    RESAMPLE = "resample"
    IDENTITY = "identity"
    OUTPUT = "output"
    REFUSED = "refused"


class Kind(enum.StrEnum):
    """What a value is made of, known statically; decides where max pooling is exact.

    ``analog``: computed from the image alone (one step whose value is the ANN's). ``burst``:
    a spiking layer's front-loaded burst of one amplitude per channel, possibly through
    channel concatenation, channel chunks, other max pools, copies that keep channels
    (nearest upsampling, padding), dropout or identity. ``train``: any other spike-derived
    value. ``const`` and ``meta``: parameters and Python values."""

    ANALOG = "analog"
    BURST = "burst"
    TRAIN = "train"
    CONST = "const"
    META = "meta"
    NONE = ""


TENSOR_KINDS = frozenset({Kind.ANALOG, Kind.BURST, Kind.TRAIN})

_CONV_DIMS = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3, nn.ConvTranspose1d: 1,
              nn.ConvTranspose2d: 2, nn.ConvTranspose3d: 3}
_SUBTRACTIONS = (operator.sub, operator.isub, torch.sub)
_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_POOL_MODULES = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d,
                 nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
_MAXPOOL_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d,
                    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
_POOL_FUNCTIONS = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d,
                   F.adaptive_avg_pool2d, F.adaptive_avg_pool3d)
_MAXPOOL_FUNCTIONS = (F.max_pool1d, F.max_pool2d, F.max_pool3d, F.adaptive_max_pool1d,
                      F.adaptive_max_pool2d, F.adaptive_max_pool3d)
_POOL_DIMS = {**{m: int(m.__name__[-2]) for m in _POOL_MODULES + _MAXPOOL_MODULES},
              **{f: int(f.__name__[-2]) for f in _POOL_FUNCTIONS + _MAXPOOL_FUNCTIONS}}
FUNCTIONAL_POOLS = {
    F.avg_pool1d: nn.AvgPool1d, F.avg_pool2d: nn.AvgPool2d, F.avg_pool3d: nn.AvgPool3d,
    F.adaptive_avg_pool1d: nn.AdaptiveAvgPool1d, F.adaptive_avg_pool2d: nn.AdaptiveAvgPool2d,
    F.adaptive_avg_pool3d: nn.AdaptiveAvgPool3d,
}


# --- ranks and dims ---------------------------------------------------------------------------

def get_attr(root, target):
    """The tensor (or module) a ``get_attr`` node reads: ``root``'s attribute at the dotted
    path ``target``."""
    value = root
    for part in target.split("."):
        value = getattr(value, part)
    return value


def resolve_dim(dim, rank):
    """``dim`` as a non-negative int, or None (not an int, or negative of unknown rank)."""
    if not isinstance(dim, int) or isinstance(dim, bool):
        return None
    if dim >= 0:
        return dim
    return None if rank is None else dim + rank


def input_rank(g):
    """Rank of ``g``'s first tensor operand (its ``input``), or None."""
    operand = g.binding.get("input") if g.binding is not None else None
    operand = operand if isinstance(operand, fx.Node) else None
    for i in g.inputs:
        if (operand is None or i.node is operand) and i.kind in TENSOR_KINDS | {Kind.CONST}:
            return i.rank
    return None


def sizes_rank(sizes):
    """The rank of the tensor whose size tuple the meta node ``sizes`` is (or None)."""
    if sizes.batch != "sizes" or sizes.node.target not in ("size", builtins.getattr):
        return None
    return next((i.rank for i in sizes.inputs if i.kind in TENSOR_KINDS), None)


def function_name(g):
    """The name of the function or method a node calls (``view``, ``interpolate``)."""
    node = g.node
    return node.target if node.op == "call_method" else getattr(node.target, "__name__", "")


def map_leaves(function, value):
    """``value`` with every leaf (anything but a dict, list or tuple) replaced by
    ``function(leaf)``; containers keep their type (dicts their key order), except fx's
    immutable ones, which become plain dicts and lists."""
    if isinstance(value, dict):  # fx's immutable argument dicts become plain ones
        cls = dict if isinstance(value, immutable_dict) else type(value)
        return cls((k, map_leaves(function, v)) for k, v in value.items())
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        cls = list if isinstance(value, immutable_list) else type(value)
        return cls(map_leaves(function, v) for v in value)
    if isinstance(value, tuple):  # a named tuple
        return type(value)(*(map_leaves(function, v) for v in value))
    return function(value)


def leaves(value):
    """The leaves of a (possibly nested) dict/list/tuple value, in order."""
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in leaves(v)]
    if isinstance(value, (list, tuple)):
        return [leaf for v in value for leaf in leaves(v)]
    return [value]


# --- the handlers ------------------------------------------------------------------------------

class Handler:
    """What one role means to every part of the project. The defaults describe a stateless
    tensor operation applied to every step as the ANN calls it."""

    role = None
    spiking = False          # a PASCAL neuron layer
    tensor = True            # its value is a (train of) tensors; const and meta values are not
    weightless = False       # a fixed map of its operands: evaluated on window values exactly
    transparent = False      # T_eff's fan-in search passes through it to weighted layers
    window_source = False    # enters a window cone with its train summed over its steps
    visible = True           # listed in chunk plans
    module_call = True       # counted as a call when the chunk planner prices a segment
    batch_size_free = False  # may use the batch size as it likes (size arithmetic, outputs)
    fate = "applied to every step"

    # graph: steps, ranks, checks

    def num_steps(self, g, steps):
        """Length of ``g``'s train in the step simulator, from its operands' (``steps``:
        index -> length or None)."""
        lengths = [steps[i.index] for i in g.inputs if steps.get(i.index) is not None]
        return lengths[0] if lengths else None

    def rank(self, g, root, input_shape):
        """Rank of ``g``'s value where it follows statically, else None."""
        return input_rank(g)

    def check_rank(self, g):
        """Why ``g`` cannot read its operands' ranks, or None."""
        return None

    def check_batch_uses(self, g, uses):
        """Why ``g``'s use of the batch size (the meta nodes ``uses``) is refused, or None."""
        if self.batch_size_free:
            return None
        return (f"uses the batch size (node {uses[0].name!r}); in the spiking network the batch "
                "dimension holds steps x images, so only a view's batch dimension may be taken "
                "from it")

    # conversion and simulation

    def convert(self, g, op, build):
        """Fill in ``op`` (:class:`models.convert.Op`) for node ``g``: its fate and the layer
        or constant it needs (``build``: the converter's layers and constants)."""
        op.fate = self.fate
        if g.node.op == "call_module":
            build.layers[op.key] = copy.deepcopy(g.module)
            op.target = op.key

    def run(self, net, op, env, run):
        """``op``'s value on the trains in ``env`` (``run``: the batch, the steps of each
        value and what to record; see :class:`models.convert.SpikingNetwork`)."""
        return net.call(op, env)

    def window(self, net, op, value, values, batch):
        """``op``'s window value (its train summed as the ANN computes it) from its operands'
        window values (``values``)."""
        return net.apply(op, values)

    def apply(self, net, op, env):
        """``op`` evaluated as the ANN does on the values in ``env`` (one step each)."""
        return net.call(op, env)

    # timing

    def fan_in(self, g, operands):
        """Largest fan-in of a weighted layer reaching ``g``'s value through weight-free
        operations (``operands``: theirs, one per input), 0 if none."""
        return max(operands, default=0) if self.transparent else 0

    def time(self, g, steps, clock):
        """Update ``clock`` (:class:`_Clock`) for node ``g`` after its inputs' maxima."""

    # cost meter

    def spikes(self, net, op, meter):
        """How ``op``'s value is made of spike sources (:class:`Spikes`, a list of them for a
        tuple value), or None where it is not tracked (counted densely)."""
        return None

    def burst_counts(self, net, op, meter):
        """Per-image spike counts of a burst value (float64), from its operands'."""
        return meter.apply_to_counts(op)

    def meter(self, net, op, meter):
        """Count ``op``'s operations for one batch in ``meter`` (a cost meter's batch)."""


class _InputHandler(Handler):
    role = Role.INPUT
    visible = False
    module_call = False
    fate = "the analog image, one step"

    def num_steps(self, g, steps):
        return 1

    def rank(self, g, root, input_shape):
        if input_shape is not None:
            return len(tuple(input_shape)) + 1
        for user in g.node.users:  # the layer that reads the image fixes its rank
            if user.op == "call_module":
                module = root.get_submodule(user.target)
                spatial = _CONV_DIMS.get(type(module)) or _POOL_DIMS.get(type(module))
                if spatial:
                    return spatial + 2
        return None

    def convert(self, g, op, build):
        op.fate = self.fate

    def run(self, net, op, env, run):
        return env.pop(run.image)

    def window(self, net, op, value, values, batch):
        return value


class _ConstHandler(Handler):
    role = Role.CONST
    tensor = False
    visible = False
    module_call = False

    def num_steps(self, g, steps):
        return None

    def rank(self, g, root, input_shape):
        node = g.node
        value = get_attr(root, node.target) if node.op == "get_attr" else None
        return value.dim() if torch.is_tensor(value) else None

    def convert(self, g, op, build):
        node = g.node
        if node.op == "get_attr":
            build.constants[op.key] = get_attr(build.root, node.target).detach().clone()
            op.call, op.target, op.fate = "constant", op.key, "constant"
            return
        op.fate = "constant, computed as in the ANN"
        if node.op == "call_module":
            build.layers[op.key] = copy.deepcopy(g.module)
            op.target = op.key


class _MetaHandler(Handler):
    role = Role.META
    tensor = False
    visible = False
    module_call = False
    batch_size_free = True
    fate = "size arithmetic, as in the ANN"

    def num_steps(self, g, steps):
        return None

    def rank(self, g, root, input_shape):
        return None


class _NeuronHandler(Handler):
    role = Role.NEURON
    spiking = True

    def num_steps(self, g, steps):
        return g.module.level

    def convert(self, g, op, build):
        build.layers[op.key] = PascalNeuron(g.module.level, g.module.threshold, name=g.name)
        op.target = op.key
        op.fate = f"PASCAL neuron, L={g.module.level}"

    def run(self, net, op, env, run):
        total = None
        if run.windows is not None and op.index in net.exact_neurons:
            total = net.resolve(op.bound["input"], ChainMap(run.windows, env))
        return net.neuron(op, net.input_value(op, env), run, total)

    def window(self, net, op, value, values, batch):
        neuron = net.layers[op.target]
        spikes = value.reshape(neuron.level, batch, *value.shape[1:])
        window = (spikes != 0).sum(0).to(value.dtype) * neuron.amplitude.to(value.dtype)
        return torch.where(spikes[0].isnan(), spikes[0], window)  # NaN stays NaN

    def time(self, g, steps, clock):
        t_in, level = steps[g.inputs[0].index], g.module.level
        clock.per_layer[g.name] = (t_in, t_in + max(t_in, level) - 1 + level)
        clock.done[g.index] += clock.per_layer[g.name][1]
        clock.finish[g.index] = clock.emitting[g.index] + clock.per_layer[g.name][1]
        clock.emitting[g.index] = clock.finish[g.index] - level

    def spikes(self, net, op, meter):
        return Spikes({op.index: meter.identity_ids(op.index)})

    def burst_counts(self, net, op, meter):
        return meter.layer_counts(op.name)


def _weighted_fan_in(module):
    """Most inputs one output of a convolution or linear layer sums (all channels counted)."""
    if isinstance(module, nn.Linear):
        return int(module.in_features)
    if isinstance(module, _TRANSPOSED):
        # output o gets kernel tap j from input i where o = i*s + j*d - p: for a fixed o, the
        # taps j with j*d = o + p (mod s), at most ceil(k / (s / gcd(s, d))) of them
        taps = 1
        for k, s, d in zip(module.kernel_size, module.stride, module.dilation, strict=True):
            taps *= math.ceil(k / (s // math.gcd(s, d)))
        return int(module.in_channels // module.groups * taps)
    return int(module.weight[0].numel())


class _WeightedHandler(Handler):
    role = Role.WEIGHTED
    window_source = True

    def rank(self, g, root, input_shape):
        spatial = _CONV_DIMS.get(type(g.module))
        return input_rank(g) if spatial is None else spatial + 2

    def check_rank(self, g):
        r = input_rank(g)
        spatial = _CONV_DIMS.get(type(g.module))
        if spatial is not None:
            return _spatial_rank_reason(r, spatial)
        if isinstance(g.module, nn.Linear) and r == 1:
            return "reads a 1-D value, which has no batch dimension"
        return None

    def convert(self, g, op, build):
        layer = copy.deepcopy(g.module)
        bias = layer.bias
        layer.bias = None
        folded = [u for u in g.users if u.folded_into is g]
        if folded:
            scale, shift = bn_affine(folded[0].module)
            layer.weight.mul_(scale.view(-1, *([1] * (layer.weight.dim() - 1))))
            bias = shift if bias is None else bias * scale + shift
        build.layers[op.key] = WeightedLayer(layer, bias)
        op.target = op.key
        op.fate = ("every step, bias once per window" +
                   (f", with {folded[0].name!r} folded in" if folded else ""))

    def run(self, net, op, env, run):
        return net.layers[op.target](net.input_value(op, env), run.batch)

    def window(self, net, op, value, values, batch):
        return value.reshape(net.step_counts[op.index], batch, *value.shape[1:]).sum(0)

    def fan_in(self, g, operands):
        return _weighted_fan_in(g.module)

    def meter(self, net, op, meter):
        meter.count_weighted(op, net.layers[op.target].layer)


class _BatchNormHandler(Handler):
    role = Role.BATCHNORM
    window_source = True
    transparent = True

    def convert(self, g, op, build):
        if g.folded_into is not None:
            op.role = Role.FOLDED
            op.fate = f"folded into {g.folded_into.name!r}"
            return
        build.layers[op.key] = ChannelAffine(*bn_affine(g.module))
        op.target = op.key
        op.fate = "scale every step, shift once per window"

    def run(self, net, op, env, run):
        return net.layers[op.target](net.input_value(op, env), run.batch)

    def window(self, net, op, value, values, batch):
        return value.reshape(net.step_counts[op.index], batch, *value.shape[1:]).sum(0)


class _FoldedHandler(Handler):
    """A BatchNorm folded into the weighted layer before it: passes its input on."""

    role = Role.FOLDED
    transparent = True
    module_call = False

    def run(self, net, op, env, run):
        return net.input_value(op, env)

    def apply(self, net, op, env):
        return net.input_value(op, env)

    def spikes(self, net, op, meter):
        return meter.first_tensor_spikes(op)

    def burst_counts(self, net, op, meter):
        return meter.burst_counts(op.inputs[0])


class _IdentityHandler(_FoldedHandler):
    """Dropout and ``nn.Identity`` pass their input on; ``contiguous`` and ``clone`` copy
    it."""

    role = Role.IDENTITY
    weightless = True
    fate = "removed (identity at inference)"

    def convert(self, g, op, build):
        op.fate = self.fate

    def run(self, net, op, env, run):
        if op.call == "method":  # contiguous, clone
            return net.call(op, env)
        return super().run(net, op, env, run)

    def apply(self, net, op, env):
        return self.run(net, op, env, None)

    def spikes(self, net, op, meter):
        if op.call == "method":  # contiguous, clone: a copy, laid out anew
            return meter.rearranged_spikes(op)
        return super().spikes(net, op, meter)


class _AddHandler(Handler):
    role = Role.ADD
    weightless = True
    transparent = True
    fate = "window sums added (first operand's length), constants once per window"

    def num_steps(self, g, steps):  # the first tensor operand's, however the call is written
        by_fx = {i.node: i for i in g.inputs}
        operands = [g.binding.get(name) for name in ("input", "other")]
        return next(steps[by_fx[a].index] for a in operands
                    if isinstance(a, fx.Node) and steps.get(by_fx[a].index) is not None)

    def rank(self, g, root, input_shape):
        ranks = [i.rank for i in g.inputs if i.kind in TENSOR_KINDS | {Kind.CONST}]
        return None if None in ranks else max(ranks)

    def convert(self, g, op, build):
        super().convert(g, op, build)
        subtract = g.function in _SUBTRACTIONS or (g.node.op == "call_method" and
                                                   g.node.target == "sub")
        op.sign = -1 if subtract else 1

    def run(self, net, op, env, run):
        return self.combine(net, op, env, run.batch, run.steps)

    def window(self, net, op, value, values, batch):
        return self.combine(net, op, values, batch, net.window_steps)

    @staticmethod
    def combine(net, op, env, batch, steps):
        """``input + other`` or ``input - other`` (``op.sign`` -1) of trains and constants,
        window sums kept: the result has the first train's length (see
        :mod:`models.convert`)."""
        operands = []  # (value, steps or None for a constant, sign)
        for name, sign in (("input", 1), ("other", op.sign)):
            template = op.bound[name]
            num_steps = steps[template.index] if net.is_ref(template) else None
            operands.append((net.resolve(template, env), num_steps, sign))
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

    def time(self, g, steps, clock):  # a train of another length is folded into the first step
        clock.emitting[g.index] = max([clock.emitting[g.index]] + [
            clock.finish[i.index] for i in g.inputs
            if steps[i.index] is not None and steps[i.index] != steps[g.index]])

    def meter(self, net, op, meter):
        meter.count_shortcut_additions(op)


class _ScaleHandler(Handler):
    role = Role.SCALE
    weightless = True
    transparent = True

    rank = _AddHandler.rank

    def spikes(self, net, op, meter):
        tensors = meter.tensor_spikes(op)
        return tensors[0] if len(tensors) == 1 else None


class _CatHandler(Handler):
    role = Role.CAT
    weightless = True
    transparent = True
    fate = "concatenated, shorter trains zero-padded at the end"

    def num_steps(self, g, steps):
        return max(steps[i.index] for i in g.inputs if steps.get(i.index) is not None)

    def rank(self, g, root, input_shape):
        r = input_rank(g)
        return None if r is None else r + (g.function is torch.stack)

    def convert(self, g, op, build):
        super().convert(g, op, build)
        op.fate = ("stacked" if g.function is torch.stack else "concatenated") + \
            ", shorter trains zero-padded at the end"

    def run(self, net, op, env, run):
        return self.join(net, op, env, run.batch, run.steps)

    def window(self, net, op, value, values, batch):
        return self.join(net, op, values, batch, net.window_steps)

    @staticmethod
    def join(net, op, env, batch, steps):
        """Concatenation or stacking; trains shorter than the result get zero steps
        appended."""
        templates = op.bound["tensors"]
        tensors = list(net.resolve(templates, env))
        if net.is_ref(templates):  # a tuple value passed whole: its parts' length
            templates = [templates] * len(tensors)
        out_steps = steps[op.index]
        for i, (template, value) in enumerate(zip(templates, tensors, strict=True)):
            num_steps = steps[template.index]
            if num_steps < out_steps:
                padding = value.new_zeros(((out_steps - num_steps) * batch, *value.shape[1:]))
                tensors[i] = torch.cat([value, padding])
        return op.function(tensors, op.bound["dim"])

    def spikes(self, net, op, meter):
        return meter.rearranged_spikes(op)


class _PoolHandler(Handler):
    role = Role.POOL
    weightless = True
    transparent = True

    def rank(self, g, root, input_shape):
        b, r = g.binding, input_rank(g)
        if b is not None and "dim" in b.arguments:  # a mean or sum over dims
            dims = b["dim"] if isinstance(b["dim"], (list, tuple)) else (b["dim"],)
            return None if r is None else r if b.get("keepdim") else r - len(dims)
        return r

    def check_rank(self, g):
        spatial = _POOL_DIMS.get(type(g.module) if g.module is not None else g.node.target)
        return None if spatial is None else _spatial_rank_reason(input_rank(g), spatial)

    def spikes(self, net, op, meter):
        source = meter.spikes_of(op.inputs[0])
        if not isinstance(source, Spikes) or source.flattened:
            return None
        pool, flatten = pool_module(net, op, meter.shapes)
        if pool is None:
            return None
        return Spikes(source.parts, source.pools + (pool,), flatten)


class _MaxPoolHandler(Handler):
    role = Role.MAXPOOL
    weightless = True
    transparent = True

    check_rank = _PoolHandler.check_rank

    def convert(self, g, op, build):
        super().convert(g, op, build)
        op.fate = ("max of front-loaded bursts, every step" if g.kind == Kind.BURST else
                   "max of the one-step analog input")

    def spikes(self, net, op, meter):
        # spikes that pass a max pool of bursts are counted after it: a source of its own
        return Spikes({op.index: meter.identity_ids(op.index)}) if op.kind == Kind.BURST \
            else None

    def meter(self, net, op, meter):
        if op.kind == Kind.BURST:
            meter.count_pooled(op)


class _RouteHandler(Handler):
    role = Role.ROUTE
    weightless = True
    transparent = True

    def rank(self, g, root, input_shape):
        b, r, name = g.binding, input_rank(g), function_name(g)
        if isinstance(g.module, nn.Flatten):
            start, end = resolve_dim(g.module.start_dim, r), resolve_dim(g.module.end_dim, r)
            return None if r is None or None in (start, end) else r - (end - start)
        if isinstance(g.module, nn.Unflatten):
            return None if r is None else r + len(g.module.unflattened_size) - 1
        if name == "flatten":
            start = resolve_dim(b.get("start_dim", 0), r)
            end = resolve_dim(b.get("end_dim", -1), r)
            return None if r is None or None in (start, end) else r - (end - start)
        if name in ("view", "reshape"):
            shape = tuple(b["shape"])
            if len(shape) == 1 and isinstance(shape[0], fx.Node):
                sizes = next((i for i in g.inputs if i.node is shape[0]), None)
                return None if sizes is None else sizes_rank(sizes)
            return len(shape)
        if name == "permute":
            return len(tuple(b["dims"]))
        if name == "unsqueeze":
            return None if r is None else r + 1
        if name == "unflatten":
            return None if r is None else r + len(tuple(b["sizes"])) - 1
        if name == "squeeze":
            return None
        if name == "getitem" and not g.inputs[0].tuple_valued:
            index = b["index"] if isinstance(b["index"], tuple) else (b["index"],)
            if r is None or any(i is Ellipsis for i in index):
                return None
            return r - sum(isinstance(i, int) for i in index) + sum(i is None for i in index)
        return r

    def check_batch_uses(self, g, uses):
        if g.binding is not None and "shape" in g.binding.arguments:
            shape = tuple(g.binding["shape"])
            rest = [i for i in uses if any(a is i.node for a in shape[1:])]
            first = shape[0] if shape else None
            whole = len(shape) == 1 and any(i.node is first and i.batch == "sizes"
                                            for i in uses)
            if not rest and (whole or not any(i.node is first and i.batch != "size"
                                              for i in uses)):
                return None
        return super().check_batch_uses(g, uses)

    def run(self, net, op, env, run):
        value = net.call(op, env)
        if not op.tuple_valued and value.shape[0] != run.steps[op.index] * run.batch:
            raise ModelError(
                f"node {op.name!r} ({op.op}) changed the batch dimension to {value.shape[0]} "
                f"(expected {run.steps[op.index] * run.batch}: time is folded into it); keep "
                "the batch dimension first and whole")
        return value

    def spikes(self, net, op, meter):
        source = meter.spikes_of(op.inputs[0])
        if isinstance(source, list):  # a part of a chunk/split
            return source[op.args[1]] if isinstance(op.args[1], int) else None
        return meter.rearranged_spikes(op, flatten_after_pools=True)


class _CopyHandler(Handler):
    """Every output element a copy of one input element, or zero."""

    role = Role.COPY
    weightless = True
    transparent = True
    fate = "elements copied (or zeros), every step"

    def spikes(self, net, op, meter):
        return meter.rearranged_spikes(op)


class _ResampleHandler(Handler):
    role = Role.RESAMPLE
    weightless = True
    transparent = True
    fate = "interpolated, every step"


class _OutputHandler(Handler):
    role = Role.OUTPUT
    visible = False
    batch_size_free = True
    fate = "summed over its steps: the logits"

    def convert(self, g, op, build):
        op.fate = self.fate if len(g.inputs) == 1 else \
            f"{len(g.inputs)} outputs, each summed over its steps"

    def run(self, net, op, env, run):
        def total(template):
            if not net.is_ref(template):
                return template
            value = net.resolve(template, env)
            if run.steps[template.index] is None:
                return value
            return value.reshape(run.steps[template.index], run.batch, *value.shape[1:]).sum(0)

        return map_leaves(total, op.args[0])

    def apply(self, net, op, env):
        return net.resolve(op.args[0], env)


class _RefusedHandler(Handler):
    role = Role.REFUSED


HANDLERS = {h.role: h for h in (
    _InputHandler(), _ConstHandler(), _MetaHandler(), _NeuronHandler(), _WeightedHandler(),
    _BatchNormHandler(), _FoldedHandler(), _AddHandler(), _ScaleHandler(), _CatHandler(),
    _PoolHandler(), _MaxPoolHandler(), _RouteHandler(), _CopyHandler(), _ResampleHandler(),
    _IdentityHandler(), _OutputHandler(), _RefusedHandler())}
assert set(HANDLERS) == set(Role), "every role has a handler"


def _spatial_rank_reason(r, spatial):
    if r is not None and r != spatial + 2:
        unbatched = " (the unbatched form, which would take the batch dimension, into which " \
            "time is folded, for channels)" if r == spatial + 1 else ""
        return (f"reads a {r}-D value{unbatched}; it needs a batched {spatial + 2}-D input "
                f"(B, C and {spatial} spatial dims)")
    return None


# --- graph-wide rules ----------------------------------------------------------------------------

def fold_batchnorms(nodes):
    """Mark each BatchNorm whose input is a convolution or linear layer feeding only it as
    folded: a convolution, whose output channels are the BatchNorm's dim 1, or a Linear
    layer whose output is 2-D (B, features); a Linear applied to (B, C, F) has its features
    last, not where the BatchNorm normalises. Transposed convolutions (output channels in
    the weight's dim 1) keep the BatchNorm as a per-step scale and per-window shift."""
    for n in nodes:
        if n.role == Role.BATCHNORM and len(n.inputs) == 1:
            source = n.inputs[0]
            foldable = isinstance(source.module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) or (
                isinstance(source.module, nn.Linear) and source.rank == 2)
            if source.role == Role.WEIGHTED and source.users == [n] and foldable:
                n.folded_into = source


def view_length_mismatch(graph, steps):
    """``(node, reason)`` for a view whose batch dimension comes from another value's size
    held by a train of another length than its own input's (both hold steps x images in dim
    0), or None."""
    for n in graph.nodes:
        if n.role != Role.ROUTE or n.binding is None or "shape" not in n.binding.arguments:
            continue
        for i in n.inputs:
            source = i.batch_of if i.kind == Kind.META and i.batch else None
            operand = next((j for j in n.inputs if j.kind in TENSOR_KINDS), None)
            if source is not None and operand is not None and \
                    steps[source.index] != steps[operand.index]:
                return n, (f"takes its batch dimension from the size of {source.name!r}, a "
                           f"{steps[source.index]}-step train, for {operand.name!r}, a "
                           f"{steps[operand.index]}-step train (time is folded into the batch "
                           "dimension); take it from the tensor being reshaped, or use -1")
    return None


def weightless_cones(ops):
    """``(values, sources, neurons)``: the spiking layers whose input is computed through
    weightless operations only (pools, means, additions, concatenations, max pools, routes,
    copies, interpolation, scaling by constants) from spiking layers or the image -- and
    possibly also from weighted layers -- or straight from another spiking layer; every
    value those inputs are computed from; and, among them, the weighted layers and unfolded
    BatchNorms (a layer fed by the image alone reads it exactly: one step).

    On the step path such a neuron's per-step currents may sum to a value an ulp away from
    the ANN's pre-activation (``3 x (1/6)`` is not ``0.5``), which decides a count at a level
    boundary; the same operations on the sources' window values (counts times amplitudes)
    give the ANN's value exactly, so the step simulator evaluates them alongside. A weighted
    layer in the cone enters with its train summed over its steps: the parts of the input
    that come from spiking layers and the image are then exact, the weighted part as close
    to the ANN as its own per-step sums."""
    values, sources, neurons = set(), set(), set()
    exact = (Role.NEURON, Role.INPUT)
    for op in ops:
        if op.role != Role.NEURON:
            continue
        cone, stack, weightless_only = set(), [op.inputs[0]], True
        while stack and weightless_only:
            index = stack.pop()
            if index in cone:
                continue
            cone.add(index)
            h = HANDLERS[ops[index].role]
            if h.weightless or ops[index].role in (Role.META, Role.FOLDED):
                stack.extend(ops[index].inputs)  # sizes: a window has B rows, not T*B
            elif ops[index].role not in exact + (Role.CONST,) and not h.window_source:
                weightless_only = False
        roles = {ops[i].role for i in cone}
        has_weightless = any(HANDLERS[r].weightless for r in roles)
        if weightless_only and (Role.NEURON in roles or
                                (Role.INPUT in roles and has_weightless)):
            neurons.add(op.index)
            values |= {i for i in cone if ops[i].role != Role.CONST}
            sources |= {i for i in cone if HANDLERS[ops[i].role].window_source}
    return values, sources, neurons


def segment_boundary(op, window_ops, window_sources):
    """Whether the step simulator may cut its segments where ``op``'s value is the only one
    alive: a tensor value (not a tuple), whose window value (if it has one) the next segment
    can recover from the train."""
    if not HANDLERS[op.role].tensor or op.role == Role.OUTPUT or op.tuple_valued:
        return False
    return not (op.index in window_ops and op.index not in window_sources
                and op.role not in (Role.NEURON, Role.INPUT))


# --- the cost meter's rules ------------------------------------------------------------------

class Spikes:
    """How a value is made of spikes: ``parts[source] = ids`` (per-image tensor shaped like
    the value before ``pools``, holding 1 + the flat index of the source element each element
    carries, 0 for elements from other sources and zeros), then average ``pools`` (module
    objects) and, if ``flattened``, a flatten."""

    __slots__ = ("parts", "pools", "flattened")

    def __init__(self, parts, pools=(), flattened=False):
        self.parts, self.pools, self.flattened = parts, tuple(pools), flattened


def pool_module(net, op, shapes):
    """``(pool module, flattens)`` equivalent to a pooling op, for :func:`spike_reach`, or
    ``(None, False)``.

    Functional pools are recognised by the function called (the module classes take the same
    arguments, after the input, with the same names), their arguments read by name however
    the call spelled them; a mean or sum over every spatial dimension is an adaptive pool to
    size 1 (a sum reaches the same outputs as a mean)."""
    if op.call == "module":
        return net.layers[op.target], False
    rank = len(shapes[op.inputs[0]]) + 1
    spatial = rank - 2
    bound = dict(op.bound)  # the arguments by name, however the call spelled them
    if "dim" not in bound:  # a functional pool: the module with the same arguments
        del bound["input"]
        if bound.get("stride") == []:  # the schema's default: the kernel size
            bound["stride"] = None
        return FUNCTIONAL_POOLS[op.function](**bound), False
    dims = bound["dim"] if isinstance(bound["dim"], (list, tuple)) else (bound["dim"],)
    dims = {d % rank for d in dims}
    keepdim = bound.get("keepdim", False)
    if dims != set(range(2, rank)) or spatial not in (1, 2, 3):
        return None, False
    pool = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)[spatial - 1](1)
    return pool, not keepdim


__all__ += ["Spikes", "pool_module", "segment_boundary", "get_attr",
            "resolve_dim", "input_rank", "sizes_rank", "leaves"]
