"""YouTube Highlights: mAP per domain, as R²-Tuning's ``YouTubeHighlights.evaluate``.

Per video: clips ranked by predicted saliency (descending); a clip is positive iff its raw
``match`` label is > 0 (borderline 0 and -1 are negative); the trapezoid AP over the whole
ranking with every positive of the video as the recall denominator; a video without positives
scores 0. Domain mAP = mean over the domain's videos; the headline is the mean over domains.
Ground-truth rows (from ``r2.train.annotations``): ``qid`` = ``vid`` = YouTube id, ``domain``,
``relevant_clip_ids`` = 0..T-1, ``saliency_scores`` = T rows of ``[match]``.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from ._highlights import (domain_layout, domain_order, in_ground_truth_order, load_videos, ranking,
                          sequential_mean, trapezoid_aps)
from .errors import EvaluationError

__all__ = ["evaluate_youtube", "YOUTUBE_DOMAINS"]

YOUTUBE_DOMAINS = ("dog", "gymnastics", "parkour", "skating", "skiing", "surfing")


def evaluate_youtube(predictions: list, ground_truth: list, *, subset: bool = False,
                     pred_source=None, gt_source=None, details: dict | None = None
                     ) -> OrderedDict:
    """``{"mAP": mean over domains, "domains": {domain: {"mAP", "videos"}}}`` (fractions,
    5 decimals). The prediction list must have one score per annotated clip."""
    v = load_videos(predictions, ground_truth, subset=subset, pred_source=pred_source,
                    gt_source=gt_source, annotators=1, what="YouTube Highlights")
    j = v.j
    aps = []
    for k, qid in enumerate(j.qids):
        labels = (v.gt[k][:, 0] > 0).astype(float)
        scores = v.pred[k]
        if len(scores) != len(labels):
            raise EvaluationError(
                f"{j.psrc.at(j.last[k], qid)}: {len(scores)} saliency scores for a video of "
                f"{len(labels)} annotated clips; YouTube Highlights needs exactly one per clip")
        ranked = labels[ranking(scores)]
        aps.append(float(trapezoid_aps(ranked[None, :], np.array([ranked.sum()]))[0]))
    per_domain = OrderedDict()
    order = in_ground_truth_order(j)
    for domain in domain_order(v.domains, YOUTUBE_DOMAINS):
        values = [aps[k] for k in order if v.domains[k] == domain]
        per_domain[domain] = (sequential_mean(values), len(values))
    if details is not None:
        details["queries"] = j.n
    return domain_layout(per_domain, details)
