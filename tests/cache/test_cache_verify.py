"""verify names truncated, byte-flipped and inconsistent shards and says how to rebuild;
through the Python API and the `r2 cache verify` command (exit code and message)."""

import shlex

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from r2.cache import CacheError, FeatureCache, verify
from r2.cache.shards import encode_id, open_h5
from r2.cli import main


def _data_offset(shard, family, item_id, name):
    with open_h5(shard) as f:
        ds = f[f"{family}/{encode_id(item_id)}/{name}"]
        return ds.id.get_offset(), ds.nbytes


def _flip(path, pos, mask=0x01):
    with open(path, "r+b") as fh:
        fh.seek(pos)
        b = fh.read(1)
        fh.seek(pos)
        fh.write(bytes([b[0] ^ mask]))


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
    assert "r2 extract videos/ --out cache/" in out  # the manifest's command, to rerun
    # readers skip the damaged shard (with a warning) and keep serving the others
    with pytest.warns(UserWarning, match="skipping unreadable shard"):
        reopened = FeatureCache.open(cache.path)
    assert reopened.video_ids() == ["v0", "v1", "v4", "v5"]
    assert reopened.info()["unreadable_shards"] == [shard.name]


def test_flipped_data_byte_is_found_by_checksum(cache):
    shard = cache.video_shard("v4")
    offset, nbytes = _data_offset(shard, "videos", "v4", "L11")
    _flip(shard, offset + nbytes // 3, 0x04)
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
    _flip(vshard, off + 1)
    off, n = _data_offset(qshard, "queries", "q", "mask")
    _flip(qshard, off)
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
    _flip(shard, pos, 0x20)
    report = verify(cache.path)
    assert [p.shard for p in report.problems] == [str(shard)], report.format()


def test_inconsistent_items_are_named(build_cache, make_manifest):
    cache = build_cache(videos={"a": 0, "b": 1})
    with open_h5(cache.video_shard("a"), "r+") as f:
        del f[f"videos/a/L10"]
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
