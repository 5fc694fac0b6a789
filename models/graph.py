"""The model graph: a network traced with torch.fx, every node classified by what it becomes
in the PASCAL spiking network (its *role*), and the refusal of whatever has no exact spiking
counterpart. qcfsify, the converter, T_eff/latency and the cost meter all read this one
classification, so they agree on what a model is.

The roles and value kinds, and what each means to the converter and every analysis, are in
:mod:`models.roles`, the one module that branches on a role.

Before a node is classified, its arguments are bound to its signature
(:mod:`models.signatures`), so every spelling of a call reads the same; every tensor value's
rank is propagated statically, so that dims resolve against it (``-4`` of a 4-D value is the
batch dimension, into which time is folded); and meta values record whether they hold the
batch size, whose only accepted use is a view's batch dimension.
"""
import builtins
import inspect
import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

from errors import ModelError

from .qcfs import QCFS
from .roles import (HANDLERS, TENSOR_KINDS, Kind, Role, fold_batchnorms, get_attr,
                    input_rank, leaves, resolve_dim, sizes_rank, view_length_mismatch)
from .signatures import BindError, bind

__all__ = ["GraphNode", "ModelGraph", "UnsupportedModelError", "call_site_names",
           "check_inplace_aliasing", "get_attr", "model_graph", "trace"]


class UnsupportedModelError(ModelError):
    """A model, or one of its nodes, has no exact spiking counterpart (one-line message)."""


_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TRANSPOSED_CONVS = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_WEIGHTED = _CONVS + _TRANSPOSED_CONVS + (nn.Linear,)
_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
_POOL_MODULES = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d,
                 nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
_MAXPOOL_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d,
                    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
_IDENTITY_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
                     nn.AlphaDropout, nn.FeatureAlphaDropout)
_ROUTE_MODULES = (nn.Flatten, nn.Unflatten)
_PAD_MODULES = (nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d,
                nn.ConstantPad3d, nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d,
                nn.ReplicationPad1d, nn.ReplicationPad2d, nn.ReplicationPad3d,
                nn.CircularPad1d, nn.CircularPad2d, nn.CircularPad3d)
_SHUFFLE_MODULES = (nn.PixelShuffle, nn.PixelUnshuffle)
_UPSAMPLE_MODULES = (nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d)
RELU_MODULES = (nn.ReLU, nn.ReLU6)
RELU_FUNCTIONS = (F.relu, torch.relu, F.relu_, torch.relu_, F.relu6)
RELU_METHODS = ("relu", "relu_")
# clamps that are a ReLU when the lower bound is 0 and the upper bound (if any) positive
CLAMP_FUNCTIONS = (torch.clamp, torch.clip, torch.clamp_min, F.hardtanh)
CLAMP_METHODS = ("clamp", "clip", "clamp_min")
_CLAMP_INPLACE = (torch.clamp_, torch.clip_, torch.clamp_min_, F.hardtanh_)
_CLAMP_INPLACE_METHODS = ("clamp_", "clip_", "clamp_min_")

_POOL_FUNCTIONS = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d,
                   F.adaptive_avg_pool2d, F.adaptive_avg_pool3d)
_MAXPOOL_FUNCTIONS = (F.max_pool1d, F.max_pool2d, F.max_pool3d, F.adaptive_max_pool1d,
                      F.adaptive_max_pool2d, F.adaptive_max_pool3d)
_ADD_FUNCTIONS = (operator.add, operator.sub, operator.iadd, operator.isub, torch.add, torch.sub)
_SUB_FUNCTIONS = (operator.sub, operator.isub, torch.sub)
_SCALE_FUNCTIONS = (operator.mul, operator.imul, torch.mul, operator.truediv, operator.itruediv,
                    torch.div, operator.neg, torch.neg)
_CAT_FUNCTIONS = (torch.cat, torch.concat, torch.concatenate, torch.stack)
_WEIGHTED_FUNCTIONS = {F.conv1d: nn.Conv1d, F.conv2d: nn.Conv2d, F.conv3d: nn.Conv3d,
                       F.conv_transpose1d: nn.ConvTranspose1d,
                       F.conv_transpose2d: nn.ConvTranspose2d,
                       F.conv_transpose3d: nn.ConvTranspose3d, F.linear: nn.Linear}
_NEAREST = ("nearest", "nearest-exact")
_INTERPOLATION = ("linear", "bilinear", "bicubic", "trilinear", "area")
_DROPOUT_FUNCTIONS = (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout,
                      F.feature_alpha_dropout)
# functions and methods that rearrange elements, with where their dim argument sits
_ROUTE_FUNCTIONS = (torch.flatten, torch.reshape, torch.transpose, torch.permute, torch.chunk,
                    torch.split, torch.squeeze, torch.unsqueeze, operator.getitem)
_ROUTE_METHODS = ("view", "reshape", "flatten", "unflatten", "transpose", "permute", "chunk",
                  "split", "squeeze", "unsqueeze")
_TUPLE_VALUED = ("chunk", "split")
_META_FUNCTIONS = (operator.getitem, operator.add, operator.sub, operator.mul,
                   operator.floordiv, operator.truediv, operator.mod, operator.iadd,
                   operator.isub, operator.imul, operator.ifloordiv, operator.itruediv,
                   operator.imod, operator.eq, operator.ne,
                   operator.lt, operator.le, operator.gt, operator.ge, operator.neg,
                   torch._assert, builtins.getattr, builtins.len)
_META_METHODS = ("size", "dim")

_TENSOR_KINDS = TENSOR_KINDS
SUPPORTED = ("QCFS activations, conv/transposed-conv/linear layers (modules or F.conv*/F.linear "
             "with parameter weights), BatchNorm, average and adaptive-average pooling, sums and "
             "means, max pooling of spike bursts, addition, concatenation and stacking, "
             "multiplication by constants, upsampling (F.interpolate, nn.Upsample), padding, "
             "pixel (un)shuffle, flatten/view/transpose/chunk/split and dropout")


class _Proxy(fx.Proxy):
    """An fx proxy that records augmented assignments (``b += a``) as the in-place operators
    they are (``operator.iadd``), where the plain proxy records ``b = b + a``: the graph then
    computes what the eager model does, and in-place aliasing can be checked."""


def _augmented(function):
    def method(self, other):
        return self.tracer.create_proxy("call_function", function, (self, other), {})
    return method


for _name in ("iadd", "isub", "imul", "itruediv", "ifloordiv", "imod", "ipow", "iand", "ior",
              "ixor", "ilshift", "irshift", "imatmul"):
    setattr(_Proxy, f"__{_name}__", _augmented(getattr(operator, _name)))


class Tracer(fx.Tracer):
    """torch.fx tracer that keeps QCFS activations as single nodes and records augmented
    assignments as in-place operators."""

    def is_leaf_module(self, module, qualified_name):
        return isinstance(module, QCFS) or super().is_leaf_module(module, qualified_name)

    def proxy(self, node):
        return _Proxy(node, self)


def trace(model):
    """``(root, graph)``: the fx graph of ``model`` (its own graph for a GraphModule).

    Raises:
        UnsupportedModelError: tracing failed (e.g. data-dependent control flow).
    """
    if isinstance(model, fx.GraphModule):
        return model, model.graph
    try:
        graph = Tracer().trace(model)
    except Exception as error:  # fx raises many types; the first line says what happened
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise UnsupportedModelError(
            f"cannot trace {type(model).__name__} with torch.fx ({type(error).__name__}: "
            f"{first}); models with data-dependent control flow cannot be converted") from None
    return model, graph


def _describe(node, root):
    """Short description of a node's operation, e.g. ``Conv2d``, ``torch.cat``,
    ``Tensor.view``."""
    if node.op == "call_module":
        return type(root.get_submodule(node.target)).__name__
    if node.op == "call_function":
        module = getattr(node.target, "__module__", None) or ""
        name = getattr(node.target, "__name__", str(node.target))
        if module.startswith("torch.nn.functional") or getattr(F, name, None) is node.target:
            return f"F.{name}"
        if module in ("_operator", "operator"):
            return f"operator.{name}"
        if module.startswith("torch"):
            return f"torch.{name}"
        return f"{module}.{name}" if module else name
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    return node.op


def _function_name(node):
    if node.op == "call_method":
        return node.target
    return getattr(node.target, "__name__", "op").strip("_") or "op"


def call_site_names(root, graph):
    """``{fx node: call-site name}`` for every call node.

    A module call is named by the module (``layer1.0.relu``); its second and later calls get
    ``_1``, ``_2``, ... (``layer1.0.relu_1``). A function or method call is named by the
    innermost module it was traced in plus the function (``conv1.relu`` for ``F.relu``
    inside module ``conv1``; ``relu`` at the top level), with the same suffixes. A name never
    collides with another module of ``root``.
    """
    taken = {name for name, _ in root.named_modules() if name}
    names, counts = {}, {}
    for node in graph.nodes:
        if node.op not in ("call_module", "call_function", "call_method"):
            continue
        if node.op == "call_module":
            base = node.target
        else:
            stack = node.meta.get("nn_module_stack") or {}
            scope = list(stack.values())[-1][0] if stack else ""
            base = f"{scope}.{_function_name(node)}" if scope else _function_name(node)
        index = counts.get(base, 0)
        while True:
            name = base if index == 0 else f"{base}_{index}"
            index += 1
            own_module = node.op == "call_module" and name == node.target
            if name not in names.values() and (own_module or name not in taken):
                break
        counts[base] = index
        names[node] = name
    return names


class GraphNode:
    """One node of the traced model and what it becomes in the spiking network.

    Attributes:
        index: position in forward order.
        node: the fx node.
        name: call-site name (module path for module calls).
        op: e.g. ``Conv2d``, ``torch.cat``, ``Tensor.view``.
        role: a :class:`models.roles.Role`; kind: a :class:`models.roles.Kind`.
        inputs, users: the GraphNodes read (in order of appearance) and reading it.
        module: the module called (for ``F.conv2d``/``F.linear`` with parameter weights, an
            equivalent module holding them), or None.
        function: the callable of a function call, or None.
        tuple_valued: the value is a tuple (chunk/split).
        folded_into: for a BatchNorm folded into its weighted layer, that layer.
        binding: the call's arguments by parameter name (:mod:`models.signatures`).
        rank: number of dims of a tensor value, where known statically.
        batch: for meta values, what they hold of the batch size: "size" (the batch size),
            "derived" (computed from it), "sizes" (a size tuple, the batch size first) or
            None; batch_of: the tensor whose batch size it holds.
    """

    __slots__ = ("index", "node", "name", "op", "role", "kind", "inputs", "users", "module",
                 "function", "tuple_valued", "folded_into", "binding", "rank", "batch",
                 "batch_of")

    def __init__(self, index, node, name, op, inputs, module=None):
        self.index, self.node, self.name, self.op = index, node, name, op
        self.role, self.kind = Role.REFUSED, Kind.NONE
        self.inputs, self.users, self.module = inputs, [], module
        self.function = node.target if node.op == "call_function" else None
        self.tuple_valued, self.folded_into, self.binding = False, None, None
        self.rank, self.batch, self.batch_of = None, None, None

    @property
    def handler(self):
        """The handler of its role (:data:`models.roles.HANDLERS`)."""
        return HANDLERS[self.role]

    def __repr__(self):
        return f"GraphNode({self.name!r}, {self.op}, role={self.role}, kind={self.kind})"


class ModelGraph:
    """The classified graph of a model: ``nodes`` in topological (forward) order."""

    def __init__(self, root, graph, nodes):
        self.root, self.graph, self.nodes = root, graph, nodes
        self.output = nodes[-1]

    def neurons(self):
        """The spiking (QCFS) nodes in forward order."""
        return [n for n in self.nodes if n.handler.spiking]

    def num_steps(self):
        """``{index: steps}``: length of each tensor value's train in the step simulator.

        The image has one step; a spiking layer emits ``level`` steps; an addition has the
        length of its first tensor operand (see :mod:`models.convert`); a concatenation the
        longest of its inputs; every other operation its (first) input's. const and meta
        values have None.
        """
        steps = {}
        for n in self.nodes:
            steps[n.index] = n.handler.num_steps(n, steps)
        return steps


def model_graph(model, *, context="", input_shape=None):
    """Trace ``model`` and classify every node; raise on the first node in forward order
    that has no exact spiking counterpart.

    Args:
        model: an ``nn.Module`` (a ``GraphModule`` is used as it is).
        context: prefix for error messages (e.g. the architecture name).
        input_shape: optional per-image input shape, e.g. ``(3, 32, 32)``. Every value's rank
            is propagated statically (see :func:`_rank`) so that negative dims resolve; the
            input's rank comes from ``input_shape``, else from the layer that reads it (a
            2-D convolution reads ``(B, C, H, W)``).

    Raises:
        UnsupportedModelError: one line naming the node, its operation and why.
    """
    root, graph = trace(model)
    names = call_site_names(root, graph)
    nodes, by_fx = [], {}
    qcfs_calls = {}
    prefix = f"{context}: " if context else ""
    for fx_node in graph.nodes:
        inputs = [by_fx[n] for n in fx_node.all_input_nodes]
        gnode = GraphNode(len(nodes), fx_node, names.get(fx_node, fx_node.name),
                          _describe(fx_node, root), inputs,
                          root.get_submodule(fx_node.target)
                          if fx_node.op == "call_module" else None)
        reason = _classify(gnode, root) or _check_batch_uses(gnode)
        if reason is None:
            gnode.rank = gnode.handler.rank(gnode, root, input_shape)
            reason = gnode.handler.check_rank(gnode)
        if reason is not None:
            raise UnsupportedModelError(f"{prefix}node {gnode.name!r} ({gnode.op}) {reason}")
        if isinstance(gnode.module, QCFS):
            if fx_node.target in qcfs_calls:
                raise UnsupportedModelError(
                    f"{prefix}node {gnode.name!r} (QCFS) calls the QCFS module "
                    f"{fx_node.target!r} a second time; each call site needs its own QCFS "
                    "layer (models.qcfsify gives every ReLU call its own)")
            qcfs_calls[fx_node.target] = gnode
        for i in inputs:
            if gnode not in i.users:
                i.users.append(gnode)
        nodes.append(gnode)
        by_fx[fx_node] = gnode
    check_inplace_aliasing(root, graph, names, context=context, checked=lambda node, operand:
                           by_fx[operand].kind in TENSOR_KINDS | {Kind.CONST})
    unused = [name for name, module in root.named_modules()
              if isinstance(module, QCFS) and name not in qcfs_calls]
    if unused:
        raise UnsupportedModelError(
            f"{prefix}the QCFS module {unused[0]!r} is never called by forward; remove it "
            "(levels are given per QCFS module, so it would take one, and every analysis "
            "would miss it)")
    fold_batchnorms(nodes)
    model = ModelGraph(root, graph, nodes)
    mismatch = view_length_mismatch(model, model.num_steps())
    if mismatch is not None:
        node, reason = mismatch
        raise UnsupportedModelError(f"{prefix}node {node.name!r} ({node.op}) {reason}")
    return model


# --- in-place aliasing ------------------------------------------------------------------------
# An in-place operation's result is a new node of the graph, but in the eager model the old
# tensor (and every view of it) holds the new value afterwards. QCFS layers (replacing in-place
# ReLUs) and the spiking network compute out of place, so a later reader of the old tensor
# would get the value before the operation.

_INPLACE_OPERATORS = (operator.iadd, operator.isub, operator.imul, operator.itruediv,
                      operator.ifloordiv, operator.imod, operator.ipow, operator.iand,
                      operator.ior, operator.ixor, operator.ilshift, operator.irshift,
                      operator.imatmul)
_INPLACE_KEYWORD_FUNCTIONS = (F.relu, F.relu6, F.hardtanh, F.elu, F.selu, F.celu, F.leaky_relu,
                              F.rrelu, F.silu, F.hardswish, F.hardsigmoid, F.mish, F.threshold)
_VIEW_METHODS = ("view", "view_as", "reshape", "reshape_as", "flatten", "unflatten",
                 "transpose", "t", "permute", "squeeze", "unsqueeze", "contiguous", "expand",
                 "expand_as", "narrow", "select", "chunk", "split", "unbind", "detach",
                 "movedim", "moveaxis", "swapaxes", "swapdims", "as_strided", "diagonal",
                 "unfold", "real", "imag")
_VIEW_FUNCTIONS = (torch.flatten, torch.reshape, torch.transpose, torch.permute, torch.squeeze,
                   torch.unsqueeze, torch.chunk, torch.split, torch.narrow, torch.select,
                   torch.unbind, torch.movedim, torch.moveaxis, torch.swapaxes, torch.swapdims,
                   torch.detach, torch.diagonal, operator.getitem)


def _inplace_operand(node, root):
    """The tensor node an operation changes in place, or None."""
    first = node.args[0] if node.args else None
    if node.op == "call_function":
        name = getattr(node.target, "__name__", "")
        if node.target in _INPLACE_KEYWORD_FUNCTIONS:
            try:
                bound = inspect.signature(node.target).bind(*node.args, **node.kwargs)
            except (TypeError, ValueError):
                return None
            if bound.arguments.get("inplace", False) is not True:
                return None
            first = bound.arguments.get("input")
        elif not (node.target in _INPLACE_OPERATORS or
                  (name.endswith("_") and not name.startswith("_"))):
            return None
    elif node.op == "call_method":
        if not (node.target.endswith("_") and not node.target.startswith("_")):
            return None
    elif node.op == "call_module":
        module = root.get_submodule(node.target)
        if getattr(module, "inplace", False) is not True or isinstance(module, _IDENTITY_MODULES):
            return None
    else:
        return None
    return first if _is_node(first) else None


def _view_source(node, root):
    """The tensor node whose storage ``node``'s value shares (a view), or None."""
    first = node.args[0] if node.args else None
    if not _is_node(first):
        return None
    if node.op == "call_method" and node.target in _VIEW_METHODS:
        return first
    if node.op == "call_function" and node.target in _VIEW_FUNCTIONS:
        return first
    if node.op == "call_module" and isinstance(root.get_submodule(node.target),
                                               _IDENTITY_MODULES + _ROUTE_MODULES):
        return first
    return None


def _reads_only_metadata(node):
    return (node.op == "call_method" and node.target in _META_METHODS) or (
        node.op == "call_function" and node.target is builtins.getattr)


def check_inplace_aliasing(root, graph, names, *, context="", checked=None):
    """Refuse an in-place operation whose old value is read again after it.

    The operation's operand, every view of it and whatever it is a view of share one
    storage; if any of them is read by a node after the in-place operation (other than for
    its size), the traced graph and the eager model disagree.

    Args:
        names: ``{fx node: call-site name}`` (:func:`call_site_names`).
        checked: optional ``(in-place node, operand) -> bool``; pairs for which it is False
            are not checked (e.g. ``c += 1`` on a Python number).

    Raises:
        UnsupportedModelError: one line naming the in-place node and the later reader.
    """
    order = {node: position for position, node in enumerate(graph.nodes)}
    parent = {}

    def find(node):
        while parent.get(node, node) is not node:
            node = parent[node]
        return node

    inplace = []
    for node in graph.nodes:
        source = _view_source(node, root)
        operand = _inplace_operand(node, root)
        if operand is not None and (checked is None or checked(node, operand)):
            inplace.append((node, operand))
            source = operand
        if source is not None:
            parent[find(node)] = find(source)
    prefix = f"{context}: " if context else ""
    for node, operand in inplace:
        storage = find(operand)
        for alias in graph.nodes:
            if order[alias] >= order[node]:
                break
            if find(alias) is not storage:
                continue
            for user in alias.users:
                if order[user] > order[node] and not _reads_only_metadata(user):
                    raise UnsupportedModelError(
                        f"{prefix}node {names.get(node, node.name)!r} ({_describe(node, root)}) "
                        f"changes {names.get(operand, operand.name)!r} in place and node "
                        f"{names.get(user, user.name)!r} reads it afterwards; QCFS layers and "
                        "the spiking network compute out of place, so that node would see the "
                        "old value (write it out of place: inplace=False, or b = b + a)")


# --- classification ----------------------------------------------------------------------------

def _is_node(value):
    return isinstance(value, fx.Node)


def _classify(g, root):
    """Set ``g.role``, ``g.kind``, ``g.binding`` (and ``tuple_valued``); return a refusal
    reason or None."""
    node = g.node
    kinds = [i.kind for i in g.inputs]
    tensor_kinds = [k for k in kinds if k in _TENSOR_KINDS]
    spike_kind = Kind.TRAIN if any(k in (Kind.BURST, Kind.TRAIN) for k in tensor_kinds) \
        else Kind.ANALOG

    if node.op == "placeholder":
        g.role, g.kind = Role.INPUT, Kind.ANALOG
        if any(n.op == "placeholder" for n in node.graph.nodes if n is not node):
            return ("is one of several inputs; the spiking network takes one image batch "
                    "(give the other inputs defaults or fix them in a wrapper)")
        return None
    if node.op == "get_attr":
        g.role, g.kind = Role.CONST, Kind.CONST
        return None
    if node.op == "output":
        g.role, g.kind = Role.OUTPUT, spike_kind
        outputs = leaves(node.args[0])
        if not outputs or not all(_is_node(o) and _node_kind(o, g) in _TENSOR_KINDS
                                  for o in outputs):
            return ("returns something other than tensors computed from the image (or a dict, "
                    "tuple or list of them); each output of the spiking network is a tensor "
                    "summed over its steps")
        return None
    if not tensor_kinds:
        # computed from constants or Python values only: evaluated as the ANN does
        if _is_meta_op(node) and "const" not in kinds:
            g.role, g.kind = Role.META, Kind.META
            g.batch, g.batch_of = _meta_batch(g), _batch_source(g)
            return None
        if "const" in kinds and "meta" not in kinds:
            g.role, g.kind = Role.CONST, Kind.CONST  # e.g. a parameter reshaped or scaled
            return None
        g.role = Role.REFUSED
        return ("builds a tensor from constants and sizes at run time (e.g. a class token "
                "expanded to the batch), which has no spiking counterpart")

    target = node.target
    if node.op == "call_function" and target in RELU_FUNCTIONS or (
            node.op == "call_method" and target in RELU_METHODS):
        g.role = Role.REFUSED
        return ("is a ReLU call; convert a QCFS network (models.qcfsify turns every ReLU call "
                "into a QCFS layer)")
    if (node.op == "call_function" and target in CLAMP_FUNCTIONS + _CLAMP_INPLACE) or (
            node.op == "call_method" and target in CLAMP_METHODS + _CLAMP_INPLACE_METHODS):
        g.role = Role.REFUSED
        if target in _CLAMP_INPLACE + _CLAMP_INPLACE_METHODS:
            return ("clamps in place; write it out of place (x.clamp(min=0) becomes a QCFS "
                    "layer in models.qcfsify)")
        if clamp_is_relu(node, root):
            return ("clamps at 0 (a ReLU, its upper bound dropped as for ReLU6); convert a "
                    "QCFS network (models.qcfsify turns it into a QCFS layer)")
        return ("clamps to other bounds than [0, max > 0], which is not a ReLU and has no exact "
                "spiking counterpart")
    if (node.op == "call_method" and target in _META_METHODS) or (
            node.op == "call_function" and target is builtins.getattr):
        g.role, g.kind = Role.META, Kind.META
        if target is builtins.getattr and node.args[1] not in ("shape", "ndim"):
            return f"reads the tensor attribute {node.args[1]!r}, which is not supported"
        g.batch, g.batch_of = _meta_batch(g), _batch_source(g)
        return None
    if node.op == "call_method" and target in ("add_", "sub_", "mul_", "div_"):
        g.role = Role.REFUSED
        return ("modifies a tensor in place, which the other users of that tensor would see in "
                "the ANN; write it out of place")
    try:
        g.binding = b = bind(node, root)
    except BindError as error:
        if error.argument is None and error.reason.startswith("has no known signature"):
            g.role = Role.REFUSED  # a function of the model's own: not one of the supported
            return f"has no exact spiking counterpart (converted are {SUPPORTED})"
        g.role = Role.REFUSED
        named = f" (argument {error.argument!r})" if error.argument else ""
        return f"cannot be bound to its signature{named}: {error.reason}"
    if "out" in b.given:
        g.role = Role.REFUSED
        return "writes its result into out=, which the spiking network does not reproduce"

    if node.op == "call_module":
        return _classify_module(g, g.module, tensor_kinds, spike_kind)
    if node.op == "call_function" and target is operator.getitem and g.inputs[0].tuple_valued:
        g.role = Role.ROUTE
        g.kind = g.inputs[0].kind
        return None
    function = target if node.op == "call_function" else None
    method = target if node.op == "call_method" else None

    if function in _WEIGHTED_FUNCTIONS:
        return _classify_weighted_function(g, root, spike_kind)
    if function is F.interpolate:
        return _classify_interpolation(g, b["mode"], tensor_kinds)
    if function is F.pad:
        return _classify_pad(g, b["pad"], b.get("mode"), b.get("value"), tensor_kinds)
    if function in (F.pixel_shuffle, F.pixel_unshuffle):
        g.role, g.kind = Role.COPY, _copy_kind(g, tensor_kinds, keeps_channels=False)
        return None
    if function in (torch.sum,) or method == "sum":
        dims = b.get("dim")
        reason = _batch_dim_reason("sums over", dims, input_rank(g))
        if reason:
            return reason + "; sum over the other dimensions only"
        if b.get("dtype") is not None:
            return "sums with a dtype conversion; convert before or after it"
        g.role, g.kind = Role.POOL, spike_kind
        return None
    if function in _ADD_FUNCTIONS or method in ("add", "sub"):
        if b.get("alpha", 1) != 1:
            return "uses alpha; write the scaling as a separate multiplication"
        g.role, g.kind = Role.ADD, spike_kind
        return _constant_broadcast_reason(g, root)
    if function in _SCALE_FUNCTIONS or method in ("mul", "div", "neg"):
        g.role, g.kind = Role.SCALE, spike_kind
        operands = [b.get("input"), b.get("other")]
        tensors = [a for a in operands if _is_node(a) and _node_kind(a, g) in _TENSOR_KINDS]
        is_division = function in (operator.truediv, operator.itruediv, torch.div) or \
            method == "div"
        if is_division and _is_node(operands[1]) and \
                _node_kind(operands[1], g) in _TENSOR_KINDS:
            return "divides by a non-constant tensor, which has no exact spiking counterpart"
        if len(tensors) > 1:
            return ("multiplies two non-constant tensors (e.g. sigmoid gating or attention); "
                    "a product of spike trains has no exact spiking counterpart")
        if is_division and b.get("rounding_mode") is not None:
            return "divides with rounding, which is not linear"
        return None
    if function in _CAT_FUNCTIONS:
        dim = b.get("dim", 0)
        stack = function is torch.stack
        rank = input_rank(g)
        rank = rank + 1 if stack and rank is not None else rank
        reason = _batch_dim_reason("stacks along" if stack else "concatenates along", dim, rank)
        if reason:
            return reason
        dim = resolve_dim(dim, rank)
        constants = [i for i in g.inputs if i.kind == "const"]
        if constants:
            return (f"concatenates the constant {constants[0].name!r}, whose batch dimension "
                    "is fixed, with spike trains (time is folded into the batch dimension)")
        g.role = Role.CAT
        if all(k == "analog" for k in tensor_kinds):
            g.kind = Kind.ANALOG
        elif dim == 1 and not stack and all(k == Kind.BURST for k in tensor_kinds):
            g.kind = Kind.BURST
        else:
            g.kind = Kind.TRAIN
        return None
    if function in _POOL_FUNCTIONS:
        g.role, g.kind = Role.POOL, spike_kind
        return None
    if function in _MAXPOOL_FUNCTIONS:
        if b.get("return_indices", False):
            return "returns indices, which have no spiking counterpart"
        return _classify_maxpool(g, tensor_kinds)
    if function in (torch.mean,) or method == "mean":
        dims = b.get("dim")
        reason = _batch_dim_reason("averages over", dims, input_rank(g))
        if reason:
            return reason + "; average over the other dimensions only"
        g.role, g.kind = Role.POOL, spike_kind
        return None
    if function in _DROPOUT_FUNCTIONS:
        if b.get("training", True) is not False:
            return ("was traced with training=True, so it would drop in evaluation too; use an "
                    "nn.Dropout module")
        g.role, g.kind = Role.IDENTITY, tensor_kinds[0]
        return None
    if method in ("contiguous", "clone") or function is torch.clone:
        g.role, g.kind = Role.IDENTITY, tensor_kinds[0]
        return None
    if function in _ROUTE_FUNCTIONS or method in _ROUTE_METHODS:
        return _classify_route(g, function or method, tensor_kinds)
    g.role = Role.REFUSED
    return f"has no exact spiking counterpart (converted are {SUPPORTED})"


def _node_kind(fx_node, g):
    for i in g.inputs:
        if i.node is fx_node:
            return i.kind
    return None


def _is_meta_op(node):
    return (node.op == "call_function" and node.target in _META_FUNCTIONS) or (
        node.op == "call_method" and node.target in _META_METHODS)


# --- ranks and the batch dimension ------------------------------------------------------------
# Time is folded into the batch dimension, so no operation may act on it: every dim argument is
# resolved against its value's rank (``-4`` of a 4-D value is the batch dimension), and every
# use of the batch size (``x.size(0)``, which counts steps x images in the spiking network)
# other than as the batch dimension of a view is refused.

def _batch_dim_reason(what, dims, rank):
    """None if no dim in ``dims`` (an int or a sequence) is the batch dimension; otherwise
    why ``what`` (e.g. "averages over") is refused."""
    if dims is None:
        return f"{what} every dimension, the batch dimension included (time is folded into it)"
    for dim in dims if isinstance(dims, (list, tuple)) else (dims,):
        resolved = resolve_dim(dim, rank)
        if resolved is None and isinstance(dim, int):
            return (f"{what} dim {dim} of a value whose rank is not known statically; give the "
                    "dim as a non-negative number (or the input shape, input_shape=...)")
        if resolved is None:
            return f"{what} dim {dim!r}, which is not a constant"
        if resolved == 0:
            of = "" if dim == 0 else f" (dim {dim} of a {rank}-D value)"
            return (f"{what} the batch dimension{of}, into which time is folded")
    return None


def _meta_batch(g):
    """What a meta value holds of the batch size: "sizes", "size", "derived" or None."""
    node = g.node
    sources = [i for i in g.inputs if i.kind in _TENSOR_KINDS]
    if node.op == "call_method" and node.target == "size" and sources:
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        if dim is None:
            return "sizes"
        resolved = resolve_dim(dim, sources[0].rank)
        return "size" if resolved in (0, None) else None
    if node.op == "call_function" and node.target is builtins.getattr:
        return "sizes" if node.args[1] == "shape" else None
    if node.op == "call_function" and node.target is operator.getitem and \
            g.inputs and g.inputs[0].batch == "sizes":
        index = node.args[1]
        if isinstance(index, int):
            return "size" if resolve_dim(index, sizes_rank(g.inputs[0])) in (0, None) else None
        if isinstance(index, slice):
            return "derived" if index.start in (None, 0) else None
        return "derived"
    return "derived" if any(i.batch for i in g.inputs) else None


def _constant_broadcast_reason(g, root):
    """A constant added to trains must not reach the batch dimension: it may have fewer dims
    than the trains, or as many with size 1 in dim 0."""
    ranks = [i.rank for i in g.inputs if i.kind in _TENSOR_KINDS]
    for i in g.inputs:
        value = get_attr(root, i.node.target) if i.node.op == "get_attr" else None
        if not torch.is_tensor(value) or None in ranks:
            continue
        if value.dim() > max(ranks) or (value.dim() == max(ranks) and value.shape[0] != 1):
            return (f"adds the constant {i.name!r} of shape {tuple(value.shape)}, which reaches "
                    f"the batch dimension of the {max(ranks)}-D trains (time is folded into it)")
    return None


def _batch_source(g):
    """The tensor whose size a meta value is computed from (the first such)."""
    for i in g.inputs:
        if i.kind in _TENSOR_KINDS:
            return i
        if i.batch_of is not None:
            return i.batch_of
    return None


def _check_batch_uses(g):
    """Refuse a use of the batch size other than as the batch dimension of a view/reshape."""
    uses = [i for i in g.inputs if i.kind == Kind.META and i.batch]
    if not uses or g.function is torch._assert:
        return None
    return g.handler.check_batch_uses(g, uses)


def _classify_module(g, module, tensor_kinds, spike_kind):
    if isinstance(module, QCFS):
        g.role, g.kind = Role.NEURON, Kind.BURST
        return None
    if isinstance(module, _WEIGHTED):
        g.role, g.kind = Role.WEIGHTED, spike_kind
        if isinstance(module, _TRANSPOSED_CONVS) and g.binding.get("output_size") is not None:
            return ("is given output_size at run time; give the module output_padding instead")
        return None
    if isinstance(module, _UPSAMPLE_MODULES):
        return _classify_interpolation(g, module.mode, tensor_kinds)
    if isinstance(module, _PAD_MODULES):
        mode = "constant" if isinstance(module, nn.ConstantPad1d | nn.ConstantPad2d |
                                        nn.ConstantPad3d | nn.ZeroPad1d | nn.ZeroPad2d |
                                        nn.ZeroPad3d) else "copy"
        return _classify_pad(g, module.padding, mode, getattr(module, "value", None),
                             tensor_kinds)
    if isinstance(module, _SHUFFLE_MODULES):
        g.role, g.kind = Role.COPY, _copy_kind(g, tensor_kinds, keeps_channels=False)
        return None
    if isinstance(module, _BATCHNORM):
        g.role, g.kind = Role.BATCHNORM, spike_kind
        if module.running_mean is None or module.running_var is None:
            return ("has no running statistics, so in evaluation it is not a fixed affine map "
                    "(build it with track_running_stats=True)")
        return None
    if isinstance(module, _POOL_MODULES):
        g.role, g.kind = Role.POOL, spike_kind
        return None
    if isinstance(module, _MAXPOOL_MODULES):
        if module.return_indices:
            return "returns indices, which have no spiking counterpart"
        return _classify_maxpool(g, tensor_kinds)
    if isinstance(module, _IDENTITY_MODULES):
        g.role, g.kind = Role.IDENTITY, tensor_kinds[0]
        return None
    if isinstance(module, _ROUTE_MODULES):
        g.role, g.kind = Role.ROUTE, spike_kind
        dim = module.start_dim if isinstance(module, nn.Flatten) else module.dim
        return _batch_dim_reason("reshapes", dim, input_rank(g))
    g.role = Role.REFUSED
    if isinstance(module, RELU_MODULES) or hardtanh_is_relu(module):
        return ("is a ReLU; convert a QCFS network (models.qcfsify turns every ReLU into a QCFS "
                "layer)")
    return f"has no exact spiking counterpart (converted are {SUPPORTED})"


def clamp_is_relu(node, root):
    """Whether a clamp call (``clamp``, ``clip``, ``clamp_min``, ``F.hardtanh``) is a ReLU
    with an optional positive upper bound: lower bound 0, upper bound None or > 0."""
    try:
        b = bind(node, root)
    except BindError:
        return False
    low, high = (b.get("min_val"), b.get("max_val")) if "min_val" in b.arguments else (
        b.get("min"), b.get("max"))
    numbers = (int, float)
    return (isinstance(low, numbers) and not isinstance(low, bool) and low == 0 and
            (high is None or (isinstance(high, numbers) and high > 0)))


def hardtanh_is_relu(module):
    """Whether ``module`` is an ``nn.Hardtanh`` clamping to ``[0, max > 0]`` (a ReLU6-like
    ReLU)."""
    return isinstance(module, nn.Hardtanh) and not isinstance(module, nn.ReLU6) and \
        module.min_val == 0 and module.max_val > 0


def _classify_weighted_function(g, root, spike_kind):
    """``F.conv*``/``F.conv_transpose*``/``F.linear`` with parameter weights: a weighted
    layer, given an equivalent module holding the weights."""
    b = g.binding
    by_fx = {i.node: i for i in g.inputs}
    values = {}
    for name in ("weight", "bias"):
        operand = b.get(name)
        if _is_node(operand):
            if by_fx[operand].kind != Kind.CONST:
                return (f"takes its {name} from a value computed from the image (e.g. dynamic "
                        "filters): a product of spike trains has no exact spiking counterpart")
            values[name] = const_value(by_fx[operand], root)
        elif operand is not None:
            return f"takes a {name} that is not a tensor"
    if "weight" not in values:
        return "has no weight tensor"
    g.role, g.kind = Role.WEIGHTED, spike_kind
    g.module = _module_for(g.function, values["weight"], values.get("bias"), b)
    return None


def _module_for(function, weight, bias, b):
    """The module computing ``function(input, weight, bias, **options)``."""
    cls = _WEIGHTED_FUNCTIONS[function]
    factory = {"device": weight.device, "dtype": weight.dtype}
    if cls is nn.Linear:
        module = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, **factory)
    elif cls in _TRANSPOSED_CONVS:
        groups = b.get("groups", 1)
        module = cls(weight.shape[0], weight.shape[1] * groups, tuple(weight.shape[2:]),
                     stride=b.get("stride", 1), padding=b.get("padding", 0),
                     output_padding=b.get("output_padding", 0), groups=groups,
                     dilation=b.get("dilation", 1), bias=bias is not None, **factory)
    else:
        groups = b.get("groups", 1)
        module = cls(weight.shape[1] * groups, weight.shape[0], tuple(weight.shape[2:]),
                     stride=b.get("stride", 1), padding=b.get("padding", 0),
                     dilation=b.get("dilation", 1), groups=groups, bias=bias is not None,
                     **factory)
    with torch.no_grad():
        module.weight.copy_(weight)
        if bias is not None:
            module.bias.copy_(bias)
    return module


def const_value(g, root):
    """The tensor a ``const`` node holds: a parameter or buffer, or a value computed from
    them alone, evaluated as the ANN does."""
    node = g.node
    if node.op == "get_attr":
        return get_attr(root, node.target).detach()
    by_fx = {i.node: i for i in g.inputs}
    args = fx.node.map_arg(node.args, lambda n: const_value(by_fx[n], root))
    kwargs = fx.node.map_arg(node.kwargs, lambda n: const_value(by_fx[n], root))
    with torch.no_grad():
        if node.op == "call_module":
            return g.module(*args, **kwargs).detach()
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs).detach()
        return node.target(*args, **kwargs).detach()


def _classify_interpolation(g, mode, tensor_kinds):
    """Upsampling or resizing: nearest copies elements (bursts stay bursts); the linear modes
    are fixed linear maps (a general train)."""
    if mode in _NEAREST:
        g.role, g.kind = Role.COPY, _copy_kind(g, tensor_kinds)
        return None
    if mode in _INTERPOLATION:
        g.role = Role.RESAMPLE
        g.kind = Kind.ANALOG if tensor_kinds[0] == Kind.ANALOG else Kind.TRAIN
        return None
    return f"interpolates with mode {mode!r}, which is not one of {_NEAREST + _INTERPOLATION}"


def _classify_pad(g, pad, mode, value, tensor_kinds):
    """Padding: with zeros, or with copies of values (reflect, replicate, circular)."""
    pad = tuple(pad) if isinstance(pad, (list, tuple)) else (pad,) * (2 * _spatial(g))
    if mode == "constant" and value not in (None, 0, 0.0):
        return (f"pads with the constant {value!r}, which every step would add; pad with zeros "
                "and add the constant after it")
    rank = input_rank(g)
    if rank is not None and len(pad) // 2 >= rank:
        return (f"pads {len(pad) // 2} dims of a {rank}-D value, the batch dimension included "
                "(time is folded into it)")
    g.role, g.kind = Role.COPY, _copy_kind(g, tensor_kinds)
    return None


def _spatial(g):
    """Number of spatial dims of a padding module's input (from its class name)."""
    return int(type(g.module).__name__[-2])


def _copy_kind(g, tensor_kinds, keeps_channels=True):
    """Kind of a copy's value: an analog value stays analog; a burst stays a burst if every
    channel still holds one layer's copies (true for maps that keep channels, and for pixel
    (un)shuffle, which merges channels, of a burst from one spiking layer only)."""
    kind = tensor_kinds[0]
    if kind == Kind.BURST and (keeps_channels or len(_burst_layers(g.inputs[0])) == 1):
        return Kind.BURST
    return Kind.ANALOG if kind == Kind.ANALOG else Kind.TRAIN


def _burst_layers(g):
    """The spiking layers whose spikes a burst value carries."""
    if isinstance(g.module, QCFS):
        return {g.index}
    found = set()
    for i in g.inputs:
        if i.kind == Kind.BURST:
            found |= _burst_layers(i)
    return found


def _classify_maxpool(g, tensor_kinds):
    kind = tensor_kinds[0]
    g.role, g.kind = Role.MAXPOOL, kind
    if kind in ("burst", "analog"):
        return None
    source = g.inputs[0]
    return (f"max-pools the output of {source.name!r} ({source.op}), which is not a spike "
            "burst; max pooling is exact only on a spiking layer's output (possibly through "
            "channel concatenation, other max pools, dropout or identity) or on the one-step "
            "analog input")


def _classify_route(g, what, tensor_kinds):
    b = g.binding
    g.role = Role.ROUTE
    g.kind = Kind.ANALOG if tensor_kinds[0] == Kind.ANALOG else Kind.TRAIN
    name = what if isinstance(what, str) else what.__name__
    if name == "getitem":
        index = b["index"]
        first = index[0] if isinstance(index, tuple) and index else index
        if not (isinstance(first, slice) and first == slice(None)):
            return (f"indexes with {index!r}; indexing must keep the whole batch dimension "
                    "(time is folded into it): start the index with ':'")
        return None
    rank = input_rank(g)
    if name in _TUPLE_VALUED:
        g.tuple_valued = True
        dim = b.get("dim", 0)
        reason = _batch_dim_reason("splits along", dim, rank)
        if reason:
            return reason + "; split along a non-batch dimension"
        if resolve_dim(dim, rank) == 1 and tensor_kinds[0] == "burst":
            g.kind = Kind.BURST  # whole channels of a burst remain bursts
        return None
    if name == "flatten":
        return _batch_dim_reason("flattens from", b.get("start_dim", 0), rank)
    if name == "transpose":
        return _batch_dim_reason("transposes", (b.get("dim0"), b.get("dim1")), rank)
    if name == "permute":
        dims = tuple(b.get("dims") or ())
        reason = _batch_dim_reason("permutes", dims[1:], rank)
        if not dims or resolve_dim(dims[0], rank) != 0 or reason:
            return f"permutes dims {dims!r}, moving the batch dimension (or of unknown rank)"
        return None
    if name == "squeeze":
        dim = b.get("dim")
        if dim is None:
            return "squeezes every dim of size 1, the batch dimension included; give the dim"
        return _batch_dim_reason("squeezes", dim, rank)
    if name == "unsqueeze":
        return _batch_dim_reason("unsqueezes", b.get("dim"), None if rank is None else rank + 1)
    if name == "unflatten":
        return _batch_dim_reason("unflattens", b.get("dim"), rank)
    if name in ("view", "reshape"):
        sizes = tuple(b.get("shape") or ())
        first = sizes[0] if sizes else None
        if isinstance(first, int) and first != -1:
            return (f"reshapes to a batch dimension of {first}; the batch size must be -1 or "
                    "taken from the tensor (x.size(0)), because time is folded into it")
        return None
    return None
