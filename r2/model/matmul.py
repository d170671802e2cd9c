"""Matrix products of float32 CPU tensors through oneDNN, where torch's own go through MKL.

torch's float32 ``addmm`` / ``mm`` / ``F.linear`` on the CPU call MKL, whose AVX-512 code is for
Intel processors: on this project's 2-core AMD EPYC with AVX-512 it runs at the AVX2 rate
(175 GFLOP/s for a 2048^3 product). oneDNN (``torch.ops.mkldnn``, built into torch's x86
wheels) chooses its kernels by the instruction set: a (1350, 770) x (770, 256) product takes
3.4 ms through ``addmm`` and 1.5 ms through oneDNN there, the same float32 values to its
rounding (``bench/matmul.py`` prints the ratios on the machine it runs on).

oneDNN keeps every primitive it builds, one per shape of product, in a cache of up to 1024 (about
0.6 MB each here), so only products of a few fixed shapes go through it: the blocks of
:mod:`r2.model.lean_input` (whose block size is fixed by the model's widths, whatever the batch;
its last, partial block padded to one of four sizes where that pads little; the model's other
products, whose shapes follow the batch's T and S, stay with torch). Where oneDNN is not in
the build, or for other devices and types, the product is ``F.linear``'s. :data:`ONEDNN` turns
it off (``R2_ONEDNN=0`` in the environment).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from r2 import onednn

#: products through oneDNN where it can take them (``R2_ONEDNN=0``: never)
ONEDNN = onednn.enabled()

_LINEAR = onednn.linear_op()


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias`` (``F.linear``), through oneDNN for float32 CPU tensors. Any
    strides (``weight`` may be a transposed view: ``linear(a.t(), b.t())`` is ``a.T @ b``);
    no autograd (call it where gradients are written by hand).

    x: (..., K); weight: (N, K); bias: (N,) or None -> (..., N).
    """
    if (ONEDNN and _LINEAR is not None and x.device.type == "cpu" and x.dtype == torch.float32
            and weight.dtype == torch.float32 and (bias is None or bias.dtype == torch.float32)):
        return _LINEAR(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


def onednn_in_use() -> bool:
    """Whether :func:`linear` takes float32 CPU products through oneDNN here."""
    return ONEDNN and _LINEAR is not None


__all__ = ["ONEDNN", "linear", "onednn_in_use"]
