"""create / open: resume on a compatible manifest, clear errors on anything else."""

import json
import re
import subprocess
import sys

import pytest

from r2 import __version__
from r2.cache import CacheError, FeatureCache, FORMAT_VERSION


def test_create_writes_the_manifest_and_open_reads_it(tmp_path, make_manifest):
    m = make_manifest(extra_key={"kept": True})
    cache = FeatureCache.create(tmp_path / "c", m)
    on_disk = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert on_disk["format_version"] == FORMAT_VERSION and on_disk["r2_version"] == __version__
    assert on_disk["created"].endswith("+00:00")
    for key, value in m.items():
        assert on_disk[key] == value
    opened = FeatureCache.open(tmp_path / "c")
    assert opened.manifest == on_disk and opened.layers == [9, 10, 11, 12] and opened.dtype == "float16"
    assert cache.path == opened.path
    # dtype defaults to float16; fps None = per-video sampling
    m2 = make_manifest(fps=None)
    del m2["dtype"]
    assert FeatureCache.create(tmp_path / "d", m2).manifest["dtype"] == "float16"


def test_create_on_a_compatible_cache_opens_it_and_keeps_its_items(build_cache, make_manifest):
    cache = build_cache(videos={"a": 1})
    created = cache.manifest["created"]
    # informative keys (the command) may differ on a resumed run
    again = FeatureCache.create(cache.path, make_manifest(command="r2 extract other --out cache/", fps=0.5))
    assert again.video_ids() == ["a"] and again.manifest["created"] == created
    assert again.manifest["command"] == "r2 extract videos/ --out cache/"


def test_create_on_an_incompatible_cache_names_each_difference(build_cache, make_manifest):
    cache = build_cache(videos={"a": 1})
    bad = make_manifest(model_id="openai/clip-vit-large-patch14", layers=[20, 24], fps=1,
                        dtype="int8", preprocessing={"size": 336})
    with pytest.raises(CacheError) as info:
        FeatureCache.create(cache.path, bad)
    msg = str(info.value)
    assert info.value.user_error is True
    for line in ['model_id: the cache has "test/tiny-clip", requested "openai/clip-vit-large-patch14"',
                 "layers: the cache has [9, 10, 11, 12], requested [20, 24]",
                 "fps: the cache has 0.5, requested 1.0",
                 'dtype: the cache has "float16", requested "int8"',
                 "preprocessing: the cache has {"]:
        assert line in msg, msg
    assert "model_config_hash" not in msg
    with pytest.raises(CacheError, match="model_config_hash"):
        FeatureCache.create(cache.path, make_manifest(model_config_hash="other"))
    assert FeatureCache.open(cache.path).video_ids() == ["a"]  # untouched
    assert msg.endswith("\nWrite to another directory, or delete this one to rebuild it."), msg


def test_an_empty_cache_of_other_settings_says_it_holds_nothing_yet(tmp_path, make_manifest):
    """A run that stopped after creating the cache and before its first item (a model that
    cannot run, a Ctrl-C) pins its settings; a rerun with other ones is told the folder holds
    nothing to lose."""
    FeatureCache.create(tmp_path / "c", make_manifest(fps=1))
    with pytest.raises(CacheError) as info:
        FeatureCache.create(tmp_path / "c", make_manifest(fps=0.5))
    assert str(info.value).endswith("fps: the cache has 1.0, requested 0.5\nIt holds no video or query yet (a run "
                                    "with those settings stopped before writing any): delete it to start again "
                                    "with these settings, or write to another directory."), str(info.value)


def test_open_and_create_refuse_what_is_not_a_cache(tmp_path, make_manifest):
    with pytest.raises(CacheError, match="no feature cache at .*does not exist"):
        FeatureCache.open(tmp_path / "missing")
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "a.mp4").write_bytes(b"x")
    with pytest.raises(CacheError, match="is not an r2 feature cache .*no manifest.json"):
        FeatureCache.open(tmp_path / "videos")
    with pytest.raises(CacheError, match="not empty and is not a cache"):
        FeatureCache.create(tmp_path / "videos", make_manifest())
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == ["a.mp4"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(CacheError, match="it is a file"):
        FeatureCache.create(tmp_path / "file", make_manifest())
    (tmp_path / "empty").mkdir()
    FeatureCache.create(tmp_path / "empty", make_manifest())  # an empty directory is fine
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "manifest.json").write_text("{")
    with pytest.raises(CacheError, match="cannot read"):
        FeatureCache.open(tmp_path / "broken")
    (tmp_path / "future").mkdir()
    (tmp_path / "future" / "manifest.json").write_text(json.dumps({"format_version": 99, "layers": [1]}))
    with pytest.raises(CacheError, match="format 99.*upgrade r2"):
        FeatureCache.open(tmp_path / "future")


@pytest.mark.parametrize("change, message", [
    ({"layers": []}, "layers must be a non-empty list"),
    ({"layers": [12, 9]}, "ascending"),
    ({"layers": [9, 9]}, "ascending, unique"),
    ({"layers": "9,10"}, "layers must be"),
    ({"fps": 0}, "fps must be a positive number or None"),
    ({"dtype": "bfloat16"}, "dtype must be one of float16, float32, int8"),
    ({"preprocessing": "clip"}, "preprocessing must be a dict"),
    ({"video_width": "768"}, "video_width must be a positive int"),
    ({"query_layers": [1, 2]}, "query_layers must be a list of 4 int >= 0"),
    ({"query_layers": [1, 2, 3, -4]}, "query_layers must be a list of 4 int"),
    ({"model_id": ""}, "model_id must be a non-empty str"),
    ({"extra": object()}, "JSON-serialisable"),
])
def test_malformed_manifests_are_refused(tmp_path, make_manifest, change, message):
    with pytest.raises(CacheError, match=message):
        FeatureCache.create(tmp_path / "c", make_manifest(**change))
    assert not (tmp_path / "c" / "manifest.json").exists()


def test_missing_keys_are_named(tmp_path, make_manifest):
    m = make_manifest()
    del m["fps"], m["model_config_hash"]
    with pytest.raises(CacheError, match="lacks model_config_hash, fps"):
        FeatureCache.create(tmp_path / "c", m)


_CREATE = """
import sys
from r2.cache import FeatureCache
m = {"model_id": "m", "model_config_hash": "h", "layers": [1, 2], "fps": 1.0, "preprocessing": {},
     "command": sys.argv[2]}
FeatureCache.create(sys.argv[1], m)
print("ok")
"""


def test_concurrent_creates_of_one_cache_all_succeed(tmp_path):
    procs = [subprocess.Popen([sys.executable, "-c", _CREATE, str(tmp_path / "c"), f"run {i}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(4)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    m = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert m["command"] in {f"run {i}" for i in range(4)}
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["manifest.json", "shards"]


@pytest.mark.parametrize("field, ours, theirs", [
    ("precision", "fp32", "bf16"),
    ("token_form", "residual stream, CLS + patch tokens", "post-LN CLS only"),
    ("sampling", "ffmpeg fps rule", "uniform"),
    ("tokens_per_frame", 3, 257),
    ("video_width", 16, 768),
    ("query_width", 8, 512),
    ("query_layers", [1, 2, 3, 4], [9, 10, 11, 12]),
])
def test_every_field_that_changes_the_features_is_compared(build_cache, make_manifest, tmp_path,
                                                           field, ours, theirs):
    from r2.cache import merge

    a = build_cache("a", videos={"v0": 0}, **{field: ours})
    diff = re.escape(f"{field}: the cache has {json.dumps(ours)}, requested {json.dumps(theirs)}")
    with pytest.raises(CacheError, match=diff):
        FeatureCache.create(a.path, make_manifest(**{field: theirs}))
    # merge compares the same fields (a cache made elsewhere with the other setting)
    b = FeatureCache.create(tmp_path / "b", make_manifest(**{field: theirs}))
    with pytest.raises(CacheError, match=f"the manifests differ\n  {field}: "):
        merge([a.path, b.path], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert FeatureCache.create(a.path, make_manifest(**{field: ours})).video_ids() == ["v0"]


def test_an_absent_precision_is_fp32_and_pinned_shapes_need_not_be_repeated(tmp_path, make_manifest, features):
    video, query = features
    m = make_manifest()
    for key in ("video_width", "query_width"):
        del m[key]
    cache = FeatureCache.create(tmp_path / "c", m)  # no precision, no shapes in the manifest
    assert "precision" not in cache.manifest
    FeatureCache.create(cache.path, make_manifest(precision="fp32"))  # the same features
    with pytest.raises(CacheError, match='precision: the cache has "fp32", requested "bf16"'):
        FeatureCache.create(cache.path, make_manifest(precision="bf16"))
    with cache.writer() as w:
        w.add_video("v", video(0))  # (5, 4, 3, 16)
        w.add_query("q", *query(0))  # (4, 6, 8)
    # the first items pinned the shapes in manifest.json; a rerun that does not give them resumes
    on_disk = json.loads((cache.path / "manifest.json").read_text())
    assert (on_disk["tokens_per_frame"], on_disk["video_width"], on_disk["query_width"]) == (3, 16, 8)
    assert FeatureCache.create(cache.path, m).video_ids() == ["v"]
    with pytest.raises(CacheError, match="tokens_per_frame: the cache has 3, requested 50"):
        FeatureCache.create(cache.path, {**m, "tokens_per_frame": 50})


@pytest.mark.parametrize("change, field, message", [
    ("only the format version", "lacks", "the cache manifest lacks model_id, model_config_hash, layers, fps, "
                                         "preprocessing"),
    ({"layers": "ab"}, "layers", "invalid cache manifest: layers must be a non-empty list of int, got 'ab'"),
    ({"dtype": "bfloat16"}, "dtype", "invalid cache manifest: dtype must be one of float16, float32, int8, "
                                     "got 'bfloat16'"),
    ({"format_version": "1"}, "format_version", "format_version must be a positive int, got '1'"),
    ({"precision": 32}, "precision", "invalid cache manifest: precision must be a non-empty str, got 32"),
])
def test_a_damaged_manifest_is_a_clear_error_naming_the_file_and_field(build_cache, change, field, message):
    from click.testing import CliRunner

    from r2.cli import main

    cache = build_cache(videos={"a": 0})
    path = cache.path / "manifest.json"
    on_disk = json.loads(path.read_text())
    path.write_text(json.dumps({"format_version": 1} if isinstance(change, str) else {**on_disk, **change}))
    with pytest.raises(CacheError, match=re.escape(f"{path} is damaged: {message}")):
        FeatureCache.open(cache.path)
    runner = CliRunner()
    info = runner.invoke(main, ["cache", "info", str(cache.path)])
    assert info.exit_code == 1 and info.output.startswith(f"Error: {path} is damaged: "), info.output
    assert field in info.output and "Traceback" not in info.output
    check = runner.invoke(main, ["cache", "verify", str(cache.path)])
    assert check.exit_code == 1 and field in check.output and "Traceback" not in check.output, check.output
    assert isinstance(check.exception, SystemExit)  # a clean exit, not an exception from deep inside
    if field != "format_version":  # a readable manifest with a bad key: reported by verify itself
        assert f"PROBLEM manifest.json: {message}" in check.output


def test_absent_query_layers_are_the_layers(build_cache, make_manifest):
    a = build_cache("a", videos={"v0": 0})  # an older cache: no query_layers in its manifest
    assert "query_layers" not in a.manifest
    same = make_manifest(query_layers=list(make_manifest()["layers"]))
    assert FeatureCache.create(a.path, same).video_ids() == ["v0"]
    with pytest.raises(CacheError, match="query_layers: the cache has"):
        FeatureCache.create(a.path, make_manifest(query_layers=[0, 1, 2, 3]))


def test_the_docs_name_every_field_that_create_compares():
    # FeatureCache.create and the manifest module document COMPAT_FIELDS, the one list that
    # differences() compares: a field added there must be added to both docstrings
    from r2.cache import COMPAT_FIELDS, manifest as manifest_mod

    for doc in (FeatureCache.create.__doc__, manifest_mod.__doc__):
        text = " ".join(doc.split())
        assert "COMPAT_FIELDS" in text
        missing = [f for f in COMPAT_FIELDS if f"``{f}``" not in text]
        assert missing == [], missing


def test_the_same_weights_at_another_path_are_the_same_model(build_cache, make_manifest, tmp_path):
    from r2.cache import merge

    here = dict(model_id="/home/a/clip", model_weights_hash="0123456789abcdef")
    a = build_cache("a", videos={"v0": 0}, **here)
    there = dict(model_id="/data/models/clip-b32", model_weights_hash="0123456789abcdef")
    assert FeatureCache.create(a.path, make_manifest(**there)).video_ids() == ["v0"]
    b = build_cache("b", videos={"v1": 1}, **there)
    merge([a.path, b.path], tmp_path / "out")
    assert FeatureCache.open(tmp_path / "out").video_ids() == ["v0", "v1"]
    # other weights: refused, naming the hash and the path
    other = dict(model_id="/data/models/clip-b32", model_weights_hash="fedcba9876543210")
    with pytest.raises(CacheError, match="model_id: .*\n  model_weights_hash: the cache has \"0123456789abcdef\""):
        FeatureCache.create(a.path, make_manifest(**other))
    # a manifest without the hash (older r2, or an in-memory model): the model_id decides
    with pytest.raises(CacheError, match="model_id: the cache has \"/home/a/clip\""):
        FeatureCache.create(a.path, make_manifest(model_id="/data/models/clip-b32"))
    assert FeatureCache.create(a.path, make_manifest(model_id="/home/a/clip")).video_ids() == ["v0"]
    with pytest.raises(CacheError, match="model_weights_hash must be a non-empty str"):
        FeatureCache.create(tmp_path / "c", make_manifest(model_weights_hash=""))
