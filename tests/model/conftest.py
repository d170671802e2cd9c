"""Helpers of the model tests: tiny configs and synthetic padded batches of cached features."""

import pytest
import torch

from r2.model import R2Config, R2Targets


def tiny_config(**changes) -> R2Config:
    base = dict(video_dim=16, query_dim=12, num_layers=3, hidden_dim=32, num_heads=4, ffn_ratio=2,
                fps=0.5, unit=None, nms="normal")
    base.update(changes)
    return R2Config(**base)


def tvsum_config(**changes) -> R2Config:
    return tiny_config(strides=(1,), use_tef=False, coord_head=False, merge_cls_sal=False,
                       cls_loss="dynamic_bce", sal_directions=("row",), nms=None, **changes)


def make_samples(cfg, clip_counts, token_counts, num_tokens=4, seed=0, layers=None):
    """A list of (video (T, K, N, D), query (K, S, Dt)) with the given lengths."""
    g = torch.Generator().manual_seed(seed)
    k = layers or cfg.num_layers
    out = []
    for t, s in zip(clip_counts, token_counts):
        video = torch.randn(t, k, num_tokens, cfg.video_dim, generator=g)
        query = torch.randn(k, s, cfg.query_dim, generator=g)
        out.append((video, query))
    return out


def collate(samples, pad_clips=None, pad_tokens=None, pad_value=0.0):
    """Right-pad a list of samples into a batch; pad_value may be 'garbage' (random values)."""
    t_pad = pad_clips or max(v.shape[0] for v, _ in samples)
    s_pad = pad_tokens or max(q.shape[1] for _, q in samples)
    b = len(samples)
    v0, q0 = samples[0]
    video = torch.zeros(b, t_pad, *v0.shape[1:])
    query = torch.zeros(b, q0.shape[0], s_pad, q0.shape[2])
    if pad_value == "garbage":
        g = torch.Generator().manual_seed(1234)
        video.normal_(0, 50, generator=g)
        query.normal_(0, 50, generator=g)
    else:
        video.fill_(pad_value)
        query.fill_(pad_value)
    vmask = torch.zeros(b, t_pad, dtype=torch.bool)
    qmask = torch.zeros(b, s_pad, dtype=torch.bool)
    for i, (v, q) in enumerate(samples):
        video[i, :v.shape[0]] = v
        query[i, :, :q.shape[1]] = q
        vmask[i, :v.shape[0]] = True
        qmask[i, :q.shape[1]] = True
    return video, vmask, query, qmask


def make_targets(clip_counts, pad_clips=None, seed=0, windows=None):
    """Targets with one GT window per sample (or the given ones) and peaked saliency."""
    g = torch.Generator().manual_seed(seed)
    t_pad = pad_clips or max(clip_counts)
    b = len(clip_counts)
    if windows is None:
        windows = []
        for t in clip_counts:
            length = max(1, int(t * 0.4))
            start = int(torch.randint(0, t - length + 1, (1,), generator=g))
            windows.append([[float(start), float(start + length)]])
    g_max = max(len(w) for w in windows)
    win = torch.zeros(b, g_max, 2)
    wmask = torch.zeros(b, g_max, dtype=torch.bool)
    saliency = torch.zeros(b, t_pad)
    pos = torch.zeros(b, dtype=torch.long)
    for i, ws in enumerate(windows):
        for j, (s, e) in enumerate(ws):
            win[i, j] = torch.tensor([s, e])
            wmask[i, j] = True
        s, e = ws[0]
        lo, hi = int(s), max(int(s) + 1, min(int(e), clip_counts[i]))
        center = (lo + hi - 1) // 2
        for c in range(lo, hi):  # graded saliency peaking at the positive clip
            saliency[i, c] = 1.0 - 0.1 * abs(c - center)
        pos[i] = center
    return R2Targets(windows=win, window_mask=wmask, saliency=saliency.clamp(0, 1), positive_clip=pos)


class _Helpers:
    tiny_config = staticmethod(tiny_config)
    tvsum_config = staticmethod(tvsum_config)
    make_samples = staticmethod(make_samples)
    collate = staticmethod(collate)
    make_targets = staticmethod(make_targets)


@pytest.fixture
def h():
    return _Helpers


@pytest.fixture(autouse=True)
def _one_thread():
    """The model tests use tiny tensors: one intra-op thread is as fast, and far steadier when
    other processes share the cores (OpenMP workers spin and collapse under contention)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
