"""The extraction driver: decode workers feed one batched CLIP, features go into ``r2.cache``.

::

    summary = extract_features(
        [VideoJob("v1", "videos/v1.mp4"), ...], [QueryJob("q1", "a man opens a door"), ...],
        "cache/", "openai/clip-vit-base-patch32", fps=0.5, batch_size=64, workers=8, device="cuda")

- Decoding runs in ``workers`` loky processes (joblib's process pool), one video per task,
  at most ``2 * workers`` in flight; each streams the video's frames, ``(c, 224, 224, 3)``
  uint8 chunks (:func:`r2.extract.video.decode_chunks`), through a few slots of shared memory,
  so memory does not grow with the length of the videos. Features are streamed too: each
  batch's part of a video goes to the video's cache sink (``writer.begin_video``), which keeps
  it in RAM up to ``r2.cache.writer.SPILL_BYTES`` (256 MiB) a video and spills the rest to a
  file next to the partial shard, so an hour holds what a minute does, features included.
  ``workers=0`` decodes in this process, streamed the same way.
- A decode worker that dies (a segfault in FFmpeg, the OOM killer) does not end the run: the
  workers are restarted, the videos in flight retried one at a time, and the one that kills its
  worker alone is a failure ("decoder process crashed (exit code 139)").
- The main process packs frames from any number of videos into batches of ``batch_size``,
  normalises them on the device (only uint8 crosses to a GPU), runs the frozen CLIP
  (:class:`r2.extract.clip.FrozenCLIP`) and hands each finished video to the cache writer.
  On the CPU, torch gets the cores the decode workers leave (CPUs − workers threads): an
  oversubscribed OpenMP pool runs several times slower (measured 10x on 2 busy cores).
- Queries go first, in batches, through the text tower.
- Resume: ``FeatureCache.create`` reopens a compatible cache; ids already in it are skipped, so
  a rerun after a crash, a kill or failed videos does only what is missing. The cache commits
  shards atomically (a killed run loses at most its open shard).
- Failures (unreadable, empty, truncated, no video stream, crashed decoder, features the cache
  refuses: NaN, beyond the float16 range, ...) are collected with the absolute path and the
  reason, written (atomically) to ``failures.jsonl`` in the cache folder (one JSON object a
  line), and the others are extracted; the caller decides the exit code (``summary.ok``).
- Scale-out: ``num_shards``/``shard_index`` keep the videos and queries whose id hashes
  (sha1) to this shard: deterministic, independent of the input order and of the other
  shards' lists; the shard caches join with ``r2 cache merge``.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from r2.cache import CacheError, FeatureCache, ShardDiscardedError
from r2.cpus import usable_cpus
from r2.extract.video import DecodeResult, decode_chunks
from r2.fileio import atomic_write

__all__ = ["CacheWriteError", "ExtractionError", "ExtractionSummary", "Failure", "Note", "QueryJob", "VideoJob",
           "extract_features", "feature_manifest", "preprocessing_of",
           "in_shard", "SAMPLING", "TOKEN_FORM"]

# TOKEN_FORM and SAMPLING go into the cache manifest, and the cache compares them character for
# character when a run resumes or caches merge: changing this text makes existing caches
# incompatible (they refuse to resume or merge). Change it only when the features change.
TOKEN_FORM = ("hidden states (raw residual stream: before post_layernorm / final_layer_norm and the "
              "projections) of the kept layers; video: all tokens (CLS + patches) per frame; "
              "query: tokens SOT..EOT")
SAMPLING = ("ffmpeg fps filter rule: clip n = last frame with round(t*fps) <= n; "
            "round(duration*fps) clips")


@dataclass
class VideoJob:
    """One video to extract. ``fps``/``num_clips``/``sample_times`` override the run's sampling
    for this video (YouTube Highlights: its own rate and exactly ``len(match)`` clips)."""

    video_id: str
    path: str
    fps: float | None = None
    num_clips: int | None = None
    sample_times: list[float] | None = None


@dataclass
class QueryJob:
    query_id: str
    text: str


class ExtractionError(Exception):
    """The extraction cannot go on (e.g. decode worker processes that cannot start)."""

    user_error = True


class CacheWriteError(ExtractionError, OSError):
    """The cache folder cannot be written (a full disk, a read-only file system, no permission):
    one line naming the folder and the system's reason, not the traceback of the write that
    failed (h5py, ``os.mkdir``, the writer's lock). What was committed before stays in the cache
    and a rerun resumes from it. Also an ``OSError`` (``errno`` kept), as it was before."""

    def __init__(self, cache_dir, exc: OSError):
        reason = f"[Errno {exc.errno}] {os.strerror(exc.errno)}" if exc.errno else _one_line(exc)
        super().__init__(f"cannot write to {cache_dir}: {reason} (what was committed before is kept: "
                         "free space or make the folder writable, then rerun the same command to add the rest)")
        self.errno = exc.errno


def _write_error(cache_dir, exc: BaseException) -> BaseException:
    """``exc`` as the one-line :class:`CacheWriteError` when it is a failed write (an ``OSError``,
    or the writer's :class:`ShardDiscardedError` caused by one), else ``exc`` itself."""
    cause = exc.__cause__ if isinstance(exc, ShardDiscardedError) else exc
    if isinstance(cause, OSError) and not isinstance(cause, CacheWriteError):
        return CacheWriteError(cache_dir, cause)
    return exc


@dataclass
class Failure:
    """A video that was not extracted: ``path`` is the file (absolute), or for a video the
    annotations name but no file has, the name that was looked for; ``reason`` is one line."""

    video_id: str
    path: str
    reason: str

    def to_dict(self) -> dict:
        return {"video_id": self.video_id, "path": self.path, "reason": self.reason}


@dataclass
class Note:
    """A video that was extracted, with a remark worth reading (it is also in the video's cache
    attrs, ``notes``): e.g. its clip count cut or padded by the rounding to the annotated one."""

    video_id: str
    path: str  # absolute
    text: str


@dataclass
class ExtractionSummary:
    cache_dir: str
    videos_total: int = 0  # videos of this shard
    videos_extracted: int = 0  # in this run
    videos_skipped: int = 0  # already in the cache
    videos_taken: int = 0  # left to another writer of the cache that had claimed them (or committed them meanwhile)
    waited_for_others: bool = False  # the taken ones were waited for: committed by their writers
    clips: int = 0  # clips extracted in this run
    queries_total: int = 0
    queries_extracted: int = 0
    queries_skipped: int = 0
    bytes_written: int = 0  # committed shard bytes of this run
    seconds: float = 0.0  # the whole run
    startup_seconds: float = 0.0  # model load, cache open, queries: before the first video
    video_seconds: float = 0.0  # decoding + CLIP + writing the videos (wall clock)
    decode_seconds: float = 0.0  # summed over workers
    model_seconds: float = 0.0  # main process, vision tower incl. normalisation
    failures: list[Failure] = field(default_factory=list)
    failures_file: str | None = None
    notes: list[Note] = field(default_factory=list)  # extracted videos with a remark

    @property
    def ok(self) -> bool:
        return not self.failures

    def format(self) -> str:
        rate = self.clips / self.video_seconds if self.video_seconds > 0 else 0.0
        lines = [
            f"extracted into {self.cache_dir} in {self.seconds:.1f} s "
            f"(start-up: model, cache, queries {self.startup_seconds:.1f} s)",
            f"  videos : {self.videos_extracted} extracted, {self.videos_skipped} already cached, "
            + (f"{self.videos_taken} taken by another writer of the cache, " if self.videos_taken else "")
            + f"{len(self.failures)} failed (of {self.videos_total})",
            f"  clips  : {self.clips} ({rate:.1f} frames/s decoded and extracted, in {self.video_seconds:.1f} s)",
            f"  queries: {self.queries_extracted} extracted, {self.queries_skipped} already cached "
            f"(of {self.queries_total})",
            f"  written: {self.bytes_written / 1e6:.1f} MB",
        ]
        if self.videos_taken and self.waited_for_others:
            lines.append(f"  (the {self.videos_taken} taken were extracted by another run meanwhile: all are in the "
                         "cache)")
        elif self.videos_taken:
            lines.append(f"  (the {self.videos_taken} taken are another run's; when it is done, a rerun of the same "
                         "command adds any it did not finish)")
        if self.notes:
            lines.append(f"  notes  : {len(self.notes)} video(s) extracted with a remark (also in their cache attrs):")
            lines += _first_lines([f"{n.path}: {n.text}" for n in self.notes])
        if self.failures:
            lines.append(f"  FAILED : {len(self.failures)} video(s), listed in {self.failures_file}:")
            lines += _first_lines([f"{f.path}: {f.reason}" for f in self.failures])
            lines.append("  a rerun of the same command retries only the failed and missing videos")
        return "\n".join(lines)


def _first_lines(entries: list[str], shown: int = 20) -> list[str]:
    """The summary's indented listing: the first ``shown`` entries, then how many more."""
    out = [f"    {e}" for e in entries[:shown]]
    if len(entries) > shown:
        out.append(f"    ... and {len(entries) - shown} more")
    return out


def in_shard(item_id: str, num_shards: int, shard_index: int) -> bool:
    """Deterministic split: sha1(id) mod num_shards == shard_index."""
    if num_shards == 1:
        return True
    digest = hashlib.sha1(item_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % num_shards == shard_index


def _check_unique(ids: Iterable[str], word: str):
    seen, dup = set(), []
    for i in ids:
        if i in seen:
            dup.append(i)
        seen.add(i)
    if dup:
        raise ValueError(f"{len(dup)} duplicate {word} id(s), e.g. {dup[:3]}")


def preprocessing_of(clip, resize: str = "ffmpeg"):
    """The :class:`~r2.extract.preprocess.Preprocessing` of ``clip``'s frames: its image size,
    its mean and std, scaled by ``resize`` ("ffmpeg": the official recipe; "hf":
    ``CLIPImageProcessor``'s)."""
    from r2.extract.preprocess import PIL_BICUBIC, Preprocessing

    mean, std = clip.image_stats()
    return Preprocessing(size=clip.image_size, crop=clip.image_size, resize=resize, mean=mean, std=std,
                         interpolation=PIL_BICUBIC if resize == "hf" else "bicubic")


def feature_manifest(clip, fps: float | None, prep, dtype: str = "float16", command: str | None = None) -> dict:
    """The cache manifest of features made by ``clip`` (a :class:`~r2.extract.clip.FrozenCLIP`)
    at ``fps`` (None: per video) from frames preprocessed by ``prep``, stored as ``dtype``:
    what every later stage compares (model, layers, sampling, preprocessing, ...)."""
    manifest = {
        "model_id": clip.model_id,
        "model_config_hash": clip.config_hash,
        "layers": list(clip.layers),
        "query_layers": list(clip.query_layers),
        "fps": float(fps) if fps is not None else None,
        "preprocessing": prep.to_dict(),
        "dtype": dtype,
        "token_form": TOKEN_FORM,
        "video_width": clip.video_width,
        "query_width": clip.query_width,
        "tokens_per_frame": clip.tokens,
        "precision": clip.precision,
        "sampling": SAMPLING,
    }
    if clip.weights_hash is not None:  # the model's identity wherever its folder lies
        manifest["model_weights_hash"] = clip.weights_hash
    if command:
        manifest["command"] = command
    return manifest


def _failures_name(num_shards: int, shard_index: int) -> str:
    return "failures.jsonl" if num_shards == 1 else f"failures-shard{shard_index}of{num_shards}.jsonl"


def extract_features(
    videos: Sequence[VideoJob],
    queries: Sequence[QueryJob],
    cache_dir: str | os.PathLike,
    model: str | os.PathLike,
    *,
    fps: float | None = 0.5,
    layers: Sequence[int] | None = None,
    batch_size: int = 64,
    workers: int | None = None,
    device: str = "cpu",
    precision: str = "fp32",
    dtype: str = "float16",
    resize: str = "ffmpeg",
    num_shards: int = 1,
    shard_index: int = 0,
    decode_threads: int = 1,
    max_shard_items: int | None = None,
    progress: bool | None = None,
    command: str | None = None,
    log: Callable[[str], None] | None = None,
    clip=None,
    known_failures: Sequence[Failure] = (),
    wait_for_others: bool = True,
) -> ExtractionSummary:
    """Extract the features of ``videos`` and ``queries`` into the cache at ``cache_dir``.

    ``fps``: the run's sampling rate (None: every video brings its own ``fps``,
    ``sample_times``; the manifest then says fps = None). ``layers``: hidden-state indices
    (default: the last four). ``workers``: decode processes (default: CPU count − 1 when the
    model runs on the CPU, CPU count but at most 32 on a GPU; 0 = decode in this process). ``clip``: an
    already loaded :class:`~r2.extract.clip.FrozenCLIP` (tests, benchmarks).
    ``known_failures``: videos the caller could not even find (reported with the others).
    ``progress``: a progress bar on stderr (None: only on a terminal). ``wait_for_others``:
    when the rest is done, wait for the videos that other live writers of the cache (another
    ``r2 extract`` into it) have claimed and not committed yet, and extract any one whose
    writer stops without committing it; so a run that returns has every video of its list in
    the cache, or failed (False: leave them to those writers, counted as taken). Returns an
    :class:`ExtractionSummary`; failed videos are in ``summary.failures`` and the failures file.
    """
    from r2.extract.clip import FrozenCLIP

    t_start = time.perf_counter()
    log = log or (lambda msg: print(msg, file=sys.stderr))
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index must be in 0..{num_shards - 1}, got {shard_index}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if fps is not None and not 0 < float(fps) < float("inf"):  # (nan compares False)
        raise ValueError(f"fps must be a positive finite number of clips per second, got {fps!r}")
    _check_unique((v.video_id for v in videos), "video")
    _check_unique((q.query_id for q in queries), "query")
    if fps is None and any(v.fps is None and v.sample_times is None for v in videos):
        raise ValueError("fps=None (per-video sampling) needs fps or sample_times on every video")
    videos = [v for v in videos if in_shard(v.video_id, num_shards, shard_index)]
    queries = [q for q in queries if in_shard(q.query_id, num_shards, shard_index)]

    if clip is None:
        clip = FrozenCLIP(model, layers=layers, device=device, precision=precision)
    prep = preprocessing_of(clip, resize)
    manifest = feature_manifest(clip, fps, prep, dtype, command)
    try:
        cache = FeatureCache.create(cache_dir, manifest)  # refuses a cache of other settings (precision too)
    except OSError as exc:  # a read-only file system, no permission, a full disk: one line, no traceback
        raise _write_error(cache_dir, exc) from None
    summary = ExtractionSummary(cache_dir=str(cache_dir), videos_total=len(videos), queries_total=len(queries),
                                waited_for_others=wait_for_others)
    summary.failures.extend(f for f in known_failures if in_shard(f.video_id, num_shards, shard_index))
    summary.videos_total += len(summary.failures)
    todo_videos = [v for v in videos if not cache.has_video(v.video_id)]
    cached = {q.query_id for q in queries if cache.has_query(q.query_id)}
    todo_queries = [q for q in queries if q.query_id not in cached]
    _check_cached_sentences(cache, queries)
    _check_cached_files(cache, videos)
    summary.videos_skipped = len(videos) - len(todo_videos)
    summary.queries_skipped = len(queries) - len(todo_queries)
    if summary.videos_skipped or summary.queries_skipped:
        log(f"resuming: {summary.videos_skipped} video(s) and {summary.queries_skipped} query(ies) already "
            f"in {cache_dir}")

    def committed(path, family, ids):
        try:
            summary.bytes_written += Path(path).stat().st_size
        except OSError:
            pass

    writer_opts = {"on_commit": committed}
    if max_shard_items:
        writer_opts["max_shard_items"] = max_shard_items
    # Writes that fail (ENOSPC, EROFS, EACCES) end the run with one line (CacheWriteError); only
    # the writer's own calls are translated, so an OSError of something else (the decode
    # workers' shared memory, say) still says what it is.
    try:
        writer = cache.writer(**writer_opts)  # creates shards/ and the writer's lock file
    except (OSError, ShardDiscardedError) as exc:
        raise _write_error(cache_dir, exc) from None
    if todo_videos or todo_queries:
        _warn_of_other_writers(writer, cache_dir, log)
    closing = False
    try:
        with writer:  # leaving on an error commits what was whole (a rerun resumes from it)
            if todo_queries:
                _extract_queries(clip, todo_queries, writer, summary, log, batch_size=max(64, batch_size))
            summary.startup_seconds = time.perf_counter() - t_start
            if todo_videos:
                _extract_videos(clip, todo_videos, writer, summary, prep, log, fps=fps, batch_size=batch_size,
                                workers=workers, decode_threads=decode_threads, progress=progress, dtype=dtype,
                                wait_for_others=wait_for_others)
            closing = True
    except (OSError, ShardDiscardedError) as exc:
        if not closing and not isinstance(exc, ShardDiscardedError):
            raise  # not the writer's (its writes raise CacheWriteError from inside)
        raise _write_error(cache_dir, exc) from None

    summary.failures_file = write_failures(Path(cache_dir) / _failures_name(num_shards, shard_index),
                                           [f.to_dict() for f in summary.failures], cache_dir)
    summary.seconds = time.perf_counter() - t_start
    return summary


def write_failures(path: Path, rows: list[dict], cache_dir) -> str | None:
    """Write the failures of a run (one JSON object a line) to ``path`` atomically, and return
    it; with none, remove a list an earlier run left (everything that failed then is in the
    cache now) and return None."""
    try:
        if rows:
            atomic_write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            return str(path)
        if path.exists():
            path.unlink()
    except OSError as exc:
        raise _write_error(cache_dir, exc) from None
    return None


def _warn_of_other_writers(writer, cache_dir, log) -> None:
    """Say so when other processes write to this cache now: the videos are shared out between
    the runs (:meth:`CacheWriter.claim_video`), so this one may extract only some of them."""
    others = writer.other_live_writers()
    if not others:
        return
    who = _first_of([w.label for w in others], 3)
    log(f"note: {len(others)} other writer(s) are adding to {cache_dir} now ({who}): a video one of them "
        "has taken is left to it, so the runs share the work")


def _check_cached_sentences(cache, queries: Sequence[QueryJob], shown: int = 3) -> None:
    """Refuse query ids that the cache holds for another sentence: skipping them as "already
    cached" would leave their features those of the other sentence (ids that collide across
    annotation files, e.g. two files both numbering their queries from 0)."""
    changed = cache.sentence_mismatches({q.query_id: q.text for q in queries})
    if changed:
        examples = _first_of([f"query {m.query_id!r}: cached {m.cached!r}, now {m.given!r}" for m in changed],
                             shown)
        raise ExtractionError(
            f"{len(changed)} query id(s) are already in {cache.path} for another sentence: "
            f"{examples}. Query ids must be unique across the annotation files of one "
            "cache: give one file's queries other ids (e.g. a prefix), or extract into another "
            "cache folder")


def _check_cached_files(cache, videos: Sequence[VideoJob], shown: int = 3) -> None:
    """Refuse video ids that the cache holds from a file of another size: skipping them as
    "already cached" would leave their features those of the other file (two data sets that
    both have a ``clip1.mp4``, extracted into one cache). The size in bytes is what the video's
    attrs record (``file_bytes``); for a video cached before that was recorded, the size of its
    recorded ``source`` when that file is still there. A file of the same size elsewhere (a
    data set folder that was moved or copied) is the same video."""
    changed = []
    for v in videos:
        if not cache.has_video(v.video_id):
            continue
        try:
            size = os.path.getsize(v.path)
        except OSError:
            continue  # not there now: nothing to compare, it stays skipped as cached
        attrs = cache.video_attrs(v.video_id)
        source, cached = attrs.get("source"), attrs.get("file_bytes")
        if cached is None and source and source != os.path.abspath(v.path):
            try:
                cached = os.path.getsize(source)
            except OSError:
                continue  # moved: nothing to compare
        if cached is not None and cached != size:
            changed.append((v, source, cached, size))
    if changed:
        examples = _first_of([f"video {v.video_id!r}: cached from {source} ({cached} bytes), now "
                              f"{os.path.abspath(v.path)} ({size} bytes)" for v, source, cached, size in changed],
                             shown)
        raise ExtractionError(
            f"{len(changed)} video id(s) are already in {cache.path} from another file: {examples}. "
            "Video ids must be unique across the inputs of one cache: give these videos other ids (e.g. "
            "extract the folder above them, so that the ids start with their folder's name), or extract "
            "into another cache folder (also when a file was replaced on purpose)")


def _first_of(entries: list[str], shown: int) -> str:
    """The first ``shown`` entries for a one-line message, ``"a; b; c (and 4 more)"``."""
    more = f" (and {len(entries) - shown} more)" if len(entries) > shown else ""
    return "; ".join(entries[:shown]) + more


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def _extract_queries(clip, queries, writer, summary, log, batch_size, shown=3):
    long = [(q, n) for q, n in zip(queries, clip.token_counts([q.text for q in queries])) if n > clip.context_length]
    if long:  # CLIP's text tower reads at most context_length tokens: the rest is not in the features
        examples = _first_of([f"query {q.query_id!r} ({n} tokens)" for q, n in long], shown)
        log(f"warning: {len(long)} query(ies) are longer than CLIP's {clip.context_length} tokens and are cut "
            f"to their first {clip.context_length}: {examples}")
    for i in range(0, len(queries), batch_size):
        chunk = queries[i:i + batch_size]
        feats, lengths = clip.text_features([q.text for q in chunk])
        for q, f, n in zip(chunk, feats, lengths):
            try:
                writer.add_query(q.query_id, f, np.ones(n, dtype=bool), text=q.text)
            except (OSError, ShardDiscardedError) as exc:
                raise _write_error(writer.root, exc) from None
            summary.queries_extracted += 1


def _default_workers(device: str) -> int:
    cpus = usable_cpus()
    if str(device).startswith("cpu"):
        return max(1, cpus - 1)
    return max(1, min(cpus, 32))


# --- decode workers ------------------------------------------------------------------------
_CHUNK_FRAMES = 32  # frames per shared-memory slot: 4.8 MB at 224 px
_SHM_BUDGET = 64 * 2**20  # bytes of shared memory for the slots, at most
_BEGIN, _RESTART, _DONE = -1, -2, -3  # control messages in the slot field


class _DecodePool:
    """Decode worker processes (joblib's loky executor) that stream each video's frames in chunks.

    Frames travel through ``slots`` slots of shared memory, ``chunk`` frames each: a worker
    takes a free slot (waiting while none is free, so decoding never runs ahead of the model by
    more than the slots), writes up to ``chunk`` frames and sends ``(job, slot, count)``; the
    main process copies them out and frees the slot. Memory is ``slots x chunk`` frames, however
    long the videos are. Only such 3-int tuples cross the pipe, one atomic write each, so a worker
    that dies mid-video (a segfault in FFmpeg, the OOM killer) leaves no half message behind:
    loky fails the futures with ``TerminatedWorkerError`` and :meth:`restart` starts afresh. A
    pool is kept for the next run of the same shape (starting workers costs ~0.3 s).
    """

    def __init__(self, workers: int, frame_shape: tuple[int, int, int]):
        from multiprocessing import shared_memory

        frame_bytes = int(np.prod(frame_shape))
        budget = _shm_budget()
        self.workers, self.frame_shape, self.pid = workers, frame_shape, os.getpid()
        self.slots = max(2, min(2 * workers, budget // frame_bytes))
        self.chunk = max(1, min(_CHUNK_FRAMES, budget // (self.slots * frame_bytes)))
        self.shm = shared_memory.SharedMemory(create=True, size=self.slots * self.chunk * frame_bytes)
        self.view = np.ndarray((self.slots, self.chunk, *frame_shape), np.uint8, self.shm.buf)
        self._start()

    def _start(self):
        from joblib.externals.loky import ProcessPoolExecutor
        from joblib.externals.loky.backend import get_context

        ctx = get_context("loky")
        self.free = ctx.SimpleQueue()  # slot numbers; workers wait on it
        self.messages, self.sender = ctx.Pipe(duplex=False)  # (job, slot or control, count) from the workers
        for slot in range(self.slots):
            self.free.put(slot)
        self.executor = ProcessPoolExecutor(self.workers, timeout=30, initializer=_init_worker,
                                            initargs=(self.shm.name, self.view.shape, self.free, self.sender,
                                                      os.getpid()))

    def submit(self, key: int, args: tuple):
        return self.executor.submit(_decode_task, key, args, self.chunk)

    def receive(self, timeout: float):
        """The next ``(job, slot, count)`` message, or None after ``timeout`` seconds."""
        return self.messages.recv() if self.messages.poll(timeout) else None

    def take(self, slot: int, count: int) -> np.ndarray:
        frames = self.view[slot, :count].copy()  # (count, S, S, 3) uint8
        self.free.put(slot)
        return frames

    def restart(self) -> set[int]:
        """Kill the workers, start new ones; returns the jobs that had begun (they may be the cause)."""
        self.executor.shutdown(wait=True, kill_workers=True)
        began = set()
        while self.messages.poll(0):  # every writer is dead: only whole messages are left
            key, slot, _ = self.messages.recv()
            if slot == _BEGIN:
                began.add(key)
        self._close_channels()
        self._start()
        return began

    def _close_channels(self):
        self.free.close()
        self.messages.close()
        self.sender.close()

    def close(self):
        self.executor.shutdown(wait=True, kill_workers=True)
        self._close_channels()
        del self.view  # the buffer must not be exported when the segment closes
        self.shm.close()
        self.shm.unlink()


_POOL: _DecodePool | None = None


def _pool(workers: int, frame_shape: tuple[int, int, int]) -> _DecodePool:
    global _POOL
    if _POOL is not None and _POOL.pid != os.getpid():  # inherited by a fork: the parent's
        _POOL = None
    if _POOL is not None and (_POOL.workers, _POOL.frame_shape) != (workers, frame_shape):
        _close_pool()
    if _POOL is None:
        _POOL = _DecodePool(workers, frame_shape)
    return _POOL


@atexit.register
def _close_pool():
    global _POOL
    pool, _POOL = _POOL, None
    if pool is not None and pool.pid == os.getpid():
        pool.close()


def _shm_budget() -> int:
    """64 MiB, or half of what /dev/shm has free when that is less (a container's /dev/shm is
    often 64 MB, and writing past its end kills the writer with SIGBUS)."""
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return _SHM_BUDGET
    return max(1, min(_SHM_BUDGET, st.f_bavail * st.f_frsize // 2))


_WORKER: dict = {}


def _init_worker(shm_name, shape, free, sender, parent):
    from multiprocessing import shared_memory

    _exit_with_parent(parent)
    shm = shared_memory.SharedMemory(name=shm_name)
    _WORKER.update(shm=shm, view=np.ndarray(shape, np.uint8, shm.buf), free=free, sender=sender)


def _exit_with_parent(parent: int, every: float = 0.5) -> None:
    """In a decode worker: exit as soon as ``parent``, the ``r2 extract`` process (its pid is
    passed, so that one that died before this worker started is noticed too), is gone. A
    SIGKILLed extract cannot stop its workers, and one waiting for a free slot would wait for
    ever, holding the shared memory (whose segment is removed only once every worker is gone)."""
    import threading

    child = os.getppid() == parent  # (a child is reparented when its parent dies, zombie or not)

    def gone() -> bool:
        if os.getppid() == parent:
            return False
        if child:
            return True
        try:  # started by another process: is the extract still there?
            os.kill(parent, 0)
        except ProcessLookupError:
            return True
        except OSError:
            return False
        return False

    def watch():
        while not gone():
            time.sleep(every)
        os._exit(1)

    threading.Thread(target=watch, name="r2-exit-with-parent", daemon=True).start()


def _decode_task(key: int, args: tuple, chunk: int) -> DecodeResult:
    """In a worker: decode one video, streaming its frames through the slots; returns its
    :class:`DecodeResult` (``frames`` None) after the ``_DONE`` message."""
    view, free, sender = _WORKER["view"], _WORKER["free"], _WORKER["sender"]
    sender.send((key, _BEGIN, 0))
    for kind, value in decode_chunks(*args, chunk=chunk):
        if kind == "frames":
            slot = free.get()
            view[slot, :len(value)] = value
            sender.send((key, slot, len(value)))
        elif kind == "restart":
            sender.send((key, _RESTART, 0))
        else:
            result = value
    sender.send((key, _DONE, 0))
    return result


def _exit_codes(exc: Exception) -> str:
    """loky's "The exit codes of the workers are {EXIT(139)}" → "exit code 139"."""
    import re

    found = re.search(r"exit codes of the workers are \{([^}]*)\}", str(exc))
    parts = []
    for name, code in re.findall(r"(\w+)\((-?\d+)\)", found.group(1) if found else ""):
        if name == "EXIT":
            parts.append(f"exit code {code}")
        elif name == "SIGKILL":
            parts.append(f"exit code {code}, SIGKILL: killed, e.g. by the out-of-memory killer")
        else:
            parts.append(f"exit code {code}, {name}")
    return "; ".join(dict.fromkeys(parts)) or "exit code unknown"


#: seconds between looks at the videos other live writers of the cache are extracting, once
#: everything else is done (``wait_for_others``)
WAIT_POLL_SECONDS = 1.0
#: how often a run that waits says so again
WAIT_REMINDER_SECONDS = 60.0


def _decode_results(jobs, fps, size, resize, workers, threads, may_start=None, on_wait=None):
    """Decode every job; yields, as it happens:

    - ``("frames", i, frames)``: the next ``(c, S, S, 3)`` uint8 frames of job ``i``, in clip order;
    - ``("restart", i)``: drop the frames of job ``i`` so far, they come again (the skipping
      decoder fell back to decoding every frame, or a worker died and the job is retried);
    - ``("done", i, result)``: job ``i`` is complete (:class:`DecodeResult`, ``frames`` None);
      with ``result.error`` set it failed: drop its frames;
    - ``("taken", i)``: ``may_start(i)``, asked just before job ``i`` would start, said no
      (another writer of the cache has it), and again once every other job was done. Not
      decoded. A job it says yes to the second time (its claimer died without committing it)
      is decoded then. ``may_start`` answers True (start it), False (leave it: done, or to be
      left to its claimer) or None (its claimer is alive and has not committed it: ask again);
      jobs it keeps answering None for are asked again every :data:`WAIT_POLL_SECONDS`, after
      ``on_wait(jobs)`` is called with them, until it answers True or False.

    ``workers`` loky processes (joblib's process pool; used directly because joblib runs
    ``n_jobs=1`` in the calling process, and one decode process next to the model is the right
    set-up for two cores), at most ``2 * workers`` videos in flight, frames streamed through
    :class:`_DecodePool`. With one worker the order of the events (so the model's batches, and
    the features to the last bit) is the same in every run.

    A worker that dies (segfault, OOM kill) fails every job in flight: those that had begun are
    retried one at a time, the others go back in line; a job that kills its worker while it runs
    alone is done with ``error`` "decoder process crashed (exit code ...)".
    """
    from concurrent.futures.process import BrokenProcessPool

    args = [(j.video_id, j.path, j.fps if j.fps is not None else fps, j.sample_times, j.num_clips, size, resize,
             threads) for j in jobs]
    if workers == 0:
        def decode(i):
            for kind, value in decode_chunks(*args[i], chunk=_CHUNK_FRAMES):
                yield (kind, i) if kind == "restart" else (kind, i, value)

        waiting = []
        for i in range(len(args)):
            if may_start is not None and not may_start(i):
                waiting.append(i)
            else:
                yield from decode(i)
        while waiting:  # a second look, at the end (and more while their claimers work on them)
            still = []
            for i in waiting:
                answer = may_start(i)
                if answer:
                    yield from decode(i)
                elif answer is None:
                    still.append(i)
                else:
                    yield "taken", i
            waiting = still
            if waiting:
                _wait_for_others(on_wait, waiting)
        return

    pool = _pool(min(workers, len(args)), (size, size, 3))
    todo = deque(range(len(args)))
    alone: deque[int] = deque()  # had begun when a worker died: retried one at a time
    solo: int | None = None  # the job running alone
    running: dict = {}  # job -> future
    began: set[int] = set()
    started: set[int] = set()  # jobs whose frames went out: a retry restarts them
    allowed: set[int] = set()  # jobs may_start let start
    waiting: list[int] = []  # jobs may_start refused: another writer has them
    idle_crashes = 0
    clean = False

    def crashed(exc) -> list:
        """Events after a worker died: restarts, and the job found guilty (if it ran alone)."""
        nonlocal solo, idle_crashes
        lost = set(running)
        running.clear()
        suspects = (began | pool.restart()) & lost
        began.difference_update(lost)
        events = [("restart", i) for i in sorted(lost & started)]
        started.difference_update(lost)
        guilty, solo = solo, None
        if guilty is not None:
            events.append(("done", guilty, DecodeResult(jobs[guilty].video_id, jobs[guilty].path,
                                                        error=f"decoder process crashed ({_exit_codes(exc)})")))
            lost.discard(guilty)
            suspects.discard(guilty)
        # a worker that dies with no video begun (at start-up) would otherwise be retried forever
        idle_crashes = 0 if suspects or guilty is not None else idle_crashes + 1
        if idle_crashes >= 3:
            raise ExtractionError(f"the decode worker processes die before decoding anything ({_exit_codes(exc)}); "
                                  "decode in this process with --workers 0")
        alone.extend(sorted(suspects))
        todo.extendleft(sorted(lost - suspects, reverse=True))
        return events

    try:
        while True:
            while todo or alone or running:
                try:  # (a job leaves its line only once it is submitted: submit fails on a broken pool)
                    if solo is None and alone and not running:
                        running[alone[0]] = pool.submit(alone[0], args[alone[0]])
                        solo = alone.popleft()
                    while solo is None and not alone and todo and len(running) < 2 * pool.workers:
                        if todo[0] not in allowed:  # (a job back in line after a crash was allowed already)
                            if may_start is not None and not may_start(todo[0]):
                                waiting.append(todo.popleft())  # asked again at the end
                                continue
                            allowed.add(todo[0])
                        running[todo[0]] = pool.submit(todo[0], args[todo[0]])
                        todo.popleft()
                except BrokenProcessPool as exc:
                    yield from crashed(exc)
                    continue
                message = pool.receive(timeout=0.5)
                if message is None:  # quiet: has a worker died (or a task failed)?
                    failed = next((f for f in running.values() if f.done() and f.exception() is not None), None)
                    if failed is not None:
                        if not isinstance(failed.exception(), BrokenProcessPool):
                            raise failed.exception()  # a bug in the task, not in a video
                        yield from crashed(failed.exception())
                    continue
                key, slot, count = message
                if slot >= 0:
                    started.add(key)
                    yield "frames", key, pool.take(slot, count)
                elif slot == _BEGIN:
                    began.add(key)
                elif slot == _RESTART:
                    if key in started:
                        started.discard(key)
                        yield "restart", key
                else:  # _DONE: every chunk of this job is in
                    try:
                        result = running[key].result()
                    except BrokenProcessPool as exc:
                        yield from crashed(exc)
                        continue
                    del running[key]
                    began.discard(key)
                    started.discard(key)
                    if key == solo:
                        solo = None
                    yield "done", key, result
            if not waiting:
                break
            still = []
            for i in waiting:  # a second look, once everything else is done
                answer = may_start(i)
                if answer:  # its claimer died without committing it: this run does it
                    allowed.add(i)
                    todo.append(i)
                elif answer is None:  # its claimer is alive and at it: asked again
                    still.append(i)
                else:
                    yield "taken", i
            waiting[:] = still
            if waiting and not todo:
                _wait_for_others(on_wait, waiting)
        clean = True
    finally:
        if not clean:  # stopped half-way: workers may hold slots, start afresh next time
            _close_pool()


def _wait_for_others(on_wait, waiting: list[int]) -> None:
    if on_wait is not None:
        on_wait(list(waiting))
    time.sleep(WAIT_POLL_SECONDS)


class _Pending:
    """A video whose frames are coming in: its features so far, in clip order, in its cache sink."""

    __slots__ = ("video_id", "sink", "error", "queued", "received", "result", "overflow")

    def __init__(self, video_id: str):
        self.video_id = video_id
        self.sink = None  # the writer's VideoSink, opened with the first part
        self.error: str | None = None  # the cache refused a part (the sink is aborted)
        self.queued = 0  # frames waiting for the model
        self.received = 0  # frames that came from the decoder so far
        self.result: DecodeResult | None = None  # set when every frame has come
        self.overflow = 0.0  # the largest |feature| that float16 storage cannot hold (0: none)


class _CPUThreads:
    """Torch threads for CLIP on the CPU next to ``workers`` decode processes.

    It starts with the cores the decoders do not use (an oversubscribed OpenMP pool is many
    times slower while the decoders are busy). Once a few batches and videos are done it
    compares the costs per clip: when the model takes more than twice as long as the decoders
    need (a real CLIP: ViT-B/32 ~100 ms a clip on one core, decoding ~10 ms), the decoders sit
    idle most of the time and the model gets every core (measured on 2 cores, ViT-B/32:
    8.6 -> 12 images/s). A decode-bound run (the tiny CLIP) keeps the split.
    """

    def __init__(self, cpus: int, workers: int):
        self.cpus, self.workers = cpus, workers
        self.model_threads = max(1, cpus - workers)
        self.decided = self.model_threads >= cpus

    def revise(self, model_seconds: float, modelled_clips: int, decode_seconds: float, decoded_clips: int) -> bool:
        """True when the model's thread count changed."""
        if self.decided or modelled_clips < 32 or decoded_clips == 0 or decode_seconds <= 0:
            return False
        self.decided = True
        model_per_clip = model_seconds / modelled_clips  # wall s at model_threads
        decode_per_clip = decode_seconds / decoded_clips / self.workers  # wall s, workers in parallel
        if model_per_clip > 2 * decode_per_clip:
            self.model_threads = self.cpus
            return True
        return False


def _extract_videos(clip, jobs, writer, summary, prep, log, *, fps, batch_size, workers, decode_threads, progress,
                    dtype, wait_for_others=True):
    import torch
    from tqdm import tqdm

    from r2.extract.preprocess import normalize

    workers = _default_workers(str(clip.device)) if workers is None else workers
    feat_dtype = np.float16 if dtype == "float16" else np.float32
    pending: dict[int, _Pending] = {}
    queue: deque[tuple[_Pending, np.ndarray]] = deque()  # frames not yet run, (c, S, S, 3) each
    queued = done = 0
    bar = tqdm(total=len(jobs), unit="video", disable=None if progress is None else not progress, dynamic_ncols=True,
               file=sys.stderr, mininterval=0.5)
    t0 = time.perf_counter()
    modelled = [0]  # clips through the model so far
    decoded_clips = 0  # clips of the videos whose decoding is done (summary.decode_seconds)

    def run_batch(limit: int):
        nonlocal queued
        parts, frames, taken = [], [], 0
        while queue and taken < limit:
            item, x = queue.popleft()
            take = min(len(x), limit - taken)
            parts.append((item, take))
            frames.append(x[:take])
            if take < len(x):
                queue.appendleft((item, x[take:]))
            taken += take
        queued -= taken
        tm = time.perf_counter()
        x = normalize(np.concatenate(frames) if len(frames) > 1 else frames[0], prep.mean, prep.std,
                      device=clip.device)
        feats = clip.video_features(x).cpu().numpy()  # (B, K, N, D)
        summary.model_seconds += time.perf_counter() - tm
        modelled[0] += taken
        pos = 0
        for item, n in parts:
            part = feats[pos:pos + n]
            try:
                with np.errstate(over="raise"):  # float32 -> float16: overflow is free to detect here
                    stored = part.astype(feat_dtype)
            except FloatingPointError:
                stored = None
                with np.errstate(over="ignore", invalid="ignore"):
                    item.overflow = max(item.overflow, float(np.abs(part[np.isfinite(part)]).max()))
            if item.overflow or item.error is not None:  # not stored: drop what it has
                if item.sink is not None:
                    item.sink.abort()
                    item.sink = None
            else:
                try:
                    if item.sink is None:
                        item.sink = writer.begin_video(item.video_id)
                    item.sink.append(stored, copy=False)  # a new array of this batch
                except (OSError, ShardDiscardedError) as exc:  # a spill that fails, the writer dropped a shard:
                    raise _write_error(writer.root, exc) from None  # not this video's failure, the run stops
                except CacheError as exc:  # NaN, a shape...: this video fails at its end, the others go on
                    item.error = _one_line(exc)  # (the sink aborted itself)
                    item.sink = None
            item.queued -= n
            pos += n
            if item.result is not None and item.queued == 0:
                finish(item)

    def drop(item: _Pending):
        nonlocal queued
        kept = deque(e for e in queue if e[0] is not item)
        queued -= sum(len(x) for it, x in queue if it is item)
        queue.clear()
        queue.extend(kept)
        if item.sink is not None:
            item.sink.abort()
            item.sink = None
        item.error = None
        item.queued = 0
        item.overflow = 0.0

    def say(message: str):  # through the caller's log, with the bar out of the way
        with bar.external_write_mode(file=sys.stderr):
            log(message)

    def fail(result: DecodeResult, reason: str):
        summary.failures.append(Failure(result.video_id, os.path.abspath(result.path), reason))
        say(f"failed: {result.path}: {reason}")
        bar.update(1)

    def finish(item: _Pending):
        r = item.result
        sink, item.sink = item.sink, None
        if item.overflow:  # the float16 copy has inf where the model gave a finite value
            if sink is not None:
                sink.abort()
            fail(r, f"features not stored: values up to {item.overflow:.4g}, beyond the float16 range (+-65504); "
                    "extract with --dtype float32")
            return
        if item.error is not None:
            fail(r, f"features not stored: {item.error}")
            return
        try:
            if sink is None:
                sink = writer.begin_video(r.video_id)  # no frames: commit refuses it
            clips = sink.commit(**r.attrs)
        except (OSError, ShardDiscardedError) as exc:  # a full disk; videos counted as extracted dropped
            raise _write_error(writer.root, exc) from None  # with a shard: the run stops, a rerun adds them
        except CacheError as exc:  # this video's features (NaN, beyond float16, a shape): the others go on
            fail(r, f"features not stored: {_one_line(exc)}")  # (the sink aborted itself)
            return
        summary.videos_extracted += 1
        summary.clips += clips
        if r.attrs.get("notes"):  # e.g. a YouTube clip count within the rounding of its annotation
            summary.notes.append(Note(r.video_id, os.path.abspath(r.path), r.attrs["notes"]))
            say(f"note: {r.path}: {r.attrs['notes']}")
        bar.update(1)
        elapsed = time.perf_counter() - t0
        bar.set_postfix_str(f"{summary.clips / elapsed:.1f} frames/s, {len(summary.failures)} failed", refresh=False)

    def may_start(i):
        """True: this run's now; False: another writer committed it (or it is left to its claimer,
        without ``wait_for_others``); None: another live writer is extracting it."""
        video_id = jobs[i].video_id
        if writer.claim_video(video_id):
            return True
        return None if wait_for_others and not writer.video_committed(video_id) else False

    told = []  # when the waiting was said: first, and again every WAIT_REMINDER_SECONDS

    def on_wait(waiting):
        # First make this run's own finished videos visible: another run may be waiting for them
        # in turn (two runs that each wait for the other's uncommitted shard would wait forever).
        while queued:
            run_batch(batch_size)
        try:
            writer.flush()
        except (OSError, ShardDiscardedError) as exc:
            raise _write_error(writer.root, exc) from None
        now = time.monotonic()
        if told and now - told[-1] < WAIT_REMINDER_SECONDS:
            return
        who = _first_of([w.label for w in writer.other_live_writers()], 3)
        if not told:
            say(f"waiting for {len(waiting)} video(s) that other writer(s) of the cache are extracting ({who}), "
                "to take over any one left uncommitted (Ctrl-C, or --no-wait next time, leaves them to those writers)")
        else:  # a writer that holds its claims but does no work (a notebook's open writer) would be waited for
            say(f"still waiting for {len(waiting)} video(s) after {(now - told[0]) / 60:.0f} min ({who})")
        told.append(now)

    threads = torch.get_num_threads()
    plan = _CPUThreads(usable_cpus(), workers) if clip.device.type == "cpu" and workers > 0 else None
    if plan is not None:
        torch.set_num_threads(plan.model_threads)
    try:
        with torch.inference_mode():
            for event in _decode_results(jobs, fps, prep.size, prep.resize, workers, decode_threads,
                                         may_start=may_start, on_wait=on_wait):
                kind, i = event[0], event[1]
                if kind == "taken":  # another writer of the cache is extracting it
                    done += 1
                    summary.videos_taken += 1
                    bar.update(1)
                elif kind == "frames":
                    item = pending.get(i)
                    if item is None:
                        item = pending[i] = _Pending(jobs[i].video_id)
                    item.received += len(event[2])
                    queue.append((item, event[2]))
                    item.queued += len(event[2])
                    queued += len(event[2])
                    while queued >= batch_size:
                        run_batch(batch_size)
                        if plan is not None and plan.revise(summary.model_seconds, modelled[0],
                                                            summary.decode_seconds, decoded_clips):
                            torch.set_num_threads(plan.model_threads)
                elif kind == "restart":
                    if i in pending:
                        drop(pending[i])
                else:
                    result = event[2]
                    done += 1
                    summary.decode_seconds += result.seconds
                    item = pending.pop(i, None)
                    decoded_clips += item.received if item is not None else 0
                    if result.error is not None:
                        if item is not None:
                            drop(item)
                        fail(result, result.error)
                        continue
                    item.result = result
                    if item.queued == 0:
                        finish(item)
            while queued:
                run_batch(batch_size)
        if done != len(jobs) or pending:  # every video is extracted or a failure, never lost
            raise RuntimeError(f"r2 bug: {len(jobs) - done} video(s) got no result, {len(pending)} unfinished")
    finally:
        torch.set_num_threads(threads)
        bar.close()
    summary.video_seconds = time.perf_counter() - t0
