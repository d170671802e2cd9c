"""oneDNN's float32 CPU linear, shared by the rooms that run torch products (``r2.extract``'s
frozen CLIP, ``r2.model.matmul``'s hand-written backward); imports torch and nothing else.

torch's own float32 CPU products call MKL, whose AVX-512 code is for Intel processors; oneDNN
(``torch.ops.mkldnn``, built into torch's x86 wheels) chooses its kernels by the instruction set.
``R2_ONEDNN=0`` in the environment keeps every product with torch.
"""

from __future__ import annotations

import os

import torch

#: the environment variable that turns oneDNN off (``R2_ONEDNN=0``)
ENV_VAR = "R2_ONEDNN"


def enabled() -> bool:
    """False where ``R2_ONEDNN=0`` is set (read now, not at import)."""
    return os.environ.get(ENV_VAR, "1") != "0"


def linear_op():
    """oneDNN's linear, ``op(x, weight, bias, "none", [], "")`` (``torch.ops.mkldnn.
    _linear_pointwise``, what torch.compile's CPU code calls), or None where this build of torch
    has none (ARM wheels, builds without mkldnn). Does not read :data:`ENV_VAR`."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):
        return None
