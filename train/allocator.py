"""The C allocator's settings for training on the CPU.

Torch allocates CPU tensors with the C library's ``malloc``. glibc's gives large blocks back to
the kernel as soon as they are freed: a block above its mmap threshold is a mapping of its own,
unmapped by ``free``, and free memory at the top of the heap is trimmed past a threshold. A
training step allocates and frees tens of MB of activations in blocks of a few MB, so every step
faults those pages in again, one 4 KiB page at a time (on 2 CPU cores, 11-18 thousand faults
and about a fifth of a step from the cache, ``bench/train_step.py``).

:func:`reuse_freed_memory` has malloc keep freed memory for the next step instead. The peak
resident memory of a step does not grow (the kept pages are those the step's peak held anyway);
what changes is that the process keeps its peak between steps. ``r2 fit`` calls it when it
trains on the CPU. Settings of the user's own (glibc's ``MALLOC_*_`` variables or
``GLIBC_TUNABLES``, another allocator preloaded) are left alone.
"""

from __future__ import annotations

import ctypes
import os
import platform

#: blocks up to this size come from the heap (and are reused) instead of a mapping of their own
MMAP_THRESHOLD = 1 << 30
#: free memory kept at the top of the heap before any is given back to the kernel
TRIM_THRESHOLD = 1 << 30

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_ARENA_MAX",
                  "GLIBC_TUNABLES", "LD_PRELOAD")


def reuse_freed_memory() -> bool:
    """Set glibc malloc's mmap and trim thresholds (:data:`MMAP_THRESHOLD`,
    :data:`TRIM_THRESHOLD`) for this process; True when set. False, and nothing changed, where
    the C library is not glibc or the environment holds allocator settings of its own
    (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_TOP_PAD_``,
    ``MALLOC_ARENA_MAX``, ``GLIBC_TUNABLES``, ``LD_PRELOAD``)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if any(os.environ.get(name) for name in _USER_SETTINGS):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # the mmap threshold first: setting either one fixes both (no more dynamic adjustment)
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "reuse_freed_memory"]
