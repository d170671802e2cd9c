"""Each shard records the fingerprint of the manifest it was written under (its compatibility
fields): verify reports shards that do not match manifest.json (an edited manifest, a shard
copied in from a cache with other settings), shards of an older r2 (no fingerprint) still
verify, and merge keeps the fingerprints consistent."""

import json
import os
import shutil

import pytest

from r2.cache import CacheError, FeatureCache, merge, verify
from r2.cache.manifest import manifest_fingerprint
from r2.cache.shards import FINGERPRINT_ATTR, FINGERPRINT_FIELDS_ATTR, file_crc32, get_text_attr, open_h5, parse_shard_name, shard_name


def _edit_manifest(path, **changes):
    m = json.loads((path / "manifest.json").read_text())
    original = dict(m)
    m.update(changes)
    (path / "manifest.json").write_text(json.dumps(m))
    return original


@pytest.mark.parametrize("changes, named", [
    ({"fps": 2.0}, "fps: 0.5 when written, manifest.json now gives 2.0"),
    ({"layers": [10, 11, 12]}, "layers: [9, 10, 11, 12] when written, manifest.json now gives [10, 11, 12]"),
    ({"model_id": "openai/clip-vit-large-patch14"},
     'model_id: "test/tiny-clip" when written, manifest.json now gives "openai/clip-vit-large-patch14"'),
    ({"preprocessing": {"size": 336}}, 'preprocessing: {"crop": "center", "mean": [0.48, 0.46, 0.41], '
                                       '"size": 224} when written, manifest.json now gives {"size": 336}'),
    ({"precision": "bf16"}, 'precision: "fp32" when written, manifest.json now gives "bf16"'),
    ({"model_config_hash": "cfg-0002"}, 'model_config_hash: "cfg-0001" when written, manifest.json now gives "cfg-0002"')])
def test_verify_reports_shards_written_under_other_manifest_settings(build_cache, changes, named):
    """The shard records the fields its fingerprint hashes: the message names the field that
    was edited, with the value the shard was written under."""
    cache = build_cache(videos={"v0": 0, "v1": 1}, queries={"q0": 0})
    assert verify(cache.path).ok
    original = _edit_manifest(cache.path, **changes)
    report = verify(cache.path)
    assert not report.ok
    assert sorted(p.shard for p in report.problems) == sorted(str(p.resolve()) for p in cache.shard_paths())
    for p in report.problems:
        assert any(f"written under other manifest settings ({named}" in m for m in p.messages), p.messages
    assert any("manifest.json" in m and "edited" in m and f"restore its original values ({named}" in m
               for m in report.cache_problems), report.cache_problems
    assert not verify(cache.path, quick=True).ok  # one attribute: the quick check sees it too
    (cache.path / "manifest.json").write_text(json.dumps(original))
    assert verify(cache.path).ok


def test_fingerprint_ignores_what_does_not_change_the_features(make_manifest):
    base = dict(make_manifest(), format_version=1)
    same = [dict(base, command="r2 extract other/ --out x/", created="2020-01-01"),
            dict(base, fps=1 / 2), dict(base, query_layers=base["layers"]),
            dict(base, precision="fp32"), dict(base, video_width=None, query_width=32)]
    for m in same:
        assert manifest_fingerprint(m) == manifest_fingerprint(base), m
    hashed = dict(base, model_weights_hash="abc")
    # the same weights in a folder at another path are the same model
    assert manifest_fingerprint(dict(hashed, model_id="/elsewhere/clip")) == manifest_fingerprint(hashed)
    assert manifest_fingerprint(dict(hashed, model_weights_hash="abd")) != manifest_fingerprint(hashed)


def test_a_shard_copied_in_from_a_cache_with_other_settings_is_named(build_cache):
    a = build_cache("a", videos={"v0": 0})
    other = build_cache("other", videos={"v9": 9}, fps=1.0, command="r2 extract more/ --fps 1 --out other/")
    [foreign] = other.shard_paths()
    shutil.copy(foreign, a.path / "shards" / foreign.name)
    report = verify(a.path)
    assert [os.path.basename(p.shard) for p in report.problems] == [foreign.name]
    assert not report.cache_problems  # not every shard: the manifest was not edited
    # the rebuild command is this cache's: the shard's own writes 1 fps, which this cache refuses
    advice = report.rebuild_advice()
    assert f"r2 extract videos/ --out {a.path.resolve()}" in advice and "--fps 1" not in advice, advice
    with pytest.raises(CacheError, match=rf"{foreign.name} was written under other manifest settings than "
                                         r".*a/manifest.json has .*run `r2 cache verify"):
        merge([a.path], a.path.parent / "m")


def _strip_fingerprint(path, attrs=(FINGERPRINT_ATTR, FINGERPRINT_FIELDS_ATTR)):
    """Make a shard as an older r2 wrote it (no fingerprint), with a matching file crc."""
    with open_h5(path, "r+") as f:
        for name in attrs:
            del f.attrs[name]
    p = parse_shard_name(path.name)
    os.rename(path, path.with_name(shard_name(p.family, p.prefix, p.seq, file_crc32(path))))


def test_a_shard_with_a_fingerprint_but_no_recorded_fields_names_the_fingerprints(build_cache):
    """Shards of the r2 that recorded the fingerprint alone: the edit is found, and told by the
    two fingerprints."""
    cache = build_cache(videos={"v0": 0})
    [shard] = cache.shard_paths()
    _strip_fingerprint(shard, attrs=[FINGERPRINT_FIELDS_ATTR])
    original = _edit_manifest(cache.path, fps=2.0)
    [problem] = verify(cache.path).problems
    want = manifest_fingerprint(json.loads((cache.path / "manifest.json").read_text()))
    assert (f"written under other manifest settings (fingerprint {manifest_fingerprint(original)}, "
            f"manifest.json now gives {want}): manifest.json was edited") in problem.messages[0]


def test_shards_without_a_fingerprint_still_verify(build_cache):
    cache = build_cache(videos={"v0": 0, "v1": 1}, queries={"q0": 0})
    for p in cache.shard_paths():
        _strip_fingerprint(p)
    report = verify(cache.path)
    assert report.ok and not report.warnings
    assert report.notes == ["2 shard(s) have no manifest fingerprint (written by an older r2): edits of "
                            "manifest.json cannot be detected for them"]
    assert "note: 2 shard(s) have no manifest fingerprint" in report.format()
    summary = merge([cache.path], cache.path.parent / "m")  # and merge: the output records one
    assert summary.videos == 2
    merged = verify(cache.path.parent / "m")
    assert merged.ok and not merged.notes


def test_merge_output_shards_record_the_output_manifests_fingerprint(build_cache, tmp_path):
    # one model in folders at two paths (same weights hash): compatible, fingerprints agree
    a = build_cache("a", videos={"v0": 0}, model_id="/machine-a/clip", model_weights_hash="w1")
    b = build_cache("b", videos={"v1": 1}, queries={"q0": 0}, model_id="/machine-b/clip",
                    model_weights_hash="w1")
    merge([a.path, b.path], tmp_path / "m")
    report = verify(tmp_path / "m")
    assert report.ok and not report.notes, report.format()
    want = manifest_fingerprint(json.loads((tmp_path / "m" / "manifest.json").read_text()))
    for shard in (tmp_path / "m" / "shards").iterdir():
        with open_h5(shard) as f:
            assert get_text_attr(f, FINGERPRINT_ATTR) == want


def test_adding_to_a_cache_whose_manifest_was_edited_is_refused(build_cache, make_manifest):
    """r2 extract with the edited settings counted the shards' items as already cached, as if
    they were features of those settings; now create() refuses, naming the edit. A single shard
    copied in from elsewhere is left to verify: the cache's own shards agree."""
    cache = build_cache(videos={"v0": 0})
    _edit_manifest(cache.path, fps=2.0)
    with pytest.raises(CacheError, match=r"manifest.json is not the manifest its shards were written under \(fps: "
                                         r"0.5 when written, manifest.json now gives 2.0\): it was edited"):
        FeatureCache.create(cache.path, make_manifest(fps=2.0))
    _edit_manifest(cache.path, fps=0.5)  # restored: adding works again
    FeatureCache.create(cache.path, make_manifest())
    other = build_cache("other", videos={"v9": 9}, fps=1.0)
    [foreign] = other.shard_paths()
    shutil.copy(foreign, cache.path / "shards" / foreign.name)
    assert FeatureCache.create(cache.path, make_manifest()).video_ids()
