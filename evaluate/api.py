"""``score``: one entry point over every benchmark's evaluator."""

from __future__ import annotations

from collections import OrderedDict

from .detect import detect_dataset_from_rows, normalize_dataset
from .errors import EvaluationError

__all__ = ["score"]


def score(dataset: str | None, predictions: list, ground_truth: list, **options) -> OrderedDict:
    """Score prediction rows against ground-truth rows with ``dataset``'s reference metrics.

    ``dataset``: qvhighlights, charades, tacos, ego4d, youtube, tvsum, custom (aliases such
    as "qvh" work), or None / "auto" to detect it from the ground truth.
    ``predictions``: QVHighlights-layout prediction rows (``qid``, ``pred_relevant_windows``
    ``[[start, end, score], …]``, ``pred_saliency_scores``); ``ground_truth``: QVHighlights-
    layout rows (``qid``, ``duration``, ``relevant_windows``, and for highlight data
    ``relevant_clip_ids`` + ``saliency_scores``).

    Options (all keyword): ``subset`` (score only the qids present in both; default False:
    the qid sets must match, as in the reference), ``empty_bucket`` ("error" or "null";
    default "error" for QVHighlights, "null" for the others, whose length buckets are extras),
    ``extended`` (QVHighlights: R²-Tuning's layout with R1@0.3, R5 and mIoU), ``top_k``
    (TVSum, default 5), ``pred_source`` / ``gt_source`` (file names for messages),
    ``details`` (a dict filled with counts for reports).

    Returns the reference's output layout as an ordered dict: moment_detr's for QVHighlights,
    R²-Tuning's ``vtg_eval`` for Charades-STA / TACoS / Ego4D-NLQ / custom data, and
    ``{"mAP", "domains"}`` (fractions, as R²-Tuning prints them) for YouTube and TVSum.
    Raises :class:`EvaluationError` for bad input.
    """
    try:
        name = normalize_dataset(dataset)
    except ValueError as exc:
        raise EvaluationError(str(exc)) from None
    if name is None:
        name, _ = detect_dataset_from_rows(ground_truth)
    common = {k: options.pop(k) for k in ("subset", "pred_source", "gt_source", "details")
              if k in options}
    if name == "youtube":
        from .youtube import evaluate_youtube
        _no_more(options, name)
        return evaluate_youtube(predictions, ground_truth, **common)
    if name == "tvsum":
        from .tvsum import evaluate_tvsum
        top_k = options.pop("top_k", 5)
        _no_more(options, name)
        return evaluate_tvsum(predictions, ground_truth, top_k=top_k, **common)
    if name in ("charades", "tacos", "ego4d"):
        from .moment_retrieval import evaluate_moment_retrieval
        empty_bucket = options.pop("empty_bucket", None) or "null"
        options.pop("extended", None)  # always the extended (R²-Tuning) layout
        _no_more(options, name)
        return evaluate_moment_retrieval(predictions, ground_truth, empty_bucket=empty_bucket,
                                         **common)
    from .qvhighlights import evaluate_qvhighlights
    extended = options.pop("extended", name == "custom")
    empty_bucket = options.pop("empty_bucket", None) or ("error" if name == "qvhighlights"
                                                         else "null")
    _no_more(options, name)
    return evaluate_qvhighlights(predictions, ground_truth, extended=extended,
                                 empty_bucket=empty_bucket, **common)


def _no_more(options: dict, name: str) -> None:
    if options:
        raise TypeError(f"score(): option(s) {', '.join(sorted(options))} do not apply to {name}")
