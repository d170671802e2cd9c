"""Per-sample training targets (pure numpy) and the clip-count rule of every benchmark.

Everything here works on one :class:`~r2.train.annotations.GroundingSample` and the number of
clips ``T`` its video really has in the feature cache (the data loader passes it). No torch.

Clip counts (``clip_count``; r2tuning §1.3, datasets.md)
---------------------------------------------------------
One clip = one sampled frame. The official features come from ffmpeg's ``fps`` filter, which
emits ``round(D · fps)`` frames for a stream of ``D`` seconds (rounding to nearest, halves up;
r2 never returns fewer than 1):

==============  ===================================================  ==========================
data set        clips for a video                                    example
==============  ===================================================  ==========================
QVHighlights    ``floor(duration · 0.5)`` (the 2-s annotation grid;   150 s → 75
                ffmpeg's count is the same for its even durations)
Charades-STA    ``round(duration · 1.0)``                             30.96 s → 31
Ego4D-NLQ       ``round(duration · 0.5)``                             480 s → 240
TACoS           ``round(duration · 0.5)``                             249.86 s → 125
YouTube         one frame per annotated clip: ``len(match)``          12 labels → 12
                (sampling rate = len(match) ÷ (frames ÷ fps))
TVSum           rows of ``anno`` = ``floor(frames ÷ fps ÷ 2)``        1800 frames at 29.97 → 30
custom          ``round(duration · 0.5)``
==============  ===================================================  ==========================

When the cache holds ``T`` clips and the annotations another count, the official loaders
reconcile them like this (:func:`usable_clips`): QVHighlights needs ``T ≤ grid`` and
``grid − T < 5`` and truncates the saliency to ``T``; TVSum needs ``|T − rows| < 5`` and cuts
both to the shorter; YouTube needs ``T = len(match)``; the moment-retrieval sets take ``T`` as
it is.

Targets (r2tuning §4.1, §4.4; the official ``bind_boundary``/``bind_saliency``)
--------------------------------------------------------------------------------
* GT windows in clip units: ``seconds × fps`` as written (the model's loss clamps/swaps/
  widens them; :func:`bind_windows` is that rule, used here for the binary saliency).
* Saliency per clip, in [0, 1] (float32), from the raw scores when the sample has them:
  ``(sum of the A scores − A·min) / (A·(max − min))`` — QVHighlights ``sum / 12``
  (unannotated clips 0), TVSum ``(sum − 20) / 80``, YouTube ``(match + 1) / 2``. Without
  scores (Charades, Ego4D, TACoS): clip ``j`` is 1 iff ``ceil(s·fps) ≤ j < ceil(e·fps)`` for
  some window after :func:`bind_windows` (so a zero-length window still marks one clip).
* Candidate positive clips: saliency > 0 (QVHighlights and the MR sets), > its lower median
  (TVSum; ``torch.median`` semantics, computed after truncation), > 0.5 (YouTube: match = 1).
  One is drawn uniformly per load with a seeded ``numpy.random.Generator``
  (:func:`sample_rng`). With no candidate (a YouTube video without a match, a QVHighlights
  query whose clips all scored 0) the official loader would fail; r2 takes the highest-target
  clip (ties drawn at random) by default — ``empty_positive="skip"`` returns −1 instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, NamedTuple

import numpy as np

from .annotations import GroundingSample, Saliency, canonical_dataset

__all__ = [
    "CLIP_RULES",
    "DATASET_FPS",
    "DATASET_RULES",
    "SampleTargets",
    "TargetError",
    "annotation_grid_clips",
    "bind_windows",
    "build_targets",
    "clip_count",
    "crop_range",
    "crop_targets",
    "ffmpeg_clips",
    "filter_for_training",
    "keep_for_training",
    "lower_median",
    "positive_candidates",
    "sample_positive_clip",
    "sample_rng",
    "saliency_targets",
    "scored_saliency",
    "usable_clips",
    "window_saliency",
    "windows_in_clips",
    "youtube_fps",
]


class TargetError(ValueError):
    """Annotations and features that cannot be reconciled (one-line message, ``user_error``)."""

    user_error = True


#: clip-count rule per data set (see the module docstring)
CLIP_RULES = {
    "qvhighlights": "annotation_grid",
    "charades": "ffmpeg_fps",
    "ego4d": "ffmpeg_fps",
    "tacos": "ffmpeg_fps",
    "youtube": "youtube_per_clip",
    "tvsum": "tvsum_rows",
    "custom": "ffmpeg_fps",
}

#: clips per second per data set (None: per video, YouTube)
DATASET_FPS = {
    "qvhighlights": 0.5,
    "charades": 1.0,
    "ego4d": 0.5,
    "tacos": 0.5,
    "youtube": None,
    "tvsum": 0.5,
    "custom": 0.5,
}

#: (saliency target, positive rule) per data set; "scores" falls back to the windows when a
#: sample has no saliency annotation
DATASET_RULES = {
    "qvhighlights": ("scores", "gt0"),
    "charades": ("windows", "gt0"),
    "ego4d": ("windows", "gt0"),
    "tacos": ("windows", "gt0"),
    "youtube": ("scores", "gt_half"),
    "tvsum": ("scores", "gt_median"),
    "custom": ("scores", "gt0"),
}

# how far the cache's clip count may differ from the annotation grid (official asserts)
_TOLERANCE = 5


# ----------------------------------------------------------------------------------------------
# clip counts


def ffmpeg_clips(duration: float, fps: float) -> int:
    """Frames ffmpeg's ``fps`` filter emits for ``duration`` seconds: ``round(duration · fps)``.

    The filter rounds the end timestamp to the output grid to nearest, halves away from zero
    (``AV_ROUND_NEAR_INF``); r2 returns at least 1 (ffmpeg would emit none below half a clip).
    """
    _check_positive(duration, "duration")
    _check_positive(fps, "fps")
    return max(1, int(math.floor(duration * fps + 0.5)))


def annotation_grid_clips(duration: float, fps: float) -> int:
    """Clips of an annotation grid: ``floor(duration · fps)`` (``int(duration * fps)``, as the
    official QVHighlights loader and evaluator compute it; TVSum's row count)."""
    _check_positive(duration, "duration")
    _check_positive(fps, "fps")
    return max(1, int(duration * fps))


def youtube_fps(sample: GroundingSample) -> float:
    """Sampling rate giving one frame per annotated clip: ``len(match) / (frames / fps)``."""
    if sample.saliency is None:
        raise TargetError(f"qid {sample.qid!r}: YouTube clips need the 'match' labels")
    return sample.saliency.num_clips / float(sample.duration)


def clip_count(dataset: str, duration: float | None = None, *, sample: GroundingSample | None = None,
               fps: float | None = None, rule: str | None = None) -> int:
    """Clips a video has under a benchmark's rule (table in the module docstring).

    Args:
        dataset: data set name (sets the rule and the default fps).
        duration: seconds (default: ``sample.duration``).
        sample: needed for YouTube (``len(match)``); TVSum uses its ``anno`` rows when given.
        fps: overrides the data set's rate (a preset's ``fps``).
        rule: overrides the rule ("ffmpeg_fps", "annotation_grid", "youtube_per_clip",
            "tvsum_rows").
    """
    dataset = canonical_dataset(dataset)
    rule = rule or CLIP_RULES[dataset]
    if rule in ("youtube_per_clip", "tvsum_rows") and sample is not None:
        if sample.saliency is None:
            raise TargetError(f"qid {sample.qid!r}: {dataset} clips come from its saliency "
                              "annotation, which this sample lacks")
        return sample.saliency.num_clips
    if rule == "youtube_per_clip":
        raise TargetError("YouTube clip counts come from the annotation (len(match)): pass "
                          "sample=")
    if duration is None:
        if sample is None:
            raise TargetError("clip_count needs a duration or a sample")
        duration = float(sample.duration)
    if fps is None:
        fps = DATASET_FPS[dataset] or 0.5
    if rule == "ffmpeg_fps":
        return ffmpeg_clips(duration, fps)
    if rule in ("annotation_grid", "tvsum_rows"):
        return annotation_grid_clips(duration, fps)
    raise TargetError(f"unknown clip rule {rule!r}")


def usable_clips(sample: GroundingSample, num_features: int, fps: float | None = None,
                 dataset: str | None = None, tolerance: int = _TOLERANCE) -> int:
    """How many clips of a cached video the training targets use (official reconciliation).

    QVHighlights (saliency on the 2-s grid): the grid must have >= ``num_features`` clips and
    fewer than ``tolerance`` more; TVSum: ``|num_features − rows| < tolerance`` → the
    shorter; YouTube: ``num_features == len(match)``; otherwise ``num_features``. Raises
    :class:`TargetError` with the numbers when the rule fails (wrong fps at extraction, or a
    different video file).
    """
    dataset = canonical_dataset(dataset or sample.dataset)
    if num_features < 1:
        raise TargetError(f"video {sample.vid!r} has no clips in the cache")
    sal = sample.saliency
    if dataset == "youtube":
        if sal is None or sal.num_clips != num_features:
            expected = None if sal is None else sal.num_clips
            raise TargetError(f"video {sample.vid!r}: the cache has {num_features} clips but "
                              f"YouTube needs one per annotated clip ({expected}); extract it "
                              "with one frame per clip")
        return num_features
    if dataset == "tvsum" and sal is not None:
        if abs(num_features - sal.num_clips) >= tolerance:
            raise TargetError(f"video {sample.vid!r}: the cache has {num_features} clips but "
                              f"the annotation has {sal.num_clips} 2-s rows (at most "
                              f"{tolerance - 1} apart)")
        return min(num_features, sal.num_clips)
    if dataset == "qvhighlights" and sal is not None:
        grid = annotation_grid_clips(float(sample.duration), fps or DATASET_FPS["qvhighlights"])
        if not (grid >= num_features and grid - num_features < tolerance):
            raise TargetError(f"qid {sample.qid!r}: the cache has {num_features} clips for "
                              f"video {sample.vid!r} but its {sample.duration}-s annotation grid "
                              f"has {grid} (the cache may hold at most {tolerance - 1} fewer)")
        return num_features
    if dataset == "custom" and fps is not None:
        _check_custom_clips(sample, num_features, fps, tolerance)
    return num_features


def _check_custom_clips(sample: GroundingSample, num_features: int, fps: float, tolerance: int) -> None:
    """Custom rows: the row's duration must be that of the cached video (its clip count at
    ``fps`` within ``tolerance`` of the cache's), and ``relevant_clip_ids`` inside it: else the
    windows would be clamped onto the wrong clips, and the saliency of clips past the end
    dropped, without a word (the evaluator refuses such val rows; the training split gets the
    same check)."""
    where = sample.origin or f"qid {sample.qid!r}"
    duration = float(sample.duration)
    expected = ffmpeg_clips(duration, fps)
    if abs(expected - num_features) >= tolerance:
        raise TargetError(f"{where}: the row gives video {sample.vid!r} a duration of {duration:g} s "
                          f"({expected} clips at {fps:g} clips/s), but the cache has {num_features} clips "
                          f"({num_features / fps:g} s) for it: the duration (and the windows) must be in "
                          "seconds of the video extracted under that id")
    sal, clips = sample.saliency, max(expected, num_features)
    if sal is not None and sal.clip_ids.size and int(sal.clip_ids.max()) >= clips:
        raise TargetError(f"{where}: relevant_clip_ids holds {int(sal.clip_ids.max())}, outside the "
                          f"{clips} clips of video {sample.vid!r} ({duration:g} s at "
                          f"{fps:g} clips/s; clip ids count clips of 1 / fps seconds from 0)")


# ----------------------------------------------------------------------------------------------
# windows


def windows_in_clips(sample_or_windows, fps: float) -> np.ndarray:
    """(G, 2) float32 GT windows in clip units (seconds × fps), as written (no repair)."""
    windows = (sample_or_windows.relevant_windows if isinstance(sample_or_windows, GroundingSample)
               else sample_or_windows)
    w = np.asarray(windows, dtype=np.float32).reshape(-1, 2)
    return (w * np.float32(fps)).astype(np.float32)


def bind_windows(windows, num_clips: int, fps: float) -> np.ndarray:
    """The official ``bind_boundary`` (r2tuning §4.1), in seconds, float32 like torch.

    Clamp to ``[0, T/fps]``; swap reversed windows; a window shorter than one clip becomes a
    one-clip window centred on its centre, the centre clamped to ``[0.5/fps, T/fps − 0.5/fps]``.
    """
    w = np.array(windows, dtype=np.float32).reshape(-1, 2)
    max_time = num_clips / fps
    w = np.clip(w, np.float32(0), np.float32(max_time))
    reversed_ = (w[:, 1] - w[:, 0]) < 0
    w[reversed_] = w[reversed_][:, ::-1]
    half = np.float32(0.5 / fps)
    short = (w[:, 1] - w[:, 0]) < np.float32(1 / fps)
    if short.any():
        center = w[short].sum(axis=1) / np.float32(2)
        center = np.clip(center, half, np.float32(max_time - 0.5 / fps))
        w[short, 0] = center - half
        w[short, 1] = center + half
    return w


def window_saliency(windows, num_clips: int, fps: float) -> np.ndarray:
    """(T,) float32 binary saliency of moment-retrieval samples (r2tuning §4.4).

    Clip ``j`` is 1 iff ``ceil(s·fps) ≤ j < ceil(e·fps)`` for some window ``[s, e]`` after
    :func:`bind_windows`.
    """
    bound = bind_windows(windows, num_clips, fps)
    scaled = (bound * np.float32(fps)).astype(np.float32)
    out = np.zeros(num_clips, dtype=np.float32)
    for start, end in scaled.tolist():
        lo, hi = max(0, math.ceil(start)), min(num_clips, math.ceil(end))
        out[lo:hi] = 1.0
    return out


# ----------------------------------------------------------------------------------------------
# saliency and positives


def scored_saliency(saliency: Saliency, num_clips: int) -> np.ndarray:
    """(T,) float32 in [0, 1]: ``(Σ_a score − A·min) / (A·(max − min))`` per clip.

    = QVHighlights ``sum / 12`` (clips outside ``relevant_clip_ids`` 0), TVSum
    ``(sum − 20) / 80``, YouTube ``(match + 1) / 2``. Annotated clips beyond ``T`` are dropped.
    """
    lo, hi = (float(v) for v in saliency.scale)
    a = saliency.num_annotators
    dense = saliency.dense(num_clips)  # (T, A) float64
    return ((dense.sum(axis=1) - a * lo) / (a * (hi - lo))).astype(np.float32)


def saliency_targets(sample: GroundingSample, num_clips: int, fps: float | None = None,
                     target: str | None = None) -> np.ndarray:
    """(T,) float32 saliency target of a sample (rule of its data set unless ``target``)."""
    target = target or DATASET_RULES[canonical_dataset(sample.dataset)][0]
    if target not in ("scores", "windows"):
        raise TargetError(f"unknown saliency target {target!r} (scores or windows)")
    if target == "scores" and sample.saliency is not None:
        return scored_saliency(sample.saliency, num_clips)
    if not sample.relevant_windows:
        raise TargetError(f"qid {sample.qid!r}: no saliency scores and no windows to derive "
                          "a saliency target from")
    if fps is None:
        fps = DATASET_FPS[canonical_dataset(sample.dataset)]
        if fps is None:
            raise TargetError("window saliency needs fps")
    return window_saliency(sample.relevant_windows, num_clips, fps)


def lower_median(values: np.ndarray) -> float:
    """``torch.median`` of a 1-D array: the lower of the two middle values for even sizes."""
    values = np.asarray(values).ravel()
    if values.size == 0:
        raise TargetError("median of an empty saliency")
    return float(np.sort(values)[(values.size - 1) // 2])


def positive_candidates(saliency: np.ndarray, rule: str = "gt0") -> np.ndarray:
    """(P,) int64 clips eligible as the positive clip: "gt0" (> 0), "gt_median" (> lower
    median, TVSum), "gt_half" (> 0.5, YouTube)."""
    saliency = np.asarray(saliency)
    if rule == "gt0":
        mask = saliency > 0
    elif rule == "gt_half":
        mask = saliency > 0.5
    elif rule == "gt_median":
        mask = saliency > lower_median(saliency) if saliency.size else saliency > 0
    else:
        raise TargetError(f"unknown positive rule {rule!r} (gt0, gt_median, gt_half)")
    return np.flatnonzero(mask).astype(np.int64)


def sample_rng(seed: int, epoch: int = 0, index: int = 0) -> np.random.Generator:
    """A generator for one (seed, epoch, sample) triple: reproducible whatever the worker."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch), int(index)]))


def sample_positive_clip(candidates: np.ndarray, rng: np.random.Generator,
                         saliency: np.ndarray | None = None, on_empty: str = "argmax") -> int:
    """One positive clip drawn uniformly from ``candidates``.

    With no candidate: "argmax" draws among the clips of highest ``saliency`` (clip 0 when no
    saliency is given), "skip" returns −1, "error" raises :class:`TargetError`.
    """
    candidates = np.asarray(candidates)
    if candidates.size:
        return int(candidates[rng.integers(candidates.size)])
    if on_empty == "skip":
        return -1
    if on_empty == "error":
        raise TargetError("no candidate positive clip")
    if on_empty != "argmax":
        raise TargetError(f"unknown empty_positive rule {on_empty!r} (argmax, skip, error)")
    if saliency is None or np.asarray(saliency).size == 0:
        return 0
    saliency = np.asarray(saliency)
    best = np.flatnonzero(saliency == saliency.max())
    return int(best[rng.integers(best.size)])


# ----------------------------------------------------------------------------------------------
# everything for one sample


@dataclass(frozen=True, eq=False)
class SampleTargets:
    """Training targets of one sample on ``num_clips`` clips.

    Attributes:
        num_clips: T used (after :func:`usable_clips`).
        windows: (G, 2) float32 GT windows in clip units (seconds × fps), as written; (0, 2)
            for saliency-only data. The loss binds them (clamp, swap, ≥ one clip).
        saliency: (T,) float32 in [0, 1].
        candidates: (P,) int64 eligible positive clips.
        positive_clip: the sampled positive clip (−1 when none and ``empty_positive="skip"``).
    """

    num_clips: int
    windows: np.ndarray
    saliency: np.ndarray
    candidates: np.ndarray
    positive_clip: int


def build_targets(sample: GroundingSample, num_clips: int, rng: np.random.Generator | None = None,
                  *, fps: float | str | None = None, preset=None, target: str | None = None,
                  positive_rule: str | None = None, empty_positive: str | None = None
                  ) -> SampleTargets:
    """Targets of one sample whose video has ``num_clips`` clips (see the module docstring).

    Rules come from (in order) the explicit arguments, ``preset`` (an
    ``r2.train.presets.Preset``: fps, saliency_target, positive_rule, empty_positive), the
    data set's defaults (``DATASET_RULES``/``DATASET_FPS``). ``fps`` "auto"/None means
    YouTube's per-video rate (no windows there). ``rng`` defaults to a fresh unseeded
    generator; pass :func:`sample_rng` for reproducible draws.
    """
    dataset = canonical_dataset(sample.dataset)
    default_target, default_rule = DATASET_RULES[dataset]
    if preset is not None:
        fps = preset.fps if fps is None else fps
        target = target or preset.saliency_target
        positive_rule = positive_rule or preset.positive_rule
        empty_positive = empty_positive or preset.empty_positive
    target = target or default_target
    positive_rule = positive_rule or default_rule
    empty_positive = empty_positive or "argmax"
    if fps is None:
        fps = DATASET_FPS[dataset]
    if fps == "auto" or fps is None:
        fps = youtube_fps(sample) if sample.saliency is not None else None
    if num_clips < 1:
        raise TargetError(f"qid {sample.qid!r}: a video needs at least one clip")
    rng = rng if rng is not None else np.random.default_rng()

    saliency = saliency_targets(sample, num_clips, fps, target)
    candidates = positive_candidates(saliency, positive_rule)
    positive = sample_positive_clip(candidates, rng, saliency, empty_positive)
    windows = (windows_in_clips(sample, fps) if fps is not None
               else np.zeros((0, 2), dtype=np.float32))
    return SampleTargets(num_clips=int(num_clips), windows=windows, saliency=saliency,
                         candidates=candidates, positive_clip=positive)


# ----------------------------------------------------------------------------------------------
# training-time filters and the long-video rule


def keep_for_training(sample: GroundingSample, min_duration: float = 5.0) -> bool:
    """False for samples the official loader drops at training time (duration < 5 s)."""
    return not (min_duration > 0 and float(sample.duration) < min_duration)


class TrainingSamples(NamedTuple):
    """The samples :func:`filter_for_training` kept and those it dropped, in their order."""

    kept: list  # [GroundingSample]
    dropped: list  # [GroundingSample]


def filter_for_training(samples: Iterable[GroundingSample], preset=None,
                        min_duration: float | None = None) -> TrainingSamples:
    """The samples kept and dropped by the minimum-duration rule (``preset.min_duration`` by
    default)."""
    if min_duration is None:
        min_duration = preset.min_duration if preset is not None else 5.0
    kept, dropped = [], []
    for s in samples:
        (kept if keep_for_training(s, min_duration) else dropped).append(s)
    return TrainingSamples(kept, dropped)


def crop_range(num_clips: int, max_clips: int, anchor: int = -1,
               rng: np.random.Generator | None = None) -> tuple[int, int]:
    """Clip range ``[start, stop)`` of a training crop (``long_video_rule = "crop"``).

    Videos of at most ``max_clips`` clips are not cropped. Longer ones get a window of
    ``max_clips`` clips drawn uniformly among those that contain ``anchor`` (the sampled
    positive clip; any window when ``anchor`` < 0).
    """
    if max_clips < 1:
        raise TargetError(f"max_clips must be >= 1, got {max_clips}")
    if num_clips <= max_clips:
        return 0, num_clips
    rng = rng if rng is not None else np.random.default_rng()
    lo, hi = 0, num_clips - max_clips
    if 0 <= anchor < num_clips:
        lo, hi = max(lo, anchor - max_clips + 1), min(hi, anchor)
    start = int(rng.integers(lo, hi + 1))
    return start, start + max_clips


def crop_targets(targets: SampleTargets, start: int, stop: int) -> SampleTargets:
    """Targets of the clips ``[start, stop)`` (windows shifted and clipped to the crop;
    windows outside it dropped; the positive clip shifted, −1 if it falls outside)."""
    if not 0 <= start < stop <= targets.num_clips:
        raise TargetError(f"crop [{start}, {stop}) outside [0, {targets.num_clips})")
    length = stop - start
    w = targets.windows.astype(np.float32) - np.float32(start)
    lo, hi = np.minimum(w[:, 0], w[:, 1]), np.maximum(w[:, 0], w[:, 1])
    keep = ((hi > 0) & (lo < length)) | ((lo == hi) & (lo >= 0) & (lo <= length))
    w = np.clip(w[keep], 0, length).astype(np.float32)
    cands = targets.candidates[(targets.candidates >= start) & (targets.candidates < stop)] - start
    pos = targets.positive_clip
    pos = pos - start if start <= pos < stop else -1
    return SampleTargets(num_clips=length, windows=w.reshape(-1, 2),
                         saliency=targets.saliency[start:stop].copy(),
                         candidates=cands.astype(np.int64), positive_clip=int(pos))


def _check_positive(value, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) \
            or not math.isfinite(value) or value <= 0:
        raise TargetError(f"{what} must be a positive number, got {value!r}")
