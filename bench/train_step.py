"""One training step of the R² model fed from the feature cache vs fed by CLIP in the loop.

The same batch (B videos of T clips, one query each), the same R² model (the official size:
C = 256, K = 4 layers, ViT-B/32 features: N = 50 tokens of width 768, queries of width 512),
the same AdamW step. Two variants:

* ``cache``: the batch is read from an r2 feature cache (fp16 HDF5 shards, written once
  here) through ``GroundingDataset`` + ``Collator`` — what ``r2 fit`` does every step;
* ``clip``: the batch starts as decoded frames ``(B·T, 3, 224, 224)`` uint8 already in memory
  (video decoding is NOT counted, which favours this variant) and query token ids; a frozen
  ViT-B/32-sized ``CLIPModel`` (random weights built from ``CLIPConfig()``, no download) runs
  on them in inference mode (fp32) to produce the same hidden states, then the same step.
  CLIP's products are torch's own, as in any training loop that runs CLIP (MKL on the CPU);
* ``clip-onednn``: the same, CLIP's linear layers through oneDNN as ``r2 extract`` runs them
  on the CPU (``r2.extract.clip.onednn_linears``; on an AMD CPU with AVX-512 MKL runs at the
  AVX2 rate and oneDNN uses AVX-512: there this CLIP is about twice as fast). The R² model's
  own products are the same in all three (the first stage's blocks through oneDNN,
  ``r2.model.matmul``).

On the CPU both variants run with glibc malloc keeping freed memory for the next step, as
``r2 fit`` sets it there (``r2.train.allocator``: without it each step faults its fresh
activations' pages in again, which costs CLIP in the loop more than the cache step;
``--malloc-defaults`` runs both with glibc's own settings). Each variant runs in fresh
processes of its own (its memory is its own, and no CLIP weights sit beside the cache
variant), alternated over ``--rounds`` (cache, CLIP, cache, CLIP: the load of a shared machine
drifts between processes); the speed-up is the ratio of the medians of all timed steps.
Memory: peak RSS (``ru_maxrss``) and the peak of live heap allocations (glibc
``mallinfo2``, sampled), of each variant's first process.

Printed: median step time, FLOPs, peak RSS and live heap of each, and the ratios (issue
goals: cache >= 20x faster, <= 1/5 of the memory; the speed judged against ``clip``, the
ratio to ``clip-onednn`` printed beside it). CPU by default (``--device cuda`` where there is
a GPU; there ``clip-onednn`` is ``clip``, and is not run; nor is it where torch has no oneDNN,
as on ARM, or ``R2_ONEDNN=0`` is set).

    python bench/train_step.py                     # B=4, T=32: a few minutes on 2 CPU cores
    python bench/train_step.py --batch 8 --clips 75 --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LAYERS = [9, 10, 11, 12]  # hidden states of a 12-layer tower: the last four
TOKENS, VIDEO_DIM, QUERY_DIM, QUERY_TOKENS = 50, 768, 512, 12


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class HeapPeak:
    """The peak of live heap bytes (glibc ``mallinfo2``: chunks in use + mmapped chunks), sampled
    by a thread every 0.5 ms while active: what a step holds, without the pages the allocator
    keeps after frees (the CPU analogue of ``torch.cuda.max_memory_allocated``; RSS counts
    both). ``peak_mb`` is None where the C library has no ``mallinfo2`` (not glibc >= 2.33)."""

    def __init__(self):
        import ctypes

        class MallInfo2(ctypes.Structure):
            _fields_ = [(name, ctypes.c_size_t) for name in
                        "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

        try:
            self._mallinfo2 = ctypes.CDLL(None).mallinfo2
            self._mallinfo2.restype = MallInfo2
        except (AttributeError, OSError):
            self._mallinfo2 = None
        self.peak_mb = None

    def in_use_mb(self) -> float | None:
        if self._mallinfo2 is None:
            return None
        info = self._mallinfo2()
        return (info.uordblks + info.hblkhd) / 2**20

    def __enter__(self):
        import threading

        if self._mallinfo2 is None:
            return self
        self.peak_mb = self.in_use_mb()
        self._stop = threading.Event()

        def sample():
            while not self._stop.wait(0.0005):
                self.peak_mb = max(self.peak_mb, self.in_use_mb())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self._mallinfo2 is not None:
            self._stop.set()
            self._thread.join()
            self.peak_mb = max(self.peak_mb, self.in_use_mb())


def make_cache(root: Path, batch: int, clips: int, seed: int = 0) -> tuple[Path, Path]:
    """A cache with ``batch`` videos and queries of ViT-B/32 shapes, and their annotations."""
    import numpy as np

    from r2.cache import FeatureCache

    rng = np.random.default_rng(seed)
    manifest = {"model_id": "bench-random-vit-b32", "model_config_hash": "bench", "layers": LAYERS,
                "fps": 0.5, "preprocessing": {}, "video_width": VIDEO_DIM, "query_width": QUERY_DIM}
    cache = FeatureCache.create(root / "cache", manifest)
    rows = []
    with cache.writer() as w:
        for i in range(batch):
            w.add_video(f"v{i}", rng.standard_normal((clips, len(LAYERS), TOKENS, VIDEO_DIM), dtype=np.float32))
            w.add_query(str(i), rng.standard_normal((len(LAYERS), QUERY_TOKENS, QUERY_DIM), dtype=np.float32),
                        np.ones(QUERY_TOKENS, bool))
            s = int(rng.integers(0, clips - 4))
            rows.append({"qid": i, "query": "q", "duration": clips * 2, "vid": f"v{i}",
                         "relevant_windows": [[2 * s, 2 * s + 8]]})
    ann = root / "train.jsonl"
    ann.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / "cache", ann


def make_step(args, variant: str):
    """Build one variant (model, optimiser, data; CLIP for "clip") and return its training step."""
    import torch

    torch.manual_seed(0)
    device = torch.device(args.device)
    if device.type == "cpu" and not args.malloc_defaults:  # as r2 fit does on the CPU, for both variants
        from r2.train.allocator import reuse_freed_memory

        reuse_freed_memory()
    from r2.cache import FeatureCache
    from r2.model import R2Config, R2Model
    from r2.train.annotations import load_annotations
    from r2.train.data import Collator, GroundingDataset
    from r2.train.presets import get_preset

    preset = get_preset("custom")
    config = R2Config(**{**preset.model_config_kwargs(), "video_dim": VIDEO_DIM, "query_dim": QUERY_DIM,
                         "num_layers": len(LAYERS)})
    model = R2Model(config).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=preset.lr, weight_decay=preset.weight_decay,  # as r2 fit does
                            fused=device.type in ("cpu", "cuda"))
    cache = FeatureCache.open(args.cache)
    samples = load_annotations(args.annotations, dataset="custom")
    data = GroundingDataset(samples, cache, LAYERS, preset, train=True, seed=0)
    collate = Collator()

    clip = None
    if variant.startswith("clip"):
        from transformers import CLIPConfig, CLIPModel
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        cfg = CLIPConfig()  # ViT-B/32 sizes: vision 768 x 12 layers, patch 32, 224 px; text 512 x 12
        cfg.vision_config.hidden_act = cfg.text_config.hidden_act = "quick_gelu"
        clip = CLIPModel(cfg).eval().requires_grad_(False).to(device)
        if variant == "clip-onednn":
            from r2.extract.clip import onednn_linears

            if not onednn_linears(clip.vision_model):
                raise SystemExit("clip-onednn: this torch build has no oneDNN, or R2_ONEDNN=0 is set")
        g = torch.Generator().manual_seed(1)
        frames = torch.randint(0, 256, (len(samples) * args.clips, 3, 224, 224), dtype=torch.uint8, generator=g)
        token_ids = torch.randint(1, 49000, (len(samples), QUERY_TOKENS), generator=g)
        mean = torch.tensor([0.48145466, 0.4578275, 0.40821073], device=device)[:, None, None]
        std = torch.tensor([0.26862954, 0.26130258, 0.27577711], device=device)[:, None, None]

    def features_from_clip(batch):
        """Replace the cached features of ``batch`` by CLIP's, computed now from the frames."""
        with torch.inference_mode():
            x = (frames.to(device).float() / 255 - mean) / std  # (B·T, 3, 224, 224)
            hs = clip.vision_model(pixel_values=x, output_hidden_states=True).hidden_states
            v = torch.stack([hs[i] for i in LAYERS], dim=1)  # (B·T, K, N, D)
            v = v.view(len(samples), args.clips, len(LAYERS), TOKENS, VIDEO_DIM)
            ths = clip.text_model(input_ids=token_ids.to(device), output_hidden_states=True).hidden_states
            q = torch.stack([ths[i] for i in LAYERS], dim=1)  # (B, K, S, Dt)
        return v.clone(), q.clone()

    from r2.train.distributed import autocast

    def step():
        batch = collate([data[i] for i in range(len(samples))]).to(device)  # items freed, as in a DataLoader
        video, query = batch.video, batch.query
        if clip is not None:
            video, query = features_from_clip(batch)
        with autocast(device, args.amp):  # as r2 fit does (preset amp / cpu_amp)
            out = model(video, batch.video_mask, query, batch.query_mask)
        loss = model.compute_loss(out, batch.targets)
        opt.zero_grad(set_to_none=True)
        loss.total.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return float(loss.total.detach())

    return step


def count_onednn_flops():
    """Teach torch's FlopCounterMode oneDNN's linear (``r2.model.matmul``, ``onednn_linears``):
    2 M K N, as for ``addmm``."""
    import math

    from torch.utils.flop_counter import register_flop_formula

    from r2 import onednn

    op = onednn.linear_op()
    if op is None:
        return

    @register_flop_formula(op)
    def linear_flop(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
        return 2 * math.prod(x_shape[:-1]) * x_shape[-1] * w_shape[0]


def run_variant(args) -> dict:
    """One variant in a fresh process (its memory is its own): FLOPs of a step, the timed steps,
    then peak RSS and, over two more steps, the peak of live heap allocations."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    count_onednn_flops()

    base = rss_mb()
    torch_heap = HeapPeak().in_use_mb()  # None without mallinfo2
    step = make_step(args, args.variant)
    with FlopCounterMode(display=False) as flop_counter:  # one step, forward + backward
        step()
    times = []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        step()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    peak_rss = peak_mb()
    with HeapPeak() as heap:  # not timed: the sampling thread takes some CPU
        step()
        step()
    result = {"variant": args.variant, "steps": times, "peak_rss_mb": max(peak_rss, peak_mb()),
              "torch_rss_mb": base, "peak_heap_mb": heap.peak_mb, "torch_heap_mb": torch_heap,
              "gflop": flop_counter.get_total_flops() / 1e9, "threads": torch.get_num_threads()}
    if torch.device(args.device).type == "cuda":
        result["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=4, help="videos (queries) per batch")
    ap.add_argument("--clips", type=int, default=32, help="clips per video (QVHighlights: 75)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per variant and round")
    ap.add_argument("--rounds", type=int, default=2, help="processes per variant, alternated with the other's")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--malloc-defaults", action="store_true",
                    help="glibc malloc's default settings in both variants instead of r2 fit's (r2.train.allocator)")
    ap.add_argument("--variant", choices=["cache", "clip", "clip-onednn"], help=argparse.SUPPRESS)
    ap.add_argument("--amp", default="none", choices=["none", "bf16"], help=argparse.SUPPRESS)
    ap.add_argument("--cache", help=argparse.SUPPRESS)
    ap.add_argument("--annotations", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.clips < 5 or min(args.batch, args.steps, args.rounds) < 1:
        ap.error("--clips must be at least 5 (each query has a 4-clip window), --batch, --steps and --rounds "
                 "at least 1")
    if args.variant:
        print(json.dumps(run_variant(args)))
        return
    from r2.model.matmul import onednn_in_use

    with tempfile.TemporaryDirectory(prefix="r2-bench-step-") as tmp:
        cache, ann = make_cache(Path(tmp), args.batch, args.clips)
        runs = {"cache": [], "clip": []}
        if args.device == "cpu" and onednn_in_use():
            runs["clip-onednn"] = []
        for _ in range(args.rounds):  # alternated: the machine's load drifts between processes
            for variant in runs:
                cmd = [sys.executable, __file__, "--variant", variant, "--cache", str(cache), "--annotations",
                       str(ann), "--batch", str(args.batch), "--clips", str(args.clips), "--steps",
                       str(args.steps), "--warmup", str(args.warmup), "--device", args.device]
                cmd += ["--malloc-defaults"] if args.malloc_defaults else []
                done = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
                if done.returncode != 0:
                    sys.exit(f"{variant} variant failed:\n{done.stderr[-3000:]}")
                runs[variant].append(json.loads(done.stdout.strip().splitlines()[-1]))
    c, k = runs["cache"][0], runs["clip"][0]  # memory and FLOPs: the first process of each
    o = runs["clip-onednn"][0] if "clip-onednn" in runs else None
    for name, rs in runs.items():
        rs[0]["step_s"] = statistics.median([t for run in rs for t in run["steps"]])
    rounds = [statistics.median(b["steps"]) / statistics.median(a["steps"]) for a, b in zip(runs["cache"], runs["clip"])]
    frames = args.batch * args.clips
    print(f"one training step, batch {args.batch} x {args.clips} clips ({frames} frames), R² model "
          f"C=256 K=4, ViT-B/32 shapes, device {args.device}, {c['threads']} threads")
    print(f"{'variant':<28}{'step (median)':>15}{'GFLOP':>9}{'GFLOP/s':>9}{'peak RSS':>12}{'RSS - torch':>14}"
          f"{'live heap':>12}")
    rows = [("from the cache", c), ("CLIP on frames in the loop", k)] + ([("CLIP via oneDNN", o)] if o else [])
    for name, r in rows:
        heap = f"{r['peak_heap_mb']:>9.0f} MB" if r["peak_heap_mb"] is not None else f"{'n/a':>12}"
        print(f"{name:<28}{r['step_s']:>13.3f} s{r['gflop']:>9.1f}{r['gflop'] / r['step_s']:>9.1f}"
              f"{r['peak_rss_mb']:>9.0f} MB{r['peak_rss_mb'] - r['torch_rss_mb']:>11.0f} MB{heap}")
    speed = k["step_s"] / c["step_s"]
    # Matrix-multiply FLOPs (torch's FlopCounterMode: matmuls, convolutions, attention) of one
    # step: their ratio is the speed-up a device would give at equal FLOP/s in both variants.
    flop_ratio = k["gflop"] / c["gflop"]
    print(f"speed-up from the cache: {speed:.1f}x (ratio of the medians of {args.rounds} x {args.steps} steps; "
          f"per round {', '.join(f'{x:.1f}x' for x in rounds)}; goal >= 20x: {'met' if speed >= 20 else 'NOT met'}); "
          f"FLOP ratio {flop_ratio:.1f}x (the speed-up at equal FLOP/s)")
    if args.device == "cpu" and not o:
        print("CLIP via oneDNN: not run (this torch build has no oneDNN, or R2_ONEDNN=0 is set)")
    if o:
        per_round = [statistics.median(b["steps"]) / statistics.median(a["steps"])
                     for a, b in zip(runs["cache"], runs["clip-onednn"])]
        print(f"speed-up over CLIP via oneDNN (as r2 extract runs it on the CPU): {o['step_s'] / c['step_s']:.1f}x "
              f"(per round {', '.join(f'{x:.1f}x' for x in per_round)}); CLIP itself: "
              f"{k['step_s'] / o['step_s']:.2f}x faster via oneDNN")
    mem = c["peak_rss_mb"] / k["peak_rss_mb"]
    mem_net = (c["peak_rss_mb"] - c["torch_rss_mb"]) / (k["peak_rss_mb"] - k["torch_rss_mb"])
    print(f"memory of the cache variant: {mem:.2f} of CLIP's peak RSS ({1 / mem:.1f}x less; "
          f"goal <= 0.20: {'met' if mem <= 0.2 else 'NOT met'}); above the torch import: {mem_net:.2f}")
    if c["peak_heap_mb"] is not None:
        heap = c["peak_heap_mb"] / k["peak_heap_mb"]
        heap_net = (c["peak_heap_mb"] - c["torch_heap_mb"]) / (k["peak_heap_mb"] - k["torch_heap_mb"])
        print(f"peak of live heap allocations (glibc mallinfo2; RSS adds the free pages the allocator "
              f"keeps): {heap:.3f} of CLIP's (goal <= 0.20: {'met' if heap <= 0.2 else 'NOT met'}); "
              f"above the {c['torch_heap_mb']:.0f} MB of the torch import: {heap_net:.3f}")
    if "peak_cuda_mb" in c:
        print(f"peak CUDA memory: cache {c['peak_cuda_mb']:.0f} MB, CLIP {k['peak_cuda_mb']:.0f} MB "
              f"({c['peak_cuda_mb'] / k['peak_cuda_mb']:.2f})")


if __name__ == "__main__":
    main()
