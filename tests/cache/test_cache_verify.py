"""verify names truncated, byte-flipped and inconsistent shards and says how to rebuild;
through the Python API and the `r2 cache verify` command (exit code and message)."""

import json
import shlex

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from r2.cache import CacheError, FeatureCache, verify
from r2.cache.shards import encode_id, open_h5
from r2.cli import main

from .conftest import flip_byte


def _data_offset(shard, family, item_id, name):
    with open_h5(shard) as f:
        ds = f[f"{family}/{encode_id(item_id)}/{name}"]
        return ds.id.get_offset(), ds.nbytes


@pytest.fixture
def cache(build_cache):
    return build_cache(videos={f"v{i}": i for i in range(6)}, queries={"q1": 1, "q2": 2},
                       writer_options={"max_shard_items": 2})


def test_a_healthy_cache_verifies(cache):
    report = verify(cache.path)
    assert report.ok and not report.problems and not report.warnings
    assert (report.shards_checked, report.videos_checked, report.queries_checked) == (4, 6, 2)
    assert "OK" in report.format()
    result = CliRunner().invoke(main, ["cache", "verify", str(cache.path)])
    assert result.exit_code == 0, result.output
    assert "4 shards, 6 videos, 2 queries" in result.output and "OK" in result.output


def test_files_in_shards_that_are_not_named_as_shards_are_a_warning(cache):
    """Readers ignore a file whose name is not a shard's (a shard renamed by hand, another
    program's file): verify says so, instead of passing over it without a word."""
    (cache.path / "shards" / "stray.h5").write_bytes(b"not hdf5")
    (cache.path / "shards" / "notes.txt").write_text("x")
    report = verify(cache.path)
    assert report.ok and not report.problems
    assert report.warnings == [f"2 file(s) in {cache.path / 'shards'} are not named as shards, so readers "
                               "ignore them and they were not checked (a shard renamed by hand, or another "
                               "program's file): notes.txt, stray.h5"]


def test_truncated_shard_is_named_with_rebuild_advice(cache):
    shard = cache.video_shard("v2")
    size = shard.stat().st_size
    with open(shard, "r+b") as fh:
        fh.truncate(size // 2)
    report = verify(cache.path)
    assert not report.ok and [p.shard for p in report.problems] == [str(shard)]
    assert "truncated" in report.problems[0].messages[0]
    assert sorted(report.problems[0].videos) == ["v2", "v3"]  # known from the index sidecar
    result = CliRunner().invoke(main, ["cache", "verify", str(cache.path)])
    assert result.exit_code == 1
    out = result.output
    assert f"DAMAGED {shard}" in out and "holds 2 videos" in out
    assert f"rm {shlex.quote(str(shard))}" in out
    # the command that wrote the shard (noted by the index: the file no longer opens), with
    # --out pointing at this cache wherever it is now
    assert f"r2 extract videos/ --out {shlex.quote(str(cache.path.resolve()))}\n" in out
    # readers skip the damaged shard (with a warning) and keep serving the others
    with pytest.warns(UserWarning, match="skipping unreadable shard"):
        reopened = FeatureCache.open(cache.path)
    assert reopened.video_ids() == ["v0", "v1", "v4", "v5"]
    assert reopened.info().unreadable_shards == [shard.name]


def test_flipped_data_byte_is_found_by_checksum(cache):
    shard = cache.video_shard("v4")
    offset, nbytes = _data_offset(shard, "videos", "v4", "L11")
    flip_byte(shard, offset + nbytes // 3, 0x04)
    # the shard still opens and reads: only the checksum can tell
    assert cache.load_video("v4").shape == (5, 4, 3, 16)
    report = verify(cache.path)
    assert [p.shard for p in report.problems] == [str(shard)]
    assert "video 'v4': L11: checksum mismatch" in report.problems[0].messages[0]
    quick = verify(cache.path, quick=True)  # structure only: does not read the data
    assert quick.ok
    result = CliRunner().invoke(main, ["cache", "verify", str(cache.path)])
    assert result.exit_code == 1 and "checksum mismatch" in result.output and str(shard) in result.output


def test_flipped_query_mask_and_int8_scale_bytes_are_found(build_cache):
    cache = build_cache(name="i8", videos={"v": 0}, queries={"q": 0}, dtype="int8")
    vshard, qshard = cache.video_shard("v"), cache.query_shard("q")
    off, n = _data_offset(vshard, "videos", "v", "L9_scale")
    flip_byte(vshard, off + 1, 0x01)
    off, n = _data_offset(qshard, "queries", "q", "mask")
    flip_byte(qshard, off, 0x01)
    report = verify(cache.path)
    assert sorted(p.shard for p in report.problems) == sorted([str(vshard), str(qshard)])
    text = report.format()
    assert "L9_scale: checksum mismatch" in text and "mask: checksum mismatch" in text


@pytest.mark.parametrize("where", ["superblock", "middle", "end"])
def test_flipped_structure_bytes_are_found(cache, where):
    """Flips outside the data (HDF5 metadata has checksums: superblock, object headers)."""
    shard = cache.video_shard("v0")
    size = shard.stat().st_size
    if where == "superblock":
        pos = 20
    else:
        # a metadata byte: an object header of a group or dataset, found by address
        with open_h5(shard) as f:
            addrs = sorted(h5py.h5o.get_info(f["videos"][k].id).addr for k in f["videos"])
        pos = addrs[0] + 6 if where == "middle" else addrs[-1] + 6
    assert pos < size
    flip_byte(shard, pos, 0x20)
    report = verify(cache.path)
    assert [p.shard for p in report.problems] == [str(shard)], report.format()


def test_inconsistent_items_are_named(build_cache, make_manifest):
    cache = build_cache(videos={"a": 0, "b": 1})
    with open_h5(cache.video_shard("a"), "r+") as f:
        del f["videos/a/L10"]
        f["videos/b/L12"].attrs["crc32"] = np.uint32(0)
    report = verify(cache.path)
    text = report.format()
    assert "video 'a': missing dataset L10" in text and "video 'b': L12: checksum mismatch" in text
    assert not report.ok


def test_verify_of_a_missing_or_foreign_directory_is_a_clean_error(tmp_path):
    with pytest.raises(CacheError, match="does not exist"):
        verify(tmp_path / "nope")
    result = CliRunner().invoke(main, ["cache", "verify", str(tmp_path / "nope")])
    assert result.exit_code == 1 and "Error: no feature cache at" in result.output
    assert "Traceback" not in result.output


def test_verify_json_output(cache):
    import json

    with open(cache.video_shard("v0"), "r+b") as fh:
        fh.truncate(100)
    result = CliRunner().invoke(main, ["cache", "verify", "--json", str(cache.path)])
    assert result.exit_code == 1
    data = json.loads(result.output)
    assert data["ok"] is False and data["problems"][0]["shard"] == str(cache.video_shard("v0"))
    assert "rm " in data["rebuild_advice"]


def _without_crc_in_name(shard):
    """Rename a committed shard to the name of one committed without a file checksum (as an
    older writer, or a copy by hand, leaves it): verify then checks every dataset."""
    from r2.cache.shards import parse_shard_name, shard_name

    p = parse_shard_name(shard.name)
    plain = shard.with_name(shard_name(p.family, p.prefix, p.seq))
    shard.rename(plain)
    return plain


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_values_are_found(build_cache, bad):
    cache = build_cache(videos={"a": 0, "b": 1})
    shard = _without_crc_in_name(cache.video_shard("a"))
    import zlib

    with open_h5(shard, "r+") as f:  # a forged value with a matching dataset checksum
        ds = f["videos/b/L11"]
        data = ds[()]
        data[2, 1, 3] = bad
        ds[...] = data
        ds.attrs["crc32"] = np.uint32(zlib.crc32(data.tobytes()))
    report = verify(cache.path)
    assert not report.ok and [p.shard for p in report.problems] == [str(shard)]
    assert report.problems[0].messages == ["video 'b': L11 has NaN or infinite values"]
    result = CliRunner().invoke(main, ["cache", "verify", str(cache.path)])
    assert result.exit_code == 1 and "video 'b': L11 has NaN or infinite values" in result.output
    assert verify(cache.path, quick=True).ok  # the structure is fine: only the data say so


def _two_writers_add(cache_path, item, first, second, monkeypatch):
    """Two writers (separate cache objects, as two processes have) each add ``item``: as where
    their claims cannot be written (a full disk), or an r2 before claims wrote them."""
    from r2.cache.shards import WriterLock

    def no_room(self, item_id):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(WriterLock, "append_claim", no_room)
    video = np.random.default_rng
    c1, c2 = FeatureCache.open(cache_path), FeatureCache.open(cache_path)
    w1, w2 = c1.writer(), c2.writer()
    w1.add_video(item, video(first).standard_normal((5, 4, 3, 16)))
    w2.add_video(item, video(second).standard_normal((5, 4, 3, 16)))
    w1.close()
    w2.close()


def test_an_id_in_two_shards_is_a_warning_when_identical_and_a_problem_when_not(build_cache, tmp_path, monkeypatch):
    from r2.cache import merge

    cache = build_cache(videos={"v0": 0})
    _two_writers_add(cache.path, "same", 5, 5, monkeypatch)
    report = verify(cache.path)
    assert report.ok and len(report.warnings) == 1
    assert "video 'same' is in two shards" in report.warnings[0] and "identical data" in report.warnings[0]
    _two_writers_add(cache.path, "clash", 6, 7, monkeypatch)
    report = verify(cache.path)
    assert not report.ok and not report.problems and len(report.cache_problems) == 1
    msg = report.cache_problems[0]
    assert msg.startswith("video 'clash' is in two shards with different data (") and "reads use" in msg
    result = CliRunner().invoke(main, ["cache", "verify", str(cache.path)])
    assert result.exit_code == 1 and "PROBLEM video 'clash' is in two shards with different data" in result.output
    assert verify(cache.path, quick=True).cache_problems == [msg]  # checksums are metadata: quick sees it
    with pytest.raises(CacheError, match="video 'clash' is in .* with different data"):  # merge agrees
        merge([cache.path], tmp_path / "out")


def test_rebuild_advice_quotes_the_command_that_wrote_the_damaged_shard(tmp_path, make_manifest, features):
    video, _ = features
    root = tmp_path / "cache"
    for index in range(3):  # three slices of one extraction write into one directory
        cache = FeatureCache.create(root, make_manifest(
            command=f"r2 extract vids --out cache/ --num-shards 3 --shard-index {index}"))
        with cache.writer() as w:
            w.add_video(f"v{index}", video(index))
    assert json.loads((root / "manifest.json").read_text())["command"].endswith("--shard-index 0")
    cache = FeatureCache.open(root)
    damaged = cache.video_shard("v1")
    with open(damaged, "r+b") as fh:
        fh.truncate(100)
    advice = verify(root).rebuild_advice()
    here = shlex.quote(str(root.resolve()))
    assert f"rm {shlex.quote(str(damaged))}\n" in advice
    assert f"  r2 extract vids --out {here} --num-shards 3 --shard-index 1" in advice
    assert "--shard-index 0" not in advice and "--shard-index 2" not in advice
    # a shard that does not record its command (an older writer's): the manifest's command
    other = cache.video_shard("v2")
    with open_h5(other, "r+") as f:
        del f.attrs["command"]
    damaged.unlink()
    (root / "index.json").unlink()
    report = verify(root)
    assert [p.shard for p in report.problems] == [str(other)] and report.problems[0].command is None
    assert report.rebuild_advice().endswith(f"  r2 extract vids --out {here} --num-shards 3 --shard-index 0")


def test_items_of_another_shape_are_found(build_cache, tmp_path, make_manifest, features):
    """Shard files copied from a cache of another model (the writer refuses such items)."""
    import shutil

    video, _ = features
    m = make_manifest()
    del m["video_width"]
    a = FeatureCache.create(tmp_path / "a", m)
    with a.writer() as w:
        w.add_video("small", video(0, n=3, d=16))
    b = FeatureCache.create(tmp_path / "b", m)
    with b.writer() as w:
        w.add_video("big", video(1, n=5, d=24))
    for shard in b.shard_paths():
        shutil.copy(shard, a.path / "shards")
    report = verify(a.path)
    assert not report.ok and len(report.problems) == 1
    assert report.problems[0].messages == [
        "video 'big': 5 tokens per frame, the manifest says tokens_per_frame = 3 (one cache holds the "
        "features of one model)",
        "video 'big': width 24, the manifest says video_width = 16 (one cache holds the features of one model)"]
    # a cache whose manifest does not pin them (made before shapes were pinned): the first item's
    manifest = json.loads((a.path / "manifest.json").read_text())
    del manifest["tokens_per_frame"], manifest["video_width"]
    (a.path / "manifest.json").write_text(json.dumps(manifest))
    problems = verify(a.path).problems
    assert len(problems) == 1 and len(problems[0].messages) == 2
    # the shard that sorts second is named; its item is compared with the first one's
    first, second = ("small", "big") if problems[0].videos == ["big"] else ("big", "small")
    d = {"small": 16, "big": 24}[first]
    assert problems[0].messages[1].startswith(f"video '{second}': width {40 - d}, "
                                              f"video '{first}' (in ")
    assert problems[0].messages[1].endswith(f") has {d} (one cache holds the features of one model)")
