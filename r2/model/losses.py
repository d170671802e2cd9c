"""Every loss term of R²-Tuning with its weight, reference `r2tuning.md` §4.

Total = L_cls + L_reg + L_sal + L_video + L_layer, each term already multiplied by its
weight. All losses run in fp32 with autocast disabled.

- L_cls: sigmoid focal loss (gamma 2, no alpha) over the valid pyramid points, divided by
  the number of valid points; or, for TVSum/YouTube, BCE-with-logits against the
  continuous per-clip saliency ("dynamic BCE"), divided by the number of valid clips.
- L_reg: L1 between predicted and target stride-normalised offsets on positive points,
  divided by 2 x #positives.
- L_sal: SampledNCE between ReLU(h) clips and the pooled query, "row" (intra-video) and
  "col" (across the batch at the same clip index) terms, fixed logit scale 1/tau.
- L_video / L_layer: symmetric InfoNCE between the mapped CLS token at the positive clip
  and the pooled query tokens of every layer, across samples / across layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import R2Config, R2ModelError
from .points import assign_targets, bind_boundary

if TYPE_CHECKING:  # pragma: no cover
    from .model import R2Output

MAX_LOGIT_SCALE = 100.0


@dataclass
class R2Targets:
    """Training targets of a padded batch, built by the training room.

    windows: (B, G, 2) float GT windows in **clip units** (seconds x fps); may be None for
        configurations without moment retrieval (TVSum/YouTube).
    window_mask: (B, G) bool, True = real window.
    saliency: (B, T) float in [0, 1], per-clip saliency target (0 on padded clips).
    positive_clip: (B,) long, one sampled positive clip per sample (shared by L_sal,
        L_video and L_layer; r2tuning.md §10 #10: recommendation taken).
    """

    windows: torch.Tensor | None
    window_mask: torch.Tensor | None
    saliency: torch.Tensor
    positive_clip: torch.Tensor

    def to(self, device) -> "R2Targets":
        return R2Targets(**{f.name: None if getattr(self, f.name) is None else getattr(self, f.name).to(device)
                            for f in fields(self)})


@dataclass
class R2Loss:
    """total: the scalar to back-propagate; terms: the weighted terms ("cls", "reg", "sal",
    "video", "layer"; a term whose weight is 0 or that the configuration lacks is absent)."""

    total: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)

    def items(self) -> dict[str, float]:
        """Plain floats for logging (synchronises with the device)."""
        out = {k: float(v.detach()) for k, v in self.terms.items()}
        out["total"] = float(self.total.detach())
        return out


# --------------------------------------------------------------------------- functional


def sigmoid_focal_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                       gamma: float = 2.0, alpha: float | None = None) -> torch.Tensor:
    """Σ weight · FL(logits, target) / Σ weight. logits/target/weight (B, P)."""
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    if alpha is not None:
        loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return (loss * weight).sum() / weight.sum().clamp(min=1.0)


def dynamic_bce_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits against a continuous target in [0, 1], averaged over weight. (B, T) each."""
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (loss * weight).sum() / weight.sum().clamp(min=1.0)


def l1_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Σ weight · |pred - target| / Σ weight. pred/target/weight (B, P, 2).

    The official code divides by Σ weight even when it is 0 (NaN); r2 clamps it to 1 (a
    batch without any positive point then contributes 0).
    """
    return ((pred - target).abs() * weight).sum() / weight.sum().clamp(min=1.0)


def sampled_nce_loss(video_emb: torch.Tensor, query_emb: torch.Tensor, video_mask: torch.Tensor,
                     saliency: torch.Tensor, positive_clip: torch.Tensor, log_scale: torch.Tensor,
                     directions=("row", "col")) -> torch.Tensor:
    """Official ``SampledNCELoss`` (unweighted).

    video_emb (B, T, C) = ReLU(h); query_emb (B, C) pooled query; video_mask (B, T);
    saliency (B, T); positive_clip (B,). For sample b, clips with saliency <= that of its
    positive clip (and real) are allowed, all others are -inf. "row": log-softmax over the
    clips of b at pos_b; "col": log-softmax over the samples b' at clip index pos_b.
    """
    b = video_emb.shape[0]
    batch = torch.arange(b, device=video_emb.device)
    pos_score = saliency[batch, positive_clip][:, None]  # (B, 1)
    allowed = (saliency <= pos_score) & video_mask  # (B, T)
    scale = log_scale.exp().clamp(max=MAX_LOGIT_SCALE)
    sim = F.cosine_similarity(video_emb, query_emb[:, None, :], dim=-1) * scale  # (B, T)
    sim = sim.masked_fill(~allowed, float("-inf"))
    loss = video_emb.new_zeros(())
    if "row" in directions:
        loss = loss - F.log_softmax(sim, dim=1)[batch, positive_clip].mean()
    if "col" in directions:  # r2tuning.md §10 #9: recommendation taken, replicated as in §4.4
        loss = loss - F.log_softmax(sim.t(), dim=1)[positive_clip, batch].mean()
    return loss


def info_nce_loss(a: torch.Tensor, b: torch.Tensor, tau: float) -> torch.Tensor:
    """Symmetric InfoNCE within the second-to-last axis (nncore ``infonce_loss``, unweighted).

    a, b (G, n, C): for every group g, a[g, i] and b[g, i] are positives and the other n - 1
    rows of the group the negatives. Mean over the G·n rows, both directions averaged.
    """
    a = F.normalize(a, dim=-1)
    b = F.normalize(b, dim=-1)
    scale = min(math.exp(math.log(1.0 / tau)), MAX_LOGIT_SCALE)
    n = a.shape[-2]
    target = torch.arange(n, device=a.device).repeat(a.shape[0])  # (G·n,)
    a_sim = torch.matmul(a, b.transpose(-1, -2)) * scale  # (G, n, n)
    b_sim = a_sim.transpose(-1, -2)
    a_loss = F.cross_entropy(a_sim.reshape(-1, n), target)
    b_loss = F.cross_entropy(b_sim.reshape(-1, n), target)
    return (a_loss + b_loss) / 2


# --------------------------------------------------------------------------- module


class R2Criterion(nn.Module):
    """All loss terms of one configuration. Holds the fixed SampledNCE logit scale as a
    persistent buffer (the official ``loss._loss_sal.scale`` = log(1/tau))."""

    def __init__(self, config: R2Config):
        super().__init__()
        self.config = config
        self.register_buffer("sal_log_scale", torch.tensor([math.log(1.0 / config.tau)]))

    def forward(self, output: "R2Output", targets: R2Targets) -> R2Loss:
        cfg = self.config
        device = output.class_logits.device
        with torch.autocast(device_type=device.type, enabled=False):
            return self._compute(cfg, output, targets)

    def _compute(self, cfg: R2Config, out: "R2Output", tg: R2Targets) -> R2Loss:
        b, t = out.video_mask.shape
        if tg.saliency.shape != (b, t):
            raise R2ModelError(f"targets.saliency must be (B, T) = {(b, t)}, got {tuple(tg.saliency.shape)}")
        if tg.positive_clip.shape != (b,):
            raise R2ModelError(f"targets.positive_clip must be (B,) = {(b,)}, got {tuple(tg.positive_clip.shape)}")
        tg = tg.to(out.class_logits.device)
        saliency = tg.saliency.float()
        pos_clip = tg.positive_clip.long()
        terms: dict[str, torch.Tensor] = {}
        logits = out.class_logits.float()  # (B, P)
        point_mask = out.point_mask  # (B, P)

        cls_target = None
        if cfg.cls_loss == "focal" or (cfg.coord_head and cfg.reg_weight > 0):
            if tg.windows is None or tg.window_mask is None:
                raise R2ModelError("this configuration needs GT windows (targets.windows, targets.window_mask)")
            windows = bind_boundary(tg.windows, tg.window_mask.bool(), out.num_clips)
            cls_target, reg_target = assign_targets(out.points, windows, tg.window_mask.bool(),
                                                    cfg.center_radius)  # (B, P), (B, P, 2)
            if cfg.coord_head and cfg.reg_weight > 0:
                positive = cls_target
                if not out.quirks:  # the official L_reg ignores the pyramid mask
                    positive = positive * point_mask.float()
                weight = positive[:, :, None].expand(-1, -1, 2)
                terms["reg"] = cfg.reg_weight * l1_loss(out.coord_offsets.float(), reg_target, weight)

        if cfg.cls_weight > 0:
            weight = point_mask.float()  # r2tuning.md §10 #8: recommendation taken, / #valid points
            if cfg.cls_loss == "focal":
                terms["cls"] = cfg.cls_weight * sigmoid_focal_loss(
                    logits, cls_target, weight, gamma=cfg.focal_gamma, alpha=cfg.focal_alpha)
            else:  # dynamic_bce: strides == (1,), so the points are the clips
                terms["cls"] = cfg.cls_weight * dynamic_bce_loss(logits, saliency, weight)

        if cfg.sal_weight > 0:
            terms["sal"] = cfg.sal_weight * sampled_nce_loss(
                out.hidden.float(), out.query_pooled.float(), out.video_mask, saliency, pos_clip,
                self.sal_log_scale.float(), cfg.sal_directions)

        if cfg.video_cal_weight > 0 or cfg.layer_cal_weight > 0:
            k = out.layer_video_cls.shape[0]
            batch = torch.arange(b, device=logits.device)
            v = out.layer_video_cls.float()[:, batch, pos_clip]  # (K, B, C)
            q = out.layer_query_pooled.float()  # (K, B, C)
            if cfg.video_cal_weight > 0:
                terms["video"] = cfg.video_cal_weight * info_nce_loss(v, q, cfg.tau)
            if cfg.layer_cal_weight > 0 and k > 0:
                terms["layer"] = cfg.layer_cal_weight * info_nce_loss(v.transpose(0, 1), q.transpose(0, 1), cfg.tau)

        total = sum(terms.values()) if terms else logits.sum() * 0.0
        return R2Loss(total=total, terms=terms)


__all__ = ["R2Targets", "R2Loss", "R2Criterion", "sigmoid_focal_loss", "dynamic_bce_loss", "l1_loss",
           "sampled_nce_loss", "info_nce_loss"]
