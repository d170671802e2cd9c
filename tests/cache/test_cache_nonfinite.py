"""Finding NaN and infinity: :func:`r2.cache.fastio.all_finite` (``r2 cache verify``) and
``FeatureCache.check_video``/``check_query``, which callers ask when what they computed from an
item is not finite: an item damaged after its commit (a flipped exponent, a copy that wrote
0xff over a stretch) is named with its shard and what is wrong, while intact items pass."""

import struct

import h5py
import numpy as np
import pytest

from r2.cache import CacheError, FeatureCache, encode_id
from r2.cache.fastio import all_finite
from r2.cache.shards import layer_name, scale_name


def test_all_finite_knows_every_half_value_and_the_float_specials():
    halves = np.arange(65536, dtype=np.uint16).view(np.float16)
    assert [all_finite(halves[i:i + 1]) for i in range(65536)] == np.isfinite(halves).tolist()
    assert not all_finite(halves) and all_finite(halves[np.isfinite(halves)])
    rng = np.random.default_rng(0)
    for dtype in (np.float16, np.float32, np.float64):
        info = np.finfo(dtype)
        x = (rng.standard_normal((6, 3, 5, 4)) * 100).astype(dtype)
        x[0, 0, 0, 0], x[1, 1, 1, 1], x[2, 2, 2, 2], x[3, 0, 0, 1] = info.max, -info.max, info.tiny / 4, -0.0
        assert all_finite(x) and all_finite(x[:, 1]) and all_finite(x[..., ::2]) and all_finite(x[:0])
        for bad in (np.nan, -np.nan, np.inf, -np.inf):
            for at in [(0, 0, 0, 0), (5, 2, 4, 3), (3, 1, 2, 0)]:
                y = x.copy()
                y[at] = bad
                assert not all_finite(y), (dtype, bad, at)
                assert not all_finite(y[:, at[1]]) and all_finite(y[:, (at[1] + 1) % 3])  # strided views
                assert not all_finite(y[at]) and not all_finite(y.astype(y.dtype.newbyteorder(">")))
        assert all_finite(np.array(dtype(2.5))) and not all_finite(np.array(dtype(np.inf)))
    assert all_finite(np.arange(10, dtype=np.int8)) and all_finite(np.zeros(3, bool))


def _damage(cache, family, item_id, name, value):
    """Overwrite the middle element of dataset ``name`` of an item in its committed shard with
    ``value``'s bytes, as a disk or a bad copy would: the HDF5 structure stays intact."""
    path = cache.video_shard(item_id) if family == "videos" else cache.query_shard(item_id)
    with h5py.File(path, "r") as f:
        ds = f[f"{family}/{encode_id(item_id)}/{name}"]
        offset, size = ds.id.get_offset(), ds.dtype.itemsize
        pos = offset + (ds.size // 2) * size
    raw = {2: np.array(value, np.float16).tobytes(), 4: struct.pack("<f", value)}[size]
    with open(path, "r+b") as fh:
        fh.seek(pos)
        fh.write(raw)
    return path


@pytest.mark.parametrize("dtype", ["float16", "float32", "int8"])
def test_check_video_and_check_query_name_a_damaged_item_and_its_shard(tmp_path, make_manifest, features, dtype):
    video, query = features
    cache = FeatureCache.create(tmp_path / "c", make_manifest(dtype=dtype))
    with cache.writer() as w:
        for i, vid in enumerate(["ok", "v/1"]):
            w.add_video(vid, video(i))
        for i, qid in enumerate(["q", "fine"]):
            w.add_query(qid, *query(i), text="a dog")
    cache = FeatureCache.open(cache.path)
    name = scale_name(11) if dtype == "int8" else layer_name(11)  # int8: the scales are the floats
    shard = _damage(cache, "videos", "v/1", name, np.nan)
    qshard = _damage(cache, "queries", "q", name, -np.inf)
    cache = FeatureCache.open(cache.path)
    assert np.isnan(cache.load_video("v/1", dtype=np.float32)).any()  # reads do not check (their speed)
    with pytest.raises(CacheError) as info:
        cache.check_video("v/1")
    assert str(info.value) == (f"video 'v/1' in {shard} is damaged ({name}: checksum mismatch (the data changed "
                               f"after it was written)); run `r2 cache verify {cache.path}`")
    with pytest.raises(CacheError, match=rf"^query 'q' in {qshard} is damaged \({name}: checksum mismatch"):
        cache.check_query("q")
    cache.check_video("ok")
    cache.check_query("fine")
    with pytest.raises(CacheError, match="'nope' is not in the feature cache"):
        cache.check_video("nope")
