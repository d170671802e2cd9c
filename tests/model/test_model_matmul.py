"""r2.model.matmul: float32 CPU products through oneDNN, against torch's own."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from r2.model import matmul
from r2.model.matmul import linear

needs_onednn = pytest.mark.skipif(not matmul.onednn_in_use(), reason="this torch build has no oneDNN")


@pytest.fixture
def counted(monkeypatch):
    """Count the calls that reach oneDNN's linear."""
    calls = []
    op = matmul._LINEAR

    def counting(*args):
        calls.append((tuple(args[0].shape), tuple(args[1].shape)))  # (x, weight)
        return op(*args)

    monkeypatch.setattr(matmul, "_LINEAR", counting)
    return calls


def _layouts():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(37, 19, generator=g)
    w = torch.randn(11, 19, generator=g)
    b = torch.randn(11, generator=g)
    big = torch.randn(5, 37, 30, generator=g)
    return [
        ("contiguous", a, w, b),
        ("no bias", a, w, None),
        ("3-D input", big[..., :19], w, b),  # strided rows too
        ("transposed views", a.t(), torch.randn(11, 37, generator=g).t().t(), None),
        ("a.T @ b", torch.randn(23, 11, generator=g).t(), torch.randn(23, 19, generator=g).t(), None),
    ]


@needs_onednn
@pytest.mark.parametrize("name,x,weight,bias", _layouts(), ids=[c[0] for c in _layouts()])
def test_linear_equals_torch_in_any_layout(counted, name, x, weight, bias):
    out = linear(x, weight, bias)
    assert counted  # the product went through oneDNN
    torch.testing.assert_close(out, F.linear(x, weight, bias), atol=1e-5, rtol=1e-5)


def test_linear_falls_back_to_torch_where_onednn_does_not_apply(counted, monkeypatch):
    x, w = torch.randn(4, 6, dtype=torch.float64), torch.randn(3, 6, dtype=torch.float64)
    assert torch.equal(linear(x, w), F.linear(x, w))  # float64: torch's own product
    monkeypatch.setattr(matmul, "ONEDNN", False)
    x, w = x.float(), w.float()
    assert torch.equal(linear(x, w), F.linear(x, w))
    assert not counted


@needs_onednn
def test_every_block_of_the_first_stage_goes_through_onednn_in_few_shapes_whatever_the_batch(counted, monkeypatch):
    # oneDNN keeps a kernel (~0.6 MB) per shape: the shapes it sees must not follow the batch.
    # Blocks of 8 clips: a partial last block is rounded up to 2, 4, 6 or 8 clips.
    from r2.model import lean_input

    monkeypatch.setattr(lean_input, "BLOCK_BYTES", 8 * 5 * 18 * 4)  # 8 clips of 5 tokens x 18 floats
    assert lean_input.padded_clips(8, 8) == 8 and lean_input.padded_clips(3, 8) == 4
    assert [lean_input.padded_clips(m, 8) for m in range(1, 8)] == [2, 2, 4, 4, 6, 6, 8]
    norm, layer = nn.LayerNorm(18), nn.Linear(18, 8)
    params = [norm.weight, norm.bias, layer.weight, layer.bias]
    shapes = set()
    for clips in range(1, 26):
        video = torch.randn(1, clips, 1, 5, 16).half()
        mask, tef = torch.ones(1, clips, dtype=torch.bool), torch.rand(1, clips, 2)
        torch.manual_seed(clips)
        out = lean_input.norm_dropout_linear(video, 0, mask, tef, norm, 0.5, layer)
        grads = torch.autograd.grad(out, params, grad_out := torch.randn_like(out))
        assert len(counted) == 3 * -(-clips // 8)  # forward, g^T (m x) and g^T m of every block
        shapes |= set(counted)
        counted.clear()
        monkeypatch.setattr(matmul, "ONEDNN", False)  # the same masks, unpadded, through torch
        torch.manual_seed(clips)
        plain = lean_input.norm_dropout_linear(video, 0, mask, tef, norm, 0.5, layer)
        plain_grads = torch.autograd.grad(plain, params, grad_out)
        monkeypatch.setattr(matmul, "ONEDNN", True)
        assert not counted
        torch.testing.assert_close(out, plain, atol=1e-5, rtol=1e-5)
        for a, b in zip(grads, plain_grads):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # (rows, D' 18) @ (C 8, 18)^T forward; (C 8, rows) @ (D' 18, rows)^T for both products, where
    # rows = 5 tokens x 2, 4, 6 or 8 clips
    assert shapes == {s for r in (10, 20, 30, 40) for s in (((r, 18), (8, 18)), ((8, r), (18, r)))}


def test_the_environment_turns_onednn_off():
    code = "import r2.model.matmul as m; print(m.ONEDNN, m.onednn_in_use())"
    env = dict(os.environ, R2_ONEDNN="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
