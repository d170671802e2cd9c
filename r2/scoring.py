"""Score a prediction file against a ground-truth file: the Python API of ``r2 score``.

``r2.evaluate.score`` scores rows; this module finds the rows first. The ground truth is a
QVHighlights-layout jsonl (read as it is) or any original benchmark layout, which only
``r2.train.annotations`` parses: so this lives in the package root, the room that may import
both (DESIGN.md)::

    from r2.scoring import score_files

    result = score_files("preds.jsonl", "highlight_val_release.jsonl")
    result.metrics["brief"]["MR-full-R1@0.7"]

Errors are the rooms' own (``EvaluationError``, ``AnnotationError``, :class:`ScoringError`;
all ``user_error``, so ``r2`` shows them as one line). Things worth knowing that are not errors
(``--split`` ignored for a jsonl, prediction lines of other domains set aside) are
:class:`r2.evaluate.EvaluationWarning` warnings.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from r2.evaluate import EvaluationWarning, Source, read_jsonl

__all__ = ["FileScore", "GroundTruth", "ScoringError", "load_ground_truth", "score_files", "score_predictions"]


class ScoringError(ValueError):
    """The two files cannot be scored as given (e.g. they are swapped, or --domain matches no row)."""

    user_error = True


@dataclass
class GroundTruth:
    """The ground-truth rows to score (QVHighlights layout) and how they were found.

    ``source`` names their file and lines in errors; ``how``: "given" or how the data set was
    detected; ``split_text``: which split, in words, for a report's header;
    ``other_domains``: with a domain, the qids of the file's other domains (the prediction
    lines for them are set aside).
    """

    path: Path
    rows: list
    source: Source
    dataset: str
    how: str
    split_text: str
    domain: str | None = None
    other_domains: frozenset = frozenset()


@dataclass
class FileScore:
    """What :func:`score_predictions` found: the metrics in the reference evaluator's layout, the
    counts for :func:`r2.evaluate.format_report` and what was read."""

    metrics: OrderedDict
    details: dict
    truth: GroundTruth
    prediction_lines: int  # lines of the prediction file
    set_aside: int = 0  # of them, lines for queries of other domains (not scored)
    options: dict = field(default_factory=dict)  # what r2.evaluate.score was called with


def _hashable(qid) -> bool:
    try:
        hash(qid)
    except TypeError:
        return False
    return True


def _selected(rows: list, keep: list[int], path: Path) -> tuple[list, Source]:
    """Rows ``keep`` of the jsonl file ``path``, and a Source that still names their lines."""
    return [rows[i] for i in keep], Source(str(path), lines=True, line_numbers=[i + 1 for i in keep])


def load_ground_truth(path: str | Path, dataset: str | None = None, split: str | None = None,
                      domain: str | None = None) -> GroundTruth:
    """The ground truth of ``path`` as QVHighlights-layout rows.

    ``dataset``: a benchmark name (None: detected, from the rows of a jsonl, else from the
    file's layout); ``split``: for an original-layout file, the split to keep (train, val,
    test, or "all"; YouTube Highlights and TVSum default to val); ignored for a jsonl, which holds
    one split; ``domain``: keep only the rows of one YouTube domain or TVSum category.
    """
    from r2.evaluate.detect import detect_dataset_from_rows, normalize_dataset
    from r2.train.annotations import split_from_name

    path = Path(path)
    try:
        dataset = normalize_dataset(dataset)
    except ValueError as exc:
        raise ScoringError(str(exc)) from None
    if path.suffix.lower() == ".jsonl":
        rows = read_jsonl(path)
        source = Source(str(path), lines=True)
        predicted = next((k for r in rows[:1] if isinstance(r, dict)
                          for k in ("pred_relevant_windows", "pred_saliency_scores") if k in r), None)
        if predicted is not None:
            raise ScoringError(f"--gt {path}: line 1 has {predicted!r}: this is a prediction file, "
                               "not ground truth; are PREDICTIONS and --gt swapped?")
        others: frozenset = frozenset()
        if domain is not None:
            keep = [i for i, r in enumerate(rows) if str(r.get("domain")) == domain]
            if not keep:
                raise ScoringError(f"{path}: no row has domain {domain!r}")
            others = frozenset(r.get("qid") for i, r in enumerate(rows)
                               if str(r.get("domain")) != domain and _hashable(r.get("qid")))
            rows, source = _selected(rows, keep, path)
        if split not in (None, "all"):
            warnings.warn(f"--split {split} is ignored for a .jsonl file (it holds one split already)",
                          EvaluationWarning, stacklevel=2)
        how = "given"
        if dataset is None:
            dataset, reason = detect_dataset_from_rows(rows)
            how = f"detected: {reason}"
        guess = split_from_name(path)
        split_text = f'split "{guess}" by the file name' if guess else "split not in the file name"
        return GroundTruth(path, rows, source, dataset, how, split_text, domain, others)
    from r2.train import annotations  # only for the original layouts

    how = "given"
    if dataset is None:
        dataset = annotations.detect_dataset(str(path))
        how = "detected by r2.train.annotations"
    if split is None and dataset in ("youtube", "tvsum"):
        split = "val"
        split_text = 'split "val" (the default for this benchmark; --split to change)'
    elif split not in (None, "all"):
        split_text = f'split "{split}"'
    else:
        guess = split_from_name(path)
        split_text = (f'all of it; split "{guess}" by the file name' if guess and split is None
                      else "all splits in the file")
    split = None if split == "all" else split
    others = frozenset()
    everything = annotations.load_annotations(path, dataset=dataset, split=split)  # parsed once
    samples = everything if domain is None else annotations.select_domain(everything, dataset, domain, path)
    rows = [s.to_row() for s in samples]
    if domain is not None:
        others = frozenset(s.to_row()["qid"] for s in everything) - {r["qid"] for r in rows}
        split_text += f", domain {domain}"
    return GroundTruth(path, rows, Source(str(path), lines=False), dataset, how, split_text, domain, others)


def score_predictions(predictions: str | Path, truth: GroundTruth, rows: list | None = None, *,
                      subset: bool = False, empty_bucket: str | None = None, extended: bool = False,
                      top_k: int = 5) -> FileScore:
    """Score the prediction file ``predictions`` (``rows``: its rows, when already read) against
    ``truth`` with its benchmark's reference metrics (:func:`r2.evaluate.score`).

    ``subset``: only the queries in both files (default: every query needs a prediction and
    vice versa, as in the reference); ``empty_bucket``: "error" or "null" for a length bucket
    without queries (default: error for QVHighlights, null elsewhere); ``extended``:
    QVHighlights in R²-Tuning's layout (always for custom data); ``top_k``: TVSum's clips kept.
    The options that do not apply to the benchmark are not passed on.
    """
    from r2.evaluate import score

    predictions = Path(predictions)
    if rows is None:
        rows = read_jsonl(predictions)
    lines = len(rows)
    source = Source(str(predictions), lines=True)
    set_aside = 0
    if truth.other_domains:
        keep = [i for i, r in enumerate(rows)
                if not (isinstance(r, dict) and _hashable(r.get("qid")) and r.get("qid") in truth.other_domains)]
        set_aside = lines - len(keep)
        if set_aside:
            warnings.warn(f"--domain {truth.domain}: set aside the {set_aside} prediction lines of other domains",
                          EvaluationWarning, stacklevel=2)
        rows, source = _selected(rows, keep, predictions)
    options: dict = {"subset": subset}
    if truth.dataset == "tvsum":
        options["top_k"] = top_k
    elif truth.dataset != "youtube":
        options["empty_bucket"] = empty_bucket
        if truth.dataset in ("qvhighlights", "custom"):
            options["extended"] = extended or truth.dataset == "custom"
    details: dict = {}
    metrics = score(truth.dataset, rows, truth.rows, details=details, pred_source=source,
                    gt_source=truth.source, **options)
    return FileScore(metrics, details, truth, lines, set_aside, options)


def score_files(predictions: str | Path, ground_truth: str | Path, *, dataset: str | None = None,
                split: str | None = None, domain: str | None = None, **options) -> FileScore:
    """:func:`load_ground_truth` of ``ground_truth``, then :func:`score_predictions` of
    ``predictions`` against it (``options``: those of :func:`score_predictions`)."""
    truth = load_ground_truth(ground_truth, dataset=dataset, split=split, domain=domain)
    return score_predictions(predictions, truth, **options)
