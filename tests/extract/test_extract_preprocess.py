"""Preprocessing: the torch recipe equals CLIPImageProcessor on real frames (stated tolerance)."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch

from r2.extract import preprocess as P
from r2.extract import video as V


def _reference_processor():
    try:  # transformers 5: the PIL implementation under its own name
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil as Proc
    except ImportError:  # transformers 4.x: CLIPImageProcessor is the PIL one
        from transformers import CLIPImageProcessor as Proc
    return Proc()


def _frames(path, count=None):
    """The first ``count`` frames (None: every frame; a float resize's largest gaps were on a few
    frames of the upscaled carphone clips only)."""
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f, _ in zip(c.decode(video=0), range(count or 10**9))])


def test_torch_preprocessing_equals_clip_image_processor(sample_videos):
    """Pillow's resize reproduced in integers: the uint8 frames equal CLIPImageProcessor's (PIL
    backend) on every frame of the 176x144 clips (upscaled) and the first 8 of the larger ones
    (720p, 640x272: downscaled); what is left is float rounding in the normalisation."""
    proc = _reference_processor()
    std = np.array(P.CLIP_STD).reshape(1, 3, 1, 1)
    mean = np.array(P.CLIP_MEAN).reshape(1, 3, 1, 1)
    for path in sample_videos:
        rgb = _frames(path, None if path.name.startswith("carphone") else 8)
        ref = np.concatenate([proc(list(rgb[i:i + 64]), return_tensors="np")["pixel_values"]
                              for i in range(0, len(rgb), 64)])
        ours = P.preprocess(rgb).numpy()
        assert ours.shape == ref.shape == (len(rgb), 3, 224, 224)
        levels = np.abs(np.round((ours * std + mean) * 255) - np.round((ref * std + mean) * 255))
        assert levels.max() == 0, (path.name, levels.max(), (levels > 0).mean())
        assert np.abs(ours - ref).max() <= 1e-5, (path.name, np.abs(ours - ref).max())


def test_resize_equals_pillow_on_odd_sizes():
    """Up, down, extreme aspect ratios, 1-pixel rows: Pillow's own Image.resize, bit for bit."""
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    for h, w in [(57, 101), (225, 225), (1, 223), (50, 1000), (160, 90), (500, 333), (720, 1280)]:
        rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        ours = P.resize_crop(rgb[None], 224, None)[0].numpy()
        ref = np.asarray(Image.fromarray(rgb).resize((ours.shape[1], ours.shape[0]), Image.BICUBIC))
        assert np.array_equal(ours, ref), (h, w)
        crop = P.resize_crop(rgb[None], 224, 224)[0].numpy()  # the crop computes only what it keeps
        top, left = (ours.shape[0] - 224) // 2, (ours.shape[1] - 224) // 2
        assert np.array_equal(crop, ours[top:top + 224, left:left + 224]), (h, w)


def test_resize_geometry_matches_hf_rules():
    x = np.zeros((1, 272, 640, 3), np.uint8)
    x[:, :, 320:] = 255  # right half white
    out = P.resize_crop(x, 224, 224)
    assert out.shape == (1, 224, 224, 3) and out.dtype == torch.uint8
    # long side int(224 * 640 / 272) = 527, crop left = (527 - 224) // 2 = 151: the edge lands at 263 - 151
    col = out[0, 112, :, 0].numpy().astype(int)
    edge = int(np.argmax(col > 127))
    assert abs(edge - (int(320 * 527 / 640) - 151)) <= 1


def test_normalize_is_rescale_then_mean_std():
    x = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    got = P.normalize(x).numpy()
    want = (x.transpose(0, 3, 1, 2) / 255.0 - np.array(P.CLIP_MEAN).reshape(1, 3, 1, 1)) / np.array(
        P.CLIP_STD).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_hf_resize_converter_in_the_decoder(sample_videos):
    """resize="hf": the decoder's converter gives resize_crop of the full frame."""
    path = next(p for p in sample_videos if p.name == "bikes.mp4")
    full = V.sample_video(path, 0.5, size=None)
    hf = V.decode_job("b", str(path), 0.5, resize="hf")
    assert hf.error is None
    np.testing.assert_array_equal(hf.frames, P.resize_crop(full.frames, 224, 224).numpy())


def test_preprocessing_record():
    d = P.Preprocessing().to_dict()
    assert d["size"] == d["crop"] == 224 and d["resize"] == "ffmpeg" and d["interpolation"] == "bicubic"
    assert d["mean"] == list(P.CLIP_MEAN) and d["std"] == list(P.CLIP_STD)
    with pytest.raises(ValueError):
        P.Preprocessing(resize="lanczos")
