"""``r2.train.fit`` / ``r2 fit`` on a synthetic feature cache: real learning, the run directory,
data loading (padding, masks, workers, preload, crop), and the errors users meet first."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from r2.train.synthetic import TINY_OVERRIDES, chance_predictions, make_synthetic_dataset


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("fit"), train_videos=32, val_videos=10,
                                  concepts=4, seed=0)


def _opts(data, run_dir, **changes):
    from r2.train.loop import FitOptions

    base = dict(dataset="custom", cache=data.cache_dir, train=data.train_file, val=data.val_file,
                run_dir=run_dir, workers=0, overrides=dict(TINY_OVERRIDES), progress=False)
    base.update(changes)
    return FitOptions(**base)


def test_training_raises_the_val_metric_far_above_chance(data, tmp_path):
    from r2.evaluate import EvaluationWarning, read_jsonl, score
    from r2.model import R2Model
    from r2.train import fit

    epochs = 18
    records = []
    result = fit(_opts(data, tmp_path / "run", epochs=epochs), callback=records.append, log=lambda m: None)

    gt = read_jsonl(data.val_file)
    # the synthetic windows are short: QVHighlights' 'long' bucket is empty, and said to be
    with pytest.warns(EvaluationWarning, match="length bucket 'long' .* is empty"):
        chance = [score("custom", chance_predictions(gt, seed=s), gt)["brief"] for s in range(3)]
    chance_map = max(c["MR-full-mAP"] for c in chance)
    chance_r1 = max(c["MR-full-R1@0.5"] for c in chance)
    best = result.best_metrics["brief"]
    assert result.main_metric == "MR-full-mAP" and result.best_value == best["MR-full-mAP"]
    assert best["MR-full-mAP"] >= max(3 * chance_map, chance_map + 15), (best, chance_map)
    assert best["MR-full-R1@0.5"] >= chance_r1 + 25, (best, chance_r1)
    assert result.history[-1]["loss"]["total"] < 0.8 * result.history[0]["loss"]["total"]

    # the run directory
    run = tmp_path / "run"
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == list(range(1, epochs + 1)) and lines == records
    assert {"cls", "reg", "sal", "video", "layer", "total"} <= set(lines[0]["loss"])
    per_epoch = lines[0]["iteration"]
    assert per_epoch == -(-data.num_train // 8)
    last_it = per_epoch - 1  # the lr logged is the last iteration's: linear warm-up over 10
    assert lines[0]["lr"] == pytest.approx(3e-3 * (1 - 0.999 * (1 - last_it / 10)))
    assert lines[-1]["lr"] == pytest.approx(3e-3)
    best_line = max(lines, key=lambda r: r["value"])
    assert result.best_epoch == best_line["epoch"]
    # each metric's own best over the epochs (the official logs' best_<key>), first epoch on ties
    bests = result.best_of_each_metric()
    for key in ("MR-full-mAP", "MR-full-R1@0.5", "MR-full-mIoU"):
        values = [r["metrics"][key] for r in lines]
        assert bests[key].value == max(values) and bests[key].epoch == lines[values.index(max(values))]["epoch"]
    assert bests["MR-full-mAP"].epoch == result.best_epoch
    assert json.loads((run / "best.json").read_text())["epoch"] == result.best_epoch
    preset = json.loads((run / "preset.json").read_text())
    assert preset["name"] == "custom" and preset["hidden_dim"] == 32 and preset["epochs"] == epochs
    model = R2Model.from_pretrained(run)  # the BEST weights
    cfg = model.config
    assert (cfg.video_dim, cfg.query_dim, cfg.num_layers, cfg.hidden_dim) == (32, 24, 3, 32)
    assert cfg.features == {"model_id": "synthetic-clip", "model_config_hash": "synthetic-0001",
                            "layers": [1, 2, 3], "fps": 0.5, "preprocessing": {"kind": "synthetic"}}
    last = R2Model.from_pretrained(run / "checkpoints" / "last")
    if result.best_epoch != epochs:
        assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                          last.state_dict().values()))

    # the best weights predicted again give the logged metric exactly (the same rounded rows)
    from r2.train.inference import predict

    rows = predict(run, data.cache_dir, data.val_file, progress=False).rows
    with pytest.warns(EvaluationWarning, match="length bucket 'long' .* is empty"):
        assert score("custom", rows, gt)["brief"]["MR-full-mAP"] == result.best_value


def test_cli_fit_then_refuses_to_overwrite(data, tmp_path, monkeypatch):
    from r2.cli import main

    run = tmp_path / "cli-run"
    args = ["fit", "-d", "custom", "-c", str(data.cache_dir), "--train", str(data.train_file), "--val",
            str(data.val_file), "--run-dir", str(run), "--epochs", "1", "--workers", "0", "--seed", "3"]
    for key, value in TINY_OVERRIDES.items():
        args += ["--set", f"{key}={value}"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "best MR-full-mAP" in res.output and "r2 predict --checkpoint" in res.output
    assert "fit:" not in res.output  # stderr is not a terminal here: no bar in a log file
    assert (run / "model.safetensors").is_file() and (run / "checkpoints" / "last" / "trainer.pt").is_file()
    assert json.loads((run / "preset.json").read_text())["seed"] == 3
    assert "best of each" not in res.output  # one epoch: its metrics are the best
    res = CliRunner().invoke(main, args[:args.index("--run-dir") + 1] + [str(tmp_path / "bar")]
                             + args[args.index("--run-dir") + 2:] + ["--progress", "--epochs", "2"])
    assert res.exit_code == 0 and "fit: 100%" in res.output, res.output
    assert re.search(r"best of each over the epochs \(the official logs' best_<key>; other epochs' weights "
                     r"are not kept\): MR-full-R1@0.3 \d+\.\d\d \(epoch [12]\), MR-full-R1@0.5", res.output), res.output
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 1 and "already holds a run" in res.output and "--resume" in res.output
    res = CliRunner().invoke(main, args[:-2] + ["--set", "no_such_field=1"])
    assert res.exit_code == 1 and "unknown preset field 'no_such_field'" in res.output
    # devices torch knows but r2 does not train on, and absurd thread counts: one line each, before any
    # file is written (mps and meta failed deep inside torch; --threads 99999 crashed OpenMP)
    other = args[:args.index("--run-dir") + 1] + [str(tmp_path / "dev")] + args[args.index("--run-dir") + 2:]
    for device in ("mps", "meta"):
        res = CliRunner().invoke(main, other + ["--device", device])
        assert res.exit_code == 1 and res.output.strip().splitlines()[-1] == (
            f"Error: --device {device}: r2 trains and predicts on cpu or cuda (cuda:1, ...)"), res.output
    assert not (tmp_path / "dev").exists()
    res = CliRunner().invoke(main, other + ["--threads", "99999"])
    assert res.exit_code == 2 and "99999 is not in the range 1<=x<=1024" in res.output
    import r2.cpus

    threads = torch.get_num_threads()
    try:
        monkeypatch.setattr(r2.cpus, "usable_cpus", lambda: 2)
        res = CliRunner().invoke(main, other + ["--threads", "8", "--device", "meta"])
        assert ("warning: --threads 8 is more than the 2 CPU(s) this process may use: the threads take turns "
                "on them, which is slower (often much slower) than --threads 2") in res.stderr
    finally:
        torch.set_num_threads(threads)
    res = CliRunner().invoke(main, ["fit", "--help"])
    assert res.exit_code == 0
    for option in ("--dataset", "--cache", "--train", "--val", "--run-dir", "--data-root", "--domain",
                   "--epochs", "--set", "--config", "--resume", "--init", "--seed", "--device", "--workers",
                   "--preload"):
        assert option in res.output


def test_missing_ids_are_all_listed_with_the_extract_command(data, tmp_path):
    from r2.cache import FeatureCache
    from r2.train import fit
    from r2.train.annotations import load_annotations
    from r2.train.data import MissingFeaturesError, check_ids

    rows = [json.loads(x) for x in Path(data.val_file).read_text().splitlines()]
    unseen = [f"unseen{i:03d}" for i in range(200)]  # 200 videos and queries the cache has never seen
    extra = [dict(rows[0], qid=10_000 + i, vid=vid) for i, vid in enumerate(unseen)]
    val = tmp_path / "val_plus.jsonl"
    val.write_text("".join(json.dumps(r) + "\n" for r in rows + extra))
    run = tmp_path / "run"
    with pytest.raises(MissingFeaturesError) as err:
        fit(_opts(data, run, val=val, epochs=1), log=lambda m: None)
    msg = str(err.value)
    n_videos, n_queries = len({r["vid"] for r in rows}) + 200, len(rows) + 200
    assert f"200 of {n_videos} videos missing" in msg and f"200 of {n_queries} queries missing" in msg
    # about a screenful is shown; every id is in the file the message names
    assert len(msg.splitlines()) <= 24
    assert "unseen000" in msg and "unseen199" not in msg and "... and " in msg
    listed = run / "missing_ids.txt"
    assert f"Every missing id is listed in {listed}" in msg
    entries = [line.split("\t") for line in listed.read_text().splitlines() if not line.startswith("#")]
    assert [e[2] for e in entries if e[:2] == ["val", "video"]] == unseen
    assert [e[2] for e in entries if e[:2] == ["val", "query"]] == [str(10_000 + i) for i in range(200)]
    assert len(entries) == 400
    # the command names the cache's model and its non-default layers (synthetic: 3 of them)
    command = (f"r2 extract <videos folder> --annotations {val} --model synthetic-clip --layers 1,2,3 "
               f"--out {data.cache_dir}")
    assert command in msg and f"#   {command}" in listed.read_text()
    assert str(data.train_file) not in msg  # the training split is complete
    assert sorted(p.name for p in run.iterdir()) == ["missing_ids.txt"]  # no weights, no checkpoint
    assert getattr(err.value, "user_error", False)
    # with the ids back, the run starts and the stale list goes
    plain = fit(_opts(data, run, epochs=1), log=lambda m: None)
    assert not listed.exists() and (run / "model.safetensors").is_file()

    # --skip-missing: the run goes on without them, says so, keeps the list, and records in
    # best.json that its metrics are of a subset
    said = []
    skip = tmp_path / "skip"
    result = fit(_opts(data, skip, val=val, epochs=1, skip_missing=True), log=said.append)
    assert result.num_val == len(rows) and result.best_epoch == 1
    assert any(m.startswith(f"warning: --skip-missing: 0 of {data.num_train} training queries and 200 of "
                            f"{len(rows) + 200} val queries (its metrics are of the others: not comparable "
                            "with results on the whole split) have no features") and str(skip / "missing_ids.txt") in m
               for m in said), said
    assert json.loads((skip / "best.json").read_text())["skipped_missing"] == {"train": 0, "val": 200}
    assert (skip / "missing_ids.txt").is_file()
    assert result.best_metrics == plain.best_metrics  # the same training, scored on the same queries
    # a resume of that run keeps skipping (the run's subset), without being told again
    said.clear()
    resumed = fit(_opts(data, skip, val=val, epochs=2, resume=True), log=said.append)
    assert resumed.resumed_from == 1 and resumed.num_val == len(rows), said
    assert "--resume: --skip-missing kept from the run" in said
    assert json.loads((skip / "best.json").read_text())["skipped_missing"] == {"train": 0, "val": 200}

    # the other DDP ranks name the file without writing it; a small list is shown whole
    cache = FeatureCache.open(data.cache_dir)
    samples = load_annotations(val, dataset="custom")[:len(rows) + 3]
    with pytest.raises(MissingFeaturesError) as err:
        check_ids(cache, [("val", str(val), samples)], "custom", list_file=tmp_path / "x" / "ids.txt",
                  write=False)
    assert not (tmp_path / "x").exists() and "unseen002" in str(err.value)
    assert "... and" not in str(err.value)


def test_a_query_id_that_stands_for_two_sentences_is_refused_before_training(data, tmp_path):
    """The cache keeps one sentence's features per query id: a val query that reuses a train
    query's id, or whose sentence is not the cached one, would be scored on another sentence's
    features. Both are refused, naming the lines, before any run file is written."""
    from r2.train import fit
    from r2.train.data import QuerySentenceError
    from r2.train.inference import predict

    train = [json.loads(x) for x in Path(data.train_file).read_text().splitlines()]
    rows = [json.loads(x) for x in Path(data.val_file).read_text().splitlines()]
    other = next(r for r in train if r["query"] != rows[1]["query"])
    clash = [rows[0], dict(rows[1], qid=other["qid"])] + rows[2:]  # val line 2 reuses a train id
    val = tmp_path / "val_clash.jsonl"
    val.write_text("".join(json.dumps(r) + "\n" for r in clash))
    run = tmp_path / "run"
    with pytest.raises(QuerySentenceError) as err:
        fit(_opts(data, run, val=val, epochs=1), log=lambda m: None)
    assert (f"1 query id(s) stand for two sentences: query '{other['qid']}': {other['query']!r} "
            f"({data.train_file}:{train.index(other) + 1}) and {rows[1]['query']!r} ({val}:2)") in str(err.value)
    assert not any(run.glob("*.safetensors")) and getattr(err.value, "user_error", False)

    edited = [rows[0], dict(rows[1], query="an edited sentence")] + rows[2:]
    val.write_text("".join(json.dumps(r) + "\n" for r in edited))
    with pytest.raises(QuerySentenceError) as err:
        fit(_opts(data, run, val=val, epochs=1), log=lambda m: None)
    assert (f"query '{rows[1]['qid']}' ({val}:2) is 'an edited sentence', the cache's "
            f"{rows[1]['query']!r}") in str(err.value)
    fit(_opts(data, run, epochs=1), log=lambda m: None)  # the files as extracted: it trains
    with pytest.raises(QuerySentenceError, match="the cache's"):
        predict(run, data.cache_dir, val, progress=False)


def test_a_misspelt_main_metric_is_refused_before_the_first_epoch(data, tmp_path, monkeypatch):
    from r2.train import fit, loop
    from r2.train.loop import FitError

    def no_training(*args, **kwargs):
        raise AssertionError("an epoch started")

    monkeypatch.setattr(loop, "GroundingDataset", no_training)
    overrides = {**TINY_OVERRIDES, "main_metric": "MR-full-R1@0.70"}
    with pytest.raises(FitError, match=r"main_metric 'MR-full-R1@0.70' is not among the evaluation's "
                                       r"metrics \(.*MR-full-R1@0.7,.*--set main_metric=NAME"):
        fit(_opts(data, tmp_path / "run", overrides=overrides, epochs=1), log=lambda m: None)
    # a metric that exists but is null here (no val window longer than 30 s): said so, and not listed
    overrides = {**TINY_OVERRIDES, "main_metric": "MR-long-mAP"}
    with pytest.raises(FitError) as err:
        fit(_opts(data, tmp_path / "run", overrides=overrides, epochs=1), log=lambda m: None)
    message = str(err.value)
    assert message.startswith("main_metric 'MR-long-mAP' has no value on this evaluation split (null: e.g. a "
                              "length bucket in which no ground-truth window falls)"), message
    assert "MR-full-mAP" in message and "MR-long" not in message.partition("main_metric=NAME")[2]


def test_a_training_record_without_labels_names_its_line_and_a_misspelt_key(data, tmp_path):
    from r2.train import fit
    from r2.train.loop import FitError

    rows = [json.loads(x) for x in Path(data.train_file).read_text().splitlines()]
    rows[3]["relevant_window"] = rows[3].pop("relevant_windows")
    del rows[3]["relevant_clip_ids"], rows[3]["saliency_scores"]
    train = tmp_path / "train_typo.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(FitError) as err:
        fit(_opts(data, tmp_path / "run", train=train, epochs=1), log=lambda m: None)
    assert str(err.value) == (f"{train}:4: 1 record(s) have no labels (e.g. qid {rows[3]['qid']!r}); training "
                              "needs relevant_windows or relevant_clip_ids + saliency_scores (is "
                              "'relevant_window' meant to be 'relevant_windows'?)")


def test_a_custom_training_row_of_another_videos_duration_fails_naming_its_line(data, tmp_path):
    """The windows of a row whose duration is not its cached video's would be clamped onto
    its last clip and trained on without a word; the fit refuses it before the first epoch."""
    from r2.train import fit
    from r2.train.targets import TargetError

    rows = [json.loads(x) for x in Path(data.train_file).read_text().splitlines()]
    rows[4] = dict(rows[4], duration=rows[4]["duration"] * 8,
                   relevant_windows=[[rows[4]["duration"] * 6, rows[4]["duration"] * 7]])
    rows[4].pop("relevant_clip_ids", None), rows[4].pop("saliency_scores", None)
    train = tmp_path / "train_duration.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(TargetError, match=f"^{train}:5: the row gives video {rows[4]['vid']!r} a duration"):
        fit(_opts(data, tmp_path / "run", train=train, epochs=1), log=lambda m: None)
    assert not (tmp_path / "run" / "model.safetensors").exists()


@pytest.mark.parametrize("unlabelled", ["after the second row", "the first two rows"])
def test_an_evaluation_file_the_evaluator_refuses_fails_before_training_naming_its_line(data, tmp_path,
                                                                                     monkeypatch, unlabelled):
    """Saliency on some val rows and not on others (optional in training files, where it is
    derived from the windows) is refused by the highlight evaluation: before the first epoch
    now, naming the file's line, not after it as "ground truth, row 1". Also when the first
    rows are the ones without it (the dry run's predictions must have saliency on every row,
    as the model's have, or the evaluator skips highlight detection and accepts the file)."""
    from r2.train import fit, loop
    from r2.train.loop import FitError

    def no_training(*args, **kwargs):
        raise AssertionError("an epoch started")

    rows = [json.loads(x) for x in Path(data.val_file).read_text().splitlines()]
    first = 2 if unlabelled == "after the second row" else 0
    for r in rows[2:] if first else rows[:2]:
        del r["relevant_clip_ids"], r["saliency_scores"]
    val = tmp_path / "val_mixed.jsonl"
    val.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(loop, "GroundingDataset", no_training)
    with pytest.raises(FitError) as err:
        fit(_opts(data, tmp_path / "run", val=val, epochs=1), log=lambda m: None)
    assert str(err.value).startswith(f"the val split cannot be evaluated: {val}:{first + 1} (qid "
                                     f"{rows[first]['qid']}): missing key 'relevant_clip_ids'"), str(err.value)
    labelled = 2 if first else len(rows) - 2
    assert str(err.value).endswith(f" ({labelled} of its {len(rows)} rows have saliency labels: the evaluator "
                                   "needs them on every row or on none)"), str(err.value)


def test_a_checkpoint_knows_its_clip_by_the_weights_not_by_the_folder():
    from r2.train.data import FeatureSpecError, check_feature_spec, feature_spec

    trained = {"model_id": "/home/a/clip", "model_weights_hash": "0123456789abcdef", "model_config_hash": "c",
               "layers": [9, 10, 11, 12], "fps": 0.5, "preprocessing": {"size": 224}}
    moved = feature_spec(dict(trained, model_id="/data/clip-b32", created="2026-01-01"))
    assert moved == dict(trained, model_id="/data/clip-b32")
    assert check_feature_spec(trained, moved, "run", "cache") == []
    with pytest.raises(FeatureSpecError, match="model_weights_hash: run has \"0123456789abcdef\""):
        check_feature_spec(trained, dict(moved, model_weights_hash="fedcba9876543210"), "run", "cache")
    legacy = {k: v for k, v in trained.items() if k != "model_weights_hash"}  # a run of an older r2
    with pytest.raises(FeatureSpecError, match="model_id: run has \"/home/a/clip\", cache has \"/data/clip-b32\""):
        check_feature_spec(legacy, moved, "run", "cache")
    assert check_feature_spec(legacy, dict(moved, model_id="/home/a/clip"), "run", "cache") == []


def test_cache_widths_and_the_samples_with_features(data):
    from r2.cache import FeatureCache
    from r2.train.annotations import load_annotations
    from r2.train.data import cache_widths, with_features

    cache = FeatureCache.open(data.cache_dir)
    widths = cache_widths(cache)
    assert widths.video == cache.video_shape(cache.video_ids()[0])[3] and widths.query == cache.query_shape(cache.query_ids()[0])[2]
    samples = load_annotations(data.train_file)
    found = with_features(cache, samples)
    assert found.samples == samples and found.left_out == 0
    unknown = [dataclasses.replace(s, vid="no-such-video") for s in samples[:2]]
    found = with_features(cache, unknown + samples)
    assert found.samples == samples and found.left_out == 2


def test_cache_and_checkpoint_mismatches_are_refused(data, tmp_path):
    from r2.model import R2Model
    from r2.train import fit
    from r2.train.data import DataError, FeatureSpecError
    from r2.train.loop import FitError

    # the preset's clip rate is not the cache's
    with pytest.raises(DataError, match="0.5 clips/s but the preset expects 1.0"):
        fit(_opts(data, tmp_path / "r1", dataset="charades", epochs=1), log=lambda m: None)
    # more layers than the cache keeps
    with pytest.raises(DataError, match="keeps only 3"):
        fit(_opts(data, tmp_path / "r2", overrides={**TINY_OVERRIDES, "layers": "-4,-3,-2,-1"}, epochs=1),
            log=lambda m: None)
    # --init from a run trained on other features
    fit(_opts(data, tmp_path / "base", epochs=1), log=lambda m: None)
    model = R2Model.from_pretrained(tmp_path / "base")
    model.config.features = dict(model.config.features, model_config_hash="another-clip")
    model.save_pretrained(tmp_path / "other")
    with pytest.raises(FeatureSpecError, match="model_config_hash"):
        fit(_opts(data, tmp_path / "r3", init=tmp_path / "other", epochs=1), log=lambda m: None)
    # --init from a run of another shape names the fields and the --set that matches it
    with pytest.raises(FitError, match=r"--init \S+ is a model of another shape: it has hidden_dim=(\d+), "
                                       r"use_tef=true, this run's preset hidden_dim=24, use_tef=false; add "
                                       r"--set hidden_dim=\1 --set use_tef=true to train at its shape"):
        fit(_opts(data, tmp_path / "r3", init=tmp_path / "base", epochs=1,
                  overrides={**TINY_OVERRIDES, "hidden_dim": 24, "use_tef": False}), log=lambda m: None)
    # --init from a matching run starts from its weights
    result = fit(_opts(data, tmp_path / "r4", init=tmp_path / "base", epochs=1), log=lambda m: None)
    assert result.last_epoch == 1
    # data-root lookups name the missing file and where to get it
    with pytest.raises(Exception, match="Get them from"):
        fit(_opts(data, tmp_path / "r5", train=None, val=None, data_root=tmp_path, epochs=1),
            log=lambda m: None)
    with pytest.raises(FitError, match="no such file"):
        fit(_opts(data, tmp_path / "r6", val=tmp_path / "nope.jsonl", epochs=1), log=lambda m: None)


def test_loader_batches_are_padded_masked_and_the_same_with_workers(data):
    from r2.cache import FeatureCache
    from r2.train.annotations import load_annotations
    from r2.train.data import Collator, GroundingDataset, loader_generator
    from r2.train.presets import get_preset

    preset = get_preset("custom", overrides=TINY_OVERRIDES)
    cache = FeatureCache.open(data.cache_dir)
    samples = load_annotations(data.train_file, dataset="custom")
    ds = GroundingDataset(samples, cache, [1, 2, 3], preset, train=True, seed=9, repeat=2)
    assert len(ds) == 2 * len(samples)
    ds.set_epoch(4)

    collate = Collator()

    def collate_and_check(items):
        batch = collate(items)
        if torch.utils.data.get_worker_info() is not None:  # written once, into shared memory
            assert batch.video.is_shared() and batch.query.is_shared()
        return batch

    def batches(workers):
        loader = torch.utils.data.DataLoader(ds, batch_size=5, shuffle=False, num_workers=workers,
                                             collate_fn=collate_and_check, generator=loader_generator(9, 4))
        return [b for _, b in zip(range(4), loader)]

    serial, parallel = batches(0), batches(2)
    for a, b in zip(serial, parallel):
        assert a.indices == b.indices
        for x, y in ((a.video, b.video), (a.query, b.query), (a.targets.saliency, b.targets.saliency),
                     (a.targets.positive_clip, b.targets.positive_clip), (a.targets.windows, b.targets.windows)):
            assert torch.equal(x, y)
    b = serial[0]
    assert b.video.dtype == torch.float16  # the cache's dtype: half the bytes through the loader
    for row, idx in enumerate(b.indices):
        t = ds.num_clips[idx]
        s = ds.query(idx).shape[1]
        assert b.video_mask[row].sum() == t and b.video_mask[row, :t].all()
        assert b.query_mask[row].sum() == s and b.query_mask[row, :s].all()
        assert (b.video[row, t:] == 0).all()
        pos = int(b.targets.positive_clip[row])
        assert 0 <= pos < t and b.targets.saliency[row, pos] > 0  # a clip of the moment
        sample = samples[idx]
        assert torch.allclose(b.targets.windows[row, 0], torch.tensor(sample.relevant_windows[0]) * 0.5)
    # the positive clip depends on (seed, epoch, index) only
    ds.set_epoch(5)
    drawn = {int(ds[i].targets.positive_clip) for i in range(len(ds)) for _ in range(1)}
    ds.set_epoch(4)
    assert [int(ds[i].targets.positive_clip) for i in range(5)] == serial[0].targets.positive_clip.tolist()
    assert len(drawn) > 1

    # preload gives the same items
    pre = GroundingDataset(samples, cache, [1, 2, 3], preset, train=True, seed=9, repeat=2, preload=True)
    pre.set_epoch(4)
    assert pre.preloaded
    for i in (0, 7, len(pre) - 1):
        x, y = ds[i], pre[i]
        assert np.array_equal(x.video, y.video) and np.array_equal(x.query, y.query)
        assert x.targets.positive_clip == y.targets.positive_clip


def test_long_training_videos_are_cropped_around_the_positive_clip(data):
    from r2.cache import FeatureCache
    from r2.train.annotations import load_annotations
    from r2.train.data import GroundingDataset
    from r2.train.presets import get_preset
    from r2.train.targets import TargetError

    cache = FeatureCache.open(data.cache_dir)
    samples = load_annotations(data.train_file, dataset="custom")
    preset = get_preset("custom", overrides={**TINY_OVERRIDES, "max_clips": 6})
    ds = GroundingDataset(samples, cache, [1, 2, 3], preset, train=True, seed=1)
    full = GroundingDataset(samples, cache, [1, 2, 3], get_preset("custom", overrides=TINY_OVERRIDES),
                            train=True, seed=1)
    for i in range(len(samples)):
        item = ds[i]
        assert item.video.shape[0] == min(6, ds.num_clips[i]) == item.targets.num_clips
        pos = item.targets.positive_clip
        assert 0 <= pos < 6 and item.targets.saliency[pos] > 0
        # the crop is a window of the full video: find its offset and compare features
        whole = full.video(i)
        offsets = [o for o in range(whole.shape[0] - item.video.shape[0] + 1)
                   if np.array_equal(whole[o:o + item.video.shape[0]], item.video)]
        assert offsets
        w = np.asarray(samples[i].relevant_windows, dtype=np.float32) * 0.5 - offsets[0]
        expected = np.clip(w, 0, item.video.shape[0])
        assert np.allclose(item.targets.windows, expected)
    with pytest.raises(TargetError, match="long_video_rule"):
        GroundingDataset(samples, cache, [1, 2, 3],
                         preset.override({"long_video_rule": "error"}), train=True)


@pytest.mark.parametrize("dataset,domain", [("youtube", "parkour"), ("tvsum", "BK")])
def test_highlight_presets_train_per_domain_from_a_data_root(tmp_path, dataset, domain):
    """YouTube Highlights / TVSum: original annotation layouts found under --data-root, one
    model per domain, saliency-only heads (no windows), per-video clip counts."""
    from r2.cache import FeatureCache
    from r2.train import fit
    from r2.train.annotations import load_annotations
    from r2.train.loop import FitError
    from r2.train.splits import TVSUM_SPLITS, YOUTUBE_SPLITS

    rng = np.random.default_rng(0)
    anno = {}
    other = "dog" if dataset == "youtube" else "VT"  # a domain of the file not trained here
    if dataset == "youtube":
        ids = YOUTUBE_SPLITS[domain]["train"][:4] + YOUTUBE_SPLITS[domain]["val"][:2]
        for vid in ids + YOUTUBE_SPLITS[other]["val"][:1]:
            n = int(rng.integers(6, 12))
            match = [int(x) for x in rng.choice([-1, 0, 1], size=n)]
            match[2] = 1
            anno[vid] = {"fps": 30.0, "frames": str(50 * (n + 1)), "domain": domain if vid in ids else other,
                         "info": [f'{domain}"x"relevance', None, ["E"], 32, "U", f"title {vid}", "d", None],
                         "clip": [[50.0 * i, 50.0 * i + 100] for i in range(n)], "match": match,
                         "mturk": [0.0] * n}
        name, fps = "youtube_anno.json", None
    else:
        ids = TVSUM_SPLITS[domain]["train"] + TVSUM_SPLITS[domain]["val"]
        for vid in ids + TVSUM_SPLITS[other]["val"]:
            n = int(rng.integers(8, 14))
            anno[vid] = {"fps": 30.0, "frames": str(60 * n), "domain": domain if vid in ids else other,
                         "title": f"t {vid}", "url": "u",
                         "length": "1:00", "anno": rng.integers(1, 6, size=(n, 20)).astype(float).tolist()}
        name, fps = "tvsum_anno.json", 0.5
    (tmp_path / name).write_text(json.dumps(anno))
    samples = load_annotations(tmp_path / name, dataset=dataset)
    cache = FeatureCache.create(tmp_path / "cache", {"model_id": "m", "model_config_hash": "h", "layers": [1, 2, 3],
                                                     "fps": fps, "preprocessing": {}})
    with cache.writer() as w:
        for s in samples:  # one feature row per annotated clip
            w.add_video(s.vid, rng.normal(size=(s.saliency.num_clips, 3, 5, 16)).astype(np.float32))
            w.add_query(s.query_id, rng.normal(size=(3, 4, 12)).astype(np.float32), np.ones(4, bool))
    opts = dict(dataset=dataset, cache=tmp_path / "cache", data_root=tmp_path, run_dir=tmp_path / "run",
                epochs=2, workers=0, overrides={**TINY_OVERRIDES, "warmup_iters": 5}, progress=False)
    with pytest.raises(FitError, match="one model per domain"):
        fit(**opts, log=lambda m: None)
    result = fit(**opts, domain=domain, log=lambda m: None)
    assert result.main_metric == "mAP" and 0 <= result.best_value <= 1
    assert list(result.last_metrics["domains"]) == [domain]
    assert result.num_train == 4 and result.num_val == (2 if dataset == "youtube" else 1)
    assert "reg" not in result.history[-1]["loss"] and "cls" in result.history[-1]["loss"]
    from r2.model import R2Model

    cfg = R2Model.from_pretrained(tmp_path / "run").config
    assert not cfg.coord_head and cfg.cls_loss == "dynamic_bce" and cfg.features["fps"] == fps

    # r2 predict takes the val list, as r2 score does, and the score command it prints runs
    import shlex

    from click.testing import CliRunner

    from r2.cli import main

    for extra, videos in ((["--domain", domain], result.num_val), ([], result.num_val + 1)):
        out = tmp_path / f"preds{len(extra)}.jsonl"
        res = CliRunner().invoke(main, ["predict", "-k", str(tmp_path / "run"), "-c", str(tmp_path / "cache"),
                                        "-a", str(tmp_path / name), "-o", str(out), "--device", "cpu", *extra])
        assert res.exit_code == 0, res.output
        assert len(out.read_text().splitlines()) == videos
        command = shlex.split(res.output.split("score them: ")[1].splitlines()[0])
        assert command[:2] == ["r2", "score"] and command[-2:] == (extra or command[-2:])
        res = CliRunner().invoke(main, command[1:])
        assert res.exit_code == 0, res.output
        assert f"{domain} ({result.num_val} video" in res.output


@pytest.mark.parametrize("dataset", ["qvhighlights", "charades", "ego4d", "tacos"])
def test_benchmark_presets_train_end_to_end(tmp_path, dataset):
    """Each moment-retrieval preset as it is (focal loss, its saliency target, NMS, rounding
    unit, clip rate, evaluation split) on a tiny synthetic cache: 2 epochs, its data set's
    scorer, its main metric, checkpoints; Charades/TACoS say they select on test."""
    from r2.cache import FeatureCache
    from r2.model import R2Model
    from r2.train import fit
    from r2.train.annotations import load_annotations
    from r2.train.data import GroundingDataset
    from r2.train.presets import get_preset

    preset = get_preset(dataset)
    data = make_synthetic_dataset(tmp_path / "data", train_videos=8, val_videos=4, concepts=4, seed=2,
                                  fps=preset.fps)
    overrides = {**TINY_OVERRIDES, "warmup_iters": 4}
    messages = []
    result = fit(dataset=dataset, cache=data.cache_dir, train=data.train_file, val=data.val_file,
                 run_dir=tmp_path / "run", epochs=2, workers=0, overrides=overrides, progress=False,
                 log=messages.append)

    main = {"qvhighlights": "MR-full-mAP"}.get(dataset, "MR-full-R1@0.7")
    assert result.main_metric == preset.main_metric == main
    assert result.best_value == result.best_metrics["brief"][main] and 0 <= result.best_value <= 100
    run = tmp_path / "run"
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert all(r["main_metric"] == main and main in r["metrics"] for r in records)
    assert {"cls", "reg", "sal"} <= set(records[-1]["loss"])
    # training repeats the split ×4 for QVHighlights only
    assert records[0]["samples"] == data.num_train * preset.repeat
    for name in ("model.safetensors", "config.json", "preset.json", "best.json",
                 "checkpoints/last/model.safetensors", "checkpoints/last/trainer.pt"):
        assert (run / name).is_file(), name
    on_test = dataset in ("charades", "tacos")
    best = json.loads((run / "best.json").read_text())
    assert best["selected_on"] == result.selected_on == ("test" if on_test else "val")
    notes = [m for m in messages if "selects the best epoch" in m]
    assert len(notes) == (1 if on_test else 0)
    if on_test:
        assert "on the test split" in notes[0] and str(data.val_file) in notes[0]
    cfg = R2Model.from_pretrained(run).config
    assert (cfg.cls_loss, cfg.nms, cfg.unit, cfg.fps) == ("focal", preset.nms, preset.unit, preset.fps)
    assert cfg.nms == ("normal" if dataset == "qvhighlights" else "linear")
    # saliency targets: the annotators' scores for QVHighlights, the windows for the others
    samples = load_annotations(data.train_file, dataset=dataset)
    ds = GroundingDataset(samples, FeatureCache.open(data.cache_dir), [1, 2, 3],
                          get_preset(dataset, overrides=overrides), train=True)
    levels = {float(x) for i in range(len(samples)) for x in ds[i].targets.saliency}
    assert (levels <= {0.0, 1.0}) == (dataset != "qvhighlights"), levels


def test_selected_on_is_the_split_evaluated(tmp_path):
    """best.json's "selected_on" is the split fit evaluated: Charades opted out of test selection
    (``--set eval_split=val``) says "val" and logs no test note; QVHighlights asked to select on
    test says "test" without claiming that the official code does. A preset.json of an older run
    that still holds selection_on_test resumes."""
    from r2.train import fit

    overrides = {**TINY_OVERRIDES, "warmup_iters": 4}
    data = make_synthetic_dataset(tmp_path / "data1", train_videos=6, val_videos=3, concepts=4, seed=2,
                                  fps=1.0)
    run = tmp_path / "charades-val"
    common = dict(dataset="charades", cache=data.cache_dir, train=data.train_file, val=data.val_file,
                  run_dir=run, workers=0, progress=False)
    messages = []
    result = fit(**common, epochs=1, overrides={**overrides, "eval_split": "val"}, log=messages.append)
    best = json.loads((run / "best.json").read_text())
    assert best["selected_on"] == result.selected_on == "val"
    assert not [m for m in messages if "selects the best epoch" in m or "on the test split" in m]
    assert "selection_on_test" not in json.loads((run / "preset.json").read_text())

    state_path = run / "checkpoints" / "last" / "state.json"
    state = json.loads(state_path.read_text())
    state["preset"]["selection_on_test"] = True  # what the older runs saved
    state_path.write_text(json.dumps(state))
    resumed = fit(**common, epochs=2, resume=True, overrides={**overrides, "eval_split": "val"},
                  log=lambda m: None)
    assert resumed.resumed_from == 1 and resumed.last_epoch == 2 and resumed.selected_on == "val"

    data = make_synthetic_dataset(tmp_path / "data2", train_videos=6, val_videos=3, concepts=4, seed=2)
    messages = []
    result = fit(dataset="qvhighlights", cache=data.cache_dir, train=data.train_file, val=data.val_file,
                 run_dir=tmp_path / "qvh-test", epochs=1, workers=0, progress=False,
                 overrides={**overrides, "eval_split": "test"}, log=messages.append)
    assert json.loads((tmp_path / "qvh-test" / "best.json").read_text())["selected_on"] == "test"
    notes = [m for m in messages if "selects the best epoch" in m]
    assert len(notes) == 1 and "official code" not in notes[0] and "--set eval_split=val" in notes[0]


def test_the_collator_pads_with_zeros_and_masks_the_padding():
    from r2.train.data import Collator, Item

    rng = np.random.default_rng(0)
    items = [Item(i, (rng.standard_normal((t, 2, 3, 4)) + 5).astype(np.float16),
                  (rng.standard_normal((2, s, 6)) + 5).astype(np.float16), None)
             for i, (t, s) in enumerate([(5, 2), (2, 4), (3, 1)])]
    for _ in range(3):  # reused memory of earlier batches must not show through the padding
        batch = Collator()(items)
        assert batch.video.shape == (3, 5, 2, 3, 4) and batch.query.shape == (3, 2, 4, 6)
        assert batch.video.dtype == torch.float16
        for i, it in enumerate(items):
            t, s = it.video.shape[0], it.query.shape[1]
            assert np.array_equal(batch.video[i, :t].numpy(), it.video) and not batch.video[i, t:].any()
            assert np.array_equal(batch.query[i, :, :s].numpy(), it.query) and not batch.query[i, :, s:].any()
            assert batch.video_mask[i].tolist() == [True] * t + [False] * (5 - t)
            assert batch.query_mask[i].tolist() == [True] * s + [False] * (4 - s)


def test_loader_workers_none_on_the_cpu_and_at_most_the_cpus_elsewhere(data, tmp_path, monkeypatch):
    import os
    import warnings

    from r2.cpus import usable_cpus
    from r2.train import fit
    from r2.train.data import loader_workers

    cpus = usable_cpus()
    assert cpus == len(os.sched_getaffinity(0)) >= 1
    said = []
    cuda = torch.device("cuda")  # only its type is read: no GPU needed
    assert loader_workers(cpus, cuda, log=said.append) == cpus and said == []
    assert loader_workers(cpus + 3, cuda, log=said.append) == cpus
    assert said == [f"num_workers {cpus + 3}: this process may use {cpus} CPUs, so the loaders start {cpus} "
                    "workers (--workers N starts exactly N; the batches are the same with any number)"]
    said.clear()
    assert loader_workers(0, "cpu", log=said.append) == 0 and said == []
    assert loader_workers(4, "cpu", log=said.append) == 0
    assert said == ["device cpu: batches are loaded in the training process, not by 4 loader workers (on the "
                    "CPU they take cores from the training step; --workers N starts N)"]
    whole = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(whole)})  # the real mask, as `taskset -c 0` sets it
    try:
        assert usable_cpus() == 1 and loader_workers(4, cuda) == 1
    finally:
        os.sched_setaffinity(0, whole)

    # r2 fit on the CPU: the preset's workers (here more than the CPUs) are not started, so no
    # worker process reads the cache (it would open its shards) and torch does not warn
    from r2.cache import reader

    readers = tmp_path / "pids.txt"  # a file: a loader worker's own memory is not this process's
    open_shard = reader.FeatureCache._shard

    def spy(self, *args, **kwargs):
        with open(readers, "a") as fh:
            fh.write(f"{os.getpid()}\n")
        return open_shard(self, *args, **kwargs)

    logs = []
    monkeypatch.setattr(reader.FeatureCache, "_shard", spy)  # forked workers inherit it
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(_opts(data, tmp_path / "run", workers=None, epochs=1,
                  overrides={**TINY_OVERRIDES, "num_workers": cpus + 1}), log=logs.append)
    monkeypatch.undo()
    assert f"device cpu: batches are loaded in the training process, not by {cpus + 1} loader workers" in \
        "\n".join(logs), logs
    assert set(readers.read_text().split()) == {str(os.getpid())}
    assert not [w for w in caught if "worker processes in total" in str(w.message)]
    # an explicit --workers is started as asked
    logs.clear()
    fit(_opts(data, tmp_path / "run2", workers=0, epochs=1,
              overrides={**TINY_OVERRIDES, "num_workers": cpus + 1}), log=logs.append)
    assert not any(m.startswith(("num_workers", "device cpu")) for m in logs), logs


def test_a_schedule_that_never_warms_up_or_never_steps_is_named():
    """The custom preset's 500 warm-up iterations on a few hundred queries (14 iterations an
    epoch): the rate would never reach lr before its milestone; a milestone past the last epoch
    never lowers it. The benchmark presets at their real sizes get no warning."""
    from r2.train.loop import LRSchedule, schedule_warnings
    from r2.train.presets import get_preset

    custom = get_preset("custom")  # 30 epochs, milestone 20, warm-up 500
    said = schedule_warnings(custom, per_epoch=14)
    peak = LRSchedule(custom).factor(0, 279)
    assert said == [f"warmup_iters 500 outlasts the 280 iterations before its first lowering (epoch 20, from 0) "
                    f"(14 an epoch): the learning rate peaks at {peak:.1%} of lr {custom.lr:g}; a shorter "
                    "warm-up: --set warmup_iters=28"]
    assert f"{peak:.1%}" == "55.8%"  # 1 - 0.999 · (1 - 279 / 500)
    assert schedule_warnings(custom, per_epoch=60) == []  # 1200 iterations before the step
    short = custom.override({"epochs": 1, "lr_milestones": [10, 20], "warmup_iters": 3})
    assert schedule_warnings(short, per_epoch=4) == [
        "lr_milestones 10,20 at or after the last epoch (1 epochs, counted from 0): the learning rate is "
        "never lowered there"]
    assert schedule_warnings(custom.override({"lr_schedule": "constant", "warmup_iters": 5}), per_epoch=4) == []
    # the benchmarks at their sizes (r2tuning.md: QVHighlights ~226 iterations an epoch, TVSum 1)
    assert schedule_warnings(get_preset("qvhighlights"), per_epoch=226) == []
    assert schedule_warnings(get_preset("tvsum"), per_epoch=1) == []
    assert schedule_warnings(get_preset("youtube"), per_epoch=2) == []


def test_every_epoch_gets_a_log_line_also_when_it_is_not_evaluated(data, tmp_path):
    """With eval_every 2, or without a val split, the epochs not evaluated were silent: a batch
    job's log (no progress bar there) said nothing for long stretches."""
    from r2.train import fit

    said = []
    fit(_opts(data, tmp_path / "a", epochs=2, overrides={**TINY_OVERRIDES, "eval_every": 2}), log=said.append)
    lines = [m for m in said if m.startswith("epoch ")]
    assert len(lines) == 2 and re.fullmatch(r"epoch 1/2: loss \d+\.\d{4} \(evaluated every 2 epochs\)", lines[0])
    assert re.fullmatch(r"epoch 2/2: loss \d+\.\d{4}, MR-full-mAP \d+\.\d\d \(best\)", lines[1]), lines
    said.clear()
    fit(_opts(data, tmp_path / "b", val=None, epochs=1), log=said.append)
    assert [m for m in said if m.startswith("epoch ")] == [m for m in said if m.endswith("(no evaluation split)")]
    assert len([m for m in said if m.startswith("epoch ")]) == 1


def test_val_queries_that_are_training_queries_are_named():
    """A val split copied from (or the same file as) the training one trains and selects its
    best epoch on seen data: warned, with the first such line."""
    from r2.train.loop import _shared_queries
    from r2.train.annotations import GroundingSample

    def sample(qid, vid, query, origin):
        return GroundingSample(qid=qid, vid=vid, query=query, duration=10.0, relevant_windows=[(1.0, 2.0)],
                               saliency=None, split="x", dataset="custom", origin=origin)

    train = [sample(1, "a", "a red door", "t.jsonl:1"), sample(2, "b", "a dog", "t.jsonl:2")]
    val = [sample(7, "a", "A red door ", "v.jsonl:1"), sample(8, "b", "a cat", "v.jsonl:2"),
           sample(9, "c", "a dog", "v.jsonl:3")]
    assert [s.origin for s in _shared_queries(train, val)] == ["v.jsonl:1"]  # same video, same sentence


def test_fit_warns_when_the_val_file_is_the_training_file(data, tmp_path):
    from r2.train import fit

    said = []
    fit(_opts(data, tmp_path / "same", val=data.train_file, epochs=1), log=said.append)
    n = len(Path(data.train_file).read_text().splitlines())
    assert any(m.startswith(f"warning: {n} of {n} val queries are also training queries (the same video and "
                            f"sentence, e.g. {data.train_file}:1): the val metrics are not of held-out data "
                            "(--val is the --train file)") for m in said), said
    said.clear()
    fit(_opts(data, tmp_path / "apart", epochs=1), log=said.append)
    assert not any("are also training queries" in m for m in said)


def test_two_fits_at_once_in_one_process_are_said_not_to_be_reproducible(data, tmp_path):
    """Threads share torch's global generators: two same-seed fits in two threads gave other
    weights than one alone, silently. The second fit says so (the first is held at the end of
    its epoch until it has); a fit alone, after them, says nothing."""
    import threading

    from r2.train import fit

    said = threading.Event()
    logs: dict[str, list[str]] = {"a": [], "b": [], "after": []}

    def log_b(message):
        logs["b"].append(message)
        if message.startswith("warning: 1 other r2.train.fit call(s) run in this process now"):
            said.set()

    results = {}
    first = threading.Thread(target=lambda: results.setdefault("a", fit(
        _opts(data, tmp_path / "a", epochs=1), log=logs["a"].append, callback=lambda record: said.wait(120))))
    first.start()
    while not (tmp_path / "a" / "preset.json").exists() and first.is_alive():  # a has begun
        threading.Event().wait(0.05)
    results["b"] = fit(_opts(data, tmp_path / "b", epochs=1), log=log_b)
    first.join(120)
    assert said.is_set() and "a" in results, logs
    assert any("so no run is reproducible from its seed; run them in separate processes" in m for m in logs["b"])
    assert not any("other r2.train.fit" in m for m in logs["a"])
    fit(_opts(data, tmp_path / "after", epochs=1), log=logs["after"].append)
    assert not any("other r2.train.fit" in m for m in logs["after"])
