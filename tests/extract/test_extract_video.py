"""Decoding: the frame chosen for each clip, the clip count, the bit-exact official resize, bad inputs.

The reference is libavfilter itself (through PyAV): ``fps=R,scale=W:H:flags=bicubic,crop=...``
on every decoded frame, i.e. what ``tools/extract_frames.py`` runs with the ffmpeg CLI.
Generated videos show their own frame index, so a wrong pick is seen as a wrong number.
"""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest

from r2.extract import synthetic as S
from r2.extract import video as V


def libavfilter_frames(path, fps, size=224, transpose=None):
    """Official pipeline: every decoded frame through ffmpeg's fps -> scale -> crop -> rgb24
    (``transpose``: the filter the ffmpeg CLI puts first to autorotate a 90-degree video)."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        cw, ch = s.codec_context.width, s.codec_context.height
        w, h = V.official_scale_size(*((ch, cw) if transpose else (cw, ch)), size)
        g = av.filter.Graph()
        chain = [g.add_buffer(template=s)] + ([g.add("transpose", transpose)] if transpose else [])
        chain += [g.add("fps", f"fps={fps}"), g.add("scale", f"w={w}:h={h}:flags=bicubic"),
                 g.add("crop", f"{size}:{size}:{int((w - size) / 2)}:{int((h - size) / 2)}"),
                 g.add("format", "rgb24"), g.add("buffersink")]
        for a, b in zip(chain, chain[1:]):
            a.link_to(b)
        g.configure()
        out = []

        def pull():
            while True:
                try:
                    out.append(chain[-1].pull().to_ndarray(format="rgb24"))
                except (av.error.BlockingIOError, av.error.EOFError):
                    return

        for frame in c.decode(s):
            chain[0].push(frame)
            pull()
        chain[0].push(None)
        pull()
    return out


CODECS = [
    ("h264_bframes.mp4", "libx264", Fraction(30000, 1001), {"keyframe_interval": 15, "bframes": 3}),
    ("h264_gop20.mkv", "libx264", 25, {"keyframe_interval": 20}),
    ("vp9.webm", "libvpx-vp9", 24, {"keyframe_interval": 30}),
    ("mpeg4.avi", "mpeg4", 25, {"keyframe_interval": 12, "bframes": 2}),
]


@pytest.fixture(scope="module")
def index_videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("index-videos")
    out = {}
    for name, codec, fps, kw in CODECS:
        out[name] = S.write_index_video(root / name, 150, fps=fps, codec=codec, **kw)
    return out


@pytest.mark.parametrize("name", [c[0] for c in CODECS])
def test_chosen_frames_equal_ffmpeg_fps_filter(index_videos, name):
    path = index_videos[name].path
    for rate in (0.5, 1.0, 3.3, 30.0):
        ref = libavfilter_frames(path, rate)
        ref_idx = [S.read_frame_index(f) for f in ref]
        for mode in ("skip", "all"):
            sv = V.sample_video(path, rate, mode=mode)
            assert [S.read_frame_index(f) for f in sv.frames] == ref_idx, (name, rate, mode)
            assert sv.num_clips == len(ref)
            assert all(np.array_equal(a, b) for a, b in zip(sv.frames, ref)), (name, rate, mode)
            if mode == "skip" and rate < 10 and not name.endswith(".avi"):  # avi has no pts: decodes all
                assert sv.decoded_frames < 150, (name, rate)  # skipped frames, no fallback to a full decode


def test_skipping_decodes_fewer_frames(index_videos):
    path = index_videos["h264_bframes.mp4"].path
    skip = V.sample_video(path, 0.5, mode="skip")
    full = V.sample_video(path, 0.5, mode="all")
    assert full.decoded_frames == 150
    assert skip.decoded_frames < 150 // 2
    assert np.array_equal(skip.frames, full.frames)


def test_rule_frame_index_and_times_at_30fps(tmp_path):
    """At 0.5 fps, clip n is source frame 60 n + 29 (last frame before (2n + 1) s)."""
    info = S.write_index_video(tmp_path / "v.mp4", 300, fps=30, keyframe_interval=30, bframes=3)
    sv = V.sample_video(info.path, 0.5)
    assert sv.num_clips == 5  # round(10 s * 0.5)
    assert [S.read_frame_index(f) for f in sv.frames] == [60 * n + 29 for n in range(5)]
    np.testing.assert_allclose(sv.frame_times, [(60 * n + 29) / 30 for n in range(5)], atol=1e-9)
    np.testing.assert_allclose(sv.clip_times, [2.0 * n for n in range(5)])
    assert sv.duration == pytest.approx(10.0)
    # 1 fps: clip n = frame 30 n + 14
    sv = V.sample_video(info.path, 1.0)
    assert [S.read_frame_index(f) for f in sv.frames] == [30 * n + 14 for n in range(10)]


@pytest.mark.parametrize("duration,fps,clips", [
    (150, 0.5, 75), (30.96, 1.0, 31), (31.5, 1.0, 32), (31.49, 1.0, 31), (0.9, 0.5, 0), (1.0, 0.5, 1), (7, 0.5, 4),
])
def test_clip_count_rule(duration, fps, clips):
    assert V.clip_count(duration, fps) == clips


def test_clip_count_from_a_real_file_and_the_too_short_case(tmp_path):
    v = S.write_segment_video(tmp_path / "v.mp4", [("red", 3.5)], fps=10)  # 35 frames, 3.5 s
    assert V.sample_video(v.path, 1.0).num_clips == 4  # round(3.5) = 4: the last clip repeats frame 34
    assert V.sample_video(v.path, 0.5).num_clips == 2  # round(1.75) = 2
    short = S.write_segment_video(tmp_path / "s.mp4", [("red", 0.9)], fps=10)
    with pytest.raises(V.DecodeError, match="too short"):
        V.sample_video(short.path, 0.5)


def test_per_video_rate_and_forced_clip_count(tmp_path):
    """YouTube 'auto': rate = clips / duration and exactly num_clips frames."""
    info = S.write_index_video(tmp_path / "yt.mp4", 100, fps=25)  # 4 s
    sv = V.sample_video(info.path, 16 / 4.0, num_clips=16)
    assert sv.num_clips == 16 and not sv.notes
    sv = V.sample_video(info.path, 16 / 4.0, num_clips=17)  # one more than the rule gives: padded
    assert sv.num_clips == 17 and sv.notes and np.array_equal(sv.frames[-1], sv.frames[-2])
    sv = V.sample_video(info.path, 16 / 4.0, num_clips=15)
    assert sv.num_clips == 15


def test_a_clip_count_beyond_the_rounding_is_a_video_that_does_not_match_its_annotation(tmp_path):
    """num_clips (YouTube 'auto') 30 for a video that gives 3 clips at its rate: not 3 real frames
    and 27 copies of the last one, but a failure; 2 apart is beyond the rounding too."""
    v = S.write_segment_video(tmp_path / "yt.mp4", [("red", 5), ("blue", 5)], fps=30, size=(96, 64))
    r = V.decode_job("yt", str(v.path), 0.3, num_clips=30)
    assert r.frames is None
    assert r.error.startswith("does not match its annotation: 3 clips decodable at 0.3 fps (10.0 s), 30 annotated")
    info = S.write_index_video(tmp_path / "i.mp4", 100, fps=25)  # 4 s: 16 clips at 4 fps
    for n in (14, 18):
        with pytest.raises(V.DecodeError, match="16 clips decodable at 4 fps .*, %d annotated" % n):
            V.sample_video(info.path, 4.0, num_clips=n)
    r = V.decode_job("i", str(info.path), 4.0, num_clips=17)  # the rounding: padded, and said so
    assert r.error is None and r.frames.shape[0] == 17
    assert r.attrs["notes"] == "clip count 16 at 4 fps padded with the last frame to the 17 annotated"


def test_explicit_sample_times(tmp_path):
    info = S.write_index_video(tmp_path / "t.mp4", 50, fps=10, bframes=3)
    sv = V.sample_video(info.path, None, sample_times=[0.0, 0.05, 1.0, 2.34, 4.95, 9.0])
    assert [S.read_frame_index(f) for f in sv.frames] == [0, 0, 10, 23, 49, 49]


def test_real_video_equals_official_pipeline_bit_for_bit(sample_videos):
    bikes = next(p for p in sample_videos if p.name == "bikes.mp4")  # 640x272, 25 fps, h264
    ref = libavfilter_frames(bikes, 0.5)
    sv = V.sample_video(bikes, 0.5)
    assert sv.num_clips == len(ref) == 5
    assert all(np.array_equal(a, b) for a, b in zip(sv.frames, ref))


# --- rotation (display matrix) --------------------------------------------------------------
QUADRANTS = {"red": (255, 0, 0), "blue": (0, 0, 255), "green": (0, 255, 0), "white": (255, 255, 255)}


def _write_rotated(path, degrees, hflip=False, frames=20):
    """A phone-style video: coded 160x96 landscape with four coloured quadrants (red | blue over
    green | white) and a display matrix (``degrees`` counter-clockwise, as PyAV and ffprobe say)."""
    w, h = 160, 96
    img = np.zeros((h, w, 3), np.uint8)
    img[: h // 2, : w // 2], img[: h // 2, w // 2:] = QUADRANTS["red"], QUADRANTS["blue"]
    img[h // 2:, : w // 2], img[h // 2:, w // 2:] = QUADRANTS["green"], QUADRANTS["white"]
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.set_display_rotation(degrees, hflip=hflip)
        for k in range(frames):
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts = k
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    return path


def _corners(frame):
    """Colour names at the four corners (top-left, top-right, bottom-left, bottom-right)."""
    def name(patch):
        rgb = patch.reshape(-1, 3).mean(0)
        return min(QUADRANTS, key=lambda k: np.abs(rgb - QUADRANTS[k]).sum())
    h, w, e = frame.shape[0], frame.shape[1], 12
    return tuple(name(frame[y:y + e, x:x + e]) for y, x in ((0, 0), (0, w - e), (h - e, 0), (h - e, w - e)))


@pytest.mark.parametrize("degrees,hflip,corners,filters", [
    (-90, False, ("green", "red", "white", "blue"), "transpose=clock"),  # "rotate 90": a portrait phone video
    (90, False, ("blue", "white", "red", "green"), "transpose=cclock"),
    (180, False, ("white", "green", "blue", "red"), "hflip,vflip"),
    (0, True, ("blue", "red", "white", "green"), "hflip"),  # a mirrored front camera
])
def test_rotation_metadata_is_applied_as_ffmpeg_autorotates(tmp_path, degrees, hflip, corners, filters):
    """The ffmpeg CLI (the official extraction) turns frames upright from the display matrix
    before scaling: both resize modes do, sizing from the upright frame (a 160x96 portrait is
    96 wide: scale 224x373, crop the middle rows), and the video attrs say what was applied."""
    path = _write_rotated(tmp_path / "r.mp4", degrees, hflip)
    for resize in ("ffmpeg", "hf"):
        r = V.decode_job("r", str(path), 0.5, resize=resize)
        assert r.error is None and r.frames.shape == (1, 224, 224, 3)
        assert _corners(r.frames[0]) == corners, resize
        assert r.attrs["autorotate"] == filters and r.attrs["rotation"] == {-90: 90, 90: 270}.get(degrees, 180)
        assert r.attrs["size"] == [160, 96]  # the coded size
    upright = V.sample_video(path, 0.5, size=None).frames[0]
    assert upright.shape == ((160, 96, 3) if degrees % 180 else (96, 160, 3))
    if filters.startswith("transpose"):  # bit for bit the ffmpeg CLI's chain: transpose, fps, scale, crop
        ref = libavfilter_frames(path, 0.5, transpose=filters.split("=")[1])
        assert np.array_equal(V.sample_video(path, 0.5).frames[0], ref[0])
    plain = V.decode_job("p", str(S.write_segment_video(tmp_path / "p.mp4", [("red", 2)], fps=10).path), 0.5)
    assert plain.attrs["rotation"] == 0 and "autorotate" not in plain.attrs


# --- bad inputs --------------------------------------------------------------------------
def _bad_inputs(root):
    (root / "zero.mp4").write_bytes(b"")
    (root / "text.mp4").write_text("this is not a video\n" * 20)
    ok = S.write_segment_video(root / "ok.mp4", [("red", 2), ("blue", 2)], fps=10)
    data = ok.path.read_bytes()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 2])  # index (moov) at the end: lost
    fs = S.write_segment_video(root / "faststart.mp4", [("red", 3), ("blue", 3)], fps=10,
                               container_options={"movflags": "faststart"})
    data = fs.path.read_bytes()
    (root / "truncated_faststart.mp4").write_bytes(data[: len(data) // 2])  # index kept, data cut
    S.write_audio_only(root / "audio only.mp4")
    return {
        "zero.mp4": "empty file",
        "text.mp4": "not a readable video",
        "truncated.mp4": "not a readable video",
        "truncated_faststart.mp4": "truncated or damaged",
        "audio only.mp4": "no video stream",
    }


def test_bad_inputs_give_path_and_reason(tmp_path):
    expected = _bad_inputs(tmp_path)
    for name, reason in expected.items():
        r = V.decode_job(name, str(tmp_path / name), 0.5)
        assert r.frames is None and r.error is not None and reason in r.error, (name, r.error)
    r = V.decode_job("missing", str(tmp_path / "missing.mp4"), 0.5)
    assert r.error == "file not found"
    (tmp_path / "dangling.mp4").symlink_to(tmp_path / "moved" / "away.mp4")
    r = V.decode_job("dangling", str(tmp_path / "dangling.mp4"), 0.5)
    assert r.error == f"a symbolic link to {tmp_path / 'moved' / 'away.mp4'}, which does not exist"
    # names with spaces and non-ASCII characters decode normally
    odd = S.write_segment_video(tmp_path / "sub dir" / "vidéo ünïcode 名前.mkv", [("green", 2.2)], fps=10)
    r = V.decode_job("odd", str(odd.path), 1.0)
    assert r.error is None and r.frames.shape == (2, 224, 224, 3)
    assert r.attrs["source"].endswith("vidéo ünïcode 名前.mkv")


@pytest.mark.parametrize("name,codec", [("cut.mkv", "libx264"), ("cut.webm", "libvpx-vp9")])
def test_a_truncated_matroska_file_is_refused_not_stored_shorter(tmp_path, name, codec):
    """Matroska/WebM declare no frame count, but their header keeps the full duration: a file cut
    at 60 % (an interrupted download) decodes to about half of it, which is a failure, not a
    shorter video."""
    full = S.write_segment_video(tmp_path / ("full" + name[3:]), [("red", 10), ("blue", 10)], fps=10, size=(96, 64),
                                 codec=codec)
    data = full.path.read_bytes()
    (tmp_path / name).write_bytes(data[: len(data) * 6 // 10])
    r = V.decode_job("cut", str(tmp_path / name), 0.5)
    assert r.frames is None and r.error is not None, r.attrs
    assert r.error.startswith("truncated or damaged: frames end at ") and "of the 20.0 s its header declares" in r.error
    ok = V.decode_job("full", str(full.path), 0.5)
    assert ok.error is None and ok.frames.shape[0] == 10


def test_a_matroska_segment_whose_timestamps_start_later_is_whole(tmp_path):
    """Every segment after the first of ``ffmpeg -f segment -c copy`` starts at its place on the
    original timeline, and its header declares start + length (80 s for 20 s from 60 s): that
    file is whole, while the same file cut short is still refused."""
    from fractions import Fraction

    path = tmp_path / "part001.mkv"
    with av.open(str(path), "w", format="matroska") as c:
        v = c.add_stream("libx264", rate=10)
        v.width, v.height, v.pix_fmt = 96, 64, "yuv420p"
        v.codec_context.time_base = Fraction(1, 10)
        for i in range(200):  # 20 s, timestamps from 60 s
            f = av.VideoFrame.from_ndarray(np.full((64, 96, 3), (i * 7) % 255, np.uint8), format="rgb24")
            f.pts, f.time_base = 600 + i, Fraction(1, 10)
            for p in v.encode(f):
                c.mux(p)
        for p in v.encode():
            c.mux(p)
    with av.open(str(path)) as c:
        assert c.start_time == 60_000_000 and V.declared_duration(c, c.streams.video[0]) == pytest.approx(20.0)
    r = V.decode_job("part001", str(path), 0.5)
    assert r.error is None and r.frames.shape[0] == 10
    data = path.read_bytes()
    (tmp_path / "cut.mkv").write_bytes(data[: len(data) * 6 // 10])
    r = V.decode_job("cut", str(tmp_path / "cut.mkv"), 0.5)
    assert r.frames is None and "of the 20.0 s its header declares" in r.error


def test_iter_video_files_is_recursive_and_sorted(tmp_path):
    for rel in ["b.mp4", "a/c.MKV", "a/notes.txt", "z/d.webm"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    got = [str(p.relative_to(tmp_path)) for p in map(__import__("pathlib").Path, V.iter_video_files(tmp_path))]
    assert got == ["b.mp4", "a/c.MKV", "z/d.webm"]


def test_open_gop_and_start_time_offset(tmp_path):
    """Open GOPs (leading B-frames need the previous GOP) and an MPEG-TS whose clock starts at 1.4 s
    (ffmpeg shifts the file start to 0, so it gives the same frames as the mp4)."""
    params = {"x264-params": "keyint=20:min-keyint=20:scenecut=0:open-gop=1:bframes=3"}
    mp4 = S.write_index_video(tmp_path / "og.mp4", 120, fps=25, options=params).path
    ts = S.write_index_video(tmp_path / "og.ts", 120, fps=25, options=params).path
    assert av.open(str(ts)).start_time > 0
    for rate in (0.5, 1.0, 3.3, 12.5):
        ref = [S.read_frame_index(f) for f in libavfilter_frames(mp4, rate)]
        for path in (mp4, ts):
            for mode in ("skip", "all"):
                got = [S.read_frame_index(f) for f in V.sample_video(path, rate, mode=mode).frames]
                assert got == ref, (path.name, rate, mode)


def test_joined_mpegts_files_continue_the_timeline(tmp_path):
    """``cat a.ts b.ts``: b's clock starts again at 1.4 s. As the ffmpeg CLI does for a format
    whose timestamps may jump, b is put right after a (its first dts at a's last dts + one
    frame), so the file gives the frames of one continuous video of both; without it, b's
    frames all fell before a's end and the joined file decoded as a alone."""
    params = {"x264-params": "keyint=20:min-keyint=20:scenecut=0:bframes=3"}
    a = S.write_index_video(tmp_path / "a.ts", 100, fps=25, options=params).path
    b = S.write_index_video(tmp_path / "b.ts", 60, fps=25, options=params).path
    joined = tmp_path / "ab.ts"
    joined.write_bytes(a.read_bytes() + b.read_bytes())
    whole = S.write_index_video(tmp_path / "whole.mp4", 160, fps=25, options=params).path
    for rate in (0.5, 1.0, 3.3, 25.0):
        ref = [k if k < 100 else k - 100 for k in map(S.read_frame_index, libavfilter_frames(whole, rate))]
        for mode in ("skip", "all"):
            sv = V.sample_video(joined, rate, mode=mode)
            assert [S.read_frame_index(f) for f in sv.frames] == ref, (rate, mode)
            assert sv.duration == pytest.approx(6.4) and sv.num_clips == V.clip_count(6.4, rate)
            assert sv.notes == ["its timestamps jump 1 time (files joined end to end, or a clock that restarts): "
                                "the parts are put one after the other, as ffmpeg does"]
    assert V.sample_video(a, 1.0).notes == []  # one file: no jump


@pytest.mark.parametrize("later, clips, note", [
    (30, [12, 37, 62, 87, 12, 37], "its timestamps jump 1 time"),  # joined, as ffmpeg
    (9, [12, 37, 62, 87] + [99] * 5 + [14, 39], "about 123 frames are missing from its timeline")])  # a gap: kept
def test_a_forward_jump_in_mpegts_is_joined_only_beyond_ten_seconds(tmp_path, later, clips, note):
    """b's clock starts at ``later`` s, a's ends at 4.08 s (a recording resumed): ffmpeg joins the
    parts only when the jump is more than its 10 s dts_delta_threshold; a shorter gap stays a
    gap, where the last frame before it is repeated (b's frame k then shows at 8.92 + k / 25 s),
    and the note counts the frames the gap leaves out (4.96 s between two frames at 25 fps)."""
    a = S.write_index_video(tmp_path / "a.ts", 100, fps=25).path
    b = S.write_index_video(tmp_path / "b.ts", 60, fps=25, container_options={"output_ts_offset": str(later)}).path
    joined = tmp_path / "ab.ts"
    joined.write_bytes(a.read_bytes() + b.read_bytes())
    for mode in ("skip", "all"):
        sv = V.sample_video(joined, 1.0, mode=mode)
        assert [S.read_frame_index(f) for f in sv.frames] == clips, mode
        assert len(sv.notes) == 1 and sv.notes[0].startswith(note), sv.notes


def test_frames_a_damaged_mpegts_lost_are_counted_from_its_timestamps(tmp_path):
    """An MPEG-TS whose middle is damaged (TS packets overwritten: the demuxer skips them, and
    the frames in them): no frame count tells, so the gap in the timestamps is counted (22 of
    250 frames here); an undamaged one gets no note."""
    path = S.write_index_video(tmp_path / "good.ts", 250, fps=25).path
    data = bytearray(path.read_bytes())
    for offset in range(len(data) // 2, len(data) // 2 + 20000, 3 * 188):
        data[offset:offset + 188] = b"\xff" * 188
    bad = tmp_path / "bad.ts"
    bad.write_bytes(bytes(data))
    for mode in ("skip", "all"):
        sv = V.sample_video(bad, 1.0, mode=mode)
        assert sv.frame_count == 228 and sv.num_clips == 10
        assert sv.notes == ["about 22 frames are missing from its timeline (gaps in its timestamps: damaged data the "
                            "demuxer skipped, or a pause in the recording; the clips there use the last frame before "
                            "each gap)"], mode
        assert V.sample_video(path, 1.0, mode=mode).notes == []


def test_iter_video_files_follows_symlinked_folders_without_looping(tmp_path):
    from pathlib import Path

    (tmp_path / "elsewhere" / "deep").mkdir(parents=True)
    (tmp_path / "elsewhere" / "deep" / "x.mp4").write_bytes(b"x")
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "a.mp4").write_bytes(b"x")
    (tmp_path / "videos" / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "elsewhere" / "deep" / "loop").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    root = tmp_path / "videos"
    got = [str(Path(p).relative_to(root)) for p in V.iter_video_files(root)]
    assert got == ["a.mp4", "linked/deep/x.mp4"]  # followed once; the link back to elsewhere/ is skipped


# --- streaming ---------------------------------------------------------------------------
def test_chunks_stream_the_same_frames(index_videos):
    path = index_videos["h264_bframes.mp4"].path
    whole = V.sample_video(path, 3.3)
    events = list(V.decode_chunks("v", str(path), 3.3, chunk=4))
    kinds = [k for k, _ in events]
    assert kinds == ["frames"] * -(-whole.num_clips // 4) + ["done"]
    frames = np.concatenate([x for k, x in events if k == "frames"])
    assert all(len(x) <= 4 for k, x in events if k == "frames")
    assert np.array_equal(frames, whole.frames)
    result = events[-1][1]
    assert result.error is None and result.frames is None
    assert result.attrs["sample_times"] == [round(float(t), 6) for t in whole.frame_times]
    assert np.array_equal(V.decode_job("v", str(path), 3.3).frames, whole.frames)


def test_fallback_to_full_decode_mid_stream_restarts_the_video(index_videos, monkeypatch):
    """The skipping decoder gives up after some clips (damaged data): the stream says so and starts
    over frame by frame, so a consumer never mixes frames of the two passes."""
    path = index_videos["h264_bframes.mp4"].path
    want = V.sample_video(path, 3.3, mode="all").frames
    skipping = V._decode_skipping

    def gives_up_after_five(*args):
        for i, clip in enumerate(skipping(*args)):
            if i == 5:
                raise V._NeedsFullDecode()
            yield clip

    monkeypatch.setattr(V, "_decode_skipping", gives_up_after_five)
    assert [j for j, _ in V.VideoClips(path, 3.3)][:7] == [0, 1, 2, 3, 4, 0, 1]
    events = list(V.decode_chunks("v", str(path), 3.3, chunk=2))
    kinds = [k for k, _ in events]
    assert kinds[:3] == ["frames", "frames", "restart"] and kinds[-1] == "done"  # 4 frames sent, 1 dropped
    after = np.concatenate([x for k, x in events[3:] if k == "frames"])
    assert np.array_equal(after, want)
    assert np.array_equal(V.sample_video(path, 3.3).frames, want)


def test_a_long_video_streams_in_bounded_memory(tmp_path):
    """An hour of video decodes in chunks: the frames held at any time do not grow with its length."""
    import tracemalloc

    path = tmp_path / "hour.mp4"
    S.write_video(path, (np.full((48, 64, 3), 40 * (k // 20 % 6), np.uint8) for k in range(3600 * 2)), fps=2,
                  codec="libx264", keyframe_interval=20)
    tracemalloc.start()
    try:
        clips = 0
        for kind, value in V.decode_chunks("hour", str(path), 0.5, chunk=32):
            if kind == "frames":
                clips += len(value)
            del value
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert kind == "done" and clips == 1800  # 1800 frames of 224x224x3 = 271 MB if held at once
    assert peak < 40e6, f"peak {peak / 1e6:.0f} MB"
