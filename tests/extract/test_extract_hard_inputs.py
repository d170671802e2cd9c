"""``r2 extract`` on hard inputs and conditions: a cache folder that cannot be written, a video
id that another file already has in the cache, ambiguous files for an annotated video, several
video streams, silent damage, odd file names and list files."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from r2.cache import FeatureCache
from r2.cli import main
from r2.extract import synthetic as S
from r2.extract.pipeline import ExtractionError, VideoJob, extract_features


def _cli(tiny_clip, *args):
    return CliRunner().invoke(main, ["extract", *map(str, args), "--model", str(tiny_clip.info.path), "-j", "0",
                                     "--no-progress"])


def _one_line_error(result, text: str):
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and text in errors[0], result.output


@pytest.fixture(scope="module")
def two_videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("two")
    for name, color in (("a", "red"), ("b", "blue")):
        S.write_segment_video(root / f"{name}.mp4", [(color, 2.0)], fps=10)
    return root


# --- 1. writes that fail -------------------------------------------------------------------
def test_a_full_disk_at_a_commit_is_one_line_and_keeps_what_was_whole(two_videos, tiny_clip, tmp_path, monkeypatch):
    from r2.cache.writer import VideoSink

    real_commit = VideoSink.commit

    def commit(sink, **attrs):
        if sink.video_id == "b":
            raise OSError(errno.ENOSPC, "Can't synchronously write data (file write failed: errno = 28, ...)")
        return real_commit(sink, **attrs)

    monkeypatch.setattr(VideoSink, "commit", commit)
    out = tmp_path / "cache"
    result = _cli(tiny_clip, two_videos, "--out", out)
    _one_line_error(result, f"cannot write to {out.resolve()}: [Errno 28] No space left on device")
    monkeypatch.undo()
    assert FeatureCache.open(out).video_ids() == ["a"]  # committed when the writer closed: usable
    result = _cli(tiny_clip, two_videos, "--out", out)  # the rerun adds the rest
    assert result.exit_code == 0 and "1 extracted, 1 already cached" in result.output, result.output


def test_a_read_only_output_folder_is_one_line(two_videos, tiny_clip, tmp_path, monkeypatch):
    real_mkdir = os.mkdir

    def mkdir(path, *args, **kwargs):
        if "ro" in Path(path).parts:
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    out = tmp_path / "ro" / "new"
    _one_line_error(_cli(tiny_clip, two_videos, "--out", out),
                    f"cannot write to {out}: [Errno 30] Read-only file system")


def test_a_read_only_existing_cache_fails_at_the_writer_lock_in_one_line(two_videos, tiny_clip, tmp_path,
                                                                        monkeypatch):
    import r2.cache.writer as writer_module
    from r2.extract.pipeline import CacheWriteError

    out = tmp_path / "cache"
    assert _cli(tiny_clip, two_videos / "a.mp4", "--out", out).exit_code == 0

    def read_only_lock(root, prefix):
        raise OSError(errno.EROFS, "Read-only file system", str(Path(root) / "locks" / f".{prefix}.lock.tmp"))

    monkeypatch.setattr(writer_module, "WriterLock", read_only_lock)
    _one_line_error(_cli(tiny_clip, two_videos, "--out", out), "[Errno 30] Read-only file system")
    with pytest.raises(CacheWriteError) as info:  # the API: an ExtractionError and an OSError
        extract_features([VideoJob("b", str(two_videos / "b.mp4"))], [], out, None, workers=0, clip=tiny_clip,
                         progress=False)
    assert isinstance(info.value, ExtractionError) and info.value.errno == errno.EROFS


# --- 2. a video id that the cache has from another file ---------------------------------------
def test_a_video_id_cached_from_a_file_of_another_size_is_refused_a_moved_folder_is_not(tiny_clip, tmp_path):
    import shutil

    for ds, segs in (("dsA", [("red", 2.0)]), ("dsB", [("blue", 1.0), ("checker", 2.0)])):
        S.write_segment_video(tmp_path / ds / "clip1.mp4", segs, fps=10)
    S.write_segment_video(tmp_path / "dsA" / "same.mp4", [("green", 2.0)], fps=10)
    shutil.copy(tmp_path / "dsA" / "same.mp4", tmp_path / "dsB" / "same.mp4")  # the same file in both
    out = tmp_path / "cache"
    assert _cli(tiny_clip, tmp_path / "dsA", "--out", out).exit_code == 0
    before = FeatureCache.open(out).load_video("clip1")
    result = _cli(tiny_clip, tmp_path / "dsB", "--out", out)
    a, b = tmp_path / "dsA" / "clip1.mp4", tmp_path / "dsB" / "clip1.mp4"
    _one_line_error(result, "1 video id(s) are already in")
    assert (f"video 'clip1': cached from {a} ({a.stat().st_size} bytes), now {b} ({b.stat().st_size} bytes)"
            in result.output and "another cache folder" in result.output)
    assert (FeatureCache.open(out).load_video("clip1") == before).all()  # refused before any extraction
    (tmp_path / "dsA").rename(tmp_path / "moved")  # the same files elsewhere: still "already cached"
    result = _cli(tiny_clip, tmp_path / "moved", "--out", out)
    assert result.exit_code == 0 and "0 extracted, 2 already cached" in result.output, result.output


# --- 3. (and 6d) two files for one video id ------------------------------------------------------
def _annotation(path: Path, *vids: str) -> Path:
    import json

    path.write_text("".join(json.dumps({"qid": i, "vid": v, "query": "q", "duration": 2.0,
                                        "relevant_windows": [[0, 1]]}) + "\n" for i, v in enumerate(vids)))
    return path


@pytest.mark.parametrize("files,vid,why", [
    (["a.mp4", "a.mkv"], "a", "same name, different extension"),
    (["s1/x.mp4", "s2/x.mp4"], "x", "same file name in different folders"),
])
def test_an_annotated_video_with_two_candidate_files_is_the_error_it_is_without_annotations(
        tiny_clip, tmp_path, files, vid, why):
    root = tmp_path / "videos"
    for f in files:  # the error comes before any decoding: the files need not be real videos
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).write_bytes(b"x")
    ann = _annotation(tmp_path / "ann.jsonl", vid)
    result = _cli(tiny_clip, root, "-a", ann, "--fps", "1", "--out", tmp_path / "c")
    _one_line_error(result, f"two videos get the id {vid!r}: ")
    assert all(str(root / f) in result.output for f in files) and f"({why})" in result.output, result.output
    assert not (tmp_path / "c").exists()


def test_one_file_reached_by_two_names_is_not_two_candidates():
    """A hardlink (a train/ folder linked into all/) or a symlink is the same file, not an
    ambiguity."""
    import tempfile

    from r2.jobs import _pick_video

    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "all").mkdir()
        (root / "train").mkdir()
        (root / "train" / "x.mp4").write_bytes(b"x")
        os.link(root / "train" / "x.mp4", root / "all" / "x.mp4")
        (root / "alias.mp4").symlink_to(root / "train" / "x.mp4")
        files = [root / "all" / "x.mp4", root / "train" / "x.mp4", root / "alias.mp4"]
        assert _pick_video(files, "x") == files[0]


def test_two_absolute_paths_with_one_file_name_in_a_list_say_why_they_collide(tiny_clip, tmp_path):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "x.mp4").write_bytes(b"x")
    listing = tmp_path / "list.txt"
    listing.write_text(f"{tmp_path / 'a' / 'x.mp4'}\n{tmp_path / 'b' / 'x.mp4'}\n")
    result = _cli(tiny_clip, listing, "--out", tmp_path / "c")
    _one_line_error(result, "two videos get the id 'x'")
    assert "(same file name in different folders)" in result.output and "different extension" not in result.output


# --- 4. several video streams ----------------------------------------------------------------
def _write_streams(path: Path, streams) -> Path:
    """A file with several video streams: ``(codec, width, height, colour, frames, disposition)``
    each, 10 fps, interleaved."""
    from fractions import Fraction

    import av

    tb = Fraction(1, 1000)
    with av.open(str(path), "w") as c:
        outs = []
        for codec, w, h, color, n, disposition in streams:
            s = c.add_stream(codec, rate=10)
            s.width, s.height, s.time_base = w, h, tb
            s.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
            if disposition:
                s.disposition = disposition
            outs.append((s, color, n))
        for k in range(max(n for _, _, n in outs)):
            for s, color, n in outs:
                if k < n:
                    frame = av.VideoFrame.from_ndarray(S.pattern_frame(color, s.width, s.height), format="rgb24")
                    frame.pts, frame.time_base = k * 100, tb
                    for p in s.encode(frame):
                        c.mux(p)
        for s, _, _ in outs:
            for p in s.encode(None):
                c.mux(p)
    return path


def test_the_video_stream_is_the_one_ffmpeg_picks_the_largest_but_never_the_cover_art(tiny_clip, tmp_path):
    import av

    from r2.extract.video import decode_job, is_video_file, sample_video

    two = _write_streams(tmp_path / "two.mkv", [("libx264", 64, 48, "red", 30, 0),
                                                ("libx264", 160, 120, "blue", 30, 0)])
    sv = sample_video(two, 1.0)
    assert sv.stream_index == 1 and sv.frames[..., 2].mean() > 200 > sv.frames[..., 0].mean()  # blue, stream 1
    assert decode_job("two", str(two), 1.0).attrs["stream_index"] == 1
    cover = _write_streams(tmp_path / "cover.mp4", [("mjpeg", 320, 240, "red", 1, av.stream.Disposition.attached_pic),
                                                    ("libx264", 128, 96, "blue", 30, 0)])
    with av.open(str(cover)) as c:  # the cover art is the largest video stream
        assert [int(s.disposition) & 1024 for s in c.streams.video] == [0, 1024]
    sv = sample_video(cover, 1.0)
    assert sv.stream_index == 0 and sv.num_clips == 3 and sv.frames[..., 2].mean() > 200
    assert is_video_file(cover)


# --- 5. damage within the tolerances: kept, and said -------------------------------------------
def test_a_file_cut_within_the_truncation_tolerance_is_kept_with_a_note(tiny_clip, tmp_path):
    import av

    from r2.extract.video import sample_video

    whole = S.write_index_video(tmp_path / "whole.mp4", 300, fps=1, size=(64, 48), keyframe_interval=10, bframes=0,
                                container_options={"movflags": "faststart"}).path
    with av.open(str(whole)) as c:
        pos = [p.pos for p in c.demux(c.streams.video[0]) if p.size]
    data = whole.read_bytes()
    (tmp_path / "cut").mkdir()
    cut = tmp_path / "cut" / "cut.mp4"
    cut.write_bytes(data[:pos[298]])  # the last 2 of 300 frames (2 s) missing: within max(2, 1 %) frames
    assert sample_video(whole, 0.5).notes == []
    sv = sample_video(cut, 0.5)
    assert sv.num_clips == 149 and sv.notes == [
        "frames end at 298.0 s of the 300.0 s its header declares (within the tolerance for a truncated file, so kept: "
        "its end may be missing)"]
    out = tmp_path / "c"
    result = _cli(tiny_clip, tmp_path / "cut", "--out", out, "--fps", "0.5")
    assert result.exit_code == 0 and "notes  : 1 video(s)" in result.output and "frames end at 298.0 s" in result.output
    assert "frames end at 298.0 s" in FeatureCache.open(out).video_attrs("cut")["notes"]


def test_an_edit_lists_pre_roll_is_not_taken_for_frames_that_did_not_decode(tmp_path):
    """A clip cut with stream copy (``ffmpeg -ss X -c copy``) starts before 0: its pre-roll
    packets are marked to be dropped after decoding. That is a healthy file: no note."""
    import av
    import numpy as np

    from r2.extract.video import sample_video

    src, cut = tmp_path / "src.mp4", tmp_path / "cut.mp4"
    with av.open(str(src), "w") as out:
        s = out.add_stream("libx264", rate=25, options={"bf": "0", "g": "25"})
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for i in range(100):
            img = np.zeros((48, 64, 3), np.uint8)
            img[:, (i * 3) % 64:] = 200
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    with av.open(str(src)) as inp, av.open(str(cut), "w") as out:
        ist = inp.streams.video[0]
        ost = out.add_stream_from_template(ist)
        shift = int(0.4 / ist.time_base)  # the first 10 frames before 0
        for p in inp.demux(ist):
            if p.dts is None:
                continue
            p.pts -= shift
            p.dts -= shift
            p.stream = ost
            out.mux(p)
    with av.open(str(cut)) as c:
        assert sum(bool(p.is_discard) for p in c.demux(c.streams.video[0]) if p.size) == 10
    for mode in ("all", "skip"):
        assert sample_video(str(cut), 2, mode=mode).notes == [], mode


def test_frames_that_do_not_decode_in_the_middle_are_counted_in_a_note(tiny_clip, tmp_path):
    from r2.extract.video import decode_job

    whole = S.write_index_video(tmp_path / "whole.mp4", 300, fps=10, size=(64, 48), keyframe_interval=20,
                                container_options={"movflags": "faststart"}).path
    data = bytearray(whole.read_bytes())
    at = len(data) // 2
    data[at:at + 2000] = b"\0" * 2000
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(bytes(data))
    assert "notes" not in decode_job("whole", str(whole), 1.0).attrs
    result = decode_job("damaged", str(damaged), 1.0)
    assert result.error is None and result.frames.shape[0] == 30
    count, rest = result.attrs["notes"].split(" ", 1)
    assert int(count) >= 10 and rest.startswith("of 300 frames could not be decoded (damaged data"), result.attrs


# --- 6. small ones -------------------------------------------------------------------------------
def test_names_that_are_only_dots_are_said_to_be_skipped_and_refused_when_named(tiny_clip, tmp_path):
    root = tmp_path / "videos"
    root.mkdir()
    for name in ("..mp4", "...mp4"):
        (root / name).write_bytes(b"x")
    S.write_segment_video(root / "ok.mp4", [("red", 2.0)], fps=10)
    result = _cli(tiny_clip, root, "--out", tmp_path / "c")
    assert result.exit_code == 0 and "1 extracted" in result.output, result.output
    assert "warning: skipped 2 file(s) whose name is only dots before the extension" in result.output
    assert str(root / "..mp4") in result.output and str(root / "...mp4") in result.output
    _one_line_error(_cli(tiny_clip, root / "..mp4", "--out", tmp_path / "c2"),
                    "its name is only dots before the extension, so it has no video id")


def test_a_list_file_with_a_bom_works_and_its_missing_entries_name_their_line(tiny_clip, tmp_path):
    S.write_segment_video(tmp_path / "v" / "a.mp4", [("red", 2.0)], fps=10)
    listing = tmp_path / "list.txt"
    listing.write_bytes("\ufeffv/a.mp4\r\n# a comment\r\nv/missing.mp4\r\n".encode("utf-8"))
    out = tmp_path / "c"
    result = _cli(tiny_clip, listing, "--out", out)
    assert result.exit_code == 1, result.output  # the missing one fails, the other is extracted
    assert FeatureCache.open(out).video_ids() == ["v/a"]
    assert f"missing.mp4: file not found (line 3 of {listing})" in result.output
    listing.write_text("v/a.mp4\nv/a.mkv\n")
    (tmp_path / "v" / "a.mkv").write_bytes(b"x")
    _one_line_error(_cli(tiny_clip, listing, "--out", out), f"(line 2 of {listing})")


@pytest.mark.parametrize("value", ["inf", "nan", "61"])
def test_fps_that_is_not_a_clip_rate_is_a_usage_error(two_videos, tiny_clip, tmp_path, value):
    result = _cli(tiny_clip, two_videos, "--out", tmp_path / "c", "--fps", value)
    assert result.exit_code == 2 and "Invalid value for '--fps'" in result.output, result.output
    assert "is not a clip rate" in result.output and "manifest" not in result.output
    assert not (tmp_path / "c").exists()
    with pytest.raises(ValueError, match="fps must be a positive finite number"):
        extract_features([], [], tmp_path / "c", None, fps=float(value) if value != "61" else float("inf"),
                         workers=0, clip=tiny_clip, progress=False)


def test_a_frame_too_extreme_to_scale_says_so(tmp_path):
    from r2.extract.video import decode_job

    strip = tmp_path / "strip.mkv"
    S.write_video(strip, [S.pattern_frame("red", 16000, 1) for _ in range(10)], fps=10, codec="ffv1",
                  pix_fmt="yuv444p")
    result = decode_job("strip", str(strip), 1.0)
    assert result.error == ("frame size 16000x1 is too extreme to scale to 224: its short side at 224 px makes it "
                            "3584000x224, larger than FFmpeg's scaler takes (a strip, not a picture)")


def test_an_annotated_vid_in_nfc_matches_a_file_named_in_nfd(tiny_clip, tmp_path):
    import unicodedata

    nfc = unicodedata.normalize("NFC", "café")
    root = tmp_path / "videos"
    S.write_segment_video(root / (unicodedata.normalize("NFD", "café") + ".mp4"), [("red", 2.0)], fps=10)
    out = tmp_path / "c"
    result = _cli(tiny_clip, root, "-a", _annotation(tmp_path / "ann.jsonl", nfc), "--fps", "1", "--out", out)
    assert result.exit_code == 0, result.output
    assert FeatureCache.open(out).video_ids() == [nfc]
