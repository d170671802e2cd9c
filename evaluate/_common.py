"""Shared pieces of the metric modules: rounding, thresholds, where-is-the-error messages,
validation of prediction and ground-truth rows, the qid join, and sums in the reference's order."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from itertools import chain
from typing import Any, Sequence

import numpy as np

from .errors import EvaluationError, EvaluationWarning

# --------------------------------------------------------------------------- numbers


def fmt2(x) -> float:
    """The reference's rounding: format with two decimals (round half to even on the exact
    binary value, like ``'%.2f'``) and parse back. Never ``numpy.round``, never half-up."""
    return float(f"{x:.2f}")


def round5(x) -> float:
    """R²-Tuning's rounding of the highlight metrics (fractions): ``round(x, 5)``."""
    return round(float(x), 5)


def column_means_in_row_order(values) -> np.ndarray:
    """``np.mean(values, axis=0)`` over a C-ordered (n, k) float64 array: numpy adds the rows
    one after the other, so the result depends on the row order, as the reference's does.

    Moment retrieval's per-threshold mAP over queries is such a mean: the reference stacks the
    per-query APs into an (n_queries, 10) array in the order its worker pool returns them
    (``imap_unordered``, chunks of 50 queries) and averages over axis 0. Up to 50 queries form
    one chunk and come back in prediction-file order (first appearance), the order used here;
    above that, only the order of whole chunks can vary from run to run (``metrics.md`` §6).
    """
    a = np.ascontiguousarray(values, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"column_means_in_row_order needs a 2-D array, got shape {a.shape}")
    return a.mean(axis=0)


def _thresholds(start: float, stop: float, num: int) -> list[float]:
    # The Python floats obtained by printing linspace with two decimals and parsing them back.
    return [float(f"{e:.2f}") for e in np.linspace(start, stop, num)]


#: IoU thresholds of QVHighlights mAP and R1 (0.5, 0.55, ..., 0.95).
QVH_THRESHOLDS = _thresholds(0.5, 0.95, 10)
#: R1/R5 thresholds of R²-Tuning's evaluator (0.3, 0.35, ..., 0.95).
R2_THRESHOLDS = _thresholds(0.3, 0.95, 14)


def ordered_row_sums(values: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each row i, ``np.sum(values[i][mask[i]])`` bit for bit, and the count.

    numpy sums a 1-D array pairwise (8 partial sums), so the result depends on how many
    values there are and on their order, not only on their set. The selected values are moved
    to the front of each row (order kept) and rows with the same count are summed together:
    a row-wise reduction over the last axis runs the very same pairwise loop per row.
    """
    counts = mask.sum(axis=1)
    sums = np.zeros(values.shape[0])
    if values.size == 0:
        return sums, counts
    compact = np.zeros(values.shape)
    compact[np.arange(values.shape[1])[None, :] < counts[:, None]] = values[mask]
    by_count = np.argsort(counts, kind="stable")
    sorted_counts = counts[by_count]
    compact = compact[by_count]
    edges = [0, *(np.flatnonzero(np.diff(sorted_counts)) + 1), len(by_count)]
    out = np.zeros(len(by_count))
    for a, b in zip(edges[:-1], edges[1:]):
        c = sorted_counts[a]
        if c:
            out[a:b] = np.ascontiguousarray(compact[a:b, :c]).sum(axis=1)
    sums[by_count] = out
    return sums, counts


# --------------------------------------------------------------------------- locations


class Source:
    """Where rows came from, for error messages.

    ``name`` is a file name (rows from :func:`read_jsonl`: row ``i`` is line ``i + 1``, or
    line ``line_numbers[i]`` for rows selected from the file) or a description such as
    ``"predictions"`` for rows handed over in Python (``lines=False``).
    """

    def __init__(self, name: str, lines: bool, line_numbers: Sequence[int] | None = None):
        self.name = name
        self.lines = lines
        self.line_numbers = line_numbers

    @classmethod
    def of(cls, value, default: str) -> "Source":
        if isinstance(value, Source):
            return value
        if value is None:
            return cls(default, lines=False)
        return cls(str(value), lines=True)

    def at(self, index: int, qid: Any = ...) -> str:
        if not self.lines:
            where = f"{self.name}, row {index + 1}"
        elif self.line_numbers is not None:
            where = f"{self.name}:{self.line_numbers[index]}"
        else:
            where = f"{self.name}:{index + 1}"
        if qid is not ...:
            where += f" (qid {qid!r})"
        return where


def qid_list(qids: Sequence, limit: int = 8) -> str:
    shown = ", ".join(repr(q) for q in list(qids)[:limit])
    more = len(qids) - limit
    return shown + (f", … ({more} more)" if more > 0 else "")


def warn(message: str) -> None:
    warnings.warn(message, EvaluationWarning, stacklevel=3)


# --------------------------------------------------------------------------- validation

_PLAIN_NUMBERS = {int, float}


def _is_number(x) -> bool:
    return (isinstance(x, (int, float, np.integer, np.floating))
            and not isinstance(x, (bool, np.bool_)))


def _finite(x) -> bool:
    try:
        return math.isfinite(float(x))
    except OverflowError:  # an integer too large for a float
        return False


def _as_list(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, tuple):
        return list(value)
    return value


def check_qid(row: dict, index: int, src: Source):
    if "qid" not in row:
        raise EvaluationError(f"{src.at(index)}: missing key 'qid'")
    qid = row["qid"]
    if isinstance(qid, np.generic):
        qid = qid.item()
    if not isinstance(qid, (int, str, float)) or isinstance(qid, bool):
        raise EvaluationError(f"{src.at(index)}: 'qid' must be a number or a string, "
                              f"got {qid!r}")
    return qid


def number_matrix(rows_values: list, width: int, key: str, src: Source, indices: Sequence[int],
                  qids: Sequence, at_least: bool = False) -> np.ndarray:
    """Stack many small lists of numbers into a float64 array of shape (N, width).

    ``rows_values[k]`` is the list of items of input row ``indices[k]``; each item must be a
    list of ``width`` numbers (``at_least``: ``width`` or more; the rest is ignored). Fast
    path: one type check over everything; the slow path finds the culprit for the message.
    """
    flat = []
    for items in rows_values:
        flat.extend(items)
    arr = None
    try:
        lengths = set(map(len, flat))
        if lengths <= {width}:
            cut = flat
        elif at_least and min(lengths) >= width:
            cut = [item[:width] for item in flat]
        else:
            cut = None
        if cut is not None:
            values = list(chain.from_iterable(cut))
            if set(map(type, values)) <= _PLAIN_NUMBERS or all(map(_is_number, values)):
                arr = np.fromiter(values, float, len(values)).reshape(len(cut), width)
    except (TypeError, OverflowError):
        arr = None
    if arr is not None and np.isfinite(arr).all():
        return arr
    # slow path: name the first bad item
    need = f"at least {width}" if at_least else f"exactly {width}"
    for items, index, qid in zip(rows_values, indices, qids):
        for j, item in enumerate(items):
            where = f"{src.at(index, qid)}: {key}[{j}]"
            if not isinstance(item, (list, tuple, np.ndarray)):
                raise EvaluationError(f"{where} must be a list of numbers, got {item!r}")
            if len(item) < width or (not at_least and len(item) != width):
                raise EvaluationError(f"{where} = {item!r} must have {need} numbers")
            for v in list(item)[:width]:
                if not _is_number(v):
                    raise EvaluationError(f"{where} = {item!r} holds a non-number {v!r}")
                if not _finite(v):
                    raise EvaluationError(f"{where} = {item!r} holds a non-finite number")
    raise AssertionError("unreachable: a bad value was not located")  # pragma: no cover


def number_vectors(rows_values: list, key: str, src: Source, indices: Sequence[int],
                   qids: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate lists of numbers; returns (flat float64 values, lengths)."""
    lengths = np.fromiter((len(v) for v in rows_values), dtype=np.int64, count=len(rows_values))
    flat = list(chain.from_iterable(rows_values))
    if set(map(type, flat)) <= _PLAIN_NUMBERS or all(map(_is_number, flat)):
        try:
            arr = np.fromiter(flat, float, len(flat))
        except OverflowError:
            arr = None
        if arr is not None and np.isfinite(arr).all():
            return arr, lengths
    for values, index, qid in zip(rows_values, indices, qids):
        for j, v in enumerate(values):
            if not _is_number(v):
                raise EvaluationError(f"{src.at(index, qid)}: {key}[{j}] = {v!r} is not a number")
            if not _finite(v):
                raise EvaluationError(f"{src.at(index, qid)}: {key}[{j}] = {v!r} is not finite")
    raise AssertionError("unreachable: a bad value was not located")  # pragma: no cover


def get_list(row: dict, key: str, index: int, qid, src: Source, *, nonempty: bool,
             what: str) -> list:
    if key not in row:
        raise EvaluationError(f"{src.at(index, qid)}: missing key {key!r} ({what})")
    value = _as_list(row[key])
    if not isinstance(value, list):
        raise EvaluationError(f"{src.at(index, qid)}: {key!r} must be a list, got {value!r}")
    if nonempty and not value:
        raise EvaluationError(f"{src.at(index, qid)}: {key!r} is empty ({what}); the reference "
                              "evaluator crashes on this input, so r2 refuses it")
    return value


def padded(flat: np.ndarray, lengths: np.ndarray, fill: float, width: int | None = None
           ) -> np.ndarray:
    """(N, width) array with row i = flat values of row i, then ``fill``."""
    n = len(lengths)
    width = int(lengths.max(initial=0)) if width is None else width
    out = np.full((n, width), fill)
    mask = np.arange(width)[None, :] < lengths[:, None]
    out[mask] = flat
    return out


# --------------------------------------------------------------------------- the qid join


@dataclass
class Joined:
    """Predictions and ground truth after the qid check.

    ``pred_index``: the prediction rows kept, in file order. ``qids``: the distinct predicted
    qids in order of first appearance (the order of every per-query list of the reference).
    ``last``: for each of ``qids`` the row index of its last line; ``lines``: all its rows.
    ``gt_index``: for each of ``qids`` the ground-truth row index.
    """

    pred_rows: list
    gt_rows: list
    psrc: Source
    gsrc: Source
    pred_index: list
    qids: list
    last: list
    lines: list
    gt_index: list

    @property
    def n(self) -> int:
        return len(self.qids)


def join(pred_rows: list, gt_rows: list, psrc: Source, gsrc: Source, subset: bool) -> Joined:
    """Match predictions to ground truth on ``qid`` (Python equality, as the reference).

    The reference demands equal qid sets. ``subset=True`` is its ``match_number=False``: both
    sides are cut to the shared qids (a warning says how many were dropped).
    """
    if not pred_rows:
        raise EvaluationError(f"{psrc.name}: no predictions (the file is empty)")
    if not gt_rows:
        raise EvaluationError(f"{gsrc.name}: no ground-truth queries (the file is empty)")
    gt_pos: dict = {}
    for i, row in enumerate(gt_rows):
        if type(row) is not dict:
            raise EvaluationError(f"{gsrc.at(i)}: expected an object, got {type(row).__name__}")
        qid = check_qid(row, i, gsrc)
        if qid in gt_pos:
            raise EvaluationError(
                f"{gsrc.at(i, qid)}: qid already on {gsrc.at(gt_pos[qid])}; ground-truth qids "
                "must be unique")
        gt_pos[qid] = i
    first: dict = {}
    pred_qids = []
    for i, row in enumerate(pred_rows):
        if type(row) is not dict:
            raise EvaluationError(f"{psrc.at(i)}: expected an object, got {type(row).__name__}")
        qid = check_qid(row, i, psrc)
        pred_qids.append(qid)
        first.setdefault(qid, i)
    missing = [q for q in gt_pos if q not in first]
    extra = [q for q in first if q not in gt_pos]
    if (missing or extra) and not subset:
        parts = []
        if missing:
            parts.append(f"{len(missing)} of the {len(gt_pos)} annotated queries have no "
                         f"prediction (qids {qid_list(missing)})")
        if extra:
            parts.append(f"{len(extra)} predicted qids are not in the ground truth "
                         f"(qids {qid_list(extra)}); is {gsrc.name} the right split?")
        body = "; ".join(parts) + _type_hint(missing or list(gt_pos), extra or list(first))
        end = " " if body.endswith("?") else ". "  # no "split?. Pass"
        raise EvaluationError(
            f"qids of {psrc.name} and {gsrc.name} must match (as in the reference evaluator): "
            + body + end
            + "Pass --subset (Python: subset=True) to score only the queries present in both.")
    if missing or extra:
        shared = len(first) - len(extra)
        if shared == 0:
            raise EvaluationError(
                f"no qid of {psrc.name} is in {gsrc.name}: nothing to score"
                + _type_hint(list(gt_pos), list(first)))
        warn(f"--subset: scoring the {shared} queries present in both files; left out "
             f"{len(missing)} annotated queries without predictions and {len(extra)} predicted "
             "queries without annotations")
    pred_index = [i for i, q in enumerate(pred_qids) if q in gt_pos]
    lines: dict = {}
    for i in pred_index:
        lines.setdefault(pred_qids[i], []).append(i)
    qids = list(lines)
    dups = sum(1 for q in qids if len(lines[q]) > 1)
    if dups:
        warn(f"{dups} qids appear on more than one line of {psrc.name}; merged as the reference "
             "does (MR mAP uses the windows of every line, R1 and highlight metrics the last line)")
    return Joined(pred_rows=pred_rows, gt_rows=gt_rows, psrc=psrc, gsrc=gsrc,
                  pred_index=pred_index, qids=qids, last=[lines[q][-1] for q in qids],
                  lines=[lines[q] for q in qids], gt_index=[gt_pos[q] for q in qids])


def _type_hint(gt_qids: list, pred_qids: list) -> str:
    gt_types = {type(q) for q in gt_qids}
    pred_types = {type(q) for q in pred_qids}
    if gt_types and pred_types and gt_types.isdisjoint(pred_types):
        names = lambda ts: "/".join(sorted(t.__name__ for t in ts))  # noqa: E731
        return (f" (the ground truth uses {names(gt_types)} qids, the predictions "
                f"{names(pred_types)} qids: a qid 12 and a qid \"12\" never match)")
    return ""
