"""r2.evaluate: every benchmark's metrics and prediction-file I/O. Imports numpy only.

Public API (imported on first use, so ``import r2.evaluate`` costs about a millisecond and
``read_jsonl`` never loads numpy):

* :func:`score` — one entry point: ``score(dataset, predictions, ground_truth, **options)``;
* :func:`evaluate_qvhighlights`, :func:`evaluate_moment_retrieval` (Charades-STA, TACoS,
  Ego4D-NLQ), :func:`evaluate_youtube`, :func:`evaluate_tvsum`;
* :func:`read_jsonl`, :func:`write_jsonl`, :func:`dumps_metrics`, :func:`write_metrics_json`;
* :func:`detect_dataset_from_rows`, :func:`normalize_dataset`, :func:`format_report`;
* :class:`EvaluationError` (``user_error = True``), :class:`EvaluationWarning`;
* :class:`Source` (where rows came from: ``score(..., pred_source=, gt_source=)`` names their
  file and lines in errors).
"""

from .errors import EvaluationError, EvaluationWarning
from .io import dumps_metrics, read_jsonl, write_jsonl, write_metrics_json

from r2.lazy import lazy_exports

_LAZY = {
    "score": ".api",
    "evaluate_qvhighlights": ".qvhighlights",
    "evaluate_moment_retrieval": ".moment_retrieval",
    "evaluate_youtube": ".youtube",
    "evaluate_tvsum": ".tvsum",
    "detect_dataset_from_rows": ".detect",
    "normalize_dataset": ".detect",
    "DATASETS": ".detect",
    "format_report": ".report",
    "Source": "._common",
}

__all__ = ["EvaluationError", "EvaluationWarning", "read_jsonl", "write_jsonl", "dumps_metrics",
           "write_metrics_json", *_LAZY]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
