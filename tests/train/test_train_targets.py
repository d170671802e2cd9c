"""r2.train.targets: clip counts and per-sample targets on hand-computed cases."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from r2.train.annotations import GroundingSample, Saliency, load_annotations
from r2.train.presets import get_preset
from r2.train.targets import (
    TargetError,
    annotation_grid_clips,
    bind_windows,
    build_targets,
    clip_count,
    crop_range,
    crop_targets,
    ffmpeg_clips,
    filter_for_training,
    lower_median,
    positive_candidates,
    sample_positive_clip,
    sample_rng,
    saliency_targets,
    scored_saliency,
    usable_clips,
    window_saliency,
    windows_in_clips,
    youtube_fps,
)

FIX = Path(__file__).resolve().parents[1] / "fixtures"


def mr(windows, duration=20.0, dataset="charades", qid=1):
    return GroundingSample(qid=qid, vid="v", query="q", duration=duration,
                           relevant_windows=[tuple(w) for w in windows], saliency=None,
                           split="train", dataset=dataset)


def scored(ids, scores, scale, dataset, duration=150, domain=None, times=None):
    return GroundingSample(qid="x", vid="x", query="q", duration=duration, relevant_windows=[],
                           saliency=Saliency(ids, scores, scale, times), split="train",
                           domain=domain, dataset=dataset)


# ---------------------------------------------------------------------------------------------
# clip counts


def test_ffmpeg_clip_count():
    assert ffmpeg_clips(150, 0.5) == 75  # QVHighlights
    assert ffmpeg_clips(30.96, 1.0) == 31  # Charades
    assert ffmpeg_clips(30.4, 1.0) == 30
    assert ffmpeg_clips(30.5, 1.0) == 31  # halves round up (away from zero)
    assert ffmpeg_clips(249.8639455782313, 0.5) == 125  # TACoS
    assert ffmpeg_clips(480.0, 0.5) == 240  # Ego4D
    assert ffmpeg_clips(0.4, 0.5) == 1  # never zero clips
    for bad in (0, -3, float("nan"), "150"):
        with pytest.raises(TargetError):
            ffmpeg_clips(bad, 0.5)


def test_clip_count_per_benchmark():
    assert clip_count("qvhighlights", 150) == 75
    assert clip_count("qvhighlights", 151) == 75  # the 2-s annotation grid floors
    assert annotation_grid_clips(142, 0.5) == 71
    assert clip_count("charades", 30.96) == 31
    assert clip_count("ego4d", 1200.0366) == 600
    assert clip_count("tacos", 176.87074829931973) == 88
    assert clip_count("custom", 31.5) == 16
    assert clip_count("custom", 31.5, fps=1.0) == 32
    assert clip_count("qvhighlights", 150, rule="ffmpeg_fps") == 75
    yt = load_annotations(FIX / "youtube" / "youtube_anno_synthetic.json")
    assert [clip_count("youtube", sample=s) for s in yt] == [12, 8, 6]
    with pytest.raises(TargetError, match="len\\(match\\)"):
        clip_count("youtube", 21.7)
    assert youtube_fps(yt[0]) == pytest.approx(12 / (650 / 29.97))
    tv = load_annotations(FIX / "tvsum" / "tvsum_anno_synthetic.json")
    assert clip_count("tvsum", sample=tv[0]) == 30 == int(1800 / 29.97002997002997 / 2)
    assert clip_count("tvsum", 60.06) == 30
    with pytest.raises(TargetError, match="duration or a sample"):
        clip_count("charades")


def test_usable_clips_follow_the_official_asserts():
    qvh = load_annotations(FIX / "qvhighlights" / "highlight_val_release.jsonl")[0]
    assert usable_clips(qvh, 75) == 75
    assert usable_clips(qvh, 71) == 71  # up to 4 fewer clips than the 75-clip grid
    with pytest.raises(TargetError, match="76 clips"):
        usable_clips(qvh, 76)
    with pytest.raises(TargetError, match="70 clips"):
        usable_clips(qvh, 70)
    tv = load_annotations(FIX / "tvsum" / "tvsum_anno_synthetic.json")[0]  # 30 rows
    assert usable_clips(tv, 34) == 30 and usable_clips(tv, 26) == 26
    with pytest.raises(TargetError, match="at most 4 apart"):
        usable_clips(tv, 35)
    yt = load_annotations(FIX / "youtube" / "youtube_anno_synthetic.json")[0]  # 12 clips
    assert usable_clips(yt, 12) == 12
    with pytest.raises(TargetError, match="one per annotated clip"):
        usable_clips(yt, 13)
    assert usable_clips(mr([[1, 2]]), 999) == 999  # Charades: as published, no check
    with pytest.raises(TargetError, match="no clips"):
        usable_clips(mr([[1, 2]]), 0)


def test_a_custom_row_must_have_the_duration_and_clip_ids_of_the_cached_video():
    """Custom rows: a duration whose clip count at the preset's rate is 5 or more away from
    the cache's (another video's, or other units) and clip ids past the end are refused,
    naming the row's file:line; within 4 clips, and ids inside, the cache's count is used."""
    row = dataclasses.replace(mr([[150, 160]], duration=200.0, dataset="custom"), origin="train.jsonl:7")
    with pytest.raises(TargetError) as err:
        usable_clips(row, 13, fps=0.5)
    assert str(err.value) == ("train.jsonl:7: the row gives video 'v' a duration of 200 s (100 clips at 0.5 "
                              "clips/s), but the cache has 13 clips (26 s) for it: the duration (and the "
                              "windows) must be in seconds of the video extracted under that id")
    assert usable_clips(mr([[1, 2]], duration=34.0, dataset="custom"), 13, fps=0.5) == 13  # 17 vs 13
    with pytest.raises(TargetError, match="18 clips at 0.5"):
        usable_clips(mr([[1, 2]], duration=36.0, dataset="custom"), 13, fps=0.5)
    with pytest.raises(TargetError, match="26 clips at 1 clips/s"):  # the rate is the preset's
        usable_clips(mr([[1, 2]], duration=26.0, dataset="custom"), 13, fps=1.0)
    ids = scored([3, 12], [[2], [2]], (0, 4), "custom", duration=26.0)
    assert usable_clips(ids, 13, fps=0.5) == 13
    ids = dataclasses.replace(scored([3, 13], [[2], [2]], (0, 4), "custom", duration=26.0), origin="train.jsonl:2")
    with pytest.raises(TargetError) as err:
        usable_clips(ids, 13, fps=0.5)
    assert str(err.value) == ("train.jsonl:2: relevant_clip_ids holds 13, outside the 13 clips of video 'x' "
                              "(26 s at 0.5 clips/s; clip ids count clips of 1 / fps seconds from 0)")


# ---------------------------------------------------------------------------------------------
# saliency targets


def test_qvhighlights_saliency_is_sum_over_12():
    s = scored([1, 3, 7], [[1, 2, 3], [4, 4, 4], [4, 4, 4]], (0, 4), "qvhighlights")
    np.testing.assert_array_equal(saliency_targets(s, 5),
                                  np.array([0, 6 / 12, 0, 1, 0], dtype=np.float32))  # clip 7 cut
    assert saliency_targets(s, 5).dtype == np.float32


def test_tvsum_saliency_is_sum_minus_20_over_80():
    rows = [[1.0] * 20, [5.0] * 20, [1.0] * 10 + [5.0] * 10, [2.0] * 20]
    s = scored(list(range(4)), rows, (1, 5), "tvsum", domain="VT")
    np.testing.assert_allclose(saliency_targets(s, 4), [0, 1, 0.5, 0.25])


def test_youtube_saliency_is_match_plus_1_over_2():
    s = scored([0, 1, 2, 3], [[-1], [0], [1], [1]], (-1, 1), "youtube", domain="dog")
    np.testing.assert_array_equal(saliency_targets(s, 4), [0, 0.5, 1, 1])
    assert scored_saliency(s.saliency, 4).dtype == np.float32


def test_moment_retrieval_saliency_ceil_rule():
    # [1.2, 3.5] s at 1 fps: ceil(1.2) = 2 <= j < ceil(3.5) = 4 -> clips 2, 3
    np.testing.assert_array_equal(window_saliency([[1.2, 3.5]], 6, 1.0), [0, 0, 1, 1, 0, 0])
    # integer boundaries: [2, 4] -> clips 2, 3 (ceil(2) = 2, ceil(4) = 4)
    np.testing.assert_array_equal(window_saliency([[2, 4]], 6, 1.0), [0, 0, 1, 1, 0, 0])
    # two windows
    np.testing.assert_array_equal(window_saliency([[0, 1], [4.5, 5]], 6, 1.0), [1, 0, 0, 0, 0, 1])


def test_bind_windows_cases():
    fps, T = 0.5, 10  # 2-s clips, video of 20 s
    # zero-length window -> one clip centred on it
    np.testing.assert_array_equal(bind_windows([[7.0, 7.0]], T, fps), [[6.0, 8.0]])
    # past the end -> clamped to T / fps
    np.testing.assert_array_equal(bind_windows([[8.0, 30.0]], T, fps), [[8.0, 20.0]])
    # reversed -> swapped
    np.testing.assert_array_equal(bind_windows([[6.0, 2.0]], T, fps), [[2.0, 6.0]])
    # zero length at the very end / start: the centre is kept half a clip inside
    np.testing.assert_array_equal(bind_windows([[20.0, 20.0]], T, fps), [[18.0, 20.0]])
    np.testing.assert_array_equal(bind_windows([[0.0, 0.0]], T, fps), [[0.0, 2.0]])
    # shorter than a clip (1 s) -> widened to exactly one clip around its centre
    np.testing.assert_array_equal(bind_windows([[4.0, 5.0]], T, fps), [[3.5, 5.5]])
    assert bind_windows([[1, 2]], T, fps).dtype == np.float32


def test_window_saliency_uses_bound_windows():
    fps, T = 0.5, 10
    # zero-length 7.0 -> [6, 8] -> clips ceil(3) = 3 .. ceil(4) = 4 -> clip 3
    np.testing.assert_array_equal(np.flatnonzero(window_saliency([[7.0, 7.0]], T, fps)), [3])
    # [8, 30] -> [8, 20] -> clips 4..9
    np.testing.assert_array_equal(np.flatnonzero(window_saliency([[8, 30]], T, fps)),
                                  [4, 5, 6, 7, 8, 9])
    # reversed [6, 2] -> [2, 6] -> clips 1, 2
    np.testing.assert_array_equal(np.flatnonzero(window_saliency([[6, 2]], T, fps)), [1, 2])
    # zero length at the end -> last clip
    np.testing.assert_array_equal(np.flatnonzero(window_saliency([[20, 20]], T, fps)), [9])


def test_windows_in_clip_units_are_as_written():
    s = mr([[905.0, 1200.1], [77.31, 77.31]], duration=1200.0366, dataset="ego4d")
    w = windows_in_clips(s, 0.5)
    assert w.dtype == np.float32 and w.shape == (2, 2)
    np.testing.assert_allclose(w, [[452.5, 600.05], [38.655, 38.655]], rtol=1e-6)
    assert windows_in_clips([], 0.5).shape == (0, 2)


# ---------------------------------------------------------------------------------------------
# positive clips


def test_positive_candidate_rules():
    sal = np.array([0, 0.25, 0.5, 0.75, 1.0], dtype=np.float32)
    assert positive_candidates(sal, "gt0").tolist() == [1, 2, 3, 4]
    assert positive_candidates(sal, "gt_half").tolist() == [3, 4]  # YouTube: match = 1 only
    assert positive_candidates(sal, "gt_median").tolist() == [3, 4]  # median 0.5
    # even length: torch.median's lower middle value (here 0.25, not 0.375)
    even = np.array([0.5, 0.0, 0.25, 1.0])
    assert lower_median(even) == 0.25
    assert positive_candidates(even, "gt_median").tolist() == [0, 3]
    # ties at the median are negative
    assert positive_candidates(np.array([0.5, 0.5, 0.5]), "gt_median").tolist() == []
    with pytest.raises(TargetError, match="unknown positive rule"):
        positive_candidates(sal, "top3")


def test_positive_sampling_is_seeded_and_uniform():
    cands = np.array([3, 5, 9])
    draws = [sample_positive_clip(cands, sample_rng(7, epoch, 0)) for epoch in range(300)]
    again = [sample_positive_clip(cands, sample_rng(7, epoch, 0)) for epoch in range(300)]
    assert draws == again
    counts = np.bincount(draws, minlength=10)[[3, 5, 9]]
    assert counts.sum() == 300 and counts.min() > 60  # each ~100
    assert sample_rng(1, 2, 3).integers(1 << 30) != sample_rng(1, 2, 4).integers(1 << 30)


def test_no_positive_clip():
    sal = np.array([0.0, 0.0, 0.0, 0.0], dtype=np.float32)
    rng = np.random.default_rng(0)
    # default: a highest-target clip (all tie here: any clip)
    picks = {sample_positive_clip(np.array([], dtype=np.int64), rng, sal) for _ in range(50)}
    assert picks == {0, 1, 2, 3}
    assert sample_positive_clip([], rng, np.array([0.1, 0.4, 0.4, 0.2]), "argmax") in (1, 2)
    assert sample_positive_clip([], rng, sal, "skip") == -1
    with pytest.raises(TargetError, match="no candidate"):
        sample_positive_clip([], rng, sal, "error")


# ---------------------------------------------------------------------------------------------
# build_targets on the example files


def test_build_targets_qvhighlights():
    s = load_annotations(FIX / "qvhighlights" / "highlight_val_release.jsonl")[0]
    t = build_targets(s, 75, sample_rng(0), preset=get_preset("qvhighlights"))
    # window [82, 150] s -> [41, 75] clips; clips 41..74 annotated
    np.testing.assert_array_equal(t.windows, [[41.0, 75.0]])
    expected = np.zeros(75, dtype=np.float32)
    for clip, row in zip(s.saliency.clip_ids, s.saliency.scores):
        expected[clip] = row.sum() / 12
    np.testing.assert_array_equal(t.saliency, expected)
    assert set(t.candidates.tolist()) == set(np.flatnonzero(expected > 0).tolist())
    assert t.positive_clip in t.candidates
    assert t.num_clips == 75


def test_build_targets_qvhighlights_query_without_positive():
    rows = load_annotations(FIX / "qvhighlights" / "highlight_test_with_gt.jsonl")
    zero = [s for s in rows if not (s.saliency.scores > 0).any()]
    assert len(zero) == 1  # one test query whose annotated clips all scored 0
    t = build_targets(zero[0], 75, sample_rng(0))
    assert t.candidates.size == 0 and 0 <= t.positive_clip < 75
    assert build_targets(zero[0], 75, sample_rng(0), empty_positive="skip").positive_clip == -1


def test_build_targets_ego4d_quirks():
    rows = load_annotations(FIX / "ego4d" / "nlq_synthetic.jsonl")
    zero_length = rows[2]  # [77.31, 77.31] on 240 clips
    t = build_targets(zero_length, clip_count("ego4d", sample=zero_length), sample_rng(0))
    assert t.candidates.tolist() == [39] and t.positive_clip == 39
    past_end = rows[3]  # [905, 1200.1] on a 1200.0366-s clip: 600 clips
    t = build_targets(past_end, 600, sample_rng(0))
    assert t.candidates.tolist() == list(range(453, 600))
    np.testing.assert_allclose(t.windows, [[452.5, 600.05]], rtol=1e-6)  # as written


def test_build_targets_charades_and_tacos():
    charades = load_annotations(FIX / "charades" / "charades_synthetic.jsonl")
    t = build_targets(charades[1], 31, sample_rng(0), preset=get_preset("charades"))
    assert t.candidates.tolist() == [25, 26, 27, 28, 29, 30]  # [24.3, 30.96] at 1 fps
    tacos = load_annotations(FIX / "tacos" / "tacos_synthetic.jsonl")
    t = build_targets(tacos[0], 125, sample_rng(0), preset=get_preset("tacos"))
    # [4.7959, 12.0408] s -> [2.398, 6.020] clips -> ceil: 3 <= j < 7
    assert t.candidates.tolist() == [3, 4, 5, 6]


def test_build_targets_youtube_and_tvsum():
    yt = load_annotations(FIX / "youtube" / "youtube_anno_synthetic.json")
    preset = get_preset("youtube")
    t = build_targets(yt[0], 12, sample_rng(0), preset=preset)
    assert t.candidates.tolist() == [4, 5, 6] and t.windows.shape == (0, 2)
    no_positive = build_targets(yt[2], 6, sample_rng(0), preset=preset)  # every match is -1
    assert no_positive.candidates.size == 0 and 0 <= no_positive.positive_clip < 6
    tv = load_annotations(FIX / "tvsum" / "tvsum_anno_synthetic.json")[0]
    full = build_targets(tv, 30, sample_rng(0), preset=get_preset("tvsum"))
    sums = tv.saliency.scores.sum(axis=1)
    np.testing.assert_allclose(full.saliency, (sums - 20) / 80, rtol=1e-6)
    median = np.sort(full.saliency)[14]  # lower median of 30 values
    assert full.candidates.tolist() == np.flatnonzero(full.saliency > median).tolist()
    # the median is taken after truncation to the cached clips
    cut = build_targets(tv, 27, sample_rng(0), preset=get_preset("tvsum"))
    median27 = np.sort(full.saliency[:27])[13]
    assert cut.candidates.tolist() == np.flatnonzero(full.saliency[:27] > median27).tolist()


def test_build_targets_custom_and_errors():
    with_scores = GroundingSample(qid=1, vid="v", query="q", duration=10.0,
                                  relevant_windows=[(0.0, 4.0)],
                                  saliency=Saliency([0, 1], [[3], [0]], (0, 3)), split="train")
    t = build_targets(with_scores, 5, sample_rng(0))
    np.testing.assert_array_equal(t.saliency, [1, 0, 0, 0, 0])  # custom scale (0, 3)
    windows_only = build_targets(with_scores, 5, sample_rng(0), target="windows")
    np.testing.assert_array_equal(windows_only.saliency, [1, 1, 0, 0, 0])
    nothing = GroundingSample(qid=1, vid="v", query="q", duration=10.0, relevant_windows=[],
                              saliency=None, split="test", labelled=False)
    with pytest.raises(TargetError, match="no saliency scores and no windows"):
        build_targets(nothing, 5)
    with pytest.raises(TargetError, match="at least one clip"):
        build_targets(with_scores, 0)


# ---------------------------------------------------------------------------------------------
# training-time rules


def test_min_duration_filter():
    samples = [mr([[1, 2]], duration=d) for d in (4.9, 5.0, 30.0)]
    kept, dropped = filter_for_training(samples, get_preset("charades"))
    assert [s.duration for s in kept] == [5.0, 30.0] and [s.duration for s in dropped] == [4.9]
    split = filter_for_training(samples, get_preset("custom"))
    assert len(split.kept) == 3 and not split.dropped


def test_long_video_crop():
    assert crop_range(700, 1024, 5) == (0, 700)  # short enough: whole video
    for seed in range(50):
        start, stop = crop_range(3000, 1024, 2500, np.random.default_rng(seed))
        assert stop - start == 1024 and start <= 2500 < stop and stop <= 3000
    assert crop_range(3000, 1024, 2500, sample_rng(3)) == crop_range(3000, 1024, 2500, sample_rng(3))
    start, stop = crop_range(3000, 1024, -1, np.random.default_rng(0))
    assert 0 <= start and stop <= 3000

    s = mr([[20.0, 30.0], [300.0, 320.0]], duration=400.0, dataset="ego4d")
    t = build_targets(s, 200, sample_rng(0), positive_rule="gt0")
    cropped = crop_targets(t, 100, 180)
    assert cropped.num_clips == 80 and cropped.saliency.shape == (80,)
    np.testing.assert_array_equal(cropped.windows, [[50.0, 60.0]])  # [150, 160] clips shifted
    assert cropped.candidates.tolist() == list(range(50, 60))
    assert cropped.positive_clip == (t.positive_clip - 100 if 100 <= t.positive_clip < 180 else -1)
    with pytest.raises(TargetError):
        crop_targets(t, 150, 250)
