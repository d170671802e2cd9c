"""bench/score.py runs as documented: with no arguments (its default ground truth exists) and
with a --gt relative to the caller's folder (the timed subprocess runs elsewhere)."""

import runpy
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "score.py"


def test_default_ground_truth_is_the_val_fixture():
    default = runpy.run_path(str(BENCH), run_name="bench_score")["DEFAULT_GT"]
    assert default == ROOT / "tests" / "fixtures" / "qvhighlights" / "highlight_val_release.jsonl"
    assert default.is_file()


def test_one_run_with_a_relative_ground_truth_path():
    done = subprocess.run([sys.executable, str(BENCH), "--runs", "1", "--gt",
                           "fixtures/qvhighlights/highlight_val_release.jsonl"],
                          cwd=ROOT / "tests", capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "input: 1550 val queries" in done.stdout
    assert "queries/s" in done.stdout and "speed-up" in done.stdout
    assert "brief: MR-full-R1@0.5 " in done.stdout and "HL-min-VeryGood-Hit1 " in done.stdout
