"""Error and warning types of ``r2.evaluate``.

``EvaluationError`` sets ``user_error = True``: the ``r2`` command shows it as a one-line
``Error: ...`` message (exit code 1), never as a traceback. Every message names where the
problem is: ``file:line`` for a file read with :func:`r2.evaluate.read_jsonl`, or the query id.
"""

from __future__ import annotations


class EvaluationError(ValueError):
    """Bad input to a metric or to the jsonl reader (a user error, not a bug)."""

    user_error = True


class EvaluationWarning(UserWarning):
    """Something was scored, but differently from a plain reading of the inputs (e.g. a
    length bucket without queries reported as null, or duplicate prediction lines merged)."""
