"""Initialisation (reference `r2tuning.md` §2.7) and DropPath (§2.6) of the R² Block.

The official model has no global init: Xavier-uniform attention projections and
Kaiming-normal (fan_out) FFN weights with zero biases in the decoder layer, PyTorch defaults
elsewhere, pooling scales and gates 0, pyramid ``coef`` 1. The statistical checks use the
full-size layers (C = 256), where a wrong init is many standard errors away.
"""

import math

import pytest
import torch

from r2.model import R2Config, R2Model
from r2.model.block import Dropout, DropPath, InputMLP, bernoulli_mask
from r2.model.dropout import dropout_after_norm


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return R2Model(R2Config())


def test_scales_gates_and_coef_start_at_the_official_values(model):
    assert torch.equal(model.block.pool_scale.detach(), torch.zeros(4))  # tanh(0): the pooled token is the CLS
    assert torch.equal(model.block.gate.detach(), torch.zeros(3))  # sigmoid(0): 0.5 / 0.5 mixing
    assert torch.equal(model.coord_scale.detach(), torch.ones(4))


def test_attention_projections_are_xavier_uniform_with_zero_biases(model):
    temporal = model.block.temporal
    for attn in (temporal.cross_attn, temporal.self_attn):
        for proj in (attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj):
            w = proj.weight.detach()
            fan_out, fan_in = w.shape
            bound = math.sqrt(6 / (fan_in + fan_out))  # 0.108; PyTorch's default would be 1/sqrt(256)
            assert float(w.abs().max()) <= bound
            assert float(w.abs().max()) > 0.99 * bound  # 65,536 uniform draws reach the bound
            # std of U(-a, a) is a/sqrt(3); its sample estimate is within 1% here (~0.2% s.e.)
            assert float(w.std()) == pytest.approx(bound / math.sqrt(3), rel=0.01)
            assert torch.count_nonzero(proj.bias) == 0


def test_ffn_weights_are_kaiming_normal_fan_out_with_zero_biases(model):
    ffn = model.block.temporal.ffn
    for fc in (ffn.fc1, ffn.fc2):
        w = fc.weight.detach()
        n = w.numel()
        std = math.sqrt(2 / w.shape[0])  # fan_out of a Linear weight (out, in) is `out`
        # sample std: standard error std/sqrt(2n) (0.14% for n = 262,144), allow 5 of them
        assert float(w.std()) == pytest.approx(std, rel=5 / math.sqrt(2 * n))
        assert abs(float(w.mean())) < 5 * std / math.sqrt(n)
        assert float(w.abs().max()) > 3 * std  # normal, not uniform (whose max is sqrt(3) std)
        assert torch.count_nonzero(fc.bias) == 0


def test_other_layers_keep_the_pytorch_defaults(model):
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.LayerNorm):
            assert torch.equal(module.weight.detach(), torch.ones_like(module.weight)), name
            assert torch.count_nonzero(module.bias) == 0, name
    # default Linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), narrower than Xavier here
    for linear in (model.block.pool_key, model.block.pool_query, model.block.video_mlp.fc_out):
        assert float(linear.weight.detach().abs().max()) <= 1 / math.sqrt(linear.in_features)


def test_droppath_drops_whole_samples_and_keeps_the_expected_value():
    torch.manual_seed(0)
    keep = 0.75
    drop = DropPath(1 - keep).train()
    x = torch.rand(4000, 5, 3) + 0.5  # (B, T, C), no zeros
    ratio = (drop(x) / x).flatten(1)  # (B, T·C)
    kept = ratio[:, 0] > 0
    # per sample: all of it dropped, or all of it kept and scaled by 1/keep
    assert torch.all(ratio[~kept] == 0)
    torch.testing.assert_close(ratio[kept], torch.full_like(ratio[kept], 1 / keep))
    # drop rate 0.25 (s.e. 0.007) and the expected value preserved (s.e. of the mean ratio ~0.01)
    assert float((~kept).float().mean()) == pytest.approx(1 - keep, abs=0.035)
    assert float(ratio.mean()) == pytest.approx(1.0, abs=0.05)
    # identity at evaluation and with p = 0
    assert torch.equal(drop.eval()(x), x)
    assert torch.equal(DropPath(0.0).train()(x), x)


def test_the_decoder_layer_uses_the_configured_droppath():
    model = R2Model(R2Config(hidden_dim=32, num_heads=4, droppath=0.3))
    assert isinstance(model.block.temporal.droppath, DropPath) and model.block.temporal.droppath.p == 0.3


# random bits per element: p = 0.5 -> 1, 0.25 -> 2, 0.4375 (keep 9/16) and 0.609375 (keep 100/256) -> 8, 0.35 / 0.3 / 0.9 -> 32
@pytest.mark.parametrize("p", [0.5, 0.25, 0.4375, 0.609375, 0.35, 0.3, 0.9])
def test_dropout_keeps_each_element_with_probability_1_minus_p(p):
    torch.manual_seed(0)
    drop = Dropout(p).train()
    x = torch.ones(2000, 770, requires_grad=True)
    y = drop(x)
    kept = y != 0
    n, keep = kept.numel(), 1 - p
    # the kept fraction within 5 standard errors of 1 - p; kept values scaled by 1 / (1 - p)
    assert abs(kept.float().mean().item() - keep) < 5 * math.sqrt(keep * p / n)
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / keep))
    # independent elements: neighbours are uncorrelated (no repeated bits across the mask)
    a, b = kept[:, :-1].float().flatten(), kept[:, 1:].float().flatten()
    corr = ((a - a.mean()) * (b - b.mean())).mean() / (a.std() * b.std())
    assert abs(corr.item()) < 5 / math.sqrt(a.numel())
    y.sum().backward()  # the gradient is the same mask and scale
    torch.testing.assert_close(x.grad, y.detach())


@pytest.mark.parametrize("keep", [0.5, 0.75, 0.5625, 0.390625, 0.65])
def test_a_mask_is_the_same_draw_in_every_dtype(keep):
    """bool, uint8 and float32 masks from one generator state are one mask; the first elements
    do not depend on how many are drawn (the fields of each random byte are in order)."""
    masks = []
    for dtype in (torch.bool, torch.uint8, torch.float32):
        g = torch.Generator().manual_seed(4)
        masks.append(bernoulli_mask(torch.Size([31, 77]), keep, generator=g, dtype=dtype))
        assert masks[-1].dtype == dtype and masks[-1].shape == (31, 77)
    assert torch.equal(masks[1].bool(), masks[0]) and torch.equal(masks[2].bool(), masks[0])
    assert set(masks[2].unique().tolist()) <= {0.0, 1.0}
    g = torch.Generator().manual_seed(4)
    assert torch.equal(bernoulli_mask(torch.Size([31 * 77 + 200]), keep, generator=g)[:31 * 77], masks[0].flatten())


@pytest.mark.parametrize("keep, bits", [(0.5, 1), (0.25, 2), (0.75, 2)])
@pytest.mark.parametrize("dtype", [torch.bool, torch.uint8, torch.int16, torch.float32])
def test_a_mask_holds_the_generators_bit_fields_lowest_first(keep, bits, dtype):
    """Element i of a 1- or 2-bit mask is field i of the generator's random words (lowest bits
    of the lowest byte first), kept where the field is below keep * 2**bits: the table lookup
    (one row per random byte) expands them in order, in every mask type."""
    n = 1000
    g = torch.Generator().manual_seed(9)
    mask = bernoulli_mask(torch.Size([n]), keep, generator=g, dtype=dtype)
    g = torch.Generator().manual_seed(9)
    words = torch.randint(-2**63, 2**63 - 1, (-(-n * bits // 64),), dtype=torch.int64, generator=g)
    data = words.view(torch.uint8).long()
    fields = (data[:, None] >> torch.arange(0, 8, bits)) & (2**bits - 1)  # (bytes, 8 // bits)
    want = fields.flatten()[:n] < round(keep * 2**bits)
    assert mask.dtype == dtype and 0.1 < want.float().mean() < 0.9
    assert torch.equal(mask.bool(), want)


@pytest.mark.parametrize("p", [0.5, 0.35])
def test_dropout_after_norm_equals_dropout_of_norm(p):
    """The scale folded into the LayerNorm's weight and bias: the same mask, the same values
    (bit for bit when 1 / (1 - p) is a power of two) and the same gradients."""
    norm = torch.nn.LayerNorm(770)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    drop = Dropout(p).train()
    x = torch.randn(300, 770)
    torch.manual_seed(7)
    plain = drop(norm(x))
    (plain * torch.arange(770.0)).sum().backward()
    grads = [norm.weight.grad.clone(), norm.bias.grad.clone()]
    norm.zero_grad()
    torch.manual_seed(7)
    folded = drop.after_norm(norm, x)
    (folded * torch.arange(770.0)).sum().backward()
    assert torch.equal(folded != 0, plain != 0)  # the same mask
    if p == 0.5:
        assert torch.equal(folded, plain)
    torch.testing.assert_close(folded, plain)
    for got, want in zip((norm.weight.grad, norm.bias.grad), grads):  # sums of 300 terms, rounded apart
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
    assert torch.equal(drop.eval().after_norm(norm, x), norm(x))


@pytest.mark.parametrize("p", [0.5, 0.35])
def test_dropout_after_norm_gives_the_same_mask_and_output_in_any_mask_type(p):
    """The token attention draws its mask in float32 (not kept), Dropout.after_norm in uint8
    (kept by autograd): from the same generator state the same 0 / 1 values and output."""
    x, weight, bias = torch.randn(300, 770), torch.randn(770), torch.randn(770)
    got = {}
    for dtype in (torch.uint8, torch.float32):
        g = torch.Generator().manual_seed(11)
        got[dtype] = dropout_after_norm(x, (770,), weight, bias, 1e-5, 1 - p, g, dtype)
    assert got[torch.uint8].mask.dtype == torch.uint8 and got[torch.float32].mask.dtype == torch.float32
    assert 0.3 < got[torch.float32].mask.mean().item() < 0.8  # a real mask, not all ones or zeros
    assert torch.equal(got[torch.uint8].mask.float(), got[torch.float32].mask)
    assert torch.equal(got[torch.uint8].output, got[torch.float32].output)


def test_dropout_is_seeded_and_the_identity_in_eval_and_at_p_0():
    x = torch.randn(64, 770)
    torch.manual_seed(3)
    a = Dropout(0.5).train()(x)
    torch.manual_seed(3)
    b = Dropout(0.5).train()(x)
    torch.testing.assert_close(a, b)
    assert torch.equal(Dropout(0.5).eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)
    assert bernoulli_mask(torch.Size([3, 5]), 1.0).all() and not bernoulli_mask(torch.Size([7]), 0.0).any()
    assert isinstance(InputMLP(770, 32, 0.5).dropout, Dropout)
