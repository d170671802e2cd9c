"""Kill -9 in the middle of `r2 extract`, run it again: every video exactly once, verify passes."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from r2.cache import FeatureCache, verify
from r2.extract import synthetic as S

from ..conftest import process_tree, running

COLOURS = ["red", "green", "blue", "yellow", "cyan", "magenta", "orange", "purple", "white", "black"]


def test_sigkill_then_rerun_gives_every_video_once(tmp_path, tiny_clip_dir):
    videos = tmp_path / "videos"
    ids = []
    for i in range(24):
        vid = f"v{i:02d}"
        S.write_segment_video(videos / f"{vid}.mp4", [(COLOURS[i % 10], 1.5), (COLOURS[(i + 3) % 10], 1.5)],
                              fps=10, size=(64, 48))
        ids.append(vid)
    out = tmp_path / "cache"
    cmd = [sys.executable, "-m", "r2", "extract", str(videos), "--out", str(out), "--model", str(tiny_clip_dir),
           "--fps", "10", "--workers", "0", "--batch-size", "1", "--max-shard-items", "2", "--no-progress"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    shards = out / "shards"
    deadline = time.monotonic() + 60
    try:
        # wait until some shards are committed, then kill the writer in the middle of its work
        while time.monotonic() < deadline and proc.poll() is None:
            if shards.is_dir() and len(list(shards.glob("videos-*.h5"))) >= 3:
                break
            time.sleep(0.01)
        assert proc.poll() is None, "extraction ended before it could be killed:\n" + proc.stdout.read().decode()
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    done_before = FeatureCache.open(out).video_ids()
    assert 0 < len(done_before) < len(ids)

    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"{len(ids) - len(done_before)} extracted, {len(done_before)} already cached" in rerun.stdout

    cache = FeatureCache.open(out)
    assert cache.manifest["command"] == shlex.join(["r2", *cmd[3:]])  # the command line, as typed
    all_items = []
    for shard in cache.shard_paths():
        import h5py

        with h5py.File(shard, "r") as f:
            if "videos" in f:
                all_items += list(f["videos"].keys())
    assert len(all_items) == len(ids) == len(set(all_items))  # exactly once
    assert sorted(cache.video_ids()) == ids
    report = verify(out)
    assert report.ok, report.format()
    assert not list(shards.glob("*.partial"))
    for vid in ids:
        x = cache.load_video(vid)
        assert x.shape == (30, 4, 50, 64) and np.isfinite(x).all()


@pytest.mark.parametrize("sig, word", [(signal.SIGINT, "interrupted"), (signal.SIGTERM, "terminated (SIGTERM)")])
def test_ctrl_c_or_sigterm_says_what_is_kept_and_the_same_command_finishes(tmp_path, tiny_clip_dir, terminal,
                                                                         sig, word):
    """Ctrl-C in the middle of `r2 extract` with decode workers, or SIGTERM as Slurm sends it (to
    the process group): exit code 128 + the signal, no traceback, one line with what the cache
    keeps; the cache verifies, and the same command extracts only the rest."""
    videos = tmp_path / "videos"
    ids = [f"v{i:02d}" for i in range(12)]
    for i, vid in enumerate(ids):
        S.write_segment_video(videos / f"{vid}.mp4", [(COLOURS[i % 10], 1.5), (COLOURS[(i + 3) % 10], 1.5)],
                              fps=10, size=(64, 48))
    out = tmp_path / "cache"
    cmd = [sys.executable, "-m", "r2", "extract", str(videos), "--out", str(out), "--model", str(tiny_clip_dir),
           "--fps", "10", "--workers", "1", "--batch-size", "1", "--max-shard-items", "2", "--no-progress"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    run = terminal(cmd, env=env)
    shards = out / "shards"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and run.proc.poll() is None:
        if shards.is_dir() and len(list(shards.glob("videos-*.h5"))) >= 3:
            break
        time.sleep(0.01)
    assert run.proc.poll() is None, "extraction ended before the signal"
    run.send(sig)
    rc, _, err = run.finish()
    kept = FeatureCache.open(out).video_ids()
    assert rc == 128 + sig, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert 0 < len(kept) < len(ids)
    assert err.strip().splitlines()[-1] == (
        f"{word}: {out} keeps the {len(kept)} video(s) and 0 query(ies) written so far (those in flight "
        "were dropped, never half-written); the same command again extracts only the rest")
    report = verify(out)
    assert report.ok, report.format()

    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"{len(ids) - len(kept)} extracted, {len(kept)} already cached" in rerun.stdout
    assert sorted(FeatureCache.open(out).video_ids()) == ids


@pytest.mark.skipif(not Path("/proc/self/stat").exists() or not Path("/dev/shm").is_dir(),
                    reason="reads processes from /proc and shared memory segments from /dev/shm (Linux)")
def test_decode_workers_exit_and_free_their_shared_memory_when_extract_is_sigkilled(tmp_path, tiny_clip_dir):
    """A SIGKILLed `r2 extract` cannot stop its decode workers: they notice that their parent is
    gone and exit within seconds (a worker waiting for a free slot used to wait for ever), and
    with them the shared-memory segment of the frames goes."""
    videos = tmp_path / "videos"
    for i in range(10):  # enough left to do after the first commit, on a fast machine too
        S.write_segment_video(videos / f"v{i}.mp4", [(COLOURS[i], 10), (COLOURS[(i + 3) % 10], 10)], fps=10,
                              size=(64, 48))
    out = tmp_path / "cache"
    cmd = [sys.executable, "-m", "r2", "extract", str(videos), "--out", str(out), "--model", str(tiny_clip_dir),
           "--fps", "10", "--workers", "2", "--batch-size", "1", "--max-shard-items", "1", "--no-progress"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    segments_before = {p.name for p in Path("/dev/shm").glob("psm_*")}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    children = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "shards").is_dir() and list((out / "shards").glob("videos-*.h5")):
                break
            time.sleep(0.01)
        assert proc.poll() is None, "extraction ended before it could be killed"
        children = process_tree(proc.pid)[1:]
        segments = {p.name for p in Path("/dev/shm").glob("psm_*")} - segments_before
        assert len(children) >= 2 and segments  # the workers (and resource trackers), the frames' segment
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        deadline = time.monotonic() + 10
        while any(map(running, children)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(map(running, children)), "decode workers outlived the killed extract"
        while segments & {p.name for p in Path("/dev/shm").glob("psm_*")} and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not segments & {p.name for p in Path("/dev/shm").glob("psm_*")}, "its shared memory was left"
    finally:  # (the resource trackers are left to go by themselves: they remove the segment)
        for pid in [proc.pid, *children]:
            with contextlib.suppress(OSError):
                if b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)
        proc.wait(30)
