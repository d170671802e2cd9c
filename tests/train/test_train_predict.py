"""``r2 predict``: over a cache (the file ``r2 score`` reads), feature-spec checks, videos longer
than ``max_clips`` (sliding windows), and a new video through ``r2.extract`` with the tiny CLIP."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from r2.train.synthetic import TINY_OVERRIDES, make_synthetic_dataset


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A synthetic cache with two 40-clip val videos, and a run trained on it."""
    from r2.train import fit

    root = tmp_path_factory.mktemp("predict")
    data = make_synthetic_dataset(root / "data", train_videos=16, val_videos=6, concepts=4, seed=11,
                                  long_videos=2, long_clips=40)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures run before the function-scoped one above
    try:
        fit(dataset="custom", cache=data.cache_dir, train=data.train_file, val=data.val_file,
            run_dir=root / "run", epochs=3, workers=0, overrides=dict(TINY_OVERRIDES), progress=False,
            log=lambda m: None)
    finally:
        torch.set_num_threads(threads)
    return data, root / "run"


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_cli_predict_over_a_cache_writes_what_score_reads(trained, tmp_path):
    from r2.cache import FeatureCache
    from r2.cli import main
    from r2.train.inference import predict

    data, run = trained
    out = tmp_path / "sub" / "preds.jsonl"
    res = CliRunner().invoke(main, ["predict", "--checkpoint", str(run), "--cache", str(data.cache_dir),
                                    "--annotations", str(data.val_file), "--out", str(out)])
    assert res.exit_code == 0, res.output
    rows, gt = _rows(out), _rows(data.val_file)
    assert [r["qid"] for r in rows] == [g["qid"] for g in gt] and all(isinstance(r["qid"], int) for r in rows)
    cache = FeatureCache.open(data.cache_dir)
    for r, g in zip(rows, gt):
        assert list(r) == ["qid", "query", "vid", "pred_relevant_windows", "pred_saliency_scores"]
        assert (r["query"], r["vid"]) == (g["query"], g["vid"])
        scores = [w[2] for w in r["pred_relevant_windows"]]
        assert scores == sorted(scores, reverse=True) and 0 < len(scores) <= 50
        assert all(0 <= w[0] <= w[1] <= g["duration"] for w in r["pred_relevant_windows"])
        assert len(r["pred_saliency_scores"]) == cache.video_shape(g["vid"])[0]
        # numbers are the shortest decimals of float32 values
        for x in r["pred_saliency_scores"][:5]:
            assert x == float(str(np.float32(x)))
    assert predict(run, data.cache_dir, data.val_file, progress=False).rows == rows
    res = CliRunner().invoke(main, ["score", str(out), "--gt", str(data.val_file)])
    assert res.exit_code == 0 and "MR-full" not in res.output and "R1@0.5" in res.output
    # an --out that cannot be written is refused before the model runs
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    res = CliRunner().invoke(main, ["predict", "--checkpoint", str(tmp_path / "no-run"), "--cache",
                                    str(data.cache_dir), "--annotations", str(data.val_file),
                                    "--out", str(blocker / "preds.jsonl")])
    assert res.exit_code == 1 and f"--out {blocker / 'preds.jsonl'}: {blocker} is not a folder" in res.output
    assert "Traceback" not in res.output and blocker.read_text() == "x"


def test_predict_refuses_a_cache_with_other_features(trained, tmp_path):
    from r2.cli import main
    from r2.model import R2Model

    data, run = trained
    model = R2Model.from_pretrained(run)
    model.config.features = dict(model.config.features, model_id="openai/clip-vit-large-patch14", fps=1.0)
    model.save_pretrained(tmp_path / "other")
    args = ["predict", "--checkpoint", str(tmp_path / "other"), "--cache", str(data.cache_dir),
            "--annotations", str(data.val_file), "--out", str(tmp_path / "p.jsonl")]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 1
    assert "Error:" in res.output and "model_id" in res.output and "fps" in res.output
    assert "--allow-feature-mismatch" in res.output and not (tmp_path / "p.jsonl").exists()
    res = CliRunner().invoke(main, args + ["--allow-feature-mismatch"])
    assert res.exit_code == 0 and "Warning:" in res.output and (tmp_path / "p.jsonl").exists()
    # a cache without the queries: all missing ids listed, nothing written
    extra = tmp_path / "more.jsonl"
    row = _rows(data.val_file)[0]
    extra.write_text(json.dumps(dict(row, qid=99999, vid="not-there")) + "\n")
    res = CliRunner().invoke(main, ["predict", "--checkpoint", str(run), "--cache", str(data.cache_dir),
                                    "--annotations", str(extra), "--out", str(tmp_path / "q.jsonl")])
    assert res.exit_code == 1 and "not-there" in res.output and "99999" in res.output
    assert "r2 extract" in res.output and not (tmp_path / "q.jsonl").exists()
    listed = tmp_path / "missing_ids.txt"  # the complete list goes beside --out
    assert f"listed in {listed}" in res.output
    assert "annotations\tvideo\tnot-there" in listed.read_text()
    assert "annotations\tquery\t99999" in listed.read_text()
    # usage errors
    res = CliRunner().invoke(main, ["predict", "--checkpoint", str(run), "--cache", str(data.cache_dir)])
    assert res.exit_code == 2 and "--annotations" in res.output


def test_predict_on_a_run_whose_first_epoch_has_not_finished_says_so(trained, tmp_path):
    import shutil

    from r2.cli import main

    data, run = trained
    young = tmp_path / "young"  # what `r2 fit` has written before its first epoch ends
    young.mkdir()
    shutil.copy(run / "preset.json", young / "preset.json")
    args = ["predict", "--checkpoint", str(young), "--cache", str(data.cache_dir), "--annotations",
            str(data.val_file), "--out", str(tmp_path / "p.jsonl")]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 1
    assert res.output == (f"Error: --checkpoint {young} is an `r2 fit` run with no weights yet: its first epoch "
                          "has not finished (`r2 fit ... --resume` continues the run; each epoch's log goes to "
                          f"{young / 'metrics.jsonl'})\n")
    assert not (tmp_path / "p.jsonl").exists()
    # epochs done, none evaluated yet (eval_every > 1): not "deleted", and where the last weights are
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    (young / "metrics.jsonl").write_text("".join(json.dumps(dict(record, epoch=e, best=False, value=None,
                                                                 metrics=None)) + "\n" for e in (1, 2)))
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 1
    assert res.output == (f"Error: --checkpoint {young}: the run has finished 2 epochs and evaluated none yet "
                          "(eval_every); its best weights are written at its first evaluation. The last epoch's "
                          f"weights: --checkpoint {young / 'checkpoints' / 'last'}\n")


def test_predict_missing_ids_list_is_written_beside_out_only_and_removed_on_success(trained, tmp_path):
    """The list of missing ids goes beside ``--out`` when its folder exists; a later successful
    run removes it (as fit does); the Python API without ``out`` and an ``--out`` in a folder
    that does not exist write no file and make no folder: the error lists every id."""
    from r2.train.data import MissingFeaturesError
    from r2.train.inference import predict

    data, run = trained
    row = _rows(data.val_file)[0]
    ids = [f"absent{i:03d}" for i in range(60)]  # more than a screenful
    data_dir = tmp_path / "data"  # the user's annotation folder
    data_dir.mkdir()
    extra = data_dir / "more.jsonl"
    extra.write_text("".join(json.dumps(dict(row, qid=50_000 + i, vid=v)) + "\n" for i, v in enumerate(ids)))

    # the Python API without out: no file anywhere, every id and the command in the message
    with pytest.raises(MissingFeaturesError) as err:
        predict(run, data.cache_dir, extra, progress=False)
    msg = str(err.value)
    assert all(v in msg for v in ids) and "50059" in msg and "... and" not in msg
    assert "r2 extract" in msg and "listed in" not in msg and "could not write" not in msg
    assert sorted(p.name for p in data_dir.iterdir()) == ["more.jsonl"]

    # --out in a folder that does not exist: not created for a failed run
    with pytest.raises(MissingFeaturesError) as err:
        predict(run, data.cache_dir, extra, out=tmp_path / "new" / "deeper" / "p.jsonl", progress=False)
    assert not (tmp_path / "new").exists() and all(v in str(err.value) for v in ids)

    # --out in an existing folder: the list goes there, and the next good run removes it
    out_dir = tmp_path / "preds"
    out_dir.mkdir()
    listed = out_dir / "missing_ids.txt"
    with pytest.raises(MissingFeaturesError, match=f"listed in {listed}"):
        predict(run, data.cache_dir, extra, out=out_dir / "p.jsonl", progress=False)
    assert listed.read_text().count("annotations\tvideo\tabsent") == 60
    result = predict(run, data.cache_dir, data.val_file, out=out_dir / "p.jsonl", progress=False)
    assert result.out == out_dir / "p.jsonl" and not listed.exists()
    assert sorted(p.name for p in out_dir.iterdir()) == ["p.jsonl"]
    # a file of that name that r2 did not write is left alone
    listed.write_text("my own notes\n")
    predict(run, data.cache_dir, data.val_file, out=out_dir / "p.jsonl", progress=False)
    assert listed.read_text() == "my own notes\n"


def test_long_videos_go_through_overlapping_windows(trained, tmp_path):
    from r2.cache import FeatureCache
    from r2.model import R2Model
    from r2.train.inference import infer_clips, predict, window_starts

    assert window_starts(10, 12) == [0]
    assert window_starts(40, 12) == [0, 9, 18, 27, 28]
    for t, w in ((13, 12), (100, 16), (33, 8), (9, 1)):
        starts = window_starts(t, w)
        assert starts[0] == 0 and starts[-1] == t - w and starts == sorted(set(starts))
        assert all(b - a <= w for a, b in zip(starts, starts[1:]))  # no gap

    data, run = trained
    model = R2Model.from_pretrained(run).eval()
    cache = FeatureCache.open(data.cache_dir)
    video = torch.from_numpy(cache.load_video("v022", dtype=np.float32))  # a 40-clip val video
    q, _ = cache.load_query(str(_rows(data.val_file)[-1]["qid"]), dtype=np.float32)
    query = torch.from_numpy(q)
    t = video.shape[0]
    assert t == 40
    # full length when the video fits: the official batch-size-1 inference
    full = infer_clips(model, video, query, t / 0.5)
    direct = model.decode(model(video[None], torch.ones(1, t, dtype=torch.bool), query[None],
                                torch.ones(1, q.shape[1], dtype=torch.bool)), [t / 0.5])[0]
    assert full.windows == direct.windows and full.saliency == direct.saliency
    # sliding windows of 12 clips
    slid = infer_clips(model, video, query, t / 0.5, window=12)
    assert len(slid.saliency) == t
    starts = window_starts(t, 12)
    for clip in (0, 5, 10, 17, 26, 39):
        margins = [min(clip - s, s + 11 - clip) if s <= clip < s + 12 else -1 for s in starts]
        s = starts[int(np.argmax(margins))]
        alone = infer_clips(model, video[s:s + 12], query, 24.0)
        assert slid.saliency[clip] == pytest.approx(alone.saliency[clip - s], abs=1e-6)
    scores = [w[2] for w in slid.windows]
    assert scores == sorted(scores, reverse=True) and len(scores) <= model.config.max_moments
    assert all(0 <= w[0] <= w[1] <= t / 0.5 for w in slid.windows)
    assert any(w[1] > 24 for w in slid.windows)  # moments from the later windows, in video time
    # moments: each window keeps those centred in the part it owns (up to the middle of its
    # overlaps), so a moment cut off at a window's edge does not stand beside the whole one
    from r2.model.decoding import postprocess_windows, raw_windows, strict_point_mask

    cfg = model.config
    bounds = [-np.inf] + [(b + a + 12) / 2 for a, b in zip(starts, starts[1:])] + [np.inf]
    kept, dropped = [], 0
    for i, s in enumerate(starts):
        with torch.inference_mode():
            out = model(video[None, s:s + 12], torch.ones(1, 12, dtype=torch.bool), query[None],
                        torch.ones(1, q.shape[1], dtype=torch.bool))
        [r] = raw_windows(out.class_logits, out.coord_offsets, out.points, strict_point_mask(out.points, out.num_clips),
                          cfg.fps, cfg.max_moments)
        r = r.copy()
        r[:, :2] += np.float32(s / cfg.fps)
        centre = (r[:, 0] + r[:, 1]) / 2 * cfg.fps
        owned = (centre >= bounds[i]) & (centre < bounds[i + 1])
        kept.append(r[owned])
        dropped += int((~owned).sum())
    rows = np.concatenate(kept)
    rows = rows[np.argsort(-rows[:, 2], kind="stable")[:cfg.max_moments]]
    assert dropped > 0
    expected = postprocess_windows(rows, t / 0.5, cfg.unit, cfg.nms, cfg.nms_threshold)
    assert np.allclose(np.asarray(slid.windows), expected, atol=1e-4)  # (a batch of windows vs one at a time)
    # a moment that hangs over the video's start or end is the first or the last window's,
    # clamped as on the whole-video path, not owned by none
    from r2.train import inference

    def overhanging(class_logits, *args, **kwargs):  # one batch of all the windows, in their own seconds
        rows = [[[10.0, 12.0, 0.1]] for _ in range(class_logits.shape[0])]
        rows[0], rows[-1] = [[-10.0, 4.0, 0.99]], [[20.0, 30.0, 0.98]]
        return [np.array(r, dtype=np.float32) for r in rows]

    real_raw = inference.raw_windows
    inference.raw_windows = overhanging
    try:
        edge = infer_clips(model, video, query, t / 0.5, window=12, batch_size=len(starts))
    finally:
        inference.raw_windows = real_raw
    kept = {(w[0], w[1]) for w in edge.windows if w[2] > 0}
    assert (0.0, 4.0) in kept and (starts[-1] / 0.5 + 20.0, t / 0.5) in kept, edge.windows
    # features at another clip rate (r2 predict VIDEO --fps): moments in seconds of that rate
    assert cfg.unit is None
    for window in (None, 12):
        at_half = np.asarray(infer_clips(model, video, query, t / 0.5, window=window).windows)
        at_one = np.asarray(infer_clips(model, video, query, t / 1.0, window=window, fps=1.0).windows)
        assert np.allclose(at_one[:, :2], at_half[:, :2] / 2, atol=1e-4) and np.allclose(at_one[:, 2], at_half[:, 2])

    # through predict(): a checkpoint whose max_clips is 12 predicts every clip of the long videos
    model.config.max_clips = 12
    model.save_pretrained(tmp_path / "short")
    rows = predict(tmp_path / "short", data.cache_dir, data.val_file, progress=False).rows
    long_rows = [r for r in rows if r["vid"] in ("v022", "v023")]
    assert len(long_rows) == 4 and all(len(r["pred_saliency_scores"]) == 40 for r in long_rows)


def test_predict_a_new_video_with_the_tiny_clip(tmp_path, monkeypatch):
    """extract (tiny CLIP) -> fit -> `r2 predict VIDEO --query` on a video longer than max_clips."""
    from r2.cli import main
    from r2.extract.pipeline import QueryJob, VideoJob, extract_features
    from r2.extract.synthetic import write_segment_video
    from r2.extract.tiny import make_tiny_clip
    from r2.train import fit

    clip_dir = make_tiny_clip(tmp_path / "clip", seed=0)
    colours = ["red", "blue", "green", "yellow"]
    rows, videos, queries = [], [], []
    for i in range(8):
        a, b = colours[i % 4], colours[(i + 1) % 4]
        v = write_segment_video(tmp_path / "videos" / f"v{i}.mp4",
                                [("black", 4.0), (a, 6.0), ("black", 4.0), (b, 6.0)], fps=5, size=(64, 48))
        videos.append(VideoJob(f"v{i}", str(v.path)))
        for j, (colour, s, e) in enumerate(((a, 4.0, 10.0), (b, 14.0, 20.0))):
            qid = 2 * i + j
            queries.append(QueryJob(str(qid), f"a {colour} screen"))
            rows.append({"qid": qid, "query": f"a {colour} screen", "duration": 20.0, "vid": f"v{i}",
                         "relevant_windows": [[s, e]]})
    extract_features(videos, queries, tmp_path / "cache", str(clip_dir), fps=0.5, workers=0, progress=False)
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:12]))
    (tmp_path / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[12:]))
    fit(dataset="custom", cache=tmp_path / "cache", train=tmp_path / "train.jsonl", val=tmp_path / "val.jsonl",
        run_dir=tmp_path / "run", epochs=2, workers=0, progress=False, log=lambda m: None,
        overrides={**{k: v for k, v in TINY_OVERRIDES.items() if k != "layers"}, "max_clips": 8})

    new = write_segment_video(tmp_path / "new.mp4", [("black", 10.0), ("red", 8.0), ("black", 22.0)], fps=5,
                              size=(64, 48))
    args = ["predict", str(new.path), "--query", "a red screen", "--query", "a green screen",
            "--checkpoint", str(tmp_path / "run"), "--model", str(clip_dir)]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "40.0 s, 20 clips at 0.5 clips/s, 3 overlapping windows" in res.output  # max_clips 8
    assert res.output.count("query: ") == 2 and "top 5 moments (score: the model's confidence, 0 to 1):" in res.output and "saliency" in res.output
    assert "^ best moment" in res.output
    res = CliRunner().invoke(main, args + ["--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output[res.output.index("["):])
    assert [o["query"] for o in out] == ["a red screen", "a green screen"]
    for o in out:
        assert len(o["pred_saliency_scores"]) == 20 and o["duration"] == pytest.approx(40.0)
        assert all(0 <= w[0] <= w[1] <= 40.0 for w in o["pred_relevant_windows"])
    # --out: one QVHighlights-layout row per --query, what --json shows, as the cache form writes rows
    res = CliRunner().invoke(main, args + ["--out", str(tmp_path / "rows" / "new.jsonl")])
    assert res.exit_code == 0 and "wrote 2 prediction row(s) to" in res.output, res.output
    rows = _rows(tmp_path / "rows" / "new.jsonl")
    assert [(r["qid"], r["query"], r["vid"]) for r in rows] == [(0, "a red screen", "new"), (1, "a green screen", "new")]
    for r, o in zip(rows, out):
        assert r["duration"] == o["duration"] and len(r["pred_saliency_scores"]) == 20
        assert np.allclose(r["pred_relevant_windows"], o["pred_relevant_windows"], atol=1e-5)
    link = tmp_path / "rows" / "link.jsonl"  # a symlinked --out: its target is written, the link kept
    link.symlink_to(tmp_path / "rows" / "target.jsonl")
    res = CliRunner().invoke(main, args + ["--out", str(link)])
    assert res.exit_code == 0 and link.is_symlink(), res.output
    assert _rows(tmp_path / "rows" / "target.jsonl") == rows
    (tmp_path / "a-file").write_text("x")
    res = CliRunner().invoke(main, args + ["--out", str(tmp_path / "a-file" / "p.jsonl")])
    assert res.exit_code == 1 and f"--out {tmp_path / 'a-file' / 'p.jsonl'}: " in res.output, res.output
    # --batch-size: the overlapping windows per forward pass (3 windows: batches of 2 and 1)
    from r2 import grounding

    seen, infer = [], grounding.infer_clips

    def spy(*a, **kw):
        seen.append(kw["batch_size"])
        return infer(*a, **kw)

    monkeypatch.setattr(grounding, "infer_clips", spy)
    res = CliRunner().invoke(main, args + ["--json", "--batch-size", "2"])
    assert res.exit_code == 0, res.output
    assert seen == [2, 2]
    for a, b in zip(out, json.loads(res.output[res.output.index("["):])):
        assert b["pred_saliency_scores"] == pytest.approx(a["pred_saliency_scores"], abs=1e-5)
    monkeypatch.undo()
    # the model recorded with the checkpoint is the default --model
    res = CliRunner().invoke(main, args[:-2] + ["--top-k", "2"])
    assert res.exit_code == 0 and "top 2 moments (score: the model's confidence, 0 to 1):" in res.output
    # --plot: matplotlib is an optional extra
    plot = tmp_path / "curve.png"
    res = CliRunner().invoke(main, args + ["--plot", str(plot)])
    if importlib.util.find_spec("matplotlib") is None:
        assert res.exit_code == 1 and "pip install 'r2-vtg[plot]'" in res.output
    else:
        assert res.exit_code == 0 and plot.stat().st_size > 1000
        res = CliRunner().invoke(main, args + ["--plot", str(plot), "--json"])
        assert res.exit_code == 0 and len(json.loads(res.stdout)) == 2  # stdout stays JSON
        assert f"wrote {plot}" in res.stderr
    res = CliRunner().invoke(main, ["predict", str(tmp_path / "missing.mp4"), "--query", "x",
                                    "--checkpoint", str(tmp_path / "run")])
    assert res.exit_code == 1 and "no such video file" in res.output
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video" * 100)
    res = CliRunner().invoke(main, ["predict", str(broken), "--query", "x", "--checkpoint", str(tmp_path / "run")])
    assert res.exit_code == 1 and res.output.count("not a readable video") == 1, res.output  # said once
    long_query = "a red screen with many dots and stripes and " * 10
    res = CliRunner().invoke(main, ["predict", str(new.path), "--query", long_query, "--query", "a red screen",
                                    "--checkpoint", str(tmp_path / "run")])
    assert res.exit_code == 0 and ("warning: 1 query(ies) are longer than CLIP's 77 tokens and are cut to their "
                                   "first 77: query 'q0' (92 tokens)") in res.output, res.output
    # on a machine where the CLIP lies elsewhere: the recorded folder is missing, the same model
    # passed from its new folder is recognised by its weights
    (tmp_path / "models").mkdir()
    moved = clip_dir.rename(tmp_path / "models" / "clip-tiny")
    res = CliRunner().invoke(main, args[:-2])
    assert res.exit_code == 1 and f"came from the CLIP model in {clip_dir}, which is not on this machine" in res.output
    assert "pass --model with the folder that holds the same model" in res.output
    res = CliRunner().invoke(main, args[:-2] + ["--model", str(moved)])
    assert res.exit_code == 0 and "top 5 moments (score: the model's confidence, 0 to 1):" in res.output, res.output
    other = make_tiny_clip(tmp_path / "other-clip", seed=1)  # the same config, other weights
    from r2.extract import pipeline

    def no_extraction(*a, **kw):
        raise AssertionError("extracted with a CLIP the checkpoint was not trained on")

    monkeypatch.setattr(pipeline, "extract_features", no_extraction)
    res = CliRunner().invoke(main, args[:-2] + ["--model", str(other)])
    assert res.exit_code == 1 and f"Error: --model {other}: its weights (sha256 " in res.output, res.output
    assert "pass --model with the folder that holds that model" in res.output and "r2-predict-" not in res.output


def test_moments_of_a_new_video_lie_inside_it():
    """Decoding rounds ends to ``unit`` after clamping (as officially, kept for benchmark
    files): at 30.56 s with Charades' 0.1 s an end becomes 30.6. A new video's moments are cut
    back to its duration."""
    from r2.model.decoding import postprocess_windows
    from r2.grounding import within_video

    rows = np.array([[10.0, 30.5599, 0.9], [30.551, 30.5599, 0.6], [0.0, 5.0, 0.5]], np.float32)
    decoded = postprocess_windows(rows, 30.56, unit=0.1).tolist()
    assert max(w[1] for w in decoded) > 30.56 and max(w[0] for w in decoded) > 30.56  # official
    inside = within_video(decoded, 30.56)
    assert all(0 <= s <= e <= 30.56 for s, e, _ in inside)
    assert [w[2] for w in inside] == [w[2] for w in decoded] and within_video(None, 1.0) is None


def _groundings(moments: bool = True):
    from r2.grounding import VideoGrounding

    saliency = [0.1] * 5 + [0.9] * 4 + [0.2] * 11  # 20 clips of 2 s, the peak at 10-18 s
    return [VideoGrounding(video="v.mp4", query=q, duration=40.0, fps=0.5, num_clips=20,
                           moments=[[10.0, 18.0, 0.9], [30.0, 34.0, 0.2]] if moments else None,
                           saliency=saliency) for q in ("a red screen", "a green screen")]


def test_the_text_report_lists_the_top_moments_with_a_length_and_marks_the_best():
    from r2.grounding import format_grounding

    g = _groundings()[0]
    # windows of no length, and two that normal NMS zeroed under the 10-18 s one (kept in the
    # predictions with score 0): listed, they would print the best moment twice
    g.moments = [[0.0, 0.0, 0.95], [10.0, 18.0, 0.9], [40.0, 40.0, 0.5], [30.0, 34.0, 0.2],
                 [10.0, 18.0, 0.0], [10.5, 18.0, 0.0]]
    text = format_grounding(g, top_k=5)
    assert "top 2 moments (score: the model's confidence, 0 to 1):" in text
    assert "1.     10.0 s –     18.0 s   score 0.900" in text
    assert "2.     30.0 s –     34.0 s   score 0.200" in text
    assert "0.950" not in text and "0.500" not in text and "0.000" not in text
    assert "3." not in text
    marker = next(line for line in text.splitlines() if line.endswith("^ best moment"))
    # "  |" then the bar: carets under clips 5-8 of 20 (10-18 s), and one in the legend
    assert marker.index("^") - 3 == 5 and marker.count("^") == 4 + 1
    g.moments = [[0.0, 0.0, 0.95]]
    text = format_grounding(g)
    assert "moments: none (every window the model predicted has no length or a score of 0)" in text
    assert "top " not in text and "best moment" not in text


def _light_orange(img) -> int:
    """Pixels of the top moment's shading: tab:orange at alpha 0.35 over white, (1, .82, .67)."""
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    return int(((r > 0.95) & (abs(g - 0.82) < 0.05) & (abs(b - 0.67) < 0.05)).sum())


def test_plot_grounding_draws_one_panel_per_query_with_the_moments_shaded(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.image import imread

    from r2.grounding import plot_grounding

    path = plot_grounding(_groundings(), tmp_path / "sub" / "curve.png")
    assert path == tmp_path / "sub" / "curve.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["curve.png"]  # no partial file left
    img = imread(path)
    assert img.shape[:2] == (520, 1000)  # 10 x 2.6 inches per query at 100 dpi
    shaded = _light_orange(img)
    assert shaded > 1000
    bare = imread(plot_grounding(_groundings(moments=False), tmp_path / "bare.png"))
    assert _light_orange(bare) == 0
    # the shading of the best moment spans both panels' height over 10-18 s of the 40-s axis
    # (the legend's small swatch has the same colour: count columns, not pixels)
    orange = (img[..., 0] > 0.95) & (abs(img[..., 1] - 0.82) < 0.05) & (abs(img[..., 2] - 0.67) < 0.05)
    cols = np.nonzero(orange.sum(0) > 200)[0]
    axis = np.nonzero((bare[..., :3] < 0.2).all(-1).sum(0) > 200)[0]  # the axes' vertical spines
    left, right = axis.min(), axis.max()
    span = (cols.min() - left) / (right - left) * 40, (cols.max() - left) / (right - left) * 40
    assert span == pytest.approx((10.0, 18.0), abs=0.5)
    # windows of no length or zeroed by NMS are not drawn (nor given a legend entry): the
    # same picture as without them
    noisy = _groundings()
    for g in noisy:
        g.moments = [[0.0, 0.0, 0.95], g.moments[0], [10.5, 18.0, 0.0], [0.0, 40.0, 0.0], g.moments[1]]
    assert np.array_equal(imread(plot_grounding(noisy, tmp_path / "noisy.png")), img)
    from r2.grounding import PredictError, check_plot_target

    with pytest.raises(PredictError, match="matplotlib does not write .txt"):
        check_plot_target(tmp_path / "curve.txt")


def test_plot_target_must_be_writable_and_a_failed_write_closes_the_figure(tmp_path, monkeypatch):
    """``check_plot_target`` (run before any extraction) refuses a folder, a path under a file
    and a folder it cannot write into; ``plot_grounding`` turns a failed write into a
    PredictError and leaves no figure open."""
    pytest.importorskip("matplotlib")
    import os

    import matplotlib.pyplot as plt

    from r2.grounding import PredictError, check_plot_target, plot_grounding

    check_plot_target(tmp_path / "a" / "b" / "curve.png")  # folders still to be made: fine
    assert not (tmp_path / "a").exists()
    with pytest.raises(PredictError, match="is a folder"):
        check_plot_target(tmp_path)
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(PredictError, match=f"{blocker} is not a folder"):
        check_plot_target(blocker / "sub" / "curve.png")

    real_access = os.access
    locked = tmp_path / "locked"
    locked.mkdir()

    def access(path, mode, *args, **kwargs):  # a read-only folder (tests may run as root)
        if Path(path) == locked and mode & os.W_OK:
            return False
        return real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)
    for target in (locked / "curve.png", locked / "new" / "curve.png"):
        with pytest.raises(PredictError, match=f"cannot write into {locked}"):
            check_plot_target(target)
    monkeypatch.undo()

    plt.close("all")
    with pytest.raises(PredictError, match="cannot write it"):
        plot_grounding(_groundings(), blocker / "curve.png")  # its folder cannot be made
    assert plt.get_fignums() == []
    assert blocker.read_text() == "x"


def test_plot_without_matplotlib_fails_before_any_work(tmp_path, monkeypatch):
    import sys

    from r2 import grounding
    from r2.cli import main

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails
    with pytest.raises(grounding.PredictError, match=r"pip install 'r2-vtg\[plot\]'"):
        grounding.plot_grounding(_groundings(), tmp_path / "curve.png")
    assert not (tmp_path / "curve.png").exists()

    def no_work(*args, **kwargs):
        raise AssertionError("predict_video ran before the --plot check")

    monkeypatch.setattr(grounding, "predict_video", no_work)
    video = tmp_path / "v.mp4"
    video.write_bytes(b"not looked at")
    res = CliRunner().invoke(main, ["predict", str(video), "--query", "x", "--checkpoint", str(tmp_path / "run"),
                                    "--plot", str(tmp_path / "curve.png")])
    assert res.exit_code == 1, res.output
    assert "Error: --plot needs matplotlib: pip install 'r2-vtg[plot]'" in res.output
    assert "Traceback" not in res.output


def test_predict_refuses_what_it_would_get_wrong_before_it_runs(trained, tmp_path):
    """Over a cache: --out that is the annotation file (the ground truth would be replaced),
    options of the VIDEO form, --split on a jsonl (said, and kept out of the score command),
    --dataset carried into the score command, a symlinked --out (its target is written), and a
    run whose best weights are gone. With VIDEO: --plot without a file type or at a device,
    and --fps that is no clip rate, all refused before any extraction."""
    import shutil

    from r2.cli import main

    data, run = trained
    base = ["predict", "-k", str(run), "-c", str(data.cache_dir), "--device", "cpu"]
    copy = tmp_path / "val.jsonl"
    shutil.copy(data.val_file, copy)
    res = CliRunner().invoke(main, base + ["-a", str(copy), "-o", str(copy)])
    assert res.exit_code == 1 and "is the annotation file" in res.output, res.output
    assert copy.read_text() == Path(data.val_file).read_text()
    for extra, named in ((["--json"], "--json goes"), (["--top-k", "3"], "--top-k goes"),
                         (["--fps", "1", "--json"], "--json, --fps go")):
        res = CliRunner().invoke(main, base + ["-a", str(copy), "-o", str(tmp_path / "p.jsonl"), *extra])
        assert res.exit_code == 2 and f"{named} with a VIDEO argument" in res.output, res.output

    target = tmp_path / "real.jsonl"
    target.write_text("old\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(target)
    res = CliRunner().invoke(main, base + ["-a", str(copy), "-o", str(link), "--split", "train", "-d", "custom"])
    assert res.exit_code == 0, res.output
    assert "Warning: --split train is ignored for a .jsonl file" in res.output
    assert f"score them: r2 score {link} --gt {copy} --dataset custom\n" in res.output
    assert link.is_symlink() and _rows(target)[0]["qid"] == _rows(copy)[0]["qid"]
    res = CliRunner().invoke(main, base + ["-a", str(copy), "-o", str(tmp_path / "p.jsonl"), "-d", "Charades-STA"])
    assert res.exit_code == 0 and "--dataset charades\n" in res.output, res.output  # its canonical name
    res = CliRunner().invoke(main, base + ["-a", str(copy), "-o", str(tmp_path / "p.jsonl"), "-d", "foo"])
    assert res.exit_code == 2 and "Invalid value for '--dataset' / '-d': unknown dataset 'foo'" in res.output

    # --skip-missing: the cached queries are predicted, and the score command has --subset
    rows = _rows(copy)
    extra = tmp_path / "val_plus.jsonl"
    extra.write_text("".join(json.dumps(r) + "\n" for r in rows + [dict(rows[0], qid=90_000, vid="unseen")]))
    res = CliRunner().invoke(main, base + ["-a", str(extra), "-o", str(tmp_path / "s.jsonl")])
    assert res.exit_code == 1 and "lacks features that prediction needs" in res.output, res.output
    res = CliRunner().invoke(main, base + ["-a", str(extra), "-o", str(tmp_path / "s.jsonl"), "--skip-missing"])
    assert res.exit_code == 0, res.output
    assert "warning: --skip-missing: 1 of " in res.output and "score the others with r2 score --subset" in res.output
    assert res.output.rstrip().endswith(f"--gt {extra} --subset") and len(_rows(tmp_path / "s.jsonl")) == len(rows)
    scored = CliRunner().invoke(main, ["score", str(tmp_path / "s.jsonl"), "--gt", str(extra), "--subset"])
    assert scored.exit_code == 0, scored.output

    gone = tmp_path / "run-copy"
    shutil.copytree(run, gone)
    (gone / "model.safetensors").unlink()
    res = CliRunner().invoke(main, ["predict", "-k", str(gone), "-c", str(data.cache_dir), "-a", str(copy),
                                    "-o", str(tmp_path / "q.jsonl"), "--device", "cpu"])
    assert res.exit_code == 1 and "the run has finished epochs" in res.output and "not there" in res.output

    video = tmp_path / "v.mp4"
    video.write_bytes(b"never read: each refusal comes first")
    vbase = ["predict", str(video), "-q", "red", "-k", str(run), "--device", "cpu"]
    if importlib.util.find_spec("matplotlib") is not None:
        for plot, said in ((tmp_path / "noext", "the file type is its extension"),
                           (Path("/dev/null"), "not a regular file")):
            res = CliRunner().invoke(main, vbase + ["--plot", str(plot)])
            assert res.exit_code == 1 and said in res.output, res.output
    for fps in ("0", "-1", "nan", "inf"):
        res = CliRunner().invoke(main, vbase + ["--fps", fps])
        assert res.exit_code == 2 and "--fps" in res.output, res.output


def test_predict_refuses_to_overwrite_its_inputs_or_to_ignore_options_before_it_runs(trained, tmp_path):
    """--out that is the VIDEO or a file of the checkpoint's run (both were replaced, exit code
    0); with VIDEO, the options of the cache form (ignored before: --dataset seemed to set the
    fps), an --fps that is not the checkpoint's, a CLIP of other widths (said after the whole
    extraction, or inside torch), and a CLIP folder given as the checkpoint. All before any
    extraction: the video is not one."""
    import shutil

    from r2.cli import main
    from r2.extract.tiny import make_tiny_clip
    from r2.model import R2Model

    data, trained_run = trained
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    video = tmp_path / "v.mp4"
    video.write_bytes(b"never read: each refusal comes first")
    vbase = ["predict", str(video), "-q", "red", "-k", str(run), "--device", "cpu"]
    res = CliRunner().invoke(main, vbase + ["-o", str(video)])
    assert res.exit_code == 1, res.output
    assert f"Error: --out {video} is the VIDEO: the predictions would replace it; write them to another file" \
        in res.output
    cbase = ["predict", "-k", str(run), "-c", str(data.cache_dir), "-a", str(data.val_file), "--device", "cpu"]
    for base, target in ((vbase, run / "config.json"), (cbase, run / "model.safetensors"),
                         (cbase, run / "checkpoints" / "last" / "state.json")):
        res = CliRunner().invoke(main, base + ["-o", str(target)])
        assert res.exit_code == 1, res.output
        assert (f"Error: --out {target} is a file of the run {run} (its {target.name}): the predictions would "
                f"replace it; write them to another file (e.g. {run / 'predictions.jsonl'})") in res.output
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before and video.read_bytes().startswith(b"never")
    res = CliRunner().invoke(main, cbase + ["-o", str(run / "predictions.jsonl")])  # a new file in the run: fine
    assert res.exit_code == 0 and len(_rows(run / "predictions.jsonl")) == len(_rows(data.val_file)), res.output

    res = CliRunner().invoke(main, vbase + ["-d", "charades", "--split", "all", "-j", "2"])
    assert res.exit_code == 2, res.output
    assert "--dataset, --split, --workers go with --cache (a new video is extracted whole" in res.output
    trained_fps = R2Model.from_pretrained(run).config.features["fps"]
    res = CliRunner().invoke(main, vbase + ["--fps", str(trained_fps * 2)])
    assert res.exit_code == 1, res.output
    assert (f"Error: --fps {trained_fps * 2:g}: the checkpoint was trained on features at {trained_fps:g} clips/s; "
            "drop --fps") in res.output
    config = R2Model.from_pretrained(run).config
    clip = make_tiny_clip(tmp_path / "other-clip", width=config.video_dim + 8, heads=4)
    for extra in ([], ["--allow-feature-mismatch"]):
        res = CliRunner().invoke(main, vbase + ["-m", str(tmp_path / "other-clip"), *extra])
        assert res.exit_code == 1, res.output
        assert (f"its features have widths {config.video_dim + 8} (video) and {config.video_dim + 8} (text), the "
                f"checkpoint reads {config.video_dim} and {config.query_dim}: it was trained on another CLIP"
                in res.output), res.output
    res = CliRunner().invoke(main, ["predict", str(video), "-q", "red", "-k", str(clip), "--device", "cpu"])
    assert res.exit_code == 1, res.output
    assert (f"{clip} is a model folder of transformers (model_type 'clip'), not an r2 checkpoint: a CLIP goes to "
            "--model") in res.output


def _damage_first_video(data, cache_dir, annotations):
    """Copy the synthetic cache to ``cache_dir`` and write a NaN into a layer of the first video
    of ``annotations``, in the committed shard, as a damaged disk would. Returns the error line
    that r2 shows for it."""
    import shutil

    import h5py

    from r2.cache import FeatureCache, encode_id

    shutil.copytree(data.cache_dir, cache_dir)
    vid = _rows(annotations)[0]["vid"]
    cache = FeatureCache.open(cache_dir)
    shard = cache.video_shard(vid)
    with h5py.File(shard, "r") as f:
        group = f[f"videos/{encode_id(vid)}"]
        name = max((n for n in group if n.startswith("L")), key=lambda n: int(n[1:]))  # used by every model
        ds = group[name]
        pos = ds.id.get_offset() + ds.size // 2 * ds.dtype.itemsize
        nan = np.array(np.nan, ds.dtype).tobytes()
    with open(shard, "r+b") as fh:
        fh.seek(pos)
        fh.write(nan)
    return (f"Error: video '{vid}' in {shard} is damaged ({name}: checksum mismatch (the data changed after it "
            f"was written)); run `r2 cache verify {cache_dir}`")


def _fit_args(data, cache_dir, run_dir, *more):
    args = ["fit", "-d", "custom", "-c", str(cache_dir), "--train", str(data.train_file), "--val",
            str(data.val_file), "-o", str(run_dir), "--epochs", "1", "--device", "cpu", "--no-progress"]
    for key, value in TINY_OVERRIDES.items():
        args += ["--set", f"{key}={value}"]
    return args + list(more)  # after the overrides: a later --set wins


def test_predict_and_fit_on_a_shard_damaged_into_nan_name_the_shard(trained, tmp_path):
    """Before, the NaN went through the model into `NaN` in the written rows (which no JSON
    reader takes), and in training into every weight at its first step, with an error only at
    the end of the epoch, saying to lower the learning rate."""
    from r2.cli import main

    data, run = trained
    error = _damage_first_video(data, tmp_path / "val-damaged", data.val_file)
    out = tmp_path / "preds.jsonl"
    res = CliRunner().invoke(main, ["predict", "--checkpoint", str(run), "--cache", str(tmp_path / "val-damaged"),
                                    "--annotations", str(data.val_file), "--out", str(out), "--device", "cpu",
                                    "--no-progress"])
    assert res.exit_code == 1 and res.output.splitlines()[-1] == error, res.output
    assert "Traceback" not in res.output and not out.exists()

    error = _damage_first_video(data, tmp_path / "train-damaged", data.train_file)
    res = CliRunner().invoke(main, _fit_args(data, tmp_path / "train-damaged", tmp_path / "run"))
    assert res.exit_code == 1 and res.output.splitlines()[-1] == error, res.output
    assert "Traceback" not in res.output
    assert not (tmp_path / "run" / "checkpoints" / "last").exists()  # stopped in its first epoch


def test_fit_that_diverges_says_so_at_the_step(trained, tmp_path):
    from r2.cli import main

    data, _ = trained
    res = CliRunner().invoke(main, _fit_args(data, data.cache_dir, tmp_path / "run", "--set", "lr=1e30"))
    assert res.exit_code == 1, res.output
    assert re.fullmatch(r"Error: the training loss is not finite at epoch 1, step \d+, although the features of its "
                        r"batches are intact \(checked as `r2 cache verify` does\): training diverged; lower the "
                        r"learning rate \(--set lr=\.\.\.\)", res.output.splitlines()[-1]), res.output


@pytest.mark.parametrize("command", ["predict", "fit"])
def test_an_error_of_ours_in_a_loader_worker_is_its_one_line(trained, tmp_path, monkeypatch, command):
    """torch raises a worker's error again with the worker's whole traceback as its message."""
    from r2.cache import CacheError
    from r2.cli import main
    from r2.train.data import GroundingDataset

    data, run = trained
    read = GroundingDataset._read_video

    def damaged(self, vid):
        if vid in {_rows(data.val_file)[0]["vid"], _rows(data.train_file)[0]["vid"]}:
            raise CacheError(f"cannot read video {vid!r} from s.h5: OSError: [Errno 5] Input/output error")
        return read(self, vid)

    monkeypatch.setattr(GroundingDataset, "_read_video", damaged)  # forked workers inherit it
    if command == "predict":
        args = ["predict", "--checkpoint", str(run), "--cache", str(data.cache_dir), "--annotations",
                str(data.val_file), "--out", str(tmp_path / "p.jsonl"), "--device", "cpu", "--no-progress"]
    else:
        args = _fit_args(data, data.cache_dir, tmp_path / "run")
    res = CliRunner().invoke(main, args + ["--workers", "1"])
    assert res.exit_code == 1, res.output
    assert re.fullmatch(r"Error: cannot read video '\w+' from s\.h5: OSError: \[Errno 5\] Input/output error",
                        res.output.splitlines()[-1]), res.output
    assert "Traceback" not in res.output and "DataLoader worker" not in res.output


def test_loader_batches_gives_our_errors_as_raised_in_the_worker_and_others_as_torch_does():
    from r2.cache import CacheError, MissingItemError
    from r2.train.data import loader_batches

    class Items(torch.utils.data.Dataset):
        def __init__(self, error):
            self.error = error

        def __len__(self):
            return 3

        def __getitem__(self, i):
            if i == 2:
                raise self.error
            return torch.tensor([i])

    errors = (CacheError("video 'v' in s.h5: damaged\nsecond line: kept"), MissingItemError("video 'v' is not in it"),
              ValueError("a bug of ours"))
    for error in errors:
        loader = torch.utils.data.DataLoader(Items(error), batch_size=1, num_workers=1)
        got = []
        with pytest.raises(type(error)) as info:
            for batch in loader_batches(loader):
                got.append(int(batch))
        assert got == [0, 1]
        if getattr(error, "user_error", False):
            assert str(info.value) == str(error) and info.value.__cause__ is None
        else:  # not a user error: torch's own message, the worker's traceback in it
            assert str(info.value).startswith("Caught ValueError in DataLoader worker process 0.")


def test_predictions_that_are_not_finite_are_refused_with_their_cause(trained, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    from r2.model import WEIGHTS_NAME
    from r2.train.inference import PredictError, predict

    data, run = trained
    broken = tmp_path / "run"
    shutil.copytree(run, broken)
    weights = load_file(broken / WEIGHTS_NAME)
    weights["class_head.conv2.bias"][:] = float("nan")
    save_file(weights, broken / WEIGHTS_NAME)
    out = tmp_path / "preds.jsonl"
    with pytest.raises(PredictError) as info:
        predict(broken, data.cache_dir, data.val_file, out=out, device="cpu", progress=False)
    named = [f"query {g['qid']} (video {g['vid']})" for g in _rows(data.val_file)]  # the first one predicted
    assert any(str(info.value) == f"the predictions for {q} are not finite (NaN or infinity): the model's weights "
               "hold NaN or infinite values (a training run that diverged, or a damaged model.safetensors)"
               for q in named), str(info.value)
    assert not out.exists()
