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


def test_a_converted_run_is_not_trained_into_and_a_fit_run_is_not_converted_into(data, tmp_path):
    """``r2 fit -o CONVERTED --resume`` (as the refusal without --resume used to advise) replaced
    the converted weights by a new run's, and ``convert-official --force`` into a trained run
    left its best.json, metrics and checkpoints beside the converted weights: both refused."""
    import hashlib

    def digest(path):
        return hashlib.sha256(path.read_bytes()).hexdigest()

    runner = CliRunner()
    checkpoint = tmp_path / "r2_tuning_qvhighlights-ed516355.pth"
    _official_checkpoint(checkpoint)
    run = tmp_path / "official"
    assert runner.invoke(main, ["convert-official", str(checkpoint), "--out", str(run)]).exit_code == 0
    weights = digest(run / "model.safetensors")
    fit = ["fit", "-d", "custom", "-c", str(data.cache_dir), "--train", str(data.train_file), "--val",
           str(data.val_file), "--epochs", "1", "--workers", "0", "--device", "cpu"]
    for resume in ([], ["--resume"]):
        result = runner.invoke(main, [*fit, "-o", str(run), *resume])
        assert result.exit_code == 1, result.output
        assert (f"{run} holds a model converted by r2 convert-official (official_source.json), not a run of "
                f"r2 fit; to train from its weights, start a new run: --init {run} --run-dir NEW_FOLDER"
                in result.output), result.output
        assert digest(run / "model.safetensors") == weights and not (run / "checkpoints").exists()

    tuned = tmp_path / "tuned"
    result = runner.invoke(main, [*fit, "-o", str(tuned), "--init", str(run)])
    assert result.exit_code == 0, result.output
    trained = digest(tuned / "model.safetensors")
    result = runner.invoke(main, ["convert-official", str(checkpoint), "--out", str(tuned), "--force"])
    assert result.exit_code == 1
    assert (f"{tuned} holds a run of r2 fit (checkpoints, metrics.jsonl, best.json, preset.json): convert into "
            "another folder (--force replaces only a model converted before)") in result.output, result.output
    assert digest(tuned / "model.safetensors") == trained and not (tuned / "official_source.json").exists()


def test_fit_init_from_weights_of_other_features_is_refused_or_allowed(data, tmp_path):
    """Fine-tuning from a model of another data set's features (Charades-STA's 1 fps here, the
    cache's 0.5) is refused, naming the option of ``r2 fit`` that allows it, which exists."""
    runner = CliRunner()
    checkpoint = tmp_path / "r2_tuning_charades-1de02112.pth"
    _official_checkpoint(checkpoint)
    run = tmp_path / "official-charades"
    assert runner.invoke(main, ["convert-official", str(checkpoint), "--out", str(run)]).exit_code == 0
    fit = ["fit", "-d", "custom", "-c", str(data.cache_dir), "--train", str(data.train_file), "--val",
           str(data.val_file), "--epochs", "1", "--workers", "0", "--device", "cpu", "--init", str(run)]
    result = runner.invoke(main, [*fit, "-o", str(tmp_path / "refused")])
    assert result.exit_code == 1, result.output
    assert "fps: --init" in result.output and "(or pass --allow-feature-mismatch to go on anyway)" in result.output
    assert not (tmp_path / "refused" / "model.safetensors").exists()
    result = runner.invoke(main, [*fit, "-o", str(tmp_path / "allowed"), "--allow-feature-mismatch"])
    assert result.exit_code == 0, result.output
    assert "Going on as --allow-feature-mismatch asks: the model runs on features it was not trained on." \
        in result.output, result.output
    assert (tmp_path / "allowed" / "model.safetensors").is_file()
