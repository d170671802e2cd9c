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
def test_the_first_stage_takes_onednn_in_few_shapes_whatever_the_batch(counted, monkeypatch):
    # oneDNN keeps a kernel (~0.6 MB) per shape: the shapes it sees must not follow the batch.
    # Blocks of 16 clips: a partial last block is rounded up to 4, 8, 12 or 16 clips where that
    # adds at most an eighth of its rows, else it goes through torch as it is.
    from r2.model import lean_input

    monkeypatch.setattr(lean_input, "BLOCK_BYTES", 16 * 5 * 18 * 4)  # 16 clips of 5 tokens x 18 floats
    padded = [lean_input.padded_clips(m, 16) for m in range(1, 17)]
    assert padded == [None, None, None, 4, None, None, None, 8, None, None, 12, 12, None, None, 16, 16]
    norm, layer = nn.LayerNorm(18), nn.Linear(18, 8)
    params = [norm.weight, norm.bias, layer.weight, layer.bias]
    shapes = set()
    for clips in range(1, 44):
        video = torch.randn(1, clips, 1, 5, 16).half()
        mask, tef = torch.ones(1, clips, dtype=torch.bool), torch.rand(1, clips, 2)
        torch.manual_seed(clips)
        out = lean_input.norm_dropout_linear(video, 0, mask, tef, norm, 0.5, layer)
        grads = torch.autograd.grad(out, params, grad_out := torch.randn_like(out))
        partial = clips % 16 and padded[clips % 16 - 1] is not None
        assert len(counted) == 3 * (clips // 16 + partial)  # forward, g^T (m x), g^T m of those blocks
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
    # rows = 5 tokens x 4, 8, 12 or 16 clips
    assert shapes == {s for r in (20, 40, 60, 80) for s in (((r, 18), (8, 18)), ((8, r), (18, r)))}


def test_the_environment_turns_onednn_off():
    code = "import r2.model.matmul as m; print(m.ONEDNN, m.onednn_in_use())"
    env = dict(os.environ, R2_ONEDNN="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
