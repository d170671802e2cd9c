"""A writer killed with SIGKILL leaves only committed shards; its partial is removed by the
next writer, never by a reader, and never while its writer lives."""

import os
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

from r2.cache import CacheWarning, FeatureCache, verify

# A writer process: adds videos v0, v1, ... with 3 per shard and prints after each one.
# argv: cache dir, number of videos before it stops and waits ("ready"), or -1 for no stop.
_WRITER = r"""
import sys, time
import numpy as np
from r2.cache import FeatureCache
m = {"model_id": "m", "model_config_hash": "h", "layers": [9, 10, 11, 12], "fps": 0.5,
     "preprocessing": {}, "command": "r2 extract vids --out cache"}
cache = FeatureCache.create(sys.argv[1], m)
stop = int(sys.argv[2])
def video(i):
    return np.random.default_rng(i).standard_normal((6, 4, 10, 32)).astype(np.float32)
def committed(path, family, ids):
    print("committed " + " ".join(ids), flush=True)
w = cache.writer(max_shard_items=3, on_commit=committed)
i = 0
while True:
    w.add_video(f"v{i}", video(i), index=i)
    print(f"added v{i}", flush=True)
    i += 1
    if i == stop:
        print("ready", flush=True)
        line = sys.stdin.readline()   # wait; the test kills us, or tells us to finish
        w.close()
        print("closed", flush=True)
        break
"""


def _video(i):
    return np.random.default_rng(i).standard_normal((6, 4, 10, 32)).astype(np.float32)


def _start(cache_dir, stop):
    return subprocess.Popen([sys.executable, "-c", _WRITER, str(cache_dir), str(stop)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _read_until(proc, word):
    lines = []
    while True:
        line = proc.stdout.readline()
        assert line, f"writer ended early: {lines}"
        lines.append(line.strip())
        if line.strip().startswith(word):
            return lines


def _check_items(cache, n):
    assert cache.video_ids() == sorted(f"v{i}" for i in range(n))
    for i in range(n):
        assert np.array_equal(cache.load_video(f"v{i}"), _video(i).astype(np.float16).astype(np.float32))
        assert cache.video_attrs(f"v{i}") == {"index": i}


def test_sigkill_in_the_middle_of_a_shard_keeps_exactly_the_committed_items(tmp_path):
    cache_dir = tmp_path / "cache"
    proc = _start(cache_dir, stop=8)  # shards [v0 v1 v2] [v3 v4 v5] committed; v6, v7 in the partial
    lines = _read_until(proc, "ready")
    assert "committed v3 v4 v5" in lines
    partials = list((cache_dir / "shards").glob("*.h5.partial"))
    assert len(partials) == 1 and partials[0].stat().st_size > 0
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL

    cache = FeatureCache.open(cache_dir)  # a reader: opens, ignores the partial, deletes nothing
    _check_items(cache, 6)
    assert partials[0].exists()
    report = verify(cache_dir)
    assert report.ok, report.format()
    assert report.videos_checked == 6 and "partial shard" in " ".join(report.warnings)

    with pytest.warns(CacheWarning, match="removed 1 partial shard"):
        w = cache.writer()
    assert not partials[0].exists()
    assert list((cache_dir / "locks").glob("*.lock")) == [w._lock.path]  # the dead writer's is gone
    w.add_video("v6", _video(6), index=6)  # the resumed run re-extracts what was lost
    w.close()
    _check_items(FeatureCache.open(cache_dir), 7)
    assert verify(cache_dir).ok


def test_sigkill_at_a_random_moment_leaves_a_consistent_cache(tmp_path):
    cache_dir = tmp_path / "cache"
    proc = _start(cache_dir, stop=-1)  # writes until killed
    _read_until(proc, "committed v3")
    time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    reported = set()
    for line in proc.stdout.read().splitlines() + ["committed v0 v1 v2 v3 v4 v5"]:
        if line.startswith("committed"):
            reported.update(line.split()[1:])
    cache = FeatureCache.open(cache_dir)
    n = len(cache.video_ids())
    assert n % 3 == 0 and n >= 6
    assert reported <= set(cache.video_ids())  # everything reported committed is there
    _check_items(cache, n)  # and exactly a prefix of whole shards, with the right data
    assert verify(cache_dir).ok


def test_a_live_writers_partial_is_left_alone(tmp_path):
    cache_dir = tmp_path / "cache"
    proc = _start(cache_dir, stop=2)  # v0, v1 in its open partial shard
    try:
        _read_until(proc, "ready")
        partial = next((cache_dir / "shards").glob("*.h5.partial"))
        cache = FeatureCache.open(cache_dir)
        assert cache.video_ids() == []
        with warnings.catch_warnings():
            warnings.simplefilter("error", CacheWarning)  # no "removed partial" warning
            with cache.writer() as w:  # a second writer on the same cache, at the same time
                w.add_video("mine", _video(99), index=99)
        assert partial.exists()
        assert verify(cache_dir).ok
        proc.stdin.write("finish\n")
        proc.stdin.flush()
        _read_until(proc, "closed")
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert not partial.exists()
    assert cache.refresh()
    assert cache.video_ids() == ["mine", "v0", "v1"]
    assert verify(cache_dir).ok


def test_a_writer_that_fails_while_taking_its_lock_leaves_no_lock_file(tmp_path, monkeypatch):
    import fcntl

    cache = FeatureCache.create(tmp_path / "cache", {"model_id": "m", "model_config_hash": "h",
                                                     "layers": [1], "fps": 1.0, "preprocessing": {}})
    real_rename = os.rename

    def failing_rename(src, dst):
        if str(src).endswith(".lock.tmp"):
            raise OSError(28, "No space left on device")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", failing_rename)
    with pytest.raises(OSError, match="No space left"):
        cache.writer()
    monkeypatch.undo()
    assert list((tmp_path / "cache" / "locks").iterdir()) == []
    # one left by a writer killed at that moment is removed by the next writer; one being
    # taken by a live writer (locked) is left alone
    locks = tmp_path / "cache" / "locks"
    (locks / ".host-1-dead.lock.tmp").write_text("host 1\n")
    fd = os.open(locks / ".host-2-live.lock.tmp", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a live writer half-way through taking its lock
    try:
        with cache.writer() as w:
            names = sorted(p.name for p in locks.iterdir())
            assert names == [".host-2-live.lock.tmp", w._lock.path.name], names
    finally:
        os.close(fd)


@pytest.mark.parametrize("cleaner", ["deletes it first", "holds it while deleting"])
def test_a_cleaner_that_deletes_a_lock_being_taken_does_not_break_its_writer(tmp_path, monkeypatch, cleaner):
    # A writer creates locks/.<prefix>.lock.tmp, then flocks it: in between, another writer's
    # cleanup sees an unlocked temporary lock (it looks like one a killed writer left) and
    # deletes it. The writer must notice, take its lock again and work; it used to fail with an
    # OSError from the rename (or from its non-blocking flock while the cleaner held the lock).
    import fcntl
    import threading

    from r2.cache.shards import remove_stale_partials

    root = tmp_path / "cache"
    cache = FeatureCache.create(root, {"model_id": "m", "model_config_hash": "h", "layers": [1],
                                       "fps": 1.0, "preprocessing": {}})
    real_flock = fcntl.flock
    struck = []

    def flock(fd, op):
        target = os.readlink(f"/proc/self/fd/{fd}")
        if not struck and target.endswith(".lock.tmp"):  # the writer's first flock of its lock
            struck.append(target)
            if cleaner == "deletes it first":
                remove_stale_partials(root)  # what a writer starting now runs
            else:  # the cleaner has locked it and is about to delete it while the writer asks
                cfd = os.open(target, os.O_RDWR)
                real_flock(cfd, fcntl.LOCK_EX | fcntl.LOCK_NB)

                def finish():
                    os.unlink(target)
                    os.close(cfd)
                threading.Timer(0.3, finish).start()
        return real_flock(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        w = cache.writer()
    assert struck and not os.path.exists(struck[0])
    try:
        # its lock is held under its final name (so no cleaner takes it for a dead writer's)
        assert sorted(p.name for p in (root / "locks").iterdir()) == [w._lock.path.name]
        fd = os.open(w._lock.path, os.O_RDWR)
        with pytest.raises(BlockingIOError):
            real_flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(fd)
        w.add_video("v0", _video(0)[:, :1])
    finally:
        w.close()
    assert FeatureCache.open(root).video_ids() == ["v0"] and verify(root).ok
    assert list((root / "locks").glob("*.lock*")) == []


def test_a_cleaner_whose_name_was_made_anew_before_it_locked_leaves_the_new_file(tmp_path, monkeypatch):
    """Cleaner 2 opens a stale lock file; cleaner 1 deletes it and its creator makes it anew;
    then cleaner 2 gets the (free) lock of the deleted file: it must not delete the new one."""
    import fcntl

    from r2.cache.locking import create_locked, lock_if_current

    path = tmp_path / "w.lock"
    path.write_text("old")
    real_flock = fcntl.flock
    swapped = []

    def flock(fd, op):  # between cleaner 2's open and its flock: the name gets a new file
        if not swapped:
            swapped.append(1)
            path.unlink()
            path.write_text("new")
        return real_flock(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock)
    assert lock_if_current(path) is None
    assert path.read_text() == "new"
    fd = lock_if_current(path)  # the current file, free: locked
    assert fd is not None
    os.close(fd)

    # a creator whose new name vanished before it could open it simply makes it again
    monkeypatch.setattr(fcntl, "flock", real_flock)
    calls = []

    def create(p):
        calls.append(1)
        if len(calls) == 1:
            raise FileNotFoundError(p)
        return os.open(p, os.O_RDWR | os.O_CREAT | os.O_EXCL)

    fd = create_locked(tmp_path / "d.lock", create)
    assert len(calls) == 2 and (tmp_path / "d.lock").exists()
    os.close(fd)


def test_a_half_written_item_that_cannot_be_removed_drops_its_shard_and_closes_the_writer(
        build_cache, make_manifest, features, monkeypatch):
    """A full disk: the third layer of v1 fails, and so does deleting v1's group. The partial
    shard then holds a half-written item, so it is dropped (never committed) with v0, the other
    item added since its last commit; the query's shard is whole and committed."""
    import h5py

    from r2.cache import ShardDiscardedError

    video, query = features
    cache = FeatureCache.create(build_cache("c").path, make_manifest())
    writer = cache.writer()
    writer.add_video("v0", video(0))
    writer.add_query("q0", *query(0))
    real_create, made = h5py.Group.create_dataset, []

    def create_dataset(group, name, *args, **kwargs):  # v1's third layer finds the disk full
        if group.name.startswith("/videos/"):
            made.append(name)
            if len(made) > 2:
                raise OSError(28, "No space left on device")
        return real_create(group, name, *args, **kwargs)

    def no_delete(self, name):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(h5py.Group, "create_dataset", create_dataset)
    monkeypatch.setattr(h5py.Group, "__delitem__", no_delete)
    with pytest.raises(ShardDiscardedError, match=r"video 'v1' failed half-way \(OSError: .*No space left"
                                                  r".*dropped with the 1 item\(s\).*this writer is closed") as err:
        writer.add_video("v1", video(1))
    assert err.value.dropped == ["v0"]
    monkeypatch.undo()
    with pytest.raises(Exception, match="closed"):
        writer.add_video("v2", video(2))
    reopened = FeatureCache.open(cache.path)
    assert reopened.video_ids() == [] and reopened.query_ids() == ["q0"]
    assert not list((cache.path / "shards").glob("*.partial"))
    assert verify(cache.path).ok
    with reopened.writer() as again:  # a rerun adds them again
        again.add_video("v0", video(0))
        again.add_video("v1", video(1))
    np.testing.assert_allclose(FeatureCache.open(cache.path).load_video("v1"), video(1), rtol=1e-3, atol=1e-3)
