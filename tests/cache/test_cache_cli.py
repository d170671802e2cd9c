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


def test_info_of_a_copied_cache_gives_the_command_that_adds_to_the_copy(build_cache, tmp_path):
    """The recorded command's --out names the folder the cache was written in; run from a copy's
    `r2 cache info` it would add to the original. Shown with the copy's path, as verify does,
    and the recorded one beside it."""
    import shutil

    cache = build_cache(videos={"a": 1})
    copy = tmp_path / "copy"
    shutil.copytree(cache.path, copy)
    result = CliRunner().invoke(main, ["cache", "info", str(copy)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert f"command   r2 extract videos/ --out {copy.resolve()}" in lines, result.output
    assert ("recorded  r2 extract videos/ --out cache/ (the cache was written elsewhere: moved or copied)"
            in lines), result.output


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
    assert data["model_weights_hash"] is None  # a manifest without it (older r2)
    from r2.cache import CacheInfo, FeatureCache

    info = FeatureCache.open(cache.path).info()
    assert isinstance(info, CacheInfo) and info.to_dict() == data and list(data)[:2] == ["path", "format_version"]
    hashed = build_cache("hashed", model_weights_hash="0123456789abcdef")
    result = runner.invoke(main, ["cache", "info", str(hashed.path)])
    assert "test/tiny-clip (weights 0123456789abcdef, config cfg-0001)" in result.output


def test_info_on_a_directory_that_is_not_a_cache(tmp_path):
    result = CliRunner().invoke(main, ["cache", "info", str(tmp_path)])
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and "no manifest.json" in result.output


def test_cli_warnings_are_one_line_without_the_source_line(build_cache):
    """A real `r2` process (CliRunner runs inside pytest, which captures warnings itself)."""
    import subprocess
    import sys

    cache = build_cache(videos={"a": 1, "b": 2}, writer_options={"max_shard_items": 1})
    with open(cache.video_shard("b"), "r+b") as fh:
        fh.truncate(64)
    (cache.path / "index.json").unlink()
    run = subprocess.run([sys.executable, "-c", "from r2.cli import main; main()", "cache", "info",
                          str(cache.path)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: skipping unreadable shard "), run.stderr
    assert "CacheWarning" not in run.stderr and ".py:" not in run.stderr and "warnings.warn" not in run.stderr
    assert "1 in 1 shards" in run.stdout and "1 unreadable shard(s)" in run.stdout


def test_format_warning_keeps_the_origin_of_other_libraries_warnings():
    from r2.cache import CacheWarning
    from r2.cli import format_warning

    assert format_warning("a\n  b", CacheWarning, "/x/r2/cache/index.py", 9) == "warning: a b\n"
    assert (format_warning("old API", DeprecationWarning, "/site-packages/lib/mod.py", 12)
            == "warning: old API (DeprecationWarning, mod.py:12)\n")


def test_info_names_the_writers_adding_to_the_cache_now(build_cache, features):
    """A writer alive now is listed with its pid, host and the videos it has claimed, and the
    partial shard it writes is said to be its; once it is closed, neither is there."""
    import os
    import socket

    from r2.cache import FeatureCache

    video, _ = features
    cache = build_cache(videos={"a": 1})
    writer = FeatureCache.open(cache.path).writer()
    try:
        assert writer.claim_video("b") and writer.claim_video("c")
        writer.add_video("b", video(2))  # in its open partial shard
        result = CliRunner().invoke(main, ["cache", "info", str(cache.path)])
        assert result.exit_code == 0, result.output
        assert (f"writing now: 1 writer(s): pid {os.getpid()} on {socket.gethostname()} (2 videos claimed)"
                in result.output)
        assert "note: 1 partial shard(s) (of the writers above, or of one that was stopped; ignored)" in result.output
        data = json.loads(CliRunner().invoke(main, ["cache", "info", "--json", str(cache.path)]).output)
        assert data["writers"] == [{"prefix": writer.prefix, "host": socket.gethostname(), "pid": os.getpid(),
                                    "videos_claimed": 2}]
    finally:
        writer.close()
    result = CliRunner().invoke(main, ["cache", "info", str(cache.path)])
    assert "writing now" not in result.output and "partial" not in result.output
    assert FeatureCache.open(cache.path).info().writers == []
