"""Dropout with a fast CPU mask: random bits from torch's generator, as few per element as needed.

Shared by the R² Block's MLPs (:mod:`r2.model.block`) and its memory-lean first stage and token
attention (:mod:`r2.model.lean_input`, :mod:`r2.model.lean_pool`), which redraw the same masks
in their backward passes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn


_FIELD_TABLES: dict = {}  # (bits, threshold, dtype, device) -> table


def _field_table(bits: int, threshold: int, dtype: torch.dtype, device) -> torch.Tensor:
    """(256, 8 // bits): row v holds the mask elements of byte v, one per ``bits``-bit field of it
    (lowest field first), each 1 where the field is below ``threshold``, else 0."""
    key = (bits, threshold, dtype, torch.device(device) if device is not None else torch.device("cpu"))
    table = _FIELD_TABLES.get(key)
    if table is None:
        fields = torch.arange(256)[:, None] >> torch.arange(0, 8, bits) & (2**bits - 1)  # (256, 8 // bits)
        table = _FIELD_TABLES[key] = (fields < threshold).to(dtype=dtype, device=key[3])
    return table


def bernoulli_mask(shape: torch.Size, keep: float, device=None,
                   generator: torch.Generator | None = None, dtype: torch.dtype = torch.bool) -> torch.Tensor:
    """A mask of ``dtype`` (bool, or 0 / 1 in a number type), each element 1 (True) with
    probability ``keep``, independently.

    Random bits come 64 at a time from torch's generator (seeded by ``torch.manual_seed``,
    saved with ``torch.get_rng_state``; or from ``generator``), as few per element as ``keep``
    needs: 1, 2 or 8 when ``keep * 2**bits`` is an integer (p = 0.5: 1 bit; 0.25: 2; exact),
    else 32 (exact to 2^-32). Fields of 1 and 2 bits are expanded by a 256-row table, one row
    per random byte, already in ``dtype``: a float tensor multiplied by a float mask skips the
    conversion a uint8 or bool mask would cost (4-bit fields are drawn as 8: the table lookup
    of two elements a byte is slower than the compare). On the CPU (2 cores, 4M elements) a
    1-bit mask takes 1.2 ms, the 8-bit one 3.7 ms, the 32-bit one 11 ms and ``bernoulli_``,
    which draws one random number per element, 46 ms.
    """
    n = math.prod(shape)
    bits = next((b for b in (1, 2, 8) if keep * 2**b == round(keep * 2**b)), 32)
    if bits == 32:  # P(bits < threshold) = keep to 2^-32, for uniform int32 bits
        threshold, lowest, field = round(keep * 2**32) - 2**31, -2**31, torch.int32
    else:
        threshold, lowest, field = round(keep * 2**bits), 0, torch.uint8
    if threshold >= lowest + 2**bits:  # keep within 2^-33 of 1
        return torch.ones(shape, dtype=dtype, device=device)
    if threshold <= lowest:
        return torch.zeros(shape, dtype=dtype, device=device)
    per_word = 64 // bits
    words = torch.randint(-2**63, 2**63 - 1, (-(-n // per_word),), dtype=torch.int64, device=device,
                          generator=generator)
    if bits < 8:  # each random byte holds 8 // bits elements: expanded by a table lookup
        per_byte = 8 // bits
        table = _field_table(bits, threshold, dtype, words.device)  # (256, per_byte)
        rows = words.view(torch.uint8)[:-(-n // per_byte)].int()
        return table.index_select(0, rows).view(-1)[:n].view(shape)
    mask = words.view(field)[:n].view(shape) < threshold  # uniform over the 2^bits values
    if dtype in (torch.bool, torch.uint8):
        return mask.view(dtype)  # the bool's bytes are 0 / 1
    return mask.to(dtype)


class Dropout(nn.Dropout):
    """``nn.Dropout`` (zero with probability p, scale the rest by 1 / (1 - p)); on the CPU the
    mask comes from :func:`bernoulli_mask`, elsewhere the fused kernel of ``nn.Dropout``.

    The CPU path matters: the dropout after the input LayerNorm runs over all N tokens of K
    layers at the CLIP width, and torch's CPU ``bernoulli_`` made it ~30% of a training step.
    The mask is drawn as uint8 0 / 1, which autograd keeps for the backward pass (1 byte an
    element; a float tensor multiplies by it 4-5x faster than by a bool mask, ``torch.where``
    and ``masked_fill`` are slower still).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or x.device.type != "cpu" or self.inplace:
            return super().forward(x)
        keep = 1.0 - self.p
        if keep == 0.0:
            return torch.zeros_like(x)
        return (x * bernoulli_mask(x.shape, keep, x.device, dtype=torch.uint8)).mul_(1.0 / keep)

    @property
    def keep(self) -> float:
        """The keep probability of this dropout now: 1 - p in training mode, else 1."""
        return 1.0 - self.p if self.training else 1.0

    def after_norm(self, norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
        """``self(norm(x))``; on the CPU in training by :func:`dropout_after_norm`, the same
        random mask as ``self``."""
        if not self.training or self.p in (0.0, 1.0) or x.device.type != "cpu" or self.inplace:
            return self(norm(x))
        if norm.weight is None:  # no affine parameters to fold the scale into
            return self(norm(x))
        return dropout_after_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps, self.keep).output


@dataclass
class NormDropout:
    """output: the dropped-out LayerNorm output; mean, rstd: the norm's statistics (what its
    backward takes); mask: the 0 / 1 keep mask (in the type asked for), None when keep is 1."""

    output: torch.Tensor
    mean: torch.Tensor
    rstd: torch.Tensor
    mask: torch.Tensor | None


def dropout_after_norm(x: torch.Tensor, normalized_shape, weight: torch.Tensor, bias: torch.Tensor | None,
                       eps: float, keep: float, generator: torch.Generator | None = None,
                       mask_dtype: torch.dtype = torch.uint8, masked_rows: int | None = None) -> NormDropout:
    """dropout(layer_norm(x)) with keep probability ``keep``, the 1 / keep scale folded into the
    norm's weight and bias (C values, not every element: one pass less each way, exact when
    1 / keep is a power of two, as for p = 0.5); the mask drawn by :func:`bernoulli_mask` from
    ``generator`` (torch's default one when None). The output is multiplied in place: autograd
    does not keep a LayerNorm's output. The mask is 0 / 1 in ``mask_dtype``, the same values
    in any: uint8 where autograd keeps it (a quarter of a float mask's bytes), the output's
    float type where it is not kept (multiplying by a uint8 mask converts it to a float copy
    first: a (4, 32, 50, 256) mask drawn once and applied to two fresh copies took 3.8 ms in
    uint8, 2.0 ms in float32, on 2 CPU cores). ``masked_rows``: the mask covers the first
    ``masked_rows`` rows of ``x`` only (the rest, a block's zero padding, is not dropped out; None:
    all rows)."""
    out, mean, rstd = torch.native_layer_norm(x, normalized_shape, weight / keep,
                                              bias / keep if bias is not None else None, eps)
    mask = None
    if keep < 1.0:
        masked = out if masked_rows is None else out[:masked_rows]
        mask = bernoulli_mask(masked.shape, keep, x.device, generator, mask_dtype)
        masked.mul_(mask)
    return NormDropout(output=out, mean=mean, rstd=rstd, mask=mask)


__all__ = ["Dropout", "NormDropout", "bernoulli_mask", "dropout_after_norm"]
