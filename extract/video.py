"""Video decoding with PyAV: the benchmark's frame per clip, decoding only what is needed.

numpy + av only (no torch): this module runs in the decode worker processes.

Which frame is clip ``j`` (the rule of the official extraction)
------------------------------------------------------------------
R²-Tuning extracts frames with ffmpeg's ``fps`` filter at the data set's rate (then scale,
crop; r2tuning.md §1.3–1.4). With its defaults (``round=near``, ``eof_action=round``, no
``start_time``) that filter works on each decoded frame's timestamp ``t`` (seconds, after the
CLI has shifted the file's ``start_time`` to 0) as follows:

- every input frame gets the output slot ``s = round(t · fps)`` (exact rational arithmetic,
  halves away from zero);
- output ``n`` (time ``n / fps``) is a copy of the **last frame whose slot is ≤ n**, i.e. the
  last frame with ``t < (n + ½) / fps``: the frame just before the middle of clip
  ``[n / fps, (n + 1) / fps)``. At 0.5 fps and 30 fps that is source frame ``60·n + 29``;
- outputs run from the first frame's slot (0 for a file starting at 0) up to, excluding,
  ``round(t_end · fps)``, where ``t_end`` = last frame time + its duration (what ffmpeg ≥ 6
  sends as the end-of-stream time). **A duration D gives round(D · fps) clips**, halves up:
  150 s at 0.5 fps → 75; 30.96 s at 1 fps → 31; 31.5 s → 32; under ½ clip → 0 (an error here).
  When a frame is missing (variable frame rate, gaps), the previous one is repeated, as ffmpeg does.

YouTube Highlights ("auto"): the rate is ``len(match) / (frames / fps)`` per video and the
clip count must equal ``len(match)``; pass ``num_clips`` to force it (a count that differs by
the rounding, :data:`NUM_CLIPS_TOLERANCE`, is cut or padded with the last frame and reported in
``notes``; a larger difference is a :class:`DecodeError`: the file is not the annotated video).
Explicit ``sample_times`` (seconds) pick, for each time, the last frame shown at or before it.

How it is decoded
-----------------
``mode="skip"`` (default): every packet is demuxed (cheap: no decoding), its timestamp gives
the selection above before any decoding (a packet can be placed in presentation order once a
packet with a later decoding timestamp has been read), and only the groups of pictures that
hold a chosen frame are decoded: from their keyframe up to the last chosen frame, with the
decoder told to skip non-reference frames that are not chosen (``skip_frame=NONREF``), then
drained. Open-GOP leading pictures start from the previous keyframe. ``mode="all"`` decodes
every frame like the ffmpeg pipeline does: the benchmark baseline, and the fallback whenever
skipping cannot be trusted (packets without timestamps, duplicate timestamps, a chosen frame
that does not come out of its GOP, e.g. damaged data). Both give the same frames (tests/extract
checks both against libavfilter's own ``fps`` filter, with B-frames, open GOPs, h264, vp9,
mpeg4, mp4/mkv/webm/avi/ts). Where the format allows timestamps to jump (MPEG-TS and MPEG-PS,
e.g. ``cat a.ts b.ts``, or a broadcast whose clock restarts), a jump is joined as the ffmpeg CLI
joins it (:class:`_Demuxer`), and the video's notes say so.

Only the chosen frames are converted, and the conversion scales: they go through libavfilter's
``scale=w:h:flags=bicubic,crop=224:224:x:y,format=rgb24`` (short side → 224, long side
truncated to an integer, crop at ``int((long − 224) / 2)``): the official script's filters,
where libswscale does YUV→RGB and the resize in one pass. A display matrix (a phone's
portrait video: coded landscape + "rotate 90") turns the frame upright first, with the
filters the ffmpeg CLI inserts (``transpose``/``hflip``/``vflip``/``rotate``, :class:`Orientation`),
and the scale size comes from the upright frame; the video attrs record ``rotation``.

A file is refused as truncated (never stored shorter) when it has fewer packets than the frame
count its header declares (mp4, avi), or when its frames end more than max(1 s, 2 %) before the
duration its header declares (:func:`declared_duration`: Matroska/WebM, which count no frames).
The frames equal the official ones bit for bit (tests/extract compares them with libavfilter's
fps→scale→crop chain).
Frames leave this module as ``(T, 224, 224, 3)`` uint8 (:func:`sample_video`), or one at a
time (:class:`VideoClips`) and in chunks (:func:`decode_chunks`, what the extraction workers
stream): memory per clip is 150 kB whatever the source resolution, one GOP of packets is
buffered, and a streamed hour of video holds no more than a minute does.
"""

from __future__ import annotations

import heapq
import math
import os
from bisect import bisect_left
from collections import deque
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Iterator, Sequence

import av
import numpy as np
from av.sidedata.sidedata import Type as _SideDataType

__all__ = [
    "DecodeError",
    "SampledVideo",
    "NUM_CLIPS_TOLERANCE",
    "Orientation",
    "VIDEO_EXTENSIONS",
    "VideoClips",
    "clip_count",
    "ffmpeg_rate",
    "official_scale_size",
    "frame_orientation",
    "declared_duration",
    "pick_video_stream",
    "sample_video",
    "decode_job",
    "decode_chunks",
    "DecodeResult",
    "iter_video_files",
    "is_video_file",
    "not_a_video",
]

#: File extensions that ``r2 extract`` collects from a folder (case-insensitive): the common
#: containers, camcorder (AVCHD ``.mts``/``.m2ts``, DV, MXF), DVD ``.vob``, Ogg video, ... With
#: ``--annotations`` or a file named on the command line, any file PyAV opens as a video counts.
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ts", ".3gp",
                    ".mts", ".m2ts", ".m2t", ".mxf", ".ogv", ".vob", ".f4v", ".asf", ".3g2", ".divx", ".dv", ".qt",
                    ".rm", ".rmvb", ".mjpeg", ".y4m")

_INT_MAX = 2**31 - 1

#: With ``num_clips`` (YouTube Highlights: one clip per annotated segment), the decoded count
#: may differ from it by this much: the rounding of round(duration x rate) when the file's
#: duration is a frame or two off the annotation's frames / fps. The official code asserts
#: equality (its features come from the same files as its annotation); anything further apart
#: is a video that does not match its annotation, and a failure.
NUM_CLIPS_TOLERANCE = 1


class DecodeError(Exception):
    """A video that cannot be used: ``path`` and a one-line ``reason``."""

    user_error = True

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass
class SampledVideo:
    """The frames of one video, one per clip, and what was learnt about the file."""

    frames: np.ndarray | None  # (T, H, W, 3) uint8 RGB, H = W = the crop size; None from VideoClips.info
    clip_times: np.ndarray  # (T,) float64: output time of clip j (n / fps, or the sample time)
    frame_times: np.ndarray  # (T,) float64: time of the source frame used for clip j
    duration: float  # seconds: end of the last frame (t_end above)
    fps: float | None  # sampling rate; None for explicit sample times
    source_fps: float  # the file's average frame rate
    frame_count: int  # frames (packets) in the video stream
    width: int  # source size
    height: int
    decoded_frames: int = 0  # frames the decoder actually produced (speed statistics)
    notes: list[str] = field(default_factory=list)  # e.g. clip count cut/padded to num_clips (shown in the summary)
    orientation: Orientation = field(default_factory=lambda: Orientation())  # autorotation applied (display matrix)
    stream_index: int = 0  # the container's stream that was decoded (pick_video_stream)

    @property
    def num_clips(self) -> int:
        return int(self.clip_times.shape[0])


# --- the rule ------------------------------------------------------------------------------
def _round_near_inf(x: Fraction) -> int:
    """Round halves away from zero (libavutil's AV_ROUND_NEAR_INF)."""
    n = math.floor(abs(x) + Fraction(1, 2))
    return n if x >= 0 else -n


def ffmpeg_rate(fps: float | Fraction | str) -> Fraction:
    """The rational rate ffmpeg's ``fps`` filter uses for a number (``av_d2q(x, INT_MAX)``)."""
    if isinstance(fps, Fraction):
        return fps
    value = float(Fraction(fps)) if isinstance(fps, str) else float(fps)
    if not value > 0 or not math.isfinite(value):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    return Fraction(value).limit_denominator(_INT_MAX)


def clip_count(duration: float, fps: float | Fraction) -> int:
    """Clips the ``fps`` filter gives for a file starting at 0 and ending at ``duration`` s."""
    return _round_near_inf(Fraction(duration) * ffmpeg_rate(fps))


def official_scale_size(width: int, height: int, size: int) -> tuple[int, int]:
    """Size after ``tools/extract_frames.py``'s scale: short side = size, long side truncated."""
    if width > height:
        return int(width * size / height), size
    return size, int(height * size / width)


#: Formats whose header states the video stream's duration (rather than libavformat estimating
#: it from the timestamps it read, or from the bit rate): a shorter decode means missing data.
_DECLARING_FORMATS = {"mov", "mp4", "matroska", "webm", "avi", "asf"}
#: A decode that ends more than max(1 s, 2 %) before the declared duration is a truncated file
#: (the container's own rounding, a last frame's duration, are far below that).
TRUNCATION_SECONDS, TRUNCATION_FRACTION = 1.0, 0.02


def declared_duration(container, stream) -> float | None:
    """Seconds the file's header declares for the video stream, or None where it declares none.

    mp4/mov/avi/asf: the stream's duration; Matroska/WebM: the stream's ``DURATION`` tag (what
    FFmpeg and mkvmerge write), else the segment duration when the video is the only stream (it
    covers all streams). A truncated Matroska file keeps its header, so this is how it is noticed:
    it has no frame count to compare with (mp4's ``stream.frames``)."""
    if not _DECLARING_FORMATS & set(container.format.name.split(",")):
        return None
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    # Matroska's DURATION tag and segment duration are where the stream ends on the file's
    # timeline: a file whose timestamps start later (every segment after the first of
    # ``ffmpeg -f segment -c copy``, a -copyts cut) declares its start + length. The decoded
    # end is measured from the start (as the clips are), so the start comes off here; a muxer
    # that wrote the length only makes this shorter, never a false "truncated".
    start = max(0.0, (container.start_time or 0) / 1_000_000)
    tag = (stream.metadata or {}).get("DURATION") or (stream.metadata or {}).get("duration")
    if tag:
        try:
            h, m, sec = tag.strip().split(":")
            return max(0.0, int(h) * 3600 + int(m) * 60 + float(sec) - start)
        except ValueError:
            return None
    if container.duration and len(container.streams) == 1:
        return max(0.0, container.duration / 1_000_000 - start)
    return None


def _scalable(width: int, height: int) -> bool:
    """Whether libavutil takes a picture of this size (``av_image_check_size``: a line of 8
    bytes a pixel, 128 px of margin each way, under INT_MAX bytes); ffmpeg's scale filter
    fails on a larger one with an opaque EINVAL."""
    return width > 0 and height > 0 and (width + 128) * 8 * (height + 128) < _INT_MAX


class _Rule:
    """Maps a frame timestamp (stream ticks, already shifted) to its output slot."""

    def __init__(self, time_base: Fraction, fps: Fraction | None, times: Sequence[float] | None):
        self.time_base = time_base
        self.fps = fps
        if times is not None:
            self.times = [Fraction(t) for t in times]
            if any(b < a for a, b in zip(self.times, self.times[1:])):
                raise ValueError("sample_times must be ascending")
        else:
            self.times = None

    def slot(self, pts: int) -> int:
        t = pts * self.time_base
        if self.times is None:
            return _round_near_inf(t * self.fps)
        return bisect_left(self.times, t)  # frame qualifies for j iff t <= times[j] iff slot <= j

    def first(self, slot: int) -> int:
        return slot if self.times is None else 0

    def end(self, end_pts: int) -> int:
        if self.times is None:
            return _round_near_inf(end_pts * self.time_base * self.fps)
        return len(self.times)

    def clip_time(self, n: int) -> float:
        return float(n / self.fps) if self.times is None else float(self.times[n])


class _Selector:
    """ffmpeg's ``fps`` filter on a stream of (pts, item) in presentation order."""

    def __init__(self, rule: _Rule):
        self.rule = rule
        self.next_n: int | None = None
        self.prev = None
        self.first_n = 0

    def push(self, pts: int, item) -> list[tuple[int, object]]:
        slot = self.rule.slot(pts)
        out = []
        if self.prev is None:
            self.next_n = self.first_n = self.rule.first(slot)
            while self.next_n < slot:  # explicit times before the first frame: use the first frame
                out.append((self.next_n, item))
                self.next_n += 1
        else:
            limit = slot if self.rule.times is None else min(slot, len(self.rule.times))
            while self.next_n < limit:
                out.append((self.next_n, self.prev))
                self.next_n += 1
        self.prev = item
        return out

    def finish(self, end_n: int) -> list[tuple[int, object]]:
        out = []
        if self.prev is None:
            return out
        while self.next_n < end_n:
            out.append((self.next_n, self.prev))
            self.next_n += 1
        return out


# --- decoding ------------------------------------------------------------------------------
class _NeedsFullDecode(Exception):
    """The stream lacks what skipping needs (timestamps): decode every frame instead."""


@dataclass
class _Packet:
    packet: object
    pts: int
    dts: int
    key: bool
    seq: int
    targets: list = field(default_factory=list)  # clip indices that use this frame
    final: bool = False  # the selector has moved past it: targets are complete
    released: bool = False  # its clips are out and its frame is dropped


def _open(path: str):
    if not os.path.exists(path):
        if os.path.islink(path):  # a link whose target was moved or deleted
            raise DecodeError(path, f"a symbolic link to {os.readlink(path)}, which does not exist")
        raise DecodeError(path, "file not found")
    if os.path.isdir(path):
        raise DecodeError(path, "is a folder, not a video file")
    if os.path.getsize(path) == 0:
        raise DecodeError(path, "empty file (0 bytes)")
    try:
        container = av.open(path, metadata_errors="ignore")
    except av.error.FFmpegError as exc:
        raise DecodeError(path, f"not a readable video ({_ffmpeg_reason(exc)})") from None
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        container.close()
        raise DecodeError(path, f"no video stream (streams: {', '.join(kinds)})")
    return container


_ATTACHED_PIC = int(av.stream.Disposition.attached_pic)
_DEFAULT_DISPOSITION = int(av.stream.Disposition.default)


def pick_video_stream(container):
    """The video stream the ffmpeg CLI decodes when no ``-map`` is given (what the official
    extraction runs): fftools' ``map_auto_video`` scores each video stream ``width x height``,
    plus 5,000,000 when it is marked default, and 1 for an attached picture (cover art, which
    would otherwise win by its size); the highest score wins, the first of equal ones. (ffmpeg
    also adds 100,000,000 for a stream whose packets were seen while probing, which real video
    streams all have.) None when the file has no video stream."""
    best, best_score = None, -1
    for s in container.streams.video:
        if _is_attached_picture(s):
            score = 1
        else:
            score = max(0, s.codec_context.width) * max(0, s.codec_context.height)
            score += 5_000_000 * bool(int(s.disposition) & _DEFAULT_DISPOSITION)
        if score > best_score:
            best, best_score = s, score
    return best


def _is_attached_picture(stream) -> bool:
    return bool(int(stream.disposition) & _ATTACHED_PIC)


def _ffmpeg_reason(exc: Exception) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return text.split(":")[0].strip() if ": '" in text else text


@dataclass(frozen=True)
class Orientation:
    """How the ffmpeg CLI turns a frame upright from its display matrix (``-autorotate``, on by
    default, so the official ``tools/extract_frames.py`` frames of a phone's portrait video are
    upright): ``filters`` go before ``scale``, and the scale size comes from the turned frame.

    Same rules as fftools: ``theta = -round(av_display_rotation_get(m))`` in [0, 360); 90 →
    ``transpose=clock`` (``cclock_flip`` if mirrored), 180 → ``hflip``/``vflip`` by the matrix
    signs, 270 → ``transpose=cclock`` (``clock_flip``), another angle → ``rotate``, 0 → ``vflip``
    if the matrix flips vertically, else nothing.
    """

    rotation: float = 0.0  # degrees clockwise that ffmpeg turns the coded picture
    filters: tuple[tuple[str, str | None], ...] = ()  # libavfilter (name, arguments), in order

    def size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the filters (``rotate`` keeps the size, as ffmpeg's default)."""
        return (height, width) if any(name == "transpose" for name, _ in self.filters) else (width, height)

    def describe(self) -> str:
        return ",".join(name if args is None else f"{name}={args}" for name, args in self.filters)


_UPRIGHT = Orientation()
_DISPLAYMATRIX = _SideDataType.DISPLAYMATRIX


def frame_orientation(frame) -> Orientation:
    """The :class:`Orientation` of a decoded frame from its display-matrix side data (which
    FFmpeg copies to every frame from the container: mp4 ``tkhd``, Matroska projection, ...)."""
    sd = frame.side_data.get(_DISPLAYMATRIX)
    if sd is None:
        return _UPRIGHT
    m = np.frombuffer(bytes(sd), dtype="<i4", count=9).astype(np.float64) / 65536.0
    scale0, scale1 = math.hypot(m[0], m[3]), math.hypot(m[1], m[4])
    if scale0 == 0.0 or scale1 == 0.0:  # a degenerate matrix: av_display_rotation_get gives NaN
        return Orientation(0.0, (("vflip", None),)) if m[4] < 0 else _UPRIGHT
    rotation_get = -math.degrees(math.atan2(m[1] / scale1, m[0] / scale0))  # counter-clockwise
    theta = -float(_round_near_inf(Fraction(rotation_get)))
    theta -= 360 * math.floor(theta / 360 + 0.9 / 360)
    theta += 0.0  # no -0.0
    if abs(theta - 90) < 1.0:
        filters = (("transpose", "cclock_flip" if m[3] > 0 else "clock"),)
    elif abs(theta - 180) < 1.0:
        filters = tuple((name, None) for name, flip in (("hflip", m[0] < 0), ("vflip", m[4] < 0)) if flip)
    elif abs(theta - 270) < 1.0:
        filters = (("transpose", "clock_flip" if m[3] < 0 else "cclock"),)
    elif abs(theta) > 1.0:
        filters = (("rotate", f"{theta:f}*PI/180"),)
    else:
        filters = (("vflip", None),) if m[4] < 0 else ()
    return Orientation(theta, filters) if filters or theta else _UPRIGHT


def _graph(frame, filters: Sequence[tuple[str, str | None]], threads: int):
    """A libavfilter chain buffer → filters → buffersink for frames like ``frame``: (graph, src, sink)."""
    graph = av.filter.Graph()
    if threads:
        graph.threads = threads
    nodes = [graph.add_buffer(width=frame.width, height=frame.height, format=frame.format.name,
                              time_base=frame.time_base or Fraction(1, 90000))]
    nodes += [graph.add(name) if args is None else graph.add(name, args) for name, args in filters]
    nodes.append(graph.add("buffersink"))
    for a, b in zip(nodes, nodes[1:]):
        a.link_to(b)
    graph.configure()
    return graph, nodes[0], nodes[-1]


class _Converter:
    """Converts decoded frames to (H, W, 3) uint8 RGB with libavfilter's own ``scale`` and ``crop``.

    The graph ``[autorotate,]scale=w:h:flags=bicubic,crop=S:S:x:y,format=rgb24`` is the official
    script's filter chain minus ``fps`` (the selection is done before), with the ffmpeg CLI's
    autorotation (:class:`Orientation`) in front: libswscale converts YUV→RGB and resizes in
    one pass, so the frames equal ffmpeg's bit for bit (PyAV's ``reformat`` takes another
    libswscale path that differs by a few levels). Built on the first frame, rebuilt if the
    frame size, pixel format or display matrix changes mid-stream. ``orientation``: the last
    frame's.
    """

    def __init__(self, size: int | None, crop: bool, interpolation: str, threads: int = 1):
        self.size, self.crop, self.threads = size, crop, threads
        self.interpolation = interpolation.lower()
        self.key = None
        self.src = self.sink = None
        self.orientation = _UPRIGHT

    def _build(self, frame, orientation: Orientation):
        fw, fh = orientation.size(frame.width, frame.height)  # the upright frame's size
        w, h = official_scale_size(fw, fh, self.size) if self.size else (fw, fh)
        filters = list(orientation.filters)
        if (w, h) != (fw, fh):
            filters.append(("scale", f"w={w}:h={h}:flags={self.interpolation}"))
        if self.size and self.crop:
            filters.append(("crop", f"{self.size}:{self.size}:{int((w - self.size) / 2)}:{int((h - self.size) / 2)}"))
        filters.append(("format", "rgb24"))
        self.graph, self.src, self.sink = _graph(frame, filters, self.threads)
        self.key = (frame.width, frame.height, frame.format.name, orientation)

    def __call__(self, frame) -> np.ndarray:
        self.orientation = frame_orientation(frame)
        if self.key != (frame.width, frame.height, frame.format.name, self.orientation):
            self._build(frame, self.orientation)
        self.src.push(frame)
        return np.ascontiguousarray(self.sink.pull().to_ndarray(format="rgb24"))


class _Upright:
    """Wraps a caller's converter (``resize="hf"``): it gets each frame turned upright the way
    :class:`_Converter` turns it (the same libavfilter filters, before any resizing, in the
    decoded pixel format), so both resize modes see the picture ffmpeg shows."""

    def __init__(self, converter, threads: int = 1):
        self.converter, self.threads = converter, threads
        self.key = None
        self.orientation = _UPRIGHT

    def __call__(self, frame) -> np.ndarray:
        self.orientation = frame_orientation(frame)
        if self.orientation.filters:
            key = (frame.width, frame.height, frame.format.name, self.orientation)
            if self.key != key:
                self.graph, self.src, self.sink = _graph(frame, self.orientation.filters, self.threads)
                self.key = key
            self.src.push(frame)
            frame = self.sink.pull()
        return self.converter(frame)


def sample_video(
    path: str | os.PathLike,
    fps: float | Fraction | None = 0.5,
    *,
    sample_times: Sequence[float] | None = None,
    num_clips: int | None = None,
    size: int | None = 224,
    crop: bool = True,
    interpolation: str = "bicubic",
    mode: str = "skip",
    threads: int = 1,
    converter=None,
) -> SampledVideo:
    """Decode one frame per clip (see the module docstring for the rule).

    ``size``: short side after scaling (the model's image size), ``None`` keeps the source
    size; ``crop``: centre square crop of ``size``. ``threads``: decoder threads (0 = as many
    as FFmpeg wants; 1 suits parallel worker processes). ``converter``: a callable
    ``av.VideoFrame → (H, W, 3) uint8`` used instead of libavfilter's scale + crop (e.g.
    :class:`r2.extract.preprocess.HFResize`). Raises :class:`DecodeError` with the
    path and a reason for a file that cannot be used. All frames are returned at once;
    :class:`VideoClips` gives the same frames one at a time, in bounded memory.
    """
    clips = VideoClips(path, fps, sample_times=sample_times, num_clips=num_clips, size=size, crop=crop,
                       interpolation=interpolation, mode=mode, threads=threads, converter=converter)
    frames = []
    for j, frame in clips:
        if j == 0:
            frames.clear()  # decoding started over (see VideoClips)
        frames.append(frame)
    return replace(clips.info, frames=np.stack(frames))


class VideoClips:
    """The frames of one video, one per clip, in clip order, as they are decoded.

    ``for j, frame in VideoClips(path, fps)``: clip index ``j`` and its ``(H, W, 3)`` uint8
    frame (arguments as :func:`sample_video`). Memory stays at one group of pictures of packets
    and a few frames, whatever the length of the video. A consumer handles two cases:

    - ``j`` back to 0: the skipping decoder met data it cannot trust (see the module
      docstring) after some clips; decoding started over frame by frame: drop the frames so far;
    - :class:`DecodeError` after frames: some damage (a truncated file) shows only at the end.

    After the loop, :attr:`info` is the :class:`SampledVideo` (``frames`` None).
    """

    def __init__(self, path: str | os.PathLike, fps: float | Fraction | None = 0.5, *,
                 sample_times: Sequence[float] | None = None, num_clips: int | None = None, size: int | None = 224,
                 crop: bool = True, interpolation: str = "bicubic", mode: str = "skip", threads: int = 1,
                 converter=None):
        if mode not in ("skip", "all"):
            raise ValueError(f"mode must be 'skip' or 'all', got {mode!r}")
        if sample_times is None and fps is None:
            raise ValueError("give fps or sample_times")
        self.path = os.fspath(path)
        self.rate = ffmpeg_rate(fps) if sample_times is None else None
        self.sample_times, self.num_clips = sample_times, num_clips
        self.size, self.crop, self.interpolation = size, crop, interpolation
        self.mode, self.threads, self.converter = mode, threads, converter
        self.info: SampledVideo | None = None

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        self._streams_note = ""
        try:
            try:
                yield from self._run(self.mode)
            except _NeedsFullDecode:
                yield from self._run("all")
        except DecodeError as exc:  # with several video streams, say which one failed
            if not self._streams_note:
                raise
            raise DecodeError(exc.path, exc.reason + self._streams_note) from None

    def _run(self, mode: str) -> Iterator[tuple[int, np.ndarray]]:
        path, rate, num_clips = self.path, self.rate, self.num_clips
        container = _open(path)
        try:
            stream = pick_video_stream(container)  # the one ffmpeg picks, not simply the first
            stream_index, video_streams = stream.index, len(container.streams.video)
            if video_streams > 1:
                self._streams_note = (f" (in stream {stream_index}, ffmpeg's default choice of the {video_streams} "
                                      "video streams: the largest that is not an attached picture)")
            if _is_attached_picture(stream):
                raise DecodeError(path, "no video stream, only an attached picture (cover art: "
                                        f"{stream.codec_context.name}, {stream.codec_context.width}x"
                                        f"{stream.codec_context.height})")
            cc = stream.codec_context
            if cc.width <= 0 or cc.height <= 0:
                raise DecodeError(path, "video stream has no frame size (damaged header)")
            if self.converter is None and self.size:
                w, h = official_scale_size(cc.width, cc.height, self.size)
                if not _scalable(w, h):
                    raise DecodeError(path, f"frame size {cc.width}x{cc.height} is too extreme to scale to "
                                            f"{self.size}: its short side at {self.size} px makes it {w}x{h}, "
                                            "larger than FFmpeg's scaler takes (a strip, not a picture)")
            cc.thread_count = self.threads
            cc.thread_type = "AUTO" if self.threads != 1 else "SLICE"
            time_base = stream.time_base or Fraction(1, 90000)
            start_us = container.start_time if container.start_time is not None else 0
            offset = -_round_near_inf(Fraction(start_us, 1_000_000) / time_base)
            guessed = stream.average_rate or stream.guessed_rate or stream.base_rate or Fraction(25)
            default_duration = max(1, _round_near_inf(1 / (Fraction(guessed) * time_base)))
            declared_seconds = declared_duration(container, stream)
            declared = stream.frames or 0  # read while the file is open (PyAV 18.1.1 refuses it after)
            width, height = cc.width, cc.height
            rule = _Rule(time_base, rate, self.sample_times)
            if self.converter is not None:
                convert = _Upright(self.converter, self.threads)
            else:
                convert = _Converter(self.size, self.crop, self.interpolation, self.threads)
            decode = _decode_skipping if mode == "skip" else _decode_all
            demuxer = _Demuxer(container, stream, offset)
            clips = decode(demuxer, stream, rule, convert, offset, default_duration)

            def clip_time(n):
                return rule.clip_time(min(n, len(rule.times) - 1) if rule.times else n)

            clip_times, frame_times, total, last = [], [], 0, None
            while True:
                try:
                    n, rgb, pts = next(clips)
                except StopIteration as stop:
                    end_pts, packets, decoded, undecoded = stop.value
                    break
                total += 1
                if num_clips is not None and total > num_clips:
                    continue  # cut to num_clips; the rest is still read for the checks below
                clip_times.append(clip_time(n))
                frame_times.append(float(pts * time_base))
                last = (n, rgb, pts)
                yield len(clip_times) - 1, rgb
        finally:
            container.close()

        if declared and packets < declared - max(2, declared // 100):
            raise DecodeError(path, f"truncated or damaged: {packets} of {declared} frames readable")
        ends_early = None  # where the frames end, when before the header's duration by more than 1 s
        if end_pts is not None and declared_seconds is not None:
            end = float(end_pts * time_base)
            if end < declared_seconds - max(TRUNCATION_SECONDS, TRUNCATION_FRACTION * declared_seconds):
                raise DecodeError(path, f"truncated or damaged: frames end at {end:.1f} s of the {declared_seconds:.1f} s "
                                        "its header declares")
            if end < declared_seconds - TRUNCATION_SECONDS:
                ends_early = end
        if not total:
            if packets == 0:
                raise DecodeError(path, "no video frames in the file")
            if rate is not None and end_pts is not None and rule.end(end_pts) <= 0:
                duration = float(end_pts * time_base)
                raise DecodeError(path, f"too short: {duration:.3f} s gives no clip at {float(rate):g} fps "
                                        f"(round(duration x fps) = 0)")
            raise DecodeError(path, "no decodable video frames")
        notes = []
        if ends_early is not None:  # shorter, within the tolerance: kept, said
            notes.append(f"frames end at {ends_early:.1f} s of the {declared_seconds:.1f} s its header declares "
                         "(within the tolerance for a truncated file, so kept: its end may be missing)")
        if demuxer.joins:  # cat a.ts b.ts: joined as ffmpeg does, said
            notes.append(f"its timestamps jump {demuxer.joins} time{'s' if demuxer.joins > 1 else ''} (files joined "
                         "end to end, or a clock that restarts): the parts are put one after the other, as ffmpeg does")
        missing = demuxer.missing_frames()
        if missing:  # a TS resync after damage: no frame count says so, the timeline does
            notes.append(f"about {missing} frame{'s are' if missing > 1 else ' is'} missing from its timeline (gaps in "
                         "its timestamps: damaged data the demuxer skipped, or a pause in the recording; the clips "
                         "there use the last frame before each gap)")
        if undecoded:  # damaged data in the middle: ffmpeg goes on, the clips there repeat the frame before
            notes.append(f"{undecoded} of {packets} frames could not be decoded (damaged data; the clips there "
                         "use the last frame that decoded before it)")
        if num_clips is not None and total != num_clips:
            at = f" at {float(rate):.4g} fps" if rate is not None else ""
            if abs(total - num_clips) > NUM_CLIPS_TOLERANCE:
                raise DecodeError(path, f"does not match its annotation: {total} clips decodable{at} "
                                        f"({float(end_pts * time_base):.1f} s), {num_clips} annotated (more than "
                                        f"{NUM_CLIPS_TOLERANCE} apart: another version of the video, or the annotation's "
                                        "frames/fps are not this file's)")
            notes.append(f"clip count {total}{at} {'cut' if total > num_clips else 'padded with the last frame'} "
                         f"to the {num_clips} annotated")
            for i in range(num_clips - total):  # too few: the last frame is repeated
                clip_times.append(clip_time(last[0] + i + 1))
                frame_times.append(float(last[2] * time_base))
                yield len(clip_times) - 1, last[1]
        self.info = SampledVideo(
            frames=None,
            clip_times=np.array(clip_times, np.float64),
            frame_times=np.array(frame_times, np.float64),
            duration=float(end_pts * time_base),
            fps=float(rate) if rate is not None else None,
            source_fps=float(guessed),
            frame_count=packets,
            width=width,
            height=height,
            decoded_frames=decoded,
            notes=notes,
            orientation=convert.orientation,
            stream_index=stream_index,
        )


_TS_DISCONT = 0x0200  # AVFMT_TS_DISCONT: the format's timestamps may jump (MPEG-TS, ...)
_DTS_DELTA_THRESHOLD_US = 10_000_000  # fftools' -dts_delta_threshold default: 10 s
_BACKWARDS_US = 100_000  # AV_TIME_BASE / 10


class _Demuxer:
    """Video packets in decoding order (a read error ends the stream like ffmpeg does), with the
    ffmpeg CLI's timestamp-discontinuity correction for formats that declare jumps
    (``AVFMT_TS_DISCONT``: MPEG-TS, e.g. ``cat a.ts b.ts > ab.ts``, or a broadcast whose clock
    restarts). As fftools' ``ts_discontinuity_detect`` does with its defaults: when a packet's
    dts is more than 10 s from the predicted next dts (the last dts + the packet duration), or
    more than 0.1 s before the last dts, the difference is taken off this and every later
    packet, so the part after the jump continues the timeline at the predicted dts. Without it,
    the second file's frames would all fall before the end of the first and be lost. Only the
    video stream takes part, as in the official extraction, whose output has no audio.
    ``joins``: how many jumps were corrected; :meth:`missing_frames`: the frames that gaps in
    the (corrected) timestamps leave out, in these formats, which have no frame count to
    compare with (a damaged stretch that the demuxer skipped)."""

    def __init__(self, container, stream, offset: int):
        self.container, self.stream = container, stream
        self.time_base = stream.time_base or Fraction(1, 90000)
        self.correct = bool(int(container.format.flags) & _TS_DISCONT)
        self.offset = offset  # the start-time shift (stream ticks), applied before the detection as fftools does
        self.joins = 0
        rate = stream.average_rate or stream.guessed_rate
        self._frame_us = _round_near_inf(1_000_000 / Fraction(rate)) if rate else 0
        self._shift_us = 0  # ts_offset_discont
        self._dts_us = self._next_dts_us = None
        self._pts: list[int] = []  # (corrected) packet timestamps, for missing_frames

    def __iter__(self):
        try:
            for packet in self.container.demux(self.stream):
                if packet.size == 0 and packet.pts is None and packet.dts is None:
                    continue  # the flush packet
                if self.correct:
                    self._join(packet)
                    if packet.pts is not None:
                        self._pts.append(packet.pts)
                yield packet
        except av.error.FFmpegError:
            return  # truncated data: what was read is kept; the declared frame count flags the rest

    def missing_frames(self) -> int:
        """About how many frames the gaps in the timestamps leave out: each step between
        consecutive frames (presentation order) of at least twice the usual one counts as
        round(step / usual) - 1 frames."""
        if len(self._pts) < 3:
            return 0
        steps = np.diff(np.unique(np.array(self._pts, dtype=np.int64)))
        usual = float(np.median(steps))
        gaps = steps[steps >= 2 * usual]
        return int(np.sum(np.round(gaps / usual) - 1)) if usual > 0 and len(gaps) else 0

    def _ticks(self, us: int) -> int:  # av_rescale_q(us, AV_TIME_BASE_Q, time_base)
        return _rescale(us, self.time_base.denominator, 1_000_000 * self.time_base.numerator)

    def _us(self, ticks: int) -> int:  # the same in reverse, on fftools' timeline (start shifted to 0)
        return _rescale(ticks + self.offset, 1_000_000 * self.time_base.numerator, self.time_base.denominator)

    @staticmethod
    def _move(packet, ticks: int) -> None:
        if ticks:
            if packet.dts is not None:
                packet.dts += ticks
            if packet.pts is not None:
                packet.pts += ticks

    def _join(self, packet) -> None:
        self._move(packet, self._ticks(self._shift_us))  # the jumps found before
        if packet.dts is not None and self._next_dts_us is not None:
            dts_us = self._us(packet.dts)
            delta = dts_us - self._next_dts_us
            if abs(delta) > _DTS_DELTA_THRESHOLD_US or dts_us + _BACKWARDS_US < self._dts_us:
                self._shift_us -= delta
                self._move(packet, -self._ticks(delta))
                self.joins += 1
        # the predicted next dts (fftools' ist_dts_update)
        if self._next_dts_us is None:
            self._next_dts_us = self._us(packet.pts) if packet.pts is not None else 0
        if packet.dts is not None:
            self._next_dts_us = self._us(packet.dts)
        self._dts_us = self._next_dts_us
        if packet.duration:
            self._next_dts_us += _rescale(packet.duration, 1_000_000 * self.time_base.numerator,
                                          self.time_base.denominator)
        else:
            self._next_dts_us += self._frame_us


def _rescale(a: int, num: int, den: int) -> int:
    """``a · num / den`` rounded halves away from zero, in integers (libavutil's av_rescale_rnd
    with AV_ROUND_NEAR_INF): per packet, where a Fraction would cost more."""
    q = (2 * abs(a) * num + den) // (2 * den)
    return q if a >= 0 else -q


def _decode(cc, packet, errors: list | None = None) -> list:
    try:
        return cc.decode(packet)
    except av.error.FFmpegError:
        if errors is not None:
            errors[0] += 1
        return []  # a damaged packet: ffmpeg goes on with the next one (the caller counts it)


def _decode_all(demuxed, stream, rule, convert, offset, default_duration):
    """Decode every frame, run the fps rule on the decoded timestamps (the ffmpeg way).

    A generator of ``(clip n, rgb, frame pts)`` in clip order; returns ``(end_pts, packets,
    decoded frames, frames that did not decode)``: a healthy stream decodes a frame per packet
    (every codec and container tests/extract and the review tried), damaged data fewer."""
    cc = stream.codec_context
    selector = _Selector(rule)
    clips, cache = [], {}  # clips: the outbox, emptied after each packet
    packets = decoded = 0
    end_pts = None
    last_pts = None

    def take(frames):
        nonlocal decoded, end_pts, last_pts
        for frame in frames:
            decoded += 1
            if frame.pts is not None:
                pts = frame.pts + offset
            elif last_pts is not None:
                pts = last_pts + default_duration
            else:
                pts = 0
            if last_pts is not None and pts <= last_pts:
                pts = last_pts + 1  # keep presentation order strictly increasing
            last_pts = pts
            dur = frame.duration if frame.duration else default_duration
            end_pts = max(end_pts or pts + dur, pts + dur)
            for n, (fpts, fr) in selector.push(pts, (pts, frame)):
                emit(n, fpts, fr)

    def emit(n, fpts, frame):
        if fpts not in cache:  # a frame repeated for several clips is converted once
            cache.clear()
            cache[fpts] = convert(frame)
        clips.append((n, cache[fpts], fpts))

    discarded = 0  # packets the container marks to be dropped after decoding (an edit list's pre-roll)
    for packet in demuxed:
        packets += 1
        discarded += bool(packet.is_discard)
        take(_decode(cc, packet))
        yield from clips
        clips.clear()
    take(_decode(cc, None))
    if end_pts is not None:
        for n, (fpts, fr) in selector.finish(rule.end(end_pts)):
            emit(n, fpts, fr)
    yield from clips
    return end_pts, packets, decoded, max(0, packets - discarded - decoded)


def _decode_skipping(demuxed, stream, rule, convert, offset, default_duration):
    """Decide the chosen frames from packet timestamps, decode only their GOPs.

    A generator like :func:`_decode_all`; a frame is dropped once the clips after it are out."""
    cc = stream.codec_context
    selector = _Selector(rule)
    heap: list[tuple[int, int, _Packet]] = []
    gops: list[list[_Packet]] = []  # GOPs not yet handled, in decoding order
    previous_gop: list[_Packet] = []  # the GOP before gops[0] (for open-GOP leading pictures)
    assignments: deque[tuple[int, _Packet]] = deque()  # (clip index, packet) in clip order
    resolved: dict[int, tuple[np.ndarray, int]] = {}  # packet seq -> (rgb, pts)
    last_placed: list[_Packet | None] = [None]
    stats = {"decoded": 0}
    errors = [0]  # packets of the decoded GOPs that the decoder refused (the others are not known)
    clips: list[tuple[int, np.ndarray, int]] = []  # the outbox, emptied after each packet
    handed: list[_Packet | None] = [None]  # the packet whose frame the last clip used
    packets = 0
    end_pts = None
    seen_pts: set[int] = set()

    def place(entry: _Packet):
        # The selector decides the previous packet when the next one (in pts order) arrives.
        if last_placed[0] is not None:
            last_placed[0].final = True
        for n, target in selector.push(entry.pts, entry):
            target.targets.append(n)
            assignments.append((n, target))
        last_placed[0] = entry

    def decode_run(run: list[_Packet]):
        wanted = {e.pts for e in run if e.targets}
        last = max(i for i, e in enumerate(run) if e.targets)
        found: dict[int, object] = {}

        def keep(frames):
            for frame in frames:
                stats["decoded"] += 1
                if frame.pts is None:
                    raise _NeedsFullDecode()
                if frame.pts + offset in wanted:
                    found[frame.pts + offset] = frame

        cc.flush_buffers()
        for entry in run[:last + 1]:
            cc.skip_frame = "DEFAULT" if entry.targets else "NONREF"
            keep(_decode(cc, entry.packet, errors))
        cc.skip_frame = "DEFAULT"
        keep(_decode(cc, None))
        cc.flush_buffers()
        if len(found) != len(wanted):
            # a chosen frame did not come out (damaged data, a decoder that needs more than the
            # GOP): decode every frame instead, so the result is what ffmpeg gives
            raise _NeedsFullDecode()
        for entry in run:
            if entry.targets and not entry.released:  # (an open GOP decodes the previous one again)
                resolved[entry.seq] = (convert(found[entry.pts]), entry.pts)

    def flush_ready(at_eof: bool):
        nonlocal previous_gop
        # a GOP is ready when every packet in it has been decided by the selector
        limit = len(gops) if at_eof else len(gops) - 1
        handled = 0
        for g in range(limit):
            gop = gops[g]
            if not all(e.final for e in gop):
                break
            if any(e.targets for e in gop):
                leading = any(e.targets and e.pts < gop[0].pts for e in gop)
                decode_run((previous_gop + gop) if leading and previous_gop else gop)
            for e in previous_gop:
                e.packet = None
            previous_gop = gop
            handled += 1
        if handled:
            del gops[:handled]
        # hand out the clips whose frames are known, in clip order
        while assignments and assignments[0][1].seq in resolved:
            n, entry = assignments.popleft()
            rgb, pts = resolved[entry.seq]
            if handed[0] is not entry:  # clips use frames in presentation order: the previous one is done
                if handed[0] is not None:
                    resolved.pop(handed[0].seq, None)
                    handed[0].released = True
                handed[0] = entry
            clips.append((n, rgb, pts))

    for packet in demuxed:
        packets += 1
        pts = packet.pts if packet.pts is not None else packet.dts
        dts = packet.dts if packet.dts is not None else packet.pts
        if pts is None:
            raise _NeedsFullDecode()
        pts, dts = pts + offset, dts + offset
        if pts in seen_pts:
            raise _NeedsFullDecode()  # duplicate timestamps: let the decoder order them
        seen_pts.add(pts)
        dur = packet.duration if packet.duration else default_duration
        end_pts = max(end_pts if end_pts is not None else pts + dur, pts + dur)
        entry = _Packet(packet, pts, dts, bool(packet.is_keyframe), packets)
        if entry.key or not gops:
            gops.append([entry])
        else:
            gops[-1].append(entry)
        # every packet with pts < dts of this one is now in presentation order
        while heap and heap[0][0] < dts:
            place(heapq.heappop(heap)[2])
        heapq.heappush(heap, (pts, entry.seq, entry))
        flush_ready(at_eof=False)
        yield from clips
        clips.clear()

    while heap:
        place(heapq.heappop(heap)[2])
    if last_placed[0] is not None:
        last_placed[0].final = True
    if end_pts is not None:
        for n, target in selector.finish(rule.end(end_pts)):
            target.targets.append(n)
            assignments.append((n, target))
    flush_ready(at_eof=True)
    yield from clips
    return end_pts, packets, stats["decoded"], errors[0]


def is_video_file(path: str | os.PathLike) -> bool:
    """Whether PyAV opens ``path`` (a regular, non-empty file) and finds a video stream in it:
    how a file without a video extension is recognised (it reads only the container header).
    Still images (a thumbnail ``vid.jpg`` beside ``vid.MOD``) are not videos."""
    return not_a_video(path) is None


def not_a_video(path: str | os.PathLike) -> str | None:
    """Why ``path`` is not a video file (:func:`is_video_file`), in words, or None when it is one."""
    path = os.fspath(path)
    try:
        if not os.path.isfile(path) or os.path.getsize(path) == 0:
            return "not a regular file" if not os.path.isfile(path) else "an empty file"
        with av.open(path, metadata_errors="ignore") as container:
            name = container.format.name
            if name == "image2" or name.endswith("_pipe"):
                return f"a still image ({name.removesuffix('_pipe')}), not a video"
            if not any(not _is_attached_picture(s) for s in container.streams.video):  # a song's cover art
                return "no video stream (audio only, or a cover picture)"
            return None
    except Exception:  # not a format FFmpeg knows, unreadable, ...: not a video
        return "not a file PyAV (FFmpeg) can open"


def iter_video_files(folder: str | os.PathLike, extensions: Sequence[str] | None = VIDEO_EXTENSIONS,
                     skipped: list[str] | None = None) -> Iterator[str]:
    """Video files under ``folder`` (recursive, sorted, by extension, case-insensitive;
    ``extensions=None``: every file).

    Symlinked folders are followed (a link back to a folder already walked is skipped). A name
    that is only dots before a video extension (``..mp4``: no name, so no id) is not collected;
    with ``skipped`` given, its path is appended there, so that the caller can say so."""
    exts = None if extensions is None else {e.lower() for e in extensions}
    seen: set[tuple[int, int]] = set()  # (device, inode) of the folders walked
    for root, dirs, files in os.walk(folder, followlinks=True):
        st = os.stat(root)
        if (st.st_dev, st.st_ino) in seen:
            dirs.clear()  # a symlink loop, or a second link to the same folder
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs.sort()
        for name in sorted(files):
            if exts is None or os.path.splitext(name)[1].lower() in exts:
                yield os.path.join(root, name)
            elif skipped is not None and "." in name:
                base, ext = name.rsplit(".", 1)
                if not base.strip(".") and f".{ext.lower()}" in exts:  # "..mp4", "...mp4", ".mp4"
                    skipped.append(os.path.join(root, name))


@dataclass
class DecodeResult:
    """What a decode worker sends back for one video: frames and attributes, or the reason it failed."""

    video_id: str
    path: str
    frames: np.ndarray | None = None  # (T, H, W, 3) uint8
    attrs: dict = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0
    decoded_frames: int = 0


def decode_job(video_id: str, path: str, fps: float | None, sample_times: Sequence[float] | None = None,
               num_clips: int | None = None, size: int = 224, resize: str = "ffmpeg",
               threads: int = 1) -> DecodeResult:
    """Decode one video for extraction; never raises (a failure is returned with its reason).

    All frames at once in ``frames``; :func:`decode_chunks` streams them (what the
    extraction's worker processes run: numpy + av; torch only for ``resize="hf"``).
    """
    chunks = []
    for kind, value in decode_chunks(video_id, path, fps, sample_times, num_clips, size, resize, threads):
        if kind == "frames":
            chunks.append(value)
        elif kind == "restart":
            chunks.clear()
        else:
            result = value
    if result.error is None:
        result.frames = np.concatenate(chunks)
    return result


def decode_chunks(video_id: str, path: str, fps: float | None, sample_times: Sequence[float] | None = None,
                  num_clips: int | None = None, size: int = 224, resize: str = "ffmpeg", threads: int = 1,
                  chunk: int = 32) -> Iterator[tuple[str, object]]:
    """:func:`decode_job`, streamed: yields, in this order,

    - ``("frames", (c, H, W, 3) uint8)``: the next ``c <= chunk`` frames, in clip order;
    - ``("restart", None)``: decoding started over (:class:`VideoClips`): drop the frames so far;
    - last ``("done", DecodeResult)`` with ``frames`` None; ``error`` set: the video failed, drop
      its frames (a truncated file is known only at its end).

    Memory: one chunk and what :class:`VideoClips` holds, whatever the video's length. Never
    raises; ``DecodeResult.seconds`` counts this generator's own time, not its consumer's.
    """
    import time

    spent, t0 = 0.0, time.perf_counter()
    buf: list[np.ndarray] = []
    sent = False
    error = None
    try:
        if resize == "hf":
            from r2.extract.preprocess import HFResize

            converter = HFResize(size, size)
        else:
            converter = None
        clips = VideoClips(path, fps, sample_times=sample_times, num_clips=num_clips, size=size, threads=threads,
                           converter=converter)
        for j, frame in clips:
            if j == 0 and (buf or sent):
                buf.clear()
                if sent:
                    spent += time.perf_counter() - t0
                    yield "restart", None
                    t0, sent = time.perf_counter(), False
            buf.append(frame)
            if len(buf) == chunk:
                spent += time.perf_counter() - t0
                yield "frames", np.stack(buf)
                t0, sent = time.perf_counter(), True
                buf.clear()
        if buf:
            spent += time.perf_counter() - t0
            yield "frames", np.stack(buf)
            t0 = time.perf_counter()
        sv = clips.info
        file_bytes = os.path.getsize(path)  # a rerun compares it: another file with this id is refused
    except DecodeError as exc:
        error = exc.reason
    except MemoryError:
        error = "out of memory while decoding"
    except Exception as exc:  # a damaged file can make FFmpeg fail in many ways: report, go on
        error = f"cannot decode ({type(exc).__name__}: {exc})"
    spent += time.perf_counter() - t0
    if error is not None:
        yield "done", DecodeResult(video_id, path, error=error, seconds=spent)
        return
    attrs = {
        "source": os.path.abspath(path),
        "file_bytes": file_bytes,
        "duration": round(sv.duration, 6),
        "fps": sv.fps,
        "source_fps": round(sv.source_fps, 6),
        "frame_count": sv.frame_count,
        "size": [sv.width, sv.height],
        "sample_times": [round(float(t), 6) for t in sv.frame_times],
        "clip_start": round(float(sv.clip_times[0]), 6),
        "rotation": sv.orientation.rotation,  # degrees clockwise, turned upright before scaling (as ffmpeg)
        "stream_index": sv.stream_index,  # the container's video stream used (ffmpeg's default choice)
    }
    if sv.orientation.filters:
        attrs["autorotate"] = sv.orientation.describe()
    if sv.notes:
        attrs["notes"] = "; ".join(sv.notes)
    yield "done", DecodeResult(video_id, path, None, attrs, None, spent, sv.decoded_frames)
