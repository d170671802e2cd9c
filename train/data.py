"""Data loading from the feature cache: checks, a torch ``Dataset``, padding and masks.

Everything the training loop and ``predict`` need between annotation records
(:class:`~r2.train.annotations.GroundingSample`) and a padded batch for ``r2.model``:

* **Cache checks** before anything runs: the cache's clip rate must be the preset's
  (:func:`check_cache_fps`), the preset's layers must be in the cache
  (:func:`resolve_layers`), every video and query id of every split must be there
  (:func:`check_ids`, which writes *all* missing ids to a file, shows a screenful of them and
  prints the ``r2 extract`` command that adds them, with the cache's model, fps, layers and
  dtype), and a checkpoint's feature spec must match the cache's (:func:`check_feature_spec`).
* :class:`GroundingDataset`: one item per (sample × repeat); loads the video ``(T, K, N, D)``
  and the query ``(K, S, Dt)`` (real tokens only) in the cache's stored dtype (float16 by
  default: half the bytes through the loader and onto the device; the model converts each
  layer to float32 as it reads it). In training mode it builds the targets of
  :mod:`r2.train.targets` with the generator ``sample_rng(seed, epoch, index)``, so the positive
  clip (and the crop of a long video) of every item depends only on (seed, epoch, index): the
  same in any worker, on any rank, after a resume. Optional ``preload`` into RAM (checked
  against the available memory first).
* :class:`Collator` right-pads a list of items into a :class:`Batch` (masks + ``R2Targets``).
* :class:`LengthBatchSampler` groups evaluation items by length; videos longer than the
  model's ``max_clips`` get a batch of their own (they go through sliding windows).

Clip counts: the dataset uses ``usable_clips`` (the official reconciliation of the cache's
``T`` with the annotation grid: QVHighlights truncation, TVSum ``min``, YouTube equality).
Training-time long-video rule (preset ``long_video_rule``): "crop" draws a ``max_clips``
window that contains the sampled positive clip (``crop_range``); "error" refuses such a
sample. Evaluation never crops.
"""

from __future__ import annotations

import math
import os
import random
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Sequence

import numpy as np
import torch

from r2.cpus import usable_cpus
from r2.model import R2Targets

from .annotations import GroundingSample
from .targets import (SampleTargets, TargetError, build_targets, crop_range, crop_targets,
                      sample_rng, usable_clips)

__all__ = [
    "Batch",
    "Collator",
    "DataError",
    "FeatureSpecError",
    "GroundingDataset",
    "Item",
    "LengthBatchSampler",
    "MISSING_IDS_NAME",
    "MissingFeaturesError",
    "SPEC_KEYS",
    "available_memory",
    "cache_widths",
    "check_cache_fps",
    "check_feature_spec",
    "check_ids",
    "extract_command",
    "feature_spec",
    "find_missing",
    "loader_batches",
    "remove_missing_list",
    "resolve_layers",
    "worker_init_fn",
]

#: the manifest keys that define what the features are (the model's ``config.features``)
SPEC_KEYS = ("model_id", "model_weights_hash", "model_config_hash", "layers", "fps", "preprocessing")


class DataError(ValueError):
    """Data that cannot be trained on / predicted from as asked (one-line message)."""

    user_error = True


class MissingFeaturesError(DataError):
    """Video or query ids of a split are not in the feature cache."""


class FeatureSpecError(DataError):
    """A checkpoint and a cache (or two caches) hold different features."""


class QuerySentenceError(DataError):
    """One query id stands for two sentences (in the annotations, or in them and the cache)."""


# ----------------------------------------------------------------------------------------------
# cache checks


def resolve_layers(preset_layers: Sequence[int], cache_layers: Sequence[int]) -> list[int]:
    """Hidden-state ids of the cache that the model uses, ascending.

    Negative entries count from the end of the layers the cache keeps (the preset's default
    ``(-4, -3, -2, -1)`` = the cache's last four: ``[9, 10, 11, 12]`` for ViT-B/32 extracted
    with the default layers); non-negative entries are hidden-state ids that must be in the
    cache. Raises :class:`DataError` naming what the cache has.
    """
    cache_layers = [int(x) for x in cache_layers]
    out = []
    for layer in preset_layers:
        layer = int(layer)
        if layer < 0:
            if -layer > len(cache_layers):
                raise DataError(f"the preset uses layers {list(preset_layers)} but the feature cache "
                                f"keeps only {len(cache_layers)} ({cache_layers}); extract with more "
                                "layers or --set layers=...")
            out.append(cache_layers[layer])
        elif layer in cache_layers:
            out.append(layer)
        else:
            raise DataError(f"layer {layer} is not in the feature cache (it keeps {cache_layers}); "
                            "pick layers it has with --set layers=...")
    if sorted(set(out)) != out:
        raise DataError(f"layers {list(preset_layers)} resolve to {out} in the cache "
                        f"{cache_layers}: they must be distinct and ascending")
    return out


def feature_spec(manifest: Mapping[str, Any], layers: Sequence[int] | None = None) -> dict:
    """The feature spec of a cache: the manifest's ``model_id``, ``model_weights_hash`` (when
    recorded), ``model_config_hash``, ``fps``, ``preprocessing`` and ``layers`` (the layers used,
    when given)."""
    spec = {k: manifest.get(k) for k in SPEC_KEYS if k in manifest}
    if layers is not None:
        spec["layers"] = [int(x) for x in layers]
    return spec


def _same(key: str, a, b) -> bool:
    if key == "fps" and a is not None and b is not None:
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    import json

    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def check_feature_spec(expected: Mapping[str, Any] | None, cache_spec: Mapping[str, Any],
                       expected_name: str, cache_name: str, *, cache_layers=None,
                       allow_mismatch: bool = False, warn: Callable[[str], None] | None = None
                       ) -> list[str]:
    """Compare a checkpoint's ``config.features`` with a cache's spec (keys present in both;
    ``model_weights_hash`` instead of ``model_id`` when both have it: the same weights from a
    folder at another path, or on another machine, are the same model).

    ``layers``: every layer the checkpoint uses must be in ``cache_layers`` (the cache may keep
    more). Returns the differences; raises :class:`FeatureSpecError` listing them unless
    ``allow_mismatch`` (then ``warn`` is called with the message).
    """
    if not expected:
        return []
    from r2.cache import same_weights

    diffs = []
    same_model = same_weights(expected, cache_spec)
    for key in SPEC_KEYS:
        if key not in expected or key not in cache_spec or key == "model_id" and same_model:
            continue
        a, b = expected[key], cache_spec[key]
        if key == "layers" and cache_layers is not None:
            missing = [x for x in (a or []) if int(x) not in [int(y) for y in cache_layers]]
            if missing:
                diffs.append(f"layers: {expected_name} uses {a}, {cache_name} keeps {list(cache_layers)}")
            continue
        if not _same(key, a, b):
            diffs.append(f"{key}: {expected_name} has {_short(a)}, {cache_name} has {_short(b)}")
    if diffs:
        message = (f"{expected_name} was trained on other features than {cache_name} holds:\n  "
                   + "\n  ".join(diffs))
        if (not expected.get("model_weights_hash") and cache_spec.get("model_weights_hash")
                and any(d.startswith("model_id:") for d in diffs)):
            # a converted official checkpoint names only the hub id; a cache made offline names its folder
            message += (f"\n  ({expected_name} names its CLIP model only by {_short(expected['model_id'])}, as "
                        "`r2 convert-official` records it without --model: if "
                        f"{_short(cache_spec.get('model_id'))} holds that model, convert again with --model "
                        f"{cache_spec.get('model_id')} to record its weights)")
        if not allow_mismatch:
            raise FeatureSpecError(message + "\nExtract the videos with the checkpoint's CLIP model, layers, "
                                   "fps and preprocessing (or pass --allow-feature-mismatch to go on anyway).")
        if warn is not None:
            warn("Warning: " + message + "\nGoing on as --allow-feature-mismatch asks: the model runs on "
                 "features it was not trained on.")
    return diffs


def _short(value) -> str:
    import json

    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 120 else text[:117] + "..."


def check_cache_fps(preset_fps, cache_fps, cache_path) -> None:
    """The cache's clip rate must be the preset's (None for per-video sampling, "auto")."""
    if preset_fps == "auto":
        if cache_fps is not None:
            raise DataError(f"the feature cache at {cache_path} was extracted at {cache_fps} clips/s, "
                            "but this data set samples per video (one frame per annotated clip, "
                            "fps 'auto'); re-extract with its annotation file and no --fps")
        return
    if cache_fps is None:
        raise DataError(f"the feature cache at {cache_path} samples per video (fps None) but the "
                        f"preset needs {float(preset_fps)} clips/s; re-extract with --fps "
                        f"{float(preset_fps)} or --set fps=auto")
    if not math.isclose(float(cache_fps), float(preset_fps), rel_tol=1e-9):
        raise DataError(f"the feature cache at {cache_path} holds {float(cache_fps)} clips/s but the "
                        f"preset expects {float(preset_fps)}: re-extract with --fps "
                        f"{float(preset_fps)} (or --set fps={float(cache_fps)} if you mean it)")


class CacheWidths(NamedTuple):
    """Feature widths of a cache (the model's input widths)."""

    video: int  # D
    query: int  # Dt


def cache_widths(cache) -> CacheWidths:
    """Video width D and query width Dt: the manifest's, else the shapes of the first items."""
    m = cache.manifest
    d, dt = m.get("video_width"), m.get("query_width")
    if d is None:
        ids = cache.video_ids()
        if not ids:
            raise DataError(f"the feature cache at {cache.path} holds no video")
        d = cache.video_shape(ids[0])[3]
    if dt is None:
        ids = cache.query_ids()
        if not ids:
            raise DataError(f"the feature cache at {cache.path} holds no query")
        dt = cache.query_shape(ids[0])[2]
    return CacheWidths(int(d), int(dt))


@dataclass
class MissingReport:
    """Ids a split needs that the cache lacks."""

    name: str  # "train", "val", ...
    path: str | None  # annotation file
    videos: list[str] = field(default_factory=list)
    queries: list[str] = field(default_factory=list)
    num_videos: int = 0  # distinct videos the split needs
    num_queries: int = 0

    @property
    def ok(self) -> bool:
        return not self.videos and not self.queries


def find_missing(cache, samples: Iterable[GroundingSample], name: str = "data",
                 path: str | os.PathLike | None = None) -> MissingReport:
    """Every video id and query id of ``samples`` that ``cache`` lacks (in file order)."""
    report = MissingReport(name, None if path is None else str(path))
    seen_v, seen_q = set(), set()
    for s in samples:
        if s.vid not in seen_v:
            seen_v.add(s.vid)
            if not cache.has_video(s.vid):
                report.videos.append(s.vid)
        qid = s.query_id
        if qid not in seen_q:
            seen_q.add(qid)
            if not cache.has_query(qid):
                report.queries.append(qid)
    report.num_videos, report.num_queries = len(seen_v), len(seen_q)
    return report


class WithFeatures(NamedTuple):
    """What :func:`with_features` kept, and how many samples it left out."""

    samples: list  # [GroundingSample]
    left_out: int


def with_features(cache, samples: Sequence[GroundingSample]) -> WithFeatures:
    """The samples whose video and query features the cache holds (``--skip-missing``), and
    how many were left out."""
    kept = [s for s in samples if cache.has_video(s.vid) and cache.has_query(s.query_id)]
    return WithFeatures(kept, len(samples) - len(kept))


def check_query_sentences(cache, splits: Sequence[tuple[str, str | os.PathLike | None,
                                                      Sequence[GroundingSample]]],
                          shown: int = 3) -> None:
    """Raise :class:`QuerySentenceError` when a query id stands for two sentences: on two
    lines of the annotations (train and val both numbering from 0), or in the annotations and
    the cache's ``text`` of that id. Either way the cached features are one sentence's, and
    the other query would silently be trained or scored on them."""
    first: dict[str, GroundingSample] = {}
    clashes = []
    for _, path, samples in splits:
        for s in samples:
            prev = first.setdefault(s.query_id, s)
            if prev is not s and prev.query != s.query:
                clashes.append(f"query {s.query_id!r}: {prev.query!r} ({prev.origin or 'annotations'}) "
                               f"and {s.query!r} ({s.origin or path or 'annotations'})")

    def some(found: list[str]) -> str:
        more = f" (and {len(found) - shown} more)" if len(found) > shown else ""
        return "; ".join(found[:shown]) + more

    if clashes:
        raise QuerySentenceError(
            f"{len(clashes)} query id(s) stand for two sentences: {some(clashes)}. "
            "The feature cache keeps one sentence per id: give the queries of each file unique ids "
            "(e.g. a prefix or an offset) and extract them")
    changed = [f"query {m.query_id!r} ({first[m.query_id].origin or 'annotations'}) is {m.given!r}, "
               f"the cache's {m.cached!r}"
               for m in cache.sentence_mismatches({qid: s.query for qid, s in first.items()})]
    if changed:
        raise QuerySentenceError(
            f"{len(changed)} query id(s) have other sentences in the feature cache at {cache.path} "
            f"than in the annotations: {some(changed)}. Their cached features "
            "are of the cached sentences: extract these annotations into another cache folder, or "
            "give the queries ids of their own")


def extraction_failures(cache) -> dict[str, tuple[str, str]]:
    """Videos that ``r2 extract`` could not extract into ``cache``: ``{video id: (failures
    file, reason)}`` from the cache's ``failures*.jsonl`` (an unreadable line is skipped)."""
    import json

    out: dict[str, tuple[str, str]] = {}
    for path in sorted(Path(cache.path).glob("failures*.jsonl")):
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            continue
        for line in lines:
            try:
                row = json.loads(line)
                out.setdefault(str(row["video_id"]), (str(path), str(row["reason"])))
            except (ValueError, KeyError, TypeError):
                continue
    return out


#: lines of ids the message shows (about a screenful with the header and the commands)
SHOWN_ID_LINES = 12
#: where ``r2 fit`` writes the complete lists (in the run directory)
MISSING_IDS_NAME = "missing_ids.txt"


def _wrap_ids(ids: Sequence[str], max_lines: int, width: int = 100, indent: str = "    "
              ) -> tuple[list[str], int]:
    """``ids`` as comma-separated lines of at most ``width`` characters, at most ``max_lines``
    of them; returns (lines, number of ids shown)."""
    lines: list[str] = []
    line, shown = "", 0
    for x in ids:
        if line and len(indent) + len(line) + 2 + len(x) > width:
            if len(lines) + 1 == max_lines:
                break
            lines.append(indent + line + ",")
            line = ""
        line = f"{line}, {x}" if line else x
        shown += 1
    if line:
        lines.append(indent + line)
    return lines, shown


def _model_depth(model_id: str) -> int | None:
    """Vision-tower depth of a CLIP from its ``config.json`` on disk (a local folder or the local
    Hugging Face cache; never the network), or None when it is not on this machine."""
    import json

    path = Path(model_id).expanduser()
    config = path / "config.json" if path.is_dir() else None
    if config is None:
        try:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(str(model_id), "config.json")
        except Exception:  # not a repo id, no hub library: depth unknown
            found = None
        config = Path(found) if isinstance(found, str) else None
    try:
        vision = json.loads(config.read_text(encoding="utf-8")).get("vision_config") or {}
        return int(vision.get("num_hidden_layers", 12))  # transformers' CLIPVisionConfig default
    except (AttributeError, OSError, ValueError, TypeError):
        return None


def _video_folders(cache, samples: Iterable[GroundingSample], limit: int = 50) -> list[str]:
    """The folders that the cache's videos of these splits were extracted from (their
    ``source`` attribute minus the video's relative file stem), most common first; [] when
    unknown."""
    from collections import Counter

    folders: Counter = Counter()
    seen = 0
    for s in samples:
        if seen >= limit:
            break
        if not cache.has_video(s.vid):
            continue
        seen += 1
        try:
            source = cache.video_attrs(s.vid).get("source")
        except Exception:  # an unreadable attribute only costs the guess
            continue
        if not source:
            continue
        src, stem = Path(source), Path(s.video_file_stem)
        depth = len(stem.parts)
        tail = src.with_suffix("").as_posix()
        folder = src.parents[depth - 1] if tail.endswith("/" + stem.as_posix()) else src.parent
        folders[str(folder)] += 1
    return [f for f, _ in folders.most_common() if Path(f).is_dir()]


def extract_command(cache, annotations: str | os.PathLike, dataset: str | None = None,
                    folders: Sequence[str] = ()) -> str:
    """The ``r2 extract`` command that adds the videos and queries of ``annotations`` to
    ``cache`` (a rerun skips what the cache has): the cache manifest's model, and its fps,
    layers, dtype, resize rule and precision wherever extract's defaults would differ (else
    extract would refuse the cache as holding other features). ``folders``: the video folders
    (default: a ``<videos folder>`` placeholder)."""
    from r2.cache import default_layers

    m = cache.manifest
    annotations = annotations if str(annotations).startswith("<") else os.path.abspath(annotations)
    parts = ["r2", "extract", *(folders or ["<videos folder>"]), "--annotations", str(annotations)]
    if dataset and dataset != "custom":
        parts += ["--dataset", dataset]
    if m.get("model_id"):
        parts += ["--model", str(m["model_id"])]
    fps, default_fps = m.get("fps"), 0.5  # extract's rate: the data set preset's, else 0.5
    if dataset:
        from .presets import get_preset

        preset_fps = get_preset(dataset).fps
        default_fps = None if preset_fps == "auto" else float(preset_fps)
    # fps "auto" (YouTube): extract takes one frame per annotated clip and refuses --fps with
    # such annotations, so no rate is added (a cache at a fixed rate cannot take them at all;
    # extract then says which manifest field differs)
    per_video = bool(dataset) and default_fps is None
    if fps is not None and not per_video and not math.isclose(float(fps), default_fps):
        parts += ["--fps", repr(float(fps))]  # every digit: extract compares the rate exactly
    layers = [int(x) for x in m.get("layers") or []]
    depth = _model_depth(str(m["model_id"])) if m.get("model_id") else None
    try:  # extract's default: the last 4 hidden states of the vision tower
        default = default_layers(depth) if depth is not None else None
    except ValueError:  # fewer than 4 hidden states: extract needs --layers
        default = None
    if layers and layers != default:
        parts += ["--layers", ",".join(str(x) for x in layers)]
    if m.get("dtype", "float16") != "float16":
        parts += ["--dtype", str(m["dtype"])]
    resize = (m.get("preprocessing") or {}).get("resize", "ffmpeg")
    if resize != "ffmpeg":
        parts += ["--resize", str(resize)]
    if m.get("precision", "fp32") != "fp32":
        parts += ["--precision", str(m["precision"])]
    parts += ["--out", str(cache.path)]
    return " ".join(p if p.startswith("<") else shlex.quote(p) for p in parts)


_LIST_HEADER = "# ids that the feature cache at "


def _write_missing_list(path: Path, cache, bad: Sequence[MissingReport], purpose: str,
                        commands: Sequence[str]) -> None:
    from r2.fileio import atomic_write

    lines = [f"{_LIST_HEADER}{cache.path} lacks for {purpose}; one per line: "
             "split, kind (video or query), id, tab-separated",
             "# add them with (extract skips what the cache already has):"]
    lines += [f"#   {c}" for c in commands]
    for r in bad:
        lines += [f"{r.name}\tvideo\t{x}" for x in r.videos]
        lines += [f"{r.name}\tquery\t{x}" for x in r.queries]
    atomic_write(path, "\n".join(lines) + "\n")  # into an existing folder only: no mkdir


def remove_missing_list(path: str | os.PathLike, purpose: str) -> bool:
    """Delete a list that :func:`check_ids` wrote for ``purpose`` (an earlier failed attempt)
    now that the cache is complete; a file of that name that r2 did not write is left alone.
    Returns True when a list was removed."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as fh:
            head = fh.readline()
    except (OSError, UnicodeDecodeError):
        return False
    if not (head.startswith(_LIST_HEADER) and f" lacks for {purpose}; " in head):
        return False
    path.unlink(missing_ok=True)
    return True


def check_ids(cache, splits: Sequence[tuple[str, str | os.PathLike | None, Sequence[GroundingSample]]],
              dataset: str | None = None, purpose: str = "training", *,
              list_file: str | os.PathLike | None = None, write: bool = True,
              make_folder: bool = False) -> list[MissingReport]:
    """Raise :class:`MissingFeaturesError` listing all ids missing from the cache.

    ``splits``: ``(name, annotation file, samples)`` per split. Every missing id goes to
    ``list_file`` when it is given and its folder exists (``make_folder=True`` creates the
    folder, as fit does for its run directory; otherwise a failed check makes no folder;
    ``write=False`` only names the file, for the other ranks of a DDP run); the message then
    shows about a screenful of them with the counts and names that file. Without a file
    (``list_file=None``, its folder missing, or a failed write) the message lists every id.
    Either way it gives the ``r2 extract`` command that adds them (:func:`extract_command`; a
    rerun of extract skips what the cache has). A caller whose check passes removes a list
    left by an earlier attempt (fit; predict through :func:`remove_missing_list`).
    """
    reports = [find_missing(cache, samples, name, path) for name, path, samples in splits]
    bad = [r for r in reports if not r.ok]
    if not bad:
        check_query_sentences(cache, splits)
        return reports
    folders = _video_folders(cache, (s for _, _, samples in splits for s in samples))
    folders = folders if len(folders) <= 3 else []  # more: the user knows better than a guess
    commands = list(dict.fromkeys(
        extract_command(cache, r.path, dataset or (samples[0].dataset if samples else None), folders)
        for r, (_, _, samples) in zip(reports, splits) if not r.ok and r.path))
    list_file = Path(list_file) if list_file is not None else None
    written, failure = list_file is not None, None
    if list_file is not None and write:
        if make_folder:
            try:
                list_file.parent.mkdir(parents=True, exist_ok=True)
            except OSError:
                pass  # told below: not a folder, or not writable
        if not list_file.parent.is_dir():
            written = False
        else:
            try:
                _write_missing_list(list_file, cache, bad, purpose, commands)
            except OSError as exc:
                written, failure = False, exc.strerror or type(exc).__name__
    listings = [(r, kind, ids, total) for r in bad
                for kind, ids, total in (("videos", r.videos, r.num_videos),
                                         ("queries", r.queries, r.num_queries)) if ids]
    # a screenful in all (the file has the rest); everything when the file could not be written
    per_listing = max(2, SHOWN_ID_LINES // len(listings)) if written else None
    lines = [f"the feature cache at {cache.path} lacks features that {purpose} needs:"]
    failed = extraction_failures(cache)
    for r, kind, ids, total in listings:
        where = f" ({r.path})" if r.path else ""
        lines.append(f"  {r.name}{where}: {len(ids)} of {total} {kind} missing:")
        shown_lines, shown = _wrap_ids(ids, per_listing or len(ids))
        lines += shown_lines
        if shown < len(ids):
            lines.append(f"    ... and {len(ids) - shown} more")
        known = [i for i in ids if i in failed] if kind == "videos" else []
        if known:  # extracting them again fails again until the file is fixed
            lines.append(f"    {len(known)} of these failed in r2 extract ({failed[known[0]][0]}): "
                         + "; ".join(f"{i}: {failed[i][1]}" for i in known[:3])
                         + (f"; ... and {len(known) - 3} more" if len(known) > 3 else ""))
    if written:
        lines.append(f"Every missing id is listed in {list_file}")
    elif failure is not None:
        lines.append(f"(could not write {list_file}: {failure}; every missing id is listed above)")
    if commands:
        lines.append("Add them with (extract skips what the cache already has):")
        lines.extend(f"  {c}" for c in commands)
    else:
        lines.append("Add them with: " + extract_command(cache, "<annotation file>", dataset, folders))
    made_by = str(cache.manifest.get("command") or "")
    if made_by.startswith("r2 cache import "):  # features of a release: their files may be all there is
        lines.append(f"or, as this cache was made (it imports the .npy files it does not have yet):\n  {made_by}")
    raise MissingFeaturesError("\n".join(lines))


# ----------------------------------------------------------------------------------------------
# memory


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (``MemAvailable``), or None if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _gb(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


# ----------------------------------------------------------------------------------------------
# the dataset


@dataclass
class Item:
    """One loaded sample: ``video (T, K, N, D)``, ``query (K, S, Dt)`` (real tokens only), the
    training targets (None in evaluation) and the sample's index in ``dataset.samples``."""

    index: int
    video: np.ndarray
    query: np.ndarray
    targets: SampleTargets | None


class GroundingDataset(torch.utils.data.Dataset):
    """Samples + a feature cache → :class:`Item` (see the module docstring).

    Args:
        samples: the records of one split.
        cache: an open :class:`r2.cache.FeatureCache`.
        layers: the cache layer ids the model uses (:func:`resolve_layers`).
        preset: the data set's preset (targets, crop rule, query length); may be None for
            evaluation.
        train: build targets (and crop long videos) when True.
        seed: base seed of ``sample_rng(seed, epoch, index)``.
        repeat: the split is repeated this many times per epoch (training only).
        fps: clip rate used to reconcile clip counts (default: the preset's).
        max_query_tokens: query tokens kept (default: the preset's ``query_max_tokens``).
        preload: load every needed item into RAM at construction when it fits.
        log: where messages go (preload decisions).
    """

    def __init__(self, samples: Sequence[GroundingSample], cache, layers: Sequence[int], preset=None, *,
                 train: bool = False, seed: int = 0, repeat: int = 1, fps=None,
                 max_query_tokens: int | None = None, preload: bool = False,
                 log: Callable[[str], None] | None = None):
        self.samples = list(samples)
        self.cache = cache
        self.layers = [int(x) for x in layers]
        self.preset = preset
        self.train = bool(train)
        self.seed = int(seed)
        self.repeat = max(1, int(repeat)) if train else 1
        if fps is None and preset is not None:
            fps = preset.fps
        self.fps = None if fps in (None, "auto") else float(fps)
        if max_query_tokens is None and preset is not None:
            max_query_tokens = preset.query_max_tokens
        self.max_query_tokens = max_query_tokens
        self.epoch = 0
        if train and preset is None:
            raise ValueError("a training dataset needs the preset (targets, crop rule)")
        # clip counts from metadata only; reconciliation errors surface here, before training
        self.cache_clips: list[int] = []
        self.num_clips: list[int] = []
        shapes: dict[str, tuple] = {}
        for s in self.samples:
            if s.vid not in shapes:
                shapes[s.vid] = cache.video_shape(s.vid)
            t = shapes[s.vid][0]
            self.cache_clips.append(t)
            self.num_clips.append(usable_clips(s, t, fps=self.fps, dataset=s.dataset))
        if train and preset.long_video_rule == "error":
            long = [(s.vid, t) for s, t in zip(self.samples, self.num_clips) if t > preset.max_clips]
            if long:
                raise TargetError(f"{len(long)} training video(s) have more than max_clips "
                                  f"{preset.max_clips} clips (e.g. {long[0][0]}: {long[0][1]}) and "
                                  "long_video_rule is 'error'; use --set long_video_rule=crop")
        self._videos: dict[str, np.ndarray] | None = None
        self._queries: dict[str, np.ndarray] | None = None
        self.preloaded = False
        if preload:
            self._preload(shapes, log or (lambda msg: None))

    # -- sizes ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.samples) * self.repeat

    def set_epoch(self, epoch: int) -> None:
        """The epoch of the next pass (part of every item's random generator)."""
        self.epoch = int(epoch)

    def nbytes_needed(self, shapes=None) -> int:
        """Bytes the distinct videos and queries of this split take in RAM (stored dtype)."""
        itemsize = 2 if self.cache.dtype == "float16" else 4  # int8 is read back as float32
        total, seen_v, seen_q = 0, set(), set()
        for s, t in zip(self.samples, self.num_clips):
            if s.vid not in seen_v:
                seen_v.add(s.vid)
                shape = (shapes or {}).get(s.vid) or self.cache.video_shape(s.vid)
                total += t * len(self.layers) * shape[2] * shape[3] * itemsize
            if s.query_id not in seen_q:
                seen_q.add(s.query_id)
                k, n, d = self.cache.query_shape(s.query_id)
                total += len(self.layers) * n * d * itemsize
        return total

    def _preload(self, shapes, log) -> None:
        need = self.nbytes_needed(shapes)
        avail = available_memory()
        if avail is not None and need > 0.7 * avail:
            log(f"not preloading: the split needs {_gb(need)} and {_gb(avail)} of memory is "
                "available (the limit is 70%); reading from the cache instead")
            return
        videos, queries = {}, {}
        for s, t in zip(self.samples, self.num_clips):
            if s.vid not in videos:
                videos[s.vid] = np.ascontiguousarray(self._read_video(s.vid)[:t])
            if s.query_id not in queries:
                queries[s.query_id] = self._read_query(s.query_id)
        self._videos, self._queries = videos, queries
        self.preloaded = True
        log(f"preloaded {len(videos)} videos and {len(queries)} queries into RAM ({_gb(need)}; "
            + (f"{_gb(avail)} was available)" if avail is not None else "available memory unknown)"))

    # -- reading ----------------------------------------------------------------------------
    def _read_video(self, vid: str) -> np.ndarray:
        return self.cache.load_video(vid, layers=self.layers, dtype=None)  # (T, K, N, D)

    def _read_query(self, qid: str) -> np.ndarray:
        q, mask = self.cache.load_query(qid, layers=self.layers, dtype=None)  # (K, S, Dt), (S,)
        if not mask.all():
            q = q[:, mask]
        if self.max_query_tokens is not None:
            q = q[:, :self.max_query_tokens]
        if q.shape[1] == 0:
            raise DataError(f"query {qid!r} has no token in the feature cache")
        return np.ascontiguousarray(q)

    def video(self, index: int) -> np.ndarray:
        """(T, K, N, D) features of sample ``index`` (usable clips only)."""
        s = self.samples[index]
        t = self.num_clips[index]
        if self._videos is not None:
            return self._videos[s.vid][:t]
        return self._read_video(s.vid)[:t]

    def query(self, index: int) -> np.ndarray:
        s = self.samples[index]
        if self._queries is not None:
            return self._queries[s.query_id]
        return self._read_query(s.query_id)

    def check_features(self, index: int) -> None:
        """Check the cached video and query of sample ``index`` as ``r2 cache verify`` does
        (:meth:`r2.cache.FeatureCache.check_video`): a CacheError naming the damaged shard.
        What a model computed from them is not finite: are they the cause?"""
        s = self.samples[index]
        self.cache.check_video(s.vid)
        self.cache.check_query(s.query_id)

    def __getitem__(self, i: int) -> Item:
        if not 0 <= i < len(self):
            raise IndexError(i)
        index = i % len(self.samples)
        video, query = self.video(index), self.query(index)
        targets = None
        if self.train:
            sample = self.samples[index]
            rng = sample_rng(self.seed, self.epoch, i)
            targets = build_targets(sample, self.num_clips[index], rng, preset=self.preset)
            if targets.num_clips > self.preset.max_clips:
                start, stop = crop_range(targets.num_clips, self.preset.max_clips,
                                         targets.positive_clip, rng)
                targets = crop_targets(targets, start, stop)
                video = video[start:stop]
        return Item(index, video, query, targets)


# ----------------------------------------------------------------------------------------------
# batches


@dataclass
class Batch:
    """A right-padded batch (shapes with B items, T the longest video, S the longest query).

    video (B, T, K, N, D) in the cache's dtype; video_mask (B, T) bool; query (B, K, S, Dt);
    query_mask (B, S) bool; targets: ``R2Targets`` (training) or None; indices: the samples'
    indices in ``dataset.samples``.
    """

    video: torch.Tensor
    video_mask: torch.Tensor
    query: torch.Tensor
    query_mask: torch.Tensor
    targets: R2Targets | None
    indices: list[int]

    def __len__(self) -> int:
        return len(self.indices)

    def to(self, device, non_blocking: bool = False) -> "Batch":
        def move(x):
            return x.to(device, non_blocking=non_blocking)

        targets = None
        if self.targets is not None:
            t = self.targets
            targets = R2Targets(windows=None if t.windows is None else move(t.windows),
                                window_mask=None if t.window_mask is None else move(t.window_mask),
                                saliency=move(t.saliency), positive_clip=move(t.positive_clip))
        return Batch(move(self.video), move(self.video_mask), move(self.query), move(self.query_mask),
                     targets, self.indices)

    def pin_memory(self) -> "Batch":
        """Called by the DataLoader with ``pin_memory=True``."""
        targets = self.targets
        if targets is not None:
            targets = R2Targets(
                windows=None if targets.windows is None else targets.windows.pin_memory(),
                window_mask=None if targets.window_mask is None else targets.window_mask.pin_memory(),
                saliency=targets.saliency.pin_memory(), positive_clip=targets.positive_clip.pin_memory())
        return Batch(self.video.pin_memory(), self.video_mask.pin_memory(), self.query.pin_memory(),
                     self.query_mask.pin_memory(), targets, self.indices)


def _batch_tensor(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """``torch.empty(shape)``; in a loader worker, in shared memory, as torch's own
    ``default_collate`` does: the batch then goes to the main process as it is, where a batch
    in private memory would first be copied into shared memory (a QVHighlights batch's
    features are about 1.5 GB)."""
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    storage = torch.UntypedStorage._new_shared(math.prod(shape) * dtype.itemsize)
    return torch.empty(0, dtype=dtype).set_(storage).view(shape)


class Collator:
    """Right-pad :class:`Item` lists into a :class:`Batch` (picklable, for loader workers;
    there the features are collated straight into shared memory).

    ``windows``: also build the (B, G, 2) window targets (G ≥ 1; all-False mask rows for
    samples without windows); False for saliency-only configurations (TVSum/YouTube).
    """

    def __init__(self, windows: bool = True):
        self.windows = bool(windows)

    def __call__(self, items: Sequence[Item]) -> Batch:
        if not items:
            raise ValueError("empty batch")
        b = len(items)
        t_max = max(it.video.shape[0] for it in items)
        s_max = max(it.query.shape[1] for it in items)
        _, k, n, d = items[0].video.shape
        kq, _, dt = items[0].query.shape
        vdtype = torch.from_numpy(items[0].video[:0]).dtype
        qdtype = torch.from_numpy(items[0].query[:0]).dtype
        # empty, then zeros only in the padding: the batch is written once, not twice
        video = _batch_tensor((b, t_max, k, n, d), vdtype)  # (B, T, K, N, D)
        query = _batch_tensor((b, kq, s_max, dt), qdtype)  # (B, K, S, Dt)
        vmask = torch.zeros((b, t_max), dtype=torch.bool)
        qmask = torch.zeros((b, s_max), dtype=torch.bool)
        for i, it in enumerate(items):
            t, s = it.video.shape[0], it.query.shape[1]
            video[i, :t] = torch.from_numpy(np.ascontiguousarray(it.video))
            video[i, t:] = 0
            query[i, :, :s] = torch.from_numpy(np.ascontiguousarray(it.query))
            query[i, :, s:] = 0
            vmask[i, :t] = True
            qmask[i, :s] = True
        targets = None
        if items[0].targets is not None:
            saliency = torch.zeros((b, t_max), dtype=torch.float32)
            positive = torch.zeros(b, dtype=torch.long)
            for i, it in enumerate(items):
                saliency[i, :it.targets.num_clips] = torch.from_numpy(it.targets.saliency)
                positive[i] = int(it.targets.positive_clip)
            windows = window_mask = None
            if self.windows:
                g = max(1, max(it.targets.windows.shape[0] for it in items))
                windows = torch.zeros((b, g, 2), dtype=torch.float32)  # clip units
                window_mask = torch.zeros((b, g), dtype=torch.bool)
                for i, it in enumerate(items):
                    w = it.targets.windows
                    if w.shape[0]:
                        windows[i, :w.shape[0]] = torch.from_numpy(np.asarray(w, dtype=np.float32))
                        window_mask[i, :w.shape[0]] = True
            targets = R2Targets(windows=windows, window_mask=window_mask, saliency=saliency,
                                positive_clip=positive)
        return Batch(video, vmask, query, qmask, targets, [it.index for it in items])


class LengthBatchSampler:
    """Evaluation batches: indices sorted by clip count (less padding), ``batch_size`` per
    batch; an item longer than ``max_clips`` gets a batch of its own (sliding windows)."""

    def __init__(self, lengths: Sequence[int], batch_size: int, max_clips: int | None = None):
        self.batches: list[list[int]] = []
        order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
        current: list[int] = []
        for i in order:
            if max_clips is not None and lengths[i] > max_clips:
                self.batches.append([i])
                continue
            current.append(i)
            if len(current) == batch_size:
                self.batches.append(current)
                current = []
        if current:
            self.batches.append(current)

    def __iter__(self):
        return iter([list(b) for b in self.batches])

    def __len__(self) -> int:
        return len(self.batches)


def loader_workers(requested: int, device: torch.device | str,
                   log: Callable[[str], None] | None = None) -> int:
    """The loader workers to start for ``requested`` (the preset's ``num_workers``) when training
    on ``device``; the batches are the same with any number.

    * On the CPU none: the batches are loaded in the training process. Reading a batch from the
      cache is a few percent of a CPU training step, so workers can save no more than that, and
      they take cores from the step (the default preset on ``r2 demo``'s data, 2 cores: 1.26x
      the time with 1 worker, 1.32x with 2).
    * Elsewhere no more than the CPUs this process may use (more only compete for the same cores;
      torch's DataLoader warns of it).
    """
    if requested == 0:
        return 0
    if torch.device(device).type == "cpu":
        if log is not None:
            log(f"device cpu: batches are loaded in the training process, not by {requested} loader "
                "workers (on the CPU they take cores from the training step; --workers N starts N)")
        return 0
    cpus = usable_cpus()
    if requested <= cpus:
        return requested
    if log is not None:
        log(f"num_workers {requested}: this process may use {cpus} CPUs, so the loaders start {cpus} "
            f"workers (--workers N starts exactly N; the batches are the same with any number)")
    return cpus


def worker_init_fn(worker_id: int) -> None:
    """Seed numpy and ``random`` in a loader worker from its torch seed (itself derived from
    the loader's seeded generator). Targets do not depend on it: they use ``sample_rng``."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def _as_raised_in_worker(exc: Exception) -> Exception | None:
    """The error a DataLoader worker raised, as it was raised there. torch raises it again in
    this process as ``type(exc)("Caught <type> in DataLoader worker process N.\nOriginal
    Traceback ...")``, the worker's whole traceback in its message; None for any other error."""
    text = str(exc)
    if not text.startswith(f"Caught {type(exc).__name__} in DataLoader worker process"):
        return None
    kind = type(exc)
    for name in (f"{kind.__module__}.{kind.__qualname__}", kind.__qualname__):  # format_exception_only
        at = text.rfind(f"\n{name}: ")
        if at >= 0:
            message = text[at + len(name) + 3:].rstrip("\n")
            try:
                return kind(message)
            except Exception:
                return None
    return None


def loader_batches(loader: Iterable) -> Iterable:
    """Iterate ``loader``; an error of ours (``user_error``: a damaged shard, a missing item)
    raised in one of its workers comes out as it was raised there, so that ``r2`` shows its
    one line instead of the worker's traceback."""
    batches = iter(loader)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except Exception as exc:
            raised = _as_raised_in_worker(exc) if getattr(exc, "user_error", False) else None
            if raised is None:
                raise
            raise raised from None
        yield batch


def loader_generator(seed: int, epoch: int, rank: int = 0) -> torch.Generator:
    """The DataLoader's generator for one epoch (worker base seeds): a function of
    (seed, epoch, rank) only, so it never touches the global torch RNG and a resumed
    epoch gets the same one."""
    mixed = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch) + 1, int(rank), 0x5EED]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(mixed) & 0x7FFF_FFFF_FFFF_FFFF)
