"""``r2 score`` through click's CliRunner: golden output files, the printed report, errors
without tracebacks, and annotation layouts read through r2.train.annotations."""

import json
import sys
import types
from pathlib import Path

import pytest
from click.testing import CliRunner

from r2.cli import main

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
VAL = FIXTURES / "qvhighlights" / "highlight_val_release.jsonl"
GOLDEN = FIXTURES / "golden"


def r2(*args):
    return CliRunner().invoke(main, ["score", *map(str, args)])


def test_golden_file_through_the_cli_is_byte_identical(tmp_path):
    out = tmp_path / "metrics.json"
    result = r2(GOLDEN / "momentdetr_sample_val.preds.jsonl", "--gt", VAL, "--out", out)
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == (GOLDEN / "momentdetr_sample_val.metrics.json").read_bytes()
    text = result.output
    assert 'split "val" by the file name' in text
    assert "QVHighlights (detected: saliency_scores of 3 annotators" in text
    assert "(1550 lines)" in text and "(1550 queries;" in text
    assert "  full  1550 q" in text and "  short (0, 10] s  429 q" in text
    assert "Paper columns: MR R1@0.5 53.94  R1@0.7 34.84" in text
    assert "HD mAP 35.65  HIT@1 55.55" in text


def test_subset_against_the_whole_val_file(tmp_path):
    preds = GOLDEN / "adv_ties_rounding_32q.preds.jsonl"
    result = r2(preds, "--gt", VAL)
    assert result.exit_code == 1
    assert "Error: qids of" in result.output and "1518 of the 1550 annotated queries" in result.output
    assert "Traceback" not in result.output
    out = tmp_path / "m.json"
    result = r2(preds, "--gt", VAL, "--subset", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    assert "Warning: --subset: scoring the 32 queries" in result.output
    expected = (GOLDEN / "adv_ties_rounding_32q.metrics.json").read_text()
    assert out.read_text() == expected
    assert expected in result.output  # --json prints the same text


def test_malformed_prediction_line_is_named_and_nothing_is_written(tmp_path):
    lines = (GOLDEN / "adv_ties_rounding_32q.preds.jsonl").read_text().split("\n")
    lines[6] = lines[6][:-5]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines))
    out = tmp_path / "m.json"
    result = r2(bad, "--gt", VAL, "--subset", "--out", out)
    assert result.exit_code == 1
    assert f"Error: {bad}:7: invalid JSON" in result.output
    assert not out.exists() and not list(tmp_path.glob("*.partial"))


def test_empty_bucket_option(tmp_path):
    val = [json.loads(line) for line in VAL.read_text().split("\n")]
    rows = [r for r in val if all(e - s > 30 for s, e in r["relevant_windows"])][:5]
    gt = tmp_path / "val_long.jsonl"
    gt.write_text("\n".join(json.dumps(r) for r in rows))
    preds = tmp_path / "p.jsonl"
    preds.write_text("\n".join(json.dumps({"qid": r["qid"], "pred_relevant_windows":
                                           [w + [1] for w in r["relevant_windows"]]})
                               for r in rows))
    result = r2(preds, "--gt", gt)
    assert result.exit_code == 1 and "--empty-bucket null" in result.output
    result = r2(preds, "--gt", gt, "--empty-bucket", "null", "--dataset", "qvh")
    assert result.exit_code == 0, result.output
    assert "Warning: length bucket 'short'" in result.output
    assert "n/a" in result.output and "as       QVHighlights (given)" in result.output


def test_moment_retrieval_file_is_detected_and_reported(tmp_path):
    gt = FIXTURES / "tacos" / "tacos_synthetic.jsonl"
    rows = [json.loads(line) for line in gt.read_text().splitlines()]
    preds = tmp_path / "tacos_test_preds.jsonl"
    preds.write_text("\n".join(json.dumps({"qid": r["qid"], "pred_relevant_windows":
                                           [r["relevant_windows"][0] + [0.9]]}) for r in rows))
    result = r2(preds, "--gt", gt)
    assert result.exit_code == 0, result.output
    assert "as       TACoS (detected: qids \"<vid>_<i>\" (TACoS layout))" in result.output
    assert "Paper columns: R1@0.3 100.00  R1@0.5 100.00  R1@0.7 100.00  mIoU 100.00" in result.output
    assert "split not in the file name" in result.output


def test_swapped_arguments_are_named():
    preds = GOLDEN / "adv_ties_rounding_32q.preds.jsonl"
    result = r2(VAL, "--gt", preds)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert (f"Error: --gt {preds}: line 1 has 'pred_relevant_windows': this is a prediction file, not ground "
            "truth; are PREDICTIONS and --gt swapped?") in result.output


def test_unknown_dataset_is_a_usage_error():
    result = r2(GOLDEN / "adv_ties_rounding_32q.preds.jsonl", "--gt", VAL, "--dataset", "coco")
    assert result.exit_code == 2 and "unknown data set 'coco'" in result.output


def test_help_lists_the_options():
    result = CliRunner().invoke(main, ["score", "--help"])
    assert result.exit_code == 0
    for option in ("--gt", "--dataset", "--out", "--subset", "--empty-bucket", "--extended",
                   "--split", "--domain"):
        assert option in result.output


class FakeSample:
    def __init__(self, row):
        self.row = row

    def to_row(self):
        return dict(self.row)


@pytest.fixture
def fake_annotations(monkeypatch):
    """Stand-in for r2.train.annotations (another room) with its contract's four functions
    (``split_from_name`` the real one)."""
    from r2.train.annotations import split_from_name

    calls = []
    rows = [
        {"qid": "yt1", "vid": "yt1", "query": "t", "domain": "dog", "duration": 8.0,
         "relevant_windows": [], "relevant_clip_ids": [0, 1, 2, 3],
         "saliency_scores": [[-1], [1], [0], [1]]},
        {"qid": "yt2", "vid": "yt2", "query": "t", "domain": "surfing", "duration": 4.0,
         "relevant_windows": [], "relevant_clip_ids": [0, 1], "saliency_scores": [[1], [-1]]},
    ]

    def load_annotations(path, dataset=None, domain=None, split=None):
        calls.append((Path(path).name, dataset, domain, split))
        return [FakeSample(r) for r in rows if domain in (None, r["domain"])]

    def select_domain(samples, dataset, domain, path=None):
        calls.append(("select_domain", dataset, domain, len(samples)))
        return [s for s in samples if s.row["domain"] == domain]

    module = types.ModuleType("r2.train.annotations")
    module.load_annotations = load_annotations
    module.select_domain = select_domain
    module.detect_dataset = lambda path: "youtube"
    module.split_from_name = split_from_name
    monkeypatch.setitem(sys.modules, "r2.train.annotations", module)
    import r2.train

    monkeypatch.setattr(r2.train, "annotations", module, raising=False)
    return calls


def test_other_layouts_go_through_r2_train_annotations(tmp_path, fake_annotations):
    anno = tmp_path / "youtube_anno.json"
    anno.write_text("{}")
    preds = tmp_path / "preds.jsonl"
    preds.write_text('{"qid": "yt1", "pred_saliency_scores": [0.1, 0.9, 0.8, 0.3]}\n'
                     '{"qid": "yt2", "pred_saliency_scores": [0.2, 0.1]}\n')
    out = tmp_path / "m.json"
    result = r2(preds, "--gt", anno, "--out", out)
    assert result.exit_code == 0, result.output
    assert fake_annotations == [("youtube_anno.json", "youtube", None, "val")]
    assert 'split "val" (the default for this benchmark' in result.output
    assert "as       YouTube Highlights (detected by r2.train.annotations)" in result.output
    metrics = json.loads(out.read_text())
    assert metrics["domains"]["dog"]["mAP"] == round(19 / 24, 5)
    assert metrics["domains"]["surfing"]["mAP"] == 1.0
    assert "dog (1 video)" in result.output
    result = r2(preds, "--gt", anno, "--domain", "dog", "--split", "all")
    assert result.exit_code == 0, result.output
    assert fake_annotations[-2:] == [("youtube_anno.json", "youtube", None, None),  # the file parsed once
                                     ("select_domain", "youtube", "dog", 2)]
    assert "--domain dog: set aside the 1 prediction lines of other domains" in result.output
    assert "dog (1 video)" in result.output and "surfing" not in result.output


def test_real_annotation_parsers_feed_the_highlight_metrics(tmp_path):
    """With the real r2.train.annotations (another room): R²-Tuning's json layouts end up as
    the rows the YouTube / TVSum metrics expect."""
    annotations = pytest.importorskip("r2.train.annotations")
    anno = FIXTURES / "youtube" / "youtube_anno_synthetic.json"
    source = json.loads(anno.read_text())
    rows = [s.to_row() for s in annotations.load_annotations(anno, dataset="youtube")]
    assert {r["qid"] for r in rows} == set(source)
    for r in rows:
        assert r["qid"] == r["vid"] and r["domain"] == source[r["qid"]]["domain"]
        assert r["relevant_clip_ids"] == list(range(len(source[r["qid"]]["match"])))
        assert [s[0] for s in r["saliency_scores"]] == source[r["qid"]]["match"]
    preds = tmp_path / "preds.jsonl"
    preds.write_text("\n".join(json.dumps({"qid": vid, "pred_saliency_scores":
                                           [float(m) for m in v["match"]]})
                               for vid, v in source.items()))
    result = r2(preds, "--gt", anno, "--split", "all", "--out", tmp_path / "m.json")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "m.json").read_text())
    # predictions equal to the labels rank every positive first: AP 1, a video without
    # positives 0 (dog: one of each)
    assert metrics["domains"] == {"dog": {"mAP": 0.5, "videos": 2},
                                  "surfing": {"mAP": 1.0, "videos": 1}}
    tv = FIXTURES / "tvsum" / "tvsum_anno_synthetic.json"
    assert annotations.detect_dataset(str(tv)) == "tvsum"
    rows = [s.to_row() for s in annotations.load_annotations(tv, dataset="tvsum")]
    assert all(len(r["saliency_scores"][0]) == 20 for r in rows)


def test_out_folders_are_made_and_a_bad_out_is_refused_before_scoring(tmp_path, monkeypatch):
    preds = GOLDEN / "adv_ties_rounding_32q.preds.jsonl"
    expected = (GOLDEN / "adv_ties_rounding_32q.metrics.json").read_bytes()
    out = tmp_path / "runs" / "a" / "metrics.json"
    result = r2(preds, "--gt", VAL, "--subset", "--out", out)
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == expected

    from r2 import evaluate

    def no_scoring(*args, **kwargs):
        raise AssertionError("scored although --out cannot be written")

    monkeypatch.setattr(evaluate, "score", no_scoring)
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    target = blocker / "m.json"
    result = r2(preds, "--gt", VAL, "--subset", "--out", target)
    assert result.exit_code == 1, result.output
    assert f"Error: --out {target}: {blocker} is not a folder" in result.output
    assert "Traceback" not in result.output and "Scoring" not in result.output
    result = r2(preds, "--gt", VAL, "--subset", "--out", tmp_path)  # click refuses a folder
    assert result.exit_code == 2 and "is a directory" in result.output
    assert blocker.read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "runs"]


def test_out_is_refused_when_it_is_the_prediction_or_the_ground_truth_file(tmp_path):
    """``--out`` naming one of the two inputs replaced it with the metrics (exit code 0):
    refused, naming which, and the file is left as it was."""
    preds, gt = tmp_path / "preds.jsonl", tmp_path / "gt.jsonl"
    preds.write_bytes((GOLDEN / "adv_ties_rounding_32q.preds.jsonl").read_bytes())
    gt.write_bytes(VAL.read_bytes())
    before = preds.read_bytes(), gt.read_bytes()
    result = r2(preds, "--gt", gt, "--subset", "--out", tmp_path / "." / "preds.jsonl")
    assert result.exit_code == 1, result.output
    assert (f"Error: --out {tmp_path / 'preds.jsonl'} is the prediction file: the metrics would replace it; "
            "write them to another file (e.g. metrics.json)") in result.output
    result = r2(preds, "--gt", gt, "--subset", "--out", gt)
    assert result.exit_code == 1 and f"Error: --out {gt} is the --gt file: the metrics" in result.output
    assert (preds.read_bytes(), gt.read_bytes()) == before and "Scoring" not in result.output


def test_top_k_is_said_to_be_ignored_outside_tvsum():
    result = r2(GOLDEN / "adv_ties_rounding_32q.preds.jsonl", "--gt", VAL, "--subset", "--top-k", "3")
    assert result.exit_code == 0, result.output
    assert "Warning: --top-k 3 is ignored: it is TVSum's, and this is QVHighlights" in result.output
    result = r2(GOLDEN / "adv_ties_rounding_32q.preds.jsonl", "--gt", VAL, "--subset")
    assert result.exit_code == 0 and "--top-k" not in result.output


def test_top_k_must_be_at_least_one():
    from r2.evaluate import score

    for k in ("0", "-2"):
        result = r2(GOLDEN / "adv_ties_rounding_32q.preds.jsonl", "--gt", VAL, "--top-k", k)
        assert result.exit_code == 2 and "Invalid value for '--top-k'" in result.output
    gt = [{"qid": "v", "vid": "v", "query": "", "domain": "BK", "duration": 4.0,
           "relevant_windows": [], "relevant_clip_ids": [0, 1], "saliency_scores": [[1], [3]]}]
    preds = [{"qid": "v", "pred_saliency_scores": [0.1, 0.9]}]
    assert score("tvsum", preds, gt, top_k=1)["mAP"] == 1.0
    for k in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="top_k must be a whole number of clips"):
            score("tvsum", preds, gt, top_k=k)


def yt_rows():
    return [{"qid": f"{domain}{i}", "vid": f"{domain}{i}", "query": "", "domain": domain,
             "duration": 8.0, "relevant_windows": [], "relevant_clip_ids": [0, 1, 2, 3],
             "saliency_scores": [[-1], [1], [-1], [1]]}
            for domain in ("dog", "surfing") for i in range(2)]


def test_domain_sets_aside_the_predictions_of_other_domains(tmp_path):
    gt = tmp_path / "youtube_val.jsonl"
    gt.write_text("\n".join(json.dumps(r) for r in yt_rows()))
    lines = [{"qid": r["qid"], "pred_saliency_scores": [0.0, 1.0, 0.0, 1.0]} for r in yt_rows()]
    lines[1]["pred_saliency_scores"] = [1.0, 0.0, 1.0, 0.0]  # dog1: positives ranked last
    preds = tmp_path / "preds.jsonl"
    preds.write_text("\n".join(json.dumps(p) for p in lines))
    out = tmp_path / "m.json"
    result = r2(preds, "--gt", gt, "--domain", "dog", "--out", out)
    assert result.exit_code == 0, result.output
    assert "--domain dog: set aside the 2 prediction lines of other domains" in result.output
    # dog0: AP 1; dog1: ranked labels 0, 0, 1, 1, the trapezoid of R²-Tuning's AP from
    # precision 0 at recall 0: (0 + 1/3) / 2 * 1/2 + (1/3 + 1/2) / 2 * 1/2 = 7/24
    dog = round((1 + 7 / 24) / 2, 5)
    assert json.loads(out.read_text()) == {"mAP": dog, "domains": {"dog": {"mAP": dog, "videos": 2}}}
    # a prediction of a qid in no domain is still an error, and a bad line keeps its number
    preds.write_text("\n".join(json.dumps(p) for p in lines + [{"qid": "cat0",
                                                                   "pred_saliency_scores": [1.0]}]))
    result = r2(preds, "--gt", gt, "--domain", "dog")
    assert result.exit_code == 1 and "predicted qids are not in the ground truth (qids 'cat0')" in result.output
    lines[3]["pred_saliency_scores"] = [0.0, "x", 1.0, 0.0]  # surfing1 (line 4): set aside
    lines[1]["pred_saliency_scores"] = [0.0, "x", 1.0, 0.0]  # dog1, line 2
    preds.write_text("\n".join(json.dumps(p) for p in lines))
    result = r2(preds, "--gt", gt, "--domain", "dog")
    assert result.exit_code == 1, result.output
    assert f"Error: {preds}:2 (qid 'dog1'): pred_saliency_scores[1] = 'x'" in result.output
    # the ground truth's lines too: dog rows are lines 1-2, surfing rows 3-4
    rows = yt_rows()
    rows[1]["saliency_scores"] = "bad"
    rows[3]["saliency_scores"] = "bad"
    gt.write_text("\n".join(json.dumps(r) for r in rows))
    result = r2(preds, "--gt", gt, "--domain", "surfing")
    assert result.exit_code == 1 and f"{gt}:4 (qid 'surfing1')" in result.output, result.output
