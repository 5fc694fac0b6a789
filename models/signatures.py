"""Binding a traced node's arguments to the signature of what it calls, so that every spelling
of one operation (``torch.add(a, b)``, ``torch.add(a, other=b)``, ``a.add(other=b)``,
``a + b``) reads the same: ``{"input": a, "other": b, "alpha": 1}``.

- ``torch.*`` functions: their schemas (``torch.fx.operator_schemas``); of several overloads,
  those that accept the arguments must agree on which parameter each argument binds to.
- Tensor methods: the same-named ``torch.*`` schema with ``self`` as ``input`` (or the
  method's own Python signature); varargs methods (``view``, ``permute``, ...) and ``operator.*``
  through the table below.
- Modules: their ``forward`` signature.

The tensor operand is always called ``input`` (``self``, ``x``, ``tensor`` are renamed).
"""
import inspect
import operator

import torch
import torch.nn.functional as F
from torch.fx.operator_schemas import get_signature_for_torch_op

__all__ = ["BindError", "Binding", "bind"]


class BindError(Exception):
    """A node's arguments do not fit its signature; ``argument`` names the culprit."""

    def __init__(self, argument, reason):
        super().__init__(reason)
        self.argument, self.reason = argument, reason


class Binding:
    """``arguments``: every parameter, given or defaulted (varargs as a tuple);
    ``given``: the names given explicitly."""

    __slots__ = ("arguments", "given")

    def __init__(self, arguments, given):
        self.arguments, self.given = arguments, given

    def __getitem__(self, name):
        return self.arguments[name]

    def get(self, name, default=None):
        return self.arguments.get(name, default)

    def __repr__(self):
        return f"Binding({self.arguments!r})"


def _signature(function):
    return inspect.signature(function)


def _varargs(keyword):
    """``(input, *values, keyword=None)``: ``x.view(2, 3)``, ``x.view((2, 3))`` and
    ``x.view(size=(2, 3))``."""
    parameter = inspect.Parameter
    return inspect.Signature([parameter("input", parameter.POSITIONAL_OR_KEYWORD),
                              parameter("values", parameter.VAR_POSITIONAL),
                              parameter(keyword, parameter.KEYWORD_ONLY, default=None)])


# Variadic methods: (keyword the method accepts, the name the binding gives the values).
_VARARGS = {"view": ("size", "shape"), "reshape": ("shape", "shape"),
            "expand": ("size", "shape"), "repeat": ("repeats", "repeats"),
            "permute": ("dims", "dims")}
# Methods whose signature is variadic or that have no same-named torch function.
_METHODS = {
    **{name: _varargs(keyword) for name, (keyword, _) in _VARARGS.items()},
    "size": _signature(lambda input, dim=None: None),
    "dim": _signature(lambda input: None),
    "contiguous": _signature(lambda input, memory_format=torch.contiguous_format: None),
    "type_as": _signature(lambda input, other: None),
    "view_as": _signature(lambda input, other: None),
    "reshape_as": _signature(lambda input, other: None),
}

_BINARY = _signature(lambda input, other: None)
_UNARY = _signature(lambda input: None)
_OPERATORS = {
    **{op: _BINARY for op in (
        operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv,
        operator.mod, operator.pow, operator.matmul, operator.iadd, operator.isub,
        operator.imul, operator.itruediv, operator.ifloordiv, operator.imod, operator.eq,
        operator.ne, operator.lt, operator.le, operator.gt, operator.ge, operator.and_,
        operator.or_, operator.xor)},
    operator.neg: _UNARY, operator.pos: _UNARY,
    operator.getitem: _signature(lambda input, index: None),
}
# boolean-dispatch functionals (signature ``*args, **kwargs``): the variant with indices has
# the same parameters
_DISPATCHED = {
    F.max_pool1d: F.max_pool1d_with_indices, F.max_pool2d: F.max_pool2d_with_indices,
    F.max_pool3d: F.max_pool3d_with_indices,
    F.adaptive_max_pool1d: F.adaptive_max_pool1d_with_indices,
    F.adaptive_max_pool2d: F.adaptive_max_pool2d_with_indices,
    F.adaptive_max_pool3d: F.adaptive_max_pool3d_with_indices,
}
_TENSOR_NAMES = ("input", "self", "x", "tensor")


def _candidates(node, root):
    """The signatures ``node`` may be bound to, with its arguments as they are to be bound."""
    args, kwargs = tuple(node.args), dict(node.kwargs)
    if node.op == "call_module":
        return [_signature(root.get_submodule(node.target).forward)], args, kwargs
    if node.op == "call_function":
        target = _DISPATCHED.get(node.target, node.target)
        if target in _OPERATORS:
            return [_OPERATORS[target]], args, kwargs
        try:
            return [_signature(target)], args, kwargs
        except (TypeError, ValueError):
            return get_signature_for_torch_op(target) or [], args, kwargs
    name = node.target  # call_method: args[0] is self
    if name in _METHODS:
        return [_METHODS[name]], args, kwargs
    method = getattr(torch.Tensor, name, None)
    if inspect.isfunction(method):  # a Python-level method (split, unflatten, ...)
        return [_signature(method)], args, kwargs
    function = getattr(torch, name, None)
    signatures = get_signature_for_torch_op(function) if function is not None else None
    return signatures or [], args, kwargs


def _rename(arguments, signature):
    """The first parameter (the tensor operand) is called ``input``."""
    params = list(signature.parameters)
    if params and params[0] in _TENSOR_NAMES and params[0] != "input":
        arguments = {("input" if k == params[0] else k): v for k, v in arguments.items()}
    return arguments


def bind(node, root):
    """``Binding`` of a ``call_module`` / ``call_function`` / ``call_method`` node.

    Raises:
        BindError: no signature accepts the arguments, or several accept them with the
            arguments bound to different parameters.
    """
    signatures, args, kwargs = _candidates(node, root)
    if not signatures:
        raise BindError(None, "has no known signature to bind its arguments to")
    found, first_error = [], None
    for signature in signatures:
        if "out" in signature.parameters and "out" not in kwargs:
            continue  # the out= overloads
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as error:
            first_error = first_error or error
            continue
        given = dict(_rename(dict(bound.arguments), signature))
        bound.apply_defaults()
        found.append((signature, given, _rename(dict(bound.arguments), signature)))
    if not found:
        message = str(first_error) if first_error else "does not fit its signature"
        return _raise_unbound(message, kwargs)
    # overloads that accept the arguments must read them the same way
    tensor_first = [f for f in found if "input" in f[2] or "tensors" in f[2]] or found
    signature, given, arguments = tensor_first[0]
    reading = {key: id(value) for key, value in given.items()}
    for _, other_given, _ in tensor_first[1:]:
        if {key: id(value) for key, value in other_given.items()} != reading:
            raise BindError(None, "binds ambiguously to the overloads of its signature")
    name = node.target if node.op == "call_method" else None
    if name in _VARARGS:  # x.view(2, 3), x.view((2, 3)) and x.view(size=(2, 3)) alike
        keyword, canonical = _VARARGS[name]
        values, named = arguments.pop("values"), arguments.pop(keyword)
        given.pop("values", None)
        given.pop(keyword, None)
        if named is not None:
            values = (named,)
        if len(values) == 1 and isinstance(values[0], (list, tuple, torch.Size)):
            values = tuple(values[0])
        arguments[canonical] = given[canonical] = values
    return Binding(arguments, frozenset(given))


def _raise_unbound(message, kwargs):
    for key in kwargs:
        if f"'{key}'" in message:
            raise BindError(key, message)
    raise BindError(None, message)
