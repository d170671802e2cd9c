"""``r2.scoring``: the Python API behind ``r2 score`` (files in, typed result out)."""

import json
import warnings
from pathlib import Path

import pytest

from r2.evaluate import EvaluationWarning, dumps_metrics, read_jsonl
from r2.scoring import FileScore, ScoringError, load_ground_truth, score_files, score_predictions

FIXTURES = Path(__file__).resolve().parent / "fixtures"
GOLDEN = FIXTURES / "golden"
VAL = FIXTURES / "qvhighlights" / "highlight_val_release.jsonl"
YOUTUBE = FIXTURES / "youtube" / "youtube_anno_synthetic.json"


def test_a_golden_file_scores_byte_identical_through_the_api():
    result = score_files(GOLDEN / "momentdetr_sample_val.preds.jsonl", VAL)
    assert isinstance(result, FileScore)
    assert dumps_metrics(result.metrics) == (GOLDEN / "momentdetr_sample_val.metrics.json").read_text()
    assert result.truth.dataset == "qvhighlights" and result.truth.how.startswith("detected: ")
    assert result.truth.split_text == 'split "val" by the file name'
    assert result.prediction_lines == 1550 and len(result.truth.rows) == 1550 and result.set_aside == 0
    assert result.details  # the counts format_report prints


def test_the_options_that_do_not_apply_are_not_passed_on():
    preds = GOLDEN / "adv_ties_rounding_32q.preds.jsonl"
    with pytest.warns(EvaluationWarning, match="--subset"):
        result = score_files(preds, VAL, subset=True, top_k=3, extended=True)
    assert result.options == {"subset": True, "empty_bucket": None, "extended": True}
    assert "MR-full-R1@0.3" in result.metrics["brief"]  # R²-Tuning's layout


def test_swapped_files_and_an_unknown_domain_or_data_set_are_scoring_errors(tmp_path):
    preds = GOLDEN / "adv_ties_rounding_32q.preds.jsonl"
    with pytest.raises(ScoringError, match="swapped"):
        score_files(VAL, preds)
    with pytest.raises(ScoringError, match="no row has domain 'cat'"):
        load_ground_truth(VAL, domain="cat")
    with pytest.raises(ScoringError, match="qvh"):  # the message lists the names it knows
        load_ground_truth(VAL, dataset="imagenet")
    assert ScoringError.user_error


def test_a_split_for_a_jsonl_is_a_warning_not_an_error():
    with pytest.warns(EvaluationWarning, match="--split train is ignored for a .jsonl file"):
        truth = load_ground_truth(VAL, split="train")
    assert len(truth.rows) == len(read_jsonl(VAL))


def test_an_original_layout_with_a_domain_sets_the_other_domains_predictions_aside(tmp_path):
    source = json.loads(YOUTUBE.read_text())
    preds = tmp_path / "preds.jsonl"
    preds.write_text("\n".join(json.dumps({"qid": vid, "pred_saliency_scores": [float(m) for m in v["match"]]})
                               for vid, v in source.items()))
    everything = score_files(preds, YOUTUBE, split="all")
    assert everything.truth.dataset == "youtube" and everything.truth.how == "detected by r2.train.annotations"
    assert set(everything.metrics["domains"]) == {"dog", "surfing"}
    truth = load_ground_truth(YOUTUBE, split="all", domain="dog")
    others = {vid for vid, v in source.items() if v["domain"] != "dog"}
    assert truth.other_domains == others and truth.split_text.endswith(", domain dog")
    with pytest.warns(EvaluationWarning, match=f"set aside the {len(others)} prediction lines"):
        dog = score_predictions(preds, truth)
    assert dog.set_aside == len(others) and dog.prediction_lines == len(source)
    assert list(dog.metrics["domains"]) == ["dog"]
    assert dog.metrics["domains"]["dog"] == everything.metrics["domains"]["dog"]


def test_rows_already_read_are_scored_as_given():
    preds = GOLDEN / "adv_ties_rounding_32q.preds.jsonl"
    truth = load_ground_truth(VAL)
    rows = read_jsonl(preds)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EvaluationWarning)  # --subset's note
        result = score_predictions(Path("preds-in-memory.jsonl"), truth, rows, subset=True)
        assert result.metrics == score_files(preds, VAL, subset=True).metrics
    assert result.prediction_lines == len(rows)
