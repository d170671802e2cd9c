"""End to end: real videos (PyAV) + the tiny CLIP → r2.cache, compared with a direct CLIPModel."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from r2.cache import FeatureCache, merge, verify
from r2.cli import main
from r2.extract import synthetic as S
from r2.extract.pipeline import SAMPLING, TOKEN_FORM, QueryJob, VideoJob, extract_features, in_shard
from r2.extract.preprocess import CLIP_MEAN, CLIP_STD
from r2.extract.video import clip_count, sample_video

GOOD = {  # id -> (relative path, segments, fps, codec)
    "red_blue": ("red_blue.mp4", [("red", 2.0), ("blue", 3.0)], 10, "libx264"),
    "sub/green": ("sub/green.mkv", [("green", 4.2)], 12, "libx264"),
    "two words ü": ("two words ü.webm", [("yellow", 2.0), ("cyan", 2.5)], 8, "libvpx-vp9"),
    "moving": ("moving.mp4", [("moving", 3.0), ("checker:red", 3.0)], 15, "libx264"),
    "old": ("old.avi", [("magenta", 3.0)], 10, "mpeg4"),
}
QUERIES = [QueryJob("q1", "a red door"), QueryJob("q2", "a man walks a dog on the beach at sunset"),
           QueryJob("3", "")]


def write_good(root: Path):
    for vid, (rel, segs, fps, codec) in GOOD.items():
        S.write_segment_video(root / rel, segs, fps=fps, codec=codec, keyframe_interval=fps, bframes=2
                              if codec == "libx264" else None)
    return [VideoJob(vid, str(root / GOOD[vid][0])) for vid in GOOD]


def write_bad(root: Path):
    (root / "zero.mp4").write_bytes(b"")
    (root / "text.mp4").write_text("not a video\n" * 10)
    ok = S.write_segment_video(root / "tmp_ok.mp4", [("red", 2), ("blue", 2)], fps=10)
    data = ok.path.read_bytes()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 2])
    ok.path.unlink()
    S.write_audio_only(root / "no video.mp4")
    mkv = S.write_segment_video(root / "tmp_ok.mkv", [("red", 5), ("blue", 5)], fps=10, size=(96, 64))
    data = mkv.path.read_bytes()
    (root / "cut.mkv").write_bytes(data[: len(data) * 6 // 10])  # header (40 s declared) kept, data cut
    mkv.path.unlink()
    return {"zero": "empty file", "text": "not a readable video", "truncated": "not a readable video",
            "no video": "no video stream", "cut": "truncated or damaged: frames end at"}


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    return root, write_good(root)


def direct_features(model, path, fps):
    """What the cache must hold: CLIPModel hidden states on the benchmark frames, computed by hand."""
    frames = sample_video(path, fps).frames.astype(np.float32) / 255.0
    x = (frames - np.array(CLIP_MEAN, np.float32)) / np.array(CLIP_STD, np.float32)
    with torch.no_grad():
        hs = model.vision_model(pixel_values=torch.from_numpy(x).permute(0, 3, 1, 2),
                                output_hidden_states=True).hidden_states
    return torch.stack([hs[i] for i in (1, 2, 3, 4)], dim=1).numpy()


def test_cached_features_equal_direct_clip(videos, tiny_clip, tiny_clip_dir, tmp_path):
    from transformers import CLIPModel

    root, jobs = videos
    out = tmp_path / "cache"
    summary = extract_features(jobs, QUERIES, out, tiny_clip_dir, fps=1.0, batch_size=7, workers=0,
                               clip=tiny_clip, progress=False)
    assert summary.ok and summary.videos_extracted == len(GOOD) and summary.queries_extracted == 3
    cache = FeatureCache.open(out)
    m = cache.manifest
    assert m["layers"] == [1, 2, 3, 4] and m["fps"] == 1.0 and m["dtype"] == "float16"
    assert m["video_width"] == 64 and m["preprocessing"]["size"] == 224 and m["model_config_hash"]
    assert m["token_form"] == TOKEN_FORM and m["sampling"] == SAMPLING and m["precision"] == "fp32"
    assert sorted(cache.video_ids()) == sorted(GOOD)
    model = CLIPModel.from_pretrained(tiny_clip_dir).eval()
    total = 0
    for vid, (rel, segs, fps, _) in GOOD.items():
        got = cache.load_video(vid)
        want = direct_features(model, root / rel, 1.0)
        duration = sum(s for _, s in segs)
        assert got.shape == (clip_count(int(duration * fps) / fps, 1.0), 4, 50, 64), vid  # round half up
        np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3 * np.abs(want).max())  # fp16 storage
        attrs = cache.video_attrs(vid)
        assert len(attrs["sample_times"]) == got.shape[0] and attrs["fps"] == 1.0
        assert attrs["duration"] == pytest.approx(int(duration * fps) / fps, abs=2e-3)  # mkv: ms ticks
        total += got.shape[0]
    assert summary.clips == total and summary.bytes_written > 0
    # clip j of red_blue shows red for j < 2, blue after: features change with the content
    rb = cache.load_video("red_blue")[:, -1].mean(axis=1)
    assert np.allclose(rb[0], rb[1], atol=1e-2) and not np.allclose(rb[1], rb[2], atol=1e-2)
    # queries: SOT..EOT token features of the same layers, mask all real tokens
    feats, lengths = tiny_clip.text_features([q.text for q in QUERIES])
    for q, f, n in zip(QUERIES, feats, lengths):
        qf, mask = cache.load_query(q.query_id)
        assert qf.shape == (4, n, 64) and mask.shape == (n,) and mask.all()
        np.testing.assert_allclose(qf, f, rtol=2e-3, atol=2e-3 * np.abs(f).max())
    assert cache.load_query("3")[0].shape[1] == 2  # empty text: SOT, EOT
    assert verify(out).ok


def test_bad_inputs_reported_others_extracted_rerun_retries_only_failed(videos, tiny_clip, tmp_path):
    root = tmp_path / "in"
    shutil.copytree(videos[0], root)
    reasons = write_bad(root)
    out = tmp_path / "cache"
    runner = CliRunner()
    args = ["extract", str(root), "--out", str(out), "--model", str(tiny_clip.info.path), "--fps", "0.5",
            "--workers", "0", "--no-progress"]
    result = runner.invoke(main, args)
    assert result.exit_code == 1, result.output
    lines = [json.loads(x) for x in (out / "failures.jsonl").read_text().splitlines()]
    assert {x["video_id"]: x["reason"] for x in lines}.keys() == reasons.keys()
    for x in lines:
        assert reasons[x["video_id"]] in x["reason"] and Path(x["path"]).name.startswith(x["video_id"])
    assert f"{len(GOOD)} extracted" in result.output and f"{len(reasons)} failed" in result.output
    cache = FeatureCache.open(out)
    assert sorted(cache.video_ids()) == sorted(GOOD)
    assert verify(out).ok
    # fix one bad input: the rerun extracts only that one
    (root / "zero.mp4").unlink()
    S.write_segment_video(root / "zero.mp4", [("white", 2.0)], fps=10)
    result = runner.invoke(main, args)
    assert result.exit_code == 1 and "1 extracted" in result.output and f"{len(GOOD)} already cached" in result.output
    assert len((out / "failures.jsonl").read_text().splitlines()) == len(reasons) - 1
    for name in ("text", "truncated", "no video", "cut"):  # remove the rest: a clean run, exit 0
        next(root.glob(name + ".m[pk][4v]")).unlink()
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert not (out / "failures.jsonl").exists()
    assert sorted(FeatureCache.open(out).video_ids()) == sorted(list(GOOD) + ["zero"])


def test_shards_split_deterministically_and_merge_to_the_full_cache(videos, tiny_clip, tmp_path):
    root, jobs = videos
    full = tmp_path / "full"
    extract_features(jobs, QUERIES, full, None, fps=0.5, workers=0, clip=tiny_clip, progress=False)
    parts = []
    for i in range(2):
        part = tmp_path / f"part{i}"
        s = extract_features(jobs, QUERIES, part, None, fps=0.5, workers=2, clip=tiny_clip, num_shards=2,
                             shard_index=i, progress=False)
        assert s.ok
        ids = FeatureCache.open(part).video_ids()
        assert sorted(ids) == sorted(j.video_id for j in jobs if in_shard(j.video_id, 2, i))
        parts.append(part)
    assert {in_shard(j.video_id, 2, 0) for j in jobs} == {True, False}  # both shards got work
    merged = tmp_path / "merged"
    merge(parts, merged)
    a, b = FeatureCache.open(full), FeatureCache.open(merged)
    assert sorted(a.video_ids()) == sorted(b.video_ids()) and sorted(a.query_ids()) == sorted(b.query_ids())
    for vid in a.video_ids():  # parallel decoding (2 workers) gives the same features as serial
        np.testing.assert_array_equal(a.load_video(vid), b.load_video(vid))
    assert verify(merged).ok


def test_cli_annotations_custom_jsonl_and_youtube_auto(videos, tiny_clip, tmp_path):
    root, jobs = videos
    rows = [
        {"qid": 7, "vid": "red_blue", "query": "the screen turns blue", "duration": 5.0,
         "relevant_windows": [[2, 5]]},
        {"qid": 8, "vid": "red_blue", "query": "red", "duration": 5.0, "relevant_windows": [[0, 2]]},
        {"qid": 9, "vid": "missing_video", "query": "nothing", "duration": 4.0, "relevant_windows": [[0, 2]]},
    ]
    ann = tmp_path / "custom.jsonl"
    ann.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "c1"
    runner = CliRunner()
    model = str(tiny_clip.info.path)
    result = runner.invoke(main, ["extract", str(root), "-a", str(ann), "--out", str(out), "--model", model,
                                  "--fps", "1", "-j", "0", "--no-progress"])
    assert result.exit_code == 1, result.output  # missing_video is reported
    assert "no video file named missing_video" in (out / "failures.jsonl").read_text()
    cache = FeatureCache.open(out)
    assert cache.video_ids() == ["red_blue"] and sorted(cache.query_ids()) == ["7", "8", "9"]
    assert cache.load_video("red_blue").shape[0] == 5

    # YouTube Highlights "auto": one frame per annotated clip, rate = clips / (frames / fps)
    yt = {"red_blue": {"fps": 10.0, "frames": "50", "domain": "dog",
                       "info": ["dog", None, [], 1, "u", "a red and blue video", "", None],
                       "clip": [[0.0, 10.0], [5.0, 15.0], [10.0, 20.0], [15.0, 25.0], [20.0, 30.0], [25.0, 35.0],
                                [30.0, 40.0], [35.0, 45.0], [40.0, 50.0]],
                       "match": [-1, -1, 0, 1, 1, 1, 0, -1, -1]}}
    ann = tmp_path / "youtube_anno.json"
    ann.write_text(json.dumps(yt))
    out = tmp_path / "c2"
    result = runner.invoke(main, ["extract", str(root), "-a", str(ann), "-d", "youtube", "--out", str(out),
                                  "--model", model, "-j", "0", "--no-progress"])
    assert result.exit_code == 0, result.output
    cache = FeatureCache.open(out)
    assert cache.manifest["fps"] is None
    assert cache.load_video("red_blue").shape[0] == 9  # len(match)
    assert cache.video_attrs("red_blue")["fps"] == pytest.approx(9 / 5.0)
    assert cache.query_ids() == ["red_blue"]  # keyed by the video id, text = the title
    assert cache.query_attrs("red_blue")["text"] == "a red and blue video"


def test_cli_youtube_video_that_does_not_match_its_annotation_fails_and_a_rounding_difference_is_shown(
        videos, tiny_clip, tmp_path):
    """red_blue is 5 s at 10 fps (50 frames). An annotation whose frames say 500 asks for 9 clips at
    0.18 fps, where the file gives 1: a failure (exit 1), not 1 frame + 8 copies. frames 56: 8 clips
    for 9 annotated, the rounding: extracted (padded), and the summary says so."""
    root, _ = videos
    clip = [[5.0 * i, 5.0 * i + 10.0] for i in range(9)]
    info = ["dog", None, [], 1, "u", "a title", "", None]
    yt = {"red_blue": {"fps": 10.0, "frames": "500", "domain": "dog", "info": info, "clip": clip, "match": [1] * 9},
          "moving": {"fps": 15.0, "frames": "100", "domain": "dog", "info": info, "clip": clip, "match": [1] * 9}}
    ann = tmp_path / "youtube_anno.json"
    ann.write_text(json.dumps(yt))
    out = tmp_path / "c"
    result = CliRunner().invoke(main, ["extract", str(root), "-a", str(ann), "-d", "youtube", "--out", str(out),
                                       "--model", str(tiny_clip.info.path), "-j", "0", "--no-progress"])
    assert result.exit_code == 1, result.output
    (line,) = [json.loads(x) for x in (out / "failures.jsonl").read_text().splitlines()]
    assert line["video_id"] == "red_blue"
    assert line["reason"].startswith("does not match its annotation: 1 clips decodable at 0.18 fps (5.0 s), 9 annotated")
    # moving: 6 s at 15 fps = 90 frames, the annotation says 100: 9 * 15 / 100 = 1.35 fps -> round(8.1) = 8 clips
    assert FeatureCache.open(out).load_video("moving").shape[0] == 9
    assert "notes  : 1 video(s)" in result.output
    assert "moving.mp4: clip count 8 at 1.35 fps padded with the last frame to the 9 annotated" in result.output


def test_cli_annotations_vid_with_its_extension_and_a_missing_folder(videos, tiny_clip, tmp_path):
    """A vid written with its file's extension ("sub/green.mkv") is that file (the cache id is
    the vid as written); a misspelt videos folder is named as missing."""
    root, jobs = videos
    ann = tmp_path / "ext.jsonl"
    ann.write_text(json.dumps({"qid": 1, "vid": "sub/green.mkv", "query": "green", "duration": 4.2,
                               "relevant_windows": [[0, 4]]}) + "\n")
    out = tmp_path / "c"
    args = ["-a", str(ann), "--out", str(out), "--model", str(tiny_clip.info.path), "--fps", "1", "-j", "0",
            "--no-progress"]
    result = CliRunner().invoke(main, ["extract", str(root), *args])
    assert result.exit_code == 0, result.output
    assert FeatureCache.open(out).video_ids() == ["sub/green.mkv"]
    result = CliRunner().invoke(main, ["extract", str(root / "vidoes"), *args])
    assert result.exit_code == 1 and f"Error: {root / 'vidoes'}: no such folder" in result.output


def test_a_query_id_with_another_sentence_is_refused_not_skipped(videos, tiny_clip, tmp_path):
    """Two annotation files that both number their queries from 0: the second one's query 0
    is not "already cached" (its features would be the first one's sentence's)."""
    root, jobs = videos
    out = tmp_path / "c"
    model = str(tiny_clip.info.path)
    runner = CliRunner()

    def extract(rows, name):
        ann = tmp_path / name
        ann.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return ann, runner.invoke(main, ["extract", str(root), "-a", str(ann), "--out", str(out),
                                         "--model", model, "--fps", "1", "-j", "0", "--no-progress"])

    row = {"vid": "red_blue", "duration": 5.0, "relevant_windows": [[2, 5]]}
    _, result = extract([dict(row, qid=0, query="the screen turns blue"),
                         dict(row, qid=1, query="red")], "train.jsonl")
    assert result.exit_code == 0, result.output
    before = FeatureCache.open(out).load_query("1")[0]
    _, result = extract([dict(row, qid=0, query="the screen turns blue"),
                         dict(row, qid=1, query="a red screen")], "val.jsonl")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert ("1 query id(s) are already in" in result.output
            and "query '1': cached 'red', now 'a red screen'" in result.output), result.output
    cache = FeatureCache.open(out)
    assert cache.query_attrs("1")["text"] == "red"
    np.testing.assert_array_equal(cache.load_query("1")[0], before)


def test_the_hf_resize_is_recorded_and_a_cache_of_the_earlier_one_is_not_resumed(videos, tiny_clip, tmp_path):
    """resize="hf" now reproduces Pillow exactly (each pass rounded to uint8): its manifest says
    so, and a cache written by the earlier single-rounding resize ("bicubic") is not continued
    with frames of the other recipe."""
    from r2.cache import CacheError
    from r2.extract.preprocess import PIL_BICUBIC

    root, jobs = videos
    out = tmp_path / "c"
    extract_features(jobs[:1], [], out, None, fps=0.5, workers=0, clip=tiny_clip, progress=False, resize="hf")
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["preprocessing"]["resize"] == "hf" and manifest["preprocessing"]["interpolation"] == PIL_BICUBIC
    assert FeatureCache.open(tmp_path / "c").manifest["preprocessing"]["interpolation"] == PIL_BICUBIC
    default = tmp_path / "d"
    extract_features(jobs[:1], [], default, None, fps=0.5, workers=0, clip=tiny_clip, progress=False)
    assert json.loads((default / "manifest.json").read_text())["preprocessing"]["interpolation"] == "bicubic"
    manifest["preprocessing"]["interpolation"] = "bicubic"  # as the earlier hf resize recorded it
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(CacheError, match="preprocessing"):
        extract_features(jobs[1:2], [], out, None, fps=0.5, workers=0, clip=tiny_clip, progress=False, resize="hf")


def test_incompatible_cache_is_refused(videos, tiny_clip, tmp_path):
    root, jobs = videos
    out = tmp_path / "c"
    extract_features(jobs[:1], [], out, None, fps=0.5, workers=0, clip=tiny_clip, progress=False)
    from r2.cache import CacheError

    with pytest.raises(CacheError, match="fps"):
        extract_features(jobs[:1], [], out, None, fps=1.0, workers=0, clip=tiny_clip, progress=False)
    from r2.extract.clip import FrozenCLIP

    bf16 = FrozenCLIP(tiny_clip.info.path, precision="bf16")
    with pytest.raises(CacheError, match='precision: the cache has "fp32", requested "bf16"'):
        extract_features(jobs[:1], [], out, None, fps=0.5, workers=0, clip=bf16, progress=False)
    # a cache written before the manifest recorded the precision holds fp32 features
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["precision"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CacheError, match='precision: the cache has "fp32", requested "bf16"'):
        extract_features(jobs[:1], [], out, None, fps=0.5, workers=0, clip=bf16, progress=False)
    s = extract_features(jobs[:2], [], out, None, fps=0.5, workers=0, clip=tiny_clip, progress=False)
    assert s.ok and s.videos_skipped == 1 and s.videos_extracted == 1
    bf16_out = tmp_path / "bf16"  # and the other way round: a bf16 cache refuses fp32 features
    extract_features(jobs[:1], [], bf16_out, None, fps=0.5, workers=0, clip=bf16, progress=False)
    with pytest.raises(CacheError, match='precision: the cache has "bf16", requested "fp32"'):
        extract_features(jobs[:2], [], bf16_out, None, fps=0.5, workers=0, clip=tiny_clip, progress=False)


def test_the_same_model_in_another_folder_extends_the_cache_and_other_weights_are_refused(
        videos, tiny_clip, tiny_clip_dir, tmp_path):
    import hashlib

    from r2.cache import CacheError
    from r2.extract.clip import FrozenCLIP
    from r2.extract.tiny import make_tiny_clip

    root, jobs = videos
    out = tmp_path / "c"
    extract_features(jobs[:1], [], out, None, fps=0.5, workers=0, clip=tiny_clip, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    weights = (tiny_clip_dir / "model.safetensors").read_bytes()
    assert manifest["model_weights_hash"] == hashlib.sha256(weights).hexdigest()[:16]  # = sha256sum
    assert manifest["model_id"] == str(tiny_clip_dir)
    # the folder copied elsewhere (another machine, another path): the same model
    moved = shutil.copytree(tiny_clip_dir, tmp_path / "elsewhere" / "clip")
    s = extract_features(jobs[:2], [], out, None, fps=0.5, workers=0, clip=FrozenCLIP(moved), progress=False)
    assert s.ok and s.videos_skipped == 1 and s.videos_extracted == 1
    # the same config with other weights: refused, naming the weights
    other = make_tiny_clip(tmp_path / "other", seed=1)
    with pytest.raises(CacheError, match="model_weights_hash: the cache has"):
        extract_features(jobs[:3], [], out, None, fps=0.5, workers=0, clip=FrozenCLIP(other), progress=False)


def test_manifest_texts_that_caches_compare_are_pinned():
    """The cache compares token_form and sampling character for character when a run resumes or
    caches merge: a rewording would make every existing cache refuse to resume."""
    why = ("changing this text makes existing caches incompatible (they refuse to resume or merge); "
           "change it only when the features change")
    assert TOKEN_FORM == ("hidden states (raw residual stream: before post_layernorm / final_layer_norm and the "
                          "projections) of the kept layers; video: all tokens (CLS + patches) per frame; "
                          "query: tokens SOT..EOT"), why
    assert SAMPLING == ("ffmpeg fps filter rule: clip n = last frame with round(t*fps) <= n; "
                        "round(duration*fps) clips"), why


@pytest.mark.parametrize("value,reason", [
    (1e5, "features not stored: values up to 1e+05, beyond the float16 range (+-65504); extract with --dtype "
          "float32"),
    (float("nan"), "features not stored: video 'white' has NaN or infinite values"),  # the cache refuses them
])
def test_a_video_whose_features_the_cache_refuses_is_a_failure_and_the_others_are_extracted(
        tiny_clip, tmp_path, monkeypatch, value, reason):
    """Features the cache cannot store for one video (beyond the float16 range, NaN) make that video a
    failure with its path and the reason; the run goes on, and a rerun retries only that one."""
    colours = ("red", "white", "blue")
    jobs = [VideoJob(c, str(S.write_segment_video(tmp_path / "in" / f"{c}.mp4", [(c, 3.0)], fps=10,
                                                  size=(64, 48)).path)) for c in colours]
    video_features = tiny_clip.video_features

    def overflowing_on_white(x):  # (B, 3, H, W) normalised: a white frame is ~2 everywhere
        out = video_features(x)
        out[x.float().mean(dim=(1, 2, 3)) > 1.5] = value
        return out

    monkeypatch.setattr(tiny_clip, "video_features", overflowing_on_white)
    out = tmp_path / "cache"
    summary = extract_features(jobs, [], out, None, fps=2, batch_size=4, workers=0, clip=tiny_clip, progress=False)
    assert not summary.ok and summary.videos_extracted == 2 and summary.clips == 12
    (failure,) = summary.failures
    assert failure.video_id == "white" and failure.path == str(tmp_path / "in" / "white.mp4")
    assert failure.reason == reason
    assert [json.loads(x) for x in (out / "failures.jsonl").read_text().splitlines()] == [failure.to_dict()]
    assert f"{failure.path}: features not stored" in summary.format()
    assert sorted(FeatureCache.open(out).video_ids()) == ["blue", "red"] and verify(out).ok

    monkeypatch.undo()
    again = extract_features(jobs, [], out, None, fps=2, batch_size=4, workers=0, clip=tiny_clip, progress=False)
    assert again.ok and again.videos_extracted == 1 and again.videos_skipped == 2
    assert not (out / "failures.jsonl").exists()
    assert FeatureCache.open(out).load_video("white").shape == (6, 4, 50, 64)


def test_a_failed_write_of_the_failures_list_keeps_the_previous_one(tiny_clip, tmp_path, monkeypatch):
    """failures.jsonl is replaced atomically: a write that fails half-way (a full disk) leaves the
    previous list whole and no temporary file."""
    import builtins
    import errno

    (tmp_path / "in").mkdir()
    jobs = []
    for name in ("zero", "empty"):
        (tmp_path / "in" / f"{name}.mp4").write_bytes(b"")
        jobs.append(VideoJob(name, str(tmp_path / "in" / f"{name}.mp4")))
    out = tmp_path / "cache"
    assert len(extract_features(jobs, [], out, None, workers=0, clip=tiny_clip, progress=False).failures) == 2
    before = (out / "failures.jsonl").read_text()
    assert len(before.splitlines()) == 2
    real_open = builtins.open

    class DiskFull:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, data):
            self.fh.write(data[:len(data) // 2])
            self.fh.flush()
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.fh, name)

    def fills_the_disk(file, mode="r", *args, **kwargs):
        fh = real_open(file, mode, *args, **kwargs)
        is_list = "failures" in os.path.basename(os.fspath(file)) if not isinstance(file, int) else False
        return DiskFull(fh) if is_list and ("w" in mode or "a" in mode) else fh

    monkeypatch.setattr(builtins, "open", fills_the_disk)
    with pytest.raises(OSError, match="No space left"):
        extract_features(jobs, [], out, None, workers=0, clip=tiny_clip, progress=False)
    monkeypatch.undo()
    assert (out / "failures.jsonl").read_text() == before
    assert sorted(p.name for p in out.iterdir() if "failures" in p.name) == ["failures.jsonl"]


def test_cli_help_and_make_tiny_clip(tmp_path):
    runner = CliRunner()
    for cmd in (["extract", "--help"], ["make-tiny-clip", "--help"]):
        result = runner.invoke(main, cmd)
        assert result.exit_code == 0 and "Usage" in result.output
    result = runner.invoke(main, ["make-tiny-clip", str(tmp_path / "m")])
    assert result.exit_code == 0 and (tmp_path / "m" / "model.safetensors").exists()
    result = runner.invoke(main, ["make-tiny-clip", str(tmp_path / "m")])
    assert result.exit_code != 0 and "not empty" in result.output
    # offline, a model that is not on disk is a clear error naming it (a video is there, so it is
    # the model that stops the run, not "no video files")
    S.write_segment_video(tmp_path / "videos" / "v.mp4", [("red", 2.0)], fps=10)
    result = runner.invoke(main, ["extract", "--out", str(tmp_path / "c"), "--model", "nobody/not-here",
                                  str(tmp_path / "videos")])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert "model 'nobody/not-here' is not on disk" in result.output and "--model" in result.output
    assert "hf download nobody/not-here" in result.output and "Traceback" not in result.output


def test_cli_list_file_and_dataset_preset(videos, tiny_clip, tmp_path):
    root, jobs = videos
    listing = root / "list.txt"
    listing.write_text("# two of them\nred_blue.mp4\n\nsub/green.mkv\n")
    out = tmp_path / "c"
    result = CliRunner().invoke(main, ["extract", str(listing), "-d", "charades", "--out", str(out),
                                       "--model", str(tiny_clip.info.path), "-j", "0", "--no-progress"])
    assert result.exit_code == 0, result.output
    cache = FeatureCache.open(out)
    assert cache.manifest["fps"] == 1.0  # Charades-STA preset: 1 fps
    assert sorted(cache.video_ids()) == ["red_blue", "sub/green"]
    assert cache.load_video("red_blue").shape[0] == 5


def test_decode_side_does_not_import_torch(tmp_path):
    import subprocess
    import sys

    code = ("import sys, r2.extract, r2.extract.video, r2.extract.pipeline, r2.extract.synthetic\n"
            "assert 'torch' not in sys.modules\nprint('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_cli_tacos_camera_file_names(tiny_clip, tmp_path):
    """TACoS annotations say ``s30-d52``; the video file is ``s30-d52-cam-002.avi``; the cache key is the vid."""
    folder = tmp_path / "videos"
    S.write_segment_video(folder / "s30-d52-cam-002.avi", [("red", 3.0), ("green", 3.0)], fps=10, codec="mpeg4")
    ann = tmp_path / "test.jsonl"
    ann.write_text(json.dumps({"qid": "s30-d52_0", "query": "She took out kiwi", "duration": 6.0,
                               "vid": "s30-d52", "relevant_windows": [[0.5, 2.5]]}) + "\n")
    out = tmp_path / "c"
    result = CliRunner().invoke(main, ["extract", str(folder), "-a", str(ann), "-d", "tacos", "--out", str(out),
                                       "--model", str(tiny_clip.info.path), "-j", "0", "--no-progress"])
    assert result.exit_code == 0, result.output
    cache = FeatureCache.open(out)
    assert cache.video_ids() == ["s30-d52"] and cache.query_ids() == ["s30-d52_0"]
    assert cache.manifest["fps"] == 0.5 and cache.load_video("s30-d52").shape[0] == 3


@pytest.mark.parametrize("args,message", [
    (["--layers", "5"], "--layers 5: out of range 0..4"),
    (["--layers", "2,1"], "--layers 2,1: give distinct hidden-state indices in ascending order"),
    (["--layers", "a,b"], "Invalid value for --layers: expected comma-separated integers"),
    (["--batch-size", "0"], "Invalid value for '--batch-size' / '-b': 0 is not in the range x>=1"),
    (["--workers", "-1"], "Invalid value for '--workers' / '-j': -1 is not in the range x>=0"),
    (["--fps", "0"], "Invalid value for '--fps': 0.0 is not in the range x>0"),
    (["--num-shards", "2", "--shard-index", "2"], "Invalid value for --shard-index: must be in 0..1"),
    (["--device", "cuda:7" if torch.cuda.device_count() < 8 else "cuda:99"], "--device cuda:"),
    (["--model", "no/such/folder/"], "--model no/such/folder/: no such folder"),
])
def test_cli_bad_options_are_one_line_errors(videos, tiny_clip, tmp_path, args, message):
    root, _ = videos
    base = ["extract", str(root), "--out", str(tmp_path / "c"), "--model", str(tiny_clip.info.path), "-j", "0",
            "--no-progress"]
    result = CliRunner().invoke(main, base + args)
    assert result.exit_code in (1, 2) and isinstance(result.exception, SystemExit), result.output
    assert message in result.output and "Traceback" not in result.output, result.output
    assert not (tmp_path / "c").exists()  # refused before any work


def test_cli_single_video_file_and_binary_list_file(videos, tiny_clip, tmp_path):
    root, _ = videos
    out = tmp_path / "c"
    model = str(tiny_clip.info.path)
    result = CliRunner().invoke(main, ["extract", str(root / "sub" / "green.mkv"), str(root / "red_blue.mp4"),
                                       "--out", str(out), "--model", model, "-j", "0", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert sorted(FeatureCache.open(out).video_ids()) == ["green", "red_blue"]  # a video file: id = its stem
    junk = tmp_path / "videos.dat"  # not a video extension, not text: neither a video nor a list
    junk.write_bytes((root / "red_blue.mp4").read_bytes()[:500])
    result = CliRunner().invoke(main, ["extract", str(junk), "--out", str(tmp_path / "c2"), "--model", model])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"{junk}: neither a list of video paths (not UTF-8 text) nor a video: " in result.output, result.output
    image = tmp_path / "frame.png"  # PyAV opens it, as an image: named so (was "not a video file PyAV can open")
    import av

    with av.open(str(image), "w") as c:
        s = c.add_stream("png")
        s.width, s.height, s.pix_fmt = 64, 48, "rgb24"
        for packet in [*s.encode(av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")),
                       *s.encode()]:
            c.mux(packet)
    result = CliRunner().invoke(main, ["extract", str(image), "--out", str(tmp_path / "c3"), "--model", model])
    assert result.exit_code == 1 and "nor a video: a still image (png), not a video; give folders" in result.output
    result = CliRunner().invoke(main, ["predict", str(image), "-q", "red", "-k", str(tmp_path / "no-run")])
    assert result.exit_code == 1 and f"Error: {image}: a still image (png), not a video" in result.output


def test_cli_camcorder_and_other_containers_pyav_reads_are_videos(tiny_clip, tmp_path):
    """AVCHD .MTS/.m2ts (MPEG-TS) are collected from a folder; with --annotations a file whose
    stem is the vid counts whatever its extension if PyAV opens it as a video (not the still
    thumbnail beside it); a binary file named on the command line is a video, not a list."""
    src = tmp_path / "src"
    ts = S.write_segment_video(src / "a.ts", [("red", 2.0)], fps=10, size=(64, 48)).path.read_bytes()
    mp4 = S.write_segment_video(src / "b.mp4", [("blue", 3.0)], fps=10, size=(64, 48)).path.read_bytes()
    root = tmp_path / "cam"
    root.mkdir()
    (root / "cam01.MTS").write_bytes(ts)
    (root / "cam02.m2ts").write_bytes(ts)
    (root / "cam03.bin").write_bytes(mp4)  # no video extension
    (root / "cam03.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 100)  # a thumbnail of the same name: not it
    model = str(tiny_clip.info.path)
    base = ["--model", model, "-j", "0", "--no-progress", "--fps", "1"]
    result = CliRunner().invoke(main, ["extract", str(root), "--out", str(tmp_path / "c1")] + base)
    assert result.exit_code == 0, result.output
    assert sorted(FeatureCache.open(tmp_path / "c1").video_ids()) == ["cam01", "cam02"]
    ann = tmp_path / "a.jsonl"
    ann.write_text("".join(json.dumps({"qid": i, "vid": vid, "query": "q", "duration": 2.0, "relevant_windows": [[0, 1]]})
                           + "\n" for i, vid in enumerate(["cam01", "cam03"])))
    result = CliRunner().invoke(main, ["extract", str(root), "-a", str(ann), "--out", str(tmp_path / "c2")] + base)
    assert result.exit_code == 0, result.output
    cache = FeatureCache.open(tmp_path / "c2")
    assert sorted(cache.video_ids()) == ["cam01", "cam03"] and cache.load_video("cam03").shape[0] == 3
    assert cache.video_attrs("cam03")["source"] == str(root / "cam03.bin")
    result = CliRunner().invoke(main, ["extract", str(root / "cam03.bin"), str(root / "cam01.MTS"),
                                       "--out", str(tmp_path / "c3")] + base)
    assert result.exit_code == 0, result.output
    assert sorted(FeatureCache.open(tmp_path / "c3").video_ids()) == ["cam01", "cam03"]


def test_the_recorded_extract_command_and_verify_rebuild_advice_work_from_any_directory(
        videos, tiny_clip_dir, tmp_path, monkeypatch):
    """A relative command line (inputs, --out, a local --model folder) is recorded with absolute
    paths, so the rebuild command `r2 cache verify` prints for a damaged shard runs elsewhere."""
    import shlex
    import sys

    work = tmp_path / "work"
    (work / "in").mkdir(parents=True)
    shutil.copy(videos[0] / "red_blue.mp4", work / "in")
    shutil.copy(videos[0] / "moving.mp4", work / "in")
    (work / "clip").symlink_to(tiny_clip_dir, target_is_directory=True)
    argv = ["r2", "extract", "in", "-o", "c", "--model", "clip", "-j", "0", "--no-progress", "--max-shard-items", "1"]
    monkeypatch.chdir(work)
    monkeypatch.setattr(sys, "argv", argv)  # as a shell starts it (CliRunner alone records no command)
    result = CliRunner().invoke(main, argv[1:])
    assert result.exit_code == 0, result.output
    recorded = FeatureCache.open(work / "c").manifest["command"]
    assert recorded == shlex.join(["r2", "extract", str(work / "in"), "-o", str(work / "c"), "--model",
                                   str(work / "clip")] + argv[7:])
    shard = sorted((work / "c" / "shards").glob("videos-*.h5"))[0]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    advice = verify(work / "c").rebuild_advice().splitlines()
    assert advice[1].strip() == f"rm {shard}" and advice[-1].strip() == recorded
    shard.unlink()
    rerun = shlex.split(advice[-1])
    monkeypatch.setattr(sys, "argv", rerun)
    result = CliRunner().invoke(main, rerun[1:])
    assert result.exit_code == 0 and "1 extracted, 1 already cached" in result.output, result.output
    assert verify(work / "c").ok and not (elsewhere / "c").exists()


def test_cli_youtube_annotations_refuse_a_fixed_fps(videos, tiny_clip, tmp_path):
    root, _ = videos
    yt = {"red_blue": {"fps": 10.0, "frames": "50", "domain": "dog", "info": ["dog", None, [], 1, "u", "t", "", None],
                       "clip": [[0.0, 10.0], [5.0, 15.0]], "match": [-1, 1]}}
    ann = tmp_path / "youtube_anno.json"
    ann.write_text(json.dumps(yt))
    result = CliRunner().invoke(main, ["extract", str(root), "-a", str(ann), "-d", "youtube", "--fps", "1",
                                       "--out", str(tmp_path / "c"), "--model", str(tiny_clip.info.path)])
    assert result.exit_code == 1 and "--fps 1 with YouTube Highlights annotations" in result.output
    assert "one frame per annotated segment" in result.output and "drop --fps" in result.output


def test_failures_file_has_absolute_paths(videos, tiny_clip, tmp_path, monkeypatch):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "zero.mp4").write_bytes(b"")
    shutil.copy(videos[0] / "red_blue.mp4", tmp_path / "in")
    monkeypatch.chdir(tmp_path)  # relative inputs, then read the file from elsewhere
    result = CliRunner().invoke(main, ["extract", "in", "--out", "c", "--model", str(tiny_clip.info.path), "-j", "0",
                                       "--no-progress"])
    assert result.exit_code == 1, result.output
    (line,) = (tmp_path / "c" / "failures.jsonl").read_text().splitlines()
    assert json.loads(line)["path"] == str(tmp_path / "in" / "zero.mp4")


def test_cpu_threads_go_to_the_model_only_when_it_is_the_bottleneck():
    from r2.extract.pipeline import _CPUThreads

    # ViT-B/32 on one core: ~0.1 s a clip; decoding ~0.01 s a clip in one worker -> every core
    plan = _CPUThreads(cpus=2, workers=1)
    assert plan.model_threads == 1
    assert not plan.revise(0.5, 16, 0.1, 10)  # too early: fewer than 32 clips through the model
    assert plan.revise(3.2, 32, 0.3, 30) and plan.model_threads == 2
    assert not plan.revise(3.2, 64, 0.3, 30)  # decided once
    # the tiny CLIP: 1 ms a clip against 7 ms of decoding -> the decoders keep their core
    plan = _CPUThreads(cpus=2, workers=1)
    assert not plan.revise(0.064, 32, 0.44, 31) and plan.model_threads == 1
    # 8 cores, 2 decoders: the model starts on 6 and gets 8 when it is 10x the decoding
    plan = _CPUThreads(cpus=8, workers=2)
    assert plan.model_threads == 6 and plan.revise(1.0, 32, 0.2, 32) and plan.model_threads == 8


def test_a_shard_dropped_by_the_writer_stops_the_run_instead_of_failing_one_video(
        videos, tiny_clip, tmp_path, monkeypatch):
    from r2.cache import ShardDiscardedError
    from r2.cache.writer import VideoSink

    root, jobs = videos
    real_commit = VideoSink.commit

    def commit(sink, **attrs):
        if sink.video_id == jobs[1].video_id:
            raise ShardDiscardedError("dropped with the 1 item(s)", dropped=[jobs[0].video_id])
        return real_commit(sink, **attrs)

    monkeypatch.setattr(VideoSink, "commit", commit)
    with pytest.raises(ShardDiscardedError, match="dropped"):
        extract_features(jobs[:3], [], tmp_path / "c", None, fps=0.5, workers=0, clip=tiny_clip, progress=False)
    monkeypatch.undo()
    s = extract_features(jobs[:3], [], tmp_path / "c", None, fps=0.5, workers=0, clip=tiny_clip, progress=False)
    assert s.ok and s.videos_extracted + s.videos_skipped == 3


@pytest.mark.parametrize("workers", [0, 1])
def test_runs_into_one_cache_share_the_videos(tiny_clip, tmp_path, workers):
    """Another writer of the cache is alive (here: a writer held open, as another r2 extract's):
    it is named, and a video it has claimed is left to it (not decoded, "taken" in the summary),
    the others are extracted and claimed in turn; without waiting for it (--no-wait), once it is
    gone, its video is done by a rerun. With no other writer nothing is said."""
    import socket

    paths = [S.write_segment_video(tmp_path / f"{c}.mp4", [(c, 2.0)], fps=5).path for c in ("red", "blue", "green")]
    jobs = {p.stem: VideoJob(p.stem, str(p)) for p in paths}
    out = tmp_path / "out"

    def run(*names):
        said = []
        summary = extract_features([jobs[n] for n in names], [], out, None, fps=1, workers=workers, clip=tiny_clip,
                                   progress=False, log=said.append, wait_for_others=False)
        return summary, [m for m in said if "other writer" in m]

    summary, notes = run("red")
    assert notes == [] and summary.videos_extracted == 1 and summary.videos_taken == 0
    other = FeatureCache.open(out).writer()
    try:
        assert other.claim_video("blue")
        summary, [note] = run("blue", "green")
        assert f"1 other writer(s) are adding to {out} now (pid {os.getpid()} on {socket.gethostname()})" in note
        assert (summary.videos_extracted, summary.videos_taken, summary.failures) == (1, 1, [])
        assert "1 extracted, 0 already cached, 1 taken by another writer of the cache, 0 failed (of 2)" \
            in summary.format()
        assert FeatureCache.open(out).video_ids() == ["green", "red"]
        assert not other.claim_video("green")  # committed by that run meanwhile
    finally:
        other.close()  # without adding blue: its claim goes with it
    summary, notes = run("blue", "green")
    assert notes == [] and (summary.videos_extracted, summary.videos_skipped, summary.videos_taken) == (1, 1, 0)
    assert FeatureCache.open(out).video_ids() == ["blue", "green", "red"]


def _red_cached_blue_claimed(tiny_clip, tmp_path):
    """Jobs of three videos (red, blue, green), a cache holding red, and another writer of it,
    open, that has claimed blue."""
    paths = [S.write_segment_video(tmp_path / f"{c}.mp4", [(c, 2.0)], fps=5).path for c in ("red", "blue", "green")]
    jobs = {p.stem: VideoJob(p.stem, str(p)) for p in paths}
    out = tmp_path / "out"
    extract_features([jobs["red"]], [], out, None, fps=1, workers=0, clip=tiny_clip, progress=False, log=lambda m: None)
    other = FeatureCache.open(out).writer()
    assert other.claim_video("blue")
    return jobs, out, other


@pytest.mark.parametrize("workers", [0, 1])
@pytest.mark.parametrize("claimer", ["stops", "commits"])
def test_a_run_waits_for_the_videos_a_live_writer_is_extracting(tiny_clip, tmp_path, workers, claimer, monkeypatch):
    """Once the rest is done, a video another live writer has claimed is waited for: taken over
    when that writer stops without committing it (done here, not left for a rerun), counted as
    taken when it commits it; either way the run returns with the video in the cache. The
    waiting is said again while it lasts (here every 0.5 s instead of every minute)."""
    import threading

    import r2.extract.pipeline as pipeline

    monkeypatch.setattr(pipeline, "WAIT_REMINDER_SECONDS", 0.5)

    jobs, out, other = _red_cached_blue_claimed(tiny_clip, tmp_path)
    features = FeatureCache.open(out).load_video("red")
    said, visible = [], []

    def claimer_acts():  # once this run has said it waits
        if claimer == "stops":
            other.abort()
        else:
            other.add_video("blue", features)
            other.close()

    def log(message):
        said.append(message)
        if message.startswith("waiting for"):
            # this run's own videos are committed first: the other may be waiting for them in turn
            visible.append(FeatureCache.open(out).has_video("green"))
            threading.Timer(1.5, claimer_acts).start()

    summary = extract_features([jobs["blue"], jobs["green"]], [], out, None, fps=1, workers=workers, clip=tiny_clip,
                               progress=False, log=log)
    [note] = [m for m in said if m.startswith("waiting for")]
    assert visible == [True]
    assert f"waiting for 1 video(s) that other writer(s) of the cache are extracting (pid {os.getpid()}" in note
    assert "--no-wait" in note
    assert any(m.startswith(f"still waiting for 1 video(s) after 0 min (pid {os.getpid()}") for m in said), said
    done_here = claimer == "stops"
    assert (summary.videos_extracted, summary.videos_taken, summary.failures) == (1 + done_here, 1 - done_here, [])
    cache = FeatureCache.open(out)
    assert cache.video_ids() == ["blue", "green", "red"]
    assert np.array_equal(cache.load_video("blue"), features) != done_here  # the claimer's own features
    if not done_here:
        assert "(the 1 taken were extracted by another run meanwhile: all are in the cache)" in summary.format()


@pytest.mark.parametrize("workers", [0, 1])
def test_a_video_left_to_a_writer_that_stops_meanwhile_is_done_at_the_end(tiny_clip, tmp_path, workers, monkeypatch):
    """A video another writer had claimed is asked about again once the rest is done: that
    writer stopped meanwhile without committing it (here: it is aborted when this run reaches
    the next video), so this run extracts it instead of leaving it for a rerun."""
    from r2.cache.writer import CacheWriter

    jobs, out, other = _red_cached_blue_claimed(tiny_clip, tmp_path)
    real = CacheWriter.claim_video
    asked = []

    def claim_video(self, video_id):
        asked.append(video_id)
        if self is not other and video_id == "green":
            other.abort()  # the claimer stops: its lock, and the claim, go
        return real(self, video_id)

    monkeypatch.setattr(CacheWriter, "claim_video", claim_video)
    summary = extract_features([jobs["blue"], jobs["green"]], [], out, None, fps=1, workers=workers, clip=tiny_clip,
                               progress=False, log=lambda m: None)
    assert asked == ["blue", "green", "blue"]
    assert (summary.videos_extracted, summary.videos_taken, summary.failures) == (2, 0, [])
    assert FeatureCache.open(out).video_ids() == ["blue", "green", "red"]
