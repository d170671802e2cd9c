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
def test_only_the_full_blocks_of_the_first_stage_go_through_onednn_one_shape_whatever_the_batch(counted, monkeypatch):
    # oneDNN keeps a kernel (~0.6 MB) per shape: the shapes it sees must not follow the batch
    from r2.model import lean_input

    monkeypatch.setattr(lean_input, "BLOCK_BYTES", 4 * 5 * 18 * 4)  # 4 clips of 5 tokens x 18 floats
    norm, layer = nn.LayerNorm(18), nn.Linear(18, 8)
    params = [norm.weight, norm.bias, layer.weight, layer.bias]
    shapes = set()
    for clips in (9, 14, 4):  # 2 full blocks + 1 clip, 3 + 2, exactly one block
        video = torch.randn(1, clips, 1, 5, 16).half()
        out = lean_input.norm_dropout_linear(video, 0, torch.ones(1, clips, dtype=torch.bool),
                                             torch.rand(1, clips, 2), norm, 0.5, layer)
        torch.autograd.grad(out, params, torch.randn_like(out))
        assert len(counted) == 3 * (clips // 4)  # forward, g^T (m x) and g^T m of each full block
        shapes |= set(counted)
        counted.clear()
    # (20 rows, D' 18) @ (C 8, 18)^T forward; (C 8, 20 rows) @ (D' 18, 20 rows)^T for both products
    assert shapes == {((20, 18), (8, 18)), ((8, 20), (18, 20))}


def test_the_environment_turns_onednn_off():
    code = "import r2.model.matmul as m; print(m.ONEDNN, m.onednn_in_use())"
    env = dict(os.environ, R2_ONEDNN="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
