"""Every golden pair (shared/data/golden and golden/published) reproduced byte for byte."""

import json
from pathlib import Path

import pytest

from r2.evaluate import dumps_metrics, read_jsonl, score

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "golden"
GOLDEN = sorted(GOLDEN_DIR.glob("*.preds.jsonl")) + sorted(
    (GOLDEN_DIR / "published").glob("*.preds.jsonl"))


def _ids(paths):
    return [p.name.replace(".preds.jsonl", "") for p in paths]


@pytest.mark.parametrize("pred_path", GOLDEN, ids=_ids(GOLDEN))
def test_golden_pair_is_byte_identical(pred_path, val_gt, restrict):
    preds = read_jsonl(pred_path)
    expected = pred_path.with_name(pred_path.name.replace(".preds.jsonl", ".metrics.json"))
    result = score("qvhighlights", preds, restrict(val_gt, preds))
    assert dumps_metrics(result) == expected.read_text(encoding="utf-8")


def test_there_are_twelve_golden_pairs():
    assert len(GOLDEN) == 12


@pytest.mark.parametrize("name", ["adv_ties_rounding_32q", "adv_order_truncation_padding"])
def test_extended_layout_agrees_on_shared_numbers(name, val_gt, restrict):
    pred_path = [p for p in GOLDEN if p.name.startswith(name)][0]
    preds = read_jsonl(pred_path)
    gt = restrict(val_gt, preds)
    base = score("qvhighlights", preds, gt)
    ext = score("qvhighlights", preds, gt, extended=True)
    for key, value in base["brief"].items():
        assert ext["brief"][key] == value, key
    for section in ("full", "short", "middle", "long"):
        assert ext[section]["MR-mAP"] == base[section]["MR-mAP"]
        for t, v in base[section]["MR-R1"].items():
            assert ext[section]["MR-R1"][t] == v
        assert set(ext[section]) == {"MR-mIoU", "MR-mAP", "MR-R1", "MR-R5"}
        assert list(ext[section]["MR-R1"])[:4] == ["0.3", "0.35", "0.4", "0.45"]
    assert list(ext["brief"])[:3] == ["MR-full-R1@0.3", "MR-full-R1@0.5", "MR-full-R1@0.7"]
    assert list(ext["brief"])[-2:] == ["HL-min-VeryGood-mAP", "HL-min-VeryGood-Hit1"]


def test_scoring_against_the_whole_val_file_with_subset_equals_the_golden_rule(val_gt):
    pred_path = [p for p in GOLDEN if "qidmod4eq1" in p.name][0]
    preds = read_jsonl(pred_path)
    expected = json.loads(pred_path.with_name(
        pred_path.name.replace(".preds.jsonl", ".metrics.json")).read_text())
    with pytest.warns(UserWarning, match="--subset"):
        result = score("qvhighlights", preds, val_gt, subset=True)
    assert json.loads(dumps_metrics(result)) == expected
