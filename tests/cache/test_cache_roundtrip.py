"""Round trips through real HDF5 shards: every dtype and layer subset, queries, attributes,
awkward ids, shard rollover, the index and its sidecar."""

import itertools
import json
import pickle

import numpy as np
import pytest

from r2.cache import (CacheError, FeatureCache, MissingItemError, SentenceMismatch, decode_id,
                      dequantize_int8, encode_id, quantize_int8)
from r2.cache.fastio import f16_to_f32
from r2.cache.index import ShardIndex
from r2.cache.quantize import clip_like_features, int8_error

LAYERS = [9, 10, 11, 12]
SUBSETS = [None, [12], [9, 12], [12, 9], [10, 11, 12], LAYERS]


def _expected(x, dtype):
    if dtype == "float16":
        return x.astype(np.float16).astype(np.float32)
    if dtype == "float32":
        return x
    return None


@pytest.mark.parametrize("dtype", ["float16", "float32", "int8"])
def test_every_dtype_and_layer_subset_round_trips(tmp_path, make_manifest, dtype):
    rng = np.random.default_rng(0)
    # realistic values: N(0, 1) with two large-magnitude channels, like CLIP's residual stream
    vids = {f"v{i}": clip_like_features((4 + i, 4, 5, 16), outliers=2, factor=20.0, seed=i) for i in range(3)}
    qfeat = rng.standard_normal((4, 7, 8)).astype(np.float32)
    qmask = np.array([1, 1, 1, 1, 1, 0, 0], bool)
    cache = FeatureCache.create(tmp_path / "c", make_manifest(dtype=dtype))
    with cache.writer() as w:
        for vid, x in vids.items():
            w.add_video(vid, x)
        w.add_query("q", qfeat, qmask, text="a dog runs")
    cache = FeatureCache.open(tmp_path / "c")
    assert cache.dtype == dtype
    for (vid, x), layers in itertools.product(vids.items(), SUBSETS):
        sel = [LAYERS.index(l) for l in (layers or LAYERS)]
        got = cache.load_video(vid, layers=layers)
        assert got.dtype == np.float32 and got.shape == (x.shape[0], len(sel), 5, 16)
        want = x[:, sel]
        if dtype == "int8":
            err = np.abs(got - want)
            # half a quantisation step of each token: max|x| / 254
            bound = np.abs(want).max(-1, keepdims=True) / 254 * (1 + 1e-5) + 1e-7
            assert (err <= bound).all()
            assert np.linalg.norm(got - want) / np.linalg.norm(want) < 0.06
        else:
            assert np.array_equal(got.view(np.uint32), _expected(want, dtype).view(np.uint32))  # bit-exact
        query = cache.load_query("q", layers=layers)
        q, m = query  # a QueryFeatures unpacks as (features, mask)
        assert query.features is q and query.mask is m
        assert q.shape == (len(sel), 7, 8) and m.dtype == bool and np.array_equal(m, qmask)
        if dtype != "int8":
            assert np.array_equal(q, _expected(qfeat[sel], dtype))
        else:
            assert np.allclose(q, qfeat[sel], atol=np.abs(qfeat).max() / 254 + 1e-6)


def test_dtype_choice_and_out_buffer(build_cache, features):
    video, _ = features
    cache = build_cache(videos={"a": 1})
    x16 = video(1).astype(np.float16)
    native = cache.load_video("a", dtype=None)
    assert native.dtype == np.float16 and np.array_equal(native, x16)
    assert cache.load_video("a", dtype=np.float64).dtype == np.float64
    out = np.full((5, 2, 3, 16), np.nan, np.float32)
    res = cache.load_video("a", layers=[10, 12], out=out)
    assert res is out and np.array_equal(out, x16[:, [1, 3]].astype(np.float32))
    # a slice of a padded batch
    batch = np.zeros((2, 9, 4, 3, 16), np.float16)
    cache.load_video("a", out=batch[1, :5])
    assert np.array_equal(batch[1, :5], x16) and not batch[1, 5:].any() and not batch[0].any()
    with pytest.raises(CacheError, match="out has shape"):
        cache.load_video("a", out=np.empty((4, 4, 3, 16), np.float32))
    assert cache.video_shape("a") == (5, 4, 3, 16)


def test_layers_not_in_cache_and_missing_items_are_clear_errors(build_cache):
    cache = build_cache(videos={"a": 1}, queries={"q": 1})
    with pytest.raises(CacheError, match=r"layer 8 is not in the feature cache .* keeps layers \[9, 10, 11, 12\]"):
        cache.load_video("a", layers=[8, 9])
    with pytest.raises(CacheError, match="layer 13"):
        cache.load_query("q", layers=[13])
    with pytest.raises(MissingItemError, match="video 'nope' is not in the feature cache") as info:
        cache.load_video("nope")
    assert isinstance(info.value, KeyError)
    with pytest.raises(MissingItemError, match="query 'nope'"):
        cache.query_attrs("nope")


AWKWARD_IDS = ["sub dir/clip 01.mp4", "a/b/c", "vidéo/日本語 ✓", ".", "..", "%41", "x.y.z",
               "-leading", "tab\there", "trailing/", "/abs/path", "emoji 🎬", "a%2Fb",
               "bad\udcffbyte"]


def test_awkward_ids_round_trip_exactly(build_cache):
    vids = {vid: i for i, vid in enumerate(AWKWARD_IDS)}
    cache = build_cache(videos=vids, queries={q: i for i, q in enumerate(AWKWARD_IDS)})
    for vid in AWKWARD_IDS:
        name = encode_id(vid)
        assert "/" not in name and name not in (".", "..") and decode_id(name) == vid
    reopened = FeatureCache.open(cache.path)
    assert reopened.video_ids() == sorted(AWKWARD_IDS)
    assert reopened.query_ids() == sorted(AWKWARD_IDS)
    for vid, seed in vids.items():
        assert reopened.has_video(vid) and reopened.has_query(vid)
        assert reopened.video_attrs(vid) == {"source": f"/data/{vid}.mp4", "duration": 10.0}
        assert reopened.query_attrs(vid)["text"] == f"query {vid}"
        assert reopened.load_video(vid).shape == (5, 4, 3, 16)
    assert not reopened.has_video("a/b") and not reopened.has_video("sub dir")
    with pytest.raises(ValueError):
        encode_id("")


def test_attributes_round_trip(tmp_path, make_manifest, features):
    video, query = features
    cache = FeatureCache.create(tmp_path / "c", make_manifest())
    attrs = {"source": tmp_path / "v.mp4", "size": 1234, "duration": 12.5, "fps": 0.5,
             "frame_count": 300, "sample_times": np.arange(5) * 2.0 + 1.0, "n": np.int64(3),
             "nested": {"a": [1, None, "ü"]}, "flag": True}
    with cache.writer() as w:
        w.add_video("v", video(0), **attrs)
        w.add_query("q", *query(0), text="ein Mann öffnet die Tür", source_qid=17)
        with pytest.raises(TypeError, match="cannot be stored"):
            w.add_video("w", video(1), bad=object())
    got = FeatureCache.open(cache.path).video_attrs("v")
    assert got == {"source": str(tmp_path / "v.mp4"), "size": 1234, "duration": 12.5, "fps": 0.5,
                   "frame_count": 300, "sample_times": [1.0, 3.0, 5.0, 7.0, 9.0], "n": 3,
                   "nested": {"a": [1, None, "ü"]}, "flag": True}
    assert cache.query_attrs("q") == {"text": "ein Mann öffnet die Tür", "source_qid": 17}
    assert not cache.has_video("w")


def test_sentence_mismatches_names_ids_cached_for_another_sentence(tmp_path, make_manifest, features):
    _, query = features
    cache = FeatureCache.create(tmp_path / "c", make_manifest())
    with cache.writer() as w:
        w.add_query("0", *query(0), text="a man opens a door")
        w.add_query("1", *query(1), text="a dog runs")
        w.add_query("plain", *query(2))  # stored without a text: nothing to compare
    cache = FeatureCache.open(cache.path)
    asked = {"0": "a man opens a door", "1": "a cat sleeps", "plain": "anything", "absent": "x"}
    assert cache.sentence_mismatches(asked) == [SentenceMismatch("1", cached="a dog runs", given="a cat sleeps")]
    assert cache.sentence_mismatches({"0": "a man opens a door"}) == []


def test_writer_refuses_bad_items(tmp_path, make_manifest, features):
    video, query = features
    cache = FeatureCache.create(tmp_path / "c", make_manifest())
    with cache.writer() as w:
        w.add_video("a", video(0))
        with pytest.raises(CacheError, match="already in the feature cache"):
            w.add_video("a", video(1))
        with pytest.raises(CacheError, match="3 layers given, the cache keeps 4"):
            w.add_video("b", video(0, k=3))
        with pytest.raises(CacheError, match=r"features must be \(T, K, N, D\)"):
            w.add_video("b", video(0)[0])
        with pytest.raises(CacheError, match="width 8, the manifest says video_width = 16"):
            w.add_video("b", video(0, d=8))
        bad = video(0)
        bad[0, 0, 0, 0] = np.nan
        with pytest.raises(CacheError, match="NaN or infinite"):
            w.add_video("b", bad)
        with pytest.raises(CacheError, match="float16 range"):
            w.add_video("b", video(0) * 1e5)
        with pytest.raises(CacheError, match="empty features"):
            w.add_video("b", video(0, t=0))
        with pytest.raises(CacheError, match="mask has shape"):
            w.add_query("q", query(0)[0], np.ones(5, bool))
        with pytest.raises(CacheError, match="floating point"):
            w.add_video("b", video(0).astype(np.int32))
    with cache.writer() as w:
        with pytest.raises(CacheError, match="already in the feature cache"):
            w.add_video("a", video(0))  # committed by the first writer
    assert cache.video_ids() == ["a"]
    assert FeatureCache.open(cache.path).video_ids() == ["a"]


def test_shards_roll_over_and_commit_on_close(tmp_path, make_manifest, features):
    video, _ = features
    cache = FeatureCache.create(tmp_path / "c", make_manifest())
    committed = []
    with cache.writer(max_shard_items=3, on_commit=lambda p, fam, ids: committed.append((p.name, ids))) as w:
        for i in range(7):
            w.add_video(f"v{i}", video(i))
            # committed items are visible at once; the open shard's items are not
            assert cache.has_video("v0") == (i >= 2)
    assert [ids for _, ids in committed] == [["v0", "v1", "v2"], ["v3", "v4", "v5"], ["v6"]]
    assert len(cache.shard_paths()) == 3
    assert not list((tmp_path / "c" / "shards").glob("*.partial"))
    # by bytes: each video is 5*3*16*2 = 480 bytes per layer, 1920 per video: 2 per shard
    cache2 = FeatureCache.create(tmp_path / "d", make_manifest())
    with cache2.writer(max_shard_bytes=3000) as w:
        for i in range(5):
            w.add_video(f"v{i}", video(i))
    assert len(cache2.shard_paths()) == 3  # 2 + 2 + 1
    # an exception inside the with block still commits what was added
    cache3 = FeatureCache.create(tmp_path / "e", make_manifest())
    with pytest.raises(RuntimeError):
        with cache3.writer() as w:
            w.add_video("kept", video(0))
            raise RuntimeError("decode failed")
    assert FeatureCache.open(tmp_path / "e").video_ids() == ["kept"]


def test_index_follows_the_shards_and_refresh_sees_new_ones(build_cache, features):
    video, _ = features
    cache = build_cache(videos={"a": 0}, writer_options={"max_shard_items": 1})
    other = FeatureCache.open(cache.path)
    with cache.writer() as w:
        w.add_video("b", video(1))
    assert not other.has_video("b")
    assert other.refresh() and other.has_video("b")
    assert np.array_equal(other.load_video("b"), cache.load_video("b"))
    # the sidecar index is only a cache: a deleted shard takes its items with it
    cache.video_shard("a").unlink()
    assert FeatureCache.open(cache.path).video_ids() == ["b"]
    assert other.refresh() and other.video_ids() == ["b"]
    # a damaged or stale sidecar is rebuilt from the shards
    (cache.path / "index.json").write_text("{not json")
    assert FeatureCache.open(cache.path).video_ids() == ["b"]
    data = json.loads((cache.path / "index.json").read_text())
    assert len(data["shards"]) == 1
    for entry in data["shards"].values():  # lie about the contents; size/mtime still match
        entry["ids"] = ["ghost"]
    (cache.path / "index.json").write_text(json.dumps(data))
    assert FeatureCache.open(cache.path).video_ids() == ["b"]  # the sidecar's checksum fails
    # a sidecar that lies with a valid checksum: the first read that misses the id in its
    # shard reads the shard again; the ghost is gone and the real item is back
    data["checksum"] = ShardIndex._checksum(data["shards"])
    (cache.path / "index.json").write_text(json.dumps(data))
    lying = FeatureCache.open(cache.path)
    assert lying.video_ids() == ["ghost"]
    with pytest.raises(MissingItemError, match="video 'ghost' is not in the feature cache"):
        lying.load_video("ghost")
    assert lying.video_ids() == ["b"] and np.array_equal(lying.load_video("b"), cache.load_video("b"))
    assert FeatureCache.open(cache.path).video_ids() == ["b"]  # and the sidecar was rewritten
    (cache.path / "index.json").write_text(json.dumps(data))
    cache.video_shard("b").touch()  # a shard whose mtime differs is read again at once
    assert FeatureCache.open(cache.path).video_ids() == ["b"]


@pytest.mark.parametrize("dtype", ["float16", "float32", "int8"])
def test_a_stale_sidecar_that_puts_an_id_in_the_wrong_shard_still_reads_the_right_data(
        build_cache, features, dtype):
    # a sidecar with a valid checksum claims the first shard holds "x" too; the first read
    # finds "x" missing there, rescans, and must read the offsets AND the bytes of the shard
    # that really holds it (it used to read shard B's offsets from shard A's file: garbage)
    video, _ = features
    cache = build_cache(videos={"a": 0, "x": 1}, writer_options={"max_shard_items": 1}, dtype=dtype)
    truth = {vid: cache.load_video(vid) for vid in ("a", "x")}
    shard_a, shard_x = cache.video_shard("a").name, cache.video_shard("x").name
    assert shard_a < shard_x  # the lie must win the lookup: its shard sorts first
    data = json.loads((cache.path / "index.json").read_text())
    data["shards"][shard_a]["ids"] = ["a", "x"]
    data["checksum"] = ShardIndex._checksum(data["shards"])
    (cache.path / "index.json").write_text(json.dumps(data))
    for first in ("load", "shape", "attrs"):  # whichever read meets the lie first
        lying = FeatureCache.open(cache.path)
        assert lying.video_shard("x").name == shard_a
        if first == "shape":
            assert lying.video_shape("x") == truth["x"].shape
        elif first == "attrs":
            assert lying.video_attrs("x")["source"] == "/data/x.mp4"
        assert np.array_equal(lying.load_video("x"), truth["x"])
        assert np.array_equal(lying.load_video("x", layers=[12]), truth["x"][:, -1:])
        assert np.array_equal(lying.load_video("a"), truth["a"])
        assert lying.video_shard("x").name == shard_x
        (cache.path / "index.json").write_text(json.dumps(data))  # lie again for the next round


def test_has_video_is_cheap_for_thousands_of_ids(build_cache):
    import time

    cache = build_cache(videos={f"v{i}": i for i in range(20)})
    ids = [f"v{i}" for i in range(20000)]
    t = time.perf_counter()
    hits = sum(cache.has_video(v) for v in ids)
    assert hits == 20 and time.perf_counter() - t < 0.5


def test_cache_pickles_without_open_files(build_cache):
    cache = build_cache(videos={"a": 1})
    first = cache.load_video("a")
    clone = pickle.loads(pickle.dumps(cache))
    assert np.array_equal(clone.load_video("a"), first)
    assert clone.video_ids() == ["a"]


def test_int8_quantisation_and_fast_float16_conversion():
    x = clip_like_features((6, 5, 64), outliers=2, factor=20.0)
    q, s = quantize_int8(x)
    assert q.dtype == np.int8 and s.shape == (6, 5) and np.abs(q).max() == 127
    y = dequantize_int8(q, s)
    assert np.abs(x - y).max() <= s.max() / 2 * 1.0001
    zero = np.zeros((2, 8), np.float32)
    assert not dequantize_int8(*quantize_int8(zero)).any()
    err = int8_error(x, range(2))
    assert err["rel_error"] < 0.06 and err["min_token_cosine"] > 0.99
    # every finite half value converts bit-exactly; inf/nan too (through the slow path)
    allh = np.arange(65536, dtype=np.uint16).view(np.float16)
    out = np.empty(65536, np.float32)
    f16_to_f32(allh, out)
    ref = allh.astype(np.float32)
    fin = np.isfinite(ref)
    assert np.array_equal(out[fin].view(np.uint32), ref[fin].view(np.uint32))
    assert np.array_equal(np.isnan(out), np.isnan(ref)) and np.array_equal(out[np.isinf(ref)], ref[np.isinf(ref)])
    strided = np.empty((4, 3, 5), np.float32)
    src = np.random.default_rng(0).standard_normal((4, 5)).astype(np.float16)
    f16_to_f32(src, strided[:, 1])
    assert np.array_equal(strided[:, 1], src.astype(np.float32))


def test_an_empty_layer_list_and_non_float_dtypes_are_refused(build_cache):
    cache = build_cache(videos={"a": 1}, queries={"q": 1})
    with pytest.raises(CacheError, match=r"layers=\[\] asks for no layer: give layer ids from \[9, 10, 11, 12\]"):
        cache.load_video("a", layers=[])
    with pytest.raises(CacheError, match=r"layers=\[\]"):
        cache.load_query("q", layers=())
    for dtype in (np.int8, np.int32, bool):
        with pytest.raises(ValueError, match="dtype must be a float type .* or None for the stored type"):
            cache.load_video("a", dtype=dtype)
    with pytest.raises(ValueError, match="dtype must be a float type"):
        cache.load_query("q", dtype=np.uint8)
    with pytest.raises(ValueError, match="out must be a float array; got int16"):
        cache.load_video("a", out=np.zeros((5, 4, 3, 16), np.int16))
    assert cache.load_video("a", dtype=np.float64).dtype == np.float64  # floats are fine


@pytest.mark.parametrize("block", [100, 200, 10**6])
def test_float16_to_float32_reads_in_blocks_are_exact(build_cache, features, monkeypatch, block):
    """The float32 default reads a float16 layer in blocks of rows (96 bytes a row here):
    1 row, 2 rows (the last block shorter) and one block for all."""
    import r2.cache.reader as reader

    monkeypatch.setattr(reader, "_BLOCK_BYTES", block)
    video, _ = features
    cache = build_cache(videos={"a": 1})
    x16 = video(1).astype(np.float16)
    got = FeatureCache.open(cache.path).load_video("a", layers=[12, 9, 10])
    assert np.array_equal(got.view(np.uint32), x16[:, [3, 0, 1]].astype(np.float32).view(np.uint32))
    batch = np.full((2, 7, 4, 3, 16), -1, np.float32)  # into a slice of a padded batch
    cache.load_video("a", out=batch[1, :5])
    assert np.array_equal(batch[1, :5], x16.astype(np.float32)) and (batch[1, 5:] == -1).all()


def test_two_writers_of_one_cache_object_see_each_others_pending_ids(build_cache, features):
    video, _ = features
    cache = build_cache()
    w1, w2 = cache.writer(), cache.writer()
    w1.add_video("x", video(1))
    with pytest.raises(CacheError, match=r"'x' is already in the feature cache at .* \(added by another "
                                         r"writer of this cache, not committed yet\)"):
        w2.add_video("x", video(2))
    with pytest.raises(CacheError, match="added earlier by this writer"):
        w1.add_video("x", video(1))
    w1.flush()
    with pytest.raises(CacheError, match=r"video 'x' is already in the feature cache at \S+$"):
        w2.add_video("x", video(2))
    w1.add_video("y", video(3))
    w1.abort()  # dropped: the id is free again
    w2.add_video("y", video(4))
    w2.close()
    w1.close()
    assert cache.video_ids() == ["x", "y"]
    y = FeatureCache.open(cache.path).load_video("y")
    assert np.array_equal(y, video(4).astype(np.float16).astype(np.float32))


def test_the_first_item_pins_the_shapes(tmp_path, make_manifest, features):
    video, query = features
    m = make_manifest()
    del m["video_width"], m["query_width"]
    cache = FeatureCache.create(tmp_path / "c", m)
    with cache.writer() as w:
        w.add_video("a", video(0, n=3, d=16))
        with pytest.raises(CacheError, match=r"video 'b': 5 tokens per frame, the manifest says "
                                             r"tokens_per_frame = 3 \(the cache at .* holds the features"):
            w.add_video("b", video(1, n=5, d=16))
        with pytest.raises(CacheError, match="video 'b': width 24, the manifest says video_width = 16"):
            w.add_video("b", video(1, n=3, d=24))
        w.add_query("q", *query(0, d=8))
        with pytest.raises(CacheError, match="query 'r': width 4, the manifest says query_width = 8"):
            w.add_query("r", *query(1, d=4))
    on_disk = json.loads((cache.path / "manifest.json").read_text())
    assert (on_disk["tokens_per_frame"], on_disk["video_width"], on_disk["query_width"]) == (3, 16, 8)
    # another process's writer reads them from the manifest
    with FeatureCache.open(cache.path).writer() as w:
        with pytest.raises(CacheError, match="width 24"):
            w.add_video("c", video(2, d=24))
    # a cache written before shapes were pinned: the items already there pin them
    del on_disk["tokens_per_frame"], on_disk["video_width"], on_disk["query_width"]
    (cache.path / "manifest.json").write_text(json.dumps(on_disk))
    with FeatureCache.open(cache.path).writer() as w:
        with pytest.raises(CacheError, match="5 tokens per frame, the manifest says tokens_per_frame = 3"):
            w.add_video("c", video(2, n=5))
    assert json.loads((cache.path / "manifest.json").read_text())["tokens_per_frame"] == 3
    assert FeatureCache.open(cache.path).video_ids() == ["a"]
