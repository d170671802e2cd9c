"""A shard that cannot be committed (an I/O error at fsync, a full disk at flush) is dropped
like a shard with a half-written item: ShardDiscardedError names the items that went with it,
their ids are free again, no partial is left and the writer is closed. Also ids that cannot be
stored and a `shards` that is not a directory are one-line errors."""

import errno
import os

import numpy as np
import pytest
from click.testing import CliRunner

from r2.cache import CacheError, FeatureCache, ShardDiscardedError, verify
from r2.cli import main


def _fail_fsync_of_partials(monkeypatch, err=errno.EIO, times=1):
    real = os.fsync
    failed = []

    def fsync(fd):
        if len(failed) < times and os.readlink(f"/proc/self/fd/{fd}").endswith(".h5.partial"):
            failed.append(fd)
            raise OSError(err, os.strerror(err))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return failed


def test_an_io_error_while_committing_a_shard_drops_it_and_names_its_items(build_cache, make_manifest,
                                                                            features, monkeypatch):
    video, query = features
    cache = FeatureCache.create(build_cache("c").path, make_manifest())
    writer = cache.writer(max_shard_items=3)
    writer.add_query("q0", *query(0))  # the other family's shard is whole: committed on close
    writer.add_video("v0", video(0))
    writer.add_video("v1", video(1))
    failed = _fail_fsync_of_partials(monkeypatch)
    with pytest.raises(ShardDiscardedError, match=r"could not commit the shard videos-.*\.h5\.partial \(OSError: "
                                                  r".*Input/output error\); it was dropped with the 3 videos .*"
                                                  r"'v0', 'v1', 'v2'.*this writer is closed") as err:
        writer.add_video("v2", video(2))  # fills the shard: the commit fails
    monkeypatch.undo()
    assert failed and err.value.dropped == ["v0", "v1", "v2"]
    assert isinstance(err.value.__cause__, OSError)
    with pytest.raises(CacheError, match="closed"):
        writer.add_video("v0", video(0))
    assert not cache._pending["videos"] and not cache._pending["queries"]
    assert not list((cache.path / "shards").glob("*.partial"))
    reopened = FeatureCache.open(cache.path)
    assert reopened.video_ids() == [] and reopened.query_ids() == ["q0"]
    assert verify(cache.path).ok
    with cache.writer() as again:  # in the same process too: the ids were released
        for i in range(3):
            again.add_video(f"v{i}", video(i))
    np.testing.assert_allclose(FeatureCache.open(cache.path).load_video("v2"), video(2), rtol=1e-3, atol=1e-3)


def test_a_failed_commit_on_close_is_a_shard_discarded_error_too(build_cache, make_manifest, features,
                                                                 monkeypatch):
    video, _ = features
    cache = FeatureCache.create(build_cache("c").path, make_manifest())
    writer = cache.writer()
    writer.add_video("v0", video(0))
    _fail_fsync_of_partials(monkeypatch, errno.ENOSPC)
    with pytest.raises(ShardDiscardedError, match="No space left") as err:
        writer.close()
    monkeypatch.undo()
    assert err.value.dropped == ["v0"]
    writer.close()  # closed: nothing more to do
    assert sorted(p.name for p in (cache.path / "shards").iterdir()) == []
    assert list((cache.path / "locks").glob("*.lock")) == []  # the writer's lock is released


def test_when_both_open_shards_fail_to_commit_the_error_names_the_items_of_both(build_cache, make_manifest,
                                                                                features, monkeypatch):
    video, query = features
    cache = FeatureCache.create(build_cache("c").path, make_manifest())
    writer = cache.writer()
    writer.add_video("v0", video(0))
    writer.add_query("q0", *query(0))
    failed = _fail_fsync_of_partials(monkeypatch, times=2)
    with pytest.raises(ShardDiscardedError) as err:
        writer.flush()
    monkeypatch.undo()
    assert len(failed) == 2 and sorted(err.value.dropped) == ["q0", "v0"]
    assert sorted(p.name for p in (cache.path / "shards").iterdir()) == []
    assert not cache._pending["videos"] and not cache._pending["queries"]


@pytest.mark.parametrize("bad", ["\ud800", "clip-\udfff-x"])
def test_an_id_that_cannot_be_stored_is_refused_when_it_is_added(build_cache, features, bad):
    video, query = features
    cache = build_cache("c")
    with cache.writer() as w:
        with pytest.raises(CacheError, match=r"video id .* cannot be stored: it is not valid text"):
            w.add_video(bad, video(0))
        with pytest.raises(CacheError, match=r"video id .* cannot be stored"):
            w.begin_video(bad)
        with pytest.raises(CacheError, match=r"query id .* cannot be stored"):
            w.add_query(bad, *query(0))
        w.add_video("fine", video(1))  # the writer goes on
        w.add_video("caf\udce9", video(2))  # an undecodable file-name byte is stored as it is
    reopened = FeatureCache.open(cache.path)
    assert reopened.video_ids() == ["caf\udce9", "fine"] and verify(cache.path).ok


def test_shards_that_is_a_file_is_a_one_line_error(build_cache, make_manifest):
    cache = build_cache("c", videos={"v0": 0})
    shards = cache.path / "shards"
    for p in shards.iterdir():
        p.unlink()
    shards.rmdir()
    shards.write_text("not a directory")
    runner = CliRunner()
    for command in (["cache", "info"], ["cache", "verify"]):
        result = runner.invoke(main, command + [str(cache.path)])
        assert result.exit_code == 1, result.output
        assert result.output.strip().splitlines() == [
            f"Error: {shards} is not a directory (a feature cache keeps its shard files there): move it "
            "away, or rebuild the cache"], result.output
    with pytest.raises(CacheError, match="is not a directory"):
        FeatureCache.create(cache.path, make_manifest())
