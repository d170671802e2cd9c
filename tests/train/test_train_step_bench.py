"""bench/train_step.py runs as documented on a tiny batch (timing, FLOPs and both memory
measures printed for the three variants), and refuses sizes it cannot build."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "train_step.py"


def _tiny_run(env=None) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, str(BENCH), "--batch", "1", "--clips", "5", "--steps", "1",
                           "--warmup", "0", "--rounds", "1"], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_a_tiny_run_prints_both_variants_and_the_ratios():
    done = _tiny_run()
    rows = {}
    for name in ("from the cache", "CLIP on frames in the loop", "CLIP via oneDNN"):
        line = next(line for line in done.stdout.splitlines() if line.startswith(name))
        rows[name] = [float(x) for x in re.findall(r"\d+\.\d+|\d+", line[len(name):])]
    cache, clip = rows["from the cache"], rows["CLIP on frames in the loop"]
    onednn = rows["CLIP via oneDNN"]
    assert len(cache) == len(clip) == len(onednn) == 6  # step, GFLOP, GFLOP/s, RSS, RSS - torch, live heap
    assert onednn[1] == clip[1]  # oneDNN's products are counted as torch's are
    assert clip[1] > 10 * cache[1]  # CLIP's forward on 5 frames dwarfs the R² step's FLOPs
    assert clip[3] > cache[3] and clip[5] > cache[5]  # CLIP's weights alone are 600 MB
    flop = float(re.search(r"FLOP ratio (\d+\.\d)x", done.stdout).group(1))
    assert abs(flop / (clip[1] / cache[1]) - 1) < 0.05  # the table rounds GFLOP to 0.1
    assert "ratio of the medians of 1 x 1 steps; per round " in done.stdout
    assert re.search(r"speed-up over CLIP via oneDNN \(as r2 extract runs it on the CPU\): \d+\.\dx", done.stdout)
    assert re.search(r"peak of live heap allocations .*: \d\.\d{3} of CLIP's", done.stdout)


def test_without_onednn_the_third_variant_is_left_out_and_said_so():
    # a torch build without oneDNN (ARM) runs as with R2_ONEDNN=0: the two variants, no exit
    done = _tiny_run(env=dict(os.environ, R2_ONEDNN="0"))
    lines = done.stdout.splitlines()
    assert any(line.startswith("from the cache") for line in lines)
    assert any(line.startswith("CLIP on frames in the loop") for line in lines)
    assert not any(line.startswith("CLIP via oneDNN ") for line in lines)
    assert "CLIP via oneDNN: not run (this torch build has no oneDNN, or R2_ONEDNN=0 is set)" in lines
    assert "speed-up over CLIP via oneDNN" not in done.stdout


def test_sizes_without_a_query_window_are_refused():
    done = subprocess.run([sys.executable, str(BENCH), "--clips", "3"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--clips must be at least 5" in done.stderr


def test_the_bf16_bench_prints_both_precisions_and_the_ratio():
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "train_amp.py"), "--batch", "1", "--clips", "5",
                           "--steps", "1", "--rounds", "1"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert re.match(r"one training step from the cache, batch 1 x 5 clips, .*CPU bf16 support: ", lines[0])
    times = {}
    for label in ("fp32", "bf16 autocast"):
        line = next(line for line in lines if line.startswith(label + " "))
        m = re.fullmatch(label + r" +(\d+\.\d{3}) s a step \(median of 1 x 1\) +(\d+) MB peak RSS", line)
        assert m, line
        times[label] = float(m.group(1))
        assert 200 < int(m.group(2)) < 5000  # the torch import alone is ~220 MB
    ratio = re.fullmatch(r"bf16 autocast: (\d+\.\d\d)x the speed of fp32 \(per round (\d+\.\d\d)x\), "
                         r"\d+\.\d\dx the peak RSS", lines[-1])
    assert ratio, lines[-1]
    a, b = times["fp32"], times["bf16 autocast"]  # printed to 1 ms: the ratio lies between these bounds
    assert (a - 5e-4) / (b + 5e-4) - 5e-3 <= float(ratio.group(1)) <= (a + 5e-4) / max(b - 5e-4, 1e-9) + 5e-3
