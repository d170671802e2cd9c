"""Several processes at once: forked readers of a cache the parent already read from,
spawned readers of a pickled cache, and two writer processes on one cache."""

import multiprocessing as mp
import os
import subprocess
import sys
import zlib

import numpy as np
import pytest

from r2.cache import CacheError, FeatureCache, verify
from r2.cache.shards import parse_shard_name


def _digest(cache, vid):
    return zlib.crc32(cache.load_video(vid, layers=[12, 10]).tobytes())


def _forked_reader(cache, ids, seed, queue):
    # runs in a forked child; `cache` (with the parent's open shards) was inherited, not pickled
    order = list(ids)
    np.random.default_rng(seed).shuffle(order)
    try:
        digests = {vid: _digest(cache, vid) for vid in order * 3}
        # the child noticed the fork and reads through its own handles, not the parent's
        reopened = cache._pid == os.getpid() and all(h.fd is not None for h in cache._handles.values())
        queue.put((seed, digests if reopened else "parent handles reused"))
    except Exception as exc:  # pragma: no cover - reported to the parent
        queue.put((seed, repr(exc)))


def test_forked_processes_read_at_once_after_the_parent_opened_the_shards(build_cache):
    ids = [f"v{i}" for i in range(12)]
    cache = build_cache(videos={v: i for i, v in enumerate(ids)}, writer_options={"max_shard_items": 4})
    cache = FeatureCache.open(cache.path)
    expected = {vid: _digest(cache, vid) for vid in ids}  # the parent now holds open handles
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_forked_reader, args=(cache, ids, seed, queue)) for seed in range(4)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert all(r == expected for r in results.values()), results
    assert {vid: _digest(cache, vid) for vid in ids} == expected  # the parent's handles still work


def test_spawned_pool_reads_a_pickled_cache(build_cache):
    ids = [f"v{i}" for i in range(8)]
    cache = build_cache(videos={v: i for i, v in enumerate(ids)}, queries={"q": 1})
    cache.load_video("v0")
    with mp.get_context("spawn").Pool(2) as pool:
        videos = pool.map(cache.load_video, ids)
        queries = pool.map(cache.load_query, ["q", "q"])
    for vid, x in zip(ids, videos):
        assert np.array_equal(x, cache.load_video(vid))
    assert all(np.array_equal(f, cache.load_query("q")[0]) for f, _ in queries)


_WRITER = r"""
import sys
import numpy as np
from r2.cache import FeatureCache
m = {"model_id": "m", "model_config_hash": "h", "layers": [9, 10, 11, 12], "fps": 0.5, "preprocessing": {}}
cache = FeatureCache.create(sys.argv[1], m)
name = sys.argv[2]
with cache.writer(max_shard_items=2) as w:
    for i in range(7):
        w.add_video(f"{name}/{i}", np.full((3, 4, 2, 8), i, np.float32), writer=name)
        w.add_query(f"{name}/q{i}", np.full((4, 5, 8), -i, np.float32), np.ones(5, bool))
print("done")
"""


def test_two_writer_processes_on_one_cache_never_collide(tmp_path):
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path / "c"), name],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name in ("w1", "w2", "w3")]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    cache = FeatureCache.open(tmp_path / "c")
    assert len(cache.video_ids()) == 21 and len(cache.query_ids()) == 21
    for name in ("w1", "w2", "w3"):
        for i in range(7):
            assert (cache.load_video(f"{name}/{i}") == i).all()
            assert cache.video_attrs(f"{name}/{i}") == {"writer": name}
    prefixes = {parse_shard_name(p.name).prefix for p in cache.shard_paths()}
    assert len(prefixes) == 3  # one shard prefix per writer
    assert verify(cache.path).ok
    assert not list((tmp_path / "c" / "locks").glob("*.lock"))


_CLAIMING_WRITER = r"""
import sys, time
from r2.cache import FeatureCache
w = FeatureCache.open(sys.argv[1]).writer()
assert w.claim_video("a") and w.claim_video("b")
print("claimed", flush=True)
time.sleep(120)
"""


def test_a_claim_lasts_as_long_as_its_writer_even_when_it_is_killed(build_cache, features):
    """Writers share videos through claims: one taken by a live writer of another process is
    refused, one in the cache too (committed by any writer, seen without reopening the cache);
    a claim is this writer's for good (asked again: yes). When the claiming process is killed
    (SIGKILL), its claims go with its lock, and the videos can be taken again."""
    video, _ = features
    cache = build_cache("c", videos={"done": 0})
    proc = subprocess.Popen([sys.executable, "-c", _CLAIMING_WRITER, str(cache.path)], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "claimed"
        mine = FeatureCache.open(cache.path).writer()
        assert not mine.claim_video("a") and not mine.claim_video("b")
        assert not mine.claim_video("done")
        assert mine.claim_video("c") and mine.claim_video("c")
        late = FeatureCache.open(cache.path).writer()
        assert not late.claim_video("c")  # (in this process too)
        assert late.claim_video("d")
        late.add_video("d", video(1))
        late.close()
        assert not mine.claim_video("d")  # committed meanwhile: seen without reopening the cache
        proc.kill()
        proc.wait(timeout=30)
        assert mine.claim_video("a") and mine.claim_video("b")
        mine.close()
    finally:
        proc.kill()
        proc.wait(timeout=30)
    after = FeatureCache.open(cache.path).writer()
    assert after.claim_video("c") and after.claim_video("a")  # closed writers' claims are gone too
    after.close()


def test_add_video_claims_the_video_and_refuses_one_another_live_writer_claimed(build_cache, features):
    """Before, add_video did not look at claims: a video that another process was extracting
    was stored twice (two shards holding one id)."""
    import socket

    video, _ = features
    cache = build_cache("c")
    proc = subprocess.Popen([sys.executable, "-c", _CLAIMING_WRITER, str(cache.path)], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "claimed"
        mine = FeatureCache.open(cache.path).writer()
        with pytest.raises(CacheError) as info:
            mine.add_video("a", video(0))
        assert str(info.value) == (f"video 'a' is being added to the feature cache at {cache.path} by another writer "
                                   f"(pid {proc.pid} on {socket.gethostname()}, which claimed it): adding it here "
                                   "too would store it twice; it is free again once that writer stops")
        with pytest.raises(CacheError, match="'b' is being added .* by another writer"):
            mine.begin_video("b")
        mine.add_video("c", video(1))  # claimed by add_video: another writer leaves it
        other = FeatureCache.open(cache.path).writer()
        assert not other.claim_video("c")
        with pytest.raises(CacheError, match=rf"'c' is being added .* \(pid {os.getpid()} on "):
            other.add_video("c", video(1))
        stale = FeatureCache.open(cache.path).writer()  # opened before "e" is committed
        with FeatureCache.open(cache.path).writer() as w:
            w.add_video("e", video(3))
        with pytest.raises(CacheError, match=r"^video 'e' is already in the feature cache at \S+ \(committed by "
                                             r"another writer since this one opened the cache\)$"):
            stale.add_video("e", video(4))
        stale.close()
        proc.kill()
        proc.wait(timeout=30)
        mine.add_video("a", video(2))  # its claimer is gone
        mine.close()
        other.close()
    finally:
        proc.kill()
        proc.wait(timeout=30)
    cache = FeatureCache.open(cache.path)
    assert cache.video_ids() == ["a", "c", "e"] and (cache.load_video("a") == video(2).astype(np.float16)).all()
    assert verify(cache.path).ok and not verify(cache.path).warnings  # no id in two shards


def test_a_claim_that_cannot_be_written_leaves_the_video_to_this_writer(build_cache, monkeypatch):
    """Claims only inform: when the lock file cannot take one (a full disk), the writer works
    on the video as it would without claims, and says yes again when asked again."""
    import errno

    from r2.cache.shards import WriterLock

    def full(self, item_id):
        raise OSError(errno.ENOSPC, "No space left on device")

    cache = build_cache("c")
    w = FeatureCache.open(cache.path).writer()
    monkeypatch.setattr(WriterLock, "append_claim", full)
    assert w.claim_video("a") and w.claim_video("a")
    w.close()
