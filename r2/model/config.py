"""`R2Config`: every size, loss weight and decoding setting of the R² model.

The defaults are the official QVHighlights configuration of R²-Tuning (reference
`r2tuning.md` §2.1, §3, §4, §5.2). Presets per data set live in ``r2.train.presets``; the
config only has to be able to express each data set's variant, e.g. TVSum/YouTube:
``strides=(1,), use_tef=False, coord_head=False, merge_cls_sal=False,
cls_loss="dynamic_bce", sal_directions=("row",)``.

A checkpoint is self-contained: the decoding settings (``fps``, ``unit``, ``nms``, ...)
and the feature spec the model was trained on (``features``) are part of the config and
travel in ``config.json`` next to the weights.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any


class R2ModelError(ValueError):
    """A user-facing error of the model room (bad config, bad checkpoint, bad input).

    ``user_error = True`` makes the ``r2`` command show it as a one-line message.
    """

    user_error = True


class ConfigError(R2ModelError):
    """An invalid `R2Config` (unknown key, wrong value)."""


CLS_LOSSES = ("focal", "dynamic_bce")
NMS_KINDS = ("normal", "linear")
SAL_DIRECTIONS = ("row", "col")


@dataclass
class R2Config:
    # ---- input features (read from the cache manifest by the caller) ----
    video_dim: int = 768  # D: width of the cached video tokens (768 = CLIP ViT-B/32 visual width)
    query_dim: int = 512  # Dt: width of the cached query tokens (512 = CLIP ViT-B/32 text width)
    num_layers: int = 4  # K: CLIP layers used; the block walks them from the last to the first

    # ---- R² Block (reference §2) ----
    hidden_dim: int = 256  # C: hidden width of the R² Block, pyramid and heads
    num_heads: int = 8  # attention heads of the temporal decoder layer (head dim C / heads)
    ffn_ratio: int = 4  # FFN hidden width = ffn_ratio * C (1024)
    dropout: float = 0.5  # dropout of the input MLPs (QVH/TACoS/TVSum/YouTube 0.5, Charades 0.35, Ego4D 0.3)
    droppath: float = 0.1  # DropPath (stochastic depth, per sample) of the temporal decoder layer
    use_tef: bool = True  # concatenate temporal endpoint features [j/T, (j+1)/T] to every video token

    # ---- temporal pyramid, points and label assignment (reference §3.1, §3.2, §4.1) ----
    strides: tuple[int, ...] = (1, 2, 4, 8)  # pyramid level strides (powers of two, ascending)
    # Regression range [lo, hi] (clip units, both inclusive) per level; hi None = infinity.
    # None = derived from the strides as in the official point generator:
    # (0, s1), (s1, s2), ..., (s_last, inf)  ->  (0,2), (2,4), (4,8), (8,inf) for (1,2,4,8).
    regress_ranges: tuple[tuple[float, float | None], ...] | None = None
    center_radius: float = 1.5  # centre sampling radius in units of the level stride (<= 0: off)
    # Largest number of clips the official model accepts (its point buffer). r2's model has
    # no hard limit; callers (training caps, chunked inference of long videos) read it.
    max_clips: int = 1024
    coord_head: bool = True  # moment-retrieval coordinate head (False for TVSum/YouTube)

    # ---- losses (reference §4) ----
    cls_loss: str = "focal"  # "focal" (MR data sets) | "dynamic_bce" (TVSum/YouTube: BCE vs saliency)
    # r2tuning.md §10 #7: recommendation taken, the official code's values, configurable: no
    # focal alpha and lambda_reg 0.2 (the paper's table says alpha 0.9 and lambda_reg 0.1).
    focal_gamma: float = 2.0  # focal loss gamma
    focal_alpha: float | None = None  # focal loss alpha; None = no alpha weighting (official)
    cls_weight: float = 1.0  # weight of L_cls
    reg_weight: float = 0.2  # weight of L_reg (L1 on stride-normalised offsets)
    sal_weight: float = 0.1  # weight of L_sal (QVH/Ego4D/TVSum/YouTube 0.1, Charades 0.01, TACoS 0.05)
    video_cal_weight: float = 0.1  # weight of L_video (granularity calibration across samples)
    layer_cal_weight: float = 0.1  # weight of L_layer (granularity calibration across layers)
    sal_directions: tuple[str, ...] = ("row", "col")  # SampledNCE directions ("row" only for TVSum/YouTube)
    tau: float = 0.07  # fixed temperature of every contrastive loss (logit scale 1/tau, capped at 100)

    # ---- saliency and decoding (reference §3.4, §3.5) ----
    merge_cls_sal: bool = True  # saliency = class score x cos(clip, query); False: class score only
    fps: float | None = 0.5  # clips per second of the features (None: per video, e.g. YouTube)
    unit: float | None = 2.0  # rounding unit of decoded windows in seconds (QVH 2, Charades 0.1, else None)
    nms: str | None = "normal"  # "normal" (scores of overlaps set to 0) | "linear" (soft-NMS) | None
    nms_threshold: float = 0.7  # IoU threshold of "normal" NMS
    max_moments: int = 50  # windows kept per query (top scores before NMS)

    # ---- padding behaviour (see r2.model.model) ----
    # In train() mode, reproduce the official batch-shape quirks (TEF/PE use the padded batch
    # length, the max over query tokens ignores the mask, padded clips are not zeroed before
    # the pyramid/heads, a pyramid point is valid if any of its clips is, L_reg is not masked
    # by the pyramid mask). In eval() mode the model is always padding invariant (= official
    # batch-size-1 evaluation). False: training is padding invariant too.
    # r2tuning.md §10 #3: recommendation taken, replicate the padded-length TEF/PE by default
    # for parity, this flag off gives the per-sample T; §10 #4 and #14: recommendations taken,
    # the unmasked max over tokens and the unzeroed padded clips are replicated here, and
    # masked / zeroed whenever the quirks are off (and with `mask_pool`).
    official_batch_quirks: bool = True
    # r2tuning.md §10 #4: recommendation taken, as an ablation: mask padded query tokens in the
    # max over tokens of the spatial pooling in every mode (the official training batch does not).
    mask_pool: bool = False

    # The feature spec the model was trained on: the cache manifest subset (model_id,
    # model_config_hash, layers, fps, preprocessing). Stored verbatim, checked by callers.
    features: dict | None = None

    def __post_init__(self):
        # normalise JSON lists back to tuples
        self.strides = tuple(int(s) for s in self.strides)
        self.sal_directions = (
            (self.sal_directions,) if isinstance(self.sal_directions, str) else tuple(self.sal_directions)
        )
        if self.regress_ranges is not None:
            self.regress_ranges = tuple(
                (float(lo), None if hi is None else float(hi)) for lo, hi in self.regress_ranges
            )
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        def fail(msg):
            raise ConfigError(f"invalid R2Config: {msg}")

        for name in ("video_dim", "query_dim", "num_layers", "hidden_dim", "num_heads", "ffn_ratio",
                     "max_clips", "max_moments"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                fail(f"{name} must be a positive integer, got {value!r}")
        if self.hidden_dim % self.num_heads:
            fail(f"hidden_dim ({self.hidden_dim}) must be divisible by num_heads ({self.num_heads})")
        for name in ("dropout", "droppath"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                fail(f"{name} must be in [0, 1), got {value!r}")
        if not self.strides:
            fail("strides must not be empty")
        for s in self.strides:
            if s < 1 or s & (s - 1):
                fail(f"every stride must be a power of two >= 1, got {self.strides}")
        if list(self.strides) != sorted(set(self.strides)):
            fail(f"strides must be strictly ascending, got {self.strides}")
        if self.regress_ranges is not None and len(self.regress_ranges) != len(self.strides):
            fail(f"regress_ranges needs one [lo, hi] per stride ({len(self.strides)}), "
                 f"got {len(self.regress_ranges)}")
        if self.cls_loss not in CLS_LOSSES:
            fail(f"cls_loss must be one of {CLS_LOSSES}, got {self.cls_loss!r}")
        if self.cls_loss == "dynamic_bce" and self.strides != (1,):
            fail("cls_loss='dynamic_bce' regresses the class score on per-clip saliency and needs "
                 f"strides=(1,), got {self.strides}")
        if self.focal_alpha is not None and not 0.0 <= self.focal_alpha <= 1.0:
            fail(f"focal_alpha must be None or in [0, 1], got {self.focal_alpha!r}")
        for name in ("cls_weight", "reg_weight", "sal_weight", "video_cal_weight", "layer_cal_weight"):
            if getattr(self, name) < 0:
                fail(f"{name} must be >= 0")
        bad = [d for d in self.sal_directions if d not in SAL_DIRECTIONS]
        if bad or not self.sal_directions:
            fail(f"sal_directions must be a non-empty subset of {SAL_DIRECTIONS}, got {self.sal_directions}")
        if not self.tau > 0:
            fail(f"tau must be > 0, got {self.tau!r}")
        if self.fps is not None and not self.fps > 0:
            fail(f"fps must be > 0 or None, got {self.fps!r}")
        if self.unit is not None and not self.unit > 0:
            fail(f"unit must be > 0 or None, got {self.unit!r}")
        if self.nms is not None and self.nms not in NMS_KINDS:
            fail(f"nms must be one of {NMS_KINDS} or None, got {self.nms!r}")
        if not 0.0 <= self.nms_threshold <= 1.0:
            fail(f"nms_threshold must be in [0, 1], got {self.nms_threshold!r}")
        if self.features is not None and not isinstance(self.features, dict):
            fail(f"features must be a dict or None, got {type(self.features).__name__}")

    # ------------------------------------------------------------------ derived
    @property
    def level_ranges(self) -> list[tuple[float, float]]:
        """Regression range (lo, hi) per pyramid level in clip units, hi may be inf."""
        if self.regress_ranges is not None:
            return [(lo, math.inf if hi is None else hi) for lo, hi in self.regress_ranges]
        ranges, last = [], 0.0
        for s in self.strides[1:]:
            ranges.append((last, float(s)))
            last = float(s)
        ranges.append((last, math.inf))
        return ranges

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = [list(v) if isinstance(v, tuple) else v for v in value]
            elif isinstance(value, dict):
                value = json.loads(json.dumps(value))  # deep copy, JSON types only
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "R2Config":
        if not isinstance(data, dict):
            raise ConfigError(f"an R2Config must be read from a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown R2Config keys: {', '.join(unknown)} "
                              f"(known: {', '.join(sorted(known))})")
        try:
            return cls(**data)
        except TypeError as exc:  # e.g. a value of the wrong type
            raise ConfigError(f"invalid R2Config: {exc}") from exc

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> "R2Config":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"R2Config JSON is malformed: {exc}") from exc
        return cls.from_dict(data)

    def replace(self, **changes) -> "R2Config":
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)


__all__ = ["R2Config", "R2ModelError", "ConfigError", "CLS_LOSSES", "NMS_KINDS", "SAL_DIRECTIONS"]
