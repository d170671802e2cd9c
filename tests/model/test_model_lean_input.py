"""The memory-lean first stage of the video MLP (r2.model.lean_input) against the plain composition.

The plain path is what the block runs under autocast or on other devices; in the block tests it
is forced by patching ``R2Block._lean_input``. The lean path draws its dropout masks block by
block (``blocks``), so with dropout the two are compared on the function, with the masks
replayed from the same generator state; without dropout on the whole model.
"""

import pytest
import torch
import torch.nn as nn

from r2.model import R2Model
from r2.model import lean_input
from r2.model.block import R2Block
from r2.model.dropout import bernoulli_mask
from r2.model.lean_input import blocks, norm_dropout_linear

SMALL_BLOCKS = 4 * 5 * 18 * 4  # 4 clips of 5 tokens x 18 floats a block


# ----------------------------------------------------------------------------- the function


def _features(b=3, t=9, k=2, n=5, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    video = (torch.randn(b, t, k, n, d, generator=g) * 3 + 1).half()  # the cache's stored dtype
    clip_mask = torch.zeros(b, t, dtype=torch.bool)
    for i, length in enumerate((t, t - 3, 4)[:b]):
        clip_mask[i, :length] = True
    video[~clip_mask] = 77.0  # padded clips hold garbage, which must not matter
    tef = torch.rand(b, t, 2, generator=g)
    return video, clip_mask, tef


def _layers(d, c=8, seed=1):
    torch.manual_seed(seed)
    norm, linear = nn.LayerNorm(d), nn.Linear(d, c)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    return norm, linear


def _plain(video, layer, clip_mask, tef, norm, keep, linear, masks):
    x = video[:, :, layer].float().masked_fill(~clip_mask[:, :, None, None], 0.0)  # (B, T, N, D)
    if tef is not None:
        x = torch.cat((x, tef[:, :, None, :].expand(-1, -1, x.shape[2], -1)), dim=-1)
    y = norm(x)
    if masks is not None:
        y = y * masks.view_as(y) / keep
    return linear(y)


@pytest.mark.parametrize("keep,use_tef", [(0.5, True), (0.65, True), (0.5, False), (1.0, True)])
def test_norm_dropout_linear_equals_the_plain_composition(monkeypatch, keep, use_tef):
    monkeypatch.setattr(lean_input, "BLOCK_BYTES", SMALL_BLOCKS)  # 27 clips = 6 blocks of 4 + 3
    video, clip_mask, tef = _features()
    tef = tef if use_tef else None
    dims = video.shape[-1] + (2 if use_tef else 0)
    norm, linear = _layers(dims)
    params = [norm.weight, norm.bias, linear.weight, linear.bias]
    grad_out = torch.randn(3, 9, 5, 8, generator=torch.Generator().manual_seed(5))

    torch.manual_seed(11)
    state = torch.get_rng_state()
    lean = norm_dropout_linear(video, 1, clip_mask, tef, norm, keep, linear)
    after_forward = torch.get_rng_state()
    lean_grads = torch.autograd.grad(lean, params, grad_out)
    assert torch.equal(torch.get_rng_state(), after_forward)  # the backward pass draws elsewhere

    replay = torch.Generator().manual_seed(0)
    replay.set_state(state)
    spans = list(blocks(27, 5, dims))
    assert len(spans) == 7 and spans[-1] == (24, 27)
    masks = None
    if keep < 1:  # one mask a block, in order
        masks = torch.cat([bernoulli_mask((stop - start, 5, dims), keep, None, replay, torch.float32)
                           for start, stop in spans])
    assert torch.equal(replay.get_state(), after_forward)  # the forward drew exactly these masks
    plain = _plain(video, 1, clip_mask, tef, norm, keep, linear, masks)
    plain_grads = torch.autograd.grad(plain, params, grad_out)

    torch.testing.assert_close(lean, plain, atol=1e-5, rtol=1e-5)
    for name, a, b in zip(("norm.weight", "norm.bias", "linear.weight", "linear.bias"), lean_grads, plain_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=name)
    if masks is not None:
        assert abs(float(masks.float().mean()) - keep) < 0.05  # 2430 draws: 5 standard deviations


def test_the_block_size_does_not_change_the_values_without_dropout(monkeypatch):
    video, clip_mask, tef = _features()
    norm, linear = _layers(18)
    whole = norm_dropout_linear(video, 0, clip_mask, tef, norm, 1.0, linear)
    monkeypatch.setattr(lean_input, "BLOCK_BYTES", 1)  # one clip a block
    assert lean_input.clips_per_block(5, 18) == 1
    torch.testing.assert_close(norm_dropout_linear(video, 0, clip_mask, tef, norm, 1.0, linear), whole,
                               atol=1e-6, rtol=1e-6)


# ----------------------------------------------------------------------------- in the model


def _run(h, cfg, lean, monkeypatch, train=True):
    monkeypatch.setattr(R2Block, "_lean_input", lambda self, video: lean)
    torch.manual_seed(0)
    model = R2Model(cfg).train(train)
    with torch.no_grad():  # tanh(0) = 0 blocks the pooling branch at init; open it
        model.block.pool_scale.fill_(0.7)
    clips = [9, 6, 4]
    video, vmask, query, qmask = h.collate(h.make_samples(cfg, clips, [5, 3, 4], num_tokens=5),
                                           pad_value="garbage")
    torch.manual_seed(3)
    out = model(video.half(), vmask, query, qmask)
    loss = model.compute_loss(out, h.make_targets(clips))
    if train:
        loss.total.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, loss.total.detach(), grads


@pytest.mark.parametrize("use_tef", [True, False])
def test_the_model_gives_the_same_outputs_and_gradients_on_both_paths(h, monkeypatch, use_tef):
    monkeypatch.setattr(lean_input, "BLOCK_BYTES", SMALL_BLOCKS)
    cfg = h.tiny_config(dropout=0.0, droppath=0.0, use_tef=use_tef)
    lean, plain = _run(h, cfg, True, monkeypatch), _run(h, cfg, False, monkeypatch)
    torch.testing.assert_close(lean[0].class_logits, plain[0].class_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lean[0].layer_video_cls, plain[0].layer_video_cls, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lean[1], plain[1], atol=1e-5, rtol=1e-5)
    assert lean[2].keys() == plain[2].keys()
    for name in plain[2]:
        torch.testing.assert_close(lean[2][name], plain[2][name], atol=1e-5, rtol=1e-4, msg=name)
    first_stage = ("block.video_mlp.norm_in.weight", "block.video_mlp.norm_in.bias", "block.video_mlp.fc_in.weight")
    assert all(float(lean[2][n].abs().sum()) > 0 for n in first_stage)


def test_both_paths_in_eval_mode_with_dropout_configured(h, monkeypatch):
    cfg = h.tiny_config(dropout=0.5)
    with torch.no_grad():
        lean = _run(h, cfg, True, monkeypatch, train=False)
        plain = _run(h, cfg, False, monkeypatch, train=False)
    torch.testing.assert_close(lean[0].class_logits, plain[0].class_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lean[0].saliency, plain[0].saliency, atol=1e-5, rtol=1e-5)


def test_training_with_dropout_on_the_lean_path_is_seeded(h, monkeypatch):
    cfg = h.tiny_config(dropout=0.5)
    a, b = _run(h, cfg, True, monkeypatch), _run(h, cfg, True, monkeypatch)
    assert torch.equal(a[0].class_logits, b[0].class_logits)
    assert all(torch.equal(a[2][n], b[2][n]) for n in a[2])


def _saved_bytes(model, batch):
    """Bytes of the distinct storages autograd keeps for the backward pass of one forward,
    beyond the batch itself (which the caller holds anyway)."""
    storages = {}
    inputs = {t.untyped_storage().data_ptr() for t in batch}

    def pack(t):
        if t.untyped_storage().data_ptr() not in inputs:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(*batch)
    return sum(storages.values())


def test_the_lean_path_keeps_neither_the_float_copy_nor_the_norm_output_nor_the_mask(h, monkeypatch):
    cfg = h.tiny_config(video_dim=64, num_layers=2, dropout=0.5)
    model = R2Model(cfg).train()
    samples = h.make_samples(cfg, [16, 16], [3, 3], num_tokens=10)
    video, vmask, query, qmask = h.collate(samples)
    batch = (video.half(), vmask, query, qmask)
    monkeypatch.setattr(R2Block, "_lean_input", lambda self, video: False)
    plain = _saved_bytes(model, batch)
    monkeypatch.setattr(R2Block, "_lean_input", lambda self, video: True)
    lean = _saved_bytes(model, batch)
    elements = 2 * 16 * 10 * (64 + 2)  # of one layer at D' = D + 2
    assert plain - lean >= cfg.num_layers * elements * (4 + 4 + 1) * 0.95  # a step: 2 floats + 1 byte


def test_the_plain_path_under_autocast_and_for_features_with_gradient(h):
    cfg = h.tiny_config()
    block = R2Model(cfg).block
    video = torch.zeros(1, 2, cfg.num_layers, 4, cfg.video_dim)
    assert block._lean_input(video)
    assert not block._lean_input(video.clone().requires_grad_())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not block._lean_input(video)
