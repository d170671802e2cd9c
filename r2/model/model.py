"""`R2Model`: the R² Block, temporal pyramid, heads, losses and decoding of R²-Tuning.

Inputs are what the feature cache holds, batched and right-padded by the training room:

    video       (B, T, K, N, D) float   CLIP hidden states of every clip, K layers ascending
    video_mask  (B, T) bool             True = real clip (padding at the end)
    query       (B, K, S, Dt) float     CLIP hidden states of the query tokens (SOT ... EOT)
    query_mask  (B, S) bool             True = real token (padding at the end)

CLIP is never part of the model.

Padding (decided with the lead):

- ``eval()``: every sample of a padded batch gets exactly the outputs it gets alone, i.e.
  the official batch-size-1 evaluation: TEF and positional encoding use the sample's own
  T, the max over query tokens skips padded tokens, padded clips / pyramid points are
  zeroed before the heads, and a pyramid point is valid only if all its clips are real.
- ``train()`` with ``config.official_batch_quirks`` (default): the official training batch
  is reproduced instead (padded length in TEF/PE, unmasked max over tokens, no zeroing,
  a point is valid if any of its clips is, L_reg not masked by the pyramid mask). With
  the flag off, training is padding invariant too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from r2.fileio import atomic_path, atomic_write

from .block import R2Block
from .config import R2Config, R2ModelError
from .decoding import Prediction, decode, expand_level_scores
from .heads import ConvHead, QueryPooling
from .losses import R2Criterion, R2Loss, R2Targets
from .points import make_points
from .pyramid import ConvPyramid, level_masks

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass
class R2Output:
    """Everything the losses and the decoding need (shapes for a padded batch).

    class_logits: (B, P) foreground logit of every pyramid point, levels in stride order.
    coord_offsets: (B, P, 2) (d_start, d_end) >= 0 in units of the level stride, or None.
    points: (P, 4) rows [position, lo, hi, stride] in clip units (window start, not centre).
    point_mask: (B, P) bool, valid points (all clips real; any clip real in the official
        training quirk mode).
    level_sizes: points per kept level.
    saliency: (B, T) per-clip saliency as decoded (0 on padded clips).
    hidden: (B, T, C) ReLU(h), the R² Block output after the pyramid's stride-1 ReLU.
    query_pooled: (B, C) pooled query tokens of the last step (first CLIP layer).
    layer_video_cls: (K, B, T, C) mapped CLS token per clip at each step (last layer first).
    layer_query_pooled: (K, B, C) pooled query tokens at each step (last layer first).
    video_mask (B, T), query_mask (B, S), num_clips (B,) long.
    quirks: True when the official batch quirks were applied (train mode + flag).
    """

    class_logits: torch.Tensor
    coord_offsets: torch.Tensor | None
    points: torch.Tensor
    point_mask: torch.Tensor
    level_sizes: tuple[int, ...]
    saliency: torch.Tensor
    hidden: torch.Tensor
    query_pooled: torch.Tensor
    layer_video_cls: torch.Tensor
    layer_query_pooled: torch.Tensor
    video_mask: torch.Tensor
    query_mask: torch.Tensor
    num_clips: torch.Tensor
    quirks: bool = False


class R2Model(nn.Module):
    """R²-Tuning on cached CLIP features. ``R2Model(R2Config())`` is the official QVHighlights
    model: 2,836,242 trainable parameters (2.84 M; the paper's "2.7M" counts in units of 2^20).

    ``model(video, video_mask, query, query_mask)`` gives an :class:`R2Output`;
    ``R2Model.from_pretrained(run_dir)`` / ``save_pretrained(run_dir)`` read and write a run
    directory (config.json + model.safetensors); ``R2Model.from_official(path, dataset=...)``
    loads a released checkpoint."""

    def __init__(self, config: R2Config | None = None):
        super().__init__()
        config = R2Config() if config is None else config
        if not isinstance(config, R2Config):
            raise R2ModelError(f"R2Model needs an R2Config, got {type(config).__name__}")
        self.config = config
        c = config.hidden_dim
        self.block = R2Block(config.video_dim, config.query_dim, config.num_layers, c, config.num_heads,
                             config.ffn_ratio, config.dropout, config.droppath, config.use_tef)
        self.pyramid = ConvPyramid(c, config.strides)
        self.query_pool = QueryPooling(c)
        self.class_head = ConvHead(c, 1)
        self.coord_head = ConvHead(c, 2) if config.coord_head else None
        # Per-level scale of the exp'd offsets (official `coef`; it exists, unused, without a
        # coordinate head too, and counts in the official parameter total).
        self.coord_scale = nn.Parameter(torch.ones(len(config.strides)))
        self.criterion = R2Criterion(config)

    # ------------------------------------------------------------------ info
    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    # ------------------------------------------------------------------ forward
    def _check_inputs(self, video, video_mask, query, query_mask):
        cfg = self.config
        if video.dim() != 5:
            raise R2ModelError(f"video must be (B, T, K, N, D), got shape {tuple(video.shape)}")
        if query.dim() != 4:
            raise R2ModelError(f"query must be (B, K, S, Dt), got shape {tuple(query.shape)}")
        b, t, k, _, d = video.shape
        if k < cfg.num_layers or query.shape[1] < cfg.num_layers:
            raise R2ModelError(f"the model uses {cfg.num_layers} layers; got {k} video and "
                               f"{query.shape[1]} query layers")
        if d != cfg.video_dim or query.shape[3] != cfg.query_dim:
            raise R2ModelError(f"feature widths (video {d}, query {query.shape[3]}) do not match the config "
                               f"(video_dim {cfg.video_dim}, query_dim {cfg.query_dim})")
        if query.shape[0] != b or tuple(video_mask.shape) != (b, t) or tuple(query_mask.shape) != (b, query.shape[2]):
            raise R2ModelError(f"mask shapes {tuple(video_mask.shape)}, {tuple(query_mask.shape)} do not match "
                               f"video {tuple(video.shape)} / query {tuple(query.shape)}")
        if t == 0 or query.shape[2] == 0:
            raise R2ModelError("empty video or query")
        for name, m in (("video_mask", video_mask), ("query_mask", query_mask)):
            # right padding: no real position after a padded one; at least one real position
            if bool((m[:, 1:] & ~m[:, :-1]).any()) or not bool(m[:, 0].all()):
                raise R2ModelError(f"{name} must be right-padded (True first, then False) with at "
                                   f"least one True per sample")

    def forward(self, video: torch.Tensor, video_mask: torch.Tensor, query: torch.Tensor,
                query_mask: torch.Tensor) -> R2Output:
        """One padded batch through the R² Block and the heads.

        video: (B, T, K, N, D) cached CLIP hidden states of K >= ``config.num_layers`` layers in
        the cache's order (first layer first; the last ``num_layers`` are used), N tokens per
        frame (CLS first); video_mask: (B, T), True on real clips. query: (B, K, S, Dt) query
        token features of the same layers; query_mask: (B, S), True on real tokens. Returns an
        :class:`R2Output` (class logits and offsets of every pyramid point, per-clip saliency,
        ...); ``r2.model.decoding`` turns it into moments.
        """
        cfg = self.config
        video_mask = video_mask.bool()
        query_mask = query_mask.bool()
        self._check_inputs(video, video_mask, query, query_mask)
        k = cfg.num_layers
        video = video[:, :, -k:]  # (B, T, K, N, D): only the last K layers are used
        query = query[:, -k:]  # (B, K, S, Dt)
        quirks = bool(self.training and cfg.official_batch_quirks)
        b, t = video_mask.shape
        num_clips = video_mask.sum(1)  # (B,)

        block = self.block(video, video_mask, query, query_mask, quirks=quirks, mask_pool=cfg.mask_pool)
        # r2tuning.md §10 #5: recommendation taken, the official in-place ReLU of pyramid level 1
        # made explicit: ReLU(h) feeds the other levels, the saliency cosine and L_sal.
        # §10 #14: recommendation taken, padded clips are zeroed (except in the quirk mode).
        hidden = F.relu(block.hidden)  # (B, T, C)
        if not quirks:
            hidden = hidden * video_mask[:, :, None].to(hidden.dtype)
        levels = self.pyramid(hidden)  # [(B, T // s, C)]
        level_sizes = tuple(x.shape[1] for x in levels)
        strides = cfg.strides[:len(levels)]
        masks = level_masks(video_mask, strides, len(levels), any_valid=quirks)  # [(B, T // s)]
        points = make_points(level_sizes, strides, cfg.level_ranges[:len(levels)], device=video.device)

        # r2tuning.md §10 #11: recommendation taken, the heads (and losses) in fp32 under autocast.
        with torch.autocast(device_type=video.device.type, enabled=False):
            hidden = hidden.float()
            head_masks = [None] * len(levels) if quirks else masks
            class_logits = torch.cat(
                [self.class_head(x.float(), m) for x, m in zip(levels, head_masks)], dim=1)[..., 0]  # (B, P)
            coord = None
            if self.coord_head is not None:
                coord = torch.cat([self.coord_head(x.float(), m).exp() * self.coord_scale[i]
                                   for i, (x, m) in enumerate(zip(levels, head_masks))], dim=1)  # (B, P, 2)
            query_pooled = self.query_pool(block.query_tokens.float(), query_mask)  # (B, C)
            layer_q_pooled = self.query_pool(block.layer_query_tokens.float(), query_mask[None].expand(k, -1, -1))  # (K, B, C)

            saliency = expand_level_scores(class_logits.detach().sigmoid(), level_sizes, strides, num_clips, t)
            if cfg.merge_cls_sal:
                cos = F.cosine_similarity(hidden.detach(), query_pooled.detach()[:, None, :], dim=-1)  # (B, T)
                saliency = saliency * cos

        return R2Output(
            class_logits=class_logits, coord_offsets=coord, points=points,
            point_mask=torch.cat(masks, dim=1), level_sizes=level_sizes, saliency=saliency,
            hidden=hidden, query_pooled=query_pooled, layer_video_cls=block.layer_video_cls.float(),
            layer_query_pooled=layer_q_pooled, video_mask=video_mask, query_mask=query_mask,
            num_clips=num_clips, quirks=quirks)

    # ------------------------------------------------------------------ loss / decoding
    def compute_loss(self, output: R2Output, targets: R2Targets) -> R2Loss:
        return self.criterion(output, targets)

    def decode(self, output: R2Output, durations, **overrides) -> list[Prediction]:
        """Post-processed windows (seconds) and per-clip saliency of every sample.

        The decoding settings come from the config (fps, unit, nms, nms_threshold,
        max_moments); any of them can be overridden by keyword.
        """
        cfg = self.config
        settings = dict(fps=cfg.fps, unit=cfg.unit, nms_kind=cfg.nms, nms_threshold=cfg.nms_threshold,
                        max_moments=cfg.max_moments)
        if "nms" in overrides:
            overrides["nms_kind"] = overrides.pop("nms")
        unknown = set(overrides) - set(settings)
        if unknown:
            raise R2ModelError(f"unknown decoding settings: {sorted(unknown)}")
        settings.update(overrides)
        return decode(output, durations, **settings)

    # ------------------------------------------------------------------ checkpoints
    def save_pretrained(self, directory) -> Path:
        """Write ``directory/config.json`` and ``directory/model.safetensors`` atomically."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        with atomic_path(directory / WEIGHTS_NAME) as tmp:
            save_file(state, str(tmp), metadata={"format": "pt"})
        text = self.config.to_json() + "\n"
        atomic_write(directory / CONFIG_NAME, text)
        return directory

    @classmethod
    def from_pretrained(cls, directory, map_location="cpu") -> "R2Model":
        """Load a model written by `save_pretrained` (strict: every weight must match)."""
        from safetensors.torch import load_file

        directory = Path(directory)
        config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        for path in (config_path, weights_path):
            if not path.is_file():
                raise R2ModelError(f"{path} not found: an r2 checkpoint directory holds {CONFIG_NAME} and "
                                   f"{WEIGHTS_NAME} (written by `r2 fit` or `r2 convert-official`)")
        try:
            data = json.loads(config_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise R2ModelError(f"{config_path} is not valid JSON: {exc}") from exc
        if isinstance(data, dict) and ("vision_config" in data or "architectures" in data):
            kind = f" (model_type {data['model_type']!r})" if data.get("model_type") else ""
            raise R2ModelError(f"{directory} is a model folder of transformers{kind}, not an r2 checkpoint: a CLIP "
                               "goes to --model; --checkpoint and --init take a run directory of `r2 fit` or "
                               "`r2 convert-official`")
        config = R2Config.from_dict(data)
        model = cls(config)
        try:
            state = load_file(str(weights_path), device=str(map_location))
        except Exception as exc:  # safetensors raises its own error types
            raise R2ModelError(f"cannot read {weights_path}: {exc}") from exc
        model.load_state_dict_strict(state, source=str(weights_path))
        model.eval()
        return model

    def load_state_dict_strict(self, state: dict, source: str = "state dict") -> None:
        """load_state_dict with a clear error listing missing/unexpected/mis-shaped keys."""
        own = self.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        shapes = sorted(f"{k}: {tuple(state[k].shape)} != {tuple(own[k].shape)}"
                        for k in set(own) & set(state) if tuple(state[k].shape) != tuple(own[k].shape))
        def some(items: list[str], sep: str, shown: int = 4) -> str:
            more = f"{sep}and {len(items) - shown} more" if len(items) > shown else ""
            return sep.join(items[:shown]) + more

        if missing or unexpected or shapes:
            parts = []
            if missing:
                parts.append(f"{len(missing)} missing keys: " + some(missing, ", "))
            if unexpected:
                parts.append(f"{len(unexpected)} unexpected keys: " + some(unexpected, ", "))
            if shapes:
                parts.append(f"{len(shapes)} shape mismatches: " + some(shapes, "; "))
            raise R2ModelError(f"{source} does not match the model config: " + " | ".join(parts))
        self.load_state_dict(state, strict=True)

    @classmethod
    def from_official(cls, path, dataset: str | None = None, trust_checkpoint: bool = False) -> "R2Model":
        """Load a released official R²-Tuning checkpoint (see `r2.model.official`).

        dataset: the data set it was trained on (fps, rounding unit, NMS); None = read from the
        released file name (``r2_tuning_<dataset>-<hash>.pth``), an error if it is not one.
        """
        from .official import load_official_model

        return load_official_model(path, dataset=dataset, trust_checkpoint=trust_checkpoint)


__all__ = ["R2Model", "R2Output", "CONFIG_NAME", "WEIGHTS_NAME"]
