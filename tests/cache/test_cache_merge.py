"""merge: compatible manifests only; duplicates kept once when identical, an error when not;
nothing half-written on failure."""


import numpy as np
import pytest
from click.testing import CliRunner

from r2.cache import CacheError, FeatureCache, merge, verify
from r2.cli import main


def test_merge_joins_caches_and_keeps_identical_duplicates_once(build_cache, tmp_path):
    a = build_cache("a", videos={"v0": 0, "v1": 1, "shared": 7}, queries={"q0": 0},
                    command="r2 extract vids --out a --num-shards 2 --shard-index 0")
    b = build_cache("b", videos={"v2": 2, "shared": 7}, queries={"q1": 1, "q0": 0},
                    command="r2 extract vids --out b --num-shards 2 --shard-index 1",
                    writer_options={"max_shard_items": 1})
    summary = merge([a.path, b.path], tmp_path / "out")
    assert summary.videos == 4 and summary.queries == 2 and summary.duplicates_identical == 2
    out = FeatureCache.open(tmp_path / "out")
    assert out.video_ids() == ["shared", "v0", "v1", "v2"] and out.query_ids() == ["q0", "q1"]
    for vid in out.video_ids():
        src = a if a.has_video(vid) else b
        assert np.array_equal(out.load_video(vid, dtype=None), src.load_video(vid, dtype=None))
        assert out.video_attrs(vid) == src.video_attrs(vid)
    assert out.query_attrs("q1") == {"text": "query q1"}
    m = out.manifest
    assert m["layers"] == a.manifest["layers"] and m["merged_from"] == [str(a.path), str(b.path)]
    assert "command" not in m and len(m["source_commands"]) == 2
    report = verify(out.path)
    assert report.ok and not report.warnings  # each id once
    # v2 came from b: its merged shard records b's command, which verify quotes (and only
    # that one) with --out pointing at the merged cache
    with open(out.video_shard("v2"), "r+b") as fh:
        fh.truncate(10)
    advice = verify(out.path).rebuild_advice()
    assert f"r2 extract vids --out {out.path.resolve()} --num-shards 2 --shard-index 1" in advice
    assert "--shard-index 0" not in advice


def test_merge_refuses_an_id_with_different_data_and_leaves_nothing(build_cache, tmp_path):
    a = build_cache("a", videos={"v0": 0, "clash": 1})
    b = build_cache("b", videos={"v2": 2, "clash": 99})
    with pytest.raises(CacheError, match=r"video 'clash' is in .*a/shards/.* and in .*b/shards/.* with different data"):
        merge([a.path, b.path], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]  # no temporary left either


def test_merge_refuses_incompatible_manifests(build_cache, tmp_path):
    a = build_cache("a", videos={"v0": 0})
    b = build_cache("b", videos={"v1": 1}, fps=1.0)
    with pytest.raises(CacheError, match="the manifests differ\n  fps: .*a has 0.5, .*b has 1.0"):
        merge([a.path, b.path], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_merge_output_must_be_new(build_cache, tmp_path):
    a = build_cache("a", videos={"v0": 0})
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    with pytest.raises(CacheError, match="already exists and is not empty"):
        merge([a.path], tmp_path / "busy")
    with pytest.raises(CacheError, match="already exists"):
        merge([a.path], a.path)
    (tmp_path / "empty").mkdir()
    merge([a.path], tmp_path / "empty")
    assert FeatureCache.open(tmp_path / "empty").video_ids() == ["v0"]


def test_merge_copies_int8_as_stored(build_cache, tmp_path):
    a = build_cache("a", videos={"v0": 0}, queries={"q": 3}, dtype="int8")
    b = build_cache("b", videos={"v1": 1}, dtype="int8")
    merge([a.path, b.path], tmp_path / "out")
    out = FeatureCache.open(tmp_path / "out")
    assert out.dtype == "int8"
    assert np.array_equal(out.load_video("v0"), a.load_video("v0"))  # no re-quantisation
    fa, ma = a.load_query("q")
    fo, mo = out.load_query("q")
    assert np.array_equal(fa, fo) and np.array_equal(ma, mo)
    assert verify(out.path).ok


def test_merge_of_a_damaged_source_fails_cleanly(build_cache, tmp_path):
    a = build_cache("a", videos={"v0": 0})
    b = build_cache("b", videos={"v1": 1})
    with open(b.video_shard("v1"), "r+b") as fh:
        fh.truncate(64)
    with pytest.warns(UserWarning):
        with pytest.raises(CacheError, match="unreadable shards.*r2 cache verify"):
            merge([a.path, b.path], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_merge_cli(build_cache, tmp_path):
    a = build_cache("a", videos={"v0": 0, "dup": 5})
    b = build_cache("b", videos={"v1": 1, "dup": 5})
    runner = CliRunner()
    result = runner.invoke(main, ["cache", "merge", str(a.path), str(b.path), "--out", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    assert "3 videos" in result.output and "1 identical duplicates kept once" in result.output
    c = build_cache("c", videos={"dup": 6})
    result = runner.invoke(main, ["cache", "merge", str(a.path), str(c.path), "--out", str(tmp_path / "n")])
    assert result.exit_code == 1 and "Error: video 'dup' is in" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "n").exists()
    result = runner.invoke(main, ["cache", "merge", "--out", str(tmp_path / "z")])
    assert result.exit_code == 2  # usage: no sources


def test_merge_output_inside_a_source_is_refused(build_cache, tmp_path):
    a = build_cache("a", videos={"v0": 0})
    with pytest.raises(CacheError, match=r"the merge output .*a/sub is inside the source cache .*a; choose a "
                                         "directory outside every source"):
        merge([a.path], a.path / "sub")
    result = CliRunner().invoke(main, ["cache", "merge", str(a.path), "--out", str(a.path / "shards" / "x")])
    assert result.exit_code == 1 and "is inside the source cache" in result.output
    assert sorted(p.name for p in a.path.iterdir()) == ["index.json", "locks", "manifest.json", "shards"]
    assert verify(a.path).ok


def test_a_killed_merges_temporary_output_is_removed_by_the_next_merge(build_cache, tmp_path):
    import fcntl
    import os

    from r2.cache import CacheWarning

    a = build_cache("a", videos={"v0": 0})
    stale = tmp_path / ".out.merge-0badf00d.tmp"  # what a SIGKILLed merge into out leaves
    (stale / "shards").mkdir(parents=True)
    (stale / "shards" / "videos-x-00000.h5.partial").write_bytes(b"half")
    live = tmp_path / ".out.merge-1234abcd.tmp"  # a merge into out that is still running
    live.mkdir()
    fd = os.open(live, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    other = tmp_path / ".other.merge-0badf00d.tmp"  # another output's: not ours to judge
    other.mkdir()
    try:
        with pytest.warns(CacheWarning, match=r"removed .*\.out\.merge-0badf00d\.tmp, the unfinished output of a "
                                              "merge into .*out that was stopped"):
            merge([a.path], tmp_path / "out")
    finally:
        os.close(fd)
    assert not stale.exists() and live.is_dir() and other.is_dir()
    assert FeatureCache.open(tmp_path / "out").video_ids() == ["v0"]
    assert list(tmp_path.glob(".out.merge-*.tmp")) == [live]  # the merge's own is gone too


def test_a_merge_whose_new_temporary_output_is_cleaned_away_keeps_it_locked(build_cache, tmp_path, monkeypatch):
    # A merge makes .<out>.merge-<random>.tmp, then locks it. Another merge into the same
    # output that cleans up in between takes the unlocked directory for a killed merge's and
    # deletes it. The first merge must lock a directory that exists: it used to carry on in a
    # re-created, unlocked one, which a third merge then deleted under it.
    import fcntl
    import importlib
    import os
    import warnings

    merge_mod = importlib.import_module("r2.cache.merge")  # (r2.cache.merge is also the function)

    a = build_cache("a", videos={"v0": 0, "v1": 1}, writer_options={"max_shard_items": 1})
    out = tmp_path / "out"
    real_flock = fcntl.flock
    struck = []

    def flock(fd, op):
        target = os.readlink(f"/proc/self/fd/{fd}")
        if not struck and ".out.merge-" in target:  # the merge's first lock of its directory
            struck.append(target)
            merge_mod._remove_stale_temporaries(out)  # another merge into out, starting now
        return real_flock(fd, op)

    def another_merge_starts(done, total):
        merge_mod._remove_stale_temporaries(out)  # must leave the running merge's alone

    monkeypatch.setattr(fcntl, "flock", flock)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the cleaner's "removed ... that was stopped"
        summary = merge([a.path], out, progress=another_merge_starts)
    monkeypatch.undo()
    assert struck and summary.videos == 2
    merged = FeatureCache.open(out)
    assert merged.video_ids() == ["v0", "v1"] and verify(out).ok
    assert np.array_equal(merged.load_video("v1"), a.load_video("v1"))
    assert list(tmp_path.glob(".out.merge-*")) == []


def _open_files_under(path):
    import os

    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(path)):
            out.append(target)
    return out


@pytest.mark.parametrize("failure", ["different data", "different manifests", "a missing source"])
def test_a_failed_merge_closes_its_sources(build_cache, tmp_path, failure):
    a = build_cache("a", videos={"dup": 1, "v0": 0})
    if failure == "different data":
        b = build_cache("b", videos={"dup": 2})
    elif failure == "different manifests":
        b = build_cache("b", videos={"v1": 1}, fps=1.0)
    else:
        b = build_cache("b", videos={"v1": 1})
    a.close()
    b.close()
    sources = [a.path, b.path] + ([tmp_path / "nowhere"] if failure == "a missing source" else [])
    with pytest.raises(CacheError) as failed:  # (its traceback keeps the merge's objects alive)
        merge(sources, tmp_path / "out")
    assert _open_files_under(tmp_path) == [], failed.value
    assert not (tmp_path / "out").exists()
    summary = merge([a.path], tmp_path / "ok")
    assert summary.videos == 2 and _open_files_under(tmp_path) == []
