"""The extraction driver: decode workers feed one batched CLIP, features go into ``r2.cache``.

::

    summary = extract_features(
        [VideoJob("v1", "videos/v1.mp4"), ...], [QueryJob("q1", "a man opens a door"), ...],
        "cache/", "openai/clip-vit-base-patch32", fps=0.5, batch_size=64, workers=8, device="cuda")

- Decoding runs in ``workers`` loky processes (joblib's process pool), one video per task,
  at most ``2 * workers`` in flight; each returns the video's frames as ``(T, 224, 224, 3)`` uint8
  (:func:`r2.extract.video.decode_job`). ``workers=0`` decodes in this process.
- The main process packs frames from any number of videos into batches of ``batch_size``,
  normalises them on the device (only uint8 crosses to a GPU), runs the frozen CLIP
  (:class:`r2.extract.clip.FrozenCLIP`) and hands each finished video to the cache writer.
  On the CPU, torch gets the cores the decode workers leave (CPUs − workers threads): an
  oversubscribed OpenMP pool runs several times slower (measured 10x on 2 busy cores).
- Queries go first, in batches, through the text tower.
- Resume: ``FeatureCache.create`` reopens a compatible cache; ids already in it are skipped, so
  a rerun after a crash, a kill or failed videos does only what is missing. The cache commits
  shards atomically (a killed run loses at most its open shard).
- Failures (unreadable, empty, truncated, no video stream, ...) are collected with path and
  reason, written to ``failures.jsonl`` in the cache folder (one JSON object a line), and
  the others are extracted; the caller decides the exit code (``summary.ok``).
- Scale-out: ``num_shards``/``shard_index`` keep the videos and queries whose id hashes
  (sha1) to this shard: deterministic, independent of the input order and of the other
  shards' lists; the shard caches join with ``r2 cache merge``.
"""

from __future__ import annotations

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

from r2.cache import CacheError, FeatureCache
from r2.extract.video import DecodeResult, decode_job

__all__ = ["ExtractionSummary", "Failure", "QueryJob", "VideoJob", "extract_features", "in_shard",
           "TOKEN_FORM"]

TOKEN_FORM = ("hidden states (raw residual stream: before post_layernorm / final_layer_norm and the "
              "projections) of the kept layers; video: all tokens (CLS + patches) per frame; "
              "query: tokens SOT..EOT")


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


@dataclass
class Failure:
    video_id: str
    path: str
    reason: str

    def to_dict(self) -> dict:
        return {"video_id": self.video_id, "path": self.path, "reason": self.reason}


@dataclass
class ExtractionSummary:
    cache_dir: str
    videos_total: int = 0  # videos of this shard
    videos_extracted: int = 0  # in this run
    videos_skipped: int = 0  # already in the cache
    clips: int = 0  # clips extracted in this run
    queries_total: int = 0
    queries_extracted: int = 0
    queries_skipped: int = 0
    bytes_written: int = 0  # committed shard bytes of this run
    seconds: float = 0.0
    decode_seconds: float = 0.0  # summed over workers
    model_seconds: float = 0.0  # main process, vision tower incl. normalisation
    failures: list[Failure] = field(default_factory=list)
    failures_file: str | None = None

    @property
    def ok(self) -> bool:
        return not self.failures

    def format(self) -> str:
        rate = self.clips / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"extracted into {self.cache_dir} in {self.seconds:.1f} s",
            f"  videos : {self.videos_extracted} extracted, {self.videos_skipped} already cached, "
            f"{len(self.failures)} failed (of {self.videos_total})",
            f"  clips  : {self.clips} ({rate:.1f} frames/s)",
            f"  queries: {self.queries_extracted} extracted, {self.queries_skipped} already cached "
            f"(of {self.queries_total})",
            f"  written: {self.bytes_written / 1e6:.1f} MB",
        ]
        if self.failures:
            lines.append(f"  FAILED : {len(self.failures)} video(s), listed in {self.failures_file}:")
            for f in self.failures[:20]:
                lines.append(f"    {f.path}: {f.reason}")
            if len(self.failures) > 20:
                lines.append(f"    ... and {len(self.failures) - 20} more")
            lines.append("  a rerun of the same command retries only the failed and missing videos")
        return "\n".join(lines)


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
) -> ExtractionSummary:
    """Extract the features of ``videos`` and ``queries`` into the cache at ``cache_dir``.

    ``fps``: the run's sampling rate (None: every video brings its own ``fps``,
    ``sample_times``; the manifest then says fps = None). ``layers``: hidden-state indices
    (default: the last four). ``workers``: decode processes (default: CPU count − 1 when the
    model runs on the CPU, CPU count on a GPU; 0 = decode in this process). ``clip``: an
    already loaded :class:`~r2.extract.clip.FrozenCLIP` (tests, benchmarks).
    ``known_failures``: videos the caller could not even find (reported with the others).
    ``progress``: a progress bar on stderr (None: only on a terminal). Returns an
    :class:`ExtractionSummary`; failed videos are in ``summary.failures`` and the failures file.
    """
    from r2.extract.clip import FrozenCLIP
    from r2.extract.preprocess import Preprocessing

    t_start = time.perf_counter()
    log = log or (lambda msg: print(msg, file=sys.stderr))
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index must be in 0..{num_shards - 1}, got {shard_index}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    _check_unique((v.video_id for v in videos), "video")
    _check_unique((q.query_id for q in queries), "query")
    if fps is None and any(v.fps is None and v.sample_times is None for v in videos):
        raise ValueError("fps=None (per-video sampling) needs fps or sample_times on every video")
    videos = [v for v in videos if in_shard(v.video_id, num_shards, shard_index)]
    queries = [q for q in queries if in_shard(q.query_id, num_shards, shard_index)]

    if clip is None:
        clip = FrozenCLIP(model, layers=layers, device=device, precision=precision)
    mean, std = clip.image_stats()
    prep = Preprocessing(size=clip.image_size, crop=clip.image_size, resize=resize, mean=mean, std=std)
    manifest = {
        "model_id": clip.model_id,
        "model_config_hash": clip.config_hash,
        "layers": list(clip.layers),
        "fps": float(fps) if fps is not None else None,
        "preprocessing": prep.to_dict(),
        "dtype": dtype,
        "token_form": TOKEN_FORM,
        "video_width": clip.video_width,
        "query_width": clip.query_width,
        "tokens_per_frame": clip.tokens,
        "precision": clip.precision,
        "sampling": "ffmpeg fps filter rule: clip n = last frame with round(t*fps) <= n; "
                    "round(duration*fps) clips",
    }
    if command:
        manifest["command"] = command
    cache = FeatureCache.create(cache_dir, manifest)
    if cache.manifest.get("precision", "fp32") != clip.precision:  # never mix fp32 and bf16 features
        raise CacheError(f"the feature cache at {cache_dir} was computed with --precision "
                         f"{cache.manifest.get('precision', 'fp32')}, this run uses {clip.precision}: use the "
                         "same precision, or another directory")
    summary = ExtractionSummary(cache_dir=str(cache_dir), videos_total=len(videos), queries_total=len(queries))
    summary.failures.extend(f for f in known_failures if in_shard(f.video_id, num_shards, shard_index))
    summary.videos_total += len(summary.failures)
    todo_videos = [v for v in videos if not cache.has_video(v.video_id)]
    todo_queries = [q for q in queries if not cache.has_query(q.query_id)]
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
    with cache.writer(**writer_opts) as writer:
        if todo_queries:
            _extract_queries(clip, todo_queries, writer, summary, batch_size=max(64, batch_size))
        if todo_videos:
            _extract_videos(clip, todo_videos, writer, summary, prep, fps=fps, batch_size=batch_size,
                            workers=workers, decode_threads=decode_threads, progress=progress, dtype=dtype)

    failures_path = Path(cache_dir) / _failures_name(num_shards, shard_index)
    if summary.failures:
        with open(failures_path, "w", encoding="utf-8") as fh:
            for f in summary.failures:
                fh.write(json.dumps(f.to_dict(), ensure_ascii=False) + "\n")
        summary.failures_file = str(failures_path)
    elif failures_path.exists():
        failures_path.unlink()  # everything that failed before is in the cache now
    summary.seconds = time.perf_counter() - t_start
    return summary


def _extract_queries(clip, queries, writer, summary, batch_size):
    for i in range(0, len(queries), batch_size):
        chunk = queries[i:i + batch_size]
        feats, lengths = clip.text_features([q.text for q in chunk])
        for q, f, n in zip(chunk, feats, lengths):
            writer.add_query(q.query_id, f, np.ones(n, dtype=bool), text=q.text)
            summary.queries_extracted += 1


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _default_workers(device: str) -> int:
    cpus = _cpu_count()
    if str(device).startswith("cpu"):
        return max(1, cpus - 1)
    return max(1, min(cpus, 32))


def _decode_results(jobs, fps, size, resize, workers, threads):
    """Yield :class:`DecodeResult` for every job, in completion order when parallel.

    ``workers`` loky processes (joblib's process pool; used directly because joblib runs
    ``n_jobs=1`` in the calling process, and one decode process next to the model is the
    right set-up for two cores) with at most ``2 * workers`` videos in flight. Results that
    finish together are yielded in submission order, so with one worker the order (and so
    the model's batches, and the features to the last bit) is the same in every run.
    """
    args = [(j.video_id, j.path, j.fps if j.fps is not None else fps, j.sample_times, j.num_clips, size, resize,
             threads) for j in jobs]
    if workers == 0:
        for a in args:
            yield decode_job(*a)
        return
    from concurrent.futures import FIRST_COMPLETED, wait

    from joblib.externals.loky import get_reusable_executor

    executor = get_reusable_executor(max_workers=min(workers, len(args)), timeout=30)
    todo = deque(enumerate(args))
    running: dict = {}  # future -> submission index
    try:
        while todo or running:
            while todo and len(running) < 2 * workers:
                index, a = todo.popleft()
                running[executor.submit(decode_job, *a)] = index
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in sorted(done, key=running.__getitem__):  # a set: its order is arbitrary
                del running[future]
                yield future.result()
    finally:
        for future in running:
            future.cancel()


class _Pending:
    """A decoded video waiting for (part of) its features."""

    __slots__ = ("result", "features", "filled")

    def __init__(self, result: DecodeResult, shape, dtype):
        self.result = result
        self.features = np.empty(shape, dtype=dtype)
        self.filled = 0


def _extract_videos(clip, jobs, writer, summary, prep, *, fps, batch_size, workers, decode_threads, progress,
                    dtype):
    import torch
    from tqdm import tqdm

    from r2.extract.preprocess import normalize

    workers = _default_workers(str(clip.device)) if workers is None else workers
    k, n, d = len(clip.layers), clip.tokens, clip.video_width
    feat_dtype = np.float16 if dtype == "float16" else np.float32
    queue: deque[tuple[_Pending, int, int]] = deque()  # (video, start, end) frames not yet run
    queued = 0
    bar = tqdm(total=len(jobs), unit="video", disable=None if progress is None else not progress, dynamic_ncols=True, file=sys.stderr,
               mininterval=0.5)
    t0 = time.perf_counter()

    def run_batch(limit: int):
        nonlocal queued
        parts, frames, taken = [], [], 0
        while queue and taken < limit:
            item, a, b = queue.popleft()
            take = min(b - a, limit - taken)
            parts.append((item, a, a + take))
            frames.append(item.result.frames[a:a + take])
            if a + take < b:
                queue.appendleft((item, a + take, b))
            taken += take
        queued -= taken
        tm = time.perf_counter()
        x = normalize(np.concatenate(frames) if len(frames) > 1 else frames[0], prep.mean, prep.std,
                      device=clip.device)
        feats = clip.video_features(x).cpu().numpy()  # (B, K, N, D)
        summary.model_seconds += time.perf_counter() - tm
        pos = 0
        for item, a, b in parts:
            item.features[a:b] = feats[pos:pos + b - a]
            pos += b - a
            item.filled += b - a
            if item.filled == item.features.shape[0]:
                finish(item)

    def finish(item: _Pending):
        r = item.result
        writer.add_video(r.video_id, item.features, **r.attrs)
        summary.videos_extracted += 1
        summary.clips += item.features.shape[0]
        item.result.frames = None
        item.features = None
        bar.update(1)
        elapsed = time.perf_counter() - t0
        bar.set_postfix_str(f"{summary.clips / elapsed:.1f} frames/s, {len(summary.failures)} failed", refresh=False)

    threads = torch.get_num_threads()
    if clip.device.type == "cpu" and workers > 0:
        # the decode processes need their cores: an oversubscribed OpenMP pool is many times slower
        torch.set_num_threads(max(1, _cpu_count() - workers))
    try:
        with torch.inference_mode():
            for result in _decode_results(jobs, fps, prep.size, prep.resize, workers, decode_threads):
                summary.decode_seconds += result.seconds
                if result.error is not None:
                    summary.failures.append(Failure(result.video_id, result.path, result.error))
                    bar.write(f"failed: {result.path}: {result.error}", file=sys.stderr)
                    bar.update(1)
                    continue
                t = result.frames.shape[0]
                queue.append((_Pending(result, (t, k, n, d), feat_dtype), 0, t))
                queued += t
                while queued >= batch_size:
                    run_batch(batch_size)
            while queued:
                run_batch(batch_size)
    finally:
        torch.set_num_threads(threads)
        bar.close()
