"""Decode workers: frames are streamed (memory does not grow with the videos' length), a decoder that
starts over mid-video is handled, and a worker that dies (a segfault in FFmpeg, the OOM killer) costs
only its own video."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np

from r2.cache import FeatureCache, verify
from r2.extract import synthetic as S
from r2.extract import video as V
from r2.extract.pipeline import VideoJob, extract_features

# Loaded by every Python process of the run under test (PYTHONPATH): av.open of a file named crash_open*
# dies of SIGSEGV, as a segfault in libavformat does; a crash_mid* file gets its process SIGKILLed after
# 45 packets (frames have been sent by then), as the OOM killer does.
CRASH_HOOK = '''
import os
import signal

try:
    import av
except ImportError:
    av = None

if av is not None:
    _open = av.open

    class _KilledMidway:
        def __init__(self, container):
            self._container = container

        def __getattr__(self, name):
            return getattr(self._container, name)

        def demux(self, *args, **kwargs):
            for i, packet in enumerate(self._container.demux(*args, **kwargs)):
                if i == 45:
                    os.kill(os.getpid(), signal.SIGKILL)
                yield packet

    def _crashing_open(path, *args, **kwargs):
        name = os.path.basename(str(path))
        if name.startswith("crash_open"):
            os.kill(os.getpid(), signal.SIGSEGV)
        container = _open(path, *args, **kwargs)
        return _KilledMidway(container) if name.startswith("crash_mid") else container

    av.open = _crashing_open
'''

COLOURS = ["red", "green", "blue", "yellow", "cyan", "magenta"]


def test_crashing_decoder_is_a_failure_and_the_others_are_extracted(tmp_path, tiny_clip, tiny_clip_dir):
    videos = tmp_path / "videos"
    good = {"a_long": 20.0, "b": 4.0, "c": 4.0, "d": 6.0}  # a_long decodes next to crash_mid when it dies
    for i, (vid, seconds) in enumerate(good.items()):
        S.write_segment_video(videos / f"{vid}.mp4", [(COLOURS[i], seconds / 2), (COLOURS[i + 1], seconds / 2)],
                              fps=10, size=(64, 48))
    for name in ("crash_open", "crash_mid"):
        S.write_segment_video(videos / f"{name}.mp4", [("white", 8.0)], fps=10, size=(64, 48))
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(CRASH_HOOK)
    out = tmp_path / "cache"
    cmd = [sys.executable, "-m", "r2", "extract", str(videos), "--out", str(out), "--model", str(tiny_clip_dir),
           "--fps", "10", "--workers", "2", "--no-progress"]
    env = dict(os.environ, PYTHONPATH=str(hook), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "Traceback" not in run.stdout and "TerminatedWorkerError" not in run.stderr, run.stderr
    assert f"{len(good)} extracted, 0 already cached, 2 failed (of {len(good) + 2})" in run.stdout, run.stdout
    failures = {x["video_id"]: x for x in map(json.loads, (out / "failures.jsonl").read_text().splitlines())}
    assert failures["crash_open"]["reason"] == "decoder process crashed (exit code -11, SIGSEGV)"
    assert failures["crash_mid"]["reason"].startswith("decoder process crashed (exit code -9, SIGKILL")
    assert failures["crash_open"]["path"] == str(videos / "crash_open.mp4")  # absolute
    assert "crash_open.mp4: decoder process crashed" in run.stdout

    # the others are complete and right (a video in flight when a worker died was redone from its start)
    cache = FeatureCache.open(out)
    assert sorted(cache.video_ids()) == sorted(good)
    ref = tmp_path / "ref"
    extract_features([VideoJob(v, str(videos / f"{v}.mp4")) for v in good], [], ref, None, fps=10, workers=0,
                     clip=tiny_clip, progress=False)
    want = FeatureCache.open(ref)
    for vid, seconds in good.items():
        got = cache.load_video(vid)
        assert got.shape == (int(seconds * 10), 4, 50, 64)
        np.testing.assert_allclose(got, want.load_video(vid), rtol=2e-3, atol=2e-3)
    assert verify(out).ok

    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 1 and f"0 extracted, {len(good)} already cached, 2 failed" in rerun.stdout, rerun.stdout


def test_workers_that_die_at_start_up_end_the_run_with_a_clear_error(tmp_path, tiny_clip_dir):
    """Workers that die before decoding anything are not retried forever."""
    S.write_segment_video(tmp_path / "videos" / "v.mp4", [("red", 2.0)], fps=10)
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import os\n"
        "from multiprocessing import shared_memory\n"
        "_init = shared_memory.SharedMemory.__init__\n\n\n"
        "def _dies_on_attach(self, name=None, create=False, size=0, **kwargs):\n"
        "    if not create:  # a decode worker attaching the frame slots\n"
        "        os._exit(3)\n"
        "    _init(self, name, create, size, **kwargs)\n\n\n"
        "shared_memory.SharedMemory.__init__ = _dies_on_attach\n")
    cmd = [sys.executable, "-m", "r2", "extract", str(tmp_path / "videos"), "--out", str(tmp_path / "c"),
           "--model", str(tiny_clip_dir), "--workers", "2", "--no-progress"]
    env = dict(os.environ, PYTHONPATH=str(hook), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stdout + run.stderr
    assert ("Error: the decode worker processes die before decoding anything (exit code 3); decode in this "
            "process with --workers 0") in run.stderr


def test_a_decoder_that_starts_over_mid_video_gives_the_right_features(tiny_clip, tmp_path, monkeypatch):
    """The skipping decoder gives up on a video after some of its frames went to the model: those
    features are dropped and the video is extracted once, from its first clip."""
    paths = [S.write_index_video(tmp_path / f"v{i}.mp4", 120, fps=10, keyframe_interval=10, bframes=2).path
             for i in range(2)]
    jobs = [VideoJob(p.stem, str(p)) for p in paths]
    ref = tmp_path / "ref"
    extract_features(jobs, [], ref, None, fps=5, batch_size=8, workers=0, clip=tiny_clip, progress=False)
    skipping = V._decode_skipping

    def gives_up_after_40(*args):
        for i, clip in enumerate(skipping(*args)):
            if i == 40:
                raise V._NeedsFullDecode()
            yield clip

    monkeypatch.setattr(V, "_decode_skipping", gives_up_after_40)
    out = tmp_path / "out"
    summary = extract_features(jobs, [], out, None, fps=5, batch_size=8, workers=0, clip=tiny_clip, progress=False)
    assert summary.ok and summary.clips == 2 * 60
    a, b = FeatureCache.open(ref), FeatureCache.open(out)
    for job in jobs:
        np.testing.assert_array_equal(a.load_video(job.video_id), b.load_video(job.video_id))


def test_extraction_memory_does_not_grow_with_video_length(tiny_clip, tmp_path):
    """Frames are streamed to the model: a 10-minute video (600 clips, 90 MB of 224x224 frames) is
    extracted holding little more than its features (15 MB in float16), in this process or in a worker."""
    path = tmp_path / "ten_minutes.mp4"
    S.write_video(path, (np.full((48, 64, 3), 40 * (k // 20 % 6), np.uint8) for k in range(600 * 2)), fps=2,
                  codec="libx264", keyframe_interval=20)
    for workers in (0, 1):
        tracemalloc.start()
        try:
            summary = extract_features([VideoJob("long", str(path))], [], tmp_path / f"c{workers}", None, fps=1.0,
                                       workers=workers, clip=tiny_clip, progress=False)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert summary.ok and summary.clips == 600
        assert peak < 80e6, f"workers={workers}: peak {peak / 1e6:.0f} MB of numpy/Python memory"
    a, b = FeatureCache.open(tmp_path / "c0"), FeatureCache.open(tmp_path / "c1")
    np.testing.assert_array_equal(a.load_video("long"), b.load_video("long"))


def test_summary_rate_leaves_out_start_up(tiny_clip_dir, tmp_path):
    """frames/s is decoding + CLIP over the videos; model load and cache set-up are reported apart."""
    paths = [S.write_segment_video(tmp_path / f"v{i}.mp4", [("red", 3.0)], fps=10).path for i in range(2)]
    summary = extract_features([VideoJob(p.stem, str(p)) for p in paths], [], tmp_path / "c", tiny_clip_dir,
                               fps=2, workers=0, progress=False)
    assert summary.ok and summary.clips == 12
    assert summary.startup_seconds > 0 and summary.video_seconds > 0
    assert summary.startup_seconds + summary.video_seconds <= summary.seconds
    text = summary.format()
    assert f"({summary.clips / summary.video_seconds:.1f} frames/s decoded and extracted" in text
    assert f"start-up: model, cache, queries {summary.startup_seconds:.1f} s" in text
    assert Path(text.splitlines()[0].split()[2]) == tmp_path / "c"


# Loaded by the decode workers (PYTHONPATH): the skipping decoder of a file named restart* gives up
# after 40 clips (a chunk of 32 frames has gone to the model by then) and decoding starts over, as it
# does for a stream whose timestamps turn out unusable; a file in $R2_TEST_MARKS records that it did.
RESTART_HOOK = '''
import os

import r2.extract.video as V

_skipping = V._decode_skipping


def _gives_up_after_40(demuxed, *args):
    name = os.path.basename(str(demuxed.container.name))
    clips = _skipping(demuxed, *args)
    if not name.startswith("restart"):
        return (yield from clips)
    for i, clip in enumerate(clips):
        if i == 40:
            open(os.path.join(os.environ["R2_TEST_MARKS"], name), "w").close()
            raise V._NeedsFullDecode()
        yield clip


V._decode_skipping = _gives_up_after_40
'''


def test_a_decoder_that_starts_over_in_a_worker_process_gives_the_right_features(tiny_clip, tmp_path, monkeypatch):
    """The same as above with the decoding in a worker process: its restart message makes the main
    process drop the features of the frames it had already run."""
    from r2.extract import pipeline as P

    names = ("restart_a", "plain_b", "restart_c")
    paths = [S.write_index_video(tmp_path / f"{n}.mp4", 120, fps=10, keyframe_interval=10, bframes=2,
                                 size=(64, 48)).path for n in names]
    jobs = [VideoJob(p.stem, str(p)) for p in paths]
    ref = tmp_path / "ref"
    extract_features(jobs, [], ref, None, fps=5, batch_size=8, workers=0, clip=tiny_clip, progress=False)
    hook, marks = tmp_path / "hook", tmp_path / "marks"
    hook.mkdir()
    marks.mkdir()
    (hook / "sitecustomize.py").write_text(RESTART_HOOK)
    monkeypatch.setenv("PYTHONPATH", str(hook))
    monkeypatch.setenv("R2_TEST_MARKS", str(marks))
    P._close_pool()  # workers started before this test do not have the hook
    try:
        out = tmp_path / "out"
        summary = extract_features(jobs, [], out, None, fps=5, batch_size=8, workers=1, clip=tiny_clip,
                                   progress=False)
    finally:
        P._close_pool()  # nor may the next tests get these
    assert sorted(p.name for p in marks.iterdir()) == ["restart_a.mp4", "restart_c.mp4"]  # the workers started over
    assert summary.ok and summary.clips == 3 * 60, summary.format()
    a, b = FeatureCache.open(ref), FeatureCache.open(out)
    for job in jobs:
        np.testing.assert_array_equal(a.load_video(job.video_id), b.load_video(job.video_id))
    assert verify(out).ok


def test_the_model_runs_on_the_cores_the_decoders_leave_and_gets_them_all_when_it_is_the_bottleneck(
        tiny_clip, tmp_path, monkeypatch):
    """Observed inside the model's forward: 4 CPUs and 1 decode worker give the model 3 threads; when
    the plan hands the model every core, the next batches run on 4; the caller's count comes back."""
    import torch

    from r2.extract import pipeline as P

    paths = [S.write_segment_video(tmp_path / f"v{i}.mp4", [(COLOURS[i], 2.0)], fps=10, size=(64, 48)).path
             for i in range(2)]
    jobs = [VideoJob(p.stem, str(p)) for p in paths]  # 2 x 10 clips: fewer than the 32 the plan waits for
    seen: list[int] = []
    video_features = tiny_clip.video_features

    def recording(x):
        seen.append(torch.get_num_threads())
        return video_features(x)

    class DecidesAfterTwoBatches(P._CPUThreads):
        def revise(self, model_seconds, modelled_clips, decode_seconds, decoded_clips):
            if self.decided or modelled_clips < 8:
                return False
            self.decided, self.model_threads = True, self.cpus
            return True

    monkeypatch.setattr(tiny_clip, "video_features", recording)
    monkeypatch.setattr(P, "usable_cpus", lambda: 4)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = extract_features(jobs, [], tmp_path / "split", None, fps=5, batch_size=4, workers=1,
                                   clip=tiny_clip, progress=False)
        assert torch.get_num_threads() == 1  # given back
        split, seen[:] = list(seen), []
        monkeypatch.setattr(P, "_CPUThreads", DecidesAfterTwoBatches)
        handed = extract_features(jobs, [], tmp_path / "handed", None, fps=5, batch_size=4, workers=1,
                                  clip=tiny_clip, progress=False)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert summary.ok and summary.clips == 20 and split == [3] * 5
    assert handed.ok and seen == [3, 3] + [4] * 3
