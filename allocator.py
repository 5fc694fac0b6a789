"""CPU memory: keep freed memory in the process during training.

glibc's allocator serves a large request (over its mmap threshold, which it raises by itself
up to 32 MiB) with a fresh ``mmap`` and returns it to the system when freed, and trims the
top of its heap once more than 128 KiB there is free. A training step allocates and frees
activations and gradients of tens of MiB each, so every step pays the page faults of
memory the step before gave back. :func:`keep_freed_memory` raises the mmap threshold to its
maximum and trims only beyond 2 GiB free, so freed memory is reused: the process keeps its peak memory
reserved, as PyTorch's CUDA caching allocator does on a GPU. Tensors over 32 MiB are still
mapped and unmapped each time (glibc's limit).
"""
import ctypes
import ctypes.util
import os
import platform

__all__ = ["keep_freed_memory", "SETTINGS"]

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # glibc's mallopt parameters
SETTINGS = {  # name (as glibc's environment variables spell it) -> (parameter, value)
    "MALLOC_MMAP_THRESHOLD_": (_M_MMAP_THRESHOLD, 32 * 1024 * 1024),  # glibc's largest
    "MALLOC_TRIM_THRESHOLD_": (_M_TRIM_THRESHOLD, 2 ** 31 - 1),  # mallopt's largest (an int)
    "MALLOC_TOP_PAD_": (_M_TOP_PAD, 1024 ** 3),  # address space; pages come when touched
}


def keep_freed_memory():
    """Apply :data:`SETTINGS` with glibc's ``mallopt``: ``{name: value}`` of those applied;
    None where the C library is not glibc, or where the environment already sets any of them
    (the user's choice stands)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    if any(name in os.environ for name in SETTINGS):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    applied = {}
    for name, (parameter, value) in SETTINGS.items():
        if libc.mallopt(ctypes.c_int(parameter), ctypes.c_int(value)) == 1:
            applied[name] = value
    return applied
