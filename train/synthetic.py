"""A synthetic grounding data set written straight into a feature cache (no video, no CLIP).

Used by the tests of ``r2 fit`` / ``r2 predict`` and by ``bench/train_step.py``. Every video
has ``T`` clips of noise in which two segments carry a "concept" (a random direction added to
every token of those clips, in every layer); every video gets two queries, one per segment,
whose tokens carry the matching concept in the query space (another random direction). So
the moment of a query is findable only through the query: a query-blind predictor scores
about half, chance far less. Rows are QVHighlights-layout (custom data set: fps 0.5, 2-s
clips, windows + 3 annotators' saliency scores on the moment's clips).

    data = make_synthetic_dataset("tmp/", train_videos=40, val_videos=12)
    data.cache_dir, data.train_file, data.val_file
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["SyntheticDataset", "TINY_OVERRIDES", "chance_predictions", "make_synthetic_dataset"]

#: preset overrides of a tiny, fast model for the synthetic data (3 cached layers)
TINY_OVERRIDES = {"layers": "-3,-2,-1", "hidden_dim": 32, "num_heads": 4, "ffn_ratio": 2, "batch_size": 8,
                  "warmup_iters": 10, "lr": 3e-3, "dropout": 0.1, "droppath": 0.1}


@dataclass
class SyntheticDataset:
    cache_dir: Path
    train_file: Path
    val_file: Path
    manifest: dict
    num_train: int
    num_val: int


def _write_rows(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def make_synthetic_dataset(root: str | os.PathLike, *, train_videos: int = 40, val_videos: int = 12,
                           layers: tuple[int, ...] = (1, 2, 3), tokens: int = 5, video_dim: int = 32,
                           query_dim: int = 24, concepts: int = 6, min_clips: int = 10,
                           max_clips: int = 24, fps: float = 0.5, signal: float = 2.0,
                           seed: int = 0, long_videos: int = 0, long_clips: int = 60,
                           model_id: str = "synthetic-clip", dtype: str = "float16") -> SyntheticDataset:
    """Write ``root/cache`` (a real :class:`r2.cache.FeatureCache`), ``root/train.jsonl`` and
    ``root/val.jsonl``. ``long_videos`` extra val videos get ``long_clips`` clips (to exercise
    sliding-window inference)."""
    from r2.cache import FeatureCache

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    k = len(layers)
    concept_v = rng.normal(size=(concepts, video_dim))
    concept_v /= np.linalg.norm(concept_v, axis=1, keepdims=True)
    concept_q = rng.normal(size=(concepts, query_dim))
    concept_q /= np.linalg.norm(concept_q, axis=1, keepdims=True)
    sot = rng.normal(size=query_dim) * 0.5
    eot = rng.normal(size=query_dim) * 0.5
    manifest = {"model_id": model_id, "model_config_hash": "synthetic-0001", "layers": list(layers),
                "fps": fps, "preprocessing": {"kind": "synthetic"}, "dtype": dtype,
                "video_width": video_dim, "query_width": query_dim}
    cache = FeatureCache.create(root / "cache", manifest)
    splits = {"train": [], "val": []}
    qid = 0
    total = train_videos + val_videos + long_videos
    with cache.writer() as writer:
        for v in range(total):
            split = "train" if v < train_videos else "val"
            t = long_clips if v >= train_videos + val_videos else int(rng.integers(min_clips, max_clips + 1))
            feats = rng.normal(size=(t, k, tokens, video_dim)) * 0.7
            a, b = rng.choice(concepts, size=2, replace=False)
            la, lb = int(rng.integers(2, max(3, t // 4) + 1)), int(rng.integers(2, max(3, t // 4) + 1))
            # two non-overlapping segments, in random order
            order = [(a, la), (b, lb)]
            if rng.random() < 0.5:
                order.reverse()
            gap = t - la - lb
            p0 = int(rng.integers(0, gap + 1))
            p1 = p0 + order[0][1] + int(rng.integers(0, gap - p0 + 1))
            segs = [(order[0][0], p0, p0 + order[0][1]), (order[1][0], p1, p1 + order[1][1])]
            for c, s, e in segs:
                feats[s:e] += signal * concept_v[c]
            vid = f"v{v:03d}"
            writer.add_video(vid, feats.astype(np.float32), duration=t / fps)
            for c, s, e in segs:
                n_tok = int(rng.integers(2, 5))
                body = concept_q[c] * signal + rng.normal(size=(k, n_tok, query_dim)) * 0.5
                q = np.concatenate([np.broadcast_to(sot, (k, 1, query_dim)), body,
                                    np.broadcast_to(eot, (k, 1, query_dim))], axis=1)
                writer.add_query(str(qid), q.astype(np.float32), np.ones(q.shape[1], bool),
                                 text=f"concept {c}")
                ids = list(range(s, e))
                scores = [[int(x) for x in rng.integers(2, 5, size=3)] for _ in ids]
                splits[split].append({
                    "qid": qid, "query": f"concept {c}", "duration": t / fps, "vid": vid,
                    "relevant_clip_ids": ids, "saliency_scores": scores,
                    "relevant_windows": [[s / fps, e / fps]]})
                qid += 1
    _write_rows(root / "train.jsonl", splits["train"])
    _write_rows(root / "val.jsonl", splits["val"])
    return SyntheticDataset(root / "cache", root / "train.jsonl", root / "val.jsonl", manifest,
                            len(splits["train"]), len(splits["val"]))


def chance_predictions(gt_rows: list[dict], seed: int = 0, windows: int = 10, fps: float = 0.5) -> list[dict]:
    """Random predictions for the same queries: ``windows`` windows on the clip grid with
    random scores, random saliency — the chance level of every metric."""
    rng = np.random.default_rng(seed)
    out = []
    for row in gt_rows:
        duration = float(row["duration"])
        t = max(1, int(round(duration * fps)))
        preds = []
        for _ in range(windows):
            s = int(rng.integers(0, t))
            e = int(rng.integers(s + 1, t + 1))
            preds.append([s / fps, e / fps, float(rng.random())])
        preds.sort(key=lambda r: -r[2])
        out.append({"qid": row["qid"], "query": row.get("query", ""), "vid": row["vid"],
                    "pred_relevant_windows": preds,
                    "pred_saliency_scores": [float(x) for x in rng.random(t)]})
    return out
