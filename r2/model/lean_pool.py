"""The token attention of the spatial pooling, with a hand-written backward pass that recomputes
only the cheap elementwise part (ReLU -> LayerNorm -> dropout) instead of the whole pooling.

Per recurrent step the pooling turns the output ``u`` of the video MLP's first stage into
h = dropout(LN(ReLU(u))) over all N tokens of every clip (:meth:`InputMLP.middle`), attends
each query token's key over the N tokens of its clip, and mixes the tokens under that
attention. Kept for autograd, h and the tensors between cost ~15 MB a recurrent step for
4 x 32 clips of 50 tokens (60 MB a training step); a checkpoint of the whole pooling avoids
that but runs its forward twice. Here the backward pass rebuilds h from ``u`` (which autograd
keeps anyway) and the dropout mask from the generator state the forward pass started from, and
keeps only the attention weights (B, T, N, S) between the passes; the matmuls run once each way.

Shape letters as in :mod:`r2.model.block`: B batch, T clips, N tokens, S query tokens,
C hidden width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from .dropout import Dropout, NormDropout, dropout_after_norm


@dataclass
class AttendedTokens:
    """first: (B, T, C) h at token 0 (the CLS token) of every clip; mixed: (B, T, S, C) the
    attention-weighted sum of h over the N tokens of each clip, one per query token."""

    first: torch.Tensor
    mixed: torch.Tensor


def _hidden(u: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float, keep: float,
            generator: torch.Generator | None = None) -> NormDropout:
    """h = dropout(LN(ReLU(u))), exactly as :meth:`Dropout.after_norm` (the same mask from the
    same generator state); the mask in u's float type (not kept between the passes)."""
    return dropout_after_norm(torch.relu(u), (u.shape[-1],), weight, bias, eps, keep, generator, u.dtype)


def attention_weights(h: torch.Tensor, keys: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """softmax over N of (h . key_s + offset_s) / sqrt(C), for h (B, T, N, C), keys (B, S, C),
    offset (B, S) -> (B, T, N, S). The plain path of the block computes it the same way, so
    both paths give the same values to the last bit."""
    b, t, n, c = h.shape
    s = keys.shape[1]
    # one matmul over all T·N tokens of a sample: (B, T·N, C) @ (B, C, S)
    logits = torch.bmm(h.view(b, t * n, c), keys.transpose(1, 2)).view(b, t, n, s)
    return ((logits + offset[:, None, None, :]) / math.sqrt(c)).softmax(dim=2)


class _AttendTokens(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, keys, offset, norm_weight, norm_bias, eps, keep):
        ctx.rng_state = torch.get_rng_state() if keep < 1.0 else None  # where the mask is drawn
        h = _hidden(u, norm_weight, norm_bias, eps, keep).output  # (B, T, N, C)
        att = attention_weights(h, keys, offset)  # (B, T, N, S)
        mixed = att.transpose(2, 3) @ h  # (B, T, S, N) @ (B, T, N, C) -> (B, T, S, C)
        ctx.save_for_backward(u, keys, norm_weight, norm_bias, att)
        ctx.eps, ctx.keep = eps, keep
        return h[:, :, 0].clone(), mixed  # (B, T, C), (B, T, S, C)

    @staticmethod
    def backward(ctx, grad_first, grad_mixed):  # (B, T, C), (B, T, S, C)
        u, keys, norm_weight, norm_bias, att = ctx.saved_tensors
        b, t, n, c = u.shape
        s = keys.shape[1]
        keep = ctx.keep
        generator = None
        if ctx.rng_state is not None:  # the forward pass's mask, without touching torch's generator
            generator = torch.Generator(device=u.device)
            generator.set_state(ctx.rng_state)
        # at most three (B, T, N, C) tensors live at once: h, its mask and grad_h, then grad_h,
        # ReLU(u) (recomputed rather than kept) and the LayerNorm's input gradient
        hidden = _hidden(u, norm_weight, norm_bias, ctx.eps, keep, generator)
        h, mask, mean, rstd = hidden.output, hidden.mask, hidden.mean, hidden.rstd
        del hidden  # h and the mask are freed below, when their last use is done
        grad_h = att @ grad_mixed  # (B, T, N, S) @ (B, T, S, C) -> (B, T, N, C)
        grad_att = (grad_mixed @ h.transpose(2, 3)).transpose(2, 3)  # (B, T, N, S)
        # softmax over N, then the 1 / sqrt(C) scale
        grad_logits = att * (grad_att - (att * grad_att).sum(dim=2, keepdim=True)) / math.sqrt(c)
        grad_offset = grad_logits.sum(dim=(1, 2))  # (B, S)
        grad_logits = grad_logits.reshape(b, t * n, s)
        grad_keys = grad_logits.transpose(1, 2) @ h.view(b, t * n, c)  # (B, S, C)
        grad_h.view(b, t * n, c).baddbmm_(grad_logits, keys)
        grad_h[:, :, 0] += grad_first
        del h, grad_att, grad_logits
        if mask is not None:
            grad_h.mul_(mask)
        del mask
        r = torch.relu(u)
        grad_r, grad_w, grad_beta = torch.ops.aten.native_layer_norm_backward(
            grad_h, r, (c,), mean, rstd, norm_weight / keep, norm_bias / keep, [True, True, True])
        del grad_h
        grad_u = torch.ops.aten.threshold_backward.grad_input(grad_r, r, 0, grad_input=grad_r)  # ReLU's, in place
        return grad_u, grad_keys, grad_offset, grad_w / keep, grad_beta / keep, None, None


def attend_tokens(u: torch.Tensor, keys: torch.Tensor, offset: torch.Tensor, norm: nn.LayerNorm,
                  dropout: Dropout) -> AttendedTokens:
    """With h = dropout(norm(ReLU(u))) (:meth:`InputMLP.middle`): h at token 0 and, per query
    token s, sum_n softmax_n((h_n . keys_s + offset_s) / sqrt(C)) h_n, over the N tokens of
    each clip; the dropout in training mode draws its mask from torch's generator as
    :meth:`Dropout.after_norm` does.

    u: (B, T, N, C) float32 on the CPU; keys: (B, S, C); offset: (B, S); ``norm`` has affine
    parameters; the dropout's p is below 1 -> :class:`AttendedTokens`.
    """
    first, mixed = _AttendTokens.apply(u, keys, offset, norm.weight, norm.bias, norm.eps, dropout.keep)
    return AttendedTokens(first=first, mixed=mixed)


__all__ = ["AttendedTokens", "attend_tokens", "attention_weights"]
