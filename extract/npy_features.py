"""Import features already extracted elsewhere, one ``.npy`` file per video and per query (the
layout of the official R²-Tuning release), into an r2 feature cache: no video is decoded and
CLIP never runs.

::

    summary = import_npy_features("data/qvhighlights/clip_b32_vid_k4", "cache/",
                                  "openai/clip-vit-base-patch32", fps=0.5,
                                  query_dir="data/qvhighlights/clip_b32_txt_k4")

The layout (``tools/extract_feat.py`` of the official code):

- a video: ``{video_id}.npy``, ``(T, K, N, D)`` floating point (float16 in the release): for
  each clip the K kept hidden states, all N tokens (CLS + patches), as ``r2 extract`` stores
  them; ``(T, K·N·D)`` (flattened) is read too;
- a query: ``{query_id}.npy``, ``(S, K, Dt)``: the S tokens SOT…EOT of the K kept text layers
  (YouTube Highlights and TVSum: named by the video id, as r2 keys their queries); stored as
  ``(K, S, Dt)`` with every token valid. ``(S, K·Dt)`` is read too.

``model`` names the CLIP that made the features (a local folder, or a hub id in the local
Hugging Face cache). Only its config and tokenizer files are needed to describe the features,
but its weights are loaded and hashed, as ``r2 extract`` does: the manifest is then exactly the
one ``r2 extract --model <it>`` writes at ``fps``, with ffmpeg's preprocessing (the official
recipe), so caches of both kinds merge and a model trained on imported features grounds new
videos with ``r2 predict VIDEO`` through that same CLIP. The shapes of every file are checked
against it (K, N, D, Dt, at most its context length of tokens).

A rerun resumes (ids already in the cache are skipped; shards commit atomically, so a killed
run loses at most its open shard). A file that cannot be imported (not a ``.npy``, truncated,
another shape, not floating point, NaN or infinite values) is a failure, named with its reason
in the summary; the others are imported.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from r2.cache import CacheError, FeatureCache, ShardDiscardedError
from r2.extract.pipeline import (WAIT_POLL_SECONDS, ExtractionError, _first_lines, _first_of, _write_error,
                                 feature_manifest, preprocessing_of, write_failures)

IMPORT_FAILURES_NAME = "import_failures.jsonl"

__all__ = ["IMPORT_FAILURES_NAME", "ImportFailure", "ImportSummary", "check_query_files", "import_npy_features",
           "npy_files"]


@dataclass
class ImportFailure:
    """A file that was not imported: ``path`` (absolute) and a one-line ``reason``."""

    item_id: str
    path: str
    reason: str


@dataclass
class ImportSummary:
    cache_dir: str
    videos_total: int = 0
    videos_imported: int = 0
    videos_skipped: int = 0  # already in the cache
    videos_taken: int = 0  # added by another writer of the cache meanwhile
    clips: int = 0  # clips imported in this run
    queries_total: int = 0
    queries_imported: int = 0
    queries_skipped: int = 0
    bytes_written: int = 0  # committed shard bytes of this run
    seconds: float = 0.0  # the whole run
    startup_seconds: float = 0.0  # the model's files, the cache: before the first file
    failures: list[ImportFailure] = field(default_factory=list)
    failures_file: str | None = None  # import_failures.jsonl in the cache folder, when some failed

    @property
    def ok(self) -> bool:
        return not self.failures

    def format(self) -> str:
        work = self.seconds - self.startup_seconds
        rate = self.bytes_written / work / 1e6 if work > 0 else 0.0
        lines = [
            f"imported into {self.cache_dir} in {self.seconds:.1f} s (start-up: model, cache "
            f"{self.startup_seconds:.1f} s; then {rate:.0f} MB/s written)",
            f"  videos : {self.videos_imported} imported ({self.clips} clips), {self.videos_skipped} already cached"
            + (f", {self.videos_taken} added by another writer meanwhile" if self.videos_taken else "")
            + f" (of {self.videos_total})",
            f"  queries: {self.queries_imported} imported, {self.queries_skipped} already cached "
            f"(of {self.queries_total})",
            f"  written: {self.bytes_written / 1e6:.1f} MB",
        ]
        if self.failures:
            lines.append(f"  FAILED : {len(self.failures)} file(s) not imported"
                         + (f", listed in {self.failures_file}:" if self.failures_file else ":"))
            lines += _first_lines([f"{f.path}: {f.reason}" for f in self.failures])
            lines.append("  a rerun of the same command imports only what is missing (replace or remove these files)")
        return "\n".join(lines)


def npy_files(folder: str | os.PathLike, word: str) -> dict[str, Path]:
    """``{id: path}`` of the ``*.npy`` files directly in ``folder`` (id: the name without
    ``.npy``), in name order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ExtractionError(f"{word} feature folder {folder} does not exist (or is not a folder)")
    files = {p.name[:-len(".npy")]: p for p in sorted(folder.iterdir()) if p.name.endswith(".npy") and p.is_file()}
    files.pop("", None)  # a file named ".npy" has no id
    if not files:
        raise ExtractionError(f"{word} feature folder {folder} holds no .npy file (one per {word} is expected, "
                              f"named by its id: e.g. {folder / ('<' + word + '_id>.npy')})")
    return files


def _load(path: Path) -> np.ndarray:
    """The array of ``path`` (memory-mapped), or a one-line :class:`ValueError`."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(6)
    except OSError as exc:
        raise ValueError(f"not a readable .npy array ({exc.strerror or exc})") from None
    if head and head != b"\x93NUMPY"[:len(head)] and not head.startswith(b"PK"):  # PK: an .npz, said below
        raise ValueError("not a .npy file (it does not begin with the .npy magic bytes: text, or another format)")
    try:
        a = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "pickle" in reason.lower() or "python objects" in reason.lower():
            reason = "it holds Python objects, not numbers"
        elif "mmap length is greater" in reason:
            reason = "the file is shorter than its header says: truncated, e.g. by an interrupted copy"
        elif "no data left" in reason.lower():
            reason = "the file is empty"
        raise ValueError(f"not a readable .npy array ({reason})") from None
    if not isinstance(a, np.ndarray):  # np.load gives an NpzFile for a .npz saved as .npy
        raise ValueError("not a .npy array (an .npz archive?)")
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"features must be floating point, got {a.dtype}")
    return a


def _video_array(path: Path, k: int, n: int, d: int) -> np.ndarray:
    a = _load(path)
    if a.ndim == 2 and a.shape[1] == k * n * d:  # flattened, as the official loader reads it
        a = a.reshape(a.shape[0], k, n, d)
    if a.ndim != 4 or a.shape[1:] != (k, n, d) or a.shape[0] == 0:
        raise ValueError(f"shape {a.shape}, expected (T, {k}, {n}, {d}) (clips, layers, tokens, width) of the "
                         "model's kept layers, T >= 1")
    return a


def _query_array(path: Path, k: int, dt: int, context: int) -> np.ndarray:
    a = _load(path)
    if a.ndim == 2 and a.shape[1] == k * dt:
        a = a.reshape(a.shape[0], k, dt)
    if a.ndim != 3 or a.shape[1:] != (k, dt) or not 1 <= a.shape[0] <= context:
        raise ValueError(f"shape {a.shape}, expected (S, {k}, {dt}) (tokens SOT..EOT, layers, width) of the "
                         f"model's kept text layers, 1 <= S <= {context}")
    return a.transpose(1, 0, 2)  # (K, S, Dt)


#: the largest relative difference (RMS of the difference / RMS of the model's values, per
#: layer) between a query file and the model's features of its sentence that still counts as
#: the same features: float16 storage differs by about 3e-4, OpenAI's ``clip`` package and the
#: transformers port of its weights by less; another model or layer differs by about 1
QUERY_TOLERANCE = 0.01


def check_query_files(clip, files: Mapping[str, tuple[Path, str]]) -> list[str]:
    """Compare query files with ``clip``'s own features of their sentences: ``files`` maps a
    query id to ``(path, sentence)``. Returns a line for each file that disagrees (another
    token count, or a layer further than :data:`QUERY_TOLERANCE` from the model's), [] when
    all agree. Files that cannot be read are left to the import (which names them)."""
    loaded = {}
    for qid, (path, sentence) in files.items():
        try:
            loaded[qid] = (path, sentence, _query_array(path, len(clip.layers), clip.query_width, clip.context_length))
        except ValueError:
            continue
    if not loaded:
        return []
    feats, lengths = clip.text_features([sentence for _, sentence, _ in loaded.values()])
    out = []
    for (qid, (path, sentence, x)), f, n in zip(loaded.items(), feats, lengths):
        if x.shape[1] != n:
            out.append(f"{path.name}: {x.shape[1]} tokens, the model's tokenizer makes {n} of {sentence!r}")
            continue
        x = np.asarray(x, dtype=np.float32)  # (K, S, Dt)
        err = [float(np.sqrt(np.mean((x[k] - f[k]) ** 2)) / max(np.sqrt(np.mean(f[k] ** 2)), 1e-12))
               for k in range(len(f))]
        if max(err) > QUERY_TOLERANCE:
            worst = int(np.argmax(err))
            out.append(f"{path.name}: layer {clip.layers[worst]} differs from the model's features of {sentence!r} by "
                       f"{err[worst]:.3g} of their size (at most {QUERY_TOLERANCE:g} is the same features)")
    return out


def _check_cached_items(cache, videos: Mapping[str, Path], queries: Mapping[str, Path],
                        sentences: Mapping[str, str], shown: int = 3) -> None:
    """Refuse ids the cache holds with other features than the files give, as ``r2 extract``
    does: skipping them as "already cached" would keep the other features under the id (two
    releases, or two data sets, numbering their files alike). A video or query whose number of
    clips or tokens is not the file's (read from its header), or a query cached for another
    sentence than ``sentences`` gives it."""
    changed = []
    for family, files, unit in (("video", videos, "clips"), ("query", queries, "tokens")):
        for item_id, path in files.items():
            if not (cache.has_video(item_id) if family == "video" else cache.has_query(item_id)):
                continue
            try:
                length = int(np.load(path, mmap_mode="r", allow_pickle=False).shape[0])
            except (OSError, ValueError, IndexError):  # its own problem is said when it is imported
                continue
            cached = cache.video_shape(item_id)[0] if family == "video" else cache.query_shape(item_id)[1]
            if length != cached:
                changed.append(f"{family} {item_id!r}: cached with {cached} {unit}, {path} has {length}")
    changed += [f"query {m.query_id!r}: cached for {m.cached!r}, now {m.given!r}"
                for m in cache.sentence_mismatches({i: sentences[i] for i in queries if i in sentences})]
    if changed:
        raise ExtractionError(
            f"{len(changed)} id(s) are already in {cache.path} with other features: {_first_of(changed, shown)}. "
            "Ids must be unique across the inputs of one cache: import these files into another cache folder "
            "(also when a file was replaced on purpose)")


def import_npy_features(
    video_dir: str | os.PathLike | None,
    cache_dir: str | os.PathLike,
    model,
    *,
    fps: float | None,
    query_dir: str | os.PathLike | None = None,
    layers=None,
    dtype: str = "float16",
    progress: bool | None = None,
    command: str | None = None,
    sentences: Mapping[str, str] | None = None,
    check_queries: int = 8,
    log: Callable[[str], None] | None = None,
    clip=None,
) -> ImportSummary:
    """Import the ``.npy`` features in ``video_dir`` (videos) and ``query_dir`` (queries) into
    the cache at ``cache_dir`` (created, or resumed when its manifest matches).

    ``model``: the CLIP the features were made with (hub id or local folder), or ``clip``, an
    already loaded :class:`~r2.extract.clip.FrozenCLIP`; ``layers``: the hidden states the
    files hold, ascending (default: the model's last four, as in the release); ``fps``:
    the clip rate they were sampled at (None: per video, YouTube Highlights).

    ``sentences``: ``{query id: sentence}`` (from the annotations): each query is stored with
    its sentence as ``text`` (what later stages compare with their annotations), and the first
    ``check_queries`` query files with a sentence are compared, before anything is written,
    with the model's own features of it (:func:`check_query_files`): files of another model,
    other layers or another layer order are refused. Returns an :class:`ImportSummary`; files
    that could not be imported are in ``summary.failures``.
    """
    from tqdm import tqdm

    from r2.extract.clip import FrozenCLIP

    t0 = time.perf_counter()
    log = log or (lambda msg: print(msg, file=sys.stderr))
    if video_dir is None and query_dir is None:
        raise ValueError("give a folder of video features, of query features, or both")
    if fps is not None and not 0 < float(fps) < float("inf"):
        raise ValueError(f"fps must be a positive finite number of clips per second, got {fps!r}")
    videos = npy_files(video_dir, "video") if video_dir is not None else {}
    queries = npy_files(query_dir, "query") if query_dir is not None else {}
    if clip is None:
        clip = FrozenCLIP(model, layers=layers)
    sentences = dict(sentences or {})
    if sentences and queries and not any(i in sentences for i in queries):
        log(f"warning: none of the {len(queries)} query files in {query_dir} is named by a query id of the "
            f"annotations (e.g. {next(iter(queries))!r} against {next(iter(sentences))!r}): no sentence is stored "
            "or checked")
    if check_queries and sentences:
        checked = {i: p for i, p in queries.items() if i in sentences}
        disagree = check_query_files(clip, {i: (checked[i], sentences[i]) for i in list(checked)[:check_queries]})
        if disagree and len(disagree) == min(len(checked), check_queries):
            raise ExtractionError(
                f"the query features in {query_dir} are not {clip.model_id}'s at layers "
                f"{', '.join(map(str, clip.layers))}: none of the {len(disagree)} checked agrees with the model's "
                f"features of its sentence ({disagree[0]}). Give the CLIP that made them (--model), the layers they "
                "hold (--layers), or the annotations they were made from")
        for text in disagree:
            log(f"warning: {text} (other queries agree: a tokenisation difference?)")
    manifest = feature_manifest(clip, fps, preprocessing_of(clip, "ffmpeg"), dtype, command)
    try:
        cache = FeatureCache.create(cache_dir, manifest)  # refuses a cache of other features
    except OSError as exc:
        raise _write_error(cache_dir, exc) from None
    _check_cached_items(cache, videos, queries, sentences)
    summary = ImportSummary(cache_dir=str(cache_dir), videos_total=len(videos), queries_total=len(queries))
    todo_videos = {i: p for i, p in videos.items() if not cache.has_video(i)}
    todo_queries = {i: p for i, p in queries.items() if not cache.has_query(i)}
    summary.videos_skipped = len(videos) - len(todo_videos)
    summary.queries_skipped = len(queries) - len(todo_queries)
    if summary.videos_skipped or summary.queries_skipped:
        log(f"resuming: {summary.videos_skipped} video(s) and {summary.queries_skipped} query(ies) already "
            f"in {cache_dir}")
    k = len(clip.layers)

    def committed(path, family, ids):
        try:
            summary.bytes_written += Path(path).stat().st_size
        except OSError:
            pass

    def add(writer, family, item_id, path):
        source = str(path.resolve())
        try:  # reading the file: its problems are this item's failure
            if family == "videos":
                x = _video_array(path, k, clip.tokens, clip.video_width)
            else:
                x = _query_array(path, k, clip.query_width, clip.context_length)
        except ValueError as exc:
            summary.failures.append(ImportFailure(item_id, source, str(exc)))
            return
        try:
            if family == "videos":
                writer.add_video(item_id, x, imported_from=source)
                summary.videos_imported += 1
                summary.clips += len(x)
            else:
                text = {"text": sentences[item_id]} if item_id in sentences else {}
                writer.add_query(item_id, x, np.ones(x.shape[1], dtype=bool), imported_from=source, **text)
                summary.queries_imported += 1
        except (OSError, ShardDiscardedError):  # a failed write (a full disk): the run stops
            raise
        except CacheError as exc:  # the cache refused the item: NaN or infinite values, beyond float16, ...
            summary.failures.append(ImportFailure(item_id, source, str(exc)))

    summary.startup_seconds = time.perf_counter() - t0
    jobs = [("queries", i, p) for i, p in todo_queries.items()] + [("videos", i, p) for i, p in todo_videos.items()]
    bar = tqdm(total=len(jobs), unit="file", disable=None if progress is None else not progress,
               dynamic_ncols=True, file=sys.stderr, mininterval=0.5)
    try:
        with cache.writer(on_commit=committed) as writer:  # leaving on an error commits what was whole
            waiting = []  # videos another live writer (an r2 extract or import into the cache) has claimed
            for family, item_id, path in jobs:
                if family == "videos" and not writer.claim_video(item_id):
                    waiting.append((item_id, path))
                    continue
                add(writer, family, item_id, path)
                bar.update(1)
            if waiting:  # as r2 extract does: commit, then wait for them; take over any left uncommitted
                writer.flush()
                with bar.external_write_mode(file=sys.stderr):
                    log(f"waiting for {len(waiting)} video(s) that other writer(s) of the cache are adding")
            while waiting:
                still = []
                for item_id, path in waiting:
                    if writer.claim_video(item_id):  # its writer stopped without it
                        add(writer, "videos", item_id, path)
                    elif not writer.video_committed(item_id):  # its writer is at it
                        still.append((item_id, path))
                        continue
                    else:
                        summary.videos_taken += 1
                    bar.update(1)
                waiting = still
                if waiting:
                    time.sleep(WAIT_POLL_SECONDS)
    except (OSError, ShardDiscardedError) as exc:
        raise _write_error(cache_dir, exc) from None
    finally:
        bar.close()
    summary.failures_file = write_failures(Path(cache_dir) / IMPORT_FAILURES_NAME,  # beside r2 extract's list
                                           [dataclasses.asdict(f) for f in summary.failures], cache_dir)
    summary.seconds = time.perf_counter() - t0
    return summary
