"""Moment retrieval metrics: mAP over IoU 0.5:0.95, R1 / R5 at IoU thresholds, mIoU, per
length bucket; and the Charades-STA / TACoS / Ego4D-NLQ evaluator.

Semantics (``shared/reference/metrics.md`` §3, ``datasets.md`` §3.1):

* mAP: per query, each prediction line is cut to its first 10 windows *in file order*, the
  lines are joined, stably sorted by score (ties keep file order) and greedily matched to the
  GT windows per threshold (GT in descending *set* IoU, NaN first; IoU >= t, inclusive); AP is
  the interpolated area of ``interpolated_precision_recall``; mean over queries, then over
  thresholds.
* R1: the *first listed* window of the query's last line, against the GT window of largest set
  IoU (first NaN, else first maximum), scored by the *hull* IoU. mIoU: mean of that IoU.
* R5 (R²-Tuning): of the first 5 listed windows and all GT windows, the pair of largest set IoU
  (NaN counted as 0; first pair in prediction-major order), scored by the hull IoU.

Everything is vectorised over queries; the arithmetic follows the reference step by step so that
even unrounded values agree to the last bit (the mean over queries in first-appearance order,
the order the reference's worker pool returns up to 50 queries in).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from ._common import (QVH_THRESHOLDS, R2_THRESHOLDS, Joined, Source, column_means_in_row_order,
                      fmt2, get_list, join, number_matrix, ordered_row_sums, warn)
from .errors import EvaluationError

__all__ = ["evaluate_moment_retrieval", "MR_BUCKETS_QVH", "MR_BUCKETS_R2"]

WINDOWS = "pred_relevant_windows"
MAX_PRED_WINDOWS = 10  # the reference's top-10 cut (in file order) for mAP
R5_WINDOWS = 5

#: (name, (min_len, max_len]) with "full" = no filter, as in moment_detr's evaluator.
MR_BUCKETS_QVH = (("short", (0, 10)), ("middle", (10, 30)), ("long", (30, 150)), ("full", None))
#: R²-Tuning / UniVTG: long and full are unbounded above.
MR_BUCKETS_R2 = (("short", (0, 10)), ("middle", (10, 30)), ("long", (30, float("inf"))),
                 ("full", None))

EMPTY_BUCKET_CHOICES = ("error", "null")


# --------------------------------------------------------------------------- inputs


@dataclass
class MRData:
    """Per distinct predicted qid (first-appearance order), padded arrays.

    c_*: mAP candidates (Q, R), already in ranked order; f_*: the first 5 listed windows of the
    last line (Q, 5); g_*: ground-truth windows (Q, G).
    """

    c_s: np.ndarray
    c_e: np.ndarray
    c_valid: np.ndarray
    f_s: np.ndarray
    f_e: np.ndarray
    f_valid: np.ndarray
    g_s: np.ndarray
    g_e: np.ndarray
    g_valid: np.ndarray


def gt_has_windows(rows: list) -> bool:
    return any(type(r) is dict and r.get("relevant_windows") for r in rows)


def build_mr_data(j: Joined) -> MRData:
    psrc, gsrc = j.psrc, j.gsrc
    # ---- predictions: every line of every kept qid, cut to its first 10 windows
    line_values, line_index, line_qid, line_query = [], [], [], []
    for k, qid in enumerate(j.qids):
        for i in j.lines[k]:
            ws = get_list(j.pred_rows[i], WINDOWS, i, qid, psrc, nonempty=True,
                          what="moment retrieval needs at least one [start, end, score] window")
            line_values.append(ws[:MAX_PRED_WINDOWS])
            line_index.append(i)
            line_qid.append(qid)
            line_query.append(k)
    arr = number_matrix(line_values, 3, WINDOWS, psrc, line_index, line_qid, at_least=True)
    n_per_line = np.fromiter((len(v) for v in line_values), np.int64, len(line_values))
    line_query = np.asarray(line_query, np.int64)
    Q = j.n
    cand_q = np.repeat(line_query, n_per_line)
    # stable sort by score, highest first, within each query (ties keep file order)
    order = np.lexsort((-arr[:, 2], cand_q))
    per_query = np.bincount(cand_q, minlength=Q)
    starts = np.concatenate(([0], np.cumsum(per_query)[:-1]))
    rank = np.arange(len(cand_q)) - starts[cand_q[order]]
    R = int(per_query.max())
    c_s = np.zeros((Q, R))
    c_e = np.zeros((Q, R))
    c_valid = np.zeros((Q, R), bool)
    qo = cand_q[order]
    c_s[qo, rank] = arr[order, 0]
    c_e[qo, rank] = arr[order, 1]
    c_valid[qo, rank] = True
    # first 5 listed windows of each query's last line (the last line is its last entry)
    line_start = np.concatenate(([0], np.cumsum(n_per_line)[:-1]))
    last_line = np.concatenate((np.nonzero(np.diff(line_query))[0], [len(line_query) - 1]))
    f_s = np.zeros((Q, R5_WINDOWS))
    f_e = np.zeros((Q, R5_WINDOWS))
    f_valid = np.zeros((Q, R5_WINDOWS), bool)
    for slot in range(R5_WINDOWS):
        ok = n_per_line[last_line] > slot
        src_rows = line_start[last_line[ok]] + slot
        f_s[ok, slot] = arr[src_rows, 0]
        f_e[ok, slot] = arr[src_rows, 1]
        f_valid[ok, slot] = True
    # ---- ground truth windows
    g_values, g_qids = [], []
    for k, qid in enumerate(j.qids):
        i = j.gt_index[k]
        ws = get_list(j.gt_rows[i], "relevant_windows", i, qid, gsrc, nonempty=False,
                      what="moment retrieval needs the annotated [start, end] windows")
        if not ws:
            raise EvaluationError(
                f"{gsrc.at(i, qid)}: 'relevant_windows' is empty; moment retrieval needs at least "
                "one annotated window per query (the reference evaluator crashes here)")
        g_values.append(ws)
        g_qids.append(qid)
    garr = number_matrix(g_values, 2, "relevant_windows", gsrc, j.gt_index, g_qids,
                         at_least=True)
    n_gt = np.fromiter((len(v) for v in g_values), np.int64, Q)
    G = int(n_gt.max())
    g_valid = np.arange(G)[None, :] < n_gt[:, None]
    g_s = np.zeros((Q, G))
    g_e = np.zeros((Q, G))
    g_s[g_valid] = garr[:, 0]
    g_e[g_valid] = garr[:, 1]
    return MRData(c_s, c_e, c_valid, f_s, f_e, f_valid, g_s, g_e, g_valid)


# --------------------------------------------------------------------------- IoUs


def set_iou(ps, pe, gs, ge):
    """The reference's cross IoU: inter / (len_p + len_g - inter), no guard (0/0 = NaN)."""
    inter = np.clip(np.minimum(pe, ge) - np.maximum(ps, gs), 0, None)
    union = (pe - ps) + (ge - gs) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return inter / union


def hull_iou(ps, pe, gs, ge):
    """The reference's paired IoU: inter / (max end - min start), 0 where that span is 0."""
    inter = np.maximum(0, np.minimum(pe, ge) - np.maximum(ps, gs))
    hull = np.maximum(pe, ge) - np.minimum(ps, gs)
    return np.divide(inter, hull, out=np.zeros_like(inter), where=hull != 0)


# --------------------------------------------------------------------------- metrics


def average_precisions(c_s, c_e, c_valid, g_s, g_e, g_valid, thresholds) -> np.ndarray:
    """Per-query AP at each threshold, shape (Q, T) (``compute_average_precision_detection``
    followed by ``interpolated_precision_recall``), for candidates already in ranked order.

    Queries are processed in groups of similar GT counts so that padding stays small.
    """
    Q = len(c_s)
    out = np.zeros((Q, len(thresholds)))
    n_gt = g_valid.sum(axis=1)
    for lo, hi in ((0, 1), (1, 2), (2, 4), (4, 8), (8, None)):
        members = np.nonzero((n_gt > lo) & ((n_gt <= hi) if hi else True))[0]
        if len(members):
            G = int(n_gt[members].max())
            out[members] = _average_precisions(c_s[members], c_e[members], c_valid[members],
                                               g_s[members, :G], g_e[members, :G],
                                               g_valid[members, :G], thresholds)
    return out


def _average_precisions(c_s, c_e, c_valid, g_s, g_e, g_valid, thresholds) -> np.ndarray:
    Q, R = c_s.shape
    G = g_s.shape[1]
    thr = np.asarray(thresholds, float)
    T = len(thr)
    iou = set_iou(c_s[:, :, None], c_e[:, :, None], g_s[:, None, :], g_e[:, None, :])  # (Q,R,G)
    iou = np.where(g_valid[:, None, :], iou, -np.inf)
    # Each prediction walks the GT windows in descending IoU, NaN first (the reverse of an
    # ascending argsort), stops at the first IoU < t (false positive) and takes the first
    # untaken window before that. So: among untaken windows with IoU >= t or NaN, the one
    # walked first.
    rank = walk_ranks(iou, g_valid.sum(axis=1))
    nan = np.isnan(iou)
    taken = np.zeros((Q, T, G), bool)
    tp = np.zeros((Q, T, R), bool)
    for r in range(R):
        elig = ((iou[:, r, None, :] >= thr[None, :, None]) | nan[:, r, None, :]) & ~taken
        key = np.where(elig, rank[:, r, None, :], G)  # (Q, T, G)
        g = key.argmin(axis=2)
        has = elig.any(axis=2) & c_valid[:, r, None]  # (Q, T)
        qi, ti = np.nonzero(has)
        taken[qi, ti, g[qi, ti]] = True
        tp[:, :, r] = has
    fp = c_valid[:, None, :] & ~tp
    tpc = np.cumsum(tp, axis=2).astype(float)
    fpc = np.cumsum(fp, axis=2).astype(float)
    n_pos = g_valid.sum(axis=1).astype(float)[:, None, None]
    valid = np.broadcast_to(c_valid[:, None, :], tpc.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = tpc / n_pos
        precision = tpc / (tpc + fpc)
    # interpolated_precision_recall on [0, p..., 0] / [0, r..., 1]; padding beyond a query's
    # own windows continues with recall 1 and precision 0, which adds nothing.
    mrec = np.ones((Q, T, R + 2))
    mrec[:, :, 0] = 0
    mrec[:, :, 1:R + 1] = np.where(valid, recall, 1.0)
    mprec = np.zeros((Q, T, R + 2))
    mprec[:, :, 1:R + 1] = np.where(valid, precision, 0.0)
    mprec = np.maximum.accumulate(mprec[:, :, ::-1], axis=2)[:, :, ::-1]
    change = mrec[:, :, 1:] != mrec[:, :, :-1]
    terms = (mrec[:, :, 1:] - mrec[:, :, :-1]) * mprec[:, :, 1:]
    sums, _ = ordered_row_sums(terms.reshape(Q * T, R + 1), change.reshape(Q * T, R + 1))
    return sums.reshape(Q, T)


def walk_ranks(iou: np.ndarray, n_gt: np.ndarray) -> np.ndarray:
    """(Q, R, G) position of each GT window in each prediction's walk: the reference's
    ``tiou_arr.argsort()[::-1]`` over the query's own ``n_gt`` IoUs (padding walked last).

    Equal IoUs (two NaNs, or two windows of equal IoU) come in whatever order numpy's default
    sort leaves them, which depends on the array's length and, with SIMD sorting, on the CPU;
    so every row is sorted exactly as the reference sorts it, unpadded, with numpy's default
    kind, and queries are grouped by their exact GT count to keep that vectorised.
    """
    Q, R, G = iou.shape
    rank = np.empty((Q, R, G), dtype=np.intp)
    for n in np.unique(n_gt):
        members = np.nonzero(n_gt == n)[0]
        order = np.argsort(iou[members][:, :, :n], axis=2)[:, :, ::-1]  # (q, R, n)
        walk = np.empty((len(members), R, n), dtype=np.intp)
        np.put_along_axis(walk, order, np.arange(n), axis=2)
        rank[members, :, :n] = walk
        rank[members, :, n:] = np.arange(n, G)
    return rank


def top1_ious(d: MRData, b: "Bucket") -> np.ndarray:
    """Hull IoU of the first listed window with its best GT window (R1 / mIoU)."""
    ps, pe = d.f_s[b.sel, 0], d.f_e[b.sel, 0]
    gs, ge = b.g_s, b.g_e
    iou = set_iou(ps[:, None], pe[:, None], gs, ge)
    iou = np.where(b.g_valid, iou, -np.inf)
    best = np.argmax(iou, axis=1)  # first NaN if any, else first maximum
    rows = np.arange(len(b.sel))
    return hull_iou(ps, pe, gs[rows, best], ge[rows, best])


def top5_ious(d: MRData, b: "Bucket") -> np.ndarray:
    """Hull IoU of the best (first 5 listed windows x GT) pair by set IoU (R²-Tuning's R5)."""
    ps, pe, pv = d.f_s[b.sel], d.f_e[b.sel], d.f_valid[b.sel]
    gs, ge, gmask = b.g_s, b.g_e, b.g_valid
    iou = set_iou(ps[:, :, None], pe[:, :, None], gs[:, None, :], ge[:, None, :])
    iou = np.where(np.isnan(iou), 0.0, iou)
    iou = np.where(pv[:, :, None] & gmask[:, None, :], iou, -np.inf)
    n, P, G = iou.shape
    flat = np.argmax(iou.reshape(n, P * G), axis=1)  # first maximum, prediction-major
    pi, gi = np.divmod(flat, G)
    rows = np.arange(n)
    return hull_iou(ps[rows, pi], pe[rows, pi], gs[rows, gi], ge[rows, gi])


def recall_at(ious: np.ndarray, thresholds) -> OrderedDict:
    # a mean of 0/1 values: exact in any order
    return OrderedDict((str(t), fmt2(np.mean(ious >= t) * 100)) for t in thresholds)


class Bucket:
    """The queries of a length bucket (indices into MRData) and their in-bucket GT windows,
    compacted to the left in their original order: g_s, g_e, g_valid (n, G)."""

    def __init__(self, d: MRData, bounds):
        if bounds is None:
            self.sel = np.arange(len(d.g_s))
            self.g_s, self.g_e, self.g_valid = d.g_s, d.g_e, d.g_valid
            return
        lo, hi = bounds
        length = d.g_e - d.g_s
        inb = d.g_valid & (lo < length) & (length <= hi)
        self.sel = sel = np.nonzero(inb.any(axis=1))[0]
        inb = inb[sel]
        G = int(inb.sum(axis=1).max(initial=0))
        rows, cols = np.nonzero(inb)
        dest = (np.cumsum(inb, axis=1) - 1)[rows, cols]
        self.g_s = np.zeros((len(sel), G))
        self.g_e = np.zeros((len(sel), G))
        self.g_valid = np.zeros((len(sel), G), bool)
        self.g_s[rows, dest] = d.g_s[sel][rows, cols]
        self.g_e[rows, dest] = d.g_e[sel][rows, cols]
        self.g_valid[rows, dest] = True


def bucket_metrics(d: MRData, b: Bucket, r1_thresholds, extras: bool) -> OrderedDict:
    """One length section: MR-mAP (+average) and MR-R1; with ``extras`` also mIoU and R5."""
    sel = b.sel
    ap = average_precisions(d.c_s[sel], d.c_e[sel], d.c_valid[sel], b.g_s, b.g_e, b.g_valid,
                            QVH_THRESHOLDS)
    # np.mean over queries (rows in first-appearance order), then over the 10 thresholds,
    # as the reference
    ap_thds = column_means_in_row_order(ap)  # (T,)
    mr_map = OrderedDict((str(t), v) for t, v in zip(QVH_THRESHOLDS, ap_thds))
    mr_map["average"] = np.mean(ap_thds)
    mr_map = OrderedDict((k, fmt2(100 * v)) for k, v in mr_map.items())
    r1 = top1_ious(d, b)  # (n,) in prediction-file order, as the reference's
    out = OrderedDict()
    if extras:
        out["MR-mIoU"] = fmt2(np.mean(r1) * 100)
    out["MR-mAP"] = mr_map
    out["MR-R1"] = recall_at(r1, r1_thresholds)
    if extras:
        out["MR-R5"] = recall_at(top5_ious(d, b), r1_thresholds)
    return out


def null_bucket(r1_thresholds, extras: bool) -> OrderedDict:
    out = OrderedDict()
    if extras:
        out["MR-mIoU"] = None
    out["MR-mAP"] = OrderedDict([(str(t), None) for t in QVH_THRESHOLDS] + [("average", None)])
    out["MR-R1"] = OrderedDict((str(t), None) for t in r1_thresholds)
    if extras:
        out["MR-R5"] = OrderedDict((str(t), None) for t in r1_thresholds)
    return out


def moment_retrieval_sections(j: Joined, *, r2_style: bool, empty_bucket: str,
                              details: dict | None = None) -> dict:
    """``{"short": ..., "middle": ..., "long": ..., "full": ...}`` for the joined queries.

    ``r2_style``: R²-Tuning's evaluator (R1/R5 at 0.3:0.95, mIoU, long unbounded); otherwise
    moment_detr's (R1 at 0.5:0.95, long up to 150 s). An empty bucket is an error or, with
    ``empty_bucket="null"``, null values plus a warning, never 0 (moment_detr crashes there,
    R²-Tuning silently substitutes the full-set numbers).
    """
    if empty_bucket not in EMPTY_BUCKET_CHOICES:
        raise ValueError(f"empty_bucket must be one of {EMPTY_BUCKET_CHOICES}, not {empty_bucket!r}")
    d = build_mr_data(j)
    buckets = MR_BUCKETS_R2 if r2_style else MR_BUCKETS_QVH
    thresholds = R2_THRESHOLDS if r2_style else QVH_THRESHOLDS
    sections = {}
    counts = {}
    for name, bounds in buckets:
        b = Bucket(d, bounds)
        counts[name] = len(b.sel)
        if len(b.sel) == 0:
            lo, hi = bounds
            what = (f"length bucket '{name}' ({lo}, {hi}] s is empty: no ground-truth window in "
                    f"{j.gsrc.name} of the {j.n} queries scored from {j.psrc.name} has a length "
                    "in it")
            if empty_bucket == "error":
                reference = ("R²-Tuning's evaluator silently reports the full set's numbers there" if r2_style
                             else "The reference evaluator crashes here")
                raise EvaluationError(
                    f"{what}. {reference}; pass --empty-bucket null "
                    "(Python: empty_bucket='null') to report this bucket as null")
            warn(what + "; its metrics are reported as null")
            sections[name] = null_bucket(thresholds, r2_style)
            continue
        sections[name] = bucket_metrics(d, b, thresholds, r2_style)
    if details is not None:
        details["buckets"] = {name: (counts[name], bounds) for name, bounds in buckets}
        details["queries"] = j.n
    return sections


def mr_brief(sections: dict, r2_style: bool) -> list:
    """The brief MR keys, sorted by key as the reference does."""
    full = sections["full"]
    brief = {
        "MR-full-mAP": full["MR-mAP"]["average"],
        "MR-full-mAP@0.5": full["MR-mAP"]["0.5"],
        "MR-full-mAP@0.75": full["MR-mAP"]["0.75"],
        "MR-short-mAP": sections["short"]["MR-mAP"]["average"],
        "MR-middle-mAP": sections["middle"]["MR-mAP"]["average"],
        "MR-long-mAP": sections["long"]["MR-mAP"]["average"],
        "MR-full-R1@0.5": full["MR-R1"]["0.5"],
        "MR-full-R1@0.7": full["MR-R1"]["0.7"],
    }
    if r2_style:
        for name in ("short", "middle", "long", "full"):
            brief[f"MR-{name}-mIoU"] = sections[name]["MR-mIoU"]
        brief["MR-full-R1@0.3"] = full["MR-R1"]["0.3"]
        for t in ("0.3", "0.5", "0.7"):
            brief[f"MR-full-R5@{t}"] = full["MR-R5"][t]
    return sorted(brief.items(), key=lambda kv: kv[0])


# --------------------------------------------------------------------------- Charades & co.


def evaluate_moment_retrieval(predictions: list, ground_truth: list, *, subset: bool = False,
                              empty_bucket: str = "null", pred_source=None, gt_source=None,
                              details: dict | None = None) -> OrderedDict:
    """Charades-STA, TACoS, Ego4D-NLQ (and any MR-only data): R²-Tuning's evaluator output.

    Layout (``vtg_eval`` of R²-Tuning without highlight keys): ``brief`` with the 16 MR keys
    sorted (``MR-full-R1@0.3``, ``@0.5``, ``@0.7``, ``MR-full-R5@...``, ``MR-full-mAP...``,
    ``MR-full-mIoU``, per-bucket mAP and mIoU), then ``full``, ``long``, ``middle``, ``short``,
    each ``{"MR-mIoU", "MR-mAP", "MR-R1", "MR-R5"}``. The numbers R²-Tuning reports are
    ``MR-full-R1@0.3/0.5/0.7`` and ``MR-full-mIoU``.

    Length buckets without queries (Charades has no window over 30 s) are null with a warning
    by default; ``empty_bucket="error"`` refuses them. R²-Tuning's own evaluator would print the
    full-set numbers there.
    """
    psrc = Source.of(pred_source, "predictions")
    gsrc = Source.of(gt_source, "ground truth")
    j = join(predictions, ground_truth, psrc, gsrc, subset)
    first = predictions[j.pred_index[0]]
    if WINDOWS not in first:
        raise EvaluationError(f"{psrc.at(j.pred_index[0], first['qid'])}: no {WINDOWS!r}: moment "
                              "retrieval needs [start, end, score] windows on every line")
    sections = moment_retrieval_sections(j, r2_style=True, empty_bucket=empty_bucket,
                                         details=details)
    result = OrderedDict()
    result["brief"] = OrderedDict(mr_brief(sections, r2_style=True))
    result.update(sorted(sections.items(), key=lambda kv: kv[0]))
    return result
