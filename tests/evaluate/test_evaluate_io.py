"""jsonl reading / metrics writing, and the light import path of r2.evaluate."""

import json
import subprocess
import sys

import pytest

from r2.evaluate import EvaluationError, dumps_metrics, read_jsonl, write_jsonl, write_metrics_json


def test_read_jsonl_accepts_a_missing_final_newline_and_crlf(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text('{"qid": 1}\n{"qid": "x", "v": [1.5, 2]}')
    assert read_jsonl(p) == [{"qid": 1}, {"qid": "x", "v": [1.5, 2]}]
    p.write_bytes(b'{"qid": 1}\r\n{"qid": 2}\r\n')
    assert read_jsonl(p) == [{"qid": 1}, {"qid": 2}]
    p.write_text("")
    assert read_jsonl(p) == []
    p.write_bytes(b'\xef\xbb\xbf{"qid": 1}\n{"qid": 2}\n')  # a UTF-8 BOM, as some editors save files
    assert read_jsonl(p) == [{"qid": 1}, {"qid": 2}]


def test_read_jsonl_raises_the_callers_error_class(tmp_path):
    class AnnotationError(ValueError):
        pass

    p = tmp_path / "a.jsonl"
    p.write_text('{"qid": 1}\n{"qid": ')
    with pytest.raises(AnnotationError, match=r"a.jsonl:2: invalid JSON"):
        read_jsonl(p, error=AnnotationError)


def test_read_jsonl_names_non_utf8_lines(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_bytes(b'{"qid": 1}\n{"q": "\xff"}\n')
    with pytest.raises(EvaluationError, match=r"a.jsonl:2: not UTF-8"):
        read_jsonl(p)


def test_metrics_json_has_4_space_indent_and_no_trailing_newline(tmp_path):
    metrics = {"brief": {"MR-full-mAP": 32.2, "x": None}, "full": {"0.5": 54.0}}
    out = tmp_path / "m.json"
    write_metrics_json(metrics, out)
    text = out.read_text()
    assert text == json.dumps(metrics, indent=4) == dumps_metrics(metrics)
    assert not text.endswith("\n") and '\n    "brief": {\n        "MR-full-mAP": 32.2,' in text
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_write_jsonl_round_trips(tmp_path):
    rows = [{"qid": 1, "pred_relevant_windows": [[0, 2, 0.5]], "query": "é"}, {"qid": "b"}]
    write_jsonl(rows, tmp_path / "p.jsonl")
    assert read_jsonl(tmp_path / "p.jsonl") == rows


def test_import_is_light_and_never_loads_torch():
    code = ("import sys, time\n"
            "t = time.perf_counter()\n"
            "from r2.evaluate import read_jsonl, score, EvaluationError\n"
            "dt = time.perf_counter() - t\n"
            "assert 'numpy' not in sys.modules, 'numpy imported by read_jsonl'\n"
            "import r2.evaluate.qvhighlights, r2.evaluate.moment_retrieval, r2.evaluate.youtube\n"
            "import r2.evaluate.tvsum, r2.evaluate.report, r2.cli.score, r2.scoring\n"
            "assert 'torch' not in sys.modules and 'sklearn' not in sys.modules\n"
            "print(dt)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout) < 0.1
