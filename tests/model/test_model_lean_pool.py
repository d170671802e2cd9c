"""The token attention of the spatial pooling with its hand-written backward pass
(r2.model.lean_pool) against the autograd composition the plain path runs."""

import math

import pytest
import torch
import torch.nn as nn

from r2.model import R2Model, lean_pool
from r2.model.block import R2Block
from r2.model.dropout import Dropout
from r2.model.lean_pool import AttendedTokens, attend_tokens


def _composed(u, keys, offset, norm, dropout):
    """What the plain path computes (InputMLP.middle, then the two einsums), through autograd."""
    h = dropout.after_norm(norm, torch.relu(u))  # (B, T, N, C)
    logits = torch.einsum("bsc,btnc->btsn", keys, h) + offset[:, None, :, None]
    att = (logits / math.sqrt(u.shape[-1])).softmax(dim=-1)
    return AttendedTokens(first=h[:, :, 0], mixed=torch.einsum("btsn,btnc->btsc", att, h))


def _inputs(b=3, t=7, n=5, s=4, c=16, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(b, t, n, c, generator=g, dtype=dtype).requires_grad_()
    keys = torch.randn(b, s, c, generator=g, dtype=dtype).requires_grad_()
    offset = torch.randn(b, s, generator=g, dtype=dtype).requires_grad_()
    norm = nn.LayerNorm(c).to(dtype)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5, generator=g)
        norm.bias.uniform_(-0.5, 0.5, generator=g)
    return u, keys, offset, norm


def _outputs_and_grads(fn, u, keys, offset, norm, dropout, seed=5):
    torch.manual_seed(seed)
    out = fn(u, keys, offset, norm, dropout)
    g = torch.Generator().manual_seed(9)
    grad_first, grad_mixed = torch.randn(out.first.shape, generator=g), torch.randn(out.mixed.shape, generator=g)
    params = (u, keys, offset, norm.weight, norm.bias)
    grads = torch.autograd.grad((out.first, out.mixed), params, (grad_first, grad_mixed))
    return out, grads


@pytest.mark.parametrize("p", [0.0, 0.5, 0.3])
def test_outputs_and_gradients_match_the_autograd_composition(p):
    u, keys, offset, norm = _inputs()
    dropout = Dropout(p).train()
    lean, lean_grads = _outputs_and_grads(attend_tokens, u, keys, offset, norm, dropout)
    plain, plain_grads = _outputs_and_grads(_composed, u, keys, offset, norm, dropout)
    torch.testing.assert_close(lean.first, plain.first, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(lean.mixed, plain.mixed, atol=1e-6, rtol=1e-5)
    for name, a, b in zip(("u", "keys", "offset", "norm.weight", "norm.bias"), lean_grads, plain_grads):
        assert float(b.abs().sum()) > 0, name
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)
    if p:  # the dropout really dropped, and the backward pass used the forward pass's mask
        assert float((plain.first == 0).float().mean()) > p / 2
        assert torch.equal(lean.first == 0, plain.first == 0)


def test_gradcheck_in_float64_without_dropout():
    u, keys, offset, norm = _inputs(b=2, t=3, n=4, s=3, c=8, dtype=torch.float64)
    weight, bias = norm.weight.detach().requires_grad_(), norm.bias.detach().requires_grad_()

    def fn(u, keys, offset, weight, bias):  # keep = 1: no mask, the function is deterministic
        out = lean_pool._AttendTokens.apply(u, keys, offset, weight, bias, norm.eps, 1.0)
        return out[0], out[1]

    assert torch.autograd.gradcheck(fn, (u, keys, offset, weight, bias))


def test_the_backward_pass_leaves_torch_generator_alone():
    u, keys, offset, norm = _inputs()
    torch.manual_seed(0)
    out = attend_tokens(u, keys, offset, norm, Dropout(0.5).train())
    state = torch.get_rng_state()
    (out.first.sum() + out.mixed.sum()).backward()
    assert torch.equal(torch.get_rng_state(), state)


def test_the_block_runs_it_only_where_gradients_are_taken_on_the_lean_path(h, monkeypatch):
    calls = []
    real = lean_pool.attend_tokens

    def counting(*args):
        calls.append(1)
        return real(*args)

    from r2.model import block

    monkeypatch.setattr(block, "attend_tokens", counting)
    cfg = h.tiny_config(dropout=0.5)
    model = R2Model(cfg).train()
    video, vmask, query, qmask = h.collate(h.make_samples(cfg, [6, 4], [3, 2]))
    model(video, vmask, query, qmask)
    assert len(calls) == cfg.num_layers
    with torch.no_grad():
        model(video, vmask, query, qmask)
    monkeypatch.setattr(R2Block, "_lean_input", lambda self, video: False)
    model(video, vmask, query, qmask)
    assert len(calls) == cfg.num_layers


def test_training_with_dropout_matches_the_plain_pooling_in_the_model(h, monkeypatch):
    """The whole model on the lean path, its pooling once by attend_tokens and once by the
    autograd composition: the same outputs and gradients (same dropout masks)."""
    from r2.model import block

    def run():
        torch.manual_seed(0)
        model = R2Model(h.tiny_config(dropout=0.5, droppath=0.0)).train()
        with torch.no_grad():  # tanh(0) = 0 blocks the pooling branch at init; open it
            model.block.pool_scale.fill_(0.7)
        clips = [9, 6, 4]
        batch = h.collate(h.make_samples(model.config, clips, [5, 3, 4], num_tokens=5), pad_value="garbage")
        torch.manual_seed(3)
        out = model(batch[0].half(), *batch[1:])
        model.compute_loss(out, h.make_targets(clips)).total.backward()
        return out, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    lean = run()
    monkeypatch.setattr(block, "attend_tokens", _composed)
    plain = run()
    torch.testing.assert_close(lean[0].class_logits, plain[0].class_logits, atol=1e-5, rtol=1e-5)
    assert lean[1].keys() == plain[1].keys()
    for name in plain[1]:
        torch.testing.assert_close(lean[1][name], plain[1][name], atol=1e-5, rtol=1e-4, msg=name)
    assert float(lean[1]["block.video_mlp.norm_hidden.weight"].abs().sum()) > 0


def test_with_and_without_gradients_the_model_gives_the_same_values_to_the_last_bit(h):
    """Eval mode with gradients on runs attend_tokens, under no_grad the plain path: inference
    must not depend on which (r2 predict runs under no_grad, a user's script may not)."""
    cfg = h.tiny_config(dropout=0.5)
    torch.manual_seed(0)
    model = R2Model(cfg).eval()
    with torch.no_grad():
        model.block.pool_scale.fill_(0.7)
    video, vmask, query, qmask = h.collate(h.make_samples(cfg, [9, 6], [5, 3], num_tokens=5))
    with_grad = model(video, vmask, query, qmask)
    with torch.no_grad():
        without = model(video, vmask, query, qmask)
    assert with_grad.class_logits.requires_grad
    assert torch.equal(with_grad.class_logits, without.class_logits)
    assert torch.equal(with_grad.saliency, without.saliency)
