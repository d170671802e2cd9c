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
