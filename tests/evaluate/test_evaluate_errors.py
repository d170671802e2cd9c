"""Every input the reference evaluator crashes on, and every malformed input: a clear
EvaluationError naming the file and line (or the qid), never a traceback; the opt-ins."""

import json
import warnings

import pytest

from r2.evaluate import EvaluationError, EvaluationWarning, read_jsonl, score
from r2.evaluate.moment_retrieval import evaluate_moment_retrieval


def gt_row(qid, windows=((10, 20),), duration=60, clips=((5, (4, 4, 4)),)):
    return {"qid": qid, "duration": duration, "relevant_windows": [list(w) for w in windows],
            "relevant_clip_ids": [c for c, _ in clips],
            "saliency_scores": [list(s) for _, s in clips]}


def pred_row(qid, windows=((10, 20, 0.9),), saliency=None):
    return {"qid": qid, "pred_relevant_windows": [list(w) for w in windows],
            "pred_saliency_scores": list(saliency or [0.1] * 30)}


def write(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def score_files(tmp_path, preds, gt, **options):
    p = write(tmp_path / "preds.jsonl", preds)
    g = write(tmp_path / "gt.jsonl", gt)
    return score(options.pop("dataset", "qvhighlights"), read_jsonl(p), read_jsonl(g),
                 pred_source=str(p), gt_source=str(g), **options)


GT3 = [gt_row(1, [(0, 8), (20, 40)]), gt_row(2, [(10, 20)]), gt_row(3, [(20, 60)])]
PRED3 = [pred_row(1), pred_row(2), pred_row(3)]


def test_the_base_case_scores(tmp_path):
    result = score_files(tmp_path, PRED3, GT3)
    assert set(result) == {"brief", "HL-min-Fair", "HL-min-Good", "HL-min-VeryGood", "full",
                           "long", "middle", "short"}


def test_missing_predictions_name_the_qids_and_subset_opts_in(tmp_path):
    with pytest.raises(EvaluationError) as err:
        score_files(tmp_path, PRED3[:1], GT3)
    message = str(err.value)
    assert "2 of the 3 annotated queries have no prediction (qids 2, 3)" in message
    assert "--subset" in message
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = score_files(tmp_path, PRED3[:1], GT3, subset=True, empty_bucket="null")
    assert "scoring the 1 queries present in both" in str(caught[0].message)
    assert result["full"]["MR-R1"]["0.5"] == 0.0  # [10, 20] vs [0, 8] / [20, 40]


def test_extra_predictions_suggest_the_wrong_split(tmp_path):
    with pytest.raises(EvaluationError, match=r"1 predicted qids are not in the ground truth "
                                              r"\(qids 99\); is .*gt.jsonl the right split"
                                              r"\? Pass --subset") as err:
        score_files(tmp_path, PRED3 + [pred_row(99)], GT3)
    assert "?." not in str(err.value)
    with pytest.raises(EvaluationError, match=r"\(qids 3\)\. Pass --subset"):  # no question
        score_files(tmp_path, PRED3[:2], GT3)


def test_string_and_int_qids_get_a_hint(tmp_path):
    preds = [dict(p, qid=str(p["qid"])) for p in PRED3]
    with pytest.raises(EvaluationError, match="int qids, the predictions str qids"):
        score_files(tmp_path, preds, GT3)


def test_empty_window_list_names_file_and_line(tmp_path):
    preds = [PRED3[0], pred_row(2, windows=()), PRED3[2]]
    with pytest.raises(EvaluationError, match=r"preds.jsonl:2 \(qid 2\): 'pred_relevant_windows' "
                                              r"is empty"):
        score_files(tmp_path, preds, GT3)


def test_short_window_names_file_and_line(tmp_path):
    preds = [PRED3[0], PRED3[1], pred_row(3, windows=((1, 2, 0.5), (3, 4)))]
    with pytest.raises(EvaluationError, match=r"preds.jsonl:3 \(qid 3\): "
                                              r"pred_relevant_windows\[1\] = \[3, 4\] must have "
                                              r"at least 3 numbers"):
        score_files(tmp_path, preds, GT3)


def test_non_number_and_non_finite_values(tmp_path):
    preds = [PRED3[0], pred_row(2, windows=((1, "2", 0.5),)), PRED3[2]]
    with pytest.raises(EvaluationError, match=r"preds.jsonl:2 .*non-number '2'"):
        score_files(tmp_path, preds, GT3)
    preds = [PRED3[0], pred_row(2, saliency=[0.1, float("nan")]), PRED3[2]]
    with pytest.raises(EvaluationError, match=r"preds.jsonl:2 .*pred_saliency_scores\[1\] = nan "
                                              "is not finite"):
        score_files(tmp_path, preds, GT3)
    preds = [PRED3[0], pred_row(2, windows=((1, True, 0.5),)), PRED3[2]]
    with pytest.raises(EvaluationError, match="non-number True"):
        score_files(tmp_path, preds, GT3)


def test_empty_saliency_list_names_file_and_line(tmp_path):
    preds = [PRED3[0], PRED3[1], dict(PRED3[2], pred_saliency_scores=[])]
    with pytest.raises(EvaluationError, match=r"preds.jsonl:3 \(qid 3\): 'pred_saliency_scores' "
                                              "is empty"):
        score_files(tmp_path, preds, GT3)


def test_a_later_line_without_a_key_of_the_first_line(tmp_path):
    preds = [PRED3[0], {"qid": 2, "pred_relevant_windows": [[1, 2, 3]]}, PRED3[2]]
    with pytest.raises(EvaluationError, match=r"preds.jsonl:2 \(qid 2\): missing key "
                                              "'pred_saliency_scores'"):
        score_files(tmp_path, preds, GT3)


def test_first_line_decides_what_is_scored(tmp_path):
    preds = [{"qid": 1, "pred_relevant_windows": [[0, 8, 1]]}, PRED3[1], PRED3[2]]
    result = score_files(tmp_path, preds, GT3)
    assert not any(k.startswith("HL") for k in result)  # MR only, like the reference
    with pytest.raises(EvaluationError, match="neither 'pred_relevant_windows' nor"):
        score_files(tmp_path, [{"qid": 1}, PRED3[1], PRED3[2]], GT3)


def test_empty_length_bucket_is_an_error_or_null_never_zero(tmp_path):
    gt = [gt_row(1, [(10, 22)]), gt_row(2, [(10, 30)])]  # middle only
    preds = [pred_row(1), pred_row(2)]
    with pytest.raises(EvaluationError, match=r"length bucket 'short' \(0, 10\] s is empty: "
                                              r"no ground-truth window in \S*gt.jsonl of the 2 "
                                              r"queries scored from \S*preds.jsonl .*"
                                              "--empty-bucket null"):
        score_files(tmp_path, preds, gt)
    with pytest.warns(EvaluationWarning, match=r"in \S*gt.jsonl .* from \S*preds.jsonl .*"
                                               "reported as null"):
        result = score_files(tmp_path, preds, gt, empty_bucket="null")
    assert result["brief"]["MR-short-mAP"] is None and result["brief"]["MR-long-mAP"] is None
    assert set(result["short"]["MR-mAP"].values()) == {None}
    assert set(result["long"]["MR-R1"].values()) == {None}
    # [10, 20] against [10, 22] (IoU 0.83) and [10, 30] (IoU exactly 0.5: inclusive)
    assert result["middle"]["MR-R1"]["0.5"] == 100.0
    assert result["middle"]["MR-R1"]["0.55"] == 50.0
    text = json.dumps(result)
    assert '"MR-short-mAP": null' in text


def test_moment_retrieval_sets_default_to_null_buckets(tmp_path):
    gt = [{"qid": 0, "duration": 30.0, "vid": "ABCDE", "relevant_windows": [[1.0, 6.0]]}]
    preds = [{"qid": 0, "pred_relevant_windows": [[1.0, 6.0, 1.0]]}]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = evaluate_moment_retrieval(preds, gt)
    assert len(caught) == 2  # middle and long are empty
    assert result["brief"]["MR-full-R1@0.7"] == 100.0
    assert result["middle"]["MR-mIoU"] is None
    with pytest.raises(EvaluationError, match="bucket 'middle'"):
        evaluate_moment_retrieval(preds, gt, empty_bucket="error")
    with pytest.raises(EvaluationError, match="bucket 'middle'.*The reference evaluator crashes here; pass "
                                              "--empty-bucket null"):  # QVHighlights: moment_detr's evaluator
        score("qvhighlights", preds, gt)
    # Charades, TACoS, Ego4D: R²-Tuning's evaluator, which does not crash there
    with pytest.raises(EvaluationError) as err:
        score("charades", preds, gt, empty_bucket="error")
    assert "is empty: no ground-truth window" in str(err.value)
    assert ". R²-Tuning's evaluator silently reports the full set's numbers there; pass --empty-bucket null" \
        in str(err.value) and "crashes" not in str(err.value)


def test_ground_truth_problems(tmp_path):
    with pytest.raises(EvaluationError, match=r"gt.jsonl:2 \(qid 1\): qid already on .*gt.jsonl:1"):
        score_files(tmp_path, PRED3, [GT3[0], GT3[0], GT3[1], GT3[2]])
    bad = [GT3[0], dict(GT3[1], relevant_windows=[]), GT3[2]]
    with pytest.raises(EvaluationError, match=r"gt.jsonl:2 \(qid 2\): 'relevant_windows' is empty"):
        score_files(tmp_path, PRED3, bad)
    bad = [GT3[0], GT3[1], dict(GT3[2], relevant_clip_ids=[5, 99])]
    bad[2]["saliency_scores"] = [[1, 1, 1], [2, 2, 2]]
    with pytest.raises(EvaluationError, match=r"gt.jsonl:3 \(qid 3\): relevant_clip_ids holds 99, "
                                              "outside the 30 clips"):
        score_files(tmp_path, PRED3, bad)
    blind = [{"qid": g["qid"], "duration": 60, "query": "?"} for g in GT3]
    with pytest.raises(EvaluationError, match="unlabelled"):
        score_files(tmp_path, PRED3, blind)


@pytest.mark.parametrize("duration", [1e300, float("inf"), 10**400, 2_000_004],
                         ids=["1e300", "inf", "10**400", "just-past-the-limit"])
def test_implausible_durations_name_file_line_and_qid(tmp_path, duration):
    """duration // 2 clips are allocated densely: a huge value would overflow (a traceback) or
    take gigabytes (1e9 s: about 20 GB; not tried here, so that a regression cannot exhaust the
    machine). json reads Infinity, and an integer of any size."""
    bad = [GT3[0], dict(GT3[1], duration=duration), GT3[2]]
    p = tmp_path / "gt.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in bad))  # 10**400 and Infinity as json has them
    preds = write(tmp_path / "preds.jsonl", PRED3)
    with pytest.raises(EvaluationError, match=r"gt.jsonl:2 \(qid 2\): 'duration' .* s is not a "
                                              r"plausible video length .* at most 1,000,000\)"):
        score("qvhighlights", read_jsonl(preds), read_jsonl(p), pred_source=str(preds),
              gt_source=str(p))


def test_the_clip_limit_is_inclusive(tmp_path, monkeypatch):
    from r2.evaluate import qvhighlights

    monkeypatch.setattr(qvhighlights, "MAX_CLIPS", 40)
    ok = [GT3[0], dict(GT3[1], duration=81.9), GT3[2]]  # 40 clips
    assert score_files(tmp_path, PRED3, ok)["HL-min-VeryGood"]["HL-Hit1"] == 0.0
    with pytest.raises(EvaluationError, match=r"gt.jsonl:2 \(qid 2\): 'duration' 82 s .*at most "
                                              "40"):
        score_files(tmp_path, PRED3, [GT3[0], dict(GT3[1], duration=82), GT3[2]])


def test_malformed_jsonl_lines_name_file_and_line(tmp_path):
    p = tmp_path / "preds.jsonl"
    p.write_text('{"qid": 1}\n{"qid": 2,}\n')
    with pytest.raises(EvaluationError, match=r"preds.jsonl:2: invalid JSON: "):
        read_jsonl(p)
    p.write_text('{"qid": 1}\n\n{"qid": 2}')
    with pytest.raises(EvaluationError, match=r"preds.jsonl:2: blank line"):
        read_jsonl(p)
    p.write_text('{"qid": 1}\n[1, 2]\n')
    with pytest.raises(EvaluationError, match=r"preds.jsonl:2: expected a JSON object"):
        read_jsonl(p)
    p.write_text('{"qid": 1}\n\n')  # a second newline at the end is a blank line too
    with pytest.raises(EvaluationError, match=r"preds.jsonl:2: blank line"):
        read_jsonl(p)
    with pytest.raises(EvaluationError, match="file not found"):
        read_jsonl(tmp_path / "nope.jsonl")


def test_errors_are_user_errors():
    assert EvaluationError.user_error is True
    assert issubclass(EvaluationError, ValueError)


def test_unknown_dataset_and_option():
    with pytest.raises(EvaluationError, match="unknown data set 'imagenet'"):
        score("imagenet", PRED3, GT3)
    with pytest.raises(TypeError, match="top_k"):
        score("qvhighlights", PRED3, GT3, top_k=3)
