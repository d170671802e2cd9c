"""Dropout with a fast CPU mask: random bits from torch's generator, as few per element as needed.

Shared by the R² Block's MLPs (:mod:`r2.model.block`) and its memory-lean first stage
(:mod:`r2.model.lean_input`), which redraws the same masks in its backward pass.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def bernoulli_mask(shape: torch.Size, keep: float, device=None,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """A bool mask, each element True with probability ``keep``, independently.

    Random bits come 64 at a time from torch's generator (seeded by ``torch.manual_seed``,
    saved with ``torch.get_rng_state``; or from ``generator``), as few per element as ``keep`` needs: 8 when
    ``keep * 256`` is an integer (p = 0.5, 0.25, ...: exact), else 32 (exact to 2^-32).
    On the CPU this is 4x (32 bits) to 16x (8 bits) faster than ``bernoulli_``, which draws
    one random number per element.
    """
    n = math.prod(shape)
    if round(keep * 256) == keep * 256:  # 8 bits: P(byte < keep * 256) = keep exactly
        threshold, bits, dtype = int(keep * 256), 8, torch.uint8
    else:  # 32 bits: P(bits < threshold) = keep to 2^-32, for uniform int32 bits
        threshold, bits, dtype = round(keep * 2**32) - 2**31, 32, torch.int32
    lowest = 0 if bits == 8 else -2**31
    if threshold >= lowest + 2**bits:  # keep within 2^-33 of 1
        return torch.ones(shape, dtype=torch.bool, device=device)
    if threshold <= lowest:
        return torch.zeros(shape, dtype=torch.bool, device=device)
    per_word = 64 // bits
    words = torch.randint(-2**63, 2**63 - 1, (-(-n // per_word),), dtype=torch.int64, device=device,
                          generator=generator)
    return words.view(dtype)[:n].view(shape) < threshold  # uniform over the 2^bits values


class Dropout(nn.Dropout):
    """``nn.Dropout`` (zero with probability p, scale the rest by 1 / (1 - p)); on the CPU the
    mask comes from :func:`bernoulli_mask`, elsewhere the fused kernel of ``nn.Dropout``.

    The CPU path matters: the dropout after the input LayerNorm runs over all N tokens of K
    layers at the CLIP width, and torch's CPU ``bernoulli_`` made it ~30% of a training step.
    A multiply by the mask viewed as uint8 (autograd keeps the 1-byte mask; by the bool the
    same multiply is 4-5x slower on the CPU, ``torch.where`` and ``masked_fill`` slower still).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or x.device.type != "cpu" or self.inplace:
            return super().forward(x)
        keep = 1.0 - self.p
        if keep == 0.0:
            return torch.zeros_like(x)
        return (x * bernoulli_mask(x.shape, keep, x.device).view(torch.uint8)).mul_(1.0 / keep)

    def after_norm(self, norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
        """``self(norm(x))``; on the CPU in training with the 1 / (1 - p) scale folded into the
        norm's weight and bias (C values, not every element: one pass less each way, exact
        when 1 / (1 - p) is a power of two, as for p = 0.5). Same random mask as ``self``."""
        if not self.training or self.p in (0.0, 1.0) or x.device.type != "cpu" or self.inplace:
            return self(norm(x))
        if norm.weight is None:  # no affine parameters to fold the scale into
            return self(norm(x))
        keep = 1.0 - self.p
        bias = norm.bias / keep if norm.bias is not None else None
        h = F.layer_norm(x, norm.normalized_shape, norm.weight / keep, bias, norm.eps)
        return h.mul_(bernoulli_mask(h.shape, keep, x.device).view(torch.uint8))  # h is not kept by autograd


__all__ = ["Dropout", "bernoulli_mask"]
