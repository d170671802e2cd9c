"""`r2 cache import`: features in the official release's layout (one .npy per video / query)
become the cache `r2 extract` writes for the same CLIP, bit for bit; bad files are named."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from r2.cache import FeatureCache, merge, verify
from r2.cache.manifest import manifest_fingerprint
from r2.cli import main
from r2.extract import synthetic as S
from r2.extract.pipeline import QueryJob, VideoJob, extract_features


@pytest.fixture(scope="module")
def extracted(tmp_path_factory, tiny_clip):
    """A cache made by `r2 extract` from real videos, and its items written out as the official
    release lays them out: clip_b32_vid_k4/{vid}.npy (T, K, N, D), clip_b32_txt_k4/{qid}.npy (S, K, Dt)."""
    root = tmp_path_factory.mktemp("npy-import")
    jobs = []
    for i, segments in enumerate([[("red", 2.0), ("blue", 4.0)], [("green", 3.0)], [("checker:red", 5.0)]]):
        video = S.write_segment_video(root / "videos" / f"v{i}.mp4", segments, fps=8)
        jobs.append(VideoJob(f"v{i}", str(video.path)))
    queries = [QueryJob("1", "a red door"), QueryJob("2", "a man walks a dog on the beach"), QueryJob("3", "green")]
    cache_dir = root / "extracted"
    summary = extract_features(jobs, queries, cache_dir, None, fps=0.5, workers=0, clip=tiny_clip, progress=False,
                               log=lambda msg: None)
    assert summary.ok, summary.format()
    cache = FeatureCache.open(cache_dir)
    vid_dir, txt_dir = root / "clip_b32_vid_k4", root / "clip_b32_txt_k4"
    vid_dir.mkdir()
    txt_dir.mkdir()
    for v in cache.video_ids():
        np.save(vid_dir / f"{v}.npy", cache.load_video(v, dtype=None))
    for q in cache.query_ids():
        x, mask = cache.load_query(q, dtype=None)  # (K, S, Dt)
        np.save(txt_dir / f"{q}.npy", x[:, mask].transpose(1, 0, 2))  # (S, K, Dt): SOT..EOT only
    return root, cache, vid_dir, txt_dir


def run(*args):
    return CliRunner().invoke(main, ["cache", "import", *map(str, args)])


def test_imported_features_are_the_extracted_cache_bit_for_bit(extracted, tiny_clip_dir, tmp_path):
    root, cache, vid_dir, txt_dir = extracted
    out = tmp_path / "imported"
    result = run(vid_dir, "--queries", txt_dir, "--out", out, "--model", tiny_clip_dir, "--fps", "0.5")
    assert result.exit_code == 0, result.output
    assert "videos : 3 imported" in result.output and "queries: 3 imported" in result.output
    imported = FeatureCache.open(out)
    # the same features, as every later stage compares them (model, weights, layers, fps, preprocessing, ...)
    assert manifest_fingerprint(imported.manifest) == manifest_fingerprint(cache.manifest)
    assert sorted(imported.video_ids()) == sorted(cache.video_ids())
    for v in cache.video_ids():
        a, b = cache.load_video(v, dtype=None), imported.load_video(v, dtype=None)
        assert a.dtype == b.dtype == np.float16 and np.array_equal(a, b)
    for q in cache.query_ids():
        (a, ma), (b, mb) = cache.load_query(q, dtype=None), imported.load_query(q, dtype=None)
        assert np.array_equal(a[:, ma], b) and mb.all()  # stored SOT..EOT, every token valid
    assert verify(out).ok
    # the two kinds of cache join: every id is an identical duplicate
    merged = merge([root / "extracted", out], tmp_path / "merged")
    assert merged.videos == 3 and merged.duplicates_identical == 6


def test_the_command_is_recorded_with_absolute_paths_for_verify_to_quote(extracted, tiny_clip_dir, tmp_path):
    _, _, vid_dir, _ = extracted
    (tmp_path / "vid").mkdir()
    os.link(vid_dir / "v1.npy", tmp_path / "vid" / "v1.npy")
    os.symlink(tiny_clip_dir, tmp_path / "clip")
    write_annotations(tmp_path / "val.jsonl", SENTENCES)
    done = subprocess.run([sys.executable, "-m", "r2", "cache", "import", "vid", "-o", "c", "-m", "clip", "--fps",
                           "0.5", "-a", "val.jsonl", "--no-progress"], cwd=tmp_path, capture_output=True, text=True,
                          env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert done.returncode == 0, done.stderr
    recorded = FeatureCache.open(tmp_path / "c").manifest["command"]
    assert recorded == shlex.join(["r2", "cache", "import", str(tmp_path / "vid"), "-o", str(tmp_path / "c"), "-m",
                                   str(tmp_path / "clip"), "--fps", "0.5", "-a", str(tmp_path / "val.jsonl"),
                                   "--no-progress"])


def test_a_rerun_imports_only_what_is_missing_and_other_settings_are_refused(extracted, tiny_clip_dir, tmp_path):
    _, cache, vid_dir, _ = extracted
    out = tmp_path / "c"
    partial = tmp_path / "some"
    partial.mkdir()
    (partial / "v0.npy").write_bytes((vid_dir / "v0.npy").read_bytes())
    assert run(partial, "-o", out, "-m", tiny_clip_dir, "--fps", "0.5").exit_code == 0
    result = run(vid_dir, "-o", out, "-m", tiny_clip_dir, "--fps", "0.5")
    assert result.exit_code == 0, result.output
    assert "videos : 2 imported" in result.output and "1 already cached (of 3)" in result.output
    result = run(vid_dir, "-o", out, "-m", tiny_clip_dir, "--fps", "1")
    assert result.exit_code == 1 and "fps: the cache has 0.5, requested 1.0" in result.output
    assert len(FeatureCache.open(out).video_ids()) == 3


def test_ids_cached_with_other_features_are_refused_not_skipped(extracted, tiny_clip_dir, tmp_path):
    """An id the cache holds, given again by a file of another length (another release or data
    set numbering its files alike) or for another sentence, was skipped as "already cached",
    keeping the other features under it (exit code 0); refused as r2 extract does, before
    anything is written."""
    _, _, vid_dir, txt_dir = extracted
    out = tmp_path / "c"
    ann = write_annotations(tmp_path / "val.jsonl", SENTENCES)
    assert run(vid_dir, "--queries", txt_dir, "-a", ann, "-o", out, "-m", tiny_clip_dir, "--fps", "0.5").exit_code == 0
    before = sorted((p.name, p.stat().st_size) for p in (out / "shards").iterdir())
    other = tmp_path / "other"
    other.mkdir()
    longer = np.load(vid_dir / "v1.npy")
    np.save(other / "v1.npy", np.concatenate([longer, longer]))
    result = run(other, "-o", out, "-m", tiny_clip_dir, "--fps", "0.5")
    assert result.exit_code == 1, result.output
    assert (f"Error: 1 id(s) are already in {out} with other features: video 'v1': cached with {len(longer)} clips, "
            f"{other / 'v1.npy'} has {2 * len(longer)}. Ids must be unique across the inputs of one cache") \
        in result.output, result.output
    renamed = write_annotations(tmp_path / "renamed.jsonl", {**SENTENCES, "2": "a cat sleeps on a sofa"})
    result = run("--queries", txt_dir, "-a", renamed, "-o", out, "-m", tiny_clip_dir, "--fps", "0.5")
    assert result.exit_code == 1, result.output
    assert (f"query '2': cached for {SENTENCES['2']!r}, now 'a cat sleeps on a sofa'" in result.output), result.output
    assert sorted((p.name, p.stat().st_size) for p in (out / "shards").iterdir()) == before
    same = run(vid_dir, "--queries", txt_dir, "-a", ann, "-o", out, "-m", tiny_clip_dir, "--fps", "0.5")
    assert same.exit_code == 0 and "3 already cached (of 3)" in same.output, same.output


def test_bad_files_are_named_with_their_reason_and_the_others_imported(extracted, tiny_clip_dir, tmp_path):
    _, cache, vid_dir, _ = extracted
    good = np.load(vid_dir / "v0.npy")  # (T, K, N, D) float16
    folder = tmp_path / "vid"
    folder.mkdir()
    np.save(folder / "good.npy", good)
    np.save(folder / "flat.npy", good.reshape(len(good), -1))  # (T, K·N·D): the official loader's view
    np.save(folder / "two_layers.npy", good[:, :2])
    np.save(folder / "ints.npy", good.astype(np.int16))
    np.save(folder / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    nan = good.astype(np.float32)
    nan[0, 0, 0, 0] = np.nan
    np.save(folder / "nan.npy", nan)
    np.save(folder / "no_clips.npy", good[:0])
    np.save(folder / "truncated.npy", good)
    with open(folder / "truncated.npy", "r+b") as fh:
        fh.truncate(300)
    (folder / "empty.npy").write_bytes(b"")
    np.savez(folder / "archive", a=good)
    os.replace(folder / "archive.npz", folder / "archive.npy")
    (folder / "text.npy").write_text("T,K,N,D\n75,4,50,768\n")  # was said to hold Python objects
    out = tmp_path / "c"
    result = run(folder, "-o", out, "-m", tiny_clip_dir, "-d", "qvhighlights")
    assert result.exit_code == 1
    k, n, d = good.shape[1:]
    expected = {
        "two_layers": f"shape {(len(good), 2, n, d)}, expected (T, {k}, {n}, {d})",
        "ints": "features must be floating point, got int16",
        "objects": "it holds Python objects, not numbers",
        "nan": "video 'nan' has NaN or infinite values",
        "no_clips": f"shape {(0, k, n, d)}, expected (T, {k}, {n}, {d})",
        "truncated": "the file is shorter than its header says: truncated",
        "empty": "the file is empty",
        "archive": "not a .npy array (an .npz archive?)",
        "text": "not a .npy file (it does not begin with the .npy magic bytes: text, or another format)",
    }
    lines = result.output.splitlines()
    for name, reason in expected.items():
        line = next((x for x in lines if x.strip().startswith(str(folder / f"{name}.npy"))), None)
        assert line is not None and reason in line, (name, result.output)
    assert f"FAILED : 9 file(s) not imported, listed in {out / 'import_failures.jsonl'}:" in result.output
    listed = [json.loads(x) for x in (out / "import_failures.jsonl").read_text().splitlines()]
    assert sorted(f["item_id"] for f in listed) == sorted(expected) and all(
        expected[f["item_id"]] in f["reason"] and f["path"] == str(folder / f"{f['item_id']}.npy") for f in listed)
    imported = FeatureCache.open(out)
    assert sorted(imported.video_ids()) == ["flat", "good"]
    assert np.array_equal(imported.load_video("flat", dtype=None), good)
    assert imported.manifest["fps"] == 0.5  # QVHighlights' preset
    for name in expected:  # the bad files removed: a rerun passes, and the list goes
        (folder / f"{name}.npy").unlink()
    result = run(folder, "-o", out, "-m", tiny_clip_dir, "-d", "qvhighlights")
    assert result.exit_code == 0 and not (out / "import_failures.jsonl").exists(), result.output


def test_query_shapes_are_checked_against_the_model(extracted, tiny_clip_dir, tiny_clip, tmp_path):
    _, _, _, txt_dir = extracted
    q = np.load(txt_dir / "2.npy")  # (S, K, Dt)
    folder = tmp_path / "txt"
    folder.mkdir()
    np.save(folder / "ok.npy", q)
    np.save(folder / "wide.npy", np.concatenate([q, q], axis=2))
    np.save(folder / "long.npy", np.repeat(q, tiny_clip.context_length, axis=0)[:tiny_clip.context_length + 1])
    np.save(folder / "kst.npy", q.transpose(1, 0, 2))  # (K, S, Dt): r2's own order, not the release's
    result = run("--queries", folder, "-o", tmp_path / "c", "-m", tiny_clip_dir, "--fps", "0.5")
    assert result.exit_code == 1
    k, dt = q.shape[1:]
    assert f"wide.npy: shape {(len(q), k, 2 * dt)}, expected (S, {k}, {dt})" in result.output
    assert f"long.npy: shape {(tiny_clip.context_length + 1, k, dt)}" in result.output
    assert f"1 <= S <= {tiny_clip.context_length}" in result.output
    assert q.shape[0] != k and f"kst.npy: shape {(k, len(q), dt)}" in result.output
    assert FeatureCache.open(tmp_path / "c").query_ids() == ["ok"]


def test_youtube_features_have_a_rate_per_video(extracted, tiny_clip_dir, tmp_path):
    _, _, vid_dir, _ = extracted
    result = run(vid_dir, "-o", tmp_path / "c", "-m", tiny_clip_dir, "-d", "youtube")
    assert result.exit_code == 0, result.output
    assert FeatureCache.open(tmp_path / "c").manifest["fps"] is None


def test_fps_beside_a_dataset_is_used_with_a_warning_as_in_extract(extracted, tiny_clip_dir, tmp_path):
    """r2 extract took --fps over --dataset's rate silently, r2 cache import refused both: now
    both take --fps and say that r2 fit -d DATASET will refuse the cache without --set fps."""
    _, _, vid_dir, _ = extracted
    result = run(vid_dir, "-o", tmp_path / "c", "-m", tiny_clip_dir, "-d", "charades", "--fps", "0.5")
    assert result.exit_code == 0, result.output
    assert ("warning: --fps 0.5 is not the charades preset's 1 clips/s: the features are sampled at 0.5, and "
            "`r2 fit -d charades` refuses them unless given --set fps=0.5") in result.output, result.output
    assert FeatureCache.open(tmp_path / "c").manifest["fps"] == 0.5
    result = run(vid_dir, "-o", tmp_path / "y", "-m", tiny_clip_dir, "-d", "youtube", "--fps", "1")
    assert result.exit_code == 0 and "the youtube preset samples per video" in result.output, result.output
    result = run(vid_dir, "-o", tmp_path / "d", "-m", tiny_clip_dir, "-d", "charades", "--fps", "1")
    assert result.exit_code == 0 and "warning" not in result.output, result.output
    video = S.write_segment_video(tmp_path / "videos" / "v.mp4", [("red", 2.0)], fps=8).path
    result = CliRunner().invoke(main, ["extract", str(video), "-o", str(tmp_path / "e"), "-m", str(tiny_clip_dir),
                                       "-d", "charades", "--fps", "0.5", "--workers", "0", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "warning: --fps 0.5 is not the charades preset's 1 clips/s" in result.output, result.output
    assert FeatureCache.open(tmp_path / "e").manifest["fps"] == 0.5


@pytest.mark.parametrize("args, message", [
    (["VID"], "give the clip rate the files were sampled at: --dataset NAME"),
    (["--fps", "0.5"], "give VIDEO_DIR (video features), --queries DIR (query features), or both"),
    (["VID", "-d", "charade"], "unknown dataset 'charade'"),
    (["EMPTY", "--fps", "0.5"], "holds no .npy file"),
])
def test_usage_errors_say_what_to_give(extracted, tiny_clip_dir, tmp_path, args, message):
    _, _, vid_dir, _ = extracted
    (tmp_path / "empty").mkdir()
    args = [str(vid_dir) if a == "VID" else str(tmp_path / "empty") if a == "EMPTY" else a for a in args]
    result = run(*args, "-o", tmp_path / "c", "-m", tiny_clip_dir)
    assert result.exit_code != 0 and message in result.output, result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "c").exists()


def test_the_help_names_the_release_layout():
    result = CliRunner().invoke(main, ["cache", "import", "--help"])
    assert result.exit_code == 0 and "clip_b32_vid_k4" in result.output and "{video_id}.npy" in result.output


def write_annotations(path, sentences):
    durations = {"v0": 6.0, "v1": 3.0, "v2": 5.0}
    rows = [{"qid": int(q), "query": text, "duration": durations[f"v{i}"], "vid": f"v{i}",
             "relevant_windows": [[0, 2]]} for i, (q, text) in enumerate(sentences.items())]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


SENTENCES = {"1": "a red door", "2": "a man walks a dog on the beach", "3": "green"}


def test_annotations_give_the_queries_their_sentences_after_a_check(extracted, tiny_clip_dir, tmp_path):
    _, _, _, txt_dir = extracted
    ann = write_annotations(tmp_path / "val.jsonl", SENTENCES)
    result = run("--queries", txt_dir, "-a", ann, "-o", tmp_path / "c", "-m", tiny_clip_dir, "--fps", "0.5")
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output
    cache = FeatureCache.open(tmp_path / "c")
    assert {q: cache.query_attrs(q)["text"] for q in cache.query_ids()} == SENTENCES
    # one sentence another than the file's: imported with a warning that names it
    other = write_annotations(tmp_path / "other.jsonl", {**SENTENCES, "2": "a cat sleeps on a sofa"})
    result = run("--queries", txt_dir, "-a", other, "-o", tmp_path / "d", "-m", tiny_clip_dir, "--fps", "0.5")
    assert result.exit_code == 0, result.output
    assert "warning: 2.npy:" in result.output and "'a cat sleeps on a sofa'" in result.output
    # annotations of other ids (another data set's file): said, and nothing is stored or checked
    elsewhere = tmp_path / "elsewhere.jsonl"
    elsewhere.write_text(json.dumps({"qid": 900, "query": "a dog", "duration": 6.0, "vid": "v0",
                                     "relevant_windows": [[0, 2]]}) + "\n")
    result = run("--queries", txt_dir, "-a", elsewhere, "-o", tmp_path / "e", "-m", tiny_clip_dir, "--fps", "0.5")
    assert result.exit_code == 0, result.output
    assert "warning: none of the 3 query files in" in result.output and "'1' against '900'" in result.output
    assert all("text" not in FeatureCache.open(tmp_path / "e").query_attrs(q) for q in SENTENCES)


@pytest.mark.parametrize("damage", ["another model", "layers reversed"])
def test_query_files_of_another_model_or_layer_order_are_refused_before_writing(extracted, tiny_clip_dir, tmp_path,
                                                                                damage):
    from r2.extract.clip import FrozenCLIP
    from r2.extract.tiny import make_tiny_clip

    _, _, _, txt_dir = extracted
    folder = tmp_path / "txt"
    folder.mkdir()
    if damage == "another model":
        other = FrozenCLIP(make_tiny_clip(tmp_path / "other-clip", seed=1))
        feats, _ = other.text_features(list(SENTENCES.values()))
        for q, f in zip(SENTENCES, feats):
            np.save(folder / f"{q}.npy", f.transpose(1, 0, 2).astype(np.float16))  # (S, K, Dt)
    else:
        for q in SENTENCES:
            np.save(folder / f"{q}.npy", np.load(txt_dir / f"{q}.npy")[:, ::-1])
    ann = write_annotations(tmp_path / "val.jsonl", SENTENCES)
    result = run("--queries", folder, "-a", ann, "-o", tmp_path / "c", "-m", tiny_clip_dir, "--fps", "0.5")
    assert result.exit_code == 1
    assert f"the query features in {folder} are not" in result.output
    assert "none of the 3 checked agrees with the model's features of its sentence" in result.output
    assert "differs from the model's features of" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("claimer", ["stops", "commits"])
def test_a_video_another_writer_is_adding_is_waited_for(extracted, tiny_clip, tmp_path, claimer):
    """As in r2 extract: once the rest is done, a video another live writer of the cache has
    claimed is waited for: imported here when that writer stops without it, counted when it
    commits it; the run's own items are committed first."""
    import threading

    from r2.extract.npy_features import import_npy_features

    _, cache, vid_dir, _ = extracted
    out = tmp_path / "c"
    first = tmp_path / "first"
    first.mkdir()
    os.link(vid_dir / "v0.npy", first / "v0.npy")
    assert import_npy_features(first, out, None, fps=0.5, clip=tiny_clip, progress=False).ok
    other = FeatureCache.open(out).writer()
    assert other.claim_video("v1")
    mine = cache.load_video("v1", dtype=None)
    said, visible = [], []

    def claimer_acts():
        if claimer == "stops":
            other.abort()
        else:
            other.add_video("v1", mine[:2])
            other.close()

    def log(message):
        said.append(message)
        if message.startswith("waiting for"):
            visible.append(FeatureCache.open(out).has_video("v2"))  # this run's own, committed first
            threading.Timer(1.5, claimer_acts).start()

    summary = import_npy_features(vid_dir, out, None, fps=0.5, clip=tiny_clip, progress=False, log=log)
    assert summary.ok, summary.format()
    assert said[-1] == "waiting for 1 video(s) that other writer(s) of the cache are adding" and visible == [True]
    imported = FeatureCache.open(out)
    assert sorted(imported.video_ids()) == ["v0", "v1", "v2"]
    if claimer == "stops":
        assert (summary.videos_imported, summary.videos_taken) == (2, 0)
        assert np.array_equal(imported.load_video("v1", dtype=None), mine)
    else:
        assert (summary.videos_imported, summary.videos_taken) == (1, 1)
        assert "1 added by another writer meanwhile" in summary.format()
        assert len(imported.load_video("v1", dtype=None)) == 2


def test_missing_ids_of_an_imported_cache_are_given_the_import_command_too(extracted, tiny_clip_dir, tmp_path,
                                                                           monkeypatch):
    from r2.train.annotations import load_annotations
    from r2.train.data import MissingFeaturesError, check_ids

    _, _, vid_dir, txt_dir = extracted
    some = tmp_path / "vid"
    some.mkdir()
    os.link(vid_dir / "v0.npy", some / "v0.npy")
    line = ["r2", "cache", "import", str(some), "--queries", str(txt_dir), "-o", str(tmp_path / "c"), "-m",
            str(tiny_clip_dir), "--fps", "0.5"]
    monkeypatch.setattr(sys, "argv", ["r2", *line[1:]])  # as typed: the command is recorded
    assert run(*line[3:]).exit_code == 0
    cache = FeatureCache.open(tmp_path / "c")
    ann = write_annotations(tmp_path / "val.jsonl", SENTENCES)
    with pytest.raises(MissingFeaturesError) as err:
        check_ids(cache, [("val", ann, load_annotations(ann))])
    message = str(err.value)
    assert "2 of 3 videos missing" in message and "r2 extract <videos folder>" in message
    assert message.endswith("or, as this cache was made (it imports the .npy files it does not have yet):\n  "
                            + shlex.join(line))


def test_verify_gives_a_damaged_imported_shard_the_import_command(extracted, tiny_clip_dir, tmp_path, monkeypatch):
    import shutil

    _, _, vid_dir, _ = extracted
    line = ["r2", "cache", "import", str(vid_dir), "-o", str(tmp_path / "c"), "-m", str(tiny_clip_dir), "--fps", "0.5"]
    monkeypatch.setattr(sys, "argv", line)
    assert run(*line[3:]).exit_code == 0
    moved = tmp_path / "moved"
    shutil.copytree(tmp_path / "c", moved)  # the cache elsewhere: -o is made to point at it
    [shard] = sorted((moved / "shards").glob("videos-*.h5"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2:len(data) // 2 + 256] = b"\xff" * 256
    shard.write_bytes(bytes(data))
    report = verify(moved)
    assert not report.ok
    text = report.format()
    assert "then rerun the command that wrote them; it keeps what is there and re-extracts (or re-imports)" in text
    assert text.rstrip().endswith(shlex.join([*line[:5], str(moved.resolve()), *line[6:]]))


def test_an_interrupt_says_what_the_cache_keeps(extracted, tiny_clip_dir, tmp_path, monkeypatch):
    """Ctrl-C before anything was written said "CACHE keeps what was committed so far" of a
    folder that did not exist; now what r2 extract says: nothing was written, or what is kept."""
    import r2.extract.npy_features as npy

    _, _, vid_dir, _ = extracted

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(npy.FeatureCache, "create", interrupted)
    out = tmp_path / "c"
    result = run(vid_dir, "-o", out, "-m", tiny_clip_dir, "--fps", "0.5")
    assert result.exit_code == 130 and f"interrupted: nothing was written to {out}" in result.output, result.output
    monkeypatch.undo()
    assert run(vid_dir, "-o", out, "-m", tiny_clip_dir, "--fps", "0.5").exit_code == 0
    monkeypatch.setattr(npy.FeatureCache, "writer", interrupted)
    result = run(vid_dir, "-o", out, "-m", tiny_clip_dir, "--fps", "0.5")
    assert result.exit_code == 130, result.output
    assert (f"interrupted: {out} keeps the 3 video(s) and 0 query(ies) written so far (those in flight were "
            "dropped, never half-written); the same command again imports only the rest") in result.output

