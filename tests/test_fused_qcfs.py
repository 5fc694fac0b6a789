"""The fused CPU QCFS kernel against the QCFS formula computed here with plain tensor ops.

The formula below is the definition the eager code implements operation for operation
(divide, add 1/2, floor, clamp, multiply; the straight-through mask as a product), so bitwise
equality with it is bitwise equality with the eager QCFS.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings, strategies as st

import models
from models.qcfs import fused_kernel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def formula(x, threshold, level):
    step = threshold.detach().reshape(()) / level
    return torch.clamp(torch.floor(x / step + 0.5), 0, level) * step


def formula_grads(x, threshold, level, grad_y):
    """(input gradient, threshold gradient) of the QCFS straight-through estimator."""
    thr = threshold.detach().reshape(())
    mask = ((x >= 0) & (x <= thr)).to(x.dtype)
    grad_x = mask * grad_y
    y = formula(x, threshold, level)
    wide = torch.float64
    grad_thr = ((grad_y.to(wide) * y.to(wide)).sum() - (grad_x.to(wide) * x.to(wide)).sum()) / thr
    return grad_x, grad_thr


def bits(t):
    return t.view(torch.int32 if t.dtype == torch.float32 else torch.int64)


def run_layer(x, threshold, level, grad_y):
    layer = models.QCFS(level, 1.0).to(x.dtype)
    with torch.no_grad():
        layer.threshold.fill_(threshold)
    x = x.detach().clone().requires_grad_()
    y = layer(x)
    y.backward(grad_y)
    return layer, y, x.grad, layer.threshold.grad


def test_the_kernel_is_built_here():
    # CI's machine has a C++ compiler: a failed build there is a failure, not a fallback.
    assert fused_kernel() is not None
    layer = models.QCFS(4, 2.0)
    y = layer(torch.randn(3, 5, requires_grad=True))
    assert type(y.grad_fn).__name__ == "_FusedQCFSFunctionBackward"


special = st.sampled_from([0.0, -0.0, 1e-30, -1e-30, float("inf"), -float("inf"), float("nan")])


@settings(max_examples=60, deadline=None)
@given(dtype=st.sampled_from([torch.float32, torch.float64]),
       level=st.integers(1, 64),
       threshold=st.floats(1e-3, 50.0),
       seed=st.integers(0, 2**31 - 1),
       n_special=st.integers(0, 4),
       specials=st.lists(special, min_size=4, max_size=4),
       channels_last=st.booleans())
def test_forward_and_gradients_match_the_formula(dtype, level, threshold, seed, n_special,
                                                 specials, channels_last):
    gen = torch.Generator().manual_seed(seed)
    shape = (2, 3, 5, 7)
    x = torch.randn(shape, generator=gen, dtype=dtype) * threshold
    step = torch.tensor(threshold, dtype=dtype) / level
    # points exactly on the rounding boundaries (k + 1/2) * step and on the clip edges
    x.view(-1)[10:20] = (torch.arange(-2, 8, dtype=dtype) + 0.5) * step
    x.view(-1)[20:23] = torch.tensor([0.0, threshold, -threshold], dtype=dtype)
    x.view(-1)[:n_special] = torch.tensor(specials[:n_special], dtype=dtype)
    grad_y = torch.randn(shape, generator=gen, dtype=dtype)
    grad_y.view(-1)[30:33] = torch.tensor([float("inf"), float("nan"), -0.0], dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        grad_y = grad_y.contiguous(memory_format=torch.channels_last)
    layer, y, grad_x, grad_thr = run_layer(x, threshold, level, grad_y)
    assert type(y.grad_fn).__name__ == "_FusedQCFSFunctionBackward"
    want_y = formula(x, layer.threshold, level)
    want_gx, want_gt = formula_grads(x, layer.threshold, level, grad_y)
    assert y.stride() == x.stride()
    assert torch.equal(bits(y), bits(want_y))  # bitwise, nan and -0.0 included
    assert torch.equal(bits(grad_x), bits(want_gx))
    # The threshold gradient: the kernel sums in float64 in its own order; the reference
    # sums float64 products in torch's order. nan anywhere makes both nan.
    if torch.isnan(want_gt):
        assert torch.isnan(grad_thr).all()
    else:
        assert grad_thr.item() == pytest.approx(want_gt.item(), rel=1e-6, abs=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("numel", [1, 16383, 16384, 16385, 3 * 16384 + 77, 2**20])
def test_threshold_gradient_within_1e6_of_float64_on_large_tensors(dtype, numel):
    # Sizes around the kernel's summation blocks (16,384 elements) and a large one, where the
    # eager float32 dot products also round: the fused gradient is within 1e-6 relative of
    # the float64 sum, and of the formula in the tensor's own dtype within its rounding.
    gen = torch.Generator().manual_seed(numel)
    x = torch.randn(numel, generator=gen, dtype=dtype) * 2
    grad_y = torch.randn(numel, generator=gen, dtype=dtype)
    layer, _, _, grad_thr = run_layer(x, 2.3, 4, grad_y)
    _, exact = formula_grads(x.double(), layer.threshold.double(), 4, grad_y.double())
    assert grad_thr.item() == pytest.approx(exact.item(), rel=1e-6)


def test_one_training_step_equals_the_eager_code():
    # A small network, one step: every weight gradient bitwise equal to the one computed
    # with the formula as the activation (the input gradients are bitwise equal, so every
    # upstream gradient is); the thresholds' within 1e-6 relative.
    torch.manual_seed(0)
    net = models.qcfsify(torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(8 * 6 * 6, 10)), levels=3, init_threshold=1.5)
    x = torch.randn(4, 3, 6, 6)
    target = torch.tensor([1, 2, 3, 4])
    torch.nn.functional.cross_entropy(net(x), target).backward()
    fused = {name: p.grad.clone() for name, p in net.named_parameters()}
    net.zero_grad()

    class Formula(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, threshold, level):
            ctx.save_for_backward(x, threshold)
            ctx.level = level
            return formula(x, threshold, level)

        @staticmethod
        def backward(ctx, grad_y):
            x, threshold = ctx.saved_tensors
            grad_x, grad_thr = formula_grads(x, threshold, ctx.level, grad_y)
            return grad_x, grad_thr.to(threshold.dtype).reshape(threshold.shape), None

    for _, layer in models.qcfs_layers(net):
        layer.forward = (lambda module: (lambda v: Formula.apply(v, module.threshold,
                                                                 module.level)))(layer)
    torch.nn.functional.cross_entropy(net(x), target).backward()
    for name, p in net.named_parameters():
        if name.endswith("threshold"):
            assert fused[name].item() == pytest.approx(p.grad.item(), rel=1e-6), name
        else:
            assert torch.equal(fused[name], p.grad), name


def test_without_a_compiler_one_warning_and_the_same_values(tmp_path):
    # No C++ compiler (CXX names a program that fails) and an empty extension cache: one
    # warning line names the reason, and the layer computes the formula's values.
    script = (
        "import torch, models\n"
        "x = torch.linspace(-3, 5, 101, dtype=torch.float64)\n"
        "layer = models.QCFS(5, 2.5).double()\n"
        "y = layer(x)\n"
        "step = torch.tensor(2.5, dtype=torch.float64) / 5\n"
        "want = torch.clamp(torch.floor(x / step + 0.5), 0, 5) * step\n"
        "print(torch.equal(y, want), type(y.grad_fn).__name__)\n")
    env = dict(os.environ, CXX="/bin/false", TORCH_EXTENSIONS_DIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "_QCFSFunctionBackward"]
    warned = [line for line in done.stderr.splitlines() if "RuntimeWarning" in line]
    assert len(warned) == 1
    assert "the fused QCFS kernel could not be built (" in warned[0]
    assert warned[0].endswith("QCFS layers use the eager code")


def test_another_checkout_of_the_same_source_reuses_the_build(tmp_path):
    # A copy of the package elsewhere (another clone, CI's folder) loads the build this
    # process made or loaded (same extensions cache) without building it again.
    from torch.utils import cpp_extension
    assert fused_kernel() is not None
    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root())
    libraries = sorted(root.rglob("pascal_qcfs_*/*.so"))
    assert libraries
    before = {path: path.stat().st_mtime_ns for path in libraries}
    shutil.copytree(Path(ROOT) / "models", tmp_path / "models")
    shutil.copy(Path(ROOT) / "errors.py", tmp_path)
    script = ("import models, models.qcfs\n"
              "print(models.__file__, models.qcfs.fused_kernel() is not None)\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path,
                          env=dict(os.environ, PYTHONPATH=str(tmp_path)),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(tmp_path / "models" / "__init__.py"), "True"]
    assert sorted(root.rglob("pascal_qcfs_*/*.so")) == libraries  # no new build
    assert {path: path.stat().st_mtime_ns for path in libraries} == before  # none rebuilt


def test_threshold_gradient_does_not_depend_on_the_thread_count():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(300_000, generator=gen)
    grad_y = torch.randn(300_000, generator=gen)
    threads = torch.get_num_threads()
    grads = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            grads.append(run_layer(x, 1.7, 6, grad_y)[3])
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(bits(g), bits(grads[0])) for g in grads)
