"""The model graph: a network traced with torch.fx, every node classified by what it becomes
in the PASCAL spiking network (its *role*), and the refusal of whatever has no exact spiking
counterpart. qcfsify, the converter, T_eff/latency and the cost meter all read this one
classification, so they agree on what a model is.

Roles (the fate of each node in the spiking network):

- ``input``: the image; it enters once, as an analog current (one step).
- ``const``: a parameter or buffer read by the graph (``get_attr``).
- ``meta``: Python values about tensors (``x.size()``, ``x.shape[0]``, ``c // g``).
- ``neuron``: a QCFS activation, which becomes a PASCAL neuron.
- ``weighted``: a convolution or linear layer (groups, stride, dilation, padding as they are);
  its bias is injected once per window.
- ``batchnorm``: an eval-mode BatchNorm; folded into the weighted layer before it when that
  layer's output feeds only the BatchNorm, otherwise a per-step scale plus a once-per-window
  shift.
- ``add``: addition or subtraction of trains and constants (window sums add).
- ``scale``: multiplication or division by a constant.
- ``cat``: concatenation along a non-batch dimension; shorter trains are zero-padded at the end.
- ``pool``: average and adaptive-average pooling, mean over non-batch dimensions.
- ``maxpool``: max pooling, only of front-loaded spike bursts or of the one-step analog input.
- ``route``: element rearrangements that keep time folded into the batch dimension:
  flatten, view/reshape, transpose/permute, chunk/split and indexing of their parts, channel
  shuffles built from them.
- ``identity``: dropout (identity at inference), ``nn.Identity``, ``contiguous``, ``clone``.
- ``output``: the network's output; the spiking network sums it over its steps.

Value kinds, known statically, decide where max pooling is exact: ``analog`` (computed from the
image alone: one step whose value is the ANN's), ``burst`` (a spiking layer's front-loaded
burst of one amplitude per channel, possibly through channel concatenation, channel chunks,
other max pools, dropout or identity), ``train`` (any other spike-derived value), ``const``
and ``meta``.

Before a node is classified, its arguments are bound to its signature
(:mod:`models.signatures`), so every spelling of a call reads the same; every tensor value's
rank is propagated statically, so that dims resolve against it (``-4`` of a 4-D value is the
batch dimension, into which time is folded); and meta values record whether they hold the
batch size, whose only accepted use is a view's batch dimension.
"""
import builtins
import inspect
import operator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

from errors import ModelError

from .qcfs import QCFS
from .signatures import BindError, Binding, bind

__all__ = ["GraphNode", "ModelGraph", "UnsupportedModelError", "call_site_names",
           "check_inplace_aliasing", "model_graph", "trace"]


class UnsupportedModelError(ModelError):
    """A model, or one of its nodes, has no exact spiking counterpart (one-line message)."""


_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
_POOL_MODULES = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d,
                 nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
_MAXPOOL_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d,
                    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
_IDENTITY_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
                     nn.AlphaDropout, nn.FeatureAlphaDropout)
_ROUTE_MODULES = (nn.Flatten, nn.Unflatten)
RELU_MODULES = (nn.ReLU, nn.ReLU6)
RELU_FUNCTIONS = (F.relu, torch.relu, F.relu_, torch.relu_, F.relu6)
RELU_METHODS = ("relu", "relu_")

_POOL_FUNCTIONS = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d,
                   F.adaptive_avg_pool2d, F.adaptive_avg_pool3d)
_MAXPOOL_FUNCTIONS = (F.max_pool1d, F.max_pool2d, F.max_pool3d, F.adaptive_max_pool1d,
                      F.adaptive_max_pool2d, F.adaptive_max_pool3d)
_ADD_FUNCTIONS = (operator.add, operator.sub, operator.iadd, operator.isub, torch.add, torch.sub)
_SUB_FUNCTIONS = (operator.sub, operator.isub, torch.sub)
_SCALE_FUNCTIONS = (operator.mul, operator.imul, torch.mul, operator.truediv, operator.itruediv,
                    torch.div, operator.neg, torch.neg)
_CAT_FUNCTIONS = (torch.cat, torch.concat, torch.concatenate)
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

_TENSOR_KINDS = ("analog", "burst", "train")
SUPPORTED = ("QCFS activations, conv/linear layers, BatchNorm, average and adaptive-average "
             "pooling, max pooling of spike bursts, addition, concatenation, multiplication by "
             "constants, flatten/view/transpose/chunk/split and dropout")


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


@dataclass(eq=False)
class GraphNode:
    """One node of the traced model and what it becomes in the spiking network."""

    index: int
    node: fx.Node
    name: str            # call-site name (module path for module calls)
    op: str              # e.g. "Conv2d", "torch.cat", "Tensor.view"
    role: str            # see the module docstring
    kind: str            # analog, burst, train, const or meta
    inputs: list = field(default_factory=list)   # GraphNodes read, in order of appearance
    users: list = field(default_factory=list)
    module: nn.Module | None = None
    tuple_valued: bool = False
    folded_into: "GraphNode | None" = None  # for a BatchNorm folded into its weighted layer
    binding: "Binding | None" = None  # the call's arguments by parameter name (signatures)
    rank: int | None = None  # number of dims of a tensor value, where known statically
    # meta values: "size" (the batch size), "derived" (computed from it), "sizes" (a size
    # tuple, the batch size first) or None
    batch: str | None = None
    batch_of: "GraphNode | None" = None  # the tensor whose batch size a meta value holds

    def __repr__(self):
        return f"GraphNode({self.name!r}, {self.op}, role={self.role}, kind={self.kind})"


class ModelGraph:
    """The classified graph of a model: ``nodes`` in topological (forward) order."""

    def __init__(self, root, graph, nodes):
        self.root, self.graph, self.nodes = root, graph, nodes
        self.output = nodes[-1]

    def neurons(self):
        """The ``neuron`` nodes in forward order."""
        return [n for n in self.nodes if n.role == "neuron"]

    def num_steps(self):
        """``{index: steps}``: length of each tensor value's train in the step simulator.

        The image has one step; a spiking layer emits ``level`` steps; an addition has the
        length of its first tensor operand (see :mod:`models.convert`); a concatenation the
        longest of its inputs; every other operation its (first) input's. const and meta
        values have None.
        """
        steps = {}
        by_fx = {n.node: n for n in self.nodes}
        for n in self.nodes:
            tensor_inputs = [steps[i.index] for i in n.inputs if steps.get(i.index) is not None]
            if n.role == "input":
                steps[n.index] = 1
            elif n.role in ("const", "meta"):
                steps[n.index] = None
            elif n.role == "neuron":
                steps[n.index] = n.module.level
            elif n.role == "cat":
                steps[n.index] = max(tensor_inputs)
            elif n.role == "add":  # the first tensor operand's, however the call is written
                operands = [n.binding.get(name) for name in ("input", "other")]
                steps[n.index] = next(steps[by_fx[a].index] for a in operands
                                      if isinstance(a, fx.Node) and
                                      steps.get(by_fx[a].index) is not None)
            else:
                steps[n.index] = tensor_inputs[0] if tensor_inputs else None
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
        gnode = GraphNode(index=len(nodes), node=fx_node, name=names.get(fx_node, fx_node.name),
                          op=_describe(fx_node, root), role="", kind="", inputs=inputs)
        if fx_node.op == "call_module":
            gnode.module = root.get_submodule(fx_node.target)
        reason = _classify(gnode, root) or _check_batch_uses(gnode)
        if reason is None and gnode.role not in ("meta", "refused"):
            gnode.rank = _rank(gnode, root, input_shape)
            reason = _check_rank(gnode)
        if reason is not None:
            raise UnsupportedModelError(f"{prefix}node {gnode.name!r} ({gnode.op}) {reason}")
        if gnode.role == "neuron":
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
                           by_fx[operand].kind in ("analog", "burst", "train", "const"))
    unused = [name for name, module in root.named_modules()
              if isinstance(module, QCFS) and name not in qcfs_calls]
    if unused:
        raise UnsupportedModelError(
            f"{prefix}the QCFS module {unused[0]!r} is never called by forward; remove it "
            "(levels are given per QCFS module, so it would take one, and every analysis "
            "would miss it)")
    _fold_batchnorms(nodes)
    model = ModelGraph(root, graph, nodes)
    mismatch = _check_view_lengths(model)
    if mismatch is not None:
        node, reason = mismatch
        raise UnsupportedModelError(f"{prefix}node {node.name!r} ({node.op}) {reason}")
    return model


def _fold_batchnorms(nodes):
    """Mark each BatchNorm whose input is a weighted layer feeding only it as folded: a
    convolution, whose output channels are the BatchNorm's dim 1, or a Linear layer whose
    output is 2-D (B, features); a Linear applied to (B, C, F) has its features last, not
    where the BatchNorm normalises."""
    for n in nodes:
        if n.role == "batchnorm" and len(n.inputs) == 1:
            source = n.inputs[0]
            channels_first = not isinstance(source.module, nn.Linear) or source.rank == 2
            if source.role == "weighted" and source.users == [n] and channels_first:
                n.folded_into = source


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
    spike_kind = "train" if any(k in ("burst", "train") for k in tensor_kinds) else "analog"

    if node.op == "placeholder":
        g.role, g.kind = "input", "analog"
        if any(n.op == "placeholder" for n in node.graph.nodes if n is not node):
            return ("is one of several inputs; the spiking network takes one image batch "
                    "(give the other inputs defaults or fix them in a wrapper)")
        return None
    if node.op == "get_attr":
        g.role, g.kind = "const", "const"
        return None
    if node.op == "output":
        g.role, g.kind = "output", spike_kind
        if not _is_node(node.args[0]) or not tensor_kinds:
            return "returns a tuple or a non-tensor; the spiking network needs one output tensor"
        return None
    if not tensor_kinds:
        # computed from constants or Python values only: evaluated as the ANN does
        if _is_meta_op(node) and "const" not in kinds:
            g.role, g.kind = "meta", "meta"
            g.batch, g.batch_of = _meta_batch(g), _batch_source(g)
            return None
        if "const" in kinds and "meta" not in kinds:
            g.role, g.kind = "const", "const"  # e.g. a parameter reshaped or scaled
            return None
        g.role = "refused"
        return ("builds a tensor from constants and sizes at run time (e.g. a class token "
                "expanded to the batch), which has no spiking counterpart")

    target = node.target
    if node.op == "call_function" and target in RELU_FUNCTIONS or (
            node.op == "call_method" and target in RELU_METHODS):
        g.role = "refused"
        return ("is a ReLU call; convert a QCFS network (models.qcfsify turns every ReLU call "
                "into a QCFS layer)")
    if (node.op == "call_method" and target in _META_METHODS) or (
            node.op == "call_function" and target is builtins.getattr):
        g.role, g.kind = "meta", "meta"
        if target is builtins.getattr and node.args[1] not in ("shape", "ndim"):
            return f"reads the tensor attribute {node.args[1]!r}, which is not supported"
        g.batch, g.batch_of = _meta_batch(g), _batch_source(g)
        return None
    if node.op == "call_method" and target in ("add_", "sub_", "mul_", "div_"):
        g.role = "refused"
        return ("modifies a tensor in place, which the other users of that tensor would see in "
                "the ANN; write it out of place")
    try:
        g.binding = b = bind(node, root)
    except BindError as error:
        if error.argument is None and error.reason.startswith("has no known signature"):
            g.role = "refused"  # a function of the model's own: not one of the supported
            return f"has no exact spiking counterpart (converted are {SUPPORTED})"
        g.role = "refused"
        named = f" (argument {error.argument!r})" if error.argument else ""
        return f"cannot be bound to its signature{named}: {error.reason}"
    if "out" in b.given:
        g.role = "refused"
        return "writes its result into out=, which the spiking network does not reproduce"

    if node.op == "call_module":
        return _classify_module(g, g.module, tensor_kinds, spike_kind)
    if node.op == "call_function" and target is operator.getitem and g.inputs[0].tuple_valued:
        g.role = "route"
        g.kind = g.inputs[0].kind
        return None
    function = target if node.op == "call_function" else None
    method = target if node.op == "call_method" else None

    if function in _ADD_FUNCTIONS or method in ("add", "sub"):
        if b.get("alpha", 1) != 1:
            return "uses alpha; write the scaling as a separate multiplication"
        g.role, g.kind = "add", spike_kind
        return _constant_broadcast_reason(g, root)
    if function in _SCALE_FUNCTIONS or method in ("mul", "div", "neg"):
        g.role, g.kind = "scale", spike_kind
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
        reason = _batch_dim_reason("concatenates along", dim, _input_rank(g))
        if reason:
            return reason
        dim = _resolve(dim, _input_rank(g))
        constants = [i for i in g.inputs if i.kind == "const"]
        if constants:
            return (f"concatenates the constant {constants[0].name!r}, whose batch dimension "
                    "is fixed, with spike trains (time is folded into the batch dimension)")
        g.role = "cat"
        if all(k == "analog" for k in tensor_kinds):
            g.kind = "analog"
        elif dim == 1 and all(k == "burst" for k in tensor_kinds):
            g.kind = "burst"
        else:
            g.kind = "train"
        return None
    if function in _POOL_FUNCTIONS:
        g.role, g.kind = "pool", spike_kind
        return None
    if function in _MAXPOOL_FUNCTIONS:
        if b.get("return_indices", False):
            return "returns indices, which have no spiking counterpart"
        return _classify_maxpool(g, tensor_kinds)
    if function in (torch.mean,) or method == "mean":
        dims = b.get("dim")
        reason = _batch_dim_reason("averages over", dims, _input_rank(g))
        if reason:
            return reason + "; average over the other dimensions only"
        g.role, g.kind = "pool", spike_kind
        return None
    if function in _DROPOUT_FUNCTIONS:
        if b.get("training", True) is not False:
            return ("was traced with training=True, so it would drop in evaluation too; use an "
                    "nn.Dropout module")
        g.role, g.kind = "identity", tensor_kinds[0]
        return None
    if method in ("contiguous", "clone") or function is torch.clone:
        g.role, g.kind = "identity", tensor_kinds[0]
        return None
    if function in _ROUTE_FUNCTIONS or method in _ROUTE_METHODS:
        return _classify_route(g, function or method, tensor_kinds)
    g.role = "refused"
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

def _input_rank(g):
    """Rank of ``g``'s first tensor operand (its ``input``), or None."""
    operand = g.binding.get("input") if g.binding is not None else None
    operand = operand if isinstance(operand, fx.Node) else None
    for i in g.inputs:
        if (operand is None or i.node is operand) and i.kind in _TENSOR_KINDS + ("const",):
            return i.rank
    return None


def _resolve(dim, rank):
    """``dim`` as a non-negative int, or None (not an int, or negative of unknown rank)."""
    if not isinstance(dim, int) or isinstance(dim, bool):
        return None
    if dim >= 0:
        return dim
    return None if rank is None else dim + rank


def _batch_dim_reason(what, dims, rank):
    """None if no dim in ``dims`` (an int or a sequence) is the batch dimension; otherwise
    why ``what`` (e.g. "averages over") is refused."""
    if dims is None:
        return f"{what} every dimension, the batch dimension included (time is folded into it)"
    for dim in dims if isinstance(dims, (list, tuple)) else (dims,):
        resolved = _resolve(dim, rank)
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
        resolved = _resolve(dim, sources[0].rank)
        return "size" if resolved in (0, None) else None
    if node.op == "call_function" and node.target is builtins.getattr:
        return "sizes" if node.args[1] == "shape" else None
    if node.op == "call_function" and node.target is operator.getitem and \
            g.inputs and g.inputs[0].batch == "sizes":
        index = node.args[1]
        if isinstance(index, int):
            return "size" if _resolve(index, _sizes_rank(g.inputs[0])) in (0, None) else None
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


def _check_view_lengths(graph):
    """A view whose batch dimension comes from another value's size needs that value's train
    to be as long as its own input's (both hold steps x images in dim 0)."""
    steps = graph.num_steps()
    for n in graph.nodes:
        if n.role != "route" or n.binding is None or "shape" not in n.binding.arguments:
            continue
        for i in n.inputs:
            source = i.batch_of if i.kind == "meta" and i.batch else None
            operand = next((j for j in n.inputs if j.kind in _TENSOR_KINDS), None)
            if source is not None and operand is not None and \
                    steps[source.index] != steps[operand.index]:
                return n, (f"takes its batch dimension from the size of {source.name!r}, a "
                           f"{steps[source.index]}-step train, for {operand.name!r}, a "
                           f"{steps[operand.index]}-step train (time is folded into the batch "
                           "dimension); take it from the tensor being reshaped, or use -1")
    return None


def _check_batch_uses(g):
    """Refuse a use of the batch size other than as the batch dimension of a view/reshape."""
    if g.role in ("meta", "refused", "output"):
        return None
    uses = [i for i in g.inputs if i.kind == "meta" and i.batch]
    if not uses:
        return None
    if g.role == "route" and g.binding is not None and "shape" in g.binding.arguments:
        shape = tuple(g.binding["shape"])
        rest = [i for i in uses if any(a is i.node for a in shape[1:])]
        first = shape[0] if shape else None
        whole = len(shape) == 1 and any(i.node is first and i.batch == "sizes" for i in uses)
        if not rest and (whole or not any(i.node is first and i.batch != "size" for i in uses)):
            return None
    if g.op == "torch._assert":
        return None
    return (f"uses the batch size (node {uses[0].name!r}); in the spiking network the batch "
            "dimension holds steps x images, so only a view's batch dimension may be taken "
            "from it")


_CONV_DIMS = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}
_POOL_DIMS = {**{m: int(m.__name__[-2]) for m in _POOL_MODULES + _MAXPOOL_MODULES},
              **{f: int(f.__name__[-2]) for f in _POOL_FUNCTIONS + _MAXPOOL_FUNCTIONS}}


def _rank(g, root, input_shape):
    """The rank of ``g``'s value, where it follows statically from its operands' ranks."""
    node, b, r = g.node, g.binding, _input_rank(g)
    if g.role == "input":
        if input_shape is not None:
            return len(tuple(input_shape)) + 1
        for user in node.users:  # the layer that reads the image fixes its rank
            if user.op == "call_module":
                module = root.get_submodule(user.target)
                spatial = _CONV_DIMS.get(type(module)) or _POOL_DIMS.get(type(module))
                if spatial:
                    return spatial + 2
        return None
    if g.role == "const":
        value = get_attr(root, node.target) if node.op == "get_attr" else None
        return value.dim() if torch.is_tensor(value) else None
    if g.role == "weighted" and type(g.module) in _CONV_DIMS:
        return _CONV_DIMS[type(g.module)] + 2
    if g.role in ("add", "scale"):
        ranks = [i.rank for i in g.inputs if i.kind in _TENSOR_KINDS + ("const",)]
        return None if None in ranks else max(ranks)
    if g.role == "pool" and b is not None and "dim" in b.arguments:  # a mean
        dims = b["dim"] if isinstance(b["dim"], (list, tuple)) else (b["dim"],)
        return None if r is None else r if b.get("keepdim") else r - len(dims)
    if g.role == "route":
        name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
        if isinstance(g.module, nn.Flatten):
            start, end = _resolve(g.module.start_dim, r), _resolve(g.module.end_dim, r)
            return None if r is None or None in (start, end) else r - (end - start)
        if isinstance(g.module, nn.Unflatten):
            return None if r is None else r + len(g.module.unflattened_size) - 1
        if name == "flatten":
            start, end = _resolve(b.get("start_dim", 0), r), _resolve(b.get("end_dim", -1), r)
            return None if r is None or None in (start, end) else r - (end - start)
        if name in ("view", "reshape"):
            shape = tuple(b["shape"])
            if len(shape) == 1 and isinstance(shape[0], fx.Node):
                sizes = next((i for i in g.inputs if i.node is shape[0]), None)
                return None if sizes is None else _sizes_rank(sizes)
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


def _sizes_rank(sizes):
    """The rank of the tensor whose size tuple the meta node ``sizes`` is (or None)."""
    if sizes.batch != "sizes" or sizes.node.target not in ("size", builtins.getattr):
        return None
    return next((i.rank for i in sizes.inputs if i.kind in _TENSOR_KINDS), None)


def get_attr(root, target):
    """The tensor (or module) a ``get_attr`` node reads: ``root``'s attribute at the dotted
    path ``target``."""
    value = root
    for part in target.split("."):
        value = getattr(value, part)
    return value


def _check_rank(g):
    """Pools and convolutions read batched inputs (their unbatched forms would pool over, or
    convolve across, the folded batch); a Linear needs a batch dimension besides its
    features."""
    r = _input_rank(g)
    spatial = None
    if g.role in ("pool", "maxpool"):
        spatial = _POOL_DIMS.get(type(g.module) if g.module is not None else g.node.target)
    elif g.role == "weighted" and type(g.module) in _CONV_DIMS:
        spatial = _CONV_DIMS[type(g.module)]
    if spatial is not None and r is not None and r != spatial + 2:
        unbatched = " (the unbatched form, which would take the batch dimension, into which " \
            "time is folded, for channels)" if r == spatial + 1 else ""
        return (f"reads a {r}-D value{unbatched}; it needs a batched {spatial + 2}-D input "
                f"(B, C and {spatial} spatial dims)")
    if g.role == "weighted" and isinstance(g.module, nn.Linear) and r == 1:
        return "reads a 1-D value, which has no batch dimension"
    return None


def _classify_module(g, module, tensor_kinds, spike_kind):
    if isinstance(module, QCFS):
        g.role, g.kind = "neuron", "burst"
        return None
    if isinstance(module, _WEIGHTED):
        g.role, g.kind = "weighted", spike_kind
        if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d) and module.padding_mode != "zeros":
            return (f"pads with mode {module.padding_mode!r}; only zero padding is linear and "
                    "free of constants")
        return None
    if isinstance(module, _BATCHNORM):
        g.role, g.kind = "batchnorm", spike_kind
        if module.running_mean is None or module.running_var is None:
            return ("has no running statistics, so in evaluation it is not a fixed affine map "
                    "(build it with track_running_stats=True)")
        return None
    if isinstance(module, _POOL_MODULES):
        g.role, g.kind = "pool", spike_kind
        return None
    if isinstance(module, _MAXPOOL_MODULES):
        if module.return_indices:
            return "returns indices, which have no spiking counterpart"
        return _classify_maxpool(g, tensor_kinds)
    if isinstance(module, _IDENTITY_MODULES):
        g.role, g.kind = "identity", tensor_kinds[0]
        return None
    if isinstance(module, _ROUTE_MODULES):
        g.role, g.kind = "route", spike_kind
        dim = module.start_dim if isinstance(module, nn.Flatten) else module.dim
        return _batch_dim_reason("reshapes", dim, _input_rank(g))
    g.role = "refused"
    if isinstance(module, RELU_MODULES):
        return ("is a ReLU; convert a QCFS network (models.qcfsify turns every ReLU into a QCFS "
                "layer)")
    return f"has no exact spiking counterpart (converted are {SUPPORTED})"


def _classify_maxpool(g, tensor_kinds):
    kind = tensor_kinds[0]
    g.role, g.kind = "maxpool", kind
    if kind in ("burst", "analog"):
        return None
    source = g.inputs[0]
    return (f"max-pools the output of {source.name!r} ({source.op}), which is not a spike "
            "burst; max pooling is exact only on a spiking layer's output (possibly through "
            "channel concatenation, other max pools, dropout or identity) or on the one-step "
            "analog input")


def _classify_route(g, what, tensor_kinds):
    b = g.binding
    g.role, g.kind = "route", tensor_kinds[0] if tensor_kinds[0] == "analog" else "train"
    name = what if isinstance(what, str) else what.__name__
    if name == "getitem":
        index = b["index"]
        first = index[0] if isinstance(index, tuple) and index else index
        if not (isinstance(first, slice) and first == slice(None)):
            return (f"indexes with {index!r}; indexing must keep the whole batch dimension "
                    "(time is folded into it): start the index with ':'")
        return None
    rank = _input_rank(g)
    if name in _TUPLE_VALUED:
        g.tuple_valued = True
        dim = b.get("dim", 0)
        reason = _batch_dim_reason("splits along", dim, rank)
        if reason:
            return reason + "; split along a non-batch dimension"
        if _resolve(dim, rank) == 1 and tensor_kinds[0] == "burst":
            g.kind = "burst"  # whole channels of a burst remain bursts
        return None
    if name == "flatten":
        return _batch_dim_reason("flattens from", b.get("start_dim", 0), rank)
    if name == "transpose":
        return _batch_dim_reason("transposes", (b.get("dim0"), b.get("dim1")), rank)
    if name == "permute":
        dims = tuple(b.get("dims") or ())
        reason = _batch_dim_reason("permutes", dims[1:], rank)
        if not dims or _resolve(dims[0], rank) != 0 or reason:
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
