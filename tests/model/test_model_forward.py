"""R2Model forward: shapes, padding invariance, gradients, parameter counts, determinism, AMP."""

import pytest
import torch

from r2.model import R2Config, R2Model, R2ModelError


def _points_for(t, strides):
    return sum(t // s for s in strides if t >= s)


# ----------------------------------------------------------------------------- counts


def test_parameter_count_default_config_is_official():
    model = R2Model(R2Config())
    assert model.num_trainable_parameters() == 2_836_242
    # the SampledNCE logit scale is a persistent, non-trainable buffer
    assert "criterion.sal_log_scale" in model.state_dict()
    assert len(model.state_dict()) == 83  # 82 parameters + 1 buffer, like the official dict


def test_parameter_count_tvsum_youtube_config_is_official():
    cfg = R2Config(strides=(1,), use_tef=False, coord_head=False, merge_cls_sal=False,
                   cls_loss="dynamic_bce", sal_directions=("row",))
    model = R2Model(cfg)
    assert model.num_trainable_parameters() == 1_846_281
    assert len(model.state_dict()) == 55


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("t,s", [(1, 1), (7, 5), (16, 3)])
def test_output_shapes(h, k, t, s):
    cfg = h.tiny_config(num_layers=k)
    model = R2Model(cfg)
    samples = h.make_samples(cfg, [t, max(1, t - 2)], [s, 1])
    batch = h.collate(samples)
    targets = h.make_targets([t, max(1, t - 2)])
    for mode in ("train", "eval"):
        model.train(mode == "train")
        out = model(*batch)
        p = _points_for(t, cfg.strides)
        c = cfg.hidden_dim
        assert out.class_logits.shape == (2, p)
        assert out.coord_offsets.shape == (2, p, 2) and bool((out.coord_offsets >= 0).all())
        assert out.points.shape == (p, 4) and out.point_mask.shape == (2, p)
        assert sum(out.level_sizes) == p
        assert out.saliency.shape == (2, t)
        assert out.hidden.shape == (2, t, c) and bool((out.hidden >= 0).all())
        assert out.query_pooled.shape == (2, c)
        assert out.layer_video_cls.shape == (k, 2, t, c)
        assert out.layer_query_pooled.shape == (k, 2, c)
        assert out.num_clips.tolist() == [t, max(1, t - 2)]
        loss = model.compute_loss(out, targets)
        assert torch.isfinite(loss.total)
        assert set(loss.terms) == {"cls", "reg", "sal", "video", "layer"}


def test_extra_input_layers_use_the_last_k(h):
    cfg = h.tiny_config(num_layers=2)
    model = R2Model(cfg).eval()
    samples = h.make_samples(cfg, [6], [3], layers=4)
    video, vm, query, qm = h.collate(samples)
    full = model(video, vm, query, qm)
    last = model(video[:, :, 2:], vm, query[:, 2:], qm)
    assert torch.equal(full.class_logits, last.class_logits)


def test_bad_inputs_are_clear_errors(h):
    cfg = h.tiny_config()
    model = R2Model(cfg).eval()
    video, vm, query, qm = h.collate(h.make_samples(cfg, [5, 3], [2, 2]))
    with pytest.raises(R2ModelError, match="widths"):
        model(video[..., :-1], vm, query, qm)
    with pytest.raises(R2ModelError, match="layers"):
        model(video[:, :, :1], vm, query, qm)
    bad = vm.clone()
    bad[1, 0] = False  # left padding
    with pytest.raises(R2ModelError, match="right-padded"):
        model(video, bad, query, qm)


# ----------------------------------------------------------------------------- padding


CLIPS, TOKENS = [13, 8, 3], [5, 2, 7]


def _compare_with_alone(model, batch_out, alone_outs, atol=1e-5):
    for b, alone in enumerate(alone_outs):
        t = int(alone.num_clips[0])
        assert bool(alone.point_mask.all())
        valid = batch_out.point_mask[b]
        assert int(valid.sum()) == alone.class_logits.shape[1]
        torch.testing.assert_close(batch_out.points[valid], alone.points)
        torch.testing.assert_close(batch_out.class_logits[b, valid], alone.class_logits[0], atol=atol, rtol=0)
        torch.testing.assert_close(batch_out.coord_offsets[b, valid], alone.coord_offsets[0], atol=atol, rtol=1e-5)
        torch.testing.assert_close(batch_out.hidden[b, :t], alone.hidden[0], atol=atol, rtol=0)
        torch.testing.assert_close(batch_out.saliency[b, :t], alone.saliency[0], atol=atol, rtol=0)
        torch.testing.assert_close(batch_out.query_pooled[b], alone.query_pooled[0], atol=atol, rtol=0)
        torch.testing.assert_close(batch_out.layer_video_cls[:, b, :t], alone.layer_video_cls[:, 0], atol=atol, rtol=0)
        torch.testing.assert_close(batch_out.layer_query_pooled[:, b], alone.layer_query_pooled[:, 0], atol=atol, rtol=0)


def _run_padding_case(h, model, cfg):
    samples = h.make_samples(cfg, CLIPS, TOKENS)
    batch = h.collate(samples, pad_clips=16, pad_tokens=9, pad_value="garbage")
    torch.manual_seed(0)
    out = model(*batch)
    alone = [model(*h.collate([s])) for s in samples]
    _compare_with_alone(model, out, alone)
    # decoding a padded batch = decoding every sample alone
    durations = [t / cfg.fps + 0.7 for t in CLIPS]
    preds = model.decode(out, durations)
    for b, a in enumerate(alone):
        (pa,) = model.decode(a, [durations[b]])
        assert len(preds[b].saliency) == CLIPS[b]
        torch.testing.assert_close(torch.tensor(preds[b].windows), torch.tensor(pa.windows), atol=1e-4, rtol=0)
        torch.testing.assert_close(torch.tensor(preds[b].saliency), torch.tensor(pa.saliency), atol=1e-5, rtol=0)
    return out


def test_padding_invariance_eval(h):
    torch.manual_seed(0)
    cfg = h.tiny_config()
    model = R2Model(cfg).eval()
    _run_padding_case(h, model, cfg)


def test_padding_invariance_train_without_quirks(h):
    torch.manual_seed(0)
    cfg = h.tiny_config(official_batch_quirks=False, dropout=0.0, droppath=0.0)
    model = R2Model(cfg).train()
    out_train = _run_padding_case(h, model, cfg)
    model.eval()
    out_eval = model(*h.collate(h.make_samples(cfg, CLIPS, TOKENS), pad_clips=16, pad_tokens=9,
                                pad_value="garbage"))
    torch.testing.assert_close(out_train.class_logits, out_eval.class_logits)


@pytest.mark.parametrize("train_mode", [False, True])
def test_loss_does_not_depend_on_padding(h, train_mode):
    torch.manual_seed(0)
    cfg = h.tiny_config(official_batch_quirks=False, dropout=0.0, droppath=0.0)
    model = R2Model(cfg).train(train_mode)
    samples = h.make_samples(cfg, CLIPS, TOKENS)
    targets = h.make_targets(CLIPS)
    tight = model.compute_loss(model(*h.collate(samples)), targets)
    padded_targets = h.make_targets(CLIPS, pad_clips=20)
    loose = model.compute_loss(model(*h.collate(samples, pad_clips=20, pad_tokens=11, pad_value="garbage")),
                               padded_targets)
    for key in tight.terms:
        torch.testing.assert_close(tight.terms[key], loose.terms[key], atol=1e-5, rtol=1e-5)


def test_official_quirks_only_matter_with_padding(h):
    torch.manual_seed(0)
    cfg = h.tiny_config(dropout=0.0, droppath=0.0)  # official_batch_quirks=True
    model = R2Model(cfg)
    samples = h.make_samples(cfg, CLIPS, TOKENS)
    single = h.collate(samples[:1])
    train_out = model.train()(*single)
    eval_out = model.eval()(*single)
    torch.testing.assert_close(train_out.class_logits, eval_out.class_logits)
    # with padding, training reproduces the official batch (TEF/PE over the padded length ...)
    padded = h.collate(samples, pad_clips=16)
    t = CLIPS[0]
    quirky = model.train()(*padded)
    clean = model.eval()(*padded)
    assert quirky.quirks and not clean.quirks
    assert not torch.allclose(quirky.hidden[0, :t], clean.hidden[0, :t], atol=1e-4)
    # ... and a pyramid point is valid as soon as one of its clips is real
    assert int(quirky.point_mask.sum()) > int(clean.point_mask.sum())


def test_mask_pool_ablation_masks_tokens_in_training(h):
    torch.manual_seed(0)
    cfg = h.tiny_config(dropout=0.0, droppath=0.0, mask_pool=True)
    model = R2Model(cfg)
    samples = h.make_samples(cfg, [6, 6], [2, 5])
    zero_pad = model.train()(*h.collate(samples, pad_tokens=5))
    big_pad = model.train()(*h.collate(samples, pad_tokens=9, pad_value="garbage"))
    torch.testing.assert_close(zero_pad.hidden, big_pad.hidden, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- gradients


# The key bias of an attention adds the same logit to every key, which softmax cancels:
# its gradient is mathematically zero (only rounding noise), in the official model as well.
KEY_BIASES = {"block.pool_key.bias", "block.temporal.cross_attn.k_proj.bias",
              "block.temporal.self_attn.k_proj.bias"}


def _grad_case(h, cfg):
    torch.manual_seed(0)
    model = R2Model(cfg).train()
    with torch.no_grad():  # tanh(0) = 0 blocks the pooling branch at init; open it
        model.block.pool_scale.fill_(0.5)
    clips = [32, 32, 20]
    windows = [[[0.0, 1.0], [4.0, 7.0]], [[10.0, 30.0], [2.0, 5.0]], [[3.0, 12.0]]]
    samples = h.make_samples(cfg, clips, [6, 4, 5])
    targets = h.make_targets(clips, windows=windows)
    out = model(*h.collate(samples))
    model.compute_loss(out, targets).total.backward()
    return model


def test_gradient_reaches_every_trainable_parameter(h):
    model = _grad_case(h, h.tiny_config())
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert bool(torch.isfinite(p.grad).all()), name
        if name not in KEY_BIASES:
            assert float(p.grad.abs().sum()) > 0, name


def test_gradient_tvsum_config(h):
    model = _grad_case(h, h.tvsum_config())
    for name, p in model.named_parameters():
        if name == "coord_scale":  # the official `coef` exists without a coordinate head, unused
            assert p.grad is None
            continue
        assert p.grad is not None, name
        if name not in KEY_BIASES:
            assert float(p.grad.abs().sum()) > 0, name


# ----------------------------------------------------------------------------- determinism, AMP, devices


def test_deterministic_with_a_seed_on_cpu(h):
    def run():
        torch.manual_seed(7)
        cfg = h.tiny_config()
        model = R2Model(cfg).train()
        out = model(*h.collate(h.make_samples(cfg, CLIPS, TOKENS)))
        loss = model.compute_loss(out, h.make_targets(CLIPS))
        loss.total.backward()
        return out.class_logits.detach(), loss.total.detach(), model.block.video_mlp.fc_in.weight.grad
    a, b = run(), run()
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_autocast_bf16_cpu_keeps_heads_and_losses_in_fp32(h):
    torch.manual_seed(0)
    cfg = h.tiny_config()
    model = R2Model(cfg).train()
    batch = h.collate(h.make_samples(cfg, CLIPS, TOKENS))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(*batch)
        loss = model.compute_loss(out, h.make_targets(CLIPS))
    assert out.class_logits.dtype == torch.float32
    assert out.coord_offsets.dtype == torch.float32
    assert loss.total.dtype == torch.float32 and torch.isfinite(loss.total)
    loss.total.backward()
    model.eval()
    ref = model(*batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(*batch)
    assert float((ref.class_logits - low.class_logits).detach().abs().max()) < 0.2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_fp16_autocast_matches_cpu(h):
    torch.manual_seed(0)
    cfg = h.tiny_config()
    model = R2Model(cfg).eval()
    batch = h.collate(h.make_samples(cfg, CLIPS, TOKENS))
    ref = model(*batch)
    model_gpu = model.cuda()
    gpu_batch = [x.cuda() for x in batch]
    out = model_gpu(*gpu_batch)
    torch.testing.assert_close(out.class_logits.cpu(), ref.class_logits, atol=1e-3, rtol=1e-3)
    with torch.autocast("cuda", dtype=torch.float16):
        out16 = model_gpu(*gpu_batch)
        loss = model_gpu.compute_loss(out16, h.make_targets(CLIPS).to("cuda"))
    assert out16.class_logits.dtype == torch.float32 and torch.isfinite(loss.total)
    assert float((out16.class_logits.cpu() - ref.class_logits).abs().max()) < 0.05
