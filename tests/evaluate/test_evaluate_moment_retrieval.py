"""Charades-STA / TACoS / Ego4D-NLQ metrics (R²-Tuning's evaluator) on hand-computed cases,
its output layout, and data-set detection from ground-truth rows."""

import warnings
from pathlib import Path

import pytest

from r2.evaluate import detect_dataset_from_rows, normalize_dataset, read_jsonl, score
from r2.evaluate.moment_retrieval import hull_iou, set_iou

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"

GT = [{"qid": 0, "vid": "AAAAA", "duration": 30.0, "relevant_windows": [[0, 10]]},
      {"qid": 1, "vid": "BBBBB", "duration": 30.0, "relevant_windows": [[10, 20]]},
      {"qid": 2, "vid": "CCCCC", "duration": 50.0, "relevant_windows": [[5, 25]]}]
PREDS = [{"qid": 0, "pred_relevant_windows": [[0, 10, 0.9], [0, 5, 0.8]]},
         {"qid": 1, "pred_relevant_windows": [[12, 20, 0.9], [10, 20, 0.1]]},
         {"qid": 2, "pred_relevant_windows": [[30, 40, 0.5]]}]


def run(dataset="charades", preds=PREDS, gt=GT, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return score(dataset, preds, gt, **options)


def test_hand_computed_r1_r5_miou_map():
    result = run()
    full = result["full"]
    # top-1 hull IoUs: 1.0, 0.8 (8 / 10), 0.0 (disjoint)
    assert full["MR-mIoU"] == 60.0
    assert [full["MR-R1"][t] for t in ("0.3", "0.5", "0.7", "0.8", "0.85")] == [
        66.67, 66.67, 66.67, 66.67, 33.33]
    # R5: the best of the first 5 listed windows: q1 has [10, 20] -> 1.0
    assert full["MR-R5"]["0.85"] == 66.67 and full["MR-R5"]["0.95"] == 66.67
    # AP: q0 1 (the duplicate-ish [0, 5] is a false positive after the hit); q1 1 up to
    # t = 0.8, then 0.5 (false positive first); q2 0
    assert full["MR-mAP"]["0.5"] == 66.67 and full["MR-mAP"]["0.8"] == 66.67
    assert full["MR-mAP"]["0.85"] == 50.0
    assert full["MR-mAP"]["average"] == round(100 * (7 * 2 / 3 + 3 * 0.5) / 10, 2)


def test_layout_is_r2_tunings():
    result = run()
    assert list(result) == ["brief", "full", "long", "middle", "short"]
    assert list(result["brief"]) == sorted(result["brief"])
    assert list(result["brief"])[:7] == [
        "MR-full-R1@0.3", "MR-full-R1@0.5", "MR-full-R1@0.7", "MR-full-R5@0.3",
        "MR-full-R5@0.5", "MR-full-R5@0.7", "MR-full-mAP"]
    assert len(result["brief"]) == 16
    assert list(result["full"]) == ["MR-mIoU", "MR-mAP", "MR-R1", "MR-R5"]
    assert list(result["full"]["MR-R1"]) == ["0.3", "0.35", "0.4", "0.45", "0.5", "0.55", "0.6",
                                             "0.65", "0.7", "0.75", "0.8", "0.85", "0.9", "0.95"]
    # lengths 10, 10, 20: short has 2 queries, middle 1, long none -> null (never 0)
    assert result["short"]["MR-mIoU"] == 90.0
    assert result["long"]["MR-mIoU"] is None and result["brief"]["MR-long-mAP"] is None
    for name in ("tacos", "ego4d"):
        assert run(name) == result


def test_ious_match_the_reference_definitions():
    assert set_iou(0.0, 10.0, 5.0, 15.0) == 5 / 15
    assert hull_iou(0.0, 10.0, 20.0, 30.0) == 0.0
    assert hull_iou(5.0, 5.0, 5.0, 5.0) == 0.0  # zero hull: 0, never NaN
    import math

    assert math.isnan(set_iou(40.0, 20.0, 20.0, 40.0))  # reversed, union 0 -> NaN


def test_zero_length_ground_truth_is_unreachable_not_repaired():
    gt = [{"qid": "val0", "video_uid": "u", "vid": "c", "duration": 480.0,
           "relevant_windows": [[77.31, 77.31]]}]
    preds = [{"qid": "val0", "pred_relevant_windows": [[77.31, 77.31, 1.0], [70, 80, 0.5]]}]
    result = run("ego4d", preds, gt)
    assert result["full"]["MR-R1"]["0.3"] == 0.0 and result["full"]["MR-mIoU"] == 0.0


@pytest.mark.parametrize("name, expected", [
    ("charades_synthetic.jsonl", "charades"),
    ("tacos_synthetic.jsonl", "tacos"),
    ("nlq_synthetic.jsonl", "ego4d"),
])
def test_detection_of_moment_retrieval_files(name, expected):
    rows = read_jsonl(FIXTURES / expected / name)
    assert detect_dataset_from_rows(rows)[0] == expected


def test_detection_of_qvhighlights_and_custom(val_gt):
    assert detect_dataset_from_rows(val_gt[:50])[0] == "qvhighlights"
    custom = [dict(r, vid=f"my_video_{i}") for i, r in enumerate(val_gt[:5])]
    found = detect_dataset_from_rows(custom)
    assert found.name == "custom" and "3 annotators" in found.reason
    rows = [{"qid": "a", "vid": "x", "relevant_windows": [[1, 2]]}]
    assert detect_dataset_from_rows(rows) == ("custom", "windows only: moment retrieval (detected)")


def test_custom_is_scored_like_r2_tuning_with_highlights(val_gt):
    rows = val_gt[:40]
    preds = [{"qid": r["qid"], "pred_relevant_windows": [w + [1.0] for w in r["relevant_windows"]],
              "pred_saliency_scores": [0.0] * 75} for r in rows]
    custom = run("custom", preds, rows)
    assert "MR-mIoU" in custom["full"] and "HL-min-VeryGood" in custom
    assert custom["brief"]["MR-full-R1@0.7"] == 100.0


def test_dataset_names():
    assert normalize_dataset("QVH") == "qvhighlights"
    assert normalize_dataset("Charades-STA") == "charades"
    assert normalize_dataset("ego4d-nlq") == "ego4d"
    assert normalize_dataset("auto") is None and normalize_dataset(None) is None
    with pytest.raises(ValueError):
        normalize_dataset("coco")
