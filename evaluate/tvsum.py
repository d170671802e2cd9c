"""TVSum: top-5 mAP per category, as R²-Tuning's ``TVSum.evaluate`` (UMT's protocol).

For each of the A (= 20) annotators and each video: a clip is positive iff the annotator's
score is strictly greater than the median of that annotator's scores over all T clips (the
lower median for even T, as ``torch.median``); the clips are ranked by predicted saliency and
only the top 5 are kept; the recall denominator is the number of positives among those 5 (AP 0
if none), and the AP is the trapezoid of YouTube Highlights over the 5. Per annotator the APs
are averaged over the category's videos, then over the annotators.
Ground-truth rows: ``qid`` = ``vid`` = YouTube id, ``domain`` = category code,
``relevant_clip_ids`` = 0..T-1, ``saliency_scores`` = T rows of the 20 raw 1-5 scores.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from ._common import warn
from ._highlights import (domain_layout, domain_order, in_ground_truth_order, load_videos, ranking,
                          sequential_mean, trapezoid_aps)
from .errors import EvaluationError

__all__ = ["evaluate_tvsum", "TVSUM_DOMAINS", "lower_median"]

TVSUM_DOMAINS = ("VT", "VU", "GA", "MS", "PK", "PR", "FM", "BK", "BT", "DS")
#: The reference lets the feature sequence be up to 4 clips shorter than the annotation.
LENGTH_SLACK = 4


def lower_median(values: np.ndarray, axis: int = 0) -> np.ndarray:
    """``torch.median``: the lower of the two middle values for an even count."""
    n = values.shape[axis]
    return np.take(np.sort(values, axis=axis), (n - 1) // 2, axis=axis)


def evaluate_tvsum(predictions: list, ground_truth: list, *, subset: bool = False,
                   top_k: int = 5, pred_source=None, gt_source=None,
                   details: dict | None = None) -> OrderedDict:
    """``{"mAP": mean over categories, "domains": {code: {"mAP", "videos"}}}`` (fractions,
    5 decimals). A prediction may be shorter than the video (features a few clips short), never
    longer."""
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise ValueError(f"top_k must be a whole number of clips, at least 1, not {top_k!r}")
    v = load_videos(predictions, ground_truth, subset=subset, pred_source=pred_source,
                    gt_source=gt_source, annotators=None, what="TVSum")
    j = v.j
    widths = {m.shape[1] for m in v.gt}
    if len(widths) != 1:
        raise EvaluationError(f"{j.gsrc.name}: videos have different numbers of annotators "
                              f"({sorted(widths)})")
    A = widths.pop()
    per_video = []  # (A,) AP per annotator
    for k, qid in enumerate(j.qids):
        anno = v.gt[k]  # (T, A)
        T = anno.shape[0]
        scores = v.pred[k]
        if len(scores) > T:
            raise EvaluationError(
                f"{j.psrc.at(j.last[k], qid)}: {len(scores)} saliency scores for a video of {T} "
                "annotated 2-s clips; TVSum predictions may not be longer than the annotation")
        if len(scores) < T - LENGTH_SLACK:
            warn(f"{j.psrc.at(j.last[k], qid)}: {len(scores)} saliency scores for {T} annotated "
                 f"clips (the reference allows at most {LENGTH_SLACK} fewer)")
        labels = (anno > lower_median(anno, axis=0)).astype(float)  # (T, A)
        top = ranking(scores)[:top_k]
        ranked = labels[top].T  # (A, k)
        per_video.append(trapezoid_aps(ranked, ranked.sum(axis=1)))
    per_domain = OrderedDict()
    order = in_ground_truth_order(j)
    for domain in domain_order(v.domains, TVSUM_DOMAINS):
        members = [k for k in order if v.domains[k] == domain]
        by_annotator = [sequential_mean([per_video[k][a] for k in members]) for a in range(A)]
        per_domain[domain] = (sequential_mean(by_annotator), len(members))
    if details is not None:
        details["queries"] = j.n
        details["annotators"] = A
    return domain_layout(per_domain, details)
