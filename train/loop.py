"""``fit``: train the R² model from a feature cache (``r2 fit``), resumable, single- or multi-GPU.

::

    from r2.train import fit
    result = fit(dataset="charades", cache="cache/", train="charades_train.jsonl",
                 val="charades_test.jsonl", run_dir="runs/charades", overrides={"lr": 1e-4})
    result.best_value, result.best_epoch, result.run_dir   # R2Model.from_pretrained(run_dir)

The recipe is R²-Tuning's (reference §5) with the preset's numbers (``r2.train.presets``):

* AdamW on every trainable parameter (weight decay on all of them); per iteration the
  learning rate is ``lr × step_factor(epoch) × warmup(iteration)``: a linear warm-up over
  ``warmup_iters`` iterations from ``warmup_ratio × lr`` (official: ``lr·(1 − (1 − 0.001)·(1 −
  it/500))``), then ``lr_gamma`` at every milestone epoch (``lr_schedule="step"``) or constant;
  global-norm gradient clipping at ``grad_clip`` (35); the training split repeated ``repeat``
  times per epoch (QVHighlights ×4); no drop_last.
* Mixed precision on CUDA: fp16 autocast + GradScaler (``amp="fp16"``, official) or bf16
  (``amp="bf16"``, no scaler); the model keeps its heads and losses in fp32. The CPU runs
  fp32 unless ``cpu_amp`` asks for bf16 or fp16 (the same autocast and scaler, on the CPU),
  with glibc malloc told to keep freed memory for the next step (:mod:`r2.train.allocator`).
* Seeds: ``torch``/``numpy``/``random`` from ``seed``; the loader's shuffling
  (``DistributedSampler(seed)`` + ``set_epoch``) and worker seeds (a generator per epoch) are
  functions of (seed, epoch, rank); each item's positive clip and crop come from
  ``sample_rng(seed, epoch, index)``. cuDNN runs deterministic.
* Every ``eval_every`` epochs (and after the last) rank 0 predicts the evaluation split
  (:func:`r2.train.inference.predict_dataset`) and scores it with ``r2.evaluate.score``; the
  epoch with the best ``main_metric`` (``main_metric_mode``) is saved as the run's weights.
  ``best.json`` records the split it was chosen on (``"selected_on"``: ``eval_split``); a run
  that selects on test (Charades-STA and TACoS by default: the official code selects on the
  test loader) says so once in the log; ``--set eval_split=val --val VAL_FILE`` opts out.
* The run directory (:mod:`r2.train.checkpoint`): best weights + config, ``preset.json``,
  ``best.json``, ``metrics.jsonl``, and ``checkpoints/last`` written atomically at the end of
  every epoch.
* ``resume=True`` continues from ``checkpoints/last``: the interrupted epoch is redone from
  the checkpoint with model, optimizer, schedule, scaler and every RNG state restored, so on
  CPU a run killed with SIGKILL and resumed ends with the same weights, bit for bit, as one
  that was never interrupted (a test does exactly that).
* ``torchrun --nproc_per_node N -m r2 fit ...``: DDP (gloo on CPU, NCCL on CUDA), the global
  batch split over the ranks, ``DistributedSampler``, rank-0 logging/evaluation/saving, RNG
  states of every rank in the checkpoint. The weights are checked to be identical on every
  rank at the end of each epoch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
import torch

from r2.model import R2Config, R2Model
from r2.model.official import OFFICIAL_SOURCE_NAME

from . import checkpoint as ckpt
from .allocator import reuse_freed_memory
from .annotations import GroundingSample, load_annotations
from .data import (MISSING_IDS_NAME, Collator, GroundingDataset, MissingFeaturesError, cache_widths,
                   check_cache_fps, check_feature_spec, check_ids, check_query_sentences, feature_spec,
                   loader_batches, loader_generator, loader_workers, resolve_layers, with_features, worker_init_fn)
from .distributed import DistContext, UnusedParameters, autocast, setup, teardown
from .presets import DERIVED_FIELDS, PRESETS, Preset, get_preset
from .targets import filter_for_training

if TYPE_CHECKING:
    from r2.evaluate import Source

__all__ = ["FitError", "FitOptions", "FitResult", "LRSchedule", "fit", "metric_value"]

#: preset fields that may change when a run is resumed
RESUMABLE_CHANGES = ("epochs", "num_workers", "eval_every")


class FitError(ValueError):
    """A training run that cannot start or go on as asked (one-line message)."""

    user_error = True


#: the R2Config fields that make a model's shape (with the feature widths and layers, which the
#: feature spec checks): an --init run must have the same
ARCHITECTURE_FIELDS = ("hidden_dim", "num_heads", "ffn_ratio", "use_tef", "strides", "coord_head")


def _set_value(value) -> str:
    """``value`` as ``--set key=value`` writes it."""
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value))
    if isinstance(value, bool):
        return "true" if value else "false"
    return "none" if value is None else str(value)


def _check_init_shape(init_config, config, init_path) -> None:
    """Raise :class:`FitError` when the ``--init`` run's architecture is not this run's, naming
    each field both ways and the ``--set`` that trains at the init run's shape (instead of a
    list of state-dict keys)."""
    diffs = [(f, getattr(init_config, f), getattr(config, f)) for f in ARCHITECTURE_FIELDS
             if _set_value(getattr(init_config, f)) != _set_value(getattr(config, f))]
    if diffs:
        theirs = ", ".join(f"{f}={_set_value(a)}" for f, a, _ in diffs)
        ours = ", ".join(f"{f}={_set_value(b)}" for f, _, b in diffs)
        sets = " ".join(f"--set {f}={_set_value(a)}" for f, a, _ in diffs)
        raise FitError(f"--init {init_path} is a model of another shape: it has {theirs}, this run's preset "
                       f"{ours}; add {sets} to train at its shape, or drop --init")


@dataclass
class FitOptions:
    """Everything ``r2 fit`` takes (the CLI maps its options one to one onto these fields).

    dataset: preset name (qvhighlights, charades, ego4d, tacos, youtube, tvsum, custom).
    cache: feature cache directory. run_dir: where the run is written.
    train / val: annotation files of the training and evaluation splits; or ``data_root``
    (the benchmark's standard file names are looked up there). ``val`` may be None (no
    evaluation: the last epoch is the run's weights).
    domain: YouTube domain / TVSum category (one model each; required there).
    epochs, seed, workers: shortcuts for the preset fields of the same name.
    overrides: preset fields (``--set key=value``; strings are parsed against the types).
    config_file: a JSON (or YAML) file of preset overrides, applied before ``overrides``.
    resume: continue ``run_dir`` from its last checkpoint (a fresh start when it has none).
    init: start from the weights of this run directory (fine-tuning; its feature spec must
    match the cache). device: "cpu", "cuda", "cuda:1" (default: CUDA when available).
    preload: read the splits into RAM first (when they fit). progress: tqdm bar on stderr
    (None: only when stderr is a terminal).
    eval_batch_size: batch size of the evaluation (default: the preset's batch size).
    skip_missing: train and evaluate on the queries whose features the cache holds, instead of
    refusing to start; the others are listed in ``RUN_DIR/missing_ids.txt``, counted in the log
    and in ``best.json`` (``"skipped_missing"``): the val metrics are then of a subset. A run
    started with it keeps it on ``resume``.
    allow_feature_mismatch: start from ``init`` weights trained on other features than the
    cache holds (another fps or preprocessing, say: fine-tuning across data sets) with a
    warning, instead of refusing.
    """

    dataset: str
    cache: str | os.PathLike
    run_dir: str | os.PathLike
    train: str | os.PathLike | None = None
    val: str | os.PathLike | None = None
    data_root: str | os.PathLike | None = None
    domain: str | None = None
    epochs: int | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)
    config_file: str | os.PathLike | None = None
    resume: bool = False
    init: str | os.PathLike | None = None
    seed: int | None = None
    device: str | None = None
    workers: int | None = None
    preload: bool = False
    progress: bool | None = True
    eval_batch_size: int | None = None
    skip_missing: bool = False
    allow_feature_mismatch: bool = False

    def to_json(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, os.PathLike):
                v = str(v)
            elif isinstance(v, Mapping):
                v = {str(k): (x if isinstance(x, (int, float, str, bool, type(None), list)) else str(x))
                     for k, x in v.items()}
            out[f.name] = v
        return out


@dataclass
class FitResult:
    """What a run produced. ``run_dir`` holds the best weights (``R2Model.from_pretrained``).

    main_metric / mode: the selection metric; best_epoch (1-based), best_value, best_metrics
    (the full ``r2.evaluate`` output of that epoch; None without evaluation); last_epoch and
    last_metrics: the final epoch; history: the ``metrics.jsonl`` records; resumed_from: the
    number of epochs the run was resumed after (None for a fresh run); selected_on: the split
    the best epoch was chosen on, the preset's ``eval_split`` ("test" for Charades-STA and
    TACoS by default, as the official code does; None without evaluation).
    """

    run_dir: Path
    dataset: str
    main_metric: str
    mode: str
    best_epoch: int | None
    best_value: float | None
    best_metrics: dict | None
    last_epoch: int
    last_metrics: dict | None
    epochs: int
    history: list[dict]
    seconds: float
    resumed_from: int | None = None
    selected_on: str | None = None
    world_size: int = 1
    num_train: int = 0
    num_val: int = 0
    trainable_parameters: int = 0

    @property
    def checkpoint(self) -> Path:
        return self.run_dir

    def best_of_each_metric(self) -> dict[str, "MetricBest"]:
        """Each metric's best value over the evaluated epochs and its epoch (the first, on a
        tie): what the official code logs as ``best_<key>``. Each may come from another epoch
        than ``best_epoch``, whose weights the run keeps; all these metrics are higher-better."""
        out: dict[str, MetricBest] = {}
        for record in self.history:
            for key, value in (record.get("metrics") or {}).items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    if key not in out or value > out[key].value:
                        out[key] = MetricBest(value, int(record["epoch"]))
        return out


@dataclass(frozen=True)
class MetricBest:
    """One metric's best value over a run's epochs, and the (1-based) epoch it came from."""

    value: float
    epoch: int


# ----------------------------------------------------------------------------------------------
# learning rate


class LRSchedule:
    """Per-iteration learning rate: ``lr × step factor(epoch) × warm-up(iteration)``."""

    def __init__(self, preset: Preset):
        self.lr = preset.lr
        self.kind = preset.lr_schedule
        self.milestones = tuple(preset.lr_milestones)
        self.gamma = preset.lr_gamma
        self.warmup_iters = int(preset.warmup_iters)
        self.warmup_ratio = preset.warmup_ratio

    def factor(self, epoch: int, iteration: int) -> float:
        f = 1.0
        if self.kind == "step":
            f = self.gamma ** sum(1 for m in self.milestones if epoch >= m)
        if iteration < self.warmup_iters:
            f *= 1.0 - (1.0 - self.warmup_ratio) * (1.0 - iteration / self.warmup_iters)
        return f

    def lr_at(self, epoch: int, iteration: int) -> float:
        return self.lr * self.factor(epoch, iteration)

    def state_dict(self) -> dict:
        return {"lr": self.lr, "kind": self.kind, "milestones": list(self.milestones),
                "gamma": self.gamma, "warmup_iters": self.warmup_iters, "warmup_ratio": self.warmup_ratio}


def schedule_warnings(preset: Preset, per_epoch: int) -> list[str]:
    """What the learning-rate schedule of ``preset`` never does in a run of ``per_epoch``
    iterations an epoch: a milestone at or after the last epoch never lowers the rate, and a
    warm-up longer than the iterations before the first lowering (or the run) never reaches
    ``lr`` (the preset's ``warmup_iters`` are sized for its benchmark's data; a small custom set
    has far fewer iterations an epoch)."""
    out = []
    epochs, total = preset.epochs, per_epoch * preset.epochs
    steps = preset.lr_schedule == "step"
    late = [m for m in preset.lr_milestones if m >= epochs] if steps else []
    if late:
        out.append(f"lr_milestones {','.join(map(str, late))} at or after the last epoch ({epochs} epochs, counted "
                   "from 0): the learning rate is never lowered there")
    first = next((m for m in preset.lr_milestones if m < epochs), None) if steps else None
    bound, where = (first * per_epoch, f"its first lowering (epoch {first}, from 0)") if first is not None \
        else (total, "the end of the run")
    if bound > 0 and preset.warmup_iters > bound:
        peak = LRSchedule(preset).factor(0, bound - 1)
        out.append(f"warmup_iters {preset.warmup_iters} outlasts the {bound} iterations before {where} "
                   f"({per_epoch} an epoch): the learning rate peaks at {peak:.1%} of lr {preset.lr:g}; "
                   f"a shorter warm-up: --set warmup_iters={max(1, bound // 10)}")
    return out


# ----------------------------------------------------------------------------------------------
# helpers


def metric_value(metrics: Mapping, key: str) -> float:
    """``key`` from an ``r2.evaluate.score`` result (its ``brief`` section, else the top level)."""
    for section in (metrics.get("brief"), metrics):
        if isinstance(section, Mapping) and key in section:
            value = section[key]
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
    def numbers(section) -> set:
        return {k for k, v in (section or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}

    keys = sorted(numbers(metrics.get("brief")) | numbers(metrics))
    if key in (metrics.get("brief") or {}) or key in metrics:  # there, but null
        raise FitError(f"main_metric {key!r} has no value on this evaluation split (null: e.g. a length bucket "
                       f"in which no ground-truth window falls); pick one that has, with --set main_metric=NAME "
                       f"({', '.join(keys)})")
    raise FitError(f"main_metric {key!r} is not among the evaluation's metrics ({', '.join(keys)}); "
                   "pick one with --set main_metric=NAME")


def evaluation_source(samples: Sequence, path) -> "Source":
    """Where the evaluation's ground-truth rows came from, for the evaluator's messages: the
    file's own line numbers (from each sample's ``origin``, ``file:line``), else row numbers."""
    from r2.evaluate import Source

    lines = []
    for s in samples:
        number = (s.origin or "").rpartition(":")[2]
        if not number.isdigit():
            return Source(str(path), lines=False)
        lines.append(int(number))
    return Source(str(path), lines=True, line_numbers=lines)


_DRY_RUN = "made-up predictions"


def check_evaluation(preset, gt_rows: list[dict], gt_source) -> None:
    """Before training, not after its first evaluated epoch: score made-up predictions (each
    query's own windows, flat saliency) against the evaluation split, so that ground truth the
    evaluator refuses (e.g. saliency on some rows and not others, a misspelt key) fails now,
    naming its file and line, and ``preset.main_metric`` is checked against the metric names
    the evaluation reports. Raises :class:`FitError`."""
    from r2.evaluate import EvaluationError, score
    from r2.evaluate import Source

    preds = []
    for row in gt_rows:
        pred: dict = {"qid": row["qid"]}
        windows = row.get("relevant_windows") or [[0.0, float(row.get("duration") or 1.0)]]
        pred["pred_relevant_windows"] = [[float(w[0]), float(w[1]), 1.0] for w in windows]
        # every row, as the model's predictions have: the evaluator scores saliency when the first has it
        rate = preset.fps if isinstance(preset.fps, (int, float)) else 1.0  # "auto" (YouTube): per video
        clips = (max(row["relevant_clip_ids"]) + 1 if row.get("relevant_clip_ids")
                 else math.ceil(float(row.get("duration") or 1.0) * float(rate)))
        pred["pred_saliency_scores"] = [0.0] * max(1, clips)
        preds.append(pred)
    options = {} if preset.name in ("youtube", "tvsum") else {"empty_bucket": "null"}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            metrics = score(preset.name, preds, gt_rows, pred_source=Source(_DRY_RUN, lines=False),
                            gt_source=gt_source, **options)
    except EvaluationError as exc:
        if _DRY_RUN in str(exc):  # about the made-up rows, not the data: the epoch's evaluation tells
            return
        with_saliency = sum(1 for row in gt_rows if "saliency_scores" in row)
        mixed = (f" ({with_saliency} of its {len(gt_rows)} rows have saliency labels: the evaluator needs them on "
                 "every row or on none)" if 0 < with_saliency < len(gt_rows) else "")
        raise FitError(f"the {preset.eval_split} split cannot be evaluated: {exc}{mixed}") from None
    metric_value(metrics, preset.main_metric)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_preset(options: FitOptions) -> Preset:
    """The preset with the file, ``--set``, ``--epochs``, ``--seed`` and ``--workers`` applied."""
    preset = get_preset(options.dataset, overrides=dict(options.overrides or {}),
                        override_file=options.config_file)
    extra = {}
    if options.epochs is not None:
        extra["epochs"] = options.epochs
    if options.seed is not None:
        extra["seed"] = options.seed
    if options.workers is not None:
        extra["num_workers"] = options.workers
    return preset.override(extra) if extra else preset


def resolve_files(options: FitOptions, preset: Preset) -> tuple[Path, Path | None]:
    """(train file, evaluation file or None) from ``--train/--val`` or ``--data-root``."""
    train = Path(options.train) if options.train is not None else None
    val = Path(options.val) if options.val is not None else None
    if options.data_root is not None:
        train_split, eval_split = preset.data_file_splits()
        if train is None:
            train = preset.find_data_file(options.data_root, train_split)
        if val is None:
            val = preset.find_data_file(options.data_root, eval_split)
    if train is None:
        raise FitError("give the training annotations with --train FILE (and --val FILE), or "
                       "--data-root DIR holding the benchmark's files")
    for what, path in (("--train", train), ("--val", val)):
        if path is not None and not path.is_file():
            raise FitError(f"{what} {path}: no such file")
    return train, val


def load_split(path: Path, preset: Preset, split: str, domain: str | None) -> list[GroundingSample]:
    """The records of one split of an annotation file, for this preset (YouTube/TVSum: the
    domain's R²-Tuning/UMT list for ``split``)."""
    if preset.domains and domain is None:
        raise FitError(f"{preset.name} trains one model per domain: give --domain "
                       f"({', '.join(preset.domains)})")
    return load_annotations(path, dataset=preset.name, domain=domain, split=split)


def _preset_differences(saved: dict, current: Preset) -> list[str]:
    now = current.to_dict()
    defaults = PRESETS[current.name].to_dict() if current.name in PRESETS else {}
    out = []
    for key in sorted(set(saved) | set(now)):
        if key in RESUMABLE_CHANGES or key in DERIVED_FIELDS:  # derived: saved by older runs
            continue
        # a field newer than the run: the run had the preset's default
        was = saved[key] if key in saved else defaults.get(key)
        if json.dumps(was, sort_keys=True) != json.dumps(now.get(key), sort_keys=True):
            out.append(f"{key}: the run has {json.dumps(was)}, now {json.dumps(now.get(key))}")
    return out


def _given_now(options: FitOptions) -> set[str]:
    """The preset fields this command line sets itself (an option or --set; not --config)."""
    given = set(options.overrides or {})
    if options.epochs is not None:
        given.add("epochs")
    if options.workers is not None:
        given.add("num_workers")
    return given


def _keep_the_runs_own(preset: Preset, saved: Mapping, options: FitOptions, log) -> Preset:
    """On --resume, the fields that may change (``RESUMABLE_CHANGES``) keep the run's values
    unless this command line sets them (an option or --set): a plain ``--resume`` of an
    ``--epochs 8`` run ends after epoch 8, not after the preset's 30; with ``--epochs 40`` it is
    extended, and says so. A ``--config`` file does not change them: it is the file the run
    began with, whose ``epochs`` the run's own ``--epochs`` may have overridden then."""
    given = _given_now(options)
    keep = {k: saved[k] for k in RESUMABLE_CHANGES
            if k in saved and k not in given and saved[k] != getattr(preset, k)}
    if options.config_file is not None:
        from .presets import load_overrides

        in_file = load_overrides(options.config_file)
        for k in sorted(set(keep) & set(in_file)):
            flag = "--epochs" if k == "epochs" else f"--set {k}="
            log(f"--resume keeps the run's {k} {saved[k]} ({options.config_file} says {in_file[k]}; pass "
                f"{flag}{'' if flag.endswith('=') else ' '}{in_file[k]} to change it)")
    if "epochs" in saved and "epochs" in given and saved["epochs"] != preset.epochs:
        log(f"--epochs {preset.epochs}: the run had {saved['epochs']} epochs")
    return preset.override(keep) if keep else preset


def _shared_queries(train: Sequence, val: Sequence) -> list:
    """The val samples whose video and sentence are also a training sample's."""
    seen = {(s.vid, s.query.strip().lower()) for s in train}
    return [s for s in val if (s.vid, s.query.strip().lower()) in seen]


def _misspelt_label_hint(sample) -> str:
    """`` (is 'relevant_window' meant to be 'relevant_windows'?)`` for an unknown key of the
    record that is close to a label key, else ''."""
    import difflib

    labels = ("relevant_windows", "relevant_clip_ids", "saliency_scores")
    for key in sample.extras:
        close = difflib.get_close_matches(str(key), labels, n=1, cutoff=0.75)
        if close:
            return f" (is {key!r} meant to be {close[0]!r}?)"
    return ""


def _bar_off(progress: bool | None) -> bool | None:
    """tqdm's ``disable`` for ``progress``: None (the default of the CLI) is a bar only on a
    terminal, so that logs of batch jobs get no bar."""
    return None if progress is None else not progress


def _param_checksum(model: torch.nn.Module) -> float:
    with torch.no_grad():
        return float(sum(p.detach().double().sum().item() for p in model.parameters()))


# ----------------------------------------------------------------------------------------------
# the entry point


def fit(options: FitOptions | None = None, *, callback: Callable[[dict], None] | None = None,
        log: Callable[[str], None] | None = None, **kwargs) -> FitResult:
    """Train a model (see the module docstring); ``fit(FitOptions(...))`` or ``fit(**fields)``.

    ``callback(record)`` is called on rank 0 after every epoch with the ``metrics.jsonl``
    record. ``log`` receives one-line messages (default: stderr, above the progress bar).
    Raises ``FitError``/``DataError``/``PresetError``/``AnnotationError``/``CacheError``/
    ``DeviceError`` (all user errors with a one-line message and ``user_error = True``) for
    bad input.

    Seeds are torch's, numpy's and Python's global generators, which every thread of a
    process shares: two fits at once in one process (threads) are not reproducible, and are
    said to be; run them in separate processes.
    """
    global _FITS_RUNNING
    if options is None:
        options = FitOptions(**kwargs)
    elif kwargs:
        options = dataclasses.replace(options, **kwargs)
    with _FITS_LOCK:
        others = _FITS_RUNNING
        _FITS_RUNNING += 1
    try:
        ctx = setup(options.device)
        try:
            trainer = _Trainer(options, ctx, callback, log)
            if others:
                trainer.log(f"warning: {others} other r2.train.fit call(s) run in this process now: they share "
                            "torch's, numpy's and Python's random generators, so no run is reproducible from its "
                            "seed; run them in separate processes")
            return trainer.run()
        finally:
            teardown(ctx)
    finally:
        with _FITS_LOCK:
            _FITS_RUNNING -= 1


_FITS_LOCK = threading.Lock()
_FITS_RUNNING = 0  # fit calls of this process now (threads share the global random generators)


class _Trainer:
    def __init__(self, options: FitOptions, ctx: DistContext, callback, log):
        self.options = options
        self.ctx = ctx
        self.callback = callback
        self._log = log
        self.run_dir = Path(options.run_dir)
        self.t0 = time.perf_counter()

    def log(self, message: str) -> None:
        if not self.ctx.is_main:
            return
        if self._log is not None:
            self._log(message)
        else:
            from tqdm import tqdm

            tqdm.write(message, file=sys.stderr)

    # ------------------------------------------------------------------ set-up
    def prepare(self) -> None:
        from r2.cache import FeatureCache

        o, ctx = self.options, self.ctx
        preset = resolve_preset(o)
        self.resume_state = None
        if (self.run_dir / OFFICIAL_SOURCE_NAME).exists():  # r2 convert-official's: not a run to train on
            raise FitError(f"{self.run_dir} holds a model converted by r2 convert-official ({OFFICIAL_SOURCE_NAME}), "
                           f"not a run of r2 fit; to train from its weights, start a new run: --init "
                           f"{self.run_dir} --run-dir NEW_FOLDER")
        if o.resume:
            loaded = ckpt.load_last(self.run_dir)
            if loaded is None:
                if ckpt.stopped_in_first_epoch(self.run_dir):
                    self.log(f"--resume: {self.run_dir} was stopped at the end of its first epoch, before "
                             "its checkpoint was written; starting the run again")
                    if ctx.is_main:
                        ckpt.remove_first_epoch(self.run_dir)
                elif ckpt.has_run(self.run_dir):
                    raise FitError(f"{self.run_dir} has weights but no checkpoints/last to resume from (its "
                                   "checkpoints were removed): remove the folder, or choose another --run-dir, "
                                   "to train again")
                else:
                    self.log(f"--resume: {self.run_dir} has no checkpoint yet; starting a new run")
            else:
                path, state, trainer = loaded
                preset = _keep_the_runs_own(preset, state.get("preset", {}), o, self.log)
                done = int(state.get("epoch", 0))
                if preset.epochs < done:  # its weights and records are of later epochs
                    raise FitError(f"--resume {self.run_dir}: --epochs {preset.epochs} is fewer than the {done} "
                                   f"epochs the run has done; resume with --epochs {done} or more (to train "
                                   "fewer epochs, start a new run in another --run-dir)")
                diffs = _preset_differences(state.get("preset", {}), preset)
                if diffs:
                    raise FitError(f"--resume {self.run_dir}: the settings differ from the run's "
                                   f"(only {', '.join(RESUMABLE_CHANGES)} may change; resume with the "
                                   f"same --set/--config/--seed options, the run's are in "
                                   f"{self.run_dir / ckpt.PRESET_NAME}):\n  " + "\n  ".join(diffs))
                self.resume_state = (path, state, trainer)
                before = state.get("options") or {}
                if before.get("skip_missing") and not o.skip_missing:  # the run's subset, as it began
                    o = self.options = dataclasses.replace(o, skip_missing=True)
                    self.log("--resume: --skip-missing kept from the run")
                if o.init is not None:
                    self.log(f"--resume: --init {o.init} is not used, the run goes on from its checkpoint"
                             + (f" (it started from {before['init']})" if before.get("init") else ""))
                for key in ("dataset", "cache", "train", "val", "data_root", "domain"):
                    a, b = before.get(key), o.to_json().get(key)
                    if a is not None and b is not None and key != "dataset" and key != "domain":
                        a, b = os.path.abspath(a), os.path.abspath(b)
                    if a != b:
                        self.log(f"warning: --{key.replace('_', '-')} was {before.get(key)} when the run "
                                 f"started, now {o.to_json().get(key)}")
        elif ckpt.has_run(self.run_dir):
            raise FitError(f"{self.run_dir} already holds a run (checkpoints/last or model.safetensors): "
                           "pass --resume to continue it, or choose another --run-dir (with --init "
                           f"{self.run_dir} to start from its weights)")
        self.preset = preset
        self.amp = preset.amp if ctx.device.type == "cuda" else preset.cpu_amp

        # annotations
        train_file, val_file = resolve_files(o, preset)
        self.train_file, self.val_file = train_file, val_file
        train_all = load_split(train_file, preset, "train", o.domain)
        train_samples, dropped = filter_for_training(train_all, preset)
        if dropped:
            self.log(f"dropped {len(dropped)} training sample(s) shorter than min_duration "
                     f"{preset.min_duration} s")
        if not train_samples:
            raise FitError(f"{train_file}: no training sample left (of {len(train_all)})")
        unlabelled = [s for s in train_samples if not s.labelled]
        if unlabelled:
            first = unlabelled[0]
            raise FitError(f"{first.origin or train_file}: {len(unlabelled)} record(s) have no labels (e.g. "
                           f"qid {first.qid!r}); training needs relevant_windows or relevant_clip_ids + "
                           f"saliency_scores{_misspelt_label_hint(first)}")
        val_samples = (load_split(val_file, preset, preset.eval_split, o.domain)
                       if val_file is not None else [])
        if val_file is not None and not any(s.labelled for s in val_samples):
            self.log(f"{val_file} has no labels: no evaluation; the last epoch is the run's weights")
            val_samples_eval = []
        else:
            val_samples_eval = val_samples
        self.train_samples, self.val_samples = train_samples, val_samples_eval
        shared = _shared_queries(train_samples, val_samples_eval)
        if shared:
            first = shared[0]
            self.log(f"warning: {len(shared)} of {len(val_samples_eval)} {preset.eval_split} queries are also "
                     f"training queries (the same video and sentence, e.g. {first.origin or first.qid}): the "
                     f"{preset.eval_split} metrics are not of held-out data"
                     + (" (--val is the --train file)" if val_file is not None
                        and os.path.abspath(val_file) == os.path.abspath(train_file) else ""))
        # the split the best epoch is chosen on, the one evaluated (best.json "selected_on");
        # None: no evaluation
        self.selected_on = preset.eval_split if val_samples_eval else None

        # cache
        self.gt_rows = [s.to_row() for s in val_samples_eval]
        self.gt_source = evaluation_source(val_samples_eval, val_file)
        if val_samples_eval:
            check_evaluation(preset, self.gt_rows, self.gt_source)  # now, not after an epoch
        cache = FeatureCache.open(o.cache)
        self.cache = cache
        check_cache_fps(preset.fps, cache.manifest.get("fps"), cache.path)
        self.layers = resolve_layers(preset.layers, cache.layers)
        spec = feature_spec(cache.manifest, self.layers)
        splits = [("train", str(train_file), train_samples)]
        if val_samples_eval:
            splits.append((preset.eval_split, str(val_file), val_samples_eval))
        missing_list = self.run_dir / MISSING_IDS_NAME
        self.skipped: dict[str, int] = {}
        try:
            check_ids(cache, splits, dataset=preset.name, list_file=missing_list, write=ctx.is_main,
                      make_folder=True)  # RUN_DIR/missing_ids.txt, even before the run's first file
        except MissingFeaturesError as exc:
            if not o.skip_missing:
                raise
            self._skip_missing(cache, missing_list, exc)
            train_samples, val_samples_eval = self.train_samples, self.val_samples
        else:
            if ctx.is_main:
                missing_list.unlink(missing_ok=True)  # from an earlier attempt: the cache is complete now
        video_dim, query_dim = cache_widths(cache)

        # model
        kwargs = preset.model_config_kwargs()
        kwargs.update(video_dim=video_dim, query_dim=query_dim, num_layers=len(self.layers),
                      features=spec)
        self.config = R2Config(**kwargs)
        _seed_everything(preset.seed)
        model = R2Model(self.config)
        if o.init is not None and self.resume_state is None:
            init = R2Model.from_pretrained(o.init)
            check_feature_spec(init.config.features, spec, f"--init {o.init}",
                               f"the feature cache at {cache.path}", cache_layers=cache.layers,
                               allow_mismatch=o.allow_feature_mismatch, warn=self.log)
            _check_init_shape(init.config, self.config, o.init)
            model.load_state_dict_strict(init.state_dict(), source=f"--init {o.init}")
            with torch.no_grad():  # the loss temperature is the preset's, not the init run's
                model.criterion.sal_log_scale.fill_(math.log(1.0 / self.config.tau))
            self.log(f"initialised from {o.init}")
        self.model = model.to(ctx.device)
        if ctx.distributed:
            _seed_everything(preset.seed + ctx.rank)

        # data
        log = self.log
        self.train_data = GroundingDataset(train_samples, cache, self.layers, preset, train=True,
                                           seed=preset.seed, repeat=preset.repeat, preload=o.preload,
                                           log=log)
        self.val_data = (GroundingDataset(val_samples_eval, cache, self.layers, preset, train=False,
                                          preload=o.preload, log=log)
                         if val_samples_eval else None)
        bs = preset.batch_size
        if ctx.distributed:
            if bs % ctx.world_size:
                self.log(f"batch_size {bs} is not divisible by the {ctx.world_size} ranks: each "
                         f"rank takes {max(1, bs // ctx.world_size)}")
            bs = max(1, bs // ctx.world_size)
        self.rank_batch = bs
        # --workers N starts exactly N; the preset's number: none on the CPU, elsewhere at most
        # the CPUs there are
        self.loader_workers = (o.workers if o.workers is not None
                               else loader_workers(preset.num_workers, ctx.device, log=self.log))

    # ------------------------------------------------------------------ loaders
    def train_loader(self, epoch: int):
        from torch.utils.data import DataLoader, DistributedSampler

        ctx, preset = self.ctx, self.preset
        self.train_data.set_epoch(epoch)
        sampler = DistributedSampler(self.train_data, num_replicas=ctx.world_size, rank=ctx.rank,
                                     shuffle=True, seed=preset.seed, drop_last=False)
        sampler.set_epoch(epoch)
        cfg = self.config
        need_windows = cfg.cls_loss == "focal" or (cfg.coord_head and cfg.reg_weight > 0)
        workers = self.loader_workers
        return DataLoader(self.train_data, batch_size=self.rank_batch, sampler=sampler,
                          collate_fn=Collator(windows=need_windows), num_workers=workers,
                          worker_init_fn=worker_init_fn if workers else None,
                          generator=loader_generator(preset.seed, epoch, ctx.rank),
                          pin_memory=ctx.device.type == "cuda", drop_last=preset.drop_last)

    def _nonfinite_loss(self, epoch: int, step: int, samples: Sequence[int]) -> None:
        """The loss of a step up to ``step`` (of ``samples``) is not finite: a CacheError when
        their cached features are damaged (a NaN in a shard reaches every weight in one
        step), else a FitError: training diverged. Under DDP every rank comes here at the same
        step and checks its own samples; each raises the first damaged item any rank found (a
        rank that stopped alone would leave the others a gloo traceback)."""
        from r2.cache import CacheError

        found = None
        try:
            for index in dict.fromkeys(samples):
                self.train_data.check_features(index)
        except CacheError as exc:
            found = exc
        if self.ctx.distributed:
            messages = self.ctx.gather_objects(str(found) if found is not None else None)
            first = next((m for m in messages if m is not None), None)
            if found is None and first is not None:
                rank = messages.index(first)
                found = CacheError(f"{first} (found by rank {rank})")
        if found is not None:
            raise found
        hint = ", or --set amp=bf16 (float16 overflows)" if self.amp == "fp16" else ""
        raise FitError(f"the training loss is not finite at epoch {epoch + 1}, step {step + 1}, although the "
                       f"features of its batches are intact (checked as `r2 cache verify` does): training "
                       f"diverged; lower the learning rate (--set lr=...){hint}")

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> tuple[dict | None, float | None, float]:
        from r2.evaluate import EvaluationWarning, score

        from .inference import predict_dataset

        if self.val_data is None:
            return None, None, 0.0
        t0 = time.perf_counter()
        preset = self.preset
        rows = predict_dataset(self.model_core, self.val_data,
                               batch_size=self.options.eval_batch_size or preset.batch_size,
                               workers=self.loader_workers, amp=self.amp, seed=preset.seed)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", EvaluationWarning)
            options = {} if preset.name in ("youtube", "tvsum") else {"empty_bucket": "null"}
            metrics = score(preset.name, rows, self.gt_rows, gt_source=self.gt_source, **options)
        for w in caught:
            message = str(w.message)
            if message not in self._seen_warnings:
                self._seen_warnings.add(message)
                self.log(f"evaluation warning: {message}")
        value = metric_value(metrics, preset.main_metric)
        return json.loads(json.dumps(metrics)), value, time.perf_counter() - t0

    # ------------------------------------------------------------------ the run
    def _skip_missing(self, cache, missing_list: Path, exc: MissingFeaturesError) -> None:
        """``--skip-missing``: go on with the queries whose features are in the cache (check_ids
        has listed the others in ``missing_list``); the log says how many of each split are left
        out and that the val metrics are then of a subset."""
        preset = self.preset
        train, n_train = with_features(cache, self.train_samples)
        val, n_val = with_features(cache, self.val_samples)
        if not train:
            raise FitError(f"--skip-missing: no training query has its features in {cache.path}\n{exc}")
        self.skipped = {"train": n_train, preset.eval_split: n_val}
        said = [f"{n_train} of {len(self.train_samples)} training queries"]
        if self.val_samples:
            said.append(f"{n_val} of {len(self.val_samples)} {preset.eval_split} queries (its metrics are of "
                        "the others: not comparable with results on the whole split)")
        where = f"{missing_list}" if missing_list.is_file() else "the message of a run without --skip-missing"
        self.log(f"warning: --skip-missing: {' and '.join(said)} have no features in {cache.path} and are "
                 f"left out; the missing ids are in {where}")
        self.train_samples, self.val_samples = train, val
        if not val:
            self.selected_on = None
        self.gt_rows = [s.to_row() for s in val]
        self.gt_source = evaluation_source(val, self.val_file)
        kept = [("train", str(self.train_file), train)] + (
            [(preset.eval_split, str(self.val_file), val)] if val else [])
        check_query_sentences(cache, kept)

    def run(self) -> FitResult:
        from tqdm import tqdm

        self.prepare()
        o, ctx, preset, model = self.options, self.ctx, self.preset, self.model
        self._seen_warnings: set[str] = set()
        self.model_core = model
        if ctx.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            # every parameter is in every step's graph (the zero term added to the loss in
            # the step), so DDP needs no search for unused ones
            ddp = DDP(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
                      find_unused_parameters=False)
        else:
            ddp = model
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        if ctx.device.type == "cpu":  # each step's activations reuse the last one's pages (r2.train.allocator)
            reuse_freed_memory()

        params = [p for p in model.parameters() if p.requires_grad]
        # torch's fused kernel on the CPU and CUDA: one pass over all parameters (5x faster on the
        # CPU than the per-parameter loop, 7.4 -> 1.4 ms a step for the official model size)
        optimizer = torch.optim.AdamW(params, lr=preset.lr, betas=tuple(preset.betas), eps=preset.eps,
                                      weight_decay=preset.weight_decay,
                                      fused=True if ctx.device.type in ("cpu", "cuda") else None)
        schedule = LRSchedule(preset)
        scaler = torch.amp.GradScaler(ctx.device.type, enabled=self.amp == "fp16")

        start_epoch, iteration = 0, 0
        best = None  # {"epoch", "value", "metrics"}
        history: list[dict] = []
        resumed_from = None
        if self.resume_state is not None:
            path, state, trainer = self.resume_state
            weights = R2Model.from_pretrained(path).state_dict()
            model.load_state_dict_strict(weights, source=str(path))
            optimizer.load_state_dict(trainer["optimizer"])
            if trainer.get("scaler"):
                scaler.load_state_dict(trainer["scaler"])
            start_epoch, iteration = int(state["epoch"]), int(state["iteration"])
            best = state.get("best")
            rng = trainer.get("rng") or []
            if len(rng) == ctx.world_size:
                ckpt.set_rng_state(rng[ctx.rank])
            else:
                self.log(f"the checkpoint has RNG states of {len(rng)} rank(s), this run has "
                         f"{ctx.world_size}: reseeding (the run will not repeat the original exactly)")
                _seed_everything(preset.seed + 1000 * start_epoch + ctx.rank)
            resumed_from = start_epoch
            if ctx.is_main:
                history = ckpt.truncate_metrics(self.run_dir, start_epoch)
                ckpt.clean_partials(self.run_dir)
            self.log(f"resuming {self.run_dir} after epoch {start_epoch} (iteration {iteration})")
        if ctx.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            ckpt.write_json(self.run_dir / ckpt.PRESET_NAME, preset.to_dict())
            if self.resume_state is None:
                ckpt.truncate_metrics(self.run_dir, 0)

        n_train = len(self.train_data)
        per_epoch = math.ceil(math.ceil(n_train / ctx.world_size) / self.rank_batch)
        total = per_epoch * preset.epochs
        self.log(f"training {preset.name}: {len(self.train_samples)} samples"
                 + (f" ×{preset.repeat}" if preset.repeat > 1 else "")
                 + f", {len(self.val_samples)} {preset.eval_split} queries, "
                 f"{model.num_trainable_parameters():,} parameters, {preset.epochs} epochs of "
                 f"{per_epoch} iterations, batch {preset.batch_size}"
                 + (f" over {ctx.world_size} ranks" if ctx.distributed else "")
                 + f", device {ctx.device}, amp {self.amp}")
        if start_epoch < preset.epochs:
            for warning in schedule_warnings(preset, per_epoch):
                self.log(f"warning: {warning}")
        if self.selected_on == "test":
            official = PRESETS[preset.name].eval_split == "test"
            self.log(f"note: {preset.name} selects the best epoch by {preset.main_metric} on the test "
                     f"split ({self.val_file})"
                     + (", as R²-Tuning's official code does" if official else "")
                     + "; that score is then optimistic for the test set (best.json says "
                     "\"selected_on\": \"test\"; to select on a val split: --val VAL_FILE --set "
                     "eval_split=val)")
        bar = tqdm(total=total, initial=min(total, start_epoch * per_epoch), desc="fit", unit="it",
                   disable=_bar_off(o.progress) if ctx.is_main else True, file=sys.stderr,
                   dynamic_ncols=True)
        last_metrics, last_value = None, None
        if history:
            last_metrics = history[-1].get("metrics")
        try:
            for epoch in range(start_epoch, preset.epochs):
                t_epoch = time.perf_counter()
                model.train()
                loader = self.train_loader(epoch)
                sums: dict[str, torch.Tensor] = {}
                seen = torch.zeros((), dtype=torch.float64, device=ctx.device)
                lr = schedule.lr_at(epoch, iteration)
                recent: list[int] = []  # samples of the steps since the loss was last seen finite
                for step, batch in enumerate(loader_batches(loader)):
                    batch = batch.to(ctx.device, non_blocking=True)
                    lr = schedule.lr_at(epoch, iteration)
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    with autocast(ctx.device, self.amp):
                        out = ddp(batch.video, batch.video_mask, batch.query, batch.query_mask)
                    loss = model.compute_loss(out, batch.targets)
                    optimizer.zero_grad(set_to_none=True)
                    total, unused = loss.total, None
                    if ctx.distributed:
                        # Some parameters can get no gradient in a step: a pyramid level whose
                        # stride is longer than the batch's padded videos is skipped (as
                        # officially), a head or pooling whose loss weight is 0 is not in the
                        # loss. DDP waits for every gradient, so they get a zero one (the loss
                        # value is unchanged); those that no rank used then get None again,
                        # and AdamW leaves them alone as in one process
                        unused = UnusedParameters(total, params)
                        total = total + 0.0 * sum(p.sum() for p in params)
                    scaler.scale(total).backward()
                    for p in unused.collect() if unused is not None else ():
                        p.grad = None
                    if preset.grad_clip is not None:
                        scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(params, preset.grad_clip)
                    scaler.step(optimizer)
                    scaler.update()
                    iteration += 1
                    n = len(batch)
                    seen += n
                    for key, value in (("total", loss.total), *loss.terms.items()):
                        value = value.detach().double() * n
                        sums[key] = sums[key] + value if key in sums else value
                    recent.extend(batch.indices)
                    # every step on the CPU, every 10 on a GPU (where reading the value waits for it)
                    if ctx.device.type != "cuda" or step % 10 == 0 or step + 1 == len(loader):
                        bad = (~torch.isfinite(sums["total"])).double().reshape(1)
                        if bool(ctx.all_reduce_sum(bad)):  # on any rank: all look, together
                            self._nonfinite_loss(epoch, step, recent)
                        recent.clear()
                    bar.update(1)
                    if ctx.is_main and (step % 10 == 0 or step + 1 == len(loader)):
                        post = {"epoch": f"{epoch + 1}/{preset.epochs}",
                                "loss": f"{float(sums['total'] / seen):.4f}"}
                        if last_value is not None:
                            post[preset.main_metric] = f"{last_value:.2f}"
                        bar.set_postfix(post, refresh=False)
                # epoch statistics over every rank
                keys = sorted(sums)
                stacked = torch.stack([sums[k] for k in keys] + [seen]) if keys else seen[None]
                ctx.all_reduce_sum(stacked)
                count = float(stacked[-1])
                losses = {k: float(stacked[i]) / max(count, 1.0) for i, k in enumerate(keys)}
                if not all(math.isfinite(v) for v in losses.values()):
                    raise FitError(f"the training loss is not finite at epoch {epoch + 1} ({losses}); "
                                   "lower the learning rate (--set lr=...) or check the features")
                train_seconds = time.perf_counter() - t_epoch
                if ctx.distributed:
                    sums_all = ctx.gather_objects(_param_checksum(model))
                    if len(set(sums_all)) != 1:
                        raise RuntimeError(f"DDP ranks diverged after epoch {epoch + 1}: parameter "
                                           f"checksums {sums_all}")

                # evaluation (rank 0)
                is_eval = ((epoch + 1) % preset.eval_every == 0) or epoch + 1 == preset.epochs
                metrics, value, eval_seconds = None, None, 0.0
                if ctx.is_main and is_eval:
                    metrics, value, eval_seconds = self.evaluate()
                is_best = False
                if ctx.is_main:
                    if self.val_data is None:
                        is_best = True
                    elif value is not None:
                        better = (best is None or best.get("value") is None
                                  or (value > best["value"] if preset.main_metric_mode == "max"
                                      else value < best["value"]))
                        is_best = better
                    if is_best:
                        best = {"epoch": epoch + 1, "value": value, "metric": preset.main_metric,
                                "selected_on": self.selected_on, "metrics": metrics}
                        if any(self.skipped.values()):  # --skip-missing: the metrics are of a subset
                            best["skipped_missing"] = self.skipped
                rng_states = ctx.gather_objects(ckpt.get_rng_state())
                if ctx.is_main:
                    if is_best:
                        model.save_pretrained(self.run_dir)
                        ckpt.write_json(self.run_dir / ckpt.BEST_NAME, best)
                    brief = None
                    if metrics is not None:
                        brief = metrics.get("brief", metrics)
                        last_metrics, last_value = metrics, value
                    record = {
                        "epoch": epoch + 1, "iteration": iteration, "lr": lr, "loss": losses,
                        "metrics": brief, "main_metric": preset.main_metric, "value": value,
                        "best": is_best, "best_epoch": None if best is None else best["epoch"],
                        "best_value": None if best is None else best["value"],
                        "samples": int(count), "seconds": round(train_seconds, 3),
                        "eval_seconds": round(eval_seconds, 3), "world_size": ctx.world_size,
                    }
                    ckpt.append_metrics(self.run_dir, record)
                    history.append(record)
                    trainer = {"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                               "schedule": schedule.state_dict(), "rng": rng_states,
                               # the loader's shuffling and worker seeds are functions of these
                               "loader": {"seed": preset.seed, "next_epoch": epoch + 1,
                                          "world_size": ctx.world_size}}
                    state = {"epoch": epoch + 1, "iteration": iteration, "best": best,
                             "preset": preset.to_dict(), "options": o.to_json(),
                             "world_size": ctx.world_size, "layers": self.layers}
                    ckpt.save_last(self.run_dir, model, trainer, state)
                    if value is not None:
                        self.log(f"epoch {epoch + 1}/{preset.epochs}: loss {losses.get('total', 0):.4f}, "
                                 f"{preset.main_metric} {value:.2f}"
                                 + (" (best)" if is_best else f" (best {best['value']:.2f} at epoch "
                                                              f"{best['epoch']})"))
                    else:  # a line for every epoch: a batch job's log (no bar) is not silent for long
                        why = ("no evaluation split" if self.val_data is None
                               else f"evaluated every {preset.eval_every} epochs")
                        self.log(f"epoch {epoch + 1}/{preset.epochs}: loss {losses.get('total', 0):.4f} ({why})")
                    if self.callback is not None:
                        self.callback(record)
                ctx.barrier()
        finally:
            bar.close()
        done = max(start_epoch, preset.epochs)
        if ctx.is_main and done == start_epoch and self.resume_state is not None:
            self.log(f"{self.run_dir} already finished its {preset.epochs} epochs")
        return FitResult(
            run_dir=self.run_dir, dataset=preset.name, main_metric=preset.main_metric,
            mode=preset.main_metric_mode, best_epoch=None if best is None else best["epoch"],
            best_value=None if best is None else best["value"],
            best_metrics=None if best is None else best.get("metrics"), last_epoch=done,
            last_metrics=last_metrics, epochs=preset.epochs, history=history,
            seconds=time.perf_counter() - self.t0, resumed_from=resumed_from,
            selected_on=self.selected_on, world_size=ctx.world_size, num_train=len(self.train_samples),
            num_val=len(self.val_samples), trainable_parameters=model.num_trainable_parameters())
