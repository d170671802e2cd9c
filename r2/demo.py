"""``r2 demo``: the whole product on a synthetic grounding set, offline, in about a minute.

::

    from r2.demo import run_demo
    result = run_demo("r2-demo", seed=0)          # or quick=True for the small configuration
    print(result.format())
    result.metrics["brief"]["MR-full-R1@0.7"], result.chance_metrics["brief"]["MR-full-R1@0.7"]

Stages, each through the same Python API the commands call:

1. **data** — real videos written with PyAV (:mod:`r2.extract.synthetic`): every video is a
   sequence of scenes (a colour, plain or with a pattern: checkerboard, stripes, gradient)
   whose boundaries lie on the 2-s clip grid; scenes last 8–20 s (4–10 clips) so that a
   boundary one clip off still gives IoU >= 0.7 on most moments. Every query names one scene
   whose colour occurs once in its video ("the green part", "a blue checkerboard", ...), so
   the moment is findable only by reading the query. QVHighlights-layout rows (custom data
   set: windows + three annotators' saliency scores, 4 on the scene's clips) go to
   ``annotations/{train,val}.jsonl``; train and val use disjoint videos; a few videos of
   each split are longer than 150 s.
2. **clip** — the tiny random CLIP of ``r2 make-tiny-clip`` (or ``model``: a local folder or
   a hub id already on disk; offline, anything else is a clear error before any work).
3. **extract** — :func:`r2.extract.pipeline.extract_features` into ``cache/`` (0.5 clips/s).
4. **fit** — :func:`r2.train.fit` with the ``custom`` preset and :data:`DEMO_FIT_SETTINGS`
   (a small R² Block for the CPU), written to ``run/``.
5. **predict** — :func:`r2.train.predict` over the val split → ``predictions.jsonl``.
6. **score** — :func:`r2.evaluate.score` → ``metrics.json``, next to a chance baseline on the
   same val queries (:func:`chance_baseline`: random windows on the clip grid, random
   saliency) → ``chance_metrics.json``.

Repeatable: one ``seed`` drives the videos, the queries, training and the chance baseline;
decoding uses one worker process (a fixed batch order), torch a fixed number of threads, so
two runs on one machine print the same numbers.

The output folder is refused when it is not empty and was not written by ``r2 demo`` (the
marker file ``r2-demo.json``); a previous demo folder is overwritten (only the demo's own
files are removed).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from r2.cpus import usable_cpus

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

__all__ = [
    "DEMO_CONFIGS",
    "DEMO_FIT_SETTINGS",
    "DemoConfig",
    "DemoData",
    "DemoError",
    "DemoResult",
    "MARKER_NAME",
    "chance_baseline",
    "demo_config",
    "make_demo_data",
    "prepare_out_dir",
    "run_demo",
]

#: Preset overrides of the ``custom`` preset for the demo (``r2 fit --config fit_settings.json``):
#: a small R² Block that trains in about a minute on 2 CPU cores and localises the scenes.
DEMO_FIT_SETTINGS: dict[str, Any] = {
    "layers": [-2, -1],
    "hidden_dim": 64,
    "num_heads": 4,
    "ffn_ratio": 2,
    "dropout": 0.0,
    "droppath": 0.0,
    "batch_size": 16,
    "epochs": 20,
    "lr": 3e-3,
    "lr_schedule": "step",
    "lr_milestones": [16],
    "warmup_iters": 20,
    "eval_every": 20,
    "num_workers": 0,
    "unit": 2.0,
    "nms": "normal",
    "nms_threshold": 0.7,
}

#: The marker file that says a folder is a demo output (safe to overwrite).
MARKER_NAME = "r2-demo.json"

#: What a demo writes into its folder (removed before a rerun into the same folder).
_OUTPUTS = ("videos", "annotations", "clip", "cache", "run", "predictions.jsonl", "metrics.json",
            "chance_predictions.jsonl", "chance_metrics.json", "fit_settings.json", "summary.txt",
            # what the printed by-hand commands write (a rerun's printed fit must not find a run)
            "run-by-hand", "predictions-by-hand.jsonl", "metrics-by-hand.json")

#: Scene colours (RGB): far apart, so that a random tiny CLIP keeps them apart too.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (230, 25, 25), "green": (25, 200, 40), "blue": (30, 40, 230), "yellow": (240, 220, 30),
    "cyan": (30, 220, 230), "magenta": (220, 30, 220), "white": (250, 250, 250), "black": (0, 0, 0),
}

#: Scene patterns: the colour alone, or the colour with a darker shade of itself drawn over it
#: (black scenes are always plain). The hue stays the scene's identity.
PATTERNS = ("plain", "checks", "stripes", "dots")
_SHADE = 0.55

_GENERIC_QUERIES = ("the {c} part", "when the screen is {c}", "the {c} scene", "a {c} screen")
_PATTERN_QUERIES = {
    "plain": ("a plain {c} screen", "the screen turns {c}"),
    "checks": ("a {c} checkerboard", "{c} checks"),
    "stripes": ("{c} stripes", "a screen with {c} stripes"),
    "dots": ("{c} dots", "a {c} screen with dots"),
}

CLIP_SECONDS = 2  # 0.5 clips per second, as QVHighlights


class DemoError(Exception):
    """The demo cannot run as asked (one-line message)."""

    user_error = True


@dataclass(frozen=True)
class DemoConfig:
    """Size of a demo: how many videos of which lengths, and the training overrides.

    Video lengths are in seconds (multiples of the 2-s clip); scenes last
    ``scene_clips`` = (min, max) clips. ``fit`` overrides :data:`DEMO_FIT_SETTINGS`.
    """

    name: str
    train_videos: int
    val_videos: int
    long_train_videos: int
    long_val_videos: int
    seconds: tuple[int, int] = (20, 60)
    long_seconds: tuple[int, int] = (160, 200)
    scene_clips: tuple[int, int] = (4, 10)
    queries_per_video: int = 2
    queries_per_long_video: int = 4
    source_fps: float = 2.0
    size: tuple[int, int] = (96, 72)  # (width, height) of the written videos
    fit: Mapping[str, Any] = field(default_factory=dict)

    def fit_settings(self) -> dict[str, Any]:
        """:data:`DEMO_FIT_SETTINGS` with this configuration's overrides."""
        settings = dict(DEMO_FIT_SETTINGS)
        settings.update(self.fit)
        return settings


DEMO_CONFIGS: dict[str, DemoConfig] = {
    "full": DemoConfig(name="full", train_videos=220, val_videos=50, long_train_videos=0,
                       long_val_videos=4),
    "quick": DemoConfig(name="quick", train_videos=60, val_videos=16, long_train_videos=1,
                        long_val_videos=1, seconds=(20, 40),
                        fit={"epochs": 6, "lr_milestones": [5], "eval_every": 6}),
}


def demo_config(quick: bool = False) -> DemoConfig:
    """The ``quick`` or the ``full`` configuration."""
    return DEMO_CONFIGS["quick" if quick else "full"]


# ----------------------------------------------------------------------------------------------
# data


@dataclass
class DemoData:
    """What :func:`make_demo_data` wrote."""

    videos_dir: Path
    train_file: Path
    val_file: Path
    train_videos: int
    val_videos: int
    long_videos: int  # longer than 150 s, both splits
    train_queries: int
    val_queries: int
    clips: int  # 2-s clips over all videos
    seconds: float  # of video, all together
    longest: float  # seconds


def _split_scenes(rng, clips: int, lo: int, hi: int) -> list[int]:
    """Random scene lengths (in clips, each in [lo, hi]) that add up to ``clips``."""
    counts = [k for k in range(1, clips // lo + 1) if k * lo <= clips <= k * hi]
    if not counts:
        raise ValueError(f"{clips} clips cannot be cut into scenes of {lo}..{hi} clips")
    k = int(rng.choice(counts))
    lengths = [lo] * k
    for _ in range(clips - k * lo):
        open_ = [i for i in range(k) if lengths[i] < hi]
        lengths[int(rng.choice(open_))] += 1
    return lengths


def _scene_colours(rng, n: int, unique: int) -> list[str]:
    """``n`` scene colours, at least ``unique`` of them used once; neighbours always differ.

    Up to the palette size every colour is distinct; a longer video uses ``unique`` colours
    once and fills the other scenes with the rest of the palette (repeated, never twice in a
    row)."""
    names = list(PALETTE)
    if n <= len(names):
        return [names[i] for i in rng.permutation(len(names))[:n]]
    order = rng.permutation(len(names))
    once, filler = [names[i] for i in order[:unique]], [names[i] for i in order[unique:]]
    at = {int(p): c for p, c in zip(rng.choice(n, size=unique, replace=False), once)}
    out: list[str] = []
    for i in range(n):
        if i in at:
            out.append(at[i])
        else:
            choices = [c for c in filler if not out or c != out[-1]]
            out.append(choices[int(rng.integers(len(choices)))])
    return out


def _query_text(rng, colour: str, pattern: str) -> str:
    templates = _GENERIC_QUERIES if rng.random() < 0.5 else _PATTERN_QUERIES[pattern]
    return templates[int(rng.integers(len(templates)))].format(c=colour)


def scene_frame(colour: str, pattern: str, width: int, height: int) -> "np.ndarray":
    """One ``(height, width, 3)`` uint8 frame of a scene: a :data:`PALETTE` colour, plain or
    with checks / stripes / dots in a darker shade of it."""
    import numpy as np

    rgb = np.asarray(PALETTE[colour], np.float32)
    yy, xx = np.mgrid[0:height, 0:width]
    cell = max(4, min(width, height) // 6)
    if pattern == "checks":
        shade = ((yy // cell) + (xx // cell)) % 2 == 1
    elif pattern == "stripes":
        shade = (xx // max(2, cell // 2)) % 2 == 1
    elif pattern == "dots":
        shade = ((yy % cell) - cell / 2) ** 2 + ((xx % cell) - cell / 2) ** 2 < (cell / 3.5) ** 2
    else:
        shade = np.zeros((height, width), bool)
    factor = np.where(shade, _SHADE, 1.0).astype(np.float32)
    return np.clip(rgb[None, None] * factor[..., None], 0, 255).astype(np.uint8)


def _plan_video(rng, seconds: tuple[int, int], scene_clips: tuple[int, int], queries: int):
    """(scenes [(colour, pattern, first clip, clips)], indices of the queried scenes)."""
    lo, hi = seconds
    clips = int(rng.integers(lo // CLIP_SECONDS, hi // CLIP_SECONDS + 1))
    lengths = _split_scenes(rng, clips, *scene_clips)
    colours = _scene_colours(rng, len(lengths), queries)
    scenes, start = [], 0
    for colour, n in zip(colours, lengths):
        pattern = "plain" if colour == "black" else PATTERNS[int(rng.integers(len(PATTERNS)))]
        scenes.append((colour, pattern, start, n))
        start += n
    unique = [i for i, sc in enumerate(scenes) if colours.count(sc[0]) == 1]
    picked = sorted(int(i) for i in rng.choice(unique, size=min(queries, len(unique)), replace=False))
    return scenes, picked


def _write_scenes(path: Path, scenes, fps: float, size: tuple[int, int]) -> int:
    """Encode the scenes (one still frame per scene, repeated) with PyAV, losslessly; returns
    the frames."""
    from r2.extract.synthetic import write_video

    width, height = size
    frames_per_clip = fps * CLIP_SECONDS

    def frames():
        for colour, pattern, _, n in scenes:
            frame = scene_frame(colour, pattern, width, height)
            for _ in range(int(round(n * frames_per_clip))):
                yield frame

    # lossless (qp 0): x264's lossy choices are not repeatable from run to run (seen here: 1 to
    # 16 videos of 274 decoded a few levels apart, even with one encoder thread), and any
    # difference changes the numbers; lossless frames decode to the same pixels every time
    return write_video(path, frames(), fps=fps, keyframe_interval=int(round(fps * 60)), bframes=0,
                       options={"qp": "0"})


def make_demo_data(out_dir: str | os.PathLike, config: DemoConfig | None = None, *, seed: int = 0,
                   progress: bool | None = False) -> DemoData:
    """Write the demo's videos (``out_dir/videos``) and annotations (``out_dir/annotations``).

    Deterministic in ``seed``. Video ids: ``train0000`` ..., ``val0000`` ...; query ids are
    integers (train first). Returns a :class:`DemoData`.
    """
    import numpy as np
    from tqdm import tqdm

    from r2.evaluate import write_jsonl

    config = config or demo_config()
    out = Path(out_dir)
    videos_dir, ann_dir = out / "videos", out / "annotations"
    videos_dir.mkdir(parents=True, exist_ok=True)
    ann_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 8])
    rows: dict[str, list[dict]] = {"train": [], "val": []}
    listing: list[dict] = []  # annotations/videos.jsonl: every video's scenes
    plan = []  # (path, scenes)
    qid = 0
    for split, short, long_ in (("train", config.train_videos, config.long_train_videos),
                                ("val", config.val_videos, config.long_val_videos)):
        for i in range(short + long_):
            vid, is_long = f"{split}{i:04d}", i >= short
            scenes, picked = _plan_video(
                rng, config.long_seconds if is_long else config.seconds, config.scene_clips,
                config.queries_per_long_video if is_long else config.queries_per_video)
            duration = sum(sc[3] for sc in scenes) * CLIP_SECONDS
            plan.append((videos_dir / f"{vid}.mp4", scenes))
            listing.append({"vid": vid, "split": split, "duration": duration, "scenes": [
                {"colour": c, "pattern": p, "start": a * CLIP_SECONDS, "end": (a + n) * CLIP_SECONDS}
                for c, p, a, n in scenes]})
            for j in picked:
                colour, pattern, first, n = scenes[j]
                ids = list(range(first, first + n))
                rows[split].append({
                    "qid": qid, "query": _query_text(rng, colour, pattern), "duration": duration,
                    "vid": vid, "relevant_clip_ids": ids, "saliency_scores": [[4, 4, 4] for _ in ids],
                    "relevant_windows": [[first * CLIP_SECONDS, (first + n) * CLIP_SECONDS]]})
                qid += 1
    for path, scenes in tqdm(plan, desc="videos", unit="video",
                             disable=None if progress is None else not progress, file=sys.stderr,
                             dynamic_ncols=True, leave=False):
        _write_scenes(path, scenes, config.source_fps, config.size)
    train_file, val_file = ann_dir / "train.jsonl", ann_dir / "val.jsonl"
    write_jsonl(rows["train"], train_file)
    write_jsonl(rows["val"], val_file)
    write_jsonl(listing, ann_dir / "videos.jsonl")
    durations = [v["duration"] for v in listing]
    return DemoData(videos_dir=videos_dir, train_file=train_file, val_file=val_file,
                    train_videos=config.train_videos + config.long_train_videos,
                    val_videos=config.val_videos + config.long_val_videos,
                    long_videos=sum(d > 150 for d in durations), train_queries=len(rows["train"]),
                    val_queries=len(rows["val"]), clips=sum(durations) // CLIP_SECONDS,
                    seconds=float(sum(durations)), longest=float(max(durations)))


def chance_baseline(gt_rows: Sequence[Mapping], seed: int = 0, windows: int = 10,
                    fps: float = 1 / CLIP_SECONDS) -> list[dict]:
    """Chance predictions for the same queries: per query ``windows`` windows with a uniformly
    random start and end on the clip grid and random scores, and a random saliency per clip
    (:func:`r2.train.synthetic.chance_predictions`)."""
    from r2.train.synthetic import chance_predictions

    return chance_predictions([dict(r) for r in gt_rows], seed=seed, windows=windows, fps=fps)


# ----------------------------------------------------------------------------------------------
# the output folder


def prepare_out_dir(out_dir: str | os.PathLike, *, seed: int, config: DemoConfig,
                    model: str | None) -> Path:
    """Make ``out_dir`` ready: create it, or clear a previous demo's outputs in it.

    Raises :class:`DemoError` for a file, or a non-empty folder without the demo's marker.
    """
    import r2

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DemoError(f"--out {out}: is a file; give a folder (new, empty, or a previous demo's)")
    marker = out / MARKER_NAME
    if out.is_dir() and any(out.iterdir()):
        if not marker.is_file():
            raise DemoError(f"--out {out}: the folder is not empty and was not written by `r2 demo` "
                            f"(no {MARKER_NAME}); give a new or empty folder with --out")
        try:
            json.loads(marker.read_text(encoding="utf-8"))["r2_demo"]
        except (ValueError, KeyError, TypeError):
            raise DemoError(f"{marker}: not a marker written by `r2 demo`; give a new or empty folder "
                            "with --out") from None
        for name in _OUTPUTS:
            path = out / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    info = {"r2_demo": 1, "r2_version": r2.__version__, "config": config.name, "seed": seed,
            "model": model}
    tmp = out / f".{MARKER_NAME}.partial"
    tmp.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, marker)
    return out


# ----------------------------------------------------------------------------------------------
# the result


#: (label, brief key) of the compared numbers, in print order
SHOWN_METRICS = (("MR R1@0.5", "MR-full-R1@0.5"), ("MR R1@0.7", "MR-full-R1@0.7"),
                 ("MR mAP", "MR-full-mAP"), ("MR mIoU", "MR-full-mIoU"),
                 ("HD mAP", "HL-min-VeryGood-mAP"), ("HD HIT@1", "HL-min-VeryGood-Hit1"))


@dataclass
class StageTime:
    name: str
    seconds: float
    detail: str = ""


@dataclass
class DemoResult:
    """What :func:`run_demo` did. ``metrics`` / ``chance_metrics``: the full
    :func:`r2.evaluate.score` outputs on the val split (``["brief"]`` holds the headline
    numbers, percentages)."""

    out_dir: Path
    config: DemoConfig
    seed: int
    model: str
    data: DemoData
    metrics: dict
    chance_metrics: dict
    stages: list[StageTime]
    commands: list[str]
    best_epoch: int | None = None
    trainable_parameters: int = 0

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.stages)

    def value(self, key: str, chance: bool = False) -> float:
        """One number of the ``brief`` section (e.g. ``"MR-full-R1@0.7"``)."""
        return float((self.chance_metrics if chance else self.metrics)["brief"][key])

    def table(self) -> str:
        """The val scores next to the chance baseline."""
        lines = [f"{'val (' + str(self.data.val_queries) + ' queries)':<26}{'r2':>9}{'chance':>9}"]
        for label, key in SHOWN_METRICS:
            if key in self.metrics["brief"]:
                lines.append(f"  {label:<24}{self.value(key):>9.2f}{self.value(key, True):>9.2f}")
        return "\n".join(lines)

    def format(self) -> str:
        """The printed summary: data, timings, scores vs chance, and the commands of each stage."""
        d = self.data
        lines = [
            f"r2 demo ({self.config.name}, seed {self.seed}) in {self.out_dir}",
            f"  data    {d.train_videos + d.val_videos} videos ({d.train_videos} train / {d.val_videos} val, "
            f"{d.long_videos} longer than 150 s, longest {d.longest:.0f} s), {d.clips} clips of "
            f"{CLIP_SECONDS} s, {d.train_queries} train / {d.val_queries} val queries",
            f"  model   CLIP {self.model}; R² Block with {self.trainable_parameters:,} trainable "
            f"parameters" + (f", best epoch {self.best_epoch}" if self.best_epoch else ""),
            "",
            "stage      seconds",
        ]
        for s in self.stages:
            lines.append(f"  {s.name:<9}{s.seconds:>7.1f}" + (f"   {s.detail}" if s.detail else ""))
        lines.append(f"  {'total':<9}{self.seconds:>7.1f}")
        lines += ["", self.table(), "",
                  "The same stages by hand, on this folder (also how to run r2 on your own data):"]
        lines += [f"  {c}" for c in self.commands]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "out_dir": str(self.out_dir), "config": self.config.name, "seed": self.seed,
            "model": self.model, "seconds": round(self.seconds, 3),
            "stages": [dataclasses.asdict(s) for s in self.stages],
            "scores": {key: self.value(key) for _, key in SHOWN_METRICS if key in self.metrics["brief"]},
            "chance": {key: self.value(key, True) for _, key in SHOWN_METRICS
                       if key in self.chance_metrics["brief"]},
            "commands": list(self.commands),
        }


# ----------------------------------------------------------------------------------------------
# the run


def _without_bucket_notes(log: Callable[[str], None]) -> Callable[[str], None]:
    """``log`` minus fit's note that the ``long`` (> 30 s) length bucket is empty: demo
    scenes last at most 20 s, so the bucket is always empty and the note is noise here."""

    def filtered(message: str) -> None:
        if not (message.startswith("evaluation warning: length bucket") and "is empty" in message):
            log(message)

    return filtered


def _q(path) -> str:
    return shlex.quote(str(path))


def _commands(out: Path, model_arg: str, made_tiny: bool, seed: int, threads: int) -> list[str]:
    ann = out / "annotations"
    cmds = []
    if made_tiny:
        cmds.append(f"r2 make-tiny-clip {_q(out / 'clip')} --seed {seed} --overwrite")
    for split in ("train", "val"):
        cmds.append(f"r2 extract {_q(out / 'videos')} --annotations {_q(ann / (split + '.jsonl'))} "
                    f"--model {_q(model_arg)} --out {_q(out / 'cache')}")
    # a run directory and outputs of their own: fit refuses to overwrite the demo's run
    run, preds = out / "run-by-hand", out / "predictions-by-hand.jsonl"
    cmds.append(f"r2 fit --dataset custom --cache {_q(out / 'cache')} --train {_q(ann / 'train.jsonl')} "
                f"--val {_q(ann / 'val.jsonl')} --run-dir {_q(run)} "
                f"--config {_q(out / 'fit_settings.json')} --seed {seed} --device cpu --threads {threads}")
    cmds.append(f"r2 predict --checkpoint {_q(run)} --cache {_q(out / 'cache')} "
                f"--annotations {_q(ann / 'val.jsonl')} --out {_q(preds)} --device cpu --threads {threads}")
    cmds.append(f"r2 score {_q(preds)} --gt {_q(ann / 'val.jsonl')} "
                f"--out {_q(out / 'metrics-by-hand.json')}")
    return cmds


def run_demo(out_dir: str | os.PathLike = "r2-demo", model: str | os.PathLike | None = None, *,
             seed: int = 0, quick: bool = False, config: DemoConfig | None = None,
             device: str = "cpu", threads: int | None = None, progress: bool | None = True,
             log: Callable[[str], None] | None = None) -> DemoResult:
    """Run the demo into ``out_dir`` (see the module docstring) and return a :class:`DemoResult`.

    Args:
        out_dir: the output folder: new, empty, or a previous demo's (overwritten).
        model: a CLIP model (local folder, or a hub id already on disk) instead of the tiny
            random CLIP built into ``out_dir/clip``.
        seed: drives the data, the tiny CLIP, training and the chance baseline.
        quick: the small configuration (``DEMO_CONFIGS["quick"]``); ``config`` overrides it.
        device: torch device of extraction, training and prediction.
        threads: torch threads (default: the CPUs this process may use).
        progress: tqdm bars on stderr (None: only when stderr is a terminal).
        log: one-line messages (default: stderr).
    Raises:
        DemoError (bad ``out_dir``), ModelNotFoundError (``model`` not found), and the user
        errors of the stages.
    """
    import torch

    from r2.evaluate import EvaluationWarning, score, write_jsonl, write_metrics_json
    from r2.extract.clip import resolve_model
    from r2.extract.pipeline import QueryJob, VideoJob, extract_features
    from r2.extract.tiny import make_tiny_clip
    from r2.train import FitOptions, fit, load_annotations, predict

    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    fit_log = _without_bucket_notes(log)
    config = config or demo_config(quick)
    settings = config.fit_settings()
    if model is not None:
        resolve_model(model)  # a clear error now, before any work
    out = prepare_out_dir(out_dir, seed=seed, config=config, model=None if model is None else str(model))
    old_threads = torch.get_num_threads()
    demo_threads = max(1, threads or usable_cpus())  # printed with the by-hand fit and predict
    torch.set_num_threads(demo_threads)
    stages: list[StageTime] = []

    def stage(name: str, t0: float, detail: str = "") -> None:
        stages.append(StageTime(name, time.perf_counter() - t0, detail))

    try:
        t0 = time.perf_counter()
        log(f"[1/6] data: writing {config.train_videos + config.val_videos + config.long_train_videos + config.long_val_videos} "
            f"synthetic videos into {out / 'videos'}")
        data = make_demo_data(out, config, seed=seed, progress=progress)
        stage("data", t0, f"{data.train_videos + data.val_videos} videos, {data.seconds / 60:.0f} min of video")

        t0 = time.perf_counter()
        if model is None:
            clip_dir = make_tiny_clip(out / "clip", seed=seed, overwrite=True)
            model_arg, made_tiny = str(clip_dir), True
            log(f"[2/6] clip: a tiny random CLIP in {clip_dir}")
        else:
            model_arg, made_tiny = str(model), False
            log(f"[2/6] clip: {model}")
        stage("clip", t0)

        t0 = time.perf_counter()
        samples = (load_annotations(data.train_file, dataset="custom")
                   + load_annotations(data.val_file, dataset="custom"))
        videos = {}
        for s in samples:
            videos.setdefault(s.vid, VideoJob(s.vid, str(data.videos_dir / f"{s.vid}.mp4")))
        queries = [QueryJob(s.query_id, s.query) for s in samples]
        log(f"[3/6] extract: {len(videos)} videos and {len(queries)} queries into {out / 'cache'}")
        summary = extract_features(list(videos.values()), queries, out / "cache", model_arg,
                                   fps=1 / CLIP_SECONDS, workers=1, device=device, progress=progress,
                                   log=log)
        if not summary.ok:
            raise DemoError(f"extraction failed for {len(summary.failures)} video(s): "
                            f"{summary.failures[0].path}: {summary.failures[0].reason}")
        stage("extract", t0, f"{summary.clips} clips, {summary.clips / max(summary.seconds, 1e-9):.0f} clips/s")

        t0 = time.perf_counter()
        settings_file = out / "fit_settings.json"
        settings_file.write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
        log(f"[4/6] fit: {settings['epochs']} epochs of the custom preset with {settings_file.name} "
            f"into {out / 'run'}")
        options = FitOptions(dataset="custom", cache=out / "cache", run_dir=out / "run",
                             train=data.train_file, val=data.val_file, config_file=settings_file,
                             seed=seed, device=device, preload=True, progress=progress)
        fitted = fit(options, log=fit_log)
        stage("fit", t0, f"{fitted.epochs} epochs, {fitted.num_train} train queries")

        t0 = time.perf_counter()
        log(f"[5/6] predict: {data.val_queries} val queries → {out / 'predictions.jsonl'}")
        predicted = predict(out / "run", out / "cache", data.val_file, out=out / "predictions.jsonl",
                            dataset="custom", device=device, progress=progress, log=log)
        stage("predict", t0)

        t0 = time.perf_counter()
        gt_rows = [s.to_row() for s in load_annotations(data.val_file, dataset="custom")]
        chance_rows = chance_baseline(gt_rows, seed=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", EvaluationWarning)  # the empty "long" bucket
            metrics = score("custom", predicted.rows, gt_rows, empty_bucket="null")
            chance = score("custom", chance_rows, gt_rows, empty_bucket="null")
        write_metrics_json(metrics, out / "metrics.json")
        write_jsonl(chance_rows, out / "chance_predictions.jsonl")
        write_metrics_json(chance, out / "chance_metrics.json")
        log("[6/6] score: done")
        stage("score", t0)
    finally:
        torch.set_num_threads(old_threads)

    result = DemoResult(out_dir=out, config=config, seed=seed, model=model_arg, data=data,
                        metrics=json.loads(json.dumps(metrics)), chance_metrics=json.loads(json.dumps(chance)),
                        stages=stages, commands=_commands(out, model_arg, made_tiny, seed, demo_threads),
                        best_epoch=fitted.best_epoch, trainable_parameters=fitted.trainable_parameters)
    (out / "summary.txt").write_text(result.format() + "\n", encoding="utf-8")
    return result
