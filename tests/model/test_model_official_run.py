"""A converted official checkpoint is an ordinary r2 run: ``r2 predict`` over a cache, ``r2 score``
on its predictions and ``r2 fit --init`` from it, end to end through the CLI.

The cache is r2.train's synthetic data set with the official feature layout (CLIP ViT-B/32
widths 768/512, hidden states 9-12, 0.5 fps), so the released configuration reads it as is.
"""

import json

import pytest
import torch
from click.testing import CliRunner

from r2.cli import main
from r2.model import R2Config, R2Model
from r2.model.official import to_official_state_dict
from r2.train.synthetic import make_synthetic_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("official-run"), train_videos=6, val_videos=4,
                                  layers=(9, 10, 11, 12), tokens=3, video_dim=768, query_dim=512,
                                  model_id="openai/clip-vit-base-patch32", min_clips=10, max_clips=20)


def _official_checkpoint(path):
    """The official training wrapper around a trained-looking model under the official names."""
    torch.manual_seed(0)
    source = R2Model(R2Config())
    with torch.no_grad():
        source.block.pool_scale.uniform_(-1, 1)
        source.block.gate.uniform_(-1, 1)
    state = {f"module.{k}": v for k, v in to_official_state_dict(source).items()}
    state["module.clip.logit_scale"] = torch.zeros(())
    torch.save({"meta": {"epoch": 30}, "state_dict": state}, path)
    return source


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_converted_run_predicts_scores_and_fine_tunes(data, tmp_path):
    runner = CliRunner()
    checkpoint = tmp_path / "r2_tuning_qvhighlights-ed516355.pth"
    source = _official_checkpoint(checkpoint)
    run = tmp_path / "official"
    result = runner.invoke(main, ["convert-official", str(checkpoint), "--out", str(run), "--dataset",
                                  "qvhighlights"])
    assert result.exit_code == 0, result.output

    preds = tmp_path / "preds.jsonl"
    result = runner.invoke(main, ["predict", "--checkpoint", str(run), "--cache", str(data.cache_dir),
                                  "--annotations", str(data.val_file), "--out", str(preds), "--dataset",
                                  "custom", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    rows, gt = _rows(preds), _rows(data.val_file)
    assert [r["qid"] for r in rows] == [g["qid"] for g in gt]
    for row, g in zip(rows, gt):
        windows = row["pred_relevant_windows"]
        assert windows and [w[2] for w in windows] == sorted((w[2] for w in windows), reverse=True)
        assert all(0 <= w[0] <= w[1] <= g["duration"] for w in windows)
        assert len(row["pred_saliency_scores"]) == round(g["duration"] * 0.5)

    result = runner.invoke(main, ["score", str(preds), "--gt", str(data.val_file)])
    assert result.exit_code == 0, result.output
    assert "R1@0.5" in result.output and "HIT@1" in result.output

    tuned = tmp_path / "tuned"
    result = runner.invoke(main, ["fit", "-d", "custom", "-c", str(data.cache_dir), "--train",
                                  str(data.train_file), "--val", str(data.val_file), "-o", str(tuned),
                                  "--init", str(run), "--epochs", "1", "--workers", "0", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    # one step from the converted weights stays next to them, far from a fresh model
    start = dict(source.named_parameters())
    after = dict(R2Model.from_pretrained(tuned).named_parameters())
    fresh = dict(R2Model(R2Config()).named_parameters())
    for name in ("block.pool_scale", "block.gate", "block.temporal.ffn.fc1.weight"):
        moved = (after[name] - start[name]).norm()
        assert moved < 0.1 * (fresh[name] - start[name]).norm(), name
