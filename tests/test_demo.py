"""``r2 demo``: the quick configuration end to end (real videos, tiny CLIP, fit, score).

One quick demo runs once per module (about 20 s on 2 cores) and is shared; a second run into
the same folder checks that a previous demo folder is reused and that the numbers repeat.
"""

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from r2.cli import main
from r2.demo import (MARKER_NAME, SHOWN_METRICS, DemoError, chance_baseline, demo_config,
                     make_demo_data, prepare_out_dir, run_demo)


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "r2-demo"
    messages = []
    result = run_demo(out, seed=0, quick=True, progress=False, log=messages.append)
    return result, messages


def test_quick_demo_learns_far_above_chance(quick_demo):
    result, _ = quick_demo
    r2, chance = result.value, lambda key: result.value(key, chance=True)
    # measured (seed 0): R1@0.5 38.9 vs 11.1, R1@0.7 30.6 vs 2.8, mAP 41.8 vs 12.0,
    # HD mAP 88.7 vs 50.0, HIT@1 80.6 vs 33.3 (6 epochs; the full demo reaches R1@0.7 100)
    assert r2("MR-full-R1@0.5") >= chance("MR-full-R1@0.5") + 20
    assert r2("MR-full-R1@0.7") >= chance("MR-full-R1@0.7") + 20
    assert r2("MR-full-mAP") >= chance("MR-full-mAP") + 20
    assert r2("HL-min-VeryGood-mAP") >= chance("HL-min-VeryGood-mAP") + 25
    assert r2("HL-min-VeryGood-Hit1") >= chance("HL-min-VeryGood-Hit1") + 30
    # the chance baseline is a real baseline, not zeros
    assert chance("HL-min-VeryGood-mAP") > 20 and chance("MR-full-R1@0.5") > 0


def test_quick_demo_writes_every_output(quick_demo):
    from r2.cache import FeatureCache, verify

    result, messages = quick_demo
    out = result.out_dir
    for name in ("videos", "annotations/train.jsonl", "annotations/val.jsonl", "clip/config.json",
                 "cache/manifest.json", "run/config.json", "predictions.jsonl", "metrics.json",
                 "chance_metrics.json", "fit_settings.json", "summary.txt", MARKER_NAME):
        assert (out / name).exists(), name
    data = result.data
    assert len(list((out / "videos").glob("*.mp4"))) == data.train_videos + data.val_videos
    assert data.long_videos >= 1 and data.longest > 150
    # train and val share no video
    rows = {split: [json.loads(line) for line in (out / f"annotations/{split}.jsonl").open()]
            for split in ("train", "val")}
    assert not {r["vid"] for r in rows["train"]} & {r["vid"] for r in rows["val"]}
    assert len(rows["val"]) == data.val_queries
    # the cache holds every video and query, and passes the full verification
    cache = FeatureCache.open(out / "cache")
    assert set(cache.video_ids()) == {r["vid"] for split in rows.values() for r in split}
    report = verify(out / "cache")
    assert report.ok, report
    # metrics.json is what `r2 score` writes for the predictions
    written = json.loads((out / "metrics.json").read_text())
    assert written["brief"]["MR-full-R1@0.7"] == result.value("MR-full-R1@0.7")
    # every stage announced itself, and the empty length-bucket note was filtered
    for stage in range(1, 7):
        assert any(m.startswith(f"[{stage}/6]") for m in messages), stage
    assert not any("length bucket" in m for m in messages)


def test_quick_demo_report_shows_both_columns_and_the_commands(quick_demo):
    result, _ = quick_demo
    text = result.format()
    header = next(line for line in text.splitlines() if line.startswith("val ("))
    assert header.split()[-2:] == ["r2", "chance"]
    for label, key in SHOWN_METRICS:
        line = next(line for line in text.splitlines() if line.strip().startswith(label + " "))
        r2_value, chance_value = (float(x) for x in line.split()[-2:])
        assert r2_value == pytest.approx(result.value(key), abs=0.005)
        assert chance_value == pytest.approx(result.value(key, chance=True), abs=0.005)
    for command in ("r2 make-tiny-clip", "r2 extract", "r2 fit", "r2 predict", "r2 score"):
        assert any(c.startswith(command) for c in result.commands), command
    assert (result.out_dir / "summary.txt").read_text() == text + "\n"


def test_the_printed_commands_run_by_hand_reproduce_metrics_json(quick_demo):
    """Every printed stage, run as a user would after the demo (so into its folder), ends with
    the demo's metrics.json byte for byte: the same tiny CLIP, a cache that is complete (extract
    skips it all), the same training (settings file and seed) into a run directory of its own."""
    import shlex

    import torch

    from r2.cpus import usable_cpus

    result, _ = quick_demo
    assert [c.split()[1] for c in result.commands] == ["make-tiny-clip", "extract", "extract", "fit",
                                                        "predict", "score"]
    # the printed fit and predict set torch's threads to the demo's (the float sums depend on
    # them): whatever this process has, here one thread, they reproduce the demo
    assert all(f"--threads {usable_cpus()}" in c for c in result.commands if c.split()[1] in ("fit", "predict"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for command in result.commands:
            cli = CliRunner().invoke(main, shlex.split(command)[1:])
            assert cli.exit_code == 0, (command, cli.output)
    finally:
        torch.set_num_threads(threads)
    by_hand = result.out_dir / "metrics-by-hand.json"
    assert by_hand.read_bytes() == (result.out_dir / "metrics.json").read_bytes()


def test_rerun_into_the_same_folder_repeats_the_numbers(quick_demo):
    result, _ = quick_demo
    before = result.to_dict()
    stray = result.out_dir / "run" / "stray.txt"
    stray.write_text("left by the first run")
    by_hand = result.out_dir / "run-by-hand"  # where the printed fit trains: gone, so it runs again
    by_hand.mkdir(exist_ok=True)
    again = run_demo(result.out_dir, seed=0, quick=True, progress=False, log=lambda m: None)
    assert again.to_dict()["scores"] == before["scores"]
    assert again.to_dict()["chance"] == before["chance"]
    assert not stray.exists()  # the previous demo's outputs were replaced, not mixed
    assert not by_hand.exists()


def _decoded(path) -> bytes:
    import av

    with av.open(str(path)) as container:
        return b"".join(f.to_ndarray(format="rgb24").tobytes() for f in container.decode(video=0))


def test_make_demo_data_is_seeded_and_puts_moments_on_the_clip_grid(tmp_path):
    config = demo_config(quick=True)
    a = make_demo_data(tmp_path / "a", config, seed=3)
    b = make_demo_data(tmp_path / "b", config, seed=3)
    c = make_demo_data(tmp_path / "c", config, seed=4)
    assert a.val_file.read_text() == b.val_file.read_text()
    assert a.val_file.read_text() != c.val_file.read_text()
    # the videos decode to the same pixels (lossless: x264's lossy choices vary run to run)
    for path in sorted(a.videos_dir.glob("*.mp4")):
        assert _decoded(path) == _decoded(b.videos_dir / path.name), path.name
    listing = {v["vid"]: v for v in map(json.loads, (tmp_path / "a/annotations/videos.jsonl").open())}
    for row in map(json.loads, a.val_file.open()):
        (start, end), = row["relevant_windows"]
        assert start % 2 == 0 and end % 2 == 0 and 8 <= end - start <= 20
        scenes = listing[row["vid"]]["scenes"]
        named = [s for s in scenes if s["start"] == start]
        assert len(named) == 1 and named[0]["end"] == end
        # the query names a colour that occurs exactly once in its video
        colour = named[0]["colour"]
        assert colour in row["query"]
        assert sum(s["colour"] == colour for s in scenes) == 1


def test_chance_baseline_covers_every_query_with_random_windows():
    gt = [{"qid": i, "query": "q", "vid": f"v{i}", "duration": 40,
           "relevant_windows": [[10, 20]], "relevant_clip_ids": list(range(5, 10)),
           "saliency_scores": [[4, 4, 4]] * 5} for i in range(5)]
    rows = chance_baseline(gt, seed=0)
    assert [r["qid"] for r in rows] == list(range(5))
    assert all(len(r["pred_relevant_windows"]) == 10 and len(r["pred_saliency_scores"]) == 20 for r in rows)
    assert rows[0]["pred_relevant_windows"] != rows[1]["pred_relevant_windows"]
    assert chance_baseline(gt, seed=0) == rows


def test_out_dir_refuses_a_foreign_non_empty_folder(tmp_path):
    (tmp_path / "mine.txt").write_text("precious")
    with pytest.raises(DemoError, match="not written by `r2 demo`"):
        prepare_out_dir(tmp_path, seed=0, config=demo_config(True), model=None)
    assert (tmp_path / "mine.txt").read_text() == "precious"
    (tmp_path / MARKER_NAME).write_text("not json")
    with pytest.raises(DemoError, match="not a marker"):
        prepare_out_dir(tmp_path, seed=0, config=demo_config(True), model=None)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(DemoError, match="is a file"):
        prepare_out_dir(a_file, seed=0, config=demo_config(True), model=None)


def test_cli_help_and_refusals(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["demo", "--help"])
    assert result.exit_code == 0
    for option in ("--out", "--model", "--seed", "--quick"):
        assert option in result.output
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    result = runner.invoke(main, ["demo", "--quick", "--out", str(foreign)])
    assert result.exit_code == 1
    assert "not written by `r2 demo`" in result.output and "Traceback" not in result.output
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]


def test_cli_model_not_on_disk_is_a_clear_offline_error(tmp_path):
    """A hub id that is not in the local cache fails at once, before any video is written."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    out = tmp_path / "d"
    proc = subprocess.run([sys.executable, "-m", "r2", "demo", "--quick", "--out", str(out),
                           "--model", "openai/clip-vit-base-patch32"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "clip-vit-base-patch32" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()
