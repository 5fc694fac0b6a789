"""``qcfsify(model, levels)``: any ReLU network as a trainable QCFS network, via its fx graph."""
import copy

import torch.nn.functional as F
from torch import fx, nn

from .graph import (CLAMP_FUNCTIONS, CLAMP_METHODS, RELU_FUNCTIONS, RELU_METHODS,
                    RELU_MODULES, call_site_names, check_inplace_aliasing, clamp_is_relu,
                    hardtanh_is_relu, model_graph, trace)
from .signatures import bind
from .qcfs import QCFS, set_levels

__all__ = ["qcfsify", "qcfsify_"]


def _is_relu(node, root):
    """Whether ``node`` is a ReLU: ``nn.ReLU``/``nn.ReLU6``, ``nn.Hardtanh(0, m > 0)``, the
    ReLU functions and methods, or a clamp at 0 with an optional positive upper bound."""
    if node.op == "call_module":
        module = root.get_submodule(node.target)
        return isinstance(module, RELU_MODULES) or hardtanh_is_relu(module)
    if node.op == "call_function":
        return node.target in RELU_FUNCTIONS or (node.target in CLAMP_FUNCTIONS and
                                                 clamp_is_relu(node, root))
    return node.op == "call_method" and (node.target in RELU_METHODS or (
        node.target in CLAMP_METHODS and clamp_is_relu(node, root)))


def _upper_bound(node, root):
    """The upper bound a ReLU node clamps at (6 for ReLU6), or None."""
    if node.op == "call_module":
        module = root.get_submodule(node.target)
        return 6.0 if isinstance(module, nn.ReLU6) else \
            float(module.max_val) if isinstance(module, nn.Hardtanh) else None
    if node.op == "call_function" and node.target is F.relu6:
        return 6.0
    if node.op == "call_method" and node.target in RELU_METHODS or \
            node.op == "call_function" and node.target in RELU_FUNCTIONS:
        return None
    b = bind(node, root)
    high = b.get("max_val") if "max_val" in b.arguments else b.get("max")
    return None if high is None else float(high)


def qcfsify(model, levels, init_threshold=4.0, *, context="", input_shape=None):
    """A trainable QCFS network computing ``model`` with every ReLU replaced by QCFS.

    The model is traced with torch.fx; every call of ``nn.ReLU``/``nn.ReLU6`` or of
    ``F.relu``/``torch.relu``/``F.relu6``/``Tensor.relu`` becomes its own QCFS layer (own
    threshold, own level), named from the call site: a module keeps its name for its first
    call (``layer1.0.relu``) and later calls get ``_1``, ``_2`` (``layer1.0.relu_1``); a
    function call is named by the module it is called in (``F.relu`` inside module
    ``conv1``: ``conv1.relu``). ReLU6's clipping at 6 is dropped: QCFS clips at its own
    threshold. So are the ReLUs spelled as clamps: ``x.clamp(min=0)``, ``torch.clamp(x, 0,
    m)``, ``x.clip(0)``, ``x.clamp_min(0)``, ``F.hardtanh(x, 0, m)`` and ``nn.Hardtanh(0, m)``
    with ``m > 0`` become QCFS layers, the upper bound ``m`` dropped (it caps a threshold
    chosen from data, as ReLU6's 6 does); clamps to other bounds are refused.

    Args:
        model: an ``nn.Module`` traceable by torch.fx (no data-dependent control flow). It
            is copied, not changed.
        levels: an int or one int >= 1 per QCFS layer, in the order of
            :func:`models.qcfs_layers` of the result (forward order).
        init_threshold: initial threshold (lambda) of every new QCFS layer, > 0.
        context: prefix for error messages (e.g. ``"tv:efficientnet_b0"``).
        input_shape: optional per-image input shape (see :func:`models.convert_to_snn`).

    Returns:
        an ``fx.GraphModule`` (same submodule names and state_dict keys as ``model``, plus
        ``NAME.threshold`` per QCFS layer) whose :func:`models.qcfs_layers` are in call order.

    Raises:
        ValueError: before any training, one line naming the first node with no exact
            spiking counterpart (SiLU, GELU, Hardswish, sigmoid gating, attention, LayerNorm,
            a max pool of something other than spike bursts, ...) and why; an in-place
            operation (``nn.ReLU(inplace=True)``, ``b += a``) whose old value is read
            afterwards, which torch.fx would silently trace out of place; or bad levels.
    """
    return qcfsify_(copy.deepcopy(model), levels, init_threshold, context=context,
                    input_shape=input_shape)


def qcfsify_(model, levels, init_threshold=4.0, *, context="", input_shape=None):
    """:func:`qcfsify` without the copy: the result shares ``model``'s submodules (for a
    freshly built model, which nothing else holds)."""
    if not float(init_threshold) > 0:
        raise ValueError(f"init_threshold must be > 0, got {init_threshold!r}")
    root, graph = trace(model)
    network = root if isinstance(root, fx.GraphModule) else fx.GraphModule(
        root, graph, class_name=type(model).__name__)
    names = call_site_names(network, network.graph)
    relus = [node for node in network.graph.nodes if _is_relu(node, network)]
    # an in-place ReLU becomes an out-of-place QCFS layer: refuse it where that is visible
    check_inplace_aliasing(network, network.graph, names, context=context,
                           checked=lambda node, operand: node in relus)
    caps = {node: _upper_bound(node, network) for node in relus}  # before any module moves
    for node in relus:
        name = names[node]
        qcfs_module = QCFS(level=1, init_threshold=float(init_threshold))
        # a ReLU6's (or a clamp's) bound caps a threshold chosen from data (threshold_init.py)
        qcfs_module.cap = caps[node]
        network.add_submodule(name, qcfs_module)
        source = bind(node, network)["input"]
        with network.graph.inserting_after(node):
            qcfs = network.graph.call_module(name, (source,))
        qcfs.meta = dict(node.meta)
        node.replace_all_uses_with(qcfs)
        network.graph.erase_node(node)
    network.graph.lint()
    network.delete_all_unused_submodules()
    network.recompile()
    set_levels(network, levels)
    # refuse now what conversion would refuse later (with these levels: lengths of trains)
    model_graph(network, context=context, input_shape=input_shape)
    return network
