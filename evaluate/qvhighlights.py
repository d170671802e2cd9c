"""QVHighlights: moment retrieval + highlight detection, exactly as moment_detr's
``standalone_eval/eval.py`` (the benchmark's reference), semantics in
``shared/reference/metrics.md``.

Highlight detection (§4): per query a (duration // 2, A) matrix of annotator scores (0 outside
``relevant_clip_ids``), thresholded per level (Fair >= 2, Good >= 3, VeryGood >= 4) per
annotator. HIT@1: the first maximum of the *raw* prediction list, a hit if any annotator labels
that clip positive. mAP: the prediction cut or zero-padded to the clip count, and for each
annotator the interpolated AP of ``get_ap`` (the unweighted mean over the distinct recall levels
of the best precision at that recall or above).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from . import moment_retrieval as mr
from ._common import (Joined, Source, _finite, fmt2, get_list, join, number_matrix,
                      number_vectors, ordered_row_sums, padded, warn)
from .errors import EvaluationError

__all__ = ["evaluate_qvhighlights", "highlight_sections", "HL_LEVELS"]

SALIENCY = "pred_saliency_scores"
#: (name, minimum score) of the three "HL-min-*" levels.
HL_LEVELS = (("Fair", 2), ("Good", 3), ("VeryGood", 4))
CLIP_SECONDS = 2
#: Clips per video that highlight detection accepts (~23 days of video; QVHighlights has 75).
#: The label matrices are dense, so a 'duration' in milliseconds or a typo would otherwise
#: allocate gigabytes (or overflow) before anything is scored.
MAX_CLIPS = 1_000_000


def gt_has_saliency(rows: list) -> bool:
    return any(type(r) is dict and "saliency_scores" in r for r in rows)


def _gt_score_matrices(j: Joined):
    """Stacked GT score rows (sum of clips, A), the clip count and row offset per query."""
    gsrc = j.gsrc
    n_clips = np.zeros(j.n, np.int64)
    ids_lists, score_lists = [], []
    for k, qid in enumerate(j.qids):
        i = j.gt_index[k]
        row = j.gt_rows[i]
        if "duration" not in row:
            raise EvaluationError(f"{gsrc.at(i, qid)}: missing key 'duration' (seconds; highlight "
                                  "detection scores duration // 2 clips)")
        duration = row["duration"]
        if isinstance(duration, bool) or not isinstance(duration, (int, float)):
            raise EvaluationError(f"{gsrc.at(i, qid)}: 'duration' must be a number, got "
                                  f"{duration!r}")
        if not _finite(duration) or duration / CLIP_SECONDS >= MAX_CLIPS + 1:
            raise EvaluationError(
                f"{gsrc.at(i, qid)}: 'duration' {duration!r} s is not a plausible video length "
                f"(highlight detection scores duration // {CLIP_SECONDS} clips, at most "
                f"{MAX_CLIPS:,}); it must be the video's length in seconds")
        n = int(duration / CLIP_SECONDS)
        if n < 1:
            raise EvaluationError(f"{gsrc.at(i, qid)}: duration {duration!r} s holds no whole "
                                  f"{CLIP_SECONDS}-s clip; highlight detection needs at least one")
        n_clips[k] = n
        ids = get_list(row, "relevant_clip_ids", i, qid, gsrc, nonempty=False,
                       what="highlight detection needs the annotated clip ids")
        scores = get_list(row, "saliency_scores", i, qid, gsrc, nonempty=False,
                          what="highlight detection needs the annotators' scores")
        if len(ids) != len(scores):
            raise EvaluationError(f"{gsrc.at(i, qid)}: {len(ids)} relevant_clip_ids but "
                                  f"{len(scores)} saliency_scores rows; they must pair up")
        ids_lists.append(ids)
        score_lists.append(scores)
    first_row = next((s for scores in score_lists for s in scores), [0, 0, 0])
    A = len(first_row) if isinstance(first_row, (list, tuple)) else 0
    if A < 1:
        raise EvaluationError(f"{gsrc.name}: saliency_scores rows must be lists of annotator "
                              f"scores, found {first_row!r}")
    scores = number_matrix(score_lists, A, "saliency_scores", gsrc, j.gt_index, j.qids)
    ids, n_ids = number_vectors(ids_lists, "relevant_clip_ids", gsrc, j.gt_index, j.qids)
    if len(ids) and not np.array_equal(ids, np.round(ids)):
        bad = int(np.nonzero(ids != np.round(ids))[0][0])
        k = int(np.searchsorted(np.cumsum(n_ids), bad, side="right"))
        raise EvaluationError(f"{gsrc.at(j.gt_index[k], j.qids[k])}: relevant_clip_ids must be "
                              "whole numbers")
    ids = ids.astype(np.int64)
    owner = np.repeat(np.arange(j.n), n_ids)
    n_of = n_clips[owner]
    bad = (ids < -n_of) | (ids >= n_of)
    if bad.any():
        k = int(owner[np.argmax(bad)])
        raise EvaluationError(
            f"{gsrc.at(j.gt_index[k], j.qids[k])}: relevant_clip_ids holds "
            f"{int(ids[np.argmax(bad)])}, outside the {n_clips[k]} clips of a "
            f"{j.gt_rows[j.gt_index[k]]['duration']}-s video")
    offsets = np.concatenate(([0], np.cumsum(n_clips)[:-1]))
    stacked = np.zeros((int(n_clips.sum()), A))
    stacked[offsets[owner] + np.where(ids < 0, ids + n_of, ids)] = scores  # numpy: last one wins
    return stacked, n_clips, offsets, A


def _prediction_scores(j: Joined):
    psrc = j.psrc
    values = []
    for k, qid in enumerate(j.qids):
        for i in j.lines[k]:  # every line must carry the key (the reference: KeyError)
            get_list(j.pred_rows[i], SALIENCY, i, qid, psrc, nonempty=True,
                     what="highlight detection needs one score per clip")
        values.append(get_list(j.pred_rows[j.last[k]], SALIENCY, j.last[k], qid, psrc,
                               nonempty=True, what="highlight detection needs one score per clip"))
    return number_vectors(values, SALIENCY, psrc, j.last, j.qids)


def interpolated_aps(scores: np.ndarray, gt_scores: np.ndarray, minima) -> list:
    """``get_ap`` for many rows at once, at several label thresholds.

    ``scores`` (N, n) predictions, ``gt_scores`` (N, n, A) raw annotator scores; for each
    ``m`` in ``minima`` the labels are ``gt_scores >= m`` and the result is an (N, A) array.
    All-negative labels give 0, all-positive 1; otherwise the mean, over the distinct recall
    levels (tie groups of scores that hold a positive), of the largest precision at that
    recall or above, summed in scikit-learn's order (descending recall).
    """
    N, n = scores.shape
    A = gt_scores.shape[2]
    order = np.argsort(-scores, axis=1, kind="stable")  # the order inside a tie is irrelevant
    ranked = np.take_along_axis(scores, order, axis=1)
    boundary = np.ones((N, n), bool)  # last position of each group of equal scores
    boundary[:, :-1] = ranked[:, :-1] != ranked[:, 1:]
    B = np.broadcast_to(boundary[:, None, :], (N, A, n))
    ranked_gt = np.take_along_axis(gt_scores, order[:, :, None], axis=1).transpose(0, 2, 1)
    ranks = np.arange(1, n + 1)
    results = []
    for minimum in minima:
        tp = np.cumsum(ranked_gt >= minimum, axis=2, dtype=np.int32)  # (N, A, n)
        precision = np.where(B, tp / ranks, 0.0)
        best_after = np.maximum.accumulate(precision[:, :, ::-1], axis=2)  # descending position
        tp_at_b = np.maximum.accumulate(np.where(B, tp, 0), axis=2)
        new_level = B.copy()
        new_level[:, :, 0] &= tp[:, :, 0] > 0
        new_level[:, :, 1:] &= tp[:, :, 1:] > tp_at_b[:, :, :-1]
        sums, counts = ordered_row_sums(best_after.reshape(N * A, n),
                                        new_level[:, :, ::-1].reshape(N * A, n))
        with np.errstate(invalid="ignore", divide="ignore"):
            ap = (sums / counts).reshape(N, A)
        positives = tp[:, :, -1]
        ap[positives == 0] = 0.0
        ap[positives == n] = 1.0
        results.append(ap)
    return results


def highlight_sections(j: Joined, details: dict | None = None) -> dict:
    """``{"HL-min-Fair": {"HL-mAP", "HL-Hit1"}, "HL-min-Good": ..., "HL-min-VeryGood": ...}``."""
    stacked, n_clips, offsets, A = _gt_score_matrices(j)
    flat, lengths = _prediction_scores(j)
    raw = padded(flat, lengths, -np.inf)
    top = np.argmax(raw, axis=1)  # first maximum of the whole raw list
    inside = top < n_clips
    top_rows = np.zeros((j.n, A))
    top_rows[inside] = stacked[offsets[inside] + top[inside]]
    minima = [m for _, m in HL_LEVELS]
    aps = [np.zeros((j.n, A)) for _ in minima]
    for n in np.unique(n_clips):  # per clip count: predictions cut or zero-padded to it
        members = np.nonzero(n_clips == n)[0]
        s = np.zeros((len(members), max(int(n), raw.shape[1])))
        s[:, :raw.shape[1]] = raw[members]
        s = s[:, :n]
        s[np.isneginf(s)] = 0.0  # beyond the list: the reference pads with 0.0
        rows = offsets[members][:, None] + np.arange(n)[None, :]
        for ap, level in zip(aps, interpolated_aps(s, stacked[rows], minima)):
            ap[members] = level
    sections = {}
    for (name, minimum), ap in zip(HL_LEVELS, aps):
        # np.mean over (n_queries, A) arrays in prediction-file order, as the reference's
        # ap_scores / hit_scores: the sum's rounding depends on the order, so keep it
        hits = (top_rows >= minimum).astype(float)  # (n_queries, A)
        sections[f"HL-min-{name}"] = OrderedDict([
            ("HL-mAP", fmt2(100 * np.mean(ap))),
            ("HL-Hit1", fmt2(100 * np.mean(np.max(hits, 1)))),
        ])
    if details is not None:
        details["annotators"] = A
        details["queries"] = j.n
    return sections


def evaluate_qvhighlights(predictions: list, ground_truth: list, *, subset: bool = False,
                          empty_bucket: str = "error", extended: bool = False,
                          pred_source=None, gt_source=None,
                          details: dict | None = None) -> OrderedDict:
    """QVHighlights metrics in the reference JSON layout.

    ``predictions``: rows with ``qid`` and ``pred_relevant_windows`` and/or
    ``pred_saliency_scores`` (the *first* row decides which families run, as in the
    reference). ``ground_truth``: QVHighlights rows (``qid``, ``duration``,
    ``relevant_windows``, ``relevant_clip_ids``, ``saliency_scores``).

    Default layout: moment_detr's ``eval_submission`` (``brief``, ``HL-min-*``, ``full``,
    ``long``, ``middle``, ``short``), byte-identical once written with
    :func:`r2.evaluate.write_metrics_json`. ``extended=True``: R²-Tuning's ``vtg_eval`` layout
    instead (adds R1 from 0.3, R5, mIoU; long bucket unbounded) — same shared numbers.

    ``subset``: score only the queries present in both (else the qid sets must match).
    ``empty_bucket``: ``"error"`` (default) or ``"null"`` (null values and a warning).
    ``pred_source`` / ``gt_source``: file names for messages (rows then map to lines).
    """
    psrc = Source.of(pred_source, "predictions")
    gsrc = Source.of(gt_source, "ground truth")
    j = join(predictions, ground_truth, psrc, gsrc, subset)
    first = predictions[j.pred_index[0]]  # the reference looks at its first (kept) line
    do_mr = mr.WINDOWS in first
    do_hd = SALIENCY in first
    if not (do_mr or do_hd):
        raise EvaluationError(
            f"{psrc.at(j.pred_index[0], first['qid'])}: the first prediction line has neither "
            f"{mr.WINDOWS!r} nor {SALIENCY!r}; the reference decides from this line what to score")
    if do_mr and not mr.gt_has_windows(ground_truth):
        if not do_hd or not gt_has_saliency(ground_truth):
            raise EvaluationError(f"{gsrc.name}: no query has 'relevant_windows' or "
                                  "'saliency_scores': is this an unlabelled (test) file?")
        warn(f"{gsrc.name} has no 'relevant_windows': moment retrieval is not scored")
        do_mr = False
    if do_hd and not gt_has_saliency(ground_truth):
        if not do_mr:
            raise EvaluationError(f"{gsrc.name}: no query has 'saliency_scores' (and the "
                                  "predictions have no windows): nothing to score")
        if not extended:
            warn(f"{gsrc.name} has no 'saliency_scores': highlight detection is not scored")
        do_hd = False
    brief = OrderedDict()
    sections = {}
    if do_mr:
        mr_sections = mr.moment_retrieval_sections(j, r2_style=extended,
                                                   empty_bucket=empty_bucket, details=details)
        brief.update(mr.mr_brief(mr_sections, r2_style=extended))
        sections.update(mr_sections)
    if do_hd:
        hl = highlight_sections(j, details=details)
        for key, values in hl.items():
            for sub, value in values.items():
                brief[f"{key}-{sub.split('-')[1]}"] = value
        sections.update(hl)
    result = OrderedDict()
    result["brief"] = brief
    result.update(sorted(sections.items(), key=lambda kv: kv[0]))
    return result
