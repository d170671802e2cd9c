"""Fixtures of the r2.evaluate tests: the golden pairs and the QVHighlights val annotations."""

from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
VAL_GT = FIXTURES / "qvhighlights" / "highlight_val_release.jsonl"


@pytest.fixture(scope="session")
def val_gt():
    from r2.evaluate import read_jsonl

    return read_jsonl(VAL_GT)


def gt_for(val_rows, pred_rows):
    """The golden ground-truth rule: val rows of the predicted qids, in val order."""
    qids = {r["qid"] for r in pred_rows}
    return [r for r in val_rows if r["qid"] in qids]


@pytest.fixture(scope="session")
def restrict():
    return gt_for
