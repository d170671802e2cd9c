"""Which benchmark's metrics a ground-truth file needs, from its rows (QVHighlights layout)."""

from __future__ import annotations

import re
from typing import NamedTuple

from r2 import DATASETS  # canonical names, those of r2.train.annotations.detect_dataset

__all__ = ["DATASETS", "DISPLAY_NAMES", "DetectedDataset", "normalize_dataset", "detect_dataset_from_rows"]

DISPLAY_NAMES = {
    "qvhighlights": "QVHighlights",
    "charades": "Charades-STA",
    "tacos": "TACoS",
    "ego4d": "Ego4D-NLQ",
    "youtube": "YouTube Highlights",
    "tvsum": "TVSum",
    "custom": "custom data",
}

_ALIASES = {
    "qvh": "qvhighlights", "qvhighlight": "qvhighlights",
    "charadessta": "charades", "charadesta": "charades",
    "ego4dnlq": "ego4d", "nlq": "ego4d",
    "youtubehighlights": "youtube", "yt": "youtube",
}

_QVH_VID = re.compile(r"^.{11}_\d+(\.\d+)?_\d+(\.\d+)?$")
_CHARADES_VID = re.compile(r"^[0-9A-Z]{5}$")
_EGO4D_QID = re.compile(r"^(train|val|test)\d+$")


def normalize_dataset(name: str | None) -> str | None:
    """Canonical data set name for ``name`` (case, dashes and aliases ignored); None or
    "auto" -> None (detect). Raises ValueError for an unknown name."""
    if name is None:
        return None
    key = re.sub(r"[^a-z0-9]", "", str(name).lower())
    if key in ("", "auto"):
        return None
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    return key


class DetectedDataset(NamedTuple):
    """What :func:`detect_dataset_from_rows` found."""

    name: str  # canonical (DATASETS)
    reason: str  # why, in words, for a report's header


def detect_dataset_from_rows(rows: list) -> DetectedDataset:
    """The benchmark of QVHighlights-layout ground-truth rows, and the reason in words.

    * ``saliency_scores`` with 3 annotators -> qvhighlights (every video id in QVHighlights'
      ``<youtube id>_<start>_<end>`` form) or custom (QVHighlights metrics all the same);
    * ``domain`` with 20 annotators -> tvsum, with 1 -> youtube;
    * windows only -> a moment-retrieval set: tacos (qids ``<vid>_<i>``), ego4d (qids
      ``train…``/``val…`` and ``video_uid``), charades (int qids, 5-character Charades video
      ids); anything else -> custom, scored with the same moment-retrieval metrics.
    """
    return DetectedDataset(*_detect(rows))


def _detect(rows: list) -> tuple[str, str]:
    dict_rows = [r for r in rows if isinstance(r, dict)]
    if not dict_rows:
        return "custom", "no rows to look at"
    with_saliency = [r for r in dict_rows if isinstance(r.get("saliency_scores"), list)
                     and r["saliency_scores"]]
    if with_saliency:
        widths = {len(r["saliency_scores"][0]) for r in with_saliency
                  if isinstance(r["saliency_scores"][0], (list, tuple))}
        has_domain = all("domain" in r for r in dict_rows)
        if widths == {3}:
            if all(isinstance(r.get("vid"), str) and _QVH_VID.match(r["vid"]) for r in dict_rows):
                return "qvhighlights", "saliency_scores of 3 annotators, QVHighlights video ids"
            return "custom", ("saliency_scores of 3 annotators (QVHighlights layout, other video "
                              "ids): QVHighlights metrics")
        if widths == {20} and has_domain:
            return "tvsum", "a domain and saliency_scores of 20 annotators per clip"
        if widths == {1} and has_domain:
            return "youtube", "a domain and one match label per clip"
        return "custom", f"saliency_scores of {sorted(widths)} annotators: QVHighlights-style metrics"
    qids = [r.get("qid") for r in dict_rows]
    if all(isinstance(q, str) for q in qids):
        if all(q.rpartition("_")[0] == str(r.get("vid")) and q.rpartition("_")[2].isdigit()
               for q, r in zip(qids, dict_rows)):
            return "tacos", 'qids "<vid>_<i>" (TACoS layout)'
        if all(_EGO4D_QID.match(q) for q in qids) and all("video_uid" in r for r in dict_rows):
            return "ego4d", 'qids "train…"/"val…" with video_uid (Ego4D-NLQ layout)'
    if all(type(q) is int for q in qids) and all(
            isinstance(r.get("vid"), str) and _CHARADES_VID.match(r["vid"]) for r in dict_rows):
        return "charades", "int qids and 5-character Charades video ids (Charades-STA layout)"
    return "custom", "windows only: moment retrieval (detected)"
