"""Predictions from a trained model: over a feature cache + annotations, or for a new video.

* :func:`predict` — ``r2 predict --checkpoint RUN --cache DIR --annotations FILE --out
  preds.jsonl``: one QVHighlights-layout row per query (``qid`` with its original type,
  ``query``, ``vid``, ``pred_relevant_windows`` ``[[start, end, score], ...]`` in the order the
  model decodes them (by score, after NMS), ``pred_saliency_scores`` one per clip), written
  atomically. The cache must hold the features the checkpoint was trained on
  (``config.features``: model, config hash, layers, fps, preprocessing).
* :func:`predict_dataset` — the loop it uses (and ``r2 fit``'s validation).

A new video (``r2 predict VIDEO``) needs ``r2.extract`` as well: :mod:`r2.grounding`, which
calls :func:`infer_clips` below.

Videos of any length (:func:`infer_clips`). A video of at most ``config.max_clips`` clips
is run whole (the official inference). A longer one is cut into windows of ``W =
max_clips`` clips that overlap by ``W // 4`` clips (starts ``0, W - W//4, ...``; the last
window is aligned with the end of the video), run as a batch. Moments: every window's raw
top-``max_moments`` windows are shifted by the window's start; a window keeps those whose
centre lies in the part of the video it owns (from the middle of its overlap with the window
before to the middle of its overlap with the next: a moment cut off at a window's edge is
centred near that edge, in its neighbour's part, where the neighbour sees it whole); the kept
ones are merged, sorted by score, cut to ``max_moments`` and post-processed once over the
whole video (clamp to the duration, rounding ``unit``, the configured NMS). Saliency: clip ``t`` takes its score from the window in which it lies
farthest from the window's edges (the most context on both sides; the first such window
on ties), so the stitched curve has no seams inside the overlaps.

Numbers are written as the shortest decimal that reads back to the same float32
(``0.3``, not ``0.30000001192092896``); ``r2 fit`` scores these same rounded rows.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from r2.fileio import link_target, why_not_writable
from r2.model import CONFIG_NAME, WEIGHTS_NAME, R2Model, R2ModelError
from r2.model.decoding import Prediction, postprocess_windows, raw_windows, strict_point_mask
from r2.model.official import OFFICIAL_SOURCE_NAME

from .checkpoint import BEST_NAME, METRICS_NAME, PRESET_NAME, read_metrics
from .distributed import autocast, resolve_device
from .data import (MISSING_IDS_NAME, Collator, DataError, FeatureSpecError, GroundingDataset,
                   LengthBatchSampler, MissingFeaturesError, cache_widths, check_feature_spec, check_ids,
                   check_query_sentences, feature_spec, loader_batches, loader_generator, remove_missing_list,
                   with_features, worker_init_fn)

__all__ = [
    "PredictError",
    "PredictResult",
    "check_cache",
    "check_finite",
    "infer_clips",
    "load_model",
    "model_layers",
    "predict",
    "predict_dataset",
    "prediction_row",
    "window_starts",
]

class PredictError(DataError):
    """Prediction cannot run as asked (one-line message)."""


@dataclass
class PredictResult:
    """What :func:`predict` did: the rows, where they went, how long it took."""

    rows: list[dict]
    out: Path | None
    num_queries: int
    seconds: float
    dataset: str
    skipped: int = 0  # queries left out by skip_missing (their features are not in the cache)


# ----------------------------------------------------------------------------------------------
# numbers and rows


def f32_list(values) -> list[float]:
    """float32 values as the shortest decimals that read back to the same float32."""
    arr = np.asarray(values, dtype=np.float32).ravel()
    return [float(x) for x in arr.astype(str)]


def f32_windows(windows) -> list[list[float]]:
    """``[[start, end, score], ...]`` as the shortest decimals of their float32 values."""
    flat = f32_list(np.asarray(windows, dtype=np.float32).reshape(-1))
    return [flat[i:i + 3] for i in range(0, len(flat), 3)]


def check_finite(pred: Prediction, model: R2Model, what: str, amp: str | None = None,
                 check_inputs: Callable[[], None] | None = None) -> None:
    """A one-line error when ``pred`` (of the query ``what`` names) holds NaN or infinity,
    saying why, instead of rows that no evaluator reads (``NaN`` is not JSON).
    ``check_inputs`` raises when the features it came from are damaged (the first cause
    looked at; :meth:`GroundingDataset.check_features`)."""
    if np.isfinite(np.asarray(pred.saliency, dtype=np.float64)).all() and (
            pred.windows is None or np.isfinite(np.asarray(pred.windows, dtype=np.float64)).all()):
        return
    if check_inputs is not None:
        check_inputs()
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        cause = ("the model's weights hold NaN or infinite values (a training run that diverged, or a "
                 "damaged model.safetensors)")
    elif amp == "fp16":
        cause = "float16 autocast (amp fp16) overflowed: use amp bf16 or none (r2 fit: --set amp=bf16)"
    else:
        cause = "its weights and features are finite, so this is a bug of r2: please report it"
    raise PredictError(f"the predictions for {what} are not finite (NaN or infinity): {cause}")


def prediction_row(sample, pred: Prediction) -> dict:
    """The QVHighlights-layout prediction row of one sample."""
    row = {"qid": sample.qid, "query": sample.query, "vid": sample.vid}
    if pred.windows is not None:
        row["pred_relevant_windows"] = f32_windows(pred.windows)
    row["pred_saliency_scores"] = f32_list(pred.saliency)
    return row


# ----------------------------------------------------------------------------------------------
# models


def check_out_is_no_input(out, checkpoint, inputs: Mapping[str, str | os.PathLike]) -> None:
    """Raise :class:`PredictError` when the prediction file ``out`` is one of ``inputs`` (by what
    they are: ``{"the annotation file": path}``, ``{"the VIDEO": path}``) or a file of the
    ``checkpoint`` run directory (its weights, config, records, checkpoints), which writing
    the predictions would replace. A new file inside the run directory is fine."""
    out = Path(out)
    if not out.exists():
        return
    for what, path in inputs.items():
        if path is not None and Path(path).exists() and os.path.samefile(out, path):
            raise PredictError(f"--out {out} is {what}: the predictions would replace it; write them to "
                               "another file")
    run = Path(checkpoint)
    if run.is_dir():
        target, root = out.resolve(), run.resolve()
        if target.parent == root and target.name in _RUN_FILES or root / "checkpoints" in target.parents:
            raise PredictError(f"--out {out} is a file of the run {checkpoint} (its {target.name}): the predictions "
                               "would replace it; write them to another file (e.g. "
                               f"{Path(checkpoint) / 'predictions.jsonl'})")


_RUN_FILES = (CONFIG_NAME, WEIGHTS_NAME, PRESET_NAME, METRICS_NAME, BEST_NAME, OFFICIAL_SOURCE_NAME)


def load_model(checkpoint: str | os.PathLike, device: str | torch.device | None = None) -> R2Model:
    """``R2Model.from_pretrained(checkpoint)`` on ``device``, in eval mode."""
    path = Path(checkpoint)
    if not path.is_dir():
        raise PredictError(f"--checkpoint {path}: no such directory (a run directory of `r2 fit`, "
                           "or the output of `r2 convert-official`)")
    if (path / PRESET_NAME).is_file() and not (path / WEIGHTS_NAME).is_file():
        records = read_metrics(path)
        last = path / "checkpoints" / "last"
        if records and not any(r.get("best") for r in records):  # still training, no epoch evaluated yet
            n = len(records)
            raise PredictError(f"--checkpoint {path}: the run has finished {n} epoch{'' if n == 1 else 's'} and "
                               "evaluated none yet (eval_every); its best weights are written at its first "
                               f"evaluation. The last epoch's weights: --checkpoint {last}")
        if records:
            raise PredictError(f"--checkpoint {path}: the run has finished epochs ({path / METRICS_NAME}) but "
                               f"its best weights, {WEIGHTS_NAME}, are not there (deleted or not copied with "
                               f"the run); {last} holds the last epoch's, if it is there")
        raise PredictError(f"--checkpoint {path} is an `r2 fit` run with no weights yet: its first epoch "
                           "has not finished (`r2 fit ... --resume` continues the run; each epoch's log "
                           f"goes to {path / METRICS_NAME})")
    model = R2Model.from_pretrained(path)
    if device is not None:
        model.to(device)
    return model.eval()


def model_layers(model: R2Model, cache_layers: Sequence[int]) -> list[int]:
    """The cache layers a model reads: its ``config.features["layers"]`` when recorded, else
    the cache's last ``num_layers``."""
    cache_layers = [int(x) for x in cache_layers]
    k = model.config.num_layers
    wanted = (model.config.features or {}).get("layers")
    if wanted:
        wanted = [int(x) for x in wanted]
        missing = [x for x in wanted if x not in cache_layers]
        if missing:
            raise FeatureSpecError(f"the checkpoint uses layers {wanted}; the cache keeps {cache_layers}")
        if len(wanted) != k:
            raise FeatureSpecError(f"the checkpoint's config uses {k} layers but records {wanted}")
        return wanted
    if len(cache_layers) < k:
        raise FeatureSpecError(f"the checkpoint uses {k} layers; the cache keeps only {cache_layers}")
    return cache_layers[-k:]


def check_cache(model: R2Model, cache, checkpoint_name: str, allow_mismatch: bool,
                log: Callable[[str], None]) -> list[int]:
    """The cache layer ids ``model`` reads, after checking that ``cache`` holds the features it
    was trained on (:func:`~r2.train.data.check_feature_spec`) at its widths."""
    layers = model_layers(model, cache.layers)
    check_feature_spec(model.config.features, feature_spec(cache.manifest, layers),
                       checkpoint_name, f"the feature cache at {cache.path}",
                       cache_layers=cache.layers, allow_mismatch=allow_mismatch, warn=log)
    d, dt = cache_widths(cache)
    cfg = model.config
    if (d, dt) != (cfg.video_dim, cfg.query_dim):
        raise FeatureSpecError(f"{checkpoint_name} reads video width {cfg.video_dim} and query width "
                               f"{cfg.query_dim}; the feature cache at {cache.path} has {d} and {dt} "
                               "(features of another CLIP model)")
    return layers


# ----------------------------------------------------------------------------------------------
# inference on one (possibly long) video


def window_starts(num_clips: int, window: int, overlap: int | None = None) -> list[int]:
    """Start clips of the sliding windows over a video (see the module docstring)."""
    if num_clips <= window:
        return [0]
    overlap = window // 4 if overlap is None else overlap
    stride = max(1, window - overlap)
    starts = list(range(0, num_clips - window + 1, stride))
    if starts[-1] + window < num_clips:
        starts.append(num_clips - window)
    return starts


@torch.inference_mode()
def infer_clips(model: R2Model, video: torch.Tensor, query: torch.Tensor, duration: float, *,
                batch_size: int = 8, amp: str | None = None, window: int | None = None,
                overlap: int | None = None, fps: float | None = None) -> Prediction:
    """Ground one query in one video of any length.

    video (T, K, N, D), query (K, S, Dt) (real tokens), on the model's device. Full-length
    inference when T <= ``window`` (default ``config.max_clips``), else sliding windows: each
    clip's saliency comes from the window where it lies farthest from an edge, and each
    window's moments are kept when their centre lies in the part of the video that window
    owns (up to the middle of its overlaps with its neighbours), so that a moment cut off
    at a window's edge does not stand beside the whole one from the window before. ``fps``:
    the clip rate of ``video`` when it is not the checkpoint's (``config.fps``).
    """
    cfg = model.config
    device = next(model.parameters()).device
    window = window or cfg.max_clips
    fps = cfg.fps if fps is None else float(fps)
    t = video.shape[0]
    query_b = query[None]  # (1, K, S, Dt)
    qmask = torch.ones((1, query.shape[1]), dtype=torch.bool, device=device)
    if t <= window:
        vmask = torch.ones((1, t), dtype=torch.bool, device=device)
        with autocast(device, amp):
            out = model(video[None], vmask, query_b, qmask)
        return model.decode(out, [duration], fps=fps)[0]
    if cfg.coord_head and fps is None:
        raise R2ModelError("decoding windows needs the clip rate: the checkpoint's config has fps=None")
    starts = window_starts(t, window, overlap)
    # the clips each window owns: up to the middle of its overlap with the next one (the first
    # and the last also own what their raw moments put before the start or past the end, which
    # post-processing clamps to the video, as on the whole-video path)
    bounds = [-math.inf] + [(nxt + s + window) / 2 for s, nxt in zip(starts, starts[1:])] + [math.inf]
    saliency = [None] * len(starts)
    raw = []
    for i in range(0, len(starts), batch_size):
        chunk = starts[i:i + batch_size]
        b = len(chunk)
        v = torch.stack([video[s:s + window] for s in chunk])  # (b, W, K, N, D)
        vmask = torch.ones((b, window), dtype=torch.bool, device=device)
        with autocast(device, amp):
            out = model(v, vmask, query_b.expand(b, -1, -1, -1), qmask.expand(b, -1))
        sal = out.saliency.float().cpu().numpy()  # (b, W)
        for j in range(b):
            saliency[i + j] = sal[j]
        if out.coord_offsets is not None:
            valid = strict_point_mask(out.points, out.num_clips)
            rows = raw_windows(out.class_logits, out.coord_offsets, out.points, valid, fps,
                               cfg.max_moments)
            for j, r in enumerate(rows):
                r = r.copy()
                r[:, :2] += np.float32(chunk[j] / fps)
                centre = (r[:, 0] + r[:, 1]) / 2 * fps  # in clips of the whole video
                lo, hi = bounds[i + j], bounds[i + j + 1]
                raw.append(r[(centre >= lo) & (centre < hi)])
    # saliency: each clip from the window where it is farthest from an edge
    clip = np.arange(t)
    best_margin = np.full(t, -1)
    stitched = np.zeros(t, dtype=np.float32)
    for s, sal in zip(starts, saliency):
        inside = (clip >= s) & (clip < s + window)
        margin = np.where(inside, np.minimum(clip - s, s + window - 1 - clip), -1)
        take = margin > best_margin
        stitched[take] = sal[clip[take] - s]
        best_margin = np.where(take, margin, best_margin)
    windows = None
    if raw:
        rows = np.concatenate(raw)
        order = np.argsort(-rows[:, 2], kind="stable")[:cfg.max_moments]
        windows = postprocess_windows(rows[order], duration, cfg.unit, cfg.nms,
                                      cfg.nms_threshold).tolist()
    return Prediction(windows=windows, saliency=stitched.tolist())


# ----------------------------------------------------------------------------------------------
# many samples from a cache


@torch.inference_mode()
def predict_dataset(model: R2Model, dataset: GroundingDataset, *, batch_size: int = 16,
                    workers: int = 0, amp: str | None = None, progress: bool | None = False,
                    desc: str = "predict", seed: int = 0) -> list[dict]:
    """Prediction rows for every sample of an evaluation ``dataset``, in sample order.

    Batches group samples of similar length (eval mode is padding-invariant); a video longer
    than ``config.max_clips`` goes through :func:`infer_clips`'s sliding windows alone.
    """
    from tqdm import tqdm

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    max_clips = model.config.max_clips
    sampler = LengthBatchSampler(dataset.num_clips, max(1, int(batch_size)), max_clips)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, collate_fn=Collator(windows=False), num_workers=workers,
        worker_init_fn=worker_init_fn if workers else None, generator=loader_generator(seed, -1),
        pin_memory=device.type == "cuda")
    rows: list[dict | None] = [None] * len(dataset.samples)
    bar = tqdm(total=len(dataset.samples), desc=desc, unit="query",
               disable=None if progress is None else not progress,
               file=sys.stderr, dynamic_ncols=True, leave=False)
    try:
        for batch in loader_batches(loader):
            batch = batch.to(device, non_blocking=True)
            samples = [dataset.samples[i] for i in batch.indices]
            if len(batch) == 1 and batch.video.shape[1] > max_clips:
                preds = [infer_clips(model, batch.video[0], batch.query[0], float(samples[0].duration),
                                     batch_size=max(1, int(batch_size)), amp=amp)]
            else:
                with autocast(device, amp):
                    out = model(batch.video, batch.video_mask, batch.query, batch.query_mask)
                preds = model.decode(out, [float(s.duration) for s in samples])
            for i, sample, pred in zip(batch.indices, samples, preds):
                check_finite(pred, model, f"query {sample.qid} (video {sample.vid})", amp,
                             lambda i=i: dataset.check_features(i))
                rows[i] = prediction_row(sample, pred)
            bar.update(len(batch))
    finally:
        bar.close()
        model.train(was_training)
    return rows  # type: ignore[return-value]


def predict(checkpoint: str | os.PathLike, cache: str | os.PathLike, annotations: str | os.PathLike, *,
            out: str | os.PathLike | None = None, dataset: str | None = None, domain: str | None = None,
            split: str | None = None, batch_size: int = 16, device: str | None = None,
            workers: int = 0, amp: str | None = None, progress: bool | None = True,
            allow_feature_mismatch: bool = False, skip_missing: bool = False,
            log: Callable[[str], None] | None = None) -> PredictResult:
    """Predict every query of ``annotations`` from the features in ``cache``.

    Args:
        checkpoint: a run directory (``config.json`` + ``model.safetensors``).
        cache: the feature cache directory.
        annotations: any annotation file ``r2.train`` reads (the data set is detected unless
            ``dataset`` is given; ``domain``/``split`` select YouTube/TVSum videos: by default
            the val list, the videos these benchmarks are scored on, as ``r2 score`` does;
            ``split="all"`` predicts every video of the file).
        out: write the rows there (jsonl, atomically) when given. When ids are missing from
            the cache, every one is listed in ``missing_ids.txt`` beside ``out`` if that folder
            exists (removed again by a later successful run); without ``out`` no file is
            written and the error lists them all.
        allow_feature_mismatch: warn instead of refusing a cache whose feature spec differs
            from the checkpoint's.
        skip_missing: predict the queries whose features the cache holds, instead of refusing
            (the others listed as above; ``PredictResult.skipped`` counts them: score the rows
            with ``subset=True``, ``r2 score --subset``).
    Raises:
        FeatureSpecError, MissingFeaturesError, PredictError, AnnotationError, CacheError,
        DeviceError (user errors: one-line messages, ``user_error = True``).
    """
    from r2.cache import FeatureCache
    from r2.evaluate import write_jsonl

    from .annotations import load_annotations

    log = log or (lambda msg: print(msg, file=sys.stderr))
    t0 = time.perf_counter()
    if out is not None and (problem := why_not_writable(out, "predictions.jsonl")) is not None:
        raise PredictError(f"--out {out}: {problem}")  # before the model runs, not after
    if out is not None:
        check_out_is_no_input(out, checkpoint, {"the annotation file": annotations})
    dev = resolve_device(device)
    model = load_model(checkpoint, dev)
    fc = FeatureCache.open(cache)
    layers = check_cache(model, fc, f"the checkpoint {checkpoint}", allow_feature_mismatch, log)
    samples = load_annotations(annotations, dataset=dataset, domain=domain, split=split)  # "all": every video
    if not samples:
        raise PredictError(f"{annotations}: no queries")
    if split is None and samples[0].dataset in ("youtube", "tvsum"):
        name = samples[0].dataset
        samples = [s for s in samples if s.split == "val"]
        if not samples:
            raise PredictError(f"{annotations}: no video of the {name} val list, the default split; "
                               "pass --split all (Python: split='all') to predict every video")
        log(f"predicting the {len(samples)} videos of the val list (the default for this benchmark; "
            "--split all for every video)")
    # every missing id goes to a file beside --out (when its folder exists; without ``out``
    # no file is written: the error lists them all)
    list_file = None if out is None else Path(out).parent / MISSING_IDS_NAME
    skipped = 0
    try:
        check_ids(fc, [("annotations", str(annotations), samples)], dataset=samples[0].dataset,
                  purpose="prediction", list_file=list_file)
    except MissingFeaturesError:
        if not skip_missing:
            raise
        total = len(samples)
        samples, skipped = with_features(fc, samples)
        if not samples:
            raise
        check_query_sentences(fc, [("annotations", str(annotations), samples)])
        where = f" (listed in {list_file})" if list_file is not None and list_file.is_file() else ""
        log(f"warning: --skip-missing: {skipped} of {total} queries have no features in {fc.path} and are "
            f"not predicted{where}; score the others with r2 score --subset")
    else:
        if list_file is not None:  # from an earlier attempt: the cache is complete now
            remove_missing_list(list_file, "prediction")
    fps = model.config.fps
    data = GroundingDataset(samples, fc, layers, None, train=False, fps=fps)
    rows = predict_dataset(model, data, batch_size=batch_size, workers=workers, amp=amp,
                           progress=progress)
    out_path = None
    if out is not None:
        out_path = Path(out)
        if out_path.parent and not out_path.parent.exists():
            out_path.parent.mkdir(parents=True, exist_ok=True)
        write_jsonl(rows, link_target(out_path))  # a symlink's target is replaced (atomically), the link kept
    return PredictResult(rows=rows, out=out_path, num_queries=len(rows),
                         seconds=time.perf_counter() - t0, dataset=samples[0].dataset, skipped=skipped)
