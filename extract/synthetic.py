"""Small real videos with known content, written with PyAV (numpy + av only, no torch).

Used by the tests of ``r2.extract``, by ``bench/`` and by ``r2 demo``: every video here is a
real encoded file (h264/mpeg4/vp9/... through PyAV) whose content changes at known times, so
decoding, frame sampling and features can be checked against the truth.

- :func:`write_segment_video` — one colour or pattern per segment: ``[("red", 2.0), ("blue", 4.5)]``.
- :func:`write_index_video` — frame ``k`` shows the binary code of ``k``; :func:`read_frame_index`
  reads it back from a decoded (and resized / centre-cropped) frame, so a test can tell exactly
  which source frame a sampler picked.
- :func:`write_video` — the generic writer under both (any iterable of ``(H, W, 3)`` uint8 frames).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Sequence, Union

import av
import numpy as np

__all__ = [
    "COLOURS",
    "SyntheticVideo",
    "colour_rgb",
    "pattern_frame",
    "read_frame_index",
    "write_index_video",
    "write_segment_video",
    "write_video",
    "write_audio_only",
]

#: Named colours (RGB). Saturated and far apart, so that even a tiny random CLIP separates them.
COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "red": (230, 25, 25),
    "green": (25, 200, 40),
    "blue": (30, 40, 230),
    "yellow": (240, 220, 30),
    "cyan": (30, 220, 230),
    "magenta": (220, 30, 220),
    "orange": (250, 140, 20),
    "purple": (120, 40, 170),
    "grey": (128, 128, 128),
    "gray": (128, 128, 128),
    "brown": (120, 70, 30),
    "pink": (250, 150, 190),
}

#: Patterns understood by :func:`pattern_frame` besides colours.
PATTERNS = ("noise", "checker", "stripes", "gradient", "moving")

Content = Union[str, Sequence[int]]


@dataclass(frozen=True)
class SyntheticVideo:
    """What was written: path, frames, rate and, for segment videos, the segment bounds."""

    path: Path
    num_frames: int
    fps: Fraction
    size: tuple[int, int]  # (width, height)
    segments: tuple[tuple[str, float, float], ...] = ()  # (content, start s, end s)

    @property
    def duration(self) -> float:
        return float(self.num_frames / self.fps)


def colour_rgb(colour: Content) -> tuple[int, int, int]:
    """``"red"`` / ``"#ff0000"`` / ``(255, 0, 0)`` → an RGB tuple."""
    if isinstance(colour, str):
        name = colour.strip().lower()
        if name in COLOURS:
            return COLOURS[name]
        if name.startswith("#") and len(name) == 7:
            return tuple(int(name[i:i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]
        raise ValueError(f"unknown colour {colour!r}: use one of {sorted(COLOURS)}, '#rrggbb' or (r, g, b)")
    rgb = tuple(int(c) for c in colour)
    if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
        raise ValueError(f"colour must be three values in 0..255, got {colour!r}")
    return rgb  # type: ignore[return-value]


def pattern_frame(content: Content, width: int, height: int, index: int = 0, seed: int = 0) -> np.ndarray:
    """One ``(height, width, 3)`` uint8 frame of a colour or a pattern.

    Patterns: ``noise`` (seeded random pixels, a new draw per frame: expensive to encode and
    decode), ``checker`` (32-px black/white squares), ``stripes`` (vertical colour bars),
    ``gradient`` (a smooth ramp), ``moving`` (a textured scene that pans by 4 px a frame: a
    realistic load for a codec). ``"checker:red"`` etc. tint the pattern with a colour.
    """
    if isinstance(content, str) and content.split(":")[0] in PATTERNS:
        kind, _, tint = content.partition(":")
        tint_rgb = np.array(colour_rgb(tint) if tint else (255, 255, 255), np.float32) / 255.0
        yy, xx = np.mgrid[0:height, 0:width]
        if kind == "noise":
            rng = np.random.default_rng((seed, index))
            base = rng.integers(0, 256, (height, width, 3), dtype=np.uint8).astype(np.float32)
        elif kind == "checker":
            base = np.repeat((((yy // 32) + (xx // 32)) % 2 * 255).astype(np.float32)[..., None], 3, axis=2)
        elif kind == "stripes":
            bars = np.array([COLOURS[c] for c in ("red", "green", "blue", "yellow", "cyan", "magenta")], np.float32)
            base = bars[(xx * len(bars)) // max(width, 1)]
        elif kind == "gradient":
            ramp = (xx / max(width - 1, 1) * 255).astype(np.float32)
            base = np.stack([ramp, (yy / max(height - 1, 1) * 255).astype(np.float32), 255 - ramp], axis=2)
        else:  # moving
            x = xx + 4 * index
            r = 127 + 120 * np.sin(x / 23.0) * np.cos(yy / 31.0)
            g = 127 + 120 * np.sin((x + yy) / 41.0)
            b = 127 + 120 * np.cos(x / 17.0 + yy / 57.0)
            rng = np.random.default_rng((seed, index))
            base = np.stack([r, g, b], axis=2) + rng.normal(0, 6, (height, width, 3))
        return np.clip(base * tint_rgb, 0, 255).astype(np.uint8)
    frame = np.empty((height, width, 3), np.uint8)
    frame[:] = colour_rgb(content)
    return frame


# --- frame-index code --------------------------------------------------------------------
# 12 bits in a 4 x 3 grid of cells plus a white reference border, drawn in the middle third
# of the frame so that it survives a short-side resize and a centre crop of any aspect ratio.
_INDEX_BITS = 12
_GRID = (3, 4)  # rows, cols


def _index_box(width: int, height: int) -> tuple[int, int, int, int]:
    side = min(width, height)
    box_w, box_h = side * 2 // 3, side // 2
    x0, y0 = (width - box_w) // 2, (height - box_h) // 2
    return x0, y0, box_w, box_h


def index_frame(index: int, width: int, height: int) -> np.ndarray:
    """A frame whose middle shows ``index`` (0 ≤ index < 4096) as black/white cells."""
    if not 0 <= index < 2 ** _INDEX_BITS:
        raise ValueError(f"frame index {index} does not fit in {_INDEX_BITS} bits")
    frame = np.full((height, width, 3), 64, np.uint8)
    x0, y0, bw, bh = _index_box(width, height)
    rows, cols = _GRID
    for bit in range(_INDEX_BITS):
        r, c = divmod(bit, cols)
        value = 255 if (index >> bit) & 1 else 0
        frame[y0 + r * bh // rows:y0 + (r + 1) * bh // rows, x0 + c * bw // cols:x0 + (c + 1) * bw // cols] = value
    return frame


def read_frame_index(frame: np.ndarray) -> int:
    """Read back the code drawn by :func:`index_frame`, from a frame of any size.

    The frame may have been resized keeping the aspect ratio and centre-cropped to a square
    (the CLIP recipe): the code sits in the middle of the short side, so it survives both when
    the crop is taken from the source of a known aspect ratio; pass the uncropped frame
    otherwise. Each cell is read at its centre (averaged over its middle half), threshold 128.
    """
    height, width = frame.shape[:2]
    x0, y0, bw, bh = _index_box(width, height)
    rows, cols = _GRID
    value = 0
    for bit in range(_INDEX_BITS):
        r, c = divmod(bit, cols)
        ya, yb = y0 + r * bh // rows, y0 + (r + 1) * bh // rows
        xa, xb = x0 + c * bw // cols, x0 + (c + 1) * bw // cols
        qy, qx = (yb - ya) // 4, (xb - xa) // 4
        cell = frame[ya + qy:yb - qy, xa + qx:xb - qx]
        if float(cell.mean()) > 128:
            value |= 1 << bit
    return value


# --- writers -----------------------------------------------------------------------------
def _rate(fps: float | Fraction | int) -> Fraction:
    rate = Fraction(fps).limit_denominator(1001) if not isinstance(fps, Fraction) else fps
    if rate <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    return rate


def write_video(
    path: str | os.PathLike,
    frames: Iterable[np.ndarray],
    *,
    fps: float | Fraction = 30,
    codec: str = "libx264",
    keyframe_interval: int | None = None,
    bframes: int | None = None,
    crf: int | None = None,
    pix_fmt: str = "yuv420p",
    options: dict[str, str] | None = None,
    container_options: dict[str, str] | None = None,
) -> int:
    """Encode ``(H, W, 3)`` uint8 RGB frames into ``path`` (container from the extension).

    ``keyframe_interval`` (frames) fixes the GOP (no scene-cut keyframes); ``bframes`` sets the
    number of B-frames (x264 default: 3, i.e. a reordering decoder, as in most real files).
    ``container_options`` go to the muxer (e.g. ``{"movflags": "faststart"}``: index first).
    Returns the number of frames written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = _rate(fps)
    count = 0
    with av.open(str(path), mode="w", options=dict(container_options or {})) as container:
        stream = None
        for frame in frames:
            if stream is None:
                height, width = frame.shape[:2]
                stream = container.add_stream(codec, rate=rate)
                stream.width, stream.height = width, height
                stream.pix_fmt = pix_fmt
                opts = dict(options or {})
                if codec == "libx264":
                    params = []
                    if keyframe_interval:
                        params += [f"keyint={keyframe_interval}", f"min-keyint={keyframe_interval}", "scenecut=0"]
                    if bframes is not None:
                        params.append(f"bframes={bframes}")
                    if params:
                        opts["x264-params"] = ":".join(params)
                    opts.setdefault("preset", "veryfast")
                    if crf is not None:
                        opts["crf"] = str(crf)
                else:
                    if keyframe_interval:
                        stream.codec_context.gop_size = keyframe_interval
                    if bframes is not None:
                        stream.codec_context.max_b_frames = bframes
                    if codec.startswith("libvpx"):
                        opts.setdefault("deadline", "realtime")
                        opts.setdefault("cpu-used", "8")
                    if crf is not None:
                        opts["crf"] = str(crf)
                stream.options = opts
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            for packet in stream.encode(video_frame):
                container.mux(packet)
            count += 1
        if stream is None:
            raise ValueError("write_video: no frames")
        for packet in stream.encode(None):
            container.mux(packet)
    return count


def write_segment_video(
    path: str | os.PathLike,
    segments: Sequence[tuple[Content, float]],
    *,
    fps: float | Fraction = 10,
    size: tuple[int, int] = (96, 64),
    codec: str = "libx264",
    keyframe_interval: int | None = None,
    bframes: int | None = None,
    seed: int = 0,
    **kwargs,
) -> SyntheticVideo:
    """Write a video of consecutive segments, each a colour or a pattern for some seconds.

    ``segments=[("red", 2.0), ("blue", 3.5)]``; frame ``k`` (shown at ``k / fps`` s) belongs
    to the segment that contains that time. ``size`` is ``(width, height)`` (even numbers for
    yuv420p). Returns a :class:`SyntheticVideo` with the segment bounds in seconds.
    """
    rate = _rate(fps)
    width, height = size
    bounds, start = [], Fraction(0)
    for content, seconds in segments:
        if seconds <= 0:
            raise ValueError(f"segment length must be positive, got {seconds}")
        end = start + Fraction(seconds).limit_denominator(10**6)
        bounds.append((content, start, end))
        start = end
    total = int(start * rate)  # frames whose time k / fps < total duration
    if total < 1:
        raise ValueError("segments shorter than one frame")

    def frames():
        seg = 0
        for k in range(total):
            t = Fraction(k) / rate
            while t >= bounds[seg][2]:
                seg += 1
            yield pattern_frame(bounds[seg][0], width, height, index=k, seed=seed)

    write_video(path, frames(), fps=rate, codec=codec, keyframe_interval=keyframe_interval, bframes=bframes, **kwargs)
    segs = tuple((str(c) if isinstance(c, str) else "#%02x%02x%02x" % colour_rgb(c), float(a), float(b))
                 for c, a, b in bounds)
    return SyntheticVideo(Path(path), total, rate, (width, height), segs)


def write_index_video(
    path: str | os.PathLike,
    num_frames: int,
    *,
    fps: float | Fraction = 30,
    size: tuple[int, int] = (128, 96),
    codec: str = "libx264",
    keyframe_interval: int | None = None,
    bframes: int | None = None,
    **kwargs,
) -> SyntheticVideo:
    """Write ``num_frames`` frames where frame ``k`` shows the code of ``k`` (see :func:`read_frame_index`)."""
    width, height = size
    kwargs.setdefault("crf", 10)
    write_video(path, (index_frame(k, width, height) for k in range(num_frames)), fps=fps, codec=codec,
                keyframe_interval=keyframe_interval, bframes=bframes, **kwargs)
    return SyntheticVideo(Path(path), num_frames, _rate(fps), (width, height))


def write_audio_only(path: str | os.PathLike, seconds: float = 1.0, rate: int = 16000, codec: str = "aac") -> Path:
    """A file with an audio stream and no video stream (a bad input for extraction)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.layout = "mono"
        n = int(seconds * rate)
        t = np.arange(n) / rate
        samples = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path
