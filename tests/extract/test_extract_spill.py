"""Features stream into the cache video by video part (``writer.begin_video``): with the spill
threshold lowered so that every video spills to disk, the cache holds the same bytes as with the
features kept in RAM, also across a decoder restart mid-video, and no spill file is left."""

from __future__ import annotations

import numpy as np
import pytest

import r2.cache.writer as writer_mod
import r2.extract.pipeline as P
from r2.cache import FeatureCache, verify
from r2.cache.shards import SHARDS_DIR, SPILL_SUFFIX
from r2.extract import synthetic as S
from r2.extract.pipeline import VideoJob, extract_features


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    root = tmp_path_factory.mktemp("spill_videos")
    out = []
    for vid, segs in {"a": [("red", 3.0), ("blue", 4.0)], "b": [("green", 5.0)], "c": [("moving", 6.0)]}.items():
        out.append(VideoJob(vid, str(S.write_segment_video(root / f"{vid}.mp4", segs, fps=8, size=(64, 48)).path)))
    return out


def _extract(jobs, tiny_clip, out, dtype="float16"):
    summary = extract_features(jobs, [], out, None, fps=2, batch_size=5, workers=0, clip=tiny_clip, progress=False,
                               dtype=dtype)
    assert summary.ok, summary.format()
    return summary


def _contents(out):
    cache = FeatureCache.open(out)
    return {vid: (cache.load_video(vid), cache.video_attrs(vid)) for vid in cache.video_ids()}


def _same(a, b):
    assert sorted(a) == sorted(b)
    for vid in a:
        assert a[vid][0].tobytes() == b[vid][0].tobytes(), vid
        assert a[vid][1] == b[vid][1], vid


@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_spilled_features_equal_in_ram_features(jobs, tiny_clip, tmp_path, monkeypatch, dtype):
    ram = _extract(jobs, tiny_clip, tmp_path / "ram", dtype)
    spilled = []
    real = writer_mod.VideoSink._start_spill

    def spying(self, int8):
        real(self, int8)
        spilled.append(self.video_id)

    monkeypatch.setattr(writer_mod, "SPILL_BYTES", 1)
    monkeypatch.setattr(writer_mod, "CHUNK_BYTES", 20000)
    monkeypatch.setattr(writer_mod.VideoSink, "_start_spill", spying)
    disk = _extract(jobs, tiny_clip, tmp_path / "disk", dtype)
    assert sorted(spilled) == ["a", "b", "c"]
    assert disk.clips == ram.clips == 7 * 2 + 5 * 2 + 6 * 2
    _same(_contents(tmp_path / "ram"), _contents(tmp_path / "disk"))
    assert not list((tmp_path / "disk" / SHARDS_DIR).glob(f"*{SPILL_SUFFIX}"))
    assert verify(tmp_path / "disk").ok


def test_a_decoder_restart_mid_video_discards_what_it_had_appended(jobs, tiny_clip, tmp_path, monkeypatch):
    _extract(jobs, tiny_clip, tmp_path / "plain")
    real = P._decode_results
    restarted = []

    def restarting(jobs_, *args, **kwargs):  # job 0's first frames come, then a restart, then all again
        first = None
        for event in real(jobs_, *args, **kwargs):
            if event[0] == "frames" and event[1] == 0 and first is None:
                first = event
                yield event
                restarted.append(P._Pending)
                yield ("restart", 0)
            yield event

    monkeypatch.setattr(writer_mod, "SPILL_BYTES", 1)
    monkeypatch.setattr(P, "_decode_results", restarting)
    aborted = []
    real_abort = writer_mod.VideoSink.abort

    def spying_abort(self):
        if self.state == "open":
            aborted.append((self.video_id, self.clips, self.spilled))
        real_abort(self)

    monkeypatch.setattr(writer_mod.VideoSink, "abort", spying_abort)
    _extract(jobs, tiny_clip, tmp_path / "restarted")
    assert restarted and aborted and aborted[0][0] == "a" and aborted[0][1] > 0 and aborted[0][2]
    _same(_contents(tmp_path / "plain"), _contents(tmp_path / "restarted"))
    assert not list((tmp_path / "restarted" / SHARDS_DIR).glob(f"*{SPILL_SUFFIX}"))
    assert verify(tmp_path / "restarted").ok


def test_a_refused_video_aborts_its_sink_and_the_others_are_extracted(jobs, tiny_clip, tmp_path, monkeypatch):
    """NaN features in the middle of a spilled video: a failure, its spill file gone, the others stored."""
    video_features = tiny_clip.video_features
    calls = [0]

    def nan_in_the_third_batch(x):
        out = video_features(x)
        calls[0] += 1
        if calls[0] == 3:
            out[:] = float("nan")
        return out

    monkeypatch.setattr(writer_mod, "SPILL_BYTES", 1)
    monkeypatch.setattr(tiny_clip, "video_features", nan_in_the_third_batch)
    out = tmp_path / "cache"
    summary = extract_features(jobs, [], out, None, fps=2, batch_size=5, workers=0, clip=tiny_clip, progress=False)
    assert not summary.ok and all("NaN" in f.reason for f in summary.failures)
    failed = {f.video_id for f in summary.failures}
    assert failed and set(FeatureCache.open(out).video_ids()) == {"a", "b", "c"} - failed
    assert not list((out / SHARDS_DIR).glob(f"*{SPILL_SUFFIX}")) and verify(out).ok
    np.testing.assert_equal(summary.clips, sum(FeatureCache.open(out).video_shape(v)[0]
                                               for v in FeatureCache.open(out).video_ids()))
