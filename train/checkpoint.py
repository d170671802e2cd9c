"""The run directory of ``r2 fit``: best weights, the last checkpoint, logs; atomic writes.

::

    RUN_DIR/
      config.json, model.safetensors   the BEST weights (R2Model.save_pretrained): what
                                       ``R2Model.from_pretrained(RUN_DIR)`` and
                                       ``r2 predict --checkpoint RUN_DIR`` read
      preset.json                      the resolved preset (every number of the run)
      best.json                        epoch, main metric and all metrics of the best epoch
      metrics.jsonl                    one JSON object per finished epoch ("epoch" from 1)
      checkpoints/last/                the end of the last finished epoch:
        config.json, model.safetensors   weights
        trainer.pt                       optimizer, LR schedule, GradScaler, RNG states
                                         (torch, CUDA, numpy, python; one set per rank)
        state.json                       epoch, iteration, best so far, preset, options

Atomicity: files go through a temporary name then ``os.replace``; ``checkpoints/last`` is
written as ``checkpoints/.last.partial-*`` and swapped in with two renames
(``last`` → ``last.old``, partial → ``last``), so a kill at any moment leaves either the
previous or the new checkpoint complete (``find_last`` also accepts ``last.old``).
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from r2.fileio import atomic_write, fsync_dir

__all__ = [
    "BEST_NAME",
    "CHECKPOINTS_DIR",
    "LastCheckpoint",
    "METRICS_NAME",
    "PRESET_NAME",
    "RunDirError",
    "append_metrics",
    "atomic_write_text",
    "find_last",
    "get_rng_state",
    "has_run",
    "load_last",
    "read_metrics",
    "remove_first_epoch",
    "save_last",
    "set_rng_state",
    "stopped_in_first_epoch",
    "truncate_metrics",
    "write_json",
]

PRESET_NAME = "preset.json"
METRICS_NAME = "metrics.jsonl"
BEST_NAME = "best.json"
CHECKPOINTS_DIR = "checkpoints"
LAST = "last"
STATE_NAME = "state.json"
TRAINER_NAME = "trainer.pt"
FORMAT = 1


class RunDirError(ValueError):
    """A run directory that cannot be used as asked (one-line message)."""

    user_error = True


# ----------------------------------------------------------------------------------------------
# atomic files


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file (fsync, then os.replace)."""
    atomic_write(path, text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


# ----------------------------------------------------------------------------------------------
# RNG states


def get_rng_state() -> dict:
    """torch (CPU and every CUDA device), numpy (legacy global) and python ``random`` states,
    in a form ``torch.load(weights_only=True)`` reads back."""
    kind, key, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy": {"kind": kind, "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
    n = state["numpy"]
    np.random.set_state((n["kind"], n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["gauss"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


# ----------------------------------------------------------------------------------------------
# the last checkpoint


def _ckpt_root(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIR


def find_last(run_dir: str | os.PathLike) -> Path | None:
    """The directory of the last complete checkpoint of a run, or None."""
    root = _ckpt_root(Path(run_dir))
    for name in (LAST, LAST + ".old"):
        candidate = root / name
        if (candidate / STATE_NAME).is_file() and (candidate / TRAINER_NAME).is_file():
            return candidate
    return None


def has_run(run_dir: str | os.PathLike) -> bool:
    """True when ``run_dir`` holds a checkpoint or trained weights."""
    run_dir = Path(run_dir)
    return (find_last(run_dir) is not None or (run_dir / "model.safetensors").exists()
            or (_ckpt_root(run_dir) / LAST).is_dir())


def stopped_in_first_epoch(run_dir: str | os.PathLike) -> bool:
    """True when ``run_dir`` holds epoch 1's best weights but no checkpoint: a run killed at the
    end of its first epoch, after the best weights were written and before ``checkpoints/last``
    (a run with more epochs in ``metrics.jsonl`` had its checkpoints removed: not this)."""
    run_dir = Path(run_dir)
    return (find_last(run_dir) is None and (run_dir / "model.safetensors").exists()
            and all(int(r.get("epoch", 0)) <= 1 for r in read_metrics(run_dir)))


def remove_first_epoch(run_dir: str | os.PathLike) -> None:
    """Remove what a run stopped in its first epoch wrote of it (:func:`stopped_in_first_epoch`):
    the best weights, their config, ``best.json`` and ``metrics.jsonl``; the epoch is trained
    again."""
    run_dir = Path(run_dir)
    for name in ("model.safetensors", "config.json", BEST_NAME, METRICS_NAME):
        (run_dir / name).unlink(missing_ok=True)


def clean_partials(run_dir: str | os.PathLike) -> None:
    """Remove checkpoint directories a killed run left half-written."""
    root = _ckpt_root(Path(run_dir))
    if root.is_dir():
        for p in root.glob(".last.partial-*"):
            shutil.rmtree(p, ignore_errors=True)


def save_last(run_dir: str | os.PathLike, model, trainer: dict, state: dict) -> Path:
    """Write ``checkpoints/last`` atomically: weights (``model.save_pretrained``), the trainer
    state (``torch.save``) and ``state.json``."""
    root = _ckpt_root(Path(run_dir))
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".last.partial-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        model.save_pretrained(tmp)
        with open(tmp / TRAINER_NAME, "wb") as fh:
            torch.save(trainer, fh)
            fh.flush()
            os.fsync(fh.fileno())
        write_json(tmp / STATE_NAME, {"format": FORMAT, **state})
        fsync_dir(tmp)
        last, old = root / LAST, root / (LAST + ".old")
        if old.exists():
            shutil.rmtree(old)
        if last.exists():
            os.replace(last, old)
        os.replace(tmp, last)
        fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(root / (LAST + ".old"), ignore_errors=True)
    return root / LAST


class LastCheckpoint(NamedTuple):
    """The last checkpoint of a run (``path, state, trainer = load_last(run)`` unpacks it)."""

    path: Path  # its directory
    state: dict  # state.json: epoch, iteration, best, preset, options, ...
    trainer: dict  # trainer.pt: optimiser, scaler, schedule, RNG and loader states


def load_last(run_dir: str | os.PathLike) -> LastCheckpoint | None:
    """The last checkpoint of ``run_dir``, or None when it has none."""
    path = find_last(run_dir)
    if path is None:
        for name in (LAST, LAST + ".old"):  # save_last swaps in only complete ones: one was damaged since
            candidate = _ckpt_root(Path(run_dir)) / name
            if candidate.is_dir():
                missing = [n for n in (STATE_NAME, TRAINER_NAME) if not (candidate / n).is_file()]
                raise RunDirError(f"the checkpoint {candidate} is incomplete ({' and '.join(missing)} missing): it "
                                  "cannot be resumed; remove the run folder, or choose another --run-dir, to train "
                                  "again")
        return None
    try:
        state = json.loads((path / STATE_NAME).read_text(encoding="utf-8"))
        with open(path / TRAINER_NAME, "rb") as fh:
            trainer = torch.load(fh, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged checkpoint: say which file
        raise RunDirError(f"cannot read the checkpoint {path}: {type(exc).__name__}: {exc}") from None
    return LastCheckpoint(path, state, trainer)


# ----------------------------------------------------------------------------------------------
# metrics.jsonl


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """The epoch records of ``metrics.jsonl`` (a torn last line, from a kill, is ignored)."""
    path = Path(run_dir) / METRICS_NAME
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return out


def append_metrics(run_dir: str | os.PathLike, record: dict) -> None:
    """Append one epoch record (one line, flushed and fsynced)."""
    path = Path(run_dir) / METRICS_NAME
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, allow_nan=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def truncate_metrics(run_dir: str | os.PathLike, epochs_done: int) -> list[dict]:
    """Keep the records of the first ``epochs_done`` epochs (a resumed run redoes the rest)."""
    records = [r for r in read_metrics(run_dir) if int(r.get("epoch", 0)) <= epochs_done]
    path = Path(run_dir) / METRICS_NAME
    if path.exists() or records:
        atomic_write_text(path, "".join(json.dumps(r, allow_nan=False) + "\n" for r in records))
    return records
