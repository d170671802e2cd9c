"""`r2 cache info | verify | merge` through click's CliRunner and the real `r2` group."""

import json

from click.testing import CliRunner

from r2.cli import main


def test_cache_group_help_lists_its_commands():
    result = CliRunner().invoke(main, ["cache", "--help"])
    assert result.exit_code == 0
    for name in ("info", "verify", "merge"):
        assert name in result.output
    for name in ("info", "verify", "merge"):
        sub = CliRunner().invoke(main, ["cache", name, "--help"])
        assert sub.exit_code == 0 and "Usage" in sub.output


def test_info_text_and_json(build_cache):
    cache = build_cache(videos={"a/b.mp4": 1, "c": 2}, queries={"q": 1})
    runner = CliRunner()
    result = runner.invoke(main, ["cache", "info", str(cache.path)])
    assert result.exit_code == 0, result.output
    out = result.output
    for text in ("test/tiny-clip (config cfg-0001)", "9, 10, 11, 12", "float16", "0.5",
                 "2 in 1 shards", "1 in 1 shards", "r2 extract videos/ --out cache/"):
        assert text in out, out
    result = runner.invoke(main, ["cache", "info", "--json", str(cache.path)])
    assert result.exit_code == 0
    data = json.loads(result.output)
    assert data["videos"] == 2 and data["queries"] == 1 and data["shards"] == 2
    assert data["layers"] == [9, 10, 11, 12] and data["dtype"] == "float16"
    assert data["bytes"] == sum(p.stat().st_size for p in cache.shard_paths()) > 0
    assert data["partial_shards"] == [] and data["unreadable_shards"] == []


def test_info_on_a_directory_that_is_not_a_cache(tmp_path):
    result = CliRunner().invoke(main, ["cache", "info", str(tmp_path)])
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and "no manifest.json" in result.output
