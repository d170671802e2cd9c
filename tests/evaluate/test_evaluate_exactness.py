"""Means that the references take in a fixed order, reproduced to the last printed digit.

The reference evaluators average with ``np.mean`` over arrays in prediction-file order (HD mAP
and HIT@1 over an (n_queries, 3) array, mIoU over queries, the MR mAP "average" over the ten
per-threshold values, and the per-threshold MR mAP over an (n_queries, 10) array in the order
its pool returns it, which is file order for up to 50 queries; ``metrics.md`` §6). A correctly
rounded (fsum) mean differs from that in the last bit, which moves a value sitting on an x.xx5
boundary to the other printed digit. Each case below sits on such a boundary; the expected
numbers are the reference's. And the YouTube / TVSum table, which must round the unrounded
fraction once.
"""

import json
from pathlib import Path

from click.testing import CliRunner

from r2.cli import main
from r2.evaluate import format_report, score


def r2(*args):
    return CliRunner().invoke(main, ["score", *map(str, args)])


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


# ----------------------------------------------------------------------------- HD mAP

# 4 queries of 10 clips, every clip scored 1 except the (clip, annotator) pairs listed, scored 4;
# every prediction ranks the clips 0, 1, ..., 9. The 12 APs are 1/8, 1/2, 1/8, 0, 1/8, 1/6,
# 1/4, 1/4, 1, 1/6, 1/6, 1/5: exactly 25.625 %, but np.mean over the (4, 3) array gives
# 25.624999999999996 (printed 25.62, the reference), an exact mean 25.625000000000004 (25.63).
VERY_GOOD = {0: [(1, 1), (7, 0), (7, 2)], 1: [(5, 2), (7, 1)], 2: [(0, 2), (3, 0), (3, 1)],
             3: [(4, 2), (5, 0), (5, 1)]}


def hd_boundary_case():
    gt, preds = [], []
    for qid, fours in VERY_GOOD.items():
        scores = [[1, 1, 1] for _ in range(10)]
        for clip, annotator in fours:
            scores[clip][annotator] = 4
        gt.append({"qid": qid, "query": "x", "duration": 20, "vid": f"abcdefghij{qid}_0_20",
                   "relevant_clip_ids": list(range(10)), "saliency_scores": scores,
                   "relevant_windows": [[0, 20]]})
        preds.append({"qid": qid, "pred_saliency_scores": [10.0 - c for c in range(10)]})
    return preds, gt


def test_highlight_map_is_np_mean_in_file_order(tmp_path):
    preds, gt = hd_boundary_case()
    p = write_jsonl(tmp_path / "preds.jsonl", preds)
    g = write_jsonl(tmp_path / "gt.jsonl", gt)
    out = tmp_path / "metrics.json"
    result = r2(p, "--gt", g, "--out", out)
    assert result.exit_code == 0, result.output
    brief = json.loads(out.read_text())["brief"]
    # only 4s are >= 2, so the three levels have the same labels
    for level in ("Fair", "Good", "VeryGood"):
        assert brief[f"HL-min-{level}-mAP"] == 25.62
        assert brief[f"HL-min-{level}-Hit1"] == 25.0  # only query 2 has a 4 on clip 0
    assert "HD mAP 25.62  HIT@1 25.00" in result.output


# ----------------------------------------------------------------------------- MR mAP

# 40 queries of CG-DETR's published val predictions (tests/fixtures/golden/published, CC BY-NC-SA
# 4.0 as noted there), in that file's order. The reference returns all 40 per-query APs as one
# chunk of its worker pool, in this order, and np.mean over axis 0 gives 0.49975 at IoU 0.75
# (printed 49.98); an exact (fsum) mean gives 0.49974999999999997 (49.97).
CGDETR_40 = {12, 32, 210, 239, 424, 545, 1254, 1312, 1717, 2124, 2133, 2244, 2256, 2386, 2390,
             2583, 3173, 3194, 3834, 4041, 4275, 4786, 5246, 5488, 5715, 5993, 6206, 6977, 7065,
             7257, 7373, 8078, 8861, 8872, 8967, 9485, 9713, 9758, 9770, 9796}


def test_moment_map_is_np_mean_over_queries_in_file_order(tmp_path, val_gt, restrict):
    from r2.evaluate import read_jsonl

    published = Path(__file__).resolve().parents[1] / "fixtures/golden/published"
    preds = [r for r in read_jsonl(published / "cgdetr_best_val.preds.jsonl")
             if r["qid"] in CGDETR_40]
    assert len(preds) == 40
    p = write_jsonl(tmp_path / "preds.jsonl", preds)
    g = write_jsonl(tmp_path / "gt.jsonl", restrict(val_gt, preds))
    out = tmp_path / "metrics.json"
    result = r2(p, "--gt", g, "--out", out)
    assert result.exit_code == 0, result.output
    metrics = json.loads(out.read_text())
    assert metrics["full"]["MR-mAP"]["0.75"] == metrics["brief"]["MR-full-mAP@0.75"] == 49.98


# ----------------------------------------------------------------------------- mIoU

# 16 Charades-style queries: GT [0, b], top-1 prediction [0, a], so the hull IoU is a / b.
# Their mean is exactly 0.59375; np.mean in this order gives 59.374999999999986 % (59.37, as
# R²-Tuning's evaluator prints), an exact mean 59.375, a tie printed 59.38.
MIOU_PAIRS = [(5, 9), (3, 3), (2, 7), (2, 6), (3, 6), (5, 9), (8, 9), (7, 7), (3, 6), (3, 6),
              (4, 7), (7, 7), (1, 3), (1, 7), (4, 6), (2, 3)]


def test_miou_is_np_mean_in_file_order(tmp_path):
    gt = [{"qid": q, "query": "a person sits.", "duration": 30.0, "vid": "AO8RW",
           "relevant_windows": [[0.0, float(b)]]} for q, (_, b) in enumerate(MIOU_PAIRS)]
    preds = [{"qid": q, "pred_relevant_windows": [[0.0, float(a), 1.0]]}
             for q, (a, _) in enumerate(MIOU_PAIRS)]
    p = write_jsonl(tmp_path / "charades_test_preds.jsonl", preds)
    g = write_jsonl(tmp_path / "charades_test.jsonl", gt)
    out = tmp_path / "metrics.json"
    result = r2(p, "--gt", g, "--dataset", "charades", "--out", out)
    assert result.exit_code == 0, result.output
    metrics = json.loads(out.read_text())
    assert metrics["brief"]["MR-full-mIoU"] == metrics["full"]["MR-mIoU"] == 59.37
    assert metrics["short"]["MR-mIoU"] == 59.37  # every window is short
    assert "mIoU 59.37" in result.output


# ----------------------------------------------------------------------------- YouTube table


def yt_row(vid, domain, match):
    return {"qid": vid, "vid": vid, "query": "", "domain": domain, "duration": 2.0 * len(match),
            "relevant_windows": [], "relevant_clip_ids": list(range(len(match))),
            "saliency_scores": [[m] for m in match]}


def test_domain_table_rounds_the_unrounded_fraction_once(tmp_path):
    # ranked labels 1, 1, 0, 0, 0, 0, 1 (3 positives): AP = 2/3 + (1/3)(1/3 + 3/7)/2 = 50/63
    # = 0.7936507...: 79.37 %. The JSON's 0.79365 times 100 would print 79.36.
    gt = [yt_row("a", "dog", [-1, -1, -1, 1, -1, 1, 1])]
    preds = [{"qid": "a", "pred_saliency_scores": [2.0, 4.0, 1.0, 6.0, 3.0, 0.0, 5.0]}]
    p = write_jsonl(tmp_path / "preds.jsonl", preds)
    g = write_jsonl(tmp_path / "youtube_val.jsonl", gt)
    out = tmp_path / "metrics.json"
    result = r2(p, "--gt", g, "--out", out)
    assert result.exit_code == 0, result.output
    assert "as       YouTube Highlights" in result.output
    metrics = json.loads(out.read_text())
    assert metrics == {"mAP": 0.79365, "domains": {"dog": {"mAP": 0.79365, "videos": 1}}}
    lines = result.output.splitlines()
    assert [line.split()[-1] for line in lines if line.startswith("  dog")] == ["79.37"]
    assert [line.split()[-1] for line in lines if line.startswith("  mean")] == ["79.37"]
    # without the unrounded values: the JSON's fraction as a percentage, not rounded again
    table = format_report(metrics).splitlines()
    assert [line.split()[-1] for line in table if line.startswith("  dog")] == ["79.365"]


def test_tvsum_hands_its_unrounded_fractions_to_the_table():
    anno = [[s, 3.0] for s in [1, 1, 1, 5, 5, 1, 5, 1]]  # annotator 1: no clip above median
    gt = [{"qid": "v", "vid": "v", "query": "", "domain": "BK", "duration": 16.0,
           "relevant_windows": [], "relevant_clip_ids": list(range(8)), "saliency_scores": anno}]
    preds = [{"qid": "v", "pred_saliency_scores": [0.9, 0.1, 0.2, 0.8, 0.3, 0.4, 0.05, 0.5]}]
    details = {}
    metrics = score("tvsum", preds, gt, details=details)
    assert details["unrounded"] == {"mAP": 0.2875 / 2, "domains": {"BK": 0.2875 / 2}}
    assert metrics["mAP"] == round(0.2875 / 2, 5)
    assert "  BK (1 video)" in format_report(metrics, details)
