"""Grounding queries in a new video: ``r2 predict VIDEO --query ...``.

:func:`predict_video` extracts the video and its queries into a temporary feature cache with
``r2.extract`` (the checkpoint's CLIP model, layers, fps and resize rule), then grounds every
query with the trained model through :func:`r2.train.inference.infer_clips` (videos of any
length, in overlapping windows). It lives here, in the package room that may import every
other, because it joins two rooms that may not import each other: extraction and training.

The result of each query is a :class:`VideoGrounding`, shown as text by
:func:`format_grounding` (the top moments and a saliency sparkline) and drawn by
:func:`plot_grounding` (matplotlib, an optional extra: ``pip install 'r2-vtg[plot]'``).
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from r2.extract import DEFAULT_MODEL
from r2.fileio import atomic_path, why_not_writable
from r2.train.distributed import resolve_device
from r2.train.inference import (PredictError, check_cache, check_finite, f32_list, f32_windows, infer_clips,
                                load_model, window_starts)

__all__ = [
    "Sparkline",
    "VideoGrounding",
    "check_plot_target",
    "format_grounding",
    "listed_moments",
    "plot_grounding",
    "predict_video",
    "sparkline",
    "within_video",
]

def within_video(moments: list[list[float]] | None, duration: float) -> list[list[float]] | None:
    """Moments with their ends cut to the video's ``duration``, for a new video. Decoding
    rounds ends to ``unit`` after clamping them (as officially, which the benchmark files
    keep, so that they score as the reference's), so an end can pass the duration by up to
    ``unit / 2``; a user's video gets moments that lie inside it."""
    if moments is None:
        return None
    return [[min(s, duration), min(e, duration), score] for s, e, score in moments]


@dataclass
class VideoGrounding:
    """One query grounded in one video.

    moments: ``[[start_s, end_s, score], ...]`` by score (None for saliency-only models);
    saliency: one score per clip; clip ``i`` covers ``[clip_start + i / fps, ... + 1 / fps)``.
    """

    video: str
    query: str
    duration: float
    fps: float
    num_clips: int
    moments: list[list[float]] | None
    saliency: list[float]
    clip_start: float = 0.0
    windows_used: int = 1
    seconds: float = 0.0
    extras: dict = field(default_factory=dict)

    def clip_times(self) -> list[float]:
        return [self.clip_start + i / self.fps for i in range(self.num_clips)]

    def to_dict(self) -> dict:
        """What ``r2 predict VIDEO --json`` prints for this query: ``query``, ``video``,
        ``duration``, ``fps``, ``clip_start``, the moments as ``pred_relevant_windows`` and the
        per-clip ``pred_saliency_scores`` (full precision)."""
        return {"query": self.query, "video": self.video, "duration": self.duration, "fps": self.fps,
                "clip_start": self.clip_start, "pred_relevant_windows": self.moments,
                "pred_saliency_scores": self.saliency}

    def to_row(self, qid) -> dict:
        """A QVHighlights-layout prediction row (``r2 predict VIDEO --out``): ``qid``, ``query``,
        ``vid`` (the file name without extension), ``duration``, the moments as
        ``pred_relevant_windows`` and the per-clip ``pred_saliency_scores``, numbers as the
        shortest decimals of their float32 values, as the cache form writes them."""
        row = {"qid": qid, "query": self.query, "vid": Path(self.video).stem, "duration": self.duration}
        if self.moments is not None:
            row["pred_relevant_windows"] = f32_windows(self.moments)
        row["pred_saliency_scores"] = f32_list(self.saliency)
        return row


def predict_video(video: str | os.PathLike, queries: str | Sequence[str], checkpoint: str | os.PathLike,
                  clip_model: str | os.PathLike | None = None, *, device: str | None = None,
                  fps: float | None = None, batch_size: int = 8, extract_batch_size: int = 32,
                  workdir: str | os.PathLike | None = None,
                  allow_feature_mismatch: bool = False, progress: bool | None = False,
                  log: Callable[[str], None] | None = None) -> list[VideoGrounding]:
    """Ground ``queries`` in a new video of any length.

    The video and the queries are extracted into a temporary feature cache with
    ``r2.extract`` (the checkpoint's CLIP model, layers, fps and resize rule, from its
    ``config.features``; ``clip_model`` overrides the model, default: the one recorded, else
    ``openai/clip-vit-base-patch32``), then every query goes through :func:`infer_clips`.
    ``batch_size``: overlapping windows of a long video per forward pass;
    ``extract_batch_size``: frames per CLIP forward pass of the extraction; ``progress``: its
    bar (None: only when stderr is a terminal).
    """
    from r2.cache import FeatureCache
    from r2.extract.pipeline import QueryJob, VideoJob, extract_features

    log = log or (lambda msg: print(msg, file=sys.stderr))
    t0 = time.perf_counter()
    texts = [queries] if isinstance(queries, str) else list(queries)
    if not texts or any(not str(q).strip() for q in texts):
        raise PredictError("give at least one non-empty query (--query \"...\")")
    video = Path(video)
    if not video.is_file():
        raise PredictError(f"{video}: no such video file")
    from r2.extract.video import not_a_video

    why = not_a_video(video)
    if why is not None and why.startswith("a still image"):  # decoded, it is one frame: "too short" would mislead
        raise PredictError(f"{video}: {why}")
    dev = resolve_device(device)
    model = load_model(checkpoint, dev)
    cfg = model.config
    features = cfg.features or {}
    rate = fps if fps is not None else features.get("fps", cfg.fps)
    if rate is None:
        raise PredictError("this checkpoint was trained on per-video sampling (YouTube Highlights: one "
                           "frame per annotated clip); give the clip rate for a new video with --fps")
    trained = features.get("fps", cfg.fps)
    if fps is not None and trained is not None and abs(float(fps) - float(trained)) > 1e-9:
        message = (f"--fps {fps:g}: the checkpoint was trained on features at {float(trained):g} clips/s; drop --fps "
                   "(it is for checkpoints trained on per-video sampling, YouTube Highlights)")
        if not allow_feature_mismatch:  # before extracting, not after
            raise PredictError(message + ", or pass --allow-feature-mismatch to run anyway")
        log("warning: " + message)
    layers = features.get("layers") or list(range(-cfg.num_layers, 0))
    if clip_model is None:
        clip_model = features.get("model_id") or DEFAULT_MODEL
        recorded = Path(str(clip_model)).expanduser()
        if recorded.is_absolute() and not recorded.is_dir():  # trained where the CLIP lay elsewhere
            weights = features.get("model_weights_hash")
            raise PredictError(
                f"the checkpoint's features came from the CLIP model in {clip_model}, which is not on this "
                "machine: pass --model with the folder that holds the same model here"
                + (f" (the sha256 of its model.safetensors starts with {weights})" if weights else ""))
    _check_clip_weights(clip_model, features, allow_feature_mismatch, log, cfg)  # before extracting
    resize = (features.get("preprocessing") or {}).get("resize", "ffmpeg")
    with tempfile.TemporaryDirectory(prefix="r2-predict-", dir=workdir) as tmp:
        cache_dir = Path(tmp) / "cache"
        summary = extract_features(
            [VideoJob("video", str(video))], [QueryJob(f"q{i}", t) for i, t in enumerate(texts)],
            cache_dir, clip_model, fps=float(rate), layers=layers, workers=0, device=str(dev),
            resize=resize, progress=progress, batch_size=extract_batch_size,
            log=lambda m: log(m) if m.startswith("warning:") else None)  # a failure comes as the error
        if not summary.ok:
            raise PredictError(f"{video}: {summary.failures[0].reason}")
        fc = FeatureCache.open(cache_dir)
        used = check_cache(model, fc, f"the checkpoint {checkpoint}", allow_feature_mismatch, log)
        attrs = fc.video_attrs("video")
        feats = torch.from_numpy(fc.load_video("video", layers=used, dtype=None)).to(dev)  # (T, K, N, D)
        t = feats.shape[0]
        duration = float(attrs.get("duration") or t / float(rate))
        starts = window_starts(t, cfg.max_clips)
        out = []
        for i, text in enumerate(texts):
            q, mask = fc.load_query(f"q{i}", layers=used, dtype=None)
            q = torch.from_numpy(np.ascontiguousarray(q[:, mask])).to(dev)  # (K, S, Dt)
            pred = infer_clips(model, feats, q, duration, batch_size=batch_size, fps=float(rate))
            check_finite(pred, model, f"the query {text!r}")
            out.append(VideoGrounding(
                video=str(video), query=text, duration=duration, fps=float(rate), num_clips=t,
                moments=within_video(pred.windows, duration), saliency=[float(x) for x in pred.saliency],
                clip_start=float(attrs.get("clip_start", 0.0)), windows_used=len(starts),
                seconds=time.perf_counter() - t0))
    return out


# ----------------------------------------------------------------------------------------------
# showing a result

_BARS = " ▁▂▃▄▅▆▇█"


@dataclass
class Sparkline:
    """line: one character per ``per`` clips (the highest of them), ``_BARS`` from low to high."""

    line: str
    per: int


def sparkline(values: Sequence[float], width: int = 72) -> Sparkline:
    """A one-line bar chart of ``values``, bucketed by max to at most ``width`` characters."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return Sparkline("", 1)
    per = max(1, math.ceil(v.size / width))
    buckets = [v[i:i + per].max() for i in range(0, v.size, per)]
    lo, hi = min(buckets), max(buckets)
    span = hi - lo
    chars = []
    for b in buckets:
        level = 0 if span <= 0 else int(round((b - lo) / span * (len(_BARS) - 2))) + 1
        chars.append(_BARS[min(level, len(_BARS) - 1)])
    return Sparkline("".join(chars), per)


def listed_moments(g: VideoGrounding, top_k: int) -> list[list[float]]:
    """The best ``top_k`` moments worth showing a person, best first: without the windows of no
    length (a window the decoder clipped to the video's start or end) and those NMS suppressed
    (score 0: "normal" NMS zeroes a window that overlaps a better one, as the official decoding
    does); the predictions file and ``--json`` keep both."""
    return [m for m in (g.moments or []) if m[1] > m[0] and m[2] > 0][:top_k]


def format_grounding(g: VideoGrounding, top_k: int = 5, width: int = 72) -> str:
    """Text report: the top moments (:func:`listed_moments`) and the saliency curve with the
    best moment marked."""
    lines = [f"query: {g.query!r}"]
    shown = None
    if g.moments is not None:
        shown = listed_moments(g, top_k)
        lines.append(f"top {len(shown)} moment{'' if len(shown) == 1 else 's'} (score: the model's confidence, "
                     "0 to 1):" if shown else
                     "moments: none (every window the model predicted has no length or a score of 0)")
        for rank, (s, e, score) in enumerate(shown, 1):
            lines.append(f"  {rank}. {s:8.1f} s – {e:8.1f} s   score {score:.3f}")
    spark = sparkline(g.saliency, width)
    line, per = spark.line, spark.per
    sal = np.asarray(g.saliency)
    lines.append(f"saliency (the model's relevance of each clip to this query, to compare clips, not queries; "
                 f"min {sal.min():.3f}, max {sal.max():.3f}; one character = {per} clip(s) = {per / g.fps:g} s):")
    lines.append("  |" + line + "|")
    if shown:
        s, e = shown[0][0], shown[0][1]
        a = int((s - g.clip_start) * g.fps) // per
        b = max(a + 1, int(math.ceil((e - g.clip_start) * g.fps / per)))
        a, b = max(0, min(a, len(line))), max(0, min(b, len(line)))
        lines.append("  |" + " " * a + "^" * (b - a) + " " * (len(line) - b) + "|  ^ best moment")
    end = f"{g.duration:.0f} s"
    lines.append("  0 s" + " " * max(1, len(line) + 1 - len(end) - 2) + end)
    return "\n".join(lines)


_NO_MATPLOTLIB = "--plot needs matplotlib: pip install 'r2-vtg[plot]'"


def _check_clip_weights(clip_model, features: dict, allow_mismatch: bool, log, config=None) -> None:
    """A local CLIP folder whose weights are not those the checkpoint's features came from is
    refused before the video is extracted (after it, the error would be about a temporary
    cache); a hub id or a checkpoint that recorded no weights hash is left to the cache check.
    One whose widths are not the model's ``config``'s is refused even with ``allow_mismatch``:
    the model cannot read its features at all."""
    from r2.extract.clip import describe_clip, weights_hash

    folder = Path(str(clip_model)).expanduser()
    clip = None
    if config is not None and folder.is_dir() and (folder / "config.json").is_file():
        try:
            clip = describe_clip(folder)
        except Exception:  # a damaged folder: the extraction names what is wrong with it
            clip = None
        if clip is not None and (clip["video_width"], clip["query_width"]) != (config.video_dim, config.query_dim):
            raise PredictError(f"--model {clip_model}: its features have widths {clip['video_width']} (video) and "
                               f"{clip['query_width']} (text), the checkpoint reads {config.video_dim} and "
                               f"{config.query_dim}: it was trained on another CLIP; pass --model with that one")
    expected = features.get("model_weights_hash")
    if not expected or not folder.is_dir():
        return
    actual = clip["model_weights_hash"] if clip is not None else weights_hash(folder)
    if actual is None or actual == expected:
        return
    message = (f"--model {clip_model}: its weights (sha256 {actual}) are not those of the CLIP model the "
               f"checkpoint's features came from ({features.get('model_id')}, sha256 {expected}): pass --model "
               "with the folder that holds that model")
    if not allow_mismatch:
        raise PredictError(message + ", or --allow-feature-mismatch to run anyway")
    log("warning: " + message)


def check_plot_target(path: str | os.PathLike) -> None:
    """Raise :class:`PredictError` at once, before any extraction, when ``--plot path`` cannot
    be drawn: matplotlib (an optional extra) is not installed, it writes no such file type,
    or the file cannot be written there (a folder, or a folder that is not writable; a folder
    that does not exist yet is created by :func:`plot_grounding` and must be creatable)."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise PredictError(_NO_MATPLOTLIB)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    problem = why_not_writable(path, "plot.png")
    if problem is not None:
        raise PredictError(f"--plot {path}: {problem}")
    if path.exists() and not path.is_file():
        raise PredictError(f"--plot {path}: not a regular file (the plot replaces the file there)")
    suffix = path.suffix.lower().lstrip(".")
    kinds = FigureCanvasAgg.get_supported_filetypes()
    if suffix not in kinds:
        what = f"matplotlib does not write .{suffix} files" if suffix else "the file type is its extension"
        raise PredictError(f"--plot {path}: {what}; name a .png (or .{', .'.join(sorted(kinds))}) file")


def plot_grounding(groundings: Sequence[VideoGrounding], path: str | os.PathLike, top_k: int = 3) -> Path:
    """Draw the saliency curve of every query with its top moments (:func:`listed_moments`)
    shaded (matplotlib); one panel per query. Returns ``path`` (written atomically)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PredictError(_NO_MATPLOTLIB) from None
    path = Path(path)
    n = len(groundings)
    fig, axes = plt.subplots(n, 1, figsize=(10, 2.6 * n), squeeze=False)
    try:
        for ax, g in zip(axes[:, 0], groundings):
            times = np.asarray(g.clip_times()) + 0.5 / g.fps
            ax.plot(times, g.saliency, color="tab:blue", lw=1.5, label="saliency")
            for rank, (s, e, score) in enumerate(listed_moments(g, top_k)):
                ax.axvspan(s, e, color="tab:orange", alpha=0.35 if rank == 0 else 0.15,
                           label=f"moment {rank + 1} ({score:.2f})")
            ax.set_xlim(0, g.duration)
            ax.set_title(f"{Path(g.video).name}: {g.query}", fontsize=10)
            ax.set_xlabel("seconds")
            ax.set_ylabel("saliency")
            ax.legend(loc="best", fontsize=8)  # where it covers the least of the curve
        fig.tight_layout()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                fig.savefig(tmp, format=path.suffix.lower().lstrip("."))  # (tmp's own name ends in .partial)
        except OSError as exc:  # checked up front by check_plot_target; still a message, not a traceback
            raise PredictError(f"--plot {path}: cannot write it ({exc.strerror or exc})") from None
    finally:  # a failed write does not leave the figure open in pyplot's registry
        plt.close(fig)
    return path
