"""``--compile``: torch.compile for training and evaluation, eager mode where it cannot run.

The compiled module is a wrapper (``torch.compile(model)``) sharing ``model``'s parameters and
buffers: steps and evaluations call the wrapper, while checkpoints, statistics and the level
search use ``model`` itself, so checkpoint keys are those of an eager run (no
``_orig_mod.``) and hooks never enter a compiled graph. Compilation happens on the first
call of each kind (training, evaluation) and again where a guarded value changes: a new
batch size (once, after which the graph takes any size), a level change of the adaptive
schedule (the levels are constants of the graph). Compiled kernels are cached on disk by
inductor (``$TORCHINDUCTOR_CACHE_DIR``, default ``/tmp/torchinductor_$USER``), so a second
run of the same network compiles in seconds.
"""
import logging
import subprocess

import torch

__all__ = ["compile_support", "compile_for_steps", "compile_seconds"]


def compile_support(device):
    """None if torch.compile's default backend can run on ``device`` here, else the reason."""
    if device.type == "cuda":
        try:
            from torch.utils._triton import has_triton
        except ImportError:
            return "this torch build has no Triton support"
        return None if has_triton() else "Triton is not installed"
    # inductor's CPU kernels are C++, compiled with the compiler it finds ($CXX, else g++)
    extension_log = logging.getLogger("torch.utils.cpp_extension")
    level = extension_log.level
    extension_log.setLevel(logging.ERROR)  # its CUDA_HOME notice concerns CUDA extensions
    try:
        import torch.utils.cpp_extension  # noqa: F401 -- imported here, under the raised level
        from torch._inductor.cpp_builder import get_cpp_compiler
        compiler = get_cpp_compiler()
        subprocess.run([compiler, "--version"], check=True, capture_output=True, timeout=60)
    except (Exception, SystemExit) as error:  # noqa: BLE001 -- any failure: no compiler
        reason = " ".join(str(error).split())[:160] or type(error).__name__
        return f"no working C++ compiler ({reason})"
    finally:
        extension_log.setLevel(level)
    return None


def compile_for_steps(model, device, logger):
    """``torch.compile(model)``, or ``model`` itself (with one warning line) where the
    backend cannot run here. A graph that fails to compile later runs eagerly (logged by
    torch) instead of stopping the run."""
    reason = compile_support(device)
    if reason is not None:
        logger.warning(f"--compile: {reason}; running in eager mode")
        return model
    torch._dynamo.config.suppress_errors = True
    return torch.compile(model)


def compile_seconds():
    """Wall seconds this process has spent compiling with torch.compile so far."""
    try:
        from torch._dynamo.utils import calculate_time_spent
        return float(calculate_time_spent().get("total_wall_time", 0.0))
    except (ImportError, AttributeError):
        return 0.0
