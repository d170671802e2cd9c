"""merge checks what it copies: a source whose data no longer match their checksums, or whose
item metadata are damaged, is refused with a one-line error naming the item and its shard
(it used to be copied into shards with fresh file checksums, which verify then called OK);
verify checks each dataset's crc32 also when the file checksum matches; duplicates spread
over more shards than the reader keeps open; a second merge into the same output."""

import os

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from r2.cache import CacheError, FeatureCache, merge, verify
from r2.cache.shards import encode_id, file_crc32, open_h5, parse_shard_name, shard_name
from r2.cli import main

from .conftest import flip_byte


def _data_offset(shard, family, item_id, name):
    with open_h5(shard) as f:
        return f[f"{family}/{encode_id(item_id)}/{name}"].id.get_offset()


def _recrc(path):
    """Rename a shard whose bytes were changed to the name a writer would give those bytes
    (what an older merge that copied a damaged item produced: a file crc that matches)."""
    p = parse_shard_name(path.name)
    new = path.with_name(shard_name(p.family, p.prefix, p.seq, file_crc32(path)))
    os.rename(path, new)
    return new


def test_merge_refuses_a_source_item_whose_data_do_not_match_their_checksum(build_cache, tmp_path):
    a = build_cache("a", videos={"v0": 0, "v1": 1})
    shard = a.video_shard("v0")
    flip_byte(shard, _data_offset(shard, "videos", "v0", "L9") + 10, 0x40)
    with pytest.raises(CacheError, match=r"video 'v0' in .*a/shards/videos-.*\.h5 is damaged \(L9: checksum "
                                         r"mismatch.*run `r2 cache verify .*a` and repair it before merging"):
        merge([a.path], tmp_path / "m")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]  # nothing half-written either
    result = CliRunner().invoke(main, ["cache", "merge", str(a.path), "--out", str(tmp_path / "m")])
    assert result.exit_code == 1 and "Error: video 'v0' in " in result.output
    assert "Traceback" not in result.output and not (tmp_path / "m").exists()


def test_verify_checks_dataset_checksums_of_a_shard_whose_file_checksum_matches(build_cache):
    # a damaged item copied by an older merge: the file crc in the name matches the file,
    # the data do not match their own crc32 attribute
    a = build_cache("a", videos={"v0": 0, "v1": 1}, queries={"q0": 0})
    shard = a.video_shard("v0")
    flip_byte(shard, _data_offset(shard, "videos", "v1", "L11") + 3, 0x40)
    laundered = _recrc(shard)
    report = verify(a.path)
    assert not report.ok
    [problem] = report.problems
    assert problem.shard.endswith(laundered.name)
    assert any("video 'v1': L11: checksum mismatch" in m for m in problem.messages), problem.messages
    assert verify(a.path, quick=True).ok  # quick reads no data


def test_merge_of_a_source_with_damaged_item_metadata_is_a_one_line_error(build_cache, tmp_path):
    a = build_cache("a", videos={"v0": 0, "v1": 1})
    shard = a.video_shard("v1")
    with open_h5(shard) as f:
        header = h5py.h5o.get_info(f["videos/v1/L10"].id).addr
    flip_byte(shard, header + 6, 0x20)  # HDF5's metadata checksum catches it
    with pytest.raises(CacheError, match=r"cannot read video 'v1' from .*a/shards/videos-.*\.h5: .*checksum.*; "
                                         r"run `r2 cache verify .*a`"):
        merge([a.path], tmp_path / "m")
    result = CliRunner().invoke(main, ["cache", "merge", str(a.path), "--out", str(tmp_path / "m")])
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: cannot read video 'v1' from ") and "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_merge_keeps_identical_duplicates_spread_over_more_shards_than_are_kept_open(tmp_path, make_manifest):
    # 70 videos in 70 one-item shards, and the same 70 in one shard that sorts after them (shard
    # folders copied together): while merge copies the big shard, it opens 70 other shards to
    # compare the duplicates, more than a reader keeps open (64). It used to close the big
    # shard's handle under its own loop: "ValueError: Invalid group (or file) id".
    rng = np.random.default_rng(0)
    feats = {f"v{i:02d}": rng.standard_normal((1, 4, 3, 16)).astype(np.float32) for i in range(70)}
    a = FeatureCache.create(tmp_path / "a", make_manifest())
    with a.writer(max_shard_items=1) as w:
        for vid, x in feats.items():
            w.add_video(vid, x)
    b = FeatureCache.create(tmp_path / "b", make_manifest())
    with b.writer() as w:
        for vid, x in feats.items():
            w.add_video(vid, x)
    [big] = b.shard_paths()
    p = parse_shard_name(big.name)
    os.rename(big, a.path / "shards" / shard_name("videos", "zzzzzz-late", 0, p.crc))
    assert verify(a.path).ok
    summary = merge([a.path], tmp_path / "m")
    assert summary.videos == 70 and summary.duplicates_identical == 70
    merged = FeatureCache.open(tmp_path / "m")
    assert merged.video_ids() == sorted(feats) and verify(merged.path).ok
    assert np.array_equal(merged.load_video("v69", dtype=None), feats["v69"].astype(np.float16))


def test_messages_say_query_not_querie(build_cache, tmp_path):
    a = build_cache("a", queries={"q0": 0})
    b = build_cache("b", queries={"q0": 1})
    with pytest.raises(CacheError, match=r"^query 'q0' is in .* with different data"):
        merge([a.path, b.path], tmp_path / "m")
    shard = a.query_shard("q0")
    with open_h5(shard, "r+") as f:
        del f["queries/q0/L12"]
    report = verify(a.path)
    assert "query 'q0': missing dataset L12" in report.format() and "querie '" not in report.format()


def test_a_merge_whose_output_another_process_made_meanwhile_is_a_one_line_error(build_cache, tmp_path):
    a = build_cache("a", videos={"v0": 0})
    out = tmp_path / "m"

    def another_merge_finishes_first(done, total):
        out.mkdir()
        (out / "manifest.json").write_text("{}")

    with pytest.raises(CacheError, match=r"the merge output .*m was created by another process meanwhile"):
        merge([a.path], out, progress=another_merge_finishes_first)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "m"]  # our temporary is gone
    assert (out / "manifest.json").read_text() == "{}"  # theirs is left alone
