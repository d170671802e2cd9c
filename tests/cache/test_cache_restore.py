"""A lost ``manifest.json`` is written again from the shards, which record the settings they
were written under; until then, every command says so instead of "not a cache" (and r2
extract does not pin its own settings over the shards)."""

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from r2.cache import CacheError, FeatureCache, restore_manifest, verify
from r2.cache.manifest import differences, manifest_fingerprint
from r2.cli import main


def _lose_manifest(cache) -> dict:
    path = cache.path / "manifest.json"
    original = json.loads(path.read_text())
    path.unlink()
    return original


def test_a_lost_manifest_is_restored_from_the_shards(build_cache, make_manifest):
    cache = build_cache(videos={"a": 1, "b/c.mp4": 2}, queries={"q": 3})
    video, (query, mask) = cache.load_video("a"), cache.load_query("q")
    original = _lose_manifest(cache)
    hint = f"{cache.path} has shards but no manifest.json: it was deleted or lost"
    with pytest.raises(CacheError, match=hint):
        FeatureCache.open(cache.path)
    with pytest.raises(CacheError, match=hint):  # not a new manifest of the caller's settings over the shards
        FeatureCache.create(cache.path, make_manifest(fps=1.0))
    assert not (cache.path / "manifest.json").exists()

    restored = restore_manifest(cache.path)
    assert restored.shards == 2 and not restored.unreadable and not restored.unrecorded
    assert manifest_fingerprint(restored.manifest) == manifest_fingerprint(original)
    assert differences(original, restored.manifest) == []  # every compared field, the pinned shapes too
    assert all(restored.manifest[k] == original[k] for k in ("video_width", "query_width", "tokens_per_frame")
               if k in original)
    assert restored.manifest["command"] == original["command"]
    assert verify(cache.path).ok
    again = FeatureCache.open(cache.path)
    assert sorted(again.video_ids()) == ["a", "b/c.mp4"]
    assert np.array_equal(again.load_video("a"), video)
    assert np.array_equal(again.load_query("q")[0], query) and np.array_equal(again.load_query("q")[1], mask)
    with pytest.raises(CacheError, match="has a manifest.json: nothing to restore"):
        restore_manifest(cache.path)


def test_a_model_named_by_its_weights_gets_the_folder_of_the_recorded_command(build_cache):
    cache = build_cache(videos={"a": 1}, model_id="/data/models/clip", model_weights_hash="0123abcd",
                        command="r2 extract /data/videos -m /data/models/clip -o /data/cache")
    _lose_manifest(cache)
    restored = restore_manifest(cache.path)
    assert restored.manifest["model_id"] == "/data/models/clip"
    assert restored.manifest["model_weights_hash"] == "0123abcd" and verify(cache.path).ok


def test_shards_of_two_settings_or_none_recorded_are_refused(build_cache, tmp_path):
    cache = build_cache("a", videos={"a": 1})
    other = build_cache("other", videos={"b": 2}, fps=1.0)
    [foreign] = other.shard_paths()
    shutil.copy(foreign, cache.path / "shards" / foreign.name)
    _lose_manifest(cache)
    with pytest.raises(CacheError, match=r"were written under 2 different settings \(1 shard\(s\) like .*a manifest "
                                         r"holds one"):
        restore_manifest(cache.path)
    assert not (cache.path / "manifest.json").exists()
    (tmp_path / "empty" / "shards").mkdir(parents=True)
    with pytest.raises(CacheError, match="no shard of .* records the settings"):
        restore_manifest(tmp_path / "empty")


def test_the_command_restores_and_says_what_next(build_cache):
    cache = build_cache(videos={"a": 1})
    _lose_manifest(cache)
    runner = CliRunner()
    result = runner.invoke(main, ["cache", "info", str(cache.path)])
    assert result.exit_code == 1, result.output
    assert f"`r2 cache restore-manifest {cache.path}` writes it again" in result.output
    result = runner.invoke(main, ["cache", "restore-manifest", str(cache.path)])
    assert result.exit_code == 0, result.output
    assert (f"restored {cache.path / 'manifest.json'} from 1 shard(s): test/tiny-clip, layers 9, 10, 11, 12, fps "
            f"0.5, float16\nnext: r2 cache verify {cache.path}") in result.output
    result = runner.invoke(main, ["cache", "restore-manifest", str(cache.path)])
    assert result.exit_code == 1 and "nothing to restore" in result.output
