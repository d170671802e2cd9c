"""Per-data-set training presets: every number of R²-Tuning's configs, overridable.

One :class:`Preset` per data set (``get_preset("charades")``), holding the numbers of the
reference (``r2tuning.md`` §1.3, §1.5, §3.4, §4.4, §4.6, §5.1, §5.2, §5.3, and ``datasets.md``):

=============  =====  ===  =====  ======  ======  ======  ===  ======  ====  =====  ========  ======
data set       fps    bs   ep     lr      steps   warmup  dp   strides  TEF  L_sal  NMS       unit
=============  =====  ===  =====  ======  ======  ======  ===  ======  ====  =====  ========  ======
qvhighlights   0.5    128  30     5e-4    [20]    500     0.5  1,2,4,8  yes  0.1    hard 0.7  2 s
charades       1.0    32   50     2.5e-4  [30]    500     .35  1,2,4,8  yes  0.01   linear    0.1 s
ego4d          0.5    32   30     2.5e-4  [20]    500     0.3  1,2,4,8  yes  0.1    linear    —
tacos          0.5    32   100    2.5e-4  [50]    500     0.5  1,2,4,8  yes  0.05   linear    —
youtube        auto   4    200    5e-4    —       50      0.5  1        no   0.1    —         —
tvsum          0.5    4    500    5e-4    —       50      0.5  1        no   0.1    —         —
=============  =====  ===  =====  ======  ======  ======  ===  ======  ====  =====  ========  ======

Common to all (§5.1): AdamW (betas 0.9/0.999, eps 1e-8, weight decay 1e-4 on every
parameter), linear warm-up from 0.001×lr, step decay ×0.1 at the milestones (epochs, 0-based
epoch index ≥ milestone), gradient clipping at global L2 norm 35, fp16 autocast on CUDA,
validation every epoch, 4 loader workers (``r2 fit`` starts none on the CPU and no more than
the CPUs it may use elsewhere), no drop_last. Layers: the last 4 hidden states
(``layers = (-4, -3, -2, -1)`` → [9, 10, 11, 12] for ViT-B/32). QVHighlights' training set is
repeated ×4 per epoch. Model selection: the best epoch by ``main_metric`` on ``eval_split``
(QVHighlights ``MR-full-mAP`` on val; Charades/TACoS ``MR-full-R1@0.7`` on **test**, as the
official code monitors the test loader — ``r2 fit`` says so in its log and writes
``"selected_on": "test"`` into ``best.json``; ``selection_on_test`` is the read-only
``eval_split == "test"``, and ``--set eval_split=val --val VAL_FILE`` selects on val; Ego4D
``MR-full-R1@0.7`` on val; YouTube/TVSum ``mAP`` on the val list of the domain).

Training-time filters (§1.5): samples whose annotated duration is below ``min_duration``
(5 s; QVHighlights, Charades, Ego4D, TACoS) are dropped; there is no upper limit in the
official code except that a video must have at most 1024 clips (the point-generator buffer,
asserted). r2 writes that down as ``max_clips = 1024`` with ``long_video_rule = "crop"``:
a training sample longer than ``max_clips`` clips is cropped to a random window of
``max_clips`` clips that contains its sampled positive clip (``r2.train.targets.crop_range``);
evaluation and prediction never crop. (No official data set reaches it: the longest video has
≈741 clips.)

``custom`` is r2's own choice, not a reference configuration: QVHighlights' recipe (2-s clips,
MR + HD heads, hard NMS 0.7) with batch 32, no repeat, no rounding unit and no minimum
duration, for a jsonl of QVHighlights-layout rows; and padding-invariant training
(``official_batch_quirks=False``). The official training batch normalises the temporal
endpoint features and positions by the padded batch length, so a short video never sees its
true end in training while evaluation (batch size 1) does: moments that end at the end of
their video come out short. Measured on ``r2 demo`` (seeds 0 and 3): val R1@0.7 98.26 and
96.52 with the quirks, 100.00 and 99.13 without; the six benchmark presets keep the quirks,
as their published numbers were trained with them (``--set official_batch_quirks=false``
turns them off there too).

Overrides: ``preset.override({"lr": 1e-4, "lr_milestones": [10]})`` returns a new preset
after type checking (strings from ``--set key=value`` are parsed: ``"1e-4"``, ``"[10, 20]"``,
``"10,20"``, ``"none"``, ``"true"``); an unknown key is an error that suggests the closest
names. :func:`load_overrides` reads a JSON file (YAML too when PyYAML is installed; it is not
a dependency). ``preset.model_config_kwargs()`` gives the keyword arguments of
``r2.model.R2Config`` for this data set.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Union

from .annotations import DATASETS, AnnotationError, canonical_dataset

__all__ = [
    "PRESETS",
    "Preset",
    "PresetError",
    "get_preset",
    "load_overrides",
    "parse_set_options",
]


class PresetError(ValueError):
    """A bad preset name, override key or value; shown as a one-line message (``user_error``)."""

    user_error = True


# Preset fields passed to r2.model.R2Config under the same name (plus num_layers and fps)
_MODEL_FIELDS = (
    "hidden_dim", "num_heads", "ffn_ratio", "dropout", "droppath", "use_tef", "strides",
    "center_radius", "max_clips", "coord_head", "cls_loss", "focal_gamma", "focal_alpha",
    "cls_weight", "reg_weight", "sal_weight", "video_cal_weight", "layer_cal_weight",
    "sal_directions", "tau", "merge_cls_sal", "unit", "nms", "nms_threshold", "max_moments",
    "official_batch_quirks", "mask_pool",
)

# value sets of the string fields (None allowed where the type says so)
_CHOICES: dict[str, tuple] = {
    "task": ("mr_hd", "mr", "hd"),
    "clip_rule": ("ffmpeg_fps", "annotation_grid", "youtube_per_clip", "tvsum_rows"),
    "query_source": ("query", "title", "domain"),
    "saliency_target": ("scores", "windows"),
    "positive_rule": ("gt0", "gt_median", "gt_half"),
    "empty_positive": ("argmax", "skip", "error"),
    "long_video_rule": ("crop", "error"),
    "cls_loss": ("focal", "dynamic_bce"),
    "optimizer": ("adamw",),
    "lr_schedule": ("step", "constant"),
    "amp": ("fp16", "bf16", "none"),
    "cpu_amp": ("bf16", "fp16", "none"),
    "nms": ("normal", "linear"),
    "main_metric_mode": ("max", "min"),
}
_DIRECTIONS = ("row", "col")


@dataclass(frozen=True)
class Preset:
    """Everything ``r2 fit`` needs to know about a data set, with the reference's numbers.

    Every field can be overridden (:meth:`override`). Fields are grouped as: identity,
    features and clips, data and targets, model, losses, optimisation, evaluation and
    decoding, files.
    """

    # -- identity ---------------------------------------------------------------------------
    name: str
    #: "mr_hd" (moment retrieval + highlight detection), "mr", or "hd" (saliency only)
    task: str = "mr_hd"
    #: one line for ``r2 fit`` logs
    description: str = ""

    # -- features and clips (r2tuning §1.2, §1.3, §1.5) ------------------------------------
    #: clips (sampled frames) per second, or "auto" (YouTube: one frame per annotated clip)
    fps: float | str = 0.5
    #: how many clips a video has: "ffmpeg_fps" (round(duration·fps), the frames ffmpeg's fps
    #: filter emits), "annotation_grid" (floor(duration·fps), QVHighlights' 2-s grid: equal
    #: for its even durations), "youtube_per_clip" (len(match)), "tvsum_rows" (rows of anno);
    #: recorded, not overridable (``RECORDED_FIELDS``)
    clip_rule: str = "ffmpeg_fps"
    #: CLIP hidden states kept, negative = counted from the end of the 13 hidden states of a
    #: 12-layer tower: the last 4 = [9, 10, 11, 12] for ViT-B/32 (see :meth:`resolve_layers`)
    layers: tuple[int, ...] = (-4, -3, -2, -1)
    #: CLIP text context (queries are truncated to it, SOT…EOT kept)
    query_max_tokens: int = 77

    # -- data and targets (r2tuning §1.5, §4.4, §5.2) --------------------------------------
    #: training samples with an annotated duration below this (seconds) are dropped
    min_duration: float = 5.0
    #: at most this many clips per video (official assert T <= 1024)
    max_clips: int = 1024
    #: what training does with a longer video: "crop" (random max_clips window holding the
    #: positive clip) or "error"; evaluation never crops
    long_video_rule: str = "crop"
    #: the training set is repeated this many times per epoch (QVHighlights ×4)
    repeat: int = 1
    #: query text: "query" (the sentence), "title" (YouTube info[5] / TVSum title), "domain";
    #: recorded, not overridable (``RECORDED_FIELDS``)
    query_source: str = "query"
    #: domains / categories (one model each) for YouTube and TVSum; () otherwise
    domains: tuple[str, ...] = ()
    #: per-clip saliency target: "scores" (normalised raw scores when the sample has them,
    #: else the windows) or "windows" (binary ceil rule from the windows)
    saliency_target: str = "scores"
    #: candidate positive clips: "gt0" (saliency > 0), "gt_median" (> lower median, TVSum),
    #: "gt_half" (> 0.5, YouTube)
    positive_rule: str = "gt0"
    #: a sample without any candidate: "argmax" (highest-target clip; r2's choice, the
    #: official loader would fail), "skip" (positive clip -1), "error"
    empty_positive: str = "argmax"

    # -- model (r2tuning §2.1, §3, §3.6) -----------------------------------------------------
    hidden_dim: int = 256
    num_heads: int = 8
    ffn_ratio: int = 4
    dropout: float = 0.5
    droppath: float = 0.1
    use_tef: bool = True
    strides: tuple[int, ...] = (1, 2, 4, 8)
    #: boundary (coordinate) regression head; False for the saliency-only data sets
    coord_head: bool = True
    #: saliency = class score × cosine(clip, query) (True for MR data sets)
    merge_cls_sal: bool = True
    #: centre-sampling radius of the label assignment, in strides
    center_radius: float = 1.5
    #: reproduce the official training-batch quirks in train() mode (R2Config, r2.model)
    official_batch_quirks: bool = True
    #: mask padded query tokens in the spatial pooling (ablation, r2tuning §10 #4)
    mask_pool: bool = False

    # -- losses (r2tuning §4.2–§4.6) ----------------------------------------------------------
    cls_loss: str = "focal"
    focal_gamma: float = 2.0
    #: None = no α weighting (the code; the paper's table says 0.9)
    focal_alpha: float | None = None
    #: loss weights (names as in r2.model.R2Config): L_cls, L_reg (L1; 0 = none), L_sal,
    #: L_video and L_layer (granularity calibration)
    cls_weight: float = 1.0
    reg_weight: float = 0.2
    sal_weight: float = 0.1
    video_cal_weight: float = 0.1
    layer_cal_weight: float = 0.1
    sal_directions: tuple[str, ...] = ("row", "col")
    #: fixed temperature of the contrastive losses
    tau: float = 0.07

    # -- optimisation (r2tuning §5.1, §5.2) ----------------------------------------------------
    optimizer: str = "adamw"
    batch_size: int = 32
    epochs: int = 30
    lr: float = 5e-4
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    #: "step" (×lr_gamma at each milestone epoch) or "constant"
    lr_schedule: str = "step"
    lr_milestones: tuple[int, ...] = (20,)
    lr_gamma: float = 0.1
    #: linear warm-up iterations, from warmup_ratio·lr to lr
    warmup_iters: int = 500
    warmup_ratio: float = 0.001
    #: global L2 gradient-norm clip (None: off)
    grad_clip: float | None = 35.0
    #: autocast on CUDA: "fp16" (official, with GradScaler), "bf16", "none"
    amp: str = "fp16"
    #: autocast on the CPU: "none" (fp32), "bf16" (pays on CPUs with AMX or AVX-512 BF16) or
    #: "fp16" (with GradScaler; slow on most CPUs)
    cpu_amp: str = "none"
    num_workers: int = 4
    drop_last: bool = False
    seed: int = 42

    # -- evaluation and decoding (r2tuning §3.4, §5.3) -------------------------------------------
    #: the split evaluated each epoch and used for model selection ("test" for Charades and
    #: TACoS, as the reference: fit logs a note once; best.json records ``"selected_on"``)
    eval_split: str = "val"
    eval_every: int = 1
    #: key of the metrics dict (r2.evaluate / R²-Tuning names) used to pick the best epoch
    main_metric: str = "MR-full-mAP"
    main_metric_mode: str = "max"
    #: window NMS: "normal" (hard, scores of overlaps ≥ threshold set to 0), "linear"
    #: (soft: score × (1 − IoU)) or None
    nms: str | None = "normal"
    nms_threshold: float = 0.7
    #: rounding unit of predicted boundaries in seconds (None: no rounding)
    unit: float | None = 2.0
    max_moments: int = 50

    # -- files ------------------------------------------------------------------------------------
    #: split → candidate annotation file names looked up under ``--data-root``
    data_files: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: where to get the annotation files (shown when one is missing)
    data_source: str = ""

    # ------------------------------------------------------------------------------------------

    def __post_init__(self):
        _validate(self)

    # -- derived ------------------------------------------------------------------------------

    @property
    def is_highlight_only(self) -> bool:
        """True for YouTube Highlights / TVSum (no windows, saliency head only)."""
        return self.task == "hd"

    @property
    def selection_on_test(self) -> bool:
        """True when the best epoch is chosen on the test split (``eval_split == "test"``:
        Charades-STA and TACoS, as R²-Tuning's official code does). Derived, not a setting:
        ``--set eval_split=val`` (with ``--val VAL_FILE``) selects on a val split."""
        return self.eval_split == "test"

    @property
    def clip_length(self) -> float | None:
        """Seconds per clip (1 / fps), None for fps "auto"."""
        return None if self.fps == "auto" else 1.0 / float(self.fps)

    def resolve_layers(self, num_hidden_layers: int = 12) -> list[int]:
        """Hidden-state indices for a tower with ``num_hidden_layers`` blocks.

        ``hidden_states`` has ``num_hidden_layers + 1`` entries (0 = the embeddings), so
        the default (-4, -3, -2, -1) gives [9, 10, 11, 12] for a 12-layer ViT-B/32.
        """
        total = num_hidden_layers + 1
        out = []
        for layer in self.layers:
            index = layer + total if layer < 0 else layer
            if not 0 <= index < total:
                raise PresetError(f"layer {layer} does not exist in a tower with "
                                  f"{num_hidden_layers} layers (hidden states 0..{total - 1})")
            out.append(index)
        if sorted(set(out)) != out:
            raise PresetError(f"layers must be distinct and ascending, got {out}")
        return out

    # -- overrides -----------------------------------------------------------------------------

    def override(self, overrides: Mapping[str, Any] | None = None, **kwargs) -> "Preset":
        """A copy with some fields changed, after type checking and validation.

        Values may be typed (``{"lr": 1e-4}``) or strings as given on the command line
        (``{"lr": "1e-4", "lr_milestones": "10,20", "unit": "none"}``). Unknown keys raise
        :class:`PresetError` naming the closest field names. ``selection_on_test`` is derived
        from ``eval_split``, and ``clip_rule``/``query_source`` record what the data applies
        (``RECORDED_FIELDS``): accepted when they agree, refused otherwise.
        """
        merged = dict(overrides or {})
        merged.update(kwargs)
        if not merged:
            return self
        hints = _hints()
        changes, derived = {}, {}
        for key, value in merged.items():
            if key in DERIVED_FIELDS:
                derived[key] = _coerce(value, bool, key)
                continue
            if key not in hints:
                raise PresetError(_unknown_key_message(key))
            if key == "name" and value != self.name:
                raise PresetError("'name' cannot be overridden (pick another preset instead)")
            changes[key] = _coerce(value, hints[key], key)
            if key in RECORDED_FIELDS and changes[key] != getattr(self, key):
                raise PresetError(f"{key} cannot be overridden: it "
                                  + RECORDED_FIELDS[key].format(name=self.name, value=getattr(self, key)))
        out = dataclasses.replace(self, **changes) if changes else self
        for key, value in derived.items():  # accepted when it agrees with eval_split, else refused
            if value != getattr(out, key):
                raise PresetError(_derived_key_message(key, out))
        return out

    def override_from_file(self, path: str | Path) -> "Preset":
        """:meth:`override` with the mapping read by :func:`load_overrides`."""
        values = load_overrides(path)
        try:
            return self.override(values)
        except PresetError as exc:
            raise PresetError(f"{path}: {exc}") from None

    # -- serialisation -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, dict):
                value = {k: list(v) if isinstance(v, tuple) else v for k, v in value.items()}
            out[f.name] = value
        return out

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Preset":
        """Inverse of :meth:`to_dict` (type-checked like an override)."""
        if "name" not in data:
            raise PresetError("a preset needs a 'name'")
        hints = _hints()
        # preset.json of runs written when selection_on_test was a field: it only echoed
        # eval_split (the split fit evaluated), which stays the truth
        data = {k: v for k, v in data.items() if k not in DERIVED_FIELDS}
        unknown = [k for k in data if k not in hints]
        if unknown:
            raise PresetError(_unknown_key_message(unknown[0]))
        return cls(**{k: _coerce(v, hints[k], k) for k, v in data.items()})

    @classmethod
    def from_json(cls, text: str) -> "Preset":
        return cls.from_dict(json.loads(text))

    # -- hand-off to other rooms ---------------------------------------------------------------

    def model_config_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``r2.model.R2Config`` (sizes, losses, decoding).

        Feature widths (``video_dim``, ``query_dim``) and the ``features`` spec come from the
        cache manifest, not from the preset; ``num_layers`` is ``len(layers)``. ``fps`` is
        None for "auto" (YouTube; there is no window decoding there).
        """
        kwargs = {"num_layers": len(self.layers)}
        for name in _MODEL_FIELDS:
            value = getattr(self, name)
            kwargs[name] = tuple(value) if isinstance(value, tuple) else value
        kwargs["fps"] = None if self.fps == "auto" else float(self.fps)
        return kwargs

    # -- --data-root -----------------------------------------------------------------------------

    def find_data_file(self, root: str | Path, split: str) -> Path:
        """The annotation file of ``split`` under ``root`` (or ``root/<name>``).

        Raises :class:`PresetError` naming every file name tried and where to get them.
        """
        root = Path(root)
        names = self.data_files.get(split)
        if not names:
            known = ", ".join(sorted(self.data_files)) or "none"
            raise PresetError(f"{self.name} has no standard '{split}' annotation file "
                              f"(splits with one: {known}); pass the file explicitly")
        if not root.is_dir():
            raise PresetError(f"--data-root {root} is not a directory")
        folders = [root, root / self.name]
        for folder in folders:
            for name in names:
                candidate = folder / name
                if candidate.is_file():
                    return candidate
        tried = ", ".join(names)
        raise PresetError(f"no {self.name} {split} annotations in {root} (looked for {tried} "
                          f"there and in {root / self.name}). Get them from: {self.data_source}")

    def data_file_splits(self) -> tuple[str, str]:
        """(train split, eval split) names used with ``--data-root``."""
        return "train", self.eval_split


# ----------------------------------------------------------------------------------------------
# type checking of overrides


def _hints() -> dict[str, Any]:
    global _HINTS
    if _HINTS is None:
        _HINTS = typing.get_type_hints(Preset)
    return _HINTS


_HINTS: dict[str, Any] | None = None


def _unknown_key_message(key: str) -> str:
    names = list(_hints())
    close = difflib.get_close_matches(str(key), names, n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return f"unknown preset field {key!r}{hint}; fields: {', '.join(names)}"


#: read-only properties that earlier versions stored as fields: ignored in a saved preset;
#: as an override, accepted when it agrees with the other fields, else refused naming the
#: setting to change instead
DERIVED_FIELDS = ("selection_on_test",)


#: fields that record a benchmark's rule which the data, not the trainer, applies: the cache
#: holds the clips that ``r2 extract`` sampled and the query features of each query id's text.
#: An override to another value is refused with what to do instead.
RECORDED_FIELDS = {
    "clip_rule": "records how {name} counts a video's clips ({value!r}): the clips are those "
                 "r2 extract sampled into the cache, reconciled with the annotation by the data "
                 "set's own rule, so it is not a training setting; to sample clips differently, "
                 "extract into another cache with another --fps",
    "query_source": "records where {name}'s query text comes from ({value!r}): the query "
                    "features are those r2 extract stored for each query id from its annotation "
                    "file, so it is not a training setting; to train on other query text, write "
                    "it into the annotation file's query field and extract it into another cache",
}


def _derived_key_message(key: str, preset: "Preset") -> str:
    return (f"{key} follows eval_split, the split that is evaluated and selected on: eval_split is "
            f"{preset.eval_split!r}, so {key} is {str(preset.selection_on_test).lower()}; to select "
            "on a val split give --val VAL_FILE --set eval_split=val, on the test split --set "
            "eval_split=test")


class _Mismatch(Exception):
    pass


_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def _parse_string(text: str):
    """A command-line string as JSON when it is JSON, else the string itself."""
    stripped = text.strip()
    if stripped.lower() in ("none", "null"):
        return None
    try:
        return json.loads(stripped)
    except ValueError:
        return stripped


def _coerce(value, tp, key: str):
    try:
        return _coerce_inner(value, tp, key)
    except _Mismatch as exc:
        raise PresetError(f"{key}: {exc}") from None


def _type_name(tp) -> str:
    if tp is type(None):
        return "None"
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _coerce_inner(value, tp, key: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if type(None) in args and (value is None or (isinstance(value, str)
                                                     and value.strip().lower() in ("none", "null"))):
            return None
        for option in args:
            if option is type(None):
                continue
            try:
                return _coerce_inner(value, option, key)
            except _Mismatch:
                continue
        raise _Mismatch(f"expected {_type_name(tp)}, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise _Mismatch(f"expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, str):
            value = _parse_string(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch(f"expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, str):
            parsed = _parse_string(value)
            if not isinstance(parsed, (int, float)) or isinstance(parsed, bool):
                raise _Mismatch(f"expected a number, got {value!r}")
            value = parsed
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise _Mismatch(f"expected a finite number, got {value!r}")
            return float(value)
        raise _Mismatch(f"expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch(f"expected a string, got {value!r}")
    if origin is tuple:
        if isinstance(value, str):
            parsed = _parse_string(value)
            if isinstance(parsed, list):
                value = parsed
            elif parsed is None or value.strip() == "":
                value = []
            else:
                parts = value.split(",")
                if any(not p.strip() for p in parts):
                    raise _Mismatch(f"an empty value in the list {value!r}")
                value = [_parse_string(p) for p in parts]
        if not isinstance(value, (list, tuple)):
            value = [value]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce_inner(v, args[0], key) for v in value)
        if len(value) != len(args):
            raise _Mismatch(f"expected {len(args)} values, got {list(value)!r}")
        return tuple(_coerce_inner(v, a, key) for v, a in zip(value, args))
    if origin is dict:
        if isinstance(value, str):
            value = _parse_string(value)
        if not isinstance(value, Mapping):
            raise _Mismatch(f"expected a mapping, got {value!r}")
        return {_coerce_inner(k, args[0], key): _coerce_inner(v, args[1], key)
                for k, v in value.items()}
    raise _Mismatch(f"unsupported type {tp!r}")  # pragma: no cover


def _validate(p: Preset) -> None:
    """Range and choice checks; raises PresetError naming the field."""

    def fail(key, msg):
        raise PresetError(f"{p.name}: {key}: {msg}")

    for key, choices in _CHOICES.items():
        value = getattr(p, key)
        if key == "nms" and value is None:
            continue
        if value not in choices:
            fail(key, f"must be one of {', '.join(map(str, choices))}"
                      + (" or none" if key == "nms" else "") + f", got {value!r}")
    if isinstance(p.fps, str):
        if p.fps != "auto":
            fail("fps", f"must be a positive number or 'auto', got {p.fps!r}")
    elif not p.fps > 0:
        fail("fps", f"must be > 0, got {p.fps}")
    positive_int = ("query_max_tokens", "max_clips", "repeat", "hidden_dim", "num_heads",
                    "ffn_ratio", "batch_size", "epochs", "eval_every", "max_moments")
    for key in positive_int:
        if getattr(p, key) < 1:
            fail(key, f"must be >= 1, got {getattr(p, key)}")
    if p.num_workers < 0:
        fail("num_workers", f"must be >= 0, got {p.num_workers}")
    if p.hidden_dim % p.num_heads:
        fail("hidden_dim", f"{p.hidden_dim} is not divisible by num_heads {p.num_heads}")
    for key in ("dropout", "droppath"):
        if not 0.0 <= getattr(p, key) < 1.0:
            fail(key, f"must be in [0, 1), got {getattr(p, key)}")
    for key in ("min_duration", "weight_decay", "cls_weight", "reg_weight", "sal_weight",
                "video_cal_weight", "layer_cal_weight", "focal_gamma", "warmup_iters",
                "center_radius"):
        if getattr(p, key) < 0:
            fail(key, f"must be >= 0, got {getattr(p, key)}")
    for key in ("lr", "eps", "tau", "lr_gamma", "nms_threshold"):
        if not getattr(p, key) > 0:
            fail(key, f"must be > 0, got {getattr(p, key)}")
    if p.nms_threshold > 1:
        fail("nms_threshold", f"must be <= 1, got {p.nms_threshold}")
    if not 0 < p.warmup_ratio <= 1:
        fail("warmup_ratio", f"must be in (0, 1], got {p.warmup_ratio}")
    if not all(0 <= b < 1 for b in p.betas):
        fail("betas", f"must be in [0, 1), got {p.betas}")
    for key in ("grad_clip", "unit"):
        value = getattr(p, key)
        if value is not None and not value > 0:
            fail(key, f"must be > 0 or none, got {value}")
    if p.focal_alpha is not None and not 0 <= p.focal_alpha <= 1:
        fail("focal_alpha", f"must be in [0, 1] or none, got {p.focal_alpha}")
    if not p.layers:
        fail("layers", "at least one layer is needed")
    if (not p.strides or any(s < 1 or s & (s - 1) for s in p.strides)
            or list(p.strides) != sorted(set(p.strides))):
        fail("strides", f"must be distinct powers of two in increasing order, got {p.strides}")
    if p.cls_loss == "dynamic_bce" and tuple(p.strides) != (1,):
        fail("cls_loss", "dynamic_bce (saliency-only data) needs strides (1,)")
    if p.lr_schedule == "step" and any(m < 0 for m in p.lr_milestones):
        fail("lr_milestones", f"must be epochs >= 0, got {p.lr_milestones}")
    if list(p.lr_milestones) != sorted(p.lr_milestones):
        fail("lr_milestones", f"must be increasing, got {p.lr_milestones}")
    if not p.sal_directions or any(d not in _DIRECTIONS for d in p.sal_directions):
        fail("sal_directions", f"must be a non-empty subset of row, col, got {p.sal_directions}")
    if p.fps == "auto" and p.clip_rule != "youtube_per_clip":
        fail("fps", "'auto' only goes with clip_rule youtube_per_clip")
    if p.eval_split not in ("val", "test"):  # the name of what --val holds, in logs and best.json
        fail("eval_split", f"must be val or test (the split the --val file holds), got {p.eval_split!r}")


# ----------------------------------------------------------------------------------------------
# override sources


def parse_set_options(items) -> dict[str, str]:
    """``["lr=1e-4", "epochs=3"]`` (repeated ``--set``) → ``{"lr": "1e-4", "epochs": "3"}``.

    Values stay strings; :meth:`Preset.override` parses them against the field types.
    """
    out = {}
    for item in items or ():
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise PresetError(f"--set expects key=value, got {item!r}")
        out[key.strip()] = value
    return out


def load_overrides(path: str | Path) -> dict[str, Any]:
    """Read a flat mapping of overrides from a JSON file (or YAML with PyYAML installed)."""
    path = Path(path)
    if not path.is_file():
        raise PresetError(f"{path}: no such override file")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM (some editors write one) is skipped
    except UnicodeDecodeError as exc:
        raise PresetError(f"{path}: not UTF-8 text ({exc.reason})") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml  # optional; not a dependency of r2
        except ImportError:
            raise PresetError(f"{path}: reading YAML needs PyYAML (pip install pyyaml); "
                              "or write the overrides as JSON") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)  # 0-based; absent for some errors
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
            problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
            context = getattr(exc, "context", None)
            raise PresetError(f"{where}: invalid YAML: {problem}"
                              + (f" ({context})" if context else "")) from None
    elif not text.strip():
        raise PresetError(f"{path}: empty file; write a JSON object of preset fields, e.g. "
                          '{"lr": 1e-4, "epochs": 20}')
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PresetError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PresetError(f"{path}: expected a mapping of preset fields, got "
                          f"{type(data).__name__}")
    return data


# ----------------------------------------------------------------------------------------------
# the presets

_MR_COMMON = dict(task="mr", saliency_target="windows", positive_rule="gt0", nms="linear",
                  unit=None, main_metric="MR-full-R1@0.7", batch_size=32, lr=2.5e-4)

_HD_COMMON = dict(
    task="hd", query_source="title", min_duration=0.0, saliency_target="scores",
    strides=(1,), use_tef=False, coord_head=False, merge_cls_sal=False,
    cls_loss="dynamic_bce", reg_weight=0.0, sal_directions=("row",), batch_size=4, lr=5e-4,
    lr_schedule="constant", lr_milestones=(), warmup_iters=50, nms=None, unit=None,
    main_metric="mAP", eval_split="val")


def _preset(common: dict, **values) -> Preset:
    return Preset(**{**common, **values})


PRESETS: dict[str, Preset] = {
    "qvhighlights": Preset(
        name="qvhighlights", task="mr_hd",
        description="QVHighlights: 2-s clips, MR + HD, train ×4 per epoch, selected on val "
                    "MR-full-mAP",
        fps=0.5, clip_rule="annotation_grid", repeat=4, batch_size=128, epochs=30, lr=5e-4,
        lr_milestones=(20,), dropout=0.5, nms="normal", nms_threshold=0.7, unit=2.0,
        eval_split="val", main_metric="MR-full-mAP",
        data_files={
            "train": ("highlight_train_release.jsonl", "qvhighlights_train.jsonl"),
            "val": ("highlight_val_release.jsonl", "qvhighlights_val.jsonl"),
            "test": ("highlight_test_release.jsonl", "qvhighlights_test.jsonl"),
        },
        data_source="github.com/jayleicn/moment_detr data/ (CC BY-NC-SA 4.0), or Hugging Face "
                    "yeliudev/R2-Tuning datasets/qvhighlights/"),
    "charades": _preset(
        _MR_COMMON, name="charades",
        description="Charades-STA: 1-s clips, MR; trained on train, selected and reported on "
                    "test (no val split)",
        fps=1.0, epochs=50, lr_milestones=(30,), dropout=0.35, sal_weight=0.01, unit=0.1,
        eval_split="test",
        data_files={
            "train": ("charades_train.jsonl", "charades_sta_train_tvr_format.jsonl",
                      "charades_train_release.jsonl", "charades_sta_train.txt"),
            "test": ("charades_test.jsonl", "charades_sta_test_tvr_format.jsonl",
                     "charades_test_release.jsonl", "charades_sta_test.txt"),
        },
        data_source="Hugging Face yeliudev/R2-Tuning datasets/charades/charades_{train,test}."
                    "jsonl; or the TALL files charades_sta_{train,test}.txt "
                    "(github.com/jiyanggao/TALL) with Charades_v1_{train,test}.csv (AI2 "
                    "Charades, non-commercial licence)"),
    "ego4d": _preset(
        _MR_COMMON, name="ego4d",
        description="Ego4D-NLQ: 2-s clips, MR on the NLQ clips; selected on val",
        fps=0.5, epochs=30, lr_milestones=(20,), dropout=0.3, eval_split="val",
        data_files={
            "train": ("nlq_train.jsonl", "nlq_train.json"),
            "val": ("nlq_val.jsonl", "nlq_val.json"),
        },
        data_source="the Ego4D CLI after signing the Ego4D licence (annotations: "
                    "nlq_{train,val}.json; R²-Tuning's converted nlq_{train,val}.jsonl are on "
                    "Hugging Face yeliudev/R2-Tuning datasets/ego4d/, licence still required)"),
    "tacos": _preset(
        _MR_COMMON, name="tacos",
        description="TACoS: 2-s clips, MR; trained on train, selected and reported on test "
                    "(val unused)",
        fps=0.5, epochs=100, lr_milestones=(50,), dropout=0.5, sal_weight=0.05,
        eval_split="test",
        data_files={
            "train": ("train.jsonl", "tacos_train_release.jsonl", "train.json"),
            "val": ("val.jsonl", "tacos_val_release.jsonl", "val.json"),
            "test": ("test.jsonl", "tacos_test_release.jsonl", "test.json"),
        },
        data_source="Hugging Face yeliudev/R2-Tuning datasets/tacos/{train,val,test}.jsonl; or "
                    "2D-TAN's {train,val,test}.json (github.com/microsoft/VideoX 2D-TAN/data/"
                    "TACoS); videos: MPII-Cooking-2 (<vid>-cam-002.avi)"),
    "youtube": _preset(
        _HD_COMMON, name="youtube",
        description="YouTube Highlights: one frame per annotated clip, HD only, one model per "
                    "domain, selected on the domain's val list by mAP",
        fps="auto", clip_rule="youtube_per_clip", positive_rule="gt_half", epochs=200,
        domains=("dog", "gymnastics", "parkour", "skating", "skiing", "surfing"),
        data_files={"train": ("youtube_anno.json",), "val": ("youtube_anno.json",)},
        data_source="Hugging Face yeliudev/R2-Tuning datasets/youtube/youtube_anno.json (UMT's "
                    "file; labels from github.com/aliensunmin/DomainSpecificHighlight)"),
    "tvsum": _preset(
        _HD_COMMON, name="tvsum",
        description="TVSum: 2-s clips, HD only, one model per category (4 train / 1 val "
                    "video), selected by top-5 mAP",
        fps=0.5, clip_rule="tvsum_rows", positive_rule="gt_median", epochs=500,
        domains=("BK", "BT", "DS", "FM", "GA", "MS", "PK", "PR", "VT", "VU"),
        data_files={"train": ("tvsum_anno.json", "tvsum_train_sfc.json"),
                    "val": ("tvsum_anno.json", "tvsum_train_sfc.json")},
        data_source="Hugging Face yeliudev/R2-Tuning datasets/tvsum/tvsum_anno.json (UMT's "
                    "file, rebuilt from tvsum50_ver_1_1.tgz of github.com/yalesong/tvsum)"),
    "custom": Preset(
        name="custom", task="mr_hd",
        description="custom jsonl of QVHighlights-layout rows: QVHighlights' recipe with batch "
                    "32, no repeat, no rounding unit, no minimum duration, padding-invariant "
                    "training (r2's choice)",
        fps=0.5, min_duration=0.0, batch_size=32, epochs=30, lr=5e-4, lr_milestones=(20,),
        official_batch_quirks=False,
        nms="normal", nms_threshold=0.7, unit=None, eval_split="val",
        main_metric="MR-full-mAP",
        data_files={"train": ("train.jsonl",), "val": ("val.jsonl",), "test": ("test.jsonl",)},
        data_source="your own files: one QVHighlights-layout row per line (qid, vid, query, "
                    "duration, relevant_windows[, relevant_clip_ids, saliency_scores])"),
}

assert tuple(PRESETS) == tuple(sorted(PRESETS, key=DATASETS.index))


def get_preset(name: str, overrides: Mapping[str, Any] | None = None,
               override_file: str | Path | None = None) -> Preset:
    """The preset of a data set (aliases accepted), with optional overrides.

    The file's overrides are applied first, then ``overrides`` (e.g. from ``--set``).
    """
    try:
        key = canonical_dataset(name)
    except AnnotationError as exc:
        raise PresetError(str(exc)) from None
    preset = PRESETS[key]
    if override_file is not None:
        preset = preset.override_from_file(override_file)
    if overrides:
        preset = preset.override(overrides)
    return preset
