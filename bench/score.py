"""Speed of ``r2 score`` on the full QVHighlights val set, as a whole process.

Builds a realistic prediction file for all 1550 val queries (seeded): 10 windows per query,
near the annotated moments with noise, clamped to the video, on 2-s units, sorted by score
(R²-Tuning's writer), scores with 4 decimals; 75 saliency scores per query (74 for a few
queries, whose features came out one clip short, as in published files), correlated with the
annotation. Then times ``python -m r2 score PREDS --gt VAL --out metrics.json`` in a
subprocess (interpreter start-up, imports, parsing, metrics, writing: everything a user
waits for), several times, and prints queries per second and the ratio to the reference
evaluator (moment_detr's ``standalone_eval/eval.py``: about 9 s on this input according to
the issue; it is not installed here, so that number is quoted, not measured side by side).
Also prints where the time goes inside one process (import, parse, score, write).

    python bench/score.py                 # 5 runs
    python bench/score.py --runs 10 --gt path/to/highlight_val_release.jsonl
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_GT = ROOT / "tests" / "fixtures" / "qvhighlights" / "highlight_val_release.jsonl"
REFERENCE_SECONDS = 9.0  # moment_detr's evaluator on the full val set (issue 6)


def make_predictions(gt_rows: list, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    preds = []
    for row in gt_rows:
        duration = float(row["duration"])
        n_clips = int(duration / 2)
        windows = []
        for _ in range(10):
            if rng.random() < 0.6:  # near a GT window
                s, e = row["relevant_windows"][rng.integers(len(row["relevant_windows"]))]
                s, e = s + rng.normal(0, 4), e + rng.normal(0, 4)
            else:
                s = rng.uniform(0, duration - 2)
                e = s + rng.uniform(2, 60)
            s, e = sorted((min(max(s, 0), duration), min(max(e, 0), duration)))
            s, e = 2 * round(s / 2), 2 * round(e / 2)
            if e <= s:
                e = min(s + 2, duration)
            windows.append([float(s), float(e), round(float(rng.random()), 4)])
        windows.sort(key=lambda w: -w[2])
        truth = np.zeros(n_clips)
        truth[row["relevant_clip_ids"]] = np.asarray(row["saliency_scores"]).sum(1) / 12
        saliency = np.round(truth + rng.normal(0, 0.3, n_clips) - 0.5, 4)
        if rng.random() < 0.01:
            saliency = saliency[:-1]
        preds.append({"qid": row["qid"], "query": row.get("query", ""), "vid": row.get("vid", ""),
                      "pred_relevant_windows": windows,
                      "pred_saliency_scores": saliency.tolist()})
    return preds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gt", type=Path, default=DEFAULT_GT, help="QVHighlights val jsonl")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.gt = args.gt.resolve()  # the timed subprocess runs in a temporary folder
    if not args.gt.is_file():
        sys.exit(f"{args.gt}: no such file; pass --gt path/to/highlight_val_release.jsonl")

    sys.path.insert(0, str(ROOT))
    from r2.evaluate import read_jsonl

    gt_rows = read_jsonl(args.gt)
    with tempfile.TemporaryDirectory(prefix="r2-bench-score-") as tmp:
        tmp = Path(tmp)
        preds_path = tmp / "val_preds.jsonl"
        preds_path.write_text("\n".join(json.dumps(p) for p in make_predictions(gt_rows, args.seed)))
        out = tmp / "metrics.json"
        command = [sys.executable, "-m", "r2", "score", str(preds_path), "--gt", str(args.gt),
                   "--out", str(out)]
        size_mb = preds_path.stat().st_size / 1e6
        print(f"input: {len(gt_rows)} val queries, predictions {size_mb:.1f} MB "
              f"(10 windows, 75 saliency scores per query)")
        print(f"command: python -m r2 score PREDS --gt {args.gt.name} --out metrics.json")
        times = []
        for i in range(args.runs):
            t = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True, cwd=tmp)
            times.append(time.perf_counter() - t)
            if done.returncode != 0:
                sys.exit(f"r2 score failed:\n{done.stdout}\n{done.stderr}")
            print(f"  run {i + 1}: {times[-1]:.3f} s")
        metrics = json.loads(out.read_text())["brief"]

        # where the time goes inside one process (already-imported modules excluded)
        t0 = time.perf_counter()
        from r2.evaluate import score, write_metrics_json
        importlib.import_module("r2.evaluate.qvhighlights")  # numpy and the metric modules
        t1 = time.perf_counter()
        preds = read_jsonl(preds_path)
        gt = read_jsonl(args.gt)
        t2 = time.perf_counter()
        result = score("qvhighlights", preds, gt)
        t3 = time.perf_counter()
        write_metrics_json(result, tmp / "again.json")
        t4 = time.perf_counter()
        assert (tmp / "again.json").read_text() == out.read_text()

    median = statistics.median(times)
    print(f"\nwhole process, median of {args.runs}: {median:.3f} s "
          f"(min {min(times):.3f} s) = {len(gt_rows) / median:,.0f} queries/s")
    print(f"reference evaluator (quoted, not run here): ~{REFERENCE_SECONDS:.0f} s = "
          f"{len(gt_rows) / REFERENCE_SECONDS:,.0f} queries/s  ->  speed-up {REFERENCE_SECONDS / median:.1f}x"
          f" (goal >= 10x, i.e. < {REFERENCE_SECONDS / 10:.1f} s)")
    print(f"inside one process: imports {t1 - t0:.3f} s (after this script's own), parse both "
          f"files {t2 - t1:.3f} s, metrics {t3 - t2:.3f} s, write {t4 - t3:.4f} s")
    print("brief: " + ", ".join(f"{k} {v}" for k, v in metrics.items()))


if __name__ == "__main__":
    main()
