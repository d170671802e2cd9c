"""The CPUs this process may run on, shared by the rooms that size worker pools and thread counts."""

from __future__ import annotations

import os


def usable_cpus() -> int:
    """The CPUs in this process's affinity mask (what ``taskset`` or a container's cpuset allows;
    ``os.cpu_count()`` where the platform has no mask)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


__all__ = ["usable_cpus"]
