"""The temporal feature pyramid (official ``ConvPyramid``), reference `r2tuning.md` §3.1.

Level stride 1 is ReLU(h) itself (the official in-place ReLU, so ReLU(h) is also what the
saliency cosine and L_sal see); level stride s = 2^p (p >= 1) is its own, unshared stack
of p blocks [Conv1d(C, C, 2, stride 2) -> LayerNorm(C) -> ReLU] applied to ReLU(h)
directly (levels are not cascaded). A level is skipped when the (padded) batch has fewer
clips than its stride.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class DownBlock(nn.Module):
    """Conv1d(C, C, kernel 2, stride 2) -> LayerNorm(C) -> ReLU; (B, L, C) -> (B, L // 2, C)."""

    def __init__(self, dims: int):
        super().__init__()
        self.conv = nn.Conv1d(dims, dims, 2, stride=2)
        self.norm = nn.LayerNorm(dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x.transpose(1, 2)).transpose(1, 2)  # (B, L // 2, C)
        return F.relu(self.norm(x))


class ConvPyramid(nn.Module):
    """levels[i] is the stack of log2(strides[i]) DownBlocks (empty for stride 1)."""

    def __init__(self, dims: int, strides: tuple[int, ...]):
        super().__init__()
        self.strides = tuple(strides)
        self.levels = nn.ModuleList(
            nn.Sequential(*[DownBlock(dims) for _ in range(int(math.log2(s)))]) for s in self.strides
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        # x: ReLU(h) (B, T, C) -> per kept level (B, T // s, C)
        return [level(x) for s, level in zip(self.strides, self.levels) if x.shape[1] >= s]


def level_masks(video_mask: torch.Tensor, strides, num_levels: int, any_valid: bool) -> list[torch.Tensor]:
    """Validity of every point of the first `num_levels` levels, (B, T // s) bool each.

    any_valid=True: the official training mask (max-pool of the clip mask: a point is
    valid if any of its clips is). any_valid=False: a point is valid only if all of its
    clips are real, i.e. exactly the points the sample has when it is run alone.
    """
    m = video_mask.float()[:, None, :]  # (B, 1, T)
    out = []
    for s in strides[:num_levels]:
        if s == 1:
            out.append(video_mask.bool())
        elif any_valid:
            out.append(F.max_pool1d(m, s, stride=s)[:, 0] > 0)
        else:
            out.append(-F.max_pool1d(-m, s, stride=s)[:, 0] > 0)
    return out


__all__ = ["ConvPyramid", "DownBlock", "level_masks"]
