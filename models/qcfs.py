"""QCFS activation: the quantized, clipped, shifted ReLU that PASCAL networks are trained with."""
import hashlib
import logging
import numbers
import os
import platform
import threading
import time
import warnings
from pathlib import Path

import torch
from torch import fx, nn

from errors import ModelError

__all__ = ["QCFS", "qcfs_layers", "get_levels", "set_levels", "clamp_thresholds_",
           "validate_levels", "fused_kernel"]

_KERNEL_SOURCE = Path(__file__).with_name("qcfs_kernel.cpp")
_FUSED_DTYPES = (torch.float32, torch.float64)
_kernel_lock = threading.Lock()
_kernel_state = {"loaded": False, "ops": None}


class _QCFSFunction(torch.autograd.Function):
    """y = step * clamp(floor(x / step + 1/2), 0, L) with step = threshold / L.

    Backward is the QCFS straight-through estimator: floor passes gradients unchanged, so
    inside the clipping range (0 <= x <= threshold) dy/dx = 1 and dy/dthreshold =
    (y - x) / threshold; above the range y = threshold (dy/dthreshold = 1, dy/dx = 0); below it
    y = 0 (no gradient). With m = [0 <= x <= threshold] that is dy/dthreshold = (y - m x) /
    threshold everywhere (above, y / threshold = 1; below, y = 0), so the threshold gradient
    is two dot products, (<g, y> - <g m, x>) / threshold, and g m is the input gradient.
    A handful of in-place, single-dtype passes: the eager code, used on GPUs, under
    torch.compile and where the fused CPU kernel cannot be built.
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)
    def forward(ctx, x, threshold, level):
        step = threshold.reshape(()) / level  # 0-dim: the cheapest broadcast
        y = torch.div(x, step).add_(0.5).floor_().clamp_(0, level).mul_(step)
        ctx.save_for_backward(x, y, threshold)
        return y

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad_y):
        x, y, threshold = ctx.saved_tensors
        # m as a float tensor (comparing against the clamped value avoids bool tensors,
        # whose mixed-dtype arithmetic is many times slower on CPU); then g * m in place.
        grad_x = torch.clamp_min(x, 0).clamp_max_(threshold).eq_(x)
        grad_x.mul_(grad_y)
        grad_threshold = None
        if ctx.needs_input_grad[1]:
            # a 1-element tensor, not a Python float: no device synchronisation
            gy = torch.dot(grad_y.reshape(-1), y.reshape(-1))
            gmx = torch.dot(grad_x.reshape(-1), x.reshape(-1))
            grad_threshold = ((gy - gmx) / threshold).reshape(threshold.shape)
        return (grad_x if ctx.needs_input_grad[0] else None), grad_threshold, None


def _cpu_tag():
    """A short hash of this CPU's model and instruction-set flags.

    The kernel is built for the CPU it runs on (-march=native), so its cache entry is named
    after the CPU: a home directory shared by machines with different CPUs holds one build
    per CPU instead of one that would crash on the others.
    """
    described = platform.machine() + platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith(("model name", "flags", "Features", "CPU part")):
                    described += line
    except OSError:
        pass
    return hashlib.sha256(described.encode()).hexdigest()[:10]


def _stable_source(cpp_extension):
    """The kernel's source, copied to a path named after its content inside the extensions
    cache: the build records the source's path, so every checkout of the same source (another
    clone, a CI folder) reuses one build instead of rebuilding for its own path."""
    text = _KERNEL_SOURCE.read_bytes()
    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root())
    path = root / "pascal_qcfs_sources" / f"qcfs_kernel_{hashlib.sha256(text).hexdigest()[:12]}.cpp"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        partial.write_bytes(text)
        os.replace(partial, path)  # whole or absent, with processes building at once
    return path


def _build_kernel():
    # cpp_extension logs a warning about CUDA_HOME on import, irrelevant to a CPU kernel
    extension_log = logging.getLogger("torch.utils.cpp_extension")
    level = extension_log.level
    extension_log.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        extension_log.setLevel(level)
    started = time.perf_counter()
    library = cpp_extension.load(
        f"pascal_qcfs_{_cpu_tag()}", [str(_stable_source(cpp_extension))], is_python_module=False,
        # -fopenmp: at::parallel_for is inline OpenMP code, run on torch's own OpenMP
        # threads (the library is loaded already, under the same name)
        extra_cflags=["-O3", "-march=native", "-ffp-contract=off", "-fno-trapping-math",
                      "-fopenmp"],
        extra_ldflags=["-fopenmp"],
        verbose=False)
    seconds = time.perf_counter() - started
    if seconds > 2:  # built now rather than loaded from the cache
        logging.getLogger("pascal").info(
            "compiled the fused QCFS kernel in %.0fs (cached: %s)", seconds, library)
    return torch.ops.pascal_qcfs


def fused_kernel():
    """The fused CPU QCFS kernel's ops, built on first use and cached; None if unavailable.

    The kernel is C++ compiled for this CPU by ``torch.utils.cpp_extension`` (a C++ compiler
    and ninja are needed) and cached under ``$TORCH_EXTENSIONS_DIR`` (default
    ``~/.cache/torch_extensions``), one build per CPU and source, shared by every checkout;
    later processes load the cached build in milliseconds.
    Where it cannot be built, one warning names the reason and every QCFS layer runs the
    eager code, which computes the same values.
    """
    if _kernel_state["loaded"]:
        return _kernel_state["ops"]
    with _kernel_lock:
        if not _kernel_state["loaded"]:
            try:
                _kernel_state["ops"] = _build_kernel()
            except Exception as error:  # noqa: BLE001 -- any build failure means: eager code
                reason = " ".join(str(error).split())[:200] or type(error).__name__
                warnings.warn(f"the fused QCFS kernel could not be built ({reason}); "
                              "QCFS layers use the eager code", RuntimeWarning, stacklevel=2)
            _kernel_state["loaded"] = True
    return _kernel_state["ops"]


class _FusedQCFSFunction(torch.autograd.Function):
    """The QCFS activation through the fused CPU kernel (models/qcfs_kernel.cpp).

    The same values as :class:`_QCFSFunction` -- forward and input gradient bitwise, the
    threshold gradient up to the order of its sums (accumulated in float64 here) -- in one
    pass over the elements for the forward and one for the backward. Only the input and the
    threshold are saved; the backward recomputes the output where it needs it.
    """

    @staticmethod
    def forward(ctx, x, threshold, level):
        ctx.save_for_backward(x, threshold)
        ctx.level = level
        return _kernel_state["ops"].forward(x, threshold, level)

    @staticmethod
    def backward(ctx, grad_y):
        x, threshold = ctx.saved_tensors
        if grad_y.dtype != x.dtype or grad_y.stride() != x.stride():
            grad_y = torch.empty_like(x).copy_(grad_y)
        grad_x, grad_threshold = _kernel_state["ops"].backward(
            grad_y, x, threshold, ctx.level, ctx.needs_input_grad[1])
        return ((grad_x if ctx.needs_input_grad[0] else None),
                (grad_threshold if ctx.needs_input_grad[1] else None), None)


class _TracedQCFSFunction(torch.autograd.Function):
    """The QCFS activation as torch.compile traces it: plain out-of-place operations, which
    inductor fuses with their neighbours. The forward and the input gradient are those of
    the other two; on the CPU the threshold gradient's sum is taken in float64 there too,
    as the fused kernel's is, so that compiled and eager runs update thresholds alike."""

    @staticmethod
    def forward(ctx, x, threshold, level):
        ctx.save_for_backward(x, threshold)
        ctx.level = level
        step = threshold.reshape(()) / level
        return torch.clamp(torch.floor(x / step + 0.5), 0, level) * step

    @staticmethod
    def backward(ctx, grad_y):
        x, threshold = ctx.saved_tensors
        thr = threshold.reshape(())
        grad_x = ((x >= 0) & (x <= thr)).to(x.dtype) * grad_y
        grad_threshold = None
        if ctx.needs_input_grad[1]:
            step = thr / ctx.level
            y = torch.clamp(torch.floor(x / step + 0.5), 0, ctx.level) * step
            wide = torch.float64 if x.device.type == "cpu" else x.dtype
            terms = grad_y.to(wide) * y.to(wide) - grad_x.to(wide) * x.to(wide)
            # summed over every dimension but 1 first (those BatchNorm reduces over), then over
            # the channels: inductor fuses the first sum with BatchNorm's backward reductions
            total = (terms.sum(dim=[d for d in range(terms.dim()) if d != 1]).sum()
                     if terms.dim() > 1 else terms.sum())
            grad_threshold = (total / thr.to(wide)).to(threshold.dtype).reshape(threshold.shape)
        return (grad_x if ctx.needs_input_grad[0] else None), grad_threshold, None


def _fusable(x, threshold):
    return (x.device.type == "cpu" and x.dtype in _FUSED_DTYPES and threshold.dtype == x.dtype
            and (x.is_contiguous()
                 or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)))
            and fused_kernel() is not None)


class QCFS(nn.Module):
    """Quantization-clip-floor-shift activation.

    q(x) = threshold * clip(floor(x * L / threshold + 1/2) / L, 0, 1), with one trainable
    scalar ``threshold`` (lambda) and an integer ``level`` L >= 1. Its outputs take the L+1
    values {0, threshold/L, ..., threshold}; threshold/L is the spike amplitude of the
    converted spiking layer.
    """

    # set by qcfsify where the layer replaced a bounded ReLU (ReLU6: 6; clamp(0, m) or
    # hardtanh(0, m): m): the bound caps thresholds chosen from data
    cap = None

    @property
    def relu6(self):
        """Whether the layer replaced a ReLU6 (its cap is 6)."""
        return self.cap == 6

    def __init__(self, level: int = 4, init_threshold: float = 4.0):
        super().__init__()
        self.level = _check_level(level, "level")
        self.threshold = nn.Parameter(torch.tensor([float(init_threshold)]))

    def forward(self, x):
        # On the CPU the fused kernel, under torch.compile a formulation it fuses itself,
        # elsewhere the eager code: the same values in every case.
        if torch.compiler.is_compiling():
            return _TracedQCFSFunction.apply(x, self.threshold, self.level)
        if _fusable(x, self.threshold):
            return _FusedQCFSFunction.apply(x, self.threshold, self.level)
        return _QCFSFunction.apply(x, self.threshold, self.level)

    def quantize(self, x):
        """Integer level k = clamp(floor(x / (threshold/L) + 1/2), 0, L) of every element."""
        step = self.threshold.detach().to(x.dtype) / self.level
        return torch.floor(x / step + 0.5).clamp_(0, self.level).to(torch.int64)

    def extra_repr(self):
        return f"level={self.level}"


def _check_level(value, what):
    # bool is an int subclass; a level of True is a bug, not 1.
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = int(value)
    elif isinstance(value, float) and value.is_integer():
        value = int(value)
    else:
        raise ModelError(f"{what} must be an integer >= 1, got {value!r}")
    if value < 1:
        raise ModelError(f"{what} must be an integer >= 1, got {value!r}")
    return value


def qcfs_layers(model: nn.Module):
    """``[(name, QCFS module), ...]`` in forward order (the order of ``levels``).

    For a ``torch.fx.GraphModule`` (what :func:`models.qcfsify` returns) the order is the
    graph's, i.e. the order of the calls; for other modules it is registration order, which
    is forward order in the models of this package (tested).
    """
    if isinstance(model, fx.GraphModule):
        layers, seen = [], set()
        for node in model.graph.nodes:
            if node.op == "call_module" and node.target not in seen:
                module = model.get_submodule(node.target)
                if isinstance(module, QCFS):
                    layers.append((node.target, module))
                    seen.add(node.target)
        return layers
    return [(name, m) for name, m in model.named_modules() if isinstance(m, QCFS)]


def get_levels(model: nn.Module):
    """The per-layer levels of ``model`` as a list of ints."""
    return [m.level for _, m in qcfs_layers(model)]


def validate_levels(levels, layer_names):
    """Expand ``levels`` (an int or one entry per QCFS layer) to a list of ints, or raise."""
    names = list(layer_names)
    if isinstance(levels, str):
        raise ModelError(
            f"levels must be an int or a sequence of ints, got the string {levels!r} "
            "(parse comma-separated text with utils.parse_levels first)")
    if isinstance(levels, (int, float)) and not isinstance(levels, bool):
        return [_check_level(levels, "level")] * len(names)
    try:
        levels = list(levels)
    except TypeError:
        raise ModelError(f"levels must be an int or a sequence of ints, got {levels!r}") from None
    if len(levels) != len(names):
        shown = ", ".join(names) if len(names) <= 40 else ", ".join(names[:40]) + ", ..."
        raise ModelError(
            f"the model has {len(names)} QCFS layers ({shown}); got {len(levels)} levels")
    return [_check_level(v, f"level of {name}") for v, name in zip(levels, names, strict=True)]


def set_levels(model: nn.Module, levels):
    """Set every QCFS layer's level from an int or a per-layer sequence; returns the list."""
    layers = qcfs_layers(model)
    expanded = validate_levels(levels, [name for name, _ in layers])
    for (_, module), level in zip(layers, expanded, strict=True):
        module.level = level
    return expanded


@torch.no_grad()
def clamp_thresholds_(model: nn.Module, min_value: float = 1e-3):
    """Keep every threshold >= ``min_value`` (call after each optimizer step).

    Gradient descent can push a small threshold through zero; a non-positive threshold has
    no spiking counterpart, so training projects it back onto the positive range.
    """
    for _, module in qcfs_layers(model):
        module.threshold.clamp_(min=min_value)
