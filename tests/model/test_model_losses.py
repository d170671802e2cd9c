"""Every loss term is zero or minimal in a case built for it; label assignment and the criterion's
wiring (groupings, positive clip, configured gamma/alpha, the quirk-mode L_reg rule) by hand."""

import math

import pytest
import torch
import torch.nn.functional as F

from r2.model import R2Model
from r2.model.losses import (dynamic_bce_loss, info_nce_loss, l1_loss, sampled_nce_loss,
                             sigmoid_focal_loss)
from r2.model.points import assign_targets, bind_boundary, make_points

LOG_SCALE = torch.tensor([math.log(1 / 0.07)])


def test_focal_loss_by_hand_and_minimal_when_perfect():
    logits = torch.tensor([[0.0, 0.0, 5.0]])
    target = torch.tensor([[1.0, 0.0, 1.0]])
    weight = torch.tensor([[1.0, 1.0, 0.0]])  # the third point is padding
    # p = 0.5 -> ce = log 2, (1 - p_t)^2 = 0.25, averaged over the 2 valid points
    assert sigmoid_focal_loss(logits, target, weight).item() == pytest.approx(0.25 * math.log(2))
    perfect = torch.tensor([[30.0, -30.0, 0.0]])
    assert sigmoid_focal_loss(perfect, target, weight).item() < 1e-12
    # alpha weighting when asked for
    assert sigmoid_focal_loss(logits, target, weight, alpha=0.25).item() == pytest.approx(
        0.5 * (0.25 + 0.75) * 0.25 * math.log(2))


def test_dynamic_bce_is_minimal_at_the_target():
    target = torch.tensor([[0.2, 0.9, 0.5, 0.0]])
    weight = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    best = torch.logit(target.clamp(1e-6, 1 - 1e-6)).requires_grad_(True)
    loss = dynamic_bce_loss(best, target, weight)
    loss.backward()
    assert float(best.grad.abs().max()) < 1e-6
    entropy = -(target * target.log() + (1 - target) * (1 - target).clamp(min=1e-12).log())[0, :3].mean()
    assert loss.item() == pytest.approx(entropy.item(), abs=1e-5)
    assert dynamic_bce_loss(best.detach() + 1.0, target, weight) > loss


def test_l1_is_zero_when_exact_and_ignores_negatives():
    target = torch.rand(2, 5, 2)
    weight = torch.zeros(2, 5, 2)
    weight[0, 1] = 1
    pred = target.clone()
    pred[1] += 10  # no positive there
    assert l1_loss(pred, target, weight).item() == 0.0
    pred[0, 1, 0] += 2
    assert l1_loss(pred, target, weight).item() == pytest.approx(1.0)  # 2 / (2 values)


def test_sampled_nce_minimal_when_positive_aligned():
    b, t, c = 3, 6, 8
    query = torch.eye(c)[:b]  # (B, C)
    video = -query[:, None, :].repeat(1, t, 1)  # every clip opposite to its query ...
    pos = torch.tensor([1, 4, 2])
    video[torch.arange(b), pos] = query  # ... except the positive one
    mask = torch.ones(b, t, dtype=torch.bool)
    saliency = torch.zeros(b, t)
    saliency[torch.arange(b), pos] = 1.0
    loss = sampled_nce_loss(video, query, mask, saliency, pos, LOG_SCALE, ("row", "col"))
    assert loss.item() < 1e-9
    random = sampled_nce_loss(torch.randn(b, t, c), query, mask, saliency, pos, LOG_SCALE, ("row", "col"))
    assert random.item() > 1.0


def test_sampled_nce_by_hand():
    # two samples, two clips; the column term contrasts samples at the same clip index
    video = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [1.0, -1.0]]])
    query = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    mask = torch.tensor([[True, True], [True, True]])
    saliency = torch.tensor([[1.0, 0.5], [0.3, 0.9]])
    pos = torch.tensor([0, 1])
    scale = 1 / 0.07
    cos = torch.nn.functional.cosine_similarity(video, query[:, None], dim=-1) * scale  # (2, 2)
    # allowed: saliency <= saliency at the positive clip -> all entries here
    row = -(torch.log_softmax(cos, 1)[0, 0] + torch.log_softmax(cos, 1)[1, 1]) / 2
    col = -(torch.log_softmax(cos.t(), 1)[0, 0] + torch.log_softmax(cos.t(), 1)[1, 1]) / 2
    got = sampled_nce_loss(video, query, mask, saliency, pos, LOG_SCALE, ("row", "col"))
    assert got.item() == pytest.approx((row + col).item(), rel=1e-5)
    only_row = sampled_nce_loss(video, query, mask, saliency, pos, LOG_SCALE, ("row",))
    assert only_row.item() == pytest.approx(row.item(), rel=1e-5)
    # a clip more salient than the positive one is never a negative
    saliency2 = torch.tensor([[0.5, 1.0], [0.3, 0.9]])
    masked = sampled_nce_loss(video, query, mask, saliency2, pos, LOG_SCALE, ("row",))
    assert masked.item() == pytest.approx((-torch.log_softmax(cos, 1)[1, 1] / 2).item(), rel=1e-5)


def test_info_nce_minimal_for_matched_orthogonal_pairs():
    a = torch.eye(4)[None].repeat(2, 1, 1)  # (G=2, n=4, C=4)
    loss = info_nce_loss(a, a.clone(), 0.07)
    expected = math.log(1 + 3 * math.exp(-1 / 0.07))
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert loss.item() < 1e-5
    assert info_nce_loss(a, a.flip(1), 0.07).item() > 10


def test_bind_boundary_by_hand():
    windows = torch.tensor([[[-3.0, 4.0], [7.0, 3.0], [5.0, 5.2], [9.9, 12.0], [11.0, 12.0], [1.0, 2.0]]])
    mask = torch.tensor([[True, True, True, True, True, False]])
    got = bind_boundary(windows, mask, torch.tensor([10]))
    expected = torch.tensor([[[0.0, 4.0], [3.0, 7.0], [4.6, 5.6], [9.0, 10.0], [9.0, 10.0], [0.0, 0.0]]])
    torch.testing.assert_close(got, expected)


def test_label_assignment_by_hand():
    points = make_points([8, 4], [1, 2], [(0.0, 2.0), (2.0, math.inf)])
    windows = torch.tensor([[[2.0, 5.0], [0.0, 8.0]]])
    cls, reg = assign_targets(points, windows, torch.tensor([[True, True]]), center_radius=1.5)
    # stride 1: points 3, 4 (centre region [2, 5], max distance <= 2)
    # stride 2: points 2, 4 take the shorter GT [2, 5]; point 6 only fits [0, 8]
    assert cls[0].tolist() == [0, 0, 0, 1, 1, 0, 0, 0] + [0, 1, 1, 1]
    pos = cls[0].bool()
    torch.testing.assert_close(reg[0, pos], torch.tensor([[1.0, 2.0], [2.0, 1.0], [0.0, 1.5], [1.0, 0.5],
                                                          [3.0, 1.0]]))
    # a padded GT never qualifies
    targets = assign_targets(points, windows, torch.tensor([[True, False]]), center_radius=1.5)
    assert targets.cls[0, 8 + 3].item() == 0 and targets.reg.shape == (1, 12, 2)


def test_criterion_terms_and_weights(h):
    torch.manual_seed(0)
    cfg = h.tiny_config(dropout=0.0, droppath=0.0)
    model = R2Model(cfg).eval()
    clips = [10, 7]
    out = model(*h.collate(h.make_samples(cfg, clips, [3, 4])))
    targets = h.make_targets(clips)
    base = model.compute_loss(out, targets)
    assert base.total.item() == pytest.approx(sum(v.item() for v in base.terms.values()), rel=1e-6)
    heavier = R2Model(cfg.replace(sal_weight=0.2, reg_weight=0.0))
    heavier.load_state_dict(model.state_dict())
    other = heavier.eval().compute_loss(out, targets)
    assert "reg" not in other.terms
    assert other.terms["sal"].item() == pytest.approx(2 * base.terms["sal"].item(), rel=1e-5)


def test_tvsum_criterion_uses_saliency_targets(h):
    torch.manual_seed(0)
    cfg = h.tvsum_config()
    model = R2Model(cfg).eval()
    clips = [9, 6]
    out = model(*h.collate(h.make_samples(cfg, clips, [3, 4])))
    targets = h.make_targets(clips)
    targets.windows = targets.window_mask = None  # not needed without moment retrieval
    loss = model.compute_loss(out, targets)
    assert set(loss.terms) == {"cls", "sal", "video", "layer"}
    assert out.coord_offsets is None
    expected = dynamic_bce_loss(out.class_logits, targets.saliency, out.video_mask.float())
    assert loss.terms["cls"].item() == pytest.approx(expected.item())


def _symmetric_infonce(a, b, tau=0.07):
    """½ [CE(S, diag) + CE(Sᵀ, diag)] of S = cos(a_i, b_j) / tau, for a, b (n, C)."""
    sim = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).t() / tau
    target = torch.arange(a.shape[0])
    return (F.cross_entropy(sim, target) + F.cross_entropy(sim.t(), target)) / 2


def test_calibration_losses_contrast_samples_per_layer_and_layers_per_sample(h):
    torch.manual_seed(0)
    cfg = h.tiny_config(dropout=0.0, droppath=0.0, cls_weight=0.0, reg_weight=0.0, sal_weight=0.0,
                        video_cal_weight=0.3, layer_cal_weight=0.7)
    model = R2Model(cfg).eval()
    clips = [8, 6, 9, 7]
    out = model(*h.collate(h.make_samples(cfg, clips, [3, 4, 2, 5])))
    targets = h.make_targets(clips)
    targets.positive_clip = torch.tensor([3, 1, 5, 2])  # no sample's positive clip is clip 0
    loss = model.compute_loss(out, targets)
    assert set(loss.terms) == {"video", "layer"}
    k, b = cfg.num_layers, len(clips)
    # the mapped CLS token of each layer at each sample's positive clip, gathered one by one
    v = torch.stack([torch.stack([out.layer_video_cls[i, j, int(targets.positive_clip[j])] for j in range(b)])
                     for i in range(k)])  # (K, B, C)
    q = out.layer_query_pooled  # (K, B, C)
    # L_video: within each layer the B samples of the batch; L_layer: within each sample its K layers
    video = sum(_symmetric_infonce(v[i], q[i]) for i in range(k)) / k
    layer = sum(_symmetric_infonce(v[:, j], q[:, j]) for j in range(b)) / b
    assert abs(video.item() - layer.item()) > 0.05  # the two groupings differ on these features
    assert loss.terms["video"].item() == pytest.approx(0.3 * video.item(), rel=1e-5)
    assert loss.terms["layer"].item() == pytest.approx(0.7 * layer.item(), rel=1e-5)
    assert loss.terms["video"].item() == pytest.approx(0.3 * info_nce_loss(v, q, 0.07).item(), rel=1e-5)
    assert loss.terms["layer"].item() == pytest.approx(
        0.7 * info_nce_loss(v.transpose(0, 1), q.transpose(0, 1), 0.07).item(), rel=1e-5)


def _focal_by_hand(logits, target, mask, gamma, alpha=None):
    p = logits.sigmoid()
    ce = -(target * p.log() + (1 - target) * (1 - p).log())
    p_t = target * p + (1 - target) * (1 - p)
    loss = (1 - p_t) ** gamma * ce
    if alpha is not None:
        loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return (loss * mask).sum() / mask.sum()


def test_criterion_uses_the_configured_focal_gamma_and_alpha(h):
    torch.manual_seed(0)
    cfg = h.tiny_config(dropout=0.0, droppath=0.0, reg_weight=0.0, sal_weight=0.0, video_cal_weight=0.0,
                        layer_cal_weight=0.0)
    model = R2Model(cfg).eval()
    clips = [10, 7]
    out = model(*h.collate(h.make_samples(cfg, clips, [3, 4])))
    targets = h.make_targets(clips)
    windows = bind_boundary(targets.windows, targets.window_mask, out.num_clips)
    cls_target, _ = assign_targets(out.points, windows, targets.window_mask, cfg.center_radius)
    assert cls_target.sum() > 0
    mask = out.point_mask.float()
    got = {}
    for gamma, alpha in ((0.0, None), (2.0, None), (3.5, None), (2.0, 0.9)):  # 0.9: the paper's alpha
        criterion = R2Model(cfg.replace(focal_gamma=gamma, focal_alpha=alpha)).criterion
        got[gamma, alpha] = criterion(out, targets).terms["cls"].item()
        expected = _focal_by_hand(out.class_logits, cls_target, mask, gamma, alpha).item()
        assert got[gamma, alpha] == pytest.approx(expected, rel=1e-5), (gamma, alpha)
    assert got[0.0, None] > got[2.0, None] > got[3.5, None]


def test_quirk_mode_regresses_a_positive_point_on_a_padded_position(h):
    """The official L_reg is not masked by the pyramid mask: a GT window that ends at the last
    clip of a shorter sample makes the point just past it (a padded clip) positive, and in the
    official training batch that point is regressed. Outside the quirk mode it is not."""
    torch.manual_seed(0)
    cfg = h.tiny_config(dropout=0.0, droppath=0.0, cls_weight=0.0, sal_weight=0.0, video_cal_weight=0.0,
                        layer_cal_weight=0.0)
    clips = [6, 10]
    batch = h.collate(h.make_samples(cfg, clips, [3, 4]))
    targets = h.make_targets(clips, windows=[[[5.0, 6.0]], [[3.0, 7.0]]])

    def reg_by_hand(out, masked):
        windows = bind_boundary(targets.windows, targets.window_mask, out.num_clips)
        positive, reg_target = assign_targets(out.points, windows, targets.window_mask, cfg.center_radius)
        if masked:
            positive = positive * out.point_mask.float()
        diff = (out.coord_offsets - reg_target).abs() * positive[:, :, None]
        return cfg.reg_weight * diff.sum() / (2 * positive.sum()), positive

    model = R2Model(cfg).train()
    out = model(*batch)
    assert out.quirks
    official, positive = reg_by_hand(out, masked=False)
    masked, _ = reg_by_hand(out, masked=True)
    padded_positive = positive.bool() & ~out.point_mask
    assert padded_positive[0, 6] and int(padded_positive.sum()) == 1  # stride-1 point at clip 6 of sample 0
    assert abs(official.item() - masked.item()) > 1e-3
    assert model.compute_loss(out, targets).terms["reg"].item() == pytest.approx(official.item(), rel=1e-5)

    clean = R2Model(cfg.replace(official_batch_quirks=False))
    clean.load_state_dict(model.state_dict())
    out = clean.train()(*batch)
    assert not out.quirks
    masked, _ = reg_by_hand(out, masked=True)
    assert clean.compute_loss(out, targets).terms["reg"].item() == pytest.approx(masked.item(), rel=1e-5)
