"""Reading jsonl files strictly and writing metrics exactly as the reference evaluators do.

No numpy here: ``from r2.evaluate import read_jsonl`` stays cheap for every room.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from r2.fileio import atomic_write

from .errors import EvaluationError

__all__ = ["read_jsonl", "write_jsonl", "dumps_metrics", "write_metrics_json"]


def read_jsonl(path: str | os.PathLike, *, error: type[Exception] = EvaluationError) -> list[dict]:
    """Read a JSON Lines file: one JSON object per line, in file order.

    Strict in the way the reference evaluators are (their ``load_jsonl`` fails on the same
    inputs), but with a message that names ``file:line`` and what is wrong:

    * a blank line anywhere (also a second newline at the end) is an error;
    * a missing final newline is fine (the QVHighlights files have none);
    * every line must be a JSON **object**.

    Row ``i`` of the result is always on line ``i + 1``, so callers can turn a row index back
    into a line number. ``error`` is the exception class raised (``EvaluationError`` by default;
    another room may pass its own, e.g. an annotation error class taking one message argument).
    """
    path = Path(path)
    try:
        with open(path, encoding="utf-8-sig") as f:  # universal newlines: \r\n reads as \n; a BOM is skipped
            text = f.read()
    except FileNotFoundError:
        raise error(f"{path}: file not found") from None
    except IsADirectoryError:
        raise error(f"{path}: is a directory, expected a .jsonl file") from None
    except UnicodeDecodeError as exc:
        line = _line_of_byte(path, exc.start)
        raise error(f"{path}:{line}: not UTF-8 text ({exc.reason})") from None
    if not text:
        return []
    lines = text.split("\n")
    if lines[-1] == "":  # the file ends with one newline
        lines.pop()
    rows = []
    loads = json.loads
    for number, line in enumerate(lines, 1):
        if not line.strip():
            raise error(f"{path}:{number}: blank line (every line must hold one JSON object; "
                        "delete empty lines, including extra ones at the end)")
        try:
            row = loads(line)
        except json.JSONDecodeError as exc:
            raise error(f"{path}:{number}: invalid JSON: {exc.msg} (column {exc.colno})") from None
        if type(row) is not dict:
            raise error(f"{path}:{number}: expected a JSON object {{...}}, got {_json_type(row)}")
        rows.append(row)
    return rows


def write_jsonl(rows: Iterable[dict], path: str | os.PathLike) -> None:
    """Write rows as JSON Lines (one compact object per line, a newline after each),
    atomically: the file appears complete or not at all."""
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    atomic_write(path, text)


def dumps_metrics(metrics: dict) -> str:
    """The metrics JSON text exactly as the reference evaluators write it: 4-space indent,
    keys in the given order, floats as Python prints them, no trailing newline."""
    return json.dumps(metrics, indent=4)


def write_metrics_json(metrics: dict, path: str | os.PathLike) -> None:
    """Write :func:`dumps_metrics` to ``path`` atomically (no half-written file on failure)."""
    atomic_write(path, dumps_metrics(metrics))


def _json_type(value: Any) -> str:
    return {list: "an array", str: "a string", int: "a number", float: "a number",
            bool: "a boolean", type(None): "null"}.get(type(value), type(value).__name__)


def _line_of_byte(path: Path, offset: int) -> int:
    with open(path, "rb") as f:
        return f.read(offset).count(b"\n") + 1
