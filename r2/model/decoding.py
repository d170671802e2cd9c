"""Window decoding, NMS and saliency decoding, reference `r2tuning.md` §3.4 and §3.5.

The official evaluation runs with batch size 1; here every sample of a padded batch is
decoded exactly as if it had been run alone: only its own points (those whose clips are
all real) and its own T clips take part. The post-processing reproduces the official
float32 arithmetic (``Grounding.evaluate``):

1. windows = (p - d_s·s, p + d_e·s) / fps per point; scores = sigmoid(class logit);
   the top ``max_moments`` points by score (stable sort);
2. note which rows end before the duration; clamp to [0, duration];
3. round the noted rows to ``unit`` (QVH 2 s, Charades 0.1 s): a rounded end can pass the
   duration by up to ``unit / 2``, as officially (``r2 predict VIDEO`` cuts it back);
4. NMS greedily over the list: at step i the highest remaining row is swapped to
   position i; "normal" sets the score of every later row with IoU >= threshold to 0 (rows
   are kept), "linear" multiplies it by (1 - IoU);
5. re-sort by score (stable).

r2tuning.md §10 #18: recommendation taken, this post-processing is replicated exactly (the
metrics are sensitive to it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from .config import R2ModelError

if TYPE_CHECKING:  # pragma: no cover
    from .model import R2Output


@dataclass
class Prediction:
    """The decoded output of one sample.

    windows: [[start_s, end_s, score], ...] sorted by score (descending), or None when the
        model has no coordinate head (TVSum/YouTube).
    saliency: one score per clip of the sample (length T_b).
    """

    windows: list[list[float]] | None
    saliency: list[float]


def temporal_iou(window: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of one window (2,) with many (M, 2), float32 like the official ``temporal_iou``.

    The official code divides 0 by 0 for two identical zero-length windows (NaN); here the
    IoU is 0 when the union is not positive.
    """
    inter = np.clip(np.minimum(window[1], others[:, 1]) - np.maximum(window[0], others[:, 0]), 0, None)
    union = (window[1] - window[0]) + (others[:, 1] - others[:, 0]) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1), 0)
    return iou.astype(np.float32)


def nms(rows: np.ndarray, kind: str | None, threshold: float = 0.7) -> np.ndarray:
    """Official greedy NMS over rows [start, end, score] (float32), then a stable re-sort.

    kind "normal": later rows with IoU >= threshold get score 0 (kept, not removed);
    "linear": score *= 1 - IoU; None: no suppression (rows only re-sorted).
    """
    bnd = np.array(rows, dtype=np.float32, copy=True).reshape(-1, 3)
    if kind is not None:
        if kind not in ("normal", "linear"):
            raise R2ModelError(f"unknown NMS kind {kind!r} (normal, linear or None)")
        thr = np.float32(threshold)
        for i in range(bnd.shape[0]):
            j = i + int(np.argmax(bnd[i:, 2]))
            if j != i:
                bnd[[i, j]] = bnd[[j, i]]
            if i + 1 == bnd.shape[0]:
                break
            iou = temporal_iou(bnd[i, :2], bnd[i + 1:, :2])
            if kind == "normal":
                bnd[i + 1:, 2][iou >= thr] = 0
            else:
                bnd[i + 1:, 2] *= np.float32(1) - iou
    order = np.argsort(-bnd[:, 2], kind="stable")
    return bnd[order]


def postprocess_windows(rows: np.ndarray, duration: float, unit: float | None = None,
                        nms_kind: str | None = None, nms_threshold: float = 0.7) -> np.ndarray:
    """Clamp to [0, duration], round to `unit` the rows that ended before `duration`, NMS, re-sort.

    rows (M, 3) float32 [start_s, end_s, score] sorted by score -> (M, 3) float32.
    """
    bnd = np.array(rows, dtype=np.float32, copy=True).reshape(-1, 3)
    dur = np.float32(duration)
    inside = bnd[:, 1] < dur
    bnd[:, :2] = np.clip(bnd[:, :2], np.float32(0), dur)
    if unit is not None and unit > 0:
        u = np.float32(unit)
        bnd[inside, :2] = np.round(bnd[inside, :2] / u) * u
    return nms(bnd, nms_kind, nms_threshold)


def raw_windows(class_logits: torch.Tensor, coord_offsets: torch.Tensor, points: torch.Tensor,
                valid: torch.Tensor, fps: float, max_moments: int) -> list[np.ndarray]:
    """Top-scoring windows per sample before post-processing, in seconds.

    class_logits (B, P), coord_offsets (B, P, 2) stride-normalised (d_start, d_end),
    points (P, 4), valid (B, P) bool -> per sample (M_b, 3) float32 [start_s, end_s, score].
    """
    scores = class_logits.float().sigmoid()  # (B, P)
    stride = points[:, 3]
    offsets = coord_offsets.float() * stride[None, :, None]  # (B, P, 2)
    start = (-offsets[..., 0] + points[None, :, 0]) / fps
    end = (offsets[..., 1] + points[None, :, 0]) / fps
    table = torch.stack((start, end, scores), dim=-1).detach().cpu().numpy().astype(np.float32)  # (B, P, 3)
    valid = valid.detach().cpu().numpy()
    out = []
    for b in range(table.shape[0]):
        rows = table[b][valid[b]]
        order = np.argsort(-rows[:, 2], kind="stable")[:max_moments]
        out.append(rows[order])
    return out


def strict_point_mask(points: torch.Tensor, num_clips: torch.Tensor) -> torch.Tensor:
    """(B, P) bool: the points a sample has when run alone (all of the point's clips real)."""
    return (points[None, :, 0] + points[None, :, 3]) <= num_clips[:, None].to(points.dtype)


def expand_level_scores(scores: torch.Tensor, level_sizes: Sequence[int], strides: Sequence[int],
                        num_clips: torch.Tensor, num_positions: int) -> torch.Tensor:
    """Per-clip score = max over levels of each level's scores expanded to the sample's T.

    Official saliency decoding per sample with T_b clips: a level with n = T_b // s points
    repeats each score int(T_b / n) times and pads to T_b with its last score; levels with
    no point (T_b < s) are left out. scores (B, P) -> (B, T) (0 on padded clips).
    """
    b = scores.shape[0]
    device = scores.device
    t_idx = torch.arange(num_positions, device=device)[None, :]  # (1, T)
    lengths = num_clips.long()[:, None]  # (B, 1)
    best = torch.full((b, num_positions), float("-inf"), device=device, dtype=scores.dtype)
    offset = 0
    for size, s in zip(level_sizes, strides):
        level = scores[:, offset:offset + size]  # (B, N_l)
        offset += size
        n = lengths // s  # (B, 1) points of this level for the sample alone
        has = n > 0
        n_safe = n.clamp(min=1)
        rep = (lengths // n_safe).clamp(min=1)
        idx = torch.minimum(t_idx // rep, n_safe - 1).clamp(max=size - 1)  # (B, T)
        vals = torch.gather(level, 1, idx)
        best = torch.where(has, torch.maximum(best, vals), best)
    real = t_idx < lengths
    return torch.where(real, best, torch.zeros_like(best))


def decode(output: "R2Output", durations, *, fps: float | None, unit: float | None = None,
           nms_kind: str | None = "normal", nms_threshold: float = 0.7,
           max_moments: int = 50) -> list[Prediction]:
    """Per sample: post-processed windows [[start_s, end_s, score], ...] and per-clip saliency.

    durations: the annotated duration of every sample in seconds (sequence or tensor (B,)).
    """
    b = output.class_logits.shape[0]
    if isinstance(durations, torch.Tensor):
        durations = durations.detach().cpu().tolist()
    durations = [float(d) for d in durations]
    if len(durations) != b:
        raise R2ModelError(f"decode needs one duration per sample ({b}), got {len(durations)}")
    num_clips = output.num_clips.detach().cpu()
    saliency = output.saliency.detach().float().cpu()
    windows = [None] * b
    if output.coord_offsets is not None:
        if fps is None:
            raise R2ModelError("decoding windows needs the clip rate: the config has fps=None, pass fps=")
        valid = strict_point_mask(output.points, output.num_clips)
        raw = raw_windows(output.class_logits, output.coord_offsets, output.points, valid, fps, max_moments)
        windows = [postprocess_windows(r, d, unit, nms_kind, nms_threshold).tolist()
                   for r, d in zip(raw, durations)]
    return [Prediction(windows=windows[i], saliency=saliency[i, :int(num_clips[i])].tolist())
            for i in range(b)]


__all__ = ["Prediction", "decode", "nms", "postprocess_windows", "temporal_iou", "raw_windows",
           "expand_level_scores", "strict_point_mask"]
