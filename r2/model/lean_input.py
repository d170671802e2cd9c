"""The first stage of the video MLP, LayerNorm -> dropout -> Linear, over one cached CLIP layer,
computed a block of clips at a time and recomputed in the backward pass instead of kept.

This stage runs at the CLIP width (D + 2 with the TEF) over all N tokens of every clip, so the
plain composition builds and keeps, per recurrent step, a float32 copy of the layer (for the
LayerNorm's backward), the dropped-out LayerNorm output (for the Linear's backward) and the
dropout mask: 2 x 4 + 1 bytes per element, about 45 MB a step for 4 x 32 clips of ViT-B/32
features, most of what a training step keeps. Here nothing of that size is kept: the backward
pass rebuilds the float32 rows from the cached features (which the batch holds anyway),
recomputes the LayerNorm, redraws the dropout mask from the generator state the forward pass
started from, and accumulates the weight gradients block by block. The features get no
gradient (they come from the frozen CLIP), so none is computed for them.

In the forward pass each block is normalised and dropped out by
:func:`r2.model.dropout.dropout_after_norm` (the 1 / keep scale folded into the LayerNorm, as the
block's other dropouts), its mask drawn from torch's generator block after block
(:func:`blocks`), so the generator advances as for any other dropout and a seeded run is
reproducible and resumable. The backward pass takes every gradient from two products a block
with the normalised rows and the mask (no LayerNorm backward pass: see ``backward``); per
layer of 4 x 32 clips of ViT-B/32 features forward + backward went from 62 to 59 ms (median
of 60, alternated, 2 CPU cores).

Every block's products go through oneDNN (:mod:`r2.model.matmul`): the last, partial block too,
its rows padded with zeros to one of :data:`PARTIAL_SIZES` sizes (:func:`padded_clips`; where
that would add more than an eighth of its rows, torch's products take it as it is), so that
oneDNN sees a few fixed shapes whatever the batch; the padding's rows give rows of the
product that are dropped (forward) or are multiplied by a zero gradient (backward). A training
step of 4 x 32 clips (blocks of 27 clips: 4 full and one of 20, padded to 21) went from 0.268
to 0.253 s with it (1.06x; median of 22 steps each, alternated in one process, 2 CPU cores;
1.075x in a second run).

Shape letters as in :mod:`r2.model.block`: B batch, T clips, K layers, N tokens, D video width,
C hidden width; D' = D + 2 with the TEF, else D.
"""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from .dropout import bernoulli_mask, dropout_after_norm
from .matmul import linear, onednn_in_use

#: the sizes a partial last block is rounded up to (:func:`padded_clips`), and the most
#: padding, as a fraction of its rows, worth oneDNN's product
PARTIAL_SIZES, MAX_PADDING = 4, 1 / 8

#: float32 bytes of one block of rows (the layer's float32 copy, its LayerNorm output and the
#: gradient of that output exist for one block at a time); a few MB keeps them in cache
BLOCK_BYTES = 4 * 2**20


def _layer_rows(video: torch.Tensor, layer: int, clip_mask: torch.Tensor, tef: torch.Tensor | None,
                start: int, stop: int, clips: int) -> torch.Tensor:
    """Clips ``start:stop`` of the flattened (B·T) clip axis of one layer as float32 rows with the
    TEF appended and padded clips zeroed (the TEF is kept there, as in the plain composition),
    followed by zero rows up to ``clips`` (:func:`padded_clips`).

    video: (B, T, K, N, D); clip_mask: (B·T,) bool; tef: (B·T, 2) or None -> (clips, N, D').
    """
    b, t, _, n, d = video.shape
    m = stop - start
    src = video[:, :, layer].reshape(b * t, n, d)[start:stop]  # a view: B and T merge
    block = torch.empty((clips, n, d + (2 if tef is not None else 0)), dtype=torch.float32, device=video.device)
    block[m:] = 0.0
    rows = block[:m]
    rows[..., :d].copy_(src)
    padded = ~clip_mask[start:stop]
    if padded.any():  # a full-mask pass costs 6x the copy: only where there is padding
        rows[padded, :, :d] = 0.0
    if tef is not None:
        rows[..., d:] = tef[start:stop, None, :]
    return block


def clips_per_block(tokens: int, dims: int) -> int:
    """Clips of ``tokens`` rows of ``dims`` float32 values in one block of :data:`BLOCK_BYTES`."""
    return max(1, BLOCK_BYTES // (4 * tokens * dims))


def blocks(clips: int, tokens: int, dims: int) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of each block of :func:`clips_per_block` clips of ``clips``, in order:
    the order in which the blocks' dropout masks are drawn, (stop - start, N, D') elements
    each."""
    step = clips_per_block(tokens, dims)
    for start in range(0, clips, step):
        yield start, min(start + step, clips)


def padded_clips(clips: int, full: int) -> int | None:
    """Clips the oneDNN products of a block of ``clips`` clips run over, of blocks of ``full``: a
    full block as it is; the last, partial one rounded up to a multiple of
    ``ceil(full / PARTIAL_SIZES)`` (at most ``full``), its extra rows zeros, where that adds at
    most :data:`MAX_PADDING` of its rows. None: torch's products, on the block as it is (the
    padding would cost more than oneDNN gains, or oneDNN is not in use). oneDNN builds and keeps
    a kernel per shape (:mod:`r2.model.matmul`): rounded, the partial block has at most
    :data:`PARTIAL_SIZES` shapes whatever the batch, instead of one per B·T."""
    if not onednn_in_use():
        return None
    if clips >= full:
        return clips
    granule = -(-full // PARTIAL_SIZES)
    padded = min(full, -(-clips // granule) * granule)
    return padded if padded - clips <= MAX_PADDING * clips else None


def _blocks_and_products(clips: int, tokens: int, dims: int):
    """:func:`blocks`, each with the clips its products run over and the product
    (:func:`padded_clips`: oneDNN's, or torch's on the block as it is)."""
    full = clips_per_block(tokens, dims)
    for start, stop in blocks(clips, tokens, dims):
        padded = padded_clips(stop - start, full)
        yield start, stop, padded or stop - start, linear if padded else F.linear


class _NormDropoutLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, video, layer, clip_mask, tef, keep, norm_weight, norm_bias, eps, weight, bias):
        b, t, _, n, _ = video.shape
        hidden, dims = weight.shape
        ctx.rng_state = torch.get_rng_state() if keep < 1.0 else None  # where the masks start
        out = torch.empty((b * t, n, hidden), dtype=torch.float32, device=video.device)
        for start, stop, clips, product in _blocks_and_products(b * t, n, dims):
            # the padding's rows, normalised (to the bias: finite) and never masked, give rows of
            # the product that are not kept
            y = dropout_after_norm(_layer_rows(video, layer, clip_mask, tef, start, stop, clips), (dims,),
                                   norm_weight, norm_bias, eps, keep, mask_dtype=torch.float32,
                                   masked_rows=stop - start).output  # (clips, N, D')
            out[start:stop].view(-1, hidden).copy_(product(y.view(-1, dims), weight, bias)[:(stop - start) * n])
        ctx.save_for_backward(video, clip_mask, tef, norm_weight, norm_bias, weight)
        ctx.layer, ctx.keep, ctx.eps = layer, keep, eps
        return out.view(b, t, n, hidden)  # (B, T, N, C)

    @staticmethod
    def backward(ctx, grad_out):  # grad_out: (B, T, N, C)
        # A block's output is W (m * (x̂ w + beta)) + b, with x̂ its LayerNorm-ed rows, m the 0 / 1
        # mask, w, beta the affine parameters the LayerNorm ran with (1 / keep folded in). Two
        # products of the block's gradient g, P = g^T (m * x̂) and Q = g^T m (C, D'), summed over
        # the blocks, give every gradient: dW = P w + Q beta (per column), dw = sum_c W * P,
        # dbeta = sum_c W * Q. The same two full-size matmuls as g^T ŷ and g W, without the
        # product g W (m·N, D') and the LayerNorm's backward pass over it.
        video, clip_mask, tef, norm_weight, norm_bias, weight = ctx.saved_tensors
        b, t, _, n, _ = video.shape
        hidden, dims = weight.shape
        keep = ctx.keep
        generator = None
        if ctx.rng_state is not None:  # the forward pass's masks, without touching torch's generator
            generator = torch.Generator(device=video.device)
            generator.set_state(ctx.rng_state)
        grad = grad_out.reshape(b * t * n, hidden)
        grad_bias = grad.sum(dim=0)  # (C,)
        p = torch.zeros_like(weight)  # (C, D')
        q = torch.zeros_like(weight) if keep < 1.0 else grad_bias[:, None]  # m = 1: Q's columns are sum g
        for start, stop, clips, product in _blocks_and_products(b * t, n, dims):
            m = stop - start
            rows = _layer_rows(video, ctx.layer, clip_mask, tef, start, stop, clips)  # (clips, N, D')
            normed = torch.native_layer_norm(rows, (dims,), None, None, ctx.eps)[0]  # x̂, no affine; padding: 0
            g = grad[start * n:stop * n].t()  # (C, m·N), a view: torch's product takes it as it is
            if product is linear:  # oneDNN copies a strided operand: once here, zero-padded, for both products
                g = torch.cat((g, g.new_zeros((hidden, (clips - m) * n))), dim=1)  # (C, clips·N), contiguous
            if keep < 1.0:  # the forward pass's mask: the same shape and type from the same state
                mask = bernoulli_mask(normed[:m].shape, keep, video.device, generator, torch.float32)
                normed[:m].mul_(mask)
                rows[:m] = mask  # the rows are done with: the mask, zero-padded, in their place
                del mask
                q += product(g, rows.view(-1, dims).t())  # g^T m
            p += product(g, normed.view(-1, dims).t())  # g^T (m * x̂)
        w, beta = norm_weight / keep, norm_bias / keep
        grad_weight = p * w + q * beta  # (C, D')
        grad_w, grad_beta = (weight * p).sum(0), (weight * q).sum(0)  # (D',)
        return (None, None, None, None, None, grad_w / keep, grad_beta / keep, None, grad_weight, grad_bias)


def norm_dropout_linear(video: torch.Tensor, layer: int, clip_mask: torch.Tensor, tef: torch.Tensor | None,
                        norm: nn.LayerNorm, keep: float, linear: nn.Linear) -> torch.Tensor:
    """``linear(dropout(norm(x)))`` for x = layer ``layer`` of ``video`` in float32, padded clips
    zeroed, the TEF appended; ``keep`` = 1 - p is the dropout's keep probability (1: none), its
    masks drawn block by block (:func:`blocks`) from torch's generator.

    video: (B, T, K, N, D) without gradient, on the CPU; clip_mask: (B, T) bool; tef: (B, T, 2)
    float32 or None -> (B, T, N, C) float32.
    """
    b, t = clip_mask.shape
    flat_tef = tef.reshape(b * t, 2) if tef is not None else None
    return _NormDropoutLinear.apply(video, layer, clip_mask.reshape(b * t), flat_tef, float(keep),
                                    norm.weight, norm.bias, norm.eps, linear.weight, linear.bias)


__all__ = ["BLOCK_BYTES", "MAX_PADDING", "PARTIAL_SIZES", "blocks", "clips_per_block", "norm_dropout_linear", "padded_clips"]
