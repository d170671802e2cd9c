"""Shared by the YouTube Highlights and TVSum evaluators (R²-Tuning's ``evaluate`` methods):
per-video rows grouped by domain, per-clip annotator scores, and the trapezoid AP."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from ._common import Joined, Source, get_list, join, number_matrix, number_vectors, round5
from .errors import EvaluationError

SALIENCY = "pred_saliency_scores"


def sequential_mean(values) -> float:
    """``sum(values) / len(values)`` with plain left-to-right float addition (the reference's
    Python ``sum``; Python >= 3.12 would compensate, so the loop is spelled out)."""
    total = 0
    for v in values:
        total += float(v)
    return total / len(values)


def trapezoid_aps(ranked: np.ndarray, num_gt: np.ndarray) -> np.ndarray:
    """R²-Tuning's AP of a ranked 0/1 label list, for many rows (N, K) at once.

    Walking down the ranking from recall 0 and precision 1, add
    ``(rec_j - rec_{j-1}) * (prc_{j-1} + prc_j) / 2`` with ``rec_j = hits_j / num_gt`` and
    ``prc_j = hits_j / j``; 0 where ``num_gt`` is 0. Padding with label 0 after a row's end
    adds exact zeros. Sums are sequential, as the reference's loop.
    """
    N, K = ranked.shape
    hits = np.cumsum(ranked, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        rec = hits / num_gt[:, None]
    prc = hits / np.arange(1, K + 1)
    prev_rec = np.zeros_like(rec)
    prev_rec[:, 1:] = rec[:, :-1]
    prev_prc = np.ones_like(prc)
    prev_prc[:, 1:] = prc[:, :-1]
    terms = (rec - prev_rec) * (prev_prc + prc) / 2
    ap = np.cumsum(terms, axis=1)[:, -1] if K else np.zeros(N)
    return np.where(num_gt > 0, ap, 0.0)


def ranking(scores: np.ndarray) -> np.ndarray:
    """Clip indices by descending predicted saliency; ties by clip index (stable). The
    reference uses torch.argsort, whose order among exact ties is unspecified."""
    return np.argsort(-scores, kind="stable")


class VideoData:
    """Joined rows of a per-domain highlight benchmark: for each video its domain, the
    (T, A) raw annotator scores and the predicted saliency list."""

    def __init__(self, j: Joined, gt_matrices, predictions, domains):
        self.j = j
        self.gt = gt_matrices
        self.pred = predictions
        self.domains = domains


def load_videos(predictions: list, ground_truth: list, *, subset: bool, pred_source, gt_source,
                annotators: int | None, what: str) -> VideoData:
    psrc = Source.of(pred_source, "predictions")
    gsrc = Source.of(gt_source, "ground truth")
    j = join(predictions, ground_truth, psrc, gsrc, subset)
    gt_mats, domains = [], []
    for k, qid in enumerate(j.qids):
        i = j.gt_index[k]
        row = j.gt_rows[i]
        ids = get_list(row, "relevant_clip_ids", i, qid, gsrc, nonempty=True,
                       what=f"{what} needs the clip ids (all clips, 0..T-1)")
        scores = get_list(row, "saliency_scores", i, qid, gsrc, nonempty=True,
                          what=f"{what} needs one row of annotator scores per clip")
        if len(ids) != len(scores):
            raise EvaluationError(f"{gsrc.at(i, qid)}: {len(ids)} relevant_clip_ids but "
                                  f"{len(scores)} saliency_scores rows; they must pair up")
        width = len(scores[0]) if isinstance(scores[0], (list, tuple)) else 0
        if annotators is not None and width != annotators:
            raise EvaluationError(f"{gsrc.at(i, qid)}: saliency_scores rows have {width} values; "
                                  f"{what} has {annotators} per clip")
        mat = number_matrix([scores], max(width, 1), "saliency_scores", gsrc, [i], [qid])
        clip_ids, _ = number_vectors([ids], "relevant_clip_ids", gsrc, [i], [qid])
        if not np.array_equal(np.sort(clip_ids), np.arange(len(clip_ids))):
            raise EvaluationError(f"{gsrc.at(i, qid)}: relevant_clip_ids must list every clip "
                                  f"0..T-1 once ({what} scores whole videos)")
        full = np.empty_like(mat)
        full[clip_ids.astype(np.int64)] = mat
        gt_mats.append(full)
        domain = row.get("domain")
        domains.append("all" if domain is None else str(domain))
    preds = []
    for k, qid in enumerate(j.qids):
        for i in j.lines[k]:
            get_list(j.pred_rows[i], SALIENCY, i, qid, psrc, nonempty=True,
                     what=f"{what} needs one predicted score per clip")
        i = j.last[k]
        values = get_list(j.pred_rows[i], SALIENCY, i, qid, psrc, nonempty=True,
                          what=f"{what} needs one predicted score per clip")
        flat, _ = number_vectors([values], SALIENCY, psrc, [i], [qid])
        preds.append(flat)
    return VideoData(j, gt_mats, preds, domains)


def in_ground_truth_order(j: Joined) -> list[int]:
    """The indices ``k`` of ``j.qids`` in ground-truth order: R²-Tuning sums a domain's
    per-video APs in its data set's order (the domain's split list), so the last bits of the
    mean, and now and then its 5th decimal, do not depend on the order of the prediction file."""
    return sorted(range(j.n), key=lambda k: j.gt_index[k])


def domain_order(domains: list, canonical: tuple) -> list:
    present = list(OrderedDict.fromkeys(domains))
    known = [d for d in canonical if d in present]
    return known + [d for d in present if d not in canonical]


def domain_layout(per_domain: "OrderedDict[str, tuple[float, int]]",
                  details: dict | None = None) -> OrderedDict:
    """``{"mAP": mean over domains, "domains": {name: {"mAP": x, "videos": n}}}``; fractions
    rounded to 5 decimals as R²-Tuning prints them (one domain: ``mAP`` is that domain's).

    ``details`` gets the unrounded fractions under ``"unrounded"`` (``{"mAP": x, "domains":
    {name: x}}``), so that a percent table rounds once (74.26499 % is 74.26, while the JSON's
    0.74265 would print as 74.27)."""
    mean = sequential_mean([v for v, _ in per_domain.values()])
    out = OrderedDict()
    out["mAP"] = round5(mean)
    out["domains"] = OrderedDict(
        (name, OrderedDict([("mAP", round5(value)), ("videos", count)]))
        for name, (value, count) in per_domain.items())
    if details is not None:
        details["unrounded"] = {"mAP": mean,
                                "domains": {name: v for name, (v, _) in per_domain.items()}}
    return out
