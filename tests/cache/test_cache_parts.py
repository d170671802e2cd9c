"""Videos written in parts (``writer.begin_video`` → ``VideoSink``): the same bytes as ``add_video``,
RAM bounded by a spill file for long videos, and nothing half-written ever visible."""

import os
import signal
import subprocess
import sys
import tracemalloc
import zlib

import numpy as np
import pytest

import r2.cache.writer as writer_mod
from r2.cache import CacheError, CacheWarning, FeatureCache, verify
from r2.cache.quantize import quantize_int8
from r2.cache.shards import SHARDS_DIR, SPILL_SUFFIX, open_h5

from .conftest import LAYERS, manifest


def _long(seed, t=37, n=3, d=16):
    return np.random.default_rng(seed).standard_normal((t, len(LAYERS), n, d)).astype(np.float32)


def _spills(root):
    return sorted((root / SHARDS_DIR).glob(f"*{SPILL_SUFFIX}"))


def _split(x, sizes=(1, 5, 2, 11)):
    parts, t, i = [], 0, 0
    while t < len(x):
        c = sizes[i % len(sizes)]
        parts.append(x[t:t + c])
        t, i = t + c, i + 1
    return parts


def _sink_of(writer, video_id, x):
    """A sink of ``writer`` for ``video_id`` holding all of ``x``, appended in the parts of ``_split``."""
    sink = writer.begin_video(video_id)
    for p in _split(x):
        sink.append(p)
    return sink


def _stored(root, video_id):
    """{dataset name: (bytes, crc32 attribute)} of a committed video, straight from its shard."""
    cache = FeatureCache.open(root)
    shard = cache._index.shard_of("videos", video_id) if hasattr(cache._index, "shard_of") else None
    out = {}
    for path in sorted((root / SHARDS_DIR).glob("*.h5")):
        if shard is not None and path.name != shard:
            continue
        with open_h5(path) as f:
            if "videos" in f and video_id in f["videos"]:
                g = f["videos"][video_id]
                for name, ds in g.items():
                    assert ds.id.get_create_plist().get_layout() == 1  # H5D_CONTIGUOUS
                    out[name] = (ds[()].tobytes(), ds.dtype, ds.shape, int(ds.attrs["crc32"]))
    return out


@pytest.mark.parametrize("dtype", ["float16", "float32", "int8"])
@pytest.mark.parametrize("spill", [False, True])
def test_parts_store_exactly_what_add_video_of_the_whole_stores(tmp_path, monkeypatch, dtype, spill):
    if spill:
        monkeypatch.setattr(writer_mod, "SPILL_BYTES", 2000)
        monkeypatch.setattr(writer_mod, "CHUNK_BYTES", 3000)  # several blocks per part, several at commit
    whole = FeatureCache.create(tmp_path / "whole", manifest(dtype=dtype))
    parts = FeatureCache.create(tmp_path / "parts", manifest(dtype=dtype))
    x = _long(1)
    with whole.writer() as w:
        w.add_video("v", x, source="/data/v.mp4", duration=74.0)
    with parts.writer() as w:
        sink = _sink_of(w, "v", x)
        assert sink.clips == len(x) and sink.spilled == spill
        if spill:
            assert [p.name for p in _spills(parts.path)] == [p.name for p in sink.spill_paths]
        assert sink.commit(source="/data/v.mp4", duration=74.0) == len(x)
        assert _spills(parts.path) == []
    a, b = FeatureCache.open(tmp_path / "whole"), FeatureCache.open(tmp_path / "parts")
    assert np.array_equal(a.load_video("v"), b.load_video("v"))
    for layers in ([10], [12, 9], None):
        assert np.array_equal(a.load_video("v", layers=layers), b.load_video("v", layers=layers))
    assert b.video_attrs("v") == {"source": "/data/v.mp4", "duration": 74.0}
    stored = _stored(tmp_path / "parts", "v")
    assert stored == _stored(tmp_path / "whole", "v")
    assert sorted(stored) == sorted([f"L{k}" for k in LAYERS] + ([f"L{k}_scale" for k in LAYERS] if dtype == "int8"
                                                                   else []))
    for k, layer in enumerate(LAYERS):  # what the one-shot writer stored: each layer encoded whole
        if dtype == "int8":
            q, scale = quantize_int8(x[:, k])
            want = {f"L{layer}": q, f"L{layer}_scale": scale}
        else:
            want = {f"L{layer}": np.ascontiguousarray(x[:, k], dtype=dtype)}
        for name, a in want.items():
            assert stored[name] == (a.tobytes(), a.dtype, a.shape, zlib.crc32(a.tobytes()))
    assert verify(tmp_path / "parts").ok


def test_add_video_of_a_long_video_never_spills_but_a_sink_does_and_leaves_no_spill_file(tmp_path, monkeypatch):
    """add_video's caller holds the whole array: a spill would only add disk I/O. Parts
    appended to a sink beyond SPILL_BYTES do spill, and the file is gone after the commit."""
    monkeypatch.setattr(writer_mod, "SPILL_BYTES", 4096)
    monkeypatch.setattr(writer_mod, "CHUNK_BYTES", 1024)
    cache = FeatureCache.create(tmp_path / "c", manifest())
    x = _long(2, t=50)
    seen = []
    real = writer_mod.VideoSink._start_spill

    def spying(self, int8):
        real(self, int8)
        seen.extend(p.name for p in self.spill_paths)
        assert all(p.exists() for p in self.spill_paths)

    monkeypatch.setattr(writer_mod.VideoSink, "_start_spill", spying)
    with cache.writer() as w:
        w.add_video("long", x)
        assert seen == []
        sink = w.begin_video("parts")
        for t0 in range(0, len(x), 5):
            sink.append(x[t0:t0 + 5])
        assert sink.spilled
        sink.commit()
        w.add_video("short", x[:2])
    assert len(seen) == 1 and _spills(cache.path) == []
    reader = FeatureCache.open(cache.path)
    for vid in ("long", "parts"):
        assert np.array_equal(reader.load_video(vid), x.astype(np.float16).astype(np.float32))
    assert verify(cache.path).ok


def test_several_sinks_open_at_once_interleaved(tmp_path, monkeypatch):
    monkeypatch.setattr(writer_mod, "SPILL_BYTES", 3000)
    cache = FeatureCache.create(tmp_path / "c", manifest(dtype="int8"))
    videos = {f"v{i}": _long(10 + i, t=9 + 4 * i) for i in range(3)}
    with cache.writer() as w:
        sinks = {vid: w.begin_video(vid) for vid in videos}
        with pytest.raises(CacheError, match="already in the feature cache"):
            w.begin_video("v1")  # claimed by an open sink
        splits = {vid: _split(x, (3, 2)) for vid, x in videos.items()}
        for i in range(max(map(len, splits.values()))):
            for vid, parts in splits.items():
                if i < len(parts):
                    sinks[vid].append(parts[i])
        sinks["v1"].abort()
        sinks["v2"].commit(order=2)
        sinks["v0"].commit(order=0)
        w.begin_video("v1").abort()  # free again after the abort
    got = FeatureCache.open(cache.path)
    assert got.video_ids() == ["v0", "v2"]
    for vid in ("v0", "v2"):
        with FeatureCache.create(tmp_path / vid, manifest(dtype="int8")).writer() as w:
            w.add_video(vid, videos[vid])
        assert np.array_equal(got.load_video(vid), FeatureCache.open(tmp_path / vid).load_video(vid))
    assert _spills(cache.path) == [] and verify(cache.path).ok


def _visible(root):
    return FeatureCache.open(root).video_ids()


def test_abort_and_refused_parts_leave_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(writer_mod, "SPILL_BYTES", 2000)
    cache = FeatureCache.create(tmp_path / "c", manifest())
    x = _long(3)
    with cache.writer() as w:
        w.add_video("kept", x[:4])
        sink = _sink_of(w, "aborted", x)
        assert sink.spilled and all(p.exists() for p in sink.spill_paths)
        paths = sink.spill_paths
        sink.abort()
        sink.abort()  # idempotent
        assert not any(p.exists() for p in paths)
        with pytest.raises(CacheError, match="aborted"):
            sink.append(x[:1])
        # a refused part (NaN; beyond the float16 range) aborts the sink, spill file and all
        for bad, msg in ((np.nan, "NaN or infinite"), (1e6, "beyond the float16 range")):
            sink = _sink_of(w, "refused", x)
            assert sink.spilled
            paths = sink.spill_paths
            y = x[:3].copy()
            y[1, 2, 0, 5] = bad
            with pytest.raises(CacheError, match=msg):
                sink.append(y)
            assert sink.state == "aborted" and not any(p.exists() for p in paths)
            with pytest.raises(CacheError):
                sink.commit()
        # a part of another shape
        sink = w.begin_video("shape")
        sink.append(x[:2])
        with pytest.raises(CacheError, match="width 8"):
            sink.append(np.zeros((2, len(LAYERS), 3, 8), np.float32))
        assert sink.state == "aborted"
        # nothing appended: refused at commit
        with pytest.raises(CacheError, match="empty"):
            w.begin_video("empty").commit()
        # an open sink when the writer closes is aborted
        left_open = _sink_of(w, "left open", x)
        paths = left_open.spill_paths
    assert left_open.state == "aborted" and not any(p.exists() for p in paths)
    assert _visible(cache.path) == ["kept"] and _spills(cache.path) == [] and verify(cache.path).ok


def test_a_failure_at_commit_leaves_nothing_visible(tmp_path, monkeypatch):
    """The shard write fails half-way through the video (a CacheError after some blocks): no group
    of it in the committed shard, no spill file, the id free, and the writer goes on."""
    monkeypatch.setattr(writer_mod, "SPILL_BYTES", 2000)
    monkeypatch.setattr(writer_mod, "CHUNK_BYTES", 1500)
    real = writer_mod.write_video_blocks

    def fails_half_way(h5file, family, item_id, layers, shape, dtype, int8, blocks, attrs_json):
        def some_blocks():
            for i, b in enumerate(blocks):
                if i == 2:
                    raise CacheError("injected: disk trouble")
                yield b
        return real(h5file, family, item_id, layers, shape, dtype, int8, some_blocks(), attrs_json)

    cache = FeatureCache.create(tmp_path / "c", manifest())
    x = _long(4)
    with cache.writer() as w:
        w.add_video("before", x[:3])
        sink = _sink_of(w, "broken", x)
        paths = sink.spill_paths
        assert paths
        monkeypatch.setattr(writer_mod, "write_video_blocks", fails_half_way)
        with pytest.raises(CacheError, match="injected"):
            sink.commit(source="x")
        monkeypatch.setattr(writer_mod, "write_video_blocks", real)
        assert sink.state == "aborted" and not any(p.exists() for p in paths)
        w.add_video("after", x[:5])
        w.add_video("broken", x)  # the id is free again
    assert _visible(cache.path) == ["after", "before", "broken"]
    assert _spills(cache.path) == [] and verify(cache.path).ok
    (shard,) = (cache.path / SHARDS_DIR).glob("*.h5")
    with open_h5(shard) as f:
        assert sorted(f["videos"]) == ["after", "before", "broken"]


# A writer process: commits v0 (flushed), then opens a sink for v1 that spills, and waits.
_WRITER = r"""
import sys
import numpy as np
import r2.cache.writer as writer_mod
from r2.cache import FeatureCache
writer_mod.SPILL_BYTES = 2000
m = {"model_id": "m", "model_config_hash": "h", "layers": [9, 10, 11, 12], "fps": 0.5, "preprocessing": {}}
cache = FeatureCache.create(sys.argv[1], m)
w = cache.writer()
x = np.random.default_rng(0).standard_normal((20, 4, 3, 16)).astype(np.float32)
w.add_video("v0", x)
w.flush()
sink = w.begin_video("v1")
for t in range(0, 20, 3):
    sink.append(x[t:t + 3])
assert sink.spilled
print("ready", flush=True)
sys.stdin.readline()
"""


def test_sigkill_while_a_spilled_video_is_open(tmp_path):
    root = tmp_path / "cache"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(root)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        spills = _spills(root)
        assert len(spills) == 1 and spills[0].stat().st_size > 0
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        proc.kill()
        proc.wait(timeout=30)
    cache = FeatureCache.open(root)  # a reader deletes nothing
    assert cache.video_ids() == ["v0"]
    report = verify(root)
    assert report.ok, report.format()
    assert spills[0].exists()
    with pytest.warns(CacheWarning, match="removed"):
        w = cache.writer()  # the next writer cleans the dead writer's spill file
    assert _spills(root) == []
    w.add_video("v1", np.zeros((2, 4, 3, 16), np.float32))
    w.close()
    assert FeatureCache.open(root).video_ids() == ["v0", "v1"] and verify(root).ok


@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_memory_of_a_long_video_in_parts_is_bounded_by_a_chunk(tmp_path, monkeypatch, dtype):
    """A video of 40 blocks (a spill threshold of half a block) written in parts: the peak traced
    memory beyond the part being appended stays under 3 blocks, appending and committing."""
    chunk = 2**20
    monkeypatch.setattr(writer_mod, "CHUNK_BYTES", chunk)
    monkeypatch.setattr(writer_mod, "SPILL_BYTES", chunk // 2)
    k, n, d = len(LAYERS), 50, 256
    clip_bytes = k * n * d * 4  # float32 input
    part_clips = chunk // clip_bytes  # one part = one block of float32 input
    parts = 40
    cache = FeatureCache.create(tmp_path / "c", manifest(dtype=dtype, video_width=d))
    rng = np.random.default_rng(5)
    w = cache.writer()
    w.add_video("warm-up", rng.standard_normal((2, k, n, d), dtype=np.float32))  # pins the shapes, opens the shard
    part = rng.standard_normal((part_clips, k, n, d), dtype=np.float32)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        sink = w.begin_video("long")
        for i in range(parts):
            part[0, 0, 0, 0] = i  # the caller reuses its buffer
            sink.append(part)
        assert sink.spilled
        sink.commit()
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    w.close()
    total = parts * part.nbytes
    assert total >= 35 * chunk  # the video is many blocks
    print(f"peak {peak / chunk:.2f} blocks for a video of {total / chunk:.1f}")
    assert peak < 3 * chunk, f"peak {peak / chunk:.2f} blocks"
    got = FeatureCache.open(cache.path).load_video("long")
    assert got.shape == (parts * part_clips, k, n, d)
    np.testing.assert_allclose([got[i * part_clips, 0, 0, 0] for i in (0, 1, 39)], [0, 1, 39], atol=0.05)
    assert _spills(cache.path) == [] and verify(cache.path).ok
