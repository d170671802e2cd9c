"""Pyramid points and the label assignment of the moment-retrieval head.

Reference `r2tuning.md` §3.2 and §4.1 (official ``PointGenerator`` with offset=False and
``BundleLoss.get_target``). Everything here is in **clip units** (seconds x fps).
"""

from __future__ import annotations

from typing import NamedTuple

import torch


def make_points(level_sizes, strides, ranges, device=None) -> torch.Tensor:
    """The point table of the kept levels, (P, 4) float32 rows [position, lo, hi, stride].

    A point of level stride s sits at p = 0, s, 2s, ... and marks the *start* of its window
    (not its centre; r2tuning.md §10 #6: recommendation taken, the decoding formula depends on
    it). (lo, hi) is the level's regression range (hi may be inf).
    """
    rows = []
    for size, s, (lo, hi) in zip(level_sizes, strides, ranges):
        pos = torch.arange(size, device=device, dtype=torch.float32) * s  # (N_l,)
        rest = torch.tensor([lo, hi, float(s)], device=device, dtype=torch.float32)
        rows.append(torch.cat((pos[:, None], rest.expand(size, 3)), dim=1))  # (N_l, 4)
    if not rows:
        return torch.zeros(0, 4, device=device)
    return torch.cat(rows)  # (P, 4)


def bind_boundary(windows: torch.Tensor, window_mask: torch.Tensor, num_clips: torch.Tensor) -> torch.Tensor:
    """Official GT pre-processing (``Grounding.bind_boundary``), in clip units.

    windows (B, G, 2), window_mask (B, G) bool, num_clips (B,) -> (B, G, 2) float32:
    clamp to [0, T_b]; swap reversed windows; a window shorter than one clip becomes a
    window of exactly one clip around its centre, the centre clamped to [0.5, T_b - 0.5].
    Padded rows are set to 0.
    """
    w = windows.float()
    t = num_clips.to(w.dtype)[:, None, None]  # (B, 1, 1)
    w = torch.where(window_mask[..., None], w, torch.zeros_like(w))
    w = torch.minimum(w.clamp(min=0), t)
    w = torch.stack((w.amin(-1), w.amax(-1)), dim=-1)  # swap reversed
    short = (w[..., 1] - w[..., 0]) < 1.0  # (B, G)
    center = w.sum(-1) / 2
    center = torch.minimum(center.clamp(min=0.5), t[..., 0] - 0.5)
    fixed = torch.stack((center - 0.5, center + 0.5), dim=-1)
    w = torch.where(short[..., None], fixed, w)
    return torch.where(window_mask[..., None], w, torch.zeros_like(w))


class PointTargets(NamedTuple):
    """Targets of every point: ``cls`` (B, P) float, 1 where a GT qualifies; ``reg`` (B, P, 2),
    the distances (p - gs, ge - p) / s to the chosen GT (arbitrary where ``cls`` is 0)."""

    cls: torch.Tensor
    reg: torch.Tensor


def assign_targets(points: torch.Tensor, windows: torch.Tensor, window_mask: torch.Tensor,
                   center_radius: float = 1.5) -> PointTargets:
    """Class and regression targets of every point (official ``get_target_single``).

    points (P, 4) [p, lo, hi, s]; windows (B, G, 2) clip units (already bound);
    window_mask (B, G). A point qualifies for a GT if it lies in the GT's centre region
    max(c - r*s, gs) <= p <= min(c + r*s, ge) (or inside the GT when r <= 0) and the larger
    of its distances (p - gs, ge - p) is within the level range [lo, hi]. Among the
    qualifying GTs the shortest wins. Returns :class:`PointTargets`.
    """
    b, g = window_mask.shape
    num_points = points.shape[0]
    if g == 0 or num_points == 0:
        return PointTargets(points.new_zeros(b, num_points), points.new_zeros(b, num_points, 2))
    p, lo, hi, s = (points[None, :, i, None] for i in range(4))  # (1, P, 1) each
    gs, ge = windows[:, None, :, 0], windows[:, None, :, 1]  # (B, 1, G)
    r_start, r_end = p - gs, ge - p  # (B, P, G)
    if center_radius > 0:
        center = (gs + ge) / 2
        dist_s = p - torch.maximum(center - s * center_radius, gs)
        dist_e = torch.minimum(center + s * center_radius, ge) - p
        inside = torch.minimum(dist_s, dist_e) >= 0
    else:
        inside = torch.minimum(r_start, r_end) >= 0
    reg_dist = torch.maximum(r_start, r_end)
    in_range = (reg_dist >= lo) & (reg_dist <= hi)
    ok = inside & in_range & window_mask[:, None, :]  # (B, P, G)
    lens = torch.where(ok, (ge - gs).expand_as(ok), torch.full_like(r_start, float("inf")))
    min_len, idx = lens.min(dim=-1)  # (B, P): the shortest qualifying GT (first on ties)
    cls_target = torch.isfinite(min_len).to(points.dtype)
    reg = torch.stack((r_start, r_end), dim=-1)  # (B, P, G, 2)
    reg = torch.gather(reg, 2, idx[:, :, None, None].expand(b, num_points, 1, 2))[:, :, 0]  # (B, P, 2)
    return PointTargets(cls_target, reg / points[None, :, 3, None])


__all__ = ["make_points", "bind_boundary", "assign_targets", "PointTargets"]
