"""Window decoding, unit rounding, NMS of both kinds and saliency decoding."""

import numpy as np
import pytest
import torch

from r2.model import R2Model
from r2.model.decoding import expand_level_scores, nms, postprocess_windows, temporal_iou


def _rows(*rows):
    return np.array(rows, dtype=np.float32)


def test_temporal_iou():
    iou = temporal_iou(np.array([0, 10], np.float32), _rows([0, 7], [5, 15], [10, 20], [3, 3]))
    np.testing.assert_allclose(iou, [0.7, 5 / 15, 0.0, 0.0], rtol=1e-6)


def test_normal_nms_zeroes_overlaps_at_or_above_threshold_and_keeps_the_rest():
    rows = _rows([0, 10, 0.9], [0, 7, 0.8], [20, 30, 0.7], [1, 10, 0.6], [0, 6.9, 0.5])
    out = nms(rows, "normal", 0.7)
    assert out.shape == (5, 3)  # suppressed rows are kept with score 0
    by_window = {(float(s), float(e)): float(sc) for s, e, sc in out}
    assert by_window[(0.0, 10.0)] == pytest.approx(0.9)
    assert by_window[(0.0, 7.0)] == 0.0  # IoU exactly 0.7
    assert by_window[(1.0, 10.0)] == 0.0  # IoU 0.9
    assert by_window[(20.0, 30.0)] == pytest.approx(0.7)  # no overlap
    # [0, 6.9] has IoU 0.69 with [0, 10]: kept with its score
    kept = out[np.isclose(out[:, 1], 6.9)]
    assert kept[0, 2] == pytest.approx(0.5)
    assert list(out[:, 2]) == sorted(out[:, 2], reverse=True)


def test_linear_nms_decays_scores_by_overlap():
    rows = _rows([0, 10, 0.9], [0, 5, 0.8], [20, 30, 0.7])
    out = nms(rows, "linear")
    # [0, 5] overlaps [0, 10] with IoU 0.5 -> 0.8 * 0.5 = 0.4, now below 0.7
    np.testing.assert_allclose(out, _rows([0, 10, 0.9], [20, 30, 0.7], [0, 5, 0.4]), rtol=1e-6)


def test_no_nms_only_sorts():
    rows = _rows([0, 10, 0.2], [0, 9, 0.8])
    np.testing.assert_array_equal(nms(rows, None), _rows([0, 9, 0.8], [0, 10, 0.2]))


def test_clamp_and_unit_rounding_only_for_windows_ending_inside():
    rows = _rows([-3.1, 5.3, 0.9], [140.7, 151.0, 0.8], [33.1, 40.9, 0.7])
    out = postprocess_windows(rows, 150.0, unit=2.0, nms_kind=None)
    np.testing.assert_allclose(out, _rows([0, 6, 0.9], [140.7, 150, 0.8], [34, 40, 0.7]), rtol=1e-6)


def test_saliency_expansion_by_hand():
    # T = 5, strides (1, 2, 4): levels of 5, 2, 1 points
    scores = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5, 0.9, 0.0, 0.35]])
    got = expand_level_scores(scores, [5, 2, 1], [1, 2, 4], torch.tensor([5]), 5)
    # level 2: [0.9, 0.9, 0.0, 0.0, 0.0(pad with last)]; level 4: 0.35 x 5
    torch.testing.assert_close(got, torch.tensor([[0.9, 0.9, 0.35, 0.4, 0.5]]))


def test_decoded_windows_lie_in_the_video_and_are_sorted(h):
    torch.manual_seed(0)
    for nms_kind, unit in (("normal", 2.0), ("linear", None), (None, 0.1)):
        cfg = h.tiny_config(nms=nms_kind, unit=unit, max_moments=7)
        model = R2Model(cfg).eval()
        clips = [20, 9, 4]
        out = model(*h.collate(h.make_samples(cfg, clips, [3, 5, 2])))
        durations = [38.5, 18.0, 7.0]
        preds = model.decode(out, durations)
        for pred, d, t in zip(preds, durations, clips):
            w = np.array(pred.windows)
            assert 1 <= len(w) <= 7
            assert (w[:, 0] >= 0).all() and (w[:, 1] <= d).all() and (w[:, 0] <= w[:, 1]).all()
            assert list(w[:, 2]) == sorted(w[:, 2], reverse=True)
            assert len(pred.saliency) == t


def test_tvsum_decoding_has_saliency_only(h):
    cfg = h.tvsum_config()
    model = R2Model(cfg).eval()
    out = model(*h.collate(h.make_samples(cfg, [6, 3], [2, 2])))
    preds = model.decode(out, [12.0, 6.0])
    assert preds[0].windows is None and len(preds[1].saliency) == 3
    # merge_cls_sal=False: saliency is the class probability of each clip
    torch.testing.assert_close(torch.tensor(preds[0].saliency), out.class_logits[0].sigmoid())
