"""Heads shared across pyramid levels and the query pooling, reference `r2tuning.md` §3.3."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class ConvHead(nn.Module):
    """Conv1d(C, C, 3, pad 1) -> ReLU -> Conv1d(C, out, 3, pad 1), run per level.

    With a mask, invalid positions are zeroed before each convolution, so that a point
    next to padding sees exactly the zero padding it sees when its sample runs alone.
    """

    def __init__(self, dims: int, out_dims: int, kernel_size: int = 3):
        super().__init__()
        self.conv1 = nn.Conv1d(dims, dims, kernel_size, padding=kernel_size // 2)
        self.conv2 = nn.Conv1d(dims, out_dims, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        # x (B, L, C), mask (B, L) bool or None -> (B, L, out)
        m = None if mask is None else mask[:, None, :].to(x.dtype)  # (B, 1, L)
        x = x.transpose(1, 2)  # (B, C, L)
        if m is not None:
            x = x * m
        x = F.relu(self.conv1(x))
        if m is not None:
            x = x * m
        return self.conv2(x).transpose(1, 2)


class QueryPooling(nn.Module):
    """Official ``AdaPooling``: a = softmax over real tokens of w·q_s; pooled = Σ a_s q_s."""

    def __init__(self, dims: int):
        super().__init__()
        self.score = nn.Linear(dims, 1, bias=False)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # tokens (..., S, C), mask (..., S) bool -> (..., C)
        logits = self.score(tokens)[..., 0].masked_fill(~mask, float("-inf"))  # (..., S)
        weights = logits.softmax(dim=-1)
        return torch.einsum("...s,...sc->...c", weights, tokens)


__all__ = ["ConvHead", "QueryPooling"]
