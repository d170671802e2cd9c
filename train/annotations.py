"""Benchmark annotation files → one record, :class:`GroundingSample`.

Every supported file is parsed into ``GroundingSample`` records; ``sample.to_row()`` gives the
QVHighlights-layout row (a plain dict) that ``r2.evaluate`` and custom data sets use, and
``GroundingSample.from_row(row)`` is its inverse. A custom data set is a jsonl file of such rows.

Layouts read (``datasets.md`` §2–§8 of the reference; the examples in ``shared/data``):

=================  =============================================  ==============================
data set           file                                           layout name here
=================  =============================================  ==============================
QVHighlights       ``highlight_{train,val,test}_release.jsonl``    ``jsonl`` (rows)
Charades-STA       ``charades_{train,test}.jsonl`` (R²-Tuning)     ``jsonl``
                   ``charades_sta_{train,test}.txt`` (TALL) + the  ``tall``
                   ``Charades_v1_*.csv`` lengths (``lengths=``)
TACoS              ``{train,val,test}.jsonl`` (R²-Tuning)          ``jsonl``
                   ``{train,val,test}.json`` (2D-TAN, frames)      ``tan2d``
Ego4D-NLQ          ``nlq_{train,val}.jsonl`` (R²-Tuning)           ``jsonl``
                   ``nlq_{train,val}.json`` (official, nested)     ``ego4d_nlq``
YouTube Highlights ``youtube_anno.json`` (UMT / R²-Tuning)         ``youtube_anno``
TVSum              ``tvsum_anno.json`` (UMT / R²-Tuning)           ``tvsum_anno``
custom             jsonl of QVHighlights-layout rows (or a JSON    ``jsonl`` / ``json_rows``
                   array of them)
=================  =============================================  ==============================

Rules kept from the references (never "repair" evaluation ground truth):

* ``qid`` keeps its original type (int for QVHighlights/Charades, str for TACoS ``"<vid>_<i>"``
  and Ego4D ``"train0"``); numbers keep the type they were written with (QVHighlights' integer
  seconds stay ints), so ``to_row()`` of a QVHighlights line is that line again.
* Windows are kept as written: Ego4D's zero-length windows and windows ending after
  ``duration`` are accepted unchanged. A window with start > end or start < 0 is an error in
  row files. Conversions from original layouts apply the published conversion rules: TALL and
  2D-TAN ends are clipped to the duration (as R²-Tuning's jsonl files are), and TALL lines with
  start > end are dropped (4 such lines in the real train file; ``reversed_windows="error"``
  makes them an error instead).
* TACoS: ``vid`` stays as in the annotations (``s30-d52``); the video file stem, which carries
  the ``-cam-002`` suffix, is ``extras["video_file_stem"]`` (also ``sample.video_file_stem``).
* YouTube Highlights / TVSum rows: ``qid`` = ``vid`` = YouTube id, ``query`` = title
  (YouTube ``info[5]``, as R²-Tuning; ``query_source="domain"`` uses the domain word as
  UniVTG/lighthouse do), ``domain``, no windows, saliency = every clip with its RAW scores
  (TVSum 20 annotators 1–5, YouTube one ``match`` label −1/0/1). ``split`` selects the
  R²-Tuning/UMT train or val id list of each domain (``r2.train.splits``).

A malformed line raises :class:`AnnotationError` (``user_error = True``), whose message starts
with ``file:line`` and says what is wrong. In nested JSON files the line is the line where the
offending entry starts, followed by its JSON path.

jsonl files are read by ``r2.evaluate.read_jsonl`` (one reader for every room, as strict as
the reference evaluators: a blank line is an error, a missing final newline is fine).

This module imports numpy, the standard library and ``r2.evaluate``'s reader only (no torch):
``r2 score`` and ``r2 extract`` read annotations through it.
"""

from __future__ import annotations

import bisect
import csv
import dataclasses
import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from r2 import DATASETS  # the names accepted for ``dataset`` (``r2 fit --dataset``)

from .splits import TVSUM_SPLITS, YOUTUBE_SPLITS

__all__ = [
    "AnnotationError",
    "DATASETS",
    "GroundingSample",
    "LAYOUTS",
    "SALIENCY_SCALES",
    "Saliency",
    "TVSUM_CATEGORIES",
    "YOUTUBE_DOMAINS",
    "canonical_dataset",
    "detect_dataset",
    "detect_layout",
    "load_annotations",
    "samples_to_rows",
    "select_domain",
    "write_jsonl",
]

log = logging.getLogger(__name__)

_ALIASES = {
    "qvh": "qvhighlights",
    "qvhighlight": "qvhighlights",
    "charades-sta": "charades",
    "charades_sta": "charades",
    "charadessta": "charades",
    "ego4d-nlq": "ego4d",
    "ego4d_nlq": "ego4d",
    "nlq": "ego4d",
    "youtube-highlights": "youtube",
    "youtube_highlights": "youtube",
    "youtube_uni": "youtube",
    "yt": "youtube",
}

#: Layout names (see the module docstring) → the data set a layout implies (None: any).
LAYOUTS = {
    "jsonl": None,
    "json_rows": None,
    "tall": "charades",
    "tan2d": "tacos",
    "ego4d_nlq": "ego4d",
    "youtube_anno": "youtube",
    "tvsum_anno": "tvsum",
}

_LAYOUT_TEXT = {
    "jsonl": "a jsonl file of QVHighlights-layout rows",
    "json_rows": "a JSON array of QVHighlights-layout rows",
    "tall": "a Charades-STA TALL text file",
    "tan2d": "a TACoS 2D-TAN json file",
    "ego4d_nlq": "an official Ego4D NLQ json file",
    "youtube_anno": "a YouTube Highlights youtube_anno.json file",
    "tvsum_anno": "a TVSum tvsum_anno.json file",
}

#: (min, max) of the raw saliency scale per data set (custom rows default to QVHighlights').
SALIENCY_SCALES: dict[str, tuple[int, int]] = {
    "qvhighlights": (0, 4),
    "tvsum": (1, 5),
    "youtube": (-1, 1),
}
_DEFAULT_SCALE = (0, 4)

YOUTUBE_DOMAINS: tuple[str, ...] = tuple(YOUTUBE_SPLITS)
#: TVSum category codes (VT changing vehicle tire, VU getting vehicle unstuck, GA grooming an
#: animal, MS making sandwich, PK parkour, PR parade, FM flash mob gathering, BK bee keeping,
#: BT attempting bike tricks, DS dog show).
TVSUM_CATEGORIES: tuple[str, ...] = tuple(TVSUM_SPLITS)

_TACOS_CAMERA_SUFFIX = "-cam-002"

# keys of a row that are fields of the record (everything else goes to ``extras``)
_ROW_KEYS = ("qid", "query", "duration", "vid", "domain", "relevant_clip_ids", "saliency_scores",
             "relevant_windows", "saliency_scale")

_QVH_VID = re.compile(r"^[A-Za-z0-9_-]{11}_\d+(?:\.\d+)?_\d+(?:\.\d+)?$")
_TACOS_VID = re.compile(r"^s\d+-d\d+$")
_CHARADES_VID = re.compile(r"^[0-9A-Z]{5}$")
_EGO_QID = re.compile(r"^(train|val|test)(\d+)$")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_SPLIT_IN_NAME = re.compile(r"(?<![a-z])(train|val|valid|validation|test)(?![a-z])")


# --------------------------------------------------------------------------------------------
# errors


class AnnotationError(ValueError):
    """A problem with an annotation file, shown to the user as one line (``user_error``).

    ``str(error)`` is ``"file:line: what is wrong"`` (``"file: ..."`` when no line applies).
    """

    user_error = True

    def __init__(self, reason: str, path: str | Path | None = None, line: int | None = None,
                 where: str | None = None):
        self.reason = reason
        self.path = None if path is None else str(path)
        self.line = line
        self.where = where
        super().__init__(self._format())

    def _format(self) -> str:
        parts = []
        if self.path is not None:
            parts.append(self.path + (f":{self.line}" if self.line is not None else ""))
        if self.where:
            parts.append(self.where)
        parts.append(self.reason)
        return ": ".join(parts)


class _Invalid(Exception):
    """Internal: a row or entry is invalid; the caller adds file:line."""


# --------------------------------------------------------------------------------------------
# the record


def _readonly(array: np.ndarray) -> np.ndarray:
    array = np.array(array, copy=True)
    array.setflags(write=False)
    return array


@dataclass(frozen=True, eq=False)
class Saliency:
    """Per-clip saliency annotations with the raw scores of every annotator.

    Attributes:
        clip_ids: (M,) int64, the annotated clips (indices into the data set's clip grid).
        scores: (M, A) raw annotator scores, exactly as written (int64 when the file writes
            integers, e.g. QVHighlights 0–4 and YouTube −1/0/1; float64 otherwise, e.g.
            TVSum 1.0–5.0). Clips not in ``clip_ids`` count as ``scale[0]`` from every
            annotator (QVHighlights: 0 outside ``relevant_clip_ids``).
        scale: (min, max) of the raw scale: (0, 4) QVHighlights, (1, 5) TVSum, (-1, 1) YouTube.
        clip_times: (M, 2) [start, end] seconds of each annotated clip where the clip grid is
            not uniform in time (YouTube: ``clip`` frames ÷ ``fps``, ~100-frame windows with a
            50-frame hop); None for a uniform grid, whose clip ``i`` covers
            ``[i / fps, (i + 1) / fps)`` at the data set's ``fps`` (QVHighlights, TVSum: 2 s).
    """

    clip_ids: np.ndarray
    scores: np.ndarray
    scale: tuple[float, float]
    clip_times: np.ndarray | None = None

    def __post_init__(self):
        ids = np.asarray(self.clip_ids)
        if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
            raise ValueError(f"clip_ids must be a 1-D integer array, got {ids.dtype} {ids.shape}")
        scores = np.asarray(self.scores)
        if scores.ndim != 2 or scores.shape[0] != ids.shape[0]:
            raise ValueError(f"scores must have shape (M={ids.shape[0]}, A), got {scores.shape}")
        if scores.dtype.kind in "iu":
            scores = scores.astype(np.int64)
        elif scores.dtype.kind == "f" or scores.size == 0:
            scores = scores.astype(np.float64)
        else:
            raise ValueError(f"scores must be numeric, got {scores.dtype}")
        lo, hi = self.scale
        if not lo < hi:
            raise ValueError(f"scale must be (min, max) with min < max, got {self.scale}")
        object.__setattr__(self, "clip_ids", _readonly(ids.astype(np.int64)))
        object.__setattr__(self, "scores", _readonly(scores))
        object.__setattr__(self, "scale", (lo, hi))
        if self.clip_times is not None:
            times = np.asarray(self.clip_times, dtype=np.float64)
            if times.shape != (ids.shape[0], 2):
                raise ValueError(f"clip_times must have shape ({ids.shape[0]}, 2), got {times.shape}")
            object.__setattr__(self, "clip_times", _readonly(times))

    @property
    def num_clips(self) -> int:
        """M, the number of annotated clips."""
        return int(self.clip_ids.shape[0])

    @property
    def num_annotators(self) -> int:
        """A, the number of annotators (scores per clip)."""
        return int(self.scores.shape[1])

    def dense(self, num_clips: int) -> np.ndarray:
        """(T, A) float64 raw scores on the clip grid 0..T-1; unlisted clips get ``scale[0]``.

        Annotated clips at index >= T are dropped (truncation to the feature length).
        """
        out = np.full((num_clips, self.num_annotators), float(self.scale[0]), dtype=np.float64)
        keep = self.clip_ids < num_clips
        out[self.clip_ids[keep]] = self.scores[keep]
        return out

    def __eq__(self, other):
        if not isinstance(other, Saliency):
            return NotImplemented
        if (self.clip_times is None) != (other.clip_times is None):
            return False
        return (tuple(self.scale) == tuple(other.scale)
                and np.array_equal(self.clip_ids, other.clip_ids)
                and self.scores.shape == other.scores.shape
                and np.array_equal(self.scores, other.scores)
                and (self.clip_times is None or np.array_equal(self.clip_times, other.clip_times)))

    __hash__ = None  # arrays inside: not hashable

    def __repr__(self):
        grid = "uniform grid" if self.clip_times is None else "clip_times"
        return (f"Saliency(M={self.num_clips}, A={self.num_annotators}, scale={self.scale}, "
                f"{grid})")


@dataclass(frozen=True)
class GroundingSample:
    """One query on one video, from any benchmark (see the module docstring).

    Attributes:
        qid: query id, original type kept (int or str); predictions join on it.
        vid: video id as written in the annotations (the cache key of the video).
        query: the sentence (YouTube/TVSum: the title; may be empty).
        duration: video length in seconds as annotated (int when the file writes an int).
        relevant_windows: ``[(start, end), ...]`` seconds, as written (empty for YouTube/TVSum
            and for unlabelled splits).
        saliency: per-clip raw annotator scores, or None (Charades, TACoS, Ego4D: targets come
            from the windows).
        split: "train", "val", "test", "unlisted" (YouTube/TVSum ids in no split list) or
            "unknown".
        domain: YouTube domain / TVSum category code / a custom row's ``domain``; else None.
        extras: every other key of the source kept verbatim (e.g. Ego4D ``video_uid``,
            YouTube ``fps``/``frames``/``info``/``clip``/``mturk``, TACoS
            ``video_file_stem``); JSON-native values only.
        dataset: the data set this record belongs to (one of ``DATASETS``).
        labelled: False when the source carries no labels at all (QVHighlights' blind test
            release, Ego4D's unannotated test file); ``to_row()`` then writes no
            ``relevant_windows``.
        origin: ``"file:line"`` the record came from (not compared, not written).
    """

    qid: int | str
    vid: str
    query: str
    duration: float
    relevant_windows: list[tuple[float, float]]
    saliency: Saliency | None
    split: str
    domain: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    dataset: str = "custom"
    labelled: bool = True
    origin: str | None = field(default=None, compare=False, repr=False)

    def __hash__(self):  # equal records share (dataset, qid, vid)
        return hash((self.dataset, self.qid, self.vid))

    # -- convenience -------------------------------------------------------------------------

    @property
    def video_file_stem(self) -> str:
        """Stem of the video file to decode (TACoS: ``<vid>-cam-002``; otherwise ``vid``)."""
        return str(self.extras.get("video_file_stem", self.vid))

    @property
    def query_id(self) -> str:
        """Key of the query in the feature cache: ``str(qid)`` (YouTube/TVSum: the video id)."""
        return str(self.qid)

    # -- rows --------------------------------------------------------------------------------

    def to_row(self, extras: bool = True) -> dict[str, Any]:
        """The QVHighlights-layout row of this record (what ``r2.evaluate`` reads).

        Keys in QVHighlights' order: ``qid, query, duration, vid``, then ``domain`` (if any),
        the extras (if ``extras``), ``relevant_clip_ids`` + ``saliency_scores`` (if there is
        saliency), ``relevant_windows`` (if labelled). A custom saliency scale that
        :meth:`from_row` could not infer is written as ``saliency_scale``.
        """
        row: dict[str, Any] = {"qid": self.qid, "query": self.query, "duration": self.duration,
                               "vid": self.vid}
        if self.domain is not None:
            row["domain"] = self.domain
        if extras:
            for key, value in self.extras.items():
                if key not in row and key not in _ROW_KEYS:
                    row[key] = value
        if self.saliency is not None:
            row["relevant_clip_ids"] = self.saliency.clip_ids.tolist()
            row["saliency_scores"] = self.saliency.scores.tolist()
            inferred = _infer_scale(self.dataset, self.domain, self.saliency.num_annotators)
            if tuple(self.saliency.scale) != tuple(inferred):
                row["saliency_scale"] = list(self.saliency.scale)
        if self.labelled:
            row["relevant_windows"] = [list(w) for w in self.relevant_windows]
        return row

    @classmethod
    def from_row(cls, row: Mapping[str, Any], *, dataset: str | None = None,
                 split: str | None = None, scale: tuple[float, float] | None = None,
                 origin: str | None = None) -> "GroundingSample":
        """Build a record from a QVHighlights-layout row (the inverse of :meth:`to_row`).

        ``dataset`` defaults to "custom"; ``split`` to "unknown". The saliency scale is
        ``scale`` if given, else the row's ``saliency_scale``, else the data set's, else
        inferred from ``domain`` (a YouTube domain with 1 annotator → (−1, 1); a TVSum
        category with 20 → (1, 5)), else QVHighlights' (0, 4). Raises
        :class:`AnnotationError` (without a location) when the row is invalid.
        """
        dataset = canonical_dataset(dataset) if dataset is not None else "custom"
        try:
            return _sample_from_row(row, dataset, split or "unknown", scale, origin)
        except _Invalid as exc:
            raise AnnotationError(str(exc), where=origin) from None


def samples_to_rows(samples: Iterable[GroundingSample], extras: bool = True) -> list[dict]:
    """``[s.to_row() for s in samples]``."""
    return [s.to_row(extras=extras) for s in samples]


def write_jsonl(samples: Iterable[GroundingSample], path: str | Path, extras: bool = True) -> Path:
    """Write records as a custom jsonl file (one QVHighlights-layout row per line)."""
    path = Path(path)
    lines = [json.dumps(row, ensure_ascii=False) for row in samples_to_rows(samples, extras)]
    path.write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------
# value checks shared by the parsers


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(value, what: str, *, positive: bool = False, allow_str: bool = False):
    if allow_str and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise _Invalid(f"{what} must be a number, got {value!r}") from None
    if not _is_number(value):
        raise _Invalid(f"{what} must be a number, got {_show(value)}")
    if not math.isfinite(value):
        raise _Invalid(f"{what} must be finite, got {value!r}")
    if positive and value <= 0:
        raise _Invalid(f"{what} must be > 0, got {value!r}")
    return value


def _show(value) -> str:
    text = json.dumps(value, ensure_ascii=False) if _json_native(value) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _json_native(value) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


def _window(value, what: str) -> tuple:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise _Invalid(f"{what} must be [start, end], got {_show(value)}")
    start = _number(value[0], f"{what} start")
    end = _number(value[1], f"{what} end")
    if start < 0:
        raise _Invalid(f"{what} {_show(list(value))} starts before 0")
    if start > end:
        raise _Invalid(f"{what} {_show(list(value))} has start > end")
    return (start, end)


#: a custom window may end this far past ``duration`` (rounding to a clip grid): max(s, share)
WINDOW_OVERHANG = (2.0, 0.05)


def _check_inside(windows: Sequence[tuple], duration: float) -> None:
    """Custom rows: a window that starts at or after the video's end, or ends far past it, is
    a unit or video mix-up (milliseconds or frames for seconds, another video's times), not
    data. The benchmark layouts keep theirs as published (Ego4D, Charades)."""
    limit = duration + max(WINDOW_OVERHANG[0], WINDOW_OVERHANG[1] * duration)
    for i, (start, end) in enumerate(windows):
        if start >= duration or end > limit:
            where = "starts at or after" if start >= duration else "ends well after"
            raise _Invalid(f"relevant_windows[{i}] {_show([start, end])} {where} the duration {duration:g} s "
                           "(windows and duration are in seconds of the same video)")


def _infer_scale(dataset: str, domain: str | None, num_annotators: int) -> tuple:
    if dataset in SALIENCY_SCALES:
        return SALIENCY_SCALES[dataset]
    if isinstance(domain, str):
        if domain.lower() in YOUTUBE_DOMAINS and num_annotators == 1:
            return SALIENCY_SCALES["youtube"]
        if domain.upper() in TVSUM_CATEGORIES and num_annotators == 20:
            return SALIENCY_SCALES["tvsum"]
    return _DEFAULT_SCALE


def _scale_value(value, what: str) -> tuple:
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(_is_number(v) and math.isfinite(v) for v in value) or value[0] >= value[1]):
        raise _Invalid(f"{what} must be [min, max] with min < max, got {_show(value)}")
    return (value[0], value[1])


def _sample_from_row(row, dataset: str, split: str, scale, origin) -> GroundingSample:
    if not isinstance(row, Mapping):
        raise _Invalid(f"expected a JSON object (one row), got {type(row).__name__}")
    for key in ("qid", "vid", "query", "duration"):
        if key not in row:
            raise _Invalid(f"missing key {key!r} (a row needs qid, vid, query, duration)")
    qid = row["qid"]
    if isinstance(qid, bool) or not isinstance(qid, (int, str)) or qid == "":
        raise _Invalid(f"'qid' must be an int or a non-empty string, got {_show(qid)}")
    vid = row["vid"]
    if not isinstance(vid, str) or not vid:
        raise _Invalid(f"'vid' must be a non-empty string, got {_show(vid)}")
    query = row["query"]
    if not isinstance(query, str):
        raise _Invalid(f"'query' must be a string, got {_show(query)}")
    duration = _number(row["duration"], "'duration'", positive=True)
    domain = row.get("domain")
    if domain is not None and not isinstance(domain, str):
        raise _Invalid(f"'domain' must be a string, got {_show(domain)}")

    labelled = False
    windows: list[tuple] = []
    if "relevant_windows" in row:
        labelled = True
        raw = row["relevant_windows"]
        if raw is None:
            raw = []
        if not isinstance(raw, list):
            raise _Invalid(f"'relevant_windows' must be a list of [start, end], got {_show(raw)}")
        windows = [_window(w, f"relevant_windows[{i}]") for i, w in enumerate(raw)]
        if dataset == "custom":
            _check_inside(windows, duration)

    ids = row.get("relevant_clip_ids")
    scores = row.get("saliency_scores")
    saliency = None
    if (ids is None) != (scores is None):
        have, miss = (("relevant_clip_ids", "saliency_scores") if scores is None
                      else ("saliency_scores", "relevant_clip_ids"))
        raise _Invalid(f"{have!r} without {miss!r} (saliency needs both)")
    if ids is not None:
        labelled = True
        saliency = _saliency_from_lists(ids, scores)
        if scale is None and "saliency_scale" in row:
            scale = _scale_value(row["saliency_scale"], "'saliency_scale'")
        if scale is None:
            scale = _infer_scale(dataset, domain, saliency[1].shape[1])
        lo, hi = scale
        values = saliency[1]
        if values.size and (values.min() < lo or values.max() > hi):
            bad = values[(values < lo) | (values > hi)][0]
            raise _Invalid(f"saliency score {bad.item()!r} is outside the raw scale "
                           f"[{lo}, {hi}] of {dataset}")
        clip_times = None
        if tuple(scale) == SALIENCY_SCALES["youtube"] and "clip" in row and "fps" in row:
            # YouTube rows written by to_row(): clip frames ÷ fps give the clip times back
            clip_times = _youtube_clip_times(row["clip"], row["fps"], len(saliency[0]))
        saliency = Saliency(saliency[0], saliency[1], scale, clip_times)

    extras = {k: v for k, v in row.items() if k not in _ROW_KEYS}
    if dataset == "tacos" and "video_file_stem" not in extras:
        extras["video_file_stem"] = (vid if vid.endswith(_TACOS_CAMERA_SUFFIX)
                                     else vid + _TACOS_CAMERA_SUFFIX)
    return GroundingSample(qid=qid, vid=vid, query=query, duration=duration,
                           relevant_windows=windows, saliency=saliency, split=split,
                           domain=domain, extras=extras, dataset=dataset, labelled=labelled,
                           origin=origin)


def _saliency_from_lists(ids, scores) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(ids, list):
        raise _Invalid(f"'relevant_clip_ids' must be a list of clip indices, got {_show(ids)}")
    if not isinstance(scores, list):
        raise _Invalid(f"'saliency_scores' must be a list of per-clip score lists, got "
                       f"{_show(scores)}")
    if len(ids) != len(scores):
        raise _Invalid(f"'relevant_clip_ids' has {len(ids)} entries but 'saliency_scores' has "
                       f"{len(scores)}")
    for i, c in enumerate(ids):
        if isinstance(c, bool) or not isinstance(c, int) or c < 0:
            raise _Invalid(f"relevant_clip_ids[{i}] must be an integer >= 0, got {_show(c)}")
    if len(set(ids)) != len(ids):
        dup = next(c for i, c in enumerate(ids) if c in ids[:i])
        raise _Invalid(f"'relevant_clip_ids' lists clip {dup} twice")
    width = None
    for i, s in enumerate(scores):
        if not isinstance(s, list) or not s:
            raise _Invalid(f"saliency_scores[{i}] must be a non-empty list of annotator scores "
                           f"(e.g. [2, 3, 4]), got {_show(s)}")
        if width is None:
            width = len(s)
        elif len(s) != width:
            raise _Invalid(f"saliency_scores[{i}] has {len(s)} scores but earlier rows have "
                           f"{width} (one score per annotator)")
        for v in s:
            if not _is_number(v) or not math.isfinite(v):
                raise _Invalid(f"saliency_scores[{i}] must hold finite numbers, got {_show(s)}")
    ids_arr = np.asarray(ids, dtype=np.int64)
    if scores and all(isinstance(v, int) for s in scores for v in s):
        sc = np.asarray(scores, dtype=np.int64)
    else:
        sc = np.asarray(scores, dtype=np.float64).reshape(len(scores), width or 1)
    return ids_arr, sc


def _youtube_clip_times(clip, fps, count: int) -> np.ndarray:
    fps = _number(fps, "'fps'", positive=True)
    if not isinstance(clip, list) or len(clip) != count:
        n = len(clip) if isinstance(clip, list) else _show(clip)
        raise _Invalid(f"'clip' has {n} entries but there are {count} labels")
    frames = [_window(c, f"clip[{i}]") for i, c in enumerate(clip)]
    return np.asarray(frames, dtype=np.float64).reshape(-1, 2) / fps


# --------------------------------------------------------------------------------------------
# reading files


def canonical_dataset(name: str) -> str:
    """Normalise a data set name (``"Charades-STA"`` → ``"charades"``); error if unknown."""
    if not isinstance(name, str):
        raise AnnotationError(f"dataset must be a string, got {name!r}")
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise AnnotationError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return key


def _read_text(path: Path) -> str:
    if not path.exists():
        raise AnnotationError("no such file", path)
    if path.is_dir():
        raise AnnotationError("is a directory, expected an annotation file", path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise AnnotationError("not UTF-8 text", path, line) from None


class _Lines:
    """Maps character offsets of a text to 1-based line numbers."""

    def __init__(self, text: str):
        self.text = text
        self._starts = None
        self._cursor = 0

    def line_of(self, offset: int) -> int:
        if self._starts is None:
            self._starts = [m.end() for m in re.finditer("\n", self.text)]
        return bisect.bisect_right(self._starts, offset) + 1

    def find(self, key: str, default: int | None = None) -> int | None:
        """Line of the next JSON string ``key`` after the previous match (file order)."""
        needle = json.dumps(key, ensure_ascii=False)
        at = self.text.find(needle, self._cursor)
        if at < 0:
            at = self.text.find(needle)
            if at < 0:
                return default
        self._cursor = at + len(needle)
        return self.line_of(at)


def split_from_name(path: Path) -> str | None:
    """The split a file's name says (``highlight_val_release.jsonl``: val; valid/validation: val),
    or None."""
    match = _SPLIT_IN_NAME.search(path.stem.lower())
    if not match:
        return None
    word = match.group(1)
    return {"valid": "val", "validation": "val"}.get(word, word)


def _read_rows(path: Path) -> list:
    """The rows of a jsonl file, read by ``r2.evaluate.read_jsonl`` (one reader for every room).

    Strict as the reference evaluators: every line one JSON object, a blank line is an error,
    a missing final newline is fine; errors name file:line. Row i is on line i + 1.
    """
    from r2.evaluate import read_jsonl  # numpy-free, cheap

    return read_jsonl(path, error=AnnotationError)


# --------------------------------------------------------------------------------------------
# layout and data set detection


def _parse_document(text: str, path: Path):
    """The whole text as one JSON value, or None when it is not one (e.g. jsonl)."""
    stripped = text.lstrip()
    if not stripped or stripped[0] not in "{[":
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def _layout_of_document(doc, path: Path) -> str:
    if isinstance(doc, list):
        if doc and all(isinstance(r, dict) and "qid" in r for r in doc[:50]):
            return "json_rows"
        raise AnnotationError("a JSON array, but not of rows with a 'qid' (expected a custom data "
                              "set's rows)", path)
    if not isinstance(doc, dict):
        raise AnnotationError(f"unrecognised annotation layout (a JSON {type(doc).__name__})", path)
    if "qid" in doc:
        return "jsonl"  # a jsonl file with a single row
    if isinstance(doc.get("videos"), list):
        return "ego4d_nlq"
    values = [v for v in list(doc.values())[:50]]
    if values and all(isinstance(v, dict) for v in values):
        keys = set().union(*(v.keys() for v in values))
        if {"timestamps", "sentences"} <= keys:
            return "tan2d"
        if {"anno", "title"} <= keys:
            return "tvsum_anno"
        if {"match", "clip"} <= keys:
            return "youtube_anno"
    raise AnnotationError("unrecognised annotation layout: a JSON object that is none of "
                          "youtube_anno.json, tvsum_anno.json, a 2D-TAN TACoS json or an official "
                          "Ego4D NLQ json", path)


_TALL_LINE = re.compile(r"^\S+\s+[-+0-9.eE]+\s+[-+0-9.eE]+\s*##")


def _sniff(text: str, path: Path):
    """(layout, parsed document or None)."""
    if path.suffix.lower() == ".csv":
        raise AnnotationError("a .csv file is not an annotation file (for Charades-STA this is the "
                              "lengths table: pass it as lengths=... with the TALL .txt file)", path)
    doc = _parse_document(text, path)
    if doc is not None:
        return _layout_of_document(doc, path), doc
    first = next((l for l in text.split("\n") if l.strip()), "")
    if not first:
        raise AnnotationError("empty annotation file", path)
    if first.lstrip().startswith("{"):
        return "jsonl", None
    if _TALL_LINE.match(first) or "##" in first:
        return "tall", None
    raise AnnotationError("unrecognised annotation layout (neither JSON, jsonl nor TALL "
                          "'vid start end##sentence' text)", path, 1)


def detect_layout(path: str | Path) -> str:
    """The layout of an annotation file (a key of ``LAYOUTS``), from its content."""
    path = Path(path)
    return _sniff(_read_text(path), path)[0]


def _row_kind(row) -> str:
    if not isinstance(row, dict):
        return "custom"
    qid, vid = row.get("qid"), row.get("vid")
    if not isinstance(vid, str) or isinstance(qid, bool):
        return "custom"
    scores = row.get("saliency_scores")
    width = None
    if isinstance(scores, list) and scores and isinstance(scores[0], list):
        width = len(scores[0])
    domain = row.get("domain")
    if isinstance(domain, str):
        if domain.lower() in YOUTUBE_DOMAINS and width == 1:
            return "youtube"
        if domain.upper() in TVSUM_CATEGORIES and width == 20:
            return "tvsum"
    if "video_uid" in row or (isinstance(qid, str) and _EGO_QID.match(qid) and _UUID.match(vid)):
        return "ego4d"
    if isinstance(qid, int) and _QVH_VID.match(vid) and width in (None, 3):
        return "qvhighlights"
    if (isinstance(qid, str) and qid.startswith(vid + "_") and qid[len(vid) + 1:].isdigit()
            and _TACOS_VID.match(vid.removesuffix(_TACOS_CAMERA_SUFFIX))):
        return "tacos"
    windows = row.get("relevant_windows")
    if (isinstance(qid, int) and _CHARADES_VID.match(vid) and width is None
            and isinstance(windows, list) and len(windows) == 1):
        return "charades"
    return "custom"


def _dataset_of_rows(rows: list) -> str:
    kinds = {_row_kind(r) for r in rows}
    return kinds.pop() if len(kinds) == 1 else "custom"


def _detect(layout: str, text: str, doc, path: Path, sample_rows: int = 200) -> str:
    implied = LAYOUTS[layout]
    if implied is not None:
        return implied
    if layout == "json_rows":
        return _dataset_of_rows(doc[:sample_rows])
    rows = []
    for number, line in enumerate(text.split("\n"), start=1):
        if len(rows) >= sample_rows:
            break
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # reported with its line by the parser
    return _dataset_of_rows(rows)


def detect_dataset(path: str | Path) -> str:
    """The benchmark of an annotation file, from its content (not its name).

    Returns one of ``qvhighlights, charades, tacos, ego4d, youtube, tvsum, custom``. Original
    layouts are recognised by structure (TALL text → charades, 2D-TAN json → tacos, nested
    NLQ json → ego4d, ``youtube_anno.json`` → youtube, ``tvsum_anno.json`` → tvsum). For rows
    (jsonl), the first 200 rows must all look like one benchmark: QVHighlights (int qid, vid
    ``<youtube id>_<start>_<end>``, 3 annotators when scored), Charades (int qid, 5-character
    Charades id), TACoS (qid ``<vid>_<i>``, vid ``s<n>-d<n>``), Ego4D (``video_uid`` or qid
    ``train<n>``/``val<n>`` with a uuid vid), YouTube/TVSum rows written by ``to_row()``
    (domain + 1 or 20 annotators); anything else is ``custom``.
    """
    path = Path(path)
    text = _read_text(path)
    layout, doc = _sniff(text, path)
    return _detect(layout, text, doc, path)


# --------------------------------------------------------------------------------------------
# parsers


def _check_options(layout: str, options: dict, allowed: tuple[str, ...], path: Path):
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        valid = ", ".join(allowed) if allowed else "none"
        raise AnnotationError(f"option(s) {', '.join(unknown)} do not apply to "
                              f"{_LAYOUT_TEXT[layout]} (valid options: {valid})", path)


def _parse_rows(items, path: Path, dataset: str, split: str | None, line_numbers: bool):
    samples = []
    seen: dict = {}
    base_split = split or split_from_name(path)
    for number, row in items:
        origin = f"{path}:{number}" if line_numbers else f"{path}: item {number}"
        where = (path, number, None) if line_numbers else (path, None, f"item {number}")
        sample_split = base_split
        if sample_split is None:
            qid = row.get("qid") if isinstance(row, dict) else None
            match = _EGO_QID.match(qid) if dataset == "ego4d" and isinstance(qid, str) else None
            sample_split = match.group(1) if match else "unknown"
        try:
            sample = _sample_from_row(row, dataset, sample_split, None, origin)
        except _Invalid as exc:
            raise AnnotationError(str(exc), *where) from None
        key = (type(sample.qid).__name__, sample.qid)
        if key in seen:
            raise AnnotationError(f"duplicate qid {sample.qid!r} (first at line {seen[key]})",
                                  *where)
        seen[key] = number
        samples.append(sample)
    return samples


def _read_lengths(source, txt_path: Path) -> dict[str, float]:
    if isinstance(source, Mapping):
        lengths = {}
        for key, value in source.items():
            if not _is_number(value) or not math.isfinite(value) or value <= 0:
                raise AnnotationError(f"lengths[{key!r}] must be a positive number, got "
                                      f"{value!r}", txt_path)
            lengths[str(key)] = float(value)
        return lengths
    if source is None:
        source = _find_lengths_csv(txt_path)
    csv_path = Path(source)
    text = _read_text(csv_path)
    reader = csv.reader(text.splitlines())
    try:
        header = next(reader)
    except StopIteration:
        raise AnnotationError("empty lengths csv", csv_path) from None
    header = [h.strip() for h in header]
    if "id" not in header or "length" not in header:
        raise AnnotationError(f"the lengths csv needs columns 'id' and 'length', found "
                              f"{', '.join(header)}", csv_path, 1)
    col_id, col_len = header.index("id"), header.index("length")
    lengths = {}
    for record in reader:
        line = reader.line_num
        if not record or not any(f.strip() for f in record):
            continue
        if len(record) <= max(col_id, col_len):
            raise AnnotationError(f"expected {len(header)} columns, got {len(record)}", csv_path,
                                  line)
        try:
            value = float(record[col_len])
        except ValueError:
            raise AnnotationError(f"'length' must be a number, got {record[col_len]!r}",
                                  csv_path, line) from None
        if not math.isfinite(value) or value <= 0:
            raise AnnotationError(f"'length' must be > 0, got {record[col_len]!r}", csv_path, line)
        lengths[record[col_id].strip()] = value
    return lengths


def _find_lengths_csv(txt_path: Path) -> Path:
    folder = txt_path.parent
    split = split_from_name(txt_path)
    candidates = []
    if split:
        candidates.append(folder / f"Charades_v1_{split}.csv")
    for pattern in ("*length*.csv", "Charades_v1*.csv"):
        found = sorted(folder.glob(pattern))
        if len(found) == 1:
            candidates.append(found[0])
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    name = f"Charades_v1_{split}.csv" if split else "Charades_v1_<split>.csv"
    raise AnnotationError(f"Charades-STA TALL text has no durations: put {name} (from AI2's "
                          "Charades.zip; column 'length') next to this file, or pass "
                          "lengths=PATH or a {video id: seconds} mapping to load_annotations",
                          txt_path)


def _parse_tall(text: str, path: Path, split: str | None, options: dict):
    """Charades-STA TALL text: ``<vid> <start> <end>##<sentence>`` per line.

    The conversion of R²-Tuning's ``charades_*.jsonl`` (datasets.md §4): duration = csv
    ``length``; end clipped to the duration; lines with start > end dropped; qid counting from
    ``qid_start`` over the kept lines (R²-Tuning's test file starts at 12404, after the 12404
    kept train queries: the default for a file named ``charades_sta_test*.txt``).
    """
    _check_options("tall", options, ("lengths", "qid_start", "reversed_windows"), path)
    lengths = _read_lengths(options.get("lengths"), path)
    default_start = 12404 if path.name.lower().startswith("charades_sta_test") else 0
    qid = options.get("qid_start", default_start)
    if isinstance(qid, bool) or not isinstance(qid, int):
        raise AnnotationError(f"qid_start must be an int, got {qid!r}", path)
    on_reversed = options.get("reversed_windows", "drop")
    if on_reversed not in ("drop", "error"):
        raise AnnotationError(f"reversed_windows must be 'drop' or 'error', got {on_reversed!r}",
                              path)
    split = split or split_from_name(path) or "unknown"
    samples, dropped = [], []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        head, sep, sentence = line.partition("##")
        if not sep:
            raise AnnotationError("missing '##' between the times and the sentence (expected "
                                  "'<vid> <start> <end>##<sentence>')", path, number)
        fields = head.split()
        if len(fields) != 3:
            raise AnnotationError(f"expected '<vid> <start> <end>' before '##', got {head!r}",
                                  path, number)
        vid = fields[0]
        try:
            start, end = float(fields[1]), float(fields[2])
        except ValueError:
            raise AnnotationError(f"times must be numbers, got {fields[1]!r} {fields[2]!r}",
                                  path, number) from None
        if not (math.isfinite(start) and math.isfinite(end)):
            raise AnnotationError("times must be finite", path, number)
        if start < 0:
            raise AnnotationError(f"start {fields[1]} is before 0", path, number)
        if vid not in lengths:
            raise AnnotationError(f"video {vid!r} has no length in the lengths table", path, number)
        duration = lengths[vid]
        end_clipped = min(end, duration)
        if start > end_clipped:
            why = "start > end" if start > end else "starts after the video ends"
            if on_reversed == "error":
                raise AnnotationError(f"window [{fields[1]}, {fields[2]}] {why}", path, number)
            dropped.append(number)
            continue
        samples.append(GroundingSample(
            qid=qid, vid=vid, query=sentence.strip(), duration=duration,
            relevant_windows=[(start, end_clipped)], saliency=None, split=split,
            dataset="charades", origin=f"{path}:{number}"))
        qid += 1
    if dropped:
        log.info("%s: dropped %d line(s) whose start is after the end (lines %s), as the "
                 "R²-Tuning conversion does", path, len(dropped),
                 ", ".join(map(str, dropped[:10])))
    return samples


def _parse_tan2d(doc: dict, text: str, path: Path, split: str | None, options: dict):
    """TACoS 2D-TAN json: ``{"<vid>.avi": {timestamps, sentences, fps, num_frames}}``.

    The conversion of R²-Tuning's TACoS jsonl (datasets.md §5): ``qid = "<vid>_<i>"``,
    times = frame ÷ fps, duration = num_frames ÷ fps, end clipped to the duration.
    """
    _check_options("tan2d", options, (), path)
    split = split or split_from_name(path) or "unknown"
    lines = _Lines(text)
    samples = []
    for key, entry in doc.items():
        line = lines.find(key)
        where = f"video {key!r}"
        try:
            if not isinstance(entry, dict):
                raise _Invalid(f"expected an object, got {_show(entry)}")
            for name in ("timestamps", "sentences", "fps", "num_frames"):
                if name not in entry:
                    raise _Invalid(f"missing key {name!r}")
            fps = _number(entry["fps"], "'fps'", positive=True)
            num_frames = _number(entry["num_frames"], "'num_frames'", positive=True)
            stamps, sentences = entry["timestamps"], entry["sentences"]
            if not isinstance(stamps, list) or not isinstance(sentences, list):
                raise _Invalid("'timestamps' and 'sentences' must be lists")
            if len(stamps) != len(sentences):
                raise _Invalid(f"{len(stamps)} timestamps but {len(sentences)} sentences")
            vid = key[:-4] if key.lower().endswith(".avi") else key
            duration = num_frames / fps
            for i, (stamp, sentence) in enumerate(zip(stamps, sentences)):
                if not isinstance(sentence, str):
                    raise _Invalid(f"sentences[{i}] must be a string, got {_show(sentence)}")
                start_f, end_f = _window(stamp, f"timestamps[{i}]")
                samples.append(GroundingSample(
                    qid=f"{vid}_{i}", vid=vid, query=sentence, duration=duration,
                    relevant_windows=[(start_f / fps, min(end_f / fps, duration))],
                    saliency=None, split=split,
                    extras={"video_file_stem": vid + _TACOS_CAMERA_SUFFIX},
                    dataset="tacos", origin=f"{path}:{line}"))
        except _Invalid as exc:
            raise AnnotationError(str(exc), path, line, where) from None
    return samples


def _parse_ego4d(doc: dict, text: str, path: Path, split: str | None, options: dict):
    """Official Ego4D NLQ json (videos → clips → annotations → language_queries).

    The conversion of R²-Tuning's ``nlq_*.jsonl`` (datasets.md §6): one record per language
    query that has a question (entries without ``query`` are skipped), ``vid`` = ``clip_uid``,
    ``duration`` = ``video_end_sec − video_start_sec`` (the clip's length), window =
    ``[clip_start_sec, clip_end_sec]`` unchanged, qid = ``<prefix><n>`` counting kept queries
    (prefix = ``qid_prefix`` option, else the split: ``train``/``val``/``test``, else
    ``nlq``). ``extras`` keeps ``video_uid``, ``clip_uid``, ``annotation_uid``, ``query_idx``
    (position in ``language_queries``: the official evaluator's key), ``video_start_sec``,
    ``video_end_sec``. Queries without times (the unannotated test file) are unlabelled.
    """
    _check_options("ego4d_nlq", options, ("qid_prefix",), path)
    split = split or split_from_name(path) or "unknown"
    prefix = options.get("qid_prefix", split if split in ("train", "val", "test") else "nlq")
    lines = _Lines(text)
    samples, skipped = [], 0
    for v, video in enumerate(doc["videos"]):
        where = f"videos[{v}]"
        line = None
        try:
            if not isinstance(video, dict):
                raise _Invalid(f"expected an object, got {_show(video)}")
            video_uid = video.get("video_uid")
            if not isinstance(video_uid, str) or not video_uid:
                raise _Invalid("missing or invalid 'video_uid'")
            line = lines.find(video_uid, line)
            clips = video.get("clips")
            if not isinstance(clips, list):
                raise _Invalid("'clips' must be a list")
            for c, clip in enumerate(clips):
                where = f"videos[{v}].clips[{c}]"
                if not isinstance(clip, dict):
                    raise _Invalid(f"expected an object, got {_show(clip)}")
                clip_uid = clip.get("clip_uid")
                if not isinstance(clip_uid, str) or not clip_uid:
                    raise _Invalid("missing or invalid 'clip_uid'")
                line = lines.find(clip_uid, line)
                for name in ("video_start_sec", "video_end_sec"):
                    if name not in clip:
                        raise _Invalid(f"missing key {name!r}")
                v_start = _number(clip["video_start_sec"], "'video_start_sec'")
                v_end = _number(clip["video_end_sec"], "'video_end_sec'")
                duration = v_end - v_start
                if duration <= 0:
                    raise _Invalid(f"video_end_sec {v_end} is not after video_start_sec {v_start}")
                annotations = clip.get("annotations", [])
                if not isinstance(annotations, list):
                    raise _Invalid("'annotations' must be a list")
                for a, annotation in enumerate(annotations):
                    where = f"videos[{v}].clips[{c}].annotations[{a}]"
                    if not isinstance(annotation, dict):
                        raise _Invalid(f"expected an object, got {_show(annotation)}")
                    queries = annotation.get("language_queries", [])
                    if not isinstance(queries, list):
                        raise _Invalid("'language_queries' must be a list")
                    for j, entry in enumerate(queries):
                        where = f"videos[{v}].clips[{c}].annotations[{a}].language_queries[{j}]"
                        if not isinstance(entry, dict):
                            raise _Invalid(f"expected an object, got {_show(entry)}")
                        query = entry.get("query")
                        if query is None or (isinstance(query, str) and not query.strip()):
                            skipped += 1
                            continue
                        if not isinstance(query, str):
                            raise _Invalid(f"'query' must be a string, got {_show(query)}")
                        has = ("clip_start_sec" in entry, "clip_end_sec" in entry)
                        if has[0] != has[1]:
                            raise _Invalid("'clip_start_sec' and 'clip_end_sec' come together")
                        windows = []
                        if has[0]:
                            windows = [_window([entry["clip_start_sec"], entry["clip_end_sec"]],
                                               "window [clip_start_sec, clip_end_sec]")]
                        extras = {"video_uid": video_uid, "clip_uid": clip_uid,
                                  "annotation_uid": annotation.get("annotation_uid"),
                                  "query_idx": j, "video_start_sec": v_start,
                                  "video_end_sec": v_end}
                        samples.append(GroundingSample(
                            qid=f"{prefix}{len(samples)}", vid=clip_uid, query=query,
                            duration=duration, relevant_windows=windows, saliency=None,
                            split=split, extras=extras, dataset="ego4d", labelled=has[0],
                            origin=f"{path}:{line}"))
        except _Invalid as exc:
            raise AnnotationError(str(exc), path, line, where) from None
    if skipped:
        log.info("%s: skipped %d language queries without a question", path, skipped)
    return samples


def _parse_youtube(doc: dict, text: str, path: Path, split: str | None, options: dict):
    """YouTube Highlights ``youtube_anno.json`` (UMT's file, R²-Tuning's input).

    One record per video: ``qid`` = ``vid`` = YouTube id, ``query`` = ``info[5]`` (the title;
    None → "") or, with ``query_source="domain"``, the domain word; ``duration`` = ``frames`` ÷
    ``fps``; saliency = every annotated clip with its raw ``match`` label (−1/0/1), clip times
    = ``clip`` frames ÷ ``fps``. ``extras``: fps, frames (string, as written), info, clip,
    mturk (when present).
    """
    _check_options("youtube_anno", options, ("query_source",), path)
    source = options.get("query_source", "title")
    if source not in ("title", "domain"):
        raise AnnotationError(f"query_source must be 'title' or 'domain', got {source!r}", path)
    lines = _Lines(text)
    samples = []
    for vid, entry in doc.items():
        line = lines.find(vid)
        try:
            if not isinstance(entry, dict):
                raise _Invalid(f"expected an object, got {_show(entry)}")
            for name in ("fps", "frames", "domain", "info", "clip", "match"):
                if name not in entry:
                    raise _Invalid(f"missing key {name!r}")
            fps = _number(entry["fps"], "'fps'", positive=True)
            frames = _number(entry["frames"], "'frames'", positive=True, allow_str=True)
            domain = entry["domain"]
            if not isinstance(domain, str) or not domain:
                raise _Invalid(f"'domain' must be a non-empty string, got {_show(domain)}")
            info = entry["info"]
            if not isinstance(info, list) or len(info) < 6:
                raise _Invalid("'info' must be the 8-element info.json list (title at index 5)")
            title = info[5]
            if title is None:
                title = ""
            if not isinstance(title, str):
                raise _Invalid(f"info[5] (the title) must be a string, got {_show(title)}")
            match = entry["match"]
            if not isinstance(match, list) or not match:
                raise _Invalid("'match' must be a non-empty list of labels")
            for i, m in enumerate(match):
                if isinstance(m, bool) or m not in (-1, 0, 1):
                    raise _Invalid(f"match[{i}] must be -1, 0 or 1, got {_show(m)}")
            clip = entry["clip"]
            times = _youtube_clip_times(clip, fps, len(match))
            if "mturk" in entry and entry["mturk"] is not None:
                mturk = entry["mturk"]
                if not isinstance(mturk, list) or len(mturk) != len(match):
                    n = len(mturk) if isinstance(mturk, list) else _show(mturk)
                    raise _Invalid(f"'mturk' has {n} entries but 'match' has {len(match)}")
            scores = np.asarray([[int(m)] for m in match], dtype=np.int64)
            saliency = Saliency(np.arange(len(match)), scores, SALIENCY_SCALES["youtube"], times)
            extras = {k: entry[k] for k in ("fps", "frames", "info", "clip", "mturk") if k in entry}
            extras.update({k: v for k, v in entry.items()
                           if k not in extras and k not in ("domain", "match")})
            samples.append(GroundingSample(
                qid=vid, vid=vid, query=title if source == "title" else domain,
                duration=frames / fps, relevant_windows=[], saliency=saliency, split="unknown",
                domain=domain, extras=extras, dataset="youtube", origin=f"{path}:{line}"))
        except _Invalid as exc:
            raise AnnotationError(str(exc), path, line, f"video {vid!r}") from None
    return samples


def _parse_tvsum(doc: dict, text: str, path: Path, split: str | None, options: dict):
    """TVSum ``tvsum_anno.json`` (UMT's file, R²-Tuning's input).

    One record per video: ``qid`` = ``vid`` = YouTube id, ``query`` = ``title``, ``domain`` =
    category code, ``duration`` = ``frames`` ÷ ``fps``, saliency = the T rows of ``anno``
    (one per 2-s clip; 20 raw 1–5 scores each) on the uniform 2-s grid. ``extras``: fps,
    frames (string, as written), url, length.
    """
    _check_options("tvsum_anno", options, (), path)
    lines = _Lines(text)
    samples = []
    for vid, entry in doc.items():
        line = lines.find(vid)
        try:
            if not isinstance(entry, dict):
                raise _Invalid(f"expected an object, got {_show(entry)}")
            for name in ("fps", "frames", "domain", "title", "anno"):
                if name not in entry:
                    raise _Invalid(f"missing key {name!r}")
            fps = _number(entry["fps"], "'fps'", positive=True)
            frames = _number(entry["frames"], "'frames'", positive=True, allow_str=True)
            domain, title = entry["domain"], entry["title"]
            if not isinstance(domain, str) or not domain:
                raise _Invalid(f"'domain' must be a non-empty string, got {_show(domain)}")
            if not isinstance(title, str):
                raise _Invalid(f"'title' must be a string, got {_show(title)}")
            anno = entry["anno"]
            if not isinstance(anno, list) or not anno:
                raise _Invalid("'anno' must be a non-empty list of per-clip score rows")
            ids, scores = _saliency_from_lists(list(range(len(anno))), anno)
            lo, hi = SALIENCY_SCALES["tvsum"]
            if scores.min() < lo or scores.max() > hi:
                bad = scores[(scores < lo) | (scores > hi)][0]
                raise _Invalid(f"anno score {bad.item()!r} is outside TVSum's 1–5 scale")
            saliency = Saliency(ids, scores.astype(np.float64), (lo, hi), None)
            extras = {k: v for k, v in entry.items() if k not in ("domain", "title", "anno")}
            samples.append(GroundingSample(
                qid=vid, vid=vid, query=title, duration=frames / fps, relevant_windows=[],
                saliency=saliency, split="unknown", domain=domain, extras=extras,
                dataset="tvsum", origin=f"{path}:{line}"))
        except _Invalid as exc:
            raise AnnotationError(str(exc).replace("saliency_scores", "anno"), path, line,
                                  f"video {vid!r}") from None
    return samples


# --------------------------------------------------------------------------------------------
# splits and domains of YouTube / TVSum


def _split_lists(dataset: str):
    return YOUTUBE_SPLITS if dataset == "youtube" else TVSUM_SPLITS


def _canonical_domain(dataset: str, domain: str, path: Path) -> str:
    if dataset == "youtube":
        valid = YOUTUBE_DOMAINS
        key = domain.strip().lower()
    elif dataset == "tvsum":
        valid = TVSUM_CATEGORIES
        key = domain.strip().upper()
    else:
        return domain
    if key not in valid:
        raise AnnotationError(f"unknown {dataset} domain {domain!r}; choose one of "
                              f"{', '.join(valid)}", path)
    return key


def _label_highlight_splits(samples: list[GroundingSample], dataset: str) -> list:
    lists = _split_lists(dataset)
    membership = {}
    for dom, parts in lists.items():
        for part, ids in parts.items():
            for vid in ids:
                membership.setdefault(vid, {})[dom] = part
    position = {(dom, part, vid): i for dom, parts in lists.items()
                for part, ids in parts.items() for i, vid in enumerate(ids)}
    out, groups = [], {}  # groups: (domain, part) -> slots of ``out`` it holds, in file order
    for s in samples:
        by_domain = membership.get(s.vid, {})
        key = (s.domain or "").lower() if dataset == "youtube" else (s.domain or "").upper()
        dom = key if key in by_domain else next(iter(by_domain), None)
        part = by_domain[dom] if dom is not None else "unlisted"
        if dom is not None:
            groups.setdefault((dom, part), []).append(len(out))
        out.append(_replace(s, split=part))
    # each domain's train and val videos in the order of its split list, in the slots they
    # held: the reference's data set order, in which its evaluation sums the per-video APs
    for (dom, part), slots in groups.items():
        ordered = sorted((out[i] for i in slots), key=lambda r: position.get((dom, part, r.vid), len(position)))
        for i, r in zip(slots, ordered):
            out[i] = r
    return out


def _replace(sample: GroundingSample, **changes) -> GroundingSample:
    return dataclasses.replace(sample, **changes)  # keeps ``origin`` (an init field)


# --------------------------------------------------------------------------------------------
# the entry point


def select_domain(samples: Sequence[GroundingSample], dataset: str, domain: str,
                  path: str | Path | None = None) -> list[GroundingSample]:
    """The records of one YouTube domain or TVSum category (any case) among ``samples`` (of
    ``dataset``; for other data sets, those whose ``domain`` equals it), as
    ``load_annotations(..., domain=)`` keeps them: an AnnotationError (naming ``path``) for an
    unknown domain or one no record has."""
    if not isinstance(domain, str):
        raise AnnotationError(f"domain must be a string, got {domain!r}", path)
    dataset = canonical_dataset(dataset)
    wanted = _canonical_domain(dataset, domain, path)
    norm = (str.lower if dataset == "youtube" else str.upper if dataset == "tvsum"
            else (lambda d: d))
    kept = [s for s in samples if s.domain is not None and norm(s.domain) == wanted]
    if not kept:
        present = sorted({s.domain for s in samples if s.domain is not None})
        raise AnnotationError(f"no record with domain {domain!r} (domains in the file: "
                              f"{', '.join(present) or 'none'})", path)
    return kept


def load_annotations(path: str | Path, dataset: str | None = None, domain: str | None = None,
                     split: str | None = None, **layout_options) -> list[GroundingSample]:
    """Parse an annotation file of any supported layout into records.

    Args:
        path: the file (layout detected from its content, see ``LAYOUTS``).
        dataset: one of ``DATASETS`` (aliases such as "charades-sta" accepted); detected with
            :func:`detect_dataset` when None. Original layouts imply their data set; rows
            (jsonl) may be given any data set (e.g. a subset of Charades as "charades", or
            "custom").
        domain: YouTube domain (dog, gymnastics, parkour, skating, skiing, surfing) or TVSum
            category (BK, BT, DS, FM, GA, MS, PK, PR, VT, VU) to keep; for other rows, keeps
            the rows whose ``domain`` equals it.
        split: YouTube/TVSum: "train" or "val" keeps that R²-Tuning/UMT id list (None keeps
            every video, labelled "train"/"val"/"unlisted"). Other data sets: the label given
            to every record (default: from the file name, e.g. ``charades_test.jsonl`` →
            "test"; Ego4D rows from their qid; else "unknown"). "all" is None, for any data set.
        **layout_options: TALL ``lengths`` (csv path or {vid: seconds}; default: a
            ``Charades_v1_<split>.csv`` or single ``*length*.csv`` next to the file),
            ``qid_start``, ``reversed_windows`` ("drop" | "error"); Ego4D official
            ``qid_prefix``; YouTube ``query_source`` ("title" | "domain").

    Raises:
        AnnotationError: unreadable or malformed file (message starts with file:line), unknown
            dataset/domain/split/option, or nothing left after the domain/split selection.
    """
    path = Path(path)
    text = _read_text(path)
    layout, doc = _sniff(text, path)
    implied = LAYOUTS[layout]
    if dataset is None:
        dataset = _detect(layout, text, doc, path)
    else:
        dataset = canonical_dataset(dataset)
        if implied is not None and dataset != implied:
            raise AnnotationError(f"this is {_LAYOUT_TEXT[layout]} ({implied}), not {dataset}",
                                  path)
    highlight = dataset in ("youtube", "tvsum")
    if split == "all":  # every video of the file, as split=None
        split = None
    if highlight and split is not None and split not in ("train", "val"):
        raise AnnotationError(f"split for {dataset} must be 'train', 'val' or 'all' (R²-Tuning evaluates "
                              f"on the val lists), got {split!r}", path)
    if split is not None and not isinstance(split, str):
        raise AnnotationError(f"split must be a string, got {split!r}", path)

    if layout in ("jsonl", "json_rows"):
        _check_options(layout, layout_options, (), path)
        if layout == "jsonl":
            items = enumerate(_read_rows(path), start=1)
        else:
            items = enumerate(doc, start=1)
        samples = _parse_rows(items, path, dataset, None if highlight else split,
                              line_numbers=layout == "jsonl")
    elif layout == "tall":
        samples = _parse_tall(text, path, split, layout_options)
    elif layout == "tan2d":
        samples = _parse_tan2d(doc, text, path, split, layout_options)
    elif layout == "ego4d_nlq":
        samples = _parse_ego4d(doc, text, path, split, layout_options)
    elif layout == "youtube_anno":
        samples = _parse_youtube(doc, text, path, split, layout_options)
    else:
        samples = _parse_tvsum(doc, text, path, split, layout_options)

    if highlight:
        samples = _label_highlight_splits(samples, dataset)
    if domain is not None:
        samples = select_domain(samples, dataset, domain, path)
    if highlight and split is not None:
        samples = [s for s in samples if s.split == split]
        if not samples:
            raise AnnotationError(f"no {dataset} video of the {split} list"
                                  + (f" of domain {domain!r}" if domain else "")
                                  + " is in this file", path)
    return samples
