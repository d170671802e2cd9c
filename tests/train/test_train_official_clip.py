"""A converted official checkpoint and the local CLIP whose features it reads: with
`r2 convert-official --model DIR` it records that CLIP's weights, so caches extracted from the
folder (the only way offline) match it; without, the refusal says how to record them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from r2.cli import main
from r2.model import R2Config, R2Model
from r2.model.official import to_official_state_dict

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def official_file(path, video_dim: int, query_dim: int):
    """An official-layout checkpoint (plain tensors, as torch.load(weights_only=True) reads) of an
    R² model with TEF reading features of these widths."""
    torch.manual_seed(0)
    model = R2Model(R2Config(video_dim=video_dim, query_dim=query_dim, num_layers=4, use_tef=True))
    torch.save(to_official_state_dict(model), path)
    return path


def convert(*args):
    return CliRunner().invoke(main, ["convert-official", *map(str, args), "--dataset", "qvhighlights"])


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    """A cache extracted with the tiny CLIP from its folder, and annotations of its queries."""
    from r2.extract.pipeline import QueryJob, VideoJob, extract_features
    from r2.extract.synthetic import write_segment_video
    from r2.extract.tiny import make_tiny_clip

    root = tmp_path_factory.mktemp("official-clip")
    clip_dir = make_tiny_clip(root / "clip", seed=0)
    video = write_segment_video(root / "v0.mp4", [("black", 4.0), ("red", 6.0), ("black", 6.0)], fps=5,
                                size=(64, 48))
    queries = [QueryJob("0", "a red screen"), QueryJob("1", "a black screen")]
    summary = extract_features([VideoJob("v0", str(video.path))], queries, root / "cache", str(clip_dir), fps=0.5,
                               workers=0, progress=False, log=lambda m: None)
    assert summary.ok, summary.format()
    rows = [{"qid": int(q.query_id), "query": q.text, "duration": 16.0, "vid": "v0", "relevant_windows": [[4, 10]]}
            for q in queries]
    (root / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root, clip_dir, video.path


def test_a_checkpoint_converted_with_the_local_clip_reads_caches_extracted_from_it(extracted, tmp_path):
    from r2.cache import FeatureCache

    root, clip_dir, video = extracted
    source = official_file(tmp_path / "official.pth", 64, 64)
    result = convert(source, "--out", tmp_path / "run", "--model", clip_dir)
    assert result.exit_code == 0, result.output
    manifest = FeatureCache.open(root / "cache").manifest
    features = json.loads((tmp_path / "run" / "config.json").read_text())["features"]
    assert features == {"model_id": manifest["model_id"], "model_weights_hash": manifest["model_weights_hash"],
                        "model_config_hash": manifest["model_config_hash"], "layers": [1, 2, 3, 4], "fps": 0.5}
    result = CliRunner().invoke(main, ["predict", "--checkpoint", str(tmp_path / "run"), "--cache", str(root / "cache"),
                                       "--annotations", str(root / "val.jsonl"), "--out", str(tmp_path / "p.jsonl")])
    assert result.exit_code == 0, result.output
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == 2
    # a new video: the CLIP recorded at conversion is the one it is extracted with
    result = CliRunner().invoke(main, ["predict", str(video), "--query", "a red screen", "--checkpoint",
                                       str(tmp_path / "run"), "--json"])
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.output[result.output.index("["):])[0]["pred_saliency_scores"]) == 8


def test_a_clip_of_other_widths_is_refused_at_conversion(extracted, tmp_path):
    _, clip_dir, _ = extracted
    result = convert(official_file(tmp_path / "b32.pth", 768, 512), "--out", tmp_path / "run", "--model", clip_dir)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "its video input has width 770, and the CLIP model" in result.output
    assert "gives features of width 64 (66 with the 2 TEF channels)" in result.output
    assert not (tmp_path / "run").exists()
    result = convert(official_file(tmp_path / "q.pth", 64, 32), "--out", tmp_path / "run", "--model", clip_dir)
    assert result.exit_code == 1 and "its query input has width 32" in result.output
    # without --model, a width no released CLIP has cannot be read
    result = convert(official_file(tmp_path / "w.pth", 64, 64), "--out", tmp_path / "run")
    assert result.exit_code == 1 and "`r2 convert-official --model`" in result.output


def test_without_model_a_cache_from_a_local_folder_is_refused_saying_how_to_record_it(tmp_path):
    """The release's width (768): the converted model names the hub id; a cache extracted offline
    names its folder and weights."""
    from r2.cache import FeatureCache

    result = convert(official_file(tmp_path / "official.pth", 768, 512), "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    folder = "/models/clip-vit-base-patch32"
    cache = FeatureCache.create(tmp_path / "cache", {
        "model_id": folder, "model_weights_hash": "a8ab0e8e1e8d6bb4", "model_config_hash": "c0ffee",
        "layers": [9, 10, 11, 12], "fps": 0.5, "preprocessing": {}})
    rng = np.random.default_rng(0)
    with cache.writer() as w:
        w.add_video("v0", rng.standard_normal((8, 4, 50, 768), dtype=np.float32))
        w.add_query("0", rng.standard_normal((4, 5, 512), dtype=np.float32), np.ones(5, bool))
    (tmp_path / "val.jsonl").write_text(json.dumps({"qid": 0, "query": "q", "duration": 16.0, "vid": "v0",
                                                    "relevant_windows": [[4, 10]]}) + "\n")
    result = CliRunner().invoke(main, ["predict", "--checkpoint", str(tmp_path / "run"), "--cache", str(tmp_path / "cache"),
                                       "--annotations", str(tmp_path / "val.jsonl"), "--out", str(tmp_path / "p.jsonl")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert 'names its CLIP model only by "openai/clip-vit-base-patch32"' in result.output
    assert f"convert again with --model {folder} to record its weights" in result.output
