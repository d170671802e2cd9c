"""A shard that cannot be committed (an I/O error at fsync, a full disk at flush) is dropped
like a shard with a half-written item: ShardDiscardedError names the items that went with it,
their ids are free again, no partial is left and the writer is closed. Also ids that cannot be
stored and a `shards` that is not a directory are one-line errors."""

import errno
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from r2.cache import CacheError, FeatureCache, NoSpaceError, ShardDiscardedError, verify
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


def test_an_item_without_room_on_the_disk_is_refused_before_anything_is_written(build_cache, make_manifest,
                                                                             features, monkeypatch):
    """HDF5 reports a full disk only as ignored errors (and the process may crash at exit):
    the writer asks the file system first, and an item without room is a one-line error; the
    shard stays whole and the writer goes on."""
    from r2.cache import writer as writer_module

    video, _ = features
    cache = FeatureCache.create(build_cache("c").path, make_manifest())
    real = os.statvfs
    free_blocks = {"n": None}

    def statvfs(path):
        st = real(path)
        if free_blocks["n"] is None:
            return st
        return os.statvfs_result((st.f_bsize, 4096, st.f_blocks, free_blocks["n"], free_blocks["n"],
                                  st.f_files, st.f_ffree, st.f_favail, st.f_flag, st.f_namemax))

    monkeypatch.setattr(writer_module.os, "statvfs", statvfs)
    with cache.writer() as w:
        w.add_video("v0", video(0))
        free_blocks["n"] = 100  # 0.4 MB: less than the item and the 1 MB margin
        with pytest.raises(NoSpaceError, match=r"no room for video 'v1' in .*shards: it needs about 1\.\d MB with "
                                               r"HDF5's metadata, the disk has 0\.4 MB free\. Free disk space") as err:
            w.add_video("v1", video(1))
        assert isinstance(err.value, CacheError) and err.value.errno == errno.ENOSPC  # and an OSError
        free_blocks["n"] = None
        w.add_video("v2", video(2))
    reopened = FeatureCache.open(cache.path)
    assert reopened.video_ids() == ["v0", "v2"] and verify(cache.path).ok


def test_write_errors_that_hdf5_only_reports_as_ignored_drop_the_shard(build_cache, make_manifest, features,
                                                                        monkeypatch, capsys):
    """A failed write that h5py can only report from a destructor ("Exception ignored in
    ObjectID.__dealloc__", as with a full disk) drops the shard: its items are never committed
    under the crc32 of damaged bytes."""
    import sys
    import types

    from r2.cache import writer as writer_module

    video, _ = features
    cache = FeatureCache.create(build_cache("c").path, make_manifest())
    real = writer_module.write_video_blocks

    def write_video_blocks(f, *args, **kwargs):
        n = real(f, *args, **kwargs)
        try:  # what h5py does when HDF5 fails to write while releasing an object
            raise RuntimeError(f"Can't decrement id ref count (file write failed: filename = '{f.filename}', "
                               "errno = 28, error message = 'No space left on device')")
        except RuntimeError as exc:
            sys.unraisablehook(types.SimpleNamespace(exc_type=type(exc), exc_value=exc, exc_traceback=None,
                                                     err_msg=None, object=None))
        return n

    writer = cache.writer()
    writer.add_video("v0", video(0))
    monkeypatch.setattr(writer_module, "write_video_blocks", write_video_blocks)
    with pytest.raises(ShardDiscardedError, match=r"video 'v1' failed half-way \(OSError: writing it failed: "
                                                  r"\[Errno 28\] No space left on device\).*Free disk space"):
        writer.add_video("v1", video(1))
    assert "Exception ignored" not in capsys.readouterr().err  # said once, in the error
    assert FeatureCache.open(cache.path).video_ids() == [] and not list((cache.path / "shards").iterdir())


def test_a_shard_that_reads_back_damaged_is_not_committed(build_cache, make_manifest, features, monkeypatch):
    """The closed shard is read back before its rename: data that do not match their crc32s
    (a write lost without an error) drop it instead of committing it under a crc32 of the
    damaged bytes, which a later quick verify and every read would take as good."""
    import h5py

    video, _ = features
    cache = FeatureCache.create(build_cache("c").path, make_manifest())
    writer = cache.writer()
    writer.add_video("v0", video(0))
    part = writer._partials["videos"]
    real_close = part.file.close

    def close_then_lose_a_write():
        real_close()
        with h5py.File(part.path, "r") as f:
            offset = f["videos/v0/L9"].id.get_offset()
        with open(part.path, "r+b") as fh:  # the first bytes of a layer never reached the disk
            fh.seek(offset)
            fh.write(b"\0" * 64)

    monkeypatch.setattr(part.file, "close", close_then_lose_a_write, raising=False)
    with pytest.raises(ShardDiscardedError, match=r"the shard read back is not what was written: video 'v0': "
                                                  r"L9: checksum mismatch"):
        writer.close()
    assert FeatureCache.open(cache.path).video_ids() == [] and verify(cache.path).ok


def test_collecting_write_errors_in_overlapping_writers_restores_the_hook():
    """Two writers' commits overlapping (in two threads: enter A, enter B, exit A, exit B):
    each collects only its own shards' errors, and once neither collects, the process's hook
    is the one it had."""
    import sys
    import types

    from r2.cache.writer import _write_errors_of

    def unraisable(text):
        sys.unraisablehook(types.SimpleNamespace(exc_type=RuntimeError, exc_value=RuntimeError(text),
                                                 exc_traceback=None, err_msg=None, object=None))

    before = sys.unraisablehook
    a, b = _write_errors_of("hostA-1-aaaa"), _write_errors_of("hostB-1-bbbb")
    found_a, found_b = a.__enter__(), b.__enter__()
    unraisable("file write failed: filename = 'shards/videos-hostB-1-bbbb-00001.h5.partial', errno = 28, "
               "error message = 'No space left on device'")
    a.__exit__(None, None, None)
    assert found_a == [] and found_b == ["[Errno 28] No space left on device"]
    assert sys.unraisablehook is not before  # B still collects
    b.__exit__(None, None, None)
    assert sys.unraisablehook is before


_FILE_SIZE_LIMITED_WRITER = r"""
import resource, signal, sys
import numpy as np
from r2.cache import FeatureCache, ShardDiscardedError
manifest = {"model_id": "test/tiny-clip", "model_config_hash": "c", "layers": [1, 2], "fps": 0.5,
            "preprocessing": {}, "dtype": "float16", "token_form": "t", "video_width": 16, "query_width": 8}
cache = FeatureCache.create(sys.argv[1], manifest)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails (EFBIG)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]),) * 2)
rng = np.random.default_rng(0)
try:
    with cache.writer() as w:
        for i in range(1000):
            if sys.argv[3] == "queries":
                w.add_query(f"q{i}", rng.standard_normal((2, 30, 8)), np.ones(30, bool))
            else:
                w.add_video(f"v{i}", rng.standard_normal((40, 2, 3, 16)))
except (OSError, ShardDiscardedError) as exc:
    print(f"failed after {i} items:", type(exc).__name__, exc)
    sys.exit(3)
"""


@pytest.mark.parametrize("family", ["queries", "videos"])
def test_a_shard_that_cannot_grow_fails_with_an_error_not_a_crash(tmp_path, family):
    """The shard's file cannot grow (a full disk; here RLIMIT_FSIZE, which fails writes past it
    with EFBIG as a full disk fails them with ENOSPC): the writer raises an OSError and the
    process exits normally. Before HDF5's sieve buffer was turned off (``create_h5``), the data
    of a small dataset that it failed to write out stayed open in HDF5, and the process crashed
    at exit (SIGSEGV in H5D_close) after the error was reported, every time. Nothing of the
    shard that could not be committed is visible."""
    cache = tmp_path / "c"
    run = subprocess.run([sys.executable, "-c", _FILE_SIZE_LIMITED_WRITER, str(cache), "60000", family],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 3, (run.returncode, run.stdout, run.stderr)
    assert "failed after" in run.stdout and "Errno 27" in run.stdout
    assert "Exception ignored" not in run.stderr
    assert verify(cache).ok
    assert [p.name for p in (cache / "shards").iterdir() if p.name.endswith(".partial")] == []
