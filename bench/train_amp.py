"""A training step from the cache in bf16 autocast vs fp32 on the CPU (``r2 fit --set cpu_amp=bf16``).

The step of ``bench/train_step.py`` (the official model size, ViT-B/32 feature shapes, batch
read from an fp16 cache through the loader, fused AdamW), its forward pass under
``torch.autocast("cpu", torch.bfloat16)`` or not. Each precision runs in fresh processes of its
own, alternated over ``--rounds``; printed: the median step time and peak RSS of each, and the
ratio. bf16 pays where the CPU has AMX or AVX-512 BF16 (``/proc/cpuinfo``: amx_bf16,
avx512_bf16); elsewhere torch emulates it. Under autocast the model's lean fp32 paths (the
first stage recomputed in the backward pass, ``r2/model/lean_input.py``) are off, so the
memory grows.

    python bench/train_amp.py                 # B=4, T=32: about a minute on 2 CPU cores
    python bench/train_amp.py --batch 8 --clips 75
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import make_cache  # noqa: E402


def cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((line.split(":", 1)[1].split() for line in fh if line.startswith("flags")), [])
    except OSError:
        return []
    return [f for f in ("amx_bf16", "avx512_bf16") if f in flags]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=4, help="videos (queries) per batch")
    ap.add_argument("--clips", type=int, default=32, help="clips per video (QVHighlights: 75)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per precision and round")
    ap.add_argument("--rounds", type=int, default=2, help="processes per precision, alternated")
    args = ap.parse_args()
    if args.clips < 5 or min(args.batch, args.steps, args.rounds) < 1:
        ap.error("--clips must be at least 5, --batch, --steps and --rounds at least 1")
    script = Path(__file__).resolve().parent / "train_step.py"
    runs = {"none": [], "bf16": []}
    with tempfile.TemporaryDirectory(prefix="r2-bench-amp-") as tmp:
        cache, ann = make_cache(Path(tmp), args.batch, args.clips)
        for _ in range(args.rounds):
            for amp in runs:
                cmd = [sys.executable, str(script), "--variant", "cache", "--amp", amp, "--cache", str(cache),
                       "--annotations", str(ann), "--batch", str(args.batch), "--clips", str(args.clips),
                       "--steps", str(args.steps), "--device", "cpu"]
                done = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
                if done.returncode != 0:
                    sys.exit(f"{amp} run failed:\n{done.stderr[-3000:]}")
                runs[amp].append(json.loads(done.stdout.strip().splitlines()[-1]))
    flags = cpu_flags()
    print(f"one training step from the cache, batch {args.batch} x {args.clips} clips, R² model C=256 K=4, "
          f"ViT-B/32 shapes, CPU, {runs['none'][0]['threads']} threads; CPU bf16 support: "
          f"{', '.join(flags) if flags else 'none (emulated)'}")
    median = {amp: statistics.median([t for run in rs for t in run["steps"]]) for amp, rs in runs.items()}
    rss = {amp: max(run["peak_rss_mb"] for run in rs) for amp, rs in runs.items()}
    for amp, label in (("none", "fp32"), ("bf16", "bf16 autocast")):
        print(f"{label:<16}{median[amp]:>8.3f} s a step (median of {args.rounds} x {args.steps}){rss[amp]:>9.0f} MB peak RSS")
    per_round = [statistics.median(a["steps"]) / statistics.median(b["steps"])
                 for a, b in zip(runs["none"], runs["bf16"])]
    print(f"bf16 autocast: {median['none'] / median['bf16']:.2f}x the speed of fp32 (per round "
          f"{', '.join(f'{x:.2f}x' for x in per_round)}), "
          f"{rss['bf16'] / rss['none']:.2f}x the peak RSS")


if __name__ == "__main__":
    main()
