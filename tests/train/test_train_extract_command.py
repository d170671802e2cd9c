"""The ``r2 extract`` command that ``r2 fit`` prints for missing ids, run exactly as printed on
real videos and the tiny CLIP, adds them: same model, fps, layers and dtype as the cache."""

from __future__ import annotations

import json
import shlex

import pytest
from click.testing import CliRunner

from r2.train.synthetic import TINY_OVERRIDES

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_printed_extract_command_adds_the_missing_ids(tmp_path):
    from r2.cache import FeatureCache
    from r2.cli import main
    from r2.extract.synthetic import write_segment_video
    from r2.extract.tiny import make_tiny_clip
    from r2.train import fit
    from r2.train.data import MissingFeaturesError

    clip_dir = make_tiny_clip(tmp_path / "clip", seed=0)  # 4 blocks: hidden states 0..4
    colours = ["red", "blue", "green", "yellow"]
    rows = []
    for i in range(6):
        a, b = colours[i % 4], colours[(i + 1) % 4]
        write_segment_video(tmp_path / "videos" / f"v{i}.mp4", [(a, 4.0), ("black", 2.0), (b, 4.0)],
                            fps=4, size=(64, 48))
        for j, (colour, s, e) in enumerate(((a, 0.0, 4.0), (b, 6.0, 10.0))):
            rows.append({"qid": 2 * i + j, "query": f"a {colour} screen", "duration": 10.0, "vid": f"v{i}",
                         "relevant_windows": [[s, e]]})
    train, val = tmp_path / "train.jsonl", tmp_path / "val.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows[:8]))
    val.write_text("".join(json.dumps(r) + "\n" for r in rows[8:]))
    cache_dir = tmp_path / "cache"
    # the training split only, with settings that are none of extract's defaults
    res = CliRunner().invoke(main, ["extract", str(tmp_path / "videos"), "--annotations", str(train),
                                    "--model", str(clip_dir), "--fps", "1", "--layers", "2,3",
                                    "--dtype", "float32", "--workers", "0", "--out", str(cache_dir)])
    assert res.exit_code == 0, res.output
    assert not FeatureCache.open(cache_dir).has_video("v4")

    overrides = {**TINY_OVERRIDES, "layers": "-2,-1", "fps": 1.0}
    options = dict(dataset="custom", cache=cache_dir, train=train, val=val, run_dir=tmp_path / "run",
                   epochs=1, workers=0, overrides=overrides, progress=False, log=lambda m: None)
    with pytest.raises(MissingFeaturesError) as err:
        fit(**options)
    msg = str(err.value)
    assert "2 of 2 videos missing" in msg and "4 of 4 queries missing" in msg
    printed = [line.strip() for line in msg.splitlines() if line.strip().startswith("r2 extract ")]
    assert len(printed) == 1  # only the val split lacks features
    command = printed[0]
    # the folder the cache's videos came from, and every setting extract would get wrong otherwise
    assert command == (f"r2 extract {tmp_path / 'videos'} --annotations {val} --model {clip_dir} "
                       f"--fps 1.0 --layers 2,3 --dtype float32 --out {cache_dir}")

    # run as printed (the default decode workers included)
    res = CliRunner().invoke(main, shlex.split(command)[1:])
    assert res.exit_code == 0, res.output
    cache = FeatureCache.open(cache_dir)
    assert {"v4", "v5"} <= set(cache.video_ids()) and {"8", "9", "10", "11"} <= set(cache.query_ids())
    result = fit(**options)
    assert result.last_epoch == 1 and not (tmp_path / "run" / "missing_ids.txt").exists()


def test_the_printed_command_for_youtube_has_no_fps_and_adds_the_missing_ids(tmp_path, monkeypatch):
    """YouTube Highlights (preset fps "auto"): extract takes one frame per annotated clip and
    refuses --fps with its annotations, so the printed command never carries one, whatever the
    cache's rate; run as printed it adds the missing val videos of a per-video cache. Layers
    are compared with the default extract keeps (``r2.cache.default_layers``)."""
    from r2.cache import FeatureCache
    from r2.cli import main
    from r2.extract.synthetic import write_segment_video
    from r2.extract.tiny import make_tiny_clip
    from r2.train import fit
    from r2.train.data import MissingFeaturesError, extract_command
    from r2.train.splits import YOUTUBE_SPLITS

    domain = "parkour"
    clip_dir = make_tiny_clip(tmp_path / "clip", seed=0)
    train_ids, val_ids = YOUTUBE_SPLITS[domain]["train"][:3], YOUTUBE_SPLITS[domain]["val"][:2]
    colours = ["red", "blue", "green", "yellow"]
    anno = {}
    for i, vid in enumerate(train_ids + val_ids):
        a, b = colours[i % 4], colours[(i + 1) % 4]
        write_segment_video(tmp_path / "videos" / f"{vid}.mp4", [(a, 4.0), ("black", 2.0), (b, 4.0)],
                            fps=4, size=(64, 48))
        # 5 annotated clips of 8 frames (2 s) over 40 frames at 4 fps: 0.5 clips/s for this video
        anno[vid] = {"fps": 4.0, "frames": "40", "domain": domain,
                     "info": [f'{domain}"x"relevance', None, ["E"], 32, "U", f"a {a} screen", "d", None],
                     "clip": [[8 * k, 8 * k + 8] for k in range(5)], "match": [1, 1, -1, 0, 0]}
    full = tmp_path / "youtube_anno.json"
    full.write_text(json.dumps(anno))
    part = tmp_path / "part" / "youtube_anno.json"
    part.parent.mkdir()
    part.write_text(json.dumps({vid: anno[vid] for vid in train_ids}))
    cache_dir = tmp_path / "cache"
    res = CliRunner().invoke(main, ["extract", str(tmp_path / "videos"), "--annotations", str(part),
                                    "--model", str(clip_dir), "--layers", "2,3", "--workers", "0",
                                    "--out", str(cache_dir)])
    assert res.exit_code == 0, res.output
    assert FeatureCache.open(cache_dir).manifest["fps"] is None  # per-video sampling

    options = dict(dataset="youtube", domain=domain, cache=cache_dir, train=full, val=full,
                   run_dir=tmp_path / "run", epochs=1, workers=0, progress=False, log=lambda m: None,
                   overrides={**TINY_OVERRIDES, "layers": "-2,-1", "batch_size": 2, "warmup_iters": 2})
    with pytest.raises(MissingFeaturesError) as err:
        fit(**options)
    printed = [line.strip() for line in str(err.value).splitlines() if line.strip().startswith("r2 extract ")]
    assert printed == [f"r2 extract {tmp_path / 'videos'} --annotations {full} --dataset youtube "
                       f"--model {clip_dir} --layers 2,3 --out {cache_dir}"]
    res = CliRunner().invoke(main, shlex.split(printed[0])[1:])
    assert res.exit_code == 0, res.output
    assert set(val_ids) <= set(FeatureCache.open(cache_dir).video_ids())
    assert fit(**options).last_epoch == 1

    # a cache at a fixed rate: still no --fps for YouTube annotations (extract refuses it there)
    fixed = FeatureCache.create(tmp_path / "fixed", dict(FeatureCache.open(cache_dir).manifest, fps=0.5))
    command = extract_command(fixed, full, "youtube")
    assert "--fps" not in command and "--dataset youtube" in command
    assert "--fps 0.5" in extract_command(fixed, tmp_path / "rows.jsonl", "charades")  # charades: 1.0
    # the layers extract would keep by default: the cache's rule, which extract applies
    assert "--layers 2,3" in command
    import r2.cache
    import r2.extract.clip

    assert r2.extract.clip.default_layers is r2.cache.default_layers
    monkeypatch.setattr(r2.cache, "default_layers", lambda n, k=4: [2, 3])
    assert "--layers" not in extract_command(fixed, full, "youtube")


def test_videos_that_extract_could_not_read_are_named_with_the_reason(tmp_path, monkeypatch):
    """A video that r2 extract already failed on is not only listed as missing (rerunning the
    printed command fails again): the message gives extract's reason from failures.jsonl. The
    printed command names the annotation file absolutely, whatever the working directory."""
    from r2.cli import main
    from r2.extract.synthetic import write_segment_video
    from r2.extract.tiny import make_tiny_clip
    from r2.train import fit
    from r2.train.data import MissingFeaturesError

    clip_dir = make_tiny_clip(tmp_path / "clip", seed=0)
    rows = []
    for i in range(3):
        if i != 1:  # v1's file is missing
            write_segment_video(tmp_path / "videos" / f"v{i}.mp4", [("red", 4.0), ("blue", 4.0)], fps=4,
                                size=(64, 48))
        rows.append({"qid": i, "query": "a red screen", "duration": 8.0, "vid": f"v{i}",
                     "relevant_windows": [[0.0, 4.0]]})
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["extract", "videos", "--annotations", "train.jsonl", "--model", str(clip_dir),
                                    "--workers", "0", "--out", "cache", "--no-progress"])
    assert res.exit_code == 1 and "no video file named v1.*" in res.output, res.output
    overrides = {k: v for k, v in TINY_OVERRIDES.items() if k != "layers"}
    with pytest.raises(MissingFeaturesError) as err:
        fit(dataset="custom", cache="cache", train="train.jsonl", run_dir="run", epochs=1, workers=0,
            overrides=overrides, progress=False, log=lambda m: None)
    msg = str(err.value)
    assert (f"1 of these failed in r2 extract ({tmp_path / 'cache' / 'failures.jsonl'}): v1: no video file "
            "named v1.* under videos") in msg, msg
    assert f"--annotations {tmp_path / 'train.jsonl'} " in msg
